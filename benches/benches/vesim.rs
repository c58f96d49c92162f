//! vesim's benchmarks (criterion). `cargo bench -p vesim-benches` runs them all:
//!
//! - `pt_write`: per page-table-write form (MOV, LOCK CMPXCHG, LOCK XOR), `decode_floor` (the
//!   model's decode of the instruction alone: iced-x86 and the copy into vesim's `Insn`),
//!   `ve_event` (one filtered write end to end: walk, #VE delivery, agent entry, decode,
//!   emulation, relevance and cache lookup, store, exit) and `ept_exit_baseline` (the same
//!   write through the #VE-off exit path), in one group so the ratios are read off one run.
//! - `page_walk`, `cache_lookup`: the walker and the cache probe alone.
//! - `run_throughput`: `desktop-mix` and `paper-synthetic` end to end, in simulated steps
//!   (elements) per second, with the trace hash computed (`trace_on`) or not (`trace_off`).
//! - `scale`: one filtered write with 1K vs 1M mapped guest pages and 1 vs 64 VCPUs.
//! - `explore`: one whole `vesim explore` search per built-in small world (K = 1, `fixed`), in
//!   schedules per second.
//! - `cache_hit_rate`: not a timing. Each workload's cache operations, replayed on the HVMI
//!   geometry and on alternatives; printed as a table and written to
//!   `target/cache_hit_rate.json`.

// A benchmark whose set-up fails has nothing to measure: it stops there.
#![allow(clippy::expect_used, clippy::unwrap_used)]
// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vesim::layout;
use vesim_benches::{filtered_write, form_bytes, pt_write_world, CacheModel, Policy};
use vesim_model::cpu::decode;

const FORMS: [(u32, &str); 3] = [(0, "mov"), (1, "lock_cmpxchg"), (2, "lock_xor")];

fn pt_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("pt_write");
    for (form, name) in FORMS {
        let bytes = form_bytes(form);
        g.bench_function(BenchmarkId::new("decode_floor", name), |b| {
            b.iter(|| black_box(decode::decode(black_box(bytes), layout::MM_CODE_GVA)))
        });
        let (mut w, pid) = pt_write_world(true, 1, 0);
        // What is measured is a filtered write: check one before (a filter may skip the run).
        filtered_write(&mut w, pid, form, true);
        assert_eq!(w.counters.ignored_irrelevant, 1, "the write was filtered");
        let mut flip = true;
        g.bench_function(BenchmarkId::new("ve_event", name), |b| {
            b.iter(|| {
                flip = !flip;
                filtered_write(&mut w, pid, form, flip)
            })
        });
        let (mut w, pid) = pt_write_world(false, 1, 0);
        g.bench_function(BenchmarkId::new("ept_exit_baseline", name), |b| {
            b.iter(|| {
                flip = !flip;
                filtered_write(&mut w, pid, form, flip)
            })
        });
    }
    g.finish();
}

fn page_walk(c: &mut Criterion) {
    use vesim_model::ept::EptCheck;
    use vesim_model::paging::{walk, AccessType};
    let (mut w, _) = pt_write_world(true, 1, 0);
    // VCPU 0 in the kernel address space, as the guest runs.
    w.vcpus[0].cr3 = w.guest.cr3;
    let ctx = w.machine.walk_context(&w.vcpus[0], false);
    c.bench_function("page_walk", |b| {
        b.iter(|| {
            black_box(walk(
                &w.machine.mem,
                |_, _| EptCheck::Allowed,
                &ctx,
                vesim_model::Gla(layout::MM_CODE_GVA),
                AccessType::Read,
            ))
        })
    });
}

fn cache_lookup(c: &mut Criterion) {
    let (mut w, _) = pt_write_world(true, 1, 0);
    let present = vesim_model::Gpa(0x0200_0008);
    w.engine().update_cache(present, false);
    let absent = vesim_model::Gpa(0x0200_0010);
    let mut g = c.benchmark_group("cache_lookup");
    g.bench_function("hit", |b| {
        b.iter(|| {
            black_box(
                w.intro
                    .cache_contains(&w.machine, &w.guest, black_box(present)),
            )
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            black_box(
                w.intro
                    .cache_contains(&w.machine, &w.guest, black_box(absent)),
            )
        })
    });
    g.finish();
}

