//! 2. Rejection order (VE-SEMANTICS section 2): the first defect is the reason.

use super::fidelity::FIDELITY_RIP;
use crate::kit::verdict::accepted;
use vesim::agent::{AgentOutcome, RejectReason};
use vesim::layout;
use vesim::quirks::Profile;
use vesim::verdict::{self, Verdict, VerdictRequest};
use vesim_model::vcpu::Gpr;

/// The entry of the rejection rows (8-aligned, outside every region the guest model uses).
const T: u64 = 0x1000_0000;
/// A stack pointer outside the kernel stacks, for the explicit `[rsp+x]` rows.
const RSP_ELSEWHERE: u64 = 0xFFFF_A000_0010_0000;

/// One hand-made encoding and the reason each profile reports (`None`: accepted).
struct Row {
    what: &'static str,
    bytes: &'static [u8],
    regs: &'static [(Gpr, u64)],
    /// The faulting GLA; `None`: the reference CPU's first access.
    gla: Option<u64>,
    cs: u16,
    fixed: Option<RejectReason>,
    hvmi: Option<RejectReason>,
}

/// The reason is the same in both profiles.
const fn both(
    what: &'static str,
    bytes: &'static [u8],
    regs: &'static [(Gpr, u64)],
    gla: Option<u64>,
    reason: Option<RejectReason>,
) -> Row {
    Row {
        what,
        bytes,
        regs,
        gla,
        cs: layout::KERNEL_CS,
        fixed: reason,
        hvmi: reason,
    }
}

const RAX_T: &[(Gpr, u64)] = &[(Gpr::Rax, T), (Gpr::Rbx, 0x2003)];
const RDI_T: &[(Gpr, u64)] = &[(Gpr::Rdi, T), (Gpr::Rax, 0x2003), (Gpr::Rcx, 1)];

