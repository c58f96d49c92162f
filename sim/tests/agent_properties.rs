//! Properties of the #VE agent (ARCHITECTURE.md invariants I2, I4, I5, I7, I9; VE-SEMANTICS
//! sections 1–3):
//!
//! 1. Fidelity (I2): every accepted instruction form the agent emulates gives, through
//!    `vesim::verdict::run`, the entry value, the 16 registers, every defined RFLAGS bit and
//!    the RIP the reference CPU (`vesim::exec::run`) produces from the same state.
//! 2. Rejection order (VE-SEMANTICS section 2): an encoding with several defects is refused for
//!    the first of them in the documented order.
//! 3. Protocol (I4): the semaphore, the no-nesting rule and the view the agent returns to,
//!    checked after every `World::step` while the guest executes page-table writes for real.
//! 4. Statistics (I5): the identities of VE-SEMANTICS section 3 in `fixed`, and their failure in
//!    `hvmi` (Q18) once a break happened.
//! 5. Cache soundness (I7): no monitored entry is ever in the agent cache in `fixed`.
//! 6. Robustness (I9): guest-controlled bytes (instructions, registers, RFLAGS, the agent's
//!    information page, cache, CPU map and the 0x50 descriptor) never make the world panic.
//!
//! Expected values come from the spec and the SDM, or from the reference CPU for property 1;
//! nothing is copied from a run of the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;
use vesim::agent::{rip as agent_rip, AgentOutcome, RejectReason};
use vesim::exec::{self, ExecRequest};
use vesim::guest::GuestConfig;
use vesim::introcore::ptm::MonitorId;
use vesim::layout::{self, veinfo};
use vesim::quirks::{Profile, Quirks};
use vesim::verdict::{self, Verdict, VerdictRequest};
use vesim::world::{Event, World, WorldConfig};
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::vcpu::{Gpr, Rflags, SegmentLimit};
use vesim_model::ve_info::VeInfo;
use vesim_model::{Gla, Gpa, MachineConfig, Outcome};

/// Cases per property (fixed; the whole file stays well under 20 s in `cargo test`).
const FIDELITY_CASES: u32 = 4096;
const PROTOCOL_CASES: u32 = 384;
const STATISTICS_CASES: u32 = 384;
const Q18_CASES: u32 = 96;
const CACHE_CASES: u32 = 1024;
const ROBUSTNESS_CASES: u32 = 1024;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// =============================================================================================
// 1. Fidelity (I2)
// =============================================================================================

/// OR, AND, XOR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logic {
    Or,
    And,
    Xor,
}

/// BTS, BTR, BTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BitOp {
    Bts,
    Btr,
    Btc,
}

/// The accepted forms of VE-SEMANTICS section 1 (all with REX.W, operand 0 a qword in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// 48 89 /r: MOV r/m64, r64.
    MovR,
    /// 48 C7 /0 id: MOV r/m64, imm32.
    MovI32,
    /// 48 A3 moffs64 (moffs32 under 0x67): MOV [moffs], RAX.
    MovMoffs,
    /// 48 87 /r: XCHG r/m64, r64.
    Xchg,
    /// 48 0F B1 /r: CMPXCHG r/m64, r64; `equal`: RAX = the old value.
    Cmpxchg { equal: bool },
    /// 48 09/21/31 /r.
    LogicR(Logic),
    /// 48 83 /1,/4,/6 ib.
    LogicI8(Logic),
    /// 48 81 /1,/4,/6 id.
    LogicI32(Logic),
    /// 48 0F AB/B3/BB /r: bit-string addressing.
    BtR(BitOp),
    /// 48 0F BA /5,/6,/7 ib.
    BtI8(BitOp),
    /// 48 AB: STOSQ.
    Stos,
}

impl Form {
    fn lockable(self) -> bool {
        !matches!(
            self,
            Form::MovR | Form::MovI32 | Form::MovMoffs | Form::Stos
        )
    }
    /// Opcode bytes and the ModRM reg field for /digit forms.
    fn opcode(self) -> (&'static [u8], Option<u8>) {
        let digit = |l: Logic| match l {
            Logic::Or => 1,
            Logic::And => 4,
            Logic::Xor => 6,
        };
        let bt_digit = |b: BitOp| match b {
            BitOp::Bts => 5,
            BitOp::Btr => 6,
            BitOp::Btc => 7,
        };
        match self {
            Form::MovR => (&[0x89], None),
            Form::MovI32 => (&[0xC7], Some(0)),
            Form::MovMoffs => (&[0xA3], None),
            Form::Xchg => (&[0x87], None),
            Form::Cmpxchg { .. } => (&[0x0F, 0xB1], None),
            Form::LogicR(Logic::Or) => (&[0x09], None),
            Form::LogicR(Logic::And) => (&[0x21], None),
            Form::LogicR(Logic::Xor) => (&[0x31], None),
            Form::LogicI8(l) => (&[0x83], Some(digit(l))),
            Form::LogicI32(l) => (&[0x81], Some(digit(l))),
            Form::BtR(BitOp::Bts) => (&[0x0F, 0xAB], None),
            Form::BtR(BitOp::Btr) => (&[0x0F, 0xB3], None),
            Form::BtR(BitOp::Btc) => (&[0x0F, 0xBB], None),
            Form::BtI8(b) => (&[0x0F, 0xBA], Some(bt_digit(b))),
            Form::Stos => (&[0xAB], None),
        }
    }
    fn imm_len(self) -> usize {
        match self {
            Form::MovI32 | Form::LogicI32(_) => 4,
            Form::LogicI8(_) | Form::BtI8(_) => 1,
            _ => 0,
        }
    }
    /// The status flags the SDM (Vol. 2, "Flags Affected") defines for the form. Every other
    /// status flag is undefined or unaffected, and both must keep their input value
    /// (VE-SEMANTICS section 1).
    ///
    /// - MOV, XCHG, STOS: none.
    /// - CMPXCHG: CF, PF, AF, ZF, SF, OF as CMP.
    /// - OR/AND/XOR: OF = CF = 0; SF, ZF, PF by the result; AF undefined.
    /// - BTS/BTR/BTC: CF = the selected bit; ZF unaffected; OF, SF, AF, PF undefined.
    fn defined_flags(self) -> Rflags {
        match self {
            Form::MovR | Form::MovI32 | Form::MovMoffs | Form::Xchg | Form::Stos => Rflags::empty(),
            Form::Cmpxchg { .. } => Rflags::STATUS,
            Form::LogicR(_) | Form::LogicI8(_) | Form::LogicI32(_) => {
                Rflags::CF | Rflags::OF | Rflags::SF | Rflags::ZF | Rflags::PF
            }
            Form::BtR(_) | Form::BtI8(_) => Rflags::CF,
        }
    }
}

fn logic() -> impl Strategy<Value = Logic> {
    prop_oneof![Just(Logic::Or), Just(Logic::And), Just(Logic::Xor)]
}

fn bitop() -> impl Strategy<Value = BitOp> {
    prop_oneof![Just(BitOp::Bts), Just(BitOp::Btr), Just(BitOp::Btc)]
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        Just(Form::MovR),
        Just(Form::MovI32),
        Just(Form::MovMoffs),
        Just(Form::Xchg),
        any::<bool>().prop_map(|equal| Form::Cmpxchg { equal }),
        logic().prop_map(Form::LogicR),
        logic().prop_map(Form::LogicI8),
        logic().prop_map(Form::LogicI32),
        bitop().prop_map(Form::BtR),
        bitop().prop_map(Form::BtI8),
        Just(Form::Stos),
    ]
}

/// A displacement as encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disp {
    None,
    D8(i8),
    D32(i32),
}

impl Disp {
    fn value(self) -> i64 {
        match self {
            Disp::None => 0,
            Disp::D8(d) => d.into(),
            Disp::D32(d) => d.into(),
        }
    }
    /// The same mode with the value rounded down to a multiple of `m` (a power of two).
    fn round(self, m: i64) -> Disp {
        match self {
            Disp::None => Disp::None,
            Disp::D8(d) => Disp::D8(((d as i64) & !(m - 1)) as i8),
            Disp::D32(d) => Disp::D32(((d as i64) & !(m - 1)) as i32),
        }
    }
}

fn disp() -> impl Strategy<Value = Disp> {
    prop_oneof![
        Just(Disp::None),
        any::<i8>().prop_map(Disp::D8),
        any::<i32>().prop_map(Disp::D32),
        (-0x2000i32..0x2000).prop_map(Disp::D32),
    ]
}

/// The raw, unsolved description of one fidelity case.
#[derive(Clone, Debug)]
struct Raw {
    form: Form,
    lock: bool,
    lock_first: bool,
    addr32: bool,
    /// A prefix the form ignores: 66 (REX.W wins), F2 or F3 (no REP on a non-string
    /// instruction; XACQUIRE/XRELEASE hints).
    ignored: Option<u8>,
    /// REX.R/X/B values used where the encoding ignores them.
    rex_junk: u8,
    src: u8,
    base: Option<u8>,
    index: Option<u8>,
    scale_log: u8,
    force_sib: bool,
    disp: Disp,
    imm: u32,
    bt_offset: i64,
    regs: [u64; 16],
    rsp_default: bool,
    rsp_off: u64,
    status: u8,
    df: bool,
    iflag: bool,
    old: u64,
    region: u8,
    page: u64,
    slot: u64,
    rip_off: u64,
    cached: bool,
    monitored: bool,
}

fn old_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        any::<u64>().prop_map(|v| (v & 0x800F_FFFF_FFFF_F000) | 0x63),
        any::<u64>().prop_map(|v| v & 0x000F_FFFF_FFFF_F0FE),
        Just(0u64),
    ]
}

fn bt_offset() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..64, -1024i64..1024, any::<i64>()]
}

prop_compose! {
    fn raw()(
        (form, lock, lock_first, addr32, rex_junk, src) in
            (form(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2), 0u8..8, 0u8..16),
        ignored in prop::option::weighted(0.15, prop::sample::select(vec![0x66u8, 0xF2, 0xF3])),
        (base, index, scale_log, force_sib, disp) in
            (prop::option::weighted(0.85, 0u8..16), prop::option::of(0u8..16), 0u8..4,
             prop::bool::weighted(0.2), disp()),
        (imm, bt_offset, regs) in (any::<u32>(), bt_offset(), any::<[u64; 16]>()),
        (rsp_default, rsp_off, status, df, iflag, old) in
            (any::<bool>(), any::<u64>(), 0u8..64, any::<bool>(), any::<bool>(), old_value()),
        (region, page, slot, rip_off, cached, monitored) in
            (0u8..3, 0u64..256, 0u64..512, 0u64..0x2000, any::<bool>(), any::<bool>()),
    ) -> Raw {
        Raw {
            form, lock, lock_first, addr32, ignored, rex_junk, src, base, index, scale_log, force_sib,
            disp, imm, bt_offset, regs, rsp_default, rsp_off, status, df, iflag, old, region,
            page, slot, rip_off, cached, monitored,
        }
    }
}