fn run_throughput(c: &mut Criterion) {
    use vesim::workload::{build_world, generate, resolve_params, run_scenario, Builtin};
    let mut g = c.benchmark_group("run_throughput");
    g.sample_size(10);
    for (b, sets) in [
        (Builtin::DesktopMix, vec![]),
        (
            Builtin::PaperSynthetic,
            vec![("pages", 100), ("changes", 100)],
        ),
    ] {
        let sets = sets.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let params = resolve_params(b, &sets).expect("parameters");
        let sc = generate(b, &params, 0);
        let schedule = vesim::sched::Schedule::Random { seed: 0 };
        let world =
            || build_world(b, &params, true, vesim::quirks::Profile::Fixed, 0).expect("world");
        let steps = run_scenario(world(), &sc, &schedule).expect("run").tsc;
        g.throughput(Throughput::Elements(steps));
        for trace in [false, true] {
            let id = BenchmarkId::new(b.name(), if trace { "trace_on" } else { "trace_off" });
            g.bench_function(id, |bn| {
                bn.iter_batched(
                    || {
                        let mut w = world();
                        if trace {
                            w.events.start_hash();
                        }
                        w
                    },
                    |w| {
                        let w = run_scenario(w, &sc, &schedule).expect("run");
                        black_box(w.events.hash());
                        w
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("scale");
    g.sample_size(20);
    for (name, vcpus, extra) in [
        ("1k_pages", 1, 1_000),
        ("1m_pages", 1, 1_000_000),
        ("1_vcpu", 1, 0),
        ("64_vcpus", 64, 0),
    ] {
        let (mut w, pid) = pt_write_world(true, vcpus, extra);
        let mut flip = false;
        g.bench_function(name, |b| {
            b.iter(|| {
                flip = !flip;
                filtered_write(&mut w, pid, 0, flip)
            })
        });
    }
    g.finish();
    // Memory per touched guest page: resident set growth over 100 000 one-byte writes.
    let pages = 100_000u64;
    let rss = || {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map(|p| p * 4096)
    };
    let mut mem = vesim_model::memory::GuestMemory::default();
    if let Some(before) = rss() {
        for i in 0..pages {
            mem.write(vesim_benches::frame_of(i), &[1]);
        }
        if let Some(after) = rss() {
            println!(
                "memory per touched guest page: {:.2} KiB ({} pages)",
                (after.saturating_sub(before)) as f64 / pages as f64 / 1024.0,
                pages
            );
        }
    }
    black_box(&mem);
}

/// A workload for the hit-rate table: name, built-in, parameters.
type Workload = (
    &'static str,
    vesim::workload::Builtin,
    Vec<(&'static str, u64)>,
);

fn cache_hit_rate(_: &mut Criterion) {
    use vesim::workload::{build_world, generate, resolve_params, run_scenario, Builtin};
    let designs: [(&str, u64, u64, usize, Policy); 6] = [
        ("hvmi 64x64x8 random", 64, 64, 8, Policy::Random),
        ("64x64x8 lru", 64, 64, 8, Policy::Lru),
        ("64x64x16 random", 64, 64, 16, Policy::Random),
        ("128x64x8 random", 128, 64, 8, Policy::Random),
        ("16x64x8 random", 16, 64, 8, Policy::Random),
        ("4x16x4 lru", 4, 16, 4, Policy::Lru),
    ];
    let workloads: [Workload; 4] = [
        (
            "paper-synthetic",
            Builtin::PaperSynthetic,
            vec![("pages", 512), ("changes", 4)],
        ),
        (
            "desktop-mix",
            Builtin::DesktopMix,
            vec![("processes", 16), ("pages", 512), ("ops", 20_000)],
        ),
        (
            "memory-pressure",
            Builtin::MemoryPressure,
            vec![("processes", 16), ("pages", 512), ("ops", 20_000)],
        ),
        (
            "unload-race",
            Builtin::UnloadRace,
            vec![("processes", 16), ("pages", 512), ("ops", 20_000)],
        ),
    ];
    let mut rows = Vec::new();
    println!("\ncache hit rate (hits / lookups) by design and workload");
    print!("{:<22}", "design");
    for (n, _, _) in &workloads {
        print!("{n:>17}");
    }
    println!();
    let mut logs = Vec::new();
    for (name, b, sets) in &workloads {
        let sets = sets.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let params = resolve_params(*b, &sets).expect("parameters");
        let mut w =
            build_world(*b, &params, true, vesim::quirks::Profile::Fixed, 0).expect("world");
        w.cache_log = Some(Vec::new());
        let w = run_scenario(
            w,
            &generate(*b, &params, 0),
            &vesim::sched::Schedule::Random { seed: 0 },
        )
        .expect("run");
        logs.push((*name, w.cache_log.unwrap_or_default()));
    }
    for (d, lines, buckets, ways, policy) in designs {
        print!("{d:<22}");
        for (wname, log) in &logs {
            let mut m = CacheModel::new(lines, buckets, ways, policy);
            for op in log {
                m.apply(*op);
            }
            print!("{:>16.1}%", m.hit_rate() * 100.0);
            rows.push(
                serde_json::json!({"design": d, "capacity": m.capacity(), "workload": wname,
                "lookups": m.lookups, "hits": m.hits, "hit_rate": m.hit_rate()}),
            );
        }
        println!();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("cache_hit_rate.json"),
        serde_json::to_string_pretty(&rows).unwrap_or_default(),
    );
}

/// Snapshot and reset: touch `n` data frames of a world with 1K or 1M mapped pages, then reset.
/// The cost should follow `n`, not the world's size; `touch_only` is the writes alone.
fn reset(c: &mut Criterion) {
    let mut g = c.benchmark_group("reset");
    g.sample_size(20);
    for (pages, name) in [(1_000u64, "1k_pages"), (1_000_000, "1m_pages")] {
        let (mut w, _) = pt_write_world(true, 1, pages);
        let snapshot = w.snapshot();
        for n in [1u64, 10, 100] {
            let touch = |w: &mut vesim::world::World, v: u64| {
                for i in 0..n {
                    let frame = layout::PROCESS_PAGES_START.wrapping_add(i * 0x1000);
                    w.machine.mem.write_u64(frame, v);
                }
            };
            g.bench_function(BenchmarkId::new(format!("{name}/touch_only"), n), |b| {
                let mut v = 0u64;
                b.iter(|| {
                    v += 1;
                    touch(&mut w, v)
                })
            });
            w.reset(&snapshot).expect("the snapshot is the world's");
            g.bench_function(
                BenchmarkId::new(format!("{name}/touch_and_reset"), n),
                |b| {
                    let mut v = 0u64;
                    b.iter(|| {
                        v += 1;
                        touch(&mut w, v);
                        w.reset(&snapshot).expect("the snapshot is the world's")
                    })
                },
            );
        }
    }
    g.finish();
}

/// `vesim explore` on each built-in small world at K = 1, one whole search per iteration, in
/// schedules per second (the elements); the pruning ratio is printed beside it.
fn explore(c: &mut Criterion) {
    use vesim::explore::{explore, ExploreWorld, Options, SCHEDULE_STEPS_MAX};
    let mut g = c.benchmark_group("explore");
    g.sample_size(10);
    for (name, _) in vesim::explore::BUILTINS {
        let w = ExploreWorld::builtin(name, &Default::default()).expect("a built-in world");
        let opts = Options {
            preemptions: 1,
            max_schedules: 100_000,
            steps_max: SCHEDULE_STEPS_MAX,
        };
        let quirks = vesim::quirks::Quirks::fixed();
        let r = explore(&w, quirks, &opts, 1, &|_| {}).expect("the world explores");
        println!(
            "explore/{name}: {} schedules, {} pruned ({:.1} % of {}), {} runs",
            r.schedules,
            r.pruned,
            100.0 * r.pruned as f64 / (r.schedules + r.pruned).max(1) as f64,
            r.schedules + r.pruned,
            r.runs
        );
        g.throughput(Throughput::Elements(r.schedules));
        g.bench_function(BenchmarkId::new("k1_fixed", name), |b| {
            b.iter(|| explore(&w, quirks, &opts, 1, &|_| {}).expect("the world explores"))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    reset,
    explore,
    pt_write,
    page_walk,
    cache_lookup,
    run_throughput,
    scale,
    cache_hit_rate
);
criterion_main!(benches);
