//! Fuzz oracles (feature `fuzzing`). Each takes the fuzzer's bytes, builds a case from them
//! with `arbitrary`, runs it and panics when an invariant does not hold; the `fuzz/` targets
//! are one call each, and the tests run every oracle on generated inputs and on the committed
//! corpus (`corpus/<target>/`, `corpus/regressions/<target>/`).
//!
//! - [`agent_instruction`]: one #VE through the agent (`fixed`).
//! - [`hypercall`]: one VMCALL at an arbitrary RIP with an arbitrary information page.
//! - [`page_walk`]: the walker against the independent translator, and the agent's page-walk
//!   handler against the A/D rules.
//! - [`scenario`]: guest operations on 1–4 VCPUs under an arbitrary schedule, every check.
//! - `scenario_file`: bytes as a scenario file and as a trace file, through the command
//!   line's entry points; it lives with the command line (`vesim::cli::oracle`).
//!
//! Each case type has `to_data`, the bytes `arbitrary` turns back into the same case, so that
//! corpus seeds can be written from real cases (a test checks the round trip).

use crate::agent::AgentOutcome;
use crate::guest::mm::bits;
use crate::layout;
use crate::ops::GuestOp;
use crate::quirks::{Profile, Quirks, MONITORED_BITS_FIXED};
use crate::scenario_case::le;
use crate::verdict::{self, VerdictRequest};
use crate::world::{Reusable, World, WorldConfig};
use arbitrary::{Arbitrary, Unstructured};
use std::cell::RefCell;
use std::collections::BTreeMap;
use vesim_model::ept::EptFlags;
use vesim_model::vcpu::{Gpr, Rflags};
use vesim_model::VcpuId;
use vesim_model::{Gfn, Gpa, Outcome};

/// Base worlds of one kind, one per shape, for this thread: each built on first use (building
/// one deploys the agent, which costs more than most cases) and reset to its snapshot before
/// each later case, in time proportional to what the case before changed (`None` inside: the
/// world cannot be built).
type Pool<const N: usize> = RefCell<[Option<Option<Reusable>>; N]>;

thread_local! {
    /// By shape: `vcpus` 1..=4 × KPTI off/on ([`with_world`]).
    static WORLDS: Pool<8> = RefCell::new(Default::default());
    /// By KPTI setting: a protected process with eight pages mapped and their translations
    /// hooked ([`page_walk_handler`]).
    static WALK_WORLDS: Pool<2> = const { RefCell::new([None, None]) };
}

/// Runs `case` on the pool's world `i`, built by `build` the first time (`None`: it cannot be
/// built or reset, or `i` is out of range). The world is marked at its snapshot, so
/// [`vesim_model::memory::GuestMemory::dirtied`] lists every frame the case wrote.
fn with_pooled<const N: usize, R>(
    pool: &'static std::thread::LocalKey<Pool<N>>,
    i: usize,
    build: impl FnOnce() -> Option<World>,
    case: impl FnOnce(&mut World) -> R,
) -> Option<R> {
    pool.with(|cell| {
        let mut worlds = cell.try_borrow_mut().ok()?;
        let slot = worlds.get_mut(i)?;
        let base = slot.get_or_insert_with(|| build().map(Reusable::new));
        base.as_mut()?.run(case).ok()
    })
}

/// Runs `case` on a fresh world for `vcpus` VCPUs (clamped to 1..=4) with KPTI on or off, in
/// `fixed` ([`with_pooled`]).
fn with_world<R>(vcpus: usize, kpti: bool, case: impl FnOnce(&mut World) -> R) -> Option<R> {
    let vcpus = vcpus.clamp(1, 4);
    let build = || {
        let mut c = WorldConfig {
            quirks: Quirks::fixed(),
            ..WorldConfig::default()
        };
        c.guest.vcpus = vcpus;
        c.guest.kpti = kpti;
        World::new(c).ok()
    };
    with_pooled(&WORLDS, (vcpus - 1) * 2 + usize::from(kpti), build, case)
}

// =============================================================================================
// agent_instruction
// =============================================================================================

