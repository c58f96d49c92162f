//! The test kit shared by the in-process test targets: world builders, the `Fx` and `PtWorld`
//! fixtures, the assembler of guest instructions, the helpers that drive a #VE through the
//! agent, and readers of the events, the EPT views and the agent's memory. Each target takes
//! what it uses.

pub mod agent;
pub mod asm;
pub mod cache;
pub mod ept;
pub mod events;
pub mod process;
pub mod props;
pub mod pt_world;
pub mod spec;
pub mod ve;
pub mod verdict;
pub mod worlds;
