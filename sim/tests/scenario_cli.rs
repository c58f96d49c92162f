//! Scenario files: `vesim run FILE.toml` runs what the file says, flags override it, and a bad
//! file exits 2 with its name and line.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;
use serde_json::Value;

fn file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vesim-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_file_runs_and_flags_override_it() {
    let p = file(
        "ok",
        "builtin = \"desktop-mix\"\nseed = 5\nve = \"on\"\n[params]\nvcpus = 2\nops = 40\n",
    );
    let path = p.to_str().unwrap();
    let r = vesim(&["run", path, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["seed"], 5);
    assert_eq!(v["params"]["vcpus"], 2);
    assert_eq!(v["params"]["ops"], 40);
    assert!(v["runs"]["ve_off"].is_null(), "ve = on");
    // The same as the flags alone.
    let r2 = vesim(&[
        "run",
        "--builtin",
        "desktop-mix",
        "--seed",
        "5",
        "--ve",
        "on",
        "--set",
        "vcpus=2",
        "--set",
        "ops=40",
        "--json",
    ]);
    let v2: Value = serde_json::from_str(&r2.stdout).unwrap();
    assert_eq!(v["trace_hash"], v2["trace_hash"]);
    // Flags win over the file.
    let r = vesim(&["run", path, "--seed", "6", "--set", "ops=41", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["seed"].as_u64(), v["params"]["ops"].as_u64()),
        (Some(6), Some(41))
    );
    let _ = std::fs::remove_file(&p);
}

#[test]
fn bad_files_exit_2_with_file_and_line() {
    for (name, text, line) in [
        (
            "unknown-key",
            "builtin = \"desktop-mix\"\ncolour = 3\n",
            ":2:",
        ),
        (
            "range",
            "builtin = \"desktop-mix\"\n[params]\nops = 0\n",
            ":3:",
        ),
        ("syntax", "builtin = \"desktop-mix\n", ":1:"),
        ("type", "builtin = \"desktop-mix\"\nseed = -1\n", ":2:"),
    ] {
        let p = file(name, text);
        let r = vesim(&["run", p.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        assert!(
            r.stderr.contains(&format!("{}{line}", p.display())),
            "{name}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{name}");
        let _ = std::fs::remove_file(&p);
    }
    let r = vesim(&["run", "/nonexistent/s.toml"]);
    assert_eq!(r.code, 2);
}
