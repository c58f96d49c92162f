//! One page-table write, end to end (ARCHITECTURE.md): the guest executes a real instruction
//! through the self-map, the CPU model raises the EPT violation and delivers the #VE, the
//! hooked OS handler reaches the agent, which emulates, raises, and returns; introcore's
//! monitor sees the old and new values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim::agent::AgentOutcome;
use vesim::layout;
use vesim::world::{Event, World, WorldConfig};
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::vcpu::Gpr;
use vesim_model::ve_info::VeInfo;
use vesim_model::{Gla, Gpa, VcpuId};

const CODE: u64 = 0xFFFF_F800_0030_0000;
const DATA: u64 = 0xFFFF_F800_0040_0000;

struct Setup {
    w: World,
    pte_gpa: Gpa,
    pte_gla: u64,
}

fn setup(config: WorldConfig, code: &[u8]) -> Setup {
    let mut w = World::new(config).unwrap();
    let code_gpa = w
        .guest
        .map_new(&mut w.machine, CODE, PteFlags::empty())
        .unwrap();
    w.guest
        .map_new(&mut w.machine, DATA, PteFlags::WRITABLE)
        .unwrap();
    w.machine.mem.write(code_gpa, code);
    let pte_gpa = w.guest.entry_gpa(&w.machine, DATA, 1).unwrap();
    w.engine().place_monitor(pte_gpa);
    w.engine().commit_hooks();
    let pte_gla = self_map_entry_address(layout::DEFAULT_SELF_MAP_INDEX, Gla(DATA), 1).0;
    let v = &mut w.vcpus[0];
    v.rip = CODE;
    v.set_reg(Gpr::Rax, pte_gla);
    Setup {
        w,
        pte_gpa,
        pte_gla,
    }
}

fn run_until(w: &mut World, rip: u64, steps_max: u64) {
    for _ in 0..steps_max {
        if w.vcpus[0].rip == rip {
            return;
        }
        w.step(VcpuId(0)).unwrap();
    }
    panic!("VCPU did not reach {rip:#x}; at {:#x}", w.vcpus[0].rip);
}

