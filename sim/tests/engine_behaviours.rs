//! One test per behaviour of the introcore engine around the agent (HVMI-BEHAVIOURS.md
//! B80–B140) that `agent_behaviours.rs` does not already cover, the quirks Q16, Q24 and Q27 in
//! both settings (VE-SEMANTICS.md section 2), the isolation invariant I3 (ARCHITECTURE.md) and
//! the deploy / use / unload / redeploy lifecycle.
//!
//! Every expected value is worked out by hand from the spec text or the hardware rules; none
//! is copied from a run of the code under test. Page-table writes are real guest instructions
//! executed by the CPU model (a `mov [rax], rbx` on a code page of the fixture, or the guest
//! memory manager's own instructions), so they fault, #VE and exit exactly as hardware would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use vesim::agent::{rip, AgentOutcome};
use vesim::guest::mm::bits;
use vesim::introcore::hooks::{HookCounts, HookKind};
use vesim::introcore::lifecycle::{InitError, UnloadError};
use vesim::introcore::pts::{Owner, SwapRecord, TranslationId};
use vesim::introcore::{retpoline, Introcore};
use vesim::layout::{self, mm_code, veinfo};
use vesim::quirks::Quirks;
use vesim::world::{Event, Stop, World, WorldConfig, WorldError};
use vesim_model::ept::{EptEntry, EptFlags, EptQualification, EptView};
use vesim_model::paging::{self_map_entry_address, PageSize, PteFlags};
use vesim_model::vcpu::Gpr;
use vesim_model::{EptViolation, Gfn, Gla, Gpa, Outcome, ViewId};

// ---------------------------------------------------------------------------------------------
// Constants of the spec (HVMI-BEHAVIOURS section C, Intel SDM), written out by hand.
// ---------------------------------------------------------------------------------------------

/// VMCALL RDX of RAISE_EPT (C).
const RAISE_EPT: u64 = 3;
/// Paging bits (C).
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
/// PFN mask (C).
const PFN: u64 = 0x000F_FFFF_FFFF_F000;
/// The qualification of a page-walk A/D write to a write-protected (R-X) table page: RD | WR |
/// readable | executable | GLA valid, bit 8 clear (INTEL-VMX.md §4.3, "0xAB").
const QUAL_WALK: u64 = 0xAB;
/// The self-map index of the guest (VE-SEMANTICS section 2, default).
const S: u64 = 0x1ED;
/// The fixture's code and data pages (kernel half, PML4 index 0x1F0).
const CODE: u64 = 0xFFFF_F800_0030_0000;
const DATA: u64 = 0xFFFF_F800_0040_0000;
/// A second data page with its own page table (PML4 index 0x100).
const DATA2: u64 = 0xFFFF_8000_0000_0000;
/// A present, writable, accessed, dirty PTE value (PFN 0x1234).
const OLD: u64 = 0x0000_0000_0123_4063;
/// Frames no guest window hands out (layout.rs): free for remaps and new tables.
const FREE_FRAME: Gpa = Gpa(0x0500_0000);
const FREE_FRAME2: Gpa = Gpa(0x0500_1000);
/// A frame of the process-table window far above anything the few processes here allocate.
const SPARE_TABLE: Gpa = Gpa(0x027F_0000);
/// A frame of the process-page window far above anything allocated here.
const SPARE_PAGE: Gpa = Gpa(0x1F00_0000);
/// Number of agent pages.
const AGENT_PAGES: u64 = layout::AGENT_SIZE / 0x1000;

/// `mov [rax], rbx`
const MOV_STORE: [u8; 3] = [0x48, 0x89, 0x18];
/// `mov rbx, [rax]`
const MOV_LOAD: [u8; 3] = [0x48, 0x8B, 0x18];
/// `vmfunc`
const VMFUNC: [u8; 3] = [0x0F, 0x01, 0xD4];
/// `vmcall`
const VMCALL: [u8; 3] = [0x0F, 0x01, 0xC1];
/// `mov [rdx], rbx`
const MOV_STORE_RDX: [u8; 3] = [0x48, 0x89, 0x1A];

const RWX: EptFlags = EptFlags::READ
    .union(EptFlags::WRITE)
    .union(EptFlags::EXECUTE);
const RW_: EptFlags = EptFlags::READ.union(EptFlags::WRITE);
const R_X: EptFlags = EptFlags::READ.union(EptFlags::EXECUTE);

// ---------------------------------------------------------------------------------------------
// Fixture: a world whose guest executes real instructions.
// ---------------------------------------------------------------------------------------------

/// A world with a code page at `CODE`, a data page at `DATA`, and the page-table page that maps
/// `DATA` write-protected and convertible through one monitor on its entry 256. Entry k of that
/// table maps `DATA + k * 0x1000`.
struct Fx {
    w: World,
    /// DATA's page-table page.
    pt: Gpa,
    /// CODE's frame.
    code: Gpa,
    /// DATA's frame.
    data: Gpa,
}

fn config(q: Quirks) -> WorldConfig {
    WorldConfig {
        quirks: q,
        ..WorldConfig::default()
    }
}

fn config_n(q: Quirks, vcpus: usize) -> WorldConfig {
    let mut c = config(q);
    c.guest.vcpus = vcpus;
    c
}

fn fx(q: Quirks) -> Fx {
    fx_with(config(q))
}

fn fx_with(c: WorldConfig) -> Fx {
    let w = World::new(c).unwrap();
    fx_on(w)
}

fn fx_on(mut w: World) -> Fx {
    let code = w
        .guest
        .map_new(&mut w.machine, CODE, PteFlags::empty())
        .unwrap();
    let data = w
        .guest
        .map_new(&mut w.machine, DATA, PteFlags::WRITABLE)
        .unwrap();
    let pt = w.guest.entry_gpa(&w.machine, DATA, 1).unwrap().page_base();
    w.place_monitor(pt.wrapping_add(256 * 8));
    w.commit_hooks();
    Fx { w, pt, code, data }
}

/// The self-map address of entry k of DATA's page table (the PTE of `DATA + k * 0x1000`).
fn egla(k: u64) -> u64 {
    self_map_entry_address(S, Gla(DATA + k * 0x1000), 1).0
}

impl Fx {
    fn e(&self, k: u64) -> Gpa {
        self.pt.wrapping_add(8 * k)
    }
    fn get(&self, k: u64) -> u64 {
        self.w.machine.mem.read_u64(self.e(k))
    }
    fn set(&mut self, k: u64, v: u64) {
        let e = self.e(k);
        self.w.machine.mem.write_u64(e, v);
    }
    /// Places `bytes` at `CODE + 0x100 * cpu`, points VCPU `cpu` at them in the System CR3
    /// with `regs`, and returns that RIP.
    fn prep(&mut self, cpu: usize, bytes: &[u8], regs: &[(Gpr, u64)]) -> u64 {
        let off = 0x100 * cpu as u64;
        self.w.machine.mem.write(self.code.wrapping_add(off), bytes);
        let cr3 = self.w.guest.cr3;
        let v = &mut self.w.vcpus[cpu];
        v.cr3 = cr3;
        v.rip = CODE + off;
        for (r, x) in regs {
            v.set_reg(*r, *x);
        }
        CODE + off
    }
    /// Prepares `mov [rax], rbx` writing `new` at the self-map address `gla`.
    fn prep_store(&mut self, cpu: usize, gla: u64, new: u64) -> u64 {
        self.prep(cpu, &MOV_STORE, &[(Gpr::Rax, gla), (Gpr::Rbx, new)])
    }
    /// Writes `new` into entry k of DATA's table with a real MOV on VCPU `cpu`.
    fn write_entry(&mut self, cpu: usize, k: u64, new: u64) {
        let at = self.prep_store(cpu, egla(k), new);
        run_to(&mut self.w, cpu, at + 3, 10_000);
    }
}

fn mem(w: &World, g: Gpa) -> u64 {
    w.machine.mem.read_u64(g)
}

fn agent_at(off: u64) -> u64 {
    layout::AGENT_GVA + off
}

fn agent_gpa(off: u64) -> Gpa {
    layout::AGENT_GPA.wrapping_add(off)
}

