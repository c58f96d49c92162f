//! `vesim explore`: every interleaving of a small world's VCPUs, up to K preemptions, with
//! every per-step invariant checked after every step of every schedule.
//!
//! **Granularity.** A schedule picks the VCPU of each scheduling step, the step `vesim check`
//! takes ([`crate::ops::OpRunner::op_step`]: a guest instruction with its walk and access, one
//! agent step, or an introcore handler inside the step that exits). The checker is the one
//! `check` runs ([`crate::check::Checker`]); I6, which compares a whole #VE-on run with its
//! #VE-off twin rather than a step, is left to `check`.
//!
//! **Schedules and preemptions.** After the choices a schedule states, it continues with the
//! default: the VCPU that ran last goes on while it is runnable, for at most
//! [`TAIL_QUANTUM`] steps in a row, then the next runnable one in round-robin order (the tail
//! of a `list:` schedule, so a VCPU spinning on a lock cannot starve its holder). A
//! scheduling point is *free* when the last VCPU cannot go on (it finished its operations or
//! stopped): picking any runnable VCPU there costs nothing. The switch at the end of a quantum
//! is not a choice (a fairness rule, as CHESS's for a yielding thread: otherwise every
//! quantum of a spinning VCPU would double the schedules for nothing). Anywhere else, picking
//! another VCPU than the last is a *preemption*. The schedules with at most K preemptions are
//! a finite tree: each node is a prefix of choices, each child one more choice.
//!
//! **Search.** Stateless, as CHESS: every schedule runs from a world's snapshot
//! ([`crate::world::Reusable`]: the reset costs what the previous schedule dirtied), replays
//! its prefix, then takes the default while noting, at each later step, every other runnable
//! VCPU whose choice stays within the bound; each such alternative is a new prefix, explored
//! depth first. Iterative deepening: the search at bound k counts only the schedules with
//! exactly k preemptions (those with fewer were counted, and passed, at their own bound and
//! are re-run only to reach their alternatives), so the first failure found has the fewest
//! preemptions of any failing schedule, and within a bound the order is the depth-first order
//! of the choices. With several jobs, each bound's root schedule is run first and the subtrees
//! of its alternatives are searched on as many threads, each with its own world, then combined
//! in the order one thread would search them ([`explore`]): the report does not depend on the
//! number of jobs. `max_schedules` counts checked schedules; a search it ends says so
//! ([`Report::cut`]).
//!
//! **No pruning yet.** Every schedule in the tree is run: the counts are the closed-form
//! counts of the interleavings where the VCPUs do not interact. Partial-order reduction over
//! step footprints is not built; [`Report::pruned`] is 0.
//!
//! **States.** A run's final state is hashed (SHA-256 of the guest memory frames it dirtied,
//! every EPT view's entries, the VCPUs, their stop states, the guest and introcore; not the
//! counters, the event log, the TSC or the EPT's change logs, which record history rather than
//! state) and the distinct hashes are counted.

use crate::check::Checker;
use crate::ops::{GuestOp, OpRunner};
use crate::quirks::Quirks;
use crate::runner::{Checked, Setup};
use crate::sched::{Schedule, TAIL_QUANTUM};
use crate::workload::{resolve_params, Builtin, Scenario};
use crate::world::{Reusable, World};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use vesim_model::VcpuId;

/// The most VCPUs a world may have to be explored.
pub const MAX_VCPUS: u64 = 3;
/// The largest preemption bound.
pub const MAX_PREEMPTIONS: u32 = 8;
/// Scheduling steps one schedule may take; a schedule that reaches it ends there (counted in
/// [`Report::bounded`], not a failure: no invariant says every operation ends).
pub const SCHEDULE_STEPS_MAX: u64 = 50_000;

/// The built-in small worlds, by name: the TOML files of `corpus/explore/`.
pub const BUILTINS: [(&str, &str); 5] = [
    (
        "cache-race",
        include_str!("../../corpus/explore/cache-race.toml"),
    ),
    (
        "cache-insert",
        include_str!("../../corpus/explore/cache-insert.toml"),
    ),
    (
        "unload-hook",
        include_str!("../../corpus/explore/unload-hook.toml"),
    ),
    (
        "two-writers",
        include_str!("../../corpus/explore/two-writers.toml"),
    ),
    (
        "remap-agent",
        include_str!("../../corpus/explore/remap-agent.toml"),
    ),
];

