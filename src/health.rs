//! Readiness: whether the database answers, as gRPC health (`""` and `reviews.v1.ReviewService`)
//! and for the HTTP `/readyz` probe. It turns NOT_SERVING as soon as shutdown begins. Liveness
//! is the gRPC health service `liveness` (and HTTP `/healthz`): SERVING while the process
//! answers, whatever the database does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::db::Db;
use crate::pb::review_service_server::SERVICE_NAME;

#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
}

/// The gRPC health service name of the liveness probe.
pub const LIVENESS: &str = "liveness";

impl Readiness {
    pub async fn new(reporter: HealthReporter) -> Self {
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            reporter,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub async fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }
}

/// Re-checks the database every `interval` and reports changes.
pub async fn track(db: Db, readiness: Readiness, interval: Duration) {
    let mut last = None;
    loop {
        let ready = db.ping().await.is_ok();
        if last != Some(ready) {
            tracing::info!(ready, "readiness changed");
            readiness.set(ready).await;
            last = Some(ready);
        }
        tokio::time::sleep(interval).await;
    }
}
