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
use crate::layout;
use crate::quirks::Profile;
use crate::world::{Counters, World, WorldConfig, WorldError};
use std::collections::BTreeMap;

/// A built-in scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// The paper's synthetic paging test.
    PaperSynthetic,
    /// Several processes, some protected, on several VCPUs, with KPTI: a memory manager mixing
    /// map, unmap, protect, caching changes, A-bit trims, swap out and in, and touches.
    DesktopMix,
    /// desktop-mix with the memory manager under pressure: mostly swap out, swap in, trims and
    /// the touches that bring pages back.
    MemoryPressure,
    /// desktop-mix with isolation attempts mixed in ([`crate::attack`]): reads, writes and
    /// execution of agent pages (the information page, its semaphore, the cache, the CPU
    /// map), a switch to the protected view, agent pages remapped through the page tables,
    /// RAISE_EPT from guest code, and CPU indices the CPU map has no slot for.
    Attacks,
    /// desktop-mix with introcore unloading and redeploying the agent while the memory
    /// managers keep going: hooks are added (and monitored entries written) while an unload
    /// is pending, while the unloader waits at the gate, and while no agent is deployed.
    UnloadRace,
}

impl Builtin {
    /// Every built-in, by name.
    pub const ALL: [(&'static str, Builtin); 5] = [
        ("paper-synthetic", Builtin::PaperSynthetic),
        ("desktop-mix", Builtin::DesktopMix),
        ("memory-pressure", Builtin::MemoryPressure),
        ("attacks", Builtin::Attacks),
        ("unload-race", Builtin::UnloadRace),
    ];

    /// The built-in called `name`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::PaperSynthetic => "paper-synthetic",
            Builtin::DesktopMix => "desktop-mix",
            Builtin::MemoryPressure => "memory-pressure",
            Builtin::Attacks => "attacks",
            Builtin::UnloadRace => "unload-race",
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
            Builtin::DesktopMix | Builtin::MemoryPressure => &[
                ("vcpus", 4, 64),
                ("processes", 4, 32),
                ("pages", 16, 512),
                ("ops", 400, 100_000),
                ("kpti", 1, 1),
            ],
            Builtin::Attacks => &[
                ("vcpus", 4, 64),
                ("processes", 4, 32),
                ("pages", 16, 512),
                ("ops", 400, 100_000),
                ("kpti", 1, 1),
                ("attacks", 40, 10_000),
            ],
            Builtin::UnloadRace => &[
                ("vcpus", 4, 64),
                ("processes", 4, 32),
                ("pages", 16, 512),
                ("ops", 400, 100_000),
                ("kpti", 1, 1),
                ("unloads", 2, 16),
                ("delay", 64, 10_000),
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
    /// A VCPU stopped.
    #[error("VCPU {0} stopped: {1}")]
    Stopped(usize, String),
    /// The scenario does not fit the machine.
    #[error("{0}")]
    Scenario(String),
}

/// Steps a multi-VCPU run may take.
pub const STEPS_MAX: u64 = 50_000_000;

/// Draws the parameters not given in `sets` from `seed` (swarm testing): each within its
/// range, the defaults of [`Builtin::params`] being the upper values drawn towards.
pub fn swarm_params(
    b: Builtin,
    sets: &BTreeMap<String, u64>,
    seed: u64,
) -> Result<BTreeMap<&'static str, u64>, RunError> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5357_4152_4d00);
    let mut drawn = sets.clone();
    for (n, d, max) in b.params() {
        let v = if *max == 1 {
            rng.next_u64() % 2
        } else {
            1 + rng.next_u64() % (*d).min(*max).max(1)
        };
        drawn.entry((*n).to_string()).or_insert(v);
    }
    resolve_params(b, &drawn)
}

/// A scenario as data: the processes to create (protected or not) and each VCPU's queue of
/// operations. It runs without its generator, so a trace can carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Whether each process is protected, by pid.
    pub processes: Vec<bool>,
    /// The operations of each VCPU.
    pub queues: Vec<Vec<crate::ops::GuestOp>>,
}