/// One page-table write as the agent finds it.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct AgentCase {
    /// How many of `bytes` are the instruction (mod 15, plus 1).
    pub len: u8,
    /// Instruction bytes.
    pub bytes: [u8; 15],
    /// RAX..R15 (RSP is the kernel stack's unless `flags` bit 2).
    pub regs: [u64; 16],
    /// RFLAGS (the arithmetic flags, DF, IF are kept).
    pub rflags: u64,
    /// The entry's value before the write.
    pub old: u64,
    /// Bit 0: the entry is in the cache; bit 1: monitored; bit 2: RSP from `regs`.
    pub flags: u8,
}

impl AgentCase {
    /// The bytes `arbitrary` reads back as this case.
    pub fn to_data(&self) -> Vec<u8> {
        let mut out = vec![self.len];
        out.extend_from_slice(&self.bytes);
        for r in self.regs {
            le(&mut out, r);
        }
        le(&mut out, self.rflags);
        le(&mut out, self.old);
        out.push(self.flags);
        out
    }

    /// A case for instruction `code` with `regs` given by name.
    pub fn new(code: &[u8], regs: &[(Gpr, u64)], old: u64, flags: u8) -> Self {
        let mut bytes = [0u8; 15];
        let n = code.len().min(15);
        bytes[..n].copy_from_slice(&code[..n]);
        let mut r = [0u64; 16];
        for (g, v) in regs {
            r[*g as usize] = *v;
        }
        AgentCase {
            len: n.saturating_sub(1) as u8,
            bytes,
            regs: r,
            rflags: 0x2,
            old,
            flags,
        }
    }

    fn request(&self) -> VerdictRequest {
        let n = usize::from(self.len % 15) + 1;
        let mut regs: BTreeMap<Gpr, u64> = Gpr::ALL
            .iter()
            .map(|g| (*g, self.regs[*g as usize]))
            .collect();
        if self.flags & 4 == 0 {
            regs.remove(&Gpr::Rsp);
        }
        VerdictRequest {
            bytes: self.bytes[..n].to_vec(),
            regs,
            rflags: self.rflags & 0xED5,
            old: self.old,
            cached: self.flags & 1 != 0,
            monitored: self.flags & 2 != 0,
            profile: Profile::Fixed,
            ..VerdictRequest::default()
        }
    }
}

/// Whether `g` is outside the agent image.
fn outside_agent(g: Gfn) -> bool {
    let agent = layout::AGENT_GPA.gfn().0..layout::AGENT_GPA.gfn().0 + layout::AGENT_SIZE / 0x1000;
    !agent.contains(&g.0)
}

/// A copy of every frame outside the agent image that was written since the world's mark
/// (`None`: the frame does not exist).
fn dirtied_outside_agent(w: &World) -> BTreeMap<Gfn, Option<Vec<u8>>> {
    let mem = &w.machine.mem;
    mem.dirtied()
        .filter(|(g, _)| outside_agent(*g))
        .map(|(g, _)| (g, mem.frame(g).map(|f| f.to_vec())))
        .collect()
}

fn is_table_frame(g: Gfn) -> bool {
    (layout::GUEST_TABLES_START.gfn().0..layout::GUEST_TABLES_END.gfn().0).contains(&g.0)
}

