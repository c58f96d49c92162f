//! The Windows-like guest the agent runs in: a kernel address space with a self-map slot, an
//! IDT whose entry 20 leads to the OS #VE handler (which the engine hooks), per-VCPU 0x50
//! descriptors and kernel stacks (TSS.RSP0), KiKernelExit, the loader's non-paged allocation
//! that hosts the agent image, processes with their own CR3 (and a user CR3 under KPTI), and a
//! memory manager whose every page-table write is a real guest instruction (`mm`). All
//! addresses are in [`crate::layout`].

pub mod mm;

use crate::layout;
use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::paging::{FrameAllocator, PageSize, PageTableBuilder, PagingError, PteFlags};
use vesim_model::tracked::Tracked;
use vesim_model::vcpu::{DescriptorTable, SegmentLimit, Vcpu};
use vesim_model::{Gla, Gpa, Machine, ViewId};

/// Options of the guest and of the views around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Number of VCPUs (1..=64 served by the agent; more run without #VE).
    pub vcpus: usize,
    /// The self-map PML4 index (0x100..=0x1FF).
    pub self_map_index: u64,
    /// Index of the untrusted EPT view (VE-SEMANTICS section 1: default 0).
    pub untrusted_view: ViewId,
    /// Index of the protected view introcore creates (B82).
    pub protected_view: ViewId,
    /// The 0x50 descriptor of each VCPU; `None` gives VCPU i the limit whose LSL value maps
    /// to index i under B10.
    pub seg50: Option<Vec<SegmentLimit>>,
    /// Kernel page-table isolation: processes get a separate user CR3.
    pub kpti: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            vcpus: 1,
            self_map_index: layout::DEFAULT_SELF_MAP_INDEX,
            untrusted_view: ViewId(0),
            protected_view: ViewId(1),
            seg50: None,
            kpti: false,
        }
    }
}

/// The 0x50 limit Windows gives VCPU `i`: B10's formula maps its LSL value back to `i`.
pub fn seg50_for_cpu(i: u64) -> SegmentLimit {
    SegmentLimit {
        limit: (((i & 0x3F) << 14) | ((i >> 6) & 0x3FF)) as u32,
        granularity: false,
    }
}

/// The B10 CPU index of an LSL value.
pub const fn cpu_index_of_lsl(l: u32) -> u64 {
    (((l & 0x3FF) as u64) << 6) | ((l >> 14) as u64)
}

/// Swapped-out page contents, by (pid, linear address).
pub(crate) type Pagefile = std::collections::BTreeMap<(u32, u64), Box<[u8; 4096]>>;

/// The guest: its paging structures and where things are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    /// The configuration it was built from.
    pub config: GuestConfig,
    /// Kernel CR3 (the System CR3).
    pub cr3: u64,
    /// The page-table builder (owns the table window).
    pub tables: Tracked<PageTableBuilder>,
    /// Next free data frame.
    next_data: Gpa,
    /// Frames for process paging structures.
    pub(crate) proc_tables: FrameAllocator,
    /// Frames processes map.
    pub(crate) pages: FrameAllocator,
    /// Frames given back by the memory manager, reused first (lowest first).
    pub(crate) free_pages: Tracked<std::collections::BTreeSet<Gpa>>,
    /// The processes, by pid (index).
    pub processes: Tracked<Vec<mm::Process>>,
    /// Swapped-out page contents (the pagefile), by (pid, linear address).
    pub(crate) pagefile: Tracked<Pagefile>,
}

impl Guest {
    /// Takes `snapshot`'s state back field by field, copying the large tables only where they
    /// were changed since (`Tracked`).
    pub(crate) fn restore(&mut self, snapshot: &Guest) {
        let Guest {
            config,
            cr3,
            tables,
            next_data,
            proc_tables,
            pages,
            free_pages,
            processes,
            pagefile,
        } = self;
        config.clone_from(&snapshot.config);
        *cr3 = snapshot.cr3;
        tables.restore(&snapshot.tables);
        *next_data = snapshot.next_data;
        proc_tables.clone_from(&snapshot.proc_tables);
        pages.clone_from(&snapshot.pages);
        free_pages.restore(&snapshot.free_pages);
        processes.restore(&snapshot.processes);
        pagefile.restore(&snapshot.pagefile);
    }

    /// Counts every tracked table as equal to a snapshot just taken.
    pub(crate) fn clean(&mut self) {
        self.tables.clean();
        self.free_pages.clean();
        self.processes.clean();
        self.pagefile.clean();
    }
}

