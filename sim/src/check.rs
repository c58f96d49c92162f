//! Invariants evaluated after every step (ARCHITECTURE "check"): I1 notification soundness,
//! I2 emulation fidelity, I4 the #VE protocol, I5 the statistics identities, I7 cache soundness
//! and I10 progress. Each failure carries its id, the step and the VCPU. (I3 is judged by the
//! attacks' probes, I6 by running both worlds, I8 by replaying, I9 by not panicking.)

use crate::agent::rip as agent_rip;
use crate::agent::AgentOutcome;
use crate::layout;
use crate::quirks::MONITORED_BITS_FIXED;
use crate::world::{Event, Stop, World};
use std::fmt;
use vesim_model::ve_info::VeInfo;
use vesim_model::VcpuId;
use vesim_model::{Gpa, ViewId};

/// An invariant of ARCHITECTURE.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// Notification soundness.
    I1,
    /// Emulation fidelity: an instruction the agent (or introcore for it) completed left what
    /// the reference CPU leaves.
    I2,
    /// Isolation (judged by the attacks' probes, [`crate::attack`]).
    I3,
    /// #VE on vs off equivalence ([`crate::equivalence`]).
    I6,
    /// The #VE protocol.
    I4,
    /// Statistics identities.
    I5,
    /// Cache soundness.
    I7,
    /// Progress.
    I10,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::I1 => "I1",
            Invariant::I2 => "I2",
            Invariant::I3 => "I3",
            Invariant::I6 => "I6",
            Invariant::I4 => "I4",
            Invariant::I5 => "I5",
            Invariant::I7 => "I7",
            Invariant::I10 => "I10",
        })
    }
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// Step number (1-based) after which it failed.
    pub step: u64,
    /// The VCPU that took the step.
    pub cpu: VcpuId,
    /// What was seen.
    pub detail: String,
}

/// Per-VCPU protocol state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CpuState {
    semaphore: u32,
    /// The view the VCPU was in when its current #VE was delivered.
    view_at_delivery: Option<ViewId>,
    /// RIP of the last fault (#VE or exit) and how many in a row.
    fault_rip: u64,
    faults_in_row: u32,
    /// The information page the semaphore is read from.
    page: Option<Gpa>,
    /// Consecutive steps of this VCPU inside the agent.
    agent_steps: u64,
    /// The page-table write its current #VE is about, for I2.
    emulation: Option<Emulation>,
    /// The step at which its agent last made the cache lookup of B51–B53 (I1's B77 window).
    lookup_step: Option<u64>,
}

/// A page-table write delivered as a #VE: the state the instruction started from and what the
/// agent reported (outcome, old value read, new value stored).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Emulation {
    bytes: [u8; 15],
    regs: [u64; 16],
    rflags: u64,
    rip: u64,
    /// The faulting linear address and its guest-physical address (8-byte aligned).
    gla: u64,
    gpa: Gpa,
    old: u64,
    verdict: Option<(AgentOutcome, Option<u64>, Option<u64>)>,
}

/// The checker: call [`Checker::before_step`] and [`Checker::after_step`] around each step.
#[derive(Clone, Debug)]
pub struct Checker {
    /// Consecutive #VEs or exits on one RIP that make an I10 failure.
    pub faults_in_row_max: u32,
    /// Consecutive steps of one VCPU inside the agent (spinning on a lock included) that make
    /// an I10 failure: one #VE takes a few dozen.
    pub agent_steps_max: u64,
    cpus: Vec<CpuState>,
    /// Every monitored entry with its value before the step, as of monitor generation
    /// `monitored_generation`.
    monitored: Vec<(Gpa, u64)>,
    /// (frame, index in `monitored`) of every monitored entry, by frame.
    monitored_by_frame: Vec<(u64, usize)>,
    /// The indices of `monitored` a step wrote the frames of (reused between steps).
    touched: Vec<usize>,
    monitored_generation: Option<(u64, u64)>,
    /// Guest memory's write-journal position when the values in `monitored` were last read.
    journal_before: u64,
    /// The step in which each monitored entry's monitor was placed, as far as the checker saw
    /// it placed (entries monitored when the checker was made are not listed).
    placed_at: std::collections::BTreeMap<Gpa, u64>,
    /// The monitored entries before the last rebuild of `monitored` (reused).
    monitored_old: Vec<Gpa>,
    events_seen: u64,
    rip_before: u64,
    regs_before: [u64; 16],
    rflags_before: u64,
    step: u64,
    /// What I7 depends on, as of its last scan.
    i7_epoch: Option<I7Epoch>,
}

