//! 6. Robustness (I9): nothing guest-controlled makes the world panic.

use crate::kit::{asm::*, props::*, pt_world::*};
use crate::ROBUSTNESS_CASES;
use proptest::prelude::*;
use vesim::layout::{self, veinfo};
use vesim::quirks::Profile;
use vesim::world::World;
use vesim_model::vcpu::{Gpr, Rflags, SegmentLimit};
use vesim_model::VcpuId;

/// Offsets of the information page's fields: the hardware part, the saved registers, the
/// rest of section C, and vesim's locals of the C handler.
fn info_fields() -> Vec<u64> {
    use vesim_model::ve_info as hw;
    let mut f = vec![
        hw::OFFSET_REASON,
        hw::OFFSET_SEMAPHORE,
        hw::OFFSET_QUALIFICATION,
        hw::OFFSET_GLA,
        hw::OFFSET_GPA,
        hw::OFFSET_EPTP_INDEX,
    ];
    f.extend((0..16).map(|i| veinfo::REGS + 8 * i));
    f.extend([
        veinfo::RIP,
        veinfo::CS,
        veinfo::RFLAGS,
        veinfo::CR0,
        veinfo::CR3,
        veinfo::PROTECTED_STACK,
        veinfo::ORIGINAL_STACK,
        veinfo::OLD_VALUE,
        veinfo::NEW_VALUE,
        veinfo::INSTRUCTION,
        veinfo::RAISED,
        veinfo::LOCAL_STATUS,
        veinfo::LOCAL_LENGTH,
        veinfo::LOCAL_LOCK,
        veinfo::LOCAL_REASON,
        veinfo::LOCAL_WALK,
        veinfo::LOCAL_OUTCOME,
        veinfo::LOCAL_INSN,
    ]);
    f
}

/// A guest-controlled corruption of the agent's state.
#[derive(Clone, Debug)]
enum Corruption {
    /// Bytes into VCPU `cpu`'s information page at `off`.
    Info {
        cpu: u8,
        off: u64,
        value: u64,
        len: u8,
    },
    /// A qword into VECACHE.
    Cache { off: u64, value: u64 },
    /// A CPU-map slot.
    CpuMap { slot: u64, value: u32 },
    /// The 0x50 descriptor of a VCPU.
    Seg50 {
        cpu: u8,
        limit: u32,
        granularity: bool,
    },
    /// A qword of the data section (self-map index, monitored bits, mitigations, locks).
    Data { off: u64, value: u64 },
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        (0u64..layout::AGENT_SIZE).prop_map(|o| layout::AGENT_GVA + o),
        (0u64..0x10_0000).prop_map(|o| layout::KERNEL_STACKS_GVA + o),
        (0u64..64),
        (0u64..0x1000).prop_map(|o| layout::GUEST_TABLES_START.0 + o * 8),
    ]
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        4 => (
            0u8..2,
            prop_oneof![
                3 => prop::sample::select(info_fields()),
                1 => 0u64..0x1000
            ],
            value(),
            1u8..=8
        )
            .prop_map(|(cpu, off, value, len)| Corruption::Info { cpu, off, value, len }),
        2 => (0u64..0x8000, value()).prop_map(|(slot, value)| Corruption::Cache {
            off: slot * 8,
            value
        }),
        2 => (0u64..64, prop_oneof![any::<u32>(), 0u32..4, Just(u32::MAX)])
            .prop_map(|(slot, value)| Corruption::CpuMap { slot, value }),
        2 => (0u8..2, any::<u32>(), any::<bool>()).prop_map(|(cpu, limit, granularity)| {
            Corruption::Seg50 { cpu, limit, granularity }
        }),
        1 => (prop_oneof![0u64..0x20, 0x40u64..0x80], value())
            .prop_map(|(off, value)| Corruption::Data { off: off & !7, value }),
    ]
}

fn apply(w: &mut World, c: &Corruption) {
    let agent = |off: u64| layout::AGENT_GPA.wrapping_add(off);
    match *c {
        Corruption::Info {
            cpu,
            off,
            value,
            len,
        } => {
            let page = agent(layout::AGENT_VEINFO + 0x1000 * u64::from(cpu));
            let len = usize::from(len).min((0x1000 - off) as usize);
            w.machine
                .mem
                .write(page.wrapping_add(off), &value.to_le_bytes()[..len]);
        }
        Corruption::Cache { off, value } => {
            w.machine
                .mem
                .write_u64(agent(layout::AGENT_VECACHE + off), value);
        }
        Corruption::CpuMap { slot, value } => {
            w.machine
                .mem
                .write_u32(agent(layout::AGENT_CPUMAP + 4 * slot), value);
        }
        Corruption::Seg50 {
            cpu,
            limit,
            granularity,
        } => {
            if let Some(v) = w.vcpus.get_mut(usize::from(cpu)) {
                v.seg50 = SegmentLimit { limit, granularity };
            }
        }
        Corruption::Data { off, value } => {
            w.machine
                .mem
                .write_u64(agent(layout::AGENT_DATA + off), value);
        }
    }
}