/// Steps VCPU `cpu` until a #VE has been delivered (RIP at the hooked OS handler).
fn deliver(w: &mut World, cpu: usize) {
    let n = w.counters.ve_total;
    for _ in 0..64 {
        if w.counters.ve_total > n {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("no #VE on VCPU {cpu}; RIP {:#x}", w.vcpus[cpu].rip);
}

/// Steps VCPU `cpu` until its RIP is the agent step at `off`.
fn to_step(w: &mut World, cpu: usize, off: u64) {
    for _ in 0..10_000 {
        if w.vcpus[cpu].rip == agent_at(off) {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("agent step {off:#x} not reached");
}

/// Steps VCPU `cpu` until RIP is `rip`.
fn run_to(w: &mut World, cpu: usize, rip: u64, steps_max: u64) {
    for _ in 0..steps_max {
        if w.vcpus[cpu].rip == rip {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("RIP {rip:#x} not reached; at {:#x}", w.vcpus[cpu].rip);
}

/// Raises an EPT violation on VCPU `cpu` through the model's hardware path (the HW §2.1
/// predicate, the information area, delivery), then runs the agent until it returns.
fn inject(w: &mut World, cpu: usize, qualification: u64, gla: u64, gpa: Gpa) {
    let v = EptViolation {
        qualification: EptQualification::from_bits_retain(qualification),
        gpa,
        gla: Gla(gla),
        convertible: true,
    };
    let o = {
        let World { machine, vcpus, .. } = &mut *w;
        machine.ept_violation(&mut vcpus[cpu], v)
    };
    assert!(matches!(o, Outcome::VeDelivered(_)), "{o:?}");
    w.count_ve(cpu, qualification);
    w.run_agent(cpu, 10_000).unwrap();
}

/// The VMCALLs seen, as (RDX, RBX, RCX), from event `from` on.
fn vmcalls_since(w: &World, from: usize) -> Vec<(u64, u64, u64)> {
    w.events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Vmcall { rdx, rbx, rcx, .. } => Some((*rdx, *rbx, *rcx)),
            _ => None,
        })
        .collect()
}

/// The agent's verdicts on page-table-write #VEs (page walks left out), from event `from` on.
fn pt_outcomes_since(w: &World, from: usize) -> Vec<AgentOutcome> {
    w.events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Agent { outcome, .. }
                if !matches!(
                    outcome,
                    AgentOutcome::PageWalkSet | AgentOutcome::PageWalkRaised
                ) =>
            {
                Some(*outcome)
            }
            _ => None,
        })
        .collect()
}

fn pt_outcomes(w: &World) -> Vec<AgentOutcome> {
    pt_outcomes_since(w, 0)
}

/// Callbacks as (entry, old, new).
fn callbacks(w: &World) -> Vec<(Gpa, u64, u64)> {
    w.intro
        .callbacks
        .iter()
        .map(|c| (c.entry, c.old, c.new))
        .collect()
}

/// The VCPUs introcore raised an alert for, in order.
fn alerts(w: &World) -> Vec<usize> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Alert { cpu, .. } => Some(*cpu),
            _ => None,
        })
        .collect()
}

fn view_flags(w: &World, view: ViewId, gpa: Gpa) -> EptFlags {
    w.machine.ept.view(view).unwrap().entry(gpa.gfn()).flags()
}

fn untrusted_flags(w: &World, gpa: Gpa) -> EptFlags {
    view_flags(w, w.intro.untrusted, gpa)
}

fn protected_flags(w: &World, gpa: Gpa) -> EptFlags {
    view_flags(w, w.intro.protected, gpa)
}

/// The physical address of a guest-linear address in the System CR3.
fn phys(w: &World, gla: u64) -> Gpa {
    w.guest.phys(&w.machine, gla).expect("mapped")
}

/// The B90 protected-view rights of agent page `off`: VESTUB and .text R-X, the rest RW-.
fn b90_rights(off: u64) -> EptFlags {
    match off {
        layout::AGENT_VESTUB | layout::AGENT_CODE => R_X,
        _ => RW_,
    }
}

/// The 24 bytes at the OS #VE handler.
fn handler_bytes(w: &World) -> [u8; 24] {
    let mut b = [0u8; 24];
    w.machine
        .mem
        .read(phys(w, layout::OS_VE_HANDLER_GVA), &mut b);
    b
}

/// Every byte of the agent image, as its frames hold it.
fn agent_image(w: &World) -> Vec<u8> {
    let mut b = vec![0u8; layout::AGENT_SIZE as usize];
    w.machine.mem.read(layout::AGENT_GPA, &mut b);
    b
}

/// A blocked access (NotAllowed): VCPU 0 stopped, retries the 3-byte instruction at `at`, or
/// skipped it without effect; it went nowhere else.
fn assert_blocked(w: &World, r: &Result<(), Stop>, at: u64) {
    let rip = w.vcpus[0].rip;
    assert!(
        r.is_err() || rip == at || rip == at + 3,
        "{r:?}, RIP {rip:#x}"
    );
}

/// The agent's translation hooks (B91).
fn agent_hooks(w: &World) -> Vec<(TranslationId, u64)> {
    w.intro
        .pts
        .hooks
        .iter()
        .filter(|(_, h)| h.owner == Owner::Agent)
        .map(|(i, h)| (*i, h.va))
        .collect()
}

/// The swap callbacks of hook `id` as (old, new).
fn swaps_of(w: &World, id: TranslationId) -> Vec<(u64, u64)> {
    w.intro
        .swaps
        .iter()
        .filter(|s| s.hook == id)
        .map(|s| (s.old, s.new))
        .collect()
}

/// A protected process with one user page at `USER_BASE` whose translation introcore hooks.
struct Proc {
    pid: u32,
    cr3: u64,
    va: u64,
    id: TranslationId,
}

fn proc_in(w: &mut World) -> Proc {
    let pid = w.create_process(true).unwrap();
    let va = layout::USER_BASE;
    w.mm_map(0, pid, va, bits::RW).unwrap();
    let cr3 = w.guest.processes[pid as usize].cr3;
    let id = w.hook_translation(cr3, va, Owner::Process(pid));
    w.commit_hooks();
    Proc { pid, cr3, va, id }
}

/// The canonical linear address whose PML4 index is `k`.
fn pml4_slot_va(k: u64) -> u64 {
    let v = k << 39;
    if k >= 256 {
        v | 0xFFFF_0000_0000_0000
    } else {
        v
    }
}

/// Writes PML4 entry `k` of process `pid` with the memory manager's MOV through its self-map.
fn write_pml4e(w: &mut World, pid: u32, k: u64, value: u64) {
    let gla = w.entry_gla(pml4_slot_va(k), 4);
    w.mm_exec(0, pid, mm_code::MOV, gla, value, 0).unwrap();
}

/// A world that went through deploy, a few #VEs and a complete unload.
fn unloaded(q: Quirks) -> Fx {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.write_entry(0, 1, OLD);
    f.write_entry(0, 2, OLD);
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::Raised]
    );
    assert_eq!(f.w.unload_agent(), Ok(true));
    f
}

// =============================================================================================
// 6a. IntVeInit (B80–B82)
// =============================================================================================

/// B80: more than 64 VCPUs, or no VMFUNC, is NOT_NEEDED; a second init is ALREADY_INITIALIZED.
#[test]
fn b80_init_refuses_more_than_64_vcpus_or_no_vmfunc() {
    // 65 VCPUs: the world gets no agent at all.
    assert!(matches!(
        World::new(config_n(Quirks::fixed(), 65)),
        Err(WorldError::Deploy(_))
    ));
    let w = World::new(config_n(Quirks::fixed(), 64)).unwrap();
    assert!(w.intro.initialized && w.intro.deployed);
    // Already initialised.
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    assert_eq!(w.intro_init_checked(), Err(InitError::AlreadyInitialized));
    // A fresh engine on VCPUs without VM functions.
    w.intro = Introcore::new(&w.guest.config, Quirks::fixed(), 0);
    w.vcpus[0].vmfunc_enabled = false;
    assert!(matches!(
        w.intro_init_checked(),
        Err(InitError::NotNeeded(_))
    ));
    assert!(!w.intro.initialized);
    // VMFUNC back, but 65 VCPUs.
    w.vcpus[0].vmfunc_enabled = true;
    let v0 = w.vcpus[0].clone();
    w.vcpus.resize(65, v0);
    assert!(matches!(
        w.intro_init_checked(),
        Err(InitError::NotNeeded(_))
    ));
    assert!(!w.intro.initialized);
    w.vcpus.truncate(64);
    assert_eq!(w.intro_init_checked(), Ok(()));
    assert!(w.intro.initialized);
}

/// B81: any read, write or execute GPA hook makes init INVALID_INTERNAL_STATE; once it is gone
/// init succeeds.
#[test]
fn b81_init_refuses_when_a_gpa_hook_exists() {
    let kinds = [
        HookKind {
            read: true,
            ..HookKind::default()
        },
        HookKind {
            write: true,
            ..HookKind::default()
        },
        HookKind {
            execute: true,
            ..HookKind::default()
        },
        HookKind::PAGE_TABLE_WRITE,
    ];
    for kind in kinds {
        let mut w = World::new(config(Quirks::fixed())).unwrap();
        w.intro = Introcore::new(&w.guest.config, Quirks::fixed(), 0);
        let g = Gfn(0x300);
        w.intro.hooks.set(&mut w.machine.ept, g, kind);
        assert_eq!(
            w.intro_init_checked(),
            Err(InitError::InvalidInternalState),
            "{kind:?}"
        );
        assert!(!w.intro.initialized);
        w.intro.hooks.remove(g, kind);
        w.commit_hooks();
        assert_eq!(w.intro_init_checked(), Ok(()), "{kind:?}");
    }
}

/// B82: with the untrusted view at index 1 (so B82 also writes it): every guest-physical page
/// is RW- and not convertible in the protected view (agent sections aside, B90), and RWX in the
/// untrusted view unless a hook says otherwise.
#[test]
fn b82_protected_view_rw_everywhere() {
    let mut c = config(Quirks::fixed());
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    let f = fx_with(c);
    let w = &f.w;
    let agent = layout::AGENT_GPA.gfn().0..layout::AGENT_GPA.gfn().0 + AGENT_PAGES;
    let mut gfns: BTreeSet<Gfn> = w.machine.mem.frames().map(|(g, _)| g).collect();
    gfns.extend(
        w.machine
            .ept
            .view(ViewId(2))
            .unwrap()
            .entries()
            .map(|(g, _)| g),
    );
    gfns.extend([Gfn(0), Gfn(0x0003_FFFF), Gfn(0x0003_FFFF_FFFF)]);
    for g in gfns {
        let gpa = Gpa(g.0 << 12);
        let pf = view_flags(w, ViewId(2), gpa);
        assert!(pf.contains(EptFlags::SUPPRESS_VE), "protected {gpa:?}");
        let want = if agent.contains(&g.0) {
            b90_rights((g.0 - agent.start) << 12)
        } else {
            RW_
        };
        assert_eq!(pf & RWX, want, "protected {gpa:?}");
        let c = w.hook_counts(gpa);
        if c == HookCounts::default() {
            let uf = view_flags(w, ViewId(1), gpa);
            assert_eq!(uf & RWX, RWX, "untrusted {gpa:?}");
            assert!(uf.contains(EptFlags::SUPPRESS_VE), "untrusted {gpa:?}");
        }
    }
}

