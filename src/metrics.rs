//! The service's metrics for `GET /metrics`, in the Prometheus text format, through the
//! `prometheus` crate: per-RPC and per-route RED metrics under the names dashboards already use
//! (go-grpc-prometheus for gRPC, OpenTelemetry's semantic conventions for HTTP), saturation
//! (pools, requests in flight, the cache), the process, and the build.
//!
//! Why this crate: its exposition is the text format `promtool check metrics` reads (the
//! OpenMetrics text of `prometheus-client` is not, on Debian's promtool 2.42), its histograms
//! are fixed buckets of atomics (`metrics-exporter-prometheus` keeps every sample until a scrape
//! drains them, so memory grows with traffic when nothing scrapes), and each server owns its own
//! registry (no process-wide recorder that tests running several servers would share). Nothing
//! on the hot path allocates: gRPC calls record through handles made at start for every method
//! and code, and an HTTP request finds its series by label values (a hash and a read lock; only
//! a label set's first request creates it, and the labels are bounded: route templates, known
//! methods, status codes).

use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Latency buckets, in seconds: this service answers a cache hit in tens of microseconds, a
/// database read in about a millisecond, and gives up on the database after seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What happened to client connections.
pub struct ConnectionMetrics {
    pub accepted: IntCounter,
    /// Closed at once: `max_connections` were open.
    pub refused: IntCounter,
    /// Closed for sending no request within the header timeout.
    pub timed_out: IntCounter,
    /// Requests whose body did not arrive within the body timeout.
    pub body_timeouts: IntCounter,
    pub open: IntGauge,
}

/// What the Redis cache did.
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    /// Database loads made by the cache on a miss (after single-flight).
    pub loads: IntCounter,
    /// Misses that waited for another request's load instead of querying.
    pub coalesced: IntCounter,
    pub fills: IntCounter,
    /// Fills refused because the product was written since their lookup.
    pub stale_fills: IntCounter,
    pub invalidations: IntCounter,
    pub errors: IntCounter,
    /// Reads served from the database without asking Redis (breaker open).
    pub bypassed: IntCounter,
    /// Reads of an answer not asked for before in the window: sent to the database, no lookup.
    pub first_sightings: IntCounter,
    /// Times the breaker opened.
    pub breaker_trips: IntCounter,
    /// 1 while the breaker is open.
    pub breaker_open: IntGauge,
    /// 1 when a cache is configured at all.
    pub enabled: IntGauge,
    /// Redis connections (multiplexed: each carries many calls at once).
    pub connections: IntGauge,
    /// Redis calls sent and not yet answered.
    pub calls_in_flight: IntGauge,
}

/// The gRPC and HTTP RED metric families; the HTTP layer's observe module holds the handles.
pub struct RpcFamilies {
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    pub http_seconds: HistogramVec,
}

/// Gauges and counters of a connection pool, read from the pool at each scrape.
pub struct PoolFamilies {
    /// `{pool, state}`: `in_use` or `idle`.
    pub connections: IntGaugeVec,
    pub max_connections: IntGaugeVec,
    /// Checkouts waiting for a connection now.
    pub waiting: IntGaugeVec,
    /// Checkouts that had to wait, and those that gave up (`connect_timeout`).
    pub waits: IntCounterVec,
    pub timeouts: IntCounterVec,
}

