//! B124, B125: hook_gpa on a non-zero untrusted index.

use crate::fx_on;
use crate::kit::{ept::*, ve::*, worlds::*};
use vesim::layout;
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::ViewId;

/// B124/B125: hook rights and convertibility go to the untrusted view's index (1 here), never
/// to another view (a view 0 installed by hand) nor to the protected view.
#[test]
fn b124_b125_hooks_apply_to_the_untrusted_view_index() {
    let mut c = config(Quirks::fixed());
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    let mut w = World::new(c).unwrap();
    let all = RWX | EptFlags::SUPPRESS_VE;
    w.machine
        .ept
        .insert(ViewId(0), EptView::new(EptEntry(all.bits())))
        .unwrap();
    let f = fx_on(w);
    let w = &f.w;
    let stub = agent_gpa(layout::AGENT_VESTUB);
    let data_sec = agent_gpa(layout::AGENT_DATA);
    assert_eq!(view_flags(w, ViewId(1), stub) & RWX, EptFlags::EXECUTE);
    assert_eq!(view_flags(w, ViewId(1), data_sec) & RWX, EptFlags::empty());
    let t = view_flags(w, ViewId(1), f.pt);
    assert_eq!(t & RWX, R_X);
    assert!(!t.contains(EptFlags::SUPPRESS_VE));
    for g in [stub, data_sec, f.pt] {
        assert_eq!(view_flags(w, ViewId(0), g), all, "view 0 untouched: {g:?}");
        assert!(view_flags(w, ViewId(2), g).contains(EptFlags::SUPPRESS_VE));
    }
    assert_eq!(view_flags(w, ViewId(2), f.pt) & RWX, RW_);
}
