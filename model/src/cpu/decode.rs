//! The one adapter between vesim and iced-x86 (CONVENTIONS rule 7): decoding, the memory
//! accesses an instruction makes (`used_memory()`), register access by iced register, and
//! mnemonic names. No other module names iced types in a signature that leaves the crate.

use super::mmu::AccessKind;
use crate::addr::Gla;
use crate::vcpu::{Gpr, Vcpu};
use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// The longest x86 instruction.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// The result of decoding bytes at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, valid instruction.
    Ok(Instruction),
    /// The bytes end before the instruction does.
    Incomplete,
    /// The bytes are not a valid instruction (#UD).
    Invalid,
}

/// Decodes one 64-bit instruction from `bytes` located at `rip`.
pub fn decode(bytes: &[u8], rip: u64) -> Decoded {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let instr = d.decode();
    if instr.code() != Code::INVALID {
        return Decoded::Ok(instr);
    }
    if d.last_error() != DecoderError::NoMoreBytes || bytes.len() >= MAX_INSTRUCTION_LEN {
        return Decoded::Invalid;
    }
    Decoded::Incomplete
}

/// Like [`decode`], for bytes a user typed: `Incomplete` only if some continuation of the bytes
/// is an instruction, so that bytes which stay invalid whatever follows (06, PUSH ES) are #UD.
pub fn decode_given(bytes: &[u8], rip: u64) -> Decoded {
    match decode(bytes, rip) {
        Decoded::Incomplete if !can_complete(bytes, rip) => Decoded::Invalid,
        d => d,
    }
}

/// Whether some continuation of `bytes` is a valid instruction. iced reports a short buffer
/// before judging the opcode, so this tries every value of the next byte followed by zeros and
/// by 0xFF bytes; a VEX, EVEX or XOP escape byte (whose later bytes must agree with each other)
/// counts as completable. `48 0F BA` (BT* imm8, whose ModRM /digit decides) is completable;
/// `06` (PUSH ES) is not.
fn can_complete(bytes: &[u8], rip: u64) -> bool {
    if bytes.iter().any(|b| matches!(b, 0xC4 | 0xC5 | 0x62 | 0x8F)) {
        return true;
    }
    let mut buf = [0u8; MAX_INSTRUCTION_LEN];
    let n = bytes.len();
    buf[..n].copy_from_slice(bytes);
    for fill in [0x00u8, 0xFF] {
        for next in 0..=255u8 {
            buf[n] = next;
            buf[n + 1..].fill(fill);
            let mut d = Decoder::with_ip(64, &buf, rip, DecoderOptions::NONE);
            if d.decode().code() != Code::INVALID {
                return true;
            }
        }
    }
    false
}

/// The Intel-syntax text of `instr` (`bts qword ptr [rax],rbx`).
pub fn disassemble(instr: &Instruction) -> String {
    use iced_x86::Formatter;
    let mut out = String::new();
    let mut f = iced_x86::IntelFormatter::new();
    f.options_mut().set_hex_prefix("0x");
    f.options_mut().set_hex_suffix("");
    f.options_mut().set_uppercase_hex(false);
    f.options_mut().set_space_after_operand_separator(true);
    f.format(instr, &mut out);
    out
}

/// Decodes `bytes` at `rip` and returns (length, lower-case mnemonic, Intel-syntax text) of the
/// first instruction, or the reason it is not one.
pub fn describe(bytes: &[u8], rip: u64) -> Result<(usize, String, String), Decoded> {
    match decode(bytes, rip) {
        Decoded::Ok(i) => Ok((i.len(), mnemonic_name(&i), disassemble(&i))),
        Decoded::Incomplete => Err(decode_given(bytes, rip)),
        other => Err(other),
    }
}

/// iced's mnemonic in lower case (`bts`, `cmpxchg`, `stosq`).
pub fn mnemonic_name(instr: &Instruction) -> String {
    format!("{:?}", instr.mnemonic()).to_lowercase()
}

/// One memory access an instruction makes, in iced's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedAccess {
    /// Linear address (segment base added, wrapped to the address size).
    pub gla: Gla,
    /// Size in bytes.
    pub size: u64,
    /// Read, write or read-modify-write.
    pub kind: AccessKind,
    /// The access uses SS (a non-canonical address is #SS rather than #GP).
    pub stack: bool,
}

/// Why the accesses of an instruction could not be listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoAddress;

fn segment_base(vcpu: &Vcpu, seg: Register) -> u64 {
    match seg {
        Register::FS => vcpu.fs_base,
        Register::GS => vcpu.gs_base,
        _ => 0,
    }
}