#[test]
fn relevant_write_travels_the_whole_way_and_returns() {
    let mut s = setup(WorldConfig::default(), &[0x48, 0x89, 0x18]); // mov [rax], rbx
    let old = s.w.machine.mem.read_u64(s.pte_gpa);
    let new = (old & !0x000F_FFFF_FFFF_F000) | 0x0077_7000;
    s.w.vcpus[0].set_reg(Gpr::Rbx, new);
    let untrusted = s.w.vcpus[0].eptp_index;
    run_until(&mut s.w, CODE + 3, 1000);
    // The write happened, through the agent.
    assert_eq!(s.w.machine.mem.read_u64(s.pte_gpa), new);
    let ve = s.w.events.iter().find_map(|e| match e {
        Event::Ve {
            gla,
            gpa,
            qualification,
            ..
        } => Some((*gla, *gpa, *qualification)),
        _ => None,
    });
    // HW §3: a plain write to a write-protected, RWX-minus-W page, GLA translated.
    assert_eq!(ve, Some((vesim_model::Gla(s.pte_gla), s.pte_gpa, 0x1AA)));
    let verdicts: Vec<AgentOutcome> =
        s.w.events
            .iter()
            .filter_map(|e| match e {
                Event::Agent { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect();
    assert_eq!(verdicts, [AgentOutcome::Raised]);
    // The monitor saw old and new.
    let cb = s.w.intro.callbacks.last().copied().unwrap();
    assert_eq!((cb.entry, cb.old, cb.new), (s.pte_gpa, old, new));
    // I4: semaphore cleared by the exit, back in the untrusted view, registers restored.
    let page = s.w.vcpus[0].ve_info.unwrap();
    assert_eq!(VeInfo::semaphore(&s.w.machine.mem, page), 0);
    assert_eq!(s.w.vcpus[0].eptp_index, untrusted);
    assert_eq!(s.w.vcpus[0].reg(Gpr::Rbx), new);
    assert_eq!(s.w.vcpus[0].reg(Gpr::Rax), s.pte_gla);
    assert_eq!(
        s.w.vcpus[0].gpr[4],
        layout::KERNEL_STACKS_GVA + 0x4000 - 0x100
    );
    assert_eq!(s.w.vcpus[0].cs, layout::KERNEL_CS);
}

#[test]
fn irrelevant_write_is_filtered_without_a_vmcall_and_a_second_write_delivers_again() {
    // mov [rax], rbx twice: the second #VE proves the semaphore was re-armed.
    let code = [0x48, 0x89, 0x18, 0x48, 0x89, 0x18];
    let mut s = setup(WorldConfig::default(), &code);
    let old = s.w.machine.mem.read_u64(s.pte_gpa);
    s.w.vcpus[0].set_reg(Gpr::Rbx, old | 0x60); // A and D only
    run_until(&mut s.w, CODE + 6, 2000);
    assert_eq!(s.w.machine.mem.read_u64(s.pte_gpa), old | 0x60);
    assert_eq!(s.w.counters.ve_total, 2);
    assert_eq!(s.w.counters.ignored_irrelevant, 2);
    assert_eq!(s.w.counters.vmcalls.get(&3), None, "no RAISE_EPT");
}

#[test]
fn ve_off_baseline_takes_an_exit_and_introcore_emulates() {
    let config = WorldConfig {
        ve: false,
        ..WorldConfig::default()
    };
    let mut s = setup(config, &[0x48, 0x89, 0x18]);
    let old = s.w.machine.mem.read_u64(s.pte_gpa);
    let new = old ^ 0x2; // RW flips: relevant
    s.w.vcpus[0].set_reg(Gpr::Rbx, new);
    run_until(&mut s.w, CODE + 3, 100);
    assert_eq!(s.w.machine.mem.read_u64(s.pte_gpa), new);
    assert_eq!(s.w.counters.ve_total, 0);
    assert_eq!(s.w.counters.exits.get(&48), Some(&1));
    let cb = s.w.intro.callbacks.last().copied().unwrap();
    assert_eq!((cb.old, cb.new), (old, new));
}

#[test]
fn page_walk_accessed_bit_is_set_by_the_agent_and_the_read_retries() {
    // mov rcx, [rdx]: a read of DATA whose PTE has A clear, in a write-protected table page.
    let mut s = setup(WorldConfig::default(), &[0x48, 0x8B, 0x0A]);
    let pte = s.w.machine.mem.read_u64(s.pte_gpa);
    s.w.machine.mem.write_u64(s.pte_gpa, pte & !0x60);
    s.w.machine
        .mem
        .write_u64(s.w.guest.phys(&s.w.machine, DATA).unwrap(), 0x1234_5678);
    s.w.vcpus[0].set_reg(Gpr::Rdx, DATA);
    run_until(&mut s.w, CODE + 3, 2000);
    assert_eq!(s.w.vcpus[0].reg(Gpr::Rcx), 0x1234_5678);
    let after = s.w.machine.mem.read_u64(s.pte_gpa);
    assert_eq!(after & 0x20, 0x20, "A set");
    assert_eq!(after & 0x40, 0, "a read sets no D (fixed)");
    assert_eq!(s.w.counters.ve_page_walk, 1);
    let q = s.w.events.iter().find_map(|e| match e {
        Event::Ve {
            qualification,
            gpa,
            gla,
            ..
        } => Some((*qualification, *gpa, *gla)),
        _ => None,
    });
    // HW §4.3: the A write to a table page with rights R-X (RWX minus the write hook): 0xAB,
    // GPA of the entry, GLA of the address being translated.
    assert_eq!(q, Some((0xAB, s.pte_gpa, vesim_model::Gla(DATA))));
}
