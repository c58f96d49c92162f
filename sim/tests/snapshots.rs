//! Snapshot regressions (insta, files in `snapshots/` at the workspace root): the first 200
//! trace records of each built-in at a fixed seed, the `vesim run --json` summaries (without
//! the wall-clock `perf` key), `vesim agent` verdicts for every page-table-write form and
//! every rejection reason in both profiles, and the error messages for malformed inputs.
//!
//! Every snapshot is stable text written by vesim itself. `cargo insta review` accepts
//! changes; CI runs with `INSTA_UPDATE=no` and never writes one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::vesim;
use std::collections::BTreeMap;
use vesim::quirks::Profile;
use vesim::sched::Schedule;
use vesim::workload::Builtin;

macro_rules! snap {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => "../../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

/// Small parameters for each built-in, so the snapshots stay readable.
fn small(b: Builtin) -> BTreeMap<String, u64> {
    b.params()
        .iter()
        .map(|(k, d, max)| {
            let v = match *k {
                "ops" => 120,
                "changes" => 5,
                "pages" => (*d).min(8),
                "attacks" => 20,
                _ => (*d).min(*max),
            };
            ((*k).to_string(), v)
        })
        .collect()
}

#[test]
fn first_200_trace_records_of_each_builtin() {
    for (name, b) in Builtin::ALL {
        let tf = vesim::trace::record(
            b,
            &small(b),
            &[true],
            Profile::Fixed,
            1,
            &Schedule::Random { seed: 1 },
        )
        .unwrap();
        let lines: Vec<&str> = tf.runs[0]
            .lines
            .iter()
            .take(200)
            .map(String::as_str)
            .collect();
        snap!(format!("trace_{name}"), lines.join("\n"));
    }
}

#[test]
fn run_json_summaries() {
    for (name, b) in Builtin::ALL {
        let mut args = vec![
            "run".to_string(),
            "--builtin".into(),
            name.into(),
            "--seed".into(),
            "1".into(),
            "--json".into(),
        ];
        for (k, v) in small(b) {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = vesim(&a);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v.as_object_mut().unwrap().remove("perf");
        snap!(
            format!("run_{name}"),
            serde_json::to_string_pretty(&v).unwrap()
        );
    }
}

/// One instance of each page-table-write form and of each rejection reason: (name, bytes,
/// extra registers).
const AGENT_CASES: [(&str, &str, &[&str]); 22] = [
    ("mov_r64", "488918", &[]),
    ("mov_imm32", "48c70003200000", &[]),
    ("xchg", "488718", &[]),
    ("lock_cmpxchg", "f0480fb118", &[]),
    ("lock_or_r64", "f0480918", &[]),
    ("lock_and_r64", "f0482118", &[]),
    ("lock_xor_r64", "f0483118", &[]),
    ("or_imm8", "48830802", &[]),
    ("and_imm32", "488120fdffffff", &[]),
    ("lock_bts_r64", "f0480fab18", &[]),
    ("lock_btr_imm8", "f0480fba3001", &[]),
    ("btc_imm8", "480fba383f", &[]),
    ("stosq", "48ab", &["rdi=0x10000"]),
    ("rej_cs_not_kernel", "488918", &["cs"]),
    ("rej_decode_error", "0fff", &["gla"]),
    ("rej_rep", "f348ab", &["rdi=0x10000"]),
    ("rej_segment_prefix", "65488918", &[]),
    ("rej_rip_relative", "48891d00000000", &["gla"]),
    ("rej_stack_access", "ff30", &[]),
    ("rej_not_memory", "4889d8", &["gla"]),
    ("rej_size", "8918", &[]),
    ("rej_unsupported_instruction", "480118", &[]),
];

#[test]
fn agent_verdicts_per_form_and_rejection_in_both_profiles() {
    for profile in ["fixed", "hvmi"] {
        for (name, bytes, extra) in AGENT_CASES {
            let mut args = vec![
                "agent".to_string(),
                "--bytes".into(),
                bytes.into(),
                "--reg".into(),
                "rax=0x10000".into(),
                "--reg".into(),
                "rbx=0x2003".into(),
                "--old".into(),
                "0x1003".into(),
                "--monitored".into(),
                "--profile".into(),
                profile.into(),
            ];
            for e in extra {
                match *e {
                    "cs" => args.extend(["--cs".into(), "0x33".into()]),
                    "gla" => args.extend(["--gla".into(), "0x10000".into()]),
                    r => args.extend(["--reg".into(), r.to_string()]),
                }
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = vesim(&a);
            assert_eq!(r.code, 0, "{name}: {}", r.stderr);
            snap!(
                format!("agent_{profile}_{name}"),
                format!("$ vesim {}\n{}", args.join(" "), r.stdout)
            );
        }
    }
}

#[test]
fn error_messages_for_malformed_inputs() {
    let dir = std::env::temp_dir().join(format!("vesim-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let toml_bad = file("bad.toml", "builtin = \"desktop-mix\"\nseed = \"x\"\n");
    let toml_key = file("key.toml", "builtin = \"desktop-mix\"\nspeed = 3\n");
    let toml_range = file(
        "range.toml",
        "builtin = \"desktop-mix\"\n[params]\nvcpus = 65\n",
    );
    let trace_bad = file("bad.trace", "vesim-trace 2\nscenario desktop-mix\nseed x\n");
    let trace_trunc = file("trunc.trace", "vesim-trace 2\nscenario desktop-mix\n");
    let trace_old = file("old.trace", "vesim-trace 1\nscenario desktop-mix\nseed 0\n");
    let trace_profile = file(
        "profile.trace",
        "vesim-trace 2\nscenario desktop-mix\nseed 0\nprofile zzz\n",
    );
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "run_unknown_builtin",
            vec!["run".into(), "--builtin".into(), "nope".into()],
        ),
        (
            "run_bad_set",
            vec!["run".into(), "--set".into(), "vcpus=0".into()],
        ),
        (
            "run_unknown_param",
            vec!["run".into(), "--set".into(), "bogus=1".into()],
        ),
        (
            "run_bad_sched",
            vec!["run".into(), "--sched".into(), "fifo".into()],
        ),
        ("run_toml_type", vec!["run".into(), toml_bad]),
        ("run_toml_unknown_key", vec!["run".into(), toml_key]),
        ("run_toml_range", vec!["run".into(), toml_range]),
        ("replay_bad_value", vec!["replay".into(), trace_bad]),
        ("replay_truncated", vec!["replay".into(), trace_trunc]),
        ("replay_old_format", vec!["replay".into(), trace_old]),
        (
            "replay_unknown_profile",
            vec!["replay".into(), trace_profile],
        ),
        (
            "check_bad_profile",
            vec!["check".into(), "--profile".into(), "xen".into()],
        ),
        (
            "exec_odd_hex",
            vec!["exec".into(), "--bytes".into(), "489".into()],
        ),
        (
            "agent_no_old",
            vec!["agent".into(), "--bytes".into(), "488918".into()],
        ),
    ];
    let mut out = String::new();
    for (name, args) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = vesim(&a);
        assert_eq!(r.code, 2, "{name}: {}{}", r.stdout, r.stderr);
        let msg = r.stderr.replace(dir.to_str().unwrap(), "$DIR");
        // clap's usage lines are its own; the first line is vesim's (or clap's) message.
        let first = msg.lines().next().unwrap_or("");
        out.push_str(&format!("{name}: {first}\n"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    snap!("error_messages", out);
}