/// The table. Reasons are worked out from VE-SEMANTICS section 2 and bddisasm's meanings:
/// `IsRepeated` only for F2/F3 on a string instruction, `HasSeg` (the pinned bddisasm 1.x in
/// 64-bit mode) for 2E/3E/64/65 and not for 26/36, `StackAccess` only for implicit stack
/// accesses.
fn rejection_rows() -> Vec<Row> {
    use RejectReason::*;
    // RIP is 0x400000: a RIP-relative operand of an instruction of length n with disp32 d is
    // at 0x400000 + n + d.
    vec![
        Row {
            what: "user CS, rep es stosq (CS before everything)",
            bytes: &[0xF3, 0x26, 0x48, 0xAB],
            regs: RDI_T,
            gla: Some(T),
            cs: 0x33,
            fixed: Some(CsNotKernel),
            hvmi: Some(CsNotKernel),
        },
        Row {
            what: "kernel-mode CS 0x08 (not exactly 0x10), undecodable bytes",
            bytes: &[0x06],
            regs: RAX_T,
            gla: Some(T),
            cs: 0x08,
            fixed: Some(CsNotKernel),
            hvmi: Some(CsNotKernel),
        },
        both(
            "es lock mov (LOCK on MOV is #UD)",
            &[0x26, 0xF0, 0x48, 0x89, 0x18],
            RAX_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "rep lock stosq (LOCK on STOS is #UD)",
            &[0xF3, 0xF0, 0x48, 0xAB],
            RDI_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "push es (invalid in 64-bit mode)",
            &[0x06],
            RAX_T,
            Some(T),
            Some(DecodeError),
        ),
        both(
            "rep es stosq: REP before the segment prefix",
            &[0xF3, 0x26, 0x48, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both(
            "repne fs stosq",
            &[0xF2, 0x64, 0x48, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both(
            "rep stosd: REP before the size",
            &[0xF3, 0xAB],
            RDI_T,
            None,
            Some(Rep),
        ),
        both("rep movsq", &[0xF3, 0x48, 0xA5], RDI_T, Some(T), Some(Rep)),
        both(
            "F3 on MOV is not REP, and ES is not HasSeg: f3 es mov [rax], rbx is emulated",
            &[0xF3, 0x26, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "ds prefix (ignored in 64-bit mode) still counts",
            &[0x3E, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            Some(SegmentPrefix),
        ),
        both(
            "ss prefix on a plain mov: not HasSeg in 1.x's 64-bit mode, emulated",
            &[0x36, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "cs prefix with a RIP-relative operand",
            // 2E 48 89 05 d32: length 8, 0x400008 + 0x0FBF_FFF8 = T.
            &[0x2E, 0x48, 0x89, 0x05, 0xF8, 0xFF, 0xBF, 0x0F],
            RAX_T,
            None,
            Some(SegmentPrefix),
        ),
        both(
            "fs push qword [rax]: segment before stack",
            &[0x64, 0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(SegmentPrefix),
        ),
        both(
            "gs add [rax+1], rbx: segment before misaligned and unsupported",
            &[0x65, 0x48, 0x01, 0x58, 0x01],
            RAX_T,
            Some(T + 1),
            Some(SegmentPrefix),
        ),
        both(
            "RIP-relative 4-byte mov",
            // 89 05 d32: length 6, 0x400006 + 0x0FBF_FFFA = T.
            &[0x89, 0x05, 0xFA, 0xFF, 0xBF, 0x0F],
            RAX_T,
            None,
            Some(RipRelative),
        ),
        both(
            "RIP-relative misaligned qword mov",
            // 48 89 05 d32: length 7, 0x400007 + 0x0FBF_FFFA = T + 1.
            &[0x48, 0x89, 0x05, 0xFA, 0xFF, 0xBF, 0x0F],
            RAX_T,
            Some(T + 1),
            Some(RipRelative),
        ),
        both(
            "push word [rip+x]: RIP-relative before stack and size",
            // 66 FF 35 d32: length 7, 0x400007 + 0x0FBF_FFF9 = T.
            &[0x66, 0xFF, 0x35, 0xF9, 0xFF, 0xBF, 0x0F],
            RAX_T,
            Some(T),
            Some(RipRelative),
        ),
        both(
            "push qword [rax] (FF 30) is an implicit stack access",
            &[0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "pop qword [rax]",
            &[0x8F, 0x00],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "push word [rax]: stack before size",
            &[0x66, 0xFF, 0x30],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "push rax: stack before not-memory",
            &[0x50],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both(
            "explicit [rsp+0x4000] with a 4-byte operand is a size defect, not a stack access",
            &[0x89, 0x84, 0x24, 0x00, 0x40, 0x00, 0x00],
            &[(Gpr::Rsp, RSP_ELSEWHERE), (Gpr::Rax, 0x2003)],
            None,
            Some(Size),
        ),
        both(
            "explicit [rsp+0x4000] qword mov is accepted",
            &[0x48, 0x89, 0x84, 0x24, 0x00, 0x40, 0x00, 0x00],
            &[(Gpr::Rsp, RSP_ELSEWHERE), (Gpr::Rax, 0x2003)],
            None,
            None,
        ),
        both(
            "mov rbx, [rax]: operand 0 is a register",
            &[0x48, 0x8B, 0x18],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov ebx, [rax]: not-memory before size",
            &[0x8B, 0x18],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov rbx, rax: no memory operand at all",
            &[0x48, 0x89, 0xC3],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "ud2: no operand",
            &[0x0F, 0x0B],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "mov [rax], ebx with a GLA mismatch and misaligned: size first",
            &[0x89, 0x18],
            &[(Gpr::Rax, T + 3), (Gpr::Rbx, 0x2003)],
            Some(T + 0x10),
            Some(Size),
        ),
        both(
            "mov [rax], ds: a 2-byte store",
            &[0x48, 0x8C, 0x18],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "movaps [rax], xmm0: a 16-byte store",
            &[0x0F, 0x29, 0x00],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "cmpxchg16b [rax]",
            &[0x48, 0x0F, 0xC7, 0x08],
            RAX_T,
            Some(T),
            Some(Size),
        ),
        both("stosw", &[0x66, 0xAB], RDI_T, None, Some(Size)),
        both(
            "mov [rax], rbx with RAX misaligned and the GLA elsewhere: mismatch first",
            &[0x48, 0x89, 0x18],
            &[(Gpr::Rax, T + 3), (Gpr::Rbx, 0x2003)],
            Some(T + 0x13),
            Some(GlaMismatch),
        ),
        both(
            "add [rax], rbx with the GLA elsewhere: mismatch before unsupported",
            &[0x48, 0x01, 0x18],
            RAX_T,
            Some(T + 8),
            Some(GlaMismatch),
        ),
        both(
            "add [rax], rbx misaligned: misaligned before unsupported",
            &[0x48, 0x01, 0x18],
            &[(Gpr::Rax, T + 4), (Gpr::Rbx, 1)],
            None,
            Some(Misaligned),
        ),
        both(
            "lock or [rax], rbx misaligned",
            &[0xF0, 0x48, 0x09, 0x18],
            &[(Gpr::Rax, T + 1), (Gpr::Rbx, 1)],
            None,
            Some(Misaligned),
        ),
        both(
            "add [rax], rbx",
            &[0x48, 0x01, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "xadd [rax], rbx",
            &[0x48, 0x0F, 0xC1, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movnti [rax], rbx",
            &[0x48, 0x0F, 0xC3, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "inc qword [rax]",
            &[0x48, 0xFF, 0x00],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movq [rax], xmm0",
            &[0x66, 0x48, 0x0F, 0x7E, 0x00],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "bt [rax], rbx (reads only; RBX = 5 keeps the bit-string address at RAX)",
            &[0x48, 0x0F, 0xA3, 0x18],
            &[(Gpr::Rax, T), (Gpr::Rbx, 5)],
            Some(T),
            Some(UnsupportedInstruction),
        ),
        both(
            "lock add [rax], rbx",
            &[0xF0, 0x48, 0x01, 0x18],
            RAX_T,
            None,
            Some(UnsupportedInstruction),
        ),
        both(
            "movsq: a string destination is memory operand 0, but MOVS is not emulated",
            &[0x48, 0xA5],
            RDI_T,
            Some(T),
            Some(UnsupportedInstruction),
        ),
        both(
            "movsq with RDI misaligned: misaligned before unsupported",
            &[0x48, 0xA5],
            &[(Gpr::Rdi, T + 2)],
            Some(T + 2),
            Some(Misaligned),
        ),
        both(
            "stosq with the GLA elsewhere than RDI",
            &[0x48, 0xAB],
            RDI_T,
            Some(T + 8),
            Some(GlaMismatch),
        ),
        both(
            "stosq with RDI misaligned",
            &[0x48, 0xAB],
            &[(Gpr::Rdi, T + 4), (Gpr::Rax, 0x2003)],
            None,
            Some(Misaligned),
        ),
        both(
            "xchg rbx, rax: register operands only",
            &[0x48, 0x87, 0xC3],
            RAX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "cmpxchg [rax], ebx",
            &[0x0F, 0xB1, 0x18],
            RAX_T,
            None,
            Some(Size),
        ),
        both(
            "F3 48 89 18 is not REP (XRELEASE mov): accepted",
            &[0xF3, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "F2 on a plain mov is not REP either: accepted",
            &[0xF2, 0x48, 0x89, 0x18],
            RAX_T,
            None,
            None,
        ),
        both(
            "stosq [edi] under 0x67: EDI is the address, accepted",
            &[0x67, 0x48, 0xAB],
            &[(Gpr::Rdi, 0xABCD_0000_0000_0000 | T), (Gpr::Rax, 0x2003)],
            None,
            None,
        ),
        Row {
            what: "bts [rax], rbx with RBX = 64: bit-string address rax + 8 (Q4)",
            bytes: &[0x48, 0x0F, 0xAB, 0x18],
            regs: &[(Gpr::Rax, T - 8), (Gpr::Rbx, 64)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
        Row {
            what: "btr [rax], rbx with RBX = -1: bit-string address rax - 8 (Q4)",
            bytes: &[0x48, 0x0F, 0xB3, 0x18],
            regs: &[(Gpr::Rax, T + 8), (Gpr::Rbx, u64::MAX)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
        Row {
            what: "mov [eax+0x10], rbx with EAX = 0xFFFFFFF8: wraps to 8 under 0x67 (Q31)",
            bytes: &[0x67, 0x48, 0x89, 0x58, 0x10],
            regs: &[(Gpr::Rax, 0xFFFF_FFF8), (Gpr::Rbx, 0x2003)],
            gla: None,
            cs: layout::KERNEL_CS,
            fixed: None,
            hvmi: Some(GlaMismatch),
        },
    ]
}

fn run_row(row: &Row, profile: Profile) -> Verdict {
    let req = VerdictRequest {
        bytes: row.bytes.to_vec(),
        regs: row.regs.iter().copied().collect(),
        rflags: 0x2,
        rip: FIDELITY_RIP,
        old: 0x1003,
        gla: row.gla,
        cs: row.cs,
        cached: false,
        monitored: true,
        profile,
        map_next_page: false,
    };
    verdict::run(&req).unwrap_or_else(|e| panic!("{}: {e}", row.what))
}

/// The rows that disagree with their expected reasons, one line each.
fn row_failures(rows: &[Row]) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows {
        for (profile, expected) in [(Profile::Fixed, row.fixed), (Profile::Hvmi, row.hvmi)] {
            let v = run_row(row, profile);
            let ok = match expected {
                None => accepted(v.outcome) && v.reason.is_none(),
                Some(r) => {
                    let refused = match profile {
                        Profile::Fixed => matches!(
                            v.outcome,
                            Some(AgentOutcome::EmulatedByIntrocore | AgentOutcome::Rejected)
                        ),
                        Profile::Hvmi => v.outcome == Some(AgentOutcome::Rejected),
                    };
                    refused && v.reason == Some(r)
                }
            };
            if !ok || v.stop.is_some() {
                failures.push(format!(
                    "{} [{profile}]: expected {:?}, got {:?} {:?} (stop {:?})",
                    row.what,
                    expected.map(RejectReason::name),
                    v.outcome.map(AgentOutcome::name),
                    v.reason.map(RejectReason::name),
                    v.stop
                ));
            }
        }
    }
    failures
}

/// VE-SEMANTICS section 2: with several defects, the reason is the first in the order
/// cs_not_kernel, decode_error, rep, segment_prefix, rip_relative, stack_access, not_memory,
/// size, gla_mismatch, misaligned, unsupported_instruction. `fixed` refuses with
/// emulated_by_introcore or rejected, `hvmi` with rejected (the break).
#[test]
fn section2_rejection_reason_is_the_first_defect_in_order() {
    let failures = row_failures(&rejection_rows());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// VE-SEMANTICS section 2: `StackAccess` is bddisasm's, set by any implicit stack operand (its
/// `K` operands). LEAVE is named in the spec's list (`sBP,rBP,rSP,Kv` in bddisasm's table), and
/// INT3, INT n and INT1 push their frame (`Kv3`): stack_access, which comes before not_memory.
#[test]
fn section2_leave_and_int_are_implicit_stack_accesses() {
    use RejectReason::StackAccess;
    let rows = [
        both("leave", &[0xC9], RAX_T, Some(T), Some(StackAccess)),
        both(
            "leave (16-bit)",
            &[0x66, 0xC9],
            RAX_T,
            Some(T),
            Some(StackAccess),
        ),
        both("int3", &[0xCC], RAX_T, Some(T), Some(StackAccess)),
        both("int 3", &[0xCD, 0x03], RAX_T, Some(T), Some(StackAccess)),
        both("int1", &[0xF1], RAX_T, Some(T), Some(StackAccess)),
    ];
    let failures = row_failures(&rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// VE-SEMANTICS section 2: operand 0 is bddisasm's first operand (explicit operands first,
/// then implicit ones). MASKMOVQ (`Pq,Nq` + implicit `pDIq`), MASKMOVDQU (`Vdq,Udq` +
/// `pDIdq`) and XLATB (no explicit operand, implicit `AL,pBXALb`) have a register operand 0:
/// not_memory, which comes before size and unsupported_instruction.
#[test]
fn section2_operand_0_follows_bddisasm() {
    use RejectReason::NotMemory;
    const RDI_RAX_RBX_T: &[(Gpr, u64)] = &[(Gpr::Rdi, T), (Gpr::Rax, T), (Gpr::Rbx, T)];
    let rows = [
        both(
            "maskmovq mm0, mm1 (an 8-byte masked store to [rdi])",
            &[0x0F, 0xF7, 0xC1],
            RDI_RAX_RBX_T,
            Some(T),
            Some(NotMemory),
        ),
        both(
            "maskmovdqu xmm0, xmm1",
            &[0x66, 0x0F, 0xF7, 0xC1],
            RDI_RAX_RBX_T,
            Some(T),
            Some(NotMemory),
        ),
        both("xlatb", &[0xD7], RDI_RAX_RBX_T, Some(T), Some(NotMemory)),
    ];
    let failures = row_failures(&rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
