//! `vesim explore`: every interleaving of a small world up to K preemptions, checked
//! ([`crate::explore`]).

use super::{parse_u64, EXIT_USAGE};
use crate::explore::{ExploreWorld, Options, Report, JOBS_MAX, MAX_PREEMPTIONS};
use crate::quirks::Profile;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  vesim explore --builtin unload-hook --profile hvmi --preemptions 1 --trace q16.trace
  vesim explore corpus/explore/cache-race.toml --preemptions 2 --json
  vesim replay q16.trace && vesim minimize q16.trace

Built-in small worlds: cache-race, cache-insert, unload-hook, two-writers, remap-agent
(corpus/explore/).
Every schedule with 0, then 1, ..., then K preemptions is run from the world's snapshot with
every per-step invariant checked after every step; the first failing schedule has the fewest
preemptions. The time taken goes to stderr; stdout is the same for the same command.

Exit status: 0 when no schedule fails, 1 when one does, 2 for bad arguments or input.";

fn set_value(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), parse_u64(v)?))
}

/// Arguments of `vesim explore`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ExploreArgs {
    /// A small-world file (TOML, as in corpus/explore/).
    #[arg(value_name = "FILE.toml", conflicts_with = "builtin")]
    file: Option<PathBuf>,
    /// A built-in small world.
    #[arg(long, value_name = "NAME")]
    builtin: Option<String>,
    /// A parameter of the world's built-in machine (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = set_value)]
    sets: Vec<(String, u64)>,
    /// The preemption bound K (0 to 8).
    #[arg(long, value_name = "K", value_parser = parse_u64, default_value = "1")]
    preemptions: u64,
    /// At most this many schedules are checked.
    #[arg(long, value_name = "N", value_parser = parse_u64, default_value = "100000")]
    max_schedules: u64,
    /// Quirk profile.
    #[arg(long, value_name = "fixed|hvmi", default_value = "fixed")]
    profile: Profile,
    /// Threads, each with its own world, 1 to 64 (the output does not depend on it).
    #[arg(long, value_name = "J", value_parser = parse_u64, default_value = "1")]
    jobs: u64,
    /// Write the first failing schedule's trace to FILE, for `vesim replay` and `vesim
    /// minimize`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn result_line(r: &Report, k: u64) -> String {
    match &r.failure {
        Some(f) => format!(
            "schedule {} fails ({} preemption{}): {}",
            f.schedule(),
            f.preemptions,
            if f.preemptions == 1 { "" } else { "s" },
            f.checked
        ),
        None if r.cut => format!(
            "no failure in the {} schedules checked; --max-schedules ended the search before \
             every schedule with <= {k} preemptions was run",
            r.schedules
        ),
        None => format!("no schedule with <= {k} preemptions fails"),
    }
}

