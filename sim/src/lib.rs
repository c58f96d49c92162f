//! vesim: a deterministic simulator and fuzzing harness for #VE-based VM introspection.
//!
//! The machine (paging, EPT, #VE, VMFUNC, the reference CPU) lives in crate `vesim-model`. This
//! crate holds what runs on it:
//!
//! - [`layout`]: every fixed guest address vesim uses, documented in one place.
//! - [`exec`]: one instruction on a small machine, the engine behind `vesim exec`.
//! - [`guest`]: the Windows-like guest the agent lives in.
//! - [`introcore`]: the hypervisor-side engine (hooks, monitors, cache writer, deploy,
//!   hypercalls, dispatch, emulation).
//! - [`agent`]: the in-guest #VE agent, step by step.
//! - [`attack`]: isolation attempts by guest code (invariant I3).
//! - [`check`]: the invariants evaluated after every step.
//! - [`equivalence`]: I6, the #VE-on and #VE-off runs of one workload compared.
//! - `fuzzing` (feature `fuzzing`): the fuzz oracles behind `fuzz/` and their tests.
//! - [`quirks`]: the quirk switches and the `fixed` and `hvmi` profiles.
//! - [`minimize`]: shrinking a failing scenario while the same invariant fails.
//! - [`ops`]: guest operations as data, run per VCPU and interleaved by a scheduler.
//! - [`scenario_file`]: scenario files (TOML).
//! - [`sched`]: deterministic VCPU schedulers with replayable schedule strings.
//! - [`trace`]: the event log as stable text lines, and its SHA-256 trace hash.
//! - [`workload`]: built-in scenarios.
//! - [`world`]: one machine with all of the above, stepped deterministically.
//! - [`verdict`]: one #VE through the agent, the engine behind `vesim agent`.
//! - [`cli`]: the `vesim` command line.

pub mod abi;
pub mod agent;
pub mod attack;
pub mod check;
pub mod cli;
pub mod equivalence;
pub mod events;
pub mod exec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod guest;
pub mod introcore;
pub mod layout;
pub mod minimize;
pub mod ops;
pub mod output;
pub mod quirk_report;
pub mod quirks;
pub mod runner;
pub mod scenario_case;
pub mod scenario_file;
pub mod sched;
pub mod text;
pub mod trace;
pub mod verdict;
pub mod workload;
pub mod world;
