//! vesim: a deterministic simulator and fuzzing harness for #VE-based VM introspection.
//!
//! The machine (paging, EPT, #VE, VMFUNC, the reference CPU) lives in crate `vesim-model`.
//! This crate holds what runs on it, in three layers:
//!
//! 1. **The actors**, each with its own state and code, none importing the world:
//!    - the guest ([`guest`]): the Windows-like kernel, its processes and memory manager
//!      ([`guest::mm::Mm`]), whose page-table writes are real instructions;
//!    - the agent ([`agent`]): the in-guest #VE handler, a state machine at fixed RIPs whose
//!      state is all in guest memory; [`agent::Agent`] is the agent running on one VCPU;
//!    - introcore ([`introcore`]): the hypervisor-side engine; [`introcore::Introcore`] is its
//!      state and [`introcore::Engine`] introcore at work on what the hypervisor lets it touch.
//!
//!    What they share is a contract ([`abi`]: hypercall numbers, verdict codes, the relevance
//!    rule, the cache's geometry), the fixed addresses ([`layout`]), the quirk switches
//!    ([`quirks`]) and the sinks they report to ([`events`]).
//! 2. **The world** ([`world`]): the composition root and the step loop. [`world::World::step`]
//!    runs one hardware-visible step of one VCPU: an agent step when RIP is in the agent
//!    (the agent returns what it did, a VMCALL included, and the world takes the exit), the
//!    trampoline of the hooked OS handler, or one guest instruction on the reference CPU with
//!    the exit it causes handed to introcore.
//! 3. **The harness**: guest operations and their runner ([`ops`]), schedulers ([`sched`]),
//!    the invariants after every step ([`check`], I6 in [`equivalence`]), one checked run for a
//!    seed with typed failures ([`runner`]), built-in scenarios ([`workload`]), minimization
//!    ([`minimize`]), traces and replay ([`trace`]), the quirk report ([`quirk_report`]), the
//!    `vesim agent` verdict engine ([`verdict`]), `vesim exec` ([`exec`]), attacks ([`attack`]),
//!    scenario files ([`scenario_file`], [`scenario_case`]), text forms ([`text`]), atomic
//!    outputs ([`output`]), the fuzz oracles (`fuzzing`, feature `fuzzing`) and the command
//!    line ([`cli`], which only the binary and the CLI's own fuzz oracle reach into).
//!
//! # One page-table write, end to end
//!
//! A process's memory manager maps a page: the operation runner ([`ops::OpRunner`]) asks
//! [`guest::mm::Mm::plan_map`] for a plan (frames allocated now, one `MOV [self-map], value`
//! per entry) and loads its first instruction into the VCPU. Each scheduling step is one
//! [`world::World::step`]:
//!
//! 1. The reference CPU fetches and decodes the MOV, walks the guest page tables through EPT
//!    and finds the table page write-protected and convertible in the untrusted view: it
//!    writes the #VE information area and delivers vector 20 (`Outcome::VeDelivered`); the
//!    world counts the #VE and logs `Event::Ve`.
//! 2. RIP is now the hooked OS handler: the next step runs the retpoline trampoline into the
//!    agent's VESTUB.
//! 3. Agent steps ([`agent::Agent::step`]): VMFUNC to the protected view, the register save,
//!    the C handler (B26), then the page-table path: decode with the agent's decoder, the
//!    rejection rules, the lock, the old value, the emulation, the relevance rule and the cache
//!    lookup. An irrelevant or cached write is stored by the agent itself; a relevant one ends
//!    its step in a RAISE_EPT VMCALL, which the world hands to
//!    [`introcore::Engine::hypercall`]: introcore dispatches it as the EPT violation it stands
//!    for, runs the monitors' callbacks and writes the cache; the agent's step resumes
//!    ([`agent::Agent::resume`]) and stores the new value.
//! 4. The cleanup, the VESTUB exit and the VMFUNC back; the agent's verdict is logged as
//!    `Event::Agent`, the RET lands after the MOV, and the runner loads the next instruction.
//!
//! With #VE off the same MOV exits (`Outcome::EptViolation`) and introcore's exit path
//! emulates and commits it. After every step the checker ([`check::Checker`]) evaluates the
//! invariants on the world as it is.
//!
//! `cargo doc --open -p vesim` renders this page with links to every module.

pub mod abi;
pub mod agent;
pub mod attack;
pub mod check;
pub mod cli;
pub mod equivalence;
pub mod events;
pub mod exec;
pub mod explore;
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
