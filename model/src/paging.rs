//! 4-level IA-32e paging: entry bits, a builder for 4K/2M/1G mappings and a self-map slot, and
//! the hardware walker (HW §4.1).
//!
//! The walker is a pure function of guest memory, the EPT check for paging-structure reads and
//! the access: it returns either a fault or a [`Walk`] that lists the accessed/dirty updates
//! hardware would make. The MMU (`mmu`) applies those updates one by one, each as an EPT data
//! write (HW §4.2), so that compute and commit stay apart.

use crate::addr::{Gfn, Gla, Gpa, PAGE_SIZE, PHYS_ADDR_MASK};
use crate::ept::{EptAccess, EptCheck};
use crate::memory::GuestMemory;
use bitflags::bitflags;

bitflags! {
    /// Bits of a 4-level paging-structure entry (HW §4.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PteFlags: u64 {
        /// Bit 0: present.
        const PRESENT = 1 << 0;
        /// Bit 1: writable (R/W).
        const WRITABLE = 1 << 1;
        /// Bit 2: user-mode accesses allowed (U/S).
        const USER = 1 << 2;
        /// Bit 3: page-level write-through.
        const PWT = 1 << 3;
        /// Bit 4: page-level cache disable.
        const PCD = 1 << 4;
        /// Bit 5: accessed.
        const ACCESSED = 1 << 5;
        /// Bit 6: dirty (leaf entries only).
        const DIRTY = 1 << 6;
        /// Bit 7: page size in a PDPTE or PDE (maps 1 GiB or 2 MiB); PAT in a PTE.
        const PAGE_SIZE = 1 << 7;
        /// Bit 8: global (leaf entries only).
        const GLOBAL = 1 << 8;
        /// Bit 12: PAT in a PDPTE or PDE that maps a large page.
        const LARGE_PAT = 1 << 12;
        /// Bit 63: execute disable (reserved unless EFER.NXE = 1).
        const NO_EXECUTE = 1 << 63;
    }
}

bitflags! {
    /// The page-fault error code (HW §4.1; SDM Vol. 3A §4.7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PageFaultErrorCode: u32 {
        /// Bit 0: the fault was a protection violation (0: a not-present entry).
        const PRESENT = 1 << 0;
        /// Bit 1: the access was a write.
        const WRITE = 1 << 1;
        /// Bit 2: the access was a user-mode access.
        const USER = 1 << 2;
        /// Bit 3: a reserved bit was set in a paging-structure entry.
        const RESERVED = 1 << 3;
        /// Bit 4: the access was an instruction fetch (reported when NXE or SMEP is on).
        const FETCH = 1 << 4;
    }
}

/// Mask of the address bits 51:12 of a paging-structure entry.
pub const ENTRY_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Reserved bits 51:MAXPHYADDR of any entry.
const RESERVED_HIGH: u64 = ENTRY_ADDR_MASK & !PHYS_ADDR_MASK;
/// Reserved bits 29:13 of a PDPTE that maps 1 GiB.
const RESERVED_1G: u64 = 0x3FFF_E000;
/// Reserved bits 20:13 of a PDE that maps 2 MiB.
const RESERVED_2M: u64 = 0x001F_E000;

/// A raw paging-structure entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct PageTableEntry(pub u64);

impl PageTableEntry {
    /// An entry pointing at `gpa` with `flags`.
    pub fn new(gpa: Gpa, flags: PteFlags) -> Self {
        PageTableEntry(gpa.0 & ENTRY_ADDR_MASK | flags.bits())
    }
    /// The flag bits.
    pub fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }
    /// The address held in bits 51:12.
    pub fn addr(self) -> Gpa {
        Gpa(self.0 & ENTRY_ADDR_MASK)
    }
    /// Whether bit 0 is set.
    pub fn is_present(self) -> bool {
        self.0 & PteFlags::PRESENT.bits() != 0
    }
}

/// Size of the page a translation ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PDE with PS = 1.
    Size2M,
    /// 1 GiB, mapped by a PDPTE with PS = 1.
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
    /// The paging level (1 = PT, 2 = PD, 3 = PDPT) whose entry maps a page of this size.
    pub const fn leaf_level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
}