/// A small world file (TOML):
///
/// ```toml
/// about = "what the world is for"
/// builtin = "unload-race"          # the built-in whose machine is built
/// seed = 0                         # optional
/// processes = [true]               # protected or not, by pid
/// ops = [                          # "VCPU OPERATION", in the trace format's words
///   "0 map pid=0 va=0x100001000 flags=0x2",
///   "1 hook pid=0 va=0x100001000",
/// ]
///
/// [params]                         # the built-in's parameters (vcpus at most 3)
/// vcpus = 2
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldFile {
    about: Option<String>,
    builtin: String,
    seed: Option<u64>,
    #[serde(default)]
    params: BTreeMap<String, u64>,
    #[serde(default)]
    processes: Vec<bool>,
    ops: Vec<String>,
}

/// A small world: a built-in's machine and a scenario of a few operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExploreWorld {
    /// What it is for.
    pub about: String,
    /// The built-in whose machine is built.
    pub builtin: Builtin,
    /// Its parameters, resolved.
    pub params: BTreeMap<&'static str, u64>,
    /// Seed of the world's random streams.
    pub seed: u64,
    /// The processes and each VCPU's operations.
    pub scenario: Scenario,
}

impl ExploreWorld {
    /// Parses a world file; `name` names it in errors. Every error is one sentence.
    pub fn parse(name: &str, text: &str, sets: &BTreeMap<String, u64>) -> Result<Self, String> {
        let wf: WorldFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(1, |s| crate::scenario_file::line_of(text, s.start));
            format!("{name}:{line}: {}", e.message().trim().replace('\n', " "))
        })?;
        let builtin = Builtin::from_name(&wf.builtin).ok_or_else(|| {
            format!(
                "{name}: '{}' is not a built-in ({})",
                crate::trace::excerpt(&wf.builtin, crate::trace::QUOTE_MAX),
                Builtin::ALL.map(|(n, _)| n).join(", ")
            )
        })?;
        let mut raw = wf.params.clone();
        raw.extend(sets.iter().map(|(k, v)| (k.clone(), *v)));
        let params = resolve_params(builtin, &raw).map_err(|e| format!("{name}: {e}"))?;
        let vcpus = params.get("vcpus").copied().unwrap_or(1);
        if vcpus > MAX_VCPUS {
            return Err(format!(
                "{name}: the world has {vcpus} VCPUs; exploration supports at most {MAX_VCPUS}"
            ));
        }
        let mut queues: Vec<Vec<GuestOp>> = vec![Vec::new(); vcpus as usize];
        for (i, line) in wf.ops.iter().enumerate() {
            let bad = |m: String| format!("{name}: operation {}: {m}", i + 1);
            let (cpu, op) = line
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("expected 'VCPU OPERATION'".into()))?;
            let cpu = crate::text::parse_u64(cpu).map_err(&bad)?;
            let op: GuestOp = op.parse().map_err(&bad)?;
            if cpu >= vcpus {
                return Err(bad(format!("VCPU {cpu} is not one of the world's {vcpus}")));
            }
            if let Some(pid) = op.pid() {
                if pid as usize >= wf.processes.len() {
                    return Err(bad(format!(
                        "process {pid} is not one of the world's {}",
                        wf.processes.len()
                    )));
                }
            }
            queues[cpu as usize].push(op);
        }
        Ok(ExploreWorld {
            about: wf.about.unwrap_or_default(),
            builtin,
            params,
            seed: wf.seed.unwrap_or(0),
            scenario: Scenario {
                processes: wf.processes,
                queues,
            },
        })
    }

    /// The built-in small world `name`.
    pub fn builtin(name: &str, sets: &BTreeMap<String, u64>) -> Result<Self, String> {
        let (n, text) = BUILTINS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!(
                "'{}' is not a built-in small world ({})",
                crate::trace::excerpt(name, crate::trace::QUOTE_MAX),
                BUILTINS.map(|(n, _)| n).join(", ")
            )
        })?;
        Self::parse(n, text, sets)
    }

    /// Operations over every VCPU.
    pub fn ops(&self) -> usize {
        self.scenario.queues.iter().map(Vec::len).sum()
    }

    /// VCPUs of the machine.
    pub fn vcpus(&self) -> usize {
        self.scenario.queues.len()
    }

    /// The run set-up for `quirks` and `schedule`.
    pub fn setup(&self, quirks: Quirks, schedule: Schedule) -> Setup {
        Setup {
            builtin: self.builtin,
            params: self.params.clone(),
            quirks,
            seed: self.seed,
            schedule,
        }
    }
}