// =============================================================================================
// 6b. Deploy (B91, B93, B94)
// =============================================================================================

/// B91: a swap hook (a translation hook in the System CR3) on every agent page: the four
/// entries translating the page are monitored, and the agent's table pages are write-protected
/// and convertible.
#[test]
fn b91_swap_hooks_on_every_agent_page() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    let hooks = agent_hooks(&w);
    let vas: BTreeSet<u64> = hooks.iter().map(|(_, va)| *va).collect();
    let want: BTreeSet<u64> = (0..AGENT_PAGES).map(|i| agent_at(i * 0x1000)).collect();
    assert_eq!(hooks.len() as u64, AGENT_PAGES);
    assert_eq!(vas, want);
    for (id, va) in hooks {
        let h = &w.intro.pts.hooks[&id];
        assert_eq!(h.cr3, w.guest.cr3);
        let entries: Vec<(u8, Gpa)> = h.levels.iter().map(|l| (l.level, l.entry)).collect();
        let expect: Vec<(u8, Gpa)> = [4u8, 3, 2, 1]
            .iter()
            .map(|l| (*l, w.guest.entry_gpa(&w.machine, va, *l).unwrap()))
            .collect();
        assert_eq!(entries, expect, "{va:#x}");
        for l in &h.levels {
            assert!(w.intro.ptm.monitors(l.entry).contains(&l.monitor));
            assert_eq!(l.value, mem(&w, l.entry));
        }
        let pte = h.leaf_value();
        assert_eq!(pte & P, P);
        assert_eq!(Gpa(pte & PFN), agent_gpa(va - layout::AGENT_GVA));
    }
    for level in 1..=4u8 {
        let t = w
            .guest
            .entry_gpa(&w.machine, layout::AGENT_GVA, level)
            .unwrap()
            .page_base();
        let c = w.hook_counts(t);
        assert!(c.pt >= 1 && c.conv == c.pt, "level {level}: {c:?}");
        let fl = untrusted_flags(&w, t);
        assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    }
}

/// B93/B94: with the loader not complete, the page-table hooks deploy placed count in PtCount
/// but nothing is convertible; completing the loader makes ConvCount = PtCount and every page
/// with PtCount convertible (once only); disabling brings ConvCount to 0 and nothing is
/// convertible.
#[test]
fn b93_b94_pages_convertible_only_after_the_loader() {
    let mut f = fx_with(WorldConfig {
        ve: false,
        ..config(Quirks::fixed())
    });
    let untrusted = f.w.intro.untrusted;
    let convertible = |w: &World| -> Vec<Gfn> {
        w.machine
            .ept
            .view(untrusted)
            .unwrap()
            .entries()
            .filter(|(_, e)| !e.flags().contains(EptFlags::SUPPRESS_VE))
            .map(|(g, _)| g)
            .collect()
    };
    let pt_pages: Vec<Gfn> =
        f.w.intro
            .hooks
            .pages()
            .filter(|(_, c)| c.pt > 0)
            .map(|(g, _)| g)
            .collect();
    assert!(pt_pages.len() >= 5, "the agent's four tables and DATA's");
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    assert!(convertible(&f.w).is_empty());
    // A monitored write before the loader completes: an ordinary exit, no #VE.
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    // The loader completes.
    f.w.complete_loader();
    for (g, c) in f.w.intro.hooks.pages() {
        assert_eq!(c.conv, c.pt, "{g:?}");
    }
    assert_eq!(convertible(&f.w), pt_pages);
    f.w.complete_loader();
    for (g, c) in f.w.intro.hooks.pages() {
        assert_eq!(c.conv, c.pt, "enabling twice changes nothing: {g:?}");
    }
    f.write_entry(0, 256, OLD ^ RW);
    assert_eq!(f.w.counters.ve_total, 1);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    // Disable.
    f.w.intro.hooks.disable_ve(&mut f.w.machine.ept);
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    assert!(convertible(&f.w).is_empty());
}

// =============================================================================================
// 6c. Unload (B95–B99, B140)
// =============================================================================================

/// B95: an unload needs VE initialised and the agent deployed, and not already pending.
#[test]
fn b95_remove_agent_needs_deployed_and_not_pending() {
    let mut f = fx(Quirks::fixed());
    assert_eq!(f.w.remove_agent(), Ok(()));
    assert!(f.w.intro.pending_unload);
    assert_eq!(f.w.remove_agent(), Err(UnloadError::NotNeeded), "pending");
    // Until the unloader runs (B96) page tables stay convertible: a write still #VEs.
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.ve_total, 1);
    f.w.deploy_unloader();
    assert!(f.w.deliver_for_unload());
    f.w.complete_unloader();
    assert_eq!(
        f.w.remove_agent(),
        Err(UnloadError::NotNeeded),
        "not deployed"
    );
    assert!(!f.w.intro.pending_unload);
    assert_eq!(f.w.unload_agent(), Err(UnloadError::NotNeeded));
    // Not initialised.
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    w.intro.initialized = false;
    assert_eq!(w.remove_agent(), Err(UnloadError::NotNeeded));
    assert!(!w.intro.pending_unload);
}

/// B96: once the unloader is deployed no page is convertible (ConvCount 0 everywhere) and a
/// monitored write is an ordinary EPT-violation exit that introcore handles.
#[test]
fn b96_unloader_disables_ve_no_page_convertible() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    assert_eq!(f.w.remove_agent(), Ok(()));
    f.w.deploy_unloader();
    let untrusted = f.w.intro.untrusted;
    for (g, e) in f.w.machine.ept.view(untrusted).unwrap().entries() {
        assert!(e.flags().contains(EptFlags::SUPPRESS_VE), "{g:?}");
    }
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert_eq!(f.get(1), OLD);
}

/// What the deploy put in place, for "nothing was unhooked".
#[derive(Debug, PartialEq, Eq)]
struct Deployed {
    deployed: bool,
    handler: [u8; 24],
    info: Vec<Option<Gpa>>,
    swap_hooks: usize,
    untrusted: Vec<EptFlags>,
    protected: Vec<EptFlags>,
}

fn deployed_state(w: &World) -> Deployed {
    let pages = (0..AGENT_PAGES).map(|i| agent_gpa(i * 0x1000));
    Deployed {
        deployed: w.intro.deployed,
        handler: handler_bytes(w),
        info: w.vcpus.iter().map(|v| v.ve_info).collect(),
        swap_hooks: agent_hooks(w).len(),
        untrusted: pages.clone().map(|g| untrusted_flags(w, g)).collect(),
        protected: pages.map(|g| protected_flags(w, g)).collect(),
    }
}

/// B97/B140: while a VCPU's RIP is in the agent (or at the hooked IDT[20] handler) the unload
/// is refused (answer 1) and nothing is unhooked; once the agent has returned it succeeds.
#[test]
fn b97_b140_unload_gate_refuses_while_a_rip_is_in_the_agent() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    let before = deployed_state(&f.w);
    assert!(before.deployed && before.info.iter().all(Option::is_some));
    let at = f.prep_store(1, egla(1), OLD);
    deliver(&mut f.w, 1);
    assert_eq!(f.w.vcpus[1].rip, layout::OS_VE_HANDLER_GVA);
    assert_eq!(f.w.unload_agent(), Ok(false), "RIP at the IDT[20] handler");
    to_step(&mut f.w, 1, rip::PT_DECODE);
    assert_eq!(f.w.unload_agent(), Ok(false), "RIP in the agent");
    assert!(f.w.intro.pending_unload);
    assert_eq!(deployed_state(&f.w), before, "nothing was unhooked");
    // The agent finishes its #VE; the raise is still dispatched.
    f.w.run_agent(1, 10_000).unwrap();
    run_to(&mut f.w, 1, at + 3, 10);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert_eq!(f.get(1), OLD);
    assert_eq!(f.w.unload_agent(), Ok(true));
    assert!(!f.w.intro.deployed);
    assert!(f.w.vcpus.iter().all(|v| v.ve_info.is_none()));
}

/// B98: the unhook clears every VCPU's information page (#VE off) and gives the OS handler its
/// original bytes back (the guest model's handler page is INT3 filler, so 24 × 0xCC).
#[test]
fn b98_unhook_restores_the_os_handler_and_clears_info_pages() {
    let f = unloaded(Quirks::fixed());
    for v in &f.w.vcpus {
        assert_eq!(v.ve_info, None);
        assert!(!v.ve_enabled);
    }
    assert_eq!(handler_bytes(&f.w), [0xCC; 24]);
}

/// B98 steps 1, 4 and 5: no information page, no swap hook (so no agent table page is
/// monitored any more), protected-view rights RW- on every agent page.
#[test]
fn b98_unhook_clears_info_pages_swap_hooks_and_protected_rights() {
    let f = unloaded(Quirks::fixed());
    let w = &f.w;
    assert!(w.vcpus.iter().all(|v| v.ve_info.is_none() && !v.ve_enabled));
    assert!(agent_hooks(w).is_empty());
    let monitored: BTreeSet<Gpa> = w.intro.ptm.monitored_entries().into_iter().collect();
    let want: BTreeSet<Gpa> = [f.e(1), f.e(256)].into_iter().collect();
    assert_eq!(monitored, want, "only the fixture's own monitors remain");
    let pt_pages: Vec<Gfn> = w
        .intro
        .hooks
        .pages()
        .filter(|(_, c)| c.pt > 0)
        .map(|(g, _)| g)
        .collect();
    assert_eq!(pt_pages, [f.pt.gfn()]);
    for i in 0..AGENT_PAGES {
        let g = agent_gpa(i * 0x1000);
        assert_eq!(protected_flags(w, g) & RWX, RW_, "agent page {i}");
    }
}

