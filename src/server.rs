//! Assembles the server ([`Application`]): the service core with its database and cache, its
//! two faces (gRPC and gRPC-Web, and the JSON edge) on one listener, health (readiness follows
//! the database), reflection, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::cache::{Cache, CacheArgs, CacheConfig};
use crate::config::{
    default_duration, parse_delay, parse_duration, parse_secret, parse_switch, Secret,
};
use crate::db::{Db, DbConfig};
use crate::grpc::{ReviewsGrpc, FILE_DESCRIPTOR_SET};
use crate::health::{self, Readiness};
use crate::http::{self, HttpConfig};
use crate::limits::{LimitArgs, LimitsConfig};
use crate::metrics::Metrics;
use crate::pb::review_service_server::ReviewServiceServer;
use crate::service::{Service, WriteRules};

mod listener;

pub use listener::ConnectionOptions;
use listener::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_DRAIN_DELAY, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_STREAMS,
};

/// Where `serve` and `dev` listen unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_HEALTH_INTERVAL: &str = "2s";

/// Settings of `reviews serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "REVIEWS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Settings of the server around the service.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// How often readiness re-checks the database.
    #[arg(long = "health-interval", env = "REVIEWS_HEALTH_INTERVAL", default_value = DEFAULT_HEALTH_INTERVAL, value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Origins allowed to call from browsers (comma-separated), or `*` for any.
    #[arg(
        long = "cors-origins",
        env = "REVIEWS_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Close client connections (with a GOAWAY, so clients reconnect without failing calls)
    /// once they are this old, so long-lived gRPC connections spread over new replicas.
    #[arg(long = "max-connection-age", env = "REVIEWS_MAX_CONNECTION_AGE", value_parser = parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// A new connection's first bytes, and every HTTP/1.1 request's headers, must arrive within
    /// this, and an HTTP/1.1 connection idle for longer is closed.
    #[arg(long = "header-timeout", env = "REVIEWS_HEADER_TIMEOUT", default_value = DEFAULT_HEADER_TIMEOUT, value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this (JSON: 408).
    #[arg(long = "body-timeout", env = "REVIEWS_BODY_TIMEOUT", default_value = DEFAULT_BODY_TIMEOUT, value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// A connection that carries no request for this long is closed (HTTP/2: with a GOAWAY).
    #[arg(long = "idle-timeout", env = "REVIEWS_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How often open HTTP/2 connections are pinged.
    #[arg(long = "http2-keepalive-interval", env = "REVIEWS_HTTP2_KEEPALIVE_INTERVAL", default_value = DEFAULT_KEEPALIVE_INTERVAL, value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before its connection is closed.
    #[arg(long = "http2-keepalive-timeout", env = "REVIEWS_HTTP2_KEEPALIVE_TIMEOUT", default_value = DEFAULT_KEEPALIVE_TIMEOUT, value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Requests one HTTP/2 connection may carry at once.
    #[arg(long = "max-concurrent-streams", env = "REVIEWS_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Client connections open at once; beyond it a new connection is closed at once.
    #[arg(long = "max-connections", env = "REVIEWS_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// On SIGTERM, how long to go on answering (not ready, every HTTP/1.1 response with
    /// `Connection: close`, HTTP/2 connections sent a GOAWAY) before the listener closes.
    #[arg(long = "drain-delay", env = "REVIEWS_DRAIN_DELAY", default_value = DEFAULT_DRAIN_DELAY, value_parser = parse_delay)]
    pub drain_delay: Duration,
    /// How long a shared cache in front of the service (a CDN, Varnish) may serve the last
    /// answer to a GET while the service fails: `Cache-Control: no-cache, stale-if-error=<s>`
    /// (`0`: `no-cache` alone).
    #[arg(long = "stale-if-error", env = "REVIEWS_STALE_IF_ERROR", default_value = http::DEFAULT_STALE_IF_ERROR, value_parser = parse_delay)]
    pub stale_if_error: Duration,
    /// Largest JSON request body, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "REVIEWS_MAX_BODY_BYTES", default_value_t = http::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Requests (gRPC, gRPC-Web, JSON) served at once; beyond it a request is refused at once
    /// (503 with Retry-After, or UNAVAILABLE) instead of queueing for a database connection.
    /// Default: 8 per database connection. Probes and metrics are never refused.
    #[arg(long = "max-in-flight", env = "REVIEWS_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,
    /// The runtime queue delay the in-flight limit adapts to: while a task waits longer than
    /// this to run, the limit shrinks (down to the database pool size), and refused requests
    /// are answered without waiting behind admitted ones; `0`: the limit stays at
    /// `--max-in-flight`.
    #[arg(long = "queue-delay-target", env = "REVIEWS_QUEUE_DELAY_TARGET", default_value = DEFAULT_QUEUE_DELAY_TARGET, value_parser = parse_delay)]
    pub queue_delay_target: Duration,
    /// The secret key named voters are kept under (HMAC-SHA256 of the `Reviews-Voter` name).
    /// Every replica needs the same one; unset, a fixed public key is used, and a low-entropy
    /// voter name (a customer number) could be found again from its hash.
    #[arg(long = "voter-key", env = "REVIEWS_VOTER_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub voter_key: Option<Secret>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// `on`: a second review of a product by the same email (in any case) is refused with 409
    /// (ALREADY_EXISTS); `off`: accepted, as the legacy API did.
    #[arg(long = "one-review-per-email", env = "REVIEWS_ONE_REVIEW_PER_EMAIL", default_value = "on", action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub one_review_per_email: bool,
}

