//! `vesim check`: seeded swarm runs with every invariant evaluated after every step.

use super::{parse_u64, EXIT_USAGE};
use crate::check::Checker;
use crate::ops::RunFailure;
use crate::quirks::Profile;
use crate::sched::{Schedule, Scheduler};
use crate::workload::{build_world, swarm_params, Builtin, STEPS_MAX};
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;

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
    /// Number of seeds (0 .. N-1) per scenario.
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
    /// Worlds run in parallel (one thread each).
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
    cpu: usize,
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

/// Whether the guest serializes a built-in's page-table writes (VE-SEMANTICS section 4), so
/// that I6 applies: each process's memory manager runs on one VCPU. `attacks` is left out:
/// its remaps move agent pages into frames the comparison cannot tell from guest memory.
fn serialized(b: Builtin) -> bool {
    !matches!(b, Builtin::Attacks)
}

fn check_seed(b: Builtin, profile: Profile, seed: u64) -> Result<SeedResult, String> {
    let params = swarm_params(b, &BTreeMap::new(), seed).map_err(|e| e.to_string())?;
    let sc = crate::workload::generate(b, &params, seed);
    let world = |ve: bool| -> Result<crate::world::World, String> {
        let mut w = build_world(b, &params, ve, profile, seed).map_err(|e| e.to_string())?;
        for p in &sc.processes {
            w.create_process(*p).map_err(|e| e.to_string())?;
        }
        Ok(w)
    };
    let mut on = world(true)?;
    let mut runner = crate::ops::OpRunner::new(sc.queues.clone());
    let mut sched = Scheduler::new(Schedule::Random { seed }, on.vcpus.len());
    let mut checker = Checker::new(&on);
    let mut failure = match on.run_ops_checked(&mut runner, &mut sched, &mut checker, STEPS_MAX) {
        Ok(_) => None,
        Err(RunFailure::Violations(v)) => v.first().map(|x| Failure {
            invariant: x.invariant.to_string(),
            step: x.step,
            cpu: x.cpu,
            detail: x.detail.clone(),
        }),
        Err(RunFailure::Stopped(cpu, s)) => Some(Failure {
            invariant: "stop".into(),
            step: checker.steps(),
            cpu,
            detail: s.to_string(),
        }),
    };
    if failure.is_none() && serialized(b) {
        let mut off = world(false)?;
        let i6 = crate::equivalence::compare(&on, &mut off, sc.queues, &runner.log);
        failure = i6.map(|detail| Failure {
            invariant: crate::check::Invariant::I6.to_string(),
            step: checker.steps(),
            cpu: 0,
            detail,
        });
    }
    Ok(SeedResult {
        builtin: b,
        seed,
        failure,
    })
}

/// Runs `vesim check`.
pub fn run(args: CheckArgs) -> ExitCode {
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (0..args.seeds).collect(),
    };
    let builtins: Vec<Builtin> = match args.builtin {
        Some(b) => vec![b],
        None => Builtin::ALL.iter().map(|(_, b)| *b).collect(),
    };
    let work: Vec<(Builtin, u64)> = builtins
        .iter()
        .flat_map(|b| seeds.iter().map(move |s| (*b, *s)))
        .collect();
    // J worlds at a time, one thread each; results are reported in scenario and seed order.
    let jobs = args.jobs.clamp(1, 64) as usize;
    let bar = if args.quiet || args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(work.len() as u64)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let collected = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(b, seed)) = work.get(i) else {
                    break;
                };
                let r = check_seed(b, args.profile, seed);
                bar.inc(1);
                if let Ok(mut c) = collected.lock() {
                    c.push((i, r));
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut outcomes: Vec<Option<Result<SeedResult, String>>> =
        (0..work.len()).map(|_| None).collect();
    for (i, r) in collected.into_inner().unwrap_or_default() {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(r);
        }
    }
    let mut results = Vec::with_capacity(work.len());
    for (i, o) in outcomes.into_iter().enumerate() {
        let (b, seed) = work[i];
        match o {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => {
                eprintln!("vesim: {} seed {seed} could not run: {e}.", b.name());
                return ExitCode::from(EXIT_USAGE);
            }
            None => {
                eprintln!("vesim: {} seed {seed} did not run.", b.name());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let failed: Vec<&SeedResult> = results.iter().filter(|r| r.failure.is_some()).collect();
    let replay = |r: &SeedResult| {
        format!(
            "vesim check --builtin {} --seed {} --profile {}",
            r.builtin.name(),
            r.seed,
            args.profile
        )
    };
    if args.json {
        let fails: Vec<Value> = failed
            .iter()
            .filter_map(|r| {
                r.failure.as_ref().map(|f| {
                    json!({"scenario": r.builtin.name(), "seed": r.seed,
                           "invariant": f.invariant, "step": f.step, "vcpu": f.cpu,
                           "detail": f.detail, "schedule": r.schedule().to_string(),
                           "replay": replay(r)})
                })
            })
            .collect();
        let per: Vec<Value> = builtins
            .iter()
            .map(|b| {
                let n = results.iter().filter(|r| r.builtin == *b).count();
                let f = failed.iter().filter(|r| r.builtin == *b).count();
                json!({"scenario": b.name(), "seeds": n, "passed": n - f, "failed": f})
            })
            .collect();
        let mut out = json!({"profile": args.profile.to_string(), "seeds": seeds.len(),
               "runs": results.len(), "failed": fails.len(), "scenarios": per,
               "failures": fails});
        if let (Some(b), Some(o)) = (args.builtin, out.as_object_mut()) {
            o.insert("scenario".into(), json!(b.name()));
        }
        println!("{out}");
    } else {
        if !args.quiet {
            for r in &failed {
                if let Some(f) = &r.failure {
                    println!(
                        "{} seed {}: {} failed at step {} on VCPU {}: {}",
                        r.builtin.name(),
                        r.seed,
                        f.invariant,
                        f.step,
                        f.cpu,
                        f.detail
                    );
                }
            }
        }
        for b in &builtins {
            let n = results.iter().filter(|r| r.builtin == *b).count();
            let mine: Vec<&&SeedResult> = failed.iter().filter(|r| r.builtin == *b).collect();
            println!(
                "{}: {} passed, {} failed ({} profile)",
                b.name(),
                n - mine.len(),
                mine.len(),
                args.profile
            );
            if let Some(first) = mine.first() {
                println!(
                    "  lowest failing seed {} (schedule {}): {}",
                    first.seed,
                    first.schedule(),
                    replay(first)
                );
            }
        }
    }
    if let (Some(path), Some(first)) = (&args.trace, failed.first()) {
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
                if let Err(e) = std::fs::write(path, tf.to_text()) {
                    eprintln!("vesim: {} cannot be written: {e}.", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            }
            Err(e) => {
                eprintln!(
                    "vesim: the trace of {} seed {} could not be recorded: {e}.",
                    first.builtin.name(),
                    first.seed
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
