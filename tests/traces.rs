//! Traces as a platform receives them: the built `reviews serve`, configured by the standard
//! `OTEL_*` variables only, exports to a real OTLP/gRPC receiver (a tonic server from the
//! collector's own service definitions, `opentelemetry-proto`). A JSON, a gRPC and a gRPC-Web
//! request, each with a W3C `traceparent`, each give one trace under the caller's: the request,
//! the cache lookup, the database query by name, the cache fill. And the log lines inside a
//! request carry its trace id, route or RPC, and product or review, with tracing off too.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sandbox::{self, wait_until, Proc};
use common::{fresh_db, SAMPLE_TEMPLATE};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use reviews::pb;
use reviews::pb::review_service_client::ReviewServiceClient;

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Any::StringValue(s)) => s.clone(),
            Some(Any::IntValue(i)) => i.to_string(),
            Some(Any::BoolValue(b)) => b.to_string(),
            Some(Any::DoubleValue(d)) => d.to_string(),
            other => format!("{other:?}"),
        };
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Listens on a free loopback port; returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }

    fn trace(&self, trace: &str) -> Vec<Received> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.trace == trace).cloned().collect()
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The caller's span ids: a trace id and a parent span id for each request.
fn traceparent(n: u8) -> (String, String, String) {
    let trace = format!(
        "{:032x}",
        0x4bf92f3577b34da6a3ce929d0e0e4700_u128 + u128::from(n)
    );
    let parent = format!("{:016x}", 0x00f067aa0ba902b0_u64 + u64::from(n));
    let header = format!("00-{trace}-{parent}-01");
    (trace, parent, header)
}

/// A gRPC request carrying `traceparent` in its metadata.
fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

