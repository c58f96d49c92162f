//! `vesim check`: seeded swarm runs with every invariant evaluated after every step.

use super::{parse_u64, EXIT_USAGE};
use crate::quirks::Profile;
use crate::sched::Schedule;
use crate::workload::{swarm_params, Builtin};
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use vesim_model::VcpuId;

fn builtin(s: &str) -> Result<Builtin, String> {
    match Builtin::from_name(s) {
        Some(b) => Ok(b),
        None => Err(format!("'{s}' is not a built-in scenario")),
    }
}

const EXAMPLES: &str = "\
Examples:
  vesim check --seeds 200 --jobs 2                  (every built-in, 200 seeds each)
  vesim check --seeds 50 --builtin attacks
  vesim check --seeds 50 --profile hvmi --trace fail.trace
  vesim check --builtin desktop-mix --seed 17 --profile hvmi   (replays one seed)

Every invariant the checker knows is evaluated after every step; I6 (#VE on vs off) runs the
#VE-off world under the same schedule of guest operations on the built-ins whose page-table
writes the guest serializes (every one but attacks).

Exit status: 0 when every seed passes, 1 when one fails (the lowest failing seed of each
scenario is reported with its schedule and replay command), 2 for bad arguments.";

/// Arguments of `vesim check`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CheckArgs {
    /// Number of seeds (0 .. N-1) per scenario, at least 1. Seeds are streamed: memory does not
    /// depend on N.
    #[arg(long, value_name = "N", value_parser = parse_u64, default_value = "20", conflicts_with = "seed")]
    seeds: u64,
    /// Check one seed only.
    #[arg(long, value_name = "S", value_parser = parse_u64)]
    seed: Option<u64>,
    /// The scenario (default: every built-in in turn).
    #[arg(long, value_name = "NAME", value_parser = builtin)]
    builtin: Option<Builtin>,
    /// Quirk profile.
    #[arg(long, value_name = "fixed|hvmi", default_value = "fixed")]
    profile: Profile,
    /// Worlds run in parallel (one thread each), 1 to 64.
    #[arg(long, value_name = "J", value_parser = parse_u64, default_value = "1")]
    jobs: u64,
    /// Print only the summary (and no progress bar).
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the trace of the first failure (lowest scenario, then lowest seed) to FILE, for
    /// `vesim replay` and `vesim minimize`.
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,
}

/// One failed invariant.
#[derive(Debug)]
struct Failure {
    invariant: String,
    step: u64,
    cpu: VcpuId,
    detail: String,
}

/// The outcome of one seed of one scenario.
#[derive(Debug)]
struct SeedResult {
    builtin: Builtin,
    seed: u64,
    failure: Option<Failure>,
}

impl SeedResult {
    fn schedule(&self) -> Schedule {
        Schedule::Random { seed: self.seed }
    }
}

fn check_seed(b: Builtin, profile: Profile, seed: u64) -> Result<SeedResult, String> {
    use crate::runner::Checked;
    let params = swarm_params(b, &BTreeMap::new(), seed).map_err(|e| e.to_string())?;
    let sc = crate::workload::generate(b, &params, seed);
    let setup = crate::runner::Setup {
        builtin: b,
        params,
        quirks: profile.quirks(),
        seed,
        schedule: Schedule::Random { seed },
    };
    let run = crate::runner::run(&setup, &sc);
    let failure = match run.checked {
        Checked::Passed => None,
        Checked::Failed(v) => Some(Failure {
            invariant: v.invariant.to_string(),
            step: v.step,
            cpu: v.cpu,
            detail: v.detail,
        }),
        Checked::Stopped { cpu, stop } => Some(Failure {
            invariant: "stop".into(),
            step: run.steps,
            cpu,
            detail: stop.to_string(),
        }),
        Checked::Harness(e) => return Err(e),
    };
    Ok(SeedResult {
        builtin: b,
        seed,
        failure,
    })
}

