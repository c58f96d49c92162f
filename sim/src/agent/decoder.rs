//! The agent's decoder as HVMI builds it: bddisasm, called by `VeHandlePtWrite` as
//! `NdDecodeEx(&instrux, RIP, 16, ND_CODE_64, ND_DATA_64)` (vendor `ND_VEND_ANY`, every
//! feature on), on the 15 bytes the agent fetched (see `World::fetch_instruction`).
//!
//! vesim decodes with the model's decoder ([`vesim_model::cpu::decode`]); this module describes
//! the decoded instruction in bddisasm's terms ([`Analysis`], [`analyze`]), and where the two
//! decoders disagree on a byte sequence, [`super::bddisasm`] holds the difference as data. The
//! agent's decode-level verdict ([`decode_verdict`]) is the first of B34–B37 that refuses the
//! instruction, or the fields B38–B49 go on with.

/// The agent's analysis of the fetched bytes: the model decoder's, corrected where bddisasm
/// decodes differently. `None` where bddisasm does not decode them.
pub use super::bddisasm::agent_analyze;
use super::RejectReason;
use vesim_model::cpu::decode::{self, AddressReg, Decoded, Insn, MemoryForm, Mnemonic, Operand};
use vesim_model::vcpu::{Gpr, Register};

/// The instruction families the #VE agent emulates (B43–B48) and the reference CPU executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// MOV.
    Mov,
    /// XCHG.
    Xchg,
    /// CMPXCHG.
    Cmpxchg,
    /// OR.
    Or,
    /// AND.
    And,
    /// XOR.
    Xor,
    /// BT.
    Bt,
    /// BTS.
    Bts,
    /// BTR.
    Btr,
    /// BTC.
    Btc,
    /// STOSB/W/D/Q.
    Stos,
    /// Anything else.
    Other,
}

/// The source operand (operand 1) of an instruction, as a decoder reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A general-purpose register: (register, size in bytes, high-byte register).
    Register(Gpr, u8, bool),
    /// An immediate, sign- or zero-extended to 64 bits as the encoding defines.
    Immediate(u64),
    /// No operand 1, or another kind.
    Other,
}

/// An address register of a memory operand, with its size (the part B38 trims it to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRegister {
    /// The register.
    pub gpr: Gpr,
    /// Its size in bytes (8, 4 or 2).
    pub size: u8,
}

/// What the agent's decoder (bddisasm, VE-SEMANTICS section 2) tells about an instruction, as
/// plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// Length in bytes.
    pub length: usize,
    /// The family.
    pub form: Form,
    /// `IsRepeated`: an F2/F3 prefix on a string instruction.
    pub is_repeated: bool,
    /// A segment-override byte (26, 2E, 36, 3E, 64, 65) among the prefixes: bddisasm 2.x's
    /// `HasSeg` (the agent's decoder, [`super::bddisasm`], narrows it to 1.x's).
    pub has_seg: bool,
    /// `IsRipRelative`.
    pub rip_relative: bool,
    /// `StackAccess`: an implicit stack access (push, pop, call, ret, enter, leave, ...).
    pub stack_access: bool,
    /// Operand 0 is memory (a string destination counts).
    pub op0_memory: bool,
    /// Size of operand 0 in bytes (its memory size when memory).
    pub op0_size: u32,
    /// Operand 1.
    pub source: Source,
    /// Base register of the memory operand.
    pub base: Option<AddressRegister>,
    /// Index register of the memory operand.
    pub index: Option<AddressRegister>,
    /// Scale (1, 2, 4, 8).
    pub scale: u32,
    /// Displacement, sign-extended to 64 bits.
    pub displacement: u64,
    /// Address size in bytes (8, or 4 under 0x67).
    pub address_size: u8,
    /// A LOCK prefix is present.
    pub lock: bool,
}

/// The general-purpose register of number `n` (0 = RAX ... 15 = R15) as an address register of
/// `size` bytes: how a decoder that names registers by number hands over a vector index.
pub fn gpr_number(n: usize, size: u8) -> Option<AddressRegister> {
    Gpr::ALL.get(n).map(|g| AddressRegister { gpr: *g, size })
}

fn address_register(reg: Option<AddressReg>) -> Option<AddressRegister> {
    match reg {
        Some(AddressReg::Gpr(r)) => Some(AddressRegister {
            gpr: r.gpr,
            size: r.size,
        }),
        _ => None,
    }
}