/// B98 step 3: the hook object is destroyed, so no agent page is hooked in the untrusted view
/// any more and every one is RWX again (B124).
#[test]
fn b98_unhook_destroys_the_untrusted_view_protection() {
    let f = unloaded(Quirks::fixed());
    for i in 0..AGENT_PAGES {
        let g = agent_gpa(i * 0x1000);
        assert_eq!(f.w.hook_counts(g), HookCounts::default(), "agent page {i}");
        assert_eq!(untrusted_flags(&f.w, g) & RWX, RWX, "agent page {i}");
    }
}

/// B99: the unloader completing resets the state: not deployed, not pending; the cache writer
/// stops (B72), and a redeploy is allowed (which it is not while the unload is pending).
#[test]
fn b99_complete_unloader_resets_state() {
    let mut f = fx(Quirks::fixed());
    assert_eq!(f.w.remove_agent(), Ok(()));
    f.w.deploy_unloader();
    assert!(f.w.deliver_for_unload());
    assert!(f.w.redeploy_agent().is_err(), "unload still pending");
    f.w.complete_unloader();
    assert!(!f.w.intro.deployed && !f.w.intro.pending_unload);
    let e5 = f.e(5);
    f.w.update_cache(e5, false);
    assert!(!f.w.cache_contains(e5));
    assert!(f.w.redeploy_agent().is_ok());
    assert!(f.w.intro.deployed);
}

// =============================================================================================
// 7. Dispatch (B104)
// =============================================================================================

/// B104: a raised page walk (the KPTI case: every A/D already set in the kernel CR3, user GLA)
/// sets A, with one CAS, in the user PML4 entry of the GLA; D and the other levels are left
/// alone, no callback runs and the registers are neither copied in nor out.
#[test]
fn b104_raised_page_walk_sets_a_in_user_pml4() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut c = config(q);
        c.guest.kpti = true;
        let mut f = fx_with(c);
        let pid = f.w.create_process(true).unwrap();
        let va = layout::USER_BASE;
        f.w.mm_map(0, pid, va, bits::RW).unwrap();
        let p = f.w.guest.processes[pid as usize].clone();
        let user = p.user_cr3.expect("KPTI gives a user CR3");
        assert_ne!(user, p.cr3);
        // The kernel-CR3 walk of `va` finds everything set.
        let mut kernel = Vec::new();
        for level in 1..=4u8 {
            let (v, g) = f.w.entry_value(pid, va, level).unwrap();
            let v = v | A | if level == 1 { D } else { 0 };
            f.w.machine.mem.write_u64(g, v);
            kernel.push((g, v));
        }
        // The user PML4 entry (same table below, A clear): what the hardware walk of the user
        // CR3 wanted to set.
        let upml4e = Gpa((user & PFN) + ((va >> 39) & 0x1FF) * 8);
        let before = mem(&f.w, upml4e) & !A;
        assert_eq!(before & P, P);
        f.w.machine.mem.write_u64(upml4e, before);
        // The #VE arrives on the kernel CR3 (after the KPTI entry stub) for `mov rbx, [rax]`.
        let at = f.prep(0, &MOV_LOAD, &[(Gpr::Rax, va), (Gpr::Rbx, 0x77)]);
        f.w.vcpus[0].cr3 = p.cr3;
        let regs = f.w.vcpus[0].gpr;
        let n = f.w.events.len();
        inject(&mut f.w, 0, QUAL_WALK, va, upml4e);
        assert_eq!(vmcalls_since(&f.w, n), [(RAISE_EPT, 0, 0)], "{q:?}");
        assert_eq!(mem(&f.w, upml4e), before | A, "{q:?}");
        for (g, v) in kernel {
            assert_eq!(mem(&f.w, g) & !D, v & !D, "{q:?} {g:?}");
        }
        assert_eq!(f.w.vcpus[0].rip, at);
        assert_eq!(f.w.vcpus[0].gpr, regs);
        assert!(callbacks(&f.w).is_empty());
    }
}

// =============================================================================================
// 8. Swap, access, protected view, statistics (B116–B122)
// =============================================================================================

/// Remaps agent page `off` to `to` with a real MOV of its PTE through the System self-map on
/// VCPU `cpu`; returns (old PTE, new PTE).
fn remap_agent_page(f: &mut Fx, cpu: usize, off: u64, to: Gpa) -> (u64, u64) {
    let va = agent_at(off);
    let pte = f.w.guest.entry_gpa(&f.w.machine, va, 1).unwrap();
    let old = mem(&f.w, pte);
    let new = (old & !PFN) | to.0;
    let at = f.prep_store(cpu, self_map_entry_address(S, Gla(va), 1).0, new);
    run_to(&mut f.w, cpu, at + 3, 10_000);
    assert_eq!(mem(&f.w, pte), new);
    (old, new)
}

fn agent_hook_of(w: &World, va: u64) -> TranslationId {
    agent_hooks(w)
        .into_iter()
        .find(|(_, v)| *v == va)
        .map(|(i, _)| i)
        .unwrap()
}

/// A monitored write on VCPU `cpu` still goes through the agent: one raised #VE, the callback,
/// the entry written.
fn assert_agent_still_works(f: &mut Fx, cpu: usize) {
    let e = f.e(20);
    if !f.w.intro.ptm.is_monitored(e) {
        f.w.place_monitor(e);
        f.w.commit_hooks();
    }
    let (n, ncb) = (f.w.events.len(), f.w.intro.callbacks.len());
    let old = f.get(20);
    let new = if old & P == 0 { OLD } else { old ^ RW };
    f.write_entry(cpu, 20, new);
    assert_eq!(pt_outcomes_since(&f.w, n), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w)[ncb..], [(e, old, new)]);
    assert_eq!(f.get(20), new);
}

/// The B116 remap of the agent's .text page, in the protected view: the page is copied, the
/// new frame gets R-X and the old one RW-; the agent keeps running from the new frame.
fn b116_code_page_remap(q: Quirks) -> (Fx, Gpa, Gpa) {
    let mut f = fx(q);
    let from = agent_gpa(layout::AGENT_CODE);
    let mut image = [0u8; 4096];
    f.w.machine.mem.read(from, &mut image);
    // Something distinctive in the page, so the copy is visible.
    image[0xF00..0xF08].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    f.w.machine.mem.write(from, &image);
    assert_eq!(protected_flags(&f.w, FREE_FRAME) & RWX, RW_);
    let id = agent_hook_of(&f.w, agent_at(layout::AGENT_CODE));
    let (old, new) = remap_agent_page(&mut f, 0, layout::AGENT_CODE, FREE_FRAME);
    assert_eq!(swaps_of(&f.w, id), [(old, new)]);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    let mut copy = [0u8; 4096];
    f.w.machine.mem.read(FREE_FRAME, &mut copy);
    assert!(copy == image, "the page was copied");
    assert_eq!(protected_flags(&f.w, FREE_FRAME) & RWX, R_X);
    assert_eq!(protected_flags(&f.w, from) & RWX, RW_);
    assert_eq!(f.w.hooked_translation(id), Some(FREE_FRAME));
    assert_agent_still_works(&mut f, 0);
    (f, from, FREE_FRAME)
}

/// B116 (steps 3–5): the protected-view half of the remap.
#[test]
fn b116_agent_page_remap_copies_and_moves_protected_rights() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        b116_code_page_remap(q);
    }
}

/// B116 in full: also the untrusted-view protection moves with the page (step 6): the new frame
/// carries the .text hooks (read, write, execute: no access), the old frame none (RWX).
#[test]
fn b116_agent_page_remap_copies_and_moves_rights() {
    let (f, from, to) = b116_code_page_remap(Quirks::fixed());
    let c = f.w.hook_counts(to);
    assert_eq!((c.read, c.write, c.execute), (1, 1, 1));
    assert_eq!(untrusted_flags(&f.w, to) & RWX, EptFlags::empty());
    assert_eq!(f.w.hook_counts(from), HookCounts::default());
    assert_eq!(untrusted_flags(&f.w, from) & RWX, RWX);
}

/// B116 step 8: a moved information page is registered again: VCPU 1's page moved by VCPU 0,
/// and VCPU 0's own page moved while VCPU 0 is handling the very #VE that moves it.
#[test]
fn b116_moved_information_page_is_registered_again() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let page1 = agent_gpa(layout::AGENT_VEINFO + 0x1000);
    assert_eq!(f.w.ve_page(1), Some(page1));
    remap_agent_page(&mut f, 0, layout::AGENT_VEINFO + 0x1000, FREE_FRAME);
    assert_eq!(f.w.ve_page(1), Some(FREE_FRAME));
    assert_eq!(
        mem(&f.w, FREE_FRAME.wrapping_add(veinfo::SELF)),
        agent_at(layout::AGENT_VEINFO + 0x1000)
    );
    assert_eq!(mem(&f.w, FREE_FRAME.wrapping_add(veinfo::INDEX)), 1);
    assert_agent_still_works(&mut f, 1);
    assert_eq!(mem(&f.w, FREE_FRAME.wrapping_add(veinfo::VE_TOTAL)), 1);
    assert_eq!(mem(&f.w, page1.wrapping_add(veinfo::VE_TOTAL)), 0);
    assert_eq!(f.w.machine.mem.read_u32(FREE_FRAME.wrapping_add(4)), 0);
    // VCPU 0 moves its own page.
    let page0 = agent_gpa(layout::AGENT_VEINFO);
    remap_agent_page(&mut f, 0, layout::AGENT_VEINFO, FREE_FRAME2);
    assert_eq!(f.w.ve_page(0), Some(FREE_FRAME2));
    // Its two #VEs so far (both remaps) were counted before the copy.
    assert_eq!(mem(&f.w, FREE_FRAME2.wrapping_add(veinfo::VE_TOTAL)), 2);
    assert_eq!(f.w.machine.mem.read_u32(FREE_FRAME2.wrapping_add(4)), 0);
    assert_agent_still_works(&mut f, 0);
    assert_eq!(mem(&f.w, FREE_FRAME2.wrapping_add(veinfo::VE_TOTAL)), 3);
    assert_eq!(mem(&f.w, page0.wrapping_add(veinfo::VE_TOTAL)), 2);
}

