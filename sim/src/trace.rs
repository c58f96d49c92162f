//! The event log as stable text, and its hash.
//!
//! Each [`Event`] becomes one line of lower-case fields separated by single spaces, numbers in
//! hex with `0x` (VCPU numbers and exit reasons in decimal):
//!
//! ```text
//! exit cpu=0 reason=48
//! ve cpu=0 qual=0x1aa gla=0xfffff68000000008 gpa=0x2003008
//! agent cpu=0 outcome=raised reason=- old=0x10000007 new=0x10001007
//! vmcall cpu=0 rip=0xfffff88000002150 rdx=0x3 rbx=0x0 rcx=0x0
//! callback monitor=12 entry=0x2003008 old=0x10000007 new=0x10001007
//! swap hook=3 va=0x100000000 old=0x10000007 new=0x10001007
//! agent_fault cpu=0 detail=...
//! alert cpu=0 detail=...
//! ```
//!
//! The trace hash is SHA-256 over the lines, each followed by `\n`, in hex. The same scenario,
//! seed, options and profile give the same hash (I8); wall-clock figures never enter it.

use crate::world::Event;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:#x}"))
}

/// The stable text line of one event.
pub fn event_line(e: &Event) -> String {
    match e {
        Event::VmExit { cpu, reason } => format!("exit cpu={cpu} reason={reason}"),
        Event::Ve {
            cpu,
            qualification,
            gla,
            gpa,
        } => format!("ve cpu={cpu} qual={qualification:#x} gla={gla:#x} gpa={gpa:#x}"),
        Event::Agent {
            cpu,
            outcome,
            reason,
            old,
            new,
        } => format!(
            "agent cpu={cpu} outcome={} reason={} old={} new={}",
            outcome.name(),
            reason.map_or("-", |r| r.name()),
            opt(*old),
            opt(*new)
        ),
        Event::Vmcall {
            cpu,
            rip,
            rdx,
            rbx,
            rcx,
        } => {
            format!("vmcall cpu={cpu} rip={rip:#x} rdx={rdx:#x} rbx={rbx:#x} rcx={rcx:#x}")
        }
        Event::Callback(r) => format!(
            "callback monitor={} entry={:#x} old={:#x} new={:#x}",
            r.monitor.0, r.entry.0, r.old, r.new
        ),
        Event::Swap(r) => format!(
            "swap hook={} va={:#x} old={:#x} new={:#x}",
            r.hook.0, r.va, r.old, r.new
        ),
        Event::AgentFault { cpu, detail } => {
            format!("agent_fault cpu={cpu} detail={}", detail.replace('\n', " "))
        }
        Event::Alert { cpu, detail } => {
            format!("alert cpu={cpu} detail={}", detail.replace('\n', " "))
        }
    }
}

/// SHA-256 over the event lines, in lower-case hex.
pub fn trace_hash(events: &[Event]) -> String {
    let mut h = Sha256::new();
    for e in events {
        h.update(event_line(e).as_bytes());
        h.update(b"\n");
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SHA-256 over several runs' hashes, each followed by `\n` (the top-level hash of a report).
pub fn combined_hash(hashes: &[String]) -> String {
    let mut h = Sha256::new();
    for x in hashes {
        h.update(x.as_bytes());
        h.update(b"\n");
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_of_no_events_is_sha256_of_nothing() {
        // FIPS 180-2 test vector: SHA-256("").
        assert_eq!(
            trace_hash(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn i8_same_seed_same_hash_other_seed_other_hash() {
        use crate::quirks::Profile;
        use crate::workload::{run_builtin, swarm_params, Builtin};
        let b = Builtin::DesktopMix;
        let run = |seed: u64| {
            let p = swarm_params(b, &std::collections::BTreeMap::new(), seed).unwrap();
            run_builtin(b, &p, true, Profile::Fixed, seed)
                .unwrap()
                .trace_hash
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn lines_are_stable_text() {
        let e = Event::VmExit { cpu: 2, reason: 48 };
        assert_eq!(event_line(&e), "exit cpu=2 reason=48");
        // SHA-256("exit cpu=2 reason=48\n") computed independently (sha256sum).
        assert_eq!(
            trace_hash(&[e]),
            "b3c229cf9b9599c8ae3cdc855bfff3d9bd5a827f1d5b714fa32c133b9220433b"
        );
    }
}
