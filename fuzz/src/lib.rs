//! The bddisasm side of the `agent_decode` fuzz target and of the `decode_survey` example.
//!
//! [`bddisasm_verdict`] reads, from bddisasm's `INSTRUX`, exactly the fields HVMI's
//! `VeHandlePtWrite` reads, in its order: the status of `NdDecodeEx(&instrux, RIP, 16,
//! ND_CODE_64, ND_DATA_64)`, then `IsRepeated`, `HasSeg`, `IsRipRelative`, `StackAccess`,
//! `Operands[0].Type` and `.Size`, the memory operand's base, index, scale and displacement,
//! `Instruction`, `Operands[1]` and `Length`. The decoder is the one the `bddisasm` crate
//! bundles; [`pinned_exception`] names the byte sequences on which HVMI's pinned bddisasm
//! (727c87e) decides otherwise.

use bddisasm::ffi;
use std::mem::MaybeUninit;
use vesim::agent::decoder::{
    gpr_number, split_prefixes, AgentInstruction, DecodeVerdict, Form, Source,
};
use vesim::agent::RejectReason;
use vesim_model::vcpu::Gpr;

/// How many bytes the agent fetches (bddisasm's `ND_MAX_INSTRUCTION_LENGTH`).
pub const FETCH: usize = 15;

/// The agent's 16-byte `InstructionBytes`: the 15 fetched bytes (zero-padded) and a zero.
pub fn agent_buffer(data: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = data.len().min(FETCH);
    b[..n].copy_from_slice(&data[..n]);
    b
}

/// The raw decode, as the agent calls it.
pub fn decode(buf: &[u8; 16]) -> Option<ffi::INSTRUX> {
    let mut ix = MaybeUninit::<ffi::INSTRUX>::uninit();
    // SAFETY: NdDecodeEx reads at most 16 bytes of `buf` and zeroes, then fills, `ix` before
    // it returns success; `ix` is read only then.
    let status = unsafe {
        ffi::NdDecodeEx(
            ix.as_mut_ptr(),
            buf.as_ptr(),
            16,
            ffi::ND_CODE_64 as u8,
            ffi::ND_DATA_64 as u8,
        )
    };
    if status >= 0x8000_0000 {
        return None;
    }
    // SAFETY: success: the structure is initialised.
    Some(unsafe { ix.assume_init() })
}

fn form(c: ffi::ND_INS_CLASS) -> Form {
    use ffi::ND_INS_CLASS as I;
    match c {
        I::ND_INS_MOV => Form::Mov,
        I::ND_INS_STOS => Form::Stos,
        I::ND_INS_XCHG => Form::Xchg,
        I::ND_INS_CMPXCHG => Form::Cmpxchg,
        I::ND_INS_OR => Form::Or,
        I::ND_INS_AND => Form::And,
        I::ND_INS_XOR => Form::Xor,
        I::ND_INS_BT => Form::Bt,
        I::ND_INS_BTS => Form::Bts,
        I::ND_INS_BTR => Form::Btr,
        I::ND_INS_BTC => Form::Btc,
        _ => Form::Other,
    }
}

/// The operand-1 view of `VeHandlePtWrite`: a register by number and size, an immediate, or
/// neither.
fn source(op: &ffi::ND_OPERAND) -> Source {
    let t = op.Type();
    if t == ffi::ND_OPERAND_TYPE::ND_OP_REG as u8 {
        // SAFETY: the Register arm of the union is the one a REG operand fills.
        let r = unsafe { op.Info.Register };
        if r.Type == ffi::ND_REG_TYPE::ND_REG_GPR {
            let high = r.IsHigh8() != 0;
            return match Gpr::ALL.get(r.Reg as usize) {
                Some(g) => Source::Register(*g, r.Size as u8, high),
                None => Source::Other,
            };
        }
        Source::Other
    } else if t == ffi::ND_OPERAND_TYPE::ND_OP_IMM as u8 {
        // SAFETY: the Immediate arm of the union is the one an IMM operand fills.
        Source::Immediate(unsafe { op.Info.Immediate.Imm })
    } else {
        Source::Other
    }
}

/// The agent's decode-level verdict on `data` according to the bundled bddisasm.
pub fn bddisasm_verdict(data: &[u8]) -> DecodeVerdict {
    let buf = agent_buffer(data);
    let Some(ix) = decode(&buf) else {
        return DecodeVerdict::Refused(RejectReason::DecodeError);
    };
    verdict_of(&ix, ix.HasSeg() != 0)
}

