//! The `vesim` command line.
//!
//! Exit status: 0 success, 1 "ran but the answer is negative" (for `exec`: not executed),
//! 2 bad arguments or input (one sentence on stderr, nothing on stdout).

mod agent;
mod check;
mod exec;
mod minimize;
mod quirks;
mod replay;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit status for bad arguments or input.
pub const EXIT_USAGE: u8 = 2;

/// vesim: a deterministic simulator of #VE-based VM introspection.
#[derive(Debug, Parser)]
#[command(name = "vesim", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one instruction on the reference CPU and show what it does.
    Exec(exec::ExecArgs),
    /// Send one #VE through the agent and show its verdict.
    Agent(agent::AgentArgs),
    /// Run a scenario with #VE on, off, or both, and print its figures.
    Run(run::RunArgs),
    /// Run seeded scenarios and check every invariant after every step.
    Check(check::CheckArgs),
    /// Re-run a trace file and verify every record and the hash.
    Replay(replay::ReplayArgs),
    /// Shrink a failing trace to the fewest operations that still fail the same invariant.
    Minimize(minimize::MinimizeArgs),
    /// For each HVMI quirk, the invariant it breaks with a minimal replay, or its cost.
    Quirks(quirks::QuirksArgs),
}

/// Parses a number: hex with a 0x prefix, or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16)
    } else {
        t.replace('_', "").parse::<u64>()
    };
    r.map_err(|_| format!("'{s}' is not a 64-bit number (hex with 0x, or decimal)"))
}

/// Parses hex bytes, optionally separated by spaces.
pub fn parse_hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(&digits);
    if digits.is_empty() {
        return Err("no hex bytes given".into());
    }
    if digits.len() % 2 != 0 {
        return Err(format!("'{s}' has an odd number of hex digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("'{s}' is not a string of hex bytes"))
        })
        .collect()
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let text = e.render().to_string();
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let first = lines.next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // "the following required arguments were not provided:" names them on the next line.
            let msg = match (first.strip_suffix(':'), lines.next()) {
                (Some(head), Some(next)) => format!("{head}: {}", next.trim()),
                _ => first.to_string(),
            };
            let stop = if msg.ends_with('.') { "" } else { "." };
            eprintln!("vesim: {msg}{stop}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Minimize(args) => minimize::run(args),
        Command::Quirks(args) => quirks::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_as_hex_or_decimal() {
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("16"), Ok(16));
        assert_eq!(parse_u64("0xFFFFFFFFFFFFFFFF"), Ok(u64::MAX));
        assert!(parse_u64("0x1_0000_0000_0000_0000").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("ten").is_err());
    }

    #[test]
    fn hex_bytes_parse_with_or_without_spaces() {
        assert_eq!(
            parse_hex_bytes("f0480fab18"),
            Ok(vec![0xF0, 0x48, 0x0F, 0xAB, 0x18])
        );
        assert_eq!(
            parse_hex_bytes("F0 48 0F AB 18"),
            Ok(vec![0xF0, 0x48, 0x0F, 0xAB, 0x18])
        );
        assert!(parse_hex_bytes("f04").is_err());
        assert!(parse_hex_bytes("zz").is_err());
        assert!(parse_hex_bytes("").is_err());
    }
}
