//! What a world's event list and introcore's records say, in the tests' terms.

use vesim::agent::{AgentOutcome, RejectReason};
use vesim::introcore::pts::TranslationId;
use vesim::world::{Event, World};
use vesim_model::Gpa;

/// The VMCALLs seen, as (RDX, RBX, RCX).
pub fn vmcalls(w: &World) -> Vec<(u64, u64, u64)> {
    vmcalls_since(w, 0)
}

/// The VMCALLs seen, as (RDX, RBX, RCX), from event `from` on.
pub fn vmcalls_since(w: &World, from: usize) -> Vec<(u64, u64, u64)> {
    w.events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Vmcall { rdx, rbx, rcx, .. } => Some((*rdx, *rbx, *rcx)),
            _ => None,
        })
        .collect()
}

/// The agent's verdicts on every #VE, with their refusal reasons.
pub fn outcomes(w: &World) -> Vec<(AgentOutcome, Option<RejectReason>)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Agent {
                outcome, reason, ..
            } => Some((*outcome, *reason)),
            _ => None,
        })
        .collect()
}

/// The agent's verdicts on page-table-write #VEs (page walks left out), from event `from` on.
pub fn pt_outcomes_since(w: &World, from: usize) -> Vec<AgentOutcome> {
    w.events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Agent { outcome, .. }
                if !matches!(
                    outcome,
                    AgentOutcome::PageWalkSet | AgentOutcome::PageWalkRaised
                ) =>
            {
                Some(*outcome)
            }
            _ => None,
        })
        .collect()
}

/// ... from the first event on.
pub fn pt_outcomes(w: &World) -> Vec<AgentOutcome> {
    pt_outcomes_since(w, 0)
}

/// The #VEs delivered, as (qualification, GLA, GPA).
pub fn ves(w: &World) -> Vec<(u64, u64, u64)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Ve {
                qualification,
                gla,
                gpa,
                ..
            } => Some((*qualification, gla.0, gpa.0)),
            _ => None,
        })
        .collect()
}

/// Callbacks as (entry, old, new).
pub fn callbacks(w: &World) -> Vec<(Gpa, u64, u64)> {
    w.intro
        .callbacks
        .iter()
        .map(|c| (c.entry, c.old, c.new))
        .collect()
}

/// The VCPUs introcore raised an alert for, in order.
pub fn alerts(w: &World) -> Vec<usize> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Alert { cpu, .. } => Some(cpu.0),
            _ => None,
        })
        .collect()
}

/// The swap callbacks of hook `id` as (old, new).
pub fn swaps_of(w: &World, id: TranslationId) -> Vec<(u64, u64)> {
    w.intro
        .swaps
        .iter()
        .filter(|s| s.hook == id)
        .map(|s| (s.old, s.new))
        .collect()
}
