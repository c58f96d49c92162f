//! The invisible decode cache: instructions the fetch decoded, with their memory uses, kept by
//! the bytes fetched and the RIP they were fetched at.
//!
//! A decode is a pure function of the bytes, the RIP (which the next RIP, branch targets and
//! RIP-relative addresses depend on) and the mode (always 64-bit here, with no decoder
//! options). The key holds all of them, and the fetch still reads the bytes from guest memory
//! through paging and EPT on every step before it looks them up, so a hit returns exactly what
//! decoding the same bytes again would: self-modifying code, a remapped code page or a new view
//! simply miss. `MachineConfig::no_decode_cache` turns it off, for checking that it changes no
//! result.
//!
//! Direct-mapped by RIP, [`ENTRIES`] slots allocated on first use; a slot's memory-use list is
//! reused when the slot is refilled, so a warm cache allocates nothing.

use super::decode::{self, Decoded, Insn, MemoryUse, MAX_INSTRUCTION_LEN};

/// Slots in the cache.
pub const ENTRIES: usize = 256;

#[derive(Clone, Debug)]
struct Slot {
    rip: u64,
    /// How many of `bytes` were fetched (the key is the bytes and their count).
    len: u8,
    bytes: [u8; MAX_INSTRUCTION_LEN],
    insn: Insn,
    uses: Vec<MemoryUse>,
}

/// Decoded instructions by bytes and RIP (see the module doc).
#[derive(Clone, Debug, Default)]
pub(crate) struct DecodeCache {
    slots: Vec<Option<Slot>>,
}

fn index(rip: u64) -> usize {
    // Fibonacci hashing of the RIP: consecutive instructions land in different slots.
    (rip.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % ENTRIES
}

impl DecodeCache {
    /// Decodes `bytes` (at most [`MAX_INSTRUCTION_LEN`]) at `rip`, as
    /// [`decode::decode_with_memory`] does, copying the memory uses into `uses`. A hit
    /// decodes nothing and allocates nothing once `uses` has grown to the instruction's count.
    pub(crate) fn decode(
        &mut self,
        bytes: &[u8],
        rip: u64,
        uses: &mut Vec<MemoryUse>,
    ) -> Result<Insn, Decoded> {
        let n = bytes.len().min(MAX_INSTRUCTION_LEN);
        let bytes = &bytes[..n];
        let i = index(rip);
        if let Some(Some(s)) = self.slots.get(i) {
            if s.rip == rip && usize::from(s.len) == n && &s.bytes[..n] == bytes {
                uses.clear();
                uses.extend_from_slice(&s.uses);
                return Ok(s.insn);
            }
        }
        let (insn, decoded) = decode::decode_with_memory(bytes, rip)?;
        uses.clear();
        uses.extend_from_slice(&decoded);
        if self.slots.is_empty() {
            self.slots = vec![None; ENTRIES];
        }
        let mut key = [0u8; MAX_INSTRUCTION_LEN];
        key[..n].copy_from_slice(bytes);
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(Slot {
                rip,
                len: n as u8,
                bytes: key,
                insn,
                uses: decoded,
            });
        }
        Ok(insn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_returns_what_decoding_returns_and_other_bytes_or_rips_miss() {
        let mut c = DecodeCache::default();
        let mut uses = Vec::new();
        // mov [rdi], rax at two RIPs, then rip-relative mov [rip+0x10], rax.
        let mov = [0x48, 0x89, 0x07];
        let riprel = [0x48, 0x89, 0x05, 0x10, 0, 0, 0];
        for (bytes, rip) in [
            (&mov[..], 0x1000u64),
            (&mov[..], 0x1000),
            (&riprel[..], 0x1000),
            (&riprel[..], 0x2000),
            (&riprel[..], 0x1000),
        ] {
            let got = c.decode(bytes, rip, &mut uses);
            let want = decode::decode_with_memory(bytes, rip);
            assert_eq!(
                got.map(|i| (i, uses.clone())),
                want,
                "{bytes:x?} at {rip:#x}"
            );
        }
        // Failures are not cached, and are the decoder's every time.
        for bytes in [&[0x06][..], &[0x48, 0x89][..], &[0x06; 15][..]] {
            for _ in 0..2 {
                assert_eq!(
                    c.decode(bytes, 0x1000, &mut uses).err(),
                    decode::decode_with_memory(bytes, 0x1000).err()
                );
            }
        }
    }
}
