//! Linear accesses through paging and EPT (HW §10): walk, permission checks, A/D writes (each an
//! EPT data write of the entry, HW §4.2), then the final EPT check of the access.

use super::Machine;
use crate::addr::{Gla, Gpa, PAGE_SIZE};
use crate::ept::{EptAccess, EptCheck, EptQualification};
use crate::exit::EptViolation;
use crate::paging::{walk, AccessType, PageFaultErrorCode, PteFlags, WalkContext, WalkFault};
use crate::vcpu::{Cr0, Cr4, Efer, Rflags, Vcpu};

/// The kind of a linear access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// A read-modify-write (a write for paging, bits 0 and 1 in an EPT qualification).
    ReadWrite,
    /// An instruction fetch.
    Fetch,
}

impl AccessKind {
    fn paging(self) -> AccessType {
        match self {
            AccessKind::Read => AccessType::Read,
            AccessKind::Write | AccessKind::ReadWrite => AccessType::Write,
            AccessKind::Fetch => AccessType::Fetch,
        }
    }
    fn ept(self) -> EptAccess {
        match self {
            AccessKind::Read => EptAccess::Read,
            AccessKind::Write => EptAccess::Write,
            AccessKind::ReadWrite => EptAccess::ReadWrite,
            AccessKind::Fetch => EptAccess::Fetch,
        }
    }
    /// Whether the access writes.
    pub fn writes(self) -> bool {
        matches!(self, AccessKind::Write | AccessKind::ReadWrite)
    }
}

/// Why a linear access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The linear address is not canonical (#GP, or #SS for stack references).
    NonCanonical,
    /// A guest page fault.
    Page {
        /// The error code.
        error_code: PageFaultErrorCode,
        /// The linear address (CR2).
        cr2: Gla,
    },
    /// An EPT violation on a paging-structure access or on the final access.
    EptViolation(EptViolation),
    /// An EPT misconfiguration.
    EptMisconfig {
        /// The guest-physical address.
        gpa: Gpa,
    },
}

impl std::fmt::Display for Fault {
    /// The fault in words (what an agent fault's detail says).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::NonCanonical => write!(f, "a non-canonical address"),
            Fault::Page { error_code, cr2 } => write!(
                f,
                "a page fault at {:#x} (error code {:#x})",
                cr2.0,
                error_code.bits()
            ),
            Fault::EptViolation(v) => write!(
                f,
                "an EPT violation at guest-physical {:#x} (qualification {:#x})",
                v.gpa.0,
                v.qualification.bits()
            ),
            Fault::EptMisconfig { gpa } => {
                write!(f, "an EPT misconfiguration at guest-physical {:#x}", gpa.0)
            }
        }
    }
}

/// Up to two guest-physical pieces of one linear access (it may cross a page boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysSpan {
    /// (address, length) pieces; only the first `count` are used.
    pub parts: [(Gpa, u64); 2],
    /// Number of pieces (1 or 2; 0 for an empty access).
    pub count: u8,
}

impl PhysSpan {
    /// The pieces as a slice.
    pub fn parts(&self) -> &[(Gpa, u64)] {
        &self.parts[..self.count as usize]
    }
}

fn violation(
    qual: EptQualification,
    rights: EptQualification,
    gpa: Gpa,
    gla: Gla,
    convertible: bool,
) -> Fault {
    Fault::EptViolation(EptViolation {
        qualification: qual | rights | EptQualification::GLA_VALID,
        gpa,
        gla,
        convertible,
    })
}

fn ept_fault(check: EptCheck, qual: EptQualification, gpa: Gpa, gla: Gla) -> Option<Fault> {
    match check {
        EptCheck::Allowed => None,
        EptCheck::Misconfig => Some(Fault::EptMisconfig { gpa }),
        EptCheck::Violation {
            rights,
            convertible,
        } => Some(violation(qual, rights, gpa, gla, convertible)),
    }
}

/// What a cached translation depends on besides the page tables and EPT: the VCPU's paging
/// state, the view and the access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TlbKey {
    cr3: u64,
    page: u64,
    /// The view, the access kind and the walk context's switches, packed.
    tag: u64,
}

/// One slot of the translation cache: valid while its epoch is the cache's.
#[derive(Clone, Copy, Debug, Default)]
struct TlbSlot {
    key: TlbKey,
    page: Gpa,
    epoch: u64,
}

/// The invisible translation cache VE-SEMANTICS section 1 allows: successful translations
/// (after their A/D writes, so a hit would write none) by linear page, keyed by CR3, view,
/// access kind and paging mode (so a CR3 load or a view switch misses). All of them are
/// dropped when memory is rewound or an EPT view may have changed; a write to a
/// paging-structure frame that cached translations read drops those that read it.
///
/// Direct-mapped: [`TLB_SLOTS`] slots allocated on first use; dropping all of them is one
/// epoch increment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tlb {
    slots: Vec<TlbSlot>,
    /// The paging-structure frames each slot's walk read (at most four levels; unused
    /// levels repeat the last frame), beside `slots`.
    tables: Vec<[u64; 4]>,
    epoch: u64,
    mem_generation: u64,
    ept_generation: u64,
}

