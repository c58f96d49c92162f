//! Helpers shared by the command-line contract tests.

#![allow(clippy::expect_used)]

use std::process::Command;

/// What one run of the `vesim` binary gave.
pub struct Run {
    /// Exit status (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the `vesim` binary built for these tests with `args`.
pub fn vesim(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_vesim"))
        .args(args)
        .output()
        .expect("the vesim binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
