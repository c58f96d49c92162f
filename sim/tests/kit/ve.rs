//! Driving a #VE through the agent step by step, and the agent's state in guest memory.

use vesim::layout::{self, veinfo};
use vesim::world::World;
use vesim_model::ept::EptQualification;
use vesim_model::{EptViolation, Gla, Gpa, Outcome, VcpuId};

/// The guest-linear address of agent offset `off`.
pub fn agent_at(off: u64) -> u64 {
    layout::AGENT_GVA + off
}

/// The guest-physical address of agent offset `off`.
pub fn agent_gpa(off: u64) -> Gpa {
    layout::AGENT_GPA.wrapping_add(off)
}

/// Steps VCPU `cpu` until a #VE has been delivered (RIP at the hooked OS handler).
pub fn deliver(w: &mut World, cpu: usize) {
    let n = w.counters.ve_total;
    for _ in 0..64 {
        if w.counters.ve_total > n {
            return;
        }
        w.step(VcpuId(cpu)).unwrap();
    }
    panic!("no #VE on VCPU {cpu}; RIP {:#x}", w.vcpus[cpu].rip);
}

/// Delivers one #VE and runs the agent until it returns.
pub fn one_ve(w: &mut World, cpu: usize) {
    deliver(w, cpu);
    w.run_agent(VcpuId(cpu), 10_000).unwrap();
}

/// Steps VCPU `cpu` until its RIP is the agent step at `off`.
pub fn to_step(w: &mut World, cpu: usize, off: u64) {
    for _ in 0..10_000 {
        if w.vcpus[cpu].rip == agent_at(off) {
            return;
        }
        w.step(VcpuId(cpu)).unwrap();
    }
    panic!("agent step {off:#x} not reached");
}

/// Steps VCPU `cpu` until RIP is `rip`.
pub fn run_to(w: &mut World, cpu: usize, rip: u64, steps_max: u64) {
    for _ in 0..steps_max {
        if w.vcpus[cpu].rip == rip {
            return;
        }
        w.step(VcpuId(cpu)).unwrap();
    }
    panic!("RIP {rip:#x} not reached; at {:#x}", w.vcpus[cpu].rip);
}

/// Raises an EPT violation on VCPU `cpu` through the model's hardware path (the HW §2.1
/// predicate, the information area, delivery) without running the agent.
pub fn raise_only(w: &mut World, cpu: usize, qualification: u64, gla: u64, gpa: Gpa) {
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
    w.count_ve(VcpuId(cpu), qualification);
}

/// Raises an EPT violation as `raise_only` does, then runs the agent until it returns.
pub fn inject(w: &mut World, cpu: usize, qualification: u64, gla: u64, gpa: Gpa) {
    raise_only(w, cpu, qualification, gla, gpa);
    w.run_agent(VcpuId(cpu), 10_000).unwrap();
}

/// VCPU `cpu`'s information page.
pub fn page_of(w: &World, cpu: usize) -> Gpa {
    w.ve_page(VcpuId(cpu))
        .expect("the VCPU has an information page")
}

/// The qword at `off` of VCPU `cpu`'s information page.
pub fn pg(w: &World, cpu: usize, off: u64) -> u64 {
    w.machine.mem.read_u64(page_of(w, cpu).wrapping_add(off))
}

/// Writes the qword at `off` of VCPU `cpu`'s information page.
pub fn pg_set(w: &mut World, cpu: usize, off: u64, v: u64) {
    let g = page_of(w, cpu).wrapping_add(off);
    w.machine.mem.write_u64(g, v);
}

/// The `Raised` byte of VCPU `cpu`'s information page.
pub fn raised_byte(w: &World, cpu: usize) -> u8 {
    let mut b = [0u8; 1];
    w.machine
        .mem
        .read(page_of(w, cpu).wrapping_add(veinfo::RAISED), &mut b);
    b[0]
}

/// The 512 agent locks as 8 words.
pub fn locks(w: &World) -> [u64; 8] {
    let mut out = [0u64; 8];
    for (i, l) in out.iter_mut().enumerate() {
        *l = w
            .machine
            .mem
            .read_u64(layout::AGENT_GPA.wrapping_add(layout::DATA_LOCKS + 8 * i as u64));
    }
    out
}

/// Whether agent lock `index` is held.
pub fn lock_held(w: &World, index: u64) -> bool {
    locks(w)[(index / 64) as usize] & (1 << (index % 64)) != 0
}

/// Takes (`held`) or releases agent lock `index`.
pub fn set_lock(w: &mut World, index: u64, held: bool) {
    let g = layout::AGENT_GPA.wrapping_add(layout::DATA_LOCKS + (index / 64) * 8);
    let v = w.machine.mem.read_u64(g);
    let bit = 1u64 << (index % 64);
    w.machine
        .mem
        .write_u64(g, if held { v | bit } else { v & !bit });
}