/// Runs `vesim explore`.
pub fn run(args: ExploreArgs) -> ExitCode {
    let usage = |m: String| {
        errln!("vesim: {m}.");
        ExitCode::from(EXIT_USAGE)
    };
    if args.preemptions > u64::from(MAX_PREEMPTIONS) {
        return usage(format!(
            "--preemptions takes 0 to {MAX_PREEMPTIONS}, not {}",
            args.preemptions
        ));
    }
    if args.jobs == 0 || args.jobs > JOBS_MAX as u64 {
        return usage(format!("--jobs takes 1 to {JOBS_MAX}, not {}", args.jobs));
    }
    if args.max_schedules == 0 {
        return usage("--max-schedules must be at least 1".into());
    }
    if args.preemptions >= args.max_schedules {
        return usage(format!(
            "--preemptions {} needs at least one schedule per bound, more than --max-schedules {}",
            args.preemptions, args.max_schedules
        ));
    }
    let mut sets = BTreeMap::new();
    for (k, v) in &args.sets {
        if sets.insert(k.clone(), *v).is_some() {
            return usage(format!("parameter {k} is set twice"));
        }
    }
    let mut inputs: Vec<&std::path::Path> = Vec::new();
    let (name, world) = match (&args.file, &args.builtin) {
        (Some(path), _) => {
            inputs.push(path);
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return usage(format!("{name} cannot be read: {e}")),
            };
            (name.clone(), ExploreWorld::parse(&name, &text, &sets))
        }
        (None, Some(b)) => (b.clone(), ExploreWorld::builtin(b, &sets)),
        (None, None) => {
            return usage("name a world: FILE.toml or --builtin NAME".into());
        }
    };
    let world = match world {
        Ok(w) => w,
        Err(m) => return usage(m),
    };
    if let Some(path) = &args.trace {
        if let Err(m) = crate::output::check_output(path, &inputs) {
            return usage(m);
        }
    }
    let quirks = args.profile.quirks();
    let bar = if args.json || !super::interactive() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.max_schedules)
    };
    let opts = Options {
        preemptions: args.preemptions as u32,
        max_schedules: args.max_schedules,
        steps_max: crate::explore::SCHEDULE_STEPS_MAX,
    };
    let start = std::time::Instant::now();
    let progress = |n: u64| bar.set_position(n);
    let report = match crate::explore::explore(&world, quirks, &opts, args.jobs as usize, &progress)
    {
        Ok(r) => r,
        Err(m) => return usage(format!("{name}: the world cannot be explored: {m}")),
    };
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if let (Some(path), Some(f)) = (&args.trace, &report.failure) {
        let tf = crate::trace::record_scenario(
            world.builtin,
            &world.params,
            quirks,
            &args.profile.to_string(),
            world.seed,
            &f.schedule(),
            Some(f.steps),
            world.scenario.clone(),
            &[true],
        );
        match tf {
            Ok(tf) => {
                if let Err(e) = crate::output::write_atomic(path, tf.to_text().as_bytes()) {
                    return usage(format!("{} cannot be written: {e}", path.display()));
                }
            }
            Err(e) => return usage(format!("the failing schedule's trace: {e}")),
        }
    }
    if args.json {
        let levels: Vec<_> = report
            .levels
            .iter()
            .map(|l| json!({"preemptions": l.preemptions, "schedules": l.schedules}))
            .collect();
        let failure = report.failure.as_ref().map(|f| {
            json!({"schedule": f.schedule().to_string(), "preemptions": f.preemptions,
                   "steps": f.steps, "what": f.checked.to_string()})
        });
        let v = json!({
            "world": name,
            "profile": args.profile.to_string(),
            "vcpus": world.vcpus(),
            "ops": world.ops(),
            "preemptions": args.preemptions,
            "max_schedules": args.max_schedules,
            "levels": levels,
            "schedules": report.schedules,
            "pruned": report.pruned,
            "runs": report.runs,
            "states": report.states,
            "bounded": report.bounded,
            "cut": report.cut,
            "failure": failure,
        });
        outln!("{v}");
    } else {
        outln!(
            "explore {name}: {} VCPUs, {} operations, profile {}",
            world.vcpus(),
            world.ops(),
            args.profile
        );
        for l in &report.levels {
            outln!(
                "  {} preemption{}: {} schedules",
                l.preemptions,
                if l.preemptions == 1 { "" } else { "s" },
                l.schedules
            );
        }
        outln!(
            "schedules {}, pruned {}, runs {}, distinct final states {}, ended by the step bound {}",
            report.schedules,
            report.pruned,
            report.runs,
            report.states,
            report.bounded
        );
        outln!("{}", result_line(&report, args.preemptions));
        if let (Some(path), Some(_)) = (&args.trace, &report.failure) {
            outln!("trace written to {}", path.display());
        }
    }
    errln!(
        "explored in {secs:.2} s ({:.0} schedules/s)",
        report.schedules as f64 / secs.max(1e-9)
    );
    if report.failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