/// The scenario of a built-in, drawn from `seed` where it is random.
pub fn generate(b: Builtin, params: &BTreeMap<&'static str, u64>, seed: u64) -> Scenario {
    match b {
        Builtin::PaperSynthetic => paper_synthetic(params),
        Builtin::DesktopMix => desktop_mix_scenario(params, seed, &DESKTOP_WEIGHTS),
        Builtin::MemoryPressure => desktop_mix_scenario(params, seed, &PRESSURE_WEIGHTS),
        Builtin::Attacks => {
            let mut sc = desktop_mix_scenario(params, seed, &DESKTOP_WEIGHTS);
            add_attacks(&mut sc, params, seed);
            sc
        }
        Builtin::UnloadRace => {
            let mut sc = desktop_mix_scenario(params, seed, &DESKTOP_WEIGHTS);
            add_unloads(&mut sc, params, seed);
            sc
        }
    }
}

/// Mixes `unloads` unload-and-redeploy pairs into the queues of a scenario: each unload at a
/// position drawn from `seed` in some VCPU's queue, its redeploy later in the same queue, the
/// unloader landing 0..=`delay` steps after the request. An unload requested while another is
/// pending, or a redeploy while the agent is deployed, is refused and skipped.
fn add_unloads(sc: &mut Scenario, params: &BTreeMap<&'static str, u64>, seed: u64) {
    use crate::ops::GuestOp;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x554e_4c4f_4144_0000);
    let n = params.get("unloads").copied().unwrap_or(0);
    let max_delay = params.get("delay").copied().unwrap_or(0);
    let vcpus = sc.queues.len().max(1) as u64;
    for _ in 0..n {
        let q = &mut sc.queues[(rng.next_u64() % vcpus) as usize];
        let at = (rng.next_u64() % (q.len() as u64 + 1)) as usize;
        let back = at + 1 + (rng.next_u64() % (q.len() as u64 - at as u64 + 1)) as usize;
        let delay = (rng.next_u64() % (max_delay + 1)) as u32;
        q.insert(at, GuestOp::Unload { delay });
        q.insert(back, GuestOp::Redeploy);
    }
}

/// Mixes `attacks` isolation attempts into the queues of a scenario at positions drawn from
/// `seed`. Attempts that end their VCPU (execute, view switch) go last in a queue, at most one
/// per VCPU and never on VCPU 0; each remap takes a frame of its own.
fn add_attacks(sc: &mut Scenario, params: &BTreeMap<&'static str, u64>, seed: u64) {
    use crate::attack::Attack;
    use crate::ops::GuestOp;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x4154_5441_434b_0000);
    let n = params.get("attacks").copied().unwrap_or(0);
    let processes = sc.processes.len().max(1) as u64;
    let vcpus = sc.queues.len().max(1);
    let mut fatal_on = vec![false; vcpus];
    let mut remaps = 0;
    for _ in 0..n {
        let r = rng.next_u64();
        let mut attack = Attack::ALL[(r % Attack::ALL.len() as u64) as usize].1;
        let cpu = (rng.next_u64() % vcpus as u64) as usize;
        if attack.fatal() && (cpu == 0 || fatal_on[cpu]) {
            // No room for another attempt that ends its VCPU: a write instead.
            attack = Attack::AgentWrite;
        }
        let pid = (rng.next_u64() % processes) as u32;
        let mut arg = rng.next_u64();
        let mut value = rng.next_u64();
        if attack == Attack::AgentWrite && r & 0x100 != 0 {
            // The #VE semaphore of some VCPU's information page, set by hand.
            let page = (arg >> 8) % vcpus as u64;
            arg = layout::AGENT_VEINFO + page * 0x1000 + 4;
            value = 1;
        }
        if attack == Attack::Remap {
            value = remaps;
            remaps += 1;
        }
        let op = GuestOp::Attack {
            pid,
            attack,
            arg,
            value,
        };
        if attack.fatal() {
            fatal_on[cpu] = true;
            sc.queues[cpu].push(op);
            continue;
        }
        // Insert before any fatal attempt at the end of the queue.
        let q = &mut sc.queues[cpu];
        let len = q.len() - usize::from(fatal_on[cpu]);
        let at = (rng.next_u64() % (len as u64 + 1)) as usize;
        q.insert(at, op);
    }
}