/// Errors building the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Paging set-up failed.
    #[error("building the guest page tables failed")]
    Paging(#[from] PagingError),
    /// The data window is exhausted.
    #[error("the guest data window is exhausted")]
    OutOfFrames,
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

impl Guest {
    /// Builds the guest in `machine` and returns it with its VCPUs. The untrusted view is
    /// created with every GPA RWX and suppress-#VE set (as Xen does, HW §1.4).
    pub fn build(
        machine: &mut Machine,
        config: GuestConfig,
    ) -> Result<(Guest, Vec<Vcpu>), GuestError> {
        if config.vcpus == 0 || config.vcpus > 256 {
            return Err(GuestError::Config(format!(
                "{} VCPUs is outside 1..=256",
                config.vcpus
            )));
        }
        if !(0x100..=0x1FF).contains(&config.self_map_index) {
            return Err(GuestError::Config(format!(
                "self-map index {:#x} is outside 0x100..=0x1ff",
                config.self_map_index
            )));
        }
        if config.untrusted_view == config.protected_view
            || config.untrusted_view.0 as usize >= ViewId::COUNT
            || config.protected_view.0 as usize >= ViewId::COUNT
        {
            return Err(GuestError::Config(
                "the untrusted and protected views must be distinct indices below 512".into(),
            ));
        }
        let all = EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE | EptFlags::SUPPRESS_VE;
        machine
            .ept
            .insert(config.untrusted_view, EptView::new(EptEntry(all.bits())))
            .map_err(|e| GuestError::Config(e.to_string()))?;
        let alloc = FrameAllocator::new(layout::GUEST_TABLES_START, layout::GUEST_TABLES_END);
        let mut tables = PageTableBuilder::new(&mut machine.mem, alloc)?;
        tables.install_self_map(&mut machine.mem, config.self_map_index)?;
        // The self-map entry has been used by the kernel: A and D are set.
        let slot = Gpa(tables.cr3() + config.self_map_index * 8);
        let e = machine.mem.read_u64(slot);
        machine
            .mem
            .write_u64(slot, e | (PteFlags::ACCESSED | PteFlags::DIRTY).bits());
        let mut g = Guest {
            cr3: tables.cr3(),
            tables: Tracked::new(tables),
            next_data: layout::GUEST_DATA_START,
            config,
            proc_tables: FrameAllocator::new(
                layout::PROCESS_TABLES_START,
                layout::PROCESS_TABLES_END,
            ),
            pages: FrameAllocator::new(layout::PROCESS_PAGES_START, layout::PROCESS_PAGES_END),
            free_pages: Tracked::default(),
            processes: Tracked::default(),
            pagefile: Tracked::default(),
        };
        // IDT, OS code page (handler and KiKernelExit), kernel stacks.
        g.map_new(
            machine,
            layout::IDT_GVA,
            PteFlags::WRITABLE | PteFlags::NO_EXECUTE,
        )?;
        let os_code = g.map_new(machine, layout::OS_VE_HANDLER_GVA, PteFlags::empty())?;
        // The OS #VE handler and KiKernelExit: code the engine hooks (INT3 filler here).
        machine.mem.write(os_code, &[0xCC; 0x1000]);
        let mm_code = g.map_new(machine, layout::MM_CODE_GVA, PteFlags::empty())?;
        machine.mem.write(mm_code, &[0xCC; 0x1000]);
        for (off, bytes) in layout::mm_code::ALL {
            machine.mem.write(mm_code.wrapping_add(off), bytes);
        }
        for i in 0..g.config.vcpus as u64 {
            for p in 0..layout::KERNEL_STACK_PAGES {
                let gva = layout::KERNEL_STACKS_GVA + i * layout::KERNEL_STACK_STRIDE + p * 0x1000;
                g.map_new(machine, gva, PteFlags::WRITABLE | PteFlags::NO_EXECUTE)?;
            }
        }
        // The agent image: the loader's non-paged allocation, physically contiguous.
        for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
            g.tables.map(
                &mut machine.mem,
                Gla(layout::AGENT_GVA + off),
                layout::AGENT_GPA.wrapping_add(off),
                PageSize::Size4K,
                PteFlags::WRITABLE,
            )?;
        }
        // The guest ran before introcore attached: everything mapped so far has been used, so
        // its entries carry A (and D in the leaves).
        let mut used = vec![
            layout::IDT_GVA,
            layout::OS_VE_HANDLER_GVA,
            layout::MM_CODE_GVA,
        ];
        for i in 0..g.config.vcpus as u64 {
            for p in 0..layout::KERNEL_STACK_PAGES {
                used.push(layout::KERNEL_STACKS_GVA + i * layout::KERNEL_STACK_STRIDE + p * 0x1000);
            }
        }
        used.extend(
            (0..layout::AGENT_SIZE)
                .step_by(0x1000)
                .map(|o| layout::AGENT_GVA + o),
        );
        for gva in used {
            g.mark_used(machine, gva);
        }
        // IDT[20]: a 64-bit interrupt gate to the OS #VE handler.
        let gate = idt_gate(layout::OS_VE_HANDLER_GVA, layout::KERNEL_CS);
        let idt_gpa = g
            .phys(machine, layout::IDT_GVA + 20 * 16)
            .ok_or(GuestError::OutOfFrames)?;
        machine.mem.write(idt_gpa, &gate);
        let mut vcpus = Vec::with_capacity(g.config.vcpus);
        for i in 0..g.config.vcpus {
            let mut v = Vcpu::new_long_mode(g.cr3);
            v.cs = layout::KERNEL_CS;
            v.ss = layout::KERNEL_SS;
            v.idtr = DescriptorTable {
                base: Gla(layout::IDT_GVA),
                limit: 0xFFF,
            };
            let top = layout::KERNEL_STACKS_GVA
                + i as u64 * layout::KERNEL_STACK_STRIDE
                + layout::KERNEL_STACK_PAGES * 0x1000;
            v.tss_rsp0 = top;
            v.gpr[4] = top - 0x100;
            v.seg50 = match &g.config.seg50 {
                Some(list) => list.get(i).copied().unwrap_or_default(),
                None => seg50_for_cpu(i as u64),
            };
            v.eptp_index = g.config.untrusted_view;
            v.vmfunc_enabled = true;
            vcpus.push(v);
        }
        Ok((g, vcpus))
    }

    /// Sets A on every entry translating `gva` and D on its leaf, as the walker of a write
    /// would (physical writes: set-up only).
    pub fn mark_used(&self, machine: &mut Machine, gva: u64) {
        let ctx = software_ctx(self.cr3);
        if let Ok(w) = vesim_model::paging::walk(
            &machine.mem,
            |_, _| vesim_model::ept::EptCheck::Allowed,
            &ctx,
            Gla(gva),
            vesim_model::paging::AccessType::Write,
        ) {
            for ad in w.ad_writes() {
                let v = machine.mem.read_u64(ad.gpa);
                machine.mem.write_u64(ad.gpa, v | ad.set.bits());
            }
        }
        self.mark_upper_used(machine, gva);
    }

    /// Maps a fresh zeroed data frame at `gva` (4K, supervisor) and returns its GPA.
    pub fn map_new(
        &mut self,
        machine: &mut Machine,
        gva: u64,
        flags: PteFlags,
    ) -> Result<Gpa, GuestError> {
        if self.next_data >= layout::GUEST_DATA_END {
            return Err(GuestError::OutOfFrames);
        }
        let gpa = self.next_data;
        self.next_data = gpa.wrapping_add(0x1000);
        self.tables
            .map(&mut machine.mem, Gla(gva), gpa, PageSize::Size4K, flags)?;
        self.mark_upper_used(machine, gva);
        Ok(gpa)
    }

    /// Sets A and D on the upper-level entries translating `gva` (the kernel used the region
    /// before, also through the self-map, where an upper entry is the leaf; D is ignored in a
    /// non-leaf entry): only the leaf's A and D are left to the walker.
    pub fn mark_upper_used(&self, machine: &mut Machine, gva: u64) {
        let ad = (PteFlags::ACCESSED | PteFlags::DIRTY).bits();
        for level in 2..=4u8 {
            if let Some(g) = self.entry_gpa(machine, gva, level) {
                let v = machine.mem.read_u64(g);
                machine.mem.write_u64(g, v | ad);
            }
        }
    }

    /// Maps `gva` (4K) to a given frame.
    pub fn map_at(
        &mut self,
        machine: &mut Machine,
        gva: u64,
        gpa: Gpa,
        flags: PteFlags,
    ) -> Result<(), GuestError> {
        self.tables
            .map(&mut machine.mem, Gla(gva), gpa, PageSize::Size4K, flags)?;
        self.mark_upper_used(machine, gva);
        Ok(())
    }

    /// The kernel's paging-structure page of `level` (1 = page table ... 4 = PML4) that
    /// translates `gva`, placed at `frame` if it is missing (upper tables missing on the way
    /// come from the table window). Every entry above it gets A and D: the kernel has used the
    /// self-map, through which the entry just above is the leaf.
    pub fn place_table(
        &mut self,
        machine: &mut Machine,
        gva: u64,
        level: u8,
        frame: Gpa,
    ) -> Result<Gpa, GuestError> {
        let table = self
            .tables
            .table_for(&mut machine.mem, Gla(gva), level, frame)?;
        let ad = (PteFlags::ACCESSED | PteFlags::DIRTY).bits();
        let mut current = Gpa(self.cr3);
        for l in (level.clamp(1, 4) + 1..=4).rev() {
            let slot = Gpa(current.0 + Gla(gva).table_index(l) * 8);
            let e = machine.mem.read_u64(slot);
            machine.mem.write_u64(slot, e | ad);
            current = vesim_model::paging::PageTableEntry(e).addr();
        }
        Ok(table)
    }

    /// Translates `gva` in the kernel CR3 as software does (no EPT check, no A/D write).
    pub fn phys(&self, machine: &Machine, gva: u64) -> Option<Gpa> {
        software_translate(machine, self.cr3, gva)
    }

    /// The guest-physical address of the page-table entry of `level` that maps `gva` (the
    /// entry must exist).
    pub fn entry_gpa(&self, machine: &Machine, gva: u64, level: u8) -> Option<Gpa> {
        let ctx = software_ctx(self.cr3);
        let w = vesim_model::paging::walk(
            &machine.mem,
            |_, _| vesim_model::ept::EptCheck::Allowed,
            &ctx,
            Gla(gva),
            vesim_model::paging::AccessType::Read,
        )
        .ok()?;
        let i = 4usize.checked_sub(level as usize)?;
        (i < w.levels as usize).then(|| w.entries[i].gpa)
    }
}