impl ServerArgs {
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            health_interval: self.health_interval,
            connections: ConnectionOptions {
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
                idle_timeout: self.idle_timeout,
                keepalive_interval: self.keepalive_interval,
                keepalive_timeout: self.keepalive_timeout,
                max_streams: self.max_streams,
                max_connections: self.max_connections as usize,
                max_age: self.max_connection_age,
                drain_delay: self.drain_delay,
            },
            http: HttpConfig {
                cors_origins: self.cors_origins.clone(),
                max_body: self.max_body_bytes,
                max_in_flight: self.max_in_flight.map(|n| n as usize),
                min_in_flight: 1,
                queue_delay_target: Some(self.queue_delay_target).filter(|t| !t.is_zero()),
                stale_if_error: self.stale_if_error,
            },
            voter_key: self.voter_key.clone(),
            limits: self.limits.config(),
            one_review_per_email: self.one_review_per_email,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often readiness re-checks the database.
    pub health_interval: Duration,
    /// Timeouts and limits of client connections, and the drain.
    pub connections: ConnectionOptions,
    pub http: HttpConfig,
    /// The key voter names are hashed under; `None`: [`PUBLIC_VOTER_KEY`].
    pub voter_key: Option<Secret>,
    /// Per-client rate limits on the writes.
    pub limits: LimitsConfig,
    /// A second review of a product by the same email is refused (409).
    pub one_review_per_email: bool,
}

/// The voter key when none is configured.
pub const PUBLIC_VOTER_KEY: &str = "reviews.v1 voter";

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            health_interval: default_duration(DEFAULT_HEALTH_INTERVAL),
            connections: ConnectionOptions::default(),
            http: HttpConfig::default(),
            voter_key: None,
            limits: LimitsConfig::default(),
            one_review_per_email: true,
        }
    }
}

/// Requests admitted at once per database connection, unless `--max-in-flight` says otherwise:
/// enough that cache hits and short queries never wait on the limit, few enough that a request
/// past it would have waited seconds for a connection.
const IN_FLIGHT_PER_CONNECTION: usize = 8;

/// The default of `--queue-delay-target`. At 6,000 connections (`scripts/bench`, overload, one
/// run each): 2 ms cost a fifth of the goodput; 5 ms kept it (1.01x of the unsaturated maximum)
/// and, against the fixed limit, cut the admitted p99 from 54 to 31 ms and the refusals' p99
/// after the opening burst from 62 to 22 ms.
const DEFAULT_QUEUE_DELAY_TARGET: &str = "5ms";

/// What the server is built from: where it listens, its database, its cache, its options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub db: DbConfig,
    pub cache: Option<CacheConfig>,
    pub options: ServerOptions,
}

impl ServeConfig {
    pub fn settings(&self) -> Settings {
        Settings {
            listen: self.listen,
            db: self.db.clone(),
            cache: self.cache.config(),
            options: self.server.options(),
        }
    }
}