/// Relative weights of map, unmap, protect, caching, trim, swap out, swap in, touch.
type Weights = [u64; 8];
const DESKTOP_WEIGHTS: Weights = [4, 1, 2, 2, 1, 1, 1, 4];
const PRESSURE_WEIGHTS: Weights = [3, 1, 0, 0, 3, 4, 4, 3];

fn desktop_mix_scenario(
    params: &BTreeMap<&'static str, u64>,
    seed: u64,
    weights: &Weights,
) -> Scenario {
    use crate::ops::GuestOp;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x4445_534b_544f_5000);
    let vcpus = params.get("vcpus").copied().unwrap_or(1).max(1) as usize;
    let processes = params.get("processes").copied().unwrap_or(2).max(1) as u32;
    let pages = params.get("pages").copied().unwrap_or(8).max(1);
    let ops = params.get("ops").copied().unwrap_or(100);
    let protected: Vec<bool> = (0..processes)
        .map(|i| i % 2 == 0 || rng.next_u64() % 2 == 0)
        .collect();
    let mut queues: Vec<Vec<GuestOp>> = vec![Vec::new(); vcpus];
    for k in 0..ops {
        // Each process's memory manager runs on one VCPU (its page-table updates are
        // serialized, as the guest's working-set lock does); processes run concurrently.
        let pid = (rng.next_u64() % u64::from(processes)) as u32;
        let cpu = pid as usize % vcpus;
        let va = layout::USER_BASE + (u64::from(pid) << 30) + (rng.next_u64() % pages) * 0x1000;
        let r = rng.next_u64();
        let total: u64 = weights.iter().sum();
        let mut pick = r % total.max(1);
        let mut kind = 0;
        while kind < 7 && pick >= weights[kind] {
            pick -= weights[kind];
            kind += 1;
        }
        let op = match kind {
            0 => GuestOp::Map {
                pid,
                va,
                flags: bits::RW,
            },
            1 => GuestOp::Unmap { pid, va },
            2 => GuestOp::Protect {
                pid,
                va,
                writable: r & 0x100 != 0,
                executable: r & 0x200 != 0,
            },
            3 => GuestOp::SetCaching {
                pid,
                va,
                attrs: (r >> 12) & bits::CACHING,
                form: k as u32,
            },
            4 => GuestOp::Trim { pid, va },
            5 => GuestOp::SwapOut { pid, va },
            6 => GuestOp::SwapIn { pid, va },
            _ => GuestOp::Touch {
                pid,
                va,
                write: r & 0x400 != 0,
                value: r,
            },
        };
        queues[cpu].push(op);
        if matches!(op, GuestOp::Map { .. }) && protected[pid as usize] {
            queues[cpu].push(GuestOp::Hook { pid, va });
        }
    }
    Scenario {
        processes: protected,
        queues,
    }
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
    /// The trace hash of the run's events ([`crate::trace`]).
    pub trace_hash: String,
    /// Simulated steps (hardware-visible events) the run took.
    pub steps: u64,
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
    run_builtin_with(
        b,
        params,
        ve,
        profile,
        seed,
        &crate::sched::Schedule::Random { seed },
    )
}

/// [`run_builtin`] with the VCPU schedule of multi-VCPU scenarios given.
pub fn run_builtin_with(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    ve: bool,
    profile: Profile,
    seed: u64,
    schedule: &crate::sched::Schedule,
) -> Result<RunResult, RunError> {
    let w = build_world(b, params, ve, profile, seed)?;
    run_built(b, params, w, seed, schedule)
}