/// The kind of linear access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessType {
    /// A data read.
    Read,
    /// A data write (or the write half of a read-modify-write).
    Write,
    /// An instruction fetch.
    Fetch,
}

/// Paging state and access attributes for one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkContext {
    /// CR3 (bits 51:12 locate the PML4; the low bits are ignored).
    pub cr3: u64,
    /// CR0.WP.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// RFLAGS.AC (SMAP override for explicit supervisor accesses).
    pub ac: bool,
    /// The access is a user-mode access (CPL 3 and not an implicit supervisor access).
    pub user: bool,
    /// The access is an implicit supervisor access (event delivery, descriptor tables).
    pub implicit_supervisor: bool,
    /// Reproduce the HVMI-observed walker that writes every level on any A/D update (HW §4.1).
    pub ad_writes_all_levels: bool,
}

/// One paging-structure entry used by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WalkEntry {
    /// Guest-physical address of the entry.
    pub gpa: Gpa,
    /// Its value when read.
    pub value: u64,
}

/// One accessed/dirty write the walker will make: OR `set` into the entry at `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AdWrite {
    /// Paging level of the entry (4 = PML4E ... 1 = PTE).
    pub level: u8,
    /// Guest-physical address of the entry.
    pub gpa: Gpa,
    /// Bits to set (A, and D for a leaf on writes; empty for an "all levels" rewrite of an
    /// entry that already has them).
    pub set: PteFlags,
}

/// A completed walk: the translation and the A/D writes still to be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The guest-physical address the linear address translates to.
    pub gpa: Gpa,
    /// Size of the page.
    pub page_size: PageSize,
    /// Entries used, PML4E first; only the first `levels` are meaningful.
    pub entries: [WalkEntry; 4],
    /// Number of entries used (4 for 4K, 3 for 2M, 2 for 1G).
    pub levels: u8,
    /// A/D writes in the order hardware makes them (top-down, leaf last).
    pub ad_writes: [AdWrite; 4],
    /// Number of A/D writes.
    pub ad_count: u8,
}

impl Walk {
    /// The A/D writes as a slice.
    pub fn ad_writes(&self) -> &[AdWrite] {
        &self.ad_writes[..self.ad_count as usize]
    }
    /// The leaf entry.
    pub fn leaf(&self) -> WalkEntry {
        self.entries[(self.levels as usize).saturating_sub(1)]
    }
}

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// A guest page fault; no A/D bit was written.
    Page {
        /// The error code pushed by #PF.
        error_code: PageFaultErrorCode,
    },
    /// Reading the paging-structure entry at `entry_gpa` failed its EPT check (a violation or
    /// a misconfiguration).
    Ept {
        /// Guest-physical address of the entry being read.
        entry_gpa: Gpa,
        /// The EPT result.
        check: EptCheck,
    },
}

