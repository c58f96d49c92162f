#![allow(unsafe_code)]
//! The reference CPU checked against the host CPU (VE-SEMANTICS section 1: "Its results are
//! checked against the host CPU in tests").
//!
//! Every instruction form of the reference CPU's page-table-writing set runs twice on the same
//! inputs (memory buffer, RDX, RAX, the six status flags and DF):
//!
//! - on the host, in an inline-assembly block (`core::arch::asm!`) that loads the flags with
//!   POPFQ, executes the instruction on a buffer owned by the test, saves RFLAGS with PUSHFQ and
//!   clears DF again (the Rust ABI requires DF = 0);
//! - on the model, from hand-assembled bytes at a guest RIP, through 4-level paging and an EPT
//!   view that grants RWX to every frame used.
//!
//! Executing instruction bytes on the host CPU is only possible with inline assembly, and
//! reading back the bytes the assembler produced needs a raw pointer: that is why this is the one
//! file of the workspace that allows `unsafe_code` (CONVENTIONS rule 10). Each asm block names
//! every register it changes and only touches the test's own buffer.
//!
//! Three independent sources agree on each encoding before any result is compared: the assembler
//! (the bytes between two labels around the instruction in the asm block), the hand-assembled
//! bytes given to the model, and the model's decoding of those bytes: its text
//! (`decode::describe`) compared with the expected Intel-syntax text written next to them, and
//! its memory operand, which must be the qword every form works on.
//!
//! Memory, RDX, RAX, the movement of RDI, RIP and every RFLAGS bit the instruction defines are
//! compared. Which status flags an instruction defines, leaves undefined or leaves unaffected is
//! the table [`sdm_flags`], written from the SDM (Vol. 2) and not from the code under test.
//! Undefined flags are never compared with the host; VE-SEMANTICS section 1 requires the model to
//! keep their input value, which is checked separately.
#![cfg(target_arch = "x86_64")]

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use vesim_model::cpu::decode::{self, Decoded, Insn, Mnemonic, Operand};
use vesim_model::cpu::LinearWrite;
use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::paging::{FrameAllocator, PageSize, PageTableBuilder, PteFlags};
use vesim_model::vcpu::{Gpr, Rflags, Vcpu};
use vesim_model::{Gla, Gpa, Machine, MachineConfig, Outcome, ViewId};

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

/// Qwords in the buffer the instruction works on (host and guest alike).
const BUF_QWORDS: usize = 64;
/// RDI points at this qword of the buffer, so every bit-string offset in
/// `BIT_OFFSET_MIN..=BIT_OFFSET_MAX` (qwords -16..=15 around it) stays inside.
const MID: usize = 32;
/// Smallest register bit offset tried for BT* r/m64, r64.
const BIT_OFFSET_MIN: i64 = -1024;
/// Largest register bit offset tried for BT* r/m64, r64.
const BIT_OFFSET_MAX: i64 = 1023;

/// Guest page size.
const PAGE: u64 = 0x1000;
/// Guest linear address of the two code pages.
const CODE_GLA: u64 = 0xFFFF_F800_0010_0000;
/// Guest-physical frames behind the two code pages (not adjacent, in descending order).
const CODE_GPAS: [u64; 2] = [0x7000, 0x4000];
/// Guest linear address of the two data pages.
const DATA_GLA: u64 = 0xFFFF_F800_0020_0000;
/// Guest-physical frames behind the two data pages (not adjacent, in descending order).
const DATA_GPAS: [u64; 2] = [0x3_0000, 0x2_1000];
/// Offset of the guest buffer from `DATA_GLA`: the buffer crosses into the second data page, so
/// negative bit-string offsets reach the first page and RDI lies in the second.
const BUF_OFFSET: u64 = 0xF40;
/// Frames the page-table builder may use.
const TABLE_FRAMES: (u64, u64) = (0x10_0000, 0x11_0000);
/// Offsets of the instruction in the first code page for the semantic comparisons: the longest
/// form (8 bytes) ends exactly at the page end at 0xFF8. Instructions that cross into the second
/// code page are the subject of `host_forms_fetched_across_a_code_page_boundary`.
const CODE_OFFSETS: [u64; 3] = [0x100, 0xFF0, 0xFF8];
/// Value of every register the instruction does not name (its number in the low byte).
const FILLER: u64 = 0x5EED_0000_0000_0000;

/// The status flags, in the order a random byte selects them.
const STATUS_BITS: [Rflags; 6] = [
    Rflags::CF,
    Rflags::PF,
    Rflags::AF,
    Rflags::ZF,
    Rflags::SF,
    Rflags::OF,
];
/// The RFLAGS bits the host asm loads with POPFQ: the status flags and DF. Nothing else (not TF,
/// AC or IF) is ever changed.
const LOADED: u64 = Rflags::STATUS.bits() | Rflags::DF.bits();

fn guest_rdi() -> u64 {
    DATA_GLA + BUF_OFFSET + 8 * MID as u64
}

/// Guest-physical address of byte `off` of the data region (`off` < 2 pages).
fn data_gpa(off: u64) -> Gpa {
    Gpa(DATA_GPAS[(off / PAGE) as usize] + off % PAGE)
}

/// Guest-physical address of byte `off` of the code region (`off` < 2 pages).
fn code_gpa(off: u64) -> Gpa {
    Gpa(CODE_GPAS[(off / PAGE) as usize] + off % PAGE)
}

// ---------------------------------------------------------------------------------------------
// The SDM flag table
// ---------------------------------------------------------------------------------------------

