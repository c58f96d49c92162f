//! GPA hooks (B123–B130): per-page read/write/execute/page-table/convertible counts, the
//! untrusted-view EPT rights they imply, and deferred removal with commit.

use std::collections::BTreeMap;
use vesim_model::ept::{Ept, EptFlags};
use vesim_model::{Gfn, ViewId};

/// What a hook on a page asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookKind {
    /// A read hook (clears R).
    pub read: bool,
    /// A write hook (clears W).
    pub write: bool,
    /// An execute hook (clears X).
    pub execute: bool,
    /// The hook carries a page-table flag (PAGING_STRUCTURE, PAE_ROOT or PT_UM_ROOT).
    pub page_table: bool,
}

impl HookKind {
    /// A write hook on a page-table page.
    pub const PAGE_TABLE_WRITE: HookKind = HookKind {
        read: false,
        write: true,
        execute: false,
        page_table: true,
    };
}

/// `HOOK_EPT_ENTRY`: the counts of one page (B123).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounts {
    /// Read hooks.
    pub read: u32,
    /// Write hooks.
    pub write: u32,
    /// Execute hooks.
    pub execute: u32,
    /// Page-table hooks.
    pub pt: u32,
    /// Convertible count: equals `pt` while #VE is enabled, 0 otherwise (B94).
    pub conv: u32,
}

/// All GPA hooks, applied to the untrusted view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpaHooks {
    entries: BTreeMap<Gfn, HookCounts>,
    pending: Vec<(Gfn, HookKind)>,
    ve_enabled: bool,
    view: ViewId,
}

impl GpaHooks {
    /// No hooks; rights are written to `view` (the untrusted view).
    pub fn new(view: ViewId) -> Self {
        GpaHooks {
            entries: BTreeMap::new(),
            pending: Vec::new(),
            ve_enabled: false,
            view,
        }
    }

    /// The counts of a page.
    pub fn counts(&self, gfn: Gfn) -> HookCounts {
        self.entries.get(&gfn).copied().unwrap_or_default()
    }

    /// Whether #VE is enabled for page-table hooks (B94).
    pub fn ve_enabled(&self) -> bool {
        self.ve_enabled
    }

