//! Where bddisasm, as HVMI's agent calls it, decodes differently from iced-x86: as data.
//!
//! The agent's decoder is bddisasm at the commit HVMI pins (727c87e), called with
//! `NdDecodeEx(&instrux, RIP, 16, ND_CODE_64, ND_DATA_64)`: vendor `ND_VEND_ANY`, every
//! feature on (`ND_FEAT_ALL`). vesim decodes with iced-x86; each class of byte sequences on
//! which the two disagree is one row below, with the bddisasm behaviour it stands for. The
//! classes were found by the `decode_survey` example and the `agent_decode` fuzz target of
//! `fuzz/` (README, "Fuzzing"), which compare this module against bddisasm itself.
//!
//! The rows work on the model's decoded instruction ([`Insn`]) and on the fetched bytes; the
//! description in bddisasm's terms they correct is [`super::decoder::analyze`]'s.

use super::decoder::{analyze_insn, gpr_number, split_prefixes, Analysis, Form, Source};
use vesim_model::cpu::decode::{
    self, AddressReg, DecodeOptions, Decoded, Extensions, Insn, Mnemonic, Operand,
    MAX_INSTRUCTION_LEN,
};

/// bddisasm decodes MPX (`0F 1A`/`0F 1B` as BNDLDX, BNDMOV, BNDCL, ...) because the agent
/// asks for every feature; iced needs the option, or it reads them as reserved NOPs.
const AGENT_DECODER_OPTIONS: DecodeOptions = DecodeOptions { mpx: true };

/// Instruction sets iced decodes that the pinned bddisasm (a 1.3x revision) has no table
/// entries for: bddisasm added them in 2.x, so their encodings are invalid there and the agent
/// answers DISASM_ERROR. (APX's REX2 prefix and USER_MSR, also 2.x, iced does not decode
/// either.) The PREFETCHIT0/1 forms are handled apart: the same bytes are the hint NOP.
const NOT_IN_PINNED_BDDISASM: Extensions = Extensions::AMX_FP16
    .union(Extensions::AMX_COMPLEX)
    .union(Extensions::AVX_IFMA)
    .union(Extensions::AVX_NE_CONVERT)
    .union(Extensions::AVX_VNNI_INT8)
    .union(Extensions::AVX_VNNI_INT16)
    .union(Extensions::CMPCCXADD)
    .union(Extensions::MSRLIST)
    .union(Extensions::WRMSRNS)
    .union(Extensions::RAO_INT)
    .union(Extensions::RMPQUERY)
    .union(Extensions::SHA512)
    .union(Extensions::SM3)
    .union(Extensions::SM4)
    .union(Extensions::TSE);

/// Byte sequences iced rejects in 64-bit mode that bddisasm decodes (its tables list them
/// for every mode, or iced does not know them), each as the opcode after the legacy and REX
/// prefixes. None has a memory operand 0, so the agent refuses them as not memory (B36),
/// after the segment-prefix rule (B35).
const DECODED_WHERE_ICED_REFUSES: &[(&[u8], &str)] = &[
    (&[0xD6], "SALC (undocumented), decoded in 64-bit mode"),
    (&[0xDF, 0xE2], "FSTSG, an x87 register form"),
    (&[0xDF, 0xFC], "FRINEAR, an x87 register form"),
    (&[0x0F, 0x01, 0xCC], "TDCALL (66 prefix), TDX"),
    (&[0x0F, 0x01, 0xCD], "SEAMRET (66 prefix), TDX"),
    (&[0x0F, 0x01, 0xCE], "SEAMOPS (66 prefix), TDX"),
    (&[0x0F, 0x01, 0xCF], "SEAMCALL (66 prefix), TDX"),
];

