//! I3: the guest cannot reach the agent from the untrusted view.

use crate::fx_with;
use crate::kit::{agent::*, asm::*, events::*, spec::*, ve::*, worlds::*};
use vesim::agent::rip;
use vesim::layout::{self, veinfo};
use vesim::quirks::Quirks;
use vesim::world::{Event, World};
use vesim_model::vcpu::Gpr;
use vesim_model::VcpuId;

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
    let r = f.w.step(VcpuId(0));
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
    let r = f.w.step(VcpuId(0));
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
    let r = f.w.step(VcpuId(0));
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
    f.w.step(VcpuId(0)).unwrap();
    let r = f.w.step(VcpuId(0));
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
    let r = f.w.step(VcpuId(0));
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
    let r = f.w.step(VcpuId(0));
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
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    let page = f.w.ve_page(VcpuId(0)).unwrap();
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
    let r = f.w.step(VcpuId(0));
    assert!(r.is_ok() || f.w.vcpus[0].rip == at);
    assert_nothing_reached(&f.w, &b);
    assert_eq!(f.get(1), 0, "the entry was not written");
    assert_agent_still_works(&mut f, 1);
}
