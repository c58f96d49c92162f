//! Replaying a trace file: its header and operations are run again, the file they give is
//! rendered and compared with the original line by line; the first line that differs is named
//! with both versions ([`ReplayError`]).

use super::{excerpt, record_scenario, TraceError, TraceFile, QUOTE_MAX};

/// Why a replay did not match.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// The file does not parse (or is of another format).
    #[error("{0}")]
    Parse(#[from] TraceError),
    /// The trace names something this vesim cannot rebuild.
    #[error("{0}")]
    Setup(String),
    /// A line of the file is not the line its header and operations produce.
    #[error("line {line} ({what}): the file has '{recorded}', its header and operations give '{replayed}'")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What the line is (`the seed field`, `event 12 of run ve_on`, `the hash of run
        /// ve_on`, ...).
        what: String,
        /// The file's line (a prefix of it; `(none)` past its end).
        recorded: String,
        /// The line replayed (a prefix of it; `(none)` past its end).
        replayed: String,
    },
}

impl ReplayError {
    /// Whether the trace could not be replayed at all (exit 2) rather than replayed and found
    /// different (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, ReplayError::Parse(_) | ReplayError::Setup(_))
    }
}

/// What each line of a trace text is, for a mismatch message.
fn line_names(text: &str) -> Vec<String> {
    let mut run = "";
    let mut k = 0;
    text.lines()
        .map(|l| {
            let head = l.split(' ').next().unwrap_or("");
            match head {
                "vesim-trace" => "the format line".to_string(),
                "run" => {
                    run = if l.ends_with("ve_off") {
                        "ve_off"
                    } else {
                        "ve_on"
                    };
                    k = 0;
                    format!("the start of run {run}")
                }
                "event" => {
                    k += 1;
                    format!("event {k} of run {run}")
                }
                "hash" => format!("the hash of run {run}"),
                "op" => "an operation".to_string(),
                "process" => "a process".to_string(),
                "end" => "the end".to_string(),
                h => format!("the {h} field"),
            }
        })
        .collect()
}

/// Re-runs a parsed trace from its header and operations and returns the trace they produce.
pub fn rerecord(tf: &TraceFile) -> Result<TraceFile, ReplayError> {
    let b = crate::workload::Builtin::from_name(&tf.scenario).ok_or_else(|| {
        ReplayError::Setup(format!(
            "'{}' is not a built-in scenario",
            excerpt(&tf.scenario, QUOTE_MAX)
        ))
    })?;
    let params = crate::workload::resolve_params(b, &tf.params)
        .map_err(|e| ReplayError::Setup(e.to_string()))?;
    let ves: Vec<bool> = tf.runs.iter().map(|r| r.ve).collect();
    record_scenario(
        b,
        &params,
        tf.quirks,
        &tf.profile,
        tf.seed,
        &tf.schedule,
        tf.steps,
        tf.scenario_data.clone(),
        &ves,
    )
    .map_err(|e| ReplayError::Setup(e.to_string()))
}

/// Compares a trace text with the text its header and operations produce, line by line.
/// Returns the number of event records verified.
pub fn replay_text(text: &str) -> Result<usize, ReplayError> {
    let tf = TraceFile::parse(text)?;
    let again = rerecord(&tf)?.to_text();
    compare_text(text, &again)?;
    Ok(tf.runs.iter().map(|r| r.lines.len()).sum())
}

fn compare_text(text: &str, again: &str) -> Result<(), ReplayError> {
    if text == again {
        return Ok(());
    }
    let names = line_names(again);
    let (mut a, mut b) = (text.split('\n'), again.split('\n'));
    let mut n = 0;
    loop {
        n += 1;
        match (a.next(), b.next()) {
            (None, None) => return Ok(()),
            (x, y) if x == y => continue,
            (x, y) => {
                let q = |s: Option<&str>| s.map_or("(none)".to_string(), |s| excerpt(s, 100));
                return Err(ReplayError::Line {
                    line: n,
                    what: names
                        .get(n - 1)
                        .cloned()
                        .unwrap_or_else(|| "past the end".to_string()),
                    recorded: q(x),
                    replayed: q(y),
                });
            }
        }
    }
}

/// Re-runs every run of a parsed trace and checks that the file it came from would be exactly
/// what its header and operations produce. Returns the number of records verified.
pub fn replay(tf: &TraceFile) -> Result<usize, ReplayError> {
    let again = rerecord(tf)?.to_text();
    compare_text(&tf.to_text(), &again)?;
    Ok(tf.runs.iter().map(|r| r.lines.len()).sum())
}