/// B35–B37 on a decoded `INSTRUX`, with `has_seg` for its `HasSeg`.
fn verdict_of(ix: &ffi::INSTRUX, has_seg: bool) -> DecodeVerdict {
    if ix.IsRepeated() != 0 {
        return DecodeVerdict::Refused(RejectReason::Rep);
    }
    if has_seg {
        return DecodeVerdict::Refused(RejectReason::SegmentPrefix);
    }
    if ix.IsRipRelative() != 0 {
        return DecodeVerdict::Refused(RejectReason::RipRelative);
    }
    if ix.StackAccess != 0 {
        return DecodeVerdict::Refused(RejectReason::StackAccess);
    }
    let count = ix.OperandsCount() as usize;
    let op0 = &ix.Operands[0];
    if count == 0 || op0.Type() != ffi::ND_OPERAND_TYPE::ND_OP_MEM as u8 {
        return DecodeVerdict::Refused(RejectReason::NotMemory);
    }
    if op0.Size != 8 {
        return DecodeVerdict::Refused(RejectReason::Size);
    }
    // SAFETY: the Memory arm of the union is the one a MEM operand fills.
    let m = unsafe { op0.Info.Memory };
    let base = if m.HasBase() != 0 {
        gpr_number(usize::from(m.Base()), m.BaseSize)
    } else {
        None
    };
    let index = if m.HasIndex() != 0 {
        gpr_number(usize::from(m.Index), m.IndexSize)
    } else {
        None
    };
    // A VSIB index of number 16-31 has no GPR slot: HVMI's REG() reads past R15 there, which
    // vesim does not model; it compares as no index (scale 1) on both sides.
    let scale = if m.HasIndex() != 0 && index.is_some() {
        u32::from(m.Scale())
    } else {
        1
    };
    let displacement = if m.HasDisp() != 0 { m.Disp } else { 0 };
    let source = if count > 1 {
        source(&ix.Operands[1])
    } else {
        Source::Other
    };
    DecodeVerdict::Decoded(AgentInstruction {
        length: ix.Length,
        form: form(ix.Instruction),
        source,
        base,
        index,
        scale,
        displacement,
    })
}

/// How HVMI's pinned bddisasm (727c87e, a 1.3x revision) decides an input, where it differs
/// from the bundled 2.x one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// As the bundled decoder.
    Same,
    /// This verdict instead.
    Verdict(DecodeVerdict),
    /// The pinned decoder decodes the input and the bundled one does not, so its operand
    /// model cannot be read here: the input is not judged.
    Unknown(&'static str),
}

/// Instruction sets bddisasm added in 2.x: the pinned decoder has no entries for them.
const NEW_IN_2X: &[ffi::ND_INS_SET] = &[
    ffi::ND_INS_SET::ND_SET_APX_F,
    ffi::ND_INS_SET::ND_SET_USER_MSR,
    ffi::ND_INS_SET::ND_SET_AMXFP16,
    ffi::ND_INS_SET::ND_SET_AMXCOMPLEX,
    ffi::ND_INS_SET::ND_SET_AVXIFMA,
    ffi::ND_INS_SET::ND_SET_AVXNECONVERT,
    ffi::ND_INS_SET::ND_SET_AVXVNNIINT8,
    ffi::ND_INS_SET::ND_SET_AVXVNNIINT16,
    ffi::ND_INS_SET::ND_SET_CMPCCXADD,
    ffi::ND_INS_SET::ND_SET_MSRLIST,
    ffi::ND_INS_SET::ND_SET_WRMSRNS,
    ffi::ND_INS_SET::ND_SET_RAOINT,
    ffi::ND_INS_SET::ND_SET_SHA512,
    ffi::ND_INS_SET::ND_SET_SM3,
    ffi::ND_INS_SET::ND_SET_SM4,
    ffi::ND_INS_SET::ND_SET_TSE,
];

