//! EPT views: per-page permission overlays on an identity guest-physical mapping (VE-SEMANTICS
//! section 1), up to 512 of them (the EPTP list), and the EPT-violation exit qualification
//! (HW §3).
//!
//! Each view maps a guest frame to one [`EptEntry`], the leaf entry hardware would use; a frame
//! without an entry uses the view's default entry (all-zero unless set: not present, and so
//! convertible, HW §1.4).

use crate::addr::{Gfn, Gpa, ViewId, PHYS_ADDR_MASK};
use crate::fastmap::FastMap;
use bitflags::bitflags;

bitflags! {
    /// Bits of an EPT leaf entry (HW §1.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct EptFlags: u64 {
        /// Bit 0: reads allowed.
        const READ = 1 << 0;
        /// Bit 1: writes allowed.
        const WRITE = 1 << 1;
        /// Bit 2: instruction fetches allowed.
        const EXECUTE = 1 << 2;
        /// Bits 5:3: EPT memory type of the page (leaf only).
        const MEMORY_TYPE = 0b111 << 3;
        /// Bit 6: ignore PAT memory type.
        const IGNORE_PAT = 1 << 6;
        /// Bit 8: accessed (only with EPTP\[6\], which is not modelled).
        const ACCESSED = 1 << 8;
        /// Bit 9: dirty (only with EPTP\[6\], which is not modelled).
        const DIRTY = 1 << 9;
        /// Bit 63: suppress #VE; 0 makes a violation on this entry convertible.
        const SUPPRESS_VE = 1 << 63;
    }
}

bitflags! {
    /// The EPT-violation exit qualification (HW §3), also saved at +0x08 of the #VE area.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct EptQualification: u64 {
        /// Bit 0: the access was a data read (also set for a read-modify-write).
        const READ = 1 << 0;
        /// Bit 1: the access was a data write.
        const WRITE = 1 << 1;
        /// Bit 2: the access was an instruction fetch.
        const FETCH = 1 << 2;
        /// Bit 3: the GPA was readable (AND of bit 0 over the EPT entries used).
        const READABLE = 1 << 3;
        /// Bit 4: the GPA was writable.
        const WRITABLE = 1 << 4;
        /// Bit 5: the GPA was executable.
        const EXECUTABLE = 1 << 5;
        /// Bit 7: the guest-linear-address field is valid.
        const GLA_VALID = 1 << 7;
        /// Bit 8: the access was to the translation of the linear address (0: to a guest
        /// paging-structure entry, during the walk or an A/D update).
        const GLA_TRANSLATED = 1 << 8;
        /// Bit 12: NMI unblocking due to IRET (not produced by the model).
        const NMI_UNBLOCKING = 1 << 12;
    }
}

/// Mask of the physical-address bits of an EPT leaf entry.
const EPT_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Reserved bits 51:MAXPHYADDR of an EPT entry.
const EPT_RESERVED_HIGH: u64 = EPT_ADDR_MASK & !PHYS_ADDR_MASK;

/// One EPT leaf entry, as hardware would read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EptEntry(pub u64);

/// The data or fetch access being checked against EPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EptAccess {
    /// A data read (including guest paging-structure reads).
    Read,
    /// A plain data write.
    Write,
    /// A read-modify-write: qualification bits 0 and 1 both set (HW §3; VE-SEMANTICS section 1).
    ReadWrite,
    /// An instruction fetch.
    Fetch,
}

impl EptAccess {
    /// The access bits (0–2) of the qualification for this access.
    pub fn qualification_bits(self) -> EptQualification {
        match self {
            EptAccess::Read => EptQualification::READ,
            EptAccess::Write => EptQualification::WRITE,
            EptAccess::ReadWrite => EptQualification::READ | EptQualification::WRITE,
            EptAccess::Fetch => EptQualification::FETCH,
        }
    }
}

