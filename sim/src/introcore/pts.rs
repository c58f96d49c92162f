//! Translation hooks (B133, B135–B139): introcore protects a guest-virtual page by monitoring
//! the entries of all four levels that translate it. When an upper entry changes, the lower
//! levels are re-hooked under the new table; when the translation changes, the hook's swap
//! callback runs with the old and new leaf entries.

use super::ptm::MonitorId;
use super::Engine;
use crate::events::Event;
pub use crate::events::{SwapRecord, TranslationId};
use crate::guest::software_translate;
use std::collections::BTreeMap;
use vesim_model::Gpa;

/// Who owns a translation hook, and so which swap callback runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A protected process page (the callback records the swap).
    Process(u32),
    /// An agent page (`IntVeHandleSwap`, B116).
    Agent,
}

/// One monitored level: the entry, its monitor and its last known value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Paging level (4 = PML4E ... 1 = PTE).
    pub level: u8,
    /// Guest-physical address of the entry.
    pub entry: Gpa,
    /// Its monitor.
    pub monitor: MonitorId,
    /// `CurEntry`.
    pub value: u64,
}

/// A protected guest-virtual page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslationHook {
    /// The CR3 whose tables translate it.
    pub cr3: u64,
    /// The page.
    pub va: u64,
    /// The monitored levels, top-down, down to the deepest present entry or a large leaf.
    pub levels: Vec<Level>,
    /// Owner.
    pub owner: Owner,
}

impl TranslationHook {
    /// The leaf entry value (0 when the translation is not complete).
    pub fn leaf_value(&self) -> u64 {
        match self.levels.last() {
            Some(l) if l.value & 1 != 0 && (l.level == 1 || l.value & 0x80 != 0) => l.value,
            _ => 0,
        }
    }
    /// The page size of the leaf (4K, 2M, 1G) by level.
    pub fn leaf_size(&self) -> u64 {
        match self.levels.last().map(|l| l.level) {
            Some(3) => 1 << 30,
            Some(2) => 1 << 21,
            _ => 1 << 12,
        }
    }
}

/// All translation hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pts {
    /// The hooks.
    pub hooks: BTreeMap<TranslationId, TranslationHook>,
    /// Which hook each monitor belongs to.
    pub by_monitor: BTreeMap<MonitorId, TranslationId>,
    next: u64,
}

