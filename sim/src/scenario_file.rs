//! Scenario files (TOML): a built-in generator with its parameters and the run's options.
//!
//! ```toml
//! builtin = "desktop-mix"        # required: paper-synthetic, desktop-mix or memory-pressure
//! seed = 7                       # optional, default 0
//! profile = "fixed"              # optional: fixed or hvmi
//! ve = "both"                    # optional: on, off or both
//! schedule = "pct:7:3:20000"     # optional VCPU schedule, default random:SEED
//!
//! [params]                       # optional; each within the built-in's range
//! vcpus = 2
//! ops = 300
//! ```
//!
//! Unknown keys, wrong types and out-of-range values are refused with the file's line.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The contents of a scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The generator.
    pub builtin: String,
    /// Seed.
    pub seed: Option<u64>,
    /// Profile name.
    pub profile: Option<String>,
    /// on, off or both.
    pub ve: Option<String>,
    /// Schedule string.
    pub schedule: Option<String>,
    /// Parameters.
    #[serde(default)]
    pub params: BTreeMap<String, u64>,
}

/// A scenario file that is not valid: where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct ScenarioFileError {
    /// File name.
    pub file: String,
    /// Line (1-based; 0 when the whole file is at fault).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The 1-based line of byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// The line of `key`: the first that starts with it, else the first that holds it (an inline
/// table), else line 1 (an error always names a real line).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .or_else(|| text.lines().position(|l| l.contains(key)))
        .map_or(1, |i| i + 1)
}

impl ScenarioFile {
    /// Parses and validates `text` (`file` names it in errors).
    pub fn parse(file: &str, text: &str) -> Result<ScenarioFile, ScenarioFileError> {
        let err = |line: usize, message: String| ScenarioFileError {
            file: file.to_string(),
            line,
            message,
        };
        let sf: ScenarioFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            err(line, e.message().trim().replace('\n', " "))
        })?;
        let Some(b) = crate::workload::Builtin::from_name(&sf.builtin) else {
            return Err(err(
                key_line(text, "builtin"),
                format!(
                    "'{}' is not a built-in ({})",
                    sf.builtin,
                    crate::workload::Builtin::ALL.map(|(n, _)| n).join(", ")
                ),
            ));
        };
        if let Some(p) = &sf.profile {
            p.parse::<crate::quirks::Profile>()
                .map_err(|m| err(key_line(text, "profile"), m))?;
        }
        if let Some(v) = &sf.ve {
            if !matches!(v.as_str(), "on" | "off" | "both") {
                return Err(err(
                    key_line(text, "ve"),
                    format!("'{v}' is not on, off or both"),
                ));
            }
        }
        if let Some(s) = &sf.schedule {
            s.parse::<crate::sched::Schedule>()
                .map_err(|e| err(key_line(text, "schedule"), e.to_string()))?;
        }
        crate::workload::resolve_params(b, &sf.params).map_err(|e| {
            let bad = sf
                .params
                .keys()
                .find(|k| e.to_string().contains(k.as_str()))
                .map_or_else(|| key_line(text, "params"), |k| key_line(text, k));
            err(bad, e.to_string())
        })?;
        Ok(sf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_parses() {
        let t = "builtin = \"desktop-mix\"\nseed = 7\n[params]\nvcpus = 2\nops = 30\n";
        let sf = ScenarioFile::parse("s.toml", t).unwrap();
        assert_eq!(sf.seed, Some(7));
        assert_eq!(sf.params.get("ops"), Some(&30));
    }

    #[test]
    fn bad_files_name_the_line() {
        let cases = [
            ("builtin = \"desktop-mix\"\nsede = 7\n", 2),
            ("builtin = \"desktop-mix\"\n[params]\nvcpus = 0\n", 3),
            ("builtin = \"desktop-mix\"\n[params]\nbogus = 1\n", 3),
            ("builtin = \"nope\"\n", 1),
            ("builtin = \"desktop-mix\"\nseed = \"x\"\n", 2),
            ("builtin = \"desktop-mix\"\nve = \"sometimes\"\n", 2),
            ("builtin = \"desktop-mix\"\nschedule = \"fifo\"\n", 2),
            ("builtin = [\n", 1),
            ("seed = 1\n", 1),
            // An inline table: the key is not at the start of its line.
            (
                "builtin = \"desktop-mix\"\n\nparams = { \"ops\" = 5000000 }\n",
                3,
            ),
            (
                "builtin = \"desktop-mix\"\n[params]\na = { b = { c = 1 } }\n",
                3,
            ),
        ];
        for (t, line) in cases {
            let e = ScenarioFile::parse("s.toml", t).unwrap_err();
            assert_eq!(e.line, line, "{t:?}: {e}");
            assert!(!e.message.is_empty());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// I9: any text is a scenario or an error, never a panic.
        #[test]
        fn i9_any_text_is_a_scenario_or_an_error(t in r#"(builtin = "desktop-mix"\n)?[ -~\n]{0,120}"#) {
            if let Err(e) = ScenarioFile::parse("s.toml", &t) {
                // Every error names a real line of the file.
                proptest::prop_assert!(e.line >= 1 && e.line <= t.lines().count().max(1) + 1, "{e}");
            }
        }
    }
}
