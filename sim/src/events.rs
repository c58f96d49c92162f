//! What the actors report: the events of a run in order ([`Event`], [`EventLog`] with its
//! running trace hash), the harness counters ([`Counters`]), the cache operations a run made
//! ([`CacheOp`]) and why a VCPU stopped ([`Stop`]), and each event's stable text line
//! ([`write_event`]), what a trace file holds and its hash covers. The guest, the agent and introcore write
//! here; the world owns the sinks and the checkers read them.

use crate::abi::{AgentOutcome, RejectReason};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use vesim_model::{Gla, Gpa, Outcome, VcpuId};

/// A monitor handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MonitorId(pub u64);

/// What a monitor's callback was given (the translation hooks of the next layer replace this
/// recording callback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallbackRecord {
    /// The monitor.
    pub monitor: MonitorId,
    /// Guest-physical address of the entry.
    pub entry: Gpa,
    /// Value before the write.
    pub old: u64,
    /// Value after the write.
    pub new: u64,
}

/// A translation-hook handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TranslationId(pub u64);

/// A swap callback record: the translation of `va` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwapRecord {
    /// The hook.
    pub hook: TranslationId,
    /// The page.
    pub va: u64,
    /// Previous leaf (0 if none).
    pub old: u64,
    /// New leaf (0 if none).
    pub new: u64,
}

/// Harness counters (VE-SEMANTICS section 3). All deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// VM exits by basic reason.
    pub exits: BTreeMap<u32, u64>,
    /// #VEs delivered.
    pub ve_total: u64,
    /// Page-walk #VEs (qualification bit 8 clear).
    pub ve_page_walk: u64,
    /// PT-write #VEs (bit 8 set, reason 48).
    pub ve_pt_write: u64,
    /// #VEs the agent could not classify: it found an exit reason other than 48 in the area
    /// (only a corrupted area shows one; the modelled CPU converts only EPT violations), or it
    /// had no usable CPU-map slot and returned at once (`fixed` Q20). Such a #VE moves from its
    /// delivered kind to this one.
    pub ve_unknown: u64,
    /// PT-write outcome: not relevant.
    pub ignored_irrelevant: u64,
    /// PT-write outcome: relevant, entry cached.
    pub ignored_cache: u64,
    /// PT-write outcome: raised to introcore.
    pub raised: u64,
    /// PT-write outcome: refused by the agent, performed by introcore.
    pub emulated_by_introcore: u64,
    /// PT-write outcome: refused and not performed.
    pub rejected: u64,
    /// Page walks that set bits without a raise.
    pub page_walk_set: u64,
    /// Page walks that raised (the KPTI case).
    pub page_walk_raised: u64,
    /// VMCALLs by RDX.
    pub vmcalls: BTreeMap<u64, u64>,
    /// Agent cache lookups (relevant writes only).
    pub cache_lookups: u64,
    /// Lookups that found the entry.
    pub cache_hits: u64,
    /// Introcore monitor callbacks invoked.
    pub callbacks: u64,
    /// Page-table-writing instructions the guest memory manager executed.
    pub pt_writes: u64,
}

impl Counters {
    /// Total VM exits.
    pub fn exits_total(&self) -> u64 {
        self.exits.values().sum()
    }
    pub(crate) fn exit(&mut self, reason: u32) {
        *self.exits.entry(reason).or_default() += 1;
    }
}

/// One thing that happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A VM exit.
    VmExit {
        /// VCPU.
        cpu: VcpuId,
        /// Basic exit reason.
        reason: u32,
    },
    /// A #VE was delivered.
    Ve {
        /// VCPU.
        cpu: VcpuId,
        /// Qualification.
        qualification: u64,
        /// Guest-linear address.
        gla: Gla,
        /// Guest-physical address.
        gpa: Gpa,
    },
    /// The agent's verdict on a #VE.
    Agent {
        /// VCPU.
        cpu: VcpuId,
        /// Outcome.
        outcome: AgentOutcome,
        /// Rejection reason, for refusals.
        reason: Option<RejectReason>,
        /// Old value read, if any.
        old: Option<u64>,
        /// New value computed, if any.
        new: Option<u64>,
    },
    /// A VMCALL reached the hypervisor.
    Vmcall {
        /// VCPU.
        cpu: VcpuId,
        /// RIP of the VMCALL.
        rip: u64,
        /// RDX (call number).
        rdx: u64,
        /// RBX (argument 1).
        rbx: u64,
        /// RCX (argument 2).
        rcx: u64,
    },
    /// A monitor callback ran.
    Callback(CallbackRecord),
    /// A translation hook's swap callback ran.
    Swap(SwapRecord),
    /// The agent faulted (I10).
    AgentFault {
        /// VCPU.
        cpu: VcpuId,
        /// What faulted.
        detail: String,
    },
    /// Introcore raised an alert.
    Alert {
        /// VCPU.
        cpu: VcpuId,
        /// What was attempted.
        detail: String,
    },
}

