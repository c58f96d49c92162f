//! The quirk report (`vesim quirks`). For each quirk switch of VE-SEMANTICS section 2 it
//! searches for a world in which `fixed` plus that one switch fails an invariant while `fixed`
//! passes the same operations under the same schedule: first the directed scenarios below,
//! then seeded swarm runs of the built-ins, then inputs of the `scenario` fuzz target. What it finds is shrunk (operations, VCPUs,
//! preemptions) under the same two conditions and recorded as a trace whose header names the
//! switch. A switch that breaks nothing gets its cost measured instead (VMCALLs, #VEs and the
//! cache hit rate with and without it, on a named workload). Every other quirk of
//! HVMI-BEHAVIOURS section Q gets a row saying why it has no switch.

use crate::check::Invariant;
use crate::guest::mm::{bits, EntryInsn};
use crate::layout::USER_BASE;
use crate::minimize::{minimize_while, op_count, preemptions};
use crate::ops::GuestOp;
use crate::quirks::Quirks;
use crate::runner::{checked, Checked, Setup};
use crate::sched::Schedule;
use crate::workload::{
    build_world_quirks, generate, resolve_params, run_scenario_until, swarm_params, Builtin,
    RunError, Scenario,
};
use std::collections::BTreeMap;

/// What the model does with a quirk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A named switch: searched for, then costed if it breaks nothing; the text says why,
    /// for when the search finds no failure.
    Switch(&'static str),
    /// No switch, for the reason given.
    NoSwitch(&'static str),
}

/// One quirk of HVMI-BEHAVIOURS section Q (and Q31 of VE-SEMANTICS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quirk {
    /// `Q1` ... `Q31`.
    pub id: &'static str,
    /// One line.
    pub description: &'static str,
    /// Switch or not.
    pub kind: Kind,
    /// For a switch whose effect the spec describes through another switch's events, that
    /// switch: searched with both on when the switch alone breaks nothing.
    pub companion: Option<&'static str>,
}

const fn sw(id: &'static str, description: &'static str, why: &'static str) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::Switch(why),
        companion: None,
    }
}

/// A switch that acts through `companion`'s events.
const fn sw_with(
    id: &'static str,
    description: &'static str,
    why: &'static str,
    companion: &'static str,
) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::Switch(why),
        companion: Some(companion),
    }
}

const fn no(id: &'static str, description: &'static str, why: &'static str) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::NoSwitch(why),
        companion: None,
    }
}