/// The most worlds `--jobs` runs at once.
pub const JOBS_MAX: u64 = 64;

/// Failures listed one by one in `--json` (the count covers them all).
const FAILURES_LISTED: usize = 100;

/// Seeds a worker may run ahead of the lowest one not yet reported, per job: results are
/// reported in seed order with at most this many held.
const AHEAD_PER_JOB: u64 = 8;

/// Checks seeds `first .. first + count` of `b` on `jobs` threads and hands each result to
/// `sink` in seed order; `sink` returns `false` to stop the sweep. Memory does not depend on
/// `count`: at most `AHEAD_PER_JOB * jobs` results are held.
fn sweep(
    b: Builtin,
    profile: Profile,
    first: u64,
    count: u64,
    jobs: usize,
    bar: &indicatif::ProgressBar,
    sink: &mut dyn FnMut(u64, Result<SeedResult, String>) -> bool,
) {
    use std::sync::{Condvar, Mutex};
    struct State {
        next: u64,
        reported: u64,
        done: std::collections::BTreeMap<u64, Result<SeedResult, String>>,
        stop: bool,
    }
    let ahead = AHEAD_PER_JOB * jobs as u64;
    let state = Mutex::new(State {
        next: 0,
        reported: 0,
        done: std::collections::BTreeMap::new(),
        stop: false,
    });
    let cv = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = {
                    let Ok(mut st) = state.lock() else { return };
                    while !st.stop && st.next < count && st.next >= st.reported + ahead {
                        st = match cv.wait(st) {
                            Ok(g) => g,
                            Err(_) => return,
                        };
                    }
                    if st.stop || st.next >= count {
                        return;
                    }
                    st.next += 1;
                    st.next - 1
                };
                let seed = first + i;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check_seed(b, profile, seed)
                }))
                .unwrap_or_else(|_| Err("vesim panicked (a defect: please report it)".into()));
                bar.inc(1);
                if let Ok(mut st) = state.lock() {
                    st.done.insert(i, r);
                }
                cv.notify_all();
            });
        }
        // The reporter: results in seed order, as they become available.
        loop {
            let r = {
                let Ok(mut st) = state.lock() else { break };
                if st.reported >= count || st.stop {
                    break;
                }
                loop {
                    let k = st.reported;
                    if let Some(r) = st.done.remove(&k) {
                        st.reported += 1;
                        break r;
                    }
                    st = match cv.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
            };
            cv.notify_all();
            let seed = match &r {
                Ok(x) => x.seed,
                Err(_) => first,
            };
            if !sink(seed, r) {
                if let Ok(mut st) = state.lock() {
                    st.stop = true;
                }
                cv.notify_all();
                break;
            }
        }
    });
}