/// (defined, undefined) status flags of an instruction, from the SDM Vol. 2 "Flags Affected"
/// sections. Every other bit of `LOADED` (the remaining status flags, and DF) is unaffected.
///
/// - OR, AND, XOR: "The OF and CF flags are cleared; the SF, ZF, and PF flags are set according
///   to the result. The state of the AF flag is undefined."
/// - BT, BTS, BTR, BTC: "The CF flag contains the value of the selected bit. The ZF flag is
///   unaffected. The OF, SF, AF, and PF flags are undefined."
/// - CMPXCHG: "The ZF flag is set if the values in the destination operand and register AL, AX,
///   or EAX are equal; otherwise it is cleared. The CF, PF, AF, SF, and OF flags are set
///   according to the results of the comparison operation."
/// - MOV, XCHG, STOS: "None."
fn sdm_flags(m: Mnemonic) -> (u64, u64) {
    let (cf, pf, af, zf, sf, of) = (
        Rflags::CF.bits(),
        Rflags::PF.bits(),
        Rflags::AF.bits(),
        Rflags::ZF.bits(),
        Rflags::SF.bits(),
        Rflags::OF.bits(),
    );
    match m {
        Mnemonic::Or | Mnemonic::And | Mnemonic::Xor => (cf | pf | zf | sf | of, af),
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => (cf, of | sf | af | pf),
        Mnemonic::Cmpxchg => (cf | pf | af | zf | sf | of, 0),
        Mnemonic::Mov | Mnemonic::Xchg | Mnemonic::Stosq => (0, 0),
        other => panic!("no SDM flag entry for {other:?}"),
    }
}

fn flag_names(bits: u64) -> String {
    let names: Vec<&str> = Rflags::from_bits_truncate(bits)
        .iter_names()
        .map(|(n, _)| n)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join("|")
    }
}

// ---------------------------------------------------------------------------------------------
// The host side
// ---------------------------------------------------------------------------------------------

/// Inputs and outputs of one host run.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostIo {
    /// The buffer; RDI points at `buf[MID]`.
    buf: [u64; BUF_QWORDS],
    /// RDX (the source register, or the bit offset).
    rdx: u64,
    /// RAX (CMPXCHG's accumulator, STOSQ's source).
    rax: u64,
    /// In: the bits of `LOADED` to load. Out: RFLAGS after the instruction.
    rflags: u64,
    /// Out: how far RDI moved (wrapping).
    rdi_delta: u64,
}

/// Runs the instruction `$insn` (an Intel-syntax template using RDI for the address, RDX for
/// the source and RAX) on the host with the registers, flags and buffer of `$io`, and returns
/// the bytes the assembler produced for it.
macro_rules! host_asm {
    ($io:ident, $insn:expr) => {{
        let base = $io.buf.as_mut_ptr().wrapping_add(MID);
        let mut rdi = base as u64;
        let mut rdx = $io.rdx;
        let mut rax = $io.rax;
        let mut flags = $io.rflags & LOADED;
        let start: usize;
        let end: usize;
        // SAFETY: RDI points at the middle of `$io.buf`, and every instruction of this file
        // touches at most the qword at RDI + 8 * k for -16 <= k <= 15 (bit-string offsets are
        // kept in BIT_OFFSET_MIN..=BIT_OFFSET_MAX), all inside the buffer. The block changes
        // only the registers it declares and the flags; it pushes and pops its own stack slots
        // (no `nostack`), only changes the status flags and DF with POPFQ, and clears DF before
        // leaving as the ABI requires.
        unsafe {
            core::arch::asm!(
                "lea {start}, [rip + 2f]",
                "lea {end}, [rip + 3f]",
                "pushfq",
                "pop {tmp}",
                "and {tmp}, {keep}",
                "or {tmp}, {flags}",
                "push {tmp}",
                "popfq",
                "2:",
                $insn,
                "3:",
                "pushfq",
                "pop {flags}",
                "cld",
                start = out(reg) start,
                end = out(reg) end,
                tmp = out(reg) _,
                keep = in(reg) !LOADED,
                flags = inout(reg) flags,
                inout("rdi") rdi,
                inout("rdx") rdx,
                inout("rax") rax,
            );
        }
        $io.rdx = rdx;
        $io.rax = rax;
        $io.rflags = flags;
        $io.rdi_delta = rdi.wrapping_sub(base as u64);
        // SAFETY: `start..end` are the bytes of the instruction between labels 2 and 3 of the
        // block above, in this program's code, which stays mapped and readable while it runs.
        unsafe { core::slice::from_raw_parts(start as *const u8, end - start) }
    }};
}

/// One instruction form.
struct Form {
    /// The text given to the assembler for the host.
    asm: &'static str,
    /// The text the model's decoder must give for `bytes` (Intel syntax, `0x` hex, the memory
    /// size shown where no register operand tells it).
    text: &'static str,
    /// The hand-assembled bytes given to the model.
    bytes: &'static [u8],
    /// Runs `asm` on the host; returns the bytes the assembler produced.
    host: fn(&mut HostIo) -> &'static [u8],
}

/// A form from its assembler text, its decoder text and its hand-assembled bytes.
macro_rules! form {
    ($asm:expr, $text:expr, [$($b:literal),+ $(,)?]) => {
        Form {
            asm: $asm,
            text: $text,
            bytes: &[$($b),+],
            host: {
                fn run(io: &mut HostIo) -> &'static [u8] {
                    host_asm!(io, $asm)
                }
                run
            },
        }
    };
}

/// A form the assembler would encode differently (an imm32 that fits in an imm8): the host runs
/// the hand-assembled bytes themselves (`.byte`), checked only by the decoder.
macro_rules! raw_form {
    ($text:expr, [$($b:literal),+ $(,)?]) => {
        form!(concat!(".byte ", stringify!($($b),+)), $text, [$($b),+])
    };
}

/// `form!` with the prefix bytes (`[]` or `[0xF0]`) apart from the rest.
macro_rules! form_p {
    ($asm:expr, $text:expr, [$($p:literal),*], [$($b:literal),+ $(,)?]) => {
        form!($asm, $text, [$($p,)* $($b),+])
    };
}

/// `raw_form!` with the prefix bytes apart from the rest.
macro_rules! raw_form_p {
    ($text:expr, [$($p:literal),*], [$($b:literal),+ $(,)?]) => {
        raw_form!($text, [$($p,)* $($b),+])
    };
}