/// Every quirk, in order.
pub const QUIRKS: [Quirk; 31] = [
    sw("Q1", "an unsupported page-table write breaks and retries forever", ""),
    no(
        "Q2",
        "flags read with __readeflags after C code",
        "a property of HVMI's compiled code: the model's agent computes the flags itself, and the semantics HVMI gets right (RAX on a CMPXCHG mismatch, the flags of CMP) are what I2 checks",
    ),
    no(
        "Q3",
        "introcore cannot block a page-table write delivered as a #VE",
        "modelled as HVMI has it in both profiles (the raise path has no deny); no callback in the model denies a write, so there is nothing for a switch to change",
    ),
    sw_with(
        "Q4",
        "BT* with a register bit offset is reduced mod 64",
        "the agent's own GLA check (B38) catches the wrong qword and refuses the write, which `fixed` introcore then emulates correctly (Q1 off), so on its own the quirk costs a VMCALL per such write; the spec's failure is through Q1 (the refusal hits the break loop)",
        "Q1",
    ),
    sw("Q5", "STOSQ emulation leaves RDI unchanged", ""),
    sw(
        "Q6",
        "RIP advanced after the raise, on top of introcore's",
        "introcore writes the saved RIP only when it emulates for the agent (the Q1 path), where the agent does not advance it, so the order is not observable; single-step traps (TF) are not modelled",
    ),
    no(
        "Q7",
        "the GPA-cache patch lands before the agent's store",
        "modelled (B109); a VMCALL is one step in the model and both writes store the same value, so no other VCPU can see the window",
    ),
    no(
        "Q8",
        "the agent's lock index assumes self-map addresses",
        "the model's guest writes page tables only through the self-map and the walker's A/D updates are atomic within a step, so the unserialised cases cannot arise",
    ),
    sw("Q9", "XD and the other non-monitored bits are never reported", ""),
    sw(
        "Q10",
        "the page-walk D-bit rule ignores the access type",
        "a D bit set by a read walk needs a walk that writes an upper level's A while the leaf is already accessed and clean; no operation clears an upper-level A bit, so what shows is the cost: two #VEs for a first write",
    ),
    no(
        "Q11",
        "qualification bit 7 (GLA valid) is not checked",
        "the simulated CPU always sets bit 7 on the #VEs it delivers; forged information pages are the hypercall and agent_instruction fuzz targets' ground (I9)",
    ),
    no(
        "Q12",
        "BUFFER_TOO_SMALL is unreachable; instruction bytes read straight from guest memory",
        "unreachable by construction; a fault on the read is an agent fault (I10), as Q14",
    ),
    no(
        "Q13",
        "SPEC_CTRL overwritten with 1 on every #VE",
        "speculation-control MSR state is outside the model",
    ),
    no(
        "Q14",
        "faults, NMIs and #MC inside the agent hang the VCPU",
        "modelled as HVMI behaves (no switch): a fault in the agent stops the VCPU with agent_fault, an I10 failure; NMIs and #MC are not modelled. The scenario fuzz target found the related hang: a VCPU stuck in agent code keeps the unload gate (B140) shut",
    ),
    sw(
        "Q15",
        "an empty cache slot holds 0, so an entry at GPA 0 counts as cached",
        "",
    ),
    sw("Q16", "no cache eviction while an unload is pending", ""),
    sw(
        "Q17",
        "the cache fill counter only grows and survives redeploy",
        "random replacement only ever loses cache entries, which costs raises and never hides a write: a cost, not a failure",
    ),
    sw_with(
        "Q18",
        "VeIgnoredTotal also counts breaks and early page-walk exits",
        "the events it miscounts are breaks, which only Q1 makes (early page-walk exits are counted as page walks set in both profiles), so on its own it changes nothing",
        "Q1",
    ),
    sw(
        "Q19",
        "CPU-map key for G = 1 descriptors scaled without OR 0xFFF",
        "the worlds give every VCPU a byte-granular 0x50 descriptor (G = 0), as Windows does, so the two keys agree",
    ),
    sw(
        "Q20",
        "no bound on the CPU index; unused CPU-map slots point at VCPU 0's page",
        "",
    ),
    no(
        "Q21",
        "KiKernelExit back-scan with an unsigned loop counter",
        "the kernel image scan at deploy is outside the model (the OS image is not simulated)",
    ),
    no(
        "Q22",
        "load failure resets pending-unload while the unloader may run",
        "the driver-load failure path is outside the model (deploys do not fail in worlds)",
    ),
    no(
        "Q23",
        "RAISE_EPT with a NULL information page dereferences NULL",
        "vesim answers NOT_SUPPORTED where HVMI would crash the hypervisor side; the hypercall fuzz target drives this path",
    ),
    sw(
        "Q24",
        "EPTP index forced to 0 during dispatch, not the untrusted index",
        "the worlds' untrusted view is view 0, as on KVM, so 0 is the right index; the quirk matters where it is not (Xen altp2m view 1)",
    ),
    no(
        "Q25",
        "PtEmuBuffer.Partial not cleared; #VE writes dispatched as R|W",
        "introcore's internal PtEmuBuffer bookkeeping and access flags are outside the model",
    ),
    no(
        "Q26",
        "agent remaps are recognised only through self-map addresses",
        "the model's guest reaches page tables only through the self-map, where the check is exact; the attacks built-in's remaps all go that way",
    ),
    sw(
        "Q27",
        "the upper half of a monitored user PML4 raises on every relevant write",
        "no operation writes entries 256..511 of a user (KPTI) PML4: the model's shadow PML4 carries only user-half entries, so the raise-every-time path never runs",
    ),
    no(
        "Q28",
        "PT-filter details (IF snapshot, CheckLock, one global lock)",
        "the PT filter is a different in-guest mechanism from the #VE agent and is outside the model",
    ),
    no(
        "Q29",
        "IntVeIsPtrInAgent reads IDT[20] of the current VCPU",
        "every VCPU's IDT[20] points at the same handler in the model, so the current VCPU's is the right one",
    ),
    no(
        "Q30",
        "comments that disagree with the code",
        "documentation only",
    ),
    sw(
        "Q31",
        "B38 sums the address mod 2^64 under a 0x67 prefix",
        "page-table entries are reached through the self-map, above 4 GiB, where no 0x67 (32-bit) address can point; where one could, the GLA check refuses the write and `fixed` introcore emulates it (Q1 off), a cost and not a failure",
    ),
];

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