/// The events of a run, in order, and the running trace hash over them.
///
/// Every event is kept unless [`EventLog::keep`] is off; then only the events of the current
/// step are (the window the checkers read), so that a long run's memory does not grow with its
/// length. With a hash started ([`EventLog::hash_from`]) each event's trace line is hashed as it
/// is pushed ([`crate::trace`]).
#[derive(Clone, Debug)]
pub struct EventLog {
    window: Vec<Event>,
    /// Events dropped before the window.
    dropped: u64,
    /// Whether every event is kept.
    keep: bool,
    hasher: Option<sha2::Sha256>,
    line: String,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            window: Vec::new(),
            dropped: 0,
            keep: true,
            hasher: None,
            line: String::new(),
        }
    }
}

impl EventLog {
    /// Appends an event.
    pub fn push(&mut self, e: Event) {
        if let Some(h) = self.hasher.as_mut() {
            hash_event(h, &mut self.line, &e);
        }
        self.window.push(e);
    }

    /// Events pushed so far, dropped ones included.
    pub fn total(&self) -> u64 {
        self.dropped + self.window.len() as u64
    }

    /// The events from number `n` (counted as [`EventLog::total`] counts) that are still held.
    pub fn since(&self, n: u64) -> &[Event] {
        let skip = n.saturating_sub(self.dropped);
        usize::try_from(skip)
            .ok()
            .and_then(|s| self.window.get(s..))
            .unwrap_or(&[])
    }

    /// The events held: all of them while [`EventLog::keep`] is on.
    pub fn held(&self) -> &[Event] {
        &self.window
    }

    /// Keeps every event (`true`, the default) or only the current step's.
    pub fn keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Starts the trace hash from `prefix` (a hasher fed with the trace's header and scenario,
    /// [`crate::trace::TraceFile::prefix_hasher`]); the events pushed from now on are hashed.
    pub fn hash_from(&mut self, prefix: sha2::Sha256) {
        self.hasher = Some(prefix);
    }

    /// Starts a hash of the events alone (no header; what a benchmark of hashing measures).
    pub fn start_hash(&mut self) {
        self.hasher = Some(sha2::Sha256::default());
    }

    /// The trace hash so far (`None` when no hash was started).
    pub fn hash(&self) -> Option<String> {
        self.hasher.clone().map(hex_digest)
    }

    /// Drops the events held (they still count in [`EventLog::total`] and the hash).
    pub fn clear(&mut self) {
        self.dropped += self.window.len() as u64;
        self.window.clear();
    }

    /// A new step starts: unless every event is kept, the previous step's are dropped.
    pub fn new_step(&mut self) {
        if !self.keep {
            self.dropped += self.window.len() as u64;
            self.window.clear();
        }
    }
}

impl PartialEq for EventLog {
    fn eq(&self, other: &Self) -> bool {
        self.window == other.window
            && self.dropped == other.dropped
            && self.keep == other.keep
            && self.hash() == other.hash()
    }
}

impl std::ops::Deref for EventLog {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.window
    }
}

/// Why a VCPU stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An access made by the agent faulted (I10: `agent_fault`).
    AgentFault(String),
    /// The guest ended in an outcome the world does not handle (double fault, #PF with no
    /// handler, unsupported instruction, ...).
    Guest(Outcome),
    /// The harness could not go on: not a failure of the agent, introcore or the guest, and
    /// never reported as one.
    Harness(HarnessError),
}

