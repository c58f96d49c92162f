//! The architectural semantics of the reference CPU's instruction set (VE-SEMANTICS section 1):
//! a pure function from the registers, flags and the value of the memory operand to the new
//! registers, flags and value to store. Memory accesses and their faults happen before, in
//! `step`; committing happens after.

use super::decode::{AddressReg, Insn, Mnemonic, Operand};
use crate::vcpu::{Gpr, Register, Rflags, Vcpu};

/// What an instruction does, given its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// General-purpose registers after the instruction.
    pub gpr: [u64; 16],
    /// RFLAGS after the instruction.
    pub rflags: Rflags,
    /// The value stored to the memory operand (its low `size` bytes), if the instruction writes
    /// it.
    pub store: Option<u64>,
}

/// The instruction is outside the reference CPU's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotImplemented;

fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign_bit(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

fn parity(v: u64) -> bool {
    (v as u8).count_ones() % 2 == 0
}

/// Sets ZF, SF and PF from a result of `size` bytes.
fn set_szp(f: &mut Rflags, r: u64, size: u32) {
    f.set(Rflags::ZF, r & mask(size) == 0);
    f.set(Rflags::SF, r & sign_bit(size) != 0);
    f.set(Rflags::PF, parity(r));
}

/// The flags of `a - b` at `size` bytes (CMP, and so CMPXCHG).
pub fn sub_flags(f: &mut Rflags, a: u64, b: u64, size: u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b) & m;
    f.set(Rflags::CF, a < b);
    f.set(Rflags::OF, (a ^ b) & (a ^ r) & sign_bit(size) != 0);
    f.set(Rflags::AF, (a ^ b ^ r) & 0x10 != 0);
    set_szp(f, r, size);
}

/// The flags of a logical operation (OR, AND, XOR): CF = OF = 0, SF/ZF/PF from the result,
/// AF undefined (kept).
pub fn logic_flags(f: &mut Rflags, r: u64, size: u32) {
    f.remove(Rflags::CF | Rflags::OF);
    set_szp(f, r, size);
}

struct Ops<'a> {
    insn: &'a Insn,
    vcpu: &'a Vcpu,
    mem: u64,
    gpr: [u64; 16],
    store: Option<u64>,
}

impl Ops<'_> {
    fn operand(&self, op: usize) -> Operand {
        self.insn.operand(op).unwrap_or(Operand::Other)
    }
    fn size(&self, op: usize) -> u32 {
        match self.operand(op) {
            Operand::Register(r) => r.size as u32,
            Operand::OtherRegister { .. } => 8,
            Operand::Memory(m) => m.size.clamp(1, 8),
            // Immediates take the size of the destination.
            _ if op != 0 => self.size(0),
            _ => 8,
        }
    }
    fn read(&self, op: usize) -> Result<u64, NotImplemented> {
        match self.operand(op) {
            Operand::Register(r) => Ok(r.read(&self.gpr)),
            Operand::Memory(_) => Ok(self.mem & mask(self.size(op))),
            Operand::Immediate { value, .. } => Ok(value & mask(self.size(0))),
            _ => Err(NotImplemented),
        }
    }
    fn write(&mut self, op: usize, v: u64) -> Result<(), NotImplemented> {
        match self.operand(op) {
            Operand::Register(r) => {
                r.write(&mut self.gpr, v);
                Ok(())
            }
            Operand::Memory(_) => {
                self.store = Some(v & mask(self.size(op)));
                Ok(())
            }
            _ => Err(NotImplemented),
        }
    }
}

/// Executes `insn` on `vcpu`'s registers and flags with `mem` as the (little-endian, zero
/// extended) value of its memory operand. For BT* with a register offset `mem` is the operand
/// at the bit-string address. RIP is not changed here.
pub fn execute(insn: &Insn, vcpu: &Vcpu, mem: u64) -> Result<Effects, NotImplemented> {
    let mut ops = Ops {
        insn,
        vcpu,
        mem,
        gpr: vcpu.gpr,
        store: None,
    };
    let mut f = vcpu.rflags;
    match insn.mnemonic {
        Mnemonic::Nop | Mnemonic::Pause => {}
        Mnemonic::Mov => {
            let v = ops.read(1)?;
            ops.write(0, v)?;
        }
        Mnemonic::Xchg => {
            let a = ops.read(0)?;
            let b = ops.read(1)?;
            ops.write(0, b)?;
            ops.write(1, a)?;
        }
        Mnemonic::Cmpxchg => {
            let size = ops.size(0);
            let acc_reg = Register {
                gpr: Gpr::Rax,
                size: match size {
                    1 | 2 | 4 => size as u8,
                    _ => 8,
                },
                high: false,
            };
            let acc = ops.vcpu.read_register(acc_reg);
            let dest = ops.read(0)?;
            sub_flags(&mut f, acc, dest, size);
            if acc == dest {
                let src = ops.read(1)?;
                ops.write(0, src)?;
            } else {
                // The destination is always written (with its old value on a mismatch).
                ops.write(0, dest)?;
                acc_reg.write(&mut ops.gpr, dest);
            }
        }
        m @ (Mnemonic::Or | Mnemonic::And | Mnemonic::Xor) => {
            let size = ops.size(0);
            let a = ops.read(0)?;
            let b = ops.read(1)?;
            let r = match m {
                Mnemonic::Or => a | b,
                Mnemonic::And => a & b,
                _ => a ^ b,
            };
            logic_flags(&mut f, r, size);
            ops.write(0, r)?;
        }
        m @ (Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc) => {
            let bits = ops.size(0) * 8;
            // With a memory operand and a register offset, `mem` is already the operand at the
            // bit-string address; the bit inside it is the offset modulo the operand size.
            let bit = ops.read(1)? & (bits as u64 - 1);
            let v = ops.read(0)?;
            f.set(Rflags::CF, (v >> bit) & 1 != 0);
            let r = match m {
                Mnemonic::Bts => Some(v | 1 << bit),
                Mnemonic::Btr => Some(v & !(1 << bit)),
                Mnemonic::Btc => Some(v ^ 1 << bit),
                _ => None,
            };
            if let Some(r) = r {
                ops.write(0, r)?;
            }
        }
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => {
            if insn.prefixes.rep || insn.prefixes.repne {
                return Err(NotImplemented);
            }
            let size = ops.size(0);
            let v = ops.gpr[0] & mask(size);
            ops.store = Some(v);
            let step = if f.contains(Rflags::DF) {
                (size as u64).wrapping_neg()
            } else {
                size as u64
            };
            let rdi = ops.gpr[7];
            // The destination es:[edi] (under 0x67) moves EDI and zeroes the upper half.
            let edi = Register {
                gpr: Gpr::Rdi,
                size: 4,
                high: false,
            };
            ops.gpr[7] = if matches!(ops.operand(0), Operand::Memory(m) if m.base == Some(AddressReg::Gpr(edi)))
            {
                (rdi as u32).wrapping_add(step as u32) as u64
            } else {
                rdi.wrapping_add(step)
            };
        }
        _ => return Err(NotImplemented),
    }
    Ok(Effects {
        gpr: ops.gpr,
        rflags: f,
        store: ops.store,
    })
}
