//! The HTTP face of the service on the gRPC port: the JSON edge generated from the proto's
//! `google.api.http` routes, gRPC-Web for browsers, CORS, probes and the OpenAPI document.

mod admission;
mod codec;
mod conditional;
pub mod edge;
mod handlers;
mod linked_data;
mod observe;
mod response;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{self, HeaderName, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use handlers::{Json, JsonHandlers};
pub use linked_data::{MAX_PRODUCT_NAME_CHARS, MAX_PRODUCT_URL_CHARS, MAX_SKU_CHARS};
pub use response::INVALID_PRODUCT_ID;

use self::edge::Edge;
use self::response::json_error;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::service::Service;

/// The OpenAPI 3 document of the JSON edge, generated at build time from the same routes.
pub const OPENAPI: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The largest JSON body accepted by default, in bytes.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// How long shared caches may serve a GET answer while the service fails, by default.
pub const DEFAULT_STALE_IF_ERROR: &str = "60s";

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Origins allowed to call from a browser; `*` for any.
    pub cors_origins: Vec<String>,
    /// Largest JSON body accepted, in bytes.
    pub max_body: usize,
    /// Requests served at once; `None` for no limit (the server sets one from its pool).
    pub max_in_flight: Option<usize>,
    /// The least the limit adapts down to (the server sets its pool size).
    pub min_in_flight: usize,
    /// The runtime queue delay the limit adapts to; `None`: the limit stays at `max_in_flight`.
    pub queue_delay_target: Option<Duration>,
    /// How long a shared cache may serve a GET answer while the service fails; 0: not at all.
    pub stale_if_error: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: vec!["*".into()],
            max_body: DEFAULT_MAX_BODY,
            max_in_flight: None,
            min_in_flight: 1,
            queue_delay_target: None,
            stale_if_error: crate::config::parse_delay(DEFAULT_STALE_IF_ERROR)
                .expect("a valid delay"),
        }
    }
}

const OVERLOADED: &str = "the service is overloaded, retry shortly";

fn overloaded(request: &Request) -> Response {
    if let Some(framing) = grpc_framing(request) {
        return grpc_status(framing, tonic::Status::unavailable(OVERLOADED));
    }
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", OVERLOADED);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The content type a gRPC or gRPC-Web caller is answered in; `None` for other requests.
fn grpc_framing(request: &Request) -> Option<&'static str> {
    let ct = request.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(if ct.starts_with("application/grpc-web-text") {
        "application/grpc-web-text"
    } else if ct.starts_with("application/grpc-web") {
        "application/grpc-web+proto"
    } else if ct.starts_with("application/grpc") {
        "application/grpc"
    } else {
        return None;
    })
}

/// A gRPC method's path takes gRPC or gRPC-Web only; anything else (a JSON client that took a
/// wrong turn, a browser) gets a JSON 415 saying so, rather than tonic-web's empty 400.
async fn grpc_only(request: Request, next: Next) -> Response {
    if grpc_framing(&request).is_none() {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a gRPC method takes Content-Type application/grpc, application/grpc-web or \
             application/grpc-web-text",
        );
    }
    next.run(request).await
}

/// A trailers-only answer: the status in the headers, no message, in the caller's framing.
fn grpc_status(framing: &'static str, status: tonic::Status) -> Response {
    let mut response: Response = status.into_http();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(framing));
    response
}

/// Honours a gRPC caller's `grpc-timeout`: once it has passed, the call is abandoned and answered
/// DEADLINE_EXCEEDED. (A write it started runs to its end: see `service::detached`.)
async fn deadline(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let Some(framing) = grpc_framing(&request) else {
        return next.run(request).await;
    };
    let Some(value) = request.headers().get("grpc-timeout") else {
        return next.run(request).await;
    };
    let Some(limit) = parse_grpc_timeout(value.as_bytes()) else {
        return grpc_status(
            framing,
            tonic::Status::invalid_argument(
                "grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u or n)",
            ),
        );
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics.deadlines_exceeded.inc();
            grpc_status(
                framing,
                tonic::Status::deadline_exceeded("the call's deadline (grpc-timeout) passed"),
            )
        }
    }
}

/// `grpc-timeout`: at most 8 digits and a unit, per the gRPC over HTTP/2 protocol.
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_by_the_protocol() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout(b"99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"0n"), Some(Duration::ZERO));
        for bad in [
            &b""[..],
            b"S",
            b"100",
            b"123456789S",
            b"1s",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}

#[derive(Clone)]
struct Probes {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// One router for everything: the gRPC services (plain and gRPC-Web), the fixed HTTP routes, and
/// the JSON edge, which calls `service` directly, as the fallback. Only the gRPC router is
/// wrapped in the gRPC-Web layer, which would answer 400 to plain HTTP requests. `services`
/// are the encoded descriptor sets of the services on `grpc`, whose methods the metrics know.
pub fn router(
    grpc: axum::Router,
    services: &[&[u8]],
    service: Service,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    cfg: &HttpConfig,
) -> axum::Router {
    let observe = observe::Observe::new(metrics.clone(), services);
    let shed_metrics = metrics.clone();
    let probes = Probes { readiness, metrics };
    let fixed = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics_text))
        .with_state(probes);
    let mut grpc_web = grpc
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                crate::grpc::codec::rewrite_malformed_status(r.headers_mut());
                r
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            shed_metrics.clone(),
            deadline,
        ));
    let edge = Edge {
        api: JsonHandlers::new(service),
        max_body: cfg.max_body,
        cache_control: conditional::cache_control(cfg.stale_if_error),
    };
    let mut json = axum::Router::new()
        .fallback(edge::handle::<JsonHandlers>)
        .with_state(Arc::new(edge));
    if let Some(limit) = cfg.max_in_flight {
        // One limit for both: the gRPC and the JSON routes share the database.
        let admission = admission::Admission::new(
            limit,
            cfg.min_in_flight,
            cfg.queue_delay_target,
            shed_metrics,
        );
        let layer = axum::middleware::from_fn_with_state(admission, admission::admit);
        grpc_web = grpc_web.layer(layer.clone());
        json = json.layer(layer);
    }
    let grpc_web = grpc_web.layer(axum::middleware::from_fn(grpc_only));
    fixed
        .merge(grpc_web)
        .fallback_service(json)
        .layer(cors(cfg))
        .layer(axum::middleware::from_fn_with_state(
            observe,
            observe::observe,
        ))
}

fn cors(cfg: &HttpConfig) -> CorsLayer {
    let origins = if cfg.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let grpc_headers = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("connect-protocol-version"),
            HeaderName::from_static("connect-timeout-ms"),
            HeaderName::from_static("reviews-voter"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers(grpc_headers.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Liveness: the process answers.
async fn healthz() -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, TEXT)], "ok\n").into_response()
}

/// Readiness: the database answers (and the server is not shutting down).
async fn readyz(State(p): State<Probes>) -> Response {
    if p.readiness.is_ready() {
        (StatusCode::OK, [(CONTENT_TYPE, TEXT)], "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, TEXT)],
            "not ready: the database does not answer\n",
        )
            .into_response()
    }
}

async fn openapi_json() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI,
    )
        .into_response()
}

/// Prometheus text exposition.
async fn metrics_text(State(p): State<Probes>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        p.metrics.render(),
    )
        .into_response()
}
