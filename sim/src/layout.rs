//! Fixed guest addresses. Every magic address vesim uses is defined here and nowhere else.

use vesim_model::Gpa;

/// `vesim exec`: the guest-physical window that holds the page tables (PML4 first).
pub const EXEC_TABLES_START: Gpa = Gpa(0x0100_0000);
/// `vesim exec`: end (exclusive) of the page-table window.
pub const EXEC_TABLES_END: Gpa = Gpa(0x0110_0000);
/// `vesim exec`: the first guest-physical frame given to a mapped page; pages get consecutive
/// frames in ascending linear order.
pub const EXEC_DATA_START: Gpa = Gpa(0x0020_0000);
/// `vesim exec`: the default RIP.
pub const EXEC_DEFAULT_RIP: u64 = 0x40_0000;

// ---------------------------------------------------------------------------------------------
// The minimal Windows-like guest (one kernel CR3, no KPTI).
// ---------------------------------------------------------------------------------------------

/// Guest-physical window holding the kernel's paging structures (PML4 first).
pub const GUEST_TABLES_START: Gpa = Gpa(0x0100_0000);
/// End (exclusive) of the paging-structure window.
pub const GUEST_TABLES_END: Gpa = Gpa(0x0200_0000);
/// Guest-physical window for ordinary guest pages (IDT, OS code, stacks, data).
pub const GUEST_DATA_START: Gpa = Gpa(0x0020_0000);
/// Low memory below [`GUEST_DATA_START`] that no allocator hands out: the guest may move a
/// page table there (`movetable` operations), frame 0 included.
pub const LOW_FRAMES_END: Gpa = GUEST_DATA_START;
/// End (exclusive) of the ordinary data window.
pub const GUEST_DATA_END: Gpa = Gpa(0x0100_0000);
/// Guest-physical address of the agent image (contiguous).
pub const AGENT_GPA: Gpa = Gpa(0x0400_0000);
/// Self-map PML4 index (VE-SEMANTICS section 2: 256..=511, default 0x1ED).
pub const DEFAULT_SELF_MAP_INDEX: u64 = 0x1ED;
/// Linear address of the IDT (256 16-byte gates, one page).
pub const IDT_GVA: u64 = 0xFFFF_F800_0010_0000;
/// Linear address of the OS #VE handler (IDT entry 20), whose first 24 bytes the engine
/// patches with the B4 trampoline.
pub const OS_VE_HANDLER_GVA: u64 = 0xFFFF_F800_0020_0000;
/// Linear address of KiKernelExit (SWAPGS, CR3 := user CR3, IRETQ) in the guest model.
pub const KI_KERNEL_EXIT_GVA: u64 = 0xFFFF_F800_0020_0800;
/// Linear address of the first kernel stack; VCPU i's stack is `KERNEL_STACKS_GVA +
/// i * KERNEL_STACK_STRIDE`, `KERNEL_STACK_PAGES` pages, RSP starting at its top.
pub const KERNEL_STACKS_GVA: u64 = 0xFFFF_F800_0100_0000;
/// Distance between two kernel stacks.
pub const KERNEL_STACK_STRIDE: u64 = 0x1_0000;
/// Pages of each kernel stack.
pub const KERNEL_STACK_PAGES: u64 = 4;
/// Linear address of the agent image (the loader's non-paged allocation).
pub const AGENT_GVA: u64 = 0xFFFF_F880_0000_0000;
/// Kernel code selector; the agent requires exactly this saved CS (B29).
pub const KERNEL_CS: u16 = 0x10;
/// Kernel stack selector.
pub const KERNEL_SS: u16 = 0x18;

// ---------------------------------------------------------------------------------------------
// The agent image (B24), offsets from its base. Each agent step runs at a fixed RIP inside
// VESTUB or the code section.
// ---------------------------------------------------------------------------------------------

/// The PE header page.
pub const AGENT_HEADER: u64 = 0x0000;
/// VESTUB: entry and exit stubs (execute-only in the untrusted view, B89).
pub const AGENT_VESTUB: u64 = 0x1000;
/// `.text`: the C handler, PT-write and page-walk code.
pub const AGENT_CODE: u64 = 0x2000;
/// `.data`: the patched globals and the 512 locks.
pub const AGENT_DATA: u64 = 0x3000;
/// VECPUMAP: 64 u32 slots.
pub const AGENT_CPUMAP: u64 = 0x4000;
/// VEINFO: 64 information pages, one per VCPU.
pub const AGENT_VEINFO: u64 = 0x5000;
/// VESTACKS: 64 protected stacks of 0x4000 bytes.
pub const AGENT_VESTACKS: u64 = 0x4_5000;
/// VECACHE: 64 cache line pages.
pub const AGENT_VECACHE: u64 = 0x14_5000;
/// Size of the image.
pub const AGENT_SIZE: u64 = 0x18_5000;
/// Maximum VCPUs the agent serves (`VE_MAX_CPUS`).
pub const AGENT_MAX_CPUS: u64 = 64;
/// Size of one protected stack (`VE_STACK_SIZE`).
pub const AGENT_STACK_SIZE: u64 = 0x4000;

