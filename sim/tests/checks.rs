//! The invariant checker after every step: `fixed` passes interleaved multi-VCPU workloads, and
//! each check can fail: Q9 (`hvmi` ignores XD changes) breaks I1, Q1 (`hvmi`'s break loop)
//! breaks I10.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim::check::{Checker, Invariant};
use vesim::guest::mm::bits;
use vesim::layout;
use vesim::ops::{GuestOp, OpRunner, RunFailure};
use vesim::quirks::Quirks;
use vesim::sched::{Schedule, Scheduler};
use vesim::world::{World, WorldConfig};
use vesim_model::vcpu::Gpr;
use vesim_model::VcpuId;

fn world(q: Quirks, vcpus: usize) -> World {
    let mut c = WorldConfig {
        quirks: q,
        ..WorldConfig::default()
    };
    c.guest.vcpus = vcpus;
    World::new(c).unwrap()
}

fn va(pid: u32, i: u64) -> u64 {
    layout::USER_BASE + (u64::from(pid) << 30) + i * 0x1000
}

fn workload(pid: u32) -> Vec<GuestOp> {
    let mut q = Vec::new();
    for i in 0..4 {
        q.push(GuestOp::Map {
            pid,
            va: va(pid, i),
            flags: bits::RW,
        });
        q.push(GuestOp::Hook {
            pid,
            va: va(pid, i),
        });
        q.push(GuestOp::Touch {
            pid,
            va: va(pid, i),
            write: true,
            value: i,
        });
        q.push(GuestOp::Trim {
            pid,
            va: va(pid, i),
        });
        q.push(GuestOp::Touch {
            pid,
            va: va(pid, i),
            write: false,
            value: 0,
        });
        q.push(GuestOp::SetCaching {
            pid,
            va: va(pid, i),
            attrs: bits::PWT,
            form: i as u32,
        });
        q.push(GuestOp::Protect {
            pid,
            va: va(pid, i),
            writable: false,
            executable: false,
        });
    }
    q.push(GuestOp::SwapOut {
        pid,
        va: va(pid, 0),
    });
    q.push(GuestOp::SwapIn {
        pid,
        va: va(pid, 0),
    });
    q.push(GuestOp::Unmap {
        pid,
        va: va(pid, 1),
    });
    q
}

#[test]
fn fixed_passes_every_check_under_every_scheduler() {
    for s in ["rr", "random:3", "random:4", "pct:7:2:3000", "pct:8:3:3000"] {
        let mut w = world(Quirks::fixed(), 2);
        let p0 = w.mm().create_process(true).unwrap();
        let p1 = w.mm().create_process(true).unwrap();
        let mut runner = OpRunner::new(vec![workload(p0), workload(p1)]);
        let mut sched = Scheduler::new(s.parse::<Schedule>().unwrap(), 2);
        let mut checker = Checker::new(&w);
        let r = runner.run_checked(&mut w, &mut sched, &mut checker, 1_000_000);
        assert!(r.is_ok(), "{s}: {r:?}");
        assert!(
            w.counters.ve_page_walk > 0,
            "{s}: the touches after trims walk"
        );
    }
}

#[test]
fn q9_hvmi_xd_change_breaks_i1() {
    let mut w = world(Quirks::hvmi(), 1);
    let p = w.mm().create_process(true).unwrap();
    let ops = vec![
        GuestOp::Map {
            pid: p,
            va: va(p, 0),
            flags: bits::RW,
        },
        GuestOp::Map {
            pid: p,
            va: va(p, 1),
            flags: bits::RW,
        },
        GuestOp::Hook {
            pid: p,
            va: va(p, 1),
        },
        GuestOp::Protect {
            pid: p,
            va: va(p, 1),
            writable: true,
            executable: false,
        },
    ];
    let mut runner = OpRunner::new(vec![ops.clone()]);
    let mut checker = Checker::new(&w);
    let r = runner.run_checked(
        &mut w,
        &mut Scheduler::new(Schedule::RoundRobin, 1),
        &mut checker,
        100_000,
    );
    match r {
        Err(RunFailure::Violations(v)) => assert_eq!(v[0].invariant, Invariant::I1, "{v:?}"),
        other => panic!("expected an I1 failure, got {other:?}"),
    }
    // The same operations in fixed pass.
    let mut w = world(Quirks::fixed(), 1);
    let p = w.mm().create_process(true).unwrap();
    let mut runner = OpRunner::new(vec![ops]);
    let mut checker = Checker::new(&w);
    let r = runner.run_checked(
        &mut w,
        &mut Scheduler::new(Schedule::RoundRobin, 1),
        &mut checker,
        100_000,
    );
    assert!(r.is_ok(), "{r:?}");
    let _ = p;
}