/// Walks the 4-level paging structures for `gla` (HW §4.1). `ept` checks each paging-structure
/// read (a data read, HW §4.2). The linear address must be canonical; the caller raises #GP
/// otherwise.
pub fn walk(
    mem: &GuestMemory,
    ept: impl Fn(Gpa, EptAccess) -> EptCheck,
    ctx: &WalkContext,
    gla: Gla,
    access: AccessType,
) -> Result<Walk, WalkFault> {
    let write = access == AccessType::Write;
    let fetch = access == AccessType::Fetch;
    let mut base_code = PageFaultErrorCode::empty();
    if write {
        base_code |= PageFaultErrorCode::WRITE;
    }
    if ctx.user {
        base_code |= PageFaultErrorCode::USER;
    }
    if fetch && (ctx.nxe || ctx.smep) {
        base_code |= PageFaultErrorCode::FETCH;
    }
    let mut entries = [WalkEntry::default(); 4];
    let mut table = ctx.cr3 & ENTRY_ADDR_MASK & PHYS_ADDR_MASK;
    let mut all_writable = true;
    let mut all_user = true;
    let mut any_nx = false;
    let mut levels = 0u8;
    let mut page_size = PageSize::Size4K;
    let mut gpa = Gpa(0);
    for level in (1..=4u8).rev() {
        let entry_gpa = Gpa(table | (gla.table_index(level) * 8));
        match ept(entry_gpa, EptAccess::Read) {
            EptCheck::Allowed => {}
            check => return Err(WalkFault::Ept { entry_gpa, check }),
        }
        let value = mem.read_u64(entry_gpa);
        entries[levels as usize] = WalkEntry {
            gpa: entry_gpa,
            value,
        };
        levels += 1;
        if value & PteFlags::PRESENT.bits() == 0 {
            return Err(WalkFault::Page {
                error_code: base_code,
            });
        }
        let large = level != 1 && value & PteFlags::PAGE_SIZE.bits() != 0;
        let mut reserved = value & RESERVED_HIGH;
        if !ctx.nxe {
            reserved |= value & PteFlags::NO_EXECUTE.bits();
        }
        if level == 4 {
            reserved |= value & PteFlags::PAGE_SIZE.bits();
        } else if large && level == 3 {
            reserved |= value & RESERVED_1G;
        } else if large && level == 2 {
            reserved |= value & RESERVED_2M;
        }
        if reserved != 0 {
            return Err(WalkFault::Page {
                error_code: base_code | PageFaultErrorCode::PRESENT | PageFaultErrorCode::RESERVED,
            });
        }
        all_writable &= value & PteFlags::WRITABLE.bits() != 0;
        all_user &= value & PteFlags::USER.bits() != 0;
        any_nx |= value & PteFlags::NO_EXECUTE.bits() != 0;
        if level == 1 || (large && level != 4) {
            let (mask, size) = match level {
                3 => (0x3FFF_FFFFu64, PageSize::Size1G),
                2 => (0x1F_FFFF, PageSize::Size2M),
                _ => (0xFFF, PageSize::Size4K),
            };
            page_size = size;
            gpa = Gpa((value & ENTRY_ADDR_MASK & !mask) | (gla.0 & mask));
            break;
        }
        table = value & ENTRY_ADDR_MASK;
    }

    // Permission checks (SDM Vol. 3A §4.6); a fault here performs no A/D write.
    let protection = base_code | PageFaultErrorCode::PRESENT;
    let denied = if ctx.user {
        !all_user || (write && !all_writable) || (fetch && ctx.nxe && any_nx)
    } else {
        let smap_applies = ctx.smap && all_user && (ctx.implicit_supervisor || !ctx.ac);
        match access {
            AccessType::Fetch => (ctx.smep && all_user) || (ctx.nxe && any_nx),
            AccessType::Read => smap_applies,
            AccessType::Write => smap_applies || (ctx.wp && !all_writable),
        }
    };
    if denied {
        return Err(WalkFault::Page {
            error_code: protection,
        });
    }

    // A/D updates: upper levels top-down, only entries whose A is clear, then the leaf in one
    // write (A, and D on writes). With `ad_writes_all_levels`, any update writes every level.
    let mut ad_writes = [AdWrite::default(); 4];
    let mut ad_count = 0u8;
    let a = PteFlags::ACCESSED;
    let leaf_need = {
        let v = PteFlags::from_bits_retain(entries[levels as usize - 1].value);
        let mut need = PteFlags::empty();
        if !v.contains(a) {
            need |= a;
        }
        if write && !v.contains(PteFlags::DIRTY) {
            need |= PteFlags::DIRTY | a;
        }
        need
    };
    let any_upper = entries[..levels as usize - 1]
        .iter()
        .any(|e| e.value & a.bits() == 0);
    let all = ctx.ad_writes_all_levels && (any_upper || !leaf_need.is_empty());
    for (i, e) in entries[..levels as usize].iter().enumerate() {
        let level = 4 - i as u8;
        let is_leaf = i + 1 == levels as usize;
        let set = if is_leaf {
            leaf_need
        } else if e.value & a.bits() == 0 {
            a
        } else {
            PteFlags::empty()
        };
        if !set.is_empty() || all {
            // Under "all levels", a write to the leaf sets A|D as a real locked OR would.
            let set = if all && is_leaf && write {
                set | a | PteFlags::DIRTY
            } else if all {
                set | a
            } else {
                set
            };
            ad_writes[ad_count as usize] = AdWrite {
                level,
                gpa: e.gpa,
                set,
            };
            ad_count += 1;
        }
    }
    Ok(Walk {
        gpa,
        page_size,
        entries,
        levels,
        ad_writes,
        ad_count,
    })
}

/// A bump allocator of guest frames inside one guest-physical window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameAllocator {
    next: Gfn,
    end: Gfn,
}

