//! The worlds the search tries: directed scenarios built for kinds of quirks, and the swarm
//! and fuzz-case worlds after them.

use crate::guest::mm::{bits, EntryInsn};
use crate::layout::USER_BASE;
use crate::ops::GuestOp;
use crate::quirks::Quirks;
use crate::runner::Setup;
use crate::sched::Schedule;
use crate::workload::{resolve_params, Builtin, Scenario};
use std::collections::BTreeMap;

/// A scenario the search tries first, built for one kind of quirk but tried for all.
#[derive(Clone, Debug)]
pub struct Directed {
    /// Its name in the report.
    pub name: &'static str,
    /// The set-up (quirks: `fixed`; the search turns the switch on).
    pub setup: Setup,
    /// The operations.
    pub scenario: Scenario,
}

pub(super) fn setup(b: Builtin, sets: &[(&str, u64)], schedule: Schedule) -> Setup {
    let sets: BTreeMap<String, u64> = sets.iter().map(|(k, v)| ((*k).to_string(), *v)).collect();
    Setup {
        builtin: b,
        params: resolve_params(b, &sets).unwrap_or_default(),
        quirks: Quirks::fixed(),
        seed: 0,
        schedule,
    }
}

/// A one-VCPU desktop world without KPTI, one protected process.
pub(super) fn desk(ops: Vec<GuestOp>) -> (Setup, Scenario) {
    (
        setup(
            Builtin::DesktopMix,
            &[("vcpus", 1), ("processes", 1), ("kpti", 0)],
            Schedule::RoundRobin,
        ),
        Scenario {
            processes: vec![true],
            queues: vec![ops],
        },
    )
}

