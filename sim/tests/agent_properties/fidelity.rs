//! 1. Fidelity (I2): every accepted form emulated as the reference CPU executes it.

use crate::kit::props::config;
use crate::kit::verdict::accepted;
use crate::FIDELITY_CASES;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;
use vesim::exec::{self, ExecRequest};
use vesim::layout;
use vesim::quirks::Profile;
use vesim::verdict::{self, VerdictRequest};
use vesim_model::vcpu::{Gpr, Rflags};
use vesim_model::{Gla, Outcome};

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
pub(super) const FIDELITY_RIP: u64 = 0x40_0000;

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
