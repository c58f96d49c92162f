//! Event delivery through the IDT (VE-SEMANTICS section 1; HW §5): 64-bit gates in guest
//! memory, a stack switch to TSS.RSP0 from CPL 3, RSP aligned down to 16, SS, RSP, RFLAGS
//! (with RF), CS and RIP (and an error code) pushed as supervisor writes through paging and
//! EPT; no IST. An EPT violation during delivery is a VM exit that records the vector, never a
//! #VE; any other fault during #VE or #PF delivery is a double fault.

use super::mmu::{AccessKind, Fault, PhysSpan};
use super::Machine;
use crate::addr::Gla;
use crate::exit::Outcome;
use crate::vcpu::{Rflags, Vcpu};

/// Vector of the virtualization exception.
pub const VECTOR_VE: u8 = 20;
/// Vector of the page fault.
pub const VECTOR_PF: u8 = 14;

/// Gate types accepted in a 64-bit IDT.
const GATE_INTERRUPT: u8 = 0xE;
const GATE_TRAP: u8 = 0xF;

fn delivery_fault(f: Fault, vector: u8) -> Outcome {
    match f {
        Fault::EptViolation(v) => Outcome::EptViolation {
            violation: v,
            idt_vectoring: Some(vector),
        },
        Fault::EptMisconfig { gpa } => Outcome::EptMisconfig { gpa },
        Fault::Page { .. } | Fault::NonCanonical => Outcome::DoubleFault,
    }
}

impl Machine {
    /// Delivers exception `vector` (a fault: the pushed RIP is the current one) with an optional
    /// error code. On success the VCPU is at the handler's first instruction.
    pub fn deliver_exception(
        &mut self,
        vcpu: &mut Vcpu,
        vector: u8,
        error_code: Option<u64>,
    ) -> Result<(), Outcome> {
        let gate_offset = vector as u64 * 16;
        if gate_offset + 15 > vcpu.idtr.limit as u64 {
            return Err(Outcome::DoubleFault);
        }
        let gate_gla = vcpu.idtr.base.wrapping_add(gate_offset);
        let mut gate = [0u8; 16];
        self.read_linear(vcpu, gate_gla, &mut gate, true)
            .map_err(|f| delivery_fault(f, vector))?;
        let selector = u16::from_le_bytes([gate[2], gate[3]]);
        let attrs = gate[5];
        let gate_type = attrs & 0xF;
        let present = attrs & 0x80 != 0;
        if !present
            || !(gate_type == GATE_INTERRUPT || gate_type == GATE_TRAP)
            || selector & !3 == 0
        {
            return Err(Outcome::DoubleFault);
        }
        let target = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
            | u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16
            | u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32;
        if !Gla(target).is_canonical() {
            return Err(Outcome::DoubleFault);
        }
        let new_cpl = (selector & 3) as u8;
        let stack_switch = new_cpl < vcpu.cpl();
        let old_rsp = vcpu.gpr[4];
        let base_rsp = if stack_switch { vcpu.tss_rsp0 } else { old_rsp };
        let aligned = base_rsp & !0xF;
        let frame = [
            vcpu.ss as u64,
            old_rsp,
            (vcpu.rflags | Rflags::RF).bits(),
            vcpu.cs as u64,
            vcpu.rip,
            error_code.unwrap_or(0),
        ];
        let frame = &frame[..if error_code.is_some() { 6 } else { 5 }];
        let frame_len = frame.len() as u64 * 8;
        let new_rsp = aligned.wrapping_sub(frame_len);
        // Push order: SS first (highest address), each a supervisor write; every slot is
        // translated before any is written.
        let mut spans = [PhysSpan::default(); 6];
        for (i, span) in spans.iter_mut().enumerate().take(frame.len()) {
            let gla = Gla(aligned.wrapping_sub(8 * (i as u64 + 1)));
            *span = self
                .translate_span(vcpu, gla, 8, AccessKind::Write, true)
                .map_err(|f| match f {
                    Fault::NonCanonical => Outcome::DoubleFault,
                    f => delivery_fault(f, vector),
                })?;
        }
        for (span, value) in spans.iter().zip(frame) {
            self.write_span(span, &value.to_le_bytes());
        }
        vcpu.gpr[4] = new_rsp;
        vcpu.rip = target;
        vcpu.cs = selector;
        if stack_switch {
            vcpu.ss = new_cpl as u16;
        }
        let mut clear = Rflags::TF | Rflags::NT | Rflags::RF | Rflags::VM;
        if gate_type == GATE_INTERRUPT {
            clear |= Rflags::IF;
        }
        vcpu.rflags.remove(clear);
        Ok(())
    }
}
