//! The agent's instruction fetch reads exactly what HVMI's agent reads.
//!
//! `VeHandlePtWrite` calls `NdDecodeEx(&instrux, RIP, 16, ND_CODE_64, ND_DATA_64)`, and
//! bddisasm copies `min(16, ND_MAX_INSTRUCTION_LENGTH)` = 15 bytes from RIP into the zeroed
//! `InstructionBytes[16]` before decoding; the raise copies those 16 bytes to the information
//! page's `Instruction` (0x260). So, from page geometry alone: the fetch faults exactly when
//! RIP + 14 lies on a page that is not present, and `Instruction[15]` is 0 whatever the guest
//! has at RIP + 15. The expected values below come from that rule, never from a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim::agent::AgentOutcome;
use vesim::layout::veinfo;
use vesim::quirks::Profile;
use vesim::verdict::{run_observed, VerdictRequest};
use vesim_model::vcpu::Gpr;
use vesim_model::Gpa;

/// An entry address outside every page the guest model uses.
const ENTRY: u64 = 0xFFFF_F800_0050_0010;
/// The page the instruction starts on.
const PAGE: u64 = 0x40_0000;
/// `mov [rax], rbx`.
const MOV: [u8; 3] = [0x48, 0x89, 0x18];

fn request(profile: Profile, offset: u64, map_next_page: bool) -> VerdictRequest {
    VerdictRequest {
        bytes: MOV.to_vec(),
        regs: [(Gpr::Rax, ENTRY), (Gpr::Rbx, 0x2003)]
            .into_iter()
            .collect(),
        rip: PAGE + offset,
        old: 0x1003,
        profile,
        map_next_page,
        ..VerdictRequest::default()
    }
}

#[test]
fn the_fetch_reads_15_bytes_and_faults_only_where_they_fault() {
    for profile in [Profile::Hvmi, Profile::Fixed] {
        for offset in [0xFF0u64, 0xFF1, 0xFF2] {
            for next in [false, true] {
                let req = request(profile, offset, next);
                let (v, w) =
                    run_observed(&req, |_| (), |(), _, w| w.clone()).expect("the request is valid");
                // Bytes RIP..RIP+14 are fetched; byte 14 is on the next page from 0xFF2 on.
                let last_fetched = offset + 14;
                let faults = last_fetched >= 0x1000 && !next;
                let what = format!("{profile:?} offset {offset:#x} next page {next}");
                if faults {
                    assert_eq!(v.outcome, None, "{what}");
                    let stop = v.stop.clone().unwrap_or_default();
                    assert!(stop.starts_with("agent_fault"), "{what}: {stop}");
                    continue;
                }
                assert_eq!(v.stop, None, "{what}");
                // The PFN changes and the entry is neither cached nor known: raised in both.
                assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{what}");
                assert_eq!(v.rip, PAGE + offset + 3, "{what}");
                // The information page's Instruction: the 15 guest bytes, then 0.
                let page = w.vcpus[0].ve_info.expect("VCPU 0 has an information page");
                let mut copied = [0u8; 16];
                w.machine
                    .mem
                    .read(page.wrapping_add(veinfo::INSTRUCTION), &mut copied);
                let mut guest = [0u8; 16];
                for (i, b) in guest.iter_mut().enumerate() {
                    let g = w.guest.phys(&w.machine, PAGE + offset + i as u64);
                    *b = g.map_or(0, |g: Gpa| {
                        let mut x = [0u8];
                        w.machine.mem.read(g, &mut x);
                        x[0]
                    });
                }
                assert_eq!(copied[..15], guest[..15], "{what}");
                assert_eq!(copied[..3], MOV, "{what}");
                assert_eq!(copied[15], 0, "{what}: a 16th guest byte was copied");
                // Where byte 15 lies on the INT3-filled next page, the guest has 0xCC there.
                if offset + 15 >= 0x1000 && next {
                    assert_eq!(guest[15], 0xCC, "{what}");
                }
            }
        }
    }
}

#[test]
fn an_instruction_across_the_page_end_maps_both_pages_and_decodes() {
    // At 0xFFE the instruction's third byte is on the next page: it is the instruction's own
    // byte, so the page is present and the fetch of 15 bytes does not fault.
    for profile in [Profile::Hvmi, Profile::Fixed] {
        let v = vesim::verdict::run(&request(profile, 0xFFE, false)).unwrap();
        assert_eq!(v.stop, None);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
        assert_eq!(v.rip, PAGE + 0xFFE + 3);
    }
}
