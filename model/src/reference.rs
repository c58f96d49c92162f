//! An independent 4-level translator (feature `reference`): the SDM's rules written out with
//! no code shared with [`crate::paging`], the oracle the walker is compared with in the
//! property tests and the `page_walk` fuzz target.

#![allow(clippy::expect_used)]

use crate::ept::{EptAccess, EptCheck, EptQualification};
use crate::memory::GuestMemory;
use crate::paging::{walk, AccessType, PteFlags, WalkContext, WalkFault};
use crate::{Gla, Gpa};

/// Entry bits, as the SDM numbers them, and page-fault error-code bits.
#[allow(missing_docs)]
pub mod bits {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const XD: u64 = 1 << 63;
    /// Bits 51:12.
    pub const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    /// Bits 51:46, reserved with MAXPHYADDR 46.
    pub const RSVD_HIGH: u64 = 0x000F_C000_0000_0000;
    /// Bits 29:13 of a PDPTE with PS = 1.
    pub const RSVD_1G: u64 = 0x3FFF_E000;
    /// Bits 20:13 of a PDE with PS = 1.
    pub const RSVD_2M: u64 = 0x001F_E000;
    /// Page-fault error code bits.
    pub const PF_P: u32 = 1;
    pub const PF_W: u32 = 2;
    pub const PF_U: u32 = 4;
    pub const PF_RSVD: u32 = 8;
    pub const PF_ID: u32 = 16;
}

/// The paging-structure frames of random tables.
pub const FRAMES: [u64; 5] = [0x1000, 0x2000, 0x3000, 0x4000, 0x7000];
/// The entry slots filled in each random table.
pub const SLOTS: [u64; 4] = [0, 1, 0x100, 0x1FF];

/// The paging state of one translation.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    /// CR3.
    pub cr3: u64,
    /// CR0.WP.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// RFLAGS.AC.
    pub ac: bool,
    /// CPL 3.
    pub user: bool,
    /// An implicit supervisor access.
    pub implicit: bool,
    /// `ad_writes_all_levels`.
    pub all_levels: bool,
}

impl Paging {
    /// The walker's context for this state.
    pub fn context(&self) -> WalkContext {
        WalkContext {
            cr3: self.cr3,
            wp: self.wp,
            smep: self.smep,
            smap: self.smap,
            nxe: self.nxe,
            ac: self.ac,
            user: self.user,
            implicit_supervisor: self.implicit,
            ad_writes_all_levels: self.all_levels,
        }
    }
}

/// What a translation ends in, in a form both translators produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Mapped.
    Mapped {
        /// The translated address.
        gpa: u64,
        /// The page size.
        page_bytes: u64,
        /// (entry GPA, value read), PML4E first.
        entries: Vec<(u64, u64)>,
        /// (entry GPA, value after the A/D write), in the order written.
        ad: Vec<(u64, u64)>,
    },
    /// A #PF with this error code.
    PageFault(u32),
    /// The EPT check of the read of the entry at this GPA failed.
    EptOnEntry(u64),
}

