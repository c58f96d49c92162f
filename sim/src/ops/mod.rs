//! Guest operations as data ([`GuestOp`]), their text form (`text`: what scenario files,
//! traces and `list:` operations write) and the runner that plays per-VCPU queues of them on a
//! world ([`OpRunner`], `runner`).

mod runner;
mod text;

pub use runner::{OpRunner, RunFailure};

use crate::attack::Attack;
use crate::guest::mm::EntryInsn;
use std::collections::VecDeque;

/// One guest operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// Create a process (protected: introcore monitors its translations).
    CreateProcess {
        /// Protected.
        protected: bool,
    },
    /// Map a fresh page (flags: leaf bits besides P/US).
    Map {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// Leaf flags.
        flags: u64,
    },
    /// Unmap a page.
    Unmap {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
    },
    /// Change write and execute permission.
    Protect {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// Writable.
        writable: bool,
        /// Executable.
        executable: bool,
    },
    /// Change the caching attributes with instruction form `form % 3`.
    SetCaching {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// PWT/PCD/PAT bits.
        attrs: u64,
        /// Instruction form.
        form: u32,
    },
    /// Clear the accessed bit.
    Trim {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
    },
    /// Swap out.
    SwapOut {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
    },
    /// Swap in.
    SwapIn {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
    },
    /// Touch a page (read, or write of `value`).
    Touch {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// Write.
        write: bool,
        /// Value written.
        value: u64,
    },
    /// A directed write of `va`'s PTE with an instruction form the memory manager does not
    /// otherwise use (the quirk report's scenarios).
    Write {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// The entry's level (1: the PTE, 2: the PDE, 3: the PDPTE, 4: the PML4E).
        level: u8,
        /// Instruction form.
        insn: EntryInsn,
        /// Its operand.
        arg: u64,
    },
    /// The memory manager moves the page table that maps `va` to `frame` (low memory below
    /// [`crate::layout::LOW_FRAMES_END`], frame 0 included) and points the PDE at it.
    MoveTable {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
        /// The new table's guest-physical address.
        frame: u64,
    },
    /// Introcore starts monitoring the translation of a page of a protected process.
    Hook {
        /// Process.
        pid: u32,
        /// Page.
        va: u64,
    },
    /// Introcore unloads the agent (B95–B99): the request, `delay` scheduling steps before
    /// the unloader lands (the window in which the agent still runs with the unload pending,
    /// Q16), then the unloader retrying until the gate opens (B97, B140), then completion.
    Unload {
        /// Steps between the request and the unloader.
        delay: u32,
    },
    /// Introcore deploys the agent again after an unload (B86–B94).
    Redeploy,
    /// An isolation attempt by process `pid`'s code ([`crate::attack`]).
    Attack {
        /// Process.
        pid: u32,
        /// What it tries.
        attack: Attack,
        /// Its first operand (an offset, a page or a CPU index).
        arg: u64,
        /// Its second operand (a value or a frame).
        value: u64,
    },
}

impl GuestOp {
    /// The process whose address space the operation works in, if it has one.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            GuestOp::CreateProcess { .. } | GuestOp::Unload { .. } | GuestOp::Redeploy => None,
            GuestOp::Map { pid, .. }
            | GuestOp::Unmap { pid, .. }
            | GuestOp::Protect { pid, .. }
            | GuestOp::SetCaching { pid, .. }
            | GuestOp::Trim { pid, .. }
            | GuestOp::SwapOut { pid, .. }
            | GuestOp::SwapIn { pid, .. }
            | GuestOp::Touch { pid, .. }
            | GuestOp::Write { pid, .. }
            | GuestOp::MoveTable { pid, .. }
            | GuestOp::Hook { pid, .. }
            | GuestOp::Attack { pid, .. } => Some(pid),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpEnd {
    /// Completed.
    Done,
    /// Not possible in the state it found (skipped, nothing executed).
    Skipped(String),
}

/// One VCPU's operations: a list, or a generator that makes them one at a time (so a run's
/// memory does not grow with its operation count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpStream {
    /// Operations given as data.
    List(VecDeque<GuestOp>),
    /// The paper's synthetic paging test ([`crate::workload`]), generated in order.
    Paper(crate::workload::PaperGen),
}

impl OpStream {
    /// Whether no operation is left.
    pub fn is_empty(&self) -> bool {
        match self {
            OpStream::List(q) => q.is_empty(),
            OpStream::Paper(g) => g.remaining() == 0,
        }
    }

    /// Operations left.
    pub fn remaining(&self) -> u64 {
        match self {
            OpStream::List(q) => q.len() as u64,
            OpStream::Paper(g) => g.remaining(),
        }
    }
}

impl Iterator for OpStream {
    type Item = GuestOp;

    fn next(&mut self) -> Option<GuestOp> {
        match self {
            OpStream::List(q) => q.pop_front(),
            OpStream::Paper(g) => g.next(),
        }
    }
}

impl From<Vec<GuestOp>> for OpStream {
    fn from(v: Vec<GuestOp>) -> Self {
        OpStream::List(VecDeque::from(v))
    }
}