/// B116 step 7, B72 and B79: after a cache page is remapped, introcore reaches the line through
/// its GVA again (`gVeCache + line * 4K`), so its evictions and adds land in the new frame,
/// which is where the agent looks. Entry 2 is cached before the remap (the copy carries it);
/// a monitor placed afterwards must evict it there (B76, I7), so the next relevant write is
/// raised; entry 40 (another bucket of the same line) is cached at its first raise.
#[test]
fn b116_remapped_cache_page_is_found_again_through_its_gva() {
    let mut f = fx(Quirks::fixed());
    let (e2, e40) = (f.e(2), f.e(40));
    let line = (e2.0 >> 12) & 63;
    let slots = |w: &World, page: Gpa, e: Gpa| -> Vec<u64> {
        let bucket = (e.0 >> 3) & 63;
        (0..8)
            .map(|s| mem(w, page.wrapping_add(bucket * 64 + s * 8)))
            .collect()
    };
    f.write_entry(0, 2, OLD);
    let off = layout::AGENT_VECACHE + line * 0x1000;
    assert!(slots(&f.w, agent_gpa(off), e2).contains(&e2.0));
    remap_agent_page(&mut f, 0, off, FREE_FRAME);
    assert!(slots(&f.w, FREE_FRAME, e2).contains(&e2.0), "copied");
    f.w.place_monitor(e2);
    f.w.commit_hooks();
    assert!(!slots(&f.w, FREE_FRAME, e2).contains(&e2.0), "evicted");
    let (n, ncb) = (f.w.events.len(), f.w.intro.callbacks.len());
    f.write_entry(0, 2, OLD ^ RW);
    f.write_entry(0, 40, OLD);
    f.write_entry(0, 40, OLD ^ RW);
    assert_eq!(
        pt_outcomes_since(&f.w, n),
        [
            AgentOutcome::Raised,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache
        ]
    );
    assert_eq!(callbacks(&f.w)[ncb..], [(e2, OLD, OLD ^ RW)]);
    assert!(slots(&f.w, FREE_FRAME, e40).contains(&e40.0));
}

/// B118: an untrusted-view read of an agent page is blocked silently: no alert.
#[test]
fn b118_untrusted_read_of_agent_blocked_without_alert() {
    let mut f = fx(Quirks::fixed());
    let target = agent_at(layout::AGENT_DATA + 8);
    let at = f.prep(0, &MOV_LOAD, &[(Gpr::Rax, target), (Gpr::Rbx, 0x77)]);
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(f.w.vcpus[0].reg(Gpr::Rbx), 0x77, "nothing was read");
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert!(alerts(&f.w).is_empty(), "a read is blocked silently");
}

/// B118: an untrusted-view write to an agent page is blocked and alerts.
#[test]
fn b118_untrusted_write_of_agent_alerts() {
    let mut f = fx(Quirks::fixed());
    let target = agent_at(layout::AGENT_DATA + 8);
    let before = agent_image(&f.w);
    let at = f.prep(0, &MOV_STORE, &[(Gpr::Rax, target), (Gpr::Rbx, 0)]);
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(alerts(&f.w), [0]);
    assert!(agent_image(&f.w) == before, "agent memory unchanged");
}

/// B119: guest code switches to the protected view with VMFUNC (no CPL check, HW §6); its next
/// fetch violates EPT there (its code is RW-), which is an alert, and nothing executes.
#[test]
fn b119_protected_view_violation_alerts() {
    let mut f = fx(Quirks::fixed());
    let protected = f.w.intro.protected;
    let mut code = VMFUNC.to_vec();
    code.extend_from_slice(&MOV_STORE_RDX);
    let at = f.prep(
        0,
        &code,
        &[
            (Gpr::Rax, 0),
            (Gpr::Rcx, u64::from(protected.0)),
            (Gpr::Rdx, DATA),
            (Gpr::Rbx, 0x1234),
        ],
    );
    f.w.step(0).unwrap();
    assert_eq!(f.w.vcpus[0].eptp_index, protected);
    assert_eq!(f.w.vcpus[0].rip, at + 3);
    let r = f.w.step(0);
    assert!(r.is_err() || f.w.vcpus[0].rip == at + 3, "blocked");
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(alerts(&f.w), [0]);
    assert_eq!(mem(&f.w, f.data), 0, "the store did not execute");
}

/// B122: the statistics come from the information pages, per VCPU, and satisfy the identities
/// of the code (no breaks, no raised walks here): ignored = page walk + cache + irrelevant,
/// page walk + mm = total, total − ignored = raised.
#[test]
fn b122_stats_from_the_information_pages() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let e10 = f.e(10);
    f.w.place_monitor(e10);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.write_entry(0, 1, OLD | 0x200); // irrelevant (bit 9)
    f.write_entry(0, 2, OLD); // raised, caches entries 2..9
    f.write_entry(0, 3, OLD); // cached
    f.write_entry(1, 10, OLD); // raised (monitored)
    assert_eq!(
        pt_outcomes(&f.w),
        [
            AgentOutcome::IgnoredIrrelevant,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache,
            AgentOutcome::Raised
        ]
    );
    let s = f.w.ve_stats();
    assert_eq!(s.len(), 2);
    let got: Vec<[u64; 7]> = s
        .iter()
        .map(|c| {
            [
                c.total,
                c.mm,
                c.page_walk,
                c.ignored_total,
                c.ignored_cache,
                c.ignored_irrelevant,
                c.tsc_count,
            ]
        })
        .collect();
    assert_eq!(got, [[3, 3, 0, 2, 1, 1, 2], [1, 1, 0, 0, 0, 0, 0]]);
    assert!(s[0].tsc_total > 0);
    assert_eq!(s[1].tsc_total, 0);
    for c in &s {
        assert_eq!(
            c.ignored_total,
            c.page_walk + c.ignored_cache + c.ignored_irrelevant
        );
        assert_eq!(c.page_walk + c.mm, c.total);
    }
    let reported: u64 = s.iter().map(|c| c.total - c.ignored_total).sum();
    assert_eq!(reported, f.w.counters.raised);
    assert_eq!(f.w.ve_stats(), s, "reading does not reset");
    assert_eq!(f.w.unload_agent(), Ok(true));
    assert!(f.w.ve_stats().is_empty(), "no agent, no statistics");
}

// =============================================================================================
// 9. hook_gpa (B124, B125 on a non-zero untrusted index)
// =============================================================================================

/// B124/B125: hook rights and convertibility go to the untrusted view's index (1 here), never
/// to another view (a view 0 installed by hand) nor to the protected view.
#[test]
fn b124_b125_hooks_apply_to_the_untrusted_view_index() {
    let mut c = config(Quirks::fixed());
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    let mut w = World::new(c).unwrap();
    let all = RWX | EptFlags::SUPPRESS_VE;
    w.machine
        .ept
        .insert(ViewId(0), EptView::new(EptEntry(all.bits())))
        .unwrap();
    let f = fx_on(w);
    let w = &f.w;
    let stub = agent_gpa(layout::AGENT_VESTUB);
    let data_sec = agent_gpa(layout::AGENT_DATA);
    assert_eq!(view_flags(w, ViewId(1), stub) & RWX, EptFlags::EXECUTE);
    assert_eq!(view_flags(w, ViewId(1), data_sec) & RWX, EptFlags::empty());
    let t = view_flags(w, ViewId(1), f.pt);
    assert_eq!(t & RWX, R_X);
    assert!(!t.contains(EptFlags::SUPPRESS_VE));
    for g in [stub, data_sec, f.pt] {
        assert_eq!(view_flags(w, ViewId(0), g), all, "view 0 untouched: {g:?}");
        assert!(view_flags(w, ViewId(2), g).contains(EptFlags::SUPPRESS_VE));
    }
    assert_eq!(view_flags(w, ViewId(2), f.pt) & RWX, RW_);
}

// =============================================================================================
// 10. hook_ptm / hook_pts (B131, B133, B135–B137)
// =============================================================================================

