//! Costs of the switches that break nothing, and the rows of the report.

use super::{catalogue::*, directed::*, search::*};
use crate::check::Invariant;
use crate::minimize::{op_count, preemptions};
use crate::quirks::Quirks;
use crate::runner::Setup;
use crate::sched::Schedule;
use crate::workload::{
    build_world_quirks, generate, resolve_params, run_scenario_until, Builtin, RunError, Scenario,
};
use std::collections::BTreeMap;

/// What a workload costs with and without a switch.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// The workload (a built-in with its seed, or a directed scenario).
    pub workload: String,
    /// VMCALLs, `fixed` then with the switch.
    pub vmcalls: (u64, u64),
    /// #VEs delivered.
    pub ves: (u64, u64),
    /// Cache hits over lookups (`None` without lookups).
    pub cache_hit_rate: (Option<f64>, Option<f64>),
}

impl Cost {
    /// Whether the switch changed any figure.
    pub fn differs(&self) -> bool {
        self.vmcalls.0 != self.vmcalls.1
            || self.ves.0 != self.ves.1
            || self.cache_hit_rate.0 != self.cache_hit_rate.1
    }

    /// One line: `workload: VMCALLs a -> b (+x %), #VEs c -> d, cache hit rate ...`.
    pub fn text(&self) -> String {
        let pct = |a: u64, b: u64| {
            if a == 0 {
                String::new()
            } else {
                format!(" ({:+.1} %)", (b as f64 - a as f64) * 100.0 / a as f64)
            }
        };
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0));
        format!(
            "{}: VMCALLs {} -> {}{}, #VEs {} -> {}{}, cache hit rate {} -> {}",
            self.workload,
            self.vmcalls.0,
            self.vmcalls.1,
            pct(self.vmcalls.0, self.vmcalls.1),
            self.ves.0,
            self.ves.1,
            pct(self.ves.0, self.ves.1),
            rate(self.cache_hit_rate.0),
            rate(self.cache_hit_rate.1)
        )
    }
}

/// Steps a costed run may take (a livelock under the switch ends there).
pub const COST_STEPS_MAX: u64 = 5_000_000;

/// Runs `sc` under `s` with #VE on (no checks, at most [`COST_STEPS_MAX`] steps) and measures
/// it with `fixed` and with the switch `q`.
pub fn cost(workload: String, s: &Setup, sc: &Scenario, q: &str) -> Result<Cost, RunError> {
    let run = |quirks: Quirks| -> Result<(u64, u64, Option<f64>), RunError> {
        let w = build_world_quirks(s.builtin, &s.params, true, quirks, s.seed)?;
        let w = run_scenario_until(w, sc, &s.schedule, COST_STEPS_MAX)?;
        let c = &w.counters;
        let rate = (c.cache_lookups > 0).then(|| c.cache_hits as f64 / c.cache_lookups as f64);
        Ok((c.vmcalls.values().sum(), c.ve_total, rate))
    };
    let a = run(Quirks::fixed())?;
    let b = run(with_switch(s.clone(), q).quirks)?;
    Ok(Cost {
        workload,
        vmcalls: (a.0, b.0),
        ves: (a.1, b.1),
        cache_hit_rate: (a.2, b.2),
    })
}

/// The workloads a switch that breaks nothing is costed on, in order: the first that shows a
/// difference is reported (or the first, when none does).
pub(super) fn cost_workloads() -> Vec<(String, Setup, Scenario)> {
    let mut out: Vec<(String, Setup, Scenario)> = directed()
        .into_iter()
        .map(|d| (format!("directed {}", d.name), d.setup, d.scenario))
        .collect();
    for b in [
        Builtin::DesktopMix,
        Builtin::MemoryPressure,
        Builtin::PaperSynthetic,
        Builtin::UnloadRace,
    ] {
        let params = resolve_params(b, &BTreeMap::new()).unwrap_or_default();
        let sc = generate(b, &params, 0);
        out.push((
            format!("{} seed 0", b.name()),
            Setup {
                builtin: b,
                params,
                quirks: Quirks::fixed(),
                seed: 0,
                schedule: Schedule::Random { seed: 0 },
            },
            sc,
        ));
    }
    out
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// The quirk.
    pub quirk: &'static str,
    /// One line.
    pub description: &'static str,
    /// The invariant it breaks.
    pub invariant: Option<Invariant>,
    /// The switches on in its trace (the quirk's, and its companion's if it needed one).
    pub switches: Vec<&'static str>,
    /// The trace written.
    pub trace: Option<String>,
    /// Guest operations in that trace.
    pub operations: Option<usize>,
    /// VCPUs and context switches of the minimal failing run.
    pub vcpus: Option<u64>,
    /// Context switches of the minimal schedule (`None` for schedules that are not lists).
    pub preemptions: Option<usize>,
    /// The command that replays it.
    pub replay: Option<String>,
    /// The measured cost, for switches that break nothing alone: the first costed workload on
    /// which a figure changes.
    pub cost: Option<Cost>,
    /// Every costed workload's figures, for the same switches.
    pub costs: Vec<Cost>,
    /// Where it was found and what failed, or why there is no trace.
    pub note: String,
}

impl Row {
    /// The JSON object of the row.
    pub fn json(&self) -> serde_json::Value {
        let one = |c: &Cost| {
            serde_json::json!({
                "workload": c.workload,
                "vmcalls": {"fixed": c.vmcalls.0, "switch": c.vmcalls.1},
                "ves": {"fixed": c.ves.0, "switch": c.ves.1},
                "cache_hit_rate": {"fixed": c.cache_hit_rate.0, "switch": c.cache_hit_rate.1},
                "text": c.text(),
            })
        };
        let cost = self.cost.as_ref().map(one);
        let costs = if self.costs.is_empty() {
            serde_json::Value::Null
        } else {
            self.costs.iter().map(one).collect()
        };
        serde_json::json!({
            "quirk": self.quirk,
            "description": self.description,
            "invariant": self.invariant.map(|i| i.to_string()),
            "switches": if self.switches.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.switches) },
            "trace": self.trace,
            "operations": self.operations,
            "vcpus": self.vcpus,
            "preemptions": self.preemptions,
            "replay": self.replay,
            "cost": cost,
            "costs": costs,
            "note": self.note,
        })
    }
}

