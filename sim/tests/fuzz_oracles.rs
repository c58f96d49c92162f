//! The fuzz oracles of `vesim::fuzzing` in plain `cargo test`: each on a bounded number of
//! generated inputs, on every committed corpus seed and every committed regression; the
//! corpus seeds are what their generator writes (from the instruction forms of the spec and
//! the built-in scenarios); and each case type reads back from the bytes it writes.
//!
//! `VESIM_WRITE_CORPUS=1 cargo test -p vesim --test fuzz_oracles` rewrites the seeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arbitrary::{Arbitrary, Unstructured};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use vesim::cli::oracle::{run_target, TARGETS};
use vesim::fuzzing::{self, AgentCase, HypercallCase, ScenarioCase, WalkCase};
use vesim::introcore::{call, HC_RAX, HC_RDI};
use vesim_model::vcpu::Gpr;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

/// Generated inputs: ChaCha bytes of lengths up to `max_len`, seeded per target.
fn generated(target: &str, n: usize, max_len: usize) -> Vec<Vec<u8>> {
    let seed = target
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = (rng.next_u64() % (max_len as u64 + 1)) as usize;
            let mut v = vec![0u8; len];
            rng.fill_bytes(&mut v);
            v
        })
        .collect()
}

#[test]
fn agent_instruction_on_generated_inputs() {
    for d in generated("agent_instruction", 300, 200) {
        fuzzing::agent_instruction(&d);
    }
    // Mostly-valid cases too: every seed with its registers and old value scrambled.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (_, case) in agent_seeds() {
        for _ in 0..20 {
            let mut c = case.clone();
            c.regs[Gpr::Rbx as usize] = rng.next_u64();
            c.old = rng.next_u64();
            c.rflags = rng.next_u64();
            c.flags = (rng.next_u64() & 3) as u8;
            fuzzing::agent_instruction(&c.to_data());
        }
    }
}

#[test]
fn hypercall_on_generated_inputs() {
    for d in generated("hypercall", 150, 800) {
        fuzzing::hypercall(&d);
    }
}

#[test]
fn page_walk_on_generated_inputs() {
    for d in generated("page_walk", 2000, 200) {
        fuzzing::page_walk(&d);
    }
}

#[test]
fn scenario_on_generated_inputs() {
    for d in generated("scenario", 40, 300) {
        fuzzing::scenario(&d);
    }
}

#[test]
fn scenario_file_on_generated_inputs() {
    for d in generated("scenario_file", 300, 300) {
        vesim::cli::oracle::scenario_file(&d);
    }
    // Seeds with bytes flipped: near-valid files.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (_, seed) in file_seeds() {
        for _ in 0..20 {
            let mut d = seed.clone();
            if !d.is_empty() {
                let i = (rng.next_u64() % d.len() as u64) as usize;
                d[i] = (rng.next_u64() % 128) as u8;
            }
            vesim::cli::oracle::scenario_file(&d);
        }
    }
}

// =============================================================================================
// Seeds
// =============================================================================================

