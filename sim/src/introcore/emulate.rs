//! Introcore's emulate-and-commit path for a page-table write (the #VE-off baseline, and the
//! `fixed` answer to Q1): decode the faulting instruction, compute its effect with the reference
//! CPU's semantics, let the callbacks see the entry's old and new value, then commit the store,
//! the registers and RIP.

use crate::guest::{software_byte_gpas, software_read};
use vesim_model::cpu::decode::{accesses_of, execute_bytes, MAX_INSTRUCTION_LEN};
use vesim_model::vcpu::{Rflags, Vcpu};
use vesim_model::{Gla, Gpa, Machine};

/// A computed but not yet committed emulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emulation {
    /// The 8-aligned entry the faulting write touches.
    pub entry: Gpa,
    /// Its value before.
    pub old: u64,
    /// Its value after.
    pub new: u64,
    /// Every 8-aligned entry the store touches, with its value before and after, in address
    /// order (a misaligned write touches two).
    pub entries: Vec<(Gpa, u64, u64)>,
    /// The bytes to store, by guest-physical address (one piece per page).
    pub stores: Vec<(Gpa, Vec<u8>)>,
    /// Registers after.
    pub gpr: [u64; 16],
    /// RFLAGS after.
    pub rflags: Rflags,
    /// RIP after.
    pub rip: u64,
}

/// Why an emulation is not possible (introcore answers Unsupported).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// Computes the effect of the instruction `vcpu` is at (registers, RIP, RFLAGS as given; CR3
/// for the software translations) on the write that faulted at `gla`/`gpa`. Instruction bytes
/// come from `bytes` when given (the copy in the #VE page), else from guest memory.
pub fn emulate_pt_write(
    machine: &Machine,
    vcpu: &Vcpu,
    bytes: Option<&[u8]>,
    gla: Gla,
    gpa: Gpa,
) -> Result<Emulation, Unsupported> {
    let code = match bytes {
        Some(b) => {
            let mut c = [0u8; MAX_INSTRUCTION_LEN];
            let n = b.len().min(MAX_INSTRUCTION_LEN);
            c[..n].copy_from_slice(&b[..n]);
            c
        }
        None => {
            let mut c = [0u8; MAX_INSTRUCTION_LEN];
            if !software_read(machine, vcpu.cr3, vcpu.rip, &mut c) {
                return Err(Unsupported("the instruction bytes are not mapped".into()));
            }
            c
        }
    };
    let accesses = accesses_of(&code, vcpu).ok_or_else(|| Unsupported("undecodable".into()))?;
    let [access] = accesses.as_slice() else {
        return Err(Unsupported(format!("{} memory accesses", accesses.len())));
    };
    let covers = gla.0.wrapping_sub(access.gla.0) < access.size;
    if !access.kind.writes() || !covers || access.size > 8 {
        return Err(Unsupported(
            "the faulting write is not the instruction's operand".into(),
        ));
    }
    let gpas = software_byte_gpas(machine, vcpu.cr3, access.gla.0, access.size)
        .ok_or_else(|| Unsupported("the operand is not mapped".into()))?;
    let mut value = [0u8; 8];
    for (v, g) in value.iter_mut().zip(&gpas) {
        let mut one = [0u8; 1];
        machine.mem.read(*g, &mut one);
        *v = one[0];
    }
    let (fx, _, next) = execute_bytes(&code, vcpu, u64::from_le_bytes(value))
        .ok_or_else(|| Unsupported("outside the reference CPU's instruction set".into()))?;
    let entry = Gpa(gpa.0 & !7);
    let mut stores: Vec<(Gpa, Vec<u8>)> = Vec::new();
    // Every entry the store touches: (entry, old, new).
    let mut entries: Vec<(Gpa, u64, u64)> = Vec::new();
    if let Some(store) = fx.store {
        let bytes = store.to_le_bytes();
        for (&g, &b) in gpas.iter().zip(&bytes) {
            let e = Gpa(g.0 & !7);
            if entries.last().is_none_or(|(last, _, _)| *last != e) {
                let v = machine.mem.read_u64(e);
                entries.push((e, v, v));
            }
            if let Some((_, _, new)) = entries.last_mut() {
                let mut nb = new.to_le_bytes();
                nb[(g.0 & 7) as usize] = b;
                *new = u64::from_le_bytes(nb);
            }
            match stores.last_mut() {
                Some((start, v)) if start.wrapping_add(v.len() as u64) == g => v.push(b),
                _ => stores.push((g, vec![b])),
            }
        }
    }
    let (old, new) = entries
        .iter()
        .find(|(e, _, _)| *e == entry)
        .map(|(_, o, n)| (*o, *n))
        .unwrap_or_else(|| {
            let v = machine.mem.read_u64(entry);
            (v, v)
        });
    Ok(Emulation {
        entry,
        old,
        new,
        entries,
        stores,
        gpr: fx.gpr,
        rflags: (fx.rflags & !Rflags::RF) | Rflags::FIXED1,
        rip: next,
    })
}

/// Commits the stores of an emulation to guest memory (physical writes by the hypervisor).
pub fn commit_stores(machine: &mut Machine, e: &Emulation) {
    for (g, bytes) in &e.stores {
        machine.mem.write(*g, bytes);
    }
}
