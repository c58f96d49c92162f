//! The isolation attempts of the `attacks` built-in (I3), each against what HVMI-BEHAVIOURS
//! says introcore does about it: B118 (untrusted read blocked silently, write and execute
//! alerted and blocked), B119 (nothing but agent code runs in the protected view), B116 (a
//! remapped agent page is copied and keeps its protection), B120 (RAISE_EPT only from the
//! agent) and `fixed` Q20 (no CPU-map slot: the agent returns at once, the VCPU's violations
//! exit). And the I3 probe can fail: with the agent's untrusted-view protection stripped, the
//! same attempts are reported as breaches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim::attack::Attack;
use vesim::check::{Checker, Invariant};
use vesim::guest::mm::bits;
use vesim::introcore::ENOSYS;
use vesim::layout;
use vesim::ops::{GuestOp, OpEnd, OpRunner, RunFailure};
use vesim::quirks::Quirks;
use vesim::sched::{Schedule, Scheduler};
use vesim::world::{Event, Stop, World, WorldConfig};
use vesim_model::ept::EptFlags;
use vesim_model::vcpu::Gpr;
use vesim_model::{Gpa, VcpuId};

const USER_VA: u64 = layout::USER_BASE;

/// Two VCPUs, `fixed`, one protected process with a hooked page mapped by VCPU 0.
fn world() -> World {
    let mut c = WorldConfig {
        quirks: Quirks::fixed(),
        ..WorldConfig::default()
    };
    c.guest.vcpus = 2;
    let mut w = World::new(c).unwrap();
    w.mm().create_process(true).unwrap();
    w
}

fn attack(attack: Attack, arg: u64, value: u64) -> GuestOp {
    GuestOp::Attack {
        pid: 0,
        attack,
        arg,
        value,
    }
}

/// Runs VCPU 0's and VCPU 1's queues round-robin with every check.
fn run(w: &mut World, q0: Vec<GuestOp>, q1: Vec<GuestOp>) -> (OpRunner, Result<u64, RunFailure>) {
    let mut runner = OpRunner::new(vec![q0, q1]);
    let mut sched = Scheduler::new(Schedule::RoundRobin, 2);
    let mut checker = Checker::new(w);
    let r = runner.run_checked(w, &mut sched, &mut checker, 1_000_000);
    (runner, r)
}

fn setup_ops() -> Vec<GuestOp> {
    vec![
        GuestOp::Map {
            pid: 0,
            va: USER_VA,
            flags: bits::RW,
        },
        GuestOp::Hook {
            pid: 0,
            va: USER_VA,
        },
    ]
}

/// A relevant write of a monitored entry: the hooked page made read-only (RW is a monitored
/// bit, B139).
fn monitored_write() -> GuestOp {
    GuestOp::Protect {
        pid: 0,
        va: USER_VA,
        writable: false,
        executable: true,
    }
}

fn alerts(w: &World, cpu: usize) -> Vec<String> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Alert { cpu: c, detail } if c.0 == cpu => Some(detail.clone()),
            _ => None,
        })
        .collect()
}

fn agent_gpa(off: u64) -> Gpa {
    layout::AGENT_GPA.wrapping_add(off)
}

#[test]
fn untrusted_read_of_the_agent_is_blocked_silently() {
    let mut w = world();
    // The CPU map's first two slots; the read must not deliver them.
    let map = w.machine.mem.read_u64(agent_gpa(layout::AGENT_CPUMAP));
    let (runner, r) = run(
        &mut w,
        setup_ops(),
        vec![attack(Attack::AgentRead, layout::AGENT_CPUMAP, 0)],
    );
    r.unwrap();
    assert!(alerts(&w, 1).is_empty(), "B118: a read is not alerted");
    assert!(runner.breaches.is_empty());
    assert_eq!(w.vcpus[1].reg(Gpr::Rax), !map, "RAX kept the value it had");
    assert!(runner.ended.iter().any(|(c, op, end)| *c == 1
        && matches!(op, GuestOp::Attack { .. })
        && *end == OpEnd::Done));
}