/// The directed scenarios, in the order they are tried.
pub fn directed() -> Vec<Directed> {
    let va = USER_BASE;
    let map = |va: u64, flags: u64| GuestOp::Map { pid: 0, va, flags };
    let hook = |va: u64| GuestOp::Hook { pid: 0, va };
    let write = |insn, arg| GuestOp::Write {
        pid: 0,
        va,
        level: 1,
        insn,
        arg,
    };
    let protect = |va: u64, writable, executable| GuestOp::Protect {
        pid: 0,
        va,
        writable,
        executable,
    };
    let mut out = Vec::new();
    let mut add = |name: &'static str, (setup, scenario): (Setup, Scenario)| {
        out.push(Directed {
            name,
            setup,
            scenario,
        })
    };
    // A 4-byte write to a monitored entry, which the agent refuses (B37): introcore emulates
    // it in `fixed`.
    add(
        "mov32-to-a-monitored-entry",
        desk(vec![
            map(va, bits::RW),
            hook(va),
            write(EntryInsn::Mov32, bits::PCD),
        ]),
    );
    // STOSQ over a monitored entry: RDI must move past it.
    add(
        "stosq-over-a-monitored-entry",
        desk(vec![
            map(va, bits::RW),
            hook(va),
            write(EntryInsn::Stosq, bits::PCD),
        ]),
    );
    // XD set on a monitored entry (the page made non-executable).
    add(
        "xd-on-a-monitored-entry",
        desk(vec![map(va, bits::RW), hook(va), protect(va, true, false)]),
    );
    // The page table moved to frame 0, then the entry at GPA 0 made read-only.
    add(
        "monitored-entry-at-gpa-0",
        desk(vec![
            map(va, bits::RW),
            hook(va),
            GuestOp::MoveTable {
                pid: 0,
                va,
                frame: 0,
            },
            protect(va, false, true),
        ]),
    );
    // LOCK BTS with a register offset of 68: bit 4 (PCD, not monitored) of the next entry.
    add(
        "bts-register-offset-past-the-entry",
        desk(vec![
            map(va, bits::RW),
            map(va + 0x1000, bits::RW),
            hook(va),
            hook(va + 0x1000),
            write(EntryInsn::BtsReg, 64 + 4),
        ]),
    );
    let touch = |write| GuestOp::Touch {
        pid: 0,
        va,
        write,
        value: u64::from(write),
    };
    // A fresh page written, then read: the walk sets A and D.
    add(
        "write-then-read-a-fresh-page",
        desk(vec![
            map(va, bits::RW),
            hook(va),
            touch(true),
            GuestOp::Trim { pid: 0, va },
            touch(false),
        ]),
    );
    // A page read (A set, D clear), its PDE's A bit cleared, the page read again: the walk
    // sets the PDE's A and must leave the leaf's D alone.
    add(
        "read-after-the-pde-a-bit-is-cleared",
        desk(vec![
            map(va, bits::RW),
            hook(va),
            touch(false),
            GuestOp::Write {
                pid: 0,
                va,
                level: 2,
                insn: EntryInsn::Stosq,
                arg: bits::A,
            },
            touch(false),
        ]),
    );
    // An unmonitored entry is cached; an unload is requested; VCPU 1 then hooks the entry
    // while the agent still runs (VCPU 0 sits in the unload's delay).
    let mut s = setup(
        Builtin::UnloadRace,
        &[("vcpus", 2), ("processes", 1), ("kpti", 0)],
        Schedule::List(vec![(0, 400), (1, 50)]),
    );
    s.seed = 0;
    add(
        "hook-while-an-unload-is-pending",
        (
            s,
            Scenario {
                processes: vec![true],
                queues: vec![
                    vec![
                        map(va, bits::RW),
                        map(va + 0x1000, bits::RW),
                        hook(va),
                        protect(va + 0x1000, false, true),
                        GuestOp::Unload { delay: 1000 },
                    ],
                    vec![hook(va + 0x1000), protect(va + 0x1000, true, true)],
                ],
            },
        ),
    );
    // Eight entries of one cache bucket (indices 0, 64, ..., 448 of one table) cached, the
    // agent unloaded and deployed again, the eight cached again, then written once more.
    let bucket: Vec<u64> = (0..8).map(|k| va + k * 64 * 0x1000).collect();
    let mut ops = Vec::new();
    ops.extend(bucket.iter().map(|v| map(*v, bits::RW)));
    ops.push(map(va + 0x1000, bits::RW));
    ops.push(hook(va + 0x1000));
    ops.extend(bucket.iter().map(|v| protect(*v, false, true)));
    ops.push(GuestOp::Unload { delay: 0 });
    ops.push(GuestOp::Redeploy);
    for writable in [true, false] {
        ops.extend(bucket.iter().map(|v| protect(*v, writable, true)));
    }
    add(
        "one-cache-bucket-across-a-redeploy",
        (
            setup(
                Builtin::UnloadRace,
                &[("vcpus", 1), ("processes", 1), ("kpti", 0)],
                Schedule::RoundRobin,
            ),
            Scenario {
                processes: vec![true],
                queues: vec![ops],
            },
        ),
    );
    // VCPU 1 takes a CPU index with no CPU-map slot, then writes a monitored entry.
    add(
        "cpu-index-without-a-slot",
        (
            setup(
                Builtin::Attacks,
                &[("vcpus", 2), ("processes", 1), ("kpti", 0)],
                Schedule::List(vec![(0, 200), (1, 400)]),
            ),
            Scenario {
                processes: vec![true],
                queues: vec![
                    vec![map(va, bits::RW), hook(va)],
                    vec![
                        GuestOp::Attack {
                            pid: 0,
                            attack: crate::attack::Attack::CpuIndex,
                            arg: 64,
                            value: 0,
                        },
                        protect(va, false, true),
                    ],
                ],
            },
        ),
    );
    out
}

/// Swarm runs tried after the directed scenarios: seeds per built-in.
pub const SWARM_SEEDS: u64 = 12;

/// Inputs of the `scenario` fuzz target tried last: ChaCha bytes from seeds 0 .. this.
pub const FUZZ_CASES: u64 = 64;

/// The world and operations of the `scenario` fuzz target's input number `i` (ChaCha bytes
/// seeded with `i`), as a `desktop-mix` world of its VCPUs and KPTI.
pub fn fuzz_case(i: u64) -> (Setup, Scenario) {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i ^ 0x5155_4952_4b53);
    let mut bytes = vec![0u8; crate::scenario_case::ScenarioCase::LEN];
    rng.fill_bytes(&mut bytes);
    let (vcpus, processes, kpti, schedule, queues) =
        crate::scenario_case::ScenarioCase::from_data(&bytes).build();
    let s = setup(
        Builtin::DesktopMix,
        &[
            ("vcpus", vcpus as u64),
            ("processes", processes.len() as u64),
            ("kpti", u64::from(kpti)),
        ],
        schedule,
    );
    (s, Scenario { processes, queues })
}
