//! Every legacy opcode (one-byte, 0F, 0F 38, 0F 3A) under common prefixes, with every ModRM
//! byte, and ChaCha-random byte strings, through vesim's agent decode and bddisasm's; the
//! disagreements, grouped by class (verdicts and opcode), most frequent first.
//!
//! `cargo run --release --example decode_survey [RANDOM_INPUTS]` (from `fuzz/`).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use vesim::agent::decoder::DecodeVerdict;
use vesim_fuzz::{comparable, hvmi_verdict, vesim_verdict};

fn kind(v: &DecodeVerdict) -> String {
    match v {
        DecodeVerdict::Refused(r) => r.name().to_string(),
        DecodeVerdict::Decoded(d) => format!("decoded:{:?}", d.form),
    }
}

fn opcode_key(b: &[u8]) -> String {
    let mut i = 0;
    while i < b.len()
        && matches!(
            b[i],
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x40
                ..=0x4F
        )
    {
        i += 1;
    }
    let rest = &b[i..];
    let n = match rest {
        [0x0F, 0x38, ..] | [0x0F, 0x3A, ..] => 3,
        [0x0F, ..] => 2,
        [0xC4, ..] | [0xC5, ..] | [0x62, ..] | [0x8F, ..] => 1,
        _ => 1,
    };
    let mut key = rest
        .iter()
        .take(n)
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if std::env::var_os("DETAIL").is_some() {
        let mand: String = b[..i]
            .iter()
            .filter(|x| matches!(x, 0x66 | 0xF2 | 0xF3))
            .map(|x| format!("{x:02x}"))
            .collect();
        if let Some(m) = rest.get(n) {
            let kind = if m >> 6 == 3 {
                format!("r{:02x}", m)
            } else {
                "m".into()
            };
            key = format!("{mand}|{key} /{} {kind}", (m >> 3) & 7);
        }
    }
    key
}

fn main() {
    let random: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let prefixes: &[&[u8]] = &[
        &[],
        &[0x66],
        &[0xF2],
        &[0xF3],
        &[0xF0],
        &[0x48],
        &[0x67],
        &[0xF0, 0x48],
        &[0x66, 0x48],
        &[0xF3, 0x48],
        &[0xF2, 0x48],
        &[0x2E],
        &[0x41],
        &[0x4C],
    ];
    let maps: &[&[u8]] = &[&[], &[0x0F], &[0x0F, 0x38], &[0x0F, 0x3A]];
    let tails: &[[u8; 8]] = &[[0; 8], [0x25, 0x78, 0x56, 0x34, 0x12, 0x9A, 0xBC, 0xDE]];
    let mut classes: BTreeMap<(String, String, String), (u64, Vec<u8>)> = BTreeMap::new();
    let mut total = 0u64;
    let mut differ = 0u64;
    let mut unknown = 0u64;
    let mut gap = 0u64;
    let mut check = |bytes: &[u8]| {
        total += 1;
        let v = comparable(vesim_verdict(bytes));
        let Ok(h) = hvmi_verdict(bytes) else {
            unknown += 1;
            return;
        };
        let h = comparable(h);
        if v != h && vesim_fuzz::known_gap(bytes, &vesim_verdict(bytes)).is_some() {
            gap += 1;
            return;
        }
        if v != h {
            differ += 1;
            let mut kv = kind(&v);
            let kh = kind(&h);
            if kv == kh {
                kv.push_str(" (fields)");
            }
            let mut d = iced_x86::Decoder::new(64, &bytes[..bytes.len().min(15)], 0);
            let i = d.decode();
            let key = if i.code() == iced_x86::Code::INVALID || std::env::var_os("DETAIL").is_some()
            {
                let m = bddisasm::DecodedInstruction::decode(
                    &vesim_fuzz::agent_buffer(bytes),
                    bddisasm::DecodeMode::Bits64,
                )
                .map(|x| format!("{:?}", x.mnemonic()))
                .unwrap_or_default();
                format!("invalid {} {m}", opcode_key(bytes))
            } else {
                format!("{:?}", i.code())
            };
            let e = classes.entry((kv, kh, key)).or_insert((0, bytes.to_vec()));
            e.0 += 1;
        }
    };
    for p in prefixes {
        for m in maps {
            for op in 0..=255u8 {
                for modrm in 0..=255u8 {
                    for t in tails {
                        let mut b = Vec::with_capacity(15);
                        b.extend_from_slice(p);
                        b.extend_from_slice(m);
                        b.push(op);
                        b.push(modrm);
                        b.extend_from_slice(t);
                        b.truncate(15);
                        check(&b);
                    }
                }
            }
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    for _ in 0..random {
        let mut b = [0u8; 15];
        rng.fill_bytes(&mut b);
        check(&b);
    }
    let mut rows: Vec<_> = classes.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    println!(
        "{total} inputs, {unknown} not judged (decoded by the pinned bddisasm only), {gap} in the known EVEX gap, {differ} disagree, {} classes",
        rows.len()
    );
    // Classes by verdict pair.
    let mut pairs: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((v, h, _), (n, _)) in &rows {
        let e = pairs.entry((v.clone(), h.clone())).or_default();
        e.0 += 1;
        e.1 += n;
    }
    println!("by verdict pair (vesim -> bddisasm): opcode classes, inputs");
    for ((v, h), (c, n)) in &pairs {
        println!("  {v:<32} -> {h:<28} {c:>5} {n:>9}");
    }
    println!("classes:");
    for ((v, h, op), (n, ex)) in rows {
        let hex: String = ex.iter().map(|x| format!("{x:02x}")).collect();
        println!("  {n:>8}  {op:<28} vesim {v:<32} bddisasm {h:<28} e.g. {hex}");
    }
}
