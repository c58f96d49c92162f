//! One test per behaviour of the introcore engine around the agent (HVMI-BEHAVIOURS.md
//! B80–B140) that `agent_behaviours` does not already cover, the quirks Q16, Q24 and Q27 in
//! both settings (VE-SEMANTICS.md section 2), the isolation invariant I3 (ARCHITECTURE.md) and
//! the deploy / use / unload / redeploy lifecycle.
//!
//! Every expected value is worked out by hand from the spec text or the hardware rules; none
//! is copied from a run of the code under test. Page-table writes are real guest instructions
//! executed by the CPU model (a `mov [rax], rbx` on a code page of the fixture, or the guest
//! memory manager's own instructions), so they fault, #VE and exit exactly as hardware would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../kit/mod.rs"]
mod kit;

mod deploy;
mod dispatch;
mod hook_gpa;
mod hook_pts;
mod init;
mod isolation;
mod lifecycle;
mod quirks;
mod swap_access;
mod unload;

use kit::events::pt_outcomes;
use kit::worlds::{config, Fx, Rip, OLD};
use vesim::agent::AgentOutcome;
use vesim::quirks::Quirks;
use vesim::world::{World, WorldConfig};

/// The kit's `Fx` on the default world of quirk setting `q`, the VCPUs where the world put them.
fn fx(q: Quirks) -> Fx {
    fx_with(config(q))
}

/// The kit's `Fx` on a world of configuration `c`, the VCPUs where the world put them.
fn fx_with(c: WorldConfig) -> Fx {
    Fx::new(c, Rip::Kept)
}

/// The kit's `Fx` in world `w`, the VCPUs where the world put them.
fn fx_on(w: World) -> Fx {
    Fx::on(w, Rip::Kept)
}

/// A world that went through deploy, a few #VEs and a complete unload.
fn unloaded(q: Quirks) -> Fx {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    f.write_entry(0, 1, OLD);
    f.write_entry(0, 2, OLD);
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::Raised]
    );
    assert_eq!(f.w.engine().unload_agent(), Ok(true));
    f
}
