//! The one adapter between vesim and iced-x86 (CONVENTIONS rule 7). iced decodes; this module
//! hands the result over as vesim's own [`Insn`] (length, [`Mnemonic`], [`Operand`]s,
//! [`Prefixes`] and the other facts the model and the agent read), with the memory the
//! instruction accesses as iced lists it (`used_memory()`) as [`MemoryUse`]s, and makes the
//! text of an instruction ([`Insn::name`], [`describe`]). No iced type leaves this module.
//!
//! On those owned types it also holds what the reference CPU and the simulator ask of an
//! instruction's memory: [`planned_accesses`] (linear addresses from a VCPU's registers, with
//! bit-string addressing), and the byte-level entry points [`first_access`], [`accesses_of`]
//! and [`execute_bytes`].

use super::mmu::AccessKind;
use crate::addr::Gla;
use crate::vcpu::{Gpr, Register, Segment, Vcpu};
use bitflags::bitflags;
use iced_x86 as iced;
use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, OpAccess, OpKind};
use std::sync::OnceLock;

/// The longest x86 instruction.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// The most operands an instruction has.
pub const MAX_OPERANDS: usize = 5;

/// The result of decoding bytes at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, valid instruction.
    Ok(Insn),
    /// The bytes end before the instruction does.
    Incomplete,
    /// The bytes are not a valid instruction (#UD).
    Invalid,
}

/// Optional instruction sets the decoder can be asked to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// MPX (`0F 1A`/`0F 1B` as BNDLDX, BNDMOV, BNDCL, ...); without it they are the reserved
    /// NOPs, as the reference CPU reads them.
    pub mpx: bool,
}