/// x87 instructions whose memory form bddisasm lists as `ST(0), mem` (the register first):
/// operand 0 is ST(0), so the agent refuses them as not memory (B36). iced lists the memory
/// operand alone. The stores (FST, FSTP, FIST, FISTP, FISTTP, FBSTP) have memory first in
/// both.
const X87_ST0_FIRST: &[Mnemonic] = &[
    Mnemonic::Fadd,
    Mnemonic::Fmul,
    Mnemonic::Fcom,
    Mnemonic::Fcomp,
    Mnemonic::Fsub,
    Mnemonic::Fsubr,
    Mnemonic::Fdiv,
    Mnemonic::Fdivr,
    Mnemonic::Fiadd,
    Mnemonic::Fimul,
    Mnemonic::Ficom,
    Mnemonic::Ficomp,
    Mnemonic::Fisub,
    Mnemonic::Fisubr,
    Mnemonic::Fidiv,
    Mnemonic::Fidivr,
    Mnemonic::Fld,
    Mnemonic::Fild,
    Mnemonic::Fbld,
];

/// Instructions whose first operand bddisasm makes an implicit memory operand, with its size
/// in bytes and base register, where iced lists a register (or nothing) first. None is 8
/// bytes, so the agent refuses them all by size (B37).
const IMPLICIT_MEMORY_FIRST: &[(Mnemonic, u32)] = &[
    // `MOVDIR64B r64, m512` / `ENQCMD(S) r64, m512`: bddisasm's operand 0 is the 64-byte
    // destination at [r64].
    (Mnemonic::Movdir64b, 64),
    (Mnemonic::Enqcmd, 64),
    (Mnemonic::Enqcmds, 64),
    // The address-monitoring and RMP instructions: a byte at [rAX].
    (Mnemonic::Monitor, 1),
    (Mnemonic::Monitorx, 1),
    (Mnemonic::Umonitor, 1),
    (Mnemonic::Rmpadjust, 1),
    (Mnemonic::Rmpquery, 1),
    // `SAVEPREVSSP`: the previous-SSP token on the shadow stack, a size other than 8
    // (bddisasm's shadow-stack operand size); 0 stands for it.
    (Mnemonic::Saveprevssp, 0),
    // `SETSSBSY`: the supervisor shadow-stack token, 8 bytes; no GPR base.
    (Mnemonic::Setssbsy, 8),
];

/// The agent decoder's analysis of `fetched` (the agent's 15 bytes) at `rip`: `None` where
/// bddisasm returns an error status (DISASM_ERROR).
pub fn agent_analyze(fetched: &[u8], rip: u64) -> Option<Analysis> {
    let bytes = &fetched[..fetched.len().min(MAX_INSTRUCTION_LEN)];
    let Decoded::Ok(insn) = decode::decode_with(bytes, rip, AGENT_DECODER_OPTIONS) else {
        return decoded_where_iced_refuses(bytes);
    };
    if insn.extensions.intersects(NOT_IN_PINNED_BDDISASM) {
        return None;
    }
    // bddisasm's VCVTSI2SH entries allow no embedded rounding (ND_STATUS_ER_SAE_NOT_SUPPORTED),
    // where iced and the SDM do.
    if insn.mnemonic == Mnemonic::Vcvtsi2sh && insn.embedded_rounding {
        return None;
    }
    let mut a = analyze_insn(&insn, bytes);
    adjust(&insn, bytes, &mut a);
    // bddisasm's `Disp` is the displacement as encoded, sign-extended: for an EVEX disp8 it is
    // not multiplied by the compressed-displacement factor N (that is `CompDispSize`, which
    // the agent does not read), so B38 adds disp8, not disp8 × N.
    let disp8 = insn.operands().find_map(|o| match o {
        Operand::Memory(m) => m.compressed_disp8,
        _ => None,
    });
    if let Some(raw) = disp8 {
        a.displacement = raw as i64 as u64;
    }
    Some(a)
}

