//! The EPT-violation exit path, the one every write takes with #VE off and a #VE-on write
//! takes when it is not converted: the page-table write emulated and committed, monitors'
//! callbacks, and the exits of page walks.

use super::{emulate, Engine};
use crate::events::{Event, Stop};
use vesim_model::ept::EptQualification;
use vesim_model::exit::EptViolation;
use vesim_model::VcpuId;

impl Engine<'_> {
    /// An EPT-violation exit (the #VE-off path, and violations #VE could not take).
    pub fn handle_ept_violation(
        &mut self,
        cpu: VcpuId,
        v: EptViolation,
        idt_vectoring: Option<u8>,
    ) -> Result<(), Stop> {
        let outcome = vesim_model::Outcome::EptViolation {
            violation: v,
            idt_vectoring,
        };
        let Some(vcpu) = self.vcpus.get(cpu.0).cloned() else {
            return Err(Stop::Guest(outcome));
        };
        if idt_vectoring.is_some() {
            return Err(Stop::Guest(outcome));
        }
        self.intro.last_exit_gpa = Some(v.gpa);
        if vcpu.eptp_index == self.intro.protected {
            // B119: nothing but agent code may run in the protected view.
            self.events.push(Event::Alert {
                cpu,
                detail: format!("access to {} in the protected view", v.gpa),
            });
            return Err(Stop::Guest(outcome));
        }
        // Agent pages are the frames carrying the agent's protection (it moves on a remap).
        let agent_page = self
            .intro
            .agent_hooks
            .iter()
            .any(|(g, _)| *g == v.gpa.gfn());
        if agent_page {
            // B118: the untrusted view touched the agent. The action is NotAllowed: a read is
            // blocked silently, a write is blocked with an alert (the instruction is skipped
            // without effect); an execute is an alert and the VCPU cannot go on.
            let fetch = v.qualification.contains(EptQualification::FETCH);
            let write = v.qualification.contains(EptQualification::WRITE);
            if fetch || write {
                self.events.push(Event::Alert {
                    cpu,
                    detail: format!(
                        "untrusted {} of agent page {}",
                        if fetch { "execute" } else { "write" },
                        v.gpa
                    ),
                });
            }
            if fetch {
                return Err(Stop::Guest(outcome));
            }
            let mut bytes = [0u8; 15];
            let len = if crate::guest::software_read(self.machine, vcpu.cr3, vcpu.rip, &mut bytes) {
                vesim_model::cpu::decode::describe(&bytes, vcpu.rip)
                    .map(|d| d.0)
                    .unwrap_or(0)
            } else {
                0
            };
            if len == 0 {
                return Err(Stop::Guest(outcome));
            }
            if let Some(t) = self.vcpus.get_mut(cpu.0) {
                t.rip = t.rip.wrapping_add(len as u64);
            }
            return Ok(());
        }
        let counts = self.intro.hooks.counts(v.gpa.gfn());
        let translated = v.qualification.contains(EptQualification::GLA_TRANSLATED);
        if !translated {
            // A page-walk A/D write hit a write-protected table: perform it (baseline).
            return self.resolve_walk_exit(cpu, &vcpu, v);
        }
        if counts.pt > 0 && v.qualification.contains(EptQualification::WRITE) {
            let e = emulate::emulate_pt_write(self.machine, &vcpu, None, v.gla, v.gpa)
                .map_err(|_| Stop::Guest(outcome.clone()))?;
            let relevant = crate::abi::is_relevant(e.old, e.new, self.quirks.monitored_bits());
            if relevant {
                self.pt_write_callbacks(e.entry, e.old, e.new);
            }
            emulate::commit_stores(self.machine, &e);
            if let Some(t) = self.vcpus.get_mut(cpu.0) {
                t.gpr = e.gpr;
                t.rflags = e.rflags;
                t.rip = e.rip;
            }
            self.commit_hooks();
            return Ok(());
        }
        Err(Stop::Guest(outcome))
    }

    /// Resolves a page-walk exit: the hypervisor makes the A/D writes the walker attempted.
    pub(super) fn resolve_walk_exit(
        &mut self,
        cpu: VcpuId,
        vcpu: &vesim_model::vcpu::Vcpu,
        v: EptViolation,
    ) -> Result<(), Stop> {
        let mut bytes = [0u8; 15];
        let mut writes_page = false;
        if crate::guest::software_read(self.machine, vcpu.cr3, vcpu.rip, &mut bytes) {
            if let Some(acc) = vesim_model::cpu::decode::accesses_of(&bytes, vcpu) {
                writes_page = acc
                    .iter()
                    .any(|a| a.kind.writes() && a.gla.page_base() == v.gla.page_base());
            }
        }
        let kind = if writes_page {
            vesim_model::paging::AccessType::Write
        } else {
            vesim_model::paging::AccessType::Read
        };
        let ctx = self.machine.walk_context(vcpu, false);
        let w = vesim_model::paging::walk(
            &self.machine.mem,
            |_, _| vesim_model::ept::EptCheck::Allowed,
            &ctx,
            v.gla,
            kind,
        )
        .map_err(|_| {
            Stop::Guest(vesim_model::Outcome::EptViolation {
                violation: v,
                idt_vectoring: None,
            })
        })?;
        for ad in w.ad_writes() {
            let old = self.machine.mem.read_u64(ad.gpa);
            self.machine.mem.write_u64(ad.gpa, old | ad.set.bits());
        }
        let _ = cpu;
        Ok(())
    }
}
