//! What an access or an instruction can end in, as values (CONVENTIONS rule 3).

use crate::addr::{Gla, Gpa};
use crate::ept::EptQualification;
use crate::paging::PageFaultErrorCode;

/// Basic VM-exit reasons the model produces (HW §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitReason {
    /// 0: exception or NMI (a #VE intercepted by exception-bitmap bit 20).
    ExceptionOrNmi,
    /// 10: CPUID.
    Cpuid,
    /// 12: HLT.
    Hlt,
    /// 18: VMCALL.
    Vmcall,
    /// 31: RDMSR of an intercepted MSR.
    Rdmsr,
    /// 32: WRMSR of an intercepted MSR.
    Wrmsr,
    /// 48: EPT violation.
    EptViolation,
    /// 49: EPT misconfiguration.
    EptMisconfig,
    /// 59: VMFUNC failure.
    Vmfunc,
}

impl ExitReason {
    /// The architectural basic exit reason number.
    pub const fn code(self) -> u32 {
        match self {
            ExitReason::ExceptionOrNmi => 0,
            ExitReason::Cpuid => 10,
            ExitReason::Hlt => 12,
            ExitReason::Vmcall => 18,
            ExitReason::Rdmsr => 31,
            ExitReason::Wrmsr => 32,
            ExitReason::EptViolation => 48,
            ExitReason::EptMisconfig => 49,
            ExitReason::Vmfunc => 59,
        }
    }

    /// Every reason the model produces.
    pub const ALL: [ExitReason; 9] = [
        ExitReason::ExceptionOrNmi,
        ExitReason::Cpuid,
        ExitReason::Hlt,
        ExitReason::Vmcall,
        ExitReason::Rdmsr,
        ExitReason::Wrmsr,
        ExitReason::EptViolation,
        ExitReason::EptMisconfig,
        ExitReason::Vmfunc,
    ];

    /// A short snake_case name (SDM Vol. 3C, Appendix C).
    pub const fn name(self) -> &'static str {
        match self {
            ExitReason::ExceptionOrNmi => "exception_or_nmi",
            ExitReason::Cpuid => "cpuid",
            ExitReason::Hlt => "hlt",
            ExitReason::Vmcall => "vmcall",
            ExitReason::Rdmsr => "rdmsr",
            ExitReason::Wrmsr => "wrmsr",
            ExitReason::EptViolation => "ept_violation",
            ExitReason::EptMisconfig => "ept_misconfig",
            ExitReason::Vmfunc => "vmfunc",
        }
    }

    /// The reason with basic number `code`.
    pub fn from_code(code: u32) -> Option<ExitReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The details of an EPT violation (HW §3), whether it became a VM exit or a #VE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    /// The exit qualification.
    pub qualification: EptQualification,
    /// The guest-physical address accessed (a paging-structure entry when bit 8 is 0).
    pub gpa: Gpa,
    /// The linear address being translated.
    pub gla: Gla,
    /// Bit 63 of the deciding EPT entry was 0 (HW §1.4).
    pub convertible: bool,
}

/// The outcome of one step of a VCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The instruction completed; RIP points at the next one.
    Executed,
    /// A guest page fault; the instruction did not execute (A/D writes made before it stay).
    PageFault {
        /// The error code.
        error_code: PageFaultErrorCode,
        /// The faulting linear address (what CR2 receives on delivery).
        cr2: Gla,
    },
    /// A general-protection fault (non-canonical address, privileged instruction at CPL > 0,
    /// bad MSR access).
    GeneralProtection {
        /// The error code (0 in every case the model produces).
        error_code: u32,
    },
    /// A stack fault (#SS): a non-canonical stack address.
    StackFault,
    /// Invalid opcode (#UD).
    InvalidOpcode,
    /// A VM exit for an EPT violation (reason 48).
    EptViolation {
        /// The violation.
        violation: EptViolation,
        /// The vector being delivered when the violation happened (IDT-vectoring information).
        idt_vectoring: Option<u8>,
    },
    /// A #VE was delivered through IDT entry 20; the information area was written.
    VeDelivered(EptViolation),
    /// A #VE was raised and intercepted by exception-bitmap bit 20 (VM exit reason 0 with
    /// vector 20) after the information area was written.
    VeExit(EptViolation),
    /// An EPT misconfiguration (exit 49).
    EptMisconfig {
        /// The guest-physical address.
        gpa: Gpa,
    },
    /// A fault while delivering #VE or #PF: a double fault, which stops the world.
    DoubleFault,
    /// VMCALL (exit 18); RIP still points at the VMCALL.
    Vmcall,
    /// VMFUNC exit (59); RIP still points at the VMFUNC.
    VmfuncExit {
        /// EAX at the VMFUNC.
        function: u32,
        /// ECX at the VMFUNC.
        index: u32,
    },
    /// Another VM exit (CPUID, HLT, intercepted RDMSR/WRMSR); RIP still points at the
    /// instruction.
    VmExit(ExitReason),
    /// The instruction performed all its memory accesses but is outside the reference CPU's
    /// instruction set.
    Unsupported {
        /// iced-x86's mnemonic in lower case.
        mnemonic: String,
    },
}

