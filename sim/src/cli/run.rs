//! `vesim run`: a built-in scenario with #VE on, off, or both, and its figures.

use super::{parse_u64, EXIT_USAGE};
use crate::quirks::Profile;
use crate::workload::{build_world, resolve_params, run_built_progress, Builtin, RunResult};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Which worlds to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VeMode {
    /// #VE on.
    On,
    /// #VE off (the baseline).
    Off,
    /// Both, same scenario and seed.
    Both,
}

fn set_value(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), parse_u64(v)?))
}

fn builtin(s: &str) -> Result<Builtin, String> {
    Builtin::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
        format!("'{s}' is not a built-in scenario ({})", names.join(", "))
    })
}

const EXAMPLES: &str = "\
Examples:
  vesim run                                   (desktop-mix, 4 VCPUs, #VE on and off)
  vesim run --vcpus 8 --sched pct:1:3:20000
  vesim run --builtin paper-synthetic
  vesim run --builtin paper-synthetic --set pages=100 --set changes=1000 --ve both --json
  vesim run --builtin paper-synthetic --profile hvmi --ve on --seed 7

Exit status: 0 when the runs completed, 1 when a run failed, 2 for bad arguments.";

/// Arguments of `vesim run`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    /// A scenario file (TOML; see README). Flags given here override its values.
    #[arg(value_name = "FILE.toml", conflicts_with = "builtin")]
    scenario: Option<std::path::PathBuf>,
    /// The built-in scenario (default: desktop-mix).
    #[arg(long, value_name = "NAME", value_parser = builtin)]
    builtin: Option<Builtin>,
    /// VCPUs of a multi-VCPU scenario (desktop-mix).
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    vcpus: Option<u64>,
    /// VCPU schedule: rr, random:SEED, pct:SEED:DEPTH:STEPS, list:... (default random:SEED).
    #[arg(long, value_name = "SCHEDULE", value_parser = |s: &str| s.parse::<crate::sched::Schedule>().map_err(|e| e.to_string()))]
    sched: Option<crate::sched::Schedule>,
    /// Overrides a scenario parameter.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = set_value)]
    sets: Vec<(String, u64)>,
    /// Run with #VE on, off, or both (default both).
    #[arg(long, value_enum)]
    ve: Option<VeMode>,
    /// Quirk profile (default fixed).
    #[arg(long, value_name = "fixed|hvmi")]
    profile: Option<Profile>,
    /// Seed of every random stream (default 0).
    #[arg(long, value_name = "S", value_parser = parse_u64)]
    seed: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the trace (header, scenario, every record, hashes) to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,
}

/// The figures of one run, in a fixed order.
pub fn run_figures(r: &RunResult) -> Vec<(&'static str, u64)> {
    let c = &r.counters;
    vec![
        ("pt_writes", c.pt_writes),
        ("vm_exits_total", c.exits_total()),
        (
            "ept_violation_exits",
            c.exits.get(&48).copied().unwrap_or(0),
        ),
        ("ve_delivered", c.ve_total),
        ("ve_page_walk", c.ve_page_walk),
        ("ve_pt_write", c.ve_pt_write),
        ("ve_unknown", c.ve_unknown),
        ("agent_raised", c.raised),
        ("agent_ignored_irrelevant", c.ignored_irrelevant),
        ("agent_ignored_cache", c.ignored_cache),
        ("agent_emulated_by_introcore", c.emulated_by_introcore),
        ("agent_rejected", c.rejected),
        ("agent_page_walk_set", c.page_walk_set),
        ("agent_page_walk_raised", c.page_walk_raised),
        ("vmcalls", c.vmcalls.values().sum()),
        ("cache_lookups", c.cache_lookups),
        ("cache_hits", c.cache_hits),
        ("cache_inserts", r.cache.inserts),
        ("cache_removals", r.cache.removals),
        ("cache_random_replacements", r.cache.random_replacements),
        ("callbacks", c.callbacks),
        ("swap_callbacks", r.swaps),
    ]
}

fn run_json(r: &RunResult) -> Value {
    let mut m = Map::new();
    for (k, v) in run_figures(r) {
        m.insert(k.into(), Value::from(v));
    }
    let exits: Map<String, Value> = r
        .counters
        .exits
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    m.insert("exits_by_reason".into(), Value::Object(exits));
    let c = &r.counters;
    let rate = (c.cache_lookups > 0).then(|| c.cache_hits as f64 / c.cache_lookups as f64);
    m.insert(
        "cache_hit_rate".into(),
        rate.map_or(Value::Null, Value::from),
    );
    m.insert(
        "ve_handled_in_guest".into(),
        Value::from(c.page_walk_set + c.ignored_irrelevant + c.ignored_cache),
    );
    m.insert("trace_hash".into(), Value::from(r.trace_hash.clone()));
    Value::Object(m)
}