#[test]
fn untrusted_write_of_the_semaphore_is_alerted_and_has_no_effect() {
    let mut w = world();
    let sem = agent_gpa(layout::AGENT_VEINFO + 4);
    let (runner, r) = run(
        &mut w,
        setup_ops(),
        vec![attack(Attack::AgentWrite, layout::AGENT_VEINFO + 4, 1)],
    );
    r.unwrap();
    assert_eq!(w.machine.mem.read_u32(sem), 0);
    let a = alerts(&w, 1);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].contains("untrusted write"), "{a:?}");
    assert!(runner.breaches.is_empty());
}

#[test]
fn executing_agent_code_from_the_untrusted_view_stops_the_vcpu_with_an_alert() {
    let mut w = world();
    let mut q0 = setup_ops();
    q0.push(monitored_write());
    let (runner, r) = run(
        &mut w,
        q0,
        vec![
            attack(Attack::AgentExec, 0x40, 0),
            attack(Attack::AgentRead, 0, 0),
        ],
    );
    r.unwrap();
    let a = alerts(&w, 1);
    assert!(a.iter().any(|d| d.contains("untrusted execute")), "{a:?}");
    assert!(matches!(w.stopped[1], Some(Stop::Guest(_))));
    assert_eq!(
        runner.ended.iter().filter(|(c, _, _)| *c == 1).count(),
        1,
        "the VCPU runs nothing after the blocked fetch"
    );
    // VCPU 0 goes on: its monitored write is raised.
    assert!(w.counters.raised >= 1);
}

#[test]
fn guest_code_in_the_protected_view_stops_with_an_alert() {
    let mut w = world();
    let (runner, r) = run(
        &mut w,
        setup_ops(),
        vec![attack(Attack::ViewSwitch, layout::AGENT_CPUMAP, 0)],
    );
    r.unwrap();
    assert_eq!(w.vcpus[1].eptp_index, w.intro.protected, "VMFUNC switched");
    let a = alerts(&w, 1);
    assert!(a.iter().any(|d| d.contains("protected view")), "{a:?}");
    assert!(matches!(w.stopped[1], Some(Stop::Guest(_))));
    assert!(runner.breaches.is_empty());
}

#[test]
fn remapped_agent_page_moves_with_its_protection_and_the_agent_keeps_working() {
    let mut w = world();
    let page = layout::AGENT_VEINFO / 0x1000 + 1; // VCPU 1's information page
    let va = layout::AGENT_GVA + page * 0x1000;
    let frame = layout::ATTACK_FRAMES_START.wrapping_add(3 * 0x1000);
    let mut q0 = setup_ops();
    q0.push(attack(Attack::Remap, page, 3));
    let mut q1 = vec![GuestOp::CreateProcess { protected: true }];
    // VCPU 1 then takes a #VE of its own, through the moved page.
    q1.extend([
        GuestOp::Map {
            pid: 1,
            va: USER_VA + (1 << 30),
            flags: bits::RW,
        },
        GuestOp::Hook {
            pid: 1,
            va: USER_VA + (1 << 30),
        },
        GuestOp::SetCaching {
            pid: 1,
            va: USER_VA + (1 << 30),
            attrs: bits::PCD,
            form: 1,
        },
    ]);
    // VCPU 1 starts once the remap is done: run VCPU 0 first.
    let mut runner = OpRunner::new(vec![q0, Vec::new()]);
    let mut sched = Scheduler::new(Schedule::RoundRobin, 2);
    let mut checker = Checker::new(&w);
    runner
        .run_checked(&mut w, &mut sched, &mut checker, 1_000_000)
        .unwrap();
    assert!(runner.breaches.is_empty());
    assert_eq!(w.guest.phys(&w.machine, va), Some(frame));
    let f = w
        .machine
        .ept
        .view(w.intro.untrusted)
        .unwrap()
        .entry(frame.gfn())
        .flags();
    assert!(!f.intersects(EptFlags::READ | EptFlags::WRITE), "{f:?}");
    assert_eq!(w.ve_page(VcpuId(1)), Some(frame), "B116 step 8");
    let mut runner = OpRunner::new(vec![Vec::new(), q1]);
    runner
        .run_checked(&mut w, &mut sched, &mut checker, 1_000_000)
        .unwrap();
    assert_eq!(
        w.machine
            .mem
            .read_u64(frame.wrapping_add(layout::veinfo::VE_TOTAL)),
        1,
        "VCPU 1's #VE was counted in the moved page"
    );
}