/// The SDM's 4-level translation (Vol. 3A §4.5), permission rules (§4.6), error code (§4.7)
/// and A/D rules (§4.8 with the order of HW §4.1). `ept_denied(gpa)` says whether EPT refuses
/// the read of the paging-structure entry at `gpa`.
pub fn reference_translate(
    mem: &GuestMemory,
    p: &Paging,
    gla: u64,
    access: AccessType,
    ept_denied: impl Fn(u64) -> bool,
) -> Translation {
    let is_write = access == AccessType::Write;
    let is_fetch = access == AccessType::Fetch;
    let mut code = 0u32;
    if is_write {
        code |= bits::PF_W;
    }
    if p.user {
        code |= bits::PF_U;
    }
    if is_fetch && (p.nxe || p.smep) {
        code |= bits::PF_ID;
    }

    let mut visited: Vec<(u64, u64)> = Vec::new();
    let mut table = p.cr3 & bits::ADDR & 0x0000_3FFF_FFFF_F000;
    let mut writable_everywhere = true;
    let mut user_everywhere = true;
    let mut execute_disabled = false;
    let mut level = 4u32;
    let (frame_gpa, page_bytes) = loop {
        let index = (gla >> (12 + 9 * (level - 1))) & 0x1FF;
        let entry_gpa = table + index * 8;
        if ept_denied(entry_gpa) {
            return Translation::EptOnEntry(entry_gpa);
        }
        let e = mem.read_u64(Gpa(entry_gpa));
        visited.push((entry_gpa, e));
        if e & bits::P == 0 {
            return Translation::PageFault(code);
        }
        let ps = e & bits::PS != 0;
        let reserved = e & bits::RSVD_HIGH != 0
            || (!p.nxe && e & bits::XD != 0)
            || match level {
                4 => ps,
                3 => ps && e & bits::RSVD_1G != 0,
                2 => ps && e & bits::RSVD_2M != 0,
                _ => false,
            };
        if reserved {
            return Translation::PageFault(code | bits::PF_P | bits::PF_RSVD);
        }
        writable_everywhere = writable_everywhere && e & bits::RW != 0;
        user_everywhere = user_everywhere && e & bits::US != 0;
        execute_disabled = execute_disabled || (p.nxe && e & bits::XD != 0);
        let leaf_bytes: Option<u64> = match level {
            1 => Some(1 << 12),
            2 if ps => Some(1 << 21),
            3 if ps => Some(1 << 30),
            _ => None,
        };
        if let Some(bytes) = leaf_bytes {
            let frame = e & bits::ADDR & !(bytes - 1);
            break (frame | (gla & (bytes - 1)), bytes);
        }
        table = e & bits::ADDR;
        level -= 1;
    };

    // Vol. 3A §4.6: a user-mode address is one with U/S = 1 at every level.
    let user_page = user_everywhere;
    let smap_blocks = p.smap && user_page && (p.implicit || !p.ac);
    let allowed = if p.user {
        match access {
            AccessType::Read => user_page,
            AccessType::Write => user_page && writable_everywhere,
            AccessType::Fetch => user_page && !execute_disabled,
        }
    } else {
        match access {
            AccessType::Read => !smap_blocks,
            AccessType::Write => !smap_blocks && (writable_everywhere || !p.wp),
            AccessType::Fetch => !(execute_disabled || (p.smep && user_page)),
        }
    };
    if !allowed {
        return Translation::PageFault(code | bits::PF_P);
    }

    // §4.8 / HW §4.1: A in every entry used, D in the leaf on writes; only changed entries,
    // top-down, unless every level is rewritten (HVMI-observed mode).
    let last = visited.len() - 1;
    let wanted = |i: usize, e: u64| {
        let mut v = e | bits::A;
        if i == last && is_write {
            v |= bits::D;
        }
        v
    };
    let any_change = visited
        .iter()
        .enumerate()
        .any(|(i, &(_, e))| wanted(i, e) != e);
    let ad = visited
        .iter()
        .enumerate()
        .filter(|&(i, &(_, e))| {
            if p.all_levels {
                any_change
            } else {
                wanted(i, e) != e
            }
        })
        .map(|(i, &(g, e))| (g, wanted(i, e)))
        .collect();
    Translation::Mapped {
        gpa: frame_gpa,
        page_bytes,
        entries: visited,
        ad,
    }
}

/// `paging::walk` in the same form.
pub fn model_translate(
    mem: &GuestMemory,
    p: &Paging,
    gla: u64,
    access: AccessType,
    ept_denied: impl Fn(u64) -> bool,
) -> Translation {
    let denied = EptCheck::Violation {
        rights: EptQualification::empty(),
        convertible: true,
    };
    let ept = |g: Gpa, a: EptAccess| {
        assert_eq!(a, EptAccess::Read, "paging-structure reads are data reads");
        if ept_denied(g.0) {
            denied
        } else {
            EptCheck::Allowed
        }
    };
    match walk(mem, ept, &p.context(), Gla(gla), access) {
        Ok(w) => {
            let entries: Vec<(u64, u64)> = w.entries[..w.levels as usize]
                .iter()
                .map(|e| (e.gpa.0, e.value))
                .collect();
            let ad = w
                .ad_writes()
                .iter()
                .map(|a| {
                    assert!(
                        (PteFlags::ACCESSED | PteFlags::DIRTY).contains(a.set),
                        "A/D writes set only A and D: {a:?}"
                    );
                    let i = 4 - a.level as usize;
                    assert_eq!(entries[i].0, a.gpa.0, "A/D write level and GPA agree");
                    (a.gpa.0, entries[i].1 | a.set.bits())
                })
                .collect();
            Translation::Mapped {
                gpa: w.gpa.0,
                page_bytes: w.page_size.bytes(),
                entries,
                ad,
            }
        }
        Err(WalkFault::Page { error_code }) => Translation::PageFault(error_code.bits()),
        Err(WalkFault::Ept { entry_gpa, check }) => {
            assert_eq!(check, denied);
            Translation::EptOnEntry(entry_gpa.0)
        }
    }
}
