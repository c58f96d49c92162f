//! The trace hashes of every built-in, pinned: seeds 0–2 in both profiles, as `vesim run
//! --json` prints them (`data/builtin_hashes.txt`). A change that alters any event, its order
//! or the trace's header changes a hash; a restructuring must leave every line as it is.
//!
//! The file was written by the release binary of the commit before the actor split; to accept
//! an intended change of behaviour, regenerate it and say why in the commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::vesim;
use vesim::workload::Builtin;

const PINNED: &str = include_str!("data/builtin_hashes.txt");

/// One line of the pinned file, as this build prints it.
fn line(builtin: &str, seed: u64, profile: &str) -> String {
    let seed_s = seed.to_string();
    let r = vesim(&[
        "run",
        "--builtin",
        builtin,
        "--seed",
        &seed_s,
        "--profile",
        profile,
        "--json",
    ]);
    if r.code != 0 {
        let msg = r.stderr.trim().replace('\n', " | ");
        return format!("{builtin} {seed} {profile} exit {} {msg}", r.code);
    }
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("run --json is JSON");
    let hash = |h: &serde_json::Value| h.as_str().expect("a trace hash is a string").to_owned();
    format!(
        "{builtin} {seed} {profile} {} {} {}",
        hash(&v["runs"]["ve_on"]["trace_hash"]),
        hash(&v["runs"]["ve_off"]["trace_hash"]),
        hash(&v["trace_hash"]),
    )
}

#[test]
fn every_builtin_keeps_its_trace_hashes_for_seeds_0_to_2() {
    let pinned: Vec<&str> = PINNED.lines().filter(|l| !l.starts_with('#')).collect();
    let mut now = Vec::new();
    for (name, _) in Builtin::ALL {
        for profile in ["fixed", "hvmi"] {
            for seed in 0..3 {
                now.push(line(name, seed, profile));
            }
        }
    }
    assert_eq!(
        pinned.len(),
        now.len(),
        "the pinned file covers every built-in, profile and seed"
    );
    for (want, got) in pinned.iter().zip(&now) {
        assert_eq!(*want, got.as_str(), "a pinned trace hash changed");
    }
}
