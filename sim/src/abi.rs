//! The contract between the agent and introcore, which HVMI compiles into both sides: the
//! hypercall's registers and numbers, the break reasons and status codes, the codes of the
//! agent's verdicts in its information page, the relevance rule and the geometry of the #VE
//! cache. Neither side's
//! code lives here; both import it, so neither imports the other.

use crate::layout;

/// Offset of the agent's entry in its image: VESTUB's main handler, where the OS handler's
/// trampoline jumps (B4, B8).
pub const AGENT_ENTRY: u64 = layout::AGENT_VESTUB;

/// The VMCALL number of RAX (`__HYPERVISOR_hvm_op`, HW §7).
pub const HC_RAX: u64 = 0x22;
/// The VMCALL number of RDI (`HVMOP_guest_request_vm_event`).
pub const HC_RDI: u64 = 0x18;
/// Agent call numbers (RDX).
pub mod call {
    /// NOP.
    pub const NOP: u64 = 0;
    /// BREAK (RBX = reason, RCX = parameter).
    pub const BREAK: u64 = 1;
    /// TRACE.
    pub const TRACE: u64 = 2;
    /// RAISE_EPT; with RBX = 1 in `fixed`, "emulate for me" (Q1).
    pub const RAISE_EPT: u64 = 3;
}
/// Break reasons (C).
pub mod break_reason {
    /// Unknown exit reason.
    pub const UNKNOWN_EXIT: u64 = 1;
    /// Page walk failed.
    pub const PAGE_WALK_FAILED: u64 = 2;
    /// Emulation failed.
    pub const EMULATION_FAILED: u64 = 3;
    /// CS not kernel.
    pub const CS_NOT_KERNEL: u64 = 4;
}
/// `VE_STATUS_NOT_SUPPORTED`, returned in RAX when introcore cannot emulate.
pub const STATUS_NOT_SUPPORTED: u64 = 0x8000_0001;
/// Xen's -ENOSYS for a VMCALL that is not an introcore call.
pub const ENOSYS: u64 = (-38i64) as u64;

/// The disjoint outcomes of a #VE (VE-SEMANTICS section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentOutcome {
    /// PT write, not relevant.
    IgnoredIrrelevant,
    /// PT write, relevant, entry cached.
    IgnoredCache,
    /// PT write raised to introcore.
    Raised,
    /// PT write refused by the agent and performed by introcore (`fixed`).
    EmulatedByIntrocore,
    /// PT write refused and not performed.
    Rejected,
    /// B27/B28 break (unknown exit reason).
    Break,
    /// Page walk handled without a raise.
    PageWalkSet,
    /// Page walk raised (KPTI case).
    PageWalkRaised,
}

impl AgentOutcome {
    /// Stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            AgentOutcome::IgnoredIrrelevant => "ignored_irrelevant",
            AgentOutcome::IgnoredCache => "ignored_cache",
            AgentOutcome::Raised => "raised",
            AgentOutcome::EmulatedByIntrocore => "emulated_by_introcore",
            AgentOutcome::Rejected => "rejected",
            AgentOutcome::Break => "break",
            AgentOutcome::PageWalkSet => "page_walk_set",
            AgentOutcome::PageWalkRaised => "page_walk_raised",
        }
    }
    pub(crate) fn code(self) -> u64 {
        self as u64 + 1
    }
    /// Every outcome, in code order.
    pub const ALL: [AgentOutcome; 8] = [
        AgentOutcome::IgnoredIrrelevant,
        AgentOutcome::IgnoredCache,
        AgentOutcome::Raised,
        AgentOutcome::EmulatedByIntrocore,
        AgentOutcome::Rejected,
        AgentOutcome::Break,
        AgentOutcome::PageWalkSet,
        AgentOutcome::PageWalkRaised,
    ];
    pub(crate) fn from_code(c: u64) -> Option<AgentOutcome> {
        c.checked_sub(1)
            .and_then(|i| Self::ALL.get(i as usize).copied())
    }
}

/// Why the agent refuses a write, in the order the rules are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// B29: the saved CS is not 0x10.
    CsNotKernel,
    /// B34: the bytes do not decode.
    DecodeError,
    /// B35: REP on a string instruction.
    Rep,
    /// B35: a segment-override prefix.
    SegmentPrefix,
    /// B35: RIP-relative addressing.
    RipRelative,
    /// B35: an implicit stack access.
    StackAccess,
    /// B36: operand 0 is not memory.
    NotMemory,
    /// B37: operand 0 is not 8 bytes.
    Size,
    /// B38: the recomputed address is not the faulting GLA.
    GlaMismatch,
    /// B39: the address is not 8-aligned.
    Misaligned,
    /// B43–B49: an instruction or source the agent does not emulate.
    UnsupportedInstruction,
}

impl RejectReason {
    /// All reasons in evaluation order.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::CsNotKernel,
        RejectReason::DecodeError,
        RejectReason::Rep,
        RejectReason::SegmentPrefix,
        RejectReason::RipRelative,
        RejectReason::StackAccess,
        RejectReason::NotMemory,
        RejectReason::Size,
        RejectReason::GlaMismatch,
        RejectReason::Misaligned,
        RejectReason::UnsupportedInstruction,
    ];
    /// Stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::CsNotKernel => "cs_not_kernel",
            RejectReason::DecodeError => "decode_error",
            RejectReason::Rep => "rep",
            RejectReason::SegmentPrefix => "segment_prefix",
            RejectReason::RipRelative => "rip_relative",
            RejectReason::StackAccess => "stack_access",
            RejectReason::NotMemory => "not_memory",
            RejectReason::Size => "size",
            RejectReason::GlaMismatch => "gla_mismatch",
            RejectReason::Misaligned => "misaligned",
            RejectReason::UnsupportedInstruction => "unsupported_instruction",
        }
    }
    pub(crate) fn code(self) -> u64 {
        self as u64 + 1
    }
    /// The reason with code `c` (0 = none).
    pub fn from_code(c: u64) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.code() == c)
    }
}

/// Whether a page-table write from `old` to `new` is relevant (B51, B114, B133): it changes a
/// monitored bit of an entry that is present before or after. The agent (with the bits
/// introcore patched into its data section) and introcore (with its own) decide by this one
/// rule.
pub const fn is_relevant(old: u64, new: u64, monitored_bits: u64) -> bool {
    (old ^ new) & monitored_bits != 0 && (old | new) & 1 != 0
}

/// The geometry of the #VE page-table-entry cache (B70): 64 lines × 64 buckets × 8 slots of
/// 8 bytes in the agent's VECACHE section. Introcore writes slots, the agent reads them.
pub mod cache {
    use vesim_model::Gpa;

    /// Lines (pages) of the cache.
    pub const LINES: u64 = 64;
    /// Buckets per line.
    pub const BUCKETS: u64 = 64;
    /// Slots per bucket.
    pub const SLOTS: u64 = 8;

    /// The line of an entry address (B70).
    pub const fn line_of(entry: Gpa) -> u64 {
        (entry.0 >> 12) & (LINES - 1)
    }

    /// The bucket of an entry address (B70).
    pub const fn bucket_of(entry: Gpa) -> u64 {
        (entry.0 >> 3) & (BUCKETS - 1)
    }

    /// Offset of slot `slot` of (`line`, `bucket`) from the start of VECACHE.
    pub const fn slot_offset(line: u64, bucket: u64, slot: u64) -> u64 {
        line * 0x1000 + bucket * SLOTS * 8 + slot * 8
    }
}
