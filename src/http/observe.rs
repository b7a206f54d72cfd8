//! RED metrics of every request, outermost on the router: gRPC calls under go-grpc-prometheus'
//! names (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`), everything else (JSON, gRPC-Web, probes) under
//! OpenTelemetry's HTTP semantic conventions (`http_server_request_duration_seconds`) by route
//! template, never by raw path: a path that no route matches has an empty `http_route`.
//!
//! And the request's span, around everything the request does: the trace it belongs to (the
//! caller's W3C `traceparent`, on gRPC, gRPC-Web and JSON alike), what it is (RPC, route) and
//! what it is about (product, review, recorded by the core), so that every log line inside it
//! names them and an exported trace starts there.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method};
use http_body::{Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prometheus::{Histogram, IntCounter};
use prost::Message;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::edge::Route;
use crate::metrics::Metrics;
use crate::telemetry::{self, in_request, RequestLog};

/// The fixed routes of the router; their paths are their templates.
pub const FIXED_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/openapi.json", "/metrics"];

/// gRPC status codes by number, as go-grpc-prometheus spells them in `grpc_code`.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// One gRPC method's handles, made at start for every code (as go-grpc-prometheus'
/// `InitializeMetrics` does, so that a rate over a code that never happened is 0, not absent).
struct GrpcMethod {
    /// `/package.Service/Method`.
    path: String,
    service: String,
    /// Shared with each call's log context.
    method: Arc<str>,
    started: IntCounter,
    handled: [IntCounter; 17],
    seconds: Histogram,
}

/// The methods served, from the descriptor sets of the services on the router; calls to any
/// other path count under `unknown`.
pub(super) struct GrpcMethods {
    known: Vec<GrpcMethod>,
    unknown: GrpcMethod,
}

#[derive(Clone)]
pub(super) struct Observe {
    metrics: Arc<Metrics>,
    grpc: Arc<GrpcMethods>,
}

impl Observe {
    /// The handles of every method in `descriptor_sets` (encoded `FileDescriptorSet`s).
    pub(super) fn new(metrics: Arc<Metrics>, descriptor_sets: &[&[u8]]) -> Self {
        let method = |ty: &str, service: &str, name: &str, path: String| {
            let f = &metrics.rpc;
            GrpcMethod {
                started: f.grpc_started.with_label_values(&[ty, service, name]),
                handled: CODES
                    .map(|code| f.grpc_handled.with_label_values(&[ty, service, name, code])),
                seconds: f.grpc_seconds.with_label_values(&[ty, service, name]),
                path,
                service: service.to_owned(),
                method: name.into(),
            }
        };
        let mut known = Vec::new();
        for set in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*set)
                .expect("the descriptor sets compiled into the binary decode");
            for file in &set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for m in &service.method {
                        let ty = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (false, true) => "server_stream",
                            (true, false) => "client_stream",
                            (true, true) => "bidi_stream",
                        };
                        let path = format!("/{full}/{}", m.name());
                        if !known.iter().any(|k: &GrpcMethod| k.path == path) {
                            known.push(method(ty, &full, m.name(), path));
                        }
                    }
                }
            }
        }
        let unknown = method("unary", "unknown", "unknown", String::new());
        Self {
            grpc: Arc::new(GrpcMethods { known, unknown }),
            metrics,
        }
    }
}

impl GrpcMethods {
    fn find(&self, path: &str) -> Option<usize> {
        self.known.iter().position(|m| m.path == path)
    }

    fn get(&self, index: Option<usize>) -> &GrpcMethod {
        index.map_or(&self.unknown, |i| &self.known[i])
    }
}

/// Counts the request in flight until its answer's headers leave.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