/// One #VE through the agent for an arbitrary instruction, registers, flags, old value, cache
/// and monitor state, in `fixed`. Invariants: no panic; the agent writes nothing outside its
/// own pages but the faulting 8-byte entry, the interrupted stack below RSP and A/D bits of
/// paging-structure entries; an accepted instruction matches the reference CPU (I2); a
/// relevant write to a monitored entry reaches introcore (I1).
pub fn agent_instruction(data: &[u8]) {
    let Ok(case) = AgentCase::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let req = case.request();
    // The frames the request's set-up wrote, as the write found them; every other frame is
    // as the base world's snapshot holds it (`GuestMemory::dirtied`), so only frames written
    // since the mark can differ.
    let observed = verdict::run_observed(
        &req,
        |w| (dirtied_outside_agent(w), w.vcpus[0].gpr[4]),
        |(before, rsp), v, w| {
            let mem = &w.machine.mem;
            let zero = [0u8; 4096];
            // The qwords below RSP (RSP need not be aligned: the window is in whole qwords),
            // found only when some qword changed.
            let mut stack_gpas: Option<Vec<Gpa>> = None;
            let mut wrong = None;
            for (g, at_mark) in mem.dirtied().filter(|(g, _)| outside_agent(*g)) {
                let was: &[u8] = match before.get(&g) {
                    Some(f) => f.as_deref().unwrap_or(&zero),
                    None => at_mark.map_or(&zero[..], |f| &f[..]),
                };
                let now: &[u8] = mem.frame(g).map_or(&zero[..], |f| &f[..]);
                if was == now {
                    continue;
                }
                let mask = if is_table_frame(g) {
                    !0x60u64
                } else {
                    u64::MAX
                };
                let qwords = was.chunks_exact(8).zip(now.chunks_exact(8));
                for (q, (x, y)) in qwords.enumerate() {
                    let x = u64::from_le_bytes(x.try_into().unwrap_or([0; 8]));
                    let y = u64::from_le_bytes(y.try_into().unwrap_or([0; 8]));
                    if (x ^ y) & mask == 0 {
                        continue;
                    }
                    let at = g.gpa().wrapping_add(q as u64 * 8);
                    // The instruction's own 8 bytes (which a misaligned write spreads over
                    // two qwords), and the interrupted stack.
                    if at.0 == v.gpa & !7 || at.0 == v.gpa.wrapping_add(7) & !7 {
                        continue;
                    }
                    let stack = stack_gpas.get_or_insert_with(|| {
                        let base = (rsp & !7).wrapping_sub(0x100);
                        (0..0x100u64)
                            .step_by(8)
                            .filter_map(|o| w.guest.phys(&w.machine, base.wrapping_add(o)))
                            .collect()
                    });
                    if !stack.contains(&at) {
                        wrong.get_or_insert((at, x, y));
                    }
                }
            }
            let entry = Gpa(v.gpa & !7);
            let callback = w.intro.callbacks.iter().any(|c| c.entry == entry);
            (wrong, callback)
        },
    );
    let Ok((v, (wrong, callback))) = observed else {
        return;
    };
    // Writes outside the agent's pages.
    if let Some((at, x, y)) = wrong {
        panic!("{case:?}: {at} changed {x:#x} -> {y:#x} outside the agent's pages");
    }
    if v.stop.is_some() {
        return;
    }
    // I2: an accepted instruction does what the reference CPU does.
    let accepted = matches!(
        v.outcome,
        Some(AgentOutcome::IgnoredIrrelevant | AgentOutcome::IgnoredCache | AgentOutcome::Raised)
    );
    if accepted {
        let ereq = crate::exec::ExecRequest {
            bytes: req.bytes.clone(),
            regs: w_regs(&req),
            rflags: req.rflags,
            mem: [(v.gla, req.old)].into_iter().collect(),
            rip: req.rip,
        };
        if let Ok(r) = crate::exec::run(&ereq) {
            if r.outcome == Outcome::Executed {
                let rf = Rflags::RF.bits();
                assert_eq!(v.entry, r.mem[&v.gla], "{case:?}: I2 entry");
                assert_eq!(v.rip, r.rip, "{case:?}: I2 RIP");
                assert_eq!(v.rflags & !rf, r.rflags & !rf, "{case:?}: I2 RFLAGS");
                for g in Gpr::ALL {
                    assert_eq!(
                        v.regs[g as usize],
                        r.regs[g as usize],
                        "{case:?}: I2 {}",
                        g.name()
                    );
                }
            }
        }
    }
    // I1: a relevant change of a monitored entry reaches introcore. (A case that is both
    // monitored and cached forges what I7 forbids; the agent then rightly trusts the cache.)
    let relevant = (req.old ^ v.entry) & MONITORED_BITS_FIXED != 0 && (req.old | v.entry) & 1 != 0;
    if req.monitored && !req.cached && relevant {
        assert!(
            callback,
            "{case:?}: I1: {:#x} -> {:#x} of a monitored entry without a callback ({:?})",
            req.old, v.entry, v.outcome
        );
    }
}