    /// Every hooked page with its counts, in page order.
    pub fn pages(&self) -> impl Iterator<Item = (Gfn, HookCounts)> + '_ {
        self.entries.iter().map(|(g, c)| (*g, *c))
    }

    /// The untrusted-view rights the counts imply (B124): R, W, X where no hook of that kind.
    pub fn rights(c: &HookCounts) -> EptFlags {
        let mut f = EptFlags::empty();
        if c.read == 0 {
            f |= EptFlags::READ;
        }
        if c.write == 0 {
            f |= EptFlags::WRITE;
        }
        if c.execute == 0 {
            f |= EptFlags::EXECUTE;
        }
        f
    }

    fn write_rights(&self, ept: &mut Ept, gfn: Gfn, c: &HookCounts) {
        if let Some(v) = ept.view_mut(self.view) {
            v.set_rights(gfn, Self::rights(c));
        }
    }

    fn set_convertible(&self, ept: &mut Ept, gfn: Gfn, convertible: bool) {
        if let Some(v) = ept.view_mut(self.view) {
            v.set_suppress_ve(gfn, !convertible);
        }
    }

    /// Places a hook (B124, B125): counts go up; a 0→1 count removes the right; a page-table
    /// hook while #VE is enabled makes the page convertible on ConvCount 0→1.
    pub fn set(&mut self, ept: &mut Ept, gfn: Gfn, kind: HookKind) {
        let mut c = self.counts(gfn);
        let before = c;
        c.read += kind.read as u32;
        c.write += kind.write as u32;
        c.execute += kind.execute as u32;
        if kind.page_table {
            c.pt += 1;
            if self.ve_enabled {
                c.conv += 1;
                if c.conv == 1 {
                    self.set_convertible(ept, gfn, true);
                }
            }
        }
        if (before.read == 0) != (c.read == 0)
            || (before.write == 0) != (c.write == 0)
            || (before.execute == 0) != (c.execute == 0)
        {
            self.write_rights(ept, gfn, &c);
        }
        self.entries.insert(gfn, c);
    }

    /// Queues the removal of a hook (B126); nothing changes until [`GpaHooks::commit`].
    pub fn remove(&mut self, gfn: Gfn, kind: HookKind) {
        self.pending.push((gfn, kind));
    }

    /// Whether removals are waiting for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Applies the queued removals: read hooks first, then write, then execute (B126).
    pub fn commit(&mut self, ept: &mut Ept) {
        let pending = std::mem::take(&mut self.pending);
        let mut order: Vec<(u8, Gfn, HookKind)> = Vec::with_capacity(pending.len());
        for (gfn, k) in pending {
            let rank = if k.read {
                0
            } else if k.write {
                1
            } else {
                2
            };
            order.push((rank, gfn, k));
        }
        order.sort_by_key(|(rank, _, _)| *rank);
        for (_, gfn, kind) in order {
            let Some(mut c) = self.entries.get(&gfn).copied() else {
                continue;
            };
            let before = c;
            if kind.read {
                c.read = c.read.saturating_sub(1);
            }
            if kind.write {
                c.write = c.write.saturating_sub(1);
            }
            if kind.execute {
                c.execute = c.execute.saturating_sub(1);
            }
            if kind.page_table {
                c.pt = c.pt.saturating_sub(1);
                if self.ve_enabled && c.conv > 0 {
                    c.conv -= 1;
                    if c.conv == 0 {
                        self.set_convertible(ept, gfn, false);
                    }
                }
            }
            if (before.read == 0) != (c.read == 0)
                || (before.write == 0) != (c.write == 0)
                || (before.execute == 0) != (c.execute == 0)
            {
                self.write_rights(ept, gfn, &c);
            }
            if c.read + c.write + c.execute + c.pt == 0 {
                self.entries.remove(&gfn);
            } else {
                self.entries.insert(gfn, c);
            }
        }
    }

    /// B94 enable: every page with PtCount gets ConvCount = PtCount and becomes convertible.
    pub fn enable_ve(&mut self, ept: &mut Ept) {
        if self.ve_enabled {
            return;
        }
        let gfns: Vec<Gfn> = self.entries.keys().copied().collect();
        for gfn in gfns {
            if let Some(c) = self.entries.get_mut(&gfn) {
                if c.pt != 0 {
                    let was = c.conv;
                    c.conv = c.conv.saturating_add(c.pt);
                    if was == 0 {
                        if let Some(v) = ept.view_mut(self.view) {
                            v.set_suppress_ve(gfn, false);
                        }
                    }
                }
            }
        }
        self.ve_enabled = true;
    }

    /// B94 disable: ConvCount drops by PtCount; pages at 0 become non-convertible.
    pub fn disable_ve(&mut self, ept: &mut Ept) {
        if !self.ve_enabled {
            return;
        }
        let gfns: Vec<Gfn> = self.entries.keys().copied().collect();
        for gfn in gfns {
            if let Some(c) = self.entries.get_mut(&gfn) {
                c.conv = c.conv.saturating_sub(c.pt);
                if c.conv == 0 {
                    if let Some(v) = ept.view_mut(self.view) {
                        v.set_suppress_ve(gfn, true);
                    }
                }
            }
        }
        self.ve_enabled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesim_model::ept::{EptEntry, EptView};

    fn ept() -> Ept {
        let mut e = Ept::new();
        let all = EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE | EptFlags::SUPPRESS_VE;
        e.insert(ViewId(0), EptView::new(EptEntry(all.bits())))
            .unwrap();
        e
    }

    fn flags(e: &Ept, g: Gfn) -> EptFlags {
        e.view(ViewId(0)).unwrap().entry(g).flags()
    }

    #[test]
    fn b124_rights_follow_counts_and_removal_waits_for_commit() {
        let mut e = ept();
        let mut h = GpaHooks::new(ViewId(0));
        let g = Gfn(0x42);
        let w = HookKind {
            write: true,
            ..HookKind::default()
        };
        h.set(&mut e, g, w);
        h.set(&mut e, g, w);
        assert!(!flags(&e, g).contains(EptFlags::WRITE));
        h.remove(g, w);
        h.commit(&mut e);
        assert!(
            !flags(&e, g).contains(EptFlags::WRITE),
            "one write hook left"
        );
        h.remove(g, w);
        assert!(
            !flags(&e, g).contains(EptFlags::WRITE),
            "deferred until commit"
        );
        h.commit(&mut e);
        assert!(flags(&e, g).contains(EptFlags::WRITE));
        assert_eq!(h.counts(g), HookCounts::default());
    }

    #[test]
    fn b94_b125_convertible_only_while_ve_enabled() {
        let mut e = ept();
        let mut h = GpaHooks::new(ViewId(0));
        let g = Gfn(7);
        h.set(&mut e, g, HookKind::PAGE_TABLE_WRITE);
        assert!(flags(&e, g).contains(EptFlags::SUPPRESS_VE), "before B93");
        h.enable_ve(&mut e);
        assert!(!flags(&e, g).contains(EptFlags::SUPPRESS_VE));
        assert_eq!(h.counts(g).conv, h.counts(g).pt);
        h.set(&mut e, g, HookKind::PAGE_TABLE_WRITE);
        assert_eq!(h.counts(g).conv, 2);
        h.disable_ve(&mut e);
        assert!(flags(&e, g).contains(EptFlags::SUPPRESS_VE));
        assert_eq!(h.counts(g).conv, 0);
    }
}
