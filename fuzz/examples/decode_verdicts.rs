//! Prints HVMI's agent verdict (bddisasm, with the pinned-decoder exceptions) and vesim's for
//! hex byte strings given as arguments: `cargo run --release --example decode_verdicts -- 7400`.

fn main() {
    for hex in std::env::args().skip(1) {
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let h = vesim_fuzz::hvmi_verdict(&bytes).map(vesim_fuzz::comparable);
        let v = vesim_fuzz::comparable(vesim_fuzz::vesim_verdict(&bytes));
        let same = h
            .as_ref()
            .map_or("unjudged".to_string(), |h| (*h == v).to_string());
        println!("{hex}: hvmi {h:?}\n    vesim {v:?} (same: {same})");
    }
}
