//! The event log as stable text, and its hash.
//!
//! Each [`crate::events::Event`] becomes one line of lower-case fields separated by single spaces, numbers in
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
//! A trace file ([`TraceFile`]) holds the header that rebuilds the world, the scenario as data,
//! and each run's events and hash.
//!
//! **What a hash covers.** The trace hash of a run is SHA-256, in lower-case hex, over the
//! lines of its trace file from the first (`vesim-trace 2`) through the run's last `event`
//! line, each followed by `\n`, with the lines of any run before it left out: the header
//! (format, scenario, seed, profile, quirk switches, parameters, schedule, step bound), every
//! `process` and `op` line, the run's `run ve_on` or `ve_off` line and its `event` lines. So
//! `head -n K file | sha256sum`, K the number of the line before a single-run trace's `hash`
//! line, prints that hash. The same header and scenario give the same hash (I8); wall-clock
//! figures never enter it. `vesim run` prints the same hash for a run it does not write.

mod replay;

pub use crate::events::{event_line, hash_event, hex_digest, write_event};
pub use replay::{replay, replay_text, rerecord, ReplayError};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// SHA-256 over several runs' hashes, each followed by `\n` (the top-level hash of a report).
pub fn combined_hash(hashes: &[String]) -> String {
    let mut h = Sha256::new();
    for x in hashes {
        h.update(x.as_bytes());
        h.update(b"\n");
    }
    hex_digest(h)
}

/// The hasher of one run: `prefix` (the header and scenario lines) then its `run` line.
pub fn run_hasher(prefix: &Sha256, ve: bool) -> Sha256 {
    let mut h = prefix.clone();
    h.update(run_line(ve).as_bytes());
    h.update(b"\n");
    h
}

fn run_line(ve: bool) -> &'static str {
    if ve {
        "run ve_on"
    } else {
        "run ve_off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// I9: any text is a trace or a parse error, never a panic.
        #[test]
        fn i9_any_text_parses_or_is_refused(text in "(vesim-trace 2\n)?(scenario [a-z-]{0,16}\n)?(seed [0-9a-fx]{0,6}\n)?[ -~\n]{0,200}") {
            let _ = TraceFile::parse(&text);
        }
    }

    #[test]
    fn digests_are_sha256_in_lower_case_hex() {
        // FIPS 180-2 test vector: SHA-256("abc").
        let mut h = Sha256::new();
        h.update(b"abc");
        assert_eq!(
            hex_digest(h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
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
        let e = crate::events::Event::VmExit {
            cpu: vesim_model::VcpuId(2),
            reason: 48,
        };
        assert_eq!(event_line(&e), "exit cpu=2 reason=48");
        // SHA-256("event exit cpu=2 reason=48\n") computed independently (sha256sum).
        let mut h = Sha256::new();
        hash_event(&mut h, &mut String::new(), &e);
        assert_eq!(
            hex_digest(h),
            "ea5c05d9b8992378e33aca4ec21c5594f8f59fae2c5a70cef8970f86625b5cfe"
        );
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt(&"x".repeat(10_000_000), 5), "xxxxx...");
    }
}

/// A trace file: the header that rebuilds the world, the scenario as data (so it replays
/// without its generator), and each run's records and hash.
///
/// ```text
/// vesim-trace 2
/// scenario desktop-mix
/// seed 0
/// profile fixed                  (fixed or hvmi: the profile named at run time)
/// quirks -                       (or the switches that are on: Q1,Q9)
/// params kpti=1 ops=400 pages=16 processes=4 vcpus=4
/// schedule random:0
/// steps 216                      (optional: the runs stop after this many scheduling steps)
/// process 0 protected=1
/// op 0 map pid=0 va=0x100000000 flags=0x2     (op VCPU operation)
/// run ve_on                                  (or ve_off)
/// event exit cpu=0 reason=10                 (one line per event, see event_line)
/// hash 3d...                                 (the run's trace hash, see the module doc)
/// end
/// ```
///
/// A file is exactly what its header and operations produce: [`replay_text`] re-runs them,
/// renders the file they give and compares it with the file line by line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFile {
    /// The built-in's name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// The profile named at run time (`fixed` or `hvmi`).
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