/// The world a built-in runs in.
pub fn build_world(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    ve: bool,
    profile: Profile,
    seed: u64,
) -> Result<World, RunError> {
    build_world_quirks(b, params, ve, profile.quirks(), seed)
}

/// [`build_world`] with the quirk switches given one by one.
pub fn build_world_quirks(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    ve: bool,
    quirks: crate::quirks::Quirks,
    seed: u64,
) -> Result<World, RunError> {
    let mut config = WorldConfig {
        quirks,
        seed,
        ve,
        ..WorldConfig::default()
    };
    if matches!(
        b,
        Builtin::DesktopMix | Builtin::MemoryPressure | Builtin::Attacks | Builtin::UnloadRace
    ) {
        config.guest.vcpus = params.get("vcpus").copied().unwrap_or(1).max(1) as usize;
        config.guest.kpti = params.get("kpti").copied().unwrap_or(0) != 0;
    }
    Ok(World::new(config)?)
}

fn run_built(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    w: World,
    seed: u64,
    schedule: &crate::sched::Schedule,
) -> Result<RunResult, RunError> {
    run_built_progress(b, params, w, seed, schedule, None)
}

/// The trace header of a run of a built-in (its scenario data holds the processes only; the
/// operations come as streams).
fn header(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    w: &World,
    seed: u64,
    schedule: &crate::sched::Schedule,
    processes: Vec<bool>,
) -> crate::trace::TraceFile {
    let quirks = w.quirks;
    crate::trace::TraceFile {
        scenario: b.name().to_string(),
        seed,
        profile: crate::quirks::Profile::named(quirks),
        quirks,
        params: params.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        schedule: schedule.clone(),
        steps: None,
        scenario_data: Scenario {
            processes,
            queues: Vec::new(),
        },
        runs: Vec::new(),
    }
}

