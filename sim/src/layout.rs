//! Fixed guest addresses. Every magic address vesim uses is defined here and nowhere else.

use vesim_model::Gpa;

/// `vesim exec`: the guest-physical window that holds the page tables (PML4 first).
pub const EXEC_TABLES_START: Gpa = Gpa(0x0100_0000);
/// `vesim exec`: end (exclusive) of the page-table window.
pub const EXEC_TABLES_END: Gpa = Gpa(0x0110_0000);
/// `vesim exec`: the first guest-physical frame given to a mapped page; pages get consecutive
/// frames in ascending linear order.
pub const EXEC_DATA_START: Gpa = Gpa(0x0020_0000);
/// `vesim exec`: the default RIP.
pub const EXEC_DEFAULT_RIP: u64 = 0x40_0000;