#[test]
fn q1_hvmi_break_loop_breaks_i10() {
    let mut q1 = Quirks::fixed();
    q1.q1_break_loop = true;
    // Q1 alone: the break repeats until I10. The whole hvmi profile also counts the break in
    // VeIgnoredTotal (Q18), so there I5 fails at the first break.
    for (q, fails) in [
        (q1, Some(Invariant::I10)),
        (Quirks::hvmi(), Some(Invariant::I5)),
        (Quirks::fixed(), None),
    ] {
        let mut w = world(q, 1);
        let code = 0xFFFF_F800_0030_0000;
        let data = 0xFFFF_F800_0040_0000;
        let cg = w
            .guest
            .map_new(&mut w.machine, code, vesim_model::paging::PteFlags::empty())
            .unwrap();
        w.guest
            .map_new(
                &mut w.machine,
                data,
                vesim_model::paging::PteFlags::WRITABLE,
            )
            .unwrap();
        // mov dword [rax], ebx: the agent refuses a 4-byte write (B37); in fixed introcore
        // emulates it (Q1), in hvmi it breaks and the #VE repeats forever.
        w.machine.mem.write(cg, &[0x89, 0x18]);
        let pte = w.guest.entry_gpa(&w.machine, data, 1).unwrap();
        w.engine().place_monitor(pte);
        w.engine().commit_hooks();
        w.vcpus[0].rip = code;
        let gla = w.guest.entry_gla(data, 1);
        w.vcpus[0].set_reg(Gpr::Rax, gla);
        w.vcpus[0].set_reg(Gpr::Rbx, 0x1000);
        let mut checker = Checker::new(&w);
        let mut failed = None;
        for _ in 0..5000 {
            if w.vcpus[0].rip == code + 2 {
                break;
            }
            checker.before_step(&w, VcpuId(0));
            let r = w.step(VcpuId(0));
            let v = checker.after_step(&w, VcpuId(0), &r);
            if !v.is_empty() {
                failed = Some(v);
                break;
            }
        }
        match (fails, failed) {
            (Some(i), Some(v)) => assert_eq!(v[0].invariant, i, "{v:?}"),
            (None, None) => assert_eq!(
                w.vcpus[0].rip,
                code + 2,
                "fixed: introcore emulates the write"
            ),
            (f, got) => panic!("expected {f:?}: {got:?}"),
        }
    }
}

#[test]
fn i4_and_i7_fail_when_the_semaphore_or_the_cache_is_forged() {
    let mut w = world(Quirks::fixed(), 1);
    let p = w.mm().create_process(true).unwrap();
    let ops = vec![
        GuestOp::Map {
            pid: p,
            va: va(p, 0),
            flags: bits::RW,
        },
        GuestOp::Hook {
            pid: p,
            va: va(p, 0),
        },
        GuestOp::Touch {
            pid: p,
            va: va(p, 0),
            write: false,
            value: 0,
        },
    ];
    let mut runner = OpRunner::new(vec![ops]);
    let mut sched = Scheduler::new(Schedule::RoundRobin, 1);
    let mut checker = Checker::new(&w);
    // The two maps and the hook run clean.
    assert!(runner
        .run_checked(&mut w, &mut sched, &mut checker, 2)
        .is_ok());
    // Forge the semaphore behind the hardware's back (no delivery).
    let page = w.vcpus[0].ve_info.unwrap();
    vesim_model::ve_info::VeInfo::set_semaphore(&mut w.machine.mem, page, 1);
    let r = runner.run_checked(&mut w, &mut sched, &mut checker, 1_000);
    match r {
        Err(RunFailure::Violations(v)) => {
            assert!(v.iter().any(|x| x.invariant == Invariant::I4), "{v:?}")
        }
        other => panic!("expected I4, got {other:?}"),
    }
    // Forge a cache slot for a monitored entry.
    let mut w = world(Quirks::fixed(), 1);
    let entry = w.guest.entry_gpa(&w.machine, layout::IDT_GVA, 1).unwrap();
    w.engine().place_monitor(entry);
    w.engine().update_cache(entry, false);
    let mut checker = Checker::new(&w);
    checker.before_step(&w, VcpuId(0));
    let v = checker.after_step(&w, VcpuId(0), &Ok(()));
    assert!(v.iter().any(|x| x.invariant == Invariant::I7), "{v:?}");
}

