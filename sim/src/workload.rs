//! Workloads: built-in scenarios driven through the guest memory manager.
//!
//! - `paper-synthetic`: the synthetic paging test of the HVMI #VE paper, on one VCPU: a
//!   protected user process maps `pages` pages (introcore monitors their translations), then
//!   the memory manager changes each page's caching attributes `changes` times with real
//!   PTE-writing instructions (MOV, LOCK CMPXCHG, LOCK XOR in turn), cycling PWT, PCD,
//!   PWT|PCD and write-back. With `pat=1` the cycle also sets PAT, which in a 4K PTE is bit 7:
//!   HVMI's monitored bits (B139) include bit 7 as PS at every level, so those changes are
//!   relevant and raised.

use crate::guest::mm::{bits, MmError};
use crate::introcore::pts::Owner;
use crate::layout;
use crate::quirks::Profile;
use crate::world::{Counters, World, WorldConfig, WorldError};
use std::collections::BTreeMap;

/// A built-in scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// The paper's synthetic paging test.
    PaperSynthetic,
}

impl Builtin {
    /// Every built-in, by name.
    pub const ALL: [(&'static str, Builtin); 1] = [("paper-synthetic", Builtin::PaperSynthetic)];

    /// The built-in called `name`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::PaperSynthetic => "paper-synthetic",
        }
    }

    /// Parameters with their defaults and bounds (name, default, max).
    pub fn params(self) -> &'static [(&'static str, u64, u64)] {
        match self {
            Builtin::PaperSynthetic => &[
                ("pages", 100, 4096),
                ("changes", 100, 100_000),
                ("pat", 0, 1),
            ],
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Unknown parameter.
    #[error("'{0}' is not a parameter of {1} (it takes {2})")]
    UnknownParam(String, &'static str, String),
    /// Out of range.
    #[error("{0}={1} is outside {2}..={3}")]
    OutOfRange(String, u64, u64, u64),
    /// The world could not be built.
    #[error(transparent)]
    World(#[from] WorldError),
    /// A guest operation failed.
    #[error("the guest memory manager failed: {0}")]
    Mm(#[from] MmError),
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// Harness counters.
    pub counters: Counters,
    /// Cache inserts, removals and random replacements by introcore.
    pub cache: crate::introcore::cache::CacheStats,
    /// Monitor callbacks and swap callbacks introcore ran.
    pub swaps: u64,
}

/// Resolves `sets` against the scenario's parameters.
pub fn resolve_params(
    b: Builtin,
    sets: &BTreeMap<String, u64>,
) -> Result<BTreeMap<&'static str, u64>, RunError> {
    let params = b.params();
    for k in sets.keys() {
        if !params.iter().any(|(n, _, _)| n == k) {
            let names: Vec<&str> = params.iter().map(|(n, _, _)| *n).collect();
            return Err(RunError::UnknownParam(
                k.clone(),
                b.name(),
                names.join(", "),
            ));
        }
    }
    let mut out = BTreeMap::new();
    for (n, d, max) in params {
        let v = sets.get(*n).copied().unwrap_or(*d);
        let min = if *max == 1 { 0 } else { 1 };
        if v < min || v > *max {
            return Err(RunError::OutOfRange((*n).to_string(), v, min, *max));
        }
        out.insert(*n, v);
    }
    Ok(out)
}

/// Runs a built-in once.
pub fn run_builtin(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    ve: bool,
    profile: Profile,
    seed: u64,
) -> Result<RunResult, RunError> {
    let config = WorldConfig {
        quirks: profile.quirks(),
        seed,
        ve,
        ..WorldConfig::default()
    };
    let mut w = World::new(config)?;
    match b {
        Builtin::PaperSynthetic => paper_synthetic(&mut w, params)?,
    }
    Ok(RunResult {
        counters: w.counters.clone(),
        cache: w.intro.cache.stats,
        swaps: w.intro.swaps.len() as u64,
    })
}

fn paper_synthetic(w: &mut World, params: &BTreeMap<&'static str, u64>) -> Result<(), MmError> {
    let pages = params.get("pages").copied().unwrap_or(1);
    let changes = params.get("changes").copied().unwrap_or(1);
    let pid = w.create_process(true)?;
    let cr3 = w.guest.processes[pid as usize].cr3;
    let vas: Vec<u64> = (0..pages).map(|i| layout::USER_BASE + i * 0x1000).collect();
    for &va in &vas {
        w.mm_map(0, pid, va, bits::RW)?;
        w.hook_translation(cr3, va, Owner::Process(pid));
    }
    w.commit_hooks();
    let pat = params.get("pat").copied().unwrap_or(0) != 0;
    let attrs: &[u64] = if pat {
        &[bits::PWT, bits::PCD, bits::PWT | bits::PCD, bits::PAT, 0]
    } else {
        &[bits::PWT, bits::PCD, bits::PWT | bits::PCD, 0]
    };
    for j in 0..changes {
        for &va in &vas {
            w.mm_set_caching(0, pid, va, attrs[(j as usize) % attrs.len()], j as u32)?;
        }
    }
    Ok(())
}
