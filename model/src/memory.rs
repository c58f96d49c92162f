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
/// It also keeps a write generation for the MMU's translation cache: frames can be watched
/// (the paging-structure frames a cached translation read), and any write to a watched frame
/// bumps the generation, which drops every cached translation. Equality is the contents only.
#[derive(Clone, Default)]
pub struct GuestMemory {
    frames: FastMap<u64, Box<Frame>>,
    watched: FastMap<u64, ()>,
    generation: u64,
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
            .filter_map(move |k| self.frames.get(&k).map(|v| (Gfn(k), &**v)))
    }

    /// The frame `gfn`, if it was ever written.
    pub fn frame(&self, gfn: Gfn) -> Option<&Frame> {
        self.frames.get(&gfn.0).map(|f| &**f)
    }

    /// Bumps [`GuestMemory::generation`] on the next write to frame `gfn`.
    pub fn watch(&mut self, gfn: Gfn) {
        self.watched.insert(gfn.0, ());
    }

    /// Changes whenever a watched frame is written (the watch list then starts empty).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn frame_mut(&mut self, gfn: Gfn) -> &mut Frame {
        if !self.watched.is_empty() && self.watched.contains_key(&gfn.0) {
            self.generation += 1;
            self.watched.clear();
        }
        self.frames
            .entry(gfn.0)
            .or_insert_with(|| Box::new([0u8; PAGE_SIZE as usize]))
    }

    /// Reads `buf.len()` bytes starting at `gpa` (may cross frames; wraps at 2^64).
    pub fn read(&self, gpa: Gpa, buf: &mut [u8]) {
        let mut addr = gpa;
        let mut done = 0;
        while done < buf.len() {
            let off = addr.page_offset() as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            match self.frames.get(&addr.gfn().0) {
                Some(frame) => buf[done..done + n].copy_from_slice(&frame[off..off + n]),
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
                Some(frame) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&frame[off..off + 8]);
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
}