#[test]
fn raise_ept_from_guest_code_is_refused() {
    let mut w = world();
    let (runner, r) = run(&mut w, setup_ops(), vec![attack(Attack::Raise, 0, 0)]);
    r.unwrap();
    assert_eq!(w.vcpus[1].reg(Gpr::Rax), ENOSYS);
    assert!(w.intro.callbacks.is_empty());
    assert!(runner.breaches.is_empty());
}

#[test]
fn a_cpu_index_without_a_slot_sends_the_vcpus_violations_to_introcore() {
    for arg in [2 * 10, 2 * 1000 + 1] {
        let mut w = world();
        // VCPU 0 maps and hooks the page, then VCPU 1 takes an index with no slot (10 is
        // unused with two VCPUs; 1000 / 2 + 64 is past the map) and changes the entry.
        let mut runner = OpRunner::new(vec![setup_ops(), Vec::new()]);
        let mut sched = Scheduler::new(Schedule::RoundRobin, 2);
        let mut checker = Checker::new(&w);
        runner
            .run_checked(&mut w, &mut sched, &mut checker, 1_000_000)
            .unwrap();
        let mut runner = OpRunner::new(vec![
            Vec::new(),
            vec![attack(Attack::CpuIndex, arg, 0), monitored_write()],
        ]);
        runner
            .run_checked(&mut w, &mut sched, &mut checker, 1_000_000)
            .unwrap();
        let c = &w.counters;
        assert_eq!((c.ve_total, c.ve_unknown), (1, 1), "arg {arg}");
        assert_eq!(c.exits.get(&48), Some(&1), "the retry exits");
        assert_eq!(w.intro.callbacks.len(), 1, "introcore saw the write (I1)");
    }
}

/// Strips the agent's untrusted-view protection (every agent frame RWX), as a broken engine
/// would leave it.
fn strip_protection(w: &mut World) {
    let view = w.machine.ept.view_mut(w.intro.untrusted).unwrap();
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        view.set_rights(
            agent_gpa(off).gfn(),
            EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE,
        );
    }
}

#[test]
fn the_i3_probe_reports_reads_and_writes_that_succeed() {
    for a in [Attack::AgentRead, Attack::AgentWrite] {
        let mut w = world();
        strip_protection(&mut w);
        let (_, r) = run(
            &mut w,
            Vec::new(),
            vec![attack(a, layout::AGENT_CPUMAP + 8, 0x1234)],
        );
        match r {
            Err(RunFailure::Violations(v)) => {
                assert!(v.iter().any(|x| x.invariant == Invariant::I3), "{v:?}")
            }
            other => panic!("{a:?}: expected an I3 failure, got {other:?}"),
        }
    }
}

#[test]
fn attacks_pass_every_check_in_fixed() {
    let r = vesim::workload::Builtin::from_name("attacks").unwrap();
    for seed in 0..8 {
        let params = vesim::workload::swarm_params(r, &Default::default(), seed).unwrap();
        let sc = vesim::workload::generate(r, &params, seed);
        assert!(
            sc.queues
                .iter()
                .flatten()
                .any(|op| matches!(op, GuestOp::Attack { .. })),
            "seed {seed} attacks"
        );
        let mut w =
            vesim::workload::build_world(r, &params, true, vesim::quirks::Profile::Fixed, seed)
                .unwrap();
        for p in &sc.processes {
            w.mm().create_process(*p).unwrap();
        }
        let mut runner = OpRunner::new(sc.queues);
        let mut sched = Scheduler::new(Schedule::Random { seed }, w.vcpus.len());
        let mut checker = Checker::new(&w);
        runner
            .run_checked(&mut w, &mut sched, &mut checker, 50_000_000)
            .unwrap();
        assert!(runner.breaches.is_empty());
    }
}
