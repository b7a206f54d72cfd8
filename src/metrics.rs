//! Counters for `GET /metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What happened to client connections.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub accepted: Counter,
    /// Closed at once: `max_connections` were open.
    pub refused: Counter,
    /// Closed for sending no request within the header timeout.
    pub timed_out: Counter,
    /// Requests whose body did not arrive within the body timeout.
    pub body_timeouts: Counter,
    pub open: Gauge,
}

/// What the Redis cache did.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    /// Database loads made by the cache on a miss (after single-flight).
    pub loads: Counter,
    /// Misses that waited for another request's load instead of querying.
    pub coalesced: Counter,
    pub fills: Counter,
    /// Fills refused because the product was written since their lookup.
    pub stale_fills: Counter,
    pub invalidations: Counter,
    pub errors: Counter,
    /// Reads served from the database without asking Redis (breaker open).
    pub bypassed: Counter,
    /// Reads of an answer not asked for before in the window: sent to the database, no lookup.
    pub first_sightings: Counter,
    /// Times the breaker opened.
    pub breaker_trips: Counter,
    pub breaker_open: AtomicBool,
    /// Whether a cache is configured at all.
    pub enabled: AtomicBool,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Every HTTP request the server answered (gRPC, gRPC-Web, JSON, probes).
    pub requests: Counter,
    /// Requests answered at once as overloaded, beyond the in-flight limit.
    pub shed: Counter,
    /// The in-flight limit in force (it adapts to the runtime's queue delay).
    pub in_flight_limit: Gauge,
    /// Reads answered by a read replica.
    pub replica_reads: Counter,
    /// Writes refused by a per-client rate limit.
    pub rate_limited: Counter,
    /// gRPC calls answered DEADLINE_EXCEEDED because their `grpc-timeout` passed.
    pub deadlines_exceeded: Counter,
    pub connections: ConnectionMetrics,
    pub cache: CacheMetrics,
}

impl Metrics {
    pub fn render(&self) -> String {
        let c = &self.cache;
        let mut out = String::new();
        for (name, help, value) in [
            (
                "reviews_requests_total",
                "Requests answered, of every protocol.",
                self.requests.get(),
            ),
            (
                "reviews_requests_shed_total",
                "Requests refused at once because the in-flight limit was reached.",
                self.shed.get(),
            ),
            (
                "reviews_rate_limited_total",
                "Writes refused by a per-client rate limit (429, RESOURCE_EXHAUSTED).",
                self.rate_limited.get(),
            ),
            (
                "reviews_grpc_deadlines_exceeded_total",
                "gRPC calls answered DEADLINE_EXCEEDED when their grpc-timeout passed.",
                self.deadlines_exceeded.get(),
            ),
            (
                "reviews_connections_accepted_total",
                "Client connections accepted.",
                self.connections.accepted.get(),
            ),
            (
                "reviews_connections_refused_total",
                "Client connections closed at once because the connection limit was reached.",
                self.connections.refused.get(),
            ),
            (
                "reviews_connections_timed_out_total",
                "Client connections closed for sending no request within the header timeout.",
                self.connections.timed_out.get(),
            ),
            (
                "reviews_request_body_timeouts_total",
                "Requests whose body did not arrive within the body timeout.",
                self.connections.body_timeouts.get(),
            ),
            (
                "reviews_replica_reads_total",
                "Reads answered by a read replica.",
                self.replica_reads.get(),
            ),
            (
                "reviews_cache_hits_total",
                "Reads answered from Redis.",
                c.hits.get(),
            ),
            (
                "reviews_cache_misses_total",
                "Reads not found in Redis.",
                c.misses.get(),
            ),
            (
                "reviews_cache_loads_total",
                "Database loads made on misses.",
                c.loads.get(),
            ),
            (
                "reviews_cache_coalesced_total",
                "Misses that shared another request's load.",
                c.coalesced.get(),
            ),
            (
                "reviews_cache_fills_total",
                "Entries written to Redis.",
                c.fills.get(),
            ),
            (
                "reviews_cache_stale_fills_total",
                "Fills refused: the product was written since their lookup.",
                c.stale_fills.get(),
            ),
            (
                "reviews_cache_invalidations_total",
                "Products invalidated by writes.",
                c.invalidations.get(),
            ),
            (
                "reviews_cache_errors_total",
                "Redis calls that failed or timed out.",
                c.errors.get(),
            ),
            (
                "reviews_cache_bypassed_total",
                "Reads sent to the database without asking Redis (breaker open, page not cached).",
                c.bypassed.get(),
            ),
            (
                "reviews_cache_first_sightings_total",
                "Reads of an answer not asked for recently: to the database without a lookup.",
                c.first_sightings.get(),
            ),
            (
                "reviews_cache_breaker_trips_total",
                "Times the Redis circuit breaker opened.",
                c.breaker_trips.get(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in [
            (
                "reviews_connections_open",
                "Client connections open.",
                self.connections.open.get(),
            ),
            (
                "reviews_in_flight_limit",
                "Requests served at once before more are refused (adapts to the queue delay).",
                self.in_flight_limit.get(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        for (name, help, value) in [
            (
                "reviews_cache_breaker_open",
                "1 while the Redis circuit breaker is open.",
                c.breaker_open.load(Ordering::Relaxed),
            ),
            (
                "reviews_cache_enabled",
                "1 when a Redis cache is configured.",
                c.enabled.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                u8::from(value)
            );
        }
        out
    }
}
