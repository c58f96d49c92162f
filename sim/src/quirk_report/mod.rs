//! The quirk report (`vesim quirks`). For each quirk switch of VE-SEMANTICS section 2 it
//! searches for a world in which `fixed` plus that one switch fails an invariant while `fixed`
//! passes the same operations under the same schedule: first the directed scenarios below,
//! then seeded swarm runs of the built-ins, then inputs of the `scenario` fuzz target. What it finds is shrunk (operations, VCPUs,
//! preemptions) under the same two conditions and recorded as a trace whose header names the
//! switch. A switch that breaks nothing gets its cost measured instead (VMCALLs, #VEs and the
//! cache hit rate with and without it, on a named workload). Every other quirk of
//! HVMI-BEHAVIOURS section Q gets a row saying why it has no switch.
mod catalogue;
mod directed;
mod report;
mod search;

pub use catalogue::{Kind, Quirk, QUIRKS};
pub use directed::{directed, fuzz_case, Directed, FUZZ_CASES, SWARM_SEEDS};
pub use report::{cost, no_switch_row, report, switch_row, Cost, Row, COST_STEPS_MAX};
pub use search::{search, shrink, Finding};
