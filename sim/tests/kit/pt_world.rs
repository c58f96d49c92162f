//! `PtWorld`: a world whose guest executes page-table writes for real, on one or two VCPUs,
//! and the multi-VCPU scenarios run in it.

use super::asm::{assemble, assemble_terminal, for_profile, program, GOp, Terminal};
use proptest::prelude::*;
use std::collections::BTreeMap;
use vesim::guest::GuestConfig;
use vesim::layout;
use vesim::quirks::{Profile, Quirks};
use vesim::world::{World, WorldConfig};
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::{Gla, Gpa, MachineConfig, VcpuId};

/// VCPU i's code page.
pub const CODE_GVA: u64 = 0xFFFF_F800_0030_0000;
/// Two data regions, each with its own page-table page (a PT covers 2 MiB); the second is in
/// the user half (supervisor pages), where a page walk that finds nothing to set raises (B66).
pub const REGIONS: [u64; 2] = [0xFFFF_F800_0040_0000, 0x0000_0000_4000_0000];
/// Pages 0..8 of a region: their PTEs are written, the pages are never accessed.
pub const TARGET_PAGES: u64 = 8;
/// Pages 8..12 of a region: read and written by the guest (page walks); their PTEs only have
/// A cleared.
pub const WALK_PAGES: u64 = 4;
pub const PAGES: u64 = TARGET_PAGES + WALK_PAGES;
/// An entry index no page uses, for the monitor that keeps a table page convertible.
pub const ANCHOR_INDEX: u64 = 500;

pub fn target_page(t: u8) -> u64 {
    let t = u64::from(t) % (2 * TARGET_PAGES);
    REGIONS[(t / TARGET_PAGES) as usize] + (t % TARGET_PAGES) * 0x1000
}

pub fn walk_page(k: u8) -> u64 {
    let k = u64::from(k) % (2 * WALK_PAGES);
    REGIONS[(k / WALK_PAGES) as usize] + (TARGET_PAGES + k % WALK_PAGES) * 0x1000
}

pub fn pte_gla(page: u64) -> u64 {
    self_map_entry_address(layout::DEFAULT_SELF_MAP_INDEX, Gla(page), 1).0
}

/// The world of properties 3–6.
pub struct PtWorld {
    pub w: World,
    /// Code page of each VCPU.
    pub code: Vec<Gpa>,
    /// Where each VCPU's program ends.
    pub end: Vec<u64>,
    /// PTE value of each data page after the set-up, by linear address.
    pub initial: BTreeMap<u64, u64>,
    /// The page-table page of each region.
    pub tables: [Gpa; 2],
}

impl PtWorld {
    pub fn new(quirks: Quirks, vcpus: usize) -> PtWorld {
        Self::with_views(quirks, vcpus, (0, 1))
    }

    /// A world whose untrusted and protected views have the given EPTP indices.
    pub fn with_views(quirks: Quirks, vcpus: usize, views: (u16, u16)) -> PtWorld {
        Self::with_machine(quirks, vcpus, views, MachineConfig::default())
    }

    /// ... and the given machine options.
    pub fn with_machine(
        quirks: Quirks,
        vcpus: usize,
        (untrusted, protected): (u16, u16),
        machine: MachineConfig,
    ) -> PtWorld {
        let config = WorldConfig {
            machine,
            guest: GuestConfig {
                vcpus,
                untrusted_view: vesim_model::ViewId(untrusted),
                protected_view: vesim_model::ViewId(protected),
                ..GuestConfig::default()
            },
            quirks,
            ..WorldConfig::default()
        };
        let mut w = World::new(config).unwrap();
        let mut code = Vec::new();
        for cpu in 0..vcpus as u64 {
            let g = w
                .guest
                .map_new(&mut w.machine, CODE_GVA + cpu * 0x1000, PteFlags::empty())
                .unwrap();
            code.push(g);
        }
        let mut initial = BTreeMap::new();
        for region in REGIONS {
            for i in 0..PAGES {
                let page = region + i * 0x1000;
                w.guest
                    .map_new(
                        &mut w.machine,
                        page,
                        PteFlags::WRITABLE | PteFlags::NO_EXECUTE,
                    )
                    .unwrap();
            }
        }
        let mut tables = [Gpa(0); 2];
        for (r, region) in REGIONS.iter().enumerate() {
            tables[r] = w
                .guest
                .entry_gpa(&w.machine, *region, 1)
                .unwrap()
                .page_base();
            for i in 0..PAGES {
                let page = region + i * 0x1000;
                let e = w.guest.entry_gpa(&w.machine, page, 1).unwrap();
                initial.insert(page, w.machine.mem.read_u64(e));
            }
        }
        PtWorld {
            w,
            code,
            end: vec![0; vcpus],
            initial,
            tables,
        }
    }

    pub fn pte_gpa(&self, page: u64) -> Gpa {
        let r = usize::from(page >> 63 == 0);
        self.tables[r].wrapping_add(((page >> 12) & 0x1FF) * 8)
    }

    /// Places the monitors: the anchor of region 0 (and of region 1 if `anchor1`), and one
    /// on the PTE of each data page listed (`pages` index r * PAGES + i).
    pub fn monitor(&mut self, anchor1: bool, pages: &[u8]) {
        self.w
            .engine()
            .place_monitor(self.tables[0].wrapping_add(ANCHOR_INDEX * 8));
        if anchor1 {
            self.w
                .engine()
                .place_monitor(self.tables[1].wrapping_add(ANCHOR_INDEX * 8));
        }
        for p in pages {
            let p = u64::from(*p) % (2 * PAGES);
            let page = REGIONS[(p / PAGES) as usize] + (p % PAGES) * 0x1000;
            let e = self.pte_gpa(page);
            self.w.engine().place_monitor(e);
        }
        self.w.engine().commit_hooks();
    }