/// bddisasm 1.x's `HasSeg` in 64-bit mode: set by 2E and 3E (as branch hints) and by 64 and
/// 65 (FS, GS); ES (26) and SS (36) overrides leave it clear, since they do nothing there.
/// (bddisasm 2.x sets it for all six.)
fn has_seg(prefixes: &[u8]) -> bool {
    prefixes
        .iter()
        .any(|b| matches!(b, 0x2E | 0x3E | 0x64 | 0x65))
}

fn decoded_where_iced_refuses(bytes: &[u8]) -> Option<Analysis> {
    let (prefixes, rest) = split_prefixes(bytes);
    if let Some(a) = knights_corner_vex(prefixes, rest) {
        return Some(a);
    }
    // bddisasm ignores VEX.L on VLDMXCSR and VSTMXCSR (`VEX.NP.0F AE /2, /3`, memory), which
    // iced, as the SDM, requires to be 0.
    let vex_l = match rest {
        [0xC5, p, 0xAE, m, ..] if p & 7 == 4 => Some((1, *m)),
        [0xC4, r, p, 0xAE, m, ..] if r & 0x1F == 1 && p & 7 == 4 => Some((2, *m)),
        _ => None,
    };
    if let Some((at, m)) = vex_l {
        if m >> 6 != 3 && matches!((m >> 3) & 7, 2 | 3) {
            let mut fixed = bytes.to_vec();
            fixed[prefixes.len() + at] &= !4;
            if let Some(a) = reanalyze(&fixed) {
                return Some(a);
            }
        }
    }
    // bddisasm checks neither XOP.pp, nor XOP.L, nor XOP.W where the instruction does not use
    // them (iced requires 0 there): it decodes the same instruction as with those bits clear.
    // Nor does it refuse LOCK before XOP (it refuses 66, F2, F3 and REX there, as iced does; a
    // REX byte not right before the XOP byte is dropped by both).
    if let [0x8F, p0, ..] = rest {
        let locks = prefixes.iter().filter(|b| **b == 0xF0).count();
        if p0 & 0x1F >= 8 {
            let last = prefixes.len().wrapping_sub(1);
            for mask in [0x00u8, 0x07, 0x87] {
                let mut fixed: Vec<u8> = prefixes
                    .iter()
                    .enumerate()
                    .filter(|(i, b)| **b != 0xF0 && !(matches!(b, 0x40..=0x4F) && *i != last))
                    .map(|(_, b)| *b)
                    .collect();
                let at = fixed.len() + 2;
                fixed.extend_from_slice(rest);
                match fixed.get_mut(at) {
                    Some(p1) => *p1 &= !mask,
                    None => return None,
                }
                if let Some(mut a) =
                    reanalyze(&fixed).filter(|a| a.length + locks <= MAX_INSTRUCTION_LEN)
                {
                    a.length += locks;
                    a.has_seg = has_seg(prefixes);
                    a.lock = locks > 0;
                    return Some(a);
                }
            }
        }
    }
    let (opcode, _) = DECODED_WHERE_ICED_REFUSES
        .iter()
        .find(|(op, _)| rest.starts_with(op))?;
    // The TDX forms need 66 as their mandatory prefix, which F2 or F3 would displace.
    let tdx = opcode.len() == 3;
    if tdx && (!prefixes.contains(&0x66) || prefixes.iter().any(|b| matches!(b, 0xF2 | 0xF3))) {
        return None;
    }
    // None of them accepts LOCK (BAD_LOCK_PREFIX).
    if prefixes.contains(&0xF0) {
        return None;
    }
    Some(refusal(prefixes, opcode.len(), false, 0))
}

/// A Knights Corner instruction bddisasm keeps in VEX form (map 0F, vvvv = 1111); iced knows
/// them only as KNC instructions.
struct KncVex {
    opcode: u8,
    /// VEX.pp.
    pp: u8,
    /// ModRM.reg, where it selects the instruction.
    reg: Option<u8>,
    /// Register form (else memory).
    register: bool,
    /// Mask registers: VEX.L = 0 and VEX.W = 0, no VEX.R or VEX.B.
    masks: bool,
    /// Operand 0 is a byte of memory.
    memory: bool,
}

