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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TlbKey {
    cr3: u64,
    page: u64,
    view: u16,
    kind: u8,
    ctx: u8,
}

/// The invisible translation cache VE-SEMANTICS section 1 allows: successful translations
/// (after their A/D writes, so a hit would write none) by linear page, dropped as a whole
/// when a paging-structure frame any of them read is written or an EPT view may have changed
/// (and keyed by CR3, view, access kind and paging mode, so a CR3 load or a view switch
/// misses).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tlb {
    map: crate::fastmap::FastMap<TlbKey, Gpa>,
    mem_generation: u64,
    ept_generation: u64,
}

/// Entries the cache holds before it starts over.
const TLB_ENTRIES_MAX: usize = 4096;

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
        let key = TlbKey {
            cr3: ctx.cr3,
            page: gla.0 >> 12,
            view: view.0,
            kind: kind as u8,
            ctx: u8::from(ctx.wp)
                | u8::from(ctx.smep) << 1
                | u8::from(ctx.smap) << 2
                | u8::from(ctx.nxe) << 3
                | u8::from(ctx.ac) << 4
                | u8::from(ctx.user) << 5
                | u8::from(ctx.implicit_supervisor) << 6
                | u8::from(ctx.ad_writes_all_levels) << 7,
        };
        let cached = !self.config.no_translation_cache;
        let generations = (self.mem.generation(), self.ept.generation());
        if cached {
            if (self.tlb.mem_generation, self.tlb.ept_generation) != generations {
                self.tlb.map.clear();
                (self.tlb.mem_generation, self.tlb.ept_generation) = generations;
            } else if let Some(page) = self.tlb.map.get(&key) {
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
        // Remember it: the tables it read are watched from now on.
        for e in &w.entries[..w.levels as usize] {
            self.mem.watch(e.gpa.gfn());
        }
        let generations = (self.mem.generation(), self.ept.generation());
        if self.tlb.map.len() >= TLB_ENTRIES_MAX
            || (self.tlb.mem_generation, self.tlb.ept_generation) != generations
        {
            self.tlb.map.clear();
        }
        self.tlb.mem_generation = self.mem.generation();
        self.tlb.ept_generation = self.ept.generation();
        self.tlb.map.insert(key, Gpa(w.gpa.0 & !0xFFF));
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
