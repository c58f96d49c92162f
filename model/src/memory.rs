//! Sparse guest-physical memory: 4 KiB frames allocated on first write; a frame never written
//! reads as zero.
//!
//! These are physical accesses: no paging, no EPT. The CPU model goes through `mmu` for
//! guest accesses and uses this module only after translation (and for the writes the
//! hardware makes by physical address, such as the #VE information area, HW §2.2).

use crate::addr::{Gfn, Gpa, PAGE_SIZE};
use crate::fastmap::FastMap;

/// One 4 KiB frame.
pub type Frame = [u8; PAGE_SIZE as usize];

/// Sparse guest-physical memory.
///
/// It also tells the MMU's translation cache what to drop: frames can be watched (the
/// paging-structure frames a cached translation read), and the first write to a watched frame
/// lists it in [`GuestMemory::written_watched`] (and stops watching it); a rewind bumps
/// [`GuestMemory::generation`], which drops every cached translation.
///
/// Snapshot and rewind: after [`GuestMemory::mark`], the first write to each frame saves its
/// contents (or notes that the frame did not exist), and [`GuestMemory::rewind`] puts back
/// exactly those frames. A rewind costs one 4 KiB copy per frame dirtied since the mark,
/// whatever the size of memory; the saved copies are kept for reuse, so a steady
/// mark-run-rewind loop allocates nothing. Equality is the contents only.
#[derive(Clone, Default)]
pub struct GuestMemory {
    frames: FastMap<u64, Slot>,
    watched: FastMap<u64, ()>,
    written_watched: Vec<u64>,
    generation: u64,
    journal: Journal,
    undo: Undo,
}

/// The last frames written, for checkers that look at what one step wrote
/// ([`GuestMemory::written_since`]): a ring of the last [`JOURNAL_LEN`] frame numbers written,
/// one per write to a frame, and how many were ever listed.
#[derive(Clone)]
struct Journal {
    ring: [u64; JOURNAL_LEN],
    total: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            ring: [0; JOURNAL_LEN],
            total: 0,
        }
    }
}

/// Frames the write journal holds.
pub const JOURNAL_LEN: usize = 64;

impl Journal {
    fn note(&mut self, gfn: u64) {
        self.ring[(self.total % JOURNAL_LEN as u64) as usize] = gfn;
        self.total += 1;
    }
}

/// A frame and the epoch in which it was last saved for a rewind.
#[derive(Clone)]
struct Slot {
    frame: Box<Frame>,
    epoch: u64,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.frame == other.frame
    }
}

/// What a rewind puts back: per frame dirtied since the mark, its contents then (`None`: the
/// frame did not exist).
#[derive(Clone, Default)]
struct Undo {
    marked: bool,
    /// Marks taken so far.
    marks: u64,
    /// A frame whose slot carries another epoch has not been saved since the mark.
    epoch: u64,
    saved: Vec<(u64, Option<Box<Frame>>)>,
    spare: Vec<Box<Frame>>,
}

impl Undo {
    fn frame(&mut self) -> Box<Frame> {
        self.spare
            .pop()
            .unwrap_or_else(|| Box::new([0u8; PAGE_SIZE as usize]))
    }
}

impl PartialEq for GuestMemory {
    fn eq(&self, other: &Self) -> bool {
        self.frames == other.frames
    }
}

impl Eq for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestMemory({} frames)", self.frames.len())
    }
}

impl GuestMemory {
    /// Empty memory: every byte reads as zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of frames that have been written at least once.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The allocated frames in ascending frame order.
    pub fn frames(&self) -> impl Iterator<Item = (Gfn, &Frame)> {
        let mut keys: Vec<u64> = self.frames.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(move |k| self.frames.get(&k).map(|v| (Gfn(k), &*v.frame)))
    }

    /// The frame `gfn`, if it was ever written.
    pub fn frame(&self, gfn: Gfn) -> Option<&Frame> {
        self.frames.get(&gfn.0).map(|s| &*s.frame)
    }

    /// Lists frame `gfn` in [`GuestMemory::written_watched`] on its next write.
    pub fn watch(&mut self, gfn: Gfn) {
        self.watched.insert(gfn.0, ());
    }

