//! Properties of the engine over guest memory-manager workloads (ARCHITECTURE.md invariants I1,
//! I6 and I8; VE-SEMANTICS sections 3 and 4):
//!
//! 1. Equivalence (I6): a single-VCPU workload of memory-manager operations (map, unmap,
//!    protect, caching changes in every instruction form, A-bit trims, swap out and in,
//!    touches, process exit) on one or two processes, some of them protected by translation
//!    hooks, ends in the same guest-visible state with #VE on and off: guest memory frame by
//!    frame with the exclusions of VE-SEMANTICS section 4, the VCPU registers (RF ignored) and
//!    the processes' page lists.
//! 2. Soundness (I1): in both worlds, every change of a monitored entry that touches a bit of
//!    the `fixed` monitored set (old or new present) made by a memory-manager operation shows
//!    up as a monitor callback for that entry with those old and new values, coming from a
//!    RAISE_EPT VMCALL (#VE on) or an EPT-violation exit (#VE off). The expected set is
//!    computed independently from snapshots of every monitored entry around each operation.
//! 3. The paper-synthetic acceptance at a small size, with figures worked out from the
//!    scenario's definition.
//! 4. Determinism (I8 preview): the same workload and seed give identical counters and events.
//!
//! Expected values come from the spec and from the workload's own definition; nothing is
//! copied from a run of the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "kit/mod.rs"]
mod kit;

use kit::props::config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;
use vesim::guest::mm::{bits, MmError};
use vesim::guest::GuestConfig;
use vesim::introcore::call;
use vesim::introcore::pts::Owner;
use vesim::layout;
use vesim::quirks::{Profile, MONITORED_BITS_FIXED};
use vesim::workload::{resolve_params, run_builtin, Builtin};
use vesim::world::{Counters, Event, World, WorldConfig};
use vesim_model::paging::PteFlags;
use vesim_model::{Gpa, VcpuId};

/// Cases per property (fixed; the whole file stays well under 30 s in `cargo test`).
const EQUIVALENCE_CASES: u32 = 128;
const SOUNDNESS_CASES: u32 = 128;
const DETERMINISM_CASES: u32 = 64;

/// Operations per workload, at most.
const OPS_MAX: usize = 30;

/// The linear addresses a workload's pages may take: three in one page table, two in a second
/// page table of the same directory, one in a second directory and two under a second PML4
/// entry, so that maps also link new PDEs, PDPTEs and PML4Es into monitored tables.
const VAS: [u64; 8] = [
    layout::USER_BASE,
    layout::USER_BASE + 0x1000,
    layout::USER_BASE + 0x2000,
    layout::USER_BASE + 0x20_0000,
    layout::USER_BASE + 0x20_1000,
    layout::USER_BASE + 0x4000_0000,
    layout::USER_BASE + 0x80_0000_0000,
    layout::USER_BASE + 0x80_0000_1000,
];

/// The A and D bits, which the walker sets without any page-table-writing instruction.
const AD: u64 = PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();

// =============================================================================================
// Workloads
// =============================================================================================

/// One generated operation; `proc` and `page` are taken modulo the workload's counts, and an
/// operation the state does not allow (unmapping a page that is not mapped, ...) is skipped.
#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        proc: usize,
        page: usize,
        writable: bool,
        xd: bool,
    },
    Unmap {
        proc: usize,
        page: usize,
    },
    Protect {
        proc: usize,
        page: usize,
        writable: bool,
        executable: bool,
    },
    Caching {
        proc: usize,
        page: usize,
        /// Bit 0 PWT, bit 1 PCD, bit 2 PAT.
        attrs: u8,
        /// 0 MOV, 1 LOCK CMPXCHG, 2 LOCK XOR.
        form: u32,
    },
    Trim {
        proc: usize,
        page: usize,
    },
    SwapOut {
        proc: usize,
        page: usize,
    },
    SwapIn {
        proc: usize,
        page: usize,
    },
    Touch {
        proc: usize,
        page: usize,
        write: bool,
        value: u64,
    },
    Exit {
        proc: usize,
    },
}