/// What the search may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The preemption bound K.
    pub preemptions: u32,
    /// At most this many schedules are checked (counted over every bound).
    pub max_schedules: u64,
    /// Scheduling steps per schedule.
    pub steps_max: u64,
}

/// One bound of the iterative deepening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// The bound: schedules with exactly this many preemptions.
    pub preemptions: u32,
    /// Schedules checked with that many.
    pub schedules: u64,
}

/// The first failing schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Its (VCPU, steps) runs up to and including the failing step.
    pub runs: Vec<(usize, u64)>,
    /// Its preemptions.
    pub preemptions: u32,
    /// Scheduling steps up to and including the failing one.
    pub steps: u64,
    /// How it failed (a violation, or a stop no invariant covers).
    pub checked: Checked,
}

impl Failure {
    /// The schedule that replays it.
    pub fn schedule(&self) -> Schedule {
        Schedule::List(self.runs.clone())
    }
}

/// What a search found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Per bound, the schedules checked (bounds 0 to the last one searched).
    pub levels: Vec<Level>,
    /// Schedules checked, over every bound.
    pub schedules: u64,
    /// Schedules pruned as reorderings of independent steps (none yet: see the module doc).
    pub pruned: u64,
    /// Runs made, including the re-runs of schedules with fewer preemptions than the bound.
    pub runs: u64,
    /// Distinct final states of the checked schedules.
    pub states: u64,
    /// Checked schedules the step bound ended.
    pub bounded: u64,
    /// Whether `max_schedules`, not the search, ended it.
    pub cut: bool,
    /// The first failing schedule, if one fails.
    pub failure: Option<Failure>,
}

/// What one run of one schedule did.
struct RunOutcome {
    /// The VCPU of every step taken.
    choices: Vec<usize>,
    /// Alternatives met after the prefix: (step, VCPU), in step order.
    alternatives: Vec<(usize, usize)>,
    preemptions: u32,
    /// `None`: every step passed.
    failed: Option<Checked>,
    bounded: bool,
    state: [u8; 32],
}

/// The explorer of one world under one set of quirk switches.
pub struct Explorer {
    world: Reusable,
    queues: Vec<Vec<GuestOp>>,
    steps_max: u64,
}

/// The default pick when the last VCPU cannot (or may no longer) go on: the next runnable
/// one after it in round-robin order.
fn round_robin(last: Option<usize>, runnable: &[usize]) -> Option<usize> {
    let after = last.map_or(0, |l| l + 1);
    runnable
        .iter()
        .copied()
        .find(|c| *c >= after)
        .or_else(|| runnable.first().copied())
}

/// Feeds formatted text into a hash through a buffer (many short writes, few hash updates).
struct HashWriter<'a> {
    hash: &'a mut Sha256,
    buf: Vec<u8>,
}

/// Bytes [`HashWriter`] collects before it hashes them.
const HASH_BUFFER: usize = 1 << 16;

impl HashWriter<'_> {
    fn flush(&mut self) {
        self.hash.update(&self.buf);
        self.buf.clear();
    }
}

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.extend_from_slice(s.as_bytes());
        if self.buf.len() >= HASH_BUFFER {
            self.flush();
        }
        Ok(())
    }
}