/// Every architecturally defined RFLAGS bit (bits 0–21 except the reserved 3, 5, 15).
const RFLAGS_DEFINED: u64 = 0x003F_7FD7;

/// One robustness scenario.
#[derive(Clone, Debug)]
struct Chaos {
    profile: Profile,
    vcpus: usize,
    /// Known operations before the arbitrary bytes (so the agent is in flight while the
    /// corruptions land).
    ops: [Vec<GOp>; 2],
    bytes: [[u8; 16]; 2],
    regs: [[u64; 16]; 2],
    /// Registers replaced by a monitored entry's address (+ a small offset).
    aim: [u16; 2],
    aim_off: u8,
    /// RSP arbitrary too (otherwise the VCPU's kernel stack).
    wild_rsp: [bool; 2],
    rflags: [u64; 2],
    corruptions: Vec<(u16, Corruption)>,
    schedule: Vec<u8>,
}

prop_compose! {
    fn chaos()(
        profile in profile(),
        vcpus in 1usize..=2,
        ops in [prop::collection::vec(gop(), 0..6), prop::collection::vec(gop(), 0..6)],
        bytes in any::<[[u8; 16]; 2]>(),
        regs in any::<[[u64; 16]; 2]>(),
        aim in any::<[u16; 2]>(),
        aim_off in 0u8..16,
        wild_rsp in [prop::bool::weighted(0.1), prop::bool::weighted(0.1)],
        rflags in any::<[u64; 2]>(),
        corruptions in prop::collection::vec((0u16..160, corruption()), 0..12),
        schedule in prop::collection::vec(any::<u8>(), 1..16),
    ) -> Chaos {
        Chaos {
            profile, vcpus, ops, bytes, regs, aim, aim_off, wild_rsp, rflags, corruptions, schedule,
        }
    }
}

/// Steps of one robustness run.
const CHAOS_STEPS_MAX: usize = 2000;

proptest! {
    #![proptest_config(config(ROBUSTNESS_CASES))]

    /// I9: arbitrary instruction bytes, registers and RFLAGS, and arbitrary bytes in the
    /// agent's information page, cache, CPU map, data section and 0x50 descriptors, written at
    /// arbitrary moments, never make a step panic: every VCPU runs or stops with a `Stop`.
    #[test]
    fn i9_nothing_guest_controlled_panics(c in chaos()) {
        let mut pw = PtWorld::new(c.profile.quirks(), c.vcpus);
        pw.monitor(true, &[0, 1, 2, 3, 12, 13]);
        let monitored = pte_gla(REGIONS[0]);
        let q = c.profile.quirks();
        for cpu in 0..c.vcpus {
            let mut code = Vec::new();
            let initial = pw.initial.clone();
            for op in for_profile(c.ops[cpu].clone(), &q) {
                assemble(&mut code, op, |page| initial.get(&page).copied().unwrap_or(0));
            }
            code.extend_from_slice(&c.bytes[cpu]);
            pw.w.machine.mem.write(pw.code[cpu], &code);
            let v = &mut pw.w.vcpus[cpu];
            v.rip = CODE_GVA + cpu as u64 * 0x1000;
            for g in 0..16 {
                if g == Gpr::Rsp as usize && !c.wild_rsp[cpu] {
                    continue;
                }
                v.gpr[g] = if c.aim[cpu] >> g & 1 != 0 {
                    monitored + u64::from(c.aim_off)
                } else {
                    c.regs[cpu][g]
                };
            }
            v.rflags = Rflags::from_bits_retain((c.rflags[cpu] & RFLAGS_DEFINED) | Rflags::FIXED1.bits());
        }
        for step in 0..CHAOS_STEPS_MAX {
            for (at, corruption) in &c.corruptions {
                if usize::from(*at) == step {
                    apply(&mut pw.w, corruption);
                }
            }
            let live: Vec<usize> = (0..c.vcpus).filter(|x| pw.w.stopped[*x].is_none()).collect();
            if live.is_empty() {
                break;
            }
            let cpu = live[usize::from(c.schedule[step % c.schedule.len()]) % live.len()];
            // Runs or stops with a value; a panic fails the property.
            let _ = pw.w.step(VcpuId(cpu));
        }
    }
}
