//! Assembles the server: the review service over gRPC, gRPC-Web and the JSON edge on one
//! listener, health (readiness follows the database), reflection, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::cache::CacheArgs;
use crate::config::{default_duration, parse_duration};
use crate::db::{DbConfig, Store};
use crate::grpc::{ReviewsGrpc, FILE_DESCRIPTOR_SET};
use crate::health::{self, Readiness};
use crate::http::{self, HttpConfig, JsonEdge};
use crate::pb::review_service_server::ReviewServiceServer;

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
}

impl ServerArgs {
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            health_interval: self.health_interval,
            max_connection_age: self.max_connection_age,
            http: HttpConfig {
                cors_origins: self.cors_origins.clone(),
                max_body: self.max_body_bytes,
            },
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
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            health_interval: default_duration(DEFAULT_HEALTH_INTERVAL),
            max_connection_age: None,
            http: HttpConfig::default(),
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then reports NOT_SERVING, stops accepting
/// connections, lets the calls in flight finish, and returns.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter).await;
    let grpc = Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(ReviewServiceServer::new(ReviewsGrpc::new(store.clone())))
        .prepare()
        .into_axum_router();
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)?;
    let edge = JsonEdge::new(
        http::routes::from_descriptors(&pool)?,
        grpc.clone(),
        options.http.max_body,
    );
    let app = http::router(
        grpc,
        edge,
        readiness.clone(),
        store.metrics().clone(),
        &options.http,
    );

    let tracker = tokio::spawn(health::track(
        store,
        readiness.clone(),
        options.health_interval,
    ));
    let stop_tracking = tracker.abort_handle();

    tracing::info!(addr = %listener.local_addr()?, "serving gRPC, gRPC-Web and JSON");
    let mut builder = Server::builder().accept_http1(true);
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let result = builder
        .serve_with_incoming_shutdown(app, TcpListenerStream::new(listener), async {
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
