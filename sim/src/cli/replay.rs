//! `vesim replay FILE`: re-run a trace and verify every record and the hash.

use super::EXIT_USAGE;
use crate::trace::{replay, ReplayError, TraceFile};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  vesim run --builtin desktop-mix --seed 3 --trace t.trace
  vesim replay t.trace

Exit status: 0 when every record and hash match, 1 when one differs, 2 when the file cannot be
read or does not parse.";

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
}

/// Runs `vesim replay`.
pub fn run(args: ReplayArgs) -> ExitCode {
    let name = args.file.display().to_string();
    let text = match std::fs::read(&args.file) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                eprintln!("vesim: {name} is not UTF-8 text.");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        Err(e) => {
            eprintln!("vesim: {name} cannot be read: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tf = match TraceFile::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vesim: {name}:{}: {}.", e.line, e.message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = replay(&tf);
    if let Err(ReplayError::Setup(m)) = &result {
        eprintln!("vesim: {name}: {m}.");
        return ExitCode::from(EXIT_USAGE);
    }
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
        println!("{v}");
    } else {
        match &result {
            Ok(n) => println!(
                "{name}: {n} records and {} hashes replayed exactly",
                tf.runs.len()
            ),
            Err(e) => println!("{name}: {e}"),
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