fn setup(b: Builtin, sets: &[(&str, u64)], schedule: Schedule) -> Setup {
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
fn desk(ops: Vec<GuestOp>) -> (Setup, Scenario) {
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

/// A world in which the switch fails an invariant and `fixed` passes.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Where it was found (a directed scenario's name, or `builtin seed N`).
    pub origin: String,
    /// The set-up, with the switch on.
    pub setup: Setup,
    /// The operations.
    pub scenario: Scenario,
    /// The invariant.
    pub invariant: Invariant,
    /// The step it failed at.
    pub step: u64,
    /// What the check saw.
    pub detail: String,
    /// The switch that was on with it, for a quirk whose effect HVMI-BEHAVIOURS describes
    /// through another's (Q4 and Q18 act through Q1's breaks).
    pub companion: Option<&'static str>,
}

/// `s` with every quirk off.
fn fixed_of(s: &Setup) -> Setup {
    Setup {
        quirks: Quirks::fixed(),
        ..s.clone()
    }
}

/// The invariant `sc` fails under `s` (switch `q` on, and its companion if any) while
/// `fixed` passes it; with a companion, the companion alone must not fail that invariant (it
/// passes, or fails another one).
fn breaks(
    s: &Setup,
    sc: &Scenario,
    q: &str,
    companion: Option<&str>,
) -> Option<crate::check::Violation> {
    let Checked::Failed(v) = checked(s, sc) else {
        return None;
    };
    if checked(&fixed_of(s), sc) != Checked::Passed {
        return None;
    }
    if companion.is_some() {
        let mut alone = s.clone();
        if let Some(b) = alone.quirks.switch_mut(q) {
            *b = false;
        }
        if matches!(checked(&alone, sc), Checked::Failed(x) if x.invariant == v.invariant) {
            return None;
        }
    }
    Some(v)
}

fn with_switch(mut s: Setup, q: &str) -> Setup {
    if let Some(b) = s.quirks.switch_mut(q) {
        *b = true;
    }
    s
}

/// Searches for a world in which switch `q` (with `companion` on too, if given) breaks an
/// invariant `fixed` keeps.
pub fn search(q: &str, companion: Option<&'static str>) -> Option<Finding> {
    let on = |s: Setup| match companion {
        Some(c) => with_switch(with_switch(s, c), q),
        None => with_switch(s, q),
    };
    let found = |origin: String, s: Setup, sc: Scenario| {
        breaks(&s, &sc, q, companion).map(|v| Finding {
            origin,
            setup: s,
            scenario: sc,
            invariant: v.invariant,
            step: v.step,
            detail: v.detail,
            companion,
        })
    };
    for d in directed() {
        if let Some(f) = found(d.name.to_string(), on(d.setup), d.scenario) {
            return Some(f);
        }
    }
    for seed in 0..SWARM_SEEDS {
        for (name, b) in Builtin::ALL {
            let Ok(params) = swarm_params(b, &BTreeMap::new(), seed) else {
                continue;
            };
            let sc = generate(b, &params, seed);
            let s = on(Setup {
                builtin: b,
                params,
                quirks: Quirks::fixed(),
                seed,
                schedule: Schedule::Random { seed },
            });
            if let Some(f) = found(format!("{name} seed {seed}"), s, sc) {
                return Some(f);
            }
        }
    }
    for i in 0..FUZZ_CASES {
        let (s, sc) = fuzz_case(i);
        if let Some(f) = found(format!("scenario fuzz input {i}"), on(s), sc) {
            return Some(f);
        }
    }
    None
}

/// `f` shrunk while the same invariant fails with the switch and `fixed` passes.
pub fn shrink(f: &Finding, q: &str) -> Finding {
    let inv = f.invariant;
    let still = |s: &Setup, sc: &Scenario| {
        breaks(s, sc, q, f.companion).is_some_and(|v| v.invariant == inv)
    };
    let m = minimize_while(&f.setup, &f.scenario, &still);
    match breaks(&m.setup, &m.scenario, q, f.companion) {
        Some(v) if v.invariant == inv => Finding {
            origin: f.origin.clone(),
            setup: m.setup,
            scenario: m.scenario,
            invariant: inv,
            step: v.step,
            detail: v.detail,
            companion: f.companion,
        },
        _ => f.clone(),
    }
}

/// What a workload costs with and without a switch.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// The workload (a built-in with its seed, or a directed scenario).
    pub workload: String,
    /// VMCALLs, `fixed` then with the switch.
    pub vmcalls: (u64, u64),
    /// #VEs delivered.
    pub ves: (u64, u64),
    /// Cache hits over lookups (`None` without lookups).
    pub cache_hit_rate: (Option<f64>, Option<f64>),
}

