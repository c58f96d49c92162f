//! The agent's decoder verdicts on every class of byte sequences where bddisasm (as HVMI's
//! agent calls it, at the commit HVMI pins) and iced-x86 disagree, one named test per class.
//!
//! Each input is a committed regression seed (`corpus/regressions/agent_decode/NAME`); the
//! expected verdict is bddisasm's, as the `agent_decode` fuzz oracle computes it from the
//! decoder itself (`fuzz/src/lib.rs`: the bundled bddisasm with the pinned decoder's known
//! exceptions), written down here so that plain `cargo test` holds vesim to it without
//! libclang. The last tests run whole #VEs through `vesim agent --profile hvmi` and check the
//! BREAK's registers (B27–B29, C): status 0x80000002 for a decode error, 0x80000001 for every
//! other refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use vesim::agent::decoder::{decode_verdict, DecodeVerdict, Form};
use vesim::agent::{AgentOutcome, RejectReason};
use vesim::quirks::Profile;
use vesim::verdict::VerdictRequest;
use vesim_model::vcpu::Gpr;

fn seed(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus/regressions/agent_decode")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn verdict_of(name: &str) -> DecodeVerdict {
    let mut buf = [0u8; 16];
    let s = seed(name);
    let n = s.len().min(15);
    buf[..n].copy_from_slice(&s[..n]);
    decode_verdict(&buf[..15], 0).0
}

fn refused(name: &str, reason: RejectReason) {
    assert_eq!(
        verdict_of(name),
        DecodeVerdict::Refused(reason),
        "{name}: bddisasm refuses it with {}",
        reason.name()
    );
}

/// Decoded with an 8-byte memory operand 0 of family `form`, base `base` (B38 on).
fn decoded(name: &str, form: Form, base: Option<Gpr>) {
    match verdict_of(name) {
        DecodeVerdict::Decoded(d) => {
            assert_eq!(d.form, form, "{name}");
            assert_eq!(d.base.map(|b| b.gpr), base, "{name}");
            assert_eq!(d.index, None, "{name}");
            assert_eq!(d.displacement, 0, "{name}");
        }
        other => {
            panic!("{name}: bddisasm decodes it with an 8-byte memory operand 0, not {other:?}")
        }
    }
}

macro_rules! class {
    ($name:ident, refused $reason:ident) => {
        #[test]
        fn $name() {
            refused(stringify!($name), RejectReason::$reason);
        }
    };
    ($name:ident, decoded $form:ident, $base:expr) => {
        #[test]
        fn $name() {
            decoded(stringify!($name), Form::$form, $base);
        }
    };
}

