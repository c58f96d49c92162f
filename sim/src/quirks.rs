//! Profiles: one named switch per quirk of VE-SEMANTICS section 2. `hvmi` turns them all on and
//! reproduces HVMI as written; `fixed` turns them all off. Checks and fuzz targets run `fixed`.

use std::fmt;
use std::str::FromStr;

/// The quirk switches (true = behave as HVMI does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Quirks {
    /// Q1: an unsupported write breaks and retries forever (fixed: introcore emulates it).
    pub q1_break_loop: bool,
    /// Q4: BT* register offsets reduced mod 64 (fixed: bit-string addressing).
    pub q4_bt_mod64: bool,
    /// Q5: STOSQ leaves RDI unchanged (fixed: RDI ± 8 by DF).
    pub q5_stosq_rdi: bool,
    /// Q6: RIP advanced after the raise, on top of introcore's (fixed: before the raise).
    pub q6_rip_after_raise: bool,
    /// Q9: XD not monitored (fixed: bit 63 monitored).
    pub q9_xd_unmonitored: bool,
    /// Q10: page walk sets A first and D on a later walk, D also on reads (fixed: decode).
    pub q10_walk_ad_order: bool,
    /// Q15: empty cache slot is 0 (fixed: u64::MAX).
    pub q15_empty_slot_zero: bool,
    /// Q16: no cache updates once unload is pending (fixed: evictions still apply).
    pub q16_no_evict_on_unload: bool,
    /// Q17: fill counter only grows, survives redeploy (fixed: holes first, reset on deploy).
    pub q17_fill_counter: bool,
    /// Q18: VeIgnoredTotal counts breaks and early walk exits (fixed: identities hold).
    pub q18_stats: bool,
    /// Q19: CPU-map key without OR 0xFFF for G = 1 (fixed: the LSL value).
    pub q19_cpumap_g: bool,
    /// Q20: no bound on the CPU index; unused slots 0 (fixed: 0xFFFFFFFF and checks).
    pub q20_cpu_index: bool,
    /// Q24: EPTP index forced to 0 during dispatch (fixed: the untrusted index).
    pub q24_eptp_zero: bool,
    /// Q27: upper half of a monitored user PML4 raises every time (fixed: cached).
    pub q27_user_pml4: bool,
    /// Q31: B38's sum wraps mod 2^64 under 0x67 (fixed: mod 2^32).
    pub q31_addr32: bool,
}

/// The named switch list, in table order, for reports and parsing.
pub const QUIRK_NAMES: [&str; 15] = [
    "Q1", "Q4", "Q5", "Q6", "Q9", "Q10", "Q15", "Q16", "Q17", "Q18", "Q19", "Q20", "Q24", "Q27",
    "Q31",
];

impl Quirks {
    /// Every quirk off.
    pub const fn fixed() -> Self {
        Quirks {
            q1_break_loop: false,
            q4_bt_mod64: false,
            q5_stosq_rdi: false,
            q6_rip_after_raise: false,
            q9_xd_unmonitored: false,
            q10_walk_ad_order: false,
            q15_empty_slot_zero: false,
            q16_no_evict_on_unload: false,
            q17_fill_counter: false,
            q18_stats: false,
            q19_cpumap_g: false,
            q20_cpu_index: false,
            q24_eptp_zero: false,
            q27_user_pml4: false,
            q31_addr32: false,
        }
    }

    /// Every quirk on: HVMI as written.
    pub const fn hvmi() -> Self {
        Quirks {
            q1_break_loop: true,
            q4_bt_mod64: true,
            q5_stosq_rdi: true,
            q6_rip_after_raise: true,
            q9_xd_unmonitored: true,
            q10_walk_ad_order: true,
            q15_empty_slot_zero: true,
            q16_no_evict_on_unload: true,
            q17_fill_counter: true,
            q18_stats: true,
            q19_cpumap_g: true,
            q20_cpu_index: true,
            q24_eptp_zero: true,
            q27_user_pml4: true,
            q31_addr32: true,
        }
    }