impl Cost {
    /// Whether the switch changed any figure.
    pub fn differs(&self) -> bool {
        self.vmcalls.0 != self.vmcalls.1
            || self.ves.0 != self.ves.1
            || self.cache_hit_rate.0 != self.cache_hit_rate.1
    }

    /// One line: `workload: VMCALLs a -> b (+x %), #VEs c -> d, cache hit rate ...`.
    pub fn text(&self) -> String {
        let pct = |a: u64, b: u64| {
            if a == 0 {
                String::new()
            } else {
                format!(" ({:+.1} %)", (b as f64 - a as f64) * 100.0 / a as f64)
            }
        };
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0));
        format!(
            "{}: VMCALLs {} -> {}{}, #VEs {} -> {}{}, cache hit rate {} -> {}",
            self.workload,
            self.vmcalls.0,
            self.vmcalls.1,
            pct(self.vmcalls.0, self.vmcalls.1),
            self.ves.0,
            self.ves.1,
            pct(self.ves.0, self.ves.1),
            rate(self.cache_hit_rate.0),
            rate(self.cache_hit_rate.1)
        )
    }
}

/// Steps a costed run may take (a livelock under the switch ends there).
pub const COST_STEPS_MAX: u64 = 5_000_000;

/// Runs `sc` under `s` with #VE on (no checks, at most [`COST_STEPS_MAX`] steps) and measures
/// it with `fixed` and with the switch `q`.
pub fn cost(workload: String, s: &Setup, sc: &Scenario, q: &str) -> Result<Cost, RunError> {
    let run = |quirks: Quirks| -> Result<(u64, u64, Option<f64>), RunError> {
        let w = build_world_quirks(s.builtin, &s.params, true, quirks, s.seed)?;
        let w = run_scenario_until(w, sc, &s.schedule, COST_STEPS_MAX)?;
        let c = &w.counters;
        let rate = (c.cache_lookups > 0).then(|| c.cache_hits as f64 / c.cache_lookups as f64);
        Ok((c.vmcalls.values().sum(), c.ve_total, rate))
    };
    let a = run(Quirks::fixed())?;
    let b = run(with_switch(s.clone(), q).quirks)?;
    Ok(Cost {
        workload,
        vmcalls: (a.0, b.0),
        ves: (a.1, b.1),
        cache_hit_rate: (a.2, b.2),
    })
}