pub(super) async fn observe(State(o): State<Observe>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    o.metrics.requests.inc();
    o.metrics.in_flight.inc();
    let _in_flight = InFlight(&o.metrics);
    let method = method_label(request.method());
    let path = request.uri().path();
    let index = o.grpc.find(path);
    let fixed = FIXED_ROUTES.iter().copied().find(|r| *r == path);
    // The JSON route the edge will take (it matches again to bind the path's fields): known
    // now, the span has it from the start.
    let json = match (index, fixed) {
        (None, None) => super::edge::route_of(request.method(), path),
        _ => None,
    };
    let (log, span) = request_log(
        request.headers(),
        method,
        index.map(|i| &o.grpc.known[i]),
        json,
    );
    if is_grpc(request.headers()) {
        o.grpc.get(index).started.inc();
        let response = in_request(log, next.run(request).instrument(span.clone())).await;
        let call = Call {
            methods: o.grpc.clone(),
            index,
            start,
            span,
        };
        // A trailers-only answer (an error, a refusal) has its status in the headers.
        if let Some(code) = grpc_code(response.headers()) {
            call.finish(code);
            return response;
        }
        return response.map(|body| {
            Body::new(Handled {
                inner: body,
                call: Some(call),
            })
        });
    }
    let route = fixed
        .or_else(|| index.map(|i| o.grpc.known[i].path.as_str()))
        .or_else(|| json.map(|r| r.template))
        .unwrap_or("");
    let response = in_request(log, next.run(request).instrument(span.clone())).await;
    let status = response.status();
    o.metrics
        .http_histogram(method, route, status.as_str())
        .observe(start.elapsed().as_secs_f64());
    if !telemetry::tracing_enabled() {
        return response;
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if index.is_none() {
        // gRPC-Web is named by its RPC from the start; JSON by its method and route, known
        // only now (OpenTelemetry's HTTP server span name).
        let name = match route {
            "" => method.to_owned(),
            route => format!("{method} {route}"),
        };
        span.context().span().update_name(name);
    }
    response
}

/// What names a request in its log lines, and its span when spans are exported (none
/// otherwise: the logs need none, and a span per request costs a cache hit some 12 %), in the
/// caller's trace, named by its RPC when it is one. Every field known now is given now; only
/// the subject, learnt by the core, and the answer's status are recorded later.
fn request_log(
    headers: &HeaderMap,
    method: &'static str,
    rpc: Option<&GrpcMethod>,
    json: Option<&'static Route>,
) -> (RequestLog, Span) {
    let mut log = RequestLog::default();
    log.request_id = headers.get("x-request-id").cloned();
    match rpc {
        Some(rpc) => log.rpc_method = Some(rpc.method.clone()),
        None => {
            log.http_method = Some(method);
            log.http_route = json.map(|r| r.template);
            log.rpc_method = json.map(|r| r.call.name().into());
        }
    }
    if !telemetry::tracing_enabled() {
        // Not exporting, the logs still name the caller's trace.
        log.trace_id = headers
            .get("traceparent")
            .and_then(caller_trace_id)
            .and_then(|hex| TraceId::from_hex(hex).ok());
        return (log, Span::none());
    }
    let span = match rpc {
        Some(rpc) => tracing::info_span!(
            telemetry::REQUEST_SPAN,
            otel.name = &rpc.path[1..],
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = rpc.service.as_str(),
            rpc.method = &*rpc.method,
            request_id = log.request_id(),
            product_id = Empty,
            review_id = Empty,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
        None => tracing::info_span!(
            telemetry::REQUEST_SPAN,
            otel.kind = "server",
            http.request.method = method,
            http.route = log.http_route,
            rpc.method = log.rpc_method.as_deref(),
            request_id = log.request_id(),
            product_id = Empty,
            review_id = Empty,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        ),
    };
    let _ = span.set_parent(TraceContextPropagator::new().extract(&Headers(headers)));
    let trace_id = span.context().span().span_context().trace_id();
    log.trace_id = (trace_id != TraceId::INVALID).then_some(trace_id);
    (log, span)
}

/// The trace id of a W3C `traceparent` (version 00: `00-<32 hex>-<16 hex>-<2 hex>`), if valid.
fn caller_trace_id(value: &http::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let mut parts = value.split('-');
    let (Some("00"), Some(trace), Some(span), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let valid = trace.len() == 32
        && span.len() == 16
        && flags.len() == 2
        && hex(trace)
        && hex(span)
        && hex(flags)
        && nonzero(trace)
        && nonzero(span);
    valid.then_some(trace)
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Native gRPC (HTTP/2, `application/grpc`); gRPC-Web is HTTP to these metrics, as to the
/// semantic conventions.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
        })
}

/// `http_request_method`: the known methods as they are, any other as `_OTHER` (bounded, as the
/// semantic conventions require).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code: usize = std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()?;
    Some(if code < CODES.len() { code } else { UNKNOWN })
}

/// A gRPC call whose status is not known yet: it is in its answer's trailers.
struct Call {
    methods: Arc<GrpcMethods>,
    index: Option<usize>,
    start: Instant,
    /// The request's span, open until the status is known.
    span: Span,
}

/// The codes that are the server's failure, not the caller's (OpenTelemetry's rule for server
/// spans): Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss.
const SERVER_ERRORS: [usize; 6] = [2, 4, 12, 13, 14, 15];

impl Call {
    fn finish(self, code: usize) {
        let method = self.methods.get(self.index);
        method.handled[code].inc();
        method.seconds.observe(self.start.elapsed().as_secs_f64());
        if telemetry::tracing_enabled() {
            self.span.record("rpc.grpc.status_code", code);
            if SERVER_ERRORS.contains(&code) {
                self.span.record("otel.status_code", "ERROR");
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A gRPC answer's body that records the call when its trailers pass, or as `Canceled`
    /// when it is dropped before (the client went away).
    struct Handled<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for Handled<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(CANCELED);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for Handled<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| grpc_code(t).unwrap_or(UNKNOWN)),
            // Ended without trailers, or broke: no status reached the client.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => Some(UNKNOWN),
            Poll::Pending => None,
        };
        if let Some(call) = code.and_then(|_| this.call.take()) {
            call.finish(code.unwrap_or(UNKNOWN));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_its_type_and_unknown_paths_share_one_series() {
        let metrics = Arc::new(Metrics::new());
        let o = Observe::new(
            metrics.clone(),
            &[
                crate::grpc::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        );
        let paths: Vec<&str> = o.grpc.known.iter().map(|m| m.path.as_str()).collect();
        assert!(
            paths.contains(&"/reviews.v1.ReviewService/ListReviews"),
            "{paths:?}"
        );
        assert!(paths.contains(&"/grpc.health.v1.Health/Watch"), "{paths:?}");
        assert_eq!(o.grpc.find("/reviews.v1.ReviewService/Nope"), None);
        o.grpc
            .get(o.grpc.find("/grpc.health.v1.Health/Watch"))
            .handled[0]
            .inc();
        let text = metrics.render();
        assert!(
            text.contains(
                "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",\
                 grpc_service=\"grpc.health.v1.Health\",grpc_type=\"server_stream\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"unknown\",grpc_service=\"unknown\",\
             grpc_type=\"unary\"} 0"
        ));
    }

    #[test]
    fn methods_outside_the_known_set_are_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
    }
}