/// The server, assembled: the one function `reviews serve`, `reviews dev` and the tests build it
/// with, so what is tested is what runs.
pub struct Application {
    listener: TcpListener,
    service: Service,
    metrics: Arc<Metrics>,
    options: ServerOptions,
}

impl Application {
    /// Binds the listener and builds the service on its database and cache, connecting to
    /// neither: the server starts (not ready) while they are down.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = listen(settings.listen)
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        let metrics = Arc::new(Metrics::default());
        let db = Db::new(&settings.db, metrics.clone());
        let cache = match settings.cache {
            Some(cfg) => {
                tracing::info!(ttl = ?cfg.ttl, "caching reads in Redis");
                Some(Cache::new(cfg, metrics.clone())?)
            }
            None => {
                tracing::info!("REDIS_URL is not set: serving without a cache");
                None
            }
        };
        let mut options = settings.options;
        let limits = &options.limits;
        if limits.enabled {
            tracing::info!(
                create = %limits.create,
                helpful = %limits.helpful,
                report = %limits.report,
                client_header = limits.client_header.as_ref().map(::http::HeaderName::as_str),
                "rate limits on"
            );
        } else {
            tracing::info!("rate limits off (REVIEWS_RATE_LIMIT=off)");
        }
        options.http.max_in_flight = Some(
            options
                .http
                .max_in_flight
                .unwrap_or(IN_FLIGHT_PER_CONNECTION * settings.db.pool_size as usize),
        );
        options.http.min_in_flight = settings.db.pool_size as usize;
        Ok(Self {
            listener,
            service: Service::new(
                db,
                cache,
                metrics.clone(),
                WriteRules {
                    voter_key: options
                        .voter_key
                        .as_ref()
                        .map_or(PUBLIC_VOTER_KEY, Secret::expose)
                        .as_bytes()
                        .to_vec(),
                    limits: options.limits.clone(),
                    one_review_per_email: options.one_review_per_email,
                },
            ),
            metrics,
            options,
        })
    }

    /// Pauses in the read path, for tests that make races deterministic.
    #[cfg(feature = "test-hooks")]
    pub fn with_hooks(mut self, hooks: crate::service::Hooks) -> Self {
        self.service = self.service.with_hooks(hooks);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Everything the listener serves on its one port: the gRPC services (plain and gRPC-Web),
    /// the JSON edge, the probes and the metrics; and the readiness they report. Public so that
    /// the fuzz targets (`fuzz/`) drive exactly the stack that runs.
    pub async fn app(&self) -> anyhow::Result<(axum::Router, Readiness)> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter).await;
        let (ready, seen) = (self.metrics.ready.clone(), readiness.clone());
        self.metrics
            .sample(move || ready.set(i64::from(seen.is_ready())));
        let grpc = Routes::new(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(ReviewServiceServer::new(ReviewsGrpc::new(
                self.service.clone(),
            )))
            .prepare()
            .into_axum_router();
        let app = http::router(
            grpc,
            &SERVICES,
            self.service.clone(),
            readiness.clone(),
            self.metrics.clone(),
            &self.options.http,
        );
        Ok((app, readiness))
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, stops accepting
    /// connections, lets the calls in flight finish, and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (app, readiness) = self.app().await?;
        let tracker = tokio::spawn(health::track(
            self.service.db().clone(),
            readiness.clone(),
            self.options.health_interval,
        ));
        let stop_tracking = tracker.abort_handle();

        tracing::info!(addr = %self.listener.local_addr()?, "serving gRPC, gRPC-Web and JSON");
        let drain_delay = self.options.connections.drain_delay;
        listener::serve(
            self.listener,
            app,
            self.options.connections,
            self.metrics,
            shutdown,
            async {
                tracing::info!(?drain_delay, "shutting down: draining connections");
                stop_tracking.abort();
                readiness.set(false).await;
            },
        )
        .await;
        tracker.abort();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`): a burst of new
/// clients (a replica taking over another's) is accepted rather than left to retransmit its SYN
/// a second later. tokio's `TcpListener::bind` asks for 1,024.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The descriptor sets of every service `app` serves, for the metrics of their methods.
const SERVICES: [&[u8]; 4] = [
    FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Reflection knows the review service and health; v1alpha is served too, for older clients.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