    /// Loads VCPU `cpu`'s program (RIP at its start).
    pub fn load(&mut self, cpu: usize, ops: &[GOp], terminal: Option<Terminal>) {
        let mut code = Vec::new();
        let initial = self.initial.clone();
        let base = |page: u64| initial.get(&page).copied().unwrap_or(0);
        for op in ops {
            assemble(&mut code, *op, base);
        }
        if let Some(t) = terminal {
            let q = self.w.quirks;
            assemble_terminal(&mut code, t, &q, base);
        }
        // With a terminal the end is never reached: the refused write repeats (Q1, I10).
        let start = CODE_GVA + cpu as u64 * 0x1000;
        self.end[cpu] = start + code.len() as u64;
        assert!(code.len() < 0x1000, "program too long");
        self.w.machine.mem.write(self.code[cpu], &code);
        self.w.vcpus[cpu].rip = start;
    }

    pub fn done(&self, cpu: usize) -> bool {
        self.w.vcpus[cpu].rip == self.end[cpu] || self.w.stopped[cpu].is_some()
    }

    /// The VCPU to step next: the `k`-th of those not done.
    pub fn pick(&self, k: u8) -> Option<usize> {
        let live: Vec<usize> = (0..self.w.vcpus.len()).filter(|c| !self.done(*c)).collect();
        (!live.is_empty()).then(|| live[usize::from(k) % live.len()])
    }

    pub fn in_agent(&self, cpu: usize) -> bool {
        let rip = self.w.vcpus[cpu].rip;
        vesim::layout::in_agent(rip) || rip == layout::OS_VE_HANDLER_GVA
    }

    pub fn quiescent(&self) -> bool {
        (0..self.w.vcpus.len()).all(|c| !self.in_agent(c))
    }

    /// Finishes every agent invocation in flight, stepping the VCPUs inside the agent in turn
    /// (one may spin on a lock another holds), at most `steps_max` rounds.
    pub fn drain(&mut self, steps_max: u64) {
        for _ in 0..steps_max {
            let inside: Vec<usize> = (0..self.w.vcpus.len())
                .filter(|c| self.in_agent(*c) && self.w.stopped[*c].is_none())
                .collect();
            if inside.is_empty() {
                return;
            }
            for c in inside {
                let _ = self.w.step(VcpuId(c));
            }
        }
    }
}

/// A multi-VCPU scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub profile: Profile,
    pub programs: Vec<Vec<GOp>>,
    pub terminal: Vec<Option<Terminal>>,
    pub monitors: Vec<u8>,
    pub anchor1: bool,
    pub schedule: Vec<u8>,
    /// (untrusted, protected) EPTP indices.
    pub views: (u16, u16),
    /// The walker's HVMI-observed A/D behaviour and the EPTP-index erratum.
    pub machine: MachineConfig,
}

pub fn views() -> impl Strategy<Value = (u16, u16)> {
    prop_oneof![
        Just((0u16, 1u16)),
        Just((1, 0)),
        Just((2, 5)),
        Just((3, 1)),
        Just((511, 7))
    ]
}

prop_compose! {
    pub fn scenario(profiles: BoxedStrategy<Profile>, terminal_p: f64)(
        profile in profiles,
        programs in prop::collection::vec(program(), 1..=2),
        terminal in prop::collection::vec(
            prop::option::weighted(terminal_p, (0u8..16).prop_map(|target| Terminal { target })),
            2,
        ),
        monitors in prop::collection::vec(0u8..24, 0..10),
        anchor1 in any::<bool>(),
        schedule in prop::collection::vec(any::<u8>(), 1..64),
        views in views(),
        shared in prop::option::of((4u8..8, any::<bool>())),
        (ad_writes_all_levels, eptp_index_reads_zero) in (any::<bool>(), any::<bool>()),
    ) -> Scenario {
        let machine = MachineConfig {
            ad_writes_all_levels,
            eptp_index_reads_zero,
            ..MachineConfig::default()
        };
        // Every VCPU starting with the same walk of a user-half page: when two walks overlap,
        // the second agent finds nothing to set and raises (B66).
        let programs = programs
            .into_iter()
            .map(|p| match shared {
                Some((walk, write)) => {
                    let mut q = vec![GOp::Walk { walk, write }];
                    q.extend(p);
                    q
                }
                None => p,
            })
            .collect();
        Scenario { profile, programs, terminal, monitors, anchor1, schedule, views, machine }
    }
}

pub fn build(sc: &Scenario) -> PtWorld {
    let q = sc.profile.quirks();
    let mut pw = PtWorld::with_machine(q, sc.programs.len(), sc.views, sc.machine);
    pw.monitor(sc.anchor1, &sc.monitors);
    for (cpu, prog) in sc.programs.iter().enumerate() {
        let ops = for_profile(prog.clone(), &q);
        pw.load(cpu, &ops, sc.terminal.get(cpu).copied().flatten());
    }
    pw
}

/// Steps of one scenario run.
pub const SCENARIO_STEPS_MAX: usize = 4000;
