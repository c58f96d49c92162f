//! Tamper evidence: a committed trace changed by one byte, or by swapping two adjacent lines,
//! never replays as exact. Each change must be refused (exit 2: it no longer parses, or names a
//! value vesim does not know) or found different (exit 1); none may replay with exit 0.

#![allow(clippy::unwrap_used)]

use vesim::trace::{replay_text, ReplayError};

fn committed(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(if name.starts_with('Q') {
            "quirks"
        } else {
            "scenario_file"
        })
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

/// How a changed text replays: `None` when exactly (the defect this file guards against).
fn outcome(text: &str) -> Option<&'static str> {
    match replay_text(text) {
        Ok(_) => None,
        Err(e) if e.is_usage() => Some("refused"),
        Err(ReplayError::Line { .. }) => Some("different"),
        Err(_) => Some("other"),
    }
}

#[test]
fn the_committed_trace_replays_exactly() {
    let t = committed("Q15.trace");
    assert!(replay_text(&t).is_ok());
}

#[test]
fn every_single_byte_flip_is_caught() {
    let t = committed("Q15.trace");
    let bytes = t.as_bytes();
    let (mut refused, mut different) = (0, 0);
    for i in 0..bytes.len() {
        // Two flips per byte: the lowest bit (a digit or letter becomes its neighbour) and bit
        // 5 (case; a space becomes 0).
        for mask in [0x01u8, 0x20] {
            let mut b = bytes.to_vec();
            b[i] ^= mask;
            let Ok(text) = String::from_utf8(b) else {
                continue;
            };
            match outcome(&text) {
                None => panic!("byte {i} ^ {mask:#x} replays exactly:\n{text}"),
                Some("refused") => refused += 1,
                Some(_) => different += 1,
            }
        }
    }
    // Both kinds occur: a flip in a value vesim checks is refused, one in a number or an event
    // is found different.
    assert!(refused > 0 && different > 0, "{refused} {different}");
}

#[test]
fn every_swap_of_adjacent_lines_is_caught() {
    // desktop-mix.trace has two VCPUs: swapping an operation of VCPU 0 with one of VCPU 1
    // leaves each VCPU's queue as it was, so only the file's order can tell.
    for name in ["Q15.trace", "Q16.trace", "desktop-mix.trace"] {
        let t = committed(name);
        let lines: Vec<&str> = t.lines().collect();
        let mut tried = 0;
        for i in 0..lines.len() - 1 {
            if lines[i] == lines[i + 1] {
                continue;
            }
            let mut l = lines.clone();
            l.swap(i, i + 1);
            let text = l.join("\n") + "\n";
            assert!(
                outcome(&text).is_some(),
                "{name}: lines {} and {} swapped replay exactly",
                i + 1,
                i + 2
            );
            tried += 1;
        }
        assert!(tried >= lines.len() / 2, "{name}: {tried}");
    }
}

#[test]
fn a_changed_header_field_is_named() {
    let t = committed("Q15.trace");
    // The seed is not used by this directed scenario's events, so only the hash can tell.
    let changed = t.replacen("\nseed 0\n", "\nseed 1\n", 1);
    match replay_text(&changed) {
        Err(ReplayError::Line { what, .. }) => assert!(what.contains("hash"), "{what}"),
        r => panic!("{r:?}"),
    }
    // A number written another way is a different line.
    let hex = t.replacen("\nseed 0\n", "\nseed 0x0\n", 1);
    match replay_text(&hex) {
        Err(ReplayError::Line { line, what, .. }) => {
            assert_eq!((line, what.as_str()), (3, "the seed field"))
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn old_formats_and_unknown_values_are_refused() {
    let t = committed("Q15.trace");
    let old = t.replacen("vesim-trace 2", "vesim-trace 1", 1);
    let e = replay_text(&old).unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("format 1"), "{e}");
    let zzz = t.replacen("profile fixed", "profile zzz", 1);
    let e = replay_text(&zzz).unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("zzz"), "{e}");
}