/// The page-table-write forms of VE-SEMANTICS section 1 and one instance of each rejection
/// reason of section 2, as agent cases: the entry at RAX = 0x10000.
fn agent_seeds() -> Vec<(&'static str, AgentCase)> {
    let forms: [(&str, &[u8]); 24] = [
        ("mov_r64", &[0x48, 0x89, 0x18]),
        ("mov_imm32", &[0x48, 0xC7, 0x00, 0x03, 0x20, 0x00, 0x00]),
        ("xchg", &[0x48, 0x87, 0x18]),
        ("cmpxchg", &[0x48, 0x0F, 0xB1, 0x18]),
        ("lock_cmpxchg", &[0xF0, 0x48, 0x0F, 0xB1, 0x18]),
        ("lock_or_r64", &[0xF0, 0x48, 0x09, 0x18]),
        ("lock_and_r64", &[0xF0, 0x48, 0x21, 0x18]),
        ("lock_xor_r64", &[0xF0, 0x48, 0x31, 0x18]),
        ("or_imm8", &[0x48, 0x83, 0x08, 0x02]),
        ("and_imm32", &[0x48, 0x81, 0x20, 0xFD, 0xFF, 0xFF, 0xFF]),
        ("lock_bts_r64", &[0xF0, 0x48, 0x0F, 0xAB, 0x18]),
        ("lock_btr_imm8", &[0xF0, 0x48, 0x0F, 0xBA, 0x30, 0x01]),
        ("btc_imm8", &[0x48, 0x0F, 0xBA, 0x38, 0x3F]),
        ("stosq", &[0x48, 0xAB]),
        ("rej_segment_prefix", &[0x65, 0x48, 0x89, 0x18]),
        ("rej_rep", &[0xF3, 0x48, 0xAB]),
        (
            "rej_rip_relative",
            &[0x48, 0x89, 0x1D, 0x00, 0x00, 0x00, 0x00],
        ),
        ("rej_stack_access", &[0xFF, 0x30]),
        ("rej_size", &[0x89, 0x18]),
        ("rej_unsupported_add", &[0x48, 0x01, 0x18]),
        ("rej_not_memory", &[0x48, 0x89, 0xD8]),
        ("rej_misaligned", &[0x48, 0x89, 0x58, 0x01]),
        ("rej_decode_error", &[0x0F, 0xFF]),
        ("lock_bts_far_offset", &[0xF0, 0x48, 0x0F, 0xAB, 0x18]),
    ];
    let mut out = Vec::new();
    for (name, code) in forms {
        let rdi = if code == [0x48, 0xAB] { 0x10000 } else { 0 };
        let rbx = if name == "lock_bts_far_offset" {
            64 * 3 + 1
        } else {
            0x2003
        };
        for (suffix, old, flags) in [("", 0x1003u64, 2u8), ("_cached", 0x1003, 1)] {
            let regs = [(Gpr::Rax, 0x10000), (Gpr::Rbx, rbx), (Gpr::Rdi, rdi)];
            out.push((
                leak(format!("{name}{suffix}")),
                AgentCase::new(code, &regs, old, flags),
            ));
        }
    }
    out
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn hypercall_seeds() -> Vec<(&'static str, HypercallCase)> {
    let base = HypercallCase {
        flags: 3,
        rip: 0x2150,
        abi: [HC_RAX, HC_RDI, 0],
        rdx: call::RAISE_EPT,
        rbx: 0,
        rcx: 0,
        info: [0; 0x290],
    };
    // A PT-write #VE's hardware area: reason 48, qualification 0x1AA, a GLA and GPA.
    let mut raised = base.clone();
    raised.info[0..4].copy_from_slice(&48u32.to_le_bytes());
    raised.info[8..16].copy_from_slice(&0x1AAu64.to_le_bytes());
    raised.info[16..24].copy_from_slice(&0x10000u64.to_le_bytes());
    raised.info[24..32].copy_from_slice(&0x0300_0000u64.to_le_bytes());
    raised.info[0x260..0x263].copy_from_slice(&[0x48, 0x89, 0x18]);
    let mut walk = raised.clone();
    walk.info[8..16].copy_from_slice(&0xABu64.to_le_bytes());
    vec![
        ("raise_pt_write", raised),
        ("raise_page_walk", walk),
        (
            "nop",
            HypercallCase {
                rdx: 0,
                ..base.clone()
            },
        ),
        (
            "break",
            HypercallCase {
                rdx: 1,
                ..base.clone()
            },
        ),
        (
            "unknown",
            HypercallCase {
                rdx: 77,
                ..base.clone()
            },
        ),
        (
            "raise_from_guest",
            HypercallCase {
                flags: 2,
                rip: 0xFFFF_F800_0021_00D0,
                ..base.clone()
            },
        ),
        (
            "wrong_abi",
            HypercallCase {
                flags: 1,
                abi: [0x23, HC_RDI, 0],
                ..base
            },
        ),
    ]
}

fn walk_seeds() -> Vec<(&'static str, WalkCase)> {
    // Present, writable, user entries pointing at the next table in turn.
    let mut e = [0u64; 20];
    for (i, v) in e.iter_mut().enumerate() {
        *v = (((i as u64 / 4) + 1) << 12) | 0x7;
    }
    let mut large = e;
    large[8] |= 0x80;
    vec![
        (
            "present_read",
            WalkCase {
                entries: e,
                gla: 0,
                mode: 0,
                access: 0,
                ept: 0,
            },
        ),
        (
            "present_write_wp",
            WalkCase {
                entries: e,
                gla: 0x0101_0101,
                mode: 1,
                access: 1,
                ept: 0,
            },
        ),
        (
            "user_fetch_nxe",
            WalkCase {
                entries: e,
                gla: 0x0202_0202,
                mode: 0x28,
                access: 2,
                ept: 0,
            },
        ),
        (
            "large_page",
            WalkCase {
                entries: large,
                gla: 0x0303_0303,
                mode: 0x80,
                access: 1,
                ept: 0,
            },
        ),
        (
            "ept_refused",
            WalkCase {
                entries: e,
                gla: 0,
                mode: 0,
                access: 0,
                ept: 0x4,
            },
        ),
        (
            "zero",
            WalkCase {
                entries: [0; 20],
                gla: 0,
                mode: 0,
                access: 0,
                ept: 0,
            },
        ),
    ]
}

/// Scenario cases from the built-ins' own operations: the first operations of `desktop-mix`,
/// `attacks` and `unload-race` at a few seeds, mapped onto the case's (VCPU, kind, page,
/// value) form.
fn scenario_seeds() -> Vec<(&'static str, ScenarioCase)> {
    use vesim::ops::GuestOp;
    use vesim::workload::{generate, resolve_params, Builtin};
    let mut out = Vec::new();
    for (name, b) in [
        ("desktop_mix", Builtin::DesktopMix),
        ("attacks", Builtin::Attacks),
        ("unload_race", Builtin::UnloadRace),
    ] {
        for seed in 0..3u64 {
            let mut sets = BTreeMap::new();
            sets.insert("vcpus".to_string(), 2);
            sets.insert("processes".to_string(), 2);
            sets.insert("pages".to_string(), 8);
            sets.insert("ops".to_string(), 24);
            let params = resolve_params(b, &sets).unwrap();
            let sc = generate(b, &params, seed);
            let mut ops = [(0u8, 0u8, 0u8, 0u64); 24];
            let mut n = 0;
            for (cpu, q) in sc.queues.iter().enumerate() {
                for op in q {
                    if n == ops.len() {
                        break;
                    }
                    let page = |pid: u32, va: u64| ((pid as u8) << 4) | (((va >> 12) & 7) as u8);
                    let t = match *op {
                        GuestOp::Map { pid, va, .. } => (0, page(pid, va), 0),
                        GuestOp::Unmap { pid, va } => (2, page(pid, va), 0),
                        GuestOp::Protect {
                            pid,
                            va,
                            writable,
                            executable,
                        } => (
                            3,
                            page(pid, va),
                            u64::from(writable) | u64::from(executable) << 1,
                        ),
                        GuestOp::SetCaching {
                            pid,
                            va,
                            attrs,
                            form,
                        } => (4, page(pid, va), attrs | u64::from(form) << 8),
                        GuestOp::Trim { pid, va } => (5, page(pid, va), 0),
                        GuestOp::SwapOut { pid, va } => (6, page(pid, va), 0),
                        GuestOp::SwapIn { pid, va } => (7, page(pid, va), 0),
                        GuestOp::Touch { pid, va, value, .. } => (8, page(pid, va), value),
                        GuestOp::Hook { pid, va } => (9, page(pid, va), 0),
                        GuestOp::Attack { pid, arg, .. } => (10, page(pid, 0), arg),
                        GuestOp::Unload { delay } => (11, 0, u64::from(delay)),
                        GuestOp::Redeploy => (12, 0, 0),
                        GuestOp::CreateProcess { .. }
                        | GuestOp::Write { .. }
                        | GuestOp::MoveTable { .. } => continue,
                    };
                    ops[n] = (cpu as u8, t.0, t.1, t.2);
                    n += 1;
                }
            }
            out.push((
                leak(format!("{name}_{seed}")),
                ScenarioCase {
                    vcpus: 1,
                    setup: 1 | 0x10,
                    sched: (1, seed),
                    ops,
                    count: n as u8,
                },
            ));
        }
    }
    // The directed entry writes (kind 13: STOSQ, a 4-byte MOV, BTS past the entry) and a
    // page-table move to a low frame (kind 14) on a hooked page, then a protect and a touch.
    let mut ops = [(0u8, 0u8, 0u8, 0u64); 24];
    let directed = [
        (0, 0, 0),                     // map page 0
        (0, 0, 1),                     // map page 1
        (9, 0, 0),                     // hook page 0
        (13, 0, 0x10 << 8),            // stosq: PCD
        (13, 0, 1 | 0x10 << 8),        // mov32: PCD
        (13, 0, 2 | 2 << 8 | 1 << 16), // bts: bit 4 of the next entry
        (14, 0, 3 << 8),               // the table to low frame 3
        (3, 0, 2),                     // protect: read-only, executable
        (8, 0, 1),                     // touch: write
    ];
    for (i, &(kind, page, value)) in directed.iter().enumerate() {
        ops[i] = (0, kind, page, value);
    }
    out.push((
        "entry_writes_and_a_table_move",
        ScenarioCase {
            vcpus: 0,
            setup: 0,
            sched: (0, 0),
            ops,
            count: directed.len() as u8,
        },
    ));
    out
}

/// Scenario files (every built-in, small) and a recorded trace of each built-in.
fn file_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vesim::quirks::Profile;
    use vesim::sched::Schedule;
    use vesim::workload::Builtin;
    let mut out = Vec::new();
    for (name, b) in Builtin::ALL {
        let params: String = b
            .params()
            .iter()
            .map(|(k, _, max)| format!("{k} = {}\n", (*max).min(2)))
            .collect();
        let toml = format!(
            "builtin = \"{name}\"\nseed = 3\nprofile = \"fixed\"\nve = \"both\"\nschedule = \"random:3\"\n\n[params]\n{params}"
        );
        out.push((leak(format!("{name}.toml")), toml.into_bytes()));
        let sets: BTreeMap<String, u64> = b
            .params()
            .iter()
            .map(|(k, _, max)| ((*k).to_string(), (*max).min(2)))
            .collect();
        let tf = vesim::trace::record(
            b,
            &sets,
            &[true, false],
            Profile::Fixed,
            3,
            &Schedule::Random { seed: 3 },
        )
        .unwrap();
        out.push((leak(format!("{name}.trace")), tf.to_text().into_bytes()));
    }
    out
}