/// The result of checking one access against an EPT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptCheck {
    /// The access is allowed.
    Allowed,
    /// An EPT violation: the entry's rights (qualification bits 3–5) and whether the deciding
    /// entry (this one, HW §1.4) lets the violation be converted to a #VE.
    Violation {
        /// Qualification bits 3–5 (rights of the entry; 0 when not present).
        rights: EptQualification,
        /// Bit 63 of the deciding entry is 0.
        convertible: bool,
    },
    /// An EPT misconfiguration (exit 49; never converted).
    Misconfig,
}

impl EptEntry {
    /// An entry with the given flags and the identity address of `gfn`.
    pub fn new(gfn: Gfn, flags: EptFlags) -> Self {
        EptEntry((gfn.0 << 12) & EPT_ADDR_MASK | flags.bits())
    }
    /// The flag bits of this entry.
    pub fn flags(self) -> EptFlags {
        EptFlags::from_bits_truncate(self.0)
    }
    /// Whether any of bits 2:0 is set (HW §1.3, MBEC off).
    pub fn is_present(self) -> bool {
        self.0 & 0b111 != 0
    }
    /// Whether hardware would report an EPT misconfiguration for this entry (HW §1.3):
    /// write-only or write+execute rights, reserved bits 51:MAXPHYADDR set, or memory type
    /// 2, 3 or 7 in a present entry. Execute-only is supported.
    pub fn is_misconfigured(self) -> bool {
        if !self.is_present() {
            return false;
        }
        let rwx = self.0 & 0b111;
        let memtype = (self.0 >> 3) & 0b111;
        rwx == 0b010
            || rwx == 0b110
            || self.0 & EPT_RESERVED_HIGH != 0
            || matches!(memtype, 2 | 3 | 7)
    }
    /// Qualification bits 3–5 for this entry.
    pub fn rights(self) -> EptQualification {
        EptQualification::from_bits_truncate((self.0 & 0b111) << 3)
    }
    /// Checks `access` against this entry.
    pub fn check(self, access: EptAccess) -> EptCheck {
        if self.is_misconfigured() {
            return EptCheck::Misconfig;
        }
        let f = self.flags();
        let allowed = match access {
            EptAccess::Read => f.contains(EptFlags::READ),
            EptAccess::Write => f.contains(EptFlags::WRITE),
            EptAccess::ReadWrite => f.contains(EptFlags::READ | EptFlags::WRITE),
            EptAccess::Fetch => f.contains(EptFlags::EXECUTE),
        };
        if allowed {
            EptCheck::Allowed
        } else {
            EptCheck::Violation {
                rights: self.rights(),
                convertible: !f.contains(EptFlags::SUPPRESS_VE),
            }
        }
    }
}

/// One EPT view: a leaf entry per guest frame.
///
/// After [`EptView::mark`] every change of an entry is logged, and [`EptView::rewind`] undoes
/// them in reverse, in time proportional to the changes. Equality is the entries only.
#[derive(Clone, Debug, Default)]
pub struct EptView {
    entries: FastMap<Gfn, EptEntry>,
    default: EptEntry,
    /// While marked: each changed frame with its entry before the change (`None`: none).
    undo: Option<Vec<(Gfn, Option<EptEntry>)>>,
}

impl PartialEq for EptView {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.default == other.default
    }
}

impl Eq for EptView {}