fn w_regs(req: &VerdictRequest) -> BTreeMap<Gpr, u64> {
    let mut r = req.regs.clone();
    r.entry(Gpr::Rsp).or_insert(layout::VERDICT_DEFAULT_RSP);
    r
}

// =============================================================================================
// hypercall
// =============================================================================================

/// One VMCALL as introcore receives it.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct HypercallCase {
    /// Bit 0: RIP inside the agent (at `rip` modulo the image), else at `rip` as given; bit 1:
    /// RAX, RDI and RSI are the introcore ABI's (B33) rather than `abi`.
    pub flags: u8,
    /// The RIP (or agent offset).
    pub rip: u64,
    /// RAX, RDI, RSI when `flags` bit 1 is clear.
    pub abi: [u64; 3],
    /// RDX (the call number; small values are the known calls).
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// The first 0x290 bytes of the VCPU's information page (hardware area, registers,
    /// instruction bytes, old and new values, counters).
    pub info: [u8; 0x290],
}

impl HypercallCase {
    /// The bytes `arbitrary` reads back as this case.
    pub fn to_data(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        le(&mut out, self.rip);
        for a in self.abi {
            le(&mut out, a);
        }
        for v in [self.rdx, self.rbx, self.rcx] {
            le(&mut out, v);
        }
        out.extend_from_slice(&self.info);
        out
    }
}

/// The untrusted view's and the protected view's entries of every agent frame.
fn agent_rights(w: &World) -> Vec<(Option<EptFlags>, Option<EptFlags>)> {
    (0..layout::AGENT_SIZE)
        .step_by(0x1000)
        .map(|o| {
            let g = layout::AGENT_GPA.wrapping_add(o).gfn();
            let f = |v| w.machine.ept.view(v).map(|x| x.entry(g).flags());
            (f(w.intro.untrusted), f(w.intro.protected))
        })
        .collect()
}

/// One VMCALL from an arbitrary RIP (inside the agent or not) with arbitrary registers and
/// information page. Invariants: no panic; the agent's EPT rights are unchanged (no access is
/// granted); a call that is not introcore's (wrong ABI registers, or a RIP outside the agent)
/// gets -ENOSYS and changes nothing but RAX and RIP; an unknown call number from the agent
/// gets NOT_SUPPORTED (B103).
pub fn hypercall(data: &[u8]) {
    let Ok(case) = HypercallCase::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    with_world(1, false, |w| hypercall_in(w, &case));
}

fn hypercall_in(w: &mut World, case: &HypercallCase) {
    let Some(page) = w.vcpus[0].ve_info else {
        return;
    };
    w.machine.mem.write(page, &case.info);
    let rip = if case.flags & 1 != 0 {
        layout::AGENT_GVA + case.rip % layout::AGENT_SIZE
    } else {
        case.rip
    };
    let (rax, rdi, rsi) = if case.flags & 2 != 0 {
        (crate::introcore::HC_RAX, crate::introcore::HC_RDI, 0)
    } else {
        (case.abi[0], case.abi[1], case.abi[2])
    };
    {
        let v = &mut w.vcpus[0];
        v.rip = rip;
        v.set_reg(Gpr::Rax, rax);
        v.set_reg(Gpr::Rdi, rdi);
        v.set_reg(Gpr::Rsi, rsi);
        v.set_reg(Gpr::Rdx, case.rdx);
        v.set_reg(Gpr::Rbx, case.rbx);
        v.set_reg(Gpr::Rcx, case.rcx);
    }
    let rights = agent_rights(w);
    // Only frames written since the snapshot can differ from it: the set-up wrote the
    // information page (inside the agent), so outside the agent nothing is dirty yet.
    let mem_before = dirtied_outside_agent(w);
    let vcpu_before = w.vcpus[0].clone();
    let callbacks = w.intro.callbacks.len();
    w.engine().hypercall(VcpuId(0));
    assert_eq!(agent_rights(w), rights, "{case:?}: agent rights changed");
    let ours = rax == crate::introcore::HC_RAX && rdi == crate::introcore::HC_RDI && rsi == 0;
    let v = &w.vcpus[0];
    if !ours || !crate::layout::in_agent(rip) {
        assert_eq!(v.reg(Gpr::Rax), crate::introcore::ENOSYS, "{case:?}");
        assert_eq!(w.intro.callbacks.len(), callbacks, "{case:?}");
        let mem = &w.machine.mem;
        let unchanged = mem
            .dirtied()
            .filter(|(g, _)| outside_agent(*g))
            .all(|(g, at_mark)| {
                let was = match mem_before.get(&g) {
                    Some(f) => f.as_deref(),
                    None => at_mark.map(|f| &f[..]),
                };
                was == mem.frame(g).map(|f| &f[..])
            });
        assert!(unchanged, "{case:?}: memory changed");
        let mut expect = vcpu_before;
        expect.set_reg(Gpr::Rax, crate::introcore::ENOSYS);
        expect.rip = rip.wrapping_add(3);
        assert_eq!(*v, expect, "{case:?}: VCPU state");
    } else if case.rdx > 3 {
        assert_eq!(
            v.reg(Gpr::Rax),
            crate::introcore::STATUS_NOT_SUPPORTED,
            "{case:?}: unknown call"
        );
        assert_eq!(w.intro.callbacks.len(), callbacks, "{case:?}");
    }
}