/// Every seed, by target: (file name, bytes).
fn seeds() -> BTreeMap<&'static str, Vec<(&'static str, Vec<u8>)>> {
    let mut m = BTreeMap::new();
    m.insert(
        "agent_instruction",
        agent_seeds()
            .into_iter()
            .map(|(n, c)| (n, c.to_data()))
            .collect(),
    );
    m.insert(
        "hypercall",
        hypercall_seeds()
            .into_iter()
            .map(|(n, c)| (n, c.to_data()))
            .collect(),
    );
    m.insert(
        "page_walk",
        walk_seeds()
            .into_iter()
            .map(|(n, c)| (n, c.to_data()))
            .collect(),
    );
    m.insert(
        "scenario",
        scenario_seeds()
            .into_iter()
            .map(|(n, c)| (n, c.to_data()))
            .collect(),
    );
    m.insert("scenario_file", file_seeds());
    m
}

#[test]
fn cases_read_back_from_the_bytes_they_write() {
    fn back<T: for<'a> Arbitrary<'a>>(d: &[u8]) -> T {
        T::arbitrary(&mut Unstructured::new(d)).unwrap()
    }
    for (n, c) in agent_seeds() {
        assert_eq!(back::<AgentCase>(&c.to_data()), c, "{n}");
    }
    for (n, c) in hypercall_seeds() {
        assert_eq!(back::<HypercallCase>(&c.to_data()), c, "{n}");
    }
    for (n, c) in walk_seeds() {
        assert_eq!(back::<WalkCase>(&c.to_data()), c, "{n}");
    }
    for (n, c) in scenario_seeds() {
        assert_eq!(back::<ScenarioCase>(&c.to_data()), c, "{n}");
    }
}