/// The trace format version. Format 2 hashes the header and operations with the events;
/// format 1 hashed the events only.
pub const TRACE_VERSION: u32 = 2;

/// A trace file that does not parse: the line (1-based) and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct TraceError {
    /// Line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// At most `n` characters of `s`, with `...` when it is longer (what an error line quotes of
/// an input value).
pub fn excerpt(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// How much of an offending value an error line quotes.
pub const QUOTE_MAX: usize = 60;

impl TraceFile {
    /// Calls `line` with each header line, each `process` line, then each `op` line of
    /// `ops` (VCPU and operation, in file order).
    pub fn write_prefix(
        &self,
        ops: &mut dyn Iterator<Item = (usize, crate::ops::GuestOp)>,
        line: &mut dyn FnMut(&str),
    ) {
        let mut l = String::new();
        let emit = |l: &mut String, line: &mut dyn FnMut(&str)| {
            line(l);
            l.clear();
        };
        let _ = write!(l, "vesim-trace {TRACE_VERSION}");
        emit(&mut l, line);
        let _ = write!(l, "scenario {}", self.scenario);
        emit(&mut l, line);
        let _ = write!(l, "seed {}", self.seed);
        emit(&mut l, line);
        let _ = write!(l, "profile {}", self.profile);
        emit(&mut l, line);
        let q = self.quirks.enabled();
        let _ = write!(
            l,
            "quirks {}",
            if q.is_empty() {
                "-".to_string()
            } else {
                q.join(",")
            }
        );
        emit(&mut l, line);
        let p: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = write!(l, "params {}", p.join(" "));
        emit(&mut l, line);
        let _ = write!(l, "schedule {}", self.schedule);
        emit(&mut l, line);
        if let Some(n) = self.steps {
            let _ = write!(l, "steps {n}");
            emit(&mut l, line);
        }
        for (i, prot) in self.scenario_data.processes.iter().enumerate() {
            let _ = write!(l, "process {i} protected={}", u8::from(*prot));
            emit(&mut l, line);
        }
        for (cpu, op) in ops {
            let _ = write!(l, "op {cpu} {op}");
            emit(&mut l, line);
        }
    }

    /// The hasher fed with the header and scenario lines, operations from `queues` (each
    /// VCPU's in turn; they are cloned, not consumed).
    pub fn prefix_hasher(&self, queues: &[crate::ops::OpStream]) -> Sha256 {
        let mut h = Sha256::new();
        let mut ops = queues
            .iter()
            .enumerate()
            .flat_map(|(cpu, q)| q.clone().map(move |op| (cpu, op)));
        self.write_prefix(&mut ops, &mut |l| {
            h.update(l.as_bytes());
            h.update(b"\n");
        });
        h
    }

    /// The text of the file.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut ops = self
            .scenario_data
            .queues
            .iter()
            .enumerate()
            .flat_map(|(cpu, q)| q.iter().map(move |op| (cpu, *op)));
        self.write_prefix(&mut ops, &mut |l| {
            out.push_str(l);
            out.push('\n');
        });
        for r in &self.runs {
            let _ = writeln!(out, "{}", run_line(r.ve));
            for l in &r.lines {
                let _ = writeln!(out, "event {l}");
            }
            let _ = writeln!(out, "hash {}", r.hash);
        }
        out.push_str("end\n");
        out
    }

    /// Parses a trace file. Values this vesim does not know (a scenario, a profile, a quirk
    /// switch, a schedule, an operation) and files of another format are errors.
    pub fn parse(text: &str) -> Result<TraceFile, TraceError> {
        let err = |line: usize, m: String| TraceError { line, message: m };
        let q = |s: &str| excerpt(s, QUOTE_MAX);
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
            let old = l
                .strip_prefix("vesim-trace ")
                .and_then(|v| v.parse::<u32>().ok());
            return Err(err(
                n,
                match old {
                    Some(v) => format!(
                        "a trace of format {v}; this vesim reads format {TRACE_VERSION} (whose \
                         hash covers the header and operations too): record it again"
                    ),
                    None => format!("not a vesim trace (no 'vesim-trace {TRACE_VERSION}' line)"),
                },
            ));
        }
        let (n, l) = next("scenario")?;
        let scenario = field(n, &l, "scenario")?;
        if crate::workload::Builtin::from_name(&scenario).is_none() {
            return Err(err(
                n,
                format!("'{}' is not a built-in scenario", q(&scenario)),
            ));
        }
        let (n, l) = next("seed")?;
        let seed = crate::text::parse_u64(&field(n, &l, "seed")?).map_err(|m| err(n, m))?;
        let (n, l) = next("profile")?;
        let profile = field(n, &l, "profile")?;
        profile.parse::<crate::quirks::Profile>().map_err(|_| {
            err(
                n,
                format!("'{}' is not a profile (fixed or hvmi)", q(&profile)),
            )
        })?;
        let (n, l) = next("quirks")?;
        let qs = field(n, &l, "quirks")?;
        let mut quirks = crate::quirks::Quirks::fixed();
        if qs != "-" {
            for name in qs.split(',') {
                match quirks.switch_mut(name) {
                    Some(s) => *s = true,
                    None => return Err(err(n, format!("'{}' is not a quirk switch", q(name)))),
                }
            }
        }
        let (n, l) = next("params")?;
        let mut params = std::collections::BTreeMap::new();
        for kv in field(n, &format!("{l} "), "params")?.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err(n, format!("'{}' is not KEY=VALUE", q(kv))))?;
            let v = crate::text::parse_u64(v).map_err(|m| err(n, m))?;
            params.insert(k.to_string(), v);
        }
        let b = crate::workload::Builtin::from_name(&scenario);
        if let Some(b) = b {
            crate::workload::resolve_params(b, &params).map_err(|e| err(n, e.to_string()))?;
        }
        let (n, l) = next("schedule")?;
        let sched_line = n;
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
                    let v = crate::text::parse_u64(rest).map_err(|m| err(n, m))?;
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
                    if crate::text::parse_u64(idx).ok() != Some(processes.len() as u64)
                        || !runs.is_empty()
                        || !queues.is_empty()
                    {
                        return Err(err(
                            n,
                            "processes must be numbered 0, 1, ... before any operation".into(),
                        ));
                    }
                    let prot = match kv {
                        "protected=1" => true,
                        "protected=0" => false,
                        _ => {
                            return Err(err(
                                n,
                                format!("'{}' is not protected=0 or protected=1", q(kv)),
                            ))
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
                    let cpu = crate::text::parse_u64(cpu).map_err(|m| err(n, m))?;
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
                        _ => return Err(err(n, format!("'{}' is not ve_on or ve_off", q(rest)))),
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
                        if rest.len() != 64
                            || !rest
                                .bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                        {
                            return Err(err(n, "a hash is 64 lower-case hex digits".into()));
                        }
                        r.hash = rest.to_string();
                    }
                    _ => return Err(err(n, "a hash outside a run".into())),
                },
                "end" if rest.is_empty() => ended = true,
                _ => return Err(err(n, format!("'{}' is not a trace record", q(head)))),
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
        if let Some(b) = b {
            let vcpus = crate::workload::vcpus_of(b, &params);
            schedule
                .check_vcpus(vcpus)
                .map_err(|m| err(sched_line, m))?;
            if queues.len() as u64 > vcpus {
                return Err(err(
                    text.lines().count(),
                    format!(
                        "operations name VCPU {} but the machine has {vcpus}",
                        queues.len() - 1
                    ),
                ));
            }
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
    let mut tf = TraceFile {
        scenario: b.name().to_string(),
        seed,
        profile: profile.to_string(),
        quirks,
        params: params.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        schedule: schedule.clone(),
        steps,
        scenario_data: sc,
        runs: Vec::new(),
    };
    let streams = tf.scenario_data.streams();
    let prefix = tf.prefix_hasher(&streams.queues);
    for &ve in ves {
        let w = crate::workload::execute(&tf, params, streams.clone(), &prefix, ve, true, None)?;
        tf.runs.push(TraceRun {
            ve,
            lines: w.events.held().iter().map(event_line).collect(),
            hash: w.events.hash().unwrap_or_default(),
        });
    }
    Ok(tf)
}