/// Maps a general-purpose iced register to (register, size in bytes, high-byte register).
pub fn gpr_of(reg: Register) -> Option<(Gpr, u8, bool)> {
    let (gpr, size, high) = match reg {
        Register::AH => (0, 1, true),
        Register::CH => (1, 1, true),
        Register::DH => (2, 1, true),
        Register::BH => (3, 1, true),
        r if r.is_gpr64() => (r.number(), 8, false),
        r if r.is_gpr32() => (r.number(), 4, false),
        r if r.is_gpr16() => (r.number(), 2, false),
        r if r.is_gpr8() => {
            // AL, CL, DL, BL, SPL, BPL, SIL, DIL, R8L..R15L; AH..BH handled above.
            let n = r as usize - Register::AL as usize;
            let n = if n >= 8 { n - 4 } else { n };
            (n, 1, false)
        }
        _ => return None,
    };
    Gpr::ALL.get(gpr).map(|g| (*g, size, high))
}

/// Reads an iced register from the VCPU (general-purpose registers, RIP and segment bases).
pub fn read_register(vcpu: &Vcpu, reg: Register) -> Option<u64> {
    if let Some((g, size, high)) = gpr_of(reg) {
        let v = vcpu.reg(g);
        return Some(match (size, high) {
            (1, true) => (v >> 8) & 0xFF,
            (1, false) => v & 0xFF,
            (2, _) => v & 0xFFFF,
            (4, _) => v & 0xFFFF_FFFF,
            _ => v,
        });
    }
    match reg {
        Register::RIP => Some(vcpu.rip),
        Register::EIP => Some(vcpu.rip & 0xFFFF_FFFF),
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        Register::FS | Register::GS => Some(segment_base(vcpu, reg)),
        _ => None,
    }
}