/// B131: the PT_UM_ROOT hook on a process's PML4 is one write GPA hook; the EPT protection is
/// the whole page (write-protected, convertible), a write to the monitored low-half entry
/// reaches its callback, an unmonitored low-half entry is cached at its first raise (the PTM
/// callback ran, B75); in `hvmi` an upper-half entry lies outside the 0x800 bytes the hook
/// covers, so no PTM callback ever runs for it and it is never cached.
#[test]
fn b131_user_pml4_hook_covers_low_half() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let p = proc_in(&mut w);
        let pml4 = Gpa(p.cr3 & PFN);
        let c = w.hook_counts(pml4);
        assert_eq!((c.write, c.pt, c.conv), (1, 1, 1), "{q:?}");
        let fl = untrusted_flags(&w, pml4);
        assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
        // The monitored entry 0 (the hooked page's PML4E).
        let (e0, g0) = w.entry_value(p.pid, p.va, 4).unwrap();
        assert_eq!(g0, pml4);
        let ncb = w.intro.callbacks.len();
        write_pml4e(&mut w, p.pid, 0, e0 ^ RW);
        assert_eq!(callbacks(&w)[ncb..], [(g0, e0, e0 ^ RW)], "{q:?}");
        // Unmonitored low-half entry 5.
        let e5 = pml4.wrapping_add(5 * 8);
        let v = FREE_FRAME.0 | P | RW;
        let n = w.events.len();
        write_pml4e(&mut w, p.pid, 5, v);
        write_pml4e(&mut w, p.pid, 5, v ^ RW);
        assert_eq!(
            pt_outcomes_since(&w, n),
            [AgentOutcome::Raised, AgentOutcome::IgnoredCache],
            "{q:?}"
        );
        assert!(w.cache_contains(e5));
        if q == Quirks::hvmi() {
            let e = pml4.wrapping_add(0x1A0 * 8);
            let (n, ncb) = (w.events.len(), w.intro.callbacks.len());
            write_pml4e(&mut w, p.pid, 0x1A0, v);
            write_pml4e(&mut w, p.pid, 0x1A0, v ^ RW);
            assert_eq!(
                pt_outcomes_since(&w, n),
                [AgentOutcome::Raised, AgentOutcome::Raised]
            );
            assert!(!w.cache_contains(e));
            assert_eq!(w.intro.callbacks.len(), ncb);
        }
    }
}

/// B133: an irrelevant change of a hooked page's entry (equal under the monitored bits, or
/// neither value present) runs no swap callback: caching attributes (MOV, LOCK CMPXCHG, LOCK
/// XOR), an A-bit trim, a not-present to not-present write, and, at introcore itself, a raise
/// whose old and new values are equal under the monitored bits. A relevant one does run it.
#[test]
fn b133_irrelevant_change_runs_no_swap_callback() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (leaf, pte) = w.entry_value(p.pid, p.va, 1).unwrap();
    for form in 0..3 {
        w.mm_set_caching(0, p.pid, p.va, PWT, form).unwrap();
        w.mm_set_caching(0, p.pid, p.va, 0, form).unwrap();
    }
    w.mm_trim(0, p.pid, p.va).unwrap();
    assert_eq!(mem(&w, pte) & !(A | D), leaf & !(A | D));
    assert!(swaps_of(&w, p.id).is_empty());
    // Introcore's own filter: a raise whose page says (cur, cur | PWT), equal under the bits.
    let ncb = w.intro.callbacks.len();
    let cur = mem(&w, pte);
    {
        let cr3 = p.cr3;
        let gla = w.entry_gla(p.va, 1);
        let v = &mut w.vcpus[0];
        v.cr3 = cr3;
        v.rip = layout::MM_CODE_GVA + mm_code::MOV.0;
        v.set_reg(Gpr::Rdi, gla);
        v.set_reg(Gpr::Rsi, cur ^ RW);
    }
    to_step(&mut w, 0, rip::PT_RAISE);
    let page = w.ve_page(0).unwrap();
    assert_eq!(mem(&w, page.wrapping_add(veinfo::OLD_VALUE)), cur);
    w.machine
        .mem
        .write_u64(page.wrapping_add(veinfo::NEW_VALUE), cur | PWT);
    w.run_agent(0, 10_000).unwrap();
    assert_eq!(callbacks(&w)[ncb..], [(pte, cur, cur | PWT)]);
    assert_eq!(mem(&w, pte), cur | PWT);
    assert!(swaps_of(&w, p.id).is_empty());
    // A relevant change runs it (RW cleared by LOCK AND).
    w.mm_protect(0, p.pid, p.va, false, true).unwrap();
    assert_eq!(mem(&w, pte), (cur | PWT) & !RW);
    let s = swaps_of(&w, p.id);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1, (cur | PWT) & !RW);
    // Not present to not present.
    w.mm_swap_out(0, p.pid, p.va).unwrap();
    let n = swaps_of(&w, p.id).len();
    assert_eq!(swaps_of(&w, p.id)[n - 1].1, 0, "swapped out");
    w.mm_unmap(0, p.pid, p.va).unwrap();
    assert_eq!(mem(&w, pte), 0);
    assert_eq!(
        swaps_of(&w, p.id).len(),
        n,
        "swap entry -> 0: neither present"
    );
}

/// B135: a PDE pointed at another page table: the PTE monitor leaves the old table (whose write
/// hook goes at the commit) and is placed on the new table's entry, and the swap callback runs
/// with the new leaf; a later write to the new leaf reaches the hook.
#[test]
fn b135_upper_level_change_rehooks_lower_levels() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (old_pde, pde) = w.entry_value(p.pid, p.va, 2).unwrap();
    let (old_leaf, old_pte) = w.entry_value(p.pid, p.va, 1).unwrap();
    let old_pt = old_pte.page_base();
    let upper: Vec<Gpa> = [4u8, 3]
        .iter()
        .map(|l| w.entry_value(p.pid, p.va, *l).unwrap().1)
        .collect();
    // A new page table whose entry for `va` maps another frame.
    let p1 = (p.va >> 12) & 0x1FF;
    let new_pte = SPARE_TABLE.wrapping_add(p1 * 8);
    let new_leaf = SPARE_PAGE.0 | P | RW | US | A | D;
    w.machine.mem.write(SPARE_TABLE, &[0u8; 4096]);
    w.machine.mem.write_u64(new_pte, new_leaf);
    let new_pde = (old_pde & !PFN) | SPARE_TABLE.0;
    let gla = w.entry_gla(p.va, 2);
    w.mm_exec(0, p.pid, mm_code::MOV, gla, new_pde, 0).unwrap();
    assert_eq!(mem(&w, pde) & !(A | D), new_pde & !(A | D));
    assert_eq!(
        w.intro.swaps.last().copied(),
        Some(SwapRecord {
            hook: p.id,
            va: p.va,
            old: old_leaf,
            new: new_leaf
        })
    );
    let h = &w.intro.pts.hooks[&p.id];
    let levels: Vec<(u8, Gpa)> = h.levels.iter().map(|l| (l.level, l.entry)).collect();
    assert_eq!(
        levels,
        [(4, upper[0]), (3, upper[1]), (2, pde), (1, new_pte)]
    );
    assert_eq!(h.leaf_value(), new_leaf);
    assert!(w.intro.ptm.is_monitored(new_pte));
    assert!(!w.intro.ptm.is_monitored(old_pte));
    assert_eq!(w.hook_counts(old_pt), HookCounts::default());
    let fl = untrusted_flags(&w, old_pt);
    assert!(fl.contains(EptFlags::WRITE) && fl.contains(EptFlags::SUPPRESS_VE));
    let c = w.hook_counts(SPARE_TABLE);
    assert_eq!((c.write, c.pt, c.conv), (1, 1, 1));
    let fl = untrusted_flags(&w, SPARE_TABLE);
    assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    // The new leaf is what the hook watches now.
    let gla = w.entry_gla(p.va, 1);
    w.mm_exec(0, p.pid, mm_code::MOV, gla, new_leaf ^ RW, 0)
        .unwrap();
    assert_eq!(mem(&w, new_pte), new_leaf ^ RW);
    assert_eq!(
        swaps_of(&w, p.id),
        [(old_leaf, new_leaf), (new_leaf, new_leaf ^ RW)]
    );
}

/// B136: a parent that becomes invalid gives a swap callback with New = 0; when it comes back
/// the leaf is hooked again (0 → leaf); and an upper level remapped to a table with the same
/// leaf still runs the callback, with Old == New.
#[test]
fn b136_parent_invalidated_gives_swap_with_new_zero() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (old_pde, pde) = w.entry_value(p.pid, p.va, 2).unwrap();
    let (leaf, pte) = w.entry_value(p.pid, p.va, 1).unwrap();
    let gla = w.entry_gla(p.va, 2);
    w.mm_exec(0, p.pid, mm_code::MOV, gla, 0, 0).unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0)]);
    let h = &w.intro.pts.hooks[&p.id];
    assert_eq!(h.levels.last().map(|l| (l.level, l.entry)), Some((2, pde)));
    assert!(!w.intro.ptm.is_monitored(pte));
    // Back.
    w.mm_exec(0, p.pid, mm_code::MOV, gla, old_pde, 0).unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0), (0, leaf)]);
    assert!(w.intro.ptm.is_monitored(pte));
    // The same leaf under another table.
    let mut table = [0u8; 4096];
    w.machine.mem.read(pte.page_base(), &mut table);
    w.machine.mem.write(SPARE_TABLE, &table);
    let cur = mem(&w, pde);
    w.mm_exec(0, p.pid, mm_code::MOV, gla, (cur & !PFN) | SPARE_TABLE.0, 0)
        .unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0), (0, leaf), (leaf, leaf)]);
}

