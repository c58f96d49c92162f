//! What the benchmarks in `benches/vesim.rs` run, kept here so that it is tested: worlds set
//! up for one page-table write, and set-associative cache models that replay a workload's
//! cache operations to compare cache designs by hit rate.

// A benchmark whose set-up fails has nothing to measure: it stops there.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use rand_chacha::rand_core::{RngCore, SeedableRng};
use vesim::guest::mm::bits;
use vesim::layout;
use vesim::ops::GuestOp;
use vesim::world::{CacheOp, World, WorldConfig};
use vesim_model::paging::PteFlags;
use vesim_model::{Gpa, VcpuId};

/// A world with one protected process whose page at [`layout::USER_BASE`] is mapped and
/// hooked (its translation monitored), `vcpus` VCPUs, #VE on or off, and `extra` more kernel
/// pages mapped (to frames that are never touched). Returns the world and the pid.
pub fn pt_write_world(ve: bool, vcpus: usize, extra: u64) -> (World, u32) {
    let mut c = WorldConfig {
        ve,
        ..WorldConfig::default()
    };
    c.guest.vcpus = vcpus;
    let mut w = World::new(c).expect("the world builds");
    for i in 0..extra {
        let va = 0xFFFF_A000_0000_0000 + i * 0x1000;
        let frame = layout::PROCESS_PAGES_START.wrapping_add(i * 0x1000);
        w.guest
            .map_at(&mut w.machine, va, frame, PteFlags::WRITABLE)
            .expect("the extra page maps");
    }
    let pid = w.mm().create_process(true).expect("the process starts");
    w.mm_map(VcpuId(0), pid, layout::USER_BASE, bits::RW)
        .expect("the page maps");
    vesim::ops::OpRunner::start_op(
        &mut w,
        VcpuId(0),
        GuestOp::Hook {
            pid,
            va: layout::USER_BASE,
        },
    )
    .expect("the hook is placed");
    (w, pid)
}

/// One filtered page-table write: the caching attributes of the hooked page toggled with
/// instruction form `form` (0 MOV, 1 LOCK CMPXCHG, 2 LOCK XOR), which touches no monitored
/// bit. `flip` alternates the value.
pub fn filtered_write(w: &mut World, pid: u32, form: u32, flip: bool) {
    let attrs = if flip { bits::PWT } else { 0 };
    w.mm_set_caching(VcpuId(0), pid, layout::USER_BASE, attrs, form)
        .expect("the write completes");
    if w.events.len() > 1 << 16 {
        w.events.clear();
    }
}

/// The instruction bytes of form `form` (as [`filtered_write`] uses them).
pub fn form_bytes(form: u32) -> &'static [u8] {
    match form {
        0 => layout::mm_code::MOV.1,
        1 => layout::mm_code::LOCK_CMPXCHG.1,
        _ => layout::mm_code::LOCK_XOR.1,
    }
}

/// Replacement policy of a cache model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Holes first, then a random way (HVMI's insert in `fixed`, B74 with Q17 off).
    Random,
    /// Holes first, then the least recently used way (lookups and inserts count as uses).
    Lru,
}

/// A set-associative cache of entry addresses: `lines` × `buckets` sets of `ways` ways, the
/// set chosen as HVMI does (line from bits 12.., bucket from bits 3..).
#[derive(Clone, Debug)]
pub struct CacheModel {
    lines: u64,
    buckets: u64,
    ways: usize,
    policy: Policy,
    /// (entry, last use) per way, per set.
    sets: Vec<Vec<(u64, u64)>>,
    clock: u64,
    rng: rand_chacha::ChaCha8Rng,
    /// Lookups and hits.
    pub lookups: u64,
    /// Lookups that found the entry.
    pub hits: u64,
}

impl CacheModel {
    /// An empty cache.
    pub fn new(lines: u64, buckets: u64, ways: usize, policy: Policy) -> Self {
        CacheModel {
            lines,
            buckets,
            ways,
            policy,
            sets: vec![Vec::new(); (lines * buckets) as usize],
            clock: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(0x6361_6368_6521),
            lookups: 0,
            hits: 0,
        }
    }

    /// Entries it holds at most.
    pub fn capacity(&self) -> u64 {
        self.lines * self.buckets * self.ways as u64
    }

    fn set(&self, entry: u64) -> usize {
        let line = (entry >> 12) % self.lines;
        let bucket = (entry >> 3) % self.buckets;
        (line * self.buckets + bucket) as usize
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: CacheOp) {
        self.clock += 1;
        let now = self.clock;
        match op {
            CacheOp::Lookup(e) => {
                self.lookups += 1;
                let s = self.set(e);
                if let Some(w) = self.sets[s].iter_mut().find(|w| w.0 == e) {
                    w.1 = now;
                    self.hits += 1;
                }
            }
            CacheOp::Insert(e) => {
                let s = self.set(e);
                if let Some(w) = self.sets[s].iter_mut().find(|w| w.0 == e) {
                    w.1 = now;
                    return;
                }
                if self.sets[s].len() < self.ways {
                    self.sets[s].push((e, now));
                    return;
                }
                let victim = match self.policy {
                    Policy::Random => (self.rng.next_u64() % self.ways as u64) as usize,
                    Policy::Lru => self.sets[s]
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, w)| w.1)
                        .map_or(0, |(i, _)| i),
                };
                self.sets[s][victim] = (e, now);
            }
            CacheOp::Remove(e) => {
                let s = self.set(e);
                self.sets[s].retain(|w| w.0 != e);
            }
        }
    }

    /// Hits over lookups (0 without lookups).
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }
}

/// Where a GPA's frame sits in a 4 KiB-aligned region (used by the memory figure).
pub fn frame_of(i: u64) -> Gpa {
    layout::PROCESS_PAGES_START.wrapping_add(i * 0x1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HVMI geometry replays a real run's operations to the hit count the agent saw.
    #[test]
    fn the_hvmi_model_reproduces_the_agents_hits() {
        let b = vesim::workload::Builtin::DesktopMix;
        let params = vesim::workload::resolve_params(b, &Default::default()).unwrap();
        let mut w =
            vesim::workload::build_world(b, &params, true, vesim::quirks::Profile::Fixed, 0)
                .unwrap();
        w.cache_log = Some(Vec::new());
        let sc = vesim::workload::generate(b, &params, 0);
        let w = vesim::workload::run_scenario(w, &sc, &vesim::sched::Schedule::Random { seed: 0 })
            .unwrap();
        let mut m = CacheModel::new(64, 64, 8, Policy::Random);
        for op in w.cache_log.iter().flatten() {
            m.apply(*op);
        }
        assert_eq!(m.lookups, w.counters.cache_lookups);
        assert_eq!(m.hits, w.counters.cache_hits);
    }

    #[test]
    fn lru_evicts_the_least_recently_used_way() {
        let mut m = CacheModel::new(1, 1, 2, Policy::Lru);
        for op in [
            CacheOp::Insert(8),
            CacheOp::Insert(16),
            CacheOp::Lookup(8),
            CacheOp::Insert(24),
        ] {
            m.apply(op);
        }
        m.apply(CacheOp::Lookup(16));
        m.apply(CacheOp::Lookup(8));
        m.apply(CacheOp::Lookup(24));
        assert_eq!((m.lookups, m.hits), (4, 3), "16 was evicted");
    }
}
