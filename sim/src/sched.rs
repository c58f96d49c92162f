//! Deterministic VCPU schedulers (ARCHITECTURE "sched"): round-robin, seeded random, and PCT
//! (random priorities with `depth - 1` priority change points), plus an explicit list of
//! choices. Every schedule serializes to a short string that replays exactly:
//!
//! - `rr`
//! - `random:SEED`
//! - `pct:SEED:DEPTH:STEPS` (STEPS: the expected run length the change points are drawn in)
//! - `list:0x5,1x3,0` (run VCPU 0 five steps, VCPU 1 three, then VCPU 0; a run whose VCPU
//!   is not runnable ends early; when the list ends, round-robin with a quantum of
//!   [`TAIL_QUANTUM`] steps: the VCPU that ran last goes on while it can, for at most that
//!   many steps, so a VCPU spinning on a lock cannot starve its holder)

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::str::FromStr;

/// A schedule: which VCPU takes the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Round-robin over the runnable VCPUs.
    RoundRobin,
    /// A uniformly random runnable VCPU each step, from a ChaCha stream seeded with `seed`.
    Random {
        /// Seed.
        seed: u64,
    },
    /// PCT: random priorities; the highest-priority runnable VCPU runs; at `depth - 1` change
    /// points drawn in `0..steps` the running VCPU drops to a priority below all others.
    Pct {
        /// Seed.
        seed: u64,
        /// Bug depth d (>= 1).
        depth: u32,
        /// Expected number of steps (the range of the change points).
        steps: u64,
    },
    /// An explicit list of (VCPU, steps) runs, then round-robin with a quantum of
    /// [`TAIL_QUANTUM`] steps.
    List(Vec<(usize, u64)>),
}

/// Steps a VCPU keeps running once an explicit list has ended.
pub const TAIL_QUANTUM: u64 = 1000;

/// Errors parsing a schedule string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// Not one of the forms.
    #[error("'{0}' is not a schedule (rr, random:SEED, pct:SEED:DEPTH:STEPS, list:CPUxN,...)")]
    Syntax(String),
    /// A number is out of range.
    #[error("'{0}' has a value out of range")]
    Range(String),
}