/// B137: the hook walks down and stops at a non-present entry (and is completed when the guest
/// maps the page) or at a large page (2 MiB at the PDE, 1 GiB at the PDPTE).
#[test]
fn b137_hook_stops_at_non_present_or_large_page() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    // The next 2 MiB of the same page directory: its PDE is not present.
    let va2 = p.va + 0x20_0000;
    let (pde2_value, pde2) = w.entry_value(p.pid, va2, 2).unwrap();
    assert_eq!(pde2_value, 0);
    let upper: Vec<Gpa> = [4u8, 3]
        .iter()
        .map(|l| w.entry_value(p.pid, va2, *l).unwrap().1)
        .collect();
    let id2 = w.hook_translation(p.cr3, va2, Owner::Process(p.pid));
    w.commit_hooks();
    let entries = |w: &World, id: TranslationId| -> Vec<(u8, Gpa)> {
        w.intro.pts.hooks[&id]
            .levels
            .iter()
            .map(|l| (l.level, l.entry))
            .collect()
    };
    assert_eq!(entries(&w, id2), [(4, upper[0]), (3, upper[1]), (2, pde2)]);
    assert_eq!(w.intro.pts.hooks[&id2].leaf_value(), 0);
    assert!(w.intro.ptm.is_monitored(pde2));
    // The guest maps it: the PDE write hooks the new table, the PTE write runs the callback.
    w.mm_map(0, p.pid, va2, bits::RW).unwrap();
    let (leaf2, pte2) = w.entry_value(p.pid, va2, 1).unwrap();
    assert_eq!(
        entries(&w, id2),
        [(4, upper[0]), (3, upper[1]), (2, pde2), (1, pte2)]
    );
    assert_eq!(swaps_of(&w, id2), [(0, leaf2)]);
    // Large pages in the System CR3.
    const VA_2M: u64 = 0xFFFF_F800_4000_0000;
    const VA_1G: u64 = 0xFFFF_F840_0000_0000;
    for (va, gpa, size, levels) in [
        (VA_2M, Gpa(0x0800_0000), PageSize::Size2M, 3usize),
        (VA_1G, Gpa(0x4000_0000), PageSize::Size1G, 2),
    ] {
        w.guest
            .tables
            .map(&mut w.machine.mem, Gla(va), gpa, size, PteFlags::WRITABLE)
            .unwrap();
        let id = w.hook_translation(w.guest.cr3, va, Owner::Process(p.pid));
        let h = &w.intro.pts.hooks[&id];
        assert_eq!(h.levels.len(), levels, "{size:?}");
        let last = h.levels[levels - 1];
        assert_eq!(last.level, size.leaf_level());
        assert_eq!(
            last.entry,
            w.guest.entry_gpa(&w.machine, va, last.level).unwrap()
        );
        assert_eq!(last.value & (P | PS | PFN), P | PS | gpa.0);
        assert_eq!(h.leaf_value(), last.value);
        assert_eq!(h.leaf_size(), size.bytes());
    }
}

// =============================================================================================
// Q. Quirks Q16, Q24, Q27 in both settings
// =============================================================================================

/// Q16 through the lifecycle: entry 1 is cached by a raise, the unload is requested (pages stay
/// convertible until the unloader runs), then a monitor is placed on entry 1 and the guest
/// changes it. `hvmi` does not evict, so the agent ignores the change; `fixed` evicts and
/// raises. Once the unloader runs, the write is an exit and introcore sees it either way.
fn q16_run(q: Quirks) -> (Fx, Gpa) {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.write_entry(0, 1, OLD);
    assert!(f.w.cache_contains(e1));
    assert_eq!(f.w.remove_agent(), Ok(()));
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.write_entry(0, 1, OLD ^ RW);
    (f, e1)
}

fn q16_after_unloader(f: &mut Fx, e1: Gpa) {
    f.w.deploy_unloader();
    let (ve, ncb) = (f.w.counters.ve_total, f.w.intro.callbacks.len());
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, ve);
    assert_eq!(callbacks(&f.w)[ncb..], [(e1, OLD ^ RW, OLD)]);
}

#[test]
fn q16_no_evict_while_unload_pending_hvmi() {
    let (mut f, e1) = q16_run(Quirks::hvmi());
    assert!(f.w.cache_contains(e1));
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::IgnoredCache]
    );
    assert!(callbacks(&f.w).is_empty(), "the monitored change is missed");
    q16_after_unloader(&mut f, e1);
}

#[test]
fn q16_no_evict_while_unload_pending_fixed() {
    let (mut f, e1) = q16_run(Quirks::fixed());
    assert!(!f.w.cache_contains(e1));
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::Raised]
    );
    assert_eq!(callbacks(&f.w), [(e1, OLD, OLD ^ RW)]);
    q16_after_unloader(&mut f, e1);
}

/// Q24 set-up: untrusted view 1, protected view 2, and a view 0 installed by hand (RWX, not
/// convertible). A real EPT-violation exit on DATA's table (the loader not complete yet) leaves
/// `ExitGpa` there; after the loader, the untrusted view's entry for that page drifts to RWX;
/// then a raised #VE on another table (DATA2's) is dispatched, and page-rights validation runs
/// on the stale `ExitGpa` in the view introcore believes current.
fn q24_run(q: Quirks) -> Fx {
    let mut c = config(q);
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    c.ve = false;
    let mut w = World::new(c).unwrap();
    let all = RWX | EptFlags::SUPPRESS_VE;
    w.machine
        .ept
        .insert(ViewId(0), EptView::new(EptEntry(all.bits())))
        .unwrap();
    let mut f = fx_on(w);
    f.w.guest
        .map_new(&mut f.w.machine, DATA2, PteFlags::WRITABLE)
        .unwrap();
    let pt2 =
        f.w.guest
            .entry_gpa(&f.w.machine, DATA2, 1)
            .unwrap()
            .page_base();
    let e2 = pt2.wrapping_add(8);
    f.w.place_monitor(e2);
    f.w.commit_hooks();
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(f.w.counters.ve_total, 0);
    f.w.complete_loader();
    f.w.machine
        .ept
        .view_mut(ViewId(1))
        .unwrap()
        .set_rights(f.pt.gfn(), RWX);
    let at = f.prep_store(0, self_map_entry_address(S, Gla(DATA2 + 0x1000), 1).0, OLD);
    run_to(&mut f.w, 0, at + 3, 10_000);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w).last().copied(), Some((e2, 0, OLD)));
    f
}

#[test]
fn q24_eptp_zero_hvmi() {
    let f = q24_run(Quirks::hvmi());
    assert_eq!(
        view_flags(&f.w, ViewId(0), f.pt) & RWX,
        R_X,
        "view 0 written"
    );
    assert_eq!(view_flags(&f.w, ViewId(1), f.pt) & RWX, RWX, "view 1 not");
}

#[test]
fn q24_eptp_zero_fixed() {
    let f = q24_run(Quirks::fixed());
    assert_eq!(
        view_flags(&f.w, ViewId(0), f.pt) & RWX,
        RWX,
        "view 0 untouched"
    );
    assert_eq!(
        view_flags(&f.w, ViewId(1), f.pt) & RWX,
        R_X,
        "view 1 written"
    );
}

/// Q27: three relevant writes to entry 0x1A0 (upper half) of a process PML4 that a user-VA
/// translation hook monitors.
fn q27_run(q: Quirks) -> (World, Vec<AgentOutcome>, Gpa) {
    let mut w = World::new(config(q)).unwrap();
    let p = proc_in(&mut w);
    let e = Gpa((p.cr3 & PFN) + 0x1A0 * 8);
    let (n, ncb) = (w.events.len(), w.intro.callbacks.len());
    let v = FREE_FRAME.0 | P | RW;
    for value in [v, v ^ RW, v] {
        write_pml4e(&mut w, p.pid, 0x1A0, value);
        assert_eq!(mem(&w, e), value);
    }
    assert_eq!(
        w.intro.callbacks.len(),
        ncb,
        "no callback for the upper half"
    );
    let o = pt_outcomes_since(&w, n);
    (w, o, e)
}

#[test]
fn q27_user_pml4_hvmi() {
    let (w, o, e) = q27_run(Quirks::hvmi());
    assert_eq!(o, [AgentOutcome::Raised; 3]);
    assert!(!w.cache_contains(e));
}

#[test]
fn q27_user_pml4_fixed() {
    let (w, o, e) = q27_run(Quirks::fixed());
    assert_eq!(
        o,
        [
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache,
            AgentOutcome::IgnoredCache
        ]
    );
    assert!(w.cache_contains(e));
}

// =============================================================================================
// I3. Isolation: the guest cannot reach the agent from the untrusted view
// =============================================================================================

/// What must not change when an attack fails: the agent's bytes, the callbacks and swaps
/// introcore ran, the agent verdicts.
struct Before {
    image: Vec<u8>,
    callbacks: usize,
    swaps: usize,
    verdicts: usize,
}

fn before(w: &World) -> Before {
    Before {
        image: agent_image(w),
        callbacks: w.intro.callbacks.len(),
        swaps: w.intro.swaps.len(),
        verdicts: pt_outcomes(w).len(),
    }
}

fn assert_nothing_reached(w: &World, b: &Before) {
    assert!(agent_image(w) == b.image, "agent memory unchanged");
    assert_eq!(w.intro.callbacks.len(), b.callbacks, "no dispatch");
    assert_eq!(w.intro.swaps.len(), b.swaps, "no swap");
    assert_eq!(pt_outcomes(w).len(), b.verdicts, "the agent did not run");
}

fn i3_fx() -> Fx {
    fx_with(config_n(Quirks::fixed(), 2))
}

#[test]
fn i3_untrusted_read_of_agent_is_blocked() {
    let mut f = i3_fx();
    let b = before(&f.w);
    let at = f.prep(
        0,
        &MOV_LOAD,
        &[
            (Gpr::Rax, agent_at(layout::AGENT_DATA + 8)),
            (Gpr::Rbx, 0x77),
        ],
    );
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(f.w.vcpus[0].reg(Gpr::Rbx), 0x77);
    assert_nothing_reached(&f.w, &b);
    assert_agent_still_works(&mut f, 1);
}

