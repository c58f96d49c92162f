//! Page-table monitors (B131, B132, B134): one table per page-table page, holding one write
//! GPA hook (with the page-table flag) and, for each of the 512 entries, the list of monitors
//! subscribed to it. A write to an entry with no monitor adds it and the next 7 unmonitored
//! entries to the #VE cache (B75); the first monitor on an entry evicts it (B76).

pub use crate::events::{CallbackRecord, MonitorId};
use std::collections::BTreeMap;
use vesim_model::{Gfn, Gpa};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Table {
    entries: BTreeMap<u16, Vec<MonitorId>>,
    /// Bytes the table's write hook covers: 0x1000, or 0x800 for the low half of a user PML4
    /// (PT_UM_ROOT, B131).
    cover: u64,
}

/// What a write to a monitored table page amounts to (B132).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAction {
    /// The page is not a monitored table.
    NotATable,
    /// No monitor on the entry: cache-add these entry addresses (the entry and up to 7 more
    /// unmonitored ones after it, within the table).
    CacheAdd(Vec<Gpa>),
    /// These monitors' callbacks run.
    Callbacks(Vec<MonitorId>),
    /// The write lies outside the table hook's range (entries 256..511 of a user PML4, Q27).
    Uncovered(Vec<Gpa>),
}

/// What placing a monitor requires of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The new handle.
    pub id: MonitorId,
    /// The table page had no monitor: place its write GPA hook.
    pub hook_table: bool,
    /// The entry had no monitor: evict it from the cache (B76).
    pub evict: bool,
}

/// All page-table monitors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ptm {
    tables: BTreeMap<Gfn, Table>,
    owners: BTreeMap<MonitorId, Gpa>,
    next: u64,
    removals: u64,
}

impl Ptm {
    /// How many monitors were ever placed.
    pub fn placements(&self) -> u64 {
        self.next
    }

    /// Changes whenever a monitor is placed or removed: (placements, removals).
    pub fn generation(&self) -> (u64, u64) {
        (self.next, self.removals)
    }

    /// Calls `f` with the address of every monitored entry, in address order.
    pub fn for_each_monitored(&self, mut f: impl FnMut(Gpa)) {
        for (gfn, t) in &self.tables {
            for (idx, l) in &t.entries {
                if !l.is_empty() {
                    f(gfn.gpa().wrapping_add(u64::from(*idx) * 8));
                }
            }
        }
    }

    /// Subscribes a new monitor to the entry at `entry`.
    pub fn place(&mut self, entry: Gpa) -> Placed {
        self.place_covering(entry, 0x1000)
    }

    /// Subscribes a new monitor; a table created now covers `cover` bytes (0x800 for a user
    /// PML4, whose hook is PT_UM_ROOT).
    pub fn place_covering(&mut self, entry: Gpa, cover: u64) -> Placed {
        let gfn = entry.gfn();
        let index = ((entry.0 & 0xFFF) >> 3) as u16;
        let hook_table = !self.tables.contains_key(&gfn);
        let table = self.tables.entry(gfn).or_insert_with(|| Table {
            entries: BTreeMap::new(),
            cover,
        });
        let list = table.entries.entry(index).or_default();
        let evict = list.is_empty();
        let id = MonitorId(self.next);
        self.next += 1;
        list.push(id);
        self.owners.insert(id, Gpa(entry.0 & !7));
        Placed {
            id,
            hook_table,
            evict,
        }
    }

    /// Removes a monitor; returns the table page if it has no monitor left (its GPA hook must
    /// be removed). There is no cache eviction on the last removal (B76).
    pub fn remove(&mut self, id: MonitorId) -> Option<Gfn> {
        let entry = self.owners.remove(&id)?;
        self.removals += 1;
        let gfn = entry.gfn();
        let index = ((entry.0 & 0xFFF) >> 3) as u16;
        let table = self.tables.get_mut(&gfn)?;
        if let Some(list) = table.entries.get_mut(&index) {
            list.retain(|m| *m != id);
            if list.is_empty() {
                table.entries.remove(&index);
            }
        }
        if table.entries.is_empty() {
            self.tables.remove(&gfn);
            return Some(gfn);
        }
        None
    }

    /// Whether `gfn` is a monitored table page.
    pub fn is_table(&self, gfn: Gfn) -> bool {
        self.tables.contains_key(&gfn)
    }

    /// Whether the entry at `entry` has at least one monitor.
    pub fn is_monitored(&self, entry: Gpa) -> bool {
        let index = ((entry.0 & 0xFFF) >> 3) as u16;
        self.tables
            .get(&entry.gfn())
            .and_then(|t| t.entries.get(&index))
            .is_some_and(|l| !l.is_empty())
    }

    /// The monitors of an entry, in placement order.
    pub fn monitors(&self, entry: Gpa) -> Vec<MonitorId> {
        let index = ((entry.0 & 0xFFF) >> 3) as u16;
        self.tables
            .get(&entry.gfn())
            .and_then(|t| t.entries.get(&index))
            .cloned()
            .unwrap_or_default()
    }

    /// Every monitored entry address, in order.
    pub fn monitored_entries(&self) -> Vec<Gpa> {
        let mut out = Vec::new();
        self.for_each_monitored(|e| out.push(e));
        out
    }

    /// B132/B75: the action for a write to `addr`.
    pub fn write(&self, addr: Gpa) -> WriteAction {
        let gfn = addr.gfn();
        let Some(table) = self.tables.get(&gfn) else {
            return WriteAction::NotATable;
        };
        let index = (addr.0 & 0xFFF) >> 3;
        match table.entries.get(&(index as u16)) {
            Some(l) if !l.is_empty() => WriteAction::Callbacks(l.clone()),
            _ => {
                let base = Gpa(addr.0 & !7);
                let adds = (0..8u64)
                    .filter(|k| index + k < 512)
                    .map(|k| base.wrapping_add(k * 8))
                    .filter(|e| !self.is_monitored(*e))
                    .collect();
                if addr.0 & 0xFFF >= table.cover {
                    WriteAction::Uncovered(adds)
                } else {
                    WriteAction::CacheAdd(adds)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b75_adds_the_entry_and_the_next_seven_unmonitored_within_the_table() {
        let mut p = Ptm::default();
        let table = Gpa(0x5000);
        p.place(table.wrapping_add(0x18)); // entry 3
        assert_eq!(
            p.write(table.wrapping_add(0x08)),
            WriteAction::CacheAdd(vec![
                Gpa(0x5008),
                Gpa(0x5010),
                Gpa(0x5020),
                Gpa(0x5028),
                Gpa(0x5030),
                Gpa(0x5038),
                Gpa(0x5040)
            ])
        );
        // Near the end of the table: never past entry 511.
        assert_eq!(
            p.write(table.wrapping_add(0xFF0)),
            WriteAction::CacheAdd(vec![Gpa(0x5FF0), Gpa(0x5FF8)])
        );
    }

    #[test]
    fn b76_first_monitor_evicts_and_hooks_the_table_once() {
        let mut p = Ptm::default();
        let a = p.place(Gpa(0x7010));
        assert!(a.hook_table && a.evict);
        let b = p.place(Gpa(0x7010));
        assert!(!b.hook_table && !b.evict);
        let c = p.place(Gpa(0x7018));
        assert!(!c.hook_table && c.evict);
        assert_eq!(
            p.write(Gpa(0x7010)),
            WriteAction::Callbacks(vec![a.id, b.id])
        );
        assert_eq!(p.remove(a.id), None);
        assert_eq!(p.remove(b.id), None);
        assert_eq!(p.remove(c.id), Some(Gfn(7)));
    }
}
