//! B82, B87–B94: the introcore lifecycle as the agent sees it (views, deploy, loader).

use crate::kit::{cache::*, ept::*, ve::*, worlds::*};
use crate::{fx, fx_with};
use vesim::layout::{self, veinfo};
use vesim::quirks::Quirks;
use vesim::world::{World, WorldConfig};
use vesim_model::ept::EptFlags;
use vesim_model::{Gpa, ViewId};

/// B82: the protected view is RW- and not convertible for every guest-physical page.
#[test]
fn b82_protected_view_rw_and_not_convertible() {
    let f = fx(Quirks::fixed());
    let want = EptFlags::READ | EptFlags::WRITE | EptFlags::SUPPRESS_VE;
    for g in [
        Gpa(0),
        Gpa(f.w.guest.cr3),
        f.pt,
        phys(&f.w, DATA),
        f.code,
        Gpa(0x3FFF_F000),
        layout::AGENT_GPA,
    ] {
        assert_eq!(
            protected_flags(&f.w, g) & (RWX | EptFlags::SUPPRESS_VE),
            want,
            "{g}"
        );
    }
}

/// B87 (with B4, B11, B13, B20/B22, B78): what deploy writes into the image and the VCPUs.
#[test]
fn b87_deploy_patches_the_image_and_registers_the_pages() {
    for (q, unused_slot, empty_slot, bits) in [
        (
            Quirks::fixed(),
            0xFFFF_FFFFu32,
            u64::MAX,
            0x800F_FFFF_FFFF_F087u64,
        ),
        (Quirks::hvmi(), 0, 0, 0x000F_FFFF_FFFF_F087),
    ] {
        let mut c = config(q);
        c.guest.vcpus = 2;
        c.guest.protected_view = ViewId(5);
        let w = World::new(c).unwrap();
        let m = &w.machine.mem;
        let at = |off: u64| layout::AGENT_GPA.wrapping_add(off);
        assert_eq!(m.read_u32(at(layout::STUB_PROTECTED_INDEX_IMM)), 5);
        assert_eq!(m.read_u32(at(layout::STUB_UNTRUSTED_INDEX_IMM)), 0);
        assert_eq!(m.read_u32(at(layout::DATA_SELF_MAP_INDEX)), 0x1ED);
        assert_eq!(m.read_u64(at(layout::DATA_MONITORED_BITS)), bits);
        let mut slot = [0u8; 24];
        m.read(at(layout::STUB_KI_KERNEL_EXIT_SLOT), &mut slot);
        assert_eq!(slot, [0x90; 24], "no KPTI: 24 NOPs");
        // The retpoline to VESTUB's entry 0xFFFFF88000001000 at the OS #VE handler.
        let mut hook = [0u8; 24];
        m.read(phys(&w, layout::OS_VE_HANDLER_GVA), &mut hook);
        assert_eq!(
            hook,
            [
                0xE8, 0x03, 0x00, 0x00, 0x00, 0x0F, 0xAE, 0xE8, 0xC7, 0x04, 0x24, 0x00, 0x10, 0x00,
                0x00, 0xC7, 0x44, 0x24, 0x04, 0x80, 0xF8, 0xFF, 0xFF, 0xC3
            ]
        );
        // B11: VCPU i at the slot of its index (i with the default descriptors).
        for s in 0..64u64 {
            let want = match s {
                0 => 0,
                1 => 1,
                _ => unused_slot,
            };
            assert_eq!(
                m.read_u32(at(layout::AGENT_CPUMAP + 4 * s)),
                want,
                "slot {s}"
            );
        }
        for i in 0..2u64 {
            let page = at(layout::AGENT_VEINFO + 0x1000 * i);
            assert_eq!(w.vcpus[i as usize].ve_info, Some(page));
            assert!(w.vcpus[i as usize].ve_enabled);
            assert_eq!(
                m.read_u64(page.wrapping_add(veinfo::PROTECTED_STACK)),
                layout::AGENT_GVA + layout::AGENT_VESTACKS + 0x4000 * i + 0x4000 - 16
            );
            assert_eq!(
                m.read_u64(page.wrapping_add(veinfo::SELF)),
                layout::AGENT_GVA + layout::AGENT_VEINFO + 0x1000 * i
            );
            assert_eq!(m.read_u64(page.wrapping_add(veinfo::INDEX)), i);
        }
        for line in [0u64, 31, 63] {
            for b in [0u64, 63] {
                assert_eq!(m.read_u64(cache_slot(line, b, 7)), empty_slot);
            }
        }
    }
}

/// B89: in the untrusted view VESTUB is execute-only and every other agent page (header and
/// sections) has no access; none of them is convertible.
#[test]
fn b89_untrusted_view_rights_of_agent() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        let g = layout::AGENT_GPA.wrapping_add(off);
        let f = untrusted_flags(&w, g);
        let want = if off == layout::AGENT_VESTUB {
            EptFlags::EXECUTE
        } else {
            EptFlags::empty()
        };
        assert_eq!(f & RWX, want, "agent page {off:#x}");
        assert!(f.contains(EptFlags::SUPPRESS_VE), "agent page {off:#x}");
    }
    let h = w.intro.hook_counts(layout::AGENT_GPA);
    assert_eq!((h.read, h.write, h.execute), (1, 1, 1), "header");
}

/// B90: in the protected view each section page is R, W by the section's write characteristic
/// and X by its execute characteristic; the header keeps RW- (B82).
#[test]
fn b90_protected_view_rights() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    let rx = EptFlags::READ | EptFlags::EXECUTE;
    let rw = EptFlags::READ | EptFlags::WRITE;
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        let want = match off {
            layout::AGENT_VESTUB | layout::AGENT_CODE => rx,
            _ => rw, // header, .data, VECPUMAP, VEINFO, VESTACKS, VECACHE
        };
        let f = protected_flags(&w, layout::AGENT_GPA.wrapping_add(off));
        assert_eq!(f & RWX, want, "agent page {off:#x}");
        assert!(f.contains(EptFlags::SUPPRESS_VE));
    }
}

/// B93/B94: page-table pages become convertible only when the loader completes
/// (ConvCount += PtCount); disabling makes them non-convertible again (ConvCount 0).
#[test]
fn b94_convertible_only_after_loader() {
    let mut f = fx_with(WorldConfig {
        ve: false,
        ..config(Quirks::fixed())
    });
    let pt = f.pt;
    assert!(!untrusted_flags(&f.w, pt).contains(EptFlags::WRITE));
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    let c = f.w.intro.hook_counts(pt);
    assert_eq!((c.pt, c.conv), (1, 0));
    f.mov_entry(0, 1, 0x200);
    run_to(&mut f.w, 0, CODE + 3, 20);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    f.w.engine().complete_loader();
    assert!(!untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    let c = f.w.intro.hook_counts(pt);
    assert_eq!((c.pt, c.conv), (1, 1));
    f.mov_entry(0, 1, 0x400);
    one_ve(&mut f.w, 0);
    assert_eq!(f.w.counters.ve_total, 1);
    f.w.intro.hooks.disable_ve(&mut f.w.machine.ept);
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    assert_eq!(f.w.intro.hook_counts(pt).conv, 0);
}
