//! The `vesim agent` contract (README, "vesim agent"): fields, formats, outcomes, exit status
//! and errors. Expected values come from the spec (B51 relevance, B53 cache, B54 raise, Q1) and
//! are worked out by hand.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on a broken binary

mod common;

use common::vesim;
use serde_json::Value;

fn agent(args: &[&str]) -> Value {
    let mut a = vec!["agent", "--json"];
    a.extend_from_slice(args);
    let r = vesim(&a);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    serde_json::from_str(&r.stdout).expect("stdout is one JSON object")
}

const MOV: [&str; 6] = [
    "--bytes",
    "488918",
    "--reg",
    "rax=0x10000",
    "--old",
    "0x1003",
];

fn mov(new: &str, extra: &[&str]) -> Value {
    let rbx = format!("rbx={new}");
    let mut a: Vec<&str> = MOV.to_vec();
    a.extend_from_slice(&["--reg", &rbx]);
    a.extend_from_slice(extra);
    agent(&a)
}

#[test]
fn raised_write_has_every_contract_field() {
    let v = mov("0x2003", &[]);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "ok", "outcome", "reason", "old", "new", "entry", "rip", "rflags", "regs", "vmcalls",
        "vm_exits",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(v["ok"], true);
    assert_eq!(v["outcome"], "raised");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["old"], "0x1003");
    assert_eq!(v["new"], "0x2003");
    assert_eq!(v["entry"], "0x2003", "B55: the agent stores the new value");
    assert_eq!(v["rip"], "0x400003", "B56: RIP advanced by the 3-byte MOV");
    assert_eq!(v["regs"].as_object().unwrap().len(), 16);
    assert_eq!(v["regs"]["rbx"], "0x2003");
    // B54: one RAISE_EPT (RDX = 3, RBX = 0); exits: the one-time CPUID (B14) and the VMCALL.
    assert_eq!(
        v["vmcalls"],
        serde_json::json!([{"rdx": "0x3", "rbx": "0x0", "rcx": "0x0"}])
    );
    assert_eq!(v["vm_exits"], 2);
}

#[test]
fn b51_only_accessed_and_dirty_changing_is_irrelevant() {
    let v = mov("0x1063", &[]);
    assert_eq!(v["outcome"], "ignored_irrelevant");
    assert_eq!(v["entry"], "0x1063");
    assert_eq!(v["vmcalls"], serde_json::json!([]));
    assert_eq!(v["vm_exits"], 1);
}

#[test]
fn b53_cached_entry_is_not_raised_and_monitored_one_is() {
    assert_eq!(mov("0x2003", &["--cached"])["outcome"], "ignored_cache");
    assert_eq!(mov("0x2003", &["--monitored"])["outcome"], "raised");
}

#[test]
fn q9_xd_flip_is_raised_in_fixed_and_ignored_in_hvmi() {
    assert_eq!(mov("0x8000000000001003", &[])["outcome"], "raised");
    assert_eq!(
        mov("0x8000000000001003", &["--profile", "hvmi"])["outcome"],
        "ignored_irrelevant"
    );
}

#[test]
fn refusals_carry_their_reason() {
    // ADD: the agent refuses and introcore cannot emulate it either (fixed).
    let v = agent(&[
        "--bytes",
        "480118",
        "--reg",
        "rax=0x10000",
        "--reg",
        "rbx=1",
        "--old",
        "0x1003",
    ]);
    assert_eq!(
        (v["outcome"].as_str(), v["reason"].as_str()),
        (Some("rejected"), Some("unsupported_instruction"))
    );
    assert_eq!(v["old"], Value::Null);
    assert_eq!(v["entry"], "0x1003");
    assert_eq!(v["rip"], "0x400000");
    // GS-prefixed MOV: refused by the agent, emulated by introcore (Q1 fixed).
    let v = agent(&[
        "--bytes",
        "65488918",
        "--reg",
        "rax=0x10000",
        "--reg",
        "rbx=0x2003",
        "--old",
        "0x1003",
    ]);
    assert_eq!(v["outcome"], "emulated_by_introcore");
    assert_eq!(v["reason"], "segment_prefix");
    assert_eq!(v["entry"], "0x2003");
    assert_eq!(v["rip"], "0x400004");
    // hvmi: BREAK (RDX = 1, RBX = 3 EMULATION_FAILED), RIP unchanged (B31).
    let v = agent(&[
        "--bytes",
        "480118",
        "--reg",
        "rax=0x10000",
        "--reg",
        "rbx=1",
        "--old",
        "0x1003",
        "--profile",
        "hvmi",
    ]);
    assert_eq!(v["outcome"], "rejected");
    assert_eq!(v["vmcalls"][0]["rdx"], "0x1");
    assert_eq!(v["vmcalls"][0]["rbx"], "0x3");
    assert_eq!(v["rip"], "0x400000");
}

#[test]
fn gla_defaults_to_the_bit_string_address_of_bts() {
    // lock bts [rax], rbx with rbx = 127: the qword at rax + 8 (bit 63).
    let v = agent(&[
        "--bytes",
        "f0480fab18",
        "--reg",
        "rax=0xfff8",
        "--reg",
        "rbx=127",
        "--old",
        "0x1003",
    ]);
    assert_eq!(v["gla"], "0x10000");
    assert_eq!(v["entry"], "0x8000000000001003");
}

#[test]
fn text_output_names_the_outcome() {
    let r = vesim(&[
        "agent",
        "--bytes",
        "488918",
        "--reg",
        "rax=0x10000",
        "--reg",
        "rbx=0x2003",
        "--old",
        "0x1003",
    ]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("outcome    raised\n"), "{}", r.stdout);
}

#[test]
fn bad_arguments_exit_2_with_one_sentence() {
    let cases: &[&[&str]] = &[
        &["agent", "--bytes", "488918", "--reg", "rax=0x10000"],
        &["agent", "--bytes", "90", "--old", "1"],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0x400000",
            "--old",
            "1",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0xfffff80001003e80",
            "--old",
            "1",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0xfffff6fb7dbed000",
            "--old",
            "1",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0x10000",
            "--old",
            "1",
            "--cached",
            "--monitored",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0x10000",
            "--old",
            "1",
            "--profile",
            "xen",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0x10000",
            "--old",
            "1",
            "--cs",
            "0x10000",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--reg",
            "rax=0x10000",
            "--old",
            "1",
            "--rflags",
            "0x100",
        ],
        &[
            "agent",
            "--bytes",
            "488918",
            "--old",
            "1",
            "--gla",
            "0x800000000000",
        ],
    ];
    for args in cases {
        let r = vesim(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?} printed {}", r.stdout);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", r.stderr);
        assert!(
            lines[0].starts_with("vesim: ") && lines[0].ends_with('.'),
            "{}",
            lines[0]
        );
    }
}
