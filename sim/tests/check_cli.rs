//! The `vesim check` contract: passing seeds exit 0, a failing seed exits 1 with the lowest
//! failing seed and a replay command that reproduces the same failure.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;
use serde_json::Value;

#[test]
fn fixed_seeds_pass_on_every_builtin() {
    let r = vesim(&["check", "--seeds", "3"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for b in vesim::workload::Builtin::ALL.map(|(n, _)| n) {
        assert!(
            r.stdout.contains(&format!("{b}: 3 passed, 0 failed")),
            "{b}: {}",
            r.stdout
        );
    }
    let r = vesim(&["check", "--seeds", "2", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["runs"], 2 * vesim::workload::Builtin::ALL.len());
    assert_eq!(v["failed"], 0);
    assert_eq!(
        v["scenarios"].as_array().unwrap().len(),
        vesim::workload::Builtin::ALL.len()
    );
}

#[test]
fn hvmi_failure_reports_a_replay_that_reproduces_it() {
    let r = vesim(&["check", "--seeds", "4", "--profile", "hvmi", "--json"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let first = &v["failures"][0];
    assert_eq!(first["schedule"], format!("random:{}", first["seed"]));
    let replay = first["replay"].as_str().unwrap().to_string();
    assert!(replay.contains(&format!(
        "--builtin {}",
        first["scenario"].as_str().unwrap()
    )));
    let args: Vec<&str> = replay.split_whitespace().skip(1).collect();
    let mut args = args.clone();
    args.push("--json");
    let again = vesim(&args);
    assert_eq!(again.code, 1);
    let w: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(w["failures"][0]["invariant"], first["invariant"]);
    assert_eq!(w["failures"][0]["step"], first["step"]);
    assert_eq!(w["failures"][0]["detail"], first["detail"]);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["check", "--seeds", "x"][..],
        &["check", "--builtin", "no-such-scenario"],
        &["check", "--profile", "xen"],
    ] {
        let r = vesim(args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stdout.is_empty());
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
}

#[test]
fn parallel_jobs_report_the_same_in_seed_order() {
    let one = vesim(&["check", "--seeds", "6", "--profile", "hvmi", "--json"]);
    let two = vesim(&[
        "check",
        "--seeds",
        "6",
        "--profile",
        "hvmi",
        "--json",
        "--jobs",
        "2",
    ]);
    assert_eq!(one.code, two.code);
    assert_eq!(one.stdout, two.stdout);
}

#[test]
fn memory_pressure_seeds_pass_in_fixed() {
    let r = vesim(&["check", "--seeds", "3", "--builtin", "memory-pressure"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("memory-pressure: 3 passed, 0 failed"),
        "{}",
        r.stdout
    );
}