// =============================================================================================
// page_walk
// =============================================================================================

/// Random paging structures and one translation.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WalkCase {
    /// Entries: PML4 slots then, for each further table, its slots (see
    /// [`vesim_model::reference::SLOTS`]); low 3 bits of an entry pick its target table.
    pub entries: [u64; 20],
    /// The linear address.
    pub gla: u64,
    /// Bits: 0 WP, 1 SMEP, 2 SMAP, 3 NXE, 4 AC, 5 user, 6 implicit, 7 all levels.
    pub mode: u8,
    /// 0 read, 1 write, 2 fetch.
    pub access: u8,
    /// Bit i: EPT refuses the reads of table frame i.
    pub ept: u8,
}

impl WalkCase {
    /// The bytes `arbitrary` reads back as this case.
    pub fn to_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in self.entries {
            le(&mut out, e);
        }
        le(&mut out, self.gla);
        out.extend_from_slice(&[self.mode, self.access, self.ept]);
        out
    }
}

/// The walker against the independent translator: for arbitrary tables, EPT refusals, mode
/// and access, the same outcome (frame, page size, entries read, A/D writes, or the same #PF
/// error code, or the same refused entry).
pub fn page_walk(data: &[u8]) {
    use vesim_model::memory::GuestMemory;
    use vesim_model::paging::AccessType;
    use vesim_model::reference::{model_translate, reference_translate, Paging, FRAMES, SLOTS};
    let Ok(case) = WalkCase::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut mem = GuestMemory::default();
    let mut k = 0;
    for f in FRAMES {
        for s in SLOTS {
            let e = case.entries[k % case.entries.len()];
            // The low bits of the address field pick a table, so walks go somewhere.
            let target = FRAMES[(e >> 12) as usize % FRAMES.len()];
            let v = (e & !0x000F_FFFF_FFFF_F000) | (e & 0x000F_C000_0000_0000) | target;
            mem.write_u64(Gpa(f + s * 8), v);
            k += 1;
        }
    }
    let gla = {
        // Indices among the filled slots at every level.
        let idx = |i: u32| SLOTS[((case.gla >> (8 * i)) as usize) % SLOTS.len()];
        let raw =
            (idx(0) << 39) | (idx(1) << 30) | (idx(2) << 21) | (idx(3) << 12) | (case.gla & 0xFFF);
        vesim_model::Gla(raw).canonicalize().0
    };
    let p = Paging {
        cr3: FRAMES[0],
        wp: case.mode & 1 != 0,
        smep: case.mode & 2 != 0,
        smap: case.mode & 4 != 0,
        nxe: case.mode & 8 != 0,
        ac: case.mode & 16 != 0,
        user: case.mode & 32 != 0,
        implicit: case.mode & 64 != 0,
        all_levels: case.mode & 128 != 0,
    };
    let access = match case.access % 3 {
        0 => AccessType::Read,
        1 => AccessType::Write,
        _ => AccessType::Fetch,
    };
    let denied = |g: u64| {
        FRAMES
            .iter()
            .position(|f| *f == g & !0xFFF)
            .is_some_and(|i| case.ept & (1 << i) != 0)
    };
    let want = reference_translate(&mem, &p, gla, access, denied);
    let got = model_translate(&mem, &p, gla, access, denied);
    assert_eq!(got, want, "{case:?}: GLA {gla:#x}");
    page_walk_handler(&case);
}

