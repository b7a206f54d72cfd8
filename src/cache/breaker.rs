//! A circuit breaker for Redis: after `threshold` failures in a row the cache is skipped for
//! `cooldown`, so a dead or slow Redis costs requests nothing; then one call (the probe) tries
//! again while the others keep skipping it, and its outcome closes the breaker or opens it for
//! another cooldown. Each change of state is logged once, with what the open spell cost.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    start: Instant,
    failures: AtomicU32,
    /// Milliseconds after `start` until which the breaker stays open; 0 when closed.
    open_until: AtomicU64,
    /// When the breaker opened (milliseconds after `start`), for the log line when it closes.
    opened_at: AtomicU64,
    /// Calls that skipped Redis since the breaker opened.
    skipped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            start: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            opened_at: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether Redis may be tried now: always while closed; while open, only by the one call
    /// that claims the probe once the cooldown is over.
    pub fn allows(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        let probe = now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + self.cooldown_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if !probe {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        probe
    }

    fn cooldown_ms(&self) -> u64 {
        (self.cooldown.as_millis() as u64).max(1)
    }

    pub fn succeeded(&self) {
        // Every Redis call ends here: read before writing, so that a healthy cache does not make
        // the cores fight over these two words.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Acquire) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
        {
            let open_for = self.now_ms() - self.opened_at.load(Ordering::Relaxed);
            let skipped = self.skipped.swap(0, Ordering::Relaxed);
            tracing::info!(
                open_ms = open_for,
                skipped,
                "redis answers again: cache resumed"
            );
            self.metrics.cache.breaker_open.set(0);
        }
    }

    pub fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.threshold {
            return;
        }
        // Only the call that finds the breaker closed opens it; a failed probe has already
        // pushed `open_until` a cooldown ahead, and calls that were in flight change nothing.
        let now = self.now_ms();
        if self
            .open_until
            .compare_exchange(
                0,
                now + self.cooldown_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.opened_at.store(now, Ordering::Relaxed);
            self.skipped.store(0, Ordering::Relaxed);
            self.metrics.cache.breaker_trips.inc();
            self.metrics.cache.breaker_open.set(1);
            tracing::warn!(failures, cooldown = ?self.cooldown, "redis failing: cache bypassed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_success() {
        let b = Breaker::new(2, Duration::from_secs(60), Arc::default());
        assert!(b.allows());
        b.failed();
        assert!(b.allows());
        b.failed();
        assert!(!b.allows());
        b.succeeded();
        assert!(b.allows());
    }

    #[test]
    fn lets_a_call_through_after_the_cooldown() {
        let b = Breaker::new(1, Duration::ZERO, Arc::default());
        b.failed();
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.allows());
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_and_the_rest_wait_for_its_outcome() {
        let metrics = Arc::new(Metrics::default());
        let b = Breaker::new(1, Duration::from_millis(20), metrics.clone());
        b.failed();
        assert!(!b.allows() && !b.allows(), "open: every call skips Redis");
        std::thread::sleep(Duration::from_millis(30));
        let allowed = (0..100).filter(|_| b.allows()).count();
        assert_eq!(allowed, 1, "one probe");

        // The probe fails: open for another cooldown, still one trip, no second warning.
        b.failed();
        b.failed();
        assert!(!b.allows());
        assert_eq!(metrics.cache.breaker_trips.get(), 1);
        std::thread::sleep(Duration::from_millis(30));
        assert!(b.allows(), "the next probe");
        assert!(!b.allows());

        b.succeeded();
        assert!(b.allows() && b.allows(), "closed");
        assert_eq!(metrics.cache.breaker_open.get(), 0);
        assert_eq!(
            b.skipped.load(Ordering::Relaxed),
            0,
            "counted afresh next time"
        );
    }
}