macro_rules! mnemonics {
    ($($(#[$doc:meta])* $($m:ident),+;)+) => {
        /// An instruction's mnemonic, as far as vesim tells them apart: the reference CPU's set,
        /// the instructions it handles before that set, and those whose operands decoders
        /// list differently. [`Insn::name`] names every mnemonic, `Other` ones included.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(missing_docs)]
        pub enum Mnemonic {
            $($(#[$doc])* $($m,)+)+
            /// Any other mnemonic.
            Other,
        }

        fn mnemonic_of(m: iced::Mnemonic) -> Mnemonic {
            match m {
                $($(iced::Mnemonic::$m => Mnemonic::$m,)+)+
                _ => Mnemonic::Other,
            }
        }
    };
}

mnemonics! {
    /// The reference CPU's page-table-writing set, and the hints it executes.
    Mov, Xchg, Cmpxchg, Or, And, Xor, Bt, Bts, Btr, Btc, Stosb, Stosw, Stosd, Stosq, Nop, Pause;
    /// Handled by the reference CPU before its set.
    Ud0, Ud1, Ud2, Vmcall, Vmfunc, Cpuid, Hlt, Rdmsr, Wrmsr, Jmp;
    /// Frame and interrupt instructions.
    Enter, Leave, Int, Int1, Int3, Into, Iret, Iretd, Iretq;
    /// Instructions with an implicit memory operand.
    Maskmovq, Maskmovdqu, Vmaskmovdqu, Xlatb, Movdir64b, Enqcmd, Enqcmds, Monitor, Monitorx,
    Umonitor, Rmpadjust, Rmpquery, Saveprevssp, Setssbsy;
    /// x87 arithmetic, compares and loads with a memory form.
    Fadd, Fmul, Fcom, Fcomp, Fsub, Fsubr, Fdiv, Fdivr, Fiadd, Fimul, Ficom, Ficomp, Fisub,
    Fisubr, Fidiv, Fidivr, Fld, Fild, Fbld;
    /// AVX512-FP16 conversions.
    Vcvtsi2sh;
}

bitflags! {
    /// The instruction-set extensions (CPUID features) of an instruction, among those vesim
    /// tells apart: recent ones, which not every decoder has tables for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Extensions: u32 {
        /// AMX-FP16.
        const AMX_FP16 = 1 << 0;
        /// AMX-COMPLEX.
        const AMX_COMPLEX = 1 << 1;
        /// AVX-IFMA.
        const AVX_IFMA = 1 << 2;
        /// AVX-NE-CONVERT.
        const AVX_NE_CONVERT = 1 << 3;
        /// AVX-VNNI-INT8.
        const AVX_VNNI_INT8 = 1 << 4;
        /// AVX-VNNI-INT16.
        const AVX_VNNI_INT16 = 1 << 5;
        /// CMPccXADD.
        const CMPCCXADD = 1 << 6;
        /// MSRLIST.
        const MSRLIST = 1 << 7;
        /// WRMSRNS.
        const WRMSRNS = 1 << 8;
        /// RAO-INT.
        const RAO_INT = 1 << 9;
        /// RMPQUERY.
        const RMPQUERY = 1 << 10;
        /// SHA512.
        const SHA512 = 1 << 11;
        /// SM3.
        const SM3 = 1 << 12;
        /// SM4.
        const SM4 = 1 << 13;
        /// TSE.
        const TSE = 1 << 14;
        /// PREFETCHIT0/1.
        const PREFETCHITI = 1 << 15;
    }
}

fn extension_of(f: iced::CpuidFeature) -> Extensions {
    use iced::CpuidFeature as F;
    match f {
        F::AMX_FP16 => Extensions::AMX_FP16,
        F::AMX_COMPLEX => Extensions::AMX_COMPLEX,
        F::AVX_IFMA => Extensions::AVX_IFMA,
        F::AVX_NE_CONVERT => Extensions::AVX_NE_CONVERT,
        F::AVX_VNNI_INT8 => Extensions::AVX_VNNI_INT8,
        F::AVX_VNNI_INT16 => Extensions::AVX_VNNI_INT16,
        F::CMPCCXADD => Extensions::CMPCCXADD,
        F::MSRLIST => Extensions::MSRLIST,
        F::WRMSRNS => Extensions::WRMSRNS,
        F::RAO_INT => Extensions::RAO_INT,
        F::RMPQUERY => Extensions::RMPQUERY,
        F::SHA512 => Extensions::SHA512,
        F::SM3 => Extensions::SM3,
        F::SM4 => Extensions::SM4,
        F::TSE => Extensions::TSE,
        F::PREFETCHITI => Extensions::PREFETCHITI,
        _ => Extensions::empty(),
    }
}

/// A register an address is formed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressReg {
    /// A general-purpose register.
    Gpr(Register),
    /// RIP: the base of a RIP-relative operand.
    Rip,
    /// EIP: the base of a RIP-relative operand under 0x67.
    Eip,
    /// A vector register, the index of a VSIB operand.
    Vector {
        /// Register number (XMM/YMM/ZMM 0-31).
        number: u8,
        /// Its size in bytes.
        size: u8,
        /// The size of one index element in bytes (4 or 8).
        element: u8,
    },
    /// Any other register.
    Other,
}

impl AddressReg {
    /// The value the register adds to an address, or `None` for a register the reference CPU
    /// does not read addresses from (a vector index, or another kind).
    pub fn value(self, vcpu: &Vcpu) -> Option<u64> {
        match self {
            AddressReg::Gpr(r) => Some(vcpu.read_register(r)),
            AddressReg::Rip => Some(vcpu.rip),
            AddressReg::Eip => Some(vcpu.rip & 0xFFFF_FFFF),
            AddressReg::Vector { .. } | AddressReg::Other => None,
        }
    }
}

/// How a memory operand is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryForm {
    /// ModRM (with SIB, or RIP-relative).
    ModRm,
    /// The absolute address of MOV AL/AX/EAX/RAX (`A0`-`A3`): the displacement is the address.
    Moffs,
    /// A string instruction's operand: `seg:[rSI]`, `seg:[rDI]` (MASKMOVQ) or `es:[rDI]`; the
    /// base is rSI or rDI at the address size.
    String,
}

/// A memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The encoding.
    pub form: MemoryForm,
    /// Base register.
    pub base: Option<AddressReg>,
    /// Index register.
    pub index: Option<AddressReg>,
    /// Scale (1, 2, 4, 8).
    pub scale: u8,
    /// Displacement as 64 bits (the absolute address of a RIP-relative operand; an EVEX
    /// compressed displacement multiplied by N).
    pub displacement: u64,
    /// The displacement byte as encoded, for an EVEX compressed displacement (disp8 × N).
    pub compressed_disp8: Option<i8>,
    /// Size in bytes (0 where the size is not fixed).
    pub size: u32,
    /// Size of one element in bytes (the size itself for a scalar).
    pub element_size: u32,
    /// The segment the access uses (`es` for a string destination).
    pub segment: Option<Segment>,
}