/// The workloads a switch that breaks nothing is costed on, in order: the first that shows a
/// difference is reported (or the first, when none does).
fn cost_workloads() -> Vec<(String, Setup, Scenario)> {
    let mut out: Vec<(String, Setup, Scenario)> = directed()
        .into_iter()
        .map(|d| (format!("directed {}", d.name), d.setup, d.scenario))
        .collect();
    for b in [
        Builtin::DesktopMix,
        Builtin::MemoryPressure,
        Builtin::PaperSynthetic,
        Builtin::UnloadRace,
    ] {
        let params = resolve_params(b, &BTreeMap::new()).unwrap_or_default();
        let sc = generate(b, &params, 0);
        out.push((
            format!("{} seed 0", b.name()),
            Setup {
                builtin: b,
                params,
                quirks: Quirks::fixed(),
                seed: 0,
                schedule: Schedule::Random { seed: 0 },
            },
            sc,
        ));
    }
    out
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// The quirk.
    pub quirk: &'static str,
    /// One line.
    pub description: &'static str,
    /// The invariant it breaks.
    pub invariant: Option<Invariant>,
    /// The switches on in its trace (the quirk's, and its companion's if it needed one).
    pub switches: Vec<&'static str>,
    /// The trace written.
    pub trace: Option<String>,
    /// Guest operations in that trace.
    pub operations: Option<usize>,
    /// VCPUs and context switches of the minimal failing run.
    pub vcpus: Option<u64>,
    /// Context switches of the minimal schedule (`None` for schedules that are not lists).
    pub preemptions: Option<usize>,
    /// The command that replays it.
    pub replay: Option<String>,
    /// The measured cost, for switches that break nothing alone: the first costed workload on
    /// which a figure changes.
    pub cost: Option<Cost>,
    /// Every costed workload's figures, for the same switches.
    pub costs: Vec<Cost>,
    /// Where it was found and what failed, or why there is no trace.
    pub note: String,
}

impl Row {
    /// The JSON object of the row.
    pub fn json(&self) -> serde_json::Value {
        let one = |c: &Cost| {
            serde_json::json!({
                "workload": c.workload,
                "vmcalls": {"fixed": c.vmcalls.0, "switch": c.vmcalls.1},
                "ves": {"fixed": c.ves.0, "switch": c.ves.1},
                "cache_hit_rate": {"fixed": c.cache_hit_rate.0, "switch": c.cache_hit_rate.1},
                "text": c.text(),
            })
        };
        let cost = self.cost.as_ref().map(one);
        let costs = if self.costs.is_empty() {
            serde_json::Value::Null
        } else {
            self.costs.iter().map(one).collect()
        };
        serde_json::json!({
            "quirk": self.quirk,
            "description": self.description,
            "invariant": self.invariant.map(|i| i.to_string()),
            "switches": if self.switches.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.switches) },
            "trace": self.trace,
            "operations": self.operations,
            "vcpus": self.vcpus,
            "preemptions": self.preemptions,
            "replay": self.replay,
            "cost": cost,
            "costs": costs,
            "note": self.note,
        })
    }
}

