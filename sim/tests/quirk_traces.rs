//! The quirk report's committed traces (`corpus/quirks/*.trace`, written by `vesim quirks`):
//! each replays record for record, fails an invariant with its one switch on and passes in
//! `fixed`, within 50 guest operations; and the report has a row for every quirk of
//! HVMI-BEHAVIOURS section Q and Q31.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use vesim::check::Invariant;
use vesim::minimize::op_count;
use vesim::quirk_report::{Kind, QUIRKS};
use vesim::quirks::{Quirks, QUIRK_NAMES};
use vesim::runner::{checked, Checked, Setup};
use vesim::trace::{replay, TraceFile};
use vesim::workload::{resolve_params, Builtin};

fn traces() -> Vec<(String, TraceFile)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus/quirks");
    let mut out: Vec<(String, TraceFile)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            let tf = TraceFile::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (name, tf)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn setup(tf: &TraceFile, quirks: Quirks) -> Setup {
    let b = Builtin::from_name(&tf.scenario).unwrap();
    Setup {
        builtin: b,
        params: resolve_params(b, &tf.params).unwrap(),
        quirks,
        seed: tf.seed,
        schedule: tf.schedule.clone(),
    }
}

/// The invariant each quirk's description implies, where it names one (HVMI-BEHAVIOURS Q and
/// the invariants of ARCHITECTURE.md): Q1 is a livelock (I10), Q5 leaves RDI as hardware does
/// not (I2), Q9 hides a monitored-bit change (I1), Q10 sets D where hardware does not (I6),
/// Q15 and Q16 leave a monitored entry in the cache (I7), Q4's refusal hits Q1's break loop
/// (I10), Q18 counts Q1's breaks as ignored events (I5).
fn implied(q: &str) -> Option<Invariant> {
    Some(match q {
        "Q1" | "Q4" => Invariant::I10,
        "Q18" => Invariant::I5,
        "Q5" => Invariant::I2,
        "Q9" => Invariant::I1,
        "Q10" => Invariant::I6,
        "Q15" | "Q16" => Invariant::I7,
        _ => return None,
    })
}

#[test]
fn every_quirk_trace_fails_with_its_switch_and_passes_in_fixed() {
    let traces = traces();
    assert!(traces.len() >= 8, "{} traces", traces.len());
    for (name, tf) in &traces {
        // The header names the switch of the file's name, and Q1 too for a quirk that acts
        // through Q1's breaks (Q4 and Q18).
        let companion = QUIRKS
            .iter()
            .find(|q| q.id == name)
            .and_then(|q| q.companion);
        let mut want: Vec<&str> = companion.into_iter().chain([name.as_str()]).collect();
        want.sort_by_key(|q| QUIRK_NAMES.iter().position(|n| n == q));
        assert_eq!(tf.quirks.enabled(), want, "{name}");
        assert!(op_count(&tf.scenario_data) <= 50, "{name}");
        assert_eq!(replay(tf).map(|_| ()), Ok(()), "{name} replays");
        match checked(&setup(tf, tf.quirks), &tf.scenario_data) {
            Checked::Failed(v) => {
                if let Some(i) = implied(name) {
                    assert_eq!(v.invariant, i, "{name}: {v:?}");
                }
                // The recorded run ends at the failing step.
                assert_eq!(tf.steps, Some(v.step), "{name}");
                // The companion alone does not fail the same invariant.
                if let Some(c) = companion {
                    let mut alone = Quirks::fixed();
                    *alone.switch_mut(c).unwrap() = true;
                    let r = checked(&setup(tf, alone), &tf.scenario_data);
                    assert!(
                        !matches!(&r, Checked::Failed(x) if x.invariant == v.invariant),
                        "{name}: {c} alone {r:?}"
                    );
                }
            }
            other => panic!("{name} with its switch: {other:?}"),
        }
        assert_eq!(
            checked(&setup(tf, Quirks::fixed()), &tf.scenario_data),
            Checked::Passed,
            "{name} in fixed"
        );
    }
}

#[test]
fn the_acceptance_quirks_have_traces() {
    let names: Vec<String> = traces().into_iter().map(|(n, _)| n).collect();
    for q in ["Q1", "Q5", "Q9", "Q15", "Q16"] {
        assert!(names.iter().any(|n| n == q), "{q} has no trace: {names:?}");
    }
}

#[test]
fn the_report_has_a_row_for_every_quirk_and_a_search_for_every_switch() {
    // HVMI-BEHAVIOURS section Q lists Q1 to Q30; VE-SEMANTICS adds Q31.
    let want: Vec<String> = (1..=31).map(|i| format!("Q{i}")).collect();
    let have: Vec<String> = QUIRKS.iter().map(|q| q.id.to_string()).collect();
    assert_eq!(have, want);
    let switches: Vec<&str> = QUIRKS
        .iter()
        .filter(|q| matches!(q.kind, Kind::Switch(_)))
        .map(|q| q.id)
        .collect();
    assert_eq!(switches, QUIRK_NAMES.to_vec());
    for q in QUIRKS {
        if let Kind::NoSwitch(why) = q.kind {
            assert!(!why.is_empty(), "{} needs its reason", q.id);
        }
    }
}