impl FrameAllocator {
    /// Allocates frames from `[start, end)` (both page aligned).
    pub fn new(start: Gpa, end: Gpa) -> Self {
        FrameAllocator {
            next: start.gfn(),
            end: end.gfn(),
        }
    }
    /// The next free frame, or an error when the window is full.
    pub fn alloc(&mut self) -> Result<Gfn, PagingError> {
        if self.next >= self.end {
            return Err(PagingError::OutOfFrames);
        }
        let f = self.next;
        self.next = Gfn(f.0 + 1);
        Ok(f)
    }
}

/// Errors of the page-table builder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    /// The frame window given to the builder is exhausted.
    #[error("the page-table frame window is exhausted")]
    OutOfFrames,
    /// A mapping would replace or split an existing one.
    #[error("linear address {gla} is already mapped by a {existing:?} page")]
    Conflict {
        /// The linear address being mapped.
        gla: Gla,
        /// Size of the page already there.
        existing: PageSize,
    },
    /// Addresses must be aligned to the page size.
    #[error("linear address {gla} or physical address {gpa} is not aligned to {size:?}")]
    Misaligned {
        /// The linear address.
        gla: Gla,
        /// The physical address.
        gpa: Gpa,
        /// The page size asked for.
        size: PageSize,
    },
    /// A self-map slot must be in the kernel half of the PML4.
    #[error("self-map index {0:#x} is outside 0x100..=0x1ff")]
    SelfMapIndex(u64),
    /// A linear address must be canonical.
    #[error("linear address {0} is not canonical")]
    NonCanonical(Gla),
}

/// Builds 4-level page tables in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageTableBuilder {
    pml4: Gpa,
    alloc: FrameAllocator,
    tables: Vec<Gpa>,
}

impl PageTableBuilder {
    /// Allocates an empty PML4 from `alloc`.
    pub fn new(mem: &mut GuestMemory, mut alloc: FrameAllocator) -> Result<Self, PagingError> {
        let pml4 = alloc.alloc()?.gpa();
        mem.write(pml4, &[0u8; PAGE_SIZE as usize]);
        Ok(PageTableBuilder {
            pml4,
            alloc,
            tables: vec![pml4],
        })
    }

    /// The value to load into CR3.
    pub fn cr3(&self) -> u64 {
        self.pml4.0
    }

    /// Every paging-structure page the builder allocated, PML4 first.
    pub fn tables(&self) -> &[Gpa] {
        &self.tables
    }

    /// Maps one page of `size` at `gla` to `gpa` with leaf `flags` (PRESENT is added; PS is
    /// added for large pages). Intermediate entries are present and writable, and user when
    /// the leaf is.
    pub fn map(
        &mut self,
        mem: &mut GuestMemory,
        gla: Gla,
        gpa: Gpa,
        size: PageSize,
        flags: PteFlags,
    ) -> Result<(), PagingError> {
        if !gla.is_canonical() {
            return Err(PagingError::NonCanonical(gla));
        }
        if gla.0 % size.bytes() != 0 || gpa.0 % size.bytes() != 0 {
            return Err(PagingError::Misaligned { gla, gpa, size });
        }
        let inter = PteFlags::PRESENT | PteFlags::WRITABLE | (flags & PteFlags::USER);
        let mut table = self.pml4;
        for level in (size.leaf_level() + 1..=4).rev() {
            let slot = Gpa(table.0 + gla.table_index(level) * 8);
            let e = PageTableEntry(mem.read_u64(slot));
            if e.is_present() {
                if level != 4 && e.flags().contains(PteFlags::PAGE_SIZE) {
                    let existing = if level == 3 {
                        PageSize::Size1G
                    } else {
                        PageSize::Size2M
                    };
                    return Err(PagingError::Conflict { gla, existing });
                }
                mem.write_u64(slot, e.0 | inter.bits());
                table = e.addr();
            } else {
                let t = self.alloc.alloc()?.gpa();
                mem.write(t, &[0u8; PAGE_SIZE as usize]);
                self.tables.push(t);
                mem.write_u64(slot, PageTableEntry::new(t, inter).0);
                table = t;
            }
        }
        let slot = Gpa(table.0 + gla.table_index(size.leaf_level()) * 8);
        let existing = PageTableEntry(mem.read_u64(slot));
        if existing.is_present() {
            return Err(PagingError::Conflict {
                gla,
                existing: size,
            });
        }
        let mut leaf = flags | PteFlags::PRESENT;
        if size != PageSize::Size4K {
            leaf |= PteFlags::PAGE_SIZE;
        }
        mem.write_u64(slot, PageTableEntry::new(gpa, leaf).0);
        Ok(())
    }

