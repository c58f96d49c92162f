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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// I9: any text is a trace or a parse error, never a panic.
        #[test]
        fn i9_any_text_parses_or_is_refused(text in "(vesim-trace 1\n)?(scenario [a-z-]{0,16}\n)?(seed [0-9a-fx]{0,6}\n)?[ -~\n]{0,200}") {
            let _ = TraceFile::parse(&text);
        }
    }

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

/// A trace file: the header that rebuilds the world, the scenario as data (so it replays
/// without its generator), and each run's records and hash.
///
/// ```text
/// vesim-trace 1
/// scenario desktop-mix
/// seed 0
/// profile fixed
/// quirks -                      (or the switches that are on: Q1,Q9)
/// params kpti=1 ops=400 pages=16 processes=4 vcpus=4
/// schedule random:0
/// process 0 protected=1
/// op 0 map pid=0 va=0x100000000 flags=0x2     (op VCPU operation)
/// run ve_on                                  (or ve_off)
/// event exit cpu=0 reason=10                 (one line per event, see event_line)
/// hash 3d...                                 (the run's trace hash)
/// end
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFile {
    /// The built-in's name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// The profile named at run time.
    pub profile: String,
    /// The quirk switches that are on.
    pub quirks: crate::quirks::Quirks,
    /// Scenario parameters.
    pub params: std::collections::BTreeMap<String, u64>,
    /// The VCPU schedule.
    pub schedule: crate::sched::Schedule,
    /// Where the runs stop, in scheduling steps (`None`: when every operation has ended). A
    /// trace of a livelock ends at the step its invariant failed.
    pub steps: Option<u64>,
    /// The scenario.
    pub scenario_data: crate::workload::Scenario,
    /// The runs.
    pub runs: Vec<TraceRun>,
}

/// One run of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRun {
    /// #VE on.
    pub ve: bool,
    /// The event lines.
    pub lines: Vec<String>,
    /// The recorded trace hash.
    pub hash: String,
}

/// The trace format version.
pub const TRACE_VERSION: u32 = 1;