impl Engine<'_> {
    /// The entries translating `va` under `cr3`, top-down, to the deepest present entry or a
    /// large leaf (software walk, no A/D).
    fn translation_chain(&self, cr3: u64, va: u64) -> Vec<(u8, Gpa, u64)> {
        let mut out = Vec::with_capacity(4);
        let mut table = cr3 & 0x000F_FFFF_FFFF_F000;
        for level in (1..=4u8).rev() {
            let idx = (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1FF;
            let entry = Gpa(table | (idx * 8));
            let v = self.machine.mem.read_u64(entry);
            out.push((level, entry, v));
            if v & 1 == 0 || (level != 4 && level != 1 && v & 0x80 != 0) {
                break;
            }
            table = v & 0x0000_3FFF_FFFF_F000;
        }
        out
    }

    /// `IntHookPtsSetHook` (B137): monitor every level that translates `va` under `cr3`.
    pub fn hook_translation(&mut self, cr3: u64, va: u64, owner: Owner) -> TranslationId {
        let id = TranslationId(self.intro.pts.next);
        self.intro.pts.next += 1;
        let chain = self.translation_chain(cr3, va);
        let user_root = cr3 != self.guest.cr3 && va >> 63 == 0;
        let mut levels = Vec::with_capacity(chain.len());
        for (level, entry, value) in chain {
            let monitor = self.place_monitor_flagged(entry, level == 4 && user_root);
            self.intro.pts.by_monitor.insert(monitor, id);
            levels.push(Level {
                level,
                entry,
                monitor,
                value,
            });
        }
        self.intro.pts.hooks.insert(
            id,
            TranslationHook {
                cr3,
                va: va & !0xFFF,
                levels,
                owner,
            },
        );
        id
    }

    /// Removes a translation hook and its monitors.
    pub fn unhook_translation(&mut self, id: TranslationId) {
        if let Some(h) = self.intro.pts.hooks.remove(&id) {
            for l in h.levels {
                self.intro.pts.by_monitor.remove(&l.monitor);
                self.remove_monitor(l.monitor);
            }
        }
    }

    /// Removes every translation hook of a process.
    pub fn unhook_process(&mut self, pid: u32) {
        let ids: Vec<TranslationId> = self
            .intro
            .pts
            .hooks
            .iter()
            .filter(|(_, h)| h.owner == Owner::Process(pid))
            .map(|(i, _)| *i)
            .collect();
        for id in ids {
            self.unhook_translation(id);
        }
        self.commit_hooks();
    }

    /// `IntHookPtsWriteCallback` (B133, B135): monitor `m` saw its entry go from `old` to
    /// `new`. Irrelevant changes stop here; otherwise the levels below are re-hooked from the
    /// new value and, if the leaf changed, the swap callback runs (B136: even when only an
    /// upper level changed).
    pub fn pts_write(&mut self, m: MonitorId, old: u64, new: u64) {
        let Some(id) = self.intro.pts.by_monitor.get(&m).copied() else {
            return;
        };
        let bits = self.quirks.monitored_bits();
        if !crate::abi::is_relevant(old, new, bits) {
            return;
        }
        let Some(hook) = self.intro.pts.hooks.get(&id).cloned() else {
            return;
        };
        let Some(pos) = hook.levels.iter().position(|l| l.monitor == m) else {
            return;
        };
        let old_leaf = hook.leaf_value();
        // Keep the levels above and this one (with its new value); drop the ones below.
        let mut levels: Vec<Level> = hook.levels[..=pos].to_vec();
        levels[pos].value = new;
        for l in &hook.levels[pos + 1..] {
            self.intro.pts.by_monitor.remove(&l.monitor);
            self.remove_monitor(l.monitor);
        }
        // Re-walk below from the new value.
        let this = levels[pos];
        let leaf_here = this.level == 1 || (this.level != 4 && new & 0x80 != 0);
        if new & 1 != 0 && !leaf_here {
            let mut table = new & 0x0000_3FFF_FFFF_F000;
            for level in (1..this.level).rev() {
                let idx = (hook.va >> (12 + 9 * (u32::from(level) - 1))) & 0x1FF;
                let entry = Gpa(table | (idx * 8));
                let value = self.machine.mem.read_u64(entry);
                let monitor = self.place_monitor_flagged(entry, false);
                self.intro.pts.by_monitor.insert(monitor, id);
                levels.push(Level {
                    level,
                    entry,
                    monitor,
                    value,
                });
                if value & 1 == 0 || (level != 1 && value & 0x80 != 0) {
                    break;
                }
                table = value & 0x0000_3FFF_FFFF_F000;
            }
        }
        let updated = TranslationHook { levels, ..hook };
        let new_leaf = updated.leaf_value();
        let owner = updated.owner;
        let va = updated.va;
        self.intro.pts.hooks.insert(id, updated);
        if old_leaf != new_leaf || pos + 1 < hook.levels.len() || leaf_here {
            let r = SwapRecord {
                hook: id,
                va,
                old: old_leaf,
                new: new_leaf,
            };
            self.intro.swaps.push(r);
            self.events.push(Event::Swap(r));
            if owner == Owner::Agent {
                self.agent_swap(va, old_leaf, new_leaf);
            }
        }
    }
}

impl super::Introcore {
    /// The linear → physical translation introcore believes for a hooked page.
    pub fn hooked_translation(
        &self,
        machine: &vesim_model::Machine,
        id: TranslationId,
    ) -> Option<Gpa> {
        let h = self.pts.hooks.get(&id)?;
        software_translate(machine, h.cr3, h.va)
    }
}