/// Low region: fits a sign-extended disp32 and 32-bit addressing.
const REGION_A: u64 = 0x0000_0000_1000_0000;
/// High region: fits a sign-extended disp32.
const REGION_B: u64 = 0xFFFF_FFFF_C000_0000;
/// Needs a register.
const REGION_C: u64 = 0xFFFF_8000_0000_0000;
/// Where a non-default RSP lives.
const STACK_REGION: u64 = 0xFFFF_A000_0000_0000;
/// The code region of the fidelity cases.
const FIDELITY_RIP: u64 = 0x40_0000;

/// A solved fidelity case: bytes and a state whose memory operand is `target`.
#[derive(Clone, Debug)]
struct Case {
    form: Form,
    bytes: Vec<u8>,
    regs: [u64; 16],
    rflags: u64,
    rip: u64,
    target: u64,
    old: u64,
    cached: bool,
    monitored: bool,
}

/// The inverse of an odd `a` modulo 2^64 (Newton's iteration).
fn inverse(a: u64) -> u64 {
    let mut x = a;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

/// An offset register value `r` with `(k × r + 8 × (r sar 6) + c) mod 2^(32|64) = t`, searched
/// around the real solution; `None` when the bit-string address skips `t`.
fn solve_self_offset(t: u64, c: u64, k: u64, m: u64, a32: bool) -> Option<u64> {
    let want = t.wrapping_sub(c) & m;
    let x: i128 = if a32 {
        want.into()
    } else {
        (want as i64).into()
    };
    let r0 = x * 8 / (8 * i128::from(k) + 1);
    (-300i128..300)
        .map(|delta| (r0 + delta) as i64 as u64)
        .find(|r| {
            let f = k
                .wrapping_mul(r & m)
                .wrapping_add(((*r as i64) >> 6).wrapping_mul(8) as u64);
            f & m == want
        })
}

/// The regions `vesim agent` refuses for the entry (mirrors `verdict::run`'s checks).
fn reserved(a: u64) -> bool {
    let p4 = (a >> 39) & 0x1FF;
    p4 == layout::DEFAULT_SELF_MAP_INDEX
        || (layout::IDT_GVA..layout::IDT_GVA + 0x1000).contains(&a)
        || (layout::OS_VE_HANDLER_GVA..layout::OS_VE_HANDLER_GVA + 0x1000).contains(&a)
        || (layout::KERNEL_STACKS_GVA..layout::KERNEL_STACKS_GVA + layout::KERNEL_STACK_STRIDE)
            .contains(&a)
        || (layout::AGENT_GVA..layout::AGENT_GVA + layout::AGENT_SIZE).contains(&a)
}

/// Encodes the raw description and solves the address registers so that the instruction's
/// memory operand is the qword `target`. `None` when the layout does not fit `vesim agent`.
fn realize(r: &Raw) -> Option<Case> {
    let form = r.form;
    let a32 = r.addr32;
    let m: u64 = if a32 { 0xFFFF_FFFF } else { u64::MAX };
    let mut regs = r.regs;
    regs[4] = if r.rsp_default {
        layout::VERDICT_DEFAULT_RSP
    } else {
        STACK_REGION + ((r.rsp_off % 0x1000_0000) & !0xF)
    };
    let base = r.base;
    let index = r.index.filter(|i| *i != 4);
    let scale_log = r.scale_log & 3;
    let s = 1u64 << scale_log;
    let abs = !matches!(form, Form::Stos | Form::MovMoffs) && base.is_none() && index.is_none();
    let region = if a32 {
        REGION_A
    } else {
        match (r.region, abs) {
            (0, _) | (2, true) => REGION_A,
            (1, _) => REGION_B,
            _ => REGION_C,
        }
    };
    let target = region + r.page * 0x1000 + r.slot * 8;
    let junk = |v: u64| if a32 { v & !0xFFFF_FFFF } else { 0 };
    let mut rex = 0x48u8;
    let mut body: Vec<u8> = Vec::new();
    let (opcode, digit) = form.opcode();
    if form == Form::Stos {
        rex |= r.rex_junk & 7;
        regs[7] = junk(regs[7]) | target;
        body.extend_from_slice(opcode);
    } else if form == Form::MovMoffs {
        // The whole address is the immediate offset (no ModRM, REX.R/X/B ignored).
        rex |= r.rex_junk & 7;
        body.extend_from_slice(opcode);
        if a32 {
            body.extend_from_slice(&(target as u32).to_le_bytes());
        } else {
            body.extend_from_slice(&target.to_le_bytes());
        }
    } else {
        let mut src = r.src & 15;
        let mut d = r.disp;
        let mut solved = false;
        if let Form::BtR(_) = form {
            // The bit offset register is also an address register (`bts [rax], rax`): solve
            // base + index × scale + disp + 8 × (offset sar 6) for the one value.
            let k = u64::from(Some(src) == base) + if Some(src) == index { s } else { 0 };
            if k != 0 && src != 4 {
                let other = match (base, index) {
                    (Some(b), Some(i)) if b == src && i != src => {
                        (regs[i as usize] & m).wrapping_mul(s)
                    }
                    (Some(b), Some(i)) if i == src && b != src => regs[b as usize] & m,
                    _ => 0,
                };
                let c = (d.value() as u64).wrapping_add(other);
                if let Some(v) = solve_self_offset(target, c, k, m, a32) {
                    regs[src as usize] = v;
                    solved = true;
                }
            }
            if !solved {
                // Otherwise keep the offset register apart from the address registers.
                while Some(src) == base || Some(src) == index || (abs && src == 4) {
                    src = (src + 1) % 16;
                }
                let off = if abs { r.bt_offset % 4096 } else { r.bt_offset };
                regs[src as usize] = off as u64;
            }
        }
        let bd = match form {
            Form::BtR(_) => ((regs[src as usize] as i64) >> 6).wrapping_mul(8) as u64,
            _ => 0,
        };
        let e = target.wrapping_sub(bd);
        // Solve the address registers.
        match (base, index) {
            _ if solved => {}
            (None, None) => {
                let v = e & m;
                if !a32 && (v as i64) != (v as i32 as i64) {
                    return None;
                }
                d = Disp::D32(v as u32 as i32);
            }
            (None, Some(i)) => {
                let d32 = match d {
                    Disp::D32(x) => x,
                    Disp::D8(x) => x.into(),
                    Disp::None => 0,
                };
                d = Disp::D32(d32).round(s as i64);
                let x = e.wrapping_sub(d.value() as u64) & m;
                regs[i as usize] = junk(regs[i as usize]) | (x >> scale_log);
            }
            (Some(4), None) => {
                // [rsp + disp32]: RSP far enough from the entry for the #VE frame.
                let mag = 0x4000 + (r.rsp_off >> 32) % 0x7FF0_0000;
                let dv = if r.rsp_off & 1 == 0 {
                    mag as i64
                } else {
                    -(mag as i64)
                };
                d = Disp::D32(dv as i32);
                regs[4] = e.wrapping_sub(dv as u64) & m;
            }
            (Some(b), None) => {
                let v = e.wrapping_sub(d.value() as u64) & m;
                regs[b as usize] = junk(regs[b as usize]) | v;
            }
            (Some(b), Some(i)) if b == i => {
                if s == 1 {
                    d = d.round(2);
                }
                let x = e.wrapping_sub(d.value() as u64) & m;
                let v = if s == 1 {
                    x >> 1
                } else {
                    x.wrapping_mul(inverse(1 + s)) & m
                };
                regs[b as usize] = junk(regs[b as usize]) | v;
            }
            (Some(4), Some(i)) => {
                d = d.round(s as i64);
                let x = e.wrapping_sub(regs[4] & m).wrapping_sub(d.value() as u64) & m;
                regs[i as usize] = junk(regs[i as usize]) | (x >> scale_log);
            }
            (Some(b), Some(i)) => {
                let iv = regs[i as usize] & m;
                let v = e
                    .wrapping_sub(d.value() as u64)
                    .wrapping_sub(iv.wrapping_mul(s))
                    & m;
                regs[b as usize] = junk(regs[b as usize]) | v;
            }
        }
        // Encode ModRM, SIB and displacement.
        let reg_field = match digit {
            Some(dg) => {
                rex |= r.rex_junk & 4; // REX.R is ignored for /digit
                dg
            }
            None => {
                rex |= (src >> 3) << 2;
                src & 7
            }
        };
        let mut tail: Vec<u8> = Vec::new();
        match base {
            None => {
                // mod 00, SIB base 101: no base, disp32 (REX.B is ignored).
                rex |= r.rex_junk & 1;
                let (idx, x) = match index {
                    Some(i) => (i & 7, i >> 3),
                    None => (4, 0),
                };
                rex |= x << 1;
                tail.push(reg_field << 3 | 4);
                tail.push(scale_log << 6 | idx << 3 | 5);
                tail.extend_from_slice(&(d.value() as i32).to_le_bytes());
            }
            Some(b) => {
                if d == Disp::None && b & 7 == 5 {
                    d = Disp::D8(0);
                }
                let md = match d {
                    Disp::None => 0u8,
                    Disp::D8(_) => 1,
                    Disp::D32(_) => 2,
                };
                rex |= b >> 3;
                let sib = index.is_some() || b & 7 == 4 || r.force_sib;
                if sib {
                    let (idx, x) = match index {
                        Some(i) => (i & 7, i >> 3),
                        None => (4, 0),
                    };
                    rex |= x << 1;
                    tail.push(md << 6 | reg_field << 3 | 4);
                    tail.push(scale_log << 6 | idx << 3 | (b & 7));
                } else {
                    rex |= r.rex_junk & 2; // REX.X is ignored without a SIB
                    tail.push(md << 6 | reg_field << 3 | (b & 7));
                }
                match d {
                    Disp::None => {}
                    Disp::D8(x) => tail.push(x as u8),
                    Disp::D32(x) => tail.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        body.extend_from_slice(opcode);
        body.extend_from_slice(&tail);
        let imm = r.imm.to_le_bytes();
        body.extend_from_slice(&imm[..form.imm_len()]);
    }
    let mut bytes = Vec::new();
    let mut prefixes = Vec::new();
    if r.lock && form.lockable() {
        prefixes.push(0xF0u8);
    }
    if a32 {
        prefixes.push(0x67);
    }
    match r.ignored {
        Some(0x66) => prefixes.push(0x66),
        Some(p) if !matches!(form, Form::Stos | Form::MovMoffs) => prefixes.push(p),
        _ => {}
    }
    if !r.lock_first {
        prefixes.reverse();
    }
    bytes.extend_from_slice(&prefixes);
    bytes.push(rex);
    bytes.extend_from_slice(&body);
    let old = match form {
        Form::Cmpxchg { equal: true } => regs[0],
        _ => r.old,
    };
    let mut rflags = Rflags::FIXED1.bits();
    let status = [
        Rflags::CF,
        Rflags::PF,
        Rflags::AF,
        Rflags::ZF,
        Rflags::SF,
        Rflags::OF,
    ];
    for (k, f) in status.iter().enumerate() {
        if r.status >> k & 1 != 0 {
            rflags |= f.bits();
        }
    }
    if r.df {
        rflags |= Rflags::DF.bits();
    }
    if r.iflag {
        rflags |= Rflags::IF.bits();
    }
    // The agent decodes 16 bytes at RIP (B34) and `vesim agent` maps only the pages the
    // instruction occupies: keep those 16 bytes mapped (a fault there is Q12/Q14).
    let mut rip = FIDELITY_RIP + r.rip_off;
    let end = rip + bytes.len() as u64 - 1;
    if (rip + 15) & !0xFFF != end & !0xFFF {
        rip = ((rip + 15) & !0xFFF) - 16;
    }
    let case = Case {
        form,
        bytes,
        regs,
        rflags,
        rip,
        target,
        old,
        cached: r.cached,
        monitored: r.monitored,
    };
    layout_fits(&case).then_some(case)
}

/// Whether the stack, the code and the entry keep apart the way `vesim agent` needs.
fn layout_fits(c: &Case) -> bool {
    let page = |a: u64| a & !0xFFF;
    let rsp = c.regs[4];
    let end = c.rip + c.bytes.len() as u64 - 1;
    let code_pages = [page(c.rip), page(end)];
    let stack_pages = [page(rsp), page(rsp.wrapping_sub(0x1000))];
    let canonical = |a: u64| Gla(a).is_canonical();
    canonical(rsp)
        && canonical(rsp.wrapping_sub(0x1000))
        && (rsp == layout::VERDICT_DEFAULT_RSP
            || !reserved(rsp) && !reserved(rsp.wrapping_sub(0x1000)))
        && !stack_pages.contains(&page(c.target))
        && !stack_pages.iter().any(|p| code_pages.contains(p))
        && !code_pages.contains(&page(c.target))
        && !reserved(c.target)
}

fn regs_map(regs: &[u64; 16]) -> BTreeMap<Gpr, u64> {
    Gpr::ALL.iter().map(|g| (*g, regs[*g as usize])).collect()
}

fn accepted(o: Option<AgentOutcome>) -> bool {
    matches!(
        o,
        Some(AgentOutcome::IgnoredIrrelevant | AgentOutcome::IgnoredCache | AgentOutcome::Raised)
    )
}

fn check_fidelity(c: &Case) -> Result<(), TestCaseError> {
    let text = vesim_model::cpu::decode::describe(&c.bytes, c.rip)
        .map(|d| d.2)
        .unwrap_or_else(|_| "(bad)".into());
    let req = VerdictRequest {
        bytes: c.bytes.clone(),
        regs: regs_map(&c.regs),
        rflags: c.rflags,
        rip: c.rip,
        old: c.old,
        gla: None,
        cs: layout::KERNEL_CS,
        cached: c.cached,
        monitored: c.monitored,
        profile: Profile::Fixed,
        map_next_page: false,
    };
    let v = match verdict::run(&req) {
        Ok(v) => v,
        Err(e) => {
            return Err(TestCaseError::reject(format!("layout: {e}")));
        }
    };
    let ereq = ExecRequest {
        bytes: c.bytes.clone(),
        regs: regs_map(&c.regs),
        rflags: c.rflags,
        mem: [(c.target, c.old)].into_iter().collect(),
        rip: c.rip,
    };
    let r = exec::run(&ereq).expect("the reference run is well-formed");
    let len = c.bytes.len() as u64;
    prop_assert_eq!(&r.outcome, &Outcome::Executed, "{}", text);
    prop_assert_eq!(r.length as u64, len, "{}", text);
    prop_assert!(v.stop.is_none(), "{}: agent stopped: {:?}", text, v.stop);
    prop_assert!(
        accepted(v.outcome),
        "{}: an accepted form was refused: {:?} {:?}",
        text,
        v.outcome,
        v.reason
    );
    prop_assert_eq!(v.gla, c.target, "{}", text);
    let rf = Rflags::RF.bits();
    prop_assert_eq!(r.rip, c.rip + len, "{}: reference RIP", text);
    prop_assert_eq!(v.rip, c.rip + len, "{}: agent RIP", text);
    prop_assert_eq!(v.entry, r.mem[&c.target], "{}: entry after", text);
    for g in Gpr::ALL {
        prop_assert_eq!(
            v.regs[g as usize],
            r.regs[g as usize],
            "{}: register {}",
            text,
            g.name()
        );
    }
    prop_assert_eq!(v.rflags & !rf, r.rflags & !rf, "{}: RFLAGS", text);
    // Flags the form does not define keep their input value, in both.
    let keep = !(c.form.defined_flags().bits() | rf);
    prop_assert_eq!(
        v.rflags & keep,
        c.rflags & keep,
        "{}: agent kept flags",
        text
    );
    prop_assert_eq!(
        r.rflags & keep,
        c.rflags & keep,
        "{}: reference kept flags",
        text
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(FIDELITY_CASES))]

    /// I2: the agent's emulation of every accepted form equals the reference CPU's execution.
    #[test]
    fn i2_agent_emulation_equals_the_reference_cpu(r in raw()) {
        match realize(&r) {
            Some(c) => check_fidelity(&c)?,
            None => return Err(TestCaseError::reject("layout")),
        }
    }
}

// =============================================================================================
// 2. Rejection order (VE-SEMANTICS section 2)
// =============================================================================================

/// The entry of the rejection rows (8-aligned, outside every region the guest model uses).
const T: u64 = 0x1000_0000;
/// A stack pointer outside the kernel stacks, for the explicit `[rsp+x]` rows.
const RSP_ELSEWHERE: u64 = 0xFFFF_A000_0010_0000;

/// One hand-made encoding and the reason each profile reports (`None`: accepted).
struct Row {
    what: &'static str,
    bytes: &'static [u8],
    regs: &'static [(Gpr, u64)],
    /// The faulting GLA; `None`: the reference CPU's first access.
    gla: Option<u64>,
    cs: u16,
    fixed: Option<RejectReason>,
    hvmi: Option<RejectReason>,
}

/// The reason is the same in both profiles.
const fn both(
    what: &'static str,
    bytes: &'static [u8],
    regs: &'static [(Gpr, u64)],
    gla: Option<u64>,
    reason: Option<RejectReason>,
) -> Row {
    Row {
        what,
        bytes,
        regs,
        gla,
        cs: layout::KERNEL_CS,
        fixed: reason,
        hvmi: reason,
    }
}

const RAX_T: &[(Gpr, u64)] = &[(Gpr::Rax, T), (Gpr::Rbx, 0x2003)];
const RDI_T: &[(Gpr, u64)] = &[(Gpr::Rdi, T), (Gpr::Rax, 0x2003), (Gpr::Rcx, 1)];

/// The table. Reasons are worked out from VE-SEMANTICS section 2 and bddisasm's meanings:
/// `IsRepeated` only for F2/F3 on a string instruction, `HasSeg` (the pinned bddisasm 1.x in
/// 64-bit mode) for 2E/3E/64/65 and not for 26/36, `StackAccess` only for implicit stack
/// accesses.
fn rejection_rows() -> Vec<Row> {
    use RejectReason::*;
    // RIP is 0x400000: a RIP-relative operand of an instruction of length n with disp32 d is
    // at 0x400000 + n + d.
    vec![
        Row {
            what: "user CS, rep es stosq (CS before everything)",
            bytes: &[0xF3, 0x26, 0x48, 0xAB],
            regs: RDI_T,
            gla: Some(T),
            cs: 0x33,
            fixed: Some(CsNotKernel),
            hvmi: Some(CsNotKernel),
        },
        Row {
            what: "kernel-mode CS 0x08 (not exactly 0x10), undecodable bytes",
            bytes: &[0x06],
            regs: RAX_T,
            gla: Some(T),
            cs: 0x08,
            fixed: Some(CsNotKernel),
            hvmi: Some(CsNotKernel),
        },
        both(
            "es lock mov (LOCK on MOV is #UD)",
            &[0x26, 0xF0, 0x48, 0x89, 0x18],
            RAX_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "rep lock stosq (LOCK on STOS is #UD)",
            &[0xF3, 0xF0, 0x48, 0xAB],
            RDI_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "push es (invalid in 64-bit mode)",
            &[0x06],
            RAX_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "rep es stosq: REP before the segment prefix",
            &[0xF3, 0x26, 0x48, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both(
            "repne fs stosq",
            &[0xF2, 0x64, 0x48, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both(
            "rep stosd: REP before the size",
            &[0xF3, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both("rep movsq", &[0xF3, 0x48, 0xA5], RDI_T, Some(T), Some(Rep)),
        both(
            "F3 on MOV is not REP, and ES is not HasSeg: f3 es mov [rax], rbx is emulated",
            &[0xF3, 0x26, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "ds prefix (ignored in 64-bit mode) still counts",
            &[0x3E, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            Some(SegmentPrefix),
        ),
        both(
            "ss prefix on a plain mov: not HasSeg in 1.x's 64-bit mode, emulated",
            &[0x36, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "cs prefix with a RIP-relative operand",
            // 2E 48 89 05 d32: length 8, 0x400008 + 0x0FBF_FFF8 = T.
            &[0x2E, 0x48, 0x89, 0x05, 0xF8, 0xFF, 0xBF, 0x0F],
            RAX_T,
            None,
            Some(SegmentPrefix),
        ),
        both(
            "fs push qword [rax]: segment before stack",
            &[0x64, 0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(SegmentPrefix),
        ),
        both(
            "gs add [rax+1], rbx: segment before misaligned and unsupported",
            &[0x65, 0x48, 0x01, 0x58, 0x01],
            RAX_T,
            Some(T + 1),
            Some(SegmentPrefix),
        ),
        both(
            "RIP-relative 4-byte mov",
            // 89 05 d32: length 6, 0x400006 + 0x0FBF_FFFA = T.
            &[0x89, 0x05, 0xFA, 0xFF, 0xBF, 0x0F],
            RAX_T,
            None,
            Some(RipRelative),
        ),
        both(
            "RIP-relative misaligned qword mov",
            // 48 89 05 d32: length 7, 0x400007 + 0x0FBF_FFFA = T + 1.
            &[0x48, 0x89, 0x05, 0xFA, 0xFF, 0xBF, 0x0F],
            RAX_T,
            Some(T + 1),
            Some(RipRelative),
        ),
        both(
            "push word [rip+x]: RIP-relative before stack and size",
            // 66 FF 35 d32: length 7, 0x400007 + 0x0FBF_FFF9 = T.
            &[0x66, 0xFF, 0x35, 0xF9, 0xFF, 0xBF, 0x0F],
            RAX_T,
            Some(T),
            Some(RipRelative),
        ),
        both(
            "push qword [rax] (FF 30) is an implicit stack access",
            &[0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "pop qword [rax]",
            &[0x8F, 0x00],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "push word [rax]: stack before size",
            &[0x66, 0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "push rax: stack before not-memory",
            &[0x50],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "explicit [rsp+0x4000] with a 4-byte operand is a size defect, not a stack access",
            &[0x89, 0x84, 0x24, 0x00, 0x40, 0x00, 0x00],
            &[(Gpr::Rsp, RSP_ELSEWHERE), (Gpr::Rax, 0x2003)],
            None,
            Some(Size),
        ),
        both(
            "explicit [rsp+0x4000] qword mov is accepted",
            &[0x48, 0x89, 0x84, 0x24, 0x00, 0x40, 0x00, 0x00],
            &[(Gpr::Rsp, RSP_ELSEWHERE), (Gpr::Rax, 0x2003)],
            None,
            None,
        ),
        both(
            "mov rbx, [rax]: operand 0 is a register",
            &[0x48, 0x8B, 0x18],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov ebx, [rax]: not-memory before size",
            &[0x8B, 0x18],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov rbx, rax: no memory operand at all",
            &[0x48, 0x89, 0xC3],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "ud2: no operand",
            &[0x0F, 0x0B],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov [rax], ebx with a GLA mismatch and misaligned: size first",
            &[0x89, 0x18],
            &[(Gpr::Rax, T + 3), (Gpr::Rbx, 0x2003)],
            Some(T + 0x10),
            Some(Size),
        ),
        both(
            "mov [rax], ds: a 2-byte store",
            &[0x48, 0x8C, 0x18],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "movaps [rax], xmm0: a 16-byte store",
            &[0x0F, 0x29, 0x00],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "cmpxchg16b [rax]",
            &[0x48, 0x0F, 0xC7, 0x08],
            RAX_T,
            Some(T),
            Some(Size),
        ),
        both("stosw", &[0x66, 0xAB], RDI_T, None, Some(Size)),
        both(
            "mov [rax], rbx with RAX misaligned and the GLA elsewhere: mismatch first",
            &[0x48, 0x89, 0x18],
            &[(Gpr::Rax, T + 3), (Gpr::Rbx, 0x2003)],
            Some(T + 0x13),
            Some(GlaMismatch),
        ),
        both(
            "add [rax], rbx with the GLA elsewhere: mismatch before unsupported",
            &[0x48, 0x01, 0x18],
            RAX_T,
            Some(T + 8),
            Some(GlaMismatch),
        ),
        both(
            "add [rax], rbx misaligned: misaligned before unsupported",
            &[0x48, 0x01, 0x18],
            &[(Gpr::Rax, T + 4), (Gpr::Rbx, 1)],
            None,
            Some(Misaligned),
        ),
        both(
            "lock or [rax], rbx misaligned",
            &[0xF0, 0x48, 0x09, 0x18],
            &[(Gpr::Rax, T + 1), (Gpr::Rbx, 1)],
            None,
            Some(Misaligned),
        ),
        both(
            "add [rax], rbx",
            &[0x48, 0x01, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "xadd [rax], rbx",
            &[0x48, 0x0F, 0xC1, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movnti [rax], rbx",
            &[0x48, 0x0F, 0xC3, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "inc qword [rax]",
            &[0x48, 0xFF, 0x00],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movq [rax], xmm0",
            &[0x66, 0x48, 0x0F, 0x7E, 0x00],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "bt [rax], rbx (reads only; RBX = 5 keeps the bit-string address at RAX)",
            &[0x48, 0x0F, 0xA3, 0x18],
            &[(Gpr::Rax, T), (Gpr::Rbx, 5)],
            Some(T),
            Some(UnsupportedInstruction),
        ),
        both(
            "lock add [rax], rbx",
            &[0xF0, 0x48, 0x01, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movsq: a string destination is memory operand 0, but MOVS is not emulated",
            &[0x48, 0xA5],
            RDI_T,
            Some(T),
            Some(UnsupportedInstruction),
        ),
        both(
            "movsq with RDI misaligned: misaligned before unsupported",
            &[0x48, 0xA5],
            &[(Gpr::Rdi, T + 2)],
            Some(T + 2),
            Some(Misaligned),
        ),
        both(
            "stosq with the GLA elsewhere than RDI",
            &[0x48, 0xAB],
            RDI_T,
            Some(T + 8),
            Some(GlaMismatch),
        ),
        both(
            "stosq with RDI misaligned",
            &[0x48, 0xAB],
            &[(Gpr::Rdi, T + 4), (Gpr::Rax, 0x2003)],
            None,
            Some(Misaligned),
        ),
        both(
            "xchg rbx, rax: register operands only",
            &[0x48, 0x87, 0xC3],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "cmpxchg [rax], ebx",
            &[0x0F, 0xB1, 0x18],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "F3 48 89 18 is not REP (XRELEASE mov): accepted",
            &[0xF3, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "F2 on a plain mov is not REP either: accepted",
            &[0xF2, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "stosq [edi] under 0x67: EDI is the address, accepted",
            &[0x67, 0x48, 0xAB],
            &[(Gpr::Rdi, 0xABCD_0000_0000_0000 | T), (Gpr::Rax, 0x2003)],
            None,
            None,
        ),
        Row {
            what: "bts [rax], rbx with RBX = 64: bit-string address rax + 8 (Q4)",
            bytes: &[0x48, 0x0F, 0xAB, 0x18],
            regs: &[(Gpr::Rax, T - 8), (Gpr::Rbx, 64)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
        Row {
            what: "btr [rax], rbx with RBX = -1: bit-string address rax - 8 (Q4)",
            bytes: &[0x48, 0x0F, 0xB3, 0x18],
            regs: &[(Gpr::Rax, T + 8), (Gpr::Rbx, u64::MAX)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
        Row {
            what: "mov [eax+0x10], rbx with EAX = 0xFFFFFFF8: wraps to 8 under 0x67 (Q31)",
            bytes: &[0x67, 0x48, 0x89, 0x58, 0x10],
            regs: &[(Gpr::Rax, 0xFFFF_FFF8), (Gpr::Rbx, 0x2003)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
    ]
}

fn run_row(row: &Row, profile: Profile) -> Verdict {
    let req = VerdictRequest {
        bytes: row.bytes.to_vec(),
        regs: row.regs.iter().copied().collect(),
        rflags: 0x2,
        rip: FIDELITY_RIP,
        old: 0x1003,
        gla: row.gla,
        cs: row.cs,
        cached: false,
        monitored: true,
        profile,
        map_next_page: false,
    };
    verdict::run(&req).unwrap_or_else(|e| panic!("{}: {e}", row.what))
}

/// The rows that disagree with their expected reasons, one line each.
fn row_failures(rows: &[Row]) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows {
        for (profile, expected) in [(Profile::Fixed, row.fixed), (Profile::Hvmi, row.hvmi)] {
            let v = run_row(row, profile);
            let ok = match expected {
                None => accepted(v.outcome) && v.reason.is_none(),
                Some(r) => {
                    let refused = match profile {
                        Profile::Fixed => matches!(
                            v.outcome,
                            Some(AgentOutcome::EmulatedByIntrocore | AgentOutcome::Rejected)
                        ),
                        Profile::Hvmi => v.outcome == Some(AgentOutcome::Rejected),
                    };
                    refused && v.reason == Some(r)
                }
            };
            if !ok || v.stop.is_some() {
                failures.push(format!(
                    "{} [{profile}]: expected {:?}, got {:?} {:?} (stop {:?})",
                    row.what,
                    expected.map(RejectReason::name),
                    v.outcome.map(AgentOutcome::name),
                    v.reason.map(RejectReason::name),
                    v.stop
                ));
            }
        }
    }
    failures
}

/// VE-SEMANTICS section 2: with several defects, the reason is the first in the order
/// cs_not_kernel, decode_error, rep, segment_prefix, rip_relative, stack_access, not_memory,
/// size, gla_mismatch, misaligned, unsupported_instruction. `fixed` refuses with
/// emulated_by_introcore or rejected, `hvmi` with rejected (the break).
#[test]
fn section2_rejection_reason_is_the_first_defect_in_order() {
    let failures = row_failures(&rejection_rows());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// VE-SEMANTICS section 2: `StackAccess` is bddisasm's, set by any implicit stack operand (its
/// `K` operands). LEAVE is named in the spec's list (`sBP,rBP,rSP,Kv` in bddisasm's table), and
/// INT3, INT n and INT1 push their frame (`Kv3`): stack_access, which comes before not_memory.
#[test]
fn section2_leave_and_int_are_implicit_stack_accesses() {
    use RejectReason::StackAccess;
    let rows = [
        both("leave", &[0xC9], RAX_T, Some(T), Some(StackAccess)),
        both(
            "leave (16-bit)",
            &[0x66, 0xC9],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both("int3", &[0xCC], RAX_T, Some(T), Some(StackAccess)),
        both("int 3", &[0xCD, 0x03], RAX_T, Some(T), Some(StackAccess)),
        both("int1", &[0xF1], RAX_T, Some(T), Some(StackAccess)),
    ];
    let failures = row_failures(&rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// VE-SEMANTICS section 2: operand 0 is bddisasm's first operand (explicit operands first,
/// then implicit ones). MASKMOVQ (`Pq,Nq` + implicit `pDIq`), MASKMOVDQU (`Vdq,Udq` +
/// `pDIdq`) and XLATB (no explicit operand, implicit `AL,pBXALb`) have a register operand 0:
/// not_memory, which comes before size and unsupported_instruction.
#[test]
fn section2_operand_0_follows_bddisasm() {
    use RejectReason::NotMemory;
    const RDI_RAX_RBX_T: &[(Gpr, u64)] = &[(Gpr::Rdi, T), (Gpr::Rax, T), (Gpr::Rbx, T)];
    let rows = [
        both(
            "maskmovq mm0, mm1 (an 8-byte masked store to [rdi])",
            &[0x0F, 0xF7, 0xC1],
            RDI_RAX_RBX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "maskmovdqu xmm0, xmm1",
            &[0x66, 0x0F, 0xF7, 0xC1],
            RDI_RAX_RBX_T,
            Some(T),
            Some(NotMemory),
        ),
        both("xlatb", &[0xD7], RDI_RAX_RBX_T, Some(T), Some(NotMemory)),
    ];
    let failures = row_failures(&rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// =============================================================================================
// A world where the guest executes page-table writes for real (properties 3–6)
// =============================================================================================

/// VCPU i's code page.
const CODE_GVA: u64 = 0xFFFF_F800_0030_0000;
/// Two data regions, each with its own page-table page (a PT covers 2 MiB); the second is in
/// the user half (supervisor pages), where a page walk that finds nothing to set raises (B66).
const REGIONS: [u64; 2] = [0xFFFF_F800_0040_0000, 0x0000_0000_4000_0000];
/// Pages 0..8 of a region: their PTEs are written, the pages are never accessed.
const TARGET_PAGES: u64 = 8;
/// Pages 8..12 of a region: read and written by the guest (page walks); their PTEs only have
/// A cleared.
const WALK_PAGES: u64 = 4;
const PAGES: u64 = TARGET_PAGES + WALK_PAGES;
/// An entry index no page uses, for the monitor that keeps a table page convertible.
const ANCHOR_INDEX: u64 = 500;

fn target_page(t: u8) -> u64 {
    let t = u64::from(t) % (2 * TARGET_PAGES);
    REGIONS[(t / TARGET_PAGES) as usize] + (t % TARGET_PAGES) * 0x1000
}

fn walk_page(k: u8) -> u64 {
    let k = u64::from(k) % (2 * WALK_PAGES);
    REGIONS[(k / WALK_PAGES) as usize] + (TARGET_PAGES + k % WALK_PAGES) * 0x1000
}

fn pte_gla(page: u64) -> u64 {
    self_map_entry_address(layout::DEFAULT_SELF_MAP_INDEX, Gla(page), 1).0
}

/// How a page-table write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    MovR,
    MovI32,
    Xchg,
    LockCmpxchg,
    OrI8,
    AndI8,
    XorI32,
    Bts,
    Btr,
    Btc,
    LockOrR,
    Stos,
    /// `mov [rax], ebx`: refused (size); `fixed` has introcore emulate it.
    Size32,
    /// `ds mov [rax], rbx`: refused (segment prefix); `fixed` has introcore emulate it.
    DsPrefix,
}

impl How {
    fn agent_supported(self) -> bool {
        !matches!(self, How::Size32 | How::DsPrefix)
    }
}

/// One guest operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GOp {
    /// A write to the PTE of target page `target`.
    Write { target: u8, how: How, pick: u8 },
    /// `btr [pte], 5` on a walk page's PTE (irrelevant: A is not monitored).
    ClearA { walk: u8 },
    /// A read or write of a walk page (a page-walk #VE when its PTE lacks A or D).
    Walk { walk: u8, write: bool },
}

/// The last instruction of a program, which the agent refuses and nobody can perform: in
/// `fixed` ADD (introcore answers Unsupported, `rejected`), in `hvmi` a 4-byte MOV (the break).
/// Either repeats until the step budget ends (Q1 / I10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Terminal {
    target: u8,
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        Just(How::MovR),
        Just(How::MovI32),
        Just(How::Xchg),
        Just(How::LockCmpxchg),
        Just(How::OrI8),
        Just(How::AndI8),
        Just(How::XorI32),
        Just(How::Bts),
        Just(How::Btr),
        Just(How::Btc),
        Just(How::LockOrR),
        Just(How::Stos),
        Just(How::Size32),
        Just(How::DsPrefix),
    ]
}

fn gop() -> impl Strategy<Value = GOp> {
    prop_oneof![
        6 => (0u8..16, how(), any::<u8>())
            .prop_map(|(target, how, pick)| GOp::Write { target, how, pick }),
        1 => (0u8..8).prop_map(|walk| GOp::ClearA { walk }),
        2 => (0u8..8, any::<bool>()).prop_map(|(walk, write)| GOp::Walk { walk, write }),
    ]
}

/// Values XORed into a PTE: no change, A|D, RW, XD, a PFN bit, an ignored bit, P, bit 52, US.
const FLIPS: [u64; 9] = [0, 0x60, 0x2, 1 << 63, 0x1000, 0x200, 0x1, 1 << 52, 0x4];
const OR8: [u8; 5] = [0x00, 0x60, 0x02, 0x04, 0x80];
const AND8: [u8; 5] = [0xFF, 0x9F, 0xFD, 0xFE, 0x7F];
const XOR32: [u32; 6] = [0, 0x60, 0x2, 0x1000, 0x200, 0x8000_0000];
const BITS: [u8; 8] = [1, 5, 6, 9, 12, 63, 0, 2];

fn mov_imm64(code: &mut Vec<u8>, reg: u8, v: u64) {
    code.extend_from_slice(&[0x48, 0xB8 + reg]);
    code.extend_from_slice(&v.to_le_bytes());
}

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBX: u8 = 3;
const RDI: u8 = 7;

/// Appends the instructions of `op`; `base` is the PTE value the values are derived from.
fn assemble(code: &mut Vec<u8>, op: GOp, base: impl Fn(u64) -> u64) {
    match op {
        GOp::Write { target, how, pick } => {
            let page = target_page(target);
            let gla = pte_gla(page);
            let old = base(page);
            let v = old ^ FLIPS[pick as usize % FLIPS.len()];
            let p = pick as usize;
            match how {
                How::MovR | How::Xchg | How::LockOrR | How::Size32 | How::DsPrefix => {
                    mov_imm64(code, RAX, gla);
                    mov_imm64(code, RBX, v);
                    code.extend_from_slice(match how {
                        How::MovR => &[0x48, 0x89, 0x18],
                        How::Xchg => &[0x48, 0x87, 0x18],
                        How::LockOrR => &[0xF0, 0x48, 0x09, 0x18],
                        How::Size32 => &[0x89, 0x18],
                        _ => &[0x3E, 0x48, 0x89, 0x18],
                    });
                }
                How::MovI32 => {
                    mov_imm64(code, RAX, gla);
                    code.extend_from_slice(&[0x48, 0xC7, 0x00]);
                    code.extend_from_slice(&(v as u32).to_le_bytes());
                }
                How::LockCmpxchg => {
                    mov_imm64(code, RCX, gla);
                    mov_imm64(code, RAX, old);
                    mov_imm64(code, RBX, v);
                    code.extend_from_slice(&[0xF0, 0x48, 0x0F, 0xB1, 0x19]);
                }
                How::OrI8 => {
                    mov_imm64(code, RAX, gla);
                    code.extend_from_slice(&[0x48, 0x83, 0x08, OR8[p % OR8.len()]]);
                }
                How::AndI8 => {
                    mov_imm64(code, RAX, gla);
                    code.extend_from_slice(&[0x48, 0x83, 0x20, AND8[p % AND8.len()]]);
                }
                How::XorI32 => {
                    mov_imm64(code, RAX, gla);
                    code.extend_from_slice(&[0x48, 0x81, 0x30]);
                    code.extend_from_slice(&XOR32[p % XOR32.len()].to_le_bytes());
                }
                How::Bts | How::Btr | How::Btc => {
                    mov_imm64(code, RAX, gla);
                    let modrm = match how {
                        How::Bts => 0x28,
                        How::Btr => 0x30,
                        _ => 0x38,
                    };
                    code.extend_from_slice(&[0x48, 0x0F, 0xBA, modrm, BITS[p % BITS.len()]]);
                }
                How::Stos => {
                    mov_imm64(code, RDI, gla);
                    mov_imm64(code, RAX, v);
                    code.extend_from_slice(&[0x48, 0xAB]);
                }
            }
        }
        GOp::ClearA { walk } => {
            mov_imm64(code, RAX, pte_gla(walk_page(walk)));
            code.extend_from_slice(&[0x48, 0x0F, 0xBA, 0x30, 0x05]);
        }
        GOp::Walk { walk, write } => {
            mov_imm64(code, RDX, walk_page(walk));
            code.extend_from_slice(if write {
                &[0x48, 0x89, 0x0A]
            } else {
                &[0x48, 0x8B, 0x0A]
            });
        }
    }
}

fn assemble_terminal(code: &mut Vec<u8>, t: Terminal, quirks: &Quirks, base: impl Fn(u64) -> u64) {
    // Region 0, whose table always carries the anchor monitor, so the write faults.
    let page = target_page(t.target % TARGET_PAGES as u8);
    mov_imm64(code, RAX, pte_gla(page));
    mov_imm64(code, RBX, base(page) ^ 0x2);
    if quirks.q1_break_loop {
        code.extend_from_slice(&[0x89, 0x18]); // mov [rax], ebx: size
    } else {
        code.extend_from_slice(&[0x48, 0x01, 0x18]); // add [rax], rbx: unsupported
    }
}

/// The world of properties 3–6.
struct PtWorld {
    w: World,
    /// Code page of each VCPU.
    code: Vec<Gpa>,
    /// Where each VCPU's program ends.
    end: Vec<u64>,
    /// PTE value of each data page after the set-up, by linear address.
    initial: BTreeMap<u64, u64>,
    /// The page-table page of each region.
    tables: [Gpa; 2],
}

impl PtWorld {
    fn new(quirks: Quirks, vcpus: usize) -> PtWorld {
        Self::with_views(quirks, vcpus, (0, 1))
    }

    /// A world whose untrusted and protected views have the given EPTP indices.
    fn with_views(quirks: Quirks, vcpus: usize, views: (u16, u16)) -> PtWorld {
        Self::with_machine(quirks, vcpus, views, MachineConfig::default())
    }

    /// ... and the given machine options.
    fn with_machine(
        quirks: Quirks,
        vcpus: usize,
        (untrusted, protected): (u16, u16),
        machine: MachineConfig,
    ) -> PtWorld {
        let config = WorldConfig {
            machine,
            guest: GuestConfig {
                vcpus,
                untrusted_view: vesim_model::ViewId(untrusted),
                protected_view: vesim_model::ViewId(protected),
                ..GuestConfig::default()
            },
            quirks,
            ..WorldConfig::default()
        };
        let mut w = World::new(config).unwrap();
        let mut code = Vec::new();
        for cpu in 0..vcpus as u64 {
            let g = w
                .guest
                .map_new(&mut w.machine, CODE_GVA + cpu * 0x1000, PteFlags::empty())
                .unwrap();
            code.push(g);
        }
        let mut initial = BTreeMap::new();
        for region in REGIONS {
            for i in 0..PAGES {
                let page = region + i * 0x1000;
                w.guest
                    .map_new(
                        &mut w.machine,
                        page,
                        PteFlags::WRITABLE | PteFlags::NO_EXECUTE,
                    )
                    .unwrap();
            }
        }
        let mut tables = [Gpa(0); 2];
        for (r, region) in REGIONS.iter().enumerate() {
            tables[r] = w
                .guest
                .entry_gpa(&w.machine, *region, 1)
                .unwrap()
                .page_base();
            for i in 0..PAGES {
                let page = region + i * 0x1000;
                let e = w.guest.entry_gpa(&w.machine, page, 1).unwrap();
                initial.insert(page, w.machine.mem.read_u64(e));
            }
        }
        PtWorld {
            w,
            code,
            end: vec![0; vcpus],
            initial,
            tables,
        }
    }

    fn pte_gpa(&self, page: u64) -> Gpa {
        let r = usize::from(page >> 63 == 0);
        self.tables[r].wrapping_add(((page >> 12) & 0x1FF) * 8)
    }

    /// Places the monitors: the anchor of region 0 (and of region 1 if `anchor1`), and one
    /// on the PTE of each data page listed (`pages` index r * PAGES + i).
    fn monitor(&mut self, anchor1: bool, pages: &[u8]) {
        self.w
            .place_monitor(self.tables[0].wrapping_add(ANCHOR_INDEX * 8));
        if anchor1 {
            self.w
                .place_monitor(self.tables[1].wrapping_add(ANCHOR_INDEX * 8));
        }
        for p in pages {
            let p = u64::from(*p) % (2 * PAGES);
            let page = REGIONS[(p / PAGES) as usize] + (p % PAGES) * 0x1000;
            let e = self.pte_gpa(page);
            self.w.place_monitor(e);
        }
        self.w.commit_hooks();
    }

    /// Loads VCPU `cpu`'s program (RIP at its start).
    fn load(&mut self, cpu: usize, ops: &[GOp], terminal: Option<Terminal>) {
        let mut code = Vec::new();
        let initial = self.initial.clone();
        let base = |page: u64| initial.get(&page).copied().unwrap_or(0);
        for op in ops {
            assemble(&mut code, *op, base);
        }
        if let Some(t) = terminal {
            let q = self.w.quirks;
            assemble_terminal(&mut code, t, &q, base);
        }
        // With a terminal the end is never reached: the refused write repeats (Q1, I10).
        let start = CODE_GVA + cpu as u64 * 0x1000;
        self.end[cpu] = start + code.len() as u64;
        assert!(code.len() < 0x1000, "program too long");
        self.w.machine.mem.write(self.code[cpu], &code);
        self.w.vcpus[cpu].rip = start;
    }

    fn done(&self, cpu: usize) -> bool {
        self.w.vcpus[cpu].rip == self.end[cpu] || self.w.stopped[cpu].is_some()
    }

    /// The VCPU to step next: the `k`-th of those not done.
    fn pick(&self, k: u8) -> Option<usize> {
        let live: Vec<usize> = (0..self.w.vcpus.len()).filter(|c| !self.done(*c)).collect();
        (!live.is_empty()).then(|| live[usize::from(k) % live.len()])
    }

    fn in_agent(&self, cpu: usize) -> bool {
        let rip = self.w.vcpus[cpu].rip;
        self.w.rip_in_agent(rip) || rip == layout::OS_VE_HANDLER_GVA
    }

    fn quiescent(&self) -> bool {
        (0..self.w.vcpus.len()).all(|c| !self.in_agent(c))
    }

    /// Finishes every agent invocation in flight, stepping the VCPUs inside the agent in turn
    /// (one may spin on a lock another holds), at most `steps_max` rounds.
    fn drain(&mut self, steps_max: u64) {
        for _ in 0..steps_max {
            let inside: Vec<usize> = (0..self.w.vcpus.len())
                .filter(|c| self.in_agent(*c) && self.w.stopped[*c].is_none())
                .collect();
            if inside.is_empty() {
                return;
            }
            for c in inside {
                let _ = self.w.step(c);
            }
        }
    }
}

fn program() -> impl Strategy<Value = Vec<GOp>> {
    prop::collection::vec(gop(), 1..24)
}

/// `hvmi` cannot run refused writes except as the terminal (Q1): turn them into MOVs.
fn for_profile(ops: Vec<GOp>, quirks: &Quirks) -> Vec<GOp> {
    ops.into_iter()
        .map(|op| match op {
            GOp::Write { target, how, pick } if quirks.q1_break_loop && !how.agent_supported() => {
                GOp::Write {
                    target,
                    how: How::MovR,
                    pick,
                }
            }
            op => op,
        })
        .collect()
}

fn profile() -> impl Strategy<Value = Profile> {
    prop_oneof![Just(Profile::Fixed), Just(Profile::Hvmi)]
}

/// A multi-VCPU scenario.
#[derive(Clone, Debug)]
struct Scenario {
    profile: Profile,
    programs: Vec<Vec<GOp>>,
    terminal: Vec<Option<Terminal>>,
    monitors: Vec<u8>,
    anchor1: bool,
    schedule: Vec<u8>,
    /// (untrusted, protected) EPTP indices.
    views: (u16, u16),
    /// The walker's HVMI-observed A/D behaviour and the EPTP-index erratum.
    machine: MachineConfig,
}

fn views() -> impl Strategy<Value = (u16, u16)> {
    prop_oneof![
        Just((0u16, 1u16)),
        Just((1, 0)),
        Just((2, 5)),
        Just((3, 1)),
        Just((511, 7))
    ]
}

prop_compose! {
    fn scenario(profiles: BoxedStrategy<Profile>, terminal_p: f64)(
        profile in profiles,
        programs in prop::collection::vec(program(), 1..=2),
        terminal in prop::collection::vec(
            prop::option::weighted(terminal_p, (0u8..16).prop_map(|target| Terminal { target })),
            2,
        ),
        monitors in prop::collection::vec(0u8..24, 0..10),
        anchor1 in any::<bool>(),
        schedule in prop::collection::vec(any::<u8>(), 1..64),
        views in views(),
        shared in prop::option::of((4u8..8, any::<bool>())),
        (ad_writes_all_levels, eptp_index_reads_zero) in (any::<bool>(), any::<bool>()),
    ) -> Scenario {
        let machine = MachineConfig {
            ad_writes_all_levels,
            eptp_index_reads_zero,
            ..MachineConfig::default()
        };
        // Every VCPU starting with the same walk of a user-half page: when two walks overlap,
        // the second agent finds nothing to set and raises (B66).
        let programs = programs
            .into_iter()
            .map(|p| match shared {
                Some((walk, write)) => {
                    let mut q = vec![GOp::Walk { walk, write }];
                    q.extend(p);
                    q
                }
                None => p,
            })
            .collect();
        Scenario { profile, programs, terminal, monitors, anchor1, schedule, views, machine }
    }
}

fn build(sc: &Scenario) -> PtWorld {
    let q = sc.profile.quirks();
    let mut pw = PtWorld::with_machine(q, sc.programs.len(), sc.views, sc.machine);
    pw.monitor(sc.anchor1, &sc.monitors);
    for (cpu, prog) in sc.programs.iter().enumerate() {
        let ops = for_profile(prog.clone(), &q);
        pw.load(cpu, &ops, sc.terminal.get(cpu).copied().flatten());
    }
    pw
}

/// Steps of one scenario run.
const SCENARIO_STEPS_MAX: usize = 4000;

// =============================================================================================
// 3. Protocol (I4)
// =============================================================================================

/// I4 bookkeeping of one VCPU.
#[derive(Clone, Copy, Debug, Default)]
struct Protocol {
    /// Between a #VE delivery and the agent's exit step.
    busy: bool,
    /// The view the VCPU was in when the #VE was delivered.
    from: Option<vesim_model::ViewId>,
}

fn semaphore(w: &World, cpu: usize) -> u32 {
    w.ve_page(cpu)
        .map_or(0, |page| VeInfo::semaphore(&w.machine.mem, page))
}

proptest! {
    #![proptest_config(config(PROTOCOL_CASES))]

    /// I4: after every step, the semaphore is non-zero exactly from the #VE delivery to the
    /// agent's exit step, no #VE is delivered while it is set, and the VCPU is back in the
    /// view it came from (never the protected view) once the agent returned.
    #[test]
    fn i4_semaphore_nesting_and_view(sc in scenario(profile().boxed(), 0.3)) {
        let mut pw = build(&sc);
        let n = pw.w.vcpus.len();
        let protected = pw.w.intro.protected;
        let exit_rip = layout::AGENT_GVA + agent_rip::STUB_EXIT;
        let return_rip = layout::AGENT_GVA + agent_rip::STUB_RETURN;
        let mut st = vec![Protocol::default(); n];
        for step in 0..SCENARIO_STEPS_MAX {
            let Some(cpu) = pw.pick(sc.schedule[step % sc.schedule.len()]) else { break };
            let rip_before = pw.w.vcpus[cpu].rip;
            let view_before = pw.w.vcpus[cpu].eptp_index;
            let events_before = pw.w.events.len();
            let r = pw.w.step(cpu);
            prop_assert!(r.is_ok(), "step {}: VCPU {} stopped: {:?}", step, cpu, r);
            let ves = pw.w.events[events_before..]
                .iter()
                .filter(|e| matches!(e, Event::Ve { cpu: c, .. } if *c == cpu))
                .count();
            prop_assert!(ves <= 1);
            if ves == 1 {
                prop_assert!(!st[cpu].busy, "step {}: a #VE was delivered while the semaphore was set", step);
                prop_assert_eq!(semaphore(&pw.w, cpu), 0xFFFF_FFFF);
                st[cpu] = Protocol { busy: true, from: Some(view_before) };
            }
            if rip_before == exit_rip {
                prop_assert!(st[cpu].busy, "step {}: exit step without a #VE", step);
                st[cpu].busy = false;
            }
            for (c, state) in st.iter().enumerate() {
                prop_assert_eq!(
                    semaphore(&pw.w, c) != 0,
                    state.busy,
                    "step {}: VCPU {} semaphore {:#x} at RIP {:#x}",
                    step, c, semaphore(&pw.w, c), pw.w.vcpus[c].rip
                );
                if !pw.in_agent(c) {
                    prop_assert_ne!(pw.w.vcpus[c].eptp_index, protected,
                        "step {}: VCPU {} runs guest code in the protected view", step, c);
                }
            }
            if rip_before == return_rip {
                prop_assert!(!pw.in_agent(cpu));
                prop_assert_eq!(Some(pw.w.vcpus[cpu].eptp_index), st[cpu].from,
                    "step {}: VCPU {} did not return to its view", step, cpu);
            }
        }
    }
}

// =============================================================================================
// 4. Statistics (I5)
// =============================================================================================

/// The identities of VE-SEMANTICS section 3 that fail: (harness, agent).
fn identity_failures(w: &World) -> (Vec<String>, Vec<String>) {
    let c = &w.counters;
    let mut harness = Vec::new();
    let check = |list: &mut Vec<String>, name: &str, a: u64, b: u64| {
        if a != b {
            list.push(format!("{name}: {a} != {b}"));
        }
    };
    check(
        &mut harness,
        "total = page walk + PT write + unknown",
        c.ve_total,
        c.ve_page_walk + c.ve_pt_write + c.ve_unknown,
    );
    check(
        &mut harness,
        "PT write = the five PT-write outcomes",
        c.ve_pt_write,
        c.ignored_irrelevant + c.ignored_cache + c.raised + c.emulated_by_introcore + c.rejected,
    );
    check(
        &mut harness,
        "page walk = set + raised",
        c.ve_page_walk,
        c.page_walk_set + c.page_walk_raised,
    );
    check(
        &mut harness,
        "cache hits = ignored_cache",
        c.cache_hits,
        c.ignored_cache,
    );
    check(
        &mut harness,
        "cache lookups = relevant accepted writes",
        c.cache_lookups,
        c.ignored_cache + c.raised,
    );
    let mut sum = [0u64; 6];
    let offs = [
        veinfo::VE_TOTAL,
        veinfo::VE_MM,
        veinfo::VE_PAGE_WALK,
        veinfo::VE_IGNORED_TOTAL,
        veinfo::VE_IGNORED_CACHE,
        veinfo::VE_IGNORED_IRRELEVANT,
    ];
    for cpu in 0..w.vcpus.len() {
        if let Some(page) = w.ve_page(cpu) {
            for (k, off) in offs.iter().enumerate() {
                sum[k] += w.machine.mem.read_u64(page.wrapping_add(*off));
            }
        }
    }
    let [total, mm, walk, ign_total, ign_cache, ign_irr] = sum;
    let mut agent = Vec::new();
    check(&mut agent, "VeTotal = total #VEs", total, c.ve_total);
    check(
        &mut agent,
        "VePageWalk = page-walk #VEs",
        walk,
        c.ve_page_walk,
    );
    check(
        &mut agent,
        "VeMm = PT-write #VEs not refused",
        mm,
        c.ignored_irrelevant + c.ignored_cache + c.raised,
    );
    check(
        &mut agent,
        "VeIgnoredIrrelevant = ignored_irrelevant",
        ign_irr,
        c.ignored_irrelevant,
    );
    check(
        &mut agent,
        "VeIgnoredCache = ignored_cache",
        ign_cache,
        c.ignored_cache,
    );
    check(
        &mut agent,
        "VeIgnoredTotal = irrelevant + cache + page walks not raised",
        ign_total,
        ign_irr + ign_cache + c.page_walk_set,
    );
    (harness, agent)
}

/// Runs a scenario, checking `at_rest` whenever no VCPU is inside the agent; returns the world
/// with every agent invocation finished.
fn run_scenario(
    sc: &Scenario,
    mut at_rest: impl FnMut(&World) -> Result<(), TestCaseError>,
) -> Result<World, TestCaseError> {
    let mut pw = build(sc);
    for step in 0..SCENARIO_STEPS_MAX {
        let Some(cpu) = pw.pick(sc.schedule[step % sc.schedule.len()]) else {
            break;
        };
        let r = pw.w.step(cpu);
        prop_assert!(r.is_ok(), "step {}: VCPU {} stopped: {:?}", step, cpu, r);
        if pw.quiescent() {
            at_rest(&pw.w)?;
        }
    }
    pw.drain(1000);
    prop_assert!(pw.quiescent());
    at_rest(&pw.w)?;
    Ok(pw.w)
}

proptest! {
    #![proptest_config(config(STATISTICS_CASES))]

    /// I5 in `fixed`: the harness counters and the agent's own counters (summed over VCPUs)
    /// obey every identity of VE-SEMANTICS section 3, whenever no agent is running.
    #[test]
    fn i5_fixed_counters_obey_the_identities(sc in scenario(Just(Profile::Fixed).boxed(), 0.3)) {
        run_scenario(&sc, |w| {
            let (h, a) = identity_failures(w);
            prop_assert!(h.is_empty() && a.is_empty(), "harness {:?}, agent {:?}", h, a);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(config(Q18_CASES))]

    /// Q18 in `hvmi`: once a break happened, an agent identity fails (VeIgnoredTotal also
    /// counts the break); the harness identities still hold.
    #[test]
    fn q18_hvmi_a_break_breaks_an_identity(
        sc in scenario(Just(Profile::Hvmi).boxed(), 0.1),
        t in 0u8..16,
    ) {
        let mut sc = sc;
        sc.terminal[0] = Some(Terminal { target: t });
        let w = run_scenario(&sc, |w| {
            let (h, _) = identity_failures(w);
            prop_assert!(h.is_empty(), "harness {:?}", h);
            Ok(())
        })?;
        let breaks = w.counters.vmcalls.get(&vesim::introcore::call::BREAK).copied().unwrap_or(0);
        prop_assert!(breaks >= 1, "no break happened");
        let (_, a) = identity_failures(&w);
        prop_assert!(
            a.iter().any(|f| f.starts_with("VeIgnoredTotal")),
            "VeIgnoredTotal holds after {} breaks (failures: {:?})",
            breaks,
            a
        );
    }
}

/// I5, harness side: "#VEs delivered by kind" must count every delivered #VE in a kind. A guest
/// that rewrites its 0x50 descriptor after deploy (a guest-controlled byte, I9) makes the agent
/// find CPU-map slot 0xFFFFFFFF and return at once (`fixed` Q20): the #VE must still be in a
/// kind (unknown: the agent never classified it), and the identities must hold. (The semaphore
/// stays set, so #VE is off on that VCPU from then on: the next write is an EPT-violation exit.)
#[test]
fn i5_every_delivered_ve_is_counted_in_a_kind() {
    let mut pw = PtWorld::new(Quirks::fixed(), 1);
    pw.monitor(false, &[0]);
    let write = GOp::Write {
        target: 0,
        how: How::MovR,
        pick: 2,
    };
    pw.load(0, &[write], None);
    pw.w.vcpus[0].seg50 = vesim::guest::seg50_for_cpu(5);
    for _ in 0..200 {
        if pw.done(0) {
            break;
        }
        pw.w.step(0).unwrap();
    }
    assert!(pw.done(0));
    assert_eq!(pw.w.counters.ve_total, 1);
    let (harness, _) = identity_failures(&pw.w);
    assert!(harness.is_empty(), "{harness:?}");
}

// =============================================================================================
// 5. Cache soundness (I7)
// =============================================================================================

/// One step of a cache scenario.
#[derive(Clone, Copy, Debug)]
enum COp {
    /// Place a monitor on entry `index` of region `region`'s table.
    Place { region: u8, index: u16 },
    /// Remove the `k`-th live monitor, then commit.
    Remove { k: u8 },
    /// `IntVeUpdateCacheEntry(entry, FALSE)` for an entry with no monitor.
    Add { region: u8, index: u16 },
    /// `IntVeUpdateCacheEntry(entry, TRUE)`.
    Evict { region: u8, index: u16 },
    /// The guest executes one operation (relevant writes to unmonitored entries raise and
    /// cache entries, B75).
    Guest(GOp),
    /// `gVePendingUnload` set or cleared (Q16: `fixed` still evicts meanwhile).
    PendingUnload(bool),
}

fn entry_index() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 0u16..16, 1 => 0u16..512]
}

fn cop() -> impl Strategy<Value = COp> {
    prop_oneof![
        3 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Place { region, index }),
        2 => any::<u8>().prop_map(|k| COp::Remove { k }),
        2 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Add { region, index }),
        1 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Evict { region, index }),
        5 => gop().prop_map(COp::Guest),
        1 => any::<bool>().prop_map(COp::PendingUnload),
    ]
}

proptest! {
    #![proptest_config(config(CACHE_CASES))]

    /// I7 in `fixed`: whatever the order of placements, removals, cache adds (by raises and by
    /// `update_cache`) and evictions, no monitored entry is in the agent cache, checked after
    /// every placement, every other operation and every step.
    #[test]
    fn i7_no_monitored_entry_is_cached(ops in prop::collection::vec(cop(), 1..48)) {
        let mut pw = PtWorld::new(Quirks::fixed(), 1);
        let mut live: Vec<MonitorId> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let entry = |pw: &PtWorld, region: u8, index: u16| {
                pw.tables[usize::from(region % 2)].wrapping_add(u64::from(index % 512) * 8)
            };
            match *op {
                COp::Place { region, index } => {
                    let e = entry(&pw, region, index);
                    live.push(pw.w.place_monitor(e));
                }
                COp::Remove { k } => {
                    if !live.is_empty() {
                        let id = live.remove(usize::from(k) % live.len());
                        pw.w.remove_monitor(id);
                        pw.w.commit_hooks();
                    }
                }
                COp::Add { region, index } => {
                    let e = entry(&pw, region, index);
                    if !pw.w.intro.ptm.is_monitored(e) {
                        pw.w.update_cache(e, false);
                    }
                }
                COp::Evict { region, index } => {
                    let e = entry(&pw, region, index);
                    pw.w.update_cache(e, true);
                }
                COp::PendingUnload(on) => pw.w.intro.pending_unload = on,
                COp::Guest(g) => {
                    pw.load(0, &[g], None);
                    for _ in 0..400 {
                        if pw.done(0) {
                            break;
                        }
                        let r = pw.w.step(0);
                        prop_assert!(r.is_ok(), "op {}: stopped: {:?}", n, r);
                        let bad = pw.w.cached_monitored_entries();
                        prop_assert!(bad.is_empty(), "op {} {:?}: cached monitored entries {:?}", n, op, bad);
                    }
                    prop_assert!(pw.done(0), "op {}: {:?} did not finish", n, g);
                }
            }
            let bad = pw.w.cached_monitored_entries();
            prop_assert!(bad.is_empty(), "after op {} {:?}: cached monitored entries {:?}", n, op, bad);
        }
    }
}

// =============================================================================================
// 6. Robustness (I9)
// =============================================================================================

/// Offsets of the information page's fields: the hardware part, the saved registers, the
/// rest of section C, and vesim's locals of the C handler.
fn info_fields() -> Vec<u64> {
    use vesim_model::ve_info as hw;
    let mut f = vec![
        hw::OFFSET_REASON,
        hw::OFFSET_SEMAPHORE,
        hw::OFFSET_QUALIFICATION,
        hw::OFFSET_GLA,
        hw::OFFSET_GPA,
        hw::OFFSET_EPTP_INDEX,
    ];
    f.extend((0..16).map(|i| veinfo::REGS + 8 * i));
    f.extend([
        veinfo::RIP,
        veinfo::CS,
        veinfo::RFLAGS,
        veinfo::CR0,
        veinfo::CR3,
        veinfo::PROTECTED_STACK,
        veinfo::ORIGINAL_STACK,
        veinfo::OLD_VALUE,
        veinfo::NEW_VALUE,
        veinfo::INSTRUCTION,
        veinfo::RAISED,
        veinfo::LOCAL_STATUS,
        veinfo::LOCAL_LENGTH,
        veinfo::LOCAL_LOCK,
        veinfo::LOCAL_REASON,
        veinfo::LOCAL_WALK,
        veinfo::LOCAL_OUTCOME,
        veinfo::LOCAL_INSN,
    ]);
    f
}

/// A guest-controlled corruption of the agent's state.
#[derive(Clone, Debug)]
enum Corruption {
    /// Bytes into VCPU `cpu`'s information page at `off`.
    Info {
        cpu: u8,
        off: u64,
        value: u64,
        len: u8,
    },
    /// A qword into VECACHE.
    Cache { off: u64, value: u64 },
    /// A CPU-map slot.
    CpuMap { slot: u64, value: u32 },
    /// The 0x50 descriptor of a VCPU.
    Seg50 {
        cpu: u8,
        limit: u32,
        granularity: bool,
    },
    /// A qword of the data section (self-map index, monitored bits, mitigations, locks).
    Data { off: u64, value: u64 },
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        (0u64..layout::AGENT_SIZE).prop_map(|o| layout::AGENT_GVA + o),
        (0u64..0x10_0000).prop_map(|o| layout::KERNEL_STACKS_GVA + o),
        (0u64..64),
        (0u64..0x1000).prop_map(|o| layout::GUEST_TABLES_START.0 + o * 8),
    ]
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        4 => (
            0u8..2,
            prop_oneof![
                3 => prop::sample::select(info_fields()),
                1 => 0u64..0x1000
            ],
            value(),
            1u8..=8
        )
            .prop_map(|(cpu, off, value, len)| Corruption::Info { cpu, off, value, len }),
        2 => (0u64..0x8000, value()).prop_map(|(slot, value)| Corruption::Cache {
            off: slot * 8,
            value
        }),
        2 => (0u64..64, prop_oneof![any::<u32>(), 0u32..4, Just(u32::MAX)])
            .prop_map(|(slot, value)| Corruption::CpuMap { slot, value }),
        2 => (0u8..2, any::<u32>(), any::<bool>()).prop_map(|(cpu, limit, granularity)| {
            Corruption::Seg50 { cpu, limit, granularity }
        }),
        1 => (prop_oneof![0u64..0x20, 0x40u64..0x80], value())
            .prop_map(|(off, value)| Corruption::Data { off: off & !7, value }),
    ]
}

fn apply(w: &mut World, c: &Corruption) {
    let agent = |off: u64| layout::AGENT_GPA.wrapping_add(off);
    match *c {
        Corruption::Info {
            cpu,
            off,
            value,
            len,
        } => {
            let page = agent(layout::AGENT_VEINFO + 0x1000 * u64::from(cpu));
            let len = usize::from(len).min((0x1000 - off) as usize);
            w.machine
                .mem
                .write(page.wrapping_add(off), &value.to_le_bytes()[..len]);
        }
        Corruption::Cache { off, value } => {
            w.machine
                .mem
                .write_u64(agent(layout::AGENT_VECACHE + off), value);
        }
        Corruption::CpuMap { slot, value } => {
            w.machine
                .mem
                .write_u32(agent(layout::AGENT_CPUMAP + 4 * slot), value);
        }
        Corruption::Seg50 {
            cpu,
            limit,
            granularity,
        } => {
            if let Some(v) = w.vcpus.get_mut(usize::from(cpu)) {
                v.seg50 = SegmentLimit { limit, granularity };
            }
        }
        Corruption::Data { off, value } => {
            w.machine
                .mem
                .write_u64(agent(layout::AGENT_DATA + off), value);
        }
    }
}

/// Every architecturally defined RFLAGS bit (bits 0–21 except the reserved 3, 5, 15).
const RFLAGS_DEFINED: u64 = 0x003F_7FD7;

/// One robustness scenario.
#[derive(Clone, Debug)]
struct Chaos {
    profile: Profile,
    vcpus: usize,
    /// Known operations before the arbitrary bytes (so the agent is in flight while the
    /// corruptions land).
    ops: [Vec<GOp>; 2],
    bytes: [[u8; 16]; 2],
    regs: [[u64; 16]; 2],
    /// Registers replaced by a monitored entry's address (+ a small offset).
    aim: [u16; 2],
    aim_off: u8,
    /// RSP arbitrary too (otherwise the VCPU's kernel stack).
    wild_rsp: [bool; 2],
    rflags: [u64; 2],
    corruptions: Vec<(u16, Corruption)>,
    schedule: Vec<u8>,
}

prop_compose! {
    fn chaos()(
        profile in profile(),
        vcpus in 1usize..=2,
        ops in [prop::collection::vec(gop(), 0..6), prop::collection::vec(gop(), 0..6)],
        bytes in any::<[[u8; 16]; 2]>(),
        regs in any::<[[u64; 16]; 2]>(),
        aim in any::<[u16; 2]>(),
        aim_off in 0u8..16,
        wild_rsp in [prop::bool::weighted(0.1), prop::bool::weighted(0.1)],
        rflags in any::<[u64; 2]>(),
        corruptions in prop::collection::vec((0u16..160, corruption()), 0..12),
        schedule in prop::collection::vec(any::<u8>(), 1..16),
    ) -> Chaos {
        Chaos {
            profile, vcpus, ops, bytes, regs, aim, aim_off, wild_rsp, rflags, corruptions, schedule,
        }
    }
}

/// Steps of one robustness run.
const CHAOS_STEPS_MAX: usize = 2000;

proptest! {
    #![proptest_config(config(ROBUSTNESS_CASES))]

    /// I9: arbitrary instruction bytes, registers and RFLAGS, and arbitrary bytes in the
    /// agent's information page, cache, CPU map, data section and 0x50 descriptors, written at
    /// arbitrary moments, never make a step panic: every VCPU runs or stops with a `Stop`.
    #[test]
    fn i9_nothing_guest_controlled_panics(c in chaos()) {
        let mut pw = PtWorld::new(c.profile.quirks(), c.vcpus);
        pw.monitor(true, &[0, 1, 2, 3, 12, 13]);
        let monitored = pte_gla(REGIONS[0]);
        let q = c.profile.quirks();
        for cpu in 0..c.vcpus {
            let mut code = Vec::new();
            let initial = pw.initial.clone();
            for op in for_profile(c.ops[cpu].clone(), &q) {
                assemble(&mut code, op, |page| initial.get(&page).copied().unwrap_or(0));
            }
            code.extend_from_slice(&c.bytes[cpu]);
            pw.w.machine.mem.write(pw.code[cpu], &code);
            let v = &mut pw.w.vcpus[cpu];
            v.rip = CODE_GVA + cpu as u64 * 0x1000;
            for g in 0..16 {
                if g == Gpr::Rsp as usize && !c.wild_rsp[cpu] {
                    continue;
                }
                v.gpr[g] = if c.aim[cpu] >> g & 1 != 0 {
                    monitored + u64::from(c.aim_off)
                } else {
                    c.regs[cpu][g]
                };
            }
            v.rflags = Rflags::from_bits_retain((c.rflags[cpu] & RFLAGS_DEFINED) | Rflags::FIXED1.bits());
        }
        for step in 0..CHAOS_STEPS_MAX {
            for (at, corruption) in &c.corruptions {
                if usize::from(*at) == step {
                    apply(&mut pw.w, corruption);
                }
            }
            let live: Vec<usize> = (0..c.vcpus).filter(|x| pw.w.stopped[*x].is_none()).collect();
            if live.is_empty() {
                break;
            }
            let cpu = live[usize::from(c.schedule[step % c.schedule.len()]) % live.len()];
            // Runs or stops with a value; a panic fails the property.
            let _ = pw.w.step(cpu);
        }
    }
}
