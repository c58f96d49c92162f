//! `vesim minimize FILE`: shrink a failing trace to the fewest guest operations that still
//! fail the same invariant, and write it.

use super::EXIT_USAGE;
use crate::minimize::{minimize_while, op_count, preemptions};
use crate::runner::{checked, Checked, Setup};
use crate::trace::{record_scenario, TraceFile};
use crate::workload::{resolve_params, Builtin};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  vesim check --seeds 20 --profile hvmi --trace fail.trace
  vesim minimize fail.trace --out small.trace
  vesim replay small.trace

Exit status: 0 when a smaller failing trace was written, 1 when the trace fails no invariant,
2 when the file cannot be read or does not parse.";

/// Arguments of `vesim minimize`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct MinimizeArgs {
    /// The failing trace.
    file: PathBuf,
    /// Where to write the smallest trace (default: FILE.min).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print one JSON object: "file", "out", "invariant", "ops", "vcpus" and "preemptions"
    /// (each {"before", "after"}; the preemptions are the context switches of the failing
    /// run),
    /// "schedule" and the written trace's "trace_hash".
    #[arg(long)]
    json: bool,
}

/// Runs `vesim minimize`.
pub fn run(args: MinimizeArgs) -> ExitCode {
    let name = args.file.display().to_string();
    let usage = |m: String| {
        errln!("vesim: {m}.");
        ExitCode::from(EXIT_USAGE)
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.min", args.file.display())));
    if let Err(m) = crate::output::check_output(&out, &[&args.file]) {
        return usage(m);
    }
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return usage(format!("{name} cannot be read: {e}")),
    };
    let tf = match TraceFile::parse(&text) {
        Ok(t) => t,
        Err(e) => return usage(format!("{name}:{}: {}", e.line, e.message)),
    };
    let Some(b) = Builtin::from_name(&tf.scenario) else {
        return usage(format!(
            "{name}: '{}' is not a built-in scenario",
            tf.scenario
        ));
    };
    let params = match resolve_params(b, &tf.params) {
        Ok(p) => p,
        Err(e) => return usage(format!("{name}: {e}")),
    };
    let setup = Setup {
        builtin: b,
        params: params.clone(),
        quirks: tf.quirks,
        seed: tf.seed,
        schedule: tf.schedule.clone(),
    };
    let fails = |s: &Setup, sc: &crate::workload::Scenario| match checked(s, sc) {
        Checked::Failed(v) => Some(v),
        _ => None,
    };
    let Some(inv) = fails(&setup, &tf.scenario_data).map(|v| v.invariant) else {
        if args.json {
            outln!(
                "{}",
                serde_json::json!({"file": name, "invariant": null, "minimized": false})
            );
        } else {
            outln!("{name}: the trace fails no invariant; nothing to minimize");
        }
        return ExitCode::from(1);
    };
    let small = minimize_while(&setup, &tf.scenario_data, &|s, sc| {
        fails(s, sc).is_some_and(|v| v.invariant == inv)
    });
    // The written trace ends where the invariant fails (a livelock would otherwise run to the
    // step limit).
    let steps = fails(&small.setup, &small.scenario).map(|v| v.step);
    let vcpus = |s: &Setup| s.params.get("vcpus").copied().unwrap_or(1);
    let (ops_before, ops_after) = (op_count(&tf.scenario_data), op_count(&small.scenario));
    let (vcpus_before, vcpus_after) = (vcpus(&setup), vcpus(&small.setup));
    let (pre_before, pre_after) = (
        small.preemptions_before,
        preemptions(&small.setup.schedule).unwrap_or(0),
    );
    let trace = match record_scenario(
        b,
        &small.setup.params,
        tf.quirks,
        &tf.profile,
        tf.seed,
        &small.setup.schedule,
        steps,
        small.scenario,
        &[true],
    ) {
        Ok(t) => t,
        Err(e) => return usage(format!("the minimized scenario does not run: {e}")),
    };
    if let Err(e) = crate::output::write_atomic(&out, trace.to_text().as_bytes()) {
        return usage(format!("{} cannot be written: {e}", out.display()));
    }
    if args.json {
        let hashes: Vec<String> = trace.runs.iter().map(|r| r.hash.clone()).collect();
        outln!(
            "{}",
            serde_json::json!({
                "file": name,
                "out": out.display().to_string(),
                "minimized": true,
                "invariant": inv.to_string(),
                "ops": {"before": ops_before, "after": ops_after},
                "vcpus": {"before": vcpus_before, "after": vcpus_after},
                "preemptions": {"before": pre_before, "after": pre_after},
                "schedule": small.setup.schedule.to_string(),
                "trace_hash": crate::trace::combined_hash(&hashes),
            })
        );
    } else {
        outln!(
            "{name}: {ops_before} guest operations -> {ops_after}, {vcpus_before} VCPUs -> \
             {vcpus_after}, schedule {} ({} preemptions) -> {} ({} preemptions), still failing \
             {inv}; written to {}",
            setup.schedule,
            pre_before,
            small.setup.schedule,
            pre_after,
            out.display()
        );
    }
    ExitCode::SUCCESS
}