/// What stops the harness itself (a scenario or a call that does not fit the world).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HarnessError {
    /// A VCPU that the world does not have.
    #[error("there is no VCPU {0}")]
    NoVcpu(usize),
    /// An operation's process exited or never existed.
    #[error("process {0} vanished")]
    ProcessVanished(u32),
    /// A bound of the harness on the steps of one piece of work.
    #[error("{what} did not complete in {steps} steps")]
    StepBound {
        /// The work.
        what: String,
        /// The bound.
        steps: u64,
    },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::AgentFault(d) => write!(f, "the agent faulted: {d}"),
            Stop::Guest(o) => write!(f, "the guest stopped at {o}"),
            Stop::Harness(e) => write!(f, "the harness stopped: {e}"),
        }
    }
}

/// A VCPU's registers as an instruction left them (`World::completed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The VCPU.
    pub cpu: VcpuId,
    /// GPRs.
    pub gpr: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}

/// One operation on the #VE cache, by entry address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOp {
    /// The agent looked the entry up (B71).
    Lookup(u64),
    /// Introcore added the entry (B73–B75).
    Insert(u64),
    /// Introcore evicted the entry (B76).
    Remove(u64),
}

// The stable text of an event: one line of a trace file ([`crate::trace`]).

fn opt(out: &mut String, v: Option<u64>) {
    match v {
        Some(x) => {
            let _ = write!(out, "{x:#x}");
        }
        None => out.push('-'),
    }
}

/// Appends the stable text line of one event to `out`.
pub fn write_event(out: &mut String, e: &Event) {
    let _ = match e {
        Event::VmExit { cpu, reason } => write!(out, "exit cpu={cpu} reason={reason}"),
        Event::Ve {
            cpu,
            qualification,
            gla,
            gpa,
        } => write!(
            out,
            "ve cpu={cpu} qual={qualification:#x} gla={gla} gpa={gpa}"
        ),
        Event::Agent {
            cpu,
            outcome,
            reason,
            old,
            new,
        } => {
            let _ = write!(
                out,
                "agent cpu={cpu} outcome={} reason={} old=",
                outcome.name(),
                reason.map_or("-", |r| r.name())
            );
            opt(out, *old);
            out.push_str(" new=");
            opt(out, *new);
            Ok(())
        }
        Event::Vmcall {
            cpu,
            rip,
            rdx,
            rbx,
            rcx,
        } => write!(
            out,
            "vmcall cpu={cpu} rip={rip:#x} rdx={rdx:#x} rbx={rbx:#x} rcx={rcx:#x}"
        ),
        Event::Callback(r) => write!(
            out,
            "callback monitor={} entry={:#x} old={:#x} new={:#x}",
            r.monitor.0, r.entry.0, r.old, r.new
        ),
        Event::Swap(r) => write!(
            out,
            "swap hook={} va={:#x} old={:#x} new={:#x}",
            r.hook.0, r.va, r.old, r.new
        ),
        Event::AgentFault { cpu, detail } => {
            write!(
                out,
                "agent_fault cpu={cpu} detail={}",
                detail.replace('\n', " ")
            )
        }
        Event::Alert { cpu, detail } => {
            write!(out, "alert cpu={cpu} detail={}", detail.replace('\n', " "))
        }
    };
}

/// The stable text line of one event.
pub fn event_line(e: &Event) -> String {
    let mut s = String::new();
    write_event(&mut s, e);
    s
}

/// Feeds the trace line of `e` (`event ...` and `\n`) to `h`, formatting it in `buf`.
pub fn hash_event(h: &mut Sha256, buf: &mut String, e: &Event) {
    buf.clear();
    buf.push_str("event ");
    write_event(buf, e);
    buf.push('\n');
    h.update(buf.as_bytes());
}

/// A finished hash in lower-case hex.
pub fn hex_digest(h: Sha256) -> String {
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod stop_tests {
    use super::*;
    use vesim_model::Gla;

    /// A stop reads as words, not as Rust's debug format.
    #[test]
    fn stops_are_in_words() {
        let s = Stop::Guest(Outcome::Unsupported {
            mnemonic: "int3".into(),
        });
        assert_eq!(
            s.to_string(),
            "the guest stopped at 'int3', an instruction the reference CPU does not implement"
        );
        let pf = Stop::Guest(Outcome::PageFault {
            error_code: vesim_model::paging::PageFaultErrorCode::from_bits_retain(2),
            cr2: Gla(0x1000),
        });
        assert_eq!(
            pf.to_string(),
            "the guest stopped at a page fault at 0x1000 (error code 0x2)"
        );
    }
}