impl EptView {
    /// A view in which every frame uses `default` until set.
    pub fn new(default: EptEntry) -> Self {
        EptView {
            entries: FastMap::default(),
            default,
            undo: None,
        }
    }
    /// The entry hardware would use for `gfn`.
    pub fn entry(&self, gfn: Gfn) -> EptEntry {
        self.entries.get(&gfn).copied().unwrap_or(self.default)
    }
    /// Sets the raw entry of `gfn`.
    pub fn set_entry(&mut self, gfn: Gfn, entry: EptEntry) {
        let old = self.entries.insert(gfn, entry);
        if let Some(log) = &mut self.undo {
            log.push((gfn, old));
        }
    }
    /// Marks the current entries as what [`EptView::rewind`] returns to.
    pub fn mark(&mut self) {
        match &mut self.undo {
            Some(log) => log.clear(),
            None => self.undo = Some(Vec::new()),
        }
    }
    /// Undoes every change since the last mark (nothing without one); the mark stays.
    pub fn rewind(&mut self) {
        let Some(log) = &mut self.undo else { return };
        while let Some((gfn, old)) = log.pop() {
            match old {
                Some(e) => self.entries.insert(gfn, e),
                None => self.entries.remove(&gfn),
            };
        }
    }
    /// Entries changed since the last mark (with repeats).
    pub fn changes_since_mark(&self) -> usize {
        self.undo.as_ref().map_or(0, Vec::len)
    }
    /// Sets the flags of `gfn` (identity address).
    pub fn set(&mut self, gfn: Gfn, flags: EptFlags) {
        self.set_entry(gfn, EptEntry::new(gfn, flags));
    }
    /// Changes only the R/W/X bits of `gfn`, keeping the others.
    pub fn set_rights(&mut self, gfn: Gfn, rwx: EptFlags) {
        let e = self.entry(gfn);
        let bits = e.0 & !0b111 | (rwx.bits() & 0b111);
        self.set_entry(gfn, EptEntry(bits));
    }
    /// Sets or clears the suppress-#VE bit of `gfn`, keeping the others.
    pub fn set_suppress_ve(&mut self, gfn: Gfn, suppress: bool) {
        let e = self.entry(gfn);
        let bits = if suppress {
            e.0 | EptFlags::SUPPRESS_VE.bits()
        } else {
            e.0 & !EptFlags::SUPPRESS_VE.bits()
        };
        self.set_entry(gfn, EptEntry(bits));
    }
    /// Checks an access to `gpa` in this view.
    pub fn check(&self, gpa: Gpa, access: EptAccess) -> EptCheck {
        self.entry(gpa.gfn()).check(access)
    }
    /// The frames that have an explicit entry, in ascending order.
    pub fn entries(&self) -> impl Iterator<Item = (Gfn, EptEntry)> + '_ {
        let mut v: Vec<(Gfn, EptEntry)> = self.entries.iter().map(|(g, e)| (*g, *e)).collect();
        v.sort_unstable_by_key(|(g, _)| *g);
        v.into_iter()
    }
    /// The entry used for frames without an explicit one.
    pub fn default_entry(&self) -> EptEntry {
        self.default
    }
}

/// The EPTP list: up to 512 views. A missing index is an invalid list entry (VMFUNC exits).
///
/// [`Ept::mark`] and [`Ept::rewind`] snapshot the list and every view the same way
/// [`EptView`] does: a rewind undoes the entries changed and the views installed since.
#[derive(Clone, Debug, Default)]
pub struct Ept {
    views: Vec<Option<EptView>>,
    /// Bumped by every mutable access (for the MMU's translation cache).
    generation: u64,
    /// While marked: the list's length at the mark, and each list entry installed since with
    /// the view it held at the mark.
    undo: Option<(usize, Vec<ListChange>)>,
}

/// A list entry installed since the mark, with the view it held at the mark.
type ListChange = (usize, Option<EptView>);

impl PartialEq for Ept {
    fn eq(&self, other: &Self) -> bool {
        self.views == other.views
    }
}

impl Eq for Ept {}