#[test]
fn committed_corpus_is_what_the_generator_writes() {
    let write = std::env::var_os("VESIM_WRITE_CORPUS").is_some();
    for (target, files) in seeds() {
        let dir = corpus_dir().join(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in files {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (VESIM_WRITE_CORPUS=1 writes it)", path.display())
            });
            assert!(
                committed == bytes,
                "{} is stale (VESIM_WRITE_CORPUS=1 rewrites it)",
                path.display()
            );
        }
    }
}

/// Every file of `corpus/<target>/` and `corpus/regressions/<target>/` through its oracle.
#[test]
fn every_corpus_and_regression_input_passes_its_oracle() {
    let mut ran = 0;
    for target in TARGETS {
        for dir in [
            corpus_dir().join(target),
            corpus_dir().join("regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                if f.extension().is_some_and(|e| e == "md") {
                    continue;
                }
                let data = std::fs::read(&f).unwrap();
                assert!(run_target(target, &data), "{target}");
                ran += 1;
            }
        }
    }
    assert!(ran >= 50, "only {ran} corpus inputs");
}

// =============================================================================================
// Regressions: every input a fuzzer ever failed on (`corpus/regressions/<target>/`)
// =============================================================================================

fn regression(target: &str, name: &str) {
    let path = corpus_dir().join("regressions").join(target).join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(run_target(target, &data));
}