/// A workload: the processes (true = protected), how many of `VAS` they use, the operations.
#[derive(Clone, Debug)]
struct Workload {
    protected: Vec<bool>,
    pages: usize,
    ops: Vec<Op>,
    seed: u64,
    kpti: bool,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = || 0usize..2;
    let g = || 0usize..VAS.len();
    prop_oneof![
        8 => (p(), g(), any::<bool>(), any::<bool>()).prop_map(|(proc, page, writable, xd)| {
            Op::Map { proc, page, writable, xd }
        }),
        2 => (p(), g()).prop_map(|(proc, page)| Op::Unmap { proc, page }),
        4 => (p(), g(), any::<bool>(), any::<bool>()).prop_map(
            |(proc, page, writable, executable)| Op::Protect { proc, page, writable, executable }
        ),
        6 => (p(), g(), 0u8..8, 0u32..3).prop_map(|(proc, page, attrs, form)| {
            Op::Caching { proc, page, attrs, form }
        }),
        4 => (p(), g()).prop_map(|(proc, page)| Op::Trim { proc, page }),
        2 => (p(), g()).prop_map(|(proc, page)| Op::SwapOut { proc, page }),
        3 => (p(), g()).prop_map(|(proc, page)| Op::SwapIn { proc, page }),
        6 => (p(), g(), any::<bool>(), any::<u64>()).prop_map(|(proc, page, write, value)| {
            Op::Touch { proc, page, write, value }
        }),
        1 => p().prop_map(|proc| Op::Exit { proc }),
    ]
}

fn workload_strategy() -> impl Strategy<Value = Workload> {
    (
        prop::collection::vec(any::<bool>(), 1..=2),
        1usize..=VAS.len(),
        prop::collection::vec(op_strategy(), 1..=OPS_MAX),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(protected, pages, ops, seed, kpti)| Workload {
            protected,
            pages,
            ops,
            seed,
            kpti,
        })
}

/// A concrete memory-manager operation, valid in the state it was resolved in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Map {
        pid: u32,
        va: u64,
        flags: u64,
    },
    Unmap {
        pid: u32,
        va: u64,
    },
    Protect {
        pid: u32,
        va: u64,
        writable: bool,
        executable: bool,
    },
    Caching {
        pid: u32,
        va: u64,
        attrs: u64,
        form: u32,
    },
    Trim {
        pid: u32,
        va: u64,
    },
    SwapOut {
        pid: u32,
        va: u64,
    },
    SwapIn {
        pid: u32,
        va: u64,
    },
    Touch {
        pid: u32,
        va: u64,
        write: bool,
        value: u64,
    },
    Exit {
        pid: u32,
    },
}

fn world_config(wl: &Workload, ve: bool) -> WorldConfig {
    WorldConfig {
        guest: GuestConfig {
            kpti: wl.kpti,
            ..GuestConfig::default()
        },
        quirks: Profile::Fixed.quirks(),
        seed: wl.seed,
        ve,
        ..WorldConfig::default()
    }
}

/// A world with the workload's processes created (no page-table write yet).
fn build(wl: &Workload, ve: bool) -> World {
    let mut w = World::new(world_config(wl, ve)).expect("the world builds");
    for &p in &wl.protected {
        w.mm().create_process(p).expect("a process is created");
    }
    w
}

/// The action `op` stands for in `w`'s current state, if the state allows one. A page-level
/// operation the chosen page does not allow goes to the next page that allows it (in `VAS`
/// order, wrapping), so that few generated operations are lost.
fn resolve(w: &World, wl: &Workload, op: Op) -> Option<Action> {
    let n = wl.protected.len();
    let (proc, page) = match op {
        Op::Map { proc, page, .. }
        | Op::Unmap { proc, page }
        | Op::Protect { proc, page, .. }
        | Op::Caching { proc, page, .. }
        | Op::Trim { proc, page }
        | Op::SwapOut { proc, page }
        | Op::SwapIn { proc, page }
        | Op::Touch { proc, page, .. } => (proc % n, page % wl.pages),
        Op::Exit { proc } => (proc % n, 0),
    };
    // An exited process's operations go to the other process, if it still runs.
    let p = (0..n)
        .map(|k| &w.guest.processes[(proc + k) % n])
        .find(|p| !p.exited)?;
    if let Op::Exit { .. } = op {
        return Some(Action::Exit { pid: p.pid });
    }
    (0..wl.pages).find_map(|k| resolve_page(w, p.pid, VAS[(page + k) % wl.pages], op))
}

