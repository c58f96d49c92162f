//! `vesim minimize FILE`: shrink a failing trace to the fewest guest operations that still
//! fail the same invariant, and write it.

use super::EXIT_USAGE;
use crate::minimize::{failing_invariant, minimize, op_count, Setup};
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
}

/// Runs `vesim minimize`.
pub fn run(args: MinimizeArgs) -> ExitCode {
    let name = args.file.display().to_string();
    let usage = |m: String| {
        eprintln!("vesim: {m}.");
        ExitCode::from(EXIT_USAGE)
    };
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
    let Some(inv) = failing_invariant(&setup, &tf.scenario_data) else {
        println!("{name}: the trace fails no invariant; nothing to minimize");
        return ExitCode::from(1);
    };
    let small = minimize(&setup, &tf.scenario_data, inv);
    let before = op_count(&tf.scenario_data);
    let after = op_count(&small);
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.min", args.file.display())));
    let trace = match record_scenario(
        b,
        &params,
        tf.quirks,
        &tf.profile,
        tf.seed,
        &tf.schedule,
        small,
        &[true],
    ) {
        Ok(t) => t,
        Err(e) => return usage(format!("the minimized scenario does not run: {e}")),
    };
    if let Err(e) = std::fs::write(&out, trace.to_text()) {
        return usage(format!("{} cannot be written: {e}", out.display()));
    }
    println!(
        "{name}: {before} guest operations -> {after}, still failing {inv}; written to {}",
        out.display()
    );
    ExitCode::SUCCESS
}