    /// The switch named `name` (`Q1`, `q5`, ...), mutably.
    pub fn switch_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name.to_ascii_uppercase().as_str() {
            "Q1" => &mut self.q1_break_loop,
            "Q4" => &mut self.q4_bt_mod64,
            "Q5" => &mut self.q5_stosq_rdi,
            "Q6" => &mut self.q6_rip_after_raise,
            "Q9" => &mut self.q9_xd_unmonitored,
            "Q10" => &mut self.q10_walk_ad_order,
            "Q15" => &mut self.q15_empty_slot_zero,
            "Q16" => &mut self.q16_no_evict_on_unload,
            "Q17" => &mut self.q17_fill_counter,
            "Q18" => &mut self.q18_stats,
            "Q19" => &mut self.q19_cpumap_g,
            "Q20" => &mut self.q20_cpu_index,
            "Q24" => &mut self.q24_eptp_zero,
            "Q27" => &mut self.q27_user_pml4,
            "Q31" => &mut self.q31_addr32,
            _ => return None,
        })
    }

    /// The switches that are on, in table order.
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut copy = *self;
        QUIRK_NAMES
            .iter()
            .filter(|n| copy.switch_mut(n).is_some_and(|s| *s))
            .copied()
            .collect()
    }

    /// The monitored-bits constant (B139), with XD unless Q9.
    pub const fn monitored_bits(&self) -> u64 {
        if self.q9_xd_unmonitored {
            MONITORED_BITS_HVMI
        } else {
            MONITORED_BITS_FIXED
        }
    }

    /// The empty-slot marker of the cache (Q15).
    pub const fn empty_slot(&self) -> u64 {
        if self.q15_empty_slot_zero {
            0
        } else {
            u64::MAX
        }
    }
}

/// `HOOK_PTS_MONITORED_BITS` as HVMI has it: P, RW, US, PS and the PFN bits 12..51.
pub const MONITORED_BITS_HVMI: u64 = 0x000F_FFFF_FFFF_F087;
/// The `fixed` set: HVMI's plus XD (bit 63). I1 always uses this set.
pub const MONITORED_BITS_FIXED: u64 = MONITORED_BITS_HVMI | 1 << 63;

/// A named profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Every quirk off (the default).
    #[default]
    Fixed,
    /// Every quirk on.
    Hvmi,
}

impl Profile {
    /// The switches of this profile.
    pub const fn quirks(self) -> Quirks {
        match self {
            Profile::Fixed => Quirks::fixed(),
            Profile::Hvmi => Quirks::hvmi(),
        }
    }
}

impl Profile {
    /// The profile a set of switches is: `hvmi` when they are HVMI's, else `fixed` (fixed with
    /// switches on, as the quirk report's traces are).
    pub fn named(q: Quirks) -> String {
        if q == Quirks::hvmi() { "hvmi" } else { "fixed" }.to_string()
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(Profile::Fixed),
            "hvmi" => Ok(Profile::Hvmi),
            _ => Err(format!("'{s}' is not a profile (fixed or hvmi)")),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Fixed => "fixed",
            Profile::Hvmi => "hvmi",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b139_monitored_bits_and_q9_xd() {
        assert_eq!(Quirks::hvmi().monitored_bits(), 0x000F_FFFF_FFFF_F087);
        assert_eq!(Quirks::fixed().monitored_bits(), 0x800F_FFFF_FFFF_F087);
    }

    #[test]
    fn profiles_are_all_on_and_all_off() {
        assert_eq!(Quirks::hvmi().enabled().len(), QUIRK_NAMES.len());
        assert!(Quirks::fixed().enabled().is_empty());
        let mut q = Quirks::fixed();
        *q.switch_mut("q5").unwrap() = true;
        assert_eq!(q.enabled(), ["Q5"]);
    }
}
