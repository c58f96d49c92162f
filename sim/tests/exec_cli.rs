//! The `vesim exec` contract (README, "vesim exec"): arguments, JSON shape, exit status and
//! error messages. Expected values are worked out by hand from the SDM, not copied from a run.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on a broken binary

mod common;

use common::vesim;
use serde_json::Value;

fn json(args: &[&str]) -> (i32, Value) {
    let mut a = vec!["exec", "--json"];
    a.extend_from_slice(args);
    let r = vesim(&a);
    let v: Value = serde_json::from_str(&r.stdout).expect("stdout is one JSON object");
    (r.code, v)
}

fn is_contract_hex(s: &str) -> bool {
    let Some(digits) = s.strip_prefix("0x") else {
        return false;
    };
    !digits.is_empty()
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        && (digits == "0" || !digits.starts_with('0'))
}

#[test]
fn executed_json_has_every_field_in_contract_form() {
    // lock bts qword ptr [rax], rbx: rbx = 67 selects bit 3 of the qword at rax + 8.
    let (code, v) = json(&[
        "--bytes",
        "f0480fab18",
        "--reg",
        "rax=0x10000",
        "--reg",
        "rbx=67",
        "--mem",
        "0x10008=0",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["outcome"], "executed");
    assert_eq!(v["mnemonic"], "bts");
    assert_eq!(v["length"], 5);
    assert_eq!(v["rip"], "0x400005");
    assert_eq!(v["rflags"], "0x2", "CF = old bit = 0; other flags as given");
    assert_eq!(v["mem"]["0x10008"], "0x8");
    let regs = v["regs"].as_object().expect("regs is an object");
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    assert_eq!(regs.len(), 16);
    for n in names {
        let s = regs[n].as_str().expect("register values are strings");
        assert!(is_contract_hex(s), "{n} = {s}");
    }
    assert_eq!(regs["rbx"], "0x43");
}

#[test]
fn mem_lists_given_cells_and_every_written_cell_sorted() {
    // mov [rax], rbx at rax = 0x10004 writes the upper half of 0x10000 and the lower of 0x10008.
    let (code, v) = json(&[
        "--bytes",
        "488918",
        "--reg",
        "rax=0x10004",
        "--reg",
        "rbx=0x1122334455667788",
        "--mem",
        "0x10ff8=5",
        "--mem",
        "0x10000=0xaaaaaaaaaaaaaaaa",
    ]);
    assert_eq!(code, 0);
    let mem = v["mem"].as_object().expect("mem is an object");
    let keys: Vec<&str> = mem.keys().map(String::as_str).collect();
    assert_eq!(keys, ["0x10000", "0x10008", "0x10ff8"]);
    assert_eq!(mem["0x10000"], "0x55667788aaaaaaaa");
    assert_eq!(mem["0x10008"], "0x11223344");
    assert_eq!(mem["0x10ff8"], "0x5");
}

#[test]
fn xor_imm8_is_sign_extended_and_sets_sf_pf() {
    // xor qword ptr [rax], 0x80 (48 83 30 80): imm8 sign-extends to 0xffffffffffffff80.
    let (code, v) = json(&[
        "--bytes",
        "48833080",
        "--reg",
        "rax=0x2000",
        "--mem",
        "0x2000=0x1",
        "--rflags",
        "0x8c3",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["mem"]["0x2000"], "0xffffffffffffff81");
    // CF = OF = 0, SF = 1, ZF = 0, PF(0x81) = even parity = 1; AF undefined and kept (0).
    assert_eq!(v["rflags"], "0x86");
}

#[test]
fn stosq_with_df_and_with_address_size_prefix() {
    let (_, v) = json(&[
        "--bytes",
        "48ab",
        "--reg",
        "rdi=0x20000",
        "--reg",
        "rax=0x63",
        "--rflags",
        "0x402",
        "--mem",
        "0x20000=0",
    ]);
    assert_eq!(v["regs"]["rdi"], "0x1fff8");
    assert_eq!(v["mem"]["0x20000"], "0x63");
    // 67 48 ab: EDI is used and the result zero-extends.
    let (_, v) = json(&[
        "--bytes",
        "6748ab",
        "--reg",
        "rdi=0x1fffffff8",
        "--reg",
        "rax=9",
        "--mem",
        "0xfffffff8=0",
    ]);
    assert_eq!(v["regs"]["rdi"], "0x0");
    assert_eq!(v["mem"]["0xfffffff8"], "0x9");
}

#[test]
fn not_executed_outcomes_carry_their_details_and_exit_1() {
    // Write to an unmapped page: #PF, not present, write, supervisor.
    let (code, v) = json(&["--bytes", "488918", "--reg", "rax=0x7000"]);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert_eq!(v["outcome"], "page_fault");
    assert_eq!(v["error_code"], "0x2");
    assert_eq!(v["cr2"], "0x7000");
    assert!(v["error"].as_str().is_some_and(|e| e.ends_with('.')));

    let (code, v) = json(&["--bytes", "0f01c1"]);
    assert_eq!((code, v["outcome"].as_str()), (1, Some("vmcall")));
    let (code, v) = json(&["--bytes", "0f01d4", "--reg", "rcx=1"]);
    assert_eq!((code, v["outcome"].as_str()), (1, Some("vmfunc_exit")));
    let (code, v) = json(&["--bytes", "0f01d4", "--reg", "rax=64"]);
    assert_eq!((code, v["outcome"].as_str()), (1, Some("ud")));
    let (code, v) = json(&["--bytes", "06"]);
    assert_eq!((code, v["outcome"].as_str()), (1, Some("ud")));
    // ADD is decodable and its access succeeds, but it is outside the reference CPU's set.
    let (code, v) = json(&[
        "--bytes",
        "480118",
        "--reg",
        "rax=0x3000",
        "--mem",
        "0x3000=1",
    ]);
    assert_eq!((code, v["outcome"].as_str()), (1, Some("unsupported")));
    assert_eq!(v["mnemonic"], "add");
    // The same ADD on an unmapped page faults first, like hardware.
    let (_, v) = json(&["--bytes", "480118", "--reg", "rax=0x5000"]);
    assert_eq!(v["outcome"], "page_fault");
    assert_eq!(v["error_code"], "0x2");
}

#[test]
fn vmfunc_to_view_zero_executes() {
    let (code, v) = json(&["--bytes", "0f01d4"]);
    assert_eq!(code, 0);
    assert_eq!(v["mnemonic"], "vmfunc");
    assert_eq!(v["rip"], "0x400003");
}

#[test]
fn bad_arguments_exit_2_with_one_sentence_and_no_stdout() {
    let cases: &[&[&str]] = &[
        &["exec", "--bytes", "4889"],
        &["exec", "--bytes", "48g9"],
        &["exec", "--bytes", "489"],
        &["exec", "--bytes", "90", "--reg", "eax=1"],
        &[
            "exec",
            "--bytes",
            "90",
            "--reg",
            "rax=0x1_0000_0000_0000_0000",
        ],
        &["exec", "--bytes", "90", "--reg", "rax=1", "--reg", "rax=2"],
        &["exec", "--bytes", "90", "--rflags", "0x100"],
        &["exec", "--bytes", "90", "--mem", "0x1004=1"],
        &["exec", "--bytes", "90", "--mem", "0x800000000000=1"],
        &["exec", "--bytes", "90", "--mem", "0x400000=1"],
        &[
            "exec",
            "--bytes",
            "488918",
            "--mem",
            "0x3fffff8=1",
            "--rip",
            "0x3fffffe",
        ],
        &["exec", "--bytes", "90", "--rip", "0x8000000000000"],
        &["exec", "--bytes", "90", "--mem", "0x1000"],
        &["exec", "--bytes", "90", "--frobnicate"],
        &["exec"],
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
