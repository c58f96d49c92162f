//! One test per MUST behaviour of the #VE agent and the introcore core (HVMI-BEHAVIOURS.md
//! B5–B134) and one test per quirk in both settings (VE-SEMANTICS.md section 2, `hvmi` and
//! `fixed`). Every expected value is worked out by hand from the spec text, the Intel SDM, or
//! the reference CPU (`vesim::exec::run`) run on the same state; none is copied from a run of
//! the code under test.
//!
//! Single-#VE cases go through `vesim::verdict::run`. Cases that need guest memory, the
//! information page, EPT views, the cache or several #VEs build a `World` in which the guest
//! executes real instructions (as `end_to_end.rs` does) or in which a #VE is raised through the
//! model's own EPT-violation path (`Machine::ept_violation`) and the agent is then stepped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../kit/mod.rs"]
mod kit;

mod cache;
mod dispatch;
mod entry;
mod handler;
mod hooks;
mod lifecycle;
mod page_walk;
mod pt_write;
mod quirks;

use kit::worlds::{config, Fx, Rip};
use vesim::quirks::Quirks;
use vesim::world::WorldConfig;

/// The kit's `Fx` on the default world of quirk setting `q`, every VCPU at `CODE`.
fn fx(q: Quirks) -> Fx {
    fx_with(config(q))
}

/// The kit's `Fx` on a world of configuration `c`, every VCPU at `CODE`.
fn fx_with(c: WorldConfig) -> Fx {
    Fx::new(c, Rip::AtCode)
}
