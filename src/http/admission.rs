//! Admission: how many requests are served at once, and the refusal of the rest.
//!
//! A fixed limit sized from the database pool keeps requests from queueing for a connection,
//! but not from queueing for the CPU: with 128 requests admitted on a saturated 2-core machine,
//! every task waited its turn behind the others, admitted requests took 45 ms at p99, and a
//! request that was going to be refused waited as long to learn it (`scripts/bench`, overload).
//! So the limit adapts to the one delay a refused request cannot avoid, the runtime's own queue:
//! a probe measures how long a task that yields waits to run again, and the limit shrinks
//! (multiplicatively) while that exceeds the target and grows back (additively) while it does
//! not, between a floor (the database pool, so that it is never starved) and the configured
//! ceiling. Hand-written: the crates that adapt a limit (AIMD, Vegas, gradient) do it from the
//! latency of admitted requests, which on this service spans 50 µs hits to millisecond misses
//! and says little about the queue, and a refusal needs the request to pick its framing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::Metrics;

/// How often the queue is sampled.
const PERIOD: Duration = Duration::from_millis(10);

/// The in-flight limit in front of the gRPC, gRPC-Web and JSON routes.
#[derive(Clone)]
pub(super) struct Admission {
    limit: Arc<Limit>,
    metrics: Arc<Metrics>,
}

struct Limit {
    in_flight: AtomicUsize,
    /// The limit now: `ceiling` when fixed.
    current: AtomicUsize,
    floor: usize,
    ceiling: usize,
}

/// Releases an admitted request's place when its future ends or is dropped (the client left).
struct Place<'a>(&'a Limit);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// A limit of `ceiling` requests at once; with a `target`, adapted to the runtime's queue
    /// delay between `floor` and `ceiling` by a task spawned on the current runtime, which ends
    /// with the last clone of this admission.
    pub(super) fn new(
        ceiling: usize,
        floor: usize,
        target: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ceiling = ceiling.max(1);
        let limit = Arc::new(Limit {
            in_flight: AtomicUsize::new(0),
            current: AtomicUsize::new(ceiling),
            floor: floor.clamp(1, ceiling),
            ceiling,
        });
        metrics.in_flight_limit.set(ceiling as i64);
        if let Some(target) = target.filter(|t| !t.is_zero()) {
            tokio::spawn(adapt(Arc::downgrade(&limit), target, metrics.clone()));
        }
        Self { limit, metrics }
    }
}

/// Serves the request if the limit allows, and refuses it at once otherwise.
pub(super) async fn admit(
    State(admission): State<Admission>,
    request: Request,
    next: Next,
) -> Response {
    let limit = &*admission.limit;
    let before = limit.in_flight.fetch_add(1, Ordering::AcqRel);
    let place = Place(limit);
    if before >= limit.current.load(Ordering::Relaxed) {
        drop(place);
        admission.metrics.shed.inc();
        return super::overloaded(&request);
    }
    let response = next.run(request).await;
    drop(place);
    response
}

async fn adapt(limit: Weak<Limit>, target: Duration, metrics: Arc<Metrics>) {
    loop {
        tokio::time::sleep(PERIOD).await;
        let asked = Instant::now();
        tokio::task::yield_now().await;
        let delay = asked.elapsed();
        let Some(limit) = limit.upgrade() else { return };
        metrics
            .in_flight_limit
            .set(limit.adjust(delay, target) as i64);
    }
}

impl Limit {
    /// Adapts the limit to one sample of the queue delay; the new limit.
    fn adjust(&self, delay: Duration, target: Duration) -> usize {
        let current = self.current.load(Ordering::Relaxed);
        let next = if delay > target {
            (current - current / 4).max(self.floor)
        } else {
            (current + 1).min(self.ceiling)
        };
        self.current.store(next, Ordering::Relaxed);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(current: usize) -> Limit {
        Limit {
            in_flight: AtomicUsize::new(0),
            current: AtomicUsize::new(current),
            floor: 16,
            ceiling: 128,
        }
    }

    #[test]
    fn the_limit_shrinks_while_the_queue_is_late_and_grows_back_after() {
        let target = Duration::from_millis(2);
        let l = limit(128);
        l.adjust(Duration::from_millis(5), target);
        assert_eq!(l.current.load(Ordering::Relaxed), 96);
        for _ in 0..20 {
            l.adjust(Duration::from_millis(5), target);
        }
        assert_eq!(
            l.current.load(Ordering::Relaxed),
            16,
            "never below the floor"
        );
        l.adjust(Duration::from_micros(100), target);
        assert_eq!(l.current.load(Ordering::Relaxed), 17);
        for _ in 0..200 {
            l.adjust(Duration::from_micros(100), target);
        }
        assert_eq!(
            l.current.load(Ordering::Relaxed),
            128,
            "never above the ceiling"
        );
    }
}
