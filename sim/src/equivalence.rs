//! I6, equivalence (VE-SEMANTICS section 4): a workload whose page-table writes the guest
//! serializes ends in the same guest-visible state with #VE on and off.
//!
//! The #VE-off world runs the same operations under the same schedule of guest operations as
//! the #VE-on world ([`follow`]): operation starts, instruction completions and abnormal ends
//! happen in the order the #VE-on run logged them ([`crate::ops::OpRunner::log`]). What the
//! two runs may differ in (the agent's pages, the stacks, the A/D bits of the entries that map
//! the agent, the IDT, the OS #VE handler and the kernel stacks) is left out of the comparison
//! ([`difference`]).

use crate::layout;
use crate::ops::OpRunner;
use crate::world::World;
use std::collections::BTreeSet;
use vesim_model::{Gfn, Gpa, VcpuId};

/// The accessed and dirty bits of a paging-structure entry.
const AD: u64 = 0x60;

/// Steps the #VE-off world may take for one logged event before the schedules are declared
/// to have diverged.
const STEPS_PER_EVENT_MAX: u64 = 10_000;

/// Runs `runner` in `w` so that its guest-operation events happen in the order of `log` (the
/// log of the #VE-on run of the same operations). An error names the first divergence.
pub fn follow(w: &mut World, runner: &mut OpRunner, log: &[usize]) -> Result<(), String> {
    let mut k = 0;
    while let Some(&cpu) = log.get(k) {
        let mut steps = 0;
        let before = runner.log.len();
        while runner.log.len() == before {
            runner
                .op_step(w, VcpuId(cpu))
                .map_err(|s| format!("VCPU {cpu} stopped in the #VE-off run: {s}"))?;
            steps += 1;
            if steps > STEPS_PER_EVENT_MAX {
                return Err(format!(
                    "VCPU {cpu} made no progress in the #VE-off run at guest-operation event {k}"
                ));
            }
        }
        k += runner.log.len() - before;
    }
    if runner.log.len() != log.len() || (0..w.vcpus.len()).any(|c| runner.busy(VcpuId(c))) {
        return Err(format!(
            "the #VE-off run has {} guest-operation events where the #VE-on run had {}",
            runner.log.len(),
            log.len()
        ));
    }
    Ok(())
}

/// The entries of every level that translate `gva` under `cr3` (software walk, no A/D).
fn translation_entries(w: &World, cr3: u64, gva: u64, out: &mut BTreeSet<Gpa>) {
    let mut table = cr3 & 0x000F_FFFF_FFFF_F000;
    for level in (1..=4u32).rev() {
        let idx = (gva >> (12 + 9 * (level - 1))) & 0x1FF;
        let entry = Gpa(table | (idx * 8));
        let v = w.machine.mem.read_u64(entry);
        out.insert(entry);
        let large = level != 4 && level != 1 && v & 0x80 != 0;
        if v & 1 == 0 || large {
            break;
        }
        table = v & 0x000F_FFFF_FFFF_F000;
    }
}

/// The frames left out of the comparison (the agent's pages, wherever they are mapped now,
/// which hold the information pages and the cache; and the kernel stacks, which hold
/// everything below each RSP and TSS.RSP0) and the entries whose A and D bits are masked.
fn exclusions(w: &World) -> Result<(BTreeSet<Gfn>, BTreeSet<Gpa>), String> {
    let mut frames = BTreeSet::new();
    let agent: Vec<u64> = (0..layout::AGENT_SIZE)
        .step_by(0x1000)
        .map(|o| layout::AGENT_GVA + o)
        .collect();
    let stacks: Vec<u64> = (0..w.vcpus.len() as u64)
        .flat_map(|i| {
            (0..layout::KERNEL_STACK_PAGES).map(move |p| {
                layout::KERNEL_STACKS_GVA + i * layout::KERNEL_STACK_STRIDE + p * 0x1000
            })
        })
        .collect();
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        frames.insert(layout::AGENT_GPA.wrapping_add(off).gfn());
    }
    for &gva in agent.iter().chain(&stacks) {
        if let Some(g) = w.guest.phys(&w.machine, gva) {
            frames.insert(g.gfn());
        }
    }
    let (lo, hi) = (
        layout::KERNEL_STACKS_GVA,
        layout::KERNEL_STACKS_GVA + w.vcpus.len() as u64 * layout::KERNEL_STACK_STRIDE,
    );
    if let Some((i, v)) = w
        .vcpus
        .iter()
        .enumerate()
        .find(|(_, v)| !(lo..hi).contains(&v.gpr[4]))
    {
        return Err(format!(
            "VCPU {i}'s RSP {:#x} is outside the kernel stacks, so what lies below it cannot \
             be left out",
            v.gpr[4]
        ));
    }
    let mut gvas = vec![layout::IDT_GVA, layout::OS_VE_HANDLER_GVA];
    gvas.extend(stacks);
    gvas.extend(agent);
    let mut roots = vec![w.guest.cr3];
    for p in &w.guest.processes {
        roots.push(p.cr3);
        roots.extend(p.user_cr3);
    }
    let mut entries = BTreeSet::new();
    for &cr3 in &roots {
        for &gva in &gvas {
            translation_entries(w, cr3, gva, &mut entries);
        }
    }
    Ok((frames, entries))
}

