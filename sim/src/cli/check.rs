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
        Some(b @ (Builtin::DesktopMix | Builtin::MemoryPressure)) => Ok(b),
        _ => Err(format!(
            "'{s}' is not a scenario vesim check runs (desktop-mix, memory-pressure)"
        )),
    }
}

const EXAMPLES: &str = "\
Examples:
  vesim check --seeds 200 --jobs 2
  vesim check --seeds 50 --profile hvmi
  vesim check --seed 17 --profile hvmi        (replays one seed)

Exit status: 0 when every seed passes, 1 when one fails (the lowest failing seed is reported
with its replay command), 2 for bad arguments.";

/// Arguments of `vesim check`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CheckArgs {
    /// Number of seeds (0 .. N-1).
    #[arg(long, value_name = "N", value_parser = parse_u64, default_value = "20", conflicts_with = "seed")]
    seeds: u64,
    /// Check one seed only.
    #[arg(long, value_name = "S", value_parser = parse_u64)]
    seed: Option<u64>,
    /// The scenario.
    #[arg(long, value_name = "NAME", value_parser = builtin, default_value = "desktop-mix")]
    builtin: Builtin,
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
    /// Write the trace of the lowest failing seed to FILE (for replay and minimize).
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,
}

/// The outcome of one seed.
#[derive(Debug)]
struct SeedResult {
    seed: u64,
    failure: Option<(String, u64, usize, String)>,
}

fn check_seed(b: Builtin, profile: Profile, seed: u64) -> Result<SeedResult, String> {
    let params = swarm_params(b, &BTreeMap::new(), seed).map_err(|e| e.to_string())?;
    let mut w = build_world(b, &params, true, profile, seed).map_err(|e| e.to_string())?;
    let sc = crate::workload::generate(b, &params, seed);
    for p in &sc.processes {
        w.create_process(*p).map_err(|e| e.to_string())?;
    }
    let mut runner = crate::ops::OpRunner::new(sc.queues);
    let mut sched = Scheduler::new(Schedule::Random { seed }, w.vcpus.len());
    let mut checker = Checker::new(&w);
    let failure = match w.run_ops_checked(&mut runner, &mut sched, &mut checker, STEPS_MAX) {
        Ok(_) => None,
        Err(RunFailure::Violations(v)) => v
            .first()
            .map(|x| (x.invariant.to_string(), x.step, x.cpu, x.detail.clone())),
        Err(RunFailure::Stopped(cpu, s)) => Some(("stop".into(), 0, cpu, format!("{s:?}"))),
    };
    Ok(SeedResult { seed, failure })
}

/// Runs `vesim check`.
pub fn run(args: CheckArgs) -> ExitCode {
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (0..args.seeds).collect(),
    };
    // J worlds at a time, one thread each; results are reported in seed order.
    let jobs = args.jobs.clamp(1, 64) as usize;
    let bar = if args.quiet || args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(seeds.len() as u64)
    };
    let mut outcomes: Vec<Option<Result<SeedResult, String>>> =
        (0..seeds.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let collected = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else {
                    break;
                };
                let r = check_seed(args.builtin, args.profile, seed);
                bar.inc(1);
                if let Ok(mut c) = collected.lock() {
                    c.push((i, r));
                }
            });
        }
    });
    bar.finish_and_clear();
    for (i, r) in collected.into_inner().unwrap_or_default() {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(r);
        }
    }
    let mut results = Vec::with_capacity(seeds.len());
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => {
                eprintln!("vesim: seed {} could not run: {e}.", seeds[i]);
                return ExitCode::from(EXIT_USAGE);
            }
            None => {
                eprintln!("vesim: seed {} did not run.", seeds[i]);
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let failed: Vec<&SeedResult> = results.iter().filter(|r| r.failure.is_some()).collect();
    let replay = |seed: u64| {
        format!(
            "vesim check --builtin {} --seed {seed} --profile {}",
            args.builtin.name(),
            args.profile
        )
    };
    if args.json {
        let fails: Vec<Value> = failed
            .iter()
            .filter_map(|r| {
                r.failure.as_ref().map(|(inv, step, cpu, detail)| {
                    json!({"seed": r.seed, "invariant": inv, "step": step, "vcpu": cpu,
                           "detail": detail, "replay": replay(r.seed)})
                })
            })
            .collect();
        println!(
            "{}",
            json!({"scenario": args.builtin.name(), "profile": args.profile.to_string(),
                   "seeds": results.len(), "failed": fails.len(), "failures": fails})
        );
    } else {
        if !args.quiet {
            for r in &failed {
                if let Some((inv, step, cpu, detail)) = &r.failure {
                    println!(
                        "seed {}: {inv} failed at step {step} on VCPU {cpu}: {detail}",
                        r.seed
                    );
                }
            }
        }
        println!(
            "{}: {} passed, {} failed ({} profile)",
            args.builtin.name(),
            results.len() - failed.len(),
            failed.len(),
            args.profile
        );
        if let Some(first) = failed.first() {
            println!("lowest failing seed {}: {}", first.seed, replay(first.seed));
        }
    }
    if let (Some(path), Some(first)) = (&args.trace, failed.first()) {
        let params = swarm_params(args.builtin, &BTreeMap::new(), first.seed);
        let tf = params.map_err(|e| e.to_string()).and_then(|p| {
            let sets: BTreeMap<String, u64> =
                p.iter().map(|(k, v)| ((*k).to_string(), *v)).collect();
            crate::trace::record(
                args.builtin,
                &sets,
                &[true],
                args.profile,
                first.seed,
                &Schedule::Random { seed: first.seed },
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
                    "vesim: the trace of seed {} could not be recorded: {e}.",
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