/// Cache statistics, monitor placements, agent-page moves, unload pending, deployed.
type I7Epoch = (crate::introcore::cache::CacheStats, u64, usize, bool, bool);

fn semaphore(w: &World, cpu: VcpuId) -> u32 {
    w.vcpus
        .get(cpu.0)
        .and_then(|v| v.ve_info)
        .map_or(0, |p| VeInfo::semaphore(&w.machine.mem, p))
}

impl Checker {
    /// A checker for `w` with the default progress bound (16).
    pub fn new(w: &World) -> Self {
        let mut c = Checker {
            faults_in_row_max: 16,
            agent_steps_max: 100_000,
            cpus: vec![CpuState::default(); w.vcpus.len()],
            monitored: Vec::new(),
            monitored_by_frame: Vec::new(),
            touched: Vec::new(),
            monitored_generation: None,
            journal_before: 0,
            placed_at: std::collections::BTreeMap::new(),
            monitored_old: Vec::new(),
            events_seen: w.events.total(),
            rip_before: 0,
            regs_before: [0; 16],
            rflags_before: 0,
            step: 0,
            i7_epoch: None,
        };
        for (i, s) in c.cpus.iter_mut().enumerate() {
            s.semaphore = semaphore(w, VcpuId(i));
            s.page = w.vcpus.get(i).and_then(|v| v.ve_info);
        }
        c
    }

    /// Steps checked so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Snapshots what the next step of `cpu` is checked against.
    pub fn before_step(&mut self, w: &World, cpu: VcpuId) {
        // The values after the last checked step are the values now, unless a monitor came
        // or went since.
        let generation = w.intro.ptm.generation();
        if self.monitored_generation != Some(generation) {
            // Entries monitored now and not before were placed in the step just checked.
            let first = self.monitored_generation.is_none();
            self.monitored_old.clear();
            self.monitored_old
                .extend(self.monitored.iter().map(|(e, _)| *e));
            self.monitored.clear();
            w.intro
                .ptm
                .for_each_monitored(|e| self.monitored.push((e, w.machine.mem.read_u64(e))));
            self.monitored_by_frame.clear();
            self.monitored_by_frame.extend(
                self.monitored
                    .iter()
                    .enumerate()
                    .map(|(i, (e, _))| (e.gfn().0, i)),
            );
            self.monitored_by_frame.sort_unstable();
            if !first {
                for (e, _) in &self.monitored {
                    if self.monitored_old.binary_search(e).is_err() {
                        self.placed_at.insert(*e, self.step);
                    }
                }
            }
            self.placed_at
                .retain(|e, _| self.monitored.binary_search_by_key(e, |(m, _)| *m).is_ok());
            self.monitored_generation = Some(generation);
            self.journal_before = w.machine.mem.journal_position();
        }
        self.events_seen = w.events.total();
        if let Some(v) = w.vcpus.get(cpu.0) {
            self.rip_before = v.rip;
            self.regs_before = v.gpr;
            self.rflags_before = v.rflags.bits();
        }
    }