// bddisasm marks every relative-offset operand IsRipRelative (B35 before StackAccess).
class!(jcc_rel8_is_rip_relative, refused RipRelative);
class!(call_rel32_is_rip_relative_before_stack, refused RipRelative);
class!(xbegin_is_rip_relative, refused RipRelative);
// x87 loads and arithmetic list ST(0) first; stores list the memory first.
class!(fld_m64_has_st0_first, refused NotMemory);
class!(fild_m64_has_st0_first, refused NotMemory);
class!(fadd_m32_has_st0_first, refused NotMemory);
class!(fstp_m64_has_memory_first, decoded Other, Some(Gpr::Rax));
// Implicit memory operands first, where iced lists the register.
class!(movdir64b_has_implicit_memory_first, refused Size);
class!(monitor_has_implicit_memory_first, refused Size);
class!(setssbsy_has_an_8_byte_shadow_stack_operand, decoded Other, None);
class!(saveprevssp_shadow_stack_operand_is_not_8_bytes, refused Size);
// Decoded by bddisasm, refused by iced.
class!(salc_decodes_in_64_bit_mode, refused NotMemory);
class!(tdcall_decodes, refused NotMemory);
// Found by agent_decode: F2 (or F3) takes the mandatory-prefix place of 66, so
// `f3 f2 f2 48 66 0f 01 cc` is not TDCALL and bddisasm rejects it (vesim said not_memory).
class!(f2_displaces_the_66_of_tdcall, refused DecodeError);
class!(fstsg_decodes, refused NotMemory);
// Found by decode_survey: Knights Corner's CLEVICT1 in VEX form, a byte of memory first.
class!(clevict1_vex_decodes, refused Size);
// Found by agent_decode: Knights Corner's KMERGE2L1H (VEX 0F 48, register form).
class!(kmerge2l1h_decodes, refused NotMemory);
// Found by agent_decode: CLEVICT1 with a [rip+disp32] operand is RIP-relative (B35 first).
class!(knc_clevict1_rip_relative, refused RipRelative);
// Found by agent_decode: CLEVICT1 in 3-byte VEX with W = 1 (bddisasm ignores W there).
class!(knc_clevict1_ignores_vex_w, refused Size);
// Found by agent_decode: eight prefixes, VEX, ModRM and disp32 make 16 bytes: too long.
class!(knc_vex_too_long_is_invalid, refused DecodeError);
// Found by agent_decode: bddisasm ignores VEX.L on VLDMXCSR/VSTMXCSR (4-byte operand).
class!(vldmxcsr_ignores_vex_l, refused Size);
// Found by agent_decode: Knights Corner's DELAY r32 (VEX.F3.0F AE /6, register form).
class!(delay_knc_vex_decodes, refused NotMemory);
// Found by agent_decode: `48 67 64` before a VEX KMERGE2L1H: the REX is not right before the
// VEX byte, so it is dropped (vesim refused every REX); GS makes it a segment prefix.
class!(rex_not_before_vex_is_dropped, refused SegmentPrefix);
// Found by agent_decode: bddisasm's VCVTSI2SH entries take no embedded rounding ({er}).
class!(vcvtsi2sh_embedded_rounding_is_invalid, refused DecodeError);
class!(lock_fstsg_is_invalid, refused DecodeError);
class!(lock_before_xop_is_accepted, refused RipRelative);
// Found by agent_decode: REX then LOCK before XOP; the REX is dropped (not right before the
// XOP byte) and the LOCK accepted, so bddisasm decodes it (vesim said decode_error).
class!(rex_then_lock_before_xop, refused NotMemory);
// 1.x HasSeg in 64-bit mode: 2E, 3E, FS and GS only.
class!(es_override_is_not_has_seg, decoded Mov, Some(Gpr::Rax));
class!(ss_override_is_not_has_seg, decoded Mov, Some(Gpr::Rax));
class!(es_override_salc_is_not_memory, refused NotMemory);
class!(cs_override_salc_is_a_segment_prefix, refused SegmentPrefix);
class!(ds_override_is_has_seg, refused SegmentPrefix);
// Newer than the pinned decoder.
class!(rex2_is_aad_invalid_in_64_bit_mode, refused DecodeError);
class!(rao_int_is_not_in_the_pinned_decoder, refused DecodeError);
class!(apx_evex_map4_is_invalid, refused DecodeError);
class!(prefetchit0_rip_relative_is_a_hint_nop, refused RipRelative);
class!(hint_nop_with_rex_w_is_8_bytes, decoded Other, Some(Gpr::Rax));
// MPX is decoded (every feature on).
class!(mpx_bndstx_is_decoded, refused Size);
class!(mpx_bndldx_has_a_bound_register_first, refused NotMemory);

/// Found by agent_decode: `vpscatterqd [rax+xmm8]{k7}, xmm8`. bddisasm's operand 0 is both
/// dwords (8 bytes) and its index is xmm8, by number, which the agent's REG() reads as R8 (with
/// the vector's 16 bytes as its size). iced's memory size is one element.
#[test]
fn vpscatterqd_xmm_operand_is_8_bytes() {
    match verdict_of("vpscatterqd_xmm_operand_is_8_bytes") {
        DecodeVerdict::Decoded(d) => {
            assert_eq!(d.form, Form::Other);
            assert_eq!(d.base.map(|b| (b.gpr, b.size)), Some((Gpr::Rax, 8)));
            assert_eq!(d.index.map(|i| (i.gpr, i.size)), Some((Gpr::R8, 16)));
            assert_eq!((d.scale, d.displacement), (1, 0));
        }
        other => panic!("bddisasm decodes an 8-byte operand 0, not {other:?}"),
    }
}

/// Found by agent_decode: `vpscatterqd [rax+xmm11*2+0x58*4]`. bddisasm's `Disp` is the EVEX
/// disp8 as encoded (0x58), not multiplied by the compressed-displacement factor.
#[test]
fn vsib_disp8_is_not_scaled() {
    match verdict_of("vsib_disp8_is_not_scaled") {
        DecodeVerdict::Decoded(d) => {
            assert_eq!(d.index.map(|i| (i.gpr, i.size)), Some((Gpr::R11, 16)));
            assert_eq!((d.scale, d.displacement), (2, 0x58));
        }
        other => panic!("bddisasm decodes an 8-byte operand 0, not {other:?}"),
    }
}

/// `vmovq [rax+8], xmm0` encoded with EVEX disp8 = 1 (N = 8): bddisasm's `Disp` is 1, so the
/// agent recomputes RAX + 1, which is not the faulting GLA: HVMI's agent refuses the write
/// (gla_mismatch, B38) that the VEX encoding of the same store would get past.
#[test]
fn evex_vmovq_disp8_is_not_scaled() {
    match verdict_of("evex_vmovq_disp8_is_not_scaled") {
        DecodeVerdict::Decoded(d) => assert_eq!(d.displacement, 1),
        other => panic!("bddisasm decodes an 8-byte operand 0, not {other:?}"),
    }
    let g = 0xFFFF_F800_0050_0010;
    let v = vesim::verdict::run(&VerdictRequest {
        bytes: seed("evex_vmovq_disp8_is_not_scaled"),
        regs: [(Gpr::Rax, g - 8)].into_iter().collect(),
        old: 0x1003,
        profile: Profile::Hvmi,
        ..VerdictRequest::default()
    })
    .unwrap();
    assert_eq!(v.gla, g, "the reference CPU writes RAX + 8");
    assert_break(&v, RejectReason::GlaMismatch, 0x8000_0001);
}