impl Memory {
    /// RIP-relative (a RIP or EIP base).
    pub fn rip_relative(&self) -> bool {
        matches!(self.base, Some(AddressReg::Rip | AddressReg::Eip))
    }
}

/// One operand of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A general-purpose register.
    Register(Register),
    /// Any other register (vector, mask, segment, x87, control, ...).
    OtherRegister {
        /// Its size in bytes.
        size: u16,
    },
    /// A memory operand.
    Memory(Memory),
    /// An immediate.
    Immediate {
        /// The value, sign- or zero-extended to 64 bits as the encoding defines.
        value: u64,
        /// Its size in the encoding, in bytes.
        size: u8,
    },
    /// A near branch target (encoded as an offset from the next instruction).
    NearBranch(u64),
    /// Anything else (a far branch target, the second immediate of ENTER, EXTRQ, INSERTQ).
    Other,
}

/// The legacy prefixes of an instruction, as the decoder reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefixes {
    /// REP/REPE (F3).
    pub rep: bool,
    /// REPNE (F2).
    pub repne: bool,
    /// LOCK.
    pub lock: bool,
    /// An explicit segment-override prefix (FS and GS outrank ES, CS, SS and DS, which add no
    /// base in 64-bit mode).
    pub segment: Option<Segment>,
}

/// How an operand is stored in an [`Insn`]: what the operand needs beyond the instruction's
/// one memory description, one immediate and one branch target (as an x86 instruction has at
/// most one of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Register(Register),
    OtherRegister(u16),
    /// The instruction's ModRM or moffs memory operand.
    Memory,
    /// A string operand: its base register, and whether its segment is ES.
    String(Register, bool),
    /// The instruction's immediate, of this many bytes in the encoding.
    Immediate(u8),
    NearBranch,
    Other,
}

/// A decoded instruction, as vesim's own data (small and `Copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Length in bytes.
    pub len: usize,
    /// The address of the next instruction (RIP + length).
    pub next_ip: u64,
    /// The mnemonic.
    pub mnemonic: Mnemonic,
    /// The decoder's mnemonic, for [`Insn::name`].
    name: u16,
    /// How many of `slots` the instruction has.
    op_count: u8,
    slots: [Slot; MAX_OPERANDS],
    /// The memory operand (for a string operand, its size and the segment of a non-ES one).
    memory: Memory,
    /// The immediate.
    immediate: u64,
    /// The near branch target.
    branch: u64,
    /// Prefixes.
    pub prefixes: Prefixes,
    /// The extensions vesim tells apart that the instruction belongs to.
    pub extensions: Extensions,
    /// What the instruction adds to RSP as a push or pop does (0 for the others).
    pub stack_pointer_increment: i32,
    /// A string instruction (MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS).
    pub string: bool,
    /// An EVEX embedded rounding control.
    pub embedded_rounding: bool,
}

impl Insn {
    /// How many operands the instruction has.
    pub fn operand_count(&self) -> usize {
        usize::from(self.op_count)
    }

    /// Operand `i` (from 0, in the decoder's order).
    pub fn operand(&self, i: usize) -> Option<Operand> {
        let slot = self.slots[..self.operand_count()].get(i)?;
        Some(match *slot {
            Slot::Register(r) => Operand::Register(r),
            Slot::OtherRegister(size) => Operand::OtherRegister { size },
            Slot::Memory => Operand::Memory(self.memory),
            Slot::String(base, es) => Operand::Memory(Memory {
                form: MemoryForm::String,
                base: Some(AddressReg::Gpr(base)),
                index: None,
                scale: 1,
                displacement: 0,
                compressed_disp8: None,
                segment: if es {
                    Some(Segment::Es)
                } else {
                    self.memory.segment
                },
                ..self.memory
            }),
            Slot::Immediate(size) => Operand::Immediate {
                value: self.immediate,
                size,
            },
            Slot::NearBranch => Operand::NearBranch(self.branch),
            Slot::Other => Operand::Other,
        })
    }

