//! The hypervisor-side engine (introcore). [`Introcore`] is its state; [`Engine`] is
//! introcore at work, borrowing what the hypervisor lets it touch for one call. By file:
//!
//! - `deploy`: the protected view and the agent's deploy (B82, B86–B94).
//! - `hypercall`: the VMCALL handler (B102–B103).
//! - `dispatch`: a raised #VE handled as the EPT violation it stands for (B104–B111).
//! - `exit`: the EPT-violation exit, the path of every write with #VE off: emulate and commit.
//! - `monitors`: monitors, hook commits and the cache writer's inserts and evictions.
//! - [`lifecycle`]: init checks, unload and redeploy, swaps of agent pages (B80–B81, B95–B101,
//!   B116–B122).
//! - [`hooks`]: GPA hooks on the untrusted view and what makes a page convertible.
//! - [`ptm`] and [`pts`]: HVMI's names for its page-table monitors (PTM) and translation
//!   hooks (PTS, the swap callbacks), kept so the code reads next to HVMI's.
//! - [`cache`]: the cache writer (B70–B79).
//! - [`emulate`]: the software emulation of a page-table write for the exit path.

pub mod cache;
mod deploy;
pub use deploy::retpoline;
mod dispatch;
pub mod emulate;
mod exit;
pub mod hooks;
mod hypercall;
pub mod lifecycle;
mod monitors;
pub mod ptm;
pub mod pts;

pub use crate::abi::{break_reason, call, ENOSYS, HC_RAX, HC_RDI, STATUS_NOT_SUPPORTED};

use crate::events::{CacheOp, Counters, EventLog};
use crate::guest::{software_translate, Guest, GuestConfig};
use crate::layout;
use crate::quirks::Quirks;
use cache::CacheWriter;
use hooks::{GpaHooks, HookKind};
use ptm::{CallbackRecord, Ptm};
use vesim_model::tracked::Tracked;
use vesim_model::vcpu::Vcpu;
use vesim_model::{Gfn, Gpa, Machine, ViewId};

/// The engine's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introcore {
    /// GPA hooks on the untrusted view.
    pub hooks: Tracked<GpaHooks>,
    /// Page-table monitors.
    pub ptm: Tracked<Ptm>,
    /// The #VE cache writer.
    pub cache: CacheWriter,
    /// The untrusted view.
    pub untrusted: ViewId,
    /// The protected view (B82).
    pub protected: ViewId,
    /// `gVeVeInitialized`.
    pub initialized: bool,
    /// `gVeDeployed`.
    pub deployed: bool,
    /// `gVePendingUnload`.
    pub pending_unload: bool,
    /// CPU-map slot given to each VCPU (None: no information page, #VE off on it).
    pub slots: Vec<Option<u64>>,
    /// Callback records, in order.
    pub callbacks: Vec<CallbackRecord>,
    /// The EPTP index introcore believes current while dispatching a raised #VE: HVMI's
    /// `_VCPU_STATE.EptpIndex` (guests.h), forced at B105 (0 in `hvmi`, Q24). HVMI keeps it
    /// per VCPU; vesim dispatches synchronously inside one VMCALL, so one value serves.
    pub dispatch_view: Option<ViewId>,
    /// Translation hooks.
    pub pts: Tracked<pts::Pts>,
    /// Swap callbacks, in order.
    pub swaps: Vec<pts::SwapRecord>,
    /// GPA of the last real EPT violation: HVMI's `_VCPU_STATE.ExitGpa` (guests.h), which
    /// page-rights validation reuses (`ExitGla` and `ExitAccess` feed only alerts there and are
    /// not kept). One value for the engine, as `dispatch_view`.
    pub last_exit_gpa: Option<Gpa>,
    /// The OS handler bytes the trampoline replaced (`VeCoreReplacedCode`).
    pub replaced_code: Vec<u8>,
    /// The GPA hooks the deploy placed on the agent (removed on unload).
    pub agent_hooks: Vec<(Gfn, HookKind)>,
    /// The harness's unraised page walks when the agent was last deployed: its information
    /// pages count from then on.
    pub page_walk_set_at_deploy: u64,
}

