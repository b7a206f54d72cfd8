//! Assembles the server: the review service, health (readiness follows the database),
//! reflection, and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::db::Store;
use crate::grpc::{ReviewsGrpc, FILE_DESCRIPTOR_SET};
use crate::pb::review_service_server::{ReviewServiceServer, SERVICE_NAME};

/// Serves on `listener` until `shutdown` resolves, then stops accepting connections, lets the
/// calls in flight finish, and returns.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    health_interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let readiness = tokio::spawn(track_readiness(
        store.clone(),
        reporter.clone(),
        health_interval,
    ));
    let stop_readiness = readiness.abort_handle();

    tracing::info!(addr = %listener.local_addr()?, "serving gRPC");
    let result = Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ReviewServiceServer::new(ReviewsGrpc::new(store)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            shutdown.await;
            tracing::info!("shutting down: finishing the calls in flight");
            stop_readiness.abort();
            set_status(&reporter, ServingStatus::NotServing).await;
        })
        .await;
    readiness.abort();
    tracing::info!("server stopped");
    Ok(result?)
}

/// Reports SERVING while the database answers, NOT_SERVING while it does not, both for the
/// whole server ("") and for `reviews.v1.ReviewService`.
async fn track_readiness(store: Store, reporter: HealthReporter, interval: Duration) {
    let mut last = None;
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(status) {
            tracing::info!(?status, "readiness changed");
            set_status(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(interval).await;
    }
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