/// Hashes `now` by its text, or by a tag when it equals `start` (the state every schedule
/// starts from): introcore's large tables are then compared, not printed.
fn part<T: PartialEq + std::fmt::Debug>(out: &mut HashWriter<'_>, name: &str, now: &T, start: &T) {
    use std::fmt::Write;
    let _ = if now == start {
        write!(out, "{name}=start;")
    } else {
        write!(out, "{name}={now:?};")
    };
}

/// The hash of a world's state (see the module doc); `start` is the world every schedule
/// starts from, less its machine.
pub fn state_hash(w: &World, start: &World) -> [u8; 32] {
    use std::fmt::Write;
    let mut h = Sha256::new();
    let mut dirtied: Vec<u64> = w.machine.mem.dirtied().map(|(g, _)| g.0).collect();
    dirtied.sort_unstable();
    for g in dirtied {
        h.update(g.to_le_bytes());
        match w.machine.mem.frame(vesim_model::Gfn(g)) {
            Some(f) => h.update(&f[..]),
            None => h.update([0u8]),
        }
    }
    let ept = &w.machine.ept;
    let mut out = HashWriter {
        hash: &mut h,
        buf: Vec::with_capacity(HASH_BUFFER + 4096),
    };
    for id in ept.view_ids() {
        if let Some(v) = ept.view(id) {
            let _ = write!(out, "{id:?}{:?}", v.default_entry());
            for (g, e) in v.entries() {
                let _ = write!(out, "{g:?}{e:?}");
            }
        }
    }
    let _ = write!(out, "{:?}{:?}", w.vcpus, w.stopped);
    part(&mut out, "guest", &w.guest, &start.guest);
    // Every field, so that a new one cannot be left out unnoticed.
    let crate::introcore::Introcore {
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
    } = &w.intro;
    let s = &start.intro;
    part(&mut out, "hooks", &**hooks, &*s.hooks);
    part(&mut out, "ptm", &**ptm, &*s.ptm);
    part(&mut out, "pts", &**pts, &*s.pts);
    part(&mut out, "cache", cache, &s.cache);
    part(&mut out, "agent_hooks", agent_hooks, &s.agent_hooks);
    part(&mut out, "callbacks", callbacks, &s.callbacks);
    let _ = write!(
        out,
        "{untrusted:?}{protected:?}{initialized}{deployed}{pending_unload}{slots:?}\
         {dispatch_view:?}{swaps:?}{last_exit_gpa:?}{replaced_code:?}{page_walk_set_at_deploy}"
    );
    out.flush();
    h.finalize().into()
}

/// One schedule on `w`: `prefix`, then the default (see the module doc), each step checked.
fn run_schedule(
    w: &mut World,
    queues: Vec<Vec<GuestOp>>,
    prefix: &[usize],
    bound: u32,
    steps_max: u64,
) -> RunOutcome {
    let mut runner = OpRunner::new(queues);
    runner.record = false;
    let mut checker = Checker::new(w);
    let mut runnable = Vec::with_capacity(w.vcpus.len());
    let mut o = RunOutcome {
        choices: Vec::new(),
        alternatives: Vec::new(),
        preemptions: 0,
        failed: None,
        bounded: false,
        state: [0; 32],
    };
    let mut last: Option<usize> = None;
    let mut in_row = 0u64;
    loop {
        w.events.new_step();
        runner.runnable_into(w, &mut runnable);
        let Some(&lowest) = runnable.first() else {
            break;
        };
        if o.choices.len() as u64 >= steps_max {
            o.bounded = true;
            break;
        }
        let i = o.choices.len();
        let can_go_on = last.filter(|l| runnable.contains(l));
        // The quantum is up: the default switch, not a choice.
        let forced = can_go_on.is_some() && in_row >= TAIL_QUANTUM;
        let free = can_go_on.is_none();
        let cost = |c: usize| u32::from(!free && !forced && Some(c) != last);
        let pick = match prefix.get(i) {
            Some(&c) if runnable.contains(&c) => c,
            Some(&c) => {
                o.failed = Some(Checked::Harness(format!(
                    "the replayed schedule picks VCPU {c} at step {i}, which cannot run"
                )));
                break;
            }
            None => {
                let d = match can_go_on {
                    Some(l) if !forced => l,
                    _ => round_robin(last, &runnable).unwrap_or(lowest),
                };
                if !forced {
                    o.alternatives.extend(
                        runnable
                            .iter()
                            .filter(|&&a| a != d && o.preemptions + cost(a) <= bound)
                            .map(|&a| (i, a)),
                    );
                }
                d
            }
        };
        o.preemptions += cost(pick);
        in_row = if Some(pick) == last { in_row + 1 } else { 1 };
        last = Some(pick);
        o.choices.push(pick);
        if let Err(f) = runner.checked_step(w, &mut checker, VcpuId(pick)) {
            o.failed = Some(crate::runner::checked_of(f));
            break;
        }
    }
    o
}