/// Slots in the translation cache.
const TLB_SLOTS: usize = 512;

impl TlbKey {
    fn slot(&self) -> usize {
        let h = (self.page ^ self.cr3.rotate_left(20) ^ self.tag.rotate_left(40))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 55) as usize % TLB_SLOTS
    }
}

impl Tlb {
    /// Brings the cache up to date with memory and EPT: everything goes when either was
    /// rewound or changed wholesale, and the translations through a written paging-structure
    /// frame go with it.
    fn sync(&mut self, mem: &mut crate::memory::GuestMemory, ept_generation: u64) {
        let generations = (mem.generation(), ept_generation);
        if (self.mem_generation, self.ept_generation) != generations {
            (self.mem_generation, self.ept_generation) = generations;
            self.epoch += 1;
            mem.clear_written_watched();
            return;
        }
        if !mem.written_watched().is_empty() {
            for (slot, tables) in self.slots.iter_mut().zip(&self.tables) {
                if slot.epoch == self.epoch
                    && mem.written_watched().iter().any(|g| tables.contains(g))
                {
                    slot.epoch = self.epoch.wrapping_sub(1);
                }
            }
            mem.clear_written_watched();
        }
    }

    fn get(&self, key: &TlbKey) -> Option<Gpa> {
        let s = self.slots.get(key.slot())?;
        (s.epoch == self.epoch && s.key == *key).then_some(s.page)
    }

    fn insert(&mut self, key: TlbKey, page: Gpa, tables: [u64; 4]) {
        if self.slots.is_empty() {
            // Epoch 0 never matches a live slot: the cache starts at epoch 1.
            self.epoch = self.epoch.max(1);
            self.slots = vec![TlbSlot::default(); TLB_SLOTS];
            self.tables = vec![[0; 4]; TLB_SLOTS];
        }
        let i = key.slot();
        if let (Some(s), Some(t)) = (self.slots.get_mut(i), self.tables.get_mut(i)) {
            *s = TlbSlot {
                key,
                page,
                epoch: self.epoch,
            };
            *t = tables;
        }
    }
}

impl Machine {
    /// The walk context for an access by `vcpu`.
    pub fn walk_context(&self, vcpu: &Vcpu, implicit_supervisor: bool) -> WalkContext {
        WalkContext {
            cr3: vcpu.cr3,
            wp: vcpu.cr0.contains(Cr0::WP),
            smep: vcpu.cr4.contains(Cr4::SMEP),
            smap: vcpu.cr4.contains(Cr4::SMAP),
            nxe: vcpu.efer.contains(Efer::NXE),
            ac: vcpu.rflags.contains(Rflags::AC),
            user: vcpu.cpl() == 3 && !implicit_supervisor,
            implicit_supervisor,
            ad_writes_all_levels: self.config.ad_writes_all_levels,
        }
    }