impl Ept {
    /// An empty EPTP list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Installs `view` at index `id`; indices at or above 512 are refused.
    pub fn insert(&mut self, id: ViewId, view: EptView) -> Result<(), EptError> {
        if id.0 as usize >= ViewId::COUNT {
            return Err(EptError::IndexOutOfRange(id.0));
        }
        self.generation += 1;
        let i = id.0 as usize;
        if self.views.len() <= i {
            self.views.resize_with(i + 1, || None);
        }
        let old = self.views[i].replace(view);
        if let Some((_, log)) = &mut self.undo {
            // What the index held at the mark: the replaced view as it was then.
            let old = old.map(|mut v| {
                v.rewind();
                v
            });
            log.push((i, old));
        }
        if self.undo.is_some() {
            if let Some(v) = &mut self.views[i] {
                v.mark();
            }
        }
        Ok(())
    }
    /// Marks the list and every view as what [`Ept::rewind`] returns to.
    pub fn mark(&mut self) {
        let mut log = self.undo.take().map(|(_, l)| l).unwrap_or_default();
        log.clear();
        self.undo = Some((self.views.len(), log));
        for v in self.views.iter_mut().flatten() {
            v.mark();
        }
    }
    /// Returns the list and its views to the last mark (nothing without one), in time
    /// proportional to the changes since; the mark stays.
    pub fn rewind(&mut self) {
        let Some((len, log)) = &mut self.undo else {
            return;
        };
        self.generation += 1;
        for v in self.views.iter_mut().flatten() {
            v.rewind();
        }
        while let Some((i, old)) = log.pop() {
            if let Some(slot) = self.views.get_mut(i) {
                *slot = old;
                if let Some(v) = slot {
                    v.mark();
                }
            }
        }
        self.views.truncate(*len);
    }
    /// EPT changes since the last mark: entries changed plus views installed.
    pub fn changes_since_mark(&self) -> usize {
        self.undo.as_ref().map_or(0, |(_, log)| log.len())
            + self
                .views
                .iter()
                .flatten()
                .map(EptView::changes_since_mark)
                .sum::<usize>()
    }
    /// The view at `id`, if the list entry is valid.
    pub fn view(&self, id: ViewId) -> Option<&EptView> {
        self.views.get(id.0 as usize).and_then(Option::as_ref)
    }
    /// The view at `id`, mutably.
    pub fn view_mut(&mut self, id: ViewId) -> Option<&mut EptView> {
        self.generation += 1;
        self.views.get_mut(id.0 as usize).and_then(Option::as_mut)
    }
    /// Changes whenever a view may have changed (any mutable access).
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Whether list entry `id` holds a valid EPTP.
    pub fn is_valid(&self, id: ViewId) -> bool {
        self.view(id).is_some()
    }
    /// The valid view indices, ascending.
    pub fn view_ids(&self) -> impl Iterator<Item = ViewId> + '_ {
        self.views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .map(|(i, _)| ViewId(i as u16))
    }
    /// Checks an access in view `id`; a missing view behaves as all-zero entries.
    pub fn check(&self, id: ViewId, gpa: Gpa, access: EptAccess) -> EptCheck {
        match self.view(id) {
            Some(v) => v.check(gpa, access),
            None => EptEntry(0).check(access),
        }
    }
}