impl Explorer {
    /// The explorer of `world` with `quirks`: builds the world (with #VE on) and snapshots it.
    pub fn new(world: &ExploreWorld, quirks: Quirks, steps_max: u64) -> Result<Self, String> {
        let setup = world.setup(quirks, Schedule::RoundRobin);
        let w = crate::runner::world(&setup, &world.scenario, true)?;
        let mut queues = world.scenario.queues.clone();
        queues.resize(w.vcpus.len(), Vec::new());
        Ok(Explorer {
            world: Reusable::new(w),
            queues,
            steps_max,
        })
    }

    /// Runs the schedule that starts with `prefix` and continues with the default, noting the
    /// alternatives after the prefix whose preemptions stay within `bound`.
    fn run(&mut self, prefix: &[usize], bound: u32) -> Result<RunOutcome, String> {
        let queues = self.queues.clone();
        let steps_max = self.steps_max;
        let mut o = self
            .world
            .run(|w| run_schedule(w, queues, prefix, bound, steps_max))
            .map_err(|e| e.to_string())?;
        o.state = state_hash(self.world.world(), self.world.start());
        Ok(o)
    }

    /// Explores the subtree of schedules that start with `prefix` at bound `k`, depth first,
    /// until a schedule fails or `cap` schedules with exactly `k` preemptions were checked.
    fn subtree(&mut self, prefix: Vec<usize>, k: u32, cap: u64) -> Result<Subtree, String> {
        let mut t = Subtree::default();
        let mut stack = vec![prefix];
        while let Some(prefix) = stack.pop() {
            if t.checked.len() as u64 >= cap {
                t.capped = true;
                break;
            }
            let o = self.run(&prefix, k)?;
            t.runs += 1;
            // Deepest alternatives last on the stack: explored first.
            for &(i, a) in &o.alternatives {
                let mut p = o.choices[..i].to_vec();
                p.push(a);
                stack.push(p);
            }
            if o.preemptions != k {
                continue;
            }
            if t.check(o) {
                break;
            }
        }
        Ok(t)
    }
}

/// What the search of one subtree found: each checked schedule's final state and whether the
/// step bound ended it, in search order, and the failure that ended the search, if one did.
#[derive(Default)]
struct Subtree {
    checked: Vec<([u8; 32], bool)>,
    failure: Option<Failure>,
    runs: u64,
    /// The cap ended it with runs left.
    capped: bool,
}

impl Subtree {
    /// Records a schedule that counts at the bound; true when it failed (which ends the
    /// search).
    fn check(&mut self, o: RunOutcome) -> bool {
        self.checked.push((o.state, o.bounded));
        let Some(checked) = o.failed else {
            return false;
        };
        self.failure = Some(Failure {
            runs: runs_of(&o.choices),
            preemptions: o.preemptions,
            steps: o.choices.len() as u64,
            checked,
        });
        true
    }
}

