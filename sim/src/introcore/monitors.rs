//! Page-table monitors and the #VE cache writer as the engine drives them (B72–B76, B131,
//! B132): placing and removing monitors, committing hook changes, cache inserts and evictions,
//! and the callbacks of a write to a monitored table.

use super::hooks::HookKind;
use super::ptm::{CallbackRecord, MonitorId, WriteAction};
use super::{emulate, Engine, Introcore};
use crate::events::Event;
use vesim_model::Gpa;

impl Engine<'_> {
    /// `IntVeUpdateCacheEntry(entry, monitored)` (B72–B74, Q16).
    pub fn update_cache(&mut self, entry: Gpa, monitored: bool) {
        let q = self.quirks;
        if !self.intro.initialized || !self.intro.deployed {
            return;
        }
        if self.intro.pending_unload && (q.q16_no_evict_on_unload || !monitored) {
            return;
        }
        let Some(page) = Introcore::cache_line_page(self.machine, self.guest, entry) else {
            return;
        };
        if let Some(log) = self.cache_log.as_mut() {
            log.push(if monitored {
                crate::events::CacheOp::Remove(entry.0)
            } else {
                crate::events::CacheOp::Insert(entry.0)
            });
        }
        if monitored {
            self.intro
                .cache
                .remove(&mut self.machine.mem, page, &q, entry);
        } else {
            self.intro.cache.add(&mut self.machine.mem, page, &q, entry);
        }
    }

    /// Places a monitor on the page-table entry at `entry` (B131, B76).
    pub fn place_monitor(&mut self, entry: Gpa) -> MonitorId {
        self.place_monitor_flagged(entry, false)
    }

    /// Places a monitor; `user_root` marks an entry of a user PML4, whose table hook covers
    /// only its low half (PT_UM_ROOT, B131).
    pub fn place_monitor_flagged(&mut self, entry: Gpa, user_root: bool) -> MonitorId {
        let cover = if user_root { 0x800 } else { 0x1000 };
        let p = self.intro.ptm.place_covering(entry, cover);
        if p.hook_table {
            self.intro.hooks.set(
                &mut self.machine.ept,
                entry.gfn(),
                HookKind::PAGE_TABLE_WRITE,
            );
        }
        if p.evict {
            self.update_cache(Gpa(entry.0 & !7), true);
        }
        p.id
    }

    /// Removes a monitor; the table's GPA hook goes at the next commit if it was the last.
    pub fn remove_monitor(&mut self, id: MonitorId) {
        if let Some(gfn) = self.intro.ptm.remove(id) {
            self.intro.hooks.remove(gfn, HookKind::PAGE_TABLE_WRITE);
        }
    }

    /// Commits deferred hook removals (B102 step 6).
    pub fn commit_hooks(&mut self) {
        self.intro.hooks.commit(&mut self.machine.ept);
    }

    /// `IntHandleMemAccess` for a page-table write of `old` → `new` at `gpa` (B114, B132).
    pub(super) fn pt_write_callbacks(&mut self, gpa: Gpa, old: u64, new: u64) {
        match self.intro.ptm.write(gpa) {
            WriteAction::NotATable => {}
            WriteAction::CacheAdd(entries) => {
                for e in entries {
                    self.update_cache(e, false);
                }
            }
            WriteAction::Uncovered(entries) => {
                // Q27: outside the PT_UM_ROOT range no callback runs; HVMI never caches these
                // entries, `fixed` caches them like any unmonitored entry.
                if !self.quirks.q27_user_pml4 {
                    for e in entries {
                        self.update_cache(e, false);
                    }
                }
            }
            WriteAction::Callbacks(ids) => {
                for id in ids {
                    let r = CallbackRecord {
                        monitor: id,
                        entry: Gpa(gpa.0 & !7),
                        old,
                        new,
                    };
                    self.intro.callbacks.push(r);
                    self.counters.callbacks += 1;
                    self.events.push(Event::Callback(r));
                    self.pts_write(id, old, new);
                }
            }
        }
    }

    /// `IntHandleMemAccess` after introcore emulated a write itself: the write is dropped
    /// early when irrelevant under the monitored bits (B114, B133), entry by entry.
    pub(super) fn emulated_write_callbacks(&mut self, e: &emulate::Emulation) {
        let bits = self.quirks.monitored_bits();
        for &(entry, old, new) in &e.entries {
            if crate::abi::is_relevant(old, new, bits) {
                self.pt_write_callbacks(entry, old, new);
            }
        }
    }
}