/// The effective options: flags, then the scenario file, then the defaults.
struct Effective {
    builtin: Builtin,
    ve: VeMode,
    profile: Profile,
    seed: u64,
    sched: Option<crate::sched::Schedule>,
    file_sets: BTreeMap<String, u64>,
}

fn effective(args: &RunArgs) -> Result<Effective, String> {
    let file = match &args.scenario {
        Some(path) => {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{name} cannot be read: {e}"))?;
            Some(
                crate::scenario_file::ScenarioFile::parse(&name, &text)
                    .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    let f = file.as_ref();
    let builtin = match (args.builtin, f) {
        (Some(b), _) => b,
        (None, Some(f)) => Builtin::from_name(&f.builtin)
            .ok_or_else(|| format!("'{}' is not a built-in", f.builtin))?,
        (None, None) => Builtin::DesktopMix,
    };
    let ve = match (args.ve, f.and_then(|f| f.ve.as_deref())) {
        (Some(v), _) => v,
        (None, Some("on")) => VeMode::On,
        (None, Some("off")) => VeMode::Off,
        _ => VeMode::Both,
    };
    let profile = match (args.profile, f.and_then(|f| f.profile.as_deref())) {
        (Some(p), _) => p,
        (None, Some(p)) => p.parse()?,
        (None, None) => Profile::Fixed,
    };
    let seed = args.seed.or(f.and_then(|f| f.seed)).unwrap_or(0);
    let sched = match (&args.sched, f.and_then(|f| f.schedule.as_deref())) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(s)) => Some(
            s.parse()
                .map_err(|e: crate::sched::ScheduleError| e.to_string())?,
        ),
        (None, None) => None,
    };
    Ok(Effective {
        builtin,
        ve,
        profile,
        seed,
        sched,
        file_sets: f.map(|f| f.params.clone()).unwrap_or_default(),
    })
}

/// Runs `vesim run`.
pub fn run(args: RunArgs) -> ExitCode {
    let eff = match effective(&args) {
        Ok(e) => e,
        Err(m) => {
            errln!("vesim: {m}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut sets = eff.file_sets.clone();
    if let Some(n) = args.vcpus {
        if eff.builtin != Builtin::DesktopMix {
            errln!("vesim: --vcpus applies to desktop-mix only.");
            return ExitCode::from(EXIT_USAGE);
        }
        sets.insert("vcpus".to_string(), n);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in args.sets {
        if !seen.insert(k.clone()) {
            errln!("vesim: parameter {k} is set twice.");
            return ExitCode::from(EXIT_USAGE);
        }
        sets.insert(k, v);
    }
    let params = match resolve_params(eff.builtin, &sets) {
        Ok(p) => p,
        Err(e) => {
            errln!("vesim: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let modes: Vec<(&str, bool)> = match eff.ve {
        VeMode::On => vec![("ve_on", true)],
        VeMode::Off => vec![("ve_off", false)],
        VeMode::Both => vec![("ve_on", true), ("ve_off", false)],
    };
    let schedule = eff
        .sched
        .clone()
        .unwrap_or(crate::sched::Schedule::Random { seed: eff.seed });
    let vcpus = crate::workload::vcpus_of(
        eff.builtin,
        &params.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
    );
    if let Err(m) = schedule.check_vcpus(vcpus) {
        errln!("vesim: {m}.");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(path) = &args.trace {
        let inputs: Vec<&std::path::Path> = args.scenario.iter().map(|p| p.as_path()).collect();
        if let Err(m) = crate::output::check_output(path, &inputs) {
            errln!("vesim: {m}.");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let mut results = Vec::new();
    let mut perf = Vec::new();
    for (name, ve) in modes {
        // A long run shows its progress (operations started) on a terminal.
        let bar = if super::interactive() {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {pos}/{len} operations ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(0)
                .with_style(style)
                .with_message(name)
        } else {
            indicatif::ProgressBar::hidden()
        };
        // Wall-clock speed is reported apart from every counted figure and hash.
        let t0 = std::time::Instant::now();
        let r = build_world(eff.builtin, &params, ve, eff.profile, eff.seed).and_then(|w| {
            run_built_progress(eff.builtin, &params, w, eff.seed, &schedule, Some(&bar))
        });
        bar.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok(r) => {
                perf.push((name, secs, r.steps));
                results.push((name, r))
            }
            Err(e) => {
                errln!("vesim: the {name} run failed: {e}.");
                return ExitCode::from(1);
            }
        }
    }
    if let Some(path) = &args.trace {
        let ves: Vec<bool> = results.iter().map(|(n, _)| *n == "ve_on").collect();
        match crate::trace::record(eff.builtin, &sets, &ves, eff.profile, eff.seed, &schedule) {
            Ok(tf) => {
                if let Err(e) = crate::output::write_atomic(path, tf.to_text().as_bytes()) {
                    errln!("vesim: {} cannot be written: {e}.", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            }
            Err(e) => {
                errln!("vesim: the trace run failed: {e}.");
                return ExitCode::from(1);
            }
        }
    }
    let on = results
        .iter()
        .find(|(n, _)| *n == "ve_on")
        .map(|(_, r)| r.counters.exits_total());
    let off = results
        .iter()
        .find(|(n, _)| *n == "ve_off")
        .map(|(_, r)| r.counters.exits_total());
    if args.json {
        let mut m = Map::new();
        m.insert("scenario".into(), Value::from(eff.builtin.name()));
        m.insert("seed".into(), Value::from(eff.seed));
        m.insert("profile".into(), Value::from(eff.profile.to_string()));
        let p: Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect();
        m.insert("params".into(), Value::Object(p));
        let runs: Map<String, Value> = results
            .iter()
            .map(|(n, r)| ((*n).to_string(), run_json(r)))
            .collect();
        m.insert("runs".into(), Value::Object(runs));
        if let (Some(on), Some(off)) = (on, off) {
            m.insert("exits_saved".into(), Value::from(off as i64 - on as i64));
        }
        let hashes: Vec<String> = results.iter().map(|(_, r)| r.trace_hash.clone()).collect();
        m.insert(
            "trace_hash".into(),
            Value::from(crate::trace::combined_hash(&hashes)),
        );
        let p: Map<String, Value> = perf
            .iter()
            .map(|(n, secs, steps)| {
                let mut x = Map::new();
                x.insert("wall_seconds".into(), Value::from(*secs));
                x.insert("steps".into(), Value::from(*steps));
                x.insert(
                    "steps_per_second".into(),
                    Value::from(*steps as f64 / secs.max(1e-9)),
                );
                ((*n).to_string(), Value::Object(x))
            })
            .collect();
        m.insert("perf".into(), Value::Object(p));
        outln!("{}", Value::Object(m));
    } else {
        let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{}  seed {}  profile {}  {}",
            eff.builtin.name(),
            eff.seed,
            eff.profile,
            p.join(" ")
        );
        let header: Vec<&str> = results.iter().map(|(n, _)| *n).collect();
        out!("{:<30}", "");
        for h in &header {
            out!("{h:>14}");
        }
        outln!();
        let figures: Vec<Vec<(&str, u64)>> = results.iter().map(|(_, r)| run_figures(r)).collect();
        if let Some(first) = figures.first() {
            for (i, (k, _)) in first.iter().enumerate() {
                out!("{k:<30}");
                for f in &figures {
                    out!("{:>14}", f[i].1);
                }
                outln!();
            }
        }
        // Exits by reason, every reason any run took.
        let reasons: std::collections::BTreeSet<u32> = results
            .iter()
            .flat_map(|(_, r)| r.counters.exits.keys().copied())
            .collect();
        for code in reasons {
            let name = vesim_model::ExitReason::from_code(code).map_or("other", |r| r.name());
            out!("{:<30}", format!("exits_{code}_{name}"));
            for (_, r) in &results {
                out!("{:>14}", r.counters.exits.get(&code).copied().unwrap_or(0));
            }
            outln!();
        }
        out!("{:<30}", "cache_hit_rate");
        for (_, r) in &results {
            let c = &r.counters;
            match (c.cache_hits * 1000).checked_div(c.cache_lookups) {
                Some(permille) => out!("{:>13}%", format!("{}.{}", permille / 10, permille % 10)),
                None => out!("{:>14}", "-"),
            }
        }
        outln!();
        for (n, r) in &results {
            let c = &r.counters;
            let in_guest = c.page_walk_set + c.ignored_irrelevant + c.ignored_cache;
            if c.ve_total > 0 {
                outln!(
                    "{n}: {in_guest} of {} #VEs handled in the guest without introcore ({:.1}%)",
                    c.ve_total,
                    in_guest as f64 * 100.0 / c.ve_total as f64
                );
            }
        }
        for (n, r) in &results {
            outln!("trace hash {n:<8} {}", r.trace_hash);
        }
        outln!("schedule {schedule}");
        for (n, secs, steps) in &perf {
            outln!(
                "speed {n:<8} {steps} simulated steps in {secs:.3} s ({:.0} steps/s, wall clock)",
                *steps as f64 / secs.max(1e-9)
            );
        }
        if let (Some(on), Some(off)) = (on, off) {
            let saved = off as i64 - on as i64;
            let pct = if off == 0 {
                0.0
            } else {
                saved as f64 * 100.0 / off as f64
            };
            outln!("exits saved by #VE: {saved} ({pct:.2}% of the #VE-off exits)");
        }
    }
    ExitCode::SUCCESS
}