/// RSP = 2^64 - 1 (not 8-aligned): the oracle's window of stack qwords below RSP started at
/// RSP - 0x100 and so missed the qword the stub pushed RBX into. The oracle now aligns the
/// window to whole qwords; the agent was right.
#[test]
fn regression_agent_instruction_unaligned_rsp_stack_window() {
    regression("agent_instruction", "unaligned_rsp_stack_window");
}

/// An agent-write attack after an unload completed: the unload gives the agent's pages back
/// to the guest (B97/B98 step 3), so the write landed and the I3 probe called it a breach. I3
/// is about the agent's pages while an agent is deployed; probes now stand down once it is
/// gone, and an attempt that ends its VCPU may crash the guest without an alert then.
#[test]
fn regression_scenario_attack_after_unload() {
    regression("scenario", "attack_after_unload");
}

/// A VCPU left with its semaphore set (its CPU index has no slot, so the agent returned at
/// once), then an unload took its information page away: the checker read the missing page's
/// semaphore as 0 and called it "cleared outside the agent's exit" (I4). The checker now
/// starts over whenever a VCPU's information page changes.
#[test]
fn regression_scenario_semaphore_of_an_unloaded_page() {
    regression("scenario", "semaphore_of_an_unloaded_page");
}

/// The quirk report reads scenario cases without `arbitrary`; it must read them as the fuzz
/// target does.
#[test]
fn scenario_cases_read_without_arbitrary_as_with_it() {
    let mut full = 0;
    for d in generated("scenario_from_data", 200, 2 * ScenarioCase::LEN) {
        let want = ScenarioCase::arbitrary(&mut Unstructured::new(&d));
        if d.len() >= ScenarioCase::LEN {
            full += 1;
            assert_eq!(
                Ok(ScenarioCase::from_data(&d)),
                want.map_err(|_| ()),
                "{d:?}"
            );
        }
    }
    assert!(full >= 50, "{full} full-length inputs");
    for (_, c) in scenario_seeds() {
        assert_eq!(ScenarioCase::from_data(&c.to_data()), c);
    }
}