/// The row of switch `q`: search, shrink, and record into `dir` (as `dir/Qn.trace`), or cost.
pub fn switch_row(q: &'static Quirk, dir: &std::path::Path) -> Result<Row, String> {
    let mut row = Row {
        quirk: q.id,
        description: q.description,
        invariant: None,
        switches: Vec::new(),
        trace: None,
        operations: None,
        vcpus: None,
        preemptions: None,
        replay: None,
        cost: None,
        costs: Vec::new(),
        note: String::new(),
    };
    let found = search(q.id, None).or_else(|| q.companion.and_then(|c| search(q.id, Some(c))));
    if let Some(found) = found {
        let f = shrink(&found, q.id);
        let path = dir.join(format!("{}.trace", q.id));
        let tf = crate::trace::record_scenario(
            f.setup.builtin,
            &f.setup.params,
            f.setup.quirks,
            "fixed",
            f.setup.seed,
            &f.setup.schedule,
            Some(f.step),
            f.scenario.clone(),
            &[true],
        )
        .map_err(|e| format!("{}: the minimal scenario does not run: {e}", q.id))?;
        crate::output::write_atomic(&path, tf.to_text().as_bytes())
            .map_err(|e| format!("{} cannot be written: {e}", path.display()))?;
        let shown = path.display().to_string();
        row.invariant = Some(f.invariant);
        row.switches = f.setup.quirks.enabled();
        if f.companion.is_some() {
            // What the switch does on its own.
            row.costs = measured_costs(q.id)?;
            row.cost = row.costs.iter().find(|c| c.differs()).cloned();
        }
        row.operations = Some(op_count(&f.scenario));
        row.vcpus = Some(f.setup.params.get("vcpus").copied().unwrap_or(1));
        row.preemptions = preemptions(&f.setup.schedule);
        row.replay = Some(format!("vesim replay --check {shown}"));
        row.trace = Some(shown);
        let with = match f.companion {
            Some(c) => format!(
                "with {c} on too, which alone does not fail {} here{}; ",
                f.invariant,
                match q.kind {
                    Kind::Switch(w) if !w.is_empty() => format!(" ({w})"),
                    _ => String::new(),
                }
            ),
            None => String::new(),
        };
        row.note = format!(
            "{with}found by {} ({} operations), shrunk; {} at step {}: {}",
            found.origin,
            op_count(&found.scenario),
            f.invariant,
            f.step,
            f.detail
        );
        return Ok(row);
    }
    row.costs = measured_costs(q.id)?;
    row.cost = row.costs.iter().find(|c| c.differs()).cloned();
    let differs = row.cost.is_some();
    let why = match q.kind {
        Kind::Switch(w) if !w.is_empty() => format!(": {w}"),
        _ => String::new(),
    };
    row.note = if differs {
        format!(
            "no invariant fails in the directed scenarios, {SWARM_SEEDS} swarm seeds per \
             built-in or {FUZZ_CASES} scenario fuzz inputs{why}"
        )
    } else {
        format!(
            "no invariant fails in the directed scenarios, {SWARM_SEEDS} swarm seeds per \
             built-in or {FUZZ_CASES} scenario fuzz inputs, and no figure changes on the \
             costed workloads{why}"
        )
    };
    Ok(row)
}

/// Switch `q`'s figures on every costed workload.
fn measured_costs(q: &str) -> Result<Vec<Cost>, String> {
    cost_workloads()
        .into_iter()
        .map(|(name, s, sc)| cost(name, &s, &sc, q).map_err(|e| format!("{q}: {e}")))
        .collect()
}

/// The row of a quirk without a switch.
pub fn no_switch_row(q: &'static Quirk) -> Row {
    Row {
        quirk: q.id,
        description: q.description,
        invariant: None,
        switches: Vec::new(),
        trace: None,
        operations: None,
        vcpus: None,
        preemptions: None,
        replay: None,
        cost: None,
        costs: Vec::new(),
        note: match q.kind {
            Kind::NoSwitch(why) => why.to_string(),
            Kind::Switch(_) => String::new(),
        },
    }
}

/// Every row, in quirk order: the switches searched `jobs` at a time, traces written to `dir`.
pub fn report(dir: &std::path::Path, jobs: usize) -> Result<Vec<Row>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{} cannot be created: {e}", dir.display()))?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(q) = QUIRKS.get(i) else {
                    break;
                };
                let r = match q.kind {
                    Kind::Switch(_) => switch_row(q, dir),
                    Kind::NoSwitch(_) => Ok(no_switch_row(q)),
                };
                if let Ok(mut d) = done.lock() {
                    d.push((i, r));
                }
            });
        }
    });
    let mut rows: Vec<(usize, Result<Row, String>)> = done.into_inner().unwrap_or_default();
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect::<Result<_, _>>()?;
    // A trace left from an earlier report whose quirk no longer fails goes, so that the
    // directory holds exactly this report's traces.
    for r in rows.iter().filter(|r| r.trace.is_none()) {
        let stale = dir.join(format!("{}.trace", r.quirk));
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{} cannot be removed: {e}", stale.display()));
            }
            _ => {}
        }
    }
    Ok(rows)
}