/// A trace file that does not parse: the line (1-based) and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct TraceError {
    /// Line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl TraceFile {
    /// The text of the file.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "vesim-trace {TRACE_VERSION}");
        let _ = writeln!(out, "scenario {}", self.scenario);
        let _ = writeln!(out, "seed {}", self.seed);
        let _ = writeln!(out, "profile {}", self.profile);
        let q = self.quirks.enabled();
        let _ = writeln!(
            out,
            "quirks {}",
            if q.is_empty() {
                "-".to_string()
            } else {
                q.join(",")
            }
        );
        let p: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "params {}", p.join(" "));
        let _ = writeln!(out, "schedule {}", self.schedule);
        if let Some(n) = self.steps {
            let _ = writeln!(out, "steps {n}");
        }
        for (i, prot) in self.scenario_data.processes.iter().enumerate() {
            let _ = writeln!(out, "process {i} protected={}", u8::from(*prot));
        }
        for (cpu, q) in self.scenario_data.queues.iter().enumerate() {
            for op in q {
                let _ = writeln!(out, "op {cpu} {op}");
            }
        }
        for r in &self.runs {
            let _ = writeln!(out, "run {}", if r.ve { "ve_on" } else { "ve_off" });
            for l in &r.lines {
                let _ = writeln!(out, "event {l}");
            }
            let _ = writeln!(out, "hash {}", r.hash);
        }
        out.push_str("end\n");
        out
    }

    /// Parses a trace file.
    pub fn parse(text: &str) -> Result<TraceFile, TraceError> {
        let err = |line: usize, m: String| TraceError { line, message: m };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        // A file that ends early is at fault on the line after its last.
        let end_line = text.lines().count() + 1;
        let mut next = |what: &str| -> Result<(usize, String), TraceError> {
            lines
                .next()
                .map(|(n, l)| (n, l.to_string()))
                .ok_or_else(|| err(end_line, format!("the file ends before {what}")))
        };
        let field = |n: usize, l: &str, key: &str| -> Result<String, TraceError> {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| err(n, format!("expected '{key} ...'")))
        };
        let (n, l) = next("the header")?;
        if l != format!("vesim-trace {TRACE_VERSION}") {
            return Err(err(
                n,
                format!("not a vesim trace of format {TRACE_VERSION}"),
            ));
        }
        let (n, l) = next("scenario")?;
        let scenario = field(n, &l, "scenario")?;
        if crate::workload::Builtin::from_name(&scenario).is_none() {
            return Err(err(n, format!("'{scenario}' is not a built-in scenario")));
        }
        let (n, l) = next("seed")?;
        let seed = crate::cli::parse_u64(&field(n, &l, "seed")?).map_err(|m| err(n, m))?;
        let (n, l) = next("profile")?;
        let profile = field(n, &l, "profile")?;
        let (n, l) = next("quirks")?;
        let qs = field(n, &l, "quirks")?;
        let mut quirks = crate::quirks::Quirks::fixed();
        if qs != "-" {
            for name in qs.split(',') {
                match quirks.switch_mut(name) {
                    Some(s) => *s = true,
                    None => return Err(err(n, format!("'{name}' is not a quirk switch"))),
                }
            }
        }
        let (n, l) = next("params")?;
        let mut params = std::collections::BTreeMap::new();
        for kv in field(n, &format!("{l} "), "params")?.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err(n, format!("'{kv}' is not KEY=VALUE")))?;
            let v = crate::cli::parse_u64(v).map_err(|m| err(n, m))?;
            params.insert(k.to_string(), v);
        }
        let (n, l) = next("schedule")?;
        let schedule = field(n, &l, "schedule")?
            .parse::<crate::sched::Schedule>()
            .map_err(|e| err(n, e.to_string()))?;
        let mut steps = None;
        let mut processes = Vec::new();
        let mut queues: Vec<Vec<crate::ops::GuestOp>> = Vec::new();
        let mut runs: Vec<TraceRun> = Vec::new();
        let mut ended = false;
        for (n, l) in lines {
            if ended {
                return Err(err(n, "text after 'end'".into()));
            }
            let (head, rest) = l.split_once(' ').unwrap_or((l, ""));
            match head {
                "steps" => {
                    if steps.is_some() || !processes.is_empty() || !queues.is_empty() {
                        return Err(err(n, "'steps' comes once, right after 'schedule'".into()));
                    }
                    let v = crate::cli::parse_u64(rest).map_err(|m| err(n, m))?;
                    if v > crate::workload::STEPS_MAX {
                        return Err(err(
                            n,
                            format!("steps {v} exceeds {}", crate::workload::STEPS_MAX),
                        ));
                    }
                    steps = Some(v);
                }
                "process" => {
                    let (idx, kv) = rest
                        .split_once(' ')
                        .ok_or_else(|| err(n, "expected 'process N protected=0|1'".into()))?;
                    if crate::cli::parse_u64(idx).ok() != Some(processes.len() as u64)
                        || !runs.is_empty()
                    {
                        return Err(err(
                            n,
                            "processes must be numbered 0, 1, ... before any run".into(),
                        ));
                    }
                    let prot = match kv {
                        "protected=1" => true,
                        "protected=0" => false,
                        _ => {
                            return Err(err(n, format!("'{kv}' is not protected=0 or protected=1")))
                        }
                    };
                    processes.push(prot);
                }
                "op" => {
                    if !runs.is_empty() {
                        return Err(err(n, "operations must come before the runs".into()));
                    }
                    let (cpu, op) = rest
                        .split_once(' ')
                        .ok_or_else(|| err(n, "expected 'op CPU OPERATION'".into()))?;
                    let cpu = crate::cli::parse_u64(cpu).map_err(|m| err(n, m))?;
                    if cpu >= 64 {
                        return Err(err(n, format!("VCPU {cpu} is out of range")));
                    }
                    let op: crate::ops::GuestOp = op.parse().map_err(|m: String| err(n, m))?;
                    let cpu = cpu as usize;
                    if queues.len() <= cpu {
                        queues.resize(cpu + 1, Vec::new());
                    }
                    queues[cpu].push(op);
                }
                "run" => {
                    let ve = match rest {
                        "ve_on" => true,
                        "ve_off" => false,
                        _ => return Err(err(n, format!("'{rest}' is not ve_on or ve_off"))),
                    };
                    if runs.last().is_some_and(|r| r.hash.is_empty()) {
                        return Err(err(n, "the previous run has no hash".into()));
                    }
                    runs.push(TraceRun {
                        ve,
                        lines: Vec::new(),
                        hash: String::new(),
                    });
                }
                "event" => match runs.last_mut() {
                    Some(r) if r.hash.is_empty() => r.lines.push(rest.to_string()),
                    _ => return Err(err(n, "an event outside a run".into())),
                },
                "hash" => match runs.last_mut() {
                    Some(r) if r.hash.is_empty() => {
                        if rest.len() != 64 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(err(n, "a hash is 64 hex digits".into()));
                        }
                        r.hash = rest.to_string();
                    }
                    _ => return Err(err(n, "a hash outside a run".into())),
                },
                "end" if rest.is_empty() => ended = true,
                _ => return Err(err(n, format!("'{head}' is not a trace record"))),
            }
        }
        if !ended {
            return Err(err(
                text.lines().count(),
                "the trace is truncated (no 'end')".into(),
            ));
        }
        if runs.is_empty() || runs.iter().any(|r| r.hash.is_empty()) {
            return Err(err(text.lines().count(), "every run needs its hash".into()));
        }
        Ok(TraceFile {
            scenario,
            seed,
            profile,
            quirks,
            params,
            schedule,
            steps,
            scenario_data: crate::workload::Scenario { processes, queues },
            runs,
        })
    }
}