/// The row of switch `q`: search, shrink, and record into `dir` (as `dir/Qn.trace`), or cost.
pub fn switch_row(q: &'static Quirk, dir: &std::path::Path) -> Result<Row, String> {
    let mut row = Row {
        quirk: q.id,
        description: q.description,
        invariant: None,
        switches: Vec::new(),
        trace: None,
        operations: None,
        vcpus: None,
        preemptions: None,
        replay: None,
        cost: None,
        costs: Vec::new(),
        note: String::new(),
    };
    let found = search(q.id, None).or_else(|| q.companion.and_then(|c| search(q.id, Some(c))));
    if let Some(found) = found {
        let f = shrink(&found, q.id);
        let path = dir.join(format!("{}.trace", q.id));
        let tf = crate::trace::record_scenario(
            f.setup.builtin,
            &f.setup.params,
            f.setup.quirks,
            "fixed",
            f.setup.seed,
            &f.setup.schedule,
            Some(f.step),
            f.scenario.clone(),
            &[true],
        )
        .map_err(|e| format!("{}: the minimal scenario does not run: {e}", q.id))?;
        crate::output::write_atomic(&path, tf.to_text().as_bytes())
            .map_err(|e| format!("{} cannot be written: {e}", path.display()))?;
        let shown = path.display().to_string();
        row.invariant = Some(f.invariant);
        row.switches = f.setup.quirks.enabled();
        if f.companion.is_some() {
            // What the switch does on its own.
            row.costs = measured_costs(q.id)?;
            row.cost = row.costs.iter().find(|c| c.differs()).cloned();
        }
        row.operations = Some(op_count(&f.scenario));
        row.vcpus = Some(f.setup.params.get("vcpus").copied().unwrap_or(1));
        row.preemptions = preemptions(&f.setup.schedule);
        row.replay = Some(format!("vesim replay --check {shown}"));
        row.trace = Some(shown);
        let with = match f.companion {
            Some(c) => format!(
                "with {c} on too, which alone does not fail {} here{}; ",
                f.invariant,
                match q.kind {
                    Kind::Switch(w) if !w.is_empty() => format!(" ({w})"),
                    _ => String::new(),
                }
            ),
            None => String::new(),
        };
        row.note = format!(
            "{with}found by {} ({} operations), shrunk; {} at step {}: {}",
            found.origin,
            op_count(&found.scenario),
            f.invariant,
            f.step,
            f.detail
        );
        return Ok(row);
    }
    row.costs = measured_costs(q.id)?;
    row.cost = row.costs.iter().find(|c| c.differs()).cloned();
    let differs = row.cost.is_some();
    let why = match q.kind {
        Kind::Switch(w) if !w.is_empty() => format!(": {w}"),
        _ => String::new(),
    };
    row.note = if differs {
        format!(
            "no invariant fails in the directed scenarios, {SWARM_SEEDS} swarm seeds per \
             built-in or {FUZZ_CASES} scenario fuzz inputs{why}"
        )
    } else {
        format!(
            "no invariant fails in the directed scenarios, {SWARM_SEEDS} swarm seeds per \
             built-in or {FUZZ_CASES} scenario fuzz inputs, and no figure changes on the \
             costed workloads{why}"
        )
    };
    Ok(row)
}

/// Switch `q`'s figures on every costed workload.
pub(super) fn measured_costs(q: &str) -> Result<Vec<Cost>, String> {
    cost_workloads()
        .into_iter()
        .map(|(name, s, sc)| cost(name, &s, &sc, q).map_err(|e| format!("{q}: {e}")))
        .collect()
}

/// The row of a quirk without a switch.
pub fn no_switch_row(q: &'static Quirk) -> Row {
    Row {
        quirk: q.id,
        description: q.description,
        invariant: None,
        switches: Vec::new(),
        trace: None,
        operations: None,
        vcpus: None,
        preemptions: None,
        replay: None,
        cost: None,
        costs: Vec::new(),
        note: match q.kind {
            Kind::NoSwitch(why) => why.to_string(),
            Kind::Switch(_) => String::new(),
        },
    }
}

/// Every row, in quirk order: the switches searched `jobs` at a time, traces written to `dir`.
pub fn report(dir: &std::path::Path, jobs: usize) -> Result<Vec<Row>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{} cannot be created: {e}", dir.display()))?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(q) = QUIRKS.get(i) else {
                    break;
                };
                let r = match q.kind {
                    Kind::Switch(_) => switch_row(q, dir),
                    Kind::NoSwitch(_) => Ok(no_switch_row(q)),
                };
                if let Ok(mut d) = done.lock() {
                    d.push((i, r));
                }
            });
        }
    });
    let mut rows: Vec<(usize, Result<Row, String>)> = done.into_inner().unwrap_or_default();
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect::<Result<_, _>>()?;
    // A trace left from an earlier report whose quirk no longer fails goes, so that the
    // directory holds exactly this report's traces.
    for r in rows.iter().filter(|r| r.trace.is_none()) {
        let stale = dir.join(format!("{}.trace", r.quirk));
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{} cannot be removed: {e}", stale.display()));
            }
            _ => {}
        }
    }
    Ok(rows)
}