    /// The watched frames written since [`GuestMemory::clear_written_watched`], each once, in
    /// the order first written; a written frame is no longer watched.
    pub fn written_watched(&self) -> &[u64] {
        &self.written_watched
    }

    /// Empties [`GuestMemory::written_watched`].
    pub fn clear_written_watched(&mut self) {
        self.written_watched.clear();
    }

    /// A position in the write journal, for [`GuestMemory::written_since`].
    pub fn journal_position(&self) -> u64 {
        self.journal.total
    }

    /// The frames written since journal position `position` (once per write), or `None` when the journal no longer reaches back that far (more than
    /// [`JOURNAL_LEN`] frames were listed since, or memory was rewound).
    pub fn written_since(&self, position: u64) -> Option<impl Iterator<Item = Gfn> + '_> {
        let n = self.journal.total.checked_sub(position)?;
        if n > JOURNAL_LEN as u64 {
            return None;
        }
        Some(
            (position..self.journal.total)
                .map(|i| Gfn(self.journal.ring[(i % JOURNAL_LEN as u64) as usize])),
        )
    }

    /// Changes on every rewind (the watch list then starts empty).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks the current contents as what [`GuestMemory::rewind`] returns to (forgetting any
    /// earlier mark).
    pub fn mark(&mut self) {
        let u = &mut self.undo;
        u.marked = true;
        u.marks += 1;
        u.epoch += 1;
        for (_, saved) in u.saved.drain(..) {
            u.spare.extend(saved);
        }
    }

    /// Puts back the contents at the last [`GuestMemory::mark`] (nothing without a mark), in
    /// time proportional to the frames written since; the mark stays. Every translation
    /// cached on this memory is dropped.
    pub fn rewind(&mut self) {
        let u = &mut self.undo;
        if !u.marked {
            return;
        }
        for (gfn, saved) in u.saved.drain(..) {
            match saved {
                Some(old) => {
                    if let Some(slot) = self.frames.get_mut(&gfn) {
                        slot.frame.copy_from_slice(&old[..]);
                    }
                    u.spare.push(old);
                }
                None => {
                    if let Some(slot) = self.frames.remove(&gfn) {
                        u.spare.push(slot.frame);
                    }
                }
            }
        }
        u.epoch += 1;
        self.generation += 1;
        self.watched.clear();
        self.written_watched.clear();
        // A rewind changes frames behind the journal's back: no position before it is valid.
        self.journal.total += JOURNAL_LEN as u64 + 1;
    }

    /// Each frame written since the last mark, in the order first written, with its contents
    /// at the mark (`None`: it did not exist then).
    pub fn dirtied(&self) -> impl Iterator<Item = (Gfn, Option<&Frame>)> + '_ {
        self.undo
            .saved
            .iter()
            .map(|(g, old)| (Gfn(*g), old.as_deref()))
    }

    /// How many marks were taken (a snapshot knows which mark it belongs to).
    pub fn marks(&self) -> u64 {
        self.undo.marks
    }

    /// Frames written since the last mark (what a rewind would copy back).
    pub fn dirtied_since_mark(&self) -> usize {
        self.undo.saved.len()
    }

    fn frame_mut(&mut self, gfn: Gfn) -> &mut Frame {
        if !self.watched.is_empty() && self.watched.remove(&gfn.0).is_some() {
            self.written_watched.push(gfn.0);
        }
        self.journal.note(gfn.0);
        let u = &mut self.undo;
        let slot = self.frames.entry(gfn.0).or_insert_with(|| {
            let mut frame = u.frame();
            frame.fill(0);
            if u.marked {
                u.saved.push((gfn.0, None));
            }
            Slot {
                frame,
                epoch: u.epoch,
            }
        });
        if u.marked && slot.epoch != u.epoch {
            let mut copy = u.frame();
            copy.copy_from_slice(&slot.frame[..]);
            u.saved.push((gfn.0, Some(copy)));
            slot.epoch = u.epoch;
        }
        &mut slot.frame
    }

    /// Reads `buf.len()` bytes starting at `gpa` (may cross frames; wraps at 2^64).
    pub fn read(&self, gpa: Gpa, buf: &mut [u8]) {
        let mut addr = gpa;
        let mut done = 0;
        while done < buf.len() {
            let off = addr.page_offset() as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            match self.frames.get(&addr.gfn().0) {
                Some(slot) => buf[done..done + n].copy_from_slice(&slot.frame[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            addr = addr.wrapping_add(n as u64);
        }
    }

    /// Writes `data` starting at `gpa` (may cross frames; wraps at 2^64).
    pub fn write(&mut self, gpa: Gpa, data: &[u8]) {
        let mut addr = gpa;
        let mut done = 0;
        while done < data.len() {
            let off = addr.page_offset() as usize;
            let n = (PAGE_SIZE as usize - off).min(data.len() - done);
            self.frame_mut(addr.gfn())[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
            addr = addr.wrapping_add(n as u64);
        }
    }

    /// Reads a little-endian u64 at `gpa` (any alignment).
    pub fn read_u64(&self, gpa: Gpa) -> u64 {
        let off = gpa.page_offset() as usize;
        if off <= PAGE_SIZE as usize - 8 {
            return match self.frames.get(&gpa.gfn().0) {
                Some(slot) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&slot.frame[off..off + 8]);
                    u64::from_le_bytes(b)
                }
                None => 0,
            };
        }
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a little-endian u64 at `gpa` (any alignment).
    pub fn write_u64(&mut self, gpa: Gpa, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }

    /// Reads a little-endian u32 at `gpa`.
    pub fn read_u32(&self, gpa: Gpa) -> u32 {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a little-endian u32 at `gpa`.
    pub fn write_u32(&mut self, gpa: Gpa, value: u32) {
        self.write(gpa, &value.to_le_bytes());
    }

    /// Reads a little-endian u16 at `gpa`.
    pub fn read_u16(&self, gpa: Gpa) -> u16 {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b);
        u16::from_le_bytes(b)
    }

    /// Writes a little-endian u16 at `gpa`.
    pub fn write_u16(&mut self, gpa: Gpa, value: u16) {
        self.write(gpa, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_memory_reads_zero_and_allocates_nothing() {
        let mem = GuestMemory::new();
        assert_eq!(mem.read_u64(Gpa(0x1234_5000)), 0);
        assert_eq!(mem.frame_count(), 0);
    }

    #[test]
    fn cross_frame_u64_round_trips_little_endian() {
        let mut mem = GuestMemory::new();
        mem.write_u64(Gpa(0x1FFC), 0x1122_3344_5566_7788);
        assert_eq!(mem.frame_count(), 2);
        assert_eq!(mem.read_u32(Gpa(0x1FFC)), 0x5566_7788);
        assert_eq!(mem.read_u32(Gpa(0x2000)), 0x1122_3344);
        assert_eq!(mem.read_u64(Gpa(0x1FFC)), 0x1122_3344_5566_7788);
    }

    #[test]
    fn write_at_top_of_address_space_wraps() {
        let mut mem = GuestMemory::new();
        mem.write(Gpa(u64::MAX), &[0xAA, 0xBB]);
        let mut b = [0u8; 1];
        mem.read(Gpa(0), &mut b);
        assert_eq!(b[0], 0xBB);
    }
    /// A rewind returns exactly the marked contents (compared with a copy taken at the mark),
    /// removes frames created since, and copies back only the frames written since.
    #[test]
    fn rewind_returns_to_the_mark_and_touches_only_dirtied_frames() {
        let mut mem = GuestMemory::new();
        for i in 0..64u64 {
            mem.write_u64(Gpa(i * 0x1000 + 8), i + 1);
        }
        mem.mark();
        let at_mark = mem.clone();
        for round in 0..3u64 {
            mem.write_u64(Gpa(0x3008), 0xDEAD + round);
            mem.write_u64(Gpa(0x3010), 7);
            mem.write(Gpa(0x7FFC), &[1, 2, 3, 4, 5, 6, 7, 8]);
            mem.write_u64(Gpa(0x100_0000), 1);
            assert_eq!(mem.dirtied_since_mark(), 4, "frames 3, 7, 8 and a new one");
            assert_ne!(mem, at_mark);
            mem.rewind();
            assert_eq!(mem, at_mark, "round {round}");
            assert_eq!(mem.frame_count(), 64);
            assert_eq!(mem.frame(Gfn(0x1000)), None);
            assert_eq!(mem.dirtied_since_mark(), 0);
        }
    }

    #[test]
    fn a_watched_frame_is_listed_once_on_its_first_write() {
        let mut mem = GuestMemory::new();
        mem.watch(Gfn(1));
        mem.watch(Gfn(3));
        mem.write_u64(Gpa(0x0FF8), 1); // frame 0: not watched
        mem.write_u64(Gpa(0x3000), 1);
        mem.write_u64(Gpa(0x1FFC), 1); // frames 1 and 2
        mem.write_u64(Gpa(0x1000), 1);
        assert_eq!(mem.written_watched(), &[3, 1]);
        mem.clear_written_watched();
        mem.write_u64(Gpa(0x3000), 2);
        assert!(mem.written_watched().is_empty(), "no longer watched");
    }

    #[test]
    fn the_journal_lists_what_was_written_until_it_overflows_or_a_rewind() {
        let mut mem = GuestMemory::new();
        let p = mem.journal_position();
        mem.write_u64(Gpa(0x5000), 1);
        mem.write_u64(Gpa(0x5008), 1);
        mem.write_u64(Gpa(0x1FFC), 1);
        let got: Vec<u64> = mem.written_since(p).unwrap().map(|g| g.0).collect();
        assert_eq!(got, vec![5, 5, 1, 2]);
        // A position taken between two writes of one frame sees the second.
        let p = mem.journal_position();
        mem.write_u64(Gpa(0x1000), 2);
        let got: Vec<u64> = mem.written_since(p).unwrap().map(|g| g.0).collect();
        assert_eq!(got, vec![1]);
        let q = mem.journal_position();
        assert_eq!(mem.written_since(q).unwrap().count(), 0);
        for i in 0..JOURNAL_LEN as u64 {
            mem.write_u64(Gpa(i * 0x1000), 1);
        }
        assert_eq!(mem.written_since(q).unwrap().count(), JOURNAL_LEN);
        mem.write_u64(Gpa(0x10_0000), 1);
        assert!(mem.written_since(q).is_none(), "overflowed");
        let r = mem.journal_position();
        mem.mark();
        mem.rewind();
        assert!(mem.written_since(r).is_none(), "rewound");
        assert!(
            mem.written_since(r + 1000).is_none(),
            "a position from the future"
        );
    }

    #[test]
    fn rewind_without_a_mark_is_a_no_op_and_a_rewind_drops_cached_translations() {
        let mut mem = GuestMemory::new();
        mem.write_u64(Gpa(0), 5);
        mem.rewind();
        assert_eq!(mem.read_u64(Gpa(0)), 5);
        mem.mark();
        mem.watch(Gfn(0));
        let g = mem.generation();
        mem.rewind();
        assert_ne!(mem.generation(), g, "cached translations are dropped");
    }
    proptest::proptest! {
        /// Any writes before and after a mark, over several rounds: each rewind gives memory
        /// equal to a copy taken at the mark, and the dirtied count is the distinct frames
        /// written since.
        #[test]
        fn rewind_equals_the_copy_taken_at_the_mark(
            before in proptest::collection::vec((0u64..0x20_000, 0u64..u64::MAX), 0..40),
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u64..0x20_000, 0u64..u64::MAX), 0..40), 1..4),
        ) {
            let mut mem = GuestMemory::new();
            for (a, v) in before {
                mem.write_u64(Gpa(a), v);
            }
            mem.mark();
            let at_mark = mem.clone();
            for writes in rounds {
                let mut frames = std::collections::BTreeSet::new();
                for (a, v) in writes {
                    mem.write_u64(Gpa(a), v);
                    frames.insert(a >> 12);
                    frames.insert((a + 7) >> 12);
                }
                proptest::prop_assert_eq!(mem.dirtied_since_mark(), frames.len());
                mem.rewind();
                proptest::prop_assert_eq!(&mem, &at_mark);
                proptest::prop_assert_eq!(mem.frame_count(), at_mark.frame_count());
            }
        }
    }
}