/// VESTUB offset of the imm32 patched with the protected view index (B8, B87 step 2).
pub const STUB_PROTECTED_INDEX_IMM: u64 = AGENT_VESTUB + 0xF00;
/// VESTUB offset of the imm32 patched with the untrusted view index (B19, B87 step 3).
pub const STUB_UNTRUSTED_INDEX_IMM: u64 = AGENT_VESTUB + 0xF04;
/// VESTUB offset of the 24-byte `VeCoreJumpToKiKernelExit` slot (B20, B22).
pub const STUB_KI_KERNEL_EXIT_SLOT: u64 = AGENT_VESTUB + 0xF10;
/// `.data` offset of `VeCoreSelfMapIndex` (u32).
pub const DATA_SELF_MAP_INDEX: u64 = AGENT_DATA;
/// `.data` offset of `VeCoreMonitoredPtBits` (u64).
pub const DATA_MONITORED_BITS: u64 = AGENT_DATA + 0x08;
/// `.data` offset of the "mitigations initialised" flag (u32, B14).
pub const DATA_MITIGATIONS_DONE: u64 = AGENT_DATA + 0x10;
/// `.data` offset of the mitigation choices (u32: bit 0 IBRS, 1 IBPB, 2 STIBP, 3 MD_CLEAR).
pub const DATA_MITIGATIONS: u64 = AGENT_DATA + 0x14;
/// `.data` offset of the 512 one-bit spinlocks (`gLock`, 64 bytes).
pub const DATA_LOCKS: u64 = AGENT_DATA + 0x40;

/// Information-page offsets: the hardware part (named from `vesim_model::ve_info`) and HVMI's
/// section C. Every read and write of the page names its field here.
pub mod veinfo {
    use vesim_model::ve_info;
    /// The hardware's exit reason (u32).
    pub const REASON: u64 = ve_info::OFFSET_REASON;
    /// The hardware's semaphore (u32).
    pub const SEMAPHORE: u64 = ve_info::OFFSET_SEMAPHORE;
    /// The hardware's exit qualification.
    pub const QUALIFICATION: u64 = ve_info::OFFSET_QUALIFICATION;
    /// The hardware's guest-linear address.
    pub const GLA: u64 = ve_info::OFFSET_GLA;
    /// The hardware's guest-physical address.
    pub const GPA: u64 = ve_info::OFFSET_GPA;
    /// The hardware's EPTP index (u16).
    pub const EPTP_INDEX: u64 = ve_info::OFFSET_EPTP_INDEX;
    /// RAX; RCX, RDX, ... R15 follow every 8 bytes (encoding order).
    pub const REGS: u64 = 0x30;
    /// Saved RIP.
    pub const RIP: u64 = 0xB0;
    /// Saved CS.
    pub const CS: u64 = 0xB8;
    /// Saved RFLAGS.
    pub const RFLAGS: u64 = 0xC0;
    /// Saved CR0.
    pub const CR0: u64 = 0xC8;
    /// Saved CR3.
    pub const CR3: u64 = 0xD0;
    /// Saved CR4.
    pub const CR4: u64 = 0xD8;
    /// Saved DR7.
    pub const DR7: u64 = 0xE0;
    /// Saved SS.
    pub const SS: u64 = 0xE8;
    /// Saved MXCSR.
    pub const MXCSR: u64 = 0xF0;
    /// XMM0..15, 16 bytes each.
    pub const XMM: u64 = 0x100;
    /// `ProtectedStack`: the RSP loaded on entry.
    pub const PROTECTED_STACK: u64 = 0x200;
    /// `OriginalStack`: the interrupted RSP (pointing at the pushed RBX).
    pub const ORIGINAL_STACK: u64 = 0x208;
    /// `OldValue`.
    pub const OLD_VALUE: u64 = 0x210;
    /// `NewValue`.
    pub const NEW_VALUE: u64 = 0x218;
    /// `VeTotal`.
    pub const VE_TOTAL: u64 = 0x220;
    /// `VeMm`.
    pub const VE_MM: u64 = 0x228;
    /// `VePageWalk`.
    pub const VE_PAGE_WALK: u64 = 0x230;
    /// `VeIgnoredTotal`.
    pub const VE_IGNORED_TOTAL: u64 = 0x238;
    /// `VeIgnoredCache`.
    pub const VE_IGNORED_CACHE: u64 = 0x240;
    /// `VeIgnoredIrrelevant`.
    pub const VE_IGNORED_IRRELEVANT: u64 = 0x248;
    /// `TscTotal`.
    pub const TSC_TOTAL: u64 = 0x250;
    /// `TscCount`.
    pub const TSC_COUNT: u64 = 0x258;
    /// The 16 instruction bytes copied before a raise.
    pub const INSTRUCTION: u64 = 0x260;
    /// `Self`: the linear address of this page.
    pub const SELF: u64 = 0x270;
    /// `Index`: the VCPU index.
    pub const INDEX: u64 = 0x278;
    /// `Raised` (u8).
    pub const RAISED: u64 = 0x280;
    /// The C handler's locals (vesim's model of the agent's stack frame, kept in the page so
    /// that every piece of agent state lives in guest memory): the step status.
    pub const LOCAL_STATUS: u64 = 0x300;
    /// Local: the decoded instruction length.
    pub const LOCAL_LENGTH: u64 = 0x308;
    /// Local: the lock index held (or u64::MAX).
    pub const LOCAL_LOCK: u64 = 0x310;
    /// Local: the rejection reason code (0 = none).
    pub const LOCAL_REASON: u64 = 0x318;
    /// Local: the TSC at entry.
    pub const LOCAL_TSC: u64 = 0x320;
    /// Local: the page-walk `setall` flag and level cursor.
    pub const LOCAL_WALK: u64 = 0x328;
    /// Local: the flags produced by the emulation.
    pub const LOCAL_FLAGS: u64 = 0x330;
    /// Local: the outcome code of this #VE (harness-visible classification).
    pub const LOCAL_OUTCOME: u64 = 0x338;
    /// Local: the break reason for `HvBreak`.
    pub const LOCAL_BREAK: u64 = 0x348;
    /// Local: the 16 instruction bytes the decoder read (the C handler's buffer).
    pub const LOCAL_INSN: u64 = 0x350;
}