#[rustfmt::skip]
const KNC_VEX: &[KncVex] = &[
    // CLEVICT0 m8, CLEVICT1 m8.
    KncVex { opcode: 0xAE, pp: 3, reg: Some(7), register: false, masks: false, memory: true },
    KncVex { opcode: 0xAE, pp: 2, reg: Some(7), register: false, masks: false, memory: true },
    // DELAY r32, SPFLT r32.
    KncVex { opcode: 0xAE, pp: 2, reg: Some(6), register: true, masks: false, memory: false },
    KncVex { opcode: 0xAE, pp: 3, reg: Some(6), register: true, masks: false, memory: false },
    // KMERGE2L1H k, k and KMERGE2L1L k, k.
    KncVex { opcode: 0x48, pp: 0, reg: None, register: true, masks: true, memory: false },
    KncVex { opcode: 0x49, pp: 0, reg: None, register: true, masks: true, memory: false },
];

fn knights_corner_vex(prefixes: &[u8], rest: &[u8]) -> Option<Analysis> {
    // VEX refuses 66, F2, F3, LOCK and a REX right before it; a REX further back is dropped.
    let bad_prefix = prefixes
        .iter()
        .any(|b| matches!(b, 0x66 | 0xF2 | 0xF3 | 0xF0))
        || prefixes.last().is_some_and(|b| matches!(b, 0x40..=0x4F));
    // `extends`: VEX.R or VEX.B set (register numbers 8-15) or VEX.W set, which the mask
    // register forms refuse (the others ignore W).
    let (p, opcode, modrm, len, extends) = match rest {
        [0xC5, p, op, m, ..] => (*p, *op, *m, 3, p & 0x80 == 0),
        [0xC4, r, p, op, m, ..] if r & 0x1F == 1 => {
            (*p, *op, *m, 4, r & 0xA0 != 0xA0 || p & 0x80 != 0)
        }
        _ => return None,
    };
    if bad_prefix || (p >> 3) & 0xF != 0xF {
        return None;
    }
    let row = KNC_VEX.iter().find(|k| {
        k.opcode == opcode
            && k.pp == p & 3
            && k.reg.is_none_or(|r| r == (modrm >> 3) & 7)
            && k.register == (modrm >> 6 == 3)
            && (!k.masks || (p & 4 == 0 && !extends))
    })?;
    let (modrm_len, rip_relative) = modrm_extent(&rest[len..])?;
    if prefixes.len() + len + modrm_len > MAX_INSTRUCTION_LEN {
        return None; // ND_STATUS_INSTRUCTION_TOO_LONG
    }
    let mut a = refusal(prefixes, len + modrm_len, row.memory, u32::from(row.memory));
    a.rip_relative = rip_relative;
    Some(a)
}

