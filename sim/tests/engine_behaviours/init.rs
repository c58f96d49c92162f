//! B80–B82: IntVeInit and the views it sets up.

use crate::fx_with;
use crate::kit::{agent::*, ept::*, worlds::*};
use std::collections::BTreeSet;
use vesim::introcore::hooks::{HookCounts, HookKind};
use vesim::introcore::lifecycle::InitError;
use vesim::introcore::Introcore;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim::world::{World, WorldError};
use vesim_model::ept::EptFlags;
use vesim_model::{Gfn, Gpa, ViewId};

/// The B90 protected-view rights of agent page `off`: VESTUB and .text R-X, the rest RW-.
fn b90_rights(off: u64) -> EptFlags {
    match off {
        layout::AGENT_VESTUB | layout::AGENT_CODE => R_X,
        _ => RW_,
    }
}

/// B80: more than 64 VCPUs, or no VMFUNC, is NOT_NEEDED; a second init is ALREADY_INITIALIZED.
#[test]
fn b80_init_refuses_more_than_64_vcpus_or_no_vmfunc() {
    // 65 VCPUs: the world gets no agent at all.
    assert!(matches!(
        World::new(config_n(Quirks::fixed(), 65)),
        Err(WorldError::Deploy(_))
    ));
    let w = World::new(config_n(Quirks::fixed(), 64)).unwrap();
    assert!(w.intro.initialized && w.intro.deployed);
    // Already initialised.
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    assert_eq!(
        w.engine().intro_init_checked(),
        Err(InitError::AlreadyInitialized)
    );
    // A fresh engine on VCPUs without VM functions.
    w.intro = Introcore::new(&w.guest.config, 0);
    w.vcpus[0].vmfunc_enabled = false;
    assert!(matches!(
        w.engine().intro_init_checked(),
        Err(InitError::NotNeeded(_))
    ));
    assert!(!w.intro.initialized);
    // VMFUNC back, but 65 VCPUs.
    w.vcpus[0].vmfunc_enabled = true;
    let v0 = w.vcpus[0].clone();
    w.vcpus.resize(65, v0);
    assert!(matches!(
        w.engine().intro_init_checked(),
        Err(InitError::NotNeeded(_))
    ));
    assert!(!w.intro.initialized);
    w.vcpus.truncate(64);
    assert_eq!(w.engine().intro_init_checked(), Ok(()));
    assert!(w.intro.initialized);
}

/// B81: any read, write or execute GPA hook makes init INVALID_INTERNAL_STATE; once it is gone
/// init succeeds.
#[test]
fn b81_init_refuses_when_a_gpa_hook_exists() {
    let kinds = [
        HookKind {
            read: true,
            ..HookKind::default()
        },
        HookKind {
            write: true,
            ..HookKind::default()
        },
        HookKind {
            execute: true,
            ..HookKind::default()
        },
        HookKind::PAGE_TABLE_WRITE,
    ];
    for kind in kinds {
        let mut w = World::new(config(Quirks::fixed())).unwrap();
        w.intro = Introcore::new(&w.guest.config, 0);
        let g = Gfn(0x300);
        w.intro.hooks.set(&mut w.machine.ept, g, kind);
        assert_eq!(
            w.engine().intro_init_checked(),
            Err(InitError::InvalidInternalState),
            "{kind:?}"
        );
        assert!(!w.intro.initialized);
        w.intro.hooks.remove(g, kind);
        w.engine().commit_hooks();
        assert_eq!(w.engine().intro_init_checked(), Ok(()), "{kind:?}");
    }
}

/// B82: with the untrusted view at index 1 (so B82 also writes it): every guest-physical page
/// is RW- and not convertible in the protected view (agent sections aside, B90), and RWX in the
/// untrusted view unless a hook says otherwise.
#[test]
fn b82_protected_view_rw_everywhere() {
    let mut c = config(Quirks::fixed());
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    let f = fx_with(c);
    let w = &f.w;
    let agent = layout::AGENT_GPA.gfn().0..layout::AGENT_GPA.gfn().0 + AGENT_PAGES;
    let mut gfns: BTreeSet<Gfn> = w.machine.mem.frames().map(|(g, _)| g).collect();
    gfns.extend(
        w.machine
            .ept
            .view(ViewId(2))
            .unwrap()
            .entries()
            .map(|(g, _)| g),
    );
    gfns.extend([Gfn(0), Gfn(0x0003_FFFF), Gfn(0x0003_FFFF_FFFF)]);
    for g in gfns {
        let gpa = Gpa(g.0 << 12);
        let pf = view_flags(w, ViewId(2), gpa);
        assert!(pf.contains(EptFlags::SUPPRESS_VE), "protected {gpa:?}");
        let want = if agent.contains(&g.0) {
            b90_rights((g.0 - agent.start) << 12)
        } else {
            RW_
        };
        assert_eq!(pf & RWX, want, "protected {gpa:?}");
        let c = w.intro.hook_counts(gpa);
        if c == HookCounts::default() {
            let uf = view_flags(w, ViewId(1), gpa);
            assert_eq!(uf & RWX, RWX, "untrusted {gpa:?}");
            assert!(uf.contains(EptFlags::SUPPRESS_VE), "untrusted {gpa:?}");
        }
    }
}