// ---------------------------------------------------------------------------------------------
// `vesim agent`
// ---------------------------------------------------------------------------------------------

/// `vesim agent`: the guest-physical frame of the page-table page that holds the entry.
pub const VERDICT_PT_FRAME: Gpa = Gpa(0x0300_0000);
/// `vesim agent`: the default RIP.
pub const VERDICT_DEFAULT_RIP: u64 = 0x40_0000;
/// `vesim agent`: the default RSP (inside VCPU 0's kernel stack).
pub const VERDICT_DEFAULT_RSP: u64 = KERNEL_STACKS_GVA + KERNEL_STACK_PAGES * 0x1000 - 0x100;

// ---------------------------------------------------------------------------------------------
// The guest OS model: processes and the memory manager.
// ---------------------------------------------------------------------------------------------

/// Guest-physical window for process paging structures (PML4s and the tables the memory
/// manager allocates).
pub const PROCESS_TABLES_START: Gpa = Gpa(0x0200_0000);
/// End (exclusive) of the process table window.
pub const PROCESS_TABLES_END: Gpa = Gpa(0x0280_0000);
/// Guest-physical window for the pages processes map (the memory manager's free list).
pub const PROCESS_PAGES_START: Gpa = Gpa(0x1000_0000);
/// End (exclusive) of the process page window.
pub const PROCESS_PAGES_END: Gpa = Gpa(0x2000_0000);
/// Linear address of the memory manager's code page: one page-table-writing instruction per
/// slot ([`mm_code`]).
pub const MM_CODE_GVA: u64 = 0xFFFF_F800_0021_0000;
/// Linear address where the KPTI user PML4 of process `i` is mapped for the kernel
/// (`KPTI_SHADOW_GVA + i * 0x1000`).
pub const KPTI_SHADOW_GVA: u64 = 0xFFFF_F800_0800_0000;
/// Base of the user address range the memory manager hands out.
pub const USER_BASE: u64 = 0x0000_0001_0000_0000;

