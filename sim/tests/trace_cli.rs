//! Traces: `vesim run --trace` writes a file that `vesim replay` verifies record by record; a
//! tampered record or hash exits 1, a file that does not parse exits 2 with the line.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vesim-{}-{name}", std::process::id()))
}

fn recorded(name: &str, args: &[&str]) -> (PathBuf, String) {
    let path = tmp(name);
    let p = path.to_str().unwrap().to_string();
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--trace", &p]);
    let r = vesim(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

fn replay_text(name: &str, text: &str) -> common::Run {
    let path = tmp(name);
    std::fs::write(&path, text).unwrap();
    let r = vesim(&["replay", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn recorded_traces_replay_exactly() {
    for (name, args) in [
        ("mix", &["--seed", "3"][..]),
        (
            "pct",
            &["--seed", "5", "--vcpus", "3", "--sched", "pct:5:3:5000"],
        ),
        (
            "paper",
            &[
                "--builtin",
                "paper-synthetic",
                "--set",
                "pages=4",
                "--set",
                "changes=5",
            ],
        ),
        ("hvmi", &["--seed", "1", "--profile", "hvmi", "--ve", "on"]),
        ("attacks", &["--builtin", "attacks", "--seed", "6"]),
        ("unload", &["--builtin", "unload-race", "--seed", "6"]),
    ] {
        let (path, text) = recorded(name, args);
        assert!(text.starts_with("vesim-trace 2\n"));
        let r = vesim(&["replay", path.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{name}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("replayed exactly"), "{}", r.stdout);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_tampered_record_or_hash_exits_1() {
    let (path, text) = recorded("tamper", &["--seed", "2"]);
    let _ = std::fs::remove_file(&path);
    // Change the first event record.
    let n = text.lines().position(|l| l.starts_with("event ")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[n] = "event exit cpu=63 reason=12".into();
    let r = replay_text("t1", &(lines.join("\n") + "\n"));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("line {} (event 1 of run ve_on)", n + 1)),
        "{}",
        r.stdout
    );
    // Change a hash.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let h = lines.iter().position(|l| l.starts_with("hash ")).unwrap();
    lines[h] = format!("hash {}", "0".repeat(64));
    let r = replay_text("t2", &(lines.join("\n") + "\n"));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("hash"), "{}", r.stdout);
    let path = std::env::temp_dir().join(format!("vesim-{}-t2j", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let r = vesim(&["replay", path.to_str().unwrap(), "--json"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["mismatch"].as_str().unwrap().contains("hash"), "{v}");
    // Drop an operation: the records no longer match.
    let lines: Vec<&str> = text.lines().collect();
    let o = lines.iter().position(|l| l.starts_with("op ")).unwrap();
    let mut fewer = lines.clone();
    fewer.remove(o);
    let r = replay_text("t3", &(fewer.join("\n") + "\n"));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
}

/// The hash of a single-run trace is SHA-256 of its lines up to the `hash` line, as the
/// `sha256sum` tool computes it (the definition README gives), and `vesim run` prints the same
/// hash without writing a trace.
#[test]
fn the_hash_covers_the_file_up_to_its_hash_line() {
    let (path, text) = recorded("sha", &["--seed", "2", "--ve", "on"]);
    let h = text.lines().position(|l| l.starts_with("hash ")).unwrap();
    let upto: String = text.lines().take(h).map(|l| format!("{l}\n")).collect();
    let part = tmp("sha-part");
    std::fs::write(&part, upto).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&part)
        .output()
        .expect("sha256sum");
    let _ = std::fs::remove_file(&part);
    let _ = std::fs::remove_file(&path);
    let want = String::from_utf8(out.stdout).unwrap();
    let want = want.split_whitespace().next().unwrap();
    assert_eq!(text.lines().nth(h).unwrap(), format!("hash {want}"));
    let r = vesim(&["run", "--seed", "2", "--ve", "on"]);
    assert!(
        r.stdout.contains(&format!("trace hash ve_on    {want}")),
        "{}",
        r.stdout
    );
}

/// Attack operations round-trip through the trace text and reject unknown kinds and missing
/// operands.
#[test]
fn attack_operations_parse_strictly() {
    let (path, text) = recorded(
        "atk",
        &["--builtin", "attacks", "--seed", "2", "--ve", "on"],
    );
    let _ = std::fs::remove_file(&path);
    let line = text
        .lines()
        .find(|l| l.starts_with("op ") && l.contains(" attack "))
        .unwrap()
        .to_string();
    let n = 1 + text.lines().position(|l| l == line).unwrap();
    let kind = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kind="))
        .unwrap()
        .to_string();
    let cases = [
        (
            "unknown kind",
            line.replace(&format!("kind={kind}"), "kind=telepathy"),
        ),
        ("no kind", line.replace(&format!(" kind={kind}"), "")),
        ("kind twice", format!("{line} kind={kind}")),
        (
            "no value",
            line.split(" value=").next().unwrap().to_string(),
        ),
    ];
    for (what, bad) in cases {
        let r = replay_text(what, &text.replacen(&line, &bad, 1));
        assert_eq!(r.code, 2, "{what}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!(":{n}: ")),
            "{what}: {}",
            r.stderr
        );
    }
}

#[test]
fn malformed_traces_exit_2_naming_the_line() {
    let (path, text) = recorded("bad", &["--seed", "4", "--ve", "on"]);
    let _ = std::fs::remove_file(&path);
    let truncated: String = text.lines().take(20).map(|l| format!("{l}\n")).collect();
    let cases = [
        ("truncated", truncated),
        ("garbage", "hello\n".to_string()),
        ("empty", String::new()),
        ("bad op", text.replacen("op 0 ", "op 0 frobnicate ", 1)),
        ("unknown key", text.replacen(" va=", " va2=", 1)),
        (
            "pid too wide",
            text.replacen(" pid=0 ", " pid=0x100000000 ", 1),
        ),
        (
            "bad schedule",
            text.replacen("schedule random:4", "schedule fifo", 1),
        ),
        ("bad quirk", text.replacen("quirks -", "quirks Q99", 1)),
        ("bad param", text.replacen("params ", "params bogus=1 ", 1)),
        (
            "text after end",
            text.clone() + "op 0 trim pid=0 va=0x1000\n",
        ),
    ];
    for (what, t) in cases {
        let r = replay_text(what, &t);
        assert_eq!(r.code, 2, "{what}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{what}");
        assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
        assert!(r.stderr.starts_with("vesim: "), "{what}: {}", r.stderr);
    }
    let r = vesim(&["replay", "/nonexistent/vesim.trace"]);
    assert_eq!(r.code, 2);
}
