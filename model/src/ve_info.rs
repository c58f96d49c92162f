//! The hardware part of the #VE information area (HW §2.2): offsets 0x00–0x27, read and written
//! by guest-physical address. The processor writes it without any EPT check.
//!
//! HVMI's use of the rest of the page (saved registers from 0x30, counters) belongs to the agent
//! in crate `vesim`.

use crate::addr::{Gla, Gpa, ViewId};
use crate::ept::EptQualification;
use crate::memory::GuestMemory;

/// Offset of the exit reason (u32, 48 for EPT violations).
pub const OFFSET_REASON: u64 = 0x00;
/// Offset of the semaphore (u32): 0xFFFFFFFF after delivery, cleared by software.
pub const OFFSET_SEMAPHORE: u64 = 0x04;
/// Offset of the exit qualification (u64).
pub const OFFSET_QUALIFICATION: u64 = 0x08;
/// Offset of the guest-linear address (u64).
pub const OFFSET_GLA: u64 = 0x10;
/// Offset of the guest-physical address (u64).
pub const OFFSET_GPA: u64 = 0x18;
/// Offset of the EPTP index (u16).
pub const OFFSET_EPTP_INDEX: u64 = 0x20;
/// Size of the hardware-owned part of the area.
pub const HARDWARE_BYTES: u64 = 0x28;
/// The value the processor writes to the semaphore on delivery.
pub const SEMAPHORE_BUSY: u32 = 0xFFFF_FFFF;
/// Basic exit reason for an EPT violation.
pub const REASON_EPT_VIOLATION: u32 = 48;

/// The fields of the information area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VeInfo {
    /// Exit reason (48).
    pub reason: u32,
    /// Semaphore dword at +4.
    pub semaphore: u32,
    /// Exit qualification.
    pub qualification: EptQualification,
    /// Guest-linear address.
    pub gla: Gla,
    /// Guest-physical address.
    pub gpa: Gpa,
    /// EPTP index (16 bits).
    pub eptp_index: ViewId,
}

impl VeInfo {
    /// Reads the area at `base`.
    pub fn read(mem: &GuestMemory, base: Gpa) -> VeInfo {
        VeInfo {
            reason: mem.read_u32(base.wrapping_add(OFFSET_REASON)),
            semaphore: mem.read_u32(base.wrapping_add(OFFSET_SEMAPHORE)),
            qualification: EptQualification::from_bits_retain(
                mem.read_u64(base.wrapping_add(OFFSET_QUALIFICATION)),
            ),
            gla: Gla(mem.read_u64(base.wrapping_add(OFFSET_GLA))),
            gpa: Gpa(mem.read_u64(base.wrapping_add(OFFSET_GPA))),
            eptp_index: ViewId(mem.read_u16(base.wrapping_add(OFFSET_EPTP_INDEX))),
        }
    }
    /// The fields of the area's bytes as read by a guest (`HARDWARE_BYTES` of them).
    pub fn from_bytes(b: &[u8; HARDWARE_BYTES as usize]) -> VeInfo {
        let u16_at = |o: u64| u16::from_le_bytes([b[o as usize], b[o as usize + 1]]);
        let u32_at = |o: u64| u32::from(u16_at(o)) | u32::from(u16_at(o + 2)) << 16;
        let u64_at = |o: u64| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        VeInfo {
            reason: u32_at(OFFSET_REASON),
            semaphore: u32_at(OFFSET_SEMAPHORE),
            qualification: EptQualification::from_bits_retain(u64_at(OFFSET_QUALIFICATION)),
            gla: Gla(u64_at(OFFSET_GLA)),
            gpa: Gpa(u64_at(OFFSET_GPA)),
            eptp_index: ViewId(u16_at(OFFSET_EPTP_INDEX)),
        }
    }
    /// Writes every field to the area at `base` (the EPTP index as 2 bytes, as hardware).
    pub fn write(&self, mem: &mut GuestMemory, base: Gpa) {
        mem.write_u32(base.wrapping_add(OFFSET_REASON), self.reason);
        mem.write_u32(base.wrapping_add(OFFSET_SEMAPHORE), self.semaphore);
        mem.write_u64(
            base.wrapping_add(OFFSET_QUALIFICATION),
            self.qualification.bits(),
        );
        mem.write_u64(base.wrapping_add(OFFSET_GLA), self.gla.0);
        mem.write_u64(base.wrapping_add(OFFSET_GPA), self.gpa.0);
        mem.write_u16(base.wrapping_add(OFFSET_EPTP_INDEX), self.eptp_index.0);
    }
    /// Reads only the semaphore dword.
    pub fn semaphore(mem: &GuestMemory, base: Gpa) -> u32 {
        mem.read_u32(base.wrapping_add(OFFSET_SEMAPHORE))
    }
    /// Writes only the semaphore dword (what the agent does to re-arm #VE).
    pub fn set_semaphore(mem: &mut GuestMemory, base: Gpa, value: u32) {
        mem.write_u32(base.wrapping_add(OFFSET_SEMAPHORE), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_2_2_layout_offsets() {
        let mut mem = GuestMemory::new();
        let base = Gpa(0x7000);
        let info = VeInfo {
            reason: 48,
            semaphore: SEMAPHORE_BUSY,
            qualification: EptQualification::from_bits_retain(0x1AB),
            gla: Gla(0xFFFF_F680_0000_1008),
            gpa: Gpa(0x12_3008),
            eptp_index: ViewId(0x1FF),
        };
        info.write(&mut mem, base);
        let mut raw = [0u8; 0x28];
        mem.read(base, &mut raw);
        assert_eq!(&raw[0..4], &48u32.to_le_bytes());
        assert_eq!(&raw[4..8], &[0xFF; 4]);
        assert_eq!(&raw[8..16], &0x1ABu64.to_le_bytes());
        assert_eq!(&raw[0x10..0x18], &0xFFFF_F680_0000_1008u64.to_le_bytes());
        assert_eq!(&raw[0x18..0x20], &0x12_3008u64.to_le_bytes());
        assert_eq!(&raw[0x20..0x22], &[0xFF, 0x01]);
        assert_eq!(
            &raw[0x22..0x28],
            &[0; 6],
            "hardware writes 16 bits of EPTP index"
        );
    }

    /// The guest's view of the bytes (what the agent parses) equals the fields as written,
    /// for bytes laid out by hand per HW §2.2.
    #[test]
    fn from_bytes_reads_the_hw_2_2_layout() {
        let mut raw = [0u8; 0x28];
        raw[0..4].copy_from_slice(&48u32.to_le_bytes());
        raw[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        raw[8..16].copy_from_slice(&0x1ABu64.to_le_bytes());
        raw[0x10..0x18].copy_from_slice(&0xFFFF_F680_0000_1008u64.to_le_bytes());
        raw[0x18..0x20].copy_from_slice(&0x12_3008u64.to_le_bytes());
        raw[0x20..0x22].copy_from_slice(&[0xFF, 0x01]);
        raw[0x22..].fill(0xEE);
        let v = VeInfo::from_bytes(&raw);
        assert_eq!(v.reason, 48);
        assert_eq!(v.semaphore, 0x1234_5678);
        assert_eq!(v.qualification.bits(), 0x1AB);
        assert_eq!(v.gla, Gla(0xFFFF_F680_0000_1008));
        assert_eq!(v.gpa, Gpa(0x12_3008));
        assert_eq!(
            v.eptp_index,
            ViewId(0x1FF),
            "16 bits of EPTP index, the rest ignored"
        );
    }
}