/// Runs built-in `name` with every check under `q`; the first failing invariant per seed.
fn builtin_failures(name: &str, q: Quirks, seeds: u64) -> Vec<Option<Invariant>> {
    let b = vesim::workload::Builtin::from_name(name).unwrap();
    (0..seeds)
        .map(|seed| {
            let params = vesim::workload::swarm_params(b, &Default::default(), seed).unwrap();
            let sc = vesim::workload::generate(b, &params, seed);
            let mut w = vesim::workload::build_world_quirks(b, &params, true, q, seed).unwrap();
            for p in &sc.processes {
                w.mm().create_process(*p).unwrap();
            }
            let mut runner = OpRunner::new(sc.queues);
            let mut sched = Scheduler::new(Schedule::Random { seed }, w.vcpus.len());
            let mut checker = Checker::new(&w);
            match runner.run_checked(&mut w, &mut sched, &mut checker, 50_000_000) {
                Ok(_) => None,
                Err(RunFailure::Violations(v)) => Some(v[0].invariant),
                Err(RunFailure::Stopped(c, s)) => panic!("seed {seed}: VCPU {c} stopped: {s:?}"),
            }
        })
        .collect()
}

/// Q16 (cache updates are no-ops once an unload is pending): in `unload-race` a hook placed
/// while the unload is pending leaves its entry in the cache the agent still reads, which I7
/// reports; `fixed` evicts and passes the same seeds.
#[test]
fn q16_unload_race_breaks_i7() {
    let q16 = Quirks {
        q16_no_evict_on_unload: true,
        ..Quirks::fixed()
    };
    let broken = builtin_failures("unload-race", q16, 40);
    assert!(broken.contains(&Some(Invariant::I7)), "{broken:?}");
    assert!(
        broken
            .iter()
            .all(|f| matches!(f, None | Some(Invariant::I7 | Invariant::I1))),
        "{broken:?}"
    );
    assert_eq!(
        builtin_failures("unload-race", Quirks::fixed(), 40),
        vec![None; 40]
    );
}

/// The invisible translation and decode caches never change a result (VE-SEMANTICS section
/// 1): every built-in, #VE on and off, gives the same trace hash and counters with both caches,
/// with every translation walked, and with every fetched instruction decoded.
#[test]
fn the_translation_and_decode_caches_change_no_result() {
    use vesim::workload::{build_world, generate, run_scenario, swarm_params, Builtin};
    for (_, b) in Builtin::ALL {
        for seed in 0..4 {
            let params = swarm_params(b, &Default::default(), seed).unwrap();
            let sc = generate(b, &params, seed);
            for ve in [true, false] {
                let run = |walk_all: bool, decode_all: bool| {
                    let mut w =
                        build_world(b, &params, ve, vesim::quirks::Profile::Fixed, seed).unwrap();
                    w.machine.config.no_translation_cache = walk_all;
                    w.machine.config.no_decode_cache = decode_all;
                    let w = run_scenario(w, &sc, &Schedule::Random { seed }).unwrap();
                    let lines: Vec<String> =
                        w.events.iter().map(vesim::trace::event_line).collect();
                    (lines, w.counters, w.tsc)
                };
                let cached = run(false, false);
                assert_eq!(
                    cached,
                    run(true, false),
                    "{} seed {seed} ve {ve}: TLB",
                    b.name()
                );
                assert_eq!(
                    cached,
                    run(false, true),
                    "{} seed {seed} ve {ve}: decode",
                    b.name()
                );
            }
        }
    }
}