    /// Checks the step `cpu` just took (`result` is what `World::step` returned).
    pub fn after_step(
        &mut self,
        w: &World,
        cpu: VcpuId,
        result: &Result<(), Stop>,
    ) -> Vec<Violation> {
        self.step += 1;
        let mut out = Vec::new();
        let fail = |inv: Invariant, detail: String| Violation {
            invariant: inv,
            step: self.step,
            cpu,
            detail,
        };
        let new_events = w.events.since(self.events_seen);
        // I10: an agent fault, or too many faults in a row on one RIP.
        if let Err(Stop::AgentFault(d)) = result {
            out.push(fail(Invariant::I10, format!("agent_fault: {d}")));
        }
        let faulted = new_events.iter().any(|e| {
            matches!(e, Event::Ve { cpu: c, .. } | Event::VmExit { cpu: c, reason: 48, .. } if *c == cpu)
        });
        let in_agent = |rip: u64| crate::layout::in_agent(rip) || rip == layout::OS_VE_HANDLER_GVA;
        if let Some(s) = self.cpus.get_mut(cpu.0) {
            if self.rip_before == layout::AGENT_GVA + agent_rip::PT_RELEVANCE {
                s.lookup_step = Some(self.step);
            }
            if faulted && !in_agent(self.rip_before) {
                if s.fault_rip == self.rip_before {
                    s.faults_in_row += 1;
                } else {
                    s.fault_rip = self.rip_before;
                    s.faults_in_row = 1;
                }
                if s.faults_in_row > self.faults_in_row_max {
                    out.push(fail(
                        Invariant::I10,
                        format!(
                            "{} faults in a row at RIP {:#x}",
                            s.faults_in_row, self.rip_before
                        ),
                    ));
                }
            } else if !in_agent(self.rip_before)
                && w.vcpus.get(cpu.0).is_some_and(|v| v.rip != self.rip_before)
            {
                s.faults_in_row = 0;
            }
            if in_agent(self.rip_before) {
                s.agent_steps += 1;
                if s.agent_steps == self.agent_steps_max + 1 {
                    out.push(fail(
                        Invariant::I10,
                        format!(
                            "{} steps in a row inside the agent, now at RIP {:#x}",
                            s.agent_steps, self.rip_before
                        ),
                    ));
                }
            } else {
                s.agent_steps = 0;
            }
        }
        // I4: the semaphore is set only by delivery and cleared only by the agent's exit; no
        // #VE while it is set; the agent returns to the view it came from.
        let delivered = new_events
            .iter()
            .any(|e| matches!(e, Event::Ve { cpu: c, .. } if *c == cpu));
        let now = semaphore(w, cpu);
        let page = w.vcpus.get(cpu.0).and_then(|v| v.ve_info);
        if let Some(s) = self.cpus.get_mut(cpu.0) {
            // A VCPU whose information page changed (an unload took it away, a redeploy gave a
            // fresh one) starts over from that page's semaphore.
            if page != s.page {
                s.page = page;
                s.semaphore = if delivered { 0 } else { now };
            }
            if delivered && s.semaphore != 0 {
                out.push(fail(
                    Invariant::I4,
                    "a #VE was delivered while the semaphore was set".into(),
                ));
            }
            if s.semaphore == 0 && now != 0 && !delivered {
                out.push(fail(
                    Invariant::I4,
                    "the semaphore was set without a delivery".into(),
                ));
            }
            let exit_step = self.rip_before == layout::AGENT_GVA + agent_rip::STUB_EXIT;
            if s.semaphore != 0 && now == 0 && !exit_step && !delivered {
                out.push(fail(
                    Invariant::I4,
                    format!("the semaphore was cleared at RIP {:#x}", self.rip_before),
                ));
            }
            if delivered {
                // The view the VCPU was in when the #VE arrived (the step does not change it).
                s.view_at_delivery = w.vcpus.get(cpu.0).map(|v| v.eptp_index);
                // A new #VE: its cache lookup is still to come.
                s.lookup_step = None;
            }
            let returned = self.rip_before == layout::AGENT_GVA + agent_rip::STUB_RETURN;
            if returned {
                if let (Some(view), Some(v)) = (s.view_at_delivery.take(), w.vcpus.get(cpu.0)) {
                    if v.eptp_index != view {
                        out.push(fail(
                            Invariant::I4,
                            format!(
                                "the agent returned to view {} instead of {}",
                                v.eptp_index, view
                            ),
                        ));
                    }
                }
            }
            s.semaphore = now;
        }
        // I2: the instruction behind a page-table-write #VE, once the agent returns from it
        // having completed it, left what the reference CPU leaves.
        if let Some(s) = self.cpus.get_mut(cpu.0) {
            for e in new_events {
                match *e {
                    Event::Ve {
                        cpu: c,
                        qualification,
                        gla,
                        gpa,
                    } if c == cpu => {
                        s.emulation = pt_write_emulation(
                            w,
                            cpu,
                            (self.rip_before, self.regs_before, self.rflags_before),
                            qualification,
                            gla.0,
                            gpa.0,
                        );
                    }
                    Event::Agent {
                        cpu: c,
                        outcome,
                        old,
                        new,
                        ..
                    } if c == cpu => {
                        if let Some(em) = s.emulation.as_mut() {
                            em.verdict = Some((outcome, old, new));
                        }
                    }
                    _ => {}
                }
            }
            if self.rip_before == layout::AGENT_GVA + agent_rip::STUB_RETURN {
                if let Some(detail) = s.emulation.take().and_then(|em| fidelity(w, cpu, &em)) {
                    out.push(fail(Invariant::I2, detail));
                }
            }
        }
        // I1: every relevant change of a monitored entry reaches introcore in the same step.
        // Only the entries on frames the step wrote can have changed: guest memory's write
        // journal names them (all entries are read when it does not reach back far enough).
        self.touched.clear();
        match w.machine.mem.written_since(self.journal_before) {
            Some(frames) => {
                for gfn in frames {
                    let from = self.monitored_by_frame.partition_point(|(g, _)| *g < gfn.0);
                    self.touched.extend(
                        self.monitored_by_frame[from..]
                            .iter()
                            .take_while(|(g, _)| *g == gfn.0)
                            .map(|(_, i)| *i),
                    );
                }
                // In the order of `monitored`, as a scan of all of them would report.
                self.touched.sort_unstable();
                self.touched.dedup();
            }
            None => self.touched.extend(0..self.monitored.len()),
        }
        for &i in &self.touched {
            let Some((entry, value)) = self.monitored.get_mut(i) else {
                continue;
            };
            let (old, new) = (*value, w.machine.mem.read_u64(*entry));
            *value = new;
            // The spec's rule, spelled out here rather than taken from `abi::is_relevant`, so
            // that I1 stays an oracle independent of the code it judges.
            let relevant = (old ^ new) & MONITORED_BITS_FIXED != 0 && (old | new) & 1 != 0;
            if !relevant {
                continue;
            }
            let seen = new_events
                .iter()
                .any(|e| matches!(e, Event::Callback(r) if r.entry == *entry && r.new == new));
            // The one miss ARCHITECTURE allows (B77): the agent's store of a write its cache
            // lookup filtered, where the lookup came before the monitor's placement (and so
            // before the eviction B76 makes with it) and the placement before the store.
            let b77_window = self.rip_before == layout::AGENT_GVA + agent_rip::PT_STORE
                && self
                    .cpus
                    .get(cpu.0)
                    .and_then(|s| s.lookup_step)
                    .zip(self.placed_at.get(entry))
                    .is_some_and(|(lookup, placed)| lookup < *placed);
            if !seen && !b77_window {
                out.push(fail(
                    Invariant::I1,
                    format!("entry {entry} changed {old:#x} -> {new:#x} without a callback"),
                ));
            }
        }
        self.journal_before = w.machine.mem.journal_position();
        // I7: no monitored entry is in the cache. Only introcore puts entries in the cache,
        // places monitors and moves cache pages, so the scan runs when one of those happened.
        let epoch = (
            w.intro.cache.stats,
            w.intro.ptm.placements(),
            w.intro.swaps.len(),
            w.intro.pending_unload,
            w.intro.deployed,
        );
        let i7_due = self.i7_epoch.as_ref() != Some(&epoch);
        self.i7_epoch = Some(epoch);
        // The cache means something while the agent is deployed (a deploy writes it empty);
        // with an unload pending the agent still runs until the unloader lands (Q16).
        if i7_due && w.intro.deployed {
            for e in w.intro.cached_monitored_entries(&w.machine, &w.guest) {
                out.push(fail(
                    Invariant::I7,
                    format!("monitored entry {e} is in the cache"),
                ));
            }
        }
        // I5: the identities of VE-SEMANTICS section 3, whenever no VCPU is inside the agent.
        if !w.vcpus.iter().any(|v| in_agent(v.rip)) {
            let c = &w.counters;
            if c.ve_total != c.ve_page_walk + c.ve_pt_write + c.ve_unknown {
                out.push(fail(
                    Invariant::I5,
                    "total #VEs != page walk + PT write + unknown".into(),
                ));
            }
            let five = c.ignored_irrelevant
                + c.ignored_cache
                + c.raised
                + c.emulated_by_introcore
                + c.rejected;
            if c.ve_pt_write != five {
                out.push(fail(
                    Invariant::I5,
                    format!(
                        "PT-write #VEs {} != the five outcomes {five}",
                        c.ve_pt_write
                    ),
                ));
            }
            if c.ve_unknown == 0 && w.intro.deployed {
                let stats = crate::introcore::Introcore::ve_stats(&w.machine, &w.vcpus);
                let sum = |f: fn(&crate::introcore::lifecycle::CpuStats) -> u64| {
                    stats.iter().map(f).sum::<u64>()
                };
                let ignored = sum(|s| s.ignored_total);
                let walks = c.page_walk_set - w.intro.page_walk_set_at_deploy;
                let want = sum(|s| s.ignored_irrelevant) + sum(|s| s.ignored_cache) + walks;
                if ignored != want {
                    out.push(fail(
                        Invariant::I5,
                        format!("VeIgnoredTotal {ignored} != irrelevant + cache + unraised walks {want}"),
                    ));
                }
            }
        }
        out
    }
}

