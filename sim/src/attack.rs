//! Isolation attempts (the `attacks` built-in, invariant I3): guest code that tries to read,
//! write or execute the agent from the untrusted view, to run its own code in the protected
//! view, to remap agent pages through the page tables, to raise an EPT violation from outside
//! the agent, and to give itself a CPU index the CPU map has no slot for.
//!
//! Each attempt is real guest instructions on the memory manager's code page, run one
//! hardware step at a time like any other operation. It carries a [`Probe`]: what the attempt
//! would have achieved, looked at when it ends. An attempt that achieves it is an I3 breach.

use crate::guest::mm::{Micro, MmError, Plan};
use crate::introcore::{call, ENOSYS, HC_RAX, HC_RDI};
use crate::layout::{self, mm_code};
use crate::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::{Gpa, VcpuId};

/// What an attack tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attack {
    /// Read the agent qword at image offset `arg` (8-aligned, modulo the image size) from the
    /// untrusted view. B118: blocked silently, the destination keeps its value.
    AgentRead,
    /// Write `value` there (the information page, its semaphore, the cache and the CPU map are
    /// all in the image). B118: an alert, memory unchanged.
    AgentWrite,
    /// Jump to the agent's code section (offset `arg` in it) from the untrusted view. B118: an
    /// alert, and the VCPU cannot go on.
    AgentExec,
    /// VMFUNC to the protected view (allowed: VMFUNC has no CPL check), then read agent memory
    /// there with the guest's own code. B119: the fetch of that code faults, an alert, and the
    /// VCPU cannot go on.
    ViewSwitch,
    /// Rewrite the PTE of agent page `arg` (modulo the page count) to point at attack frame
    /// `value` (modulo [`layout::ATTACK_FRAMES`]). B116: introcore copies the page and moves
    /// its protection; the agent keeps working from the new frame.
    Remap,
    /// VMCALL RAISE_EPT from guest code. B120: not in the agent, so -ENOSYS and nothing else.
    Raise,
    /// Give this VCPU a 0x50 limit whose CPU index is `arg`: out of range (>= 64) or a slot no
    /// VCPU has. `fixed` Q20: the agent returns at once and the VCPU's later violations exit.
    CpuIndex,
}

impl Attack {
    /// Every attack, by its trace name.
    pub const ALL: [(&'static str, Attack); 7] = [
        ("agent-read", Attack::AgentRead),
        ("agent-write", Attack::AgentWrite),
        ("agent-exec", Attack::AgentExec),
        ("view-switch", Attack::ViewSwitch),
        ("remap", Attack::Remap),
        ("raise", Attack::Raise),
        ("cpu-index", Attack::CpuIndex),
    ];

    /// Its trace name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }

    /// The attack called `name`.
    pub fn from_name(name: &str) -> Option<Attack> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Whether the attempt ends the VCPU (the guest hangs on the blocked fetch).
    pub fn fatal(self) -> bool {
        matches!(self, Attack::AgentExec | Attack::ViewSwitch)
    }
}

/// What an attack would have achieved, checked when it ends. Values are taken when the
/// attacking instruction starts ([`arm_probe`]), not when the attack is planned: other
/// VCPUs run in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// RAX must not hold `value`, the agent qword at `va` it tried to read.
    Read {
        /// The agent address.
        va: u64,
        /// The agent's qword there when the read started.
        value: u64,
    },
    /// The agent qword at `va` must still hold `before`.
    Write {
        /// The agent address.
        va: u64,
        /// Where it was when the write started.
        gpa: Gpa,
        /// Its value then.
        before: u64,
    },
    /// The attempt must stop the VCPU with an alert.
    MustStop,
    /// The agent page at `va` must live in a frame the untrusted view cannot read or write.
    Remap {
        /// The agent page.
        va: u64,
    },
    /// The VMCALL must return -ENOSYS.
    Raise,
}

/// The 8-aligned agent address at image offset `arg` modulo the image size.
fn agent_qword(arg: u64) -> u64 {
    layout::AGENT_GVA + ((arg % layout::AGENT_SIZE) & !7)
}

/// The agent page count.
const AGENT_PAGES: u64 = layout::AGENT_SIZE / 0x1000;

/// The CPU index an attack `arg` gives a machine of `vcpus` VCPUs: an unused slot when there
/// is one and `arg` is even, else an index in 64..0x10000.
pub fn cpu_index_of(arg: u64, vcpus: usize) -> u64 {
    let unused = layout::AGENT_MAX_CPUS.saturating_sub(vcpus as u64);
    if unused > 0 && arg % 2 == 0 {
        vcpus as u64 + (arg / 2) % unused
    } else {
        layout::AGENT_MAX_CPUS + (arg / 2) % (0x1_0000 - layout::AGENT_MAX_CPUS)
    }
}

/// Takes the values `probe` compares against as micro `m` of an attack starts, and makes
/// a read's destination or a write's value differ from the agent's qword.
pub fn arm_probe(w: &World, probe: &mut Probe, m: &mut Micro) {
    match probe {
        Probe::Read { va, value } if m.offset == mm_code::TOUCH_READ.0 => {
            let gpa = w.guest.phys(&w.machine, *va).unwrap_or(Gpa(0));
            *value = w.machine.mem.read_u64(gpa);
            m.rax = !*value;
        }
        Probe::Write { va, gpa, before } if m.offset == mm_code::TOUCH_WRITE.0 => {
            *gpa = w.guest.phys(&w.machine, *va).unwrap_or(Gpa(0));
            *before = w.machine.mem.read_u64(*gpa);
            if m.rax == *before {
                m.rax = !*before;
            }
        }
        _ => {}
    }
}