    /// Translates one byte's page of a linear access in the VCPU's current view, making the
    /// walker's A/D writes (which stay even if a later check fails).
    pub fn translate(
        &mut self,
        vcpu: &Vcpu,
        gla: Gla,
        kind: AccessKind,
        implicit_supervisor: bool,
    ) -> Result<Gpa, Fault> {
        if !gla.is_canonical() {
            return Err(Fault::NonCanonical);
        }
        let ctx = self.walk_context(vcpu, implicit_supervisor);
        let view = vcpu.eptp_index;
        let switches = u64::from(ctx.wp)
            | u64::from(ctx.smep) << 1
            | u64::from(ctx.smap) << 2
            | u64::from(ctx.nxe) << 3
            | u64::from(ctx.ac) << 4
            | u64::from(ctx.user) << 5
            | u64::from(ctx.implicit_supervisor) << 6
            | u64::from(ctx.ad_writes_all_levels) << 7;
        let key = TlbKey {
            cr3: ctx.cr3,
            page: gla.0 >> 12,
            tag: u64::from(view.0) | (kind as u64) << 16 | switches << 24,
        };
        let cached = !self.config.no_translation_cache;
        if cached {
            self.tlb.sync(&mut self.mem, self.ept.generation());
            if let Some(page) = self.tlb.get(&key) {
                return Ok(page.wrapping_add(gla.0 & 0xFFF));
            }
        }
        let ept = &self.ept;
        let w = match walk(
            &self.mem,
            |g, a| ept.check(view, g, a),
            &ctx,
            gla,
            kind.paging(),
        ) {
            Ok(w) => w,
            Err(WalkFault::Page { error_code }) => {
                return Err(Fault::Page {
                    error_code,
                    cr2: gla,
                })
            }
            Err(WalkFault::Ept { entry_gpa, check }) => {
                return Err(ept_fault(check, EptQualification::READ, entry_gpa, gla)
                    .unwrap_or(Fault::EptMisconfig { gpa: entry_gpa }))
            }
        };
        for ad in w.ad_writes() {
            let check = self.ept.check(view, ad.gpa, EptAccess::Write);
            if let Some(f) = ept_fault(
                check,
                EptQualification::READ | EptQualification::WRITE,
                ad.gpa,
                gla,
            ) {
                return Err(f);
            }
            let v = self.mem.read_u64(ad.gpa);
            self.mem.write_u64(
                ad.gpa,
                v | (ad.set & (PteFlags::ACCESSED | PteFlags::DIRTY)).bits(),
            );
        }
        let check = self.ept.check(view, w.gpa, kind.ept());
        if let Some(f) = ept_fault(
            check,
            kind.ept().qualification_bits() | EptQualification::GLA_TRANSLATED,
            w.gpa,
            gla,
        ) {
            return Err(f);
        }
        if !cached {
            return Ok(w.gpa);
        }
        // Remember it: the tables it read are watched from now on. Its own A/D writes came
        // before, so the cache is brought up to date first.
        self.tlb.sync(&mut self.mem, self.ept.generation());
        let levels = &w.entries[..w.levels as usize];
        let mut tables = [0u64; 4];
        for (i, t) in tables.iter_mut().enumerate() {
            if let Some(e) = levels.get(i).or(levels.last()) {
                *t = e.gpa.gfn().0;
            }
        }
        for e in levels {
            self.mem.watch(e.gpa.gfn());
        }
        self.tlb.insert(key, Gpa(w.gpa.0 & !0xFFF), tables);
        Ok(w.gpa)
    }

    /// Translates a linear access of `len` bytes (1..=4096), page by page in ascending order.
    pub fn translate_span(
        &mut self,
        vcpu: &Vcpu,
        gla: Gla,
        len: u64,
        kind: AccessKind,
        implicit_supervisor: bool,
    ) -> Result<PhysSpan, Fault> {
        let mut span = PhysSpan::default();
        if len == 0 {
            return Ok(span);
        }
        // Both ends are checked before any walk (SDM Vol. 1 §3.3.7.1).
        if !gla.is_canonical() || !gla.wrapping_add(len - 1).is_canonical() {
            return Err(Fault::NonCanonical);
        }
        let first_len = (PAGE_SIZE - gla.page_offset()).min(len);
        let g0 = self.translate(vcpu, gla, kind, implicit_supervisor)?;
        span.parts[0] = (g0, first_len);
        span.count = 1;
        if first_len < len {
            let second = gla.wrapping_add(first_len);
            let g1 = self.translate(vcpu, second, kind, implicit_supervisor)?;
            span.parts[1] = (g1, (len - first_len).min(PAGE_SIZE));
            span.count = 2;
        }
        Ok(span)
    }

    /// Reads `buf.len()` bytes (at most 4096) at a linear address through paging and EPT.
    pub fn read_linear(
        &mut self,
        vcpu: &Vcpu,
        gla: Gla,
        buf: &mut [u8],
        implicit_supervisor: bool,
    ) -> Result<(), Fault> {
        let span = self.translate_span(
            vcpu,
            gla,
            buf.len() as u64,
            AccessKind::Read,
            implicit_supervisor,
        )?;
        self.read_span(&span, buf);
        Ok(())
    }

    /// Writes `data` (at most 4096 bytes) at a linear address through paging and EPT.
    pub fn write_linear(
        &mut self,
        vcpu: &Vcpu,
        gla: Gla,
        data: &[u8],
        implicit_supervisor: bool,
    ) -> Result<(), Fault> {
        let span = self.translate_span(
            vcpu,
            gla,
            data.len() as u64,
            AccessKind::Write,
            implicit_supervisor,
        )?;
        self.write_span(&span, data);
        Ok(())
    }

    /// Reads the bytes of a translated span.
    pub fn read_span(&self, span: &PhysSpan, buf: &mut [u8]) {
        let mut off = 0usize;
        for &(gpa, len) in span.parts() {
            let end = (off + len as usize).min(buf.len());
            self.mem.read(gpa, &mut buf[off..end]);
            off = end;
        }
    }

    /// Writes the bytes of a translated span.
    pub fn write_span(&mut self, span: &PhysSpan, data: &[u8]) {
        let mut off = 0usize;
        for &(gpa, len) in span.parts() {
            let end = (off + len as usize).min(data.len());
            self.mem.write(gpa, &data[off..end]);
            off = end;
        }
    }
}