const ZERO_FRAME: [u8; 4096] = [0; 4096];

/// I6 for a #VE-on run that passed its checks: the #VE-off world `off` (its processes created)
/// runs `queues` in the order of `log`, the #VE-on run's operation log; the divergence or the
/// first difference, if any.
pub fn compare(
    on: &World,
    off: &mut World,
    mut queues: Vec<Vec<crate::ops::GuestOp>>,
    log: &[usize],
) -> Option<String> {
    queues.resize(off.vcpus.len(), Vec::new());
    let mut runner = OpRunner::new(queues);
    follow(off, &mut runner, log)
        .err()
        .or_else(|| difference(on, off))
}

/// The first guest-visible difference between the #VE-on world `on` and the #VE-off world
/// `off` (memory outside the exclusions, registers with RF ignored, the process list).
pub fn difference(on: &World, off: &World) -> Option<String> {
    let (mut frames, mut masked) = match exclusions(on) {
        Ok(x) => x,
        Err(e) => return Some(format!("#VE on: {e}")),
    };
    match exclusions(off) {
        Ok((f, m)) => {
            frames.extend(f);
            masked.extend(m);
        }
        Err(e) => return Some(format!("#VE off: {e}")),
    }
    let gfns: BTreeSet<Gfn> = on
        .machine
        .mem
        .frames()
        .chain(off.machine.mem.frames())
        .map(|(g, _)| g)
        .collect();
    for gfn in gfns {
        if frames.contains(&gfn) {
            continue;
        }
        let a = on.machine.mem.frame(gfn).unwrap_or(&ZERO_FRAME);
        let b = off.machine.mem.frame(gfn).unwrap_or(&ZERO_FRAME);
        if a == b {
            continue;
        }
        for (q, (x, y)) in a.chunks_exact(8).zip(b.chunks_exact(8)).enumerate() {
            let at = gfn.gpa().wrapping_add(q as u64 * 8);
            let word = |c: &[u8]| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            };
            let (x, y) = (word(x), word(y));
            let mask = if masked.contains(&at) { !AD } else { u64::MAX };
            if (x ^ y) & mask != 0 {
                return Some(format!(
                    "guest memory differs at {at}: #VE on {x:#018x}, #VE off {y:#018x}"
                ));
            }
        }
    }
    for (i, (a, b)) in on.vcpus.iter().zip(&off.vcpus).enumerate() {
        let rf = vesim_model::vcpu::Rflags::RF.bits();
        let ra = (a.gpr, a.rip, a.rflags.bits() & !rf, a.cr3);
        let rb = (b.gpr, b.rip, b.rflags.bits() & !rf, b.cr3);
        if ra != rb {
            return Some(format!(
                "VCPU {i} registers differ (gpr, rip, rflags without RF, cr3): #VE on {ra:x?}, \
                 #VE off {rb:x?}"
            ));
        }
    }
    if on.guest.processes != off.guest.processes {
        return Some(format!(
            "process lists differ: #VE on {:x?}, #VE off {:x?}",
            on.guest.processes, off.guest.processes
        ));
    }
    None
}
