//! B61–B67: VeHandlePageWalk.

use crate::fx;
use crate::kit::{events::*, spec::*, ve::*, worlds::*};
use vesim::agent::{rip, AgentOutcome};
use vesim::layout::veinfo;
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::paging::{self_map_entry_address, PageSize, PteFlags};
use vesim_model::vcpu::{Cr0, Gpr};
use vesim_model::{Gla, Gpa, VcpuId};

/// B61, written out: S<<39 | ... | index<<3, OR 0xFFFF000000000000.
fn b61_formula(level: u8, gla: u64) -> u64 {
    let (p4, p3, p2, p1) = (
        (gla >> 39) & 0x1FF,
        (gla >> 30) & 0x1FF,
        (gla >> 21) & 0x1FF,
        (gla >> 12) & 0x1FF,
    );
    let v = match level {
        4 => S << 39 | S << 30 | S << 21 | S << 12 | p4 << 3,
        3 => S << 39 | S << 30 | S << 21 | p4 << 12 | p3 << 3,
        2 => S << 39 | S << 30 | p4 << 21 | p3 << 12 | p2 << 3,
        _ => S << 39 | p4 << 30 | p3 << 21 | p2 << 12 | p1 << 3,
    };
    v | 0xFFFF_0000_0000_0000
}

/// B61: the self-map addresses of the four entries, and that they reach the entries the walk
/// uses.
#[test]
fn b61_self_map_addresses() {
    let mut f = fx(Quirks::fixed());
    map_user_page(&mut f.w);
    // DATA = 0xFFFFF80000400000: p4 0x1F0, p3 0, p2 2, p1 0.
    assert_eq!(b61_formula(1, DATA), 0xFFFF_F6FC_0000_2000);
    for gla in [DATA, USER_PAGE, CODE] {
        for level in 1..=4u8 {
            let a = b61_formula(level, gla);
            assert_eq!(self_map_entry_address(S, Gla(gla), level).0, a);
            let e = f.w.guest.entry_gpa(&f.w.machine, gla, level).unwrap();
            assert_eq!(phys(&f.w, a), e, "{gla:#x} level {level}");
        }
    }
}

/// B62: a non-present entry ends the walk at once: no raise, deeper levels untouched (even for
/// a user address with nothing set, which B66 would otherwise raise).
#[test]
fn b62_not_present_ends_walk() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        f.w.machine.mem.write_u64(e[3], 0);
        for g in &e[..3] {
            let v = mem(&f.w, *g);
            f.w.machine.mem.write_u64(*g, v & !A);
        }
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]);
        for g in &e[..3] {
            assert_eq!(mem(&f.w, *g) & A, A, "levels above get A");
        }
        assert_eq!(mem(&f.w, e[3]), 0);
        // Not present at the PML4 (index 4).
        const NOWHERE: u64 = 0x0000_0200_0000_0000;
        let pml4e = Gpa(f.w.guest.cr3 + 4 * 8);
        inject(&mut f.w, 0, QUAL_WALK, NOWHERE, pml4e);
        assert_eq!(mem(&f.w, pml4e), 0);
        assert!(vmcalls(&f.w).is_empty());
        assert_eq!(
            outcomes(&f.w),
            [
                (AgentOutcome::PageWalkSet, None),
                (AgentOutcome::PageWalkSet, None)
            ]
        );
        assert_eq!(
            [veinfo::VE_PAGE_WALK, veinfo::VE_IGNORED_TOTAL].map(|o| pg(&f.w, 0, o)),
            [2, 2]
        );
    }
}

/// B63: a PDPTE or PDE with PS is the leaf; the walk does not go below it.
#[test]
fn b63_large_page_is_the_leaf() {
    const L2: u64 = 0xFFFF_A000_0000_0000; // PML4 index 0x140, 2 MB page
    const L1: u64 = 0xFFFF_A080_0000_0000; // PML4 index 0x141, 1 GB page
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let w = &mut f.w;
        w.guest
            .tables
            .map(
                &mut w.machine.mem,
                Gla(L2),
                Gpa(0x0800_0000),
                PageSize::Size2M,
                PteFlags::WRITABLE,
            )
            .unwrap();
        w.guest
            .tables
            .map(
                &mut w.machine.mem,
                Gla(L1),
                Gpa(0x4000_0000),
                PageSize::Size1G,
                PteFlags::WRITABLE,
            )
            .unwrap();
        // Decoys where a PT (or PD) would be if the walk went on.
        w.machine.mem.write_u64(Gpa(0x0800_0000), P);
        w.machine.mem.write_u64(Gpa(0x4000_0000), P);
        for (gla, leaf_level) in [(L2, 2u8), (L1, 3)] {
            f.code(&[0x48, 0x8B, 0x18]); // mov rbx, [rax]: a read
            f.w.vcpus[0].set_reg(Gpr::Rax, gla);
            let entries: Vec<Gpa> = (leaf_level..=4)
                .rev()
                .map(|l| f.w.guest.entry_gpa(&f.w.machine, gla, l).unwrap())
                .collect();
            let leaf = *entries.last().unwrap();
            inject(&mut f.w, 0, QUAL_WALK, gla, leaf);
            for g in &entries {
                assert_eq!(mem(&f.w, *g) & A, A, "{gla:#x}");
            }
            assert_eq!(mem(&f.w, leaf) & D, 0, "a read sets no D on a fresh leaf");
        }
        assert_eq!(mem(&f.w, Gpa(0x0800_0000)), P, "below the 2 MB leaf");
        assert_eq!(mem(&f.w, Gpa(0x4000_0000)), P, "below the 1 GB leaf");
        assert!(vmcalls(&f.w).is_empty());
    }
}