    /// The operands, in the decoder's order.
    pub fn operands(&self) -> impl Iterator<Item = Operand> + '_ {
        (0..self.operand_count()).filter_map(|i| self.operand(i))
    }

    /// The mnemonic in lower case (`bts`, `cmpxchg`, `stosq`), for every mnemonic.
    pub fn name(&self) -> &'static str {
        mnemonic_names()
            .get(usize::from(self.name))
            .map_or("", String::as_str)
    }
}

/// The lower-case name of every iced mnemonic, by number.
fn mnemonic_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        iced::Mnemonic::values()
            .map(|m| format!("{m:?}").to_lowercase())
            .collect()
    })
}

fn name_of(m: iced::Mnemonic) -> &'static str {
    mnemonic_names().get(m as usize).map_or("", String::as_str)
}

/// Maps a general-purpose iced register to vesim's.
fn register_of(reg: iced::Register) -> Option<Register> {
    use iced::Register as R;
    let (gpr, size, high) = match reg {
        R::AH => (0, 1, true),
        R::CH => (1, 1, true),
        R::DH => (2, 1, true),
        R::BH => (3, 1, true),
        r if r.is_gpr64() => (r.number(), 8, false),
        r if r.is_gpr32() => (r.number(), 4, false),
        r if r.is_gpr16() => (r.number(), 2, false),
        r if r.is_gpr8() => {
            // AL, CL, DL, BL, SPL, BPL, SIL, DIL, R8L..R15L; AH..BH handled above.
            let n = r as usize - R::AL as usize;
            let n = if n >= 8 { n - 4 } else { n };
            (n, 1, false)
        }
        _ => return None,
    };
    Gpr::ALL.get(gpr).map(|g| Register {
        gpr: *g,
        size,
        high,
    })
}

fn segment_of(reg: iced::Register) -> Option<Segment> {
    use iced::Register as R;
    match reg {
        R::ES => Some(Segment::Es),
        R::CS => Some(Segment::Cs),
        R::SS => Some(Segment::Ss),
        R::DS => Some(Segment::Ds),
        R::FS => Some(Segment::Fs),
        R::GS => Some(Segment::Gs),
        _ => None,
    }
}

/// An address register; `vsib` is the index element size of a VSIB operand.
fn address_reg(reg: iced::Register, vsib: Option<u8>) -> Option<AddressReg> {
    Some(match reg {
        iced::Register::None => return None,
        iced::Register::RIP => AddressReg::Rip,
        iced::Register::EIP => AddressReg::Eip,
        r if r.is_vector_register() && vsib.is_some() => AddressReg::Vector {
            number: r.number() as u8,
            size: r.size() as u8,
            element: vsib.unwrap_or(0),
        },
        r => register_of(r).map_or(AddressReg::Other, AddressReg::Gpr),
    })
}

const fn gpr(gpr: Gpr, size: u8) -> Slot {
    Slot::String(
        Register {
            gpr,
            size,
            high: false,
        },
        false,
    )
}

const fn es_gpr(gpr: Gpr, size: u8) -> Slot {
    Slot::String(
        Register {
            gpr,
            size,
            high: false,
        },
        true,
    )
}

fn slot_of(instr: &iced::Instruction, i: u32) -> Slot {
    match instr.op_kind(i) {
        OpKind::Register => {
            let r = instr.op_register(i);
            register_of(r).map_or(Slot::OtherRegister(r.size() as u16), Slot::Register)
        }
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => Slot::NearBranch,
        OpKind::Immediate8
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64 => Slot::Immediate(1),
        OpKind::Immediate16 => Slot::Immediate(2),
        OpKind::Immediate32 | OpKind::Immediate32to64 => Slot::Immediate(4),
        OpKind::Immediate64 => Slot::Immediate(8),
        OpKind::Memory => Slot::Memory,
        OpKind::MemorySegSI => gpr(Gpr::Rsi, 2),
        OpKind::MemorySegESI => gpr(Gpr::Rsi, 4),
        OpKind::MemorySegRSI => gpr(Gpr::Rsi, 8),
        OpKind::MemorySegDI => gpr(Gpr::Rdi, 2),
        OpKind::MemorySegEDI => gpr(Gpr::Rdi, 4),
        OpKind::MemorySegRDI => gpr(Gpr::Rdi, 8),
        OpKind::MemoryESDI => es_gpr(Gpr::Rdi, 2),
        OpKind::MemoryESEDI => es_gpr(Gpr::Rdi, 4),
        OpKind::MemoryESRDI => es_gpr(Gpr::Rdi, 8),
        _ => Slot::Other,
    }
}