    /// The paging-structure page of `level` (1 = page table ... 4 = PML4) that translates
    /// `gla`, with every upper entry on the way present (and writable, as [`Self::map`] makes
    /// them). A missing table of `level` is `table` (zeroed); a missing table above it is a
    /// fresh frame of the builder's. A large page in the way is a conflict.
    pub fn table_for(
        &mut self,
        mem: &mut GuestMemory,
        gla: Gla,
        level: u8,
        table: Gpa,
    ) -> Result<Gpa, PagingError> {
        if !gla.is_canonical() {
            return Err(PagingError::NonCanonical(gla));
        }
        let level = level.clamp(1, 4);
        let inter = PteFlags::PRESENT | PteFlags::WRITABLE;
        let mut current = self.pml4;
        for l in (level + 1..=4).rev() {
            let slot = Gpa(current.0 + gla.table_index(l) * 8);
            let e = PageTableEntry(mem.read_u64(slot));
            if e.is_present() {
                if l != 4 && e.flags().contains(PteFlags::PAGE_SIZE) {
                    let existing = if l == 3 {
                        PageSize::Size1G
                    } else {
                        PageSize::Size2M
                    };
                    return Err(PagingError::Conflict { gla, existing });
                }
                current = e.addr();
            } else {
                let t = if l == level + 1 {
                    table.page_base()
                } else {
                    self.alloc.alloc()?.gpa()
                };
                mem.write(t, &[0u8; PAGE_SIZE as usize]);
                self.tables.push(t);
                mem.write_u64(slot, PageTableEntry::new(t, inter).0);
                current = t;
            }
        }
        Ok(current)
    }

    /// Points PML4 entry `index` (0x100..=0x1FF) at the PML4 itself, present, writable and
    /// supervisor, so the paging structures appear at the self-map addresses.
    pub fn install_self_map(
        &mut self,
        mem: &mut GuestMemory,
        index: u64,
    ) -> Result<(), PagingError> {
        if !(0x100..=0x1FF).contains(&index) {
            return Err(PagingError::SelfMapIndex(index));
        }
        let e = PageTableEntry::new(self.pml4, PteFlags::PRESENT | PteFlags::WRITABLE);
        mem.write_u64(Gpa(self.pml4.0 + index * 8), e.0);
        Ok(())
    }
}

/// The linear address at which the self-map with PML4 index `index` shows the paging-structure
/// entry of `level` (1 = PTE ... 4 = PML4E) that translates `gla`.
pub fn self_map_entry_address(index: u64, gla: Gla, level: u8) -> Gla {
    let index = index & 0x1FF;
    let level = level.clamp(1, 4) as u32;
    let mut base = 0u64;
    for k in 0..level {
        base |= index << (39 - 9 * k);
    }
    let shift = 12 + 9 * (level - 1);
    let bits = 36 - 9 * (level - 1);
    let slot = (gla.0 >> shift) & ((1u64 << bits) - 1);
    Gla(base.wrapping_add(slot * 8)).canonicalize()
}

