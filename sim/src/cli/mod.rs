//! The `vesim` command line.
//!
//! Exit status: 0 success, 1 "ran but the answer is negative" (for `exec`: not executed),
//! 2 bad arguments or input (one sentence on stderr, nothing on stdout).

/// `println!` that never panics: a closed stdout (`vesim ... | head -1`) is noted
/// ([`stdout_closed`]) and the rest of the output dropped.
macro_rules! outln {
    () => {
        $crate::cli::emit(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::emit(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` that never panics (see `outln!`).
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::emit(format_args!($($t)*))
    };
}

/// `eprintln!` that never panics: a closed stderr drops the message.
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::cli::emit_err(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub use crate::text::{parse_hex_bytes, parse_u64};

mod agent;
mod check;
mod exec;
mod explore;
mod minimize;
#[cfg(feature = "fuzzing")]
pub mod oracle;
mod quirks;
mod replay;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// While [`captured`] runs: what the command line printed (stdout, stderr).
    static CAPTURE: std::cell::RefCell<Option<(String, String)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's command-line output captured instead of printed, and returns
/// its result with the stdout and stderr text (the fuzz oracle of the file inputs reads them).
pub fn captured<R>(f: impl FnOnce() -> R) -> (R, String, String) {
    CAPTURE.with(|c| *c.borrow_mut() = Some((String::new(), String::new())));
    let r = f();
    let (out, err) = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, out, err)
}

fn capture(to_err: bool, text: &str) -> bool {
    CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some((out, err)) => {
            if to_err { err } else { out }.push_str(text);
            true
        }
        None => false,
    })
}

/// Whether progress bars may be drawn: stderr is a terminal and output is not captured.
pub fn interactive() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr()) && CAPTURE.with(|c| c.borrow().is_none())
}

/// Writes to stdout; a failed write (a closed pipe) marks stdout closed instead of panicking.
pub fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if capture(false, &args.to_string()) {
        return;
    }
    if stdout_closed() {
        return;
    }
    if std::io::stdout().lock().write_fmt(args).is_err() {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes to stderr, dropping the message if it cannot be written. A word longer than
/// [`crate::trace::QUOTE_MAX`] characters (an offending value quoted whole: a 10 MB token of an
/// input file) is cut to that prefix, so an error stays one short line.
pub fn emit_err(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = args.to_string();
    let (body, nl) = match text.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (text.as_str(), ""),
    };
    let short: Vec<String> = body
        .split(' ')
        .map(|w| crate::trace::excerpt(w, crate::trace::QUOTE_MAX + 20))
        .collect();
    let line = short.join(" ") + nl;
    if !capture(true, &line) {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Whether a write to stdout failed (its reader went away): long commands stop early.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

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
    /// Run every interleaving of a small world up to K preemptions, checking every step.
    Explore(explore::ExploreArgs),
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the command line given as `args` (the first is the program name), as `main` does.
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
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
            errln!("vesim: {msg}{stop}");
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
        Command::Explore(args) => explore::run(args),
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