/// [`run_builtin_with`] in a given world, with a progress bar advanced by operations started.
/// The operations are generated as the run takes them and only the current step's events are
/// held, so the run's memory does not grow with its length.
pub fn run_built_progress(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    w: World,
    seed: u64,
    schedule: &crate::sched::Schedule,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<RunResult, RunError> {
    match run_in_world(b, params, w, seed, schedule, bar)? {
        (_, Some((cpu, s)), _) => Err(RunError::Stopped(cpu, s.to_string())),
        (r, None, _) => Ok(r),
    }
}

/// [`run_built_progress`], giving back the world as the run left it (to reset and run again)
/// and the VCPU stop that ended it, if one did.
pub fn run_in_world(
    b: Builtin,
    params: &BTreeMap<&'static str, u64>,
    mut w: World,
    seed: u64,
    schedule: &crate::sched::Schedule,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(RunResult, StopAt, World), RunError> {
    let streams = generate_streams(b, params, seed);
    let hdr = header(b, params, &w, seed, schedule, streams.processes.clone());
    let msg = bar.map(|b| b.message());
    if let Some(b) = bar {
        b.set_message("hashing the header and operations");
    }
    let prefix = hdr.prefix_hasher(&streams.queues);
    if let (Some(b), Some(m)) = (bar, msg) {
        b.set_message(m);
    }
    w.events.keep(false);
    w.events.hash_from(crate::trace::run_hasher(&prefix, w.ve));
    let (w, stop) = run_streams(w, streams, schedule, STEPS_MAX, bar, false)?;
    let r = RunResult {
        counters: w.counters.clone(),
        cache: w.intro.cache.stats,
        swaps: w.intro.swaps.len() as u64,
        trace_hash: w.events.hash().unwrap_or_default(),
        steps: w.tsc,
    };
    Ok((r, stop, w))
}

/// Runs one run of a trace's header: the world its header names with #VE `ve`, the
/// operations of `streams` under its schedule, to its step bound (a VCPU stop then ends the
/// run) or to completion (a VCPU stop is an error). Every event is held when `keep`; the trace
/// hash starts from `prefix` (the header and scenario lines).
pub fn execute(
    tf: &crate::trace::TraceFile,
    params: &BTreeMap<&'static str, u64>,
    streams: Streams,
    prefix: &sha2::Sha256,
    ve: bool,
    keep: bool,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<World, RunError> {
    let b = Builtin::from_name(&tf.scenario)
        .ok_or_else(|| RunError::Scenario(format!("'{}' is not a built-in", tf.scenario)))?;
    let mut w = build_world_quirks(b, params, ve, tf.quirks, tf.seed)?;
    w.events.keep(keep);
    w.events.hash_from(crate::trace::run_hasher(prefix, ve));
    let (w, stop) = run_streams(
        w,
        streams,
        &tf.schedule,
        tf.steps.unwrap_or(STEPS_MAX),
        bar,
        false,
    )?;
    match stop {
        Some((cpu, s)) if tf.steps.is_none() => Err(RunError::Stopped(cpu, s.to_string())),
        _ => Ok(w),
    }
}

/// A scenario as the runner takes it: the processes and each VCPU's operations as a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    /// Whether each process is protected, by pid.
    pub processes: Vec<bool>,
    /// The operations of each VCPU.
    pub queues: Vec<crate::ops::OpStream>,
}

impl Scenario {
    /// The scenario as streams.
    pub fn streams(&self) -> Streams {
        Streams {
            processes: self.processes.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| crate::ops::OpStream::from(q.clone()))
                .collect(),
        }
    }
}

/// The scenario of a built-in as streams: `paper-synthetic`'s operations are generated as
/// they are taken; the others' are lists, bounded by their `ops` parameter.
pub fn generate_streams(b: Builtin, params: &BTreeMap<&'static str, u64>, seed: u64) -> Streams {
    match b {
        Builtin::PaperSynthetic => Streams {
            processes: vec![true],
            queues: vec![crate::ops::OpStream::Paper(PaperGen::new(params))],
        },
        _ => generate(b, params, seed).streams(),
    }
}

/// The VCPUs of a built-in's machine under `params`.
pub fn vcpus_of(b: Builtin, params: &BTreeMap<String, u64>) -> u64 {
    match b {
        Builtin::PaperSynthetic => 1,
        _ => params.get("vcpus").copied().unwrap_or(1).max(1),
    }
}

/// Runs a scenario in `w` under `schedule`: its processes are created, then its queues run
/// interleaved. Returns the world.
pub fn run_scenario(
    w: World,
    sc: &Scenario,
    schedule: &crate::sched::Schedule,
) -> Result<World, RunError> {
    match run_streams(w, sc.streams(), schedule, STEPS_MAX, None, true)? {
        (_, Some((cpu, s))) => Err(RunError::Stopped(cpu, s.to_string())),
        (w, None) => Ok(w),
    }
}

/// [`run_scenario`] for a trace that ends at a step bound: it stops after `steps_max`
/// scheduling steps or when a VCPU stops, whichever comes first (the events up to there are
/// the run).
pub fn run_scenario_until(
    w: World,
    sc: &Scenario,
    schedule: &crate::sched::Schedule,
    steps_max: u64,
) -> Result<World, RunError> {
    let (w, _) = run_streams(w, sc.streams(), schedule, steps_max, None, true)?;
    Ok(w)
}

/// The VCPU stop that ended a run, if one did.
pub type StopAt = Option<(usize, crate::world::Stop)>;

/// Steps between progress updates.
const PROGRESS_CHUNK: u64 = 1 << 16;

fn run_streams(
    mut w: World,
    sc: Streams,
    schedule: &crate::sched::Schedule,
    steps_max: u64,
    bar: Option<&indicatif::ProgressBar>,
    record: bool,
) -> Result<(World, StopAt), RunError> {
    for p in &sc.processes {
        w.mm().create_process(*p)?;
    }
    if sc.queues.len() > w.vcpus.len() {
        return Err(RunError::Scenario(format!(
            "the scenario has queues for {} VCPUs but the machine has {}",
            sc.queues.len(),
            w.vcpus.len()
        )));
    }
    let mut queues = sc.queues;
    queues.resize(w.vcpus.len(), crate::ops::OpStream::from(Vec::new()));
    let mut runner = crate::ops::OpRunner::from_streams(queues);
    runner.record = record;
    if let Some(b) = bar {
        b.set_length(runner.remaining());
    }
    let mut sched = crate::sched::Scheduler::new(schedule.clone(), w.vcpus.len());
    // The run goes in chunks of steps only to move the progress bar; chunking changes nothing
    // the run does (the runner and scheduler carry over).
    let mut left = steps_max;
    let stop = loop {
        let chunk = if bar.is_some() {
            left.min(PROGRESS_CHUNK)
        } else {
            left
        };
        match runner.run(&mut w, &mut sched, chunk) {
            Err(stop) => break Some(stop),
            Ok(n) => {
                left -= n.min(left);
                if let Some(b) = bar {
                    b.set_position(runner.started);
                }
                if n < chunk || left == 0 {
                    break None;
                }
            }
        }
    };
    Ok((w, stop))
}

/// The operations of `paper-synthetic`, made one at a time in order: each page mapped and
/// hooked, then `changes` rounds of one caching change per page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaperGen {
    pages: u64,
    changes: u64,
    pat: bool,
    /// Index of the next operation.
    next: u64,
}