/// Why a replay did not match.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// The trace names something this vesim cannot rebuild.
    #[error("{0}")]
    Setup(String),
    /// A record differs (or one side has more records).
    #[error("run {run}, record {record}: recorded '{recorded}', replayed '{replayed}'")]
    Record {
        /// Run name.
        run: &'static str,
        /// 1-based record number.
        record: usize,
        /// The recorded line (or "(none)").
        recorded: String,
        /// The replayed line (or "(none)").
        replayed: String,
    },
    /// Every record matched but the hash line does not.
    #[error("run {run}: the recorded hash {recorded} is not the replayed {replayed}")]
    Hash {
        /// Run name.
        run: &'static str,
        /// Recorded.
        recorded: String,
        /// Replayed.
        replayed: String,
    },
}

/// Re-runs every run of a trace and checks every record and the hash. Returns the number of
/// records verified.
pub fn replay(tf: &TraceFile) -> Result<usize, ReplayError> {
    use crate::workload::{
        build_world_quirks, resolve_params, run_scenario, run_scenario_until, Builtin,
    };
    let b = Builtin::from_name(&tf.scenario).ok_or_else(|| {
        ReplayError::Setup(format!("'{}' is not a built-in scenario", tf.scenario))
    })?;
    let params = resolve_params(b, &tf.params).map_err(|e| ReplayError::Setup(e.to_string()))?;
    let mut total = 0;
    for r in &tf.runs {
        let name = if r.ve { "ve_on" } else { "ve_off" };
        let w = build_world_quirks(b, &params, r.ve, tf.quirks, tf.seed)
            .map_err(|e| ReplayError::Setup(e.to_string()))?;
        let w = match tf.steps {
            Some(n) => run_scenario_until(w, &tf.scenario_data, &tf.schedule, n),
            None => run_scenario(w, &tf.scenario_data, &tf.schedule),
        }
        .map_err(|e| ReplayError::Setup(e.to_string()))?;
        let replayed: Vec<String> = w.events.iter().map(event_line).collect();
        for i in 0..r.lines.len().max(replayed.len()) {
            let a = r.lines.get(i);
            let b = replayed.get(i);
            if a != b {
                return Err(ReplayError::Record {
                    run: name,
                    record: i + 1,
                    recorded: a.cloned().unwrap_or_else(|| "(none)".into()),
                    replayed: b.cloned().unwrap_or_else(|| "(none)".into()),
                });
            }
        }
        let h = trace_hash(&w.events);
        if h != r.hash {
            return Err(ReplayError::Hash {
                run: name,
                recorded: r.hash.clone(),
                replayed: h,
            });
        }
        total += r.lines.len();
    }
    Ok(total)
}

/// Runs a built-in with #VE on and/or off and returns its trace file.
pub fn record(
    b: crate::workload::Builtin,
    sets: &std::collections::BTreeMap<String, u64>,
    ves: &[bool],
    profile: crate::quirks::Profile,
    seed: u64,
    schedule: &crate::sched::Schedule,
) -> Result<TraceFile, crate::workload::RunError> {
    use crate::workload::{generate, resolve_params};
    let params = resolve_params(b, sets)?;
    let sc = generate(b, &params, seed);
    record_scenario(
        b,
        &params,
        profile.quirks(),
        &profile.to_string(),
        seed,
        schedule,
        None,
        sc,
        ves,
    )
}

/// Runs a given scenario with #VE on and/or off and returns its trace file; with `steps`, the
/// runs stop after that many scheduling steps (or at a VCPU stop before that).
#[allow(clippy::too_many_arguments)]
pub fn record_scenario(
    b: crate::workload::Builtin,
    params: &std::collections::BTreeMap<&'static str, u64>,
    quirks: crate::quirks::Quirks,
    profile: &str,
    seed: u64,
    schedule: &crate::sched::Schedule,
    steps: Option<u64>,
    sc: crate::workload::Scenario,
    ves: &[bool],
) -> Result<TraceFile, crate::workload::RunError> {
    use crate::workload::{build_world_quirks, run_scenario, run_scenario_until};
    let mut runs = Vec::new();
    for &ve in ves {
        let w = build_world_quirks(b, params, ve, quirks, seed)?;
        let w = match steps {
            Some(n) => run_scenario_until(w, &sc, schedule, n)?,
            None => run_scenario(w, &sc, schedule)?,
        };
        runs.push(TraceRun {
            ve,
            lines: w.events.iter().map(event_line).collect(),
            hash: trace_hash(&w.events),
        });
    }
    Ok(TraceFile {
        scenario: b.name().to_string(),
        seed,
        profile: profile.to_string(),
        quirks,
        params: params.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        schedule: schedule.clone(),
        steps,
        scenario_data: sc,
        runs,
    })
}