/// Decodes `bytes` at `rip` and describes the first instruction in the agent decoder's terms.
pub fn analyze(bytes: &[u8], rip: u64) -> Result<Analysis, Decoded> {
    match decode::decode(bytes, rip) {
        Decoded::Ok(insn) => Ok(analyze_insn(&insn, bytes)),
        other => Err(other),
    }
}

/// The legacy prefixes and REX bytes before the opcode (or the VEX, EVEX or XOP escape), and
/// the rest.
pub fn split_prefixes(bytes: &[u8]) -> (&[u8], &[u8]) {
    let n = bytes
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x40
                    ..=0x4F
            )
        })
        .count();
    bytes.split_at(n)
}

/// [`analyze`] of an instruction already decoded from `bytes`.
pub(super) fn analyze_insn(insn: &Insn, bytes: &[u8]) -> Analysis {
    let len = insn.len;
    let prefixes = split_prefixes(&bytes[..len.min(bytes.len())]).0;
    let has_seg = prefixes
        .iter()
        .any(|b| matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65));
    let form = match insn.mnemonic {
        Mnemonic::Mov => Form::Mov,
        Mnemonic::Xchg => Form::Xchg,
        Mnemonic::Cmpxchg => Form::Cmpxchg,
        Mnemonic::Or => Form::Or,
        Mnemonic::And => Form::And,
        Mnemonic::Xor => Form::Xor,
        Mnemonic::Bt => Form::Bt,
        Mnemonic::Bts => Form::Bts,
        Mnemonic::Btr => Form::Btr,
        Mnemonic::Btc => Form::Btc,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => Form::Stos,
        _ => Form::Other,
    };
    // bddisasm lists the register first for these and keeps the memory operand implicit.
    let implicit_memory = matches!(
        insn.mnemonic,
        Mnemonic::Maskmovq | Mnemonic::Maskmovdqu | Mnemonic::Vmaskmovdqu | Mnemonic::Xlatb
    );
    let op0 = match insn.operand(0) {
        Some(Operand::Memory(m)) if !implicit_memory => Some(m),
        _ => None,
    };
    let op0_memory = op0.is_some();
    let op0_size = match (op0, insn.operand(0)) {
        (Some(m), _) => m.size,
        (None, Some(Operand::Register(r))) => r.size as u32,
        _ => 0,
    };
    let source = match insn.operand(1) {
        Some(Operand::Register(r)) => Source::Register(r.gpr, r.size, r.high),
        Some(Operand::Immediate { value, .. }) => Source::Immediate(value),
        _ => Source::Other,
    };
    let string = |gpr, size| (Some(AddressRegister { gpr, size }), None, 1, 0, size);
    let (base, index, scale, displacement, address_size) = match op0 {
        Some(m) if m.form == MemoryForm::String => match m.base {
            Some(AddressReg::Gpr(Register {
                gpr: Gpr::Rdi,
                size: s @ (4 | 8),
                ..
            })) => string(Gpr::Rdi, s),
            Some(AddressReg::Gpr(Register {
                gpr: Gpr::Rsi,
                size: 4,
                ..
            })) => string(Gpr::Rsi, 4),
            _ => string(Gpr::Rsi, 8),
        },
        Some(m) => {
            let gpr32 =
                |r: Option<AddressReg>| matches!(r, Some(AddressReg::Gpr(g)) if g.size == 4);
            // A bare [disp32] under 0x67 has no register to show the address size (a moffs is
            // an address, zero-extended, and keeps the decoder's value).
            let bare_67 = m.form != MemoryForm::Moffs
                && m.base.is_none()
                && m.index.is_none()
                && prefixes.contains(&0x67);
            let address_size =
                if gpr32(m.base) || gpr32(m.index) || m.base == Some(AddressReg::Eip) || bare_67 {
                    4
                } else {
                    8
                };
            let disp = if address_size == 4 {
                m.displacement as u32 as i32 as i64 as u64
            } else {
                m.displacement
            };
            (
                address_register(m.base),
                address_register(m.index),
                u32::from(m.scale),
                disp,
                address_size,
            )
        }
        None => (None, None, 1, 0, 8),
    };
    Analysis {
        length: len,
        form,
        is_repeated: (insn.prefixes.rep || insn.prefixes.repne) && insn.string,
        has_seg,
        rip_relative: insn
            .operands()
            .any(|o| matches!(o, Operand::Memory(m) if m.rip_relative())),
        // bddisasm's implicit stack operand: every RSP-moving instruction, plus LEAVE and the
        // software interrupts, whose RSP change the decoder does not report as an increment.
        stack_access: insn.stack_pointer_increment != 0
            || matches!(
                insn.mnemonic,
                Mnemonic::Leave
                    | Mnemonic::Enter
                    | Mnemonic::Int
                    | Mnemonic::Int1
                    | Mnemonic::Int3
                    | Mnemonic::Into
                    | Mnemonic::Iret
                    | Mnemonic::Iretd
                    | Mnemonic::Iretq
            ),
        op0_memory,
        op0_size,
        source,
        base,
        index,
        scale,
        displacement,
        address_size,
        lock: insn.prefixes.lock,
    }
}