/// The bytes a ModRM byte (with SIB and displacement, 64-bit mode, 32- or 64-bit addressing)
/// takes at the start of `b`, and whether it addresses RIP-relative; `None` if `b` ends first.
fn modrm_extent(b: &[u8]) -> Option<(usize, bool)> {
    let m = *b.first()?;
    let (md, rm) = (m >> 6, m & 7);
    if md == 3 {
        return Some((1, false));
    }
    let sib = rm == 4;
    let disp = match md {
        0 if rm == 5 => 4,
        0 if sib && b.get(1)? & 7 == 5 => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    let n = 1 + usize::from(sib) + disp;
    (b.len() >= n).then_some((n, md == 0 && rm == 5))
}

/// iced's analysis of `bytes` (with the rows above applied) after a field bddisasm does not
/// check was cleared in them; `None` if iced still refuses them.
fn reanalyze(bytes: &[u8]) -> Option<Analysis> {
    let Decoded::Ok(insn) = decode::decode_with(bytes, 0, AGENT_DECODER_OPTIONS) else {
        return None;
    };
    let mut a = analyze_insn(&insn, bytes);
    adjust(&insn, bytes, &mut a);
    Some(a)
}

/// The analysis of an instruction that B35–B37 refuse before its operands matter: no REP, no
/// RIP-relative or stack operand, operand 0 memory of `size` bytes or not memory.
fn refusal(prefixes: &[u8], opcode_len: usize, op0_memory: bool, size: u32) -> Analysis {
    Analysis {
        length: prefixes.len() + opcode_len,
        form: Form::Other,
        is_repeated: false,
        has_seg: has_seg(prefixes),
        rip_relative: false,
        stack_access: false,
        op0_memory,
        op0_size: size,
        source: Source::Other,
        base: None,
        index: None,
        scale: 1,
        displacement: 0,
        address_size: 8,
        lock: prefixes.contains(&0xF0),
    }
}

fn has_relative_offset(insn: &Insn) -> bool {
    insn.operands().any(|o| matches!(o, Operand::NearBranch(_)))
}

/// Applies the rows above to iced's analysis.
fn adjust(insn: &Insn, bytes: &[u8], a: &mut Analysis) {
    // bddisasm sets `IsRipRelative` for every relative-offset operand (`ND_OP_OFFS`: Jcc,
    // JMP rel, CALL rel, LOOPcc, JrCXZ, XBEGIN), not only for [rip+disp] memory operands.
    if has_relative_offset(insn) {
        a.rip_relative = true;
    }
    a.has_seg = has_seg(split_prefixes(bytes).0);
    let m = insn.mnemonic;
    if a.op0_memory && X87_ST0_FIRST.contains(&m) {
        a.op0_memory = false;
        a.op0_size = 10;
    }
    if let Some((_, size)) = IMPLICIT_MEMORY_FIRST.iter().find(|(x, _)| *x == m) {
        a.op0_memory = true;
        a.op0_size = *size;
    }
    // A VSIB memory operand 0 (the scatters): bddisasm's size is that of all the elements
    // moved, and its index is the vector register (by number, with the vector's size), which
    // the agent's REG() reads as the general-purpose slot of that number.
    let vsib = insn.operands().find_map(|o| match o {
        Operand::Memory(mem) => match mem.index {
            Some(AddressReg::Vector {
                number,
                size,
                element,
            }) => Some((mem.element_size, number, size, element)),
            _ => None,
        },
        _ => None,
    });
    if let Some((element_size, number, size, element)) = vsib.filter(|_| a.op0_memory) {
        let index_bytes = u32::from(size);
        let index_elem = u32::from(element);
        let elem = element_size.max(1);
        let data_bytes = insn
            .operands()
            .skip(1)
            .find_map(|o| match o {
                Operand::Register(r) => Some(u32::from(r.size)),
                Operand::OtherRegister { size } => Some(u32::from(size)),
                _ => None,
            })
            .unwrap_or(index_bytes);
        let count = (index_bytes / index_elem).min(data_bytes / elem);
        a.op0_size = count * elem;
        a.index = gpr_number(usize::from(number), size);
    }
    // `0F 18 /6` and `/7`: the pinned bddisasm has no PREFETCHIT0/1 (bddisasm 2.x) and decodes
    // the hint-NOP space `NOP Ev`, whose operand 0 has the operand size (8 with REX.W).
    if insn.extensions.contains(Extensions::PREFETCHITI) {
        a.op0_size = nop_ev_size(bytes);
    }
}

/// The operand size of a legacy instruction from its prefixes: 8 with REX.W (a REX counts only
/// right before the opcode), else 2 with 0x66, else 4.
fn nop_ev_size(bytes: &[u8]) -> u32 {
    let prefixes = split_prefixes(bytes).0;
    if prefixes.last().is_some_and(|b| (0x48..=0x4F).contains(b)) {
        8
    } else if prefixes.contains(&0x66) {
        2
    } else {
        4
    }
}