fn software_ctx(cr3: u64) -> vesim_model::paging::WalkContext {
    vesim_model::paging::WalkContext {
        cr3,
        wp: false,
        smep: false,
        smap: false,
        nxe: true,
        ac: false,
        user: false,
        implicit_supervisor: true,
        ad_writes_all_levels: false,
    }
}

/// Translates a linear address through the page tables at `cr3` the way hypervisor software
/// does: no EPT check and no A/D write.
pub fn software_translate(machine: &Machine, cr3: u64, gva: u64) -> Option<Gpa> {
    if !Gla(gva).is_canonical() {
        return None;
    }
    vesim_model::paging::walk(
        &machine.mem,
        |_, _| vesim_model::ept::EptCheck::Allowed,
        &software_ctx(cr3),
        Gla(gva),
        vesim_model::paging::AccessType::Read,
    )
    .ok()
    .map(|w| w.gpa)
}

/// The guest-physical address of each byte of `len` bytes at `gva` under `cr3`, translating
/// once per page (software, no A/D); `None` if a page is unmapped.
pub fn software_byte_gpas(machine: &Machine, cr3: u64, gva: u64, len: u64) -> Option<Vec<Gpa>> {
    let mut out = Vec::with_capacity(len as usize);
    let mut page: Option<(u64, Gpa)> = None;
    for i in 0..len {
        let a = gva.wrapping_add(i);
        let base = match page {
            Some((p, g)) if p == a & !0xFFF => g,
            _ => {
                let g = software_translate(machine, cr3, a & !0xFFF)?;
                page = Some((a & !0xFFF, g));
                g
            }
        };
        out.push(base.wrapping_add(a & 0xFFF));
    }
    Some(out)
}

/// Reads `buf.len()` bytes at `gva` under `cr3` the way hypervisor software does (page by page,
/// no EPT check, no A/D); false if a page is unmapped.
pub fn software_read(machine: &Machine, cr3: u64, gva: u64, buf: &mut [u8]) -> bool {
    match software_byte_gpas(machine, cr3, gva, buf.len() as u64) {
        Some(gpas) => {
            for (b, g) in buf.iter_mut().zip(gpas) {
                let mut one = [0u8; 1];
                machine.mem.read(g, &mut one);
                *b = one[0];
            }
            true
        }
        None => false,
    }
}

/// A 16-byte 64-bit interrupt gate (type 0xE, present, DPL 0, IST 0).
pub fn idt_gate(target: u64, selector: u16) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(target as u16).to_le_bytes());
    g[2..4].copy_from_slice(&selector.to_le_bytes());
    g[5] = 0x8E;
    g[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b10_windows_limits_map_back_to_their_cpu() {
        for i in 0..64 {
            assert_eq!(cpu_index_of_lsl(seg50_for_cpu(i).lsl()), i);
        }
    }
}