/// The owned form of a decoded instruction: field copies.
fn insn_of(instr: &iced::Instruction, compressed_disp8: Option<i8>) -> Insn {
    let op_count = (instr.op_count() as usize).min(MAX_OPERANDS);
    let mut slots = [Slot::Other; MAX_OPERANDS];
    let (mut immediate, mut branch) = (0, 0);
    for (i, slot) in slots.iter_mut().enumerate().take(op_count) {
        let i = i as u32;
        *slot = slot_of(instr, i);
        match instr.op_kind(i) {
            _ if matches!(slot, Slot::Immediate(_)) => immediate = instr.immediate(i),
            OpKind::NearBranch16 => branch = u64::from(instr.near_branch16()),
            OpKind::NearBranch32 => branch = u64::from(instr.near_branch32()),
            OpKind::NearBranch64 => branch = instr.near_branch64(),
            _ => {}
        }
    }
    let moffs = matches!(
        instr.code(),
        Code::Mov_AL_moffs8
            | Code::Mov_AX_moffs16
            | Code::Mov_EAX_moffs32
            | Code::Mov_RAX_moffs64
            | Code::Mov_moffs8_AL
            | Code::Mov_moffs16_AX
            | Code::Mov_moffs32_EAX
            | Code::Mov_moffs64_RAX
    );
    let vsib = instr.vsib().map(|is64| if is64 { 8 } else { 4 });
    let memory = Memory {
        form: if moffs {
            MemoryForm::Moffs
        } else {
            MemoryForm::ModRm
        },
        base: address_reg(instr.memory_base(), None),
        index: address_reg(instr.memory_index(), vsib),
        scale: instr.memory_index_scale() as u8,
        displacement: instr.memory_displacement64(),
        compressed_disp8,
        size: instr.memory_size().size() as u32,
        element_size: instr.memory_size().element_size() as u32,
        segment: segment_of(instr.memory_segment()),
    };
    let extensions = instr
        .cpuid_features()
        .iter()
        .fold(Extensions::empty(), |e, f| e | extension_of(*f));
    Insn {
        len: instr.len(),
        next_ip: instr.next_ip(),
        mnemonic: mnemonic_of(instr.mnemonic()),
        name: instr.mnemonic() as u16,
        op_count: op_count as u8,
        slots,
        memory,
        immediate,
        branch,
        prefixes: Prefixes {
            rep: instr.has_rep_prefix(),
            repne: instr.has_repne_prefix(),
            lock: instr.has_lock_prefix(),
            segment: segment_of(instr.segment_prefix()),
        },
        extensions,
        stack_pointer_increment: instr.stack_pointer_increment(),
        string: instr.is_string_instruction(),
        embedded_rounding: instr.rounding_control() != iced::RoundingControl::None,
    }
}

/// iced's decode of `bytes` at `rip`, with the encoded byte of an EVEX compressed
/// displacement, or why it is not an instruction.
fn decode_iced(
    bytes: &[u8],
    rip: u64,
    options: u32,
) -> Result<(iced::Instruction, Option<i8>), Decoded> {
    let mut d = Decoder::with_ip(64, bytes, rip, options);
    let instr = d.decode();
    if instr.code() != Code::INVALID {
        let mut disp8 = None;
        if instr.encoding() == iced::EncodingKind::EVEX {
            let offsets = d.get_constant_offsets(&instr);
            if offsets.displacement_size() == 1 {
                disp8 = bytes.get(offsets.displacement_offset()).map(|b| *b as i8);
            }
        }
        return Ok((instr, disp8));
    }
    if d.last_error() != DecoderError::NoMoreBytes || bytes.len() >= MAX_INSTRUCTION_LEN {
        return Err(Decoded::Invalid);
    }
    Err(Decoded::Incomplete)
}

/// Decodes one 64-bit instruction from `bytes` located at `rip`.
pub fn decode(bytes: &[u8], rip: u64) -> Decoded {
    decode_with(bytes, rip, DecodeOptions::default())
}