/// Runs `vesim check`.
pub fn run(args: CheckArgs) -> ExitCode {
    let usage = |m: String| {
        errln!("vesim: {m}.");
        ExitCode::from(EXIT_USAGE)
    };
    if args.seed.is_none() && args.seeds == 0 {
        return usage("--seeds must be at least 1".into());
    }
    if args.jobs == 0 || args.jobs > JOBS_MAX {
        return usage(format!("--jobs takes 1 to {JOBS_MAX}, not {}", args.jobs));
    }
    if let Some(path) = &args.trace {
        if let Err(m) = crate::output::check_output(path, &[]) {
            return usage(m);
        }
    }
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (0, args.seeds),
    };
    let builtins: Vec<Builtin> = match args.builtin {
        Some(b) => vec![b],
        None => Builtin::ALL.iter().map(|(_, b)| *b).collect(),
    };
    let jobs = args.jobs as usize;
    let bar = if args.quiet || args.json || !super::interactive() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(count.saturating_mul(builtins.len() as u64))
    };
    let replay = |b: Builtin, seed: u64| {
        format!(
            "vesim check --builtin {} --seed {seed} --profile {}",
            b.name(),
            args.profile
        )
    };
    // Per scenario: seeds run, failed, and the lowest failing seed; the first failures listed.
    let mut tallies: Vec<(Builtin, u64, u64, Option<SeedResult>)> = Vec::new();
    let mut listed: Vec<Value> = Vec::new();
    let mut failed_total: u64 = 0;
    let mut fatal: Option<String> = None;
    for &b in &builtins {
        let (mut n, mut failed, mut lowest) = (0u64, 0u64, None::<SeedResult>);
        sweep(b, args.profile, first, count, jobs, &bar, &mut |seed, r| {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    fatal = Some(format!("{} seed {seed} could not run: {e}", b.name()));
                    return false;
                }
            };
            n += 1;
            if let Some(f) = &r.failure {
                failed += 1;
                failed_total += 1;
                if !args.quiet && !args.json {
                    bar.suspend(|| {
                        outln!(
                            "{} seed {}: {} failed at step {} on VCPU {}: {}",
                            b.name(),
                            r.seed,
                            f.invariant,
                            f.step,
                            f.cpu,
                            f.detail
                        )
                    });
                }
                if args.json && listed.len() < FAILURES_LISTED {
                    listed.push(json!({"scenario": b.name(), "seed": r.seed,
                           "invariant": f.invariant, "step": f.step, "vcpu": f.cpu.0,
                           "detail": f.detail, "schedule": r.schedule().to_string(),
                           "replay": replay(b, r.seed)}));
                }
                if lowest.is_none() {
                    lowest = Some(r);
                }
            }
            !super::stdout_closed()
        });
        tallies.push((b, n, failed, lowest));
        if fatal.is_some() || super::stdout_closed() {
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(m) = fatal {
        return usage(m);
    }
    if args.json {
        let per: Vec<Value> = tallies
            .iter()
            .map(|(b, n, f, _)| {
                json!({"scenario": b.name(), "seeds": n, "passed": n - f, "failed": f})
            })
            .collect();
        let runs: u64 = tallies.iter().map(|t| t.1).sum();
        let mut out = json!({"profile": args.profile.to_string(), "seeds": count,
               "runs": runs, "failed": failed_total, "scenarios": per,
               "failures": listed});
        if let Some(o) = out.as_object_mut() {
            if failed_total > FAILURES_LISTED as u64 {
                o.insert("failures_listed".into(), json!(FAILURES_LISTED));
            }
            if let Some(b) = args.builtin {
                o.insert("scenario".into(), json!(b.name()));
            }
        }
        outln!("{out}");
    } else {
        for (b, n, f, lowest) in &tallies {
            outln!(
                "{}: {} passed, {} failed ({} profile)",
                b.name(),
                n - f,
                f,
                args.profile
            );
            if let Some(first) = lowest {
                outln!(
                    "  lowest failing seed {} (schedule {}): {}",
                    first.seed,
                    first.schedule(),
                    replay(*b, first.seed)
                );
            }
        }
    }
    let first_failure = tallies.iter().find_map(|t| t.3.as_ref());
    if let (Some(path), Some(first)) = (&args.trace, first_failure) {
        let params = swarm_params(first.builtin, &BTreeMap::new(), first.seed);
        let tf = params.map_err(|e| e.to_string()).and_then(|p| {
            let sets: BTreeMap<String, u64> =
                p.iter().map(|(k, v)| ((*k).to_string(), *v)).collect();
            crate::trace::record(
                first.builtin,
                &sets,
                &[true],
                args.profile,
                first.seed,
                &first.schedule(),
            )
            .map_err(|e| e.to_string())
        });
        match tf {
            Ok(tf) => {
                if let Err(e) = crate::output::write_atomic(path, tf.to_text().as_bytes()) {
                    return usage(format!("{} cannot be written: {e}", path.display()));
                }
            }
            Err(e) => {
                return usage(format!(
                    "the trace of {} seed {} could not be recorded: {e}",
                    first.builtin.name(),
                    first.seed
                ));
            }
        }
    }
    if failed_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