/// What B38–B49 read of a decoded instruction, in bddisasm's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentInstruction {
    /// `Length`.
    pub length: u8,
    /// `Instruction`, as far as the agent tells classes apart.
    pub form: Form,
    /// `Operands[1]` when it is a register (number, size) or an immediate.
    pub source: Source,
    /// `Operands[0].Info.Memory`: base (register, size), index (register, size), scale, and
    /// the sign-extended displacement (0 when there is none).
    pub base: Option<AddressRegister>,
    /// Index register.
    pub index: Option<AddressRegister>,
    /// Scale (1 without an index).
    pub scale: u32,
    /// Displacement.
    pub displacement: u64,
}

/// The agent's verdict on the fetched bytes, before any register is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeVerdict {
    /// Refused by B34 (`decode_error`), B35 (`rep`, `segment_prefix`, `rip_relative`,
    /// `stack_access`), B36 (`not_memory`) or B37 (`size`).
    Refused(RejectReason),
    /// Decoded, with an 8-byte memory operand 0: B38 onwards decide.
    Decoded(AgentInstruction),
}

/// B34–B37 in order on the fetched bytes.
pub fn decode_verdict(fetched: &[u8], rip: u64) -> (DecodeVerdict, Option<Analysis>) {
    let Some(a) = agent_analyze(fetched, rip) else {
        return (DecodeVerdict::Refused(RejectReason::DecodeError), None);
    };
    let refused = if a.is_repeated {
        Some(RejectReason::Rep)
    } else if a.has_seg {
        Some(RejectReason::SegmentPrefix)
    } else if a.rip_relative {
        Some(RejectReason::RipRelative)
    } else if a.stack_access {
        Some(RejectReason::StackAccess)
    } else if !a.op0_memory {
        Some(RejectReason::NotMemory)
    } else if a.op0_size != 8 {
        Some(RejectReason::Size)
    } else {
        None
    };
    let v = match refused {
        Some(r) => DecodeVerdict::Refused(r),
        None => DecodeVerdict::Decoded(AgentInstruction {
            length: a.length as u8,
            form: a.form,
            source: a.source,
            base: a.base,
            index: a.index,
            scale: if a.index.is_some() { a.scale } else { 1 },
            displacement: a.displacement,
        }),
    };
    (v, Some(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bddisasm_meanings_of_stack_access_and_operand_0() {
        // LEAVE and INT3 have an implicit stack operand; an explicit [rsp+8] is not one.
        for bytes in [&[0xC9][..], &[0xCC], &[0xCD, 0x03], &[0xFF, 0x30]] {
            assert!(
                analyze(bytes, 0).map(|a| a.stack_access).unwrap_or(false),
                "{bytes:02x?}"
            );
        }
        let a = analyze(&[0x48, 0x89, 0x44, 0x24, 0x08], 0).unwrap();
        assert!(!a.stack_access && a.op0_memory);
        // MASKMOVQ: operand 0 is the register; the store is implicit.
        assert!(!analyze(&[0x0F, 0xF7, 0xC1], 0).unwrap().op0_memory);
        // F3 on MOV is not REP; on STOSQ it is.
        assert!(!analyze(&[0xF3, 0x48, 0x89, 0x18], 0).unwrap().is_repeated);
        assert!(analyze(&[0xF3, 0x48, 0xAB], 0).unwrap().is_repeated);
        // An ignored DS override still counts as a segment prefix.
        assert!(analyze(&[0x3E, 0x48, 0x89, 0x18], 0).unwrap().has_seg);
    }
}
