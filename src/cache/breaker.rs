//! A circuit breaker for Redis: after `threshold` failures in a row the cache is skipped for
//! `cooldown`, so a dead or slow Redis costs requests nothing; then one call tries again.

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
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether Redis may be tried now.
    pub fn allows(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("redis answers again: cache resumed");
            self.metrics
                .cache
                .breaker_open
                .store(false, Ordering::Relaxed);
        }
    }

    pub fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            if self.open_until.swap(until, Ordering::Relaxed) == 0 {
                self.metrics.cache.breaker_trips.inc();
                tracing::warn!(failures, cooldown = ?self.cooldown, "redis failing: cache bypassed");
            }
            self.metrics
                .cache
                .breaker_open
                .store(true, Ordering::Relaxed);
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
        assert!(b.allows());
    }
}