/// The pinned decoder's view of `data` (see [`Pinned`]); each arm names the difference.
pub fn pinned_exception(data: &[u8]) -> Pinned {
    let buf = agent_buffer(data);
    let (prefixes, rest) = split_prefixes(&buf[..FETCH]);
    let decode_error = Pinned::Verdict(DecodeVerdict::Refused(RejectReason::DecodeError));
    // 2.x reads D5 as the REX2 prefix (APX); 1.x reads AAD, which is invalid in 64-bit mode.
    if rest.first() == Some(&0xD5) {
        return decode_error;
    }
    // EVEX P0 bit 3 (APX's B4) and a clear P1 bit 2 (APX's X4/U) are reserved values in 1.x,
    // which rejects them; 2.x accepts them.
    if let [0x62, p0, p1, ..] = rest {
        if p0 & 0x08 != 0 || p1 & 0x04 == 0 {
            return decode_error;
        }
    }
    let Some(ix) = decode(&buf) else {
        // VIA PadLock (0F A6, 0F A7) and Cyrix (0F 36..0F 3F) are in 1.x and gone from 2.x.
        if let [0x0F, op, ..] = rest {
            if matches!(op, 0xA6 | 0xA7 | 0x36 | 0x39 | 0x3C | 0x3D | 0x3F) {
                return Pinned::Unknown(
                    "a VIA or Cyrix opcode, decoded by the pinned bddisasm only",
                );
            }
        }
        return Pinned::Same;
    };
    if NEW_IN_2X.contains(&ix.IsaSet) || ix.Instruction == ffi::ND_INS_CLASS::ND_INS_RMPQUERY {
        return decode_error;
    }
    // 1.x's HasSeg in 64-bit mode ignores 26 and 36 (2.x sets it for every segment prefix).
    let pinned_has_seg = prefixes
        .iter()
        .any(|b| matches!(b, 0x2E | 0x3E | 0x64 | 0x65));
    if ix.HasSeg() != 0 && !pinned_has_seg {
        return Pinned::Verdict(verdict_of(&ix, false));
    }
    Pinned::Same
}

/// The verdict HVMI's agent gives, or why the input cannot be judged.
pub fn hvmi_verdict(data: &[u8]) -> Result<DecodeVerdict, &'static str> {
    match pinned_exception(data) {
        Pinned::Same => Ok(bddisasm_verdict(data)),
        Pinned::Verdict(v) => Ok(v),
        Pinned::Unknown(why) => Err(why),
    }
}

/// vesim's verdict on the same bytes.
pub fn vesim_verdict(data: &[u8]) -> DecodeVerdict {
    let buf = agent_buffer(data);
    vesim::agent::decoder::decode_verdict(&buf[..FETCH], 0).0
}

/// The fields on which the two verdicts must agree: the refusal reason, or, for a decoded
/// instruction, everything B38–B49 read. The length and the source matter only where the
/// agent emulates (a refused write never moves RIP and never reads operand 1).
pub fn comparable(v: DecodeVerdict) -> DecodeVerdict {
    match v {
        DecodeVerdict::Decoded(mut d) => {
            let emulated = !matches!(d.form, Form::Other | Form::Bt);
            if !emulated {
                d.length = 0;
                d.source = Source::Other;
            }
            if let Source::Register(g, s, _) = d.source {
                // HVMI's REG() indexes by number: a high-byte register reads the same slot.
                d.source = Source::Register(g, s, false);
            }
            DecodeVerdict::Decoded(d)
        }
        r => r,
    }
}

/// A class vesim does not model yet, by name: EVEX encodings that bddisasm accepts and
/// iced refuses (an EVEX.W the instruction does not allow, and other field checks bddisasm
/// leaves out). Found by this target and by `decode_survey` (about 1 in 10^7 random inputs).
pub fn known_gap(bytes: &[u8], vesim: &DecodeVerdict) -> Option<&'static str> {
    let (_, rest) = split_prefixes(bytes);
    let refused = *vesim == DecodeVerdict::Refused(RejectReason::DecodeError);
    let bundled_decodes = decode(&agent_buffer(bytes)).is_some();
    (rest.first() == Some(&0x62) && refused && bundled_decodes)
        .then_some("an EVEX encoding bddisasm accepts and iced refuses")
}

/// The `agent_decode` oracle: vesim's verdict equals the one HVMI's agent gives, field for
/// field ([`comparable`]); a disagreement panics with both. Inputs HVMI's decoder cannot be
/// judged on ([`Pinned::Unknown`]) and the [`known_gap`] class are left out.
pub fn agent_decode(data: &[u8]) {
    let bytes = &data[..data.len().min(FETCH)];
    let v = comparable(vesim_verdict(bytes));
    let Ok(h) = hvmi_verdict(bytes) else {
        return;
    };
    if v != comparable(h) && known_gap(bytes, &v).is_some() {
        return;
    }
    let h = comparable(h);
    assert!(
        v == h,
        "bytes {bytes:02x?}: vesim {v:?}, HVMI's bddisasm {h:?}"
    );
}