/// The I2 record of a #VE `cpu` just took, if it is a page-table write (a data write to the
/// final translation) at an aligned address; `before` is the RIP, GPRs and RFLAGS the
/// instruction started from.
fn pt_write_emulation(
    w: &World,
    cpu: VcpuId,
    before: (u64, [u64; 16], u64),
    qualification: u64,
    gla: u64,
    gpa: u64,
) -> Option<Emulation> {
    use vesim_model::ept::EptQualification as Q;
    let q = Q::from_bits_retain(qualification);
    if !q.contains(Q::WRITE | Q::GLA_VALID | Q::GLA_TRANSLATED) || gla % 8 != 0 {
        return None;
    }
    let (rip, regs, rflags) = before;
    let cr3 = w.vcpus.get(cpu.0)?.cr3;
    // Up to 15 bytes, translated once per page they lie on.
    let mut bytes = [0u8; 15];
    let first = (0x1000 - (rip & 0xFFF)).min(15) as usize;
    let (head, tail) = bytes.split_at_mut(first);
    w.machine.mem.read(
        crate::guest::software_translate(&w.machine, cr3, rip)?,
        head,
    );
    if !tail.is_empty() {
        let next = rip.wrapping_add(first as u64);
        w.machine.mem.read(
            crate::guest::software_translate(&w.machine, cr3, next)?,
            tail,
        );
    }
    Some(Emulation {
        bytes,
        regs,
        rflags,
        rip,
        gla,
        gpa: Gpa(gpa),
        old: w.machine.mem.read_u64(Gpa(gpa)),
        verdict: None,
    })
}

