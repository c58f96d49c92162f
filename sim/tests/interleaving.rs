//! Several VCPUs running guest operations interleaved step by step under each scheduler: every
//! operation completes, the agent's spinlocks and the #VE protocol hold between VCPUs, and the
//! result does not depend on the interleaving beyond frame numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim::guest::mm::bits;
use vesim::layout;
use vesim::ops::{GuestOp, OpEnd, OpRunner};
use vesim::sched::{Schedule, Scheduler};
use vesim::world::{World, WorldConfig};

const PAGES: u64 = 6;

fn queue(pid: u32) -> Vec<GuestOp> {
    let va = |i: u64| layout::USER_BASE + (u64::from(pid) << 30) + i * 0x1000;
    let mut q = Vec::new();
    for i in 0..PAGES {
        q.push(GuestOp::Map {
            pid,
            va: va(i),
            flags: bits::RW,
        });
        q.push(GuestOp::Hook { pid, va: va(i) });
    }
    for i in 0..PAGES {
        q.push(GuestOp::SetCaching {
            pid,
            va: va(i),
            attrs: bits::PCD,
            form: i as u32,
        });
        q.push(GuestOp::Touch {
            pid,
            va: va(i),
            write: i % 2 == 0,
            value: i,
        });
        q.push(GuestOp::Protect {
            pid,
            va: va(i),
            writable: false,
            executable: i % 3 == 0,
        });
    }
    q.push(GuestOp::SwapOut { pid, va: va(1) });
    q.push(GuestOp::SwapIn { pid, va: va(1) });
    q.push(GuestOp::Trim { pid, va: va(2) });
    q.push(GuestOp::Unmap { pid, va: va(3) });
    q
}

/// Runs two processes' queues on two VCPUs and returns the world and the runner.
fn run(schedule: &str) -> (World, OpRunner) {
    let mut c = WorldConfig::default();
    c.guest.vcpus = 2;
    let mut w = World::new(c).unwrap();
    let p0 = w.mm().create_process(true).unwrap();
    let p1 = w.mm().create_process(true).unwrap();
    let mut runner = OpRunner::new(vec![queue(p0), queue(p1)]);
    let mut sched = Scheduler::new(schedule.parse::<Schedule>().unwrap(), 2);
    let steps = runner.run(&mut w, &mut sched, 2_000_000).unwrap();
    assert!(steps < 2_000_000, "{schedule}: did not finish");
    (w, runner)
}

/// Each process's pages with their leaf flags, the frame number masked.
fn layout_of(w: &World) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    for p in &w.guest.processes {
        for &va in p.pages.keys() {
            let (e, _) = w.guest.entry_value(&w.machine, p.pid, va, 1).unwrap();
            out.push((p.pid, va, e & !0x000F_FFFF_FFFF_F000 & !(bits::A | bits::D)));
        }
    }
    out
}

#[test]
fn every_operation_completes_under_every_scheduler() {
    let sequential = run("list:0x1000000");
    let want = layout_of(&sequential.0);
    assert_eq!(
        want.len(),
        2 * (PAGES as usize - 1),
        "one page of each process unmapped"
    );
    for s in ["rr", "random:1", "random:2", "pct:3:2:4000", "pct:4:3:4000"] {
        let (w, runner) = run(s);
        assert!(
            runner.ended.iter().all(|(_, _, e)| *e == OpEnd::Done),
            "{s}: {:?}",
            runner.ended
        );
        assert_eq!(runner.ended.len(), 2 * queue(0).len(), "{s}");
        // The same pages with the same flags, whatever the interleaving.
        assert_eq!(layout_of(&w), want, "{s}");
        // Section 3: every PT-write #VE has exactly one of the five outcomes.
        let c = &w.counters;
        assert_eq!(
            c.ve_pt_write,
            c.ignored_irrelevant
                + c.ignored_cache
                + c.raised
                + c.emulated_by_introcore
                + c.rejected,
            "{s}"
        );
        assert_eq!(
            c.ve_total,
            c.ve_page_walk + c.ve_pt_write + c.ve_unknown,
            "{s}"
        );
        // I4: no VCPU is left inside the agent or in the protected view, semaphores clear.
        for v in &w.vcpus {
            assert_eq!(v.eptp_index, w.intro.untrusted, "{s}");
            let page = v.ve_info.unwrap();
            assert_eq!(
                vesim_model::ve_info::VeInfo::semaphore(&w.machine.mem, page),
                0,
                "{s}"
            );
        }
        // The 512 agent locks are all free.
        let locks = layout::AGENT_GPA.wrapping_add(layout::DATA_LOCKS);
        for i in 0..8 {
            assert_eq!(w.machine.mem.read_u64(locks.wrapping_add(8 * i)), 0, "{s}");
        }
    }
}

#[test]
fn interleavings_are_deterministic_by_schedule_string() {
    let (a, _) = run("random:9");
    let (b, _) = run("random:9");
    assert_eq!(a.counters, b.counters);
    assert_eq!(a.events, b.events);
}