/// The action `op` stands for on page `va` of process `pid`, if its state allows one.
fn resolve_page(w: &World, pid: u32, va: u64, op: Op) -> Option<Action> {
    let p = w.guest.processes.get(pid as usize)?;
    let present = p.pages.contains_key(&va);
    let swapped = p.swapped.contains_key(&va);
    match op {
        Op::Map { writable, xd, .. } => (!present && !swapped).then(|| {
            let mut flags = 0;
            if writable {
                flags |= bits::RW;
            }
            if xd {
                flags |= bits::XD;
            }
            Action::Map { pid, va, flags }
        }),
        Op::Unmap { .. } => (present || swapped).then_some(Action::Unmap { pid, va }),
        Op::Protect {
            writable,
            executable,
            ..
        } => present.then_some(Action::Protect {
            pid,
            va,
            writable,
            executable,
        }),
        Op::Caching { attrs, form, .. } => present.then(|| {
            let mut a = 0;
            if attrs & 1 != 0 {
                a |= bits::PWT;
            }
            if attrs & 2 != 0 {
                a |= bits::PCD;
            }
            if attrs & 4 != 0 {
                a |= bits::PAT;
            }
            Action::Caching {
                pid,
                va,
                attrs: a,
                form,
            }
        }),
        Op::Trim { .. } => (present || swapped).then_some(Action::Trim { pid, va }),
        Op::SwapOut { .. } => present.then_some(Action::SwapOut { pid, va }),
        Op::SwapIn { .. } => swapped.then_some(Action::SwapIn { pid, va }),
        Op::Touch { write, value, .. } => present.then(|| {
            // A supervisor write to a read-only page faults (CR0.WP): touch it for read then.
            let rw = w
                .guest
                .entry_value(&w.machine, pid, va, 1)
                .is_some_and(|(e, _)| e & bits::RW != 0);
            Action::Touch {
                pid,
                va,
                write: write && rw,
                value,
            }
        }),
        Op::Exit { .. } => Some(Action::Exit { pid }),
    }
}

/// Performs `a` on VCPU 0; a map of a protected process's page is then hooked (B137).
fn apply(w: &mut World, a: Action) -> Result<(), MmError> {
    match a {
        Action::Map { pid, va, flags } => {
            w.mm_map(VcpuId(0), pid, va, flags)?;
            let p = &w.guest.processes[pid as usize];
            if p.protected {
                let cr3 = p.cr3;
                w.engine().hook_translation(cr3, va, Owner::Process(pid));
                w.engine().commit_hooks();
            }
            Ok(())
        }
        Action::Unmap { pid, va } => w.mm_unmap(VcpuId(0), pid, va),
        Action::Protect {
            pid,
            va,
            writable,
            executable,
        } => w.mm_protect(VcpuId(0), pid, va, writable, executable),
        Action::Caching {
            pid,
            va,
            attrs,
            form,
        } => w.mm_set_caching(VcpuId(0), pid, va, attrs, form),
        Action::Trim { pid, va } => w.mm_trim(VcpuId(0), pid, va),
        Action::SwapOut { pid, va } => w.mm_swap_out(VcpuId(0), pid, va),
        Action::SwapIn { pid, va } => w.mm_swap_in(VcpuId(0), pid, va),
        Action::Touch {
            pid,
            va,
            write,
            value,
        } => w.mm_touch(VcpuId(0), pid, va, write, value),
        Action::Exit { pid } => w.exit_process(VcpuId(0), pid),
    }
}

/// Runs the workload in `w`, resolving each operation in `w`'s own state; `run` performs each
/// action (and checks what it wants around it). Returns the actions performed.
fn drive(
    w: &mut World,
    wl: &Workload,
    mut run: impl FnMut(&mut World, Action) -> Result<(), TestCaseError>,
) -> Result<Vec<Action>, TestCaseError> {
    let mut done = Vec::new();
    for &op in &wl.ops {
        if let Some(a) = resolve(w, wl, op) {
            run(w, a)?;
            done.push(a);
        }
    }
    Ok(done)
}