/// Errors of EPT set-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EptError {
    /// The EPTP list has 512 entries.
    #[error("EPT view index {0} is outside the EPTP list (0..512)")]
    IndexOutOfRange(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u64 = 1;
    const W: u64 = 2;
    const X: u64 = 4;

    /// HW §9: the kvm-unit-tests qualifications for final accesses, as bits 3–5 plus the access
    /// bits (GLA valid and bit 8 are added by the MMU; see mmu tests for the full values).
    #[test]
    fn hw_1_3_rights_and_misconfigurations() {
        let table: [(u64, Option<[bool; 3]>); 8] = [
            (0, Some([false, false, false])),
            (R, Some([true, false, false])),
            (R | W, Some([true, true, false])),
            (R | X, Some([true, false, true])),
            (R | W | X, Some([true, true, true])),
            (X, Some([false, false, true])),
            (W, None),
            (W | X, None),
        ];
        for (rwx, expect) in table {
            let e = EptEntry(rwx);
            match expect {
                None => {
                    assert_eq!(e.check(EptAccess::Read), EptCheck::Misconfig, "{rwx:#b}");
                    assert_eq!(e.check(EptAccess::Write), EptCheck::Misconfig);
                    assert_eq!(e.check(EptAccess::Fetch), EptCheck::Misconfig);
                }
                Some([r, w, x]) => {
                    assert_eq!(e.check(EptAccess::Read) == EptCheck::Allowed, r, "{rwx:#b}");
                    assert_eq!(e.check(EptAccess::Write) == EptCheck::Allowed, w);
                    assert_eq!(e.check(EptAccess::ReadWrite) == EptCheck::Allowed, r && w);
                    assert_eq!(e.check(EptAccess::Fetch) == EptCheck::Allowed, x);
                }
            }
        }
    }

    #[test]
    fn hw_1_4_zero_entry_is_convertible_and_sve_suppresses() {
        assert_eq!(
            EptEntry(0).check(EptAccess::Read),
            EptCheck::Violation {
                rights: EptQualification::empty(),
                convertible: true
            }
        );
        assert_eq!(
            EptEntry(1 << 63).check(EptAccess::Read),
            EptCheck::Violation {
                rights: EptQualification::empty(),
                convertible: false
            }
        );
        assert_eq!(
            EptEntry(1 << 63 | R).check(EptAccess::Write),
            EptCheck::Violation {
                rights: EptQualification::READABLE,
                convertible: false
            }
        );
    }

    #[test]
    fn hw_1_3_reserved_bits_and_memory_types_misconfigure() {
        assert_eq!(
            EptEntry(R | 1 << 46).check(EptAccess::Read),
            EptCheck::Misconfig
        );
        assert_eq!(
            EptEntry(R | 1 << 51).check(EptAccess::Read),
            EptCheck::Misconfig
        );
        assert_eq!(
            EptEntry(R | 1 << 45).check(EptAccess::Read),
            EptCheck::Allowed
        );
        for mt in [2u64, 3, 7] {
            assert_eq!(
                EptEntry(R | mt << 3).check(EptAccess::Read),
                EptCheck::Misconfig
            );
        }
        for mt in [0u64, 1, 4, 5, 6] {
            assert_eq!(
                EptEntry(R | mt << 3).check(EptAccess::Read),
                EptCheck::Allowed
            );
        }
        // Reserved bits in a not-present entry are not examined.
        assert_ne!(
            EptEntry(1 << 51).check(EptAccess::Read),
            EptCheck::Misconfig
        );
    }

    #[test]
    fn hw_6_eptp_list_has_512_entries() {
        let mut ept = Ept::new();
        assert!(ept.insert(ViewId(511), EptView::default()).is_ok());
        assert_eq!(
            ept.insert(ViewId(512), EptView::default()),
            Err(EptError::IndexOutOfRange(512))
        );
        assert!(ept.is_valid(ViewId(511)));
        assert!(!ept.is_valid(ViewId(0)));
    }
    /// A rewind undoes changed entries, installed and replaced views and a longer list, and
    /// equals a copy taken at the mark, round after round.
    #[test]
    fn rewind_returns_the_list_and_its_views_to_the_mark() {
        let mut ept = Ept::new();
        let mut v = EptView::new(EptEntry(0b111));
        v.set(Gfn(5), EptFlags::READ);
        ept.insert(ViewId(0), v).unwrap();
        ept.insert(ViewId(2), EptView::new(EptEntry(0b001)))
            .unwrap();
        ept.mark();
        let at_mark = ept.clone();
        for round in 0..3 {
            let v0 = ept.view_mut(ViewId(0)).unwrap();
            v0.set(Gfn(5), EptFlags::READ | EptFlags::WRITE);
            v0.set(Gfn(6), EptFlags::empty());
            v0.set_suppress_ve(Gfn(6), true);
            ept.view_mut(ViewId(2)).unwrap().set(Gfn(9), EptFlags::READ);
            ept.insert(ViewId(2), EptView::new(EptEntry(0))).unwrap();
            ept.view_mut(ViewId(2)).unwrap().set(Gfn(1), EptFlags::READ);
            ept.insert(ViewId(40), EptView::default()).unwrap();
            assert_eq!(ept.changes_since_mark(), 2 + 3 + 1);
            assert_ne!(ept, at_mark);
            let g = ept.generation();
            ept.rewind();
            assert_ne!(ept.generation(), g);
            assert_eq!(ept, at_mark, "round {round}");
            assert_eq!(ept.view_ids().count(), 2);
            assert_eq!(ept.changes_since_mark(), 0);
            assert_eq!(
                ept.check(ViewId(2), Gpa(0x9000), EptAccess::Read),
                EptCheck::Allowed
            );
            assert_eq!(
                ept.view(ViewId(0)).unwrap().entry(Gfn(6)),
                EptEntry(0b111),
                "the default again"
            );
        }
    }
}