impl PaperGen {
    /// The generator for these parameters.
    pub fn new(params: &BTreeMap<&'static str, u64>) -> PaperGen {
        PaperGen {
            pages: params.get("pages").copied().unwrap_or(1),
            changes: params.get("changes").copied().unwrap_or(1),
            pat: params.get("pat").copied().unwrap_or(0) != 0,
            next: 0,
        }
    }

    fn total(&self) -> u64 {
        self.pages
            .saturating_mul(2)
            .saturating_add(self.pages.saturating_mul(self.changes))
    }

    /// Operations left.
    pub fn remaining(&self) -> u64 {
        self.total().saturating_sub(self.next)
    }

    /// The operation at index `i` of the sequence.
    fn op(&self, i: u64) -> Option<crate::ops::GuestOp> {
        use crate::ops::GuestOp;
        const PAT: [u64; 5] = [bits::PWT, bits::PCD, bits::PWT | bits::PCD, bits::PAT, 0];
        const NO_PAT: [u64; 4] = [bits::PWT, bits::PCD, bits::PWT | bits::PCD, 0];
        if i >= self.total() || self.pages == 0 {
            return None;
        }
        let pid = 0;
        if i < 2 * self.pages {
            let va = layout::USER_BASE + (i / 2) * 0x1000;
            return Some(if i % 2 == 0 {
                GuestOp::Map {
                    pid,
                    va,
                    flags: bits::RW,
                }
            } else {
                GuestOp::Hook { pid, va }
            });
        }
        let k = i - 2 * self.pages;
        let (j, page) = (k / self.pages, k % self.pages);
        let attrs: &[u64] = if self.pat { &PAT } else { &NO_PAT };
        Some(GuestOp::SetCaching {
            pid,
            va: layout::USER_BASE + page * 0x1000,
            attrs: attrs[(j % attrs.len() as u64) as usize],
            form: j as u32,
        })
    }
}

impl Iterator for PaperGen {
    type Item = crate::ops::GuestOp;

    fn next(&mut self) -> Option<crate::ops::GuestOp> {
        let op = self.op(self.next)?;
        self.next += 1;
        Some(op)
    }
}

fn paper_synthetic(params: &BTreeMap<&'static str, u64>) -> Scenario {
    Scenario {
        processes: vec![true],
        queues: vec![PaperGen::new(params).collect()],
    }
}