fn run_plain(w: &mut World, a: Action) -> Result<(), TestCaseError> {
    apply(w, a).map_err(|e| {
        TestCaseError::fail(format!(
            "{a:?} failed with #VE {}: {e}",
            if w.ve { "on" } else { "off" }
        ))
    })
}

// =============================================================================================
// 1. Equivalence (I6)
// =============================================================================================

proptest! {
    #![proptest_config(config(EQUIVALENCE_CASES))]

    /// I6, VE-SEMANTICS section 4: the same serialized workload ends in the same guest-visible
    /// state with #VE on and off.
    #[test]
    fn i6_ve_on_and_off_end_in_the_same_guest_state(wl in workload_strategy()) {
        let mut on = build(&wl, true);
        let mut off = build(&wl, false);
        // The operations are resolved in the #VE-on world and performed in both.
        for &op in &wl.ops {
            let Some(a) = resolve(&on, &wl, op) else { continue };
            prop_assert_eq!(resolve(&off, &wl, op), Some(a), "both worlds allow the same op");
            run_plain(&mut on, a)?;
            run_plain(&mut off, a)?;
        }
        if let Some(d) = vesim::equivalence::difference(&on, &off) {
            return Err(TestCaseError::fail(d));
        }
    }
}

// =============================================================================================
// 2. Soundness (I1)
// =============================================================================================

fn relevant(old: u64, new: u64) -> bool {
    (old ^ new) & MONITORED_BITS_FIXED != 0 && (old | new) & bits::P != 0
}

/// Performs `a` and checks I1 over it: every monitored entry (as monitored before the
/// operation) whose value changed relevantly has callbacks for it whose old/new values chain
/// from the value before to the value after (A/D aside: the walker sets them without a
/// page-table-writing instruction), and every callback comes from the right path.
fn run_checked_i1(w: &mut World, a: Action) -> Result<(), TestCaseError> {
    let before: Vec<(Gpa, u64)> = w
        .intro
        .ptm
        .monitored_entries()
        .into_iter()
        .map(|e| (e, w.machine.mem.read_u64(e)))
        .collect();
    let mark = w.events.len();
    run_plain(w, a)?;
    let mode = if w.ve { "on" } else { "off" };
    for (entry, old) in before {
        let new = w.machine.mem.read_u64(entry);
        if !relevant(old, new) {
            continue;
        }
        let mut chain: Vec<(u64, u64)> = Vec::new();
        for e in &w.events[mark..] {
            if let Event::Callback(r) = e {
                if r.entry == entry && chain.last() != Some(&(r.old, r.new)) {
                    chain.push((r.old, r.new));
                }
            }
        }
        let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
            return Err(TestCaseError::fail(format!(
                "I1, #VE {mode}: {a:?} changed monitored entry {entry} from {old:#x} to \
                 {new:#x} without a callback"
            )));
        };
        let links = chain.windows(2).all(|p| (p[0].1 ^ p[1].0) & !AD == 0);
        prop_assert!(
            (first.0 ^ old) & !AD == 0 && (last.1 ^ new) & !AD == 0 && links,
            "I1, #VE {}: {:?} changed {} from {:#x} to {:#x}, callbacks {:x?}",
            mode,
            a,
            entry,
            old,
            new,
            chain
        );
    }
    // Where each callback comes from: the nearest VMCALL or VM exit before it, within the
    // operation (which starts with a fresh guest instruction).
    let mut source: Option<&Event> = None;
    for e in &w.events[mark..] {
        match e {
            Event::Vmcall { .. } | Event::VmExit { .. } => source = Some(e),
            Event::Callback(r) => {
                let ok = match source {
                    Some(Event::Vmcall { rdx, .. }) => w.ve && *rdx == call::RAISE_EPT,
                    Some(Event::VmExit { reason, .. }) => !w.ve && *reason == 48,
                    _ => false,
                };
                prop_assert!(
                    ok,
                    "#VE {}: callback {:x?} came after {:?}",
                    mode,
                    r,
                    source
                );
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(SOUNDNESS_CASES))]

    /// I1: every relevant change of a monitored entry reaches introcore, with #VE on (a
    /// raise) and off (the EPT-violation exit).
    #[test]
    fn i1_every_relevant_monitored_change_reaches_introcore(wl in workload_strategy()) {
        for ve in [true, false] {
            let mut w = build(&wl, ve);
            drive(&mut w, &wl, run_checked_i1)?;
        }
    }
}

