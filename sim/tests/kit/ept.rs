//! EPT rights of the views as the tests read them.

use vesim::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::{Gpa, ViewId};

/// Read, write and execute rights, and the pairs of them the views use.
pub const RWX: EptFlags = EptFlags::READ
    .union(EptFlags::WRITE)
    .union(EptFlags::EXECUTE);
pub const RW_: EptFlags = EptFlags::READ.union(EptFlags::WRITE);
pub const R_X: EptFlags = EptFlags::READ.union(EptFlags::EXECUTE);

/// The flags of `gpa`'s entry in view `view`.
pub fn view_flags(w: &World, view: ViewId, gpa: Gpa) -> EptFlags {
    w.machine.ept.view(view).unwrap().entry(gpa.gfn()).flags()
}

/// ... in introcore's untrusted view.
pub fn untrusted_flags(w: &World, gpa: Gpa) -> EptFlags {
    view_flags(w, w.intro.untrusted, gpa)
}

/// ... in introcore's protected view.
pub fn protected_flags(w: &World, gpa: Gpa) -> EptFlags {
    view_flags(w, w.intro.protected, gpa)
}
