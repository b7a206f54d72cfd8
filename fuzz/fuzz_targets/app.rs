//! The service's whole HTTP application, as `reviews serve` assembles it, over a database that
//! refuses every connection at once and no Redis: a request that decodes and validates gets
//! UNAVAILABLE (503) in a moment, one that does not gets its 4xx, and the fuzzer can tell the
//! decoding path apart from the store without waiting on either.

use std::sync::OnceLock;

use reviews::db::DbConfig;
use reviews::server::{Application, ServerOptions, Settings};

pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub app: axum::Router,
}

pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let app = runtime.block_on(async {
            // Port 1: nothing listens, so every connection attempt is refused at once.
            let mut db = DbConfig::new("postgres://fuzz@127.0.0.1:1/fuzz");
            db.pool_size = 1;
            db.connect_timeout = std::time::Duration::from_millis(1);
            let settings = Settings {
                listen: "127.0.0.1:0".parse().unwrap(),
                db,
                cache: None,
                options: ServerOptions::default(),
            };
            let application = Application::build(settings).await.expect("the server builds");
            application.app().await.expect("the application").0
        });
        Harness { runtime, app }
    })
}

/// Sends `request` through the application; its status, headers and whole body.
pub fn call(request: http::Request<axum::body::Body>) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let h = harness();
    h.runtime.block_on(async {
        let response = h.app.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a body").to_bytes();
        (parts.status, parts.headers, body)
    })
}
