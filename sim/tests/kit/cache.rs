//! The agent's VE cache as guest memory holds it.

use vesim::layout;
use vesim_model::Gpa;

/// The GPA of slot `slot` of bucket `bucket` of cache line `line` (B70).
pub fn cache_slot(line: u64, bucket: u64, slot: u64) -> Gpa {
    layout::AGENT_GPA.wrapping_add(layout::AGENT_VECACHE + line * 0x1000 + bucket * 64 + slot * 8)
}

/// Entry `k` of a run of entries that share one cache bucket (line 0x34, bucket 0x2D).
pub fn bucket_entry(k: u64) -> Gpa {
    Gpa(0x0123_4568 + (k << 18))
}
