//! `vesim replay FILE`: re-run a trace and verify every record and the hash.

use super::EXIT_USAGE;
use crate::trace::{replay_text, TraceFile};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  vesim run --builtin desktop-mix --seed 3 --trace t.trace
  vesim replay t.trace
  vesim replay --check corpus/quirks/Q5.trace

The file must be exactly what its header and operations produce: every line is compared with
the line the replay gives, header and operations included (each run's hash covers them too).

Exit status: 0 when every line matches, 1 when one differs (the first is named; with --check,
also when an invariant fails under the trace's quirk switches), 2 when the file cannot be read,
does not parse, is of another trace format or names a value this vesim does not know.";

/// Arguments of `vesim replay`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ReplayArgs {
    /// The trace file.
    file: PathBuf,
    /// Print one JSON object: "file", "ok", "records", "runs" (each with "ve" and
    /// "trace_hash"), the top-level "trace_hash" and, on a mismatch, "mismatch".
    #[arg(long)]
    json: bool,
    /// Also run the trace's operations with every check after every step, under its quirk
    /// switches and under `fixed`, and print the first failure of each ("check" in JSON).
    #[arg(long)]
    check: bool,
}

/// The first failure of a checked run, as text and JSON.
fn check_line(c: &crate::runner::Checked) -> (String, serde_json::Value) {
    use crate::runner::Checked;
    match c {
        Checked::Passed => ("passes".into(), serde_json::json!({"passed": true})),
        Checked::Failed(v) => (
            c.to_string(),
            serde_json::json!({"passed": false, "invariant": v.invariant.to_string(),
                "step": v.step, "cpu": v.cpu.0, "detail": v.detail}),
        ),
        Checked::Stopped { .. } => (
            format!("stops: {c}"),
            serde_json::json!({"passed": false, "stopped": c.to_string()}),
        ),
        Checked::Harness(e) => (
            format!("cannot run: {e}"),
            serde_json::json!({"passed": false, "harness": e}),
        ),
    }
}

/// Runs `vesim replay`.
pub fn run(args: ReplayArgs) -> ExitCode {
    let name = args.file.display().to_string();
    let text = match std::fs::read(&args.file) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                errln!("vesim: {name} is not UTF-8 text.");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        Err(e) => {
            errln!("vesim: {name} cannot be read: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tf = match TraceFile::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            errln!("vesim: {name}:{}: {}.", e.line, e.message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = replay_text(&text);
    if let Err(e) = &result {
        if e.is_usage() {
            errln!("vesim: {name}: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let checks = if args.check {
        let Some(b) = crate::workload::Builtin::from_name(&tf.scenario) else {
            errln!(
                "vesim: {name}: '{}' is not a built-in scenario.",
                tf.scenario
            );
            return ExitCode::from(EXIT_USAGE);
        };
        let params = match crate::workload::resolve_params(b, &tf.params) {
            Ok(p) => p,
            Err(e) => {
                errln!("vesim: {name}: {e}.");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let setup = crate::runner::Setup {
            builtin: b,
            params,
            quirks: tf.quirks,
            seed: tf.seed,
            schedule: tf.schedule.clone(),
        };
        let fixed = crate::runner::Setup {
            quirks: crate::quirks::Quirks::fixed(),
            ..setup.clone()
        };
        let on = crate::runner::checked(&setup, &tf.scenario_data);
        let off = crate::runner::checked(&fixed, &tf.scenario_data);
        Some((on, off))
    } else {
        None
    };
    let switches = tf.quirks.enabled().join(",");
    let switches = if switches.is_empty() {
        "fixed".to_string()
    } else {
        format!("fixed+{switches}")
    };
    if args.json {
        let runs: Vec<serde_json::Value> = tf
            .runs
            .iter()
            .map(|r| serde_json::json!({"ve": if r.ve { "on" } else { "off" }, "trace_hash": r.hash}))
            .collect();
        let hashes: Vec<String> = tf.runs.iter().map(|r| r.hash.clone()).collect();
        let mut v = serde_json::json!({
            "file": name,
            "ok": result.is_ok(),
            "records": result.as_ref().map_or(0, |n| *n),
            "runs": runs,
            "trace_hash": crate::trace::combined_hash(&hashes),
        });
        if let (Err(e), Some(o)) = (&result, v.as_object_mut()) {
            o.insert("mismatch".into(), serde_json::Value::from(e.to_string()));
        }
        if let (Some((on, off)), Some(o)) = (&checks, v.as_object_mut()) {
            o.insert(
                "check".into(),
                serde_json::json!({"switches": switches, "with_switches": check_line(on).1,
                    "fixed": check_line(off).1}),
            );
        }
        outln!("{v}");
    } else {
        match &result {
            Ok(n) => outln!(
                "{name}: {n} records and {} hashes replayed exactly",
                tf.runs.len()
            ),
            Err(e) => outln!("{name}: {e}"),
        }
        if let Some((on, off)) = &checks {
            outln!("{switches}: {}", check_line(on).0);
            outln!("fixed: {}", check_line(off).0);
        }
    }
    let failed = checks
        .as_ref()
        .is_some_and(|(on, _)| *on != crate::runner::Checked::Passed);
    if result.is_ok() && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