type Sampler = Box<dyn Fn() + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    /// Every HTTP request the server answered (gRPC, gRPC-Web, JSON, probes).
    pub requests: IntCounter,
    /// 1 while readiness reports SERVING (the database answers and no shutdown has begun).
    pub ready: IntGauge,
    /// Requests being served now, of every protocol.
    pub in_flight: IntGauge,
    /// Requests answered at once as overloaded, beyond the in-flight limit.
    pub shed: IntCounter,
    /// The in-flight limit in force (it adapts to the runtime's queue delay).
    pub in_flight_limit: IntGauge,
    /// Reads answered by a read replica.
    pub replica_reads: IntCounter,
    /// Writes refused by a per-client rate limit.
    pub rate_limited: IntCounter,
    /// gRPC calls answered DEADLINE_EXCEEDED because their `grpc-timeout` passed.
    pub deadlines_exceeded: IntCounter,
    pub connections: ConnectionMetrics,
    pub cache: CacheMetrics,
    pub rpc: RpcFamilies,
    pub pools: PoolFamilies,
    /// Run before each scrape: they copy what pools and limits know into gauges.
    samplers: Mutex<Vec<Sampler>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` in `registry` and returns it.
fn reg<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid counter"));
        let gauge =
            |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid gauge"));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )
                .expect("valid histogram"),
            )
        };
        let grpc_method = ["grpc_type", "grpc_service", "grpc_method"];
        let rpc = RpcFamilies {
            grpc_started: counters(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &grpc_method,
            ),
            grpc_handled: counters(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            grpc_seconds: histograms(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level \
                 handled by the server.",
                &grpc_method,
            ),
            http_seconds: histograms(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests (JSON and gRPC-Web), by route template.",
                &[
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                ],
            ),
        };
        let pools = PoolFamilies {
            connections: gauges(
                "reviews_db_pool_connections",
                "Database connections of a pool, in use or idle.",
                &["pool", "state"],
            ),
            max_connections: gauges(
                "reviews_db_pool_max_connections",
                "The most database connections a pool opens.",
                &["pool"],
            ),
            waiting: gauges(
                "reviews_db_pool_waiting",
                "Checkouts waiting for a database connection now.",
                &["pool"],
            ),
            waits: counters(
                "reviews_db_pool_waits_total",
                "Checkouts that waited for a database connection.",
                &["pool"],
            ),
            timeouts: counters(
                "reviews_db_pool_timeouts_total",
                "Checkouts that gave up waiting for a database connection.",
                &["pool"],
            ),
        };
        let cache = CacheMetrics {
            hits: counter("reviews_cache_hits_total", "Reads answered from Redis."),
            misses: counter("reviews_cache_misses_total", "Reads not found in Redis."),
            loads: counter(
                "reviews_cache_loads_total",
                "Database loads made on misses.",
            ),
            coalesced: counter(
                "reviews_cache_coalesced_total",
                "Misses that shared another request's load.",
            ),
            fills: counter("reviews_cache_fills_total", "Entries written to Redis."),
            stale_fills: counter(
                "reviews_cache_stale_fills_total",
                "Fills refused: the product was written since their lookup.",
            ),
            invalidations: counter(
                "reviews_cache_invalidations_total",
                "Products invalidated by writes.",
            ),
            errors: counter(
                "reviews_cache_errors_total",
                "Redis calls that failed or timed out.",
            ),
            bypassed: counter(
                "reviews_cache_bypassed_total",
                "Reads sent to the database without asking Redis (breaker open, page not cached).",
            ),
            first_sightings: counter(
                "reviews_cache_first_sightings_total",
                "Reads of an answer not asked for recently: to the database without a lookup.",
            ),
            breaker_trips: counter(
                "reviews_cache_breaker_trips_total",
                "Times the Redis circuit breaker opened.",
            ),
            breaker_open: gauge(
                "reviews_cache_breaker_open",
                "1 while the Redis circuit breaker is open.",
            ),
            enabled: gauge(
                "reviews_cache_enabled",
                "1 when a Redis cache is configured.",
            ),
            connections: gauge(
                "reviews_redis_connections",
                "Redis connections (each multiplexes many calls).",
            ),
            calls_in_flight: gauge(
                "reviews_redis_calls_in_flight",
                "Redis calls sent and not yet answered.",
            ),
        };
        let connections = ConnectionMetrics {
            accepted: counter(
                "reviews_connections_accepted_total",
                "Client connections accepted.",
            ),
            refused: counter(
                "reviews_connections_refused_total",
                "Client connections closed at once because the connection limit was reached.",
            ),
            timed_out: counter(
                "reviews_connections_timed_out_total",
                "Client connections closed for sending no request within the header timeout.",
            ),
            body_timeouts: counter(
                "reviews_request_body_timeouts_total",
                "Requests whose body did not arrive within the body timeout.",
            ),
            open: gauge("reviews_connections_open", "Client connections open."),
        };
        let build = gauges(
            "reviews_build_info",
            "1, labelled with the version and the git commit of the running build.",
            &["version", "git_sha"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("REVIEWS_GIT_SHA")])
            .set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics are registered once");
        Self {
            requests: counter(
                "reviews_requests_total",
                "Requests answered, of every protocol.",
            ),
            ready: gauge(
                "reviews_ready",
                "1 while the readiness probe passes: the database answers, no shutdown begun.",
            ),
            in_flight: gauge(
                "reviews_requests_in_flight",
                "Requests being served now, of every protocol.",
            ),
            shed: counter(
                "reviews_requests_shed_total",
                "Requests refused at once because the in-flight limit was reached.",
            ),
            in_flight_limit: gauge(
                "reviews_in_flight_limit",
                "Requests served at once before more are refused (adapts to the queue delay).",
            ),
            replica_reads: counter(
                "reviews_replica_reads_total",
                "Reads answered by a read replica.",
            ),
            rate_limited: counter(
                "reviews_rate_limited_total",
                "Writes refused by a per-client rate limit (429, RESOURCE_EXHAUSTED).",
            ),
            deadlines_exceeded: counter(
                "reviews_grpc_deadlines_exceeded_total",
                "gRPC calls answered DEADLINE_EXCEEDED when their grpc-timeout passed.",
            ),
            connections,
            cache,
            rpc,
            pools,
            samplers: Mutex::new(Vec::new()),
            registry: r,
        }
    }

    /// Runs `sample` before each scrape, to copy a state kept elsewhere into gauges.
    pub fn sample(&self, sample: impl Fn() + Send + Sync + 'static) {
        self.samplers
            .lock()
            .expect("samplers lock")
            .push(Box::new(sample));
    }

    /// Samples `pool` (named `primary` or `replica`, of at most `max` connections) before each
    /// scrape.
    pub fn sample_pool<M: bb8::ManageConnection>(
        &self,
        name: &'static str,
        pool: bb8::Pool<M>,
        max: u32,
    ) {
        let p = &self.pools;
        p.max_connections
            .with_label_values(&[name])
            .set(i64::from(max));
        let (in_use, idle, waiting, waits, timeouts) = (
            p.connections.with_label_values(&[name, "in_use"]),
            p.connections.with_label_values(&[name, "idle"]),
            p.waiting.with_label_values(&[name]),
            p.waits.with_label_values(&[name]),
            p.timeouts.with_label_values(&[name]),
        );
        self.sample(move || {
            let state = pool.state();
            let stats = &state.statistics;
            in_use.set(i64::from(state.connections - state.idle_connections));
            idle.set(i64::from(state.idle_connections));
            waiting.set(stats.pending_gets() as i64);
            // The pool counts; the counters follow it.
            waits.inc_by(stats.get_waited.saturating_sub(waits.get()));
            timeouts.inc_by(stats.get_timed_out.saturating_sub(timeouts.get()));
        });
    }

    /// The exposition, after sampling.
    pub fn render(&self) -> String {
        for sample in self.samplers.lock().expect("samplers lock").iter() {
            sample();
        }
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# the metrics could not be encoded: {e}\n"))
    }

    /// A histogram of the HTTP family, for the observe layer's handles.
    pub fn http_histogram(&self, method: &str, route: &str, status: &str) -> Histogram {
        self.rpc
            .http_seconds
            .with_label_values(&[method, route, status])
    }
}
