//! Product ids for the load clients of `scripts/bench`, drawn at random over `1..=n`.

/// xorshift64*: enough randomness for ids, no dependency. `Ids(seed | 1, n)`.
pub struct Ids(pub u64, pub u64);

impl Ids {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.1 + 1
    }
}
