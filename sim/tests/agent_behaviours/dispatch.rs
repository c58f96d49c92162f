//! B102–B114: VMCALL dispatch and IntDispatchVeAsEpt.

use crate::fx;
use crate::kit::{ept::*, events::*, spec::*, ve::*, worlds::*};
use vesim::agent::rip;
use vesim::layout::veinfo;
use vesim::quirks::Quirks;
use vesim_model::ept::EptFlags;
use vesim_model::vcpu::Gpr;
use vesim_model::VcpuId;

/// B102: hook removals are committed at the end of the VMCALL (step 6).
#[test]
fn b102_removals_committed_at_the_end_of_the_vmcall() {
    let mut f = fx(Quirks::fixed());
    let pt = f.pt;
    for id in f.w.intro.ptm.monitors(pt.wrapping_add(256 * 8)) {
        f.w.engine().remove_monitor(id);
    }
    assert!(
        !untrusted_flags(&f.w, pt).contains(EptFlags::WRITE),
        "deferred"
    );
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    let fl = untrusted_flags(&f.w, pt);
    assert!(fl.contains(EptFlags::WRITE) && fl.contains(EptFlags::SUPPRESS_VE));
    assert_eq!(f.w.intro.hook_counts(pt), Default::default());
    f.mov_entry(0, 2, OLD ^ RW);
    run_to(&mut f.w, 0, CODE + 3, 5);
    assert_eq!(f.w.counters.ve_total, 1, "the table is no longer protected");
    assert_eq!(f.get(2), OLD ^ RW);
}

/// B102 (a): only a VMCALL whose RIP is inside the agent reaches the #VE hypercall handler.
#[test]
fn b102_raise_from_outside_the_agent_is_not_dispatched() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    // A pending raise in the page, as the agent would leave it.
    let w = &mut f.w;
    pg_set(w, 0, 0x08, QUAL_WRITE);
    pg_set(w, 0, 0x10, egla(1));
    pg_set(w, 0, 0x18, e1.0);
    pg_set(w, 0, veinfo::OLD_VALUE, 0);
    pg_set(w, 0, veinfo::NEW_VALUE, OLD);
    f.code(&[0x0F, 0x01, 0xC1]); // vmcall
    let v = &mut f.w.vcpus[0];
    v.set_reg(Gpr::Rax, 0x22);
    v.set_reg(Gpr::Rdi, 0x18);
    v.set_reg(Gpr::Rsi, 0);
    v.set_reg(Gpr::Rdx, RAISE_EPT);
    run_to(&mut f.w, 0, CODE + 3, 2);
    assert!(callbacks(&f.w).is_empty());
    assert_eq!(f.get(1), 0);
}

/// B103: NOP, BREAK, TRACE and unknown numbers change nothing in the guest; RAISE_EPT
/// dispatches.
#[test]
fn b103_hypercall_numbers() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    let w = &mut f.w;
    pg_set(w, 0, 0x08, QUAL_WRITE);
    pg_set(w, 0, 0x10, egla(1));
    pg_set(w, 0, 0x18, e1.0);
    pg_set(w, 0, veinfo::NEW_VALUE, OLD);
    let at = agent_at(rip::H_BREAK);
    for rdx in [NOP, BREAK, TRACE, 7, RAISE_EPT] {
        let v = &mut w.vcpus[0];
        v.rip = at;
        v.set_reg(Gpr::Rax, 0x22);
        v.set_reg(Gpr::Rdi, 0x18);
        v.set_reg(Gpr::Rsi, 0);
        v.set_reg(Gpr::Rdx, rdx);
        let before = w.machine.clone();
        w.engine().hypercall(VcpuId(0));
        assert_eq!(w.vcpus[0].rip, at + 3);
        assert_eq!(w.counters.vmcalls.get(&rdx), Some(&1));
        if rdx == RAISE_EPT {
            assert_eq!(callbacks(w), [(e1, 0, OLD)]);
        } else {
            assert!(w.machine == before, "call {rdx} changed the machine");
            assert!(callbacks(w).is_empty());
        }
    }
}

/// B108/B134: old and new come from the page (0x210/0x218), not from guest memory.
#[test]
fn b134_old_and_new_come_from_the_info_page() {
    let mut f = fx(Quirks::hvmi());
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_RAISE);
    pg_set(&mut f.w, 0, veinfo::OLD_VALUE, 0x5000_0001);
    pg_set(&mut f.w, 0, veinfo::NEW_VALUE, 0x6000_0003);
    f.w.step(VcpuId(0)).unwrap();
    assert_eq!(callbacks(&f.w), [(e1, 0x5000_0001, 0x6000_0003)]);
    f.w.run_agent(VcpuId(0), 100).unwrap();
    assert_eq!(f.get(1), 0x6000_0003);
}

/// B105: the dispatch takes the GPA (and GLA, qualification) from the page, not from the
/// instruction: a GPA rewritten in the page before the raise is the entry introcore reports
/// and patches (B109), while the agent still stores at the GLA.
#[test]
fn b105_dispatch_takes_the_gpa_from_the_page() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    f.w.engine().place_monitor(e1);
    f.w.engine().place_monitor(e2);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_RAISE);
    pg_set(&mut f.w, 0, 0x18, e2.0);
    f.w.run_agent(VcpuId(0), 100).unwrap();
    assert_eq!(callbacks(&f.w), [(e2, 0, OLD)]);
    assert_eq!((f.get(1), f.get(2)), (OLD, OLD));
}

/// B109: introcore writes NewValue into guest memory during the raise, before the agent's own
/// store.
#[test]
fn b109_new_value_written_before_callbacks() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e1 = f.e(1);
        f.w.engine().place_monitor(e1);
        f.w.engine().commit_hooks();
        f.mov_entry(0, 1, OLD);
        deliver(&mut f.w, 0);
        to_step(&mut f.w, 0, rip::PT_STORE);
        assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
        assert_eq!(f.get(1), OLD, "already in memory before the agent's store");
    }
}

/// B114/B138: the callbacks of the written entry's monitors run, in placement order; a monitor
/// whose removal is pending is skipped; other entries' monitors do not run.
#[test]
fn b114_callbacks_of_the_written_entry_only_in_order() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    let a = f.w.engine().place_monitor(e1);
    let b = f.w.engine().place_monitor(e1);
    let c = f.w.engine().place_monitor(e2);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    let got: Vec<_> =
        f.w.intro
            .callbacks
            .iter()
            .map(|r| (r.monitor, r.old, r.new))
            .collect();
    assert_eq!(got, [(a, 0, OLD), (b, 0, OLD)]);
    assert!(f.w.intro.callbacks.iter().all(|r| r.monitor != c));
    f.w.engine().remove_monitor(a);
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    let last = f.w.intro.callbacks.last().unwrap();
    assert_eq!((last.monitor, last.old, last.new), (b, OLD, OLD ^ RW));
    assert_eq!(f.w.intro.callbacks.len(), 3);
}
