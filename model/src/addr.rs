//! Address newtypes: guest-physical (`Gpa`), guest-linear (`Gla`), guest frame numbers (`Gfn`)
//! EPT view indices (`ViewId`) and VCPU indices (`VcpuId`).
//!
//! Arithmetic goes through named methods that say how they overflow; hardware address
//! arithmetic wraps, so `wrapping_add` is what the walker and the CPU use.

use std::fmt;

/// Size of a 4 KiB page in bytes.
pub const PAGE_SIZE: u64 = 0x1000;
/// Mask of the offset bits inside a 4 KiB page.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// Number of physical-address bits of the modelled processor (CPUID 80000008H:EAX\[7:0\]).
pub const MAXPHYADDR: u32 = 46;
/// Mask of the bits a guest-physical address may use (bits `MAXPHYADDR-1:0`).
pub const PHYS_ADDR_MASK: u64 = (1u64 << MAXPHYADDR) - 1;

/// A guest-physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gpa(pub u64);

/// A guest-linear (virtual) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gla(pub u64);

/// A guest frame number: a guest-physical address shifted right by 12.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gfn(pub u64);

/// A VCPU's index in its machine (0, 1, ...), written in decimal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[repr(transparent)]
pub struct VcpuId(pub usize);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An EPTP-list index, i.e. an EPT view (0..512).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct ViewId(pub u16);

impl ViewId {
    /// Number of entries in the EPTP list (HW §6).
    pub const COUNT: usize = 512;
}

impl Gpa {
    /// The frame that holds this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> 12)
    }
    /// Offset of this address inside its 4 KiB page.
    pub const fn page_offset(self) -> u64 {
        self.0 & PAGE_MASK
    }
    /// This address rounded down to its 4 KiB page.
    pub const fn page_base(self) -> Gpa {
        Gpa(self.0 & !PAGE_MASK)
    }
    /// Adds `delta`, wrapping modulo 2^64.
    pub const fn wrapping_add(self, delta: u64) -> Gpa {
        Gpa(self.0.wrapping_add(delta))
    }
    /// Adds `delta`, or `None` on overflow.
    pub fn checked_add(self, delta: u64) -> Option<Gpa> {
        self.0.checked_add(delta).map(Gpa)
    }
    /// Whether the address fits in `MAXPHYADDR` bits.
    pub const fn is_valid(self) -> bool {
        self.0 & !PHYS_ADDR_MASK == 0
    }
}

impl Gla {
    /// Whether bits 63:47 are all equal to bit 47 (4-level paging, HW §4.1).
    pub const fn is_canonical(self) -> bool {
        let top = (self.0 as i64) >> 47;
        top == 0 || top == -1
    }
    /// Offset of this address inside its 4 KiB page.
    pub const fn page_offset(self) -> u64 {
        self.0 & PAGE_MASK
    }
    /// This address rounded down to its 4 KiB page.
    pub const fn page_base(self) -> Gla {
        Gla(self.0 & !PAGE_MASK)
    }
    /// Adds `delta`, wrapping modulo 2^64 (what address generation does in 64-bit mode).
    pub const fn wrapping_add(self, delta: u64) -> Gla {
        Gla(self.0.wrapping_add(delta))
    }
    /// Subtracts `delta`, wrapping modulo 2^64.
    pub const fn wrapping_sub(self, delta: u64) -> Gla {
        Gla(self.0.wrapping_sub(delta))
    }
    /// Adds `delta`, or `None` on overflow.
    pub fn checked_add(self, delta: u64) -> Option<Gla> {
        self.0.checked_add(delta).map(Gla)
    }
    /// The paging-structure index (9 bits) used at `level` (4 = PML4 ... 1 = PT).
    pub const fn table_index(self, level: u8) -> u64 {
        (self.0 >> (12 + 9 * (level as u32 - 1))) & 0x1FF
    }
    /// Sign-extends bit 47 into bits 63:48.
    pub const fn canonicalize(self) -> Gla {
        Gla((((self.0 << 16) as i64) >> 16) as u64)
    }
}

impl Gfn {
    /// The first guest-physical address of this frame.
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << 12)
    }
}

macro_rules! hex_fmt {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:#x})"), self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    )*};
}
hex_fmt!(Gpa, Gla, Gfn, ViewId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_4_1_canonical_boundaries() {
        let table = [
            (0x0000_7FFF_FFFF_FFFF, true),
            (0x0000_8000_0000_0000, false),
            (0xFFFF_7FFF_FFFF_FFFF, false),
            (0xFFFF_8000_0000_0000, true),
            (0xFFFF_FFFF_FFFF_FFFF, true),
            (0, true),
        ];
        for (a, ok) in table {
            assert_eq!(Gla(a).is_canonical(), ok, "{a:#x}");
        }
    }

    #[test]
    fn table_indices_of_a_self_map_address() {
        // PML4 index 0x1ED at every level: the self-map page of the PML4 itself.
        let idx = 0x1EDu64;
        let gla = Gla(idx << 39 | idx << 30 | idx << 21 | idx << 12).canonicalize();
        assert_eq!(gla.0, 0xFFFF_F6FB_7DBE_D000);
        for level in 1..=4 {
            assert_eq!(gla.table_index(level), idx);
        }
    }
}
