//! The agent's decoder as HVMI builds it: bddisasm, called by `VeHandlePtWrite` as
//! `NdDecodeEx(&instrux, RIP, 16, ND_CODE_64, ND_DATA_64)` (vendor `ND_VEND_ANY`, every
//! feature on), on the 15 bytes the agent fetched (see `World::fetch_instruction`).
//!
//! vesim decodes with iced-x86 and describes the result in bddisasm's terms
//! ([`vesim_model::cpu::decode::analyze`]); where the two decoders disagree on a byte sequence,
//! [`vesim_model::cpu::bddisasm`] holds the difference as data. This module turns either into
//! the agent's decode-level verdict: the first of B34–B37 that refuses the instruction, or the
//! fields B38–B49 go on with.

use super::RejectReason;
/// The agent's analysis of the fetched bytes: iced's, corrected where bddisasm decodes
/// differently. `None` where bddisasm does not decode them.
pub use vesim_model::cpu::bddisasm::agent_analyze;
use vesim_model::cpu::decode::{AddressRegister, Analysis, Form, Source};

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
