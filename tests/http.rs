//! The JSON edge and gRPC-Web on the gRPC port: legacy-compatible bodies, codes and errors,
//! robustness against bad HTTP input, CORS, probes, and routes that follow the proto.

mod common;

use std::time::Duration;

use common::{fingerprint, TestServer};
use reqwest::{Client, Method, Response, StatusCode};

fn client() -> Client {
    Client::new()
}

fn url(s: &TestServer, path: &str) -> String {
    format!("http://{}{path}", s.addr)
}

async fn get(s: &TestServer, path: &str) -> Response {
    client().get(url(s, path)).send().await.unwrap()
}

async fn post_json(s: &TestServer, body: impl Into<reqwest::Body>) -> Response {
    client()
        .post(url(s, "/reviews"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn content_type(r: &Response) -> String {
    r.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Status, content type and body text.
async fn parts(r: Response) -> (StatusCode, String, String) {
    let ct = content_type(&r);
    (r.status(), ct, r.text().await.unwrap())
}

const JSON: &str = "application/json; charset=utf-8";

#[tokio::test(flavor = "multi_thread")]
async fn get_routes_answer_byte_for_byte_like_the_legacy_api() {
    let s = TestServer::sample().await;
    for (path, golden) in [
        ("/reviews?product_id=2", "list_product_2.json"),
        (
            "/reviews?product_id=1&sort=newest&page=1&count=1",
            "list_product_1_newest_page_1.json",
        ),
        (
            "/reviews?count=1&page=2&product_id=1&sort=newest",
            "list_product_1_newest_page_2.json",
        ),
        ("/reviews?product_id=999999", "list_unknown_product.json"),
        ("/reviews/meta?product_id=1", "meta_product_1.json"),
        ("/reviews/meta?product_id=13", "meta_product_13.json"),
        ("/reviews/meta?product_id=21", "meta_product_21.json"),
    ] {
        let expected = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(golden),
        )
        .unwrap();
        let (status, ct, body) = parts(get(&s, path).await).await;
        assert_eq!((status, ct.as_str()), (StatusCode::OK, JSON), "{path}");
        assert_eq!(body, expected, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_answers_201_with_the_id_and_votes_answer_204() {
    let s = TestServer::sample().await;
    let review = serde_json::json!({
        "product_id": 2, "rating": 5, "summary": "Nice", "recommend": true,
        "body": "These sunglasses are great, very dark and comfortable on long drives.",
        "name": "jo", "email": "jo@example.com",
        "photos": ["https://images.example.com/a.jpg"], "characteristics": {"5": 4}
    });
    let (status, ct, body) = parts(post_json(&s, review.to_string()).await).await;
    assert_eq!((status, ct.as_str()), (StatusCode::CREATED, JSON));
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["review_id"]
        .as_i64()
        .unwrap();
    assert_eq!(body, format!("{{\"review_id\":{id}}}"));

    let list: serde_json::Value = serde_json::from_str(
        &get(&s, "/reviews?product_id=2&sort=newest")
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["results"][0]["review_id"], id);
    assert_eq!(
        list["results"][0]["photos"][0]["url"],
        "https://images.example.com/a.jpg"
    );

    for action in ["helpful", "report"] {
        let r = client()
            .put(url(&s, &format!("/reviews/{id}/{action}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{action}");
        assert!(r.text().await.unwrap().is_empty());
    }
    let meta = get(&s, "/reviews/meta?product_id=2")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        meta.contains(r#""ratings":{"3":"1","4":"2"}"#),
        "reported review not counted: {meta}"
    );

    let (status, ct, body) = parts(
        client()
            .put(url(&s, "/reviews/424242/helpful"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (StatusCode::NOT_FOUND, JSON));
    assert!(body.contains("review 424242 not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_product_id_gets_the_exact_legacy_text() {
    let s = TestServer::sample().await;
    for query in [
        "",
        "?product_id=",
        "?product_id=abc",
        "?product_id=0",
        "?product_id=-2",
        "?product_id=1.5",
        "?product_id=99999999999",
        "?product_id=1&product_id=2",
        "?product_id=%2B2",
        "?product_id=%202",
    ] {
        for route in ["/reviews", "/reviews/meta"] {
            let (status, ct, body) = parts(get(&s, &format!("{route}{query}")).await).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{route}{query}");
            assert_eq!(ct, "text/plain; charset=utf-8");
            assert_eq!(body, "Error: invalid product_id provided");
        }
    }
    let (status, _, body) = parts(post_json(&s, r#"{"product_id": "x"}"#).await).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Error: invalid product_id provided"
        )
    );
}

/// 422 with JSON naming each field, for every other invalid input.
#[tokio::test(flavor = "multi_thread")]
async fn other_invalid_input_is_422_json_naming_the_field() {
    let s = TestServer::sample().await;
    let db = s.sql().await;
    let before = fingerprint(&db).await;
    let cases: Vec<(Response, &[&str])> = vec![
        (get(&s, "/reviews?product_id=1&page=0").await, &["page"]),
        (get(&s, "/reviews?product_id=1&count=0").await, &["count"]),
        (get(&s, "/reviews?product_id=1&count=ten").await, &["count"]),
        (
            get(&s, "/reviews?product_id=1&sort=oldest").await,
            &["sort"],
        ),
        (
            get(&s, "/reviews?product_id=1&page=1&page=2").await,
            &["page"],
        ),
        (
            get(&s, "/reviews?product_id=1&colour=red").await,
            &["colour"],
        ),
        (get(&s, "/reviews?product_id=1&count=%FF").await, &["query"]),
        (
            post_json(&s, r#"{"product_id": 1, "rating": 7}"#).await,
            &["rating", "body", "name", "email"],
        ),
        (post_json(&s, "{\"product_id\": 1,").await, &["body"]),
        (post_json(&s, "").await, &["body"]),
        (post_json(&s, "[1, 2]").await, &["body"]),
        (
            post_json(
                &s,
                r#"{"product_id": 1, "rating": "five", "recommend": "yes"}"#,
            )
            .await,
            &["rating", "recommend"],
        ),
        (
            post_json(
                &s,
                r#"{"product_id": 1, "photos": "https://x.example/a.jpg"}"#,
            )
            .await,
            &["photos"],
        ),
        (
            post_json(&s, r#"{"product_id": 1, "characteristics": {"one": 5}}"#).await,
            &["characteristics[one]"],
        ),
        (
            post_json(&s, r#"{"product_id": 1, "helpfulness": 100}"#).await,
            &["helpfulness"],
        ),
        (
            post_json(&s, b"{\"product_id\": 1, \"name\": \"\xff\"}".to_vec()).await,
            &["body"],
        ),
        (
            client()
                .put(url(&s, "/reviews/abc/helpful"))
                .send()
                .await
                .unwrap(),
            &["review_id"],
        ),
        (
            client()
                .put(url(&s, "/reviews/0/report"))
                .send()
                .await
                .unwrap(),
            &["review_id"],
        ),
    ];
    for (i, (response, fields)) in cases.into_iter().enumerate() {
        let (status, ct, body) = parts(response).await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, JSON),
            "case {i}: {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut got: Vec<&str> = json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        let mut want = fields.to_vec();
        got.sort();
        want.sort();
        assert_eq!(got, want, "case {i}: {body}");
        assert_eq!(json["code"], "invalid_argument");
    }
    assert_eq!(fingerprint(&db).await, before, "bad input wrote nothing");
}

/// The request shapes the legacy API let through or answered oddly: clamped, refused, bounded.
#[tokio::test(flavor = "multi_thread")]
async fn odd_requests_are_clamped_or_refused_with_a_short_answer() {
    let s = TestServer::sample().await;
    let db = s.sql().await;
    let before = fingerprint(&db).await;

    // A page size of any size is clamped to the bound, like one just above it.
    for count in ["1000000000000", "99999999999999999999999999", "1001"] {
        let (status, _, body) =
            parts(get(&s, &format!("/reviews?product_id=1&count={count}")).await).await;
        assert_eq!(status, StatusCode::OK, "count={count}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["count"], 1000, "count={count}");
    }

    let review = |extra: &str| {
        format!(
            r#"{{"product_id": 2, "rating": 5, "summary": "Nice", "recommend": true,
                "body": "These sunglasses are great, very dark and comfortable on long drives.",
                "name": "jo", "email": "jo@example.com", "photos": [], "characteristics": {{}}{extra}}}"#
        )
    };
    let fields = |body: &str| -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(body).expect(body);
        json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{}: {}",
                    f["field"].as_str().unwrap(),
                    f["reason"].as_str().unwrap()
                )
            })
            .collect()
    };
    // A member given twice, or under both of its spellings.
    let (status, _, body) = parts(post_json(&s, review(r#", "rating": 1"#)).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("is given more than once"), "{body}");
    assert_eq!(fields(&body)[0], "body: is not valid JSON: the member \"rating\" is given more than once at line 3 column 102");
    // The product id is the only field with two spellings; a product id given twice is an
    // invalid product id, in the legacy text.
    let (status, _, body) = parts(post_json(&s, review(r#", "productId": 3"#)).await).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Error: invalid product_id provided"
        )
    );

    // Thousands of bad characteristic ids (and product 2's own left unrated): a short answer
    // that says how many more problems there are.
    let many: Vec<String> = (100_000..104_000)
        .map(|id| format!("\"{id}\": 3"))
        .collect();
    let bad = review("").replace(
        r#""characteristics": {}"#,
        &format!(r#""characteristics": {{{}}}"#, many.join(", ")),
    );
    let (status, _, body) = parts(post_json(&s, bad).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let shown = fields(&body);
    assert_eq!(shown.len(), reviews::error::MAX_VIOLATIONS + 1, "{body}");
    assert_eq!(
        shown.last().unwrap(),
        "request: and 3991 more problems",
        "{body}"
    );
    assert!(body.len() < 4_096, "{} bytes", body.len());

    assert_eq!(fingerprint(&db).await, before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_http_is_a_clear_error_never_a_500_and_never_a_write() {
    let s = TestServer::sample().await;
    let db = s.sql().await;
    let before = fingerprint(&db).await;

    let huge = format!(
        "{{\"product_id\": 1, \"body\": \"{}\"}}",
        "a".repeat(200_000)
    );
    let (status, ct, body) = parts(post_json(&s, huge).await).await;
    assert_eq!((status, ct.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, JSON));
    assert!(body.contains("at most 65536 bytes"));

    // A body sent without a length is limited as it streams (over HTTP/2, where the server may
    // answer before the client has sent it all).
    let chunks =
        futures_util::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096])));
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2
        .post(url(&s, "/reviews"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Another content type, or none: the body is not taken for JSON.
    for ct in [Some("text/plain"), None] {
        let mut post = client()
            .post(url(&s, "/reviews"))
            .body(r#"{"product_id": 1}"#);
        if let Some(ct) = ct {
            post = post.header("content-type", ct);
        }
        let r = post.send().await.unwrap();
        assert_eq!(
            (r.status(), content_type(&r)),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, JSON.into()),
            "{ct:?}"
        );
    }

    let r = client().delete(url(&s, "/reviews")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, POST");
    assert_eq!(content_type(&r), JSON);
    let r = client()
        .post(url(&s, "/reviews/1/helpful"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "PUT");

    let head = client()
        .head(url(&s, "/reviews/meta?product_id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (head.status(), content_type(&head)),
        (StatusCode::OK, JSON.into())
    );
    assert!(head.text().await.unwrap().is_empty(), "HEAD has no body");

    for path in [
        "/",
        "/review",
        "/reviews/1",
        "/reviews/1/helpful/x",
        "/reviews/meta/1",
    ] {
        let (status, ct, _) = parts(get(&s, path).await).await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::NOT_FOUND, JSON),
            "{path}"
        );
    }
    assert_eq!(fingerprint(&db).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_503_and_not_ready() {
    // Nothing listens on port 1.
    let mut db = reviews::db::DbConfig::new("postgres://reviews@127.0.0.1:1/reviews");
    db.connect_timeout = Duration::from_millis(300);
    let s = TestServer::start_with(db).await;
    let started = std::time::Instant::now();
    let r = get(&s, "/reviews?product_id=1").await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, ct, body) = parts(r).await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, JSON)
    );
    assert!(!body.contains("127.0.0.1"), "no internals: {body}");
    assert_eq!(get(&s, "/healthz").await.status(), StatusCode::OK);
    assert_eq!(
        get(&s, "/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_answer_and_readiness_follows_the_database() {
    let s = TestServer::sample().await;
    let (status, ct, body) = parts(get(&s, "/healthz").await).await;
    assert_eq!(
        (status, ct.as_str(), body.as_str()),
        (StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
    );
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            get(&s, "/readyz").await.status() == StatusCode::OK
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_is_served_over_http1_and_h2c_on_the_grpc_port() {
    let s = TestServer::sample().await;
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let over_h2 = h2
        .get(url(&s, "/reviews/meta?product_id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(over_h2.version(), reqwest::Version::HTTP_2);
    let over_h1 = get(&s, "/reviews/meta?product_id=1").await;
    assert_eq!(over_h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(over_h2.text().await.unwrap(), over_h1.text().await.unwrap());
    // And gRPC on the same listener.
    let mut grpc = s.client.clone();
    let meta = grpc
        .get_review_meta(reviews::pb::GetReviewMetaRequest { product_id: 1 })
        .await
        .unwrap();
    assert_eq!(meta.into_inner().ratings.len(), 2);
}

/// A gRPC-Web call by hand: a framed message in, a data frame and a trailer frame out.
async fn grpc_web(
    s: &TestServer,
    text: bool,
    product_id: u8,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    // GetReviewMetaRequest { product_id } is field 1, varint.
    let frame = [0u8, 0, 0, 0, 2, 0x08, product_id];
    let (ct, body) = if text {
        ("application/grpc-web-text", base64(&frame).into_bytes())
    } else {
        ("application/grpc-web+proto", frame.to_vec())
    };
    let r = client()
        .post(url(s, "/reviews.v1.ReviewService/GetReviewMeta"))
        .header("content-type", ct)
        .header("accept", ct) // the reply's encoding follows Accept, as grpc-web clients send it
        .header("x-grpc-web", "1")
        .header("origin", "http://shop.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(
        content_type(&r).starts_with(ct),
        "{ct} answered as {}",
        content_type(&r)
    );
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "gRPC-Web reports errors in grpc-status"
    );
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap().to_vec();
    let bytes = if text { unbase64(&bytes) } else { bytes };
    (headers, bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_binary_and_text_work_over_http1() {
    let s = TestServer::sample().await;
    for text in [false, true] {
        let (_, body) = grpc_web(&s, text, 1).await;
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(body[0], 0, "a data frame first");
        let meta = <reviews::pb::ReviewMeta as prost::Message>::decode(&body[5..5 + len]).unwrap();
        assert_eq!(
            meta.characteristics["Fit"].value.as_deref(),
            Some("4.0000000000000000")
        );
        let trailer = &body[5 + len..];
        assert_eq!(trailer[0], 0x80, "then a trailer frame");
        assert!(String::from_utf8_lossy(&trailer[5..]).contains("grpc-status:0"));
    }
    // An error comes trailers-only: the status in the response headers, which CORS exposes.
    let (headers, _) = grpc_web(&s, false, 0).await;
    assert_eq!(
        headers["grpc-status"], "3",
        "INVALID_ARGUMENT for product 0"
    );
    assert!(headers.contains_key("grpc-status-details-bin"));

    // What is not a well-formed request is the caller's mistake, said briefly and the same way
    // over gRPC and gRPC-Web: not protobuf (field 1 as a length of 100 bytes that never come), a
    // frame shorter than it says, a compressed frame without an encoding, text that is not
    // base64.
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let cases: [(&str, &[u8], &str); 7] = [
        // Found by the grpc_web_text fuzz target: a body without any message.
        ("no message", &[], "not a well-formed gRPC message"),
        (
            // Found by the grpc_web_text fuzz target: a frame that says it is 1.6 GB long.
            "too large",
            &[0, 0x60, 0, 0, 1, 0x08, 1],
            "larger than the service accepts",
        ),
        (
            // Found by the grpc_web_text fuzz target: a flag byte that is neither 0 nor 1.
            "invalid compression flag",
            &[0x40, 0, 0, 0, 2, 0x08, 1],
            "not a well-formed gRPC message",
        ),
        (
            "not protobuf",
            &[0, 0, 0, 0, 2, 0x0a, 100],
            "not a valid reviews.v1 protobuf message",
        ),
        (
            "short frame",
            &[0, 0, 0, 0, 100, 0x08, 1],
            "not a well-formed gRPC message",
        ),
        (
            "compressed",
            &[1, 0, 0, 0, 2, 0x08, 1],
            "not a well-formed gRPC message",
        ),
        ("not base64", b"!!!", "not a well-formed gRPC message"),
    ];
    for (case, body, want) in cases {
        let calls = if case == "not base64" {
            vec![("grpc-web-text", client(), "application/grpc-web-text")]
        } else {
            vec![
                ("grpc-web", client(), "application/grpc-web+proto"),
                ("grpc", h2.clone(), "application/grpc"),
            ]
        };
        for (face, http, ct) in calls {
            let r = http
                .post(url(&s, "/reviews.v1.ReviewService/GetReviewMeta"))
                .header("content-type", ct)
                .header("x-grpc-web", "1")
                .header("te", "trailers")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().replace("%20", " "))
                    .unwrap_or_default()
            };
            let (status, message) = (header("grpc-status"), header("grpc-message"));
            let expected = if case == "too large" { "8" } else { "3" };
            assert_eq!(
                status, expected,
                "{case} over {face}: INVALID_ARGUMENT (RESOURCE_EXHAUSTED when too large), \
                 not {status} {message}"
            );
            assert!(message.contains(want), "{case} over {face}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_lets_configured_origins_read_grpc_errors() {
    let mut db = reviews::db::DbConfig::new(common::fresh_db(common::SAMPLE_TEMPLATE).await);
    db.connect_timeout = Duration::from_secs(2);
    let options = reviews::server::ServerOptions {
        http: reviews::http::HttpConfig {
            cors_origins: vec!["http://shop.example".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let s = TestServer::start_with_options(db, options).await;
    let preflight = |origin: &'static str| {
        client()
            .request(
                Method::OPTIONS,
                url(&s, "/reviews.v1.ReviewService/ListReviews"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent",
            )
            .send()
    };
    let ok = preflight("http://shop.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://shop.example"
    );
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        allowed.contains("x-grpc-web") && allowed.contains("content-type"),
        "{allowed}"
    );
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let r = client()
        .get(url(&s, "/reviews?product_id=1"))
        .header("origin", "http://shop.example")
        .send()
        .await
        .unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(h), "{exposed}");
    }
}

/// The routes served must be exactly the proto's `google.api.http` annotations, read here from
/// the .proto text independently of the descriptor the server uses.
#[tokio::test(flavor = "multi_thread")]
async fn served_routes_are_the_protos_annotations() {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/reviews/v1/reviews.proto"
    ))
    .unwrap();
    let mut annotated = Vec::new();
    let mut rpc = None;
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("rpc ") {
            rpc = rest.split('(').next().map(str::to_string);
        }
        for method in ["get", "put", "post", "delete", "patch"] {
            let tag = format!("{method}: \"");
            if let Some(i) = line.find(&tag) {
                let path = line[i + tag.len()..].split('"').next().unwrap();
                annotated.push((rpc.clone().unwrap(), method.to_string(), path.to_string()));
            }
        }
    }
    assert_eq!(annotated.len(), 7, "{annotated:?}");

    let s = TestServer::sample().await;
    let doc: serde_json::Value =
        serde_json::from_str(&get(&s, "/openapi.json").await.text().await.unwrap()).unwrap();
    let mut served = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            served.push((
                op["operationId"].as_str().unwrap().to_string(),
                method.clone(),
                path.clone(),
            ));
        }
    }
    annotated.sort();
    served.sort();
    assert_eq!(served, annotated);

    // And each annotated route reaches its RPC: an unknown review is NOT_FOUND only there, an
    // unknown product in the path has no reviews.
    for (_, method, path) in &annotated {
        let concrete = path
            .replace("{review_id}", "424242")
            .replace("{product_id}", "424242");
        let r = client()
            .request(
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                url(&s, &concrete),
            )
            .header("content-type", "application/json")
            .body(if method == "post" { "{}" } else { "" })
            .send()
            .await
            .unwrap();
        let expected = if path.contains("{review_id}") {
            StatusCode::NOT_FOUND
        } else if path.contains("{product_id}") {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY // no product_id given
        };
        assert_eq!(r.status(), expected, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_valid_openapi_3() {
    let s = TestServer::sample().await;
    let r = get(&s, "/openapi.json").await;
    assert_eq!(content_type(&r), "application/json");
    let doc = r.text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &doc).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; from openapi_spec_validator import validate; \
                      from openapi_spec_validator.readers import read_from_filename; \
                      validate(read_from_filename(sys.argv[1])[0]); print('valid')",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs (scripts/test installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["paths"]["/reviews"]["post"]["responses"]["201"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/reviews.v1.CreateReviewResponse"
    );
    assert!(doc["paths"]["/reviews/{review_id}/report"]["put"]["responses"]["204"].is_object());
}

/// The document states the bounds the service enforces, the same numbers as the code's.
#[test]
fn the_openapi_document_states_the_validators_bounds() {
    use reviews::reviews as r;
    let doc: serde_json::Value = serde_json::from_str(reviews::http::OPENAPI).unwrap();
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["reviews.v1.CreateReviewRequest"]["properties"];
    let n = |v: usize| serde_json::json!(v);
    assert_eq!(create["product_id"]["minimum"], 1);
    assert_eq!(
        (&create["rating"]["minimum"], &create["rating"]["maximum"]),
        (&n(1), &n(5))
    );
    assert_eq!(create["summary"]["maxLength"], n(r::MAX_SUMMARY_CHARS));
    assert_eq!(create["body"]["minLength"], n(r::MIN_BODY_CHARS));
    assert_eq!(create["body"]["maxLength"], n(r::MAX_BODY_CHARS));
    assert_eq!(create["name"]["maxLength"], n(r::MAX_NAME_CHARS));
    assert_eq!(create["email"]["maxLength"], n(r::MAX_EMAIL_CHARS));
    assert_eq!(create["email"]["format"], "email");
    assert_eq!(create["photos"]["maxItems"], n(r::MAX_PHOTOS));
    assert_eq!(create["photos"]["items"]["maxLength"], n(r::MAX_URL_CHARS));
    let values = &create["characteristics"]["additionalProperties"];
    assert_eq!((&values["minimum"], &values["maximum"]), (&n(1), &n(5)));
    let list = &doc["paths"]["/reviews"]["get"]["parameters"];
    for name in ["product_id", "page", "count"] {
        let p = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(p["schema"]["minimum"], 1, "{name}");
    }
    let count = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "count")
        .unwrap();
    assert!(
        count["schema"]["maximum"].is_null(),
        "count is clamped, not refused, above {}",
        r::MAX_PAGE_SIZE
    );
    let v1_list = doc["paths"]["/v1/products/{product_id}/reviews"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let v1 = |name: &str| &v1_list.iter().find(|p| p["name"] == name).unwrap()["schema"];
    assert_eq!(v1("product_id")["minimum"], 1);
    assert_eq!(v1("rating")["maxItems"], n(r::MAX_RATINGS));
    assert_eq!(
        (
            &v1("rating")["items"]["minimum"],
            &v1("rating")["items"]["maximum"]
        ),
        (&n(1), &n(5))
    );
    assert_eq!(v1("page_size")["minimum"], 0);
    assert!(v1("page_size")["maximum"].is_null() && v1("page_size")["format"].is_null());
    assert_eq!(v1("page_token")["maxLength"], n(r::MAX_TOKEN_CHARS));
    assert_eq!(v1("has_photos")["type"], "boolean");
    let rating = doc["paths"]["/v1/products/{product_id}/rating"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let rating = |name: &str| &rating.iter().find(|p| p["name"] == name).unwrap()["schema"];
    use reviews::http::{MAX_PRODUCT_NAME_CHARS, MAX_PRODUCT_URL_CHARS, MAX_SKU_CHARS};
    assert_eq!(
        rating("product_name")["maxLength"],
        n(MAX_PRODUCT_NAME_CHARS)
    );
    assert_eq!(rating("product_url")["maxLength"], n(MAX_PRODUCT_URL_CHARS));
    assert_eq!(rating("sku")["maxLength"], n(MAX_SKU_CHARS));
    let helpful = &doc["paths"]["/reviews/{review_id}/helpful"]["put"];
    assert_eq!(helpful["parameters"][0]["schema"]["minimum"], 1);
    assert!(helpful["responses"]["429"].is_object());
    assert!(doc["paths"]["/reviews"]["post"]["responses"]["409"].is_object());
}

/// Schemathesis (PyPI) generates requests from `/openapi.json`, valid and invalid ones, sends
/// them to the running server and checks every answer against the document: no 5xx, only
/// documented status codes and content types, bodies that match their schemas, invalid input
/// refused. One check is left out: `positive_data_acceptance` expects every schema-valid create
/// to succeed, but a create must rate exactly the product's characteristics, which depend on
/// the data, not on the schema (such a create is rightly 422).
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_answer_that_breaks_the_openapi_document() {
    let s = TestServer::sample().await;
    // From a scratch folder: schemathesis keeps what it found in `.hypothesis/` there.
    let scratch = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("schemathesis")
        .current_dir(scratch.path())
        .args([
            "run",
            &format!("http://{}/openapi.json", s.addr),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "40",
            "--seed",
            "11",
            "--no-color",
        ])
        .output()
        .await
        .expect("schemathesis runs (scripts/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            (0..4).map(move |i| {
                if i <= c.len() {
                    A[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                }
            })
        })
        .collect()
}

/// Decodes base64 text, which gRPC-Web text mode may split into several padded chunks.
fn unbase64(text: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if c == b'=' {
                pad += 1;
                0
            } else {
                A.iter().position(|&a| a == c).unwrap() as u32
            };
            n |= v << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// A plain HTTP request to a gRPC method's path is told, in JSON, what that path takes.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_request_to_a_grpc_path_gets_a_json_415() {
    let s = TestServer::sample().await;
    for (method, content_type) in [
        (Method::GET, None),
        (Method::POST, Some("application/json")),
    ] {
        let mut request = Client::new().request(
            method.clone(),
            format!("http://{}/reviews.v1.ReviewService/GetReviewMeta", s.addr),
        );
        if let Some(ct) = content_type {
            request = request.header("content-type", ct).body("{}");
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{method}");
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], "unsupported_media_type");
    }
}
