//! The introcore side of the #VE page-table-entry cache (B70–B79): 64 lines × 64 buckets × 8
//! slots of 8 bytes in the agent's VECACHE section, keyed by the guest-physical address of an
//! entry. Introcore only writes slots; the agent only reads them (B77).

pub use crate::abi::cache::{bucket_of, line_of, slot_offset, BUCKETS, LINES, SLOTS};
use crate::quirks::Quirks;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vesim_model::memory::GuestMemory;
use vesim_model::Gpa;

/// Cache statistics (VE-SEMANTICS section 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries written into a slot.
    pub inserts: u64,
    /// Slots cleared by an eviction.
    pub removals: u64,
    /// Inserts that replaced a slot chosen at random.
    pub random_replacements: u64,
}

/// The cache writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheWriter {
    /// `gVeCachePages[line].Indexes[bucket]`: the per-bucket fill counters.
    indexes: [[u8; BUCKETS as usize]; LINES as usize],
    rng: ChaCha8Rng,
    /// Statistics.
    pub stats: CacheStats,
}

impl CacheWriter {
    /// A writer whose random replacement draws come from its own ChaCha stream.
    pub fn new(seed: u64) -> Self {
        CacheWriter {
            indexes: [[0; BUCKETS as usize]; LINES as usize],
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: CacheStats::default(),
        }
    }

    /// Resets the fill counters (the `fixed` behaviour of Q17 on deploy).
    pub fn reset_counters(&mut self) {
        self.indexes = [[0; BUCKETS as usize]; LINES as usize];
    }

    /// `line_page` is the guest-physical address of the entry's line page.
    fn slot_gpa(line_page: Gpa, entry: Gpa, slot: u64) -> Gpa {
        line_page.wrapping_add(slot_offset(0, bucket_of(entry), slot))
    }

    /// Whether `entry` is in its bucket (what the agent's lookup answers, B71); `base` is the
    /// guest-physical address of the entry's line page.
    pub fn contains(mem: &GuestMemory, base: Gpa, entry: Gpa) -> bool {
        let bucket = slot_offset(0, bucket_of(entry), 0) as usize;
        let len = SLOTS as usize * 8;
        if base.page_offset() == 0 && bucket + len <= 0x1000 {
            // The bucket lies in one frame: read it in place (a frame never written is zero).
            return match mem.frame(base.gfn()) {
                Some(f) => f[bucket..bucket + len]
                    .chunks_exact(8)
                    .any(|c| c == entry.0.to_le_bytes()),
                None => entry.0 == 0,
            };
        }
        (0..SLOTS).any(|s| mem.read_u64(Self::slot_gpa(base, entry, s)) == entry.0)
    }

    /// Adds `entry` (B74) to its bucket in the line page at `base`: nothing if present; otherwise the next slot by the fill counter, or
    /// a random slot once the counter reached 8. In `fixed` (Q17 off) the first empty slot is
    /// used before any random replacement.
    pub fn add(&mut self, mem: &mut GuestMemory, base: Gpa, q: &Quirks, entry: Gpa) {
        if Self::contains(mem, base, entry) {
            return;
        }
        let (line, bucket) = (line_of(entry) as usize, bucket_of(entry) as usize);
        let empty = q.empty_slot();
        let slot = if q.q17_fill_counter {
            let counter = self.indexes[line][bucket];
            if (counter as u64) < SLOTS {
                self.indexes[line][bucket] = counter + 1;
                counter as u64
            } else {
                self.stats.random_replacements += 1;
                self.rng.next_u64() % SLOTS
            }
        } else {
            match (0..SLOTS).find(|s| mem.read_u64(Self::slot_gpa(base, entry, *s)) == empty) {
                Some(s) => s,
                None => {
                    self.stats.random_replacements += 1;
                    self.rng.next_u64() % SLOTS
                }
            }
        };
        mem.write_u64(Self::slot_gpa(base, entry, slot), entry.0);
        self.stats.inserts += 1;
    }

    /// Removes `entry` (B73) from the line page at `base`: the first slot equal to it gets the
    /// empty marker; the fill
    /// counter is not decremented.
    pub fn remove(&mut self, mem: &mut GuestMemory, base: Gpa, q: &Quirks, entry: Gpa) {
        for s in 0..SLOTS {
            let g = Self::slot_gpa(base, entry, s);
            if mem.read_u64(g) == entry.0 {
                mem.write_u64(g, q.empty_slot());
                self.stats.removals += 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Gpa = Gpa(0x10_0000);

    /// The line page of `e` in a cache at BASE.
    fn lp(e: Gpa) -> Gpa {
        BASE.wrapping_add(line_of(e) * 0x1000)
    }

    fn fresh(q: &Quirks) -> GuestMemory {
        let mut mem = GuestMemory::new();
        let fill = q.empty_slot().to_le_bytes().repeat(512);
        for line in 0..LINES {
            mem.write(BASE.wrapping_add(line * 0x1000), &fill);
        }
        mem
    }

    #[test]
    fn b70_geometry() {
        let e = Gpa(0x1234_5678);
        assert_eq!(line_of(e), 0x5);
        assert_eq!(bucket_of(e), (0x678 >> 3) & 63);
        assert_eq!(slot_offset(63, 63, 7), 0x3FFF8);
    }

    #[test]
    fn q17_hvmi_counter_never_refills_holes() {
        let q = Quirks::hvmi();
        let mut mem = fresh(&q);
        let mut c = CacheWriter::new(1);
        // Eight entries of one bucket: same bits 3..17, different pages above bit 18.
        let e = |k: u64| Gpa(0x1000 + (k << 18));
        for k in 0..8 {
            c.add(&mut mem, lp(e(k)), &q, e(k));
        }
        c.remove(&mut mem, lp(e(0)), &q, e(0));
        c.add(&mut mem, lp(e(8)), &q, e(8));
        assert_eq!(c.stats.random_replacements, 1, "hole at slot 0 not reused");
    }

    #[test]
    fn q17_fixed_refills_holes_first() {
        let q = Quirks::fixed();
        let mut mem = fresh(&q);
        let mut c = CacheWriter::new(1);
        let e = |k: u64| Gpa(0x1000 + (k << 18));
        for k in 0..8 {
            c.add(&mut mem, lp(e(k)), &q, e(k));
        }
        c.remove(&mut mem, lp(e(3)), &q, e(3));
        c.add(&mut mem, lp(e(8)), &q, e(8));
        assert_eq!(c.stats.random_replacements, 0);
        for k in (0..9).filter(|k| *k != 3) {
            assert!(CacheWriter::contains(&mem, lp(e(k)), e(k)), "{k}");
        }
    }

    #[test]
    fn q15_zero_entry_aliases_an_empty_slot_only_in_hvmi() {
        let h = Quirks::hvmi();
        assert!(CacheWriter::contains(&fresh(&h), lp(Gpa(0)), Gpa(0)));
        let f = Quirks::fixed();
        assert!(!CacheWriter::contains(&fresh(&f), lp(Gpa(0)), Gpa(0)));
    }
}