impl Introcore {
    /// Takes `snapshot`'s state back field by field, copying the hook and monitor tables only
    /// where they were changed since (`Tracked`).
    pub(crate) fn restore(&mut self, snapshot: &Introcore) {
        let Introcore {
            hooks,
            ptm,
            cache,
            untrusted,
            protected,
            initialized,
            deployed,
            pending_unload,
            slots,
            callbacks,
            dispatch_view,
            pts,
            swaps,
            last_exit_gpa,
            replaced_code,
            agent_hooks,
            page_walk_set_at_deploy,
        } = self;
        hooks.restore(&snapshot.hooks);
        ptm.restore(&snapshot.ptm);
        cache.clone_from(&snapshot.cache);
        *untrusted = snapshot.untrusted;
        *protected = snapshot.protected;
        *initialized = snapshot.initialized;
        *deployed = snapshot.deployed;
        *pending_unload = snapshot.pending_unload;
        slots.clone_from(&snapshot.slots);
        callbacks.clone_from(&snapshot.callbacks);
        *dispatch_view = snapshot.dispatch_view;
        pts.restore(&snapshot.pts);
        swaps.clone_from(&snapshot.swaps);
        *last_exit_gpa = snapshot.last_exit_gpa;
        replaced_code.clone_from(&snapshot.replaced_code);
        agent_hooks.clone_from(&snapshot.agent_hooks);
        *page_walk_set_at_deploy = snapshot.page_walk_set_at_deploy;
    }

    /// Counts every tracked table as equal to a snapshot just taken.
    pub(crate) fn clean(&mut self) {
        self.hooks.clean();
        self.ptm.clean();
        self.pts.clean();
    }
}

impl Introcore {
    /// A fresh engine for `guest`.
    pub fn new(guest: &GuestConfig, seed: u64) -> Self {
        Introcore {
            hooks: Tracked::new(GpaHooks::new(guest.untrusted_view)),
            ptm: Tracked::new(Ptm::default()),
            cache: CacheWriter::new(seed ^ 0x6361_6368_6521),
            untrusted: guest.untrusted_view,
            protected: guest.protected_view,
            initialized: false,
            deployed: false,
            pending_unload: false,
            slots: Vec::new(),
            callbacks: Vec::new(),
            dispatch_view: None,
            pts: Tracked::new(pts::Pts::default()),
            swaps: Vec::new(),
            last_exit_gpa: None,
            replaced_code: Vec::new(),
            agent_hooks: Vec::new(),
            page_walk_set_at_deploy: 0,
        }
    }
}

/// Introcore at work: its state and what the hypervisor lets it touch (guest memory and EPT,
/// the VCPUs' state, the guest's configuration and page-table roots, the sinks it reports to,
/// the quirk switches). Built by the world for each call into the engine.
pub struct Engine<'a> {
    /// The engine's state.
    pub intro: &'a mut Introcore,
    /// Memory and EPT.
    pub machine: &'a mut Machine,
    /// The VCPUs.
    pub vcpus: &'a mut [Vcpu],
    /// The guest (its configuration, System CR3 and processes; read only).
    pub guest: &'a Guest,
    /// The event log.
    pub events: &'a mut EventLog,
    /// The harness counters.
    pub counters: &'a mut Counters,
    /// The cache-operation log, when one is kept.
    pub cache_log: &'a mut Option<Vec<CacheOp>>,
    /// Quirk switches.
    pub quirks: Quirks,
    /// Whether #VE is used.
    pub ve: bool,
}

/// What the checkers and tests ask of introcore's state.
impl Introcore {
    /// The guest-physical address of the cache line page holding `entry`, as introcore maps
    /// it: through the System CR3 GVA of that line (B72), so a remapped line is found again.
    fn cache_line_page(machine: &Machine, guest: &Guest, entry: Gpa) -> Option<Gpa> {
        let gva = layout::AGENT_GVA + layout::AGENT_VECACHE + cache::line_of(entry) * 0x1000;
        software_translate(machine, guest.cr3, gva)
    }

    /// Whether `entry` is in the agent cache right now.
    pub fn cache_contains(&self, machine: &Machine, guest: &Guest, entry: Gpa) -> bool {
        Self::cache_line_page(machine, guest, entry)
            .is_some_and(|p| CacheWriter::contains(&machine.mem, p, entry))
    }

    /// The monitored entries that are cached: I7 holds when there is none.
    pub fn cached_monitored_entries(&self, machine: &Machine, guest: &Guest) -> Vec<Gpa> {
        // Each line page is translated once per scan, not once per entry.
        let mut pages = [None; cache::LINES as usize];
        let mut out = Vec::new();
        self.ptm.for_each_monitored(|e| {
            let page = match pages.get_mut(cache::line_of(e) as usize) {
                Some(p) => *p.get_or_insert_with(|| Self::cache_line_page(machine, guest, e)),
                None => Self::cache_line_page(machine, guest, e),
            };
            if page.is_some_and(|p| CacheWriter::contains(&machine.mem, p, e)) {
                out.push(e);
            }
        });
        out
    }

    /// The hooks on the frame of a guest-physical address.
    pub fn hook_counts(&self, gpa: Gpa) -> hooks::HookCounts {
        self.hooks.counts(Gfn(gpa.0 >> 12))
    }
}
