//! The `scenario` fuzz target's case ([`ScenarioCase`]): guest operations on 1–4 VCPUs under
//! a schedule, read from bytes. It lives outside the `fuzzing` feature because the quirk
//! report searches the same input space (`vesim quirks`).

use crate::guest::mm::{bits, EntryInsn};
use crate::layout;
use crate::ops::GuestOp;
use crate::sched::Schedule;

/// Appends `v` little-endian (how `arbitrary` reads integers back).
pub(crate) fn le(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Guest operations on a few VCPUs under a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ScenarioCase {
    /// VCPUs (mod 4, plus 1).
    pub vcpus: u8,
    /// Processes (mod 3, plus 1); bit 4: KPTI; bits 5–7: which are protected.
    pub setup: u8,
    /// The schedule: 0 round-robin, 1 random, 2 PCT (mod 3); the seed.
    pub sched: (u8, u64),
    /// Operations: (VCPU, kind, page, value). Kinds modulo 13 are map (0, 1), unmap, protect,
    /// caching, trim, swap out, swap in, touch, hook, attack, unload and redeploy; kind 13
    /// exactly is a directed entry write, kind 14 exactly a page-table move.
    pub ops: [(u8, u8, u8, u64); 24],
    /// How many of `ops` run.
    pub count: u8,
}

impl ScenarioCase {
    /// The bytes `arbitrary` reads back as this case.
    pub fn to_data(&self) -> Vec<u8> {
        let mut out = vec![self.vcpus, self.setup, self.sched.0];
        le(&mut out, self.sched.1);
        for (c, k, p, v) in self.ops {
            out.extend_from_slice(&[c, k, p]);
            le(&mut out, v);
        }
        out.push(self.count);
        out
    }

    /// The VCPU count, processes, KPTI, schedule and queues of this case.
    pub fn build(&self) -> (usize, Vec<bool>, bool, Schedule, Vec<Vec<GuestOp>>) {
        let vcpus = usize::from(self.vcpus % 4) + 1;
        let nproc = u32::from(self.setup % 3) + 1;
        let kpti = self.setup & 0x10 != 0;
        let protected: Vec<bool> = (0..nproc)
            .map(|i| i == 0 || self.setup & (0x20 << i) != 0)
            .collect();
        let seed = self.sched.1;
        let schedule = match self.sched.0 % 3 {
            0 => Schedule::RoundRobin,
            1 => Schedule::Random { seed },
            _ => Schedule::Pct {
                seed,
                depth: 3,
                steps: 2000,
            },
        };
        let mut queues = vec![Vec::new(); vcpus];
        let mut remaps = 0;
        for &(c, kind, page, value) in self.ops.iter().take(usize::from(self.count % 25)) {
            let pid = u32::from(page >> 4) % nproc;
            // Each process's memory manager runs on one VCPU (I6's serialized writes);
            // attacks and lifecycle requests come from any VCPU.
            let mm_cpu = pid as usize % vcpus;
            let va = layout::USER_BASE + (u64::from(pid) << 30) + u64::from(page & 7) * 0x1000;
            // Kinds 13 and 14 are the directed entry writes and table moves; every other
            // kind keeps its meaning modulo 13, so older inputs decode as they did.
            let kind = if kind == 13 || kind == 14 {
                kind
            } else {
                kind % 13
            };
            let (cpu, op) = match kind {
                0 | 1 => (
                    mm_cpu,
                    GuestOp::Map {
                        pid,
                        va,
                        flags: bits::RW,
                    },
                ),
                2 => (mm_cpu, GuestOp::Unmap { pid, va }),
                3 => (
                    mm_cpu,
                    GuestOp::Protect {
                        pid,
                        va,
                        writable: value & 1 != 0,
                        executable: value & 2 != 0,
                    },
                ),
                4 => (
                    mm_cpu,
                    GuestOp::SetCaching {
                        pid,
                        va,
                        attrs: value & bits::CACHING,
                        form: (value >> 8) as u32,
                    },
                ),
                5 => (mm_cpu, GuestOp::Trim { pid, va }),
                6 => (mm_cpu, GuestOp::SwapOut { pid, va }),
                7 => (mm_cpu, GuestOp::SwapIn { pid, va }),
                8 => (
                    mm_cpu,
                    GuestOp::Touch {
                        pid,
                        va,
                        write: value & 1 != 0,
                        value,
                    },
                ),
                9 => (mm_cpu, GuestOp::Hook { pid, va }),
                10 => {
                    let (attack, arg, v) = attack_of(value, &mut remaps);
                    if attack.fatal() && usize::from(c) % vcpus == 0 {
                        continue;
                    }
                    (
                        usize::from(c) % vcpus,
                        GuestOp::Attack {
                            pid,
                            attack,
                            arg,
                            value: v,
                        },
                    )
                }
                11 => (
                    usize::from(c) % vcpus,
                    GuestOp::Unload {
                        delay: (value % 64) as u32,
                    },
                ),
                12 => (usize::from(c) % vcpus, GuestOp::Redeploy),
                13 => {
                    // Bits the memory manager's bookkeeping does not depend on (not P, not
                    // the frame): caching, A, D, RW, XD; for BTS one of those bits, in this
                    // entry or the next.
                    let (name, insn) = EntryInsn::ALL[(value % 3) as usize];
                    let safe = bits::CACHING | bits::A | bits::D | bits::RW | bits::XD;
                    let arg = if name == "bts" {
                        const BITS: [u64; 7] = [1, 3, 4, 5, 6, 7, 63];
                        BITS[((value >> 8) % 7) as usize] + 64 * ((value >> 16) & 1)
                    } else {
                        (value >> 8) & safe
                    };
                    (
                        mm_cpu,
                        GuestOp::Write {
                            pid,
                            va,
                            level: 1,
                            insn,
                            arg,
                        },
                    )
                }
                _ => (
                    mm_cpu,
                    GuestOp::MoveTable {
                        pid,
                        va,
                        // 64 low frames per process, so no two processes share a table.
                        frame: (u64::from(pid) * 0x40 + (value >> 8) % 0x40) << 12,
                    },
                ),
            };
            queues[cpu].push(op);
        }
        // An attempt that ends its VCPU goes last in that VCPU's queue.
        for q in &mut queues {
            if let Some(i) = q
                .iter()
                .position(|op| matches!(op, GuestOp::Attack { attack, .. } if attack.fatal()))
            {
                let op = q.remove(i);
                q.retain(|o| !matches!(o, GuestOp::Attack { attack, .. } if attack.fatal()));
                q.push(op);
            }
        }
        (vcpus, protected, kpti, schedule, queues)
    }
}

/// An attack from a fuzzed value. Remaps take frames of their own, as the `attacks` built-in
/// does: two agent pages copied into one frame break the agent in every profile (B116 copies
/// without looking), which is a finding about HVMI, not a check of the harness.
fn attack_of(value: u64, remaps: &mut u64) -> (crate::attack::Attack, u64, u64) {
    use crate::attack::Attack;
    let attack = Attack::ALL[(value % Attack::ALL.len() as u64) as usize].1;
    let arg = value >> 8;
    let v = if attack == Attack::Remap {
        *remaps += 1;
        *remaps - 1
    } else {
        value.rotate_left(17)
    };
    (attack, arg, v)
}

impl ScenarioCase {
    /// The size of a case's bytes.
    pub const LEN: usize = 3 + 8 + 24 * 11 + 1;

    /// The case `bytes` hold, read as `arbitrary` reads [`ScenarioCase::LEN`] bytes (fields in
    /// order, integers little-endian; missing bytes read as 0).
    pub fn from_data(bytes: &[u8]) -> Self {
        let mut b = bytes.to_vec();
        b.resize(Self::LEN, 0);
        let u64_at = |o: usize| {
            let mut q = [0u8; 8];
            q.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(q)
        };
        let mut ops = [(0u8, 0u8, 0u8, 0u64); 24];
        for (i, op) in ops.iter_mut().enumerate() {
            let o = 11 + i * 11;
            *op = (b[o], b[o + 1], b[o + 2], u64_at(o + 3));
        }
        ScenarioCase {
            vcpus: b[0],
            setup: b[1],
            sched: (b[2], u64_at(3)),
            ops,
            count: b[Self::LEN - 1],
        }
    }
}