impl std::fmt::Display for Outcome {
    /// The outcome in words (what an error message says).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Executed => write!(f, "the instruction executed"),
            Outcome::PageFault { error_code, cr2 } => crate::cpu::mmu::Fault::Page {
                error_code: *error_code,
                cr2: *cr2,
            }
            .fmt(f),
            Outcome::GeneralProtection { error_code } => {
                write!(f, "a general-protection fault (error code {error_code:#x})")
            }
            Outcome::StackFault => write!(f, "a stack fault"),
            Outcome::InvalidOpcode => write!(f, "an invalid-opcode fault (#UD)"),
            Outcome::EptViolation { violation, .. } => write!(
                f,
                "an EPT violation at guest-physical {:#x} (VM exit 48)",
                violation.gpa.0
            ),
            Outcome::VeDelivered(v) => {
                write!(f, "a #VE delivered for guest-physical {:#x}", v.gpa.0)
            }
            Outcome::VeExit(v) => write!(
                f,
                "a #VE intercepted by the exception bitmap for guest-physical {:#x}",
                v.gpa.0
            ),
            Outcome::EptMisconfig { gpa } => {
                crate::cpu::mmu::Fault::EptMisconfig { gpa: *gpa }.fmt(f)
            }
            Outcome::DoubleFault => write!(f, "a double fault"),
            Outcome::Vmcall => write!(f, "a VMCALL exit"),
            Outcome::VmfuncExit { function, index } => {
                write!(f, "a VMFUNC exit (function {function}, index {index})")
            }
            Outcome::VmExit(r) => write!(f, "a VM exit ({})", r.name()),
            Outcome::Unsupported { mnemonic } => write!(
                f,
                "'{mnemonic}', an instruction the reference CPU does not implement"
            ),
        }
    }
}

impl Outcome {
    /// A stable snake-case name (the `outcome` field of `vesim exec --json`).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::PageFault { .. } => "page_fault",
            Outcome::GeneralProtection { .. } => "general_protection",
            Outcome::StackFault => "stack_fault",
            Outcome::InvalidOpcode => "ud",
            Outcome::EptViolation { .. } => "ept_violation",
            Outcome::VeDelivered(_) => "ve_delivered",
            Outcome::VeExit(_) => "ve_exit",
            Outcome::EptMisconfig { .. } => "ept_misconfig",
            Outcome::DoubleFault => "double_fault",
            Outcome::Vmcall => "vmcall",
            Outcome::VmfuncExit { .. } => "vmfunc_exit",
            Outcome::VmExit(_) => "vm_exit",
            Outcome::Unsupported { .. } => "unsupported",
        }
    }
    /// The VM-exit reason, if this outcome is a VM exit.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        match self {
            Outcome::EptViolation { .. } => Some(ExitReason::EptViolation),
            Outcome::VeExit(_) => Some(ExitReason::ExceptionOrNmi),
            Outcome::EptMisconfig { .. } => Some(ExitReason::EptMisconfig),
            Outcome::Vmcall => Some(ExitReason::Vmcall),
            Outcome::VmfuncExit { .. } => Some(ExitReason::Vmfunc),
            Outcome::VmExit(r) => Some(*r),
            _ => None,
        }
    }
}
