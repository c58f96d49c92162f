//! The text forms vesim reads wherever numbers and bytes are written by hand: scenario files,
//! trace files, operation lists and the command line.

/// Parses a number: hex with a 0x prefix, or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16)
    } else {
        t.replace('_', "").parse::<u64>()
    };
    r.map_err(|_| format!("'{s}' is not a 64-bit number (hex with 0x, or decimal)"))
}

/// Parses hex bytes, optionally separated by spaces.
pub fn parse_hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(&digits);
    if digits.is_empty() {
        return Err("no hex bytes given".into());
    }
    if digits.len() % 2 != 0 {
        return Err(format!("'{s}' has an odd number of hex digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("'{s}' is not a string of hex bytes"))
        })
        .collect()
}
