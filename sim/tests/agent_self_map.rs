//! `vesim agent` with a GLA in the self-map (slot 0x1ED), as every page-table write on
//! Windows x64 is: the entry written is the paging-structure entry the address names, in the
//! kernel's own tables, and the agent's verdict is what it does with that entry.
//!
//! The self-map addresses are written out from B61's formulas by hand, and the entry each
//! names is found by walking the kernel's tables from CR3 with the target address's indices
//! (SDM Vol. 3 §4.5), not with the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::vesim;
use vesim::agent::AgentOutcome;
use vesim::verdict::{run, run_observed, VerdictError, VerdictRequest};
use vesim::world::World;
use vesim_model::vcpu::Gpr;
use vesim_model::Gpa;

const S: u64 = 0x1ED;
const HIGH: u64 = 0xFFFF_0000_0000_0000;

fn idx(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * (level - 1))) & 0x1FF
}

/// B61, by hand: the self-map address of the level-`level` entry translating `va`.
fn self_map(va: u64, level: u32) -> u64 {
    let (p4, p3, p2, p1) = (idx(va, 4), idx(va, 3), idx(va, 2), idx(va, 1));
    HIGH | match level {
        1 => S << 39 | p4 << 30 | p3 << 21 | p2 << 12 | p1 << 3,
        2 => S << 39 | S << 30 | p4 << 21 | p3 << 12 | p2 << 3,
        3 => S << 39 | S << 30 | S << 21 | p4 << 12 | p3 << 3,
        _ => S << 39 | S << 30 | S << 21 | S << 12 | p4 << 3,
    }
}

/// The GPA of the level-`level` entry of `va` in the tables at CR3, walked by hand.
fn entry_by_walk(w: &World, va: u64, level: u32) -> Gpa {
    let mut table = w.guest.cr3 & 0x000F_FFFF_FFFF_F000;
    for l in (level + 1..=4).rev() {
        let e = w.machine.mem.read_u64(Gpa(table + idx(va, l) * 8));
        assert_eq!(e & 1, 1, "level {l} entry of {va:#x} is present");
        assert_eq!(e & 0x80, 0, "no large page on the way");
        table = e & 0x000F_FFFF_FFFF_F000;
    }
    Gpa(table + idx(va, level) * 8)
}

fn mov(gla: u64) -> VerdictRequest {
    VerdictRequest {
        bytes: vec![0x48, 0x89, 0x18], // mov [rax], rbx
        regs: [(Gpr::Rax, gla), (Gpr::Rbx, 0x2003)].into_iter().collect(),
        old: 0x1003,
        ..VerdictRequest::default()
    }
}

#[test]
fn each_level_writes_the_entry_the_address_names() {
    // Targets away from everything the guest model maps: a user address, a user address in a
    // table the code page (0x400000) already uses, and a kernel-half address.
    let cases = [
        (0x0000_0000_0020_1000u64, 1u32),
        (0x0000_0000_0040_1000, 1),
        (0x0000_0000_0020_0000, 2),
        (0x0000_0000_4000_0000, 3),
        (0x0000_0080_0000_0000, 4),
        (0xFFFF_F000_2000_0000, 2),
        (0xFFFF_A000_0000_0000, 4),
    ];
    for (va, level) in cases {
        let gla = self_map(va, level);
        let (v, w) = run_observed(&mov(gla), |_| (), |(), _, w| w.clone()).unwrap();
        let what = format!("level {level} of {va:#x} at {gla:#x}");
        assert_eq!(v.stop, None, "{what}");
        assert_eq!(v.names, Some((level as u8, va)), "{what}");
        let entry = entry_by_walk(&w, va, level);
        assert_eq!(Gpa(v.gpa), entry, "{what}");
        // The PFN changes (B51): raised, and the agent's store lands in the kernel's table.
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{what}");
        assert_eq!(v.old, Some(0x1003), "{what}");
        assert_eq!(w.machine.mem.read_u64(entry), 0x2003, "{what}");
        assert_eq!(v.entry, 0x2003, "{what}");
        // The self-map translation of the GLA reaches the same slot.
        assert_eq!(w.guest.phys(&w.machine, gla), Some(entry), "{what}");
    }
}

#[test]
fn windows_pte_write_is_the_ordinary_case() {
    // mov [0xfffff68000001008], rdx: the PTE of 0x201000.
    let r = vesim(&[
        "agent",
        "--json",
        "--bytes",
        "488910",
        "--reg",
        "rax=0xfffff68000001008",
        "--reg",
        "rdx=0x2003",
        "--old",
        "0x1003",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "raised");
    assert_eq!(v["names"]["level"], "pte");
    assert_eq!(v["names"]["va"], "0x201000");
    assert_eq!(v["entry"], "0x2003");
    // A/D-only change through the self-map: irrelevant (B51).
    let r = vesim(&[
        "agent",
        "--bytes",
        "488910",
        "--reg",
        "rax=0xfffff68000001008",
        "--reg",
        "rdx=0x1063",
        "--old",
        "0x1003",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("outcome    ignored_irrelevant\n"));
    assert!(r.stdout.contains("(PTE of 0x201000)"), "{}", r.stdout);
}

#[test]
fn entries_the_guest_model_depends_on_are_refused_by_name() {
    let cases = [
        (self_map(0xFFFF_F680_0000_0000, 4), "self-map entry"),
        (self_map(vesim::layout::IDT_GVA, 1), "the IDT"),
        (self_map(vesim::layout::IDT_GVA, 4), "the IDT"),
        (self_map(vesim::layout::OS_VE_HANDLER_GVA, 2), "OS code"),
        (self_map(vesim::layout::MM_CODE_GVA, 1), "OS code"),
        (
            self_map(vesim::layout::KERNEL_STACKS_GVA + 0x2000, 1),
            "the kernel stacks",
        ),
        (self_map(vesim::layout::AGENT_GVA + 0x5000, 1), "the agent"),
        (self_map(vesim::layout::AGENT_GVA, 3), "the agent"),
        (self_map(0x40_0000, 1), "the instruction"),
        (self_map(0x40_0000, 3), "the instruction"),
    ];
    for (gla, name) in cases {
        let e = run(&mov(gla)).expect_err("refused");
        let text = e.to_string();
        assert!(text.contains(name), "{gla:#x}: {text}");
        match e {
            VerdictError::EntryInUse { .. } | VerdictError::SelfMapEntry(..) => {}
            other => panic!("{gla:#x}: {other:?}"),
        }
        // The command line: exit 2, one sentence naming it.
        let rax = format!("rax={gla:#x}");
        let r = vesim(&[
            "agent", "--bytes", "488918", "--reg", &rax, "--reg", "rbx=3", "--old", "1",
        ]);
        assert_eq!(r.code, 2, "{gla:#x}");
        assert!(r.stdout.is_empty());
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].starts_with("vesim: ") && lines[0].ends_with('.'));
        assert!(lines[0].contains(name), "{}", lines[0]);
    }
}

#[test]
fn a_page_of_the_guest_model_outside_the_self_map_is_refused_by_name() {
    let e = run(&mov(vesim::layout::IDT_GVA + 0x100)).expect_err("refused");
    assert_eq!(
        e,
        VerdictError::GlaReserved(vesim::layout::IDT_GVA + 0x100, "the IDT")
    );
    let e = run(&mov(vesim::layout::AGENT_GVA + 0x5008)).expect_err("refused");
    assert!(e.to_string().contains("the agent"), "{e}");
}