/// [`decode`] with optional instruction sets.
pub fn decode_with(bytes: &[u8], rip: u64, options: DecodeOptions) -> Decoded {
    let options = if options.mpx {
        DecoderOptions::MPX
    } else {
        DecoderOptions::NONE
    };
    match decode_iced(bytes, rip, options) {
        Ok((instr, disp8)) => Decoded::Ok(insn_of(&instr, disp8)),
        Err(d) => d,
    }
}

/// [`decode`], with the memory accesses the instruction makes: what the reference CPU
/// executes. The error is [`Decoded::Incomplete`] or [`Decoded::Invalid`].
pub fn decode_with_memory(bytes: &[u8], rip: u64) -> Result<(Insn, Vec<MemoryUse>), Decoded> {
    let (instr, disp8) = decode_iced(bytes, rip, DecoderOptions::NONE)?;
    Ok((insn_of(&instr, disp8), memory_uses(&instr)))
}

/// Like [`decode`], for bytes a user typed: `Incomplete` only if some continuation of the bytes
/// is an instruction, so that bytes which stay invalid whatever follows (06, PUSH ES) are #UD.
pub fn decode_given(bytes: &[u8], rip: u64) -> Decoded {
    match decode(bytes, rip) {
        Decoded::Incomplete if !can_complete(bytes, rip) => Decoded::Invalid,
        d => d,
    }
}

/// Whether some continuation of `bytes` is a valid instruction. iced reports a short buffer
/// before judging the opcode, so this tries every value of the next byte followed by zeros and
/// by 0xFF bytes; a VEX, EVEX or XOP escape byte (whose later bytes must agree with each other)
/// counts as completable. `48 0F BA` (BT* imm8, whose ModRM /digit decides) is completable;
/// `06` (PUSH ES) is not.
fn can_complete(bytes: &[u8], rip: u64) -> bool {
    if bytes.iter().any(|b| matches!(b, 0xC4 | 0xC5 | 0x62 | 0x8F)) {
        return true;
    }
    let mut buf = [0u8; MAX_INSTRUCTION_LEN];
    let n = bytes.len();
    buf[..n].copy_from_slice(bytes);
    for fill in [0x00u8, 0xFF] {
        for next in 0..=255u8 {
            buf[n] = next;
            buf[n + 1..].fill(fill);
            let mut d = Decoder::with_ip(64, &buf, rip, DecoderOptions::NONE);
            if d.decode().code() != Code::INVALID {
                return true;
            }
        }
    }
    false
}

/// The Intel-syntax text of `instr` (`bts [rax], rbx`).
fn disassemble(instr: &iced::Instruction) -> String {
    use iced_x86::Formatter;
    let mut out = String::new();
    let mut f = iced::IntelFormatter::new();
    f.options_mut().set_hex_prefix("0x");
    f.options_mut().set_hex_suffix("");
    f.options_mut().set_uppercase_hex(false);
    f.options_mut().set_space_after_operand_separator(true);
    f.format(instr, &mut out);
    out
}

/// Decodes `bytes` at `rip` and returns (length, lower-case mnemonic, Intel-syntax text) of the
/// first instruction, or the reason it is not one.
pub fn describe(bytes: &[u8], rip: u64) -> Result<(usize, String, String), Decoded> {
    match decode_iced(bytes, rip, DecoderOptions::NONE) {
        Ok((i, _)) => Ok((i.len(), name_of(i.mnemonic()).to_owned(), disassemble(&i))),
        Err(Decoded::Incomplete) => Err(decode_given(bytes, rip)),
        Err(other) => Err(other),
    }
}

/// One memory access an instruction makes, as the decoder lists it: the address as a formula
/// of registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// The segment whose base is added, if any.
    pub segment: Option<Segment>,
    /// Base register.
    pub base: Option<AddressReg>,
    /// Index register.
    pub index: Option<AddressReg>,
    /// Scale.
    pub scale: u8,
    /// Displacement (the absolute address of a RIP-relative operand).
    pub displacement: u64,
    /// Size in bytes (0 where the size is not fixed).
    pub size: u32,
    /// Read, write or read-modify-write (conditional ones included).
    pub access: AccessKind,
    /// Address size in bytes (8, 4 or 2; 0 where the decoder does not tell).
    pub address_size: u8,
}