#[test]
fn i3_untrusted_write_of_agent_alerts() {
    let mut f = i3_fx();
    let b = before(&f.w);
    let at = f.prep(
        0,
        &MOV_STORE,
        &[(Gpr::Rax, agent_at(layout::AGENT_DATA + 8)), (Gpr::Rbx, 0)],
    );
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(alerts(&f.w), [0]);
    assert_nothing_reached(&f.w, &b);
    assert_agent_still_works(&mut f, 1);
}

/// Guest code that jumps into the agent's .text from the untrusted view: the fetch violates
/// EPT (the page has no access there, B89), which introcore answers with the B118 execute
/// alert.
#[test]
fn i3_untrusted_execute_of_agent_alerts() {
    let mut f = i3_fx();
    let b = before(&f.w);
    let target = agent_at(rip::PT_DECODE);
    f.w.vcpus[0].rip = target;
    let r = f.w.step(0);
    assert!(r.is_err() || f.w.vcpus[0].rip == target);
    assert_eq!(alerts(&f.w), [0]);
    assert!(
        !f.w.events
            .iter()
            .any(|e| matches!(e, Event::AgentFault { .. })),
        "the guest's fault is not the agent's"
    );
    assert_nothing_reached(&f.w, &b);
    assert_agent_still_works(&mut f, 1);
}

#[test]
fn i3_vmfunc_into_protected_view_from_guest_code_alerts() {
    let mut f = i3_fx();
    let b = before(&f.w);
    let protected = f.w.intro.protected;
    let mut code = VMFUNC.to_vec();
    code.extend_from_slice(&MOV_STORE_RDX);
    let at = f.prep(
        0,
        &code,
        &[
            (Gpr::Rax, 0),
            (Gpr::Rcx, u64::from(protected.0)),
            (Gpr::Rdx, agent_at(layout::AGENT_DATA + 8)),
            (Gpr::Rbx, 0),
        ],
    );
    f.w.step(0).unwrap();
    let r = f.w.step(0);
    assert!(r.is_err() || f.w.vcpus[0].rip == at + 3);
    assert_eq!(alerts(&f.w), [0]);
    assert_nothing_reached(&f.w, &b);
    assert_agent_still_works(&mut f, 1);
}

#[test]
fn i3_guest_write_to_information_page_alerts() {
    let mut f = i3_fx();
    let b = before(&f.w);
    // The semaphore of VCPU 1's page: setting it would turn #VEs into exits.
    let at = f.prep(
        0,
        &MOV_STORE,
        &[
            (Gpr::Rax, agent_at(layout::AGENT_VEINFO + 0x1000)),
            (Gpr::Rbx, 0xFFFF_FFFF_0000_0030),
        ],
    );
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(alerts(&f.w), [0]);
    assert_nothing_reached(&f.w, &b);
    assert_agent_still_works(&mut f, 1);
}

/// The guest remaps the agent's .data page onto DATA's frame, which it can also write through
/// DATA: the remap is seen (B116: the contents move, the agent keeps its data), and the frame,
/// now an agent page, is protected in the untrusted view, so the write through the guest's own
/// alias is blocked with an alert and the agent's data stays intact.
#[test]
fn i3_remapped_agent_page_stays_protected() {
    let mut f = i3_fx();
    // One #VE first, so the agent's one-time state (B14) is already in its data page.
    f.write_entry(0, 3, OLD);
    let data_va = agent_at(layout::AGENT_DATA);
    let mut old = [0u8; 4096];
    f.w.machine
        .mem
        .read(agent_gpa(layout::AGENT_DATA), &mut old);
    let id = agent_hook_of(&f.w, data_va);
    let to = f.data;
    let (o, n) = remap_agent_page(&mut f, 0, layout::AGENT_DATA, to);
    assert_eq!(swaps_of(&f.w, id), [(o, n)]);
    let mut now = [0u8; 4096];
    f.w.machine.mem.read(phys(&f.w, data_va), &mut now);
    assert!(now == old, "the agent's data moved with the page");
    // DATA's PTE already accessed and dirty, so the write below needs no page walk.
    let pte = f.get(0);
    f.set(0, pte | A | D);
    let b = before(&f.w);
    let at = f.prep(0, &MOV_STORE, &[(Gpr::Rax, DATA + 8), (Gpr::Rbx, 0)]);
    let r = f.w.step(0);
    assert_blocked(&f.w, &r, at);
    assert_eq!(alerts(&f.w), [0]);
    let mut after = [0u8; 4096];
    f.w.machine.mem.read(to, &mut after);
    assert!(after == old, "the agent's data is intact");
    assert_eq!(f.w.intro.callbacks.len(), b.callbacks);
    assert_agent_still_works(&mut f, 1);
}

/// A RAISE_EPT VMCALL from guest code, with a plausible pending raise in VCPU 0's page: the
/// RIP is not in the agent (B102 a), so nothing is dispatched.
#[test]
fn i3_raise_ept_vmcall_from_outside_the_agent_is_not_dispatched() {
    let mut f = i3_fx();
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    let page = f.w.ve_page(0).unwrap();
    let m = &mut f.w.machine.mem;
    m.write_u64(page.wrapping_add(0x08), 0x1AA);
    m.write_u64(page.wrapping_add(0x10), egla(1));
    m.write_u64(page.wrapping_add(0x18), e1.0);
    m.write_u64(page.wrapping_add(veinfo::OLD_VALUE), 0);
    m.write_u64(page.wrapping_add(veinfo::NEW_VALUE), OLD);
    let b = before(&f.w);
    let at = f.prep(
        0,
        &VMCALL,
        &[
            (Gpr::Rax, 0x22),
            (Gpr::Rdi, 0x18),
            (Gpr::Rsi, 0),
            (Gpr::Rdx, RAISE_EPT),
        ],
    );
    let r = f.w.step(0);
    assert!(r.is_ok() || f.w.vcpus[0].rip == at);
    assert_nothing_reached(&f.w, &b);
    assert_eq!(f.get(1), 0, "the entry was not written");
    assert_agent_still_works(&mut f, 1);
}

// =============================================================================================
// Lifecycle: deploy, use, unload, redeploy, use again
// =============================================================================================

/// Eight entries of one cache bucket (line 0x34, bucket 0x2D).
fn bucket_entry(k: u64) -> Gpa {
    Gpa(0x0123_4568 + (k << 18))
}

fn lifecycle(q: Quirks) -> Fx {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    // Use.
    f.write_entry(0, 1, OLD);
    f.write_entry(0, 2, OLD);
    f.write_entry(0, 2, OLD ^ RW);
    assert_eq!(
        pt_outcomes(&f.w),
        [
            AgentOutcome::Raised,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache
        ]
    );
    for k in 0..8 {
        f.w.update_cache(bucket_entry(k), false);
    }
    // Unload.
    assert_eq!(f.w.unload_agent(), Ok(true));
    let untrusted = f.w.intro.untrusted;
    for (g, e) in f.w.machine.ept.view(untrusted).unwrap().entries() {
        assert!(e.flags().contains(EptFlags::SUPPRESS_VE), "{g:?}");
    }
    for v in &f.w.vcpus {
        assert_eq!(v.ve_info, None);
        assert!(!v.ve_enabled);
    }
    // The monitor stays: a write is an exit now.
    let (ve, ncb) = (f.w.counters.ve_total, f.w.intro.callbacks.len());
    f.write_entry(0, 1, OLD ^ RW);
    assert_eq!(f.w.counters.ve_total, ve);
    assert_eq!(callbacks(&f.w)[ncb..], [(e1, OLD, OLD ^ RW)]);
    // Redeploy and use again.
    f.w.redeploy_agent().unwrap();
    assert!(f.w.intro.deployed);
    let n = f.w.events.len();
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, ve + 1);
    assert_eq!(pt_outcomes_since(&f.w, n), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w).last().copied(), Some((e1, OLD ^ RW, OLD)));
    assert_eq!(f.w.ve_stats()[0].total, 1, "a new image, new counters");
    f
}

#[test]
fn lifecycle_deploy_use_unload_redeploy_use_fixed() {
    let mut f = lifecycle(Quirks::fixed());
    // Q17 fixed: the bucket filled before the unload starts empty and from slot 0.
    let r = f.w.intro.cache.stats.random_replacements;
    f.w.update_cache(bucket_entry(8), false);
    assert_eq!(f.w.intro.cache.stats.random_replacements, r);
    let slot0 = agent_gpa(layout::AGENT_VECACHE + 0x34 * 0x1000 + 0x2D * 64);
    assert_eq!(mem(&f.w, slot0), bucket_entry(8).0);
}

#[test]
fn lifecycle_deploy_use_unload_redeploy_use_hvmi() {
    let mut f = lifecycle(Quirks::hvmi());
    // Q17 hvmi: the bucket's fill counter survived the redeploy: random replacement at once.
    let r = f.w.intro.cache.stats.random_replacements;
    f.w.update_cache(bucket_entry(8), false);
    assert_eq!(f.w.intro.cache.stats.random_replacements, r + 1);
}

/// After unload and redeploy the agent is protected exactly as after the first deploy (B89):
/// the header has one read, one write and one execute hook.
#[test]
fn lifecycle_redeploy_protects_the_agent_once() {
    let mut f = unloaded(Quirks::fixed());
    f.w.redeploy_agent().unwrap();
    let c = f.w.hook_counts(layout::AGENT_GPA);
    assert_eq!((c.read, c.write, c.execute), (1, 1, 1));
    assert_eq!(agent_hooks(&f.w).len() as u64, AGENT_PAGES);
    assert_eq!(
        handler_bytes(&f.w),
        retpoline(layout::AGENT_GVA + layout::AGENT_VESTUB)
    );
}