/// Writes an iced general-purpose register with x86-64 width rules (32-bit writes zero-extend,
/// 8- and 16-bit writes merge).
pub fn write_register(gpr: &mut [u64; 16], reg: Register, value: u64) -> bool {
    let Some((g, size, high)) = gpr_of(reg) else {
        return false;
    };
    let old = gpr[g as usize];
    gpr[g as usize] = match (size, high) {
        (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
        (1, false) => (old & !0xFF) | (value & 0xFF),
        (2, _) => (old & !0xFFFF) | (value & 0xFFFF),
        (4, _) => value & 0xFFFF_FFFF,
        _ => value,
    };
    true
}

/// Whether the instruction is BT, BTS, BTR or BTC with a register bit offset and a memory
/// operand: bit-string addressing (VE-SEMANTICS section 1).
pub fn is_bit_string(instr: &Instruction) -> bool {
    matches!(
        instr.mnemonic(),
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    ) && instr.op0_kind() == OpKind::Memory
        && instr.op1_kind() == OpKind::Register
}

/// The byte displacement bit-string addressing adds to the operand's address:
/// `size × (offset sar log2(8 × size))` with the offset register read at the operand size.
pub fn bit_string_displacement(instr: &Instruction, vcpu: &Vcpu) -> Option<u64> {
    let size = instr.memory_size().size() as u64;
    let raw = read_register(vcpu, instr.op1_register())?;
    let offset: i64 = match size {
        2 => raw as u16 as i16 as i64,
        4 => raw as u32 as i32 as i64,
        _ => raw as i64,
    };
    let shift = match size {
        2 => 4,
        4 => 5,
        _ => 6,
    };
    Some(((offset >> shift) as u64).wrapping_mul(size))
}

/// The memory accesses of `instr`, as iced's `used_memory()` reports them, with addresses
/// computed from the VCPU's registers. The one change is bit-string addressing for BT* with a
/// register offset.
pub fn planned_accesses(instr: &Instruction, vcpu: &Vcpu) -> Result<Vec<PlannedAccess>, NoAddress> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(instr);
    let mut out = Vec::with_capacity(info.used_memory().len());
    for m in info.used_memory() {
        let kind = match m.access() {
            OpAccess::Read | OpAccess::CondRead => AccessKind::Read,
            OpAccess::Write | OpAccess::CondWrite => AccessKind::Write,
            OpAccess::ReadWrite | OpAccess::ReadCondWrite => AccessKind::ReadWrite,
            _ => continue,
        };
        let mut addr = m
            .virtual_address(0, |reg, _, _| read_register(vcpu, reg))
            .ok_or(NoAddress)?;
        if is_bit_string(instr) {
            addr = addr.wrapping_add(bit_string_displacement(instr, vcpu).ok_or(NoAddress)?);
            if m.address_size() == iced_x86::CodeSize::Code32 {
                addr &= 0xFFFF_FFFF;
            }
        }
        out.push(PlannedAccess {
            gla: Gla(addr),
            size: (m.memory_size().size() as u64).clamp(1, 4096),
            kind,
            stack: m.segment() == Register::SS,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_and_invalid_are_told_apart() {
        assert_eq!(decode(&[0x48, 0x89], 0), Decoded::Incomplete);
        // PUSH ES is invalid in 64-bit mode, though iced asks for more bytes first.
        assert_eq!(decode_given(&[0x06], 0), Decoded::Invalid);
        assert_eq!(decode_given(&[0xC5], 0), Decoded::Incomplete);
        assert!(matches!(decode(&[0x48, 0x89, 0x08], 0), Decoded::Ok(_)));
        // LOCK MOV is #UD.
        assert_eq!(decode(&[0xF0, 0x48, 0x89, 0x08], 0), Decoded::Invalid);
        // The ModRM /digit decides whether 0F BA is valid: incomplete, not invalid.
        assert_eq!(decode_given(&[0x48, 0x0F, 0xBA], 0), Decoded::Incomplete);
        assert_eq!(decode_given(&[0xF0, 0x48, 0x0F], 0), Decoded::Incomplete);
        assert_eq!(
            decode_given(&[0xF0, 0x48, 0x0F, 0xBA], 0),
            Decoded::Incomplete
        );
    }

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

    #[test]
    fn eight_bit_register_numbering() {
        assert_eq!(gpr_of(Register::SIL), Some((Gpr::Rsi, 1, false)));
        assert_eq!(gpr_of(Register::R9L), Some((Gpr::R9, 1, false)));
        assert_eq!(gpr_of(Register::BH), Some((Gpr::Rbx, 1, true)));
        assert_eq!(gpr_of(Register::R15D), Some((Gpr::R15, 4, false)));
    }
}

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
    /// iced's mnemonic in lower case.
    pub mnemonic: String,
    /// The family.
    pub form: Form,
    /// `IsRepeated`: an F2/F3 prefix on a string instruction.
    pub is_repeated: bool,
    /// A segment-override byte (26, 2E, 36, 3E, 64, 65) among the prefixes: bddisasm 2.x's
    /// `HasSeg` (the agent's decoder, `cpu::bddisasm`, narrows it to 1.x's).
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

fn address_register(reg: Register) -> Option<AddressRegister> {
    let (gpr, size, _) = gpr_of(reg)?;
    Some(AddressRegister { gpr, size })
}

/// Whether `op` is a memory operand kind (explicit or string).
pub fn is_memory_kind(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Memory
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

/// Decodes `bytes` at `rip` and describes the first instruction in the agent decoder's terms.
pub fn analyze(bytes: &[u8], rip: u64) -> Result<Analysis, Decoded> {
    let instr = match decode(bytes, rip) {
        Decoded::Ok(i) => i,
        other => return Err(other),
    };
    analyze_instruction(&instr, bytes)
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
pub(crate) fn analyze_instruction(instr: &Instruction, bytes: &[u8]) -> Result<Analysis, Decoded> {
    let instr = *instr;
    let len = instr.len();
    let prefixes = split_prefixes(&bytes[..len.min(bytes.len())]).0;
    let has_seg = prefixes
        .iter()
        .any(|b| matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65));
    let form = match instr.mnemonic() {
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
        instr.mnemonic(),
        Mnemonic::Maskmovq | Mnemonic::Maskmovdqu | Mnemonic::Vmaskmovdqu | Mnemonic::Xlatb
    );
    let op0_memory = !implicit_memory && instr.op_count() > 0 && is_memory_kind(instr.op0_kind());
    let op0_size = if op0_memory {
        instr.memory_size().size() as u32
    } else if instr.op_count() > 0 && instr.op0_kind() == OpKind::Register {
        gpr_of(instr.op0_register()).map_or(0, |(_, s, _)| s as u32)
    } else {
        0
    };
    let source = if instr.op_count() < 2 {
        Source::Other
    } else {
        match instr.op1_kind() {
            OpKind::Register => match gpr_of(instr.op1_register()) {
                Some((g, s, h)) => Source::Register(g, s, h),
                None => Source::Other,
            },
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Source::Immediate(instr.immediate(1)),
            _ => Source::Other,
        }
    };
    let (base, index, scale, displacement, address_size) = if op0_memory {
        let address_size = match instr.op0_kind() {
            OpKind::MemoryESEDI | OpKind::MemorySegEDI | OpKind::MemorySegESI => 4,
            OpKind::Memory => {
                let b = instr.memory_base();
                let i = instr.memory_index();
                // A bare [disp32] under 0x67 has no register to show the address size (a
                // moffs is an address, zero-extended, and keeps iced's value).
                let moffs = matches!(
                    instr.code(),
                    Code::Mov_AL_moffs8
                        | Code::Mov_AX_moffs16
                        | Code::Mov_EAX_moffs32
                        | Code::Mov_RAX_moffs64
                        | Code::Mov_moffs8_AL
                        | Code::Mov_moffs16_AX
                        | Code::Mov_moffs32_EAX
                        | Code::Mov_moffs64_RAX
                );
                let bare_67 = !moffs
                    && b == Register::None
                    && i == Register::None
                    && prefixes.contains(&0x67);
                if b.is_gpr32() || i.is_gpr32() || b == Register::EIP || bare_67 {
                    4
                } else {
                    8
                }
            }
            _ => 8,
        };
        match instr.op0_kind() {
            OpKind::Memory => {
                let disp = if address_size == 4 {
                    instr.memory_displacement32() as i32 as i64 as u64
                } else {
                    instr.memory_displacement64()
                };
                (
                    address_register(instr.memory_base()),
                    address_register(instr.memory_index()),
                    instr.memory_index_scale(),
                    disp,
                    address_size,
                )
            }
            OpKind::MemoryESEDI | OpKind::MemorySegEDI => (
                Some(AddressRegister {
                    gpr: Gpr::Rdi,
                    size: 4,
                }),
                None,
                1,
                0,
                4,
            ),
            OpKind::MemoryESRDI | OpKind::MemorySegRDI => (
                Some(AddressRegister {
                    gpr: Gpr::Rdi,
                    size: 8,
                }),
                None,
                1,
                0,
                8,
            ),
            OpKind::MemorySegESI => (
                Some(AddressRegister {
                    gpr: Gpr::Rsi,
                    size: 4,
                }),
                None,
                1,
                0,
                4,
            ),
            _ => (
                Some(AddressRegister {
                    gpr: Gpr::Rsi,
                    size: 8,
                }),
                None,
                1,
                0,
                8,
            ),
        }
    } else {
        (None, None, 1, 0, 8)
    };
    Ok(Analysis {
        length: len,
        mnemonic: mnemonic_name(&instr),
        form,
        is_repeated: (instr.has_rep_prefix() || instr.has_repne_prefix())
            && instr.is_string_instruction(),
        has_seg,
        rip_relative: instr.is_ip_rel_memory_operand(),
        // bddisasm's implicit stack operand: every RSP-moving instruction, plus LEAVE and the
        // software interrupts, whose RSP change iced does not report as an increment.
        stack_access: instr.stack_pointer_increment() != 0
            || matches!(
                instr.mnemonic(),
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
        lock: instr.has_lock_prefix(),
    })
}

/// Linear address of the first memory access the reference CPU makes for the instruction in
/// `bytes` (a string operand counts; BT* with a register offset uses bit-string addressing).
pub fn first_access(bytes: &[u8], vcpu: &Vcpu) -> Option<(Gla, u64, bool)> {
    let Decoded::Ok(instr) = decode(bytes, vcpu.rip) else {
        return None;
    };
    let p = planned_accesses(&instr, vcpu).ok()?;
    p.first().map(|a| (a.gla, a.size, a.kind.writes()))
}

/// Decodes the instruction in `bytes` at `vcpu.rip` and runs the reference semantics with `mem`
/// as its memory operand's value: (effects, length, next RIP), or `None` if the bytes are not
/// an instruction of the reference CPU's set.
pub fn execute_bytes(
    bytes: &[u8],
    vcpu: &Vcpu,
    mem: u64,
) -> Option<(super::exec::Effects, usize, u64)> {
    let Decoded::Ok(instr) = decode(bytes, vcpu.rip) else {
        return None;
    };
    let fx = super::exec::execute(&instr, vcpu, mem).ok()?;
    Some((fx, instr.len(), instr.next_ip()))
}

/// The memory accesses the reference CPU makes for the instruction in `bytes` at `vcpu.rip`.
pub fn accesses_of(bytes: &[u8], vcpu: &Vcpu) -> Option<Vec<PlannedAccess>> {
    let Decoded::Ok(instr) = decode(bytes, vcpu.rip) else {
        return None;
    };
    planned_accesses(&instr, vcpu).ok()
}