impl MemoryUse {
    /// The linear address on `vcpu`: displacement + base + index × scale, truncated to the
    /// address size, plus the segment base; `None` if a register is one the reference CPU does
    /// not read addresses from.
    pub fn address(&self, vcpu: &Vcpu) -> Option<u64> {
        let mut a = self.displacement;
        if let Some(b) = self.base {
            a = a.wrapping_add(b.value(vcpu)?);
        }
        if let Some(i) = self.index {
            a = a.wrapping_add(i.value(vcpu)?.wrapping_mul(u64::from(self.scale)));
        }
        a = match self.address_size {
            2 => a & 0xFFFF,
            4 => a & 0xFFFF_FFFF,
            _ => a,
        };
        if let Some(s) = self.segment {
            a = a.wrapping_add(vcpu.segment_base(s));
        }
        Some(a)
    }
}

/// iced's `used_memory()` of `instr`, in its order, without the entries that access nothing.
fn memory_uses(instr: &iced::Instruction) -> Vec<MemoryUse> {
    let mut factory = iced::InstructionInfoFactory::new();
    let info = factory.info_options(instr, iced::InstructionInfoOptions::NO_REGISTER_USAGE);
    info.used_memory()
        .iter()
        .filter_map(|m| {
            let access = match m.access() {
                OpAccess::Read | OpAccess::CondRead => AccessKind::Read,
                OpAccess::Write | OpAccess::CondWrite => AccessKind::Write,
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => AccessKind::ReadWrite,
                _ => return None,
            };
            let vsib = (m.vsib_size() != 0).then_some(m.vsib_size() as u8);
            Some(MemoryUse {
                segment: segment_of(m.segment()),
                base: address_reg(m.base(), None),
                index: address_reg(m.index(), vsib),
                scale: m.scale() as u8,
                displacement: m.displacement(),
                size: m.memory_size().size() as u32,
                access,
                address_size: match m.address_size() {
                    iced::CodeSize::Code16 => 2,
                    iced::CodeSize::Code32 => 4,
                    iced::CodeSize::Code64 => 8,
                    _ => 0,
                },
            })
        })
        .collect()
}

/// One memory access an instruction makes, in the decoder's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedAccess {
    /// Linear address (segment base added, wrapped to the address size).
    pub gla: Gla,
    /// Size in bytes.
    pub size: u64,
    /// Read, write or read-modify-write.
    pub kind: AccessKind,
    /// The access uses SS (a non-canonical address is #SS rather than #GP).
    pub stack: bool,
}

/// Why the accesses of an instruction could not be listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoAddress;

/// Whether the instruction is BT, BTS, BTR or BTC with a register bit offset and a memory
/// operand: bit-string addressing (VE-SEMANTICS section 1).
pub fn is_bit_string(insn: &Insn) -> bool {
    matches!(
        insn.mnemonic,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    ) && matches!(insn.operand(0), Some(Operand::Memory(m)) if m.form != MemoryForm::String)
        && matches!(
            insn.operand(1),
            Some(Operand::Register(_) | Operand::OtherRegister { .. })
        )
}

/// The byte displacement bit-string addressing adds to the operand's address:
/// `size × (offset sar log2(8 × size))` with the offset register read at the operand size.
pub fn bit_string_displacement(insn: &Insn, vcpu: &Vcpu) -> Option<u64> {
    let (Some(Operand::Memory(m)), Some(Operand::Register(r))) = (insn.operand(0), insn.operand(1))
    else {
        return None;
    };
    let size = u64::from(m.size);
    let raw = vcpu.read_register(r);
    let offset: i64 = match size {
        2 => raw as u16 as i16 as i64,
        4 => raw as u32 as i32 as i64,
        _ => raw as i64,
    };
    let shift = match size {
        2 => 4,
        4 => 5,
        _ => 6,
    };
    Some(((offset >> shift) as u64).wrapping_mul(size))
}

/// The memory accesses of `insn` (its `uses`, as [`decode_with_memory`] lists them), with
/// addresses computed from the VCPU's registers. The one change is bit-string addressing for
/// BT* with a register offset.
pub fn planned_accesses(
    insn: &Insn,
    uses: &[MemoryUse],
    vcpu: &Vcpu,
) -> Result<Vec<PlannedAccess>, NoAddress> {
    let mut out = Vec::with_capacity(uses.len());
    planned_accesses_into(insn, uses, vcpu, &mut out)?;
    Ok(out)
}