/// The inverse of [`self_map_entry_address`]: for a linear address in self-map slot `index`,
/// the level of the paging-structure entry it shows (how many of its leading table indices are
/// `index`: 1 = PTE ... 4 = PML4E) and the first linear address that entry translates. `None`
/// outside the slot. At level 4 with entry index `index`, the entry is the self-map entry.
pub fn self_map_target(index: u64, gla: Gla) -> Option<(u8, Gla)> {
    let index = index & 0x1FF;
    let level = (1..=4u8)
        .rev()
        .take_while(|l| gla.table_index(*l) == index)
        .count() as u8;
    if level == 0 {
        return None;
    }
    let low = 12 + 9 * (u32::from(level) - 1);
    let va = (gla.0 << (9 * u32::from(level))) & 0x0000_FFFF_FFFF_FFFF & !((1u64 << low) - 1);
    Some((level, Gla(va).canonicalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(_: Gpa, _: EptAccess) -> EptCheck {
        EptCheck::Allowed
    }

    #[test]
    fn self_map_target_inverts_the_entry_address_and_the_walk_agrees() {
        let s = 0x1ED;
        let mut mem = GuestMemory::new();
        let mut b = PageTableBuilder::new(
            &mut mem,
            FrameAllocator::new(Gpa(0x10_0000), Gpa(0x20_0000)),
        )
        .unwrap();
        b.install_self_map(&mut mem, s).unwrap();
        let vas = [
            0x0000_0000_0020_1000u64,
            0x0000_7FFF_FFFF_F000,
            0xFFFF_8000_0000_0000,
            0xFFFF_F800_0010_0000,
            0x0000_0123_4567_8000,
        ];
        for (n, va) in vas.into_iter().enumerate() {
            for level in 1..=4u8 {
                let span_mask = !((1u64 << (12 + 9 * (u32::from(level) - 1))) - 1);
                let first = Gla(va & span_mask).canonicalize();
                let at = self_map_entry_address(s, Gla(va), level);
                assert_eq!(
                    self_map_target(s, at),
                    Some((level, first)),
                    "{va:#x} {level}"
                );
                // The walker, through the self-map, lands on the slot of the table that
                // table_for placed.
                let frame = Gpa(0x40_0000 + 0x1_0000 * n as u64 + 0x1000 * u64::from(level));
                let table = b.table_for(&mut mem, Gla(va), level, frame).unwrap();
                let w = walk(&mem, allow, &kernel_ctx(b.cr3()), at, AccessType::Read).unwrap();
                assert_eq!(w.gpa, Gpa(table.0 + Gla(va).table_index(level) * 8));
            }
        }
        assert_eq!(self_map_target(s, Gla(0xFFFF_F800_0000_0000)), None);
        // Four times through the slot, entry index 0x1ED: the self-map entry itself.
        let own = self_map_entry_address(s, Gla(0xFFFF_F680_0000_0000), 4);
        assert_eq!(self_map_target(s, own).map(|t| t.0), Some(4));
    }

    fn kernel_ctx(cr3: u64) -> WalkContext {
        WalkContext {
            cr3,
            wp: true,
            smep: false,
            smap: false,
            nxe: true,
            ac: false,
            user: false,
            implicit_supervisor: false,
            ad_writes_all_levels: false,
        }
    }

    fn setup() -> (GuestMemory, PageTableBuilder) {
        let mut mem = GuestMemory::new();
        let b = PageTableBuilder::new(
            &mut mem,
            FrameAllocator::new(Gpa(0x10_0000), Gpa(0x20_0000)),
        )
        .unwrap();
        (mem, b)
    }

    #[test]
    fn hw_4_1_large_page_translations() {
        let (mut mem, mut b) = setup();
        let rw = PteFlags::WRITABLE;
        b.map(
            &mut mem,
            Gla(0x4000_0000),
            Gpa(0x8000_0000),
            PageSize::Size1G,
            rw,
        )
        .unwrap();
        b.map(
            &mut mem,
            Gla(0x20_0000),
            Gpa(0x60_0000),
            PageSize::Size2M,
            rw,
        )
        .unwrap();
        b.map(&mut mem, Gla(0x1000), Gpa(0x5000), PageSize::Size4K, rw)
            .unwrap();
        let ctx = kernel_ctx(b.cr3());
        let cases = [
            (0x4123_4567u64, 0x8123_4567u64, PageSize::Size1G, 2u8),
            (0x2F_FFFF, 0x6F_FFFF, PageSize::Size2M, 3),
            (0x1ABC, 0x5ABC, PageSize::Size4K, 4),
        ];
        for (gla, gpa, size, levels) in cases {
            let w = walk(&mem, allow, &ctx, Gla(gla), AccessType::Read).unwrap();
            assert_eq!((w.gpa, w.page_size, w.levels), (Gpa(gpa), size, levels));
        }
    }

    #[test]
    fn hw_4_1_a_then_d_top_down_only_changed_entries() {
        let (mut mem, mut b) = setup();
        b.map(
            &mut mem,
            Gla(0x1000),
            Gpa(0x5000),
            PageSize::Size4K,
            PteFlags::WRITABLE,
        )
        .unwrap();
        let ctx = kernel_ctx(b.cr3());
        let w = walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Write).unwrap();
        let levels: Vec<u8> = w.ad_writes().iter().map(|a| a.level).collect();
        assert_eq!(levels, [4, 3, 2, 1]);
        assert_eq!(w.ad_writes()[3].set, PteFlags::ACCESSED | PteFlags::DIRTY);
        // Set everything but D: a read needs nothing, a write only the leaf D (with A).
        for a in w.ad_writes() {
            let v = mem.read_u64(a.gpa);
            mem.write_u64(a.gpa, v | PteFlags::ACCESSED.bits());
        }
        let r = walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Read).unwrap();
        assert_eq!(r.ad_count, 0);
        let w2 = walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Write).unwrap();
        assert_eq!(w2.ad_count, 1);
        assert_eq!(w2.ad_writes()[0].level, 1);
        // HVMI-observed mode: the same write touches all four levels.
        let all = WalkContext {
            ad_writes_all_levels: true,
            ..ctx
        };
        let w3 = walk(&mem, allow, &all, Gla(0x1000), AccessType::Write).unwrap();
        assert_eq!(w3.ad_count, 4);
        let w4 = walk(&mem, allow, &all, Gla(0x1000), AccessType::Read).unwrap();
        assert_eq!(w4.ad_count, 0, "nothing to set: no write at any level");
    }

    #[test]
    fn hw_4_1_reserved_bits_fault_with_rsvd() {
        let (mut mem, mut b) = setup();
        b.map(
            &mut mem,
            Gla(0x1000),
            Gpa(0x5000),
            PageSize::Size4K,
            PteFlags::WRITABLE,
        )
        .unwrap();
        let ctx = kernel_ctx(b.cr3());
        let pte = walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Read)
            .unwrap()
            .leaf();
        for bad in [pte.value | 1 << 46, pte.value | 1 << 51] {
            mem.write_u64(pte.gpa, bad);
            let f = walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Read).unwrap_err();
            assert_eq!(
                f,
                WalkFault::Page {
                    error_code: PageFaultErrorCode::PRESENT | PageFaultErrorCode::RESERVED
                }
            );
        }
        // XD is reserved without NXE.
        mem.write_u64(pte.gpa, pte.value | 1 << 63);
        let no_nxe = WalkContext { nxe: false, ..ctx };
        assert!(walk(&mem, allow, &no_nxe, Gla(0x1000), AccessType::Read).is_err());
        assert!(walk(&mem, allow, &ctx, Gla(0x1000), AccessType::Read).is_ok());
    }

    #[test]
    fn self_map_addresses_follow_the_windows_layout() {
        // Windows 10 with the self-map at 0x1ED: PTE base 0xFFFFF680_00000000.
        assert_eq!(
            self_map_entry_address(0x1ED, Gla(0), 1).0,
            0xFFFF_F680_0000_0000
        );
        assert_eq!(
            self_map_entry_address(0x1ED, Gla(0), 2).0,
            0xFFFF_F6FB_4000_0000
        );
        assert_eq!(
            self_map_entry_address(0x1ED, Gla(0), 3).0,
            0xFFFF_F6FB_7DA0_0000
        );
        assert_eq!(
            self_map_entry_address(0x1ED, Gla(0), 4).0,
            0xFFFF_F6FB_7DBE_D000
        );
        assert_eq!(
            self_map_entry_address(0x1ED, Gla(0xFFFF_F800_0000_1000), 1).0,
            0xFFFF_F6FC_0000_0008
        );
    }

    #[test]
    fn builder_refuses_conflicts_and_bad_self_map() {
        let (mut mem, mut b) = setup();
        b.map(
            &mut mem,
            Gla(0x20_0000),
            Gpa(0x20_0000),
            PageSize::Size2M,
            PteFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            b.map(
                &mut mem,
                Gla(0x20_1000),
                Gpa(0x1000),
                PageSize::Size4K,
                PteFlags::empty()
            ),
            Err(PagingError::Conflict { .. })
        ));
        assert_eq!(
            b.install_self_map(&mut mem, 0xFF),
            Err(PagingError::SelfMapIndex(0xFF))
        );
    }
}
