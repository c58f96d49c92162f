//! Single-#VE runs through `vesim::verdict::run` (`vesim agent`) and the reference CPU.

use super::spec::{BREAK, BREAK_EMULATION_FAILED, ST_NOT_SUPPORTED};
use std::collections::BTreeMap;
use vesim::agent::{AgentOutcome, RejectReason};
use vesim::exec::{ExecReport, ExecRequest};
use vesim::layout;
use vesim::quirks::Profile;
use vesim::verdict::{Verdict, VerdictRequest};
use vesim_model::vcpu::Gpr;
use vesim_model::Outcome;

/// An entry address for `vesim agent` runs outside every page the guest model uses.
pub const G: u64 = 0xFFFF_F800_0050_0010;

/// A request for one #VE on `bytes` in `profile`, the entry holding `old`.
pub fn vreq(profile: Profile, bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> VerdictRequest {
    VerdictRequest {
        bytes: bytes.to_vec(),
        regs: regs.iter().copied().collect(),
        old,
        profile,
        ..VerdictRequest::default()
    }
}

/// The agent's verdict on `req`.
pub fn verdict(req: &VerdictRequest) -> Verdict {
    vesim::verdict::run(req).expect("the request is valid")
}

/// The verdict in `hvmi`.
pub fn hvmi(bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> Verdict {
    verdict(&vreq(Profile::Hvmi, bytes, regs, old))
}

/// The verdict in `fixed`.
pub fn fixed(bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> Verdict {
    verdict(&vreq(Profile::Fixed, bytes, regs, old))
}

/// Register `r` after the verdict.
pub fn reg(v: &Verdict, r: Gpr) -> u64 {
    v.regs[r as usize]
}

/// The reference CPU on the same registers, flags and entry (at its linear address).
pub fn reference(
    bytes: &[u8],
    regs: &[(Gpr, u64)],
    rflags: u64,
    cells: &[(u64, u64)],
) -> ExecReport {
    let r = ExecRequest {
        bytes: bytes.to_vec(),
        regs: regs.iter().copied().collect(),
        rflags,
        mem: cells.iter().copied().collect::<BTreeMap<_, _>>(),
        ..ExecRequest::default()
    };
    let rep = vesim::exec::run(&r).expect("the request is valid");
    assert_eq!(rep.outcome, Outcome::Executed, "reference CPU");
    rep
}

/// A refusal in `hvmi`: one BREAK with EMULATION_FAILED / NOT_SUPPORTED, nothing written, RIP
/// unchanged (B29, B31, B40, Q1).
pub fn assert_hvmi_refusal(v: &Verdict, reason: RejectReason, old: u64) {
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected), "{v:?}");
    assert_eq!(v.reason, Some(reason), "{v:?}");
    assert_eq!(
        v.vmcalls,
        [(BREAK, BREAK_EMULATION_FAILED, ST_NOT_SUPPORTED)],
        "{v:?}"
    );
    assert_eq!(v.entry, old, "nothing written");
    assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP, "RIP not advanced");
}

/// Whether the agent accepted the write (emulated it, whatever it did next).
pub fn accepted(o: Option<AgentOutcome>) -> bool {
    matches!(
        o,
        Some(AgentOutcome::IgnoredIrrelevant | AgentOutcome::IgnoredCache | AgentOutcome::Raised)
    )
}
