//! The fuzz oracle `scenario_file` (feature `fuzzing`): the fuzzer's bytes as a scenario file
//! and as a trace file, through the command line's own entry points (`run`, `replay`,
//! `minimize`) in a scratch directory. Every command ends in a documented status (0, 1, or 2
//! with one sentence on stderr), never a panic. The other oracles are in `vesim::fuzzing`.

use crate::fuzzing;

/// The fuzz targets, by name (the `fuzz/` binaries and the corpus directories).
pub const TARGETS: [&str; 5] = [
    "agent_instruction",
    "hypercall",
    "page_walk",
    "scenario",
    "scenario_file",
];

/// Runs the oracle of target `name` on `data`; `false` for an unknown target.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "agent_instruction" => fuzzing::agent_instruction(data),
        "hypercall" => fuzzing::hypercall(data),
        "page_walk" => fuzzing::page_walk(data),
        "scenario" => fuzzing::scenario(data),
        "scenario_file" => scenario_file(data),
        _ => return false,
    }
    true
}

/// Operations a parsed scenario or trace may run before the oracle stops short (the fuzzer
/// looks for panics in parsing and set-up; long runs are the other targets' business).
const FILE_OPS_MAX: u64 = 2_000;

/// Operations of a trace the oracle minimizes (minimizing re-runs it many times).
const MINIMIZE_OPS_MAX: u64 = 40;

/// One command line's result: the documented statuses only (0, 1, or 2 with one sentence on
/// stderr and nothing on stdout), never a panic.
fn documented(what: &str, code: std::process::ExitCode, out: &str, err: &str) {
    use std::process::ExitCode;
    if code == ExitCode::from(super::EXIT_USAGE) {
        assert!(out.is_empty(), "{what}: exit 2 with output {out:?}");
        assert_eq!(err.lines().count(), 1, "{what}: exit 2 with {err:?}");
        assert!(err.starts_with("vesim: "), "{what}: {err:?}");
        assert!(err.len() < 1024, "{what}: a {}-byte error line", err.len());
    } else {
        assert!(
            code == ExitCode::SUCCESS || code == ExitCode::from(1),
            "{what}: an undocumented status ({err:?})"
        );
    }
}

/// A scratch directory of its own for one oracle call.
fn scratch() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("vesim-fuzz-files-{}-{n}", std::process::id()))
}

fn listing(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Arbitrary bytes as a scenario file and as a trace file, through the command line's own
/// entry points (`vesim run FILE --trace OUT`, `vesim replay FILE`, `vesim minimize FILE --out
/// OUT`) in a scratch directory: every result is a documented one ([`documented`]), nothing
/// panics, and the directory afterwards holds the inputs and at most the named outputs (no
/// temporary file is left and nothing is written elsewhere: every output path is named in it).
pub fn scenario_file(data: &[u8]) {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let (toml, trace) = (dir.join("in.toml"), dir.join("in.trace"));
    let (out, min) = (dir.join("out.trace"), dir.join("min.trace"));
    if std::fs::write(&toml, data).is_err() || std::fs::write(&trace, data).is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let p = |x: &std::path::Path| x.to_string_lossy().into_owned();
    let text = std::str::from_utf8(data).ok();
    // A scenario file runs only when its work is small (parsing and refusal always go through).
    let small_scenario = text
        .and_then(|t| crate::scenario_file::ScenarioFile::parse("in.toml", t).ok())
        .is_none_or(|f| {
            let b = crate::workload::Builtin::from_name(&f.builtin);
            let params = b.and_then(|b| crate::workload::resolve_params(b, &f.params).ok());
            params.is_none_or(|params| {
                let get = |k: &str| params.get(k).copied().unwrap_or(1);
                get("ops").max(get("pages").saturating_mul(get("changes"))) <= FILE_OPS_MAX
            })
        });
    if small_scenario {
        let (code, o, e) =
            super::captured(|| super::run_from(["vesim", "run", &p(&toml), "--trace", &p(&out)]));
        documented("run", code, &o, &e);
    }
    let ops = text
        .and_then(|t| crate::trace::TraceFile::parse(t).ok())
        .map(|tf| crate::minimize::op_count(&tf.scenario_data) as u64);
    if ops.is_none_or(|n| n <= FILE_OPS_MAX) {
        let (code, o, e) = super::captured(|| super::run_from(["vesim", "replay", &p(&trace)]));
        documented("replay", code, &o, &e);
    }
    if ops.is_none_or(|n| n <= MINIMIZE_OPS_MAX) {
        let (code, o, e) = super::captured(|| {
            super::run_from(["vesim", "minimize", &p(&trace), "--out", &p(&min)])
        });
        documented("minimize", code, &o, &e);
    }
    // The inputs are as written; only the named outputs may have appeared.
    assert_eq!(
        std::fs::read(&toml).ok().as_deref(),
        Some(data),
        "in.toml changed"
    );
    assert_eq!(
        std::fs::read(&trace).ok().as_deref(),
        Some(data),
        "in.trace changed"
    );
    for f in listing(&dir) {
        assert!(
            ["in.toml", "in.trace", "out.trace", "min.trace"].contains(&f.as_str()),
            "{f} was left in the scratch directory"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
