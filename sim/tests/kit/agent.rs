//! The deployed agent as the guest sees it: its image, its swap hooks, remaps of its pages and
//! what a blocked access to it looks like.

use super::events::{callbacks, pt_outcomes_since};
use super::spec::{P, PFN, RW, S};
use super::ve::{agent_at, run_to};
use super::worlds::{mem, phys, Fx, OLD};
use vesim::agent::AgentOutcome;
use vesim::introcore::pts::{Owner, TranslationId};
use vesim::layout;
use vesim::world::{Stop, World};
use vesim_model::paging::self_map_entry_address;
use vesim_model::{Gla, Gpa};

/// Number of agent pages.
pub const AGENT_PAGES: u64 = layout::AGENT_SIZE / 0x1000;

/// The 24 bytes at the OS #VE handler.
pub fn handler_bytes(w: &World) -> [u8; 24] {
    let mut b = [0u8; 24];
    w.machine
        .mem
        .read(phys(w, layout::OS_VE_HANDLER_GVA), &mut b);
    b
}

/// Every byte of the agent image, as its frames hold it.
pub fn agent_image(w: &World) -> Vec<u8> {
    let mut b = vec![0u8; layout::AGENT_SIZE as usize];
    w.machine.mem.read(layout::AGENT_GPA, &mut b);
    b
}

/// A blocked access (NotAllowed): VCPU 0 stopped, retries the 3-byte instruction at `at`, or
/// skipped it without effect; it went nowhere else.
pub fn assert_blocked(w: &World, r: &Result<(), Stop>, at: u64) {
    let rip = w.vcpus[0].rip;
    assert!(
        r.is_err() || rip == at || rip == at + 3,
        "{r:?}, RIP {rip:#x}"
    );
}

/// The agent's translation hooks (B91).
pub fn agent_hooks(w: &World) -> Vec<(TranslationId, u64)> {
    w.intro
        .pts
        .hooks
        .iter()
        .filter(|(_, h)| h.owner == Owner::Agent)
        .map(|(i, h)| (*i, h.va))
        .collect()
}

/// The agent's translation hook of the page at `va`.
pub fn agent_hook_of(w: &World, va: u64) -> TranslationId {
    agent_hooks(w)
        .into_iter()
        .find(|(_, v)| *v == va)
        .map(|(i, _)| i)
        .unwrap()
}

/// Remaps agent page `off` to `to` with a real MOV of its PTE through the System self-map on
/// VCPU `cpu`; returns (old PTE, new PTE).
pub fn remap_agent_page(f: &mut Fx, cpu: usize, off: u64, to: Gpa) -> (u64, u64) {
    let va = agent_at(off);
    let pte = f.w.guest.entry_gpa(&f.w.machine, va, 1).unwrap();
    let old = mem(&f.w, pte);
    let new = (old & !PFN) | to.0;
    let at = f.prep_store(cpu, self_map_entry_address(S, Gla(va), 1).0, new);
    run_to(&mut f.w, cpu, at + 3, 10_000);
    assert_eq!(mem(&f.w, pte), new);
    (old, new)
}

/// A monitored write on VCPU `cpu` still goes through the agent: one raised #VE, the callback,
/// the entry written.
pub fn assert_agent_still_works(f: &mut Fx, cpu: usize) {
    let e = f.e(20);
    if !f.w.intro.ptm.is_monitored(e) {
        f.w.engine().place_monitor(e);
        f.w.engine().commit_hooks();
    }
    let (n, ncb) = (f.w.events.len(), f.w.intro.callbacks.len());
    let old = f.get(20);
    let new = if old & P == 0 { OLD } else { old ^ RW };
    f.write_entry(cpu, 20, new);
    assert_eq!(pt_outcomes_since(&f.w, n), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w)[ncb..], [(e, old, new)]);
    assert_eq!(f.get(20), new);
}
