//! `vesim replay --check` on the quirk report's traces, and `vesim quirks`'s error path. (The
//! report itself runs in CI, whose fresh traces must equal the committed ones.)

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;

fn corpus(name: &str) -> String {
    format!("{}/../corpus/quirks/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn replay_check_shows_the_failure_with_the_switch_and_the_pass_in_fixed() {
    let r = vesim(&["replay", "--check", &corpus("Q9.trace")]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("replayed exactly"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("fixed+Q9: I1 fails at step 37 on VCPU 0: entry"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\nfixed: passes\n"), "{}", r.stdout);

    let r = vesim(&["replay", "--check", "--json", &corpus("Q18.trace")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["check"]["switches"], "fixed+Q1,Q18");
    assert_eq!(v["check"]["with_switches"]["invariant"], "I5");
    assert_eq!(v["check"]["fixed"]["passed"], true);
}

#[test]
fn replay_check_of_a_passing_trace_exits_0() {
    let path = std::env::temp_dir().join(format!("vesim-{}-pass.trace", std::process::id()));
    let p = path.to_str().unwrap();
    let r = vesim(&["run", "--seed", "2", "--set", "ops=40", "--trace", p]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = vesim(&["replay", "--check", p]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches("fixed: passes").count(), 2, "{}", r.stdout);
}

#[test]
fn quirks_exits_2_when_its_directory_cannot_be_made() {
    let file = std::env::temp_dir().join(format!("vesim-{}-not-a-dir", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    let out = file.join("quirks");
    let r = vesim(&["quirks", "--out", out.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot be made"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}