/// The plan and probe of an attack by process `pid`'s code. `CpuIndex` has no plan: it is
/// applied to VCPU `cpu` here.
pub fn plan_attack(
    w: &mut World,
    cpu: VcpuId,
    pid: u32,
    attack: Attack,
    arg: u64,
    value: u64,
) -> Result<Option<(Plan, Probe)>, MmError> {
    w.guest.process(pid)?;
    let plan = |micros: Vec<Micro>| Plan {
        pid,
        micros,
        finish: crate::guest::mm::Finish::Nothing,
    };
    Ok(Some(match attack {
        Attack::AgentRead => {
            let va = agent_qword(arg);
            let m = Micro::new(mm_code::TOUCH_READ, 0, va, 0);
            (plan(vec![m]), Probe::Read { va, value: 0 })
        }
        Attack::AgentWrite => {
            let va = agent_qword(arg);
            let m = Micro::new(mm_code::TOUCH_WRITE, 0, va, value);
            let probe = Probe::Write {
                va,
                gpa: Gpa(0),
                before: 0,
            };
            (plan(vec![m]), probe)
        }
        Attack::AgentExec => {
            let target = layout::AGENT_GVA + layout::AGENT_CODE + (arg % 0x1000);
            let m = Micro::new(mm_code::JMP_RSI, 0, target, 0);
            (plan(vec![m]), Probe::MustStop)
        }
        Attack::ViewSwitch => {
            let view = u64::from(w.intro.protected.0);
            let micros = vec![
                Micro::new(mm_code::MOV_RCX_RSI, 0, view, 0),
                Micro::new(mm_code::VMFUNC, 0, 0, 0),
                Micro::new(mm_code::TOUCH_READ, 0, agent_qword(arg), 0),
            ];
            (plan(micros), Probe::MustStop)
        }
        Attack::Remap => {
            let va = layout::AGENT_GVA + (arg % AGENT_PAGES) * 0x1000;
            let frame =
                layout::ATTACK_FRAMES_START.wrapping_add((value % layout::ATTACK_FRAMES) * 0x1000);
            let (pte, _) = w
                .guest
                .entry_value(&w.machine, pid, va, 1)
                .ok_or(MmError::State(va))?;
            let pfn = 0x000F_FFFF_FFFF_F000;
            if pte & 1 == 0 || pte & pfn == frame.0 {
                return Err(MmError::State(va));
            }
            let m = Micro::new(
                mm_code::MOV,
                w.guest.entry_gla(va, 1),
                (pte & !pfn) | frame.0,
                0,
            );
            (plan(vec![m]), Probe::Remap { va })
        }
        Attack::Raise => {
            let micros = vec![
                Micro::new(mm_code::MOV_RDX_RDI, call::RAISE_EPT, 0, 0),
                Micro::new(mm_code::VMCALL, HC_RDI, 0, HC_RAX),
            ];
            (plan(micros), Probe::Raise)
        }
        Attack::CpuIndex => {
            let idx = cpu_index_of(arg, w.vcpus.len());
            let v = w.vcpus.get_mut(cpu.0).ok_or(MmError::State(0))?;
            v.seg50 = crate::guest::seg50_for_cpu(idx);
            return Ok(None);
        }
    }))
}

/// What a finished attack achieved that it must not have (`None`: it was stopped, or
/// there is no agent to protect: after an unload its pages are guest memory again).
pub fn attack_breach(w: &World, cpu: VcpuId, probe: Probe) -> Option<String> {
    if !w.intro.deployed || w.intro.agent_hooks.is_empty() {
        return None;
    }
    let v = w.vcpus.get(cpu.0)?;
    match probe {
        Probe::Read { value, .. } => (v.reg(vesim_model::vcpu::Gpr::Rax) == value)
            .then(|| format!("read the agent's {value:#x} from the untrusted view")),
        Probe::Write { gpa, before, .. } => {
            let now = w.machine.mem.read_u64(gpa);
            (now != before).then(|| format!("wrote {now:#x} over the agent's {gpa}"))
        }
        Probe::MustStop => Some("ran on past a blocked access".into()),
        Probe::Remap { va } => {
            let Some(frame) = w.guest.phys(&w.machine, va) else {
                return Some(format!("agent page {va:#x} lost its translation"));
            };
            let f = w
                .machine
                .ept
                .view(w.intro.untrusted)
                .map_or(EptFlags::all(), |w| w.entry(frame.gfn()).flags());
            f.intersects(EptFlags::READ | EptFlags::WRITE).then(|| {
                format!("agent page {va:#x} moved to {frame}, which the untrusted view can access")
            })
        }
        Probe::Raise => {
            let rax = v.reg(vesim_model::vcpu::Gpr::Rax);
            (rax != ENOSYS).then(|| format!("RAISE_EPT from guest code returned {rax:#x}"))
        }
    }
}