/// OR, AND, XOR r/m64, imm8 (REX.W 83 /1, /4, /6 ib; ModRM [rdi] = 0x0F, 0x27, 0x37), each
/// immediate given as (assembler text => byte, sign-extended value as the decoder prints it).
macro_rules! logic_imm8 {
    ($lock:literal, $p:tt; $($imm:literal => $ib:literal, $text:literal);+ $(;)?) => {
        [$(
            form_p!(
                concat!($lock, "or qword ptr [rdi], ", $imm),
                concat!($lock, "or qword ptr [rdi], ", $text),
                $p, [0x48, 0x83, 0x0F, $ib]
            ),
            form_p!(
                concat!($lock, "and qword ptr [rdi], ", $imm),
                concat!($lock, "and qword ptr [rdi], ", $text),
                $p, [0x48, 0x83, 0x27, $ib]
            ),
            form_p!(
                concat!($lock, "xor qword ptr [rdi], ", $imm),
                concat!($lock, "xor qword ptr [rdi], ", $text),
                $p, [0x48, 0x83, 0x37, $ib]
            ),
        )+]
    };
}

/// OR, AND, XOR r/m64, imm32 (REX.W 81 /1, /4, /6 id), immediates as in `logic_imm8`.
macro_rules! logic_imm32 {
    ($lock:literal, $p:tt;
     $($imm:literal => [$($ib:literal),+], $text:literal);+ $(;)?) => {
        [$(
            form_p!(
                concat!($lock, "or qword ptr [rdi], ", $imm),
                concat!($lock, "or qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x0F, $($ib),+]
            ),
            form_p!(
                concat!($lock, "and qword ptr [rdi], ", $imm),
                concat!($lock, "and qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x27, $($ib),+]
            ),
            form_p!(
                concat!($lock, "xor qword ptr [rdi], ", $imm),
                concat!($lock, "xor qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x37, $($ib),+]
            ),
        )+]
    };
}

/// `logic_imm32` for immediates that fit in an imm8 (the assembler would pick 83).
macro_rules! logic_imm32_raw {
    ($lock:literal, $p:tt; $([$($ib:literal),+], $text:literal);+ $(;)?) => {
        [$(
            raw_form_p!(
                concat!($lock, "or qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x0F, $($ib),+]
            ),
            raw_form_p!(
                concat!($lock, "and qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x27, $($ib),+]
            ),
            raw_form_p!(
                concat!($lock, "xor qword ptr [rdi], ", $text),
                $p, [0x48, 0x81, 0x37, $($ib),+]
            ),
        )+]
    };
}

/// BTS, BTR, BTC r/m64, imm8 (REX.W 0F BA /5, /6, /7 ib; ModRM [rdi] = 0x2F, 0x37, 0x3F).
macro_rules! bt_modify_imm8 {
    ($lock:literal, $p:tt; $($imm:literal => $ib:literal, $text:literal);+ $(;)?) => {
        [$(
            form_p!(
                concat!($lock, "bts qword ptr [rdi], ", $imm),
                concat!($lock, "bts qword ptr [rdi], ", $text),
                $p, [0x48, 0x0F, 0xBA, 0x2F, $ib]
            ),
            form_p!(
                concat!($lock, "btr qword ptr [rdi], ", $imm),
                concat!($lock, "btr qword ptr [rdi], ", $text),
                $p, [0x48, 0x0F, 0xBA, 0x37, $ib]
            ),
            form_p!(
                concat!($lock, "btc qword ptr [rdi], ", $imm),
                concat!($lock, "btc qword ptr [rdi], ", $text),
                $p, [0x48, 0x0F, 0xBA, 0x3F, $ib]
            ),
        )+]
    };
}

/// BT r/m64, imm8 (REX.W 0F BA /4 ib; ModRM [rdi] = 0x27). LOCK BT is #UD.
macro_rules! bt_imm8 {
    ($($imm:literal => $ib:literal, $text:literal);+ $(;)?) => {
        [$(
            form!(
                concat!("bt qword ptr [rdi], ", $imm),
                concat!("bt qword ptr [rdi], ", $text),
                [0x48, 0x0F, 0xBA, 0x27, $ib]
            ),
        )+]
    };
}

// ModRM 0x17 = mod 00, reg 010 (RDX), r/m 111 ([RDI]); 0x07 = /0 with [RDI].

static MOV_M64_R64: &[Form] = &[form!(
    "mov qword ptr [rdi], rdx",
    "mov [rdi], rdx",
    [0x48, 0x89, 0x17]
)];

static MOV_R64_M64: &[Form] = &[form!(
    "mov rdx, qword ptr [rdi]",
    "mov rdx, [rdi]",
    [0x48, 0x8B, 0x17]
)];

/// MOV r/m64, imm32 (REX.W C7 /0 id), the immediate sign-extended to 64 bits.
static MOV_M64_IMM32: &[Form] = &[
    form!(
        "mov qword ptr [rdi], 0",
        "mov qword ptr [rdi], 0",
        [0x48, 0xC7, 0x07, 0x00, 0x00, 0x00, 0x00]
    ),
    form!(
        "mov qword ptr [rdi], 0x7fffffff",
        "mov qword ptr [rdi], 0x7fffffff",
        [0x48, 0xC7, 0x07, 0xFF, 0xFF, 0xFF, 0x7F]
    ),
    form!(
        "mov qword ptr [rdi], -0x80000000",
        "mov qword ptr [rdi], 0xffffffff80000000",
        [0x48, 0xC7, 0x07, 0x00, 0x00, 0x00, 0x80]
    ),
    form!(
        "mov qword ptr [rdi], -1",
        "mov qword ptr [rdi], 0xffffffffffffffff",
        [0x48, 0xC7, 0x07, 0xFF, 0xFF, 0xFF, 0xFF]
    ),
    form!(
        "mov qword ptr [rdi], 0x12345678",
        "mov qword ptr [rdi], 0x12345678",
        [0x48, 0xC7, 0x07, 0x78, 0x56, 0x34, 0x12]
    ),
];

static XCHG_M64_R64: &[Form] = &[form!(
    "xchg qword ptr [rdi], rdx",
    "xchg [rdi], rdx",
    [0x48, 0x87, 0x17]
)];

static LOCK_XCHG_M64_R64: &[Form] = &[form!(
    "lock xchg qword ptr [rdi], rdx",
    "lock xchg [rdi], rdx",
    [0xF0, 0x48, 0x87, 0x17]
)];

static CMPXCHG_M64_R64: &[Form] = &[form!(
    "cmpxchg qword ptr [rdi], rdx",
    "cmpxchg [rdi], rdx",
    [0x48, 0x0F, 0xB1, 0x17]
)];

static LOCK_CMPXCHG_M64_R64: &[Form] = &[form!(
    "lock cmpxchg qword ptr [rdi], rdx",
    "lock cmpxchg [rdi], rdx",
    [0xF0, 0x48, 0x0F, 0xB1, 0x17]
)];

static LOGIC_M64_R64: &[Form] = &[
    form!(
        "or qword ptr [rdi], rdx",
        "or [rdi], rdx",
        [0x48, 0x09, 0x17]
    ),
    form!(
        "and qword ptr [rdi], rdx",
        "and [rdi], rdx",
        [0x48, 0x21, 0x17]
    ),
    form!(
        "xor qword ptr [rdi], rdx",
        "xor [rdi], rdx",
        [0x48, 0x31, 0x17]
    ),
];

static LOCK_LOGIC_M64_R64: &[Form] = &[
    form!(
        "lock or qword ptr [rdi], rdx",
        "lock or [rdi], rdx",
        [0xF0, 0x48, 0x09, 0x17]
    ),
    form!(
        "lock and qword ptr [rdi], rdx",
        "lock and [rdi], rdx",
        [0xF0, 0x48, 0x21, 0x17]
    ),
    form!(
        "lock xor qword ptr [rdi], rdx",
        "lock xor [rdi], rdx",
        [0xF0, 0x48, 0x31, 0x17]
    ),
];

static LOGIC_M64_IMM8: &[Form] = &logic_imm8!("", [];
    "0" => 0x00, "0";
    "0x7f" => 0x7F, "0x7f";
    "-0x80" => 0x80, "0xffffffffffffff80";
    "-1" => 0xFF, "0xffffffffffffffff";
    "0x5a" => 0x5A, "0x5a";
);

static LOCK_LOGIC_M64_IMM8: &[Form] = &logic_imm8!("lock ", [0xF0];
    "0" => 0x00, "0";
    "0x7f" => 0x7F, "0x7f";
    "-0x80" => 0x80, "0xffffffffffffff80";
    "-1" => 0xFF, "0xffffffffffffffff";
    "0x5a" => 0x5A, "0x5a";
);

static LOGIC_M64_IMM32: &[Form] = &logic_imm32!("", [];
    "0x80" => [0x80, 0x00, 0x00, 0x00], "0x80";
    "0x7fffffff" => [0xFF, 0xFF, 0xFF, 0x7F], "0x7fffffff";
    "-0x80000000" => [0x00, 0x00, 0x00, 0x80], "0xffffffff80000000";
    "-0x81" => [0x7F, 0xFF, 0xFF, 0xFF], "0xffffffffffffff7f";
    "0x12345678" => [0x78, 0x56, 0x34, 0x12], "0x12345678";
);

static LOGIC_M64_IMM32_SHORT: &[Form] = &logic_imm32_raw!("", [];
    [0x01, 0x00, 0x00, 0x00], "1";
    [0xFF, 0xFF, 0xFF, 0xFF], "0xffffffffffffffff";
);

static LOCK_LOGIC_M64_IMM32: &[Form] = &logic_imm32!("lock ", [0xF0];
    "0x80" => [0x80, 0x00, 0x00, 0x00], "0x80";
    "0x7fffffff" => [0xFF, 0xFF, 0xFF, 0x7F], "0x7fffffff";
    "-0x80000000" => [0x00, 0x00, 0x00, 0x80], "0xffffffff80000000";
    "-0x81" => [0x7F, 0xFF, 0xFF, 0xFF], "0xffffffffffffff7f";
    "0x12345678" => [0x78, 0x56, 0x34, 0x12], "0x12345678";
);

static LOCK_LOGIC_M64_IMM32_SHORT: &[Form] = &logic_imm32_raw!("lock ", [0xF0];
    [0x01, 0x00, 0x00, 0x00], "1";
    [0xFF, 0xFF, 0xFF, 0xFF], "0xffffffffffffffff";
);

/// BT, BTS, BTR, BTC r/m64, r64 (REX.W 0F A3, AB, B3, BB /r).
static BT_R64_BIT_STRING: &[Form] = &[
    form!(
        "bt qword ptr [rdi], rdx",
        "bt [rdi], rdx",
        [0x48, 0x0F, 0xA3, 0x17]
    ),
    form!(
        "bts qword ptr [rdi], rdx",
        "bts [rdi], rdx",
        [0x48, 0x0F, 0xAB, 0x17]
    ),
    form!(
        "btr qword ptr [rdi], rdx",
        "btr [rdi], rdx",
        [0x48, 0x0F, 0xB3, 0x17]
    ),
    form!(
        "btc qword ptr [rdi], rdx",
        "btc [rdi], rdx",
        [0x48, 0x0F, 0xBB, 0x17]
    ),
];

static LOCK_BT_R64_BIT_STRING: &[Form] = &[
    form!(
        "lock bts qword ptr [rdi], rdx",
        "lock bts [rdi], rdx",
        [0xF0, 0x48, 0x0F, 0xAB, 0x17]
    ),
    form!(
        "lock btr qword ptr [rdi], rdx",
        "lock btr [rdi], rdx",
        [0xF0, 0x48, 0x0F, 0xB3, 0x17]
    ),
    form!(
        "lock btc qword ptr [rdi], rdx",
        "lock btc [rdi], rdx",
        [0xF0, 0x48, 0x0F, 0xBB, 0x17]
    ),
];

static BT_M64_IMM8: &[Form] = &bt_imm8!(
    "0" => 0x00, "0";
    "5" => 0x05, "5";
    "63" => 0x3F, "0x3f";
    "64" => 0x40, "0x40";
    "100" => 0x64, "0x64";
    "255" => 0xFF, "0xff";
);

static BTS_BTR_BTC_M64_IMM8: &[Form] = &bt_modify_imm8!("", [];
    "0" => 0x00, "0";
    "5" => 0x05, "5";
    "63" => 0x3F, "0x3f";
    "64" => 0x40, "0x40";
    "100" => 0x64, "0x64";
    "255" => 0xFF, "0xff";
);

static LOCK_BTS_BTR_BTC_M64_IMM8: &[Form] = &bt_modify_imm8!("lock ", [0xF0];
    "0" => 0x00, "0";
    "5" => 0x05, "5";
    "63" => 0x3F, "0x3f";
    "64" => 0x40, "0x40";
    "100" => 0x64, "0x64";
    "255" => 0xFF, "0xff";
);

static STOSQ: &[Form] = &[form!("stosq", "stosq [rdi]", [0x48, 0xAB])];

/// Every family, for the encoding test.
static ALL_FAMILIES: &[&[Form]] = &[
    MOV_M64_R64,
    MOV_R64_M64,
    MOV_M64_IMM32,
    XCHG_M64_R64,
    LOCK_XCHG_M64_R64,
    CMPXCHG_M64_R64,
    LOCK_CMPXCHG_M64_R64,
    LOGIC_M64_R64,
    LOCK_LOGIC_M64_R64,
    LOGIC_M64_IMM8,
    LOCK_LOGIC_M64_IMM8,
    LOGIC_M64_IMM32,
    LOGIC_M64_IMM32_SHORT,
    LOCK_LOGIC_M64_IMM32,
    LOCK_LOGIC_M64_IMM32_SHORT,
    BT_R64_BIT_STRING,
    LOCK_BT_R64_BIT_STRING,
    BT_M64_IMM8,
    BTS_BTR_BTC_M64_IMM8,
    LOCK_BTS_BTR_BTC_M64_IMM8,
    STOSQ,
];

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// The inputs of one case, shared by host and model.
#[derive(Clone, Debug)]
struct Input {
    /// The buffer; RDI points at `buf[MID]`.
    buf: [u64; BUF_QWORDS],
    /// RDX: the source register, or the BT* bit offset.
    rdx: u64,
    /// RAX.
    rax: u64,
    /// Input status flags (a subset of `Rflags::STATUS`).
    status: u64,
    /// Input DF.
    df: bool,
    /// Offset of the instruction in the first guest code page.
    code_offset: u64,
}

impl Input {
    fn rflags_in(&self) -> u64 {
        self.status | if self.df { Rflags::DF.bits() } else { 0 }
    }
}

fn decode(bytes: &[u8]) -> Option<Insn> {
    match decode::decode(bytes, 0) {
        Decoded::Ok(insn) => Some(insn),
        _ => None,
    }
}

/// The sizes in bytes of the memory operands of `insn`.
fn memory_sizes(insn: &Insn) -> Vec<u32> {
    insn.operands()
        .filter_map(|o| match o {
            Operand::Memory(m) => Some(m.size),
            _ => None,
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A qword value: uniformly random most of the time, otherwise an edge value.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        1 => prop::sample::select(vec![
            0,
            1,
            u64::MAX,
            1 << 63,
            (1 << 63) - 1,
            0x80,
            0xFF,
            0xFFFF_FFFF,
            0x8000_0000,
        ]),
    ]
}

/// A BT* register bit offset inside the buffer (as the register value).
fn bit_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (BIT_OFFSET_MIN..=BIT_OFFSET_MAX).prop_map(|o| o as u64),
        1 => prop::sample::select(vec![-1i64, 0, 63, 64, -64, -65, BIT_OFFSET_MIN, BIT_OFFSET_MAX])
            .prop_map(|o| o as u64),
    ]
}

fn status() -> impl Strategy<Value = u64> {
    any::<u8>().prop_map(|b| {
        STATUS_BITS
            .iter()
            .enumerate()
            .filter(|(i, _)| b >> i & 1 != 0)
            .fold(0, |acc, (_, f)| acc | f.bits())
    })
}

/// Random inputs with RDX from `rdx`. In about half the cases RAX equals the old value of the
/// qword at RDI (CMPXCHG's equal case); DF is random for every form (all of them must keep it).
fn inputs(rdx: impl Strategy<Value = u64>) -> impl Strategy<Value = Input> {
    (
        proptest::array::uniform::<_, BUF_QWORDS>(word()),
        rdx,
        word(),
        any::<bool>(),
        status(),
        any::<bool>(),
        prop::sample::select(CODE_OFFSETS.to_vec()),
    )
        .prop_map(
            |(buf, rdx, rax, rax_is_old, status, df, code_offset)| Input {
                rax: if rax_is_old { buf[MID] } else { rax },
                buf,
                rdx,
                status,
                df,
                code_offset,
            },
        )
}

fn pattern_buf() -> [u64; BUF_QWORDS] {
    std::array::from_fn(|i| 0x0123_4567_89AB_CDEFu64.rotate_left(i as u32) ^ i as u64)
}

const EDGE_WORDS: [u64; 5] = [0, u64::MAX, 1 << 63, (1 << 63) - 1, 1];
const ALL_STATUS: u64 = Rflags::STATUS.bits();

/// Hand-chosen cases: old value and source in {0, all ones, sign bit, max positive, 1}, RAX equal
/// to the old value or one of the same edge values (CMPXCHG equal and unequal, with borrows and
/// signed overflow), all status flags clear or set, DF clear or set.
fn edge_value_inputs() -> Vec<Input> {
    let mut v = Vec::new();
    for (k, &old) in EDGE_WORDS.iter().enumerate() {
        for &src in &EDGE_WORDS[..4] {
            let mut raxes = vec![old];
            raxes.extend(EDGE_WORDS.iter().copied().filter(|&r| r != old));
            for rax in raxes {
                for (s, status) in [0, ALL_STATUS].into_iter().enumerate() {
                    let mut buf = pattern_buf();
                    buf[MID] = old;
                    v.push(Input {
                        buf,
                        rdx: src,
                        rax,
                        status,
                        df: s == 1,
                        code_offset: CODE_OFFSETS[(k + s) % CODE_OFFSETS.len()],
                    });
                }
            }
        }
    }
    v
}

/// Hand-chosen BT* register offsets (-1, 63, 64, -65, both ends of the range, ...), with the
/// selected qword 0, all ones, the sign bit or a pattern, and all status flags clear or set.
fn edge_bit_string_inputs() -> Vec<Input> {
    let offsets = [
        -1i64,
        0,
        1,
        63,
        64,
        -64,
        -65,
        127,
        -129,
        BIT_OFFSET_MIN,
        BIT_OFFSET_MAX,
    ];
    let mut v = Vec::new();
    for (k, &off) in offsets.iter().enumerate() {
        for old in [
            0,
            u64::MAX,
            1 << 63,
            0x8000_0000_0000_0001,
            0x5555_AAAA_5555_AAAA,
        ] {
            for (s, status) in [0, ALL_STATUS].into_iter().enumerate() {
                let mut buf = pattern_buf();
                let qword = MID as i64 + (off >> 6);
                buf[qword as usize] = old;
                v.push(Input {
                    buf,
                    rdx: off as u64,
                    rax: 0,
                    status,
                    df: s == 0,
                    code_offset: CODE_OFFSETS[(k + s) % CODE_OFFSETS.len()],
                });
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The model side
// ---------------------------------------------------------------------------------------------

/// The model's results for one case.
struct ModelRun {
    before: Vcpu,
    after: Vcpu,
    buf: [u64; BUF_QWORDS],
    /// Offsets (from `DATA_GLA`) of the non-zero bytes of the two data pages outside the buffer.
    stray_bytes: Vec<u64>,
    outcome: Outcome,
    length: u8,
    write: Option<LinearWrite>,
}

fn run_model(bytes: &[u8], input: &Input) -> Result<ModelRun, String> {
    let mut m = Machine::new(MachineConfig::default());
    let mut b = PageTableBuilder::new(
        &mut m.mem,
        FrameAllocator::new(Gpa(TABLE_FRAMES.0), Gpa(TABLE_FRAMES.1)),
    )
    .map_err(|e| e.to_string())?;
    for (i, gpa) in CODE_GPAS.iter().enumerate() {
        let gla = Gla(CODE_GLA + i as u64 * PAGE);
        b.map(
            &mut m.mem,
            gla,
            Gpa(*gpa),
            PageSize::Size4K,
            PteFlags::empty(),
        )
        .map_err(|e| e.to_string())?;
    }
    for (i, gpa) in DATA_GPAS.iter().enumerate() {
        let gla = Gla(DATA_GLA + i as u64 * PAGE);
        b.map(
            &mut m.mem,
            gla,
            Gpa(*gpa),
            PageSize::Size4K,
            PteFlags::WRITABLE | PteFlags::NO_EXECUTE,
        )
        .map_err(|e| e.to_string())?;
    }
    let mut view = EptView::new(EptEntry(0));
    let rwx = EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE;
    let frames = b
        .tables()
        .iter()
        .copied()
        .chain(CODE_GPAS.iter().chain(DATA_GPAS.iter()).map(|g| Gpa(*g)));
    for gpa in frames {
        view.set(gpa.gfn(), rwx);
    }
    m.ept.insert(ViewId(0), view).map_err(|e| e.to_string())?;

    for (i, byte) in bytes.iter().enumerate() {
        m.mem
            .write(code_gpa(input.code_offset + i as u64), &[*byte]);
    }
    for (i, q) in input.buf.iter().enumerate() {
        m.mem.write_u64(data_gpa(BUF_OFFSET + 8 * i as u64), *q);
    }

    let mut vcpu = Vcpu::new_long_mode(b.cr3());
    vcpu.rip = CODE_GLA + input.code_offset;
    for (i, g) in vcpu.gpr.iter_mut().enumerate() {
        *g = FILLER | i as u64;
    }
    vcpu.set_reg(Gpr::Rdi, guest_rdi());
    vcpu.set_reg(Gpr::Rdx, input.rdx);
    vcpu.set_reg(Gpr::Rax, input.rax);
    vcpu.rflags = Rflags::from_bits_retain(Rflags::FIXED1.bits() | input.rflags_in());
    let before = vcpu.clone();

    let step = m.step(&mut vcpu);

    let buf = std::array::from_fn(|i| m.mem.read_u64(data_gpa(BUF_OFFSET + 8 * i as u64)));
    let buf_range = BUF_OFFSET..BUF_OFFSET + 8 * BUF_QWORDS as u64;
    let mut stray_bytes = Vec::new();
    for off in 0..2 * PAGE {
        if buf_range.contains(&off) {
            continue;
        }
        let mut byte = [0u8];
        m.mem.read(data_gpa(off), &mut byte);
        if byte[0] != 0 {
            stray_bytes.push(off);
        }
    }
    Ok(ModelRun {
        before,
        after: vcpu,
        buf,
        stray_bytes,
        outcome: step.outcome,
        length: step.length,
        write: step.write,
    })
}

// ---------------------------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------------------------

/// The linear write the SDM says the form makes (none for loads and BT), at the operand
/// address; for BT* with a register offset, the bit-string address EA + 8 * (offset sar 6).
fn expected_write(insn: &Insn, input: &Input) -> Option<LinearWrite> {
    let writes = match insn.mnemonic {
        Mnemonic::Bt => false,
        Mnemonic::Mov => matches!(insn.operand(0), Some(Operand::Memory(_))),
        _ => true,
    };
    let bit_string = matches!(insn.mnemonic, Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
        && matches!(insn.operand(1), Some(Operand::Register(_)));
    let gla = if bit_string {
        guest_rdi().wrapping_add(((input.rdx as i64) >> 6).wrapping_mul(8) as u64)
    } else {
        guest_rdi()
    };
    writes.then_some(LinearWrite {
        gla: Gla(gla),
        size: 8,
    })
}

/// Runs `form` on the host and on the model with `input` and lists every disagreement.
fn check(form: &Form, input: &Input) -> Result<(), String> {
    let head = format!(
        "{} ({}) with rdx={:#x} rax={:#x} flags={} df={} code_offset={:#x} old[rdi]={:#x}",
        form.text,
        hex(form.bytes),
        input.rdx,
        input.rax,
        flag_names(input.status),
        input.df,
        input.code_offset,
        input.buf[MID],
    );
    let Some(insn) = decode(form.bytes) else {
        return Err(format!("{head}: the decoder refuses the bytes"));
    };
    if insn.len != form.bytes.len() {
        return Err(format!(
            "{head}: the decoder decodes {} of {} bytes",
            insn.len,
            form.bytes.len()
        ));
    }

    let mut host = HostIo {
        buf: input.buf,
        rdx: input.rdx,
        rax: input.rax,
        rflags: input.rflags_in(),
        rdi_delta: 0,
    };
    let assembled = (form.host)(&mut host);
    if assembled != form.bytes {
        return Err(format!(
            "{head}: the assembler encodes {:?} as {}",
            form.asm,
            hex(assembled)
        ));
    }

    let model = run_model(form.bytes, input).map_err(|e| format!("{head}: set-up: {e}"))?;
    if model.outcome != Outcome::Executed {
        return Err(format!("{head}: model outcome {:?}", model.outcome));
    }

    let mut diffs: Vec<String> = Vec::new();
    let code_gla = CODE_GLA + input.code_offset;
    if model.length as usize != form.bytes.len() {
        diffs.push(format!("length: model {}", model.length));
    }
    let rip = code_gla.wrapping_add(form.bytes.len() as u64);
    if model.after.rip != rip {
        diffs.push(format!(
            "rip: model {:#x}, expected {rip:#x}",
            model.after.rip
        ));
    }

    for i in 0..BUF_QWORDS {
        if model.buf[i] != host.buf[i] {
            diffs.push(format!(
                "buf[{}] (rdi{:+}): input {:#x}, host {:#x}, model {:#x}",
                i,
                8 * (i as i64 - MID as i64),
                input.buf[i],
                host.buf[i],
                model.buf[i]
            ));
        }
    }
    if !model.stray_bytes.is_empty() {
        diffs.push(format!(
            "model wrote outside the buffer at data offsets {:x?}",
            model.stray_bytes
        ));
    }

    let model_rdi_delta = model.after.reg(Gpr::Rdi).wrapping_sub(guest_rdi());
    if model_rdi_delta != host.rdi_delta {
        diffs.push(format!(
            "rdi moved by {:#x} on the host, {:#x} on the model",
            host.rdi_delta, model_rdi_delta
        ));
    }
    for (g, h) in [(Gpr::Rdx, host.rdx), (Gpr::Rax, host.rax)] {
        let v = model.after.reg(g);
        if v != h {
            diffs.push(format!("{}: host {h:#x}, model {v:#x}", g.name()));
        }
    }
    for g in Gpr::ALL {
        if matches!(g, Gpr::Rdi | Gpr::Rdx | Gpr::Rax) {
            continue;
        }
        if model.after.reg(g) != model.before.reg(g) {
            diffs.push(format!(
                "{} changed: {:#x} -> {:#x}",
                g.name(),
                model.before.reg(g),
                model.after.reg(g)
            ));
        }
    }

    // Flags.
    let (defined, undefined) = sdm_flags(insn.mnemonic);
    let unaffected = LOADED & !defined & !undefined;
    let flags_in = input.rflags_in();
    let host_flags = host.rflags;
    let model_flags = model.after.rflags.bits();
    if (host_flags ^ flags_in) & unaffected != 0 {
        diffs.push(format!(
            "the host changed {} which the SDM table says are unaffected (table or test error)",
            flag_names((host_flags ^ flags_in) & unaffected)
        ));
    }
    let d = (model_flags ^ host_flags) & defined;
    if d != 0 {
        diffs.push(format!(
            "defined flags differ in {}: host {}, model {}",
            flag_names(d),
            flag_names(host_flags & defined),
            flag_names(model_flags & defined)
        ));
    }
    let d = (model_flags ^ flags_in) & unaffected;
    if d != 0 {
        diffs.push(format!("model changed unaffected flags {}", flag_names(d)));
    }
    let d = (model_flags ^ flags_in) & undefined;
    if d != 0 {
        diffs.push(format!(
            "model changed undefined flags {} (VE-SEMANTICS 1: they keep their input value)",
            flag_names(d)
        ));
    }
    let others = !LOADED;
    if model_flags & others != model.before.rflags.bits() & others {
        diffs.push(format!(
            "model changed RFLAGS outside the status flags and DF: {:#x} -> {:#x}",
            model.before.rflags.bits(),
            model_flags
        ));
    }

    let expected: Option<LinearWrite> = expected_write(&insn, input);
    if model.write != expected {
        diffs.push(format!(
            "model writes {:?}, expected {:?}",
            model.write, expected
        ));
    }

    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{head}:\n  {}", diffs.join("\n  ")))
    }
}

fn run_edges(forms: &[Form], inputs: &[Input]) {
    let mut failures = Vec::new();
    for form in forms {
        for input in inputs {
            if let Err(e) = check(form, input) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} edge cases failed:\n{}",
        failures.len(),
        forms.len() * inputs.len(),
        failures.join("\n")
    );
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0076_6573_696D),
        ..ProptestConfig::with_cases(256)
    }
}

/// For each family: a proptest over random inputs (256 cases, every form of the family on each)
/// and a test over the hand-chosen edge cases.
macro_rules! host_tests {
    ($($random:ident, $edges:ident: $forms:expr, $rdx:expr, $edge_inputs:expr;)+) => {
        proptest! {
            #![proptest_config(config())]
            $(
                #[test]
                fn $random(input in inputs($rdx)) {
                    for form in $forms {
                        check(form, &input).map_err(TestCaseError::fail)?;
                    }
                }
            )+
        }
        $(
            #[test]
            fn $edges() {
                run_edges($forms, &$edge_inputs);
            }
        )+
    };
}

host_tests! {
    host_mov_m64_r64, host_mov_m64_r64_edges:
        MOV_M64_R64, word(), edge_value_inputs();
    host_mov_r64_m64, host_mov_r64_m64_edges:
        MOV_R64_M64, word(), edge_value_inputs();
    host_mov_m64_imm32, host_mov_m64_imm32_edges:
        MOV_M64_IMM32, word(), edge_value_inputs();
    host_xchg_m64_r64, host_xchg_m64_r64_edges:
        XCHG_M64_R64, word(), edge_value_inputs();
    host_lock_xchg_m64_r64, host_lock_xchg_m64_r64_edges:
        LOCK_XCHG_M64_R64, word(), edge_value_inputs();
    host_cmpxchg_m64_r64, host_cmpxchg_m64_r64_edges:
        CMPXCHG_M64_R64, word(), edge_value_inputs();
    host_lock_cmpxchg_m64_r64, host_lock_cmpxchg_m64_r64_edges:
        LOCK_CMPXCHG_M64_R64, word(), edge_value_inputs();
    host_or_and_xor_m64_r64, host_or_and_xor_m64_r64_edges:
        LOGIC_M64_R64, word(), edge_value_inputs();
    host_lock_or_and_xor_m64_r64, host_lock_or_and_xor_m64_r64_edges:
        LOCK_LOGIC_M64_R64, word(), edge_value_inputs();
    host_or_and_xor_m64_imm8, host_or_and_xor_m64_imm8_edges:
        LOGIC_M64_IMM8, word(), edge_value_inputs();
    host_lock_or_and_xor_m64_imm8, host_lock_or_and_xor_m64_imm8_edges:
        LOCK_LOGIC_M64_IMM8, word(), edge_value_inputs();
    host_or_and_xor_m64_imm32, host_or_and_xor_m64_imm32_edges:
        LOGIC_M64_IMM32, word(), edge_value_inputs();
    host_or_and_xor_m64_imm32_short_immediates, host_or_and_xor_m64_imm32_short_immediates_edges:
        LOGIC_M64_IMM32_SHORT, word(), edge_value_inputs();
    host_lock_or_and_xor_m64_imm32, host_lock_or_and_xor_m64_imm32_edges:
        LOCK_LOGIC_M64_IMM32, word(), edge_value_inputs();
    host_lock_or_and_xor_m64_imm32_short_immediates,
    host_lock_or_and_xor_m64_imm32_short_immediates_edges:
        LOCK_LOGIC_M64_IMM32_SHORT, word(), edge_value_inputs();
    host_bt_bts_btr_btc_r64_bit_string, host_bt_bts_btr_btc_r64_bit_string_edges:
        BT_R64_BIT_STRING, bit_offset(), edge_bit_string_inputs();
    host_lock_bts_btr_btc_r64_bit_string, host_lock_bts_btr_btc_r64_bit_string_edges:
        LOCK_BT_R64_BIT_STRING, bit_offset(), edge_bit_string_inputs();
    host_bt_m64_imm8, host_bt_m64_imm8_edges:
        BT_M64_IMM8, word(), edge_value_inputs();
    host_bts_btr_btc_m64_imm8, host_bts_btr_btc_m64_imm8_edges:
        BTS_BTR_BTC_M64_IMM8, word(), edge_value_inputs();
    host_lock_bts_btr_btc_m64_imm8, host_lock_bts_btr_btc_m64_imm8_edges:
        LOCK_BTS_BTR_BTC_M64_IMM8, word(), edge_value_inputs();
    host_stosq_df0_df1, host_stosq_df0_df1_edges:
        STOSQ, word(), edge_value_inputs();
}

/// The hand-assembled bytes of every form are what the assembler produces for its text (or are
/// run as they are, for the short-immediate forms) and what the model's decoder decodes to the
/// expected text, in full, with one memory operand of 8 bytes; LOCK appears exactly where the
/// text says.
#[test]
fn host_encodings_agree_with_assembler_and_decoder() {
    let mut failures = Vec::new();
    let mut count = 0;
    for form in ALL_FAMILIES.iter().flat_map(|f| f.iter()) {
        count += 1;
        match decode::describe(form.bytes, 0) {
            Ok((len, _, text)) if text == form.text && len == form.bytes.len() => {}
            other => failures.push(format!(
                "{}: the decoder gives {other:?}, expected {:?} in {} bytes",
                hex(form.bytes),
                form.text,
                form.bytes.len()
            )),
        }
        match decode(form.bytes) {
            Some(insn) => {
                if memory_sizes(&insn) != [8] {
                    failures.push(format!(
                        "{}: memory operands of {:?} bytes, expected one of 8",
                        form.text,
                        memory_sizes(&insn)
                    ));
                }
                if insn.prefixes.lock != form.text.starts_with("lock ") {
                    failures.push(format!("{}: LOCK prefix mismatch", form.text));
                }
            }
            None => failures.push(format!("{}: the decoder refuses the bytes", form.text)),
        }
        let mut io = HostIo {
            buf: [0; BUF_QWORDS],
            rdx: 0,
            rax: 0,
            rflags: 0,
            rdi_delta: 0,
        };
        let assembled = (form.host)(&mut io);
        if assembled != form.bytes {
            failures.push(format!(
                "{:?}: assembled {}, hand-assembled {}",
                form.asm,
                hex(assembled),
                hex(form.bytes)
            ));
        }
    }
    assert_eq!(count, 139, "form count changed: update the report");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every form, placed so that its first `k` bytes are at the end of one code page and the rest
/// at the start of the next (mapped to a lower, non-adjacent frame), for every `k` from 1 to
/// its length - 1: the fetch must read both pages and the results must still match the host.
#[test]
fn host_forms_fetched_across_a_code_page_boundary() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (n, form) in ALL_FAMILIES.iter().flat_map(|f| f.iter()).enumerate() {
        for k in 1..form.bytes.len() as u64 {
            count += 1;
            let mut buf = pattern_buf();
            buf[MID] = 0x8000_0000_0000_00FF;
            let input = Input {
                buf,
                rdx: if n % 2 == 0 { 65 } else { (-66i64) as u64 },
                rax: buf[MID],
                status: Rflags::CF.bits() | Rflags::ZF.bits(),
                df: k % 2 == 1,
                code_offset: PAGE - k,
            };
            if let Err(e) = check(form, &input) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} page-crossing cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