/// The (VCPU, steps) runs of a list of choices.
fn runs_of(choices: &[usize]) -> Vec<(usize, u64)> {
    let mut runs: Vec<(usize, u64)> = Vec::new();
    for &c in choices {
        match runs.last_mut() {
            Some((l, n)) if *l == c => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

/// The most explorers `explore` runs at once.
pub const JOBS_MAX: usize = 64;

/// Explores every schedule of `world` with at most `opts.preemptions` preemptions (see the
/// module doc) on `jobs` threads, each with its own world, and calls `progress` with the
/// schedules checked so far.
///
/// At each bound the root schedule's alternatives are independent subtrees, searched in
/// parallel and combined in the order one thread would search them: the report (counts,
/// states, the failure, where `max_schedules` cut) is the same for any number of jobs.
pub fn explore(
    world: &ExploreWorld,
    quirks: Quirks,
    opts: &Options,
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, String> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let jobs = jobs.clamp(1, JOBS_MAX);
    let mut explorers = vec![Explorer::new(world, quirks, opts.steps_max)?];
    let mut report = Report {
        levels: Vec::new(),
        schedules: 0,
        pruned: 0,
        runs: 0,
        states: 0,
        bounded: 0,
        cut: false,
        failure: None,
    };
    let mut states: BTreeSet<[u8; 32]> = BTreeSet::new();
    let done = AtomicU64::new(0);
    'levels: for k in 0..=opts.preemptions {
        report.levels.push(Level {
            preemptions: k,
            schedules: 0,
        });
        if report.schedules >= opts.max_schedules {
            report.cut = true;
            break;
        }
        let left = opts.max_schedules - report.schedules;
        // The root schedule; the subtrees of its alternatives are searched after it.
        let root = explorers[0].run(&[], k)?;
        let mut subtrees: Vec<Vec<usize>> = root
            .alternatives
            .iter()
            .map(|&(i, a)| {
                let mut p = root.choices[..i].to_vec();
                p.push(a);
                p
            })
            .collect();
        // One thread pops the last pushed first.
        subtrees.reverse();
        let mut first = Subtree {
            runs: 1,
            ..Subtree::default()
        };
        if root.preemptions == k && first.check(root) {
            subtrees.clear();
        }
        let mut results: Vec<Option<Result<Subtree, String>>> = Vec::new();
        results.resize_with(subtrees.len(), || None);
        let workers = jobs.min(subtrees.len()).max(1);
        while explorers.len() < workers {
            explorers.push(Explorer::new(world, quirks, opts.steps_max)?);
        }
        let next = AtomicUsize::new(0);
        let slots = Mutex::new(std::mem::take(&mut results));
        std::thread::scope(|scope| {
            for ex in explorers.iter_mut().take(workers) {
                let (next, slots, subtrees, done) = (&next, &slots, &subtrees, &done);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(prefix) = subtrees.get(i) else {
                        return;
                    };
                    let r = ex.subtree(prefix.clone(), k, left);
                    if let Ok(t) = &r {
                        let n = t.checked.len() as u64;
                        progress(done.fetch_add(n, Ordering::Relaxed) + n);
                    }
                    if let Ok(mut s) = slots.lock() {
                        if let Some(slot) = s.get_mut(i) {
                            *slot = Some(r);
                        }
                    }
                });
            }
        });
        let results = slots
            .into_inner()
            .map_err(|_| "a search thread failed".to_string())?;
        let mut searched = vec![first];
        for r in results {
            searched.push(r.ok_or("a subtree was not searched")??);
        }
        for t in searched {
            if report.schedules >= opts.max_schedules {
                report.cut = true;
                break 'levels;
            }
            report.runs += t.runs;
            for (n, (state, bounded)) in t.checked.iter().enumerate() {
                if report.schedules >= opts.max_schedules {
                    report.cut = true;
                    break 'levels;
                }
                report.schedules += 1;
                if let Some(l) = report.levels.last_mut() {
                    l.schedules += 1;
                }
                report.bounded += u64::from(*bounded);
                states.insert(*state);
                report.states = states.len() as u64;
                if n + 1 == t.checked.len() && t.failure.is_some() {
                    report.failure = t.failure.clone();
                    break 'levels;
                }
            }
            if t.capped && report.schedules >= opts.max_schedules {
                report.cut = true;
                break 'levels;
            }
        }
    }
    progress(report.schedules);
    Ok(report)
}
