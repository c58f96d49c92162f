//! A hash map for the model's integer keys (frame numbers, view indices): a multiplicative
//! hash, deterministic across runs. Lookup only: nothing iterates one of these into output
//! without sorting first.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for small integer keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct IntHasher(u64);

const K: u64 = 0x517C_C1B7_2722_0A95;

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(K);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
}

/// A `HashMap` with [`IntHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