/// Found by agent_decode: `67 ... ff 04 65 <disp32>`, a bare [disp32] under 0x67: bddisasm's
/// `Disp` is sign-extended (vesim took iced's zero-extended 64-bit displacement, since no base
/// or index register showed the 32-bit address size).
#[test]
fn disp32_under_67_is_sign_extended() {
    match verdict_of("disp32_under_67_is_sign_extended") {
        DecodeVerdict::Decoded(d) => {
            assert_eq!((d.base, d.index), (None, None));
            assert_eq!(d.displacement, 0xFFFF_FFFF_FFFF_4946);
        }
        other => panic!("bddisasm decodes an 8-byte operand 0, not {other:?}"),
    }
}

/// Found by the CI smoke run of agent_decode: `vpscatterqd [rdx+xmm28*2]{k7}`: the index is a
/// vector register numbered past R15, which HVMI's REG() has no slot for (it reads past the
/// saved GPRs); both sides compare it as no index.
#[test]
fn vsib_index_beyond_r15() {
    match verdict_of("vsib_index_beyond_r15") {
        DecodeVerdict::Decoded(d) => {
            assert_eq!(d.base.map(|b| b.gpr), Some(Gpr::Rdx));
            assert_eq!((d.index, d.scale), (None, 1));
        }
        other => panic!("bddisasm decodes an 8-byte operand 0, not {other:?}"),
    }
}

#[test]
fn every_regression_seed_has_a_named_test() {
    let this = include_str!("agent_decoder.rs");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus/regressions/agent_decode");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            this.contains(&format!("class!({name},")) || this.contains(&format!("fn {name}()")),
            "{name} has no test"
        );
        n += 1;
    }
    assert!(n >= 20, "{n} seeds");
}

fn hvmi(bytes: &[u8], gla: u64) -> vesim::verdict::Verdict {
    vesim::verdict::run(&VerdictRequest {
        bytes: bytes.to_vec(),
        regs: [(Gpr::Rax, gla), (Gpr::Rbx, 0x2003)].into_iter().collect(),
        old: 0x1003,
        gla: Some(gla),
        profile: Profile::Hvmi,
        ..VerdictRequest::default()
    })
    .unwrap()
}

/// BREAK (RDX = 1) with RBX = EMULATION_FAILED (3) and RCX = the VESTATUS (C).
fn assert_break(v: &vesim::verdict::Verdict, reason: RejectReason, status: u64) {
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected), "{v:?}");
    assert_eq!(v.reason, Some(reason));
    assert_eq!(v.vmcalls, [(1, 3, status)]);
    assert_eq!(
        v.rip,
        vesim::layout::VERDICT_DEFAULT_RIP,
        "Q1: RIP is not advanced"
    );
    assert_eq!(v.entry, 0x1003, "nothing is written");
}

#[test]
fn hvmi_breaks_with_not_supported_where_iced_alone_would_say_disasm_error() {
    // SALC: iced calls it invalid in 64-bit mode; bddisasm decodes it, operand 0 is AL.
    let g = 0xFFFF_F800_0050_0010;
    assert_break(
        &hvmi(&seed("salc_decodes_in_64_bit_mode"), g),
        RejectReason::NotMemory,
        0x8000_0001,
    );
    // FLD qword [rax]: iced's operand 0 is the 8-byte memory; bddisasm's is ST(0).
    assert_break(
        &hvmi(&seed("fld_m64_has_st0_first"), g),
        RejectReason::NotMemory,
        0x8000_0001,
    );
}

#[test]
fn hvmi_breaks_with_disasm_error_where_the_pinned_decoder_has_no_entry() {
    let g = 0xFFFF_F800_0050_0010;
    assert_break(
        &hvmi(&seed("rao_int_is_not_in_the_pinned_decoder"), g),
        RejectReason::DecodeError,
        0x8000_0002,
    );
}

#[test]
fn an_es_prefixed_write_is_emulated_by_the_agent() {
    let v = hvmi(&seed("es_override_is_not_has_seg"), 0xFFFF_F800_0050_0010);
    assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
    assert_eq!(v.entry, 0x2003);
    assert_eq!(v.rip, vesim::layout::VERDICT_DEFAULT_RIP + 4);
}