/// [`planned_accesses`] into `out` (cleared first), which keeps its capacity between calls.
pub fn planned_accesses_into(
    insn: &Insn,
    uses: &[MemoryUse],
    vcpu: &Vcpu,
    out: &mut Vec<PlannedAccess>,
) -> Result<(), NoAddress> {
    out.clear();
    for m in uses {
        let mut addr = m.address(vcpu).ok_or(NoAddress)?;
        if is_bit_string(insn) {
            addr = addr.wrapping_add(bit_string_displacement(insn, vcpu).ok_or(NoAddress)?);
            if m.address_size == 4 {
                addr &= 0xFFFF_FFFF;
            }
        }
        out.push(PlannedAccess {
            gla: Gla(addr),
            size: u64::from(m.size).clamp(1, 4096),
            kind: m.access,
            stack: m.segment == Some(Segment::Ss),
        });
    }
    Ok(())
}

/// Linear address of the first memory access the reference CPU makes for the instruction in
/// `bytes` (a string operand counts; BT* with a register offset uses bit-string addressing).
pub fn first_access(bytes: &[u8], vcpu: &Vcpu) -> Option<(Gla, u64, bool)> {
    let p = accesses_of(bytes, vcpu)?;
    p.first().map(|a| (a.gla, a.size, a.kind.writes()))
}

/// Decodes the instruction in `bytes` at `vcpu.rip` and runs the reference semantics with `mem`
/// as its memory operand's value: (effects, length, next RIP), or `None` if the bytes are not
/// an instruction of the reference CPU's set.
pub fn execute_bytes(
    bytes: &[u8],
    vcpu: &Vcpu,
    mem: u64,
) -> Option<(super::exec::Effects, usize, u64)> {
    let Decoded::Ok(insn) = decode(bytes, vcpu.rip) else {
        return None;
    };
    let fx = super::exec::execute(&insn, vcpu, mem).ok()?;
    Some((fx, insn.len, insn.next_ip))
}

/// The memory accesses the reference CPU makes for the instruction in `bytes` at `vcpu.rip`.
pub fn accesses_of(bytes: &[u8], vcpu: &Vcpu) -> Option<Vec<PlannedAccess>> {
    let (insn, uses) = decode_with_memory(bytes, vcpu.rip).ok()?;
    planned_accesses(&insn, &uses, vcpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_and_invalid_are_told_apart() {
        assert_eq!(decode(&[0x48, 0x89], 0), Decoded::Incomplete);
        // PUSH ES is invalid in 64-bit mode, though iced asks for more bytes first.
        assert_eq!(decode_given(&[0x06], 0), Decoded::Invalid);
        assert_eq!(decode_given(&[0xC5], 0), Decoded::Incomplete);
        assert!(matches!(decode(&[0x48, 0x89, 0x08], 0), Decoded::Ok(_)));
        // LOCK MOV is #UD.
        assert_eq!(decode(&[0xF0, 0x48, 0x89, 0x08], 0), Decoded::Invalid);
        // The ModRM /digit decides whether 0F BA is valid: incomplete, not invalid.
        assert_eq!(decode_given(&[0x48, 0x0F, 0xBA], 0), Decoded::Incomplete);
        assert_eq!(decode_given(&[0xF0, 0x48, 0x0F], 0), Decoded::Incomplete);
        assert_eq!(
            decode_given(&[0xF0, 0x48, 0x0F, 0xBA], 0),
            Decoded::Incomplete
        );
    }

    #[test]
    fn eight_bit_register_numbering() {
        let r = |gpr, size, high| Some(Register { gpr, size, high });
        assert_eq!(register_of(iced::Register::SIL), r(Gpr::Rsi, 1, false));
        assert_eq!(register_of(iced::Register::R9L), r(Gpr::R9, 1, false));
        assert_eq!(register_of(iced::Register::BH), r(Gpr::Rbx, 1, true));
        assert_eq!(register_of(iced::Register::R15D), r(Gpr::R15, 4, false));
        assert_eq!(register_of(iced::Register::XMM1), None);
    }
}
