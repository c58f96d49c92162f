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
    match replay(&tf) {
        Ok(n) => {
            println!(
                "{name}: {n} records and {} hashes replayed exactly",
                tf.runs.len()
            );
            ExitCode::SUCCESS
        }
        Err(ReplayError::Setup(m)) => {
            eprintln!("vesim: {name}: {m}.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            println!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}
