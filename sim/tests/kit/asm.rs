//! Guest instructions as bytes: fixed encodings, and the assembler of the guest operations
//! that `PtWorld` programs are made of.

use super::pt_world::{pte_gla, target_page, walk_page, TARGET_PAGES};
use proptest::prelude::*;
use vesim::quirks::Quirks;

/// `mov [rax], rbx`
pub const MOV_STORE: [u8; 3] = [0x48, 0x89, 0x18];
/// `mov rbx, [rax]`
pub const MOV_LOAD: [u8; 3] = [0x48, 0x8B, 0x18];
/// `vmfunc`
pub const VMFUNC: [u8; 3] = [0x0F, 0x01, 0xD4];
/// `vmcall`
pub const VMCALL: [u8; 3] = [0x0F, 0x01, 0xC1];
/// `mov [rdx], rbx`
pub const MOV_STORE_RDX: [u8; 3] = [0x48, 0x89, 0x1A];

/// Appends `mov reg, imm64` (REX.W B8+r).
pub fn mov_imm64(code: &mut Vec<u8>, reg: u8, v: u64) {
    code.extend_from_slice(&[0x48, 0xB8 + reg]);
    code.extend_from_slice(&v.to_le_bytes());
}

/// Register numbers as the encodings take them.
pub const RAX: u8 = 0;
pub const RCX: u8 = 1;
pub const RDX: u8 = 2;
pub const RBX: u8 = 3;
pub const RDI: u8 = 7;

/// How a page-table write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
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
    pub fn agent_supported(self) -> bool {
        !matches!(self, How::Size32 | How::DsPrefix)
    }
}

/// One guest operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GOp {
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
pub struct Terminal {
    pub target: u8,
}

/// Any way of writing a PTE.
pub fn how() -> impl Strategy<Value = How> {
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

/// Any guest operation, writes most often.
pub fn gop() -> impl Strategy<Value = GOp> {
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

/// Appends the instructions of `op`; `base` is the PTE value the values are derived from.
pub fn assemble(code: &mut Vec<u8>, op: GOp, base: impl Fn(u64) -> u64) {
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

/// Appends the instructions of the terminal `t` for the quirk setting `quirks`.
pub fn assemble_terminal(
    code: &mut Vec<u8>,
    t: Terminal,
    quirks: &Quirks,
    base: impl Fn(u64) -> u64,
) {
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

/// A program of 1 to 23 guest operations.
pub fn program() -> impl Strategy<Value = Vec<GOp>> {
    prop::collection::vec(gop(), 1..24)
}

/// `hvmi` cannot run refused writes except as the terminal (Q1): turn them into MOVs.
pub fn for_profile(ops: Vec<GOp>, quirks: &Quirks) -> Vec<GOp> {
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