// =============================================================================================
// 3. The paper-synthetic acceptance
// =============================================================================================

/// The paper's synthetic test at 8 pages × 20 changes. From the scenario's definition: the
/// protected process maps 8 consecutive pages from `USER_BASE`, all in one page table,
/// hooking each page's translation right after its map, so the first map writes the PML4E,
/// the PDPTE, the PDE and its PTE and each further map its PTE into the now monitored page
/// table: 3 + 8 writes; then each of the 8 PTEs gets 20 caching changes (PWT, PCD, PWT|PCD,
/// WB in turn; `pat` = 0), one instruction each, in that monitored page table. Caching bits
/// are not monitored (B139), so with #VE on each change is a PT-write #VE the agent ignores as
/// irrelevant, and with #VE off each is an EPT-violation exit (as are the 7 later maps).
#[test]
fn paper_synthetic_small_acceptance() {
    let (pages, changes) = (8u64, 20u64);
    let sets: BTreeMap<String, u64> = [("pages".to_string(), pages), ("changes".into(), changes)]
        .into_iter()
        .collect();
    let params = resolve_params(Builtin::PaperSynthetic, &sets).unwrap();
    let on = run_builtin(Builtin::PaperSynthetic, &params, true, Profile::Fixed, 0).unwrap();
    let off = run_builtin(Builtin::PaperSynthetic, &params, false, Profile::Fixed, 0).unwrap();
    let ept = |c: &Counters| c.exits.get(&48).copied().unwrap_or(0);
    let (on, off) = (on.counters, off.counters);
    assert_eq!(on.pt_writes, off.pt_writes);
    assert_eq!(on.pt_writes, 3 + pages + pages * changes);
    assert!(
        ept(&off) >= pages * changes,
        "every caching change exits with #VE off: {} < {}",
        ept(&off),
        pages * changes
    );
    assert!(
        ept(&on) * 100 <= ept(&off),
        "#VE on takes {} EPT-violation exits, more than 1% of {}",
        ept(&on),
        ept(&off)
    );
    assert_eq!(ept(&off), pages - 1 + pages * changes, "nothing else exits");
    assert_eq!(on.ignored_irrelevant, pages * changes);
}

// =============================================================================================
// 4. Determinism (I8 preview)
// =============================================================================================

proptest! {
    #![proptest_config(config(DETERMINISM_CASES))]

    /// I8: the same workload and seed run twice give identical counters and event lists.
    #[test]
    fn i8_same_workload_and_seed_same_counters_and_events(wl in workload_strategy()) {
        for ve in [true, false] {
            let mut a = build(&wl, ve);
            let mut b = build(&wl, ve);
            let da = drive(&mut a, &wl, run_plain)?;
            let db = drive(&mut b, &wl, run_plain)?;
            prop_assert_eq!(da, db);
            prop_assert_eq!(&a.counters, &b.counters);
            prop_assert_eq!(&a.events, &b.events);
        }
    }
}

#[test]
fn i8_paper_synthetic_runs_twice_identically() {
    let sets: BTreeMap<String, u64> = [("pages".to_string(), 4), ("changes".into(), 5)]
        .into_iter()
        .collect();
    let params = resolve_params(Builtin::PaperSynthetic, &sets).unwrap();
    for ve in [true, false] {
        let a = run_builtin(Builtin::PaperSynthetic, &params, ve, Profile::Fixed, 7).unwrap();
        let b = run_builtin(Builtin::PaperSynthetic, &params, ve, Profile::Fixed, 7).unwrap();
        assert_eq!(a, b);
    }
}