/// I2 for a #VE the agent has returned from: `None` when it matches the reference CPU (or the
/// instruction was not completed: refused, or never judged), else what differs.
fn fidelity(w: &World, cpu: VcpuId, em: &Emulation) -> Option<String> {
    use vesim_model::vcpu::{Gpr, Rflags};
    let (outcome, old, new) = em.verdict?;
    if !matches!(
        outcome,
        AgentOutcome::IgnoredIrrelevant
            | AgentOutcome::IgnoredCache
            | AgentOutcome::Raised
            | AgentOutcome::EmulatedByIntrocore
    ) {
        return None;
    }
    // A request the reference cannot set up (RF set, the entry next to the code) or an
    // instruction it does not complete is not judged.
    let r = crate::exec::run_cell(
        &em.bytes,
        em.regs,
        em.rflags,
        em.rip,
        em.gla,
        old.unwrap_or(em.old),
    )
    .ok()?;
    if r.outcome != vesim_model::Outcome::Executed {
        return None;
    }
    // The registers as the instruction left them: the runner may have loaded the next one.
    let v = match w.completed {
        Some(c) if c.cpu == cpu => c,
        _ => {
            let v = w.vcpus.get(cpu.0)?;
            crate::world::Completed {
                cpu,
                gpr: v.gpr,
                rip: v.rip,
                rflags: v.rflags.bits(),
            }
        }
    };
    let mut diffs = Vec::new();
    let entry = new.unwrap_or_else(|| w.machine.mem.read_u64(em.gpa));
    if r.cell != Some(entry) {
        diffs.push(format!(
            "entry {:#x} (reference {:#x?})",
            entry,
            r.cell.as_ref()
        ));
    }
    if v.rip != r.rip {
        diffs.push(format!("RIP {:#x} (reference {:#x})", v.rip, r.rip));
    }
    let rf = Rflags::RF.bits();
    if v.rflags & !rf != r.rflags & !rf {
        diffs.push(format!(
            "RFLAGS {:#x} (reference {:#x})",
            v.rflags, r.rflags
        ));
    }
    for g in Gpr::ALL {
        let (a, b) = (v.gpr[g as usize], r.regs[g as usize]);
        if a != b {
            diffs.push(format!("{} {a:#x} (reference {b:#x})", g.name()));
        }
    }
    if diffs.is_empty() {
        return None;
    }
    Some(format!(
        "{} at RIP {:#x} ({}): {}",
        r.mnemonic,
        em.rip,
        outcome.name(),
        diffs.join(", ")
    ))
}