/// The memory manager's instructions: (offset in the MM code page, bytes). Each works on the
/// entry or page at RDI with the value in RSI (RAX for touches and CMPXCHG).
pub mod mm_code {
    /// `mov [rdi], rsi`
    pub const MOV: (u64, &[u8]) = (0x00, &[0x48, 0x89, 0x37]);
    /// `xchg [rdi], rsi`
    pub const XCHG: (u64, &[u8]) = (0x10, &[0x48, 0x87, 0x37]);
    /// `lock cmpxchg [rdi], rsi`
    pub const LOCK_CMPXCHG: (u64, &[u8]) = (0x20, &[0xF0, 0x48, 0x0F, 0xB1, 0x37]);
    /// `lock or [rdi], rsi`
    pub const LOCK_OR: (u64, &[u8]) = (0x30, &[0xF0, 0x48, 0x09, 0x37]);
    /// `lock and [rdi], rsi`
    pub const LOCK_AND: (u64, &[u8]) = (0x40, &[0xF0, 0x48, 0x21, 0x37]);
    /// `lock btr qword [rdi], 5` (clear the accessed bit)
    pub const LOCK_BTR_A: (u64, &[u8]) = (0x50, &[0xF0, 0x48, 0x0F, 0xBA, 0x37, 0x05]);
    /// `mov rax, [rsi]` (touch for read)
    pub const TOUCH_READ: (u64, &[u8]) = (0x60, &[0x48, 0x8B, 0x06]);
    /// `mov [rsi], rax` (touch for write)
    pub const TOUCH_WRITE: (u64, &[u8]) = (0x70, &[0x48, 0x89, 0x06]);
    /// `lock xor [rdi], rsi`
    pub const LOCK_XOR: (u64, &[u8]) = (0x80, &[0xF0, 0x48, 0x31, 0x37]);
    /// `jmp rsi` (the attacks built-in: execute agent code)
    pub const JMP_RSI: (u64, &[u8]) = (0x90, &[0xFF, 0xE6]);
    /// `mov rcx, rsi` (the attacks built-in: the VMFUNC view index)
    pub const MOV_RCX_RSI: (u64, &[u8]) = (0xA0, &[0x48, 0x89, 0xF1]);
    /// `vmfunc` (the attacks built-in: switch to the protected view)
    pub const VMFUNC: (u64, &[u8]) = (0xB0, &[0x0F, 0x01, 0xD4]);
    /// `mov rdx, rdi` (the attacks built-in: the hypercall number)
    pub const MOV_RDX_RDI: (u64, &[u8]) = (0xC0, &[0x48, 0x89, 0xFA]);
    /// `vmcall` (the attacks built-in: RAISE_EPT from outside the agent)
    pub const VMCALL: (u64, &[u8]) = (0xD0, &[0x0F, 0x01, 0xC1]);
    /// `stosq` (a directed entry write: RDI the entry, RAX the value)
    pub const STOSQ: (u64, &[u8]) = (0xE0, &[0x48, 0xAB]);
    /// `mov dword [rdi], esi` (a directed 4-byte entry write, which the agent refuses)
    pub const MOV32: (u64, &[u8]) = (0xF0, &[0x89, 0x37]);
    /// `lock bts [rdi], rsi` (a directed entry write with a register bit offset)
    pub const LOCK_BTS_REG: (u64, &[u8]) = (0x100, &[0xF0, 0x48, 0x0F, 0xAB, 0x37]);
    /// The instructions that write a page-table entry.
    pub const PT_WRITES: [(u64, &[u8]); 10] = [
        MOV,
        XCHG,
        LOCK_CMPXCHG,
        LOCK_OR,
        LOCK_AND,
        LOCK_BTR_A,
        LOCK_XOR,
        STOSQ,
        MOV32,
        LOCK_BTS_REG,
    ];
    /// Every instruction, for writing the page.
    pub const ALL: [(u64, &[u8]); 17] = [
        MOV,
        XCHG,
        LOCK_CMPXCHG,
        LOCK_OR,
        LOCK_AND,
        LOCK_BTR_A,
        TOUCH_READ,
        TOUCH_WRITE,
        LOCK_XOR,
        JMP_RSI,
        MOV_RCX_RSI,
        VMFUNC,
        MOV_RDX_RDI,
        VMCALL,
        STOSQ,
        MOV32,
        LOCK_BTS_REG,
    ];
}

/// Frames no guest window hands out, where the attacks built-in remaps agent pages
/// (`ATTACK_FRAMES` frames from here).
pub const ATTACK_FRAMES_START: Gpa = Gpa(0x0600_0000);
/// How many attack frames there are.
pub const ATTACK_FRAMES: u64 = 4096;

/// Whether `rip` is inside the agent image (`IntVeIsCurrentRipInAgent`, B121).
pub fn in_agent(rip: u64) -> bool {
    (AGENT_GVA..AGENT_GVA + AGENT_SIZE).contains(&rip)
}