impl Schedule {
    /// Refuses a list that names a VCPU the machine (of `vcpus` VCPUs) does not have.
    pub fn check_vcpus(&self, vcpus: u64) -> Result<(), String> {
        if let Schedule::List(runs) = self {
            if let Some((cpu, _)) = runs.iter().find(|(c, _)| *c as u64 >= vcpus) {
                return Err(format!(
                    "the schedule names VCPU {cpu} but the machine has {vcpus} (VCPUs 0 to {})",
                    vcpus.saturating_sub(1)
                ));
            }
        }
        Ok(())
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let quoted = crate::trace::excerpt(s, crate::trace::QUOTE_MAX);
        let bad = || ScheduleError::Syntax(quoted.clone());
        let num = |t: &str| t.parse::<u64>().map_err(|_| bad());
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["rr"] => Ok(Schedule::RoundRobin),
            ["random", seed] => Ok(Schedule::Random { seed: num(seed)? }),
            ["pct", seed, depth, steps] => {
                let depth = num(depth)?;
                let steps = num(steps)?;
                if depth == 0 || depth > 64 || steps == 0 {
                    return Err(ScheduleError::Range(quoted.clone()));
                }
                Ok(Schedule::Pct {
                    seed: num(seed)?,
                    depth: depth as u32,
                    steps,
                })
            }
            ["list", runs] => {
                let mut out = Vec::new();
                for run in runs.split(',').filter(|r| !r.is_empty()) {
                    let (cpu, n) = match run.split_once('x') {
                        Some((c, n)) => (num(c)?, num(n)?),
                        None => (num(run)?, 1),
                    };
                    if cpu > 255 || n == 0 {
                        return Err(ScheduleError::Range(quoted.clone()));
                    }
                    out.push((cpu as usize, n));
                }
                Ok(Schedule::List(out))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::RoundRobin => f.write_str("rr"),
            Schedule::Random { seed } => write!(f, "random:{seed}"),
            Schedule::Pct { seed, depth, steps } => write!(f, "pct:{seed}:{depth}:{steps}"),
            Schedule::List(runs) => {
                f.write_str("list:")?;
                for (i, (cpu, n)) in runs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if *n == 1 {
                        write!(f, "{cpu}")?;
                    } else {
                        write!(f, "{cpu}x{n}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// The running state of a schedule.
#[derive(Clone, Debug)]
pub struct Scheduler {
    schedule: Schedule,
    rng: ChaCha8Rng,
    last: Option<usize>,
    step: u64,
    /// PCT priorities by VCPU (higher runs first).
    priorities: Vec<u64>,
    /// PCT change points (step numbers), ascending.
    change_points: Vec<u64>,
    /// List position: (run index, steps taken in it).
    list_pos: (usize, u64),
    /// Every pick so far, when recording.
    picks: Option<Vec<usize>>,
    /// Steps of the current VCPU since the list ended or it took over.
    tail_steps: u64,
}

impl Scheduler {
    /// A scheduler for `vcpus` VCPUs.
    pub fn new(schedule: Schedule, vcpus: usize) -> Self {
        let seed = match &schedule {
            Schedule::Random { seed } | Schedule::Pct { seed, .. } => *seed,
            _ => 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut priorities = Vec::new();
        let mut change_points = Vec::new();
        if let Schedule::Pct { depth, steps, .. } = &schedule {
            // Distinct initial priorities depth.. depth + n, in a random order (Fisher-Yates).
            priorities = (0..vcpus as u64).map(|i| u64::from(*depth) + i).collect();
            for i in (1..priorities.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                priorities.swap(i, j);
            }
            change_points = (1..*depth).map(|_| rng.next_u64() % steps).collect();
            change_points.sort_unstable();
        }
        Scheduler {
            schedule,
            rng,
            last: None,
            step: 0,
            priorities,
            change_points,
            list_pos: (0, 0),
            picks: None,
            tail_steps: 0,
        }
    }

    /// The same scheduler, keeping every pick it makes ([`Scheduler::runs`]).
    pub fn recording(mut self) -> Self {
        self.picks = Some(Vec::new());
        self
    }

    /// The picks made so far as (VCPU, steps) runs: the explicit list that replays them.
    pub fn runs(&self) -> Vec<(usize, u64)> {
        let mut out: Vec<(usize, u64)> = Vec::new();
        for &c in self.picks.iter().flatten() {
            match out.last_mut() {
                Some((l, n)) if *l == c => *n += 1,
                _ => out.push((c, 1)),
            }
        }
        out
    }

    /// The schedule it follows.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn round_robin(&self, runnable: &[usize]) -> Option<usize> {
        let after = self.last.map_or(0, |l| l + 1);
        runnable
            .iter()
            .copied()
            .find(|c| *c >= after)
            .or_else(|| runnable.first().copied())
    }

    /// Picks the VCPU for the next step among `runnable` (ascending VCPU numbers), or `None`
    /// when none is runnable.
    pub fn next(&mut self, runnable: &[usize]) -> Option<usize> {
        if runnable.is_empty() {
            return None;
        }
        let pick = match &self.schedule {
            Schedule::RoundRobin => self.round_robin(runnable),
            Schedule::Random { .. } => {
                let i = (self.rng.next_u64() % runnable.len() as u64) as usize;
                runnable.get(i).copied()
            }
            Schedule::Pct { .. } => {
                let mut k = 0;
                while k < self.change_points.len() && self.change_points[k] <= self.step {
                    // Change point k: the VCPU that ran last drops below every other one.
                    if let Some(l) = self.last {
                        if let Some(p) = self.priorities.get_mut(l) {
                            *p = k as u64;
                        }
                    }
                    k += 1;
                }
                self.change_points.drain(..k);
                runnable.iter().copied().max_by_key(|c| {
                    (
                        self.priorities.get(*c).copied().unwrap_or(0),
                        usize::MAX - *c,
                    )
                })
            }
            Schedule::List(runs) => {
                let mut pick = None;
                let (mut i, mut taken) = self.list_pos;
                while let Some((cpu, n)) = runs.get(i) {
                    if taken < *n && runnable.contains(cpu) {
                        pick = Some(*cpu);
                        taken += 1;
                        break;
                    }
                    i += 1;
                    taken = 0;
                }
                self.list_pos = (i, taken);
                if pick.is_none() {
                    self.tail_steps += 1;
                    pick = self
                        .last
                        .filter(|l| runnable.contains(l) && self.tail_steps <= TAIL_QUANTUM);
                    if pick.is_none() {
                        self.tail_steps = 1;
                        pick = self.round_robin(runnable);
                    }
                }
                pick
            }
        };
        self.step += 1;
        self.last = pick;
        if let (Some(p), Some(c)) = (self.picks.as_mut(), pick) {
            p.push(c);
        }
        pick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str, vcpus: usize, steps: usize) -> Vec<usize> {
        let mut sch = Scheduler::new(s.parse().unwrap(), vcpus);
        let all: Vec<usize> = (0..vcpus).collect();
        (0..steps).filter_map(|_| sch.next(&all)).collect()
    }

    #[test]
    fn schedule_strings_round_trip() {
        for s in ["rr", "random:7", "pct:3:2:1000", "list:0x5,1x3,0"] {
            let parsed: Schedule = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        for bad in [
            "",
            "rr:1",
            "random",
            "pct:1:0:10",
            "pct:1:2:0",
            "list:0x0",
            "list:999",
            "fifo",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_blocked_vcpus() {
        assert_eq!(run("rr", 3, 7), [0, 1, 2, 0, 1, 2, 0]);
        let mut sch = Scheduler::new(Schedule::RoundRobin, 3);
        assert_eq!(sch.next(&[0, 2]), Some(0));
        assert_eq!(sch.next(&[0, 2]), Some(2));
        assert_eq!(sch.next(&[0, 2]), Some(0));
        assert_eq!(sch.next(&[]), None);
    }

    #[test]
    fn random_and_pct_replay_exactly_from_their_string() {
        for s in ["random:42", "pct:42:3:50"] {
            assert_eq!(run(s, 4, 200), run(s, 4, 200), "{s}");
        }
        assert_ne!(run("random:1", 4, 64), run("random:2", 4, 64));
    }

    #[test]
    fn pct_depth_1_runs_one_vcpu_until_it_blocks() {
        // No change points: the highest-priority VCPU always runs.
        let seq = run("pct:9:1:100", 3, 50);
        assert!(seq.iter().all(|c| *c == seq[0]));
    }

    #[test]
    fn pct_depth_2_preempts_exactly_once() {
        let seq = run("pct:5:2:20", 2, 40);
        let switches = seq.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(switches, 1, "{seq:?}");
    }

    #[test]
    fn list_runs_then_round_robin_with_a_quantum() {
        let q = TAIL_QUANTUM as usize;
        let seq = run("list:1x2,0", 2, 4 + 2 * q);
        assert_eq!(seq[..3], [1, 1, 0]);
        // After the list VCPU 0 goes on for a quantum, then VCPU 1 for one, then VCPU 0.
        assert!(seq[3..3 + q].iter().all(|c| *c == 0));
        assert!(seq[3 + q..3 + 2 * q].iter().all(|c| *c == 1));
        assert_eq!(seq[3 + 2 * q], 0);
        // A run whose VCPU cannot run ends; the tail goes on with the last VCPU while it can.
        let mut sch = Scheduler::new("list:2x3,1".parse().unwrap(), 3);
        assert_eq!(sch.next(&[0, 1]), Some(1));
        assert_eq!(sch.next(&[0, 1]), Some(1));
        assert_eq!(sch.next(&[0, 2]), Some(2));
        assert_eq!(sch.next(&[0, 2]), Some(2));
    }
}
