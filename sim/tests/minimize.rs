//! Minimization: a failing trace of more than 1000 guest operations shrinks to at most 50 that
//! still fail the same invariant, and the written trace replays.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;
use std::collections::BTreeMap;
use vesim::minimize::{failing_invariant, minimize, op_count, Setup};
use vesim::quirks::Profile;
use vesim::sched::Schedule;
use vesim::trace::record;
use vesim::workload::{resolve_params, Builtin};

fn big_hvmi_trace() -> vesim::trace::TraceFile {
    let mut sets = BTreeMap::new();
    sets.insert("ops".to_string(), 1200);
    sets.insert("vcpus".to_string(), 2);
    record(
        Builtin::DesktopMix,
        &sets,
        &[true],
        Profile::Hvmi,
        0,
        &Schedule::Random { seed: 0 },
    )
    .unwrap()
}

#[test]
fn a_failing_trace_of_over_1000_operations_shrinks_to_at_most_50() {
    let tf = big_hvmi_trace();
    let n = op_count(&tf.scenario_data);
    assert!(n > 1000, "{n} operations");
    let params = resolve_params(Builtin::DesktopMix, &tf.params).unwrap();
    let setup = Setup {
        builtin: Builtin::DesktopMix,
        params,
        quirks: tf.quirks,
        seed: tf.seed,
        schedule: tf.schedule.clone(),
    };
    let inv = failing_invariant(&setup, &tf.scenario_data).expect("hvmi fails an invariant");
    let small = minimize(&setup, &tf.scenario_data, inv);
    assert!(
        op_count(&small) <= 50,
        "{} operations left",
        op_count(&small)
    );
    assert_eq!(
        failing_invariant(&setup, &small),
        Some(inv),
        "the same invariant still fails"
    );
    // In fixed the same operations pass.
    let fixed = Setup {
        quirks: vesim::quirks::Quirks::fixed(),
        ..setup
    };
    assert_eq!(failing_invariant(&fixed, &small), None);
}

#[test]
fn minimize_writes_a_trace_that_replays() {
    let tf = big_hvmi_trace();
    let dir = std::env::temp_dir();
    let big = dir.join(format!("vesim-{}-big.trace", std::process::id()));
    let small = dir.join(format!("vesim-{}-small.trace", std::process::id()));
    std::fs::write(&big, tf.to_text()).unwrap();
    let r = vesim(&[
        "minimize",
        big.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("still failing"), "{}", r.stdout);
    let r = vesim(&["replay", small.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // A passing trace has nothing to minimize.
    let ok = record(
        Builtin::DesktopMix,
        &BTreeMap::new(),
        &[true],
        Profile::Fixed,
        1,
        &Schedule::Random { seed: 1 },
    )
    .unwrap();
    std::fs::write(&big, ok.to_text()).unwrap();
    let r = vesim(&[
        "minimize",
        big.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&small);
}