/// B64 (`hvmi`): at the leaf, first D (if A is already set and RW or !CR0.WP), then A if it was
/// clear; the access type is ignored.
#[test]
fn b64_leaf_d_then_a_hvmi() {
    let mut f = fx(Quirks::hvmi());
    for g in &data_entries(&f.w)[..3] {
        let v = mem(&f.w, *g);
        f.w.machine.mem.write_u64(*g, v | A);
    }
    let pte = f.get(0) & !(A | D);
    let e0 = f.e(0);
    // (i) never accessed: A only.
    f.set(0, pte);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), pte | A);
    // (ii) accessed and writable: D.
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), pte | A | D);
    // (iii) accessed, read-only, CR0.WP = 1: nothing.
    f.set(0, (pte | A) & !RW);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), (pte | A) & !RW);
    // (iv) accessed, read-only, CR0.WP = 0: D.
    f.w.vcpus[0].cr0.remove(Cr0::WP);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), (pte | A | D) & !RW);
    assert!(vmcalls(&f.w).is_empty(), "kernel address: no raise");
}

/// B65: bits are set under the lock of the entry's self-map address (B41 index rule), which
/// the agent spins on while another CPU holds it.
#[test]
fn b65_set_bits_under_the_entry_lock() {
    let mut f = fx(Quirks::fixed());
    for g in &data_entries(&f.w)[..3] {
        let v = mem(&f.w, *g);
        f.w.machine.mem.write_u64(*g, v | A);
    }
    f.code(&[0x48, 0x8B, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
    let pte = f.get(0) & !(A | D);
    f.set(0, pte);
    set_lock(&mut f.w, 0x1F0, true);
    let e0 = f.e(0);
    raise_only(&mut f.w, 0, QUAL_WALK, DATA, e0);
    to_step(&mut f.w, 0, rip::PW_LEAF);
    for _ in 0..3 {
        f.w.step(VcpuId(0)).unwrap();
        assert_eq!(f.w.vcpus[0].rip, agent_at(rip::PW_LEAF));
        assert_eq!(f.get(0), pte);
    }
    set_lock(&mut f.w, 0x1F0, false);
    f.w.step(VcpuId(0)).unwrap();
    assert_eq!(f.get(0), pte | A);
    assert_eq!(locks(&f.w), [0; 8]);
}

/// B66: nothing left to set and a user-half GLA (bit 63 clear): Raised and RAISE_EPT (the KPTI
/// case); a kernel GLA just returns. Page walks never move RIP or the registers.
#[test]
fn b66_kpti_raise_only_for_user_gla() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        for g in e {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A);
        }
        f.w.machine.mem.write_u64(e[3], mem(&f.w, e[3]) | D);
        // Bit 6 of a non-leaf entry is ignored by hardware, and the agent's own self-map
        // accesses (the CAS of B65 is a write) may set it there: compare the other bits.
        let snap = |w: &World| -> Vec<u64> {
            e.iter()
                .enumerate()
                .map(|(i, g)| mem(w, *g) & if i < 3 { !D } else { !0 })
                .collect()
        };
        let before = snap(&f.w);
        f.code(&[0x48, 0x8B, 0x18]);
        f.w.vcpus[0].set_reg(Gpr::Rax, USER_PAGE);
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]);
        assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
        assert_eq!(outcomes(&f.w), [(AgentOutcome::PageWalkRaised, None)]);
        assert_eq!(raised_byte(&f.w, 0), 1);
        assert_eq!(before, snap(&f.w));
        assert_eq!(f.w.vcpus[0].rip, CODE);
        assert_eq!(f.w.vcpus[0].reg(Gpr::Rax), USER_PAGE);
        // The same for a kernel page: no raise.
        let d = data_entries(&f.w);
        for g in d {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A | D);
        }
        f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
        inject(&mut f.w, 0, QUAL_WALK, DATA, d[3]);
        assert_eq!(vmcalls(&f.w).len(), 1);
        assert_eq!(outcomes(&f.w)[1], (AgentOutcome::PageWalkSet, None));
    }
}

/// B67/B30: VePageWalk counts every page-walk #VE, raised ones included; a raised walk is not
/// ignored and not timed; early exits count as ignored.
#[test]
fn b67_page_walk_counters() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        for g in e {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A | D);
        }
        f.code(&[0x48, 0x8B, 0x18]);
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]); // raised
        let e0 = f.e(0);
        let pte = f.get(0) & !(A | D);
        f.set(0, pte);
        inject(&mut f.w, 0, QUAL_WALK, DATA, e0); // sets A
        let pml4e = Gpa(f.w.guest.cr3 + 4 * 8);
        inject(&mut f.w, 0, QUAL_WALK, 0x0000_0200_0000_0000, pml4e); // early exit
        assert_eq!(
            [
                veinfo::VE_TOTAL,
                veinfo::VE_PAGE_WALK,
                veinfo::VE_MM,
                veinfo::VE_IGNORED_TOTAL,
                veinfo::TSC_COUNT
            ]
            .map(|o| pg(&f.w, 0, o)),
            [3, 3, 0, 2, 2]
        );
    }
}
