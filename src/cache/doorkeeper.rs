//! The doorkeeper: which answers this replica was asked for recently. A first sighting skips
//! Redis and reads the database, as a cache miss would, but without the lookup, and fills
//! nothing; only an answer asked for again within the window is looked up and filled. On a
//! catalogue read at random most answers are asked for once, so this spares Redis their round
//! trips and their memory, and they cost what they cost without a cache (measured in
//! `scripts/bench`); a hot answer pays one database read per replica and window.
//!
//! One bit per answer, in a fixed table (false positives only mean a lookup), cleared once per
//! window.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// 2^22 bits (512 KiB): under 15 % false positives after 600,000 sightings in a window.
const BITS: usize = 1 << 22;

pub struct Doorkeeper {
    words: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
    window_ms: u64,
    /// Milliseconds after `start` at which the table was last cleared.
    cleared_at: AtomicU64,
}

impl Doorkeeper {
    pub fn new(window: Duration) -> Self {
        Self {
            words: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            start: Instant::now(),
            window_ms: window.as_millis().max(1) as u64,
            cleared_at: AtomicU64::new(0),
        }
    }

    /// Whether `answer` was seen in this window; it is seen from now on.
    pub fn seen_before(&self, answer: impl std::hash::Hash) -> bool {
        self.clear_if_due();
        let bit = self.hasher.hash_one(answer) as usize % BITS;
        let mask = 1u64 << (bit % 64);
        self.words[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0
    }

    fn clear_if_due(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.cleared_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.window_ms {
            return;
        }
        // One caller clears; the others go on with a table being cleared, which is harmless.
        if self
            .cleared_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            for word in self.words.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_seen_from_its_second_sighting_until_the_window_ends() {
        let d = Doorkeeper::new(Duration::from_millis(50));
        assert!(!d.seen_before(("list", 1)));
        assert!(d.seen_before(("list", 1)));
        assert!(!d.seen_before(("list", 2)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!d.seen_before(("list", 1)), "a new window forgets");
    }
}