/// The spans of one read's trace: the request under the caller's span, and below it the cache
/// lookup (a miss), the database query by name only, and the cache fill.
fn assert_read_trace(spans: &[Received], parent: &str, name: &str, query: &str, product: &str) {
    let request = spans
        .iter()
        .find(|s| s.parent == parent)
        .unwrap_or_else(|| panic!("no span under the caller's {parent}: {spans:#?}"));
    assert_eq!(
        (request.name.as_str(), request.kind),
        (name, SERVER),
        "{request:#?}"
    );
    assert_eq!(request.service, "reviews-under-test");
    assert_eq!(request.attributes["product_id"], product, "{request:#?}");
    // Every other span descends from the request.
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    for span in spans {
        let mut at = span;
        while at.id != request.id {
            at = by_id
                .get(at.parent.as_str())
                .unwrap_or_else(|| panic!("{} is not under the request: {spans:#?}", span.name));
        }
    }
    let one = |name: &str| {
        let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0]
    };
    let lookup = one("cache.lookup");
    assert_eq!(lookup.kind, CLIENT);
    assert_eq!(lookup.attributes["cache.result"], "miss");
    assert_eq!(lookup.attributes["db.system.name"], "redis");
    let db = one(query);
    assert_eq!(db.kind, CLIENT);
    assert_eq!(db.attributes["db.system.name"], "postgresql");
    assert_eq!(db.attributes["db.query.summary"], query);
    // By name, never with values: no attribute but the known ones.
    let mut keys: Vec<&str> = db.attributes.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["db.query.summary", "db.system.name"], "{db:#?}");
    assert_eq!(one("cache.fill").kind, CLIENT);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_grpc_and_grpc_web_requests_are_traced_under_the_callers_traceparent() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let prefix = format!("traces-{}", std::process::id());
    let (server, addr) = sandbox::started(
        sandbox::serve(&db, &prefix, &["--rate-limit", "off"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "reviews-under-test")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("REVIEWS_LOG_FORMAT", "json"),
    )
    .await;
    assert!(server
        .stderr()
        .iter()
        .any(|l| l.contains("traces: exporting over OTLP")));
    let http = reqwest::Client::new();

    // The first read of an answer goes to the database without asking Redis (the cache's
    // doorkeeper); the second is a miss that queries and fills. The first ones carry no
    // traceparent: each starts a trace of its own.
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    let first = http
        .get(format!("http://{addr}/reviews?product_id=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    grpc.list_reviews(pb::ListReviewsRequest {
        product_id: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    // gRPC-Web's answers are gRPC's bytes: one cache entry for both.
    grpc.get_review_meta(pb::GetReviewMetaRequest { product_id: 5 })
        .await
        .unwrap();

    // JSON: a list of product 3 (a miss, a query, a fill).
    let (json_trace, json_parent, header) = traceparent(1);
    let listed = http
        .get(format!("http://{addr}/reviews?product_id=3"))
        .header("traceparent", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    listed.bytes().await.unwrap();

    // gRPC: a list of product 4.
    let (grpc_trace, grpc_parent, header) = traceparent(2);
    let request = pb::ListReviewsRequest {
        product_id: 4,
        ..Default::default()
    };
    grpc.list_reviews(traced(request, &header)).await.unwrap();

    // gRPC-Web: the meta of product 5.
    let (web_trace, web_parent, header) = traceparent(3);
    let frame = sandbox::grpc_web_frame(&pb::GetReviewMetaRequest { product_id: 5 });
    let answered = http
        .post(format!(
            "http://{addr}/reviews.v1.ReviewService/GetReviewMeta"
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("traceparent", &header)
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    answered.bytes().await.unwrap();

    for (trace, what) in [
        (&json_trace, "JSON"),
        (&grpc_trace, "gRPC"),
        (&web_trace, "gRPC-Web"),
    ] {
        wait_until(
            &format!("the {what} request's cache fill is exported"),
            Duration::from_secs(20),
            || async { receiver.trace(trace).iter().any(|s| s.name == "cache.fill") },
        )
        .await;
    }
    assert_read_trace(
        &receiver.trace(&json_trace),
        &json_parent,
        "GET /reviews",
        "list_reviews",
        "3",
    );
    let grpc = receiver.trace(&grpc_trace);
    assert_read_trace(
        &grpc,
        &grpc_parent,
        "reviews.v1.ReviewService/ListReviews",
        "list_reviews",
        "4",
    );
    let request = grpc.iter().find(|s| s.parent == grpc_parent).unwrap();
    assert_eq!(request.attributes["rpc.system"], "grpc");
    assert_eq!(request.attributes["rpc.method"], "ListReviews");
    assert_eq!(request.attributes["rpc.grpc.status_code"], "0");
    assert_read_trace(
        &receiver.trace(&web_trace),
        &web_parent,
        "reviews.v1.ReviewService/GetReviewMeta",
        "review_meta",
        "5",
    );

    // The first reads, without a traceparent, each started a trace of their own; the
    // readiness pings are not traced at all.
    let spans = receiver.0.lock().unwrap().clone();
    let roots: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    for name in [
        "GET /reviews",
        "reviews.v1.ReviewService/ListReviews",
        "reviews.v1.ReviewService/GetReviewMeta",
    ] {
        assert!(
            roots.contains(&name),
            "no trace of its own for {name}: {roots:?}"
        );
    }
    assert!(
        !spans.iter().any(|s| s.name == "ping"),
        "readiness pings are not traced: {spans:#?}"
    );

    // A write runs in a task of its own (it finishes when the caller hangs up); its database
    // write and its cache invalidation are still in the caller's trace, under the request.
    let (write_trace, write_parent, header) = traceparent(4);
    let review = serde_json::json!({
        "product_id": 3, "rating": 5, "summary": "traced", "recommend": true,
        "body": "a body long enough to be a valid review, fifty characters at least",
        "name": "tracer", "email": "tracer-write@example.com",
        "characteristics": {}
    });
    let meta = http
        .get(format!("http://{addr}/reviews/meta?product_id=3"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    let characteristics = sandbox::rate_all(&meta, 4);
    let mut review = review;
    review["characteristics"] = characteristics.into();
    let created = sandbox::post_review(addr, &[("traceparent", &header)], &review).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    wait_until(
        "the create's invalidation is exported",
        Duration::from_secs(20),
        || async {
            receiver
                .trace(&write_trace)
                .iter()
                .any(|s| s.name == "cache.invalidate")
        },
    )
    .await;
    let spans = receiver.trace(&write_trace);
    let request = spans
        .iter()
        .find(|s| s.parent == write_parent)
        .unwrap_or_else(|| panic!("no span under the caller's {write_parent}: {spans:#?}"));
    assert_eq!(request.name, "POST /reviews", "{request:#?}");
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    for name in ["create_review", "cache.invalidate"] {
        let mut at = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in the create's trace: {spans:#?}"));
        while at.id != request.id {
            at = by_id
                .get(at.parent.as_str())
                .unwrap_or_else(|| panic!("{name} is not under the request: {spans:#?}"));
        }
    }

    sandbox::stop(server).await;
}

/// The JSON log lines of a create through each face, each with its own `traceparent`.
async fn logged_creates(server: &mut Proc, addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let (_, _, json_header) = traceparent(10);
    let review = serde_json::json!({
        "product_id": 1, "rating": 4, "summary": "fits well", "recommend": true,
        "body": "a secret body long enough to be a valid review, fifty chars at least",
        "name": "tracer", "email": "tracer-json@example.com",
        "characteristics": {"1": 3, "2": 3, "3": 3, "4": 3}
    });
    let created = sandbox::post_review(addr, &[("traceparent", &json_header)], &review).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let (_, _, grpc_header) = traceparent(11);
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    let helpful = pb::MarkReviewHelpfulRequest { review_id: 5 };
    grpc.mark_review_helpful(traced(helpful, &grpc_header))
        .await
        .unwrap();
    let report = pb::ReportReviewRequest { review_id: 6 };
    grpc.report_review(traced(report, &grpc_header))
        .await
        .unwrap();
    server
        .stderr_line("review reported", Duration::from_secs(10))
        .await;
    server
        .stderr()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_inside_a_request_name_its_trace_route_and_subject_with_tracing_off() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let prefix = format!("traces-logs-{}", std::process::id());
    let (mut server, addr) = sandbox::started(
        sandbox::serve(&db, &prefix, &["--rate-limit", "off"]).env("REVIEWS_LOG_FORMAT", "json"),
    )
    .await;
    let logged = logged_creates(&mut server, addr).await;
    assert!(!server.stderr().iter().any(|l| l.contains("traces:")));
    let request_of = |message: &str| {
        let line = logged
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {logged:#?}"));
        line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
            .unwrap_or_else(|| panic!("{message:?} is not inside a request: {line:#}"))
            .clone()
    };
    let created = request_of("review created");
    assert_eq!(created["trace_id"], traceparent(10).0, "{created:#}");
    assert_eq!(created["http.route"], "/reviews");
    assert_eq!(created["rpc.method"], "CreateReview");
    assert_eq!(created["product_id"], 1);
    assert!(created["review_id"].as_i64().is_some(), "{created:#}");
    let reported = request_of("review reported");
    assert_eq!(reported["trace_id"], traceparent(11).0, "{reported:#}");
    assert_eq!(reported["rpc.method"], "ReportReview");
    assert_eq!(reported["review_id"], 6);
    // Never an email or a body.
    for line in server.stderr() {
        assert!(
            !line.contains("tracer-json@example.com") && !line.contains("a secret body"),
            "{line}"
        );
    }
    sandbox::stop(server).await;
}
