//! B104: the dispatch of a raised page walk.

use crate::fx_with;
use crate::kit::{asm::*, events::*, spec::*, ve::*, worlds::*};
use vesim::guest::mm::bits;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim_model::vcpu::Gpr;
use vesim_model::{Gpa, VcpuId};

/// B104: a raised page walk (the KPTI case: every A/D already set in the kernel CR3, user GLA)
/// sets A, with one CAS, in the user PML4 entry of the GLA; D and the other levels are left
/// alone, no callback runs and the registers are neither copied in nor out.
#[test]
fn b104_raised_page_walk_sets_a_in_user_pml4() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut c = config(q);
        c.guest.kpti = true;
        let mut f = fx_with(c);
        let pid = f.w.mm().create_process(true).unwrap();
        let va = layout::USER_BASE;
        f.w.mm_map(VcpuId(0), pid, va, bits::RW).unwrap();
        let p = f.w.guest.processes[pid as usize].clone();
        let user = p.user_cr3.expect("KPTI gives a user CR3");
        assert_ne!(user, p.cr3);
        // The kernel-CR3 walk of `va` finds everything set.
        let mut kernel = Vec::new();
        for level in 1..=4u8 {
            let (v, g) = f.w.guest.entry_value(&f.w.machine, pid, va, level).unwrap();
            let v = v | A | if level == 1 { D } else { 0 };
            f.w.machine.mem.write_u64(g, v);
            kernel.push((g, v));
        }
        // The user PML4 entry (same table below, A clear): what the hardware walk of the user
        // CR3 wanted to set.
        let upml4e = Gpa((user & PFN) + ((va >> 39) & 0x1FF) * 8);
        let before = mem(&f.w, upml4e) & !A;
        assert_eq!(before & P, P);
        f.w.machine.mem.write_u64(upml4e, before);
        // The #VE arrives on the kernel CR3 (after the KPTI entry stub) for `mov rbx, [rax]`.
        let at = f.prep(0, &MOV_LOAD, &[(Gpr::Rax, va), (Gpr::Rbx, 0x77)]);
        f.w.vcpus[0].cr3 = p.cr3;
        let regs = f.w.vcpus[0].gpr;
        let n = f.w.events.len();
        inject(&mut f.w, 0, QUAL_WALK, va, upml4e);
        assert_eq!(vmcalls_since(&f.w, n), [(RAISE_EPT, 0, 0)], "{q:?}");
        assert_eq!(mem(&f.w, upml4e), before | A, "{q:?}");
        for (g, v) in kernel {
            assert_eq!(mem(&f.w, g) & !D, v & !D, "{q:?} {g:?}");
        }
        assert_eq!(f.w.vcpus[0].rip, at);
        assert_eq!(f.w.vcpus[0].gpr, regs);
        assert!(callbacks(&f.w).is_empty());
    }
}