/// The agent's page-walk handler (B61–B67 with Q10 off): a touch of a monitored page whose
/// entries lack A (or D) is a page-walk #VE, and when the touch completes every level has A,
/// the leaf has D exactly when the touch wrote, and no other bit of any entry changed.
fn page_walk_handler(case: &WalkCase) {
    let kpti = case.mode & 0x40 != 0;
    let build = || {
        let mut c = WorldConfig::default();
        c.guest.kpti = kpti;
        let mut w = World::new(c).ok()?;
        let pid = w.mm().create_process(true).ok()?;
        for i in 0..8 {
            let va = layout::USER_BASE + i * 0x1000;
            w.mm_map(VcpuId(0), pid, va, bits::RW).ok()?;
            crate::ops::OpRunner::start_op(&mut w, VcpuId(0), GuestOp::Hook { pid, va }).ok()?;
        }
        Some(w)
    };
    with_pooled(&WALK_WORLDS, usize::from(kpti), build, |w| {
        walk_handler_in(w, case)
    });
}

fn walk_handler_in(w: &mut World, case: &WalkCase) {
    let pid = 0;
    let va = layout::USER_BASE + (case.gla & 0x7) * 0x1000;
    // Clear A and D on the levels `ept` picks (bit i: level i + 1).
    let mut before = [0u64; 4];
    for level in 1..=4u8 {
        let Some((v, gpa)) = w.guest.entry_value(&w.machine, pid, va, level) else {
            return;
        };
        let v = if case.ept & (1 << (level - 1)) != 0 {
            v & !(bits::A | bits::D)
        } else {
            v
        };
        w.machine.mem.write_u64(gpa, v);
        before[usize::from(level - 1)] = v;
    }
    let write = case.access % 2 == 1;
    if w.mm_touch(VcpuId(0), pid, va, write, case.gla).is_err() {
        return;
    }
    for level in 1..=4u8 {
        let Some((v, _)) = w.guest.entry_value(&w.machine, pid, va, level) else {
            return;
        };
        let old = before[usize::from(level - 1)];
        let d = level == 1 && write;
        let want = old | bits::A | if d { bits::D } else { 0 };
        let mask = if level == 1 { u64::MAX } else { !bits::D };
        assert_eq!(
            v & mask,
            want & mask,
            "{case:?}: level {level} after a {} touch",
            if write { "write" } else { "read" }
        );
    }
}

// =============================================================================================
// scenario
// =============================================================================================

pub use crate::scenario_case::ScenarioCase;

/// Steps a `scenario` case may take. 24 operations take a few thousand; the bound matters for
/// the unload that waits forever behind a VCPU parked in agent code (B140), which the fuzzer
/// would otherwise spend seconds on per input.
pub const SCENARIO_STEPS_MAX: u64 = 250_000;

/// Arbitrary guest operations (memory-manager work, hooks, isolation attempts, unloads and
/// redeploys) on 1–4 VCPUs under an arbitrary schedule, in `fixed`, with every invariant
/// checked after every step: none may fail, and no VCPU may stop.
pub fn scenario(data: &[u8]) {
    let Ok(case) = ScenarioCase::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let (vcpus, protected, kpti, schedule, queues) = case.build();
    let checked = with_world(vcpus, kpti, |w| {
        for p in &protected {
            w.mm().create_process(*p).ok()?;
        }
        let sc = crate::workload::Scenario {
            processes: Vec::new(),
            queues,
        };
        Some(crate::runner::run_world(w, &sc, &schedule, SCENARIO_STEPS_MAX, None).checked)
    });
    match checked.flatten() {
        None | Some(crate::runner::Checked::Passed) => {}
        Some(c) => panic!("{case:?}: {c}"),
    }
}
