//! Guest processes whose translations introcore hooks, and their PML4 entries.

use vesim::guest::mm::bits;
use vesim::introcore::pts::{Owner, TranslationId};
use vesim::layout::{self, mm_code};
use vesim::world::World;
use vesim_model::VcpuId;

/// A protected process with one user page at `USER_BASE` whose translation introcore hooks.
pub struct Proc {
    pub pid: u32,
    pub cr3: u64,
    pub va: u64,
    pub id: TranslationId,
}

/// Creates a protected process in `w`, maps its page and hooks the translation.
pub fn proc_in(w: &mut World) -> Proc {
    let pid = w.mm().create_process(true).unwrap();
    let va = layout::USER_BASE;
    w.mm_map(VcpuId(0), pid, va, bits::RW).unwrap();
    let cr3 = w.guest.processes[pid as usize].cr3;
    let id = w.engine().hook_translation(cr3, va, Owner::Process(pid));
    w.engine().commit_hooks();
    Proc { pid, cr3, va, id }
}

/// The canonical linear address whose PML4 index is `k`.
pub fn pml4_slot_va(k: u64) -> u64 {
    let v = k << 39;
    if k >= 256 {
        v | 0xFFFF_0000_0000_0000
    } else {
        v
    }
}

/// Writes PML4 entry `k` of process `pid` with the memory manager's MOV through its self-map.
pub fn write_pml4e(w: &mut World, pid: u32, k: u64, value: u64) {
    let gla = w.guest.entry_gla(pml4_slot_va(k), 4);
    w.mm_exec(VcpuId(0), pid, mm_code::MOV, gla, value, 0)
        .unwrap();
}
