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
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::cache::{Cache, CacheArgs, CacheConfig};
use crate::config::{default_duration, parse_duration, parse_secret, Secret};
use crate::db::{Db, DbConfig};
use crate::grpc::{ReviewsGrpc, FILE_DESCRIPTOR_SET};
use crate::health::{self, Readiness};
use crate::http::{self, HttpConfig};
use crate::metrics::Metrics;
use crate::pb::review_service_server::ReviewServiceServer;
use crate::service::Service;

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
    /// Largest JSON request body, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "REVIEWS_MAX_BODY_BYTES", default_value_t = http::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Requests (gRPC, gRPC-Web, JSON) served at once; beyond it a request is refused at once
    /// (503 with Retry-After, or UNAVAILABLE) instead of queueing for a database connection.
    /// Default: 8 per database connection. Probes and metrics are never refused.
    #[arg(long = "max-in-flight", env = "REVIEWS_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,
    /// The secret key named voters are kept under (HMAC-SHA256 of the `Reviews-Voter` name).
    /// Every replica needs the same one; unset, a fixed public key is used, and a low-entropy
    /// voter name (a customer number) could be found again from its hash.
    #[arg(long = "voter-key", env = "REVIEWS_VOTER_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub voter_key: Option<Secret>,
}

impl ServerArgs {
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            health_interval: self.health_interval,
            max_connection_age: self.max_connection_age,
            http: HttpConfig {
                cors_origins: self.cors_origins.clone(),
                max_body: self.max_body_bytes,
                max_in_flight: self.max_in_flight.map(|n| n as usize),
            },
            voter_key: self.voter_key.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often readiness re-checks the database.
    pub health_interval: Duration,
    /// Age at which a connection is closed with a GOAWAY. (No grace period is set: in tonic
    /// 0.14.9 setting one skips the GOAWAY and cuts connections abruptly.)
    pub max_connection_age: Option<Duration>,
    pub http: HttpConfig,
    /// The key voter names are hashed under; `None`: [`PUBLIC_VOTER_KEY`].
    pub voter_key: Option<Secret>,
}

/// The voter key when none is configured.
pub const PUBLIC_VOTER_KEY: &str = "reviews.v1 voter";

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            health_interval: default_duration(DEFAULT_HEALTH_INTERVAL),
            max_connection_age: None,
            http: HttpConfig::default(),
            voter_key: None,
        }
    }
}

/// Requests admitted at once per database connection, unless `--max-in-flight` says otherwise:
/// enough that cache hits and short queries never wait on the limit, few enough that a request
/// past it would have waited seconds for a connection.
const IN_FLIGHT_PER_CONNECTION: usize = 8;

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
        let listener = TcpListener::bind(settings.listen)
            .await
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
        options.http.max_in_flight = Some(
            options
                .http
                .max_in_flight
                .unwrap_or(IN_FLIGHT_PER_CONNECTION * settings.db.pool_size as usize),
        );
        Ok(Self {
            listener,
            service: Service::new(
                db,
                cache,
                metrics.clone(),
                options
                    .voter_key
                    .as_ref()
                    .map_or(PUBLIC_VOTER_KEY, Secret::expose)
                    .as_bytes(),
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

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, stops accepting
    /// connections, lets the calls in flight finish, and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter).await;
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
            self.service.clone(),
            readiness.clone(),
            self.metrics,
            &self.options.http,
        );

        let tracker = tokio::spawn(health::track(
            self.service.db().clone(),
            readiness.clone(),
            self.options.health_interval,
        ));
        let stop_tracking = tracker.abort_handle();

        tracing::info!(addr = %self.listener.local_addr()?, "serving gRPC, gRPC-Web and JSON");
        // Without TCP_NODELAY, a small reply waits for the client's delayed ACK (40 ms on Linux).
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let mut builder = Server::builder().accept_http1(true);
        if let Some(age) = self.options.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let result = builder
            .serve_with_incoming_shutdown(app, incoming, async {
                shutdown.await;
                tracing::info!("shutting down: finishing the calls in flight");
                stop_tracking.abort();
                readiness.set(false).await;
            })
            .await;
        tracker.abort();
        tracing::info!("server stopped");
        Ok(result?)
    }
}

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
