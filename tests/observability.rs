//! The metrics as a platform sees them: Debian's Prometheus scrapes the built `reviews serve`
//! after known traffic, and the counts are read back through Prometheus' own query API; promtool
//! checks the exposition.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sandbox::{self, run_ok, wait_until, Proc};
use common::{fresh_db, scratch_dir, SAMPLE_TEMPLATE};
use reviews::pb;
use reviews::pb::review_service_client::ReviewServiceClient;

/// The instant-query URL of one PromQL expression.
fn query_url(prometheus: &str, promql: &str) -> String {
    let promql = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
    format!("http://{prometheus}/api/v1/query?query={promql}")
}

/// One instant query; the vector's samples as (labels, value).
async fn query(prometheus: &str, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let reply: serde_json::Value = reqwest::Client::new()
        .get(query_url(prometheus, promql))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(reply["status"], "success", "{promql}: {reply}");
    reply["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: {reply}"))
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"].clone(), value)
        })
        .collect()
}

/// The one value of a query that must give exactly one sample.
async fn value(prometheus: &str, promql: &str) -> f64 {
    let samples = query(prometheus, promql).await;
    assert_eq!(samples.len(), 1, "{promql}: {samples:?}");
    samples[0].1
}

/// A free port on loopback for Prometheus' own listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Known traffic: over gRPC three lists, one meta, a vote on a review that does not exist
/// (NOT_FOUND) and a list of product 0 (INVALID_ARGUMENT); over JSON two lists, one list with a
/// non-numeric product (422), two votes on review ids (one route, whatever the id), a path no
/// route matches (404) and a gRPC-Web list.
async fn drive(addr: std::net::SocketAddr) {
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    for _ in 0..3 {
        grpc.list_reviews(pb::ListReviewsRequest {
            product_id: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    grpc.get_review_meta(pb::GetReviewMetaRequest { product_id: 1 })
        .await
        .unwrap();
    let missing = grpc
        .mark_review_helpful(pb::MarkReviewHelpfulRequest {
            review_id: 999_999_999,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let invalid = grpc
        .list_reviews(pb::ListReviewsRequest {
            product_id: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");

    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    for (method, path, status) in [
        ("GET", "/reviews?product_id=1", 200),
        ("GET", "/reviews?product_id=2", 200),
        ("GET", "/reviews?product_id=abc", 422),
        ("PUT", "/reviews/1/helpful", 204),
        ("PUT", "/reviews/2/helpful", 204),
        ("GET", "/no/such/route/123", 404),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
    }
    // gRPC-Web: a list of product 1, framed by hand.
    let frame = sandbox::grpc_web_frame(&pb::ListReviewsRequest {
        product_id: 1,
        ..Default::default()
    });
    let response = http
        .post(format!("{base}/reviews.v1.ReviewService/ListReviews"))
        .header("content-type", "application/grpc-web+proto")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

/// The monitoring the prod overlay ships, checked against the server and the Prometheus that
/// scrapes it: the PodMonitor selects the Deployment's pods, on a port they declare, where
/// `/metrics` is, under the job the alerts select; promtool checks the PrometheusRule and runs
/// its unit tests (`k8s/components/monitoring/rules-test.yaml`); every expression of the rules
/// and of the Grafana dashboard runs on this Prometheus without error, and the dashboard's
/// per-RPC panel shows every RPC.
async fn check_monitoring(prometheus: &str, dir: &Path) {
    let objects = sandbox::render("prod");
    let find = |kind: &str, name: &dyn Fn(&str) -> bool| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(name))
            .unwrap_or_else(|| panic!("the prod overlay renders no {kind} of that name"))
    };
    let deployment = find("Deployment", &|n| n == "reviews");
    let pod = &deployment["spec"]["template"];
    let monitor = find("PodMonitor", &|n| n == "reviews");
    assert_eq!(
        monitor["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            &pod["metadata"]["labels"][key], value,
            "PodMonitor selector {key}"
        );
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(
        pod["metadata"]["labels"][job_label], "reviews",
        "the alerts select job=\"reviews\""
    );
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let ports = pod["spec"]["containers"][0]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == endpoints[0]["port"]),
        "PodMonitor port {} is not a container port: {ports:?}",
        endpoints[0]["port"]
    );
    assert_eq!(endpoints[0]["path"], "/metrics");

    let rule = find("PrometheusRule", &|n| n == "reviews");
    std::fs::write(
        dir.join("rules.yml"),
        serde_yaml_ng::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/components/monitoring/rules-test.yaml"),
        dir.join("rules-test.yaml"),
    )
    .unwrap();
    run_ok(
        Command::new("promtool")
            .args(["check", "rules", "rules.yml"])
            .current_dir(dir),
    );
    run_ok(
        Command::new("promtool")
            .args(["test", "rules", "rules-test.yaml"])
            .current_dir(dir),
    );
    let mut expressions = Vec::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            expressions.push(r["expr"].as_str().unwrap().to_owned());
        }
    }

    let board = find("ConfigMap", &|n| n.starts_with("reviews-dashboard"));
    assert_eq!(board["metadata"]["labels"]["grafana_dashboard"], "1");
    let board: serde_json::Value =
        serde_json::from_str(board["data"]["reviews.json"].as_str().unwrap()).unwrap();
    // Grafana's variables as a dashboard showing every namespace would set them.
    let grafana = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
    };
    let mut per_rpc = None;
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = grafana(target["expr"].as_str().unwrap());
            if panel["title"] == "Calls per RPC" {
                per_rpc = Some(expr.clone());
            }
            expressions.push(expr);
        }
    }
    assert!(expressions.len() > 40, "{expressions:?}");
    for expr in &expressions {
        query(prometheus, expr).await;
    }
    // A rate needs two scrapes in its window.
    let per_rpc = per_rpc.expect("a \"Calls per RPC\" panel");
    let methods = || async {
        let mut methods: Vec<String> = query(prometheus, &per_rpc)
            .await
            .iter()
            .map(|(labels, _)| labels["grpc_method"].as_str().unwrap().to_owned())
            .collect();
        methods.sort();
        methods
    };
    wait_until(
        "the dashboard's per-RPC panel has data",
        Duration::from_secs(30),
        || async { !methods().await.is_empty() },
    )
    .await;
    let methods = methods().await;
    assert_eq!(
        methods,
        [
            "CreateReview",
            "GetProductRating",
            "GetReviewMeta",
            "ListProductReviews",
            "ListReviews",
            "MarkReviewHelpful",
            "ReportReview"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_exact_red_metrics_of_known_traffic_and_promtool_finds_no_problem() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let prefix = format!("observe-{}", std::process::id());
    // The flag as the README writes it (`--rate-limit off`, a separate value).
    let (server, addr) =
        sandbox::started(&mut sandbox::serve(&db, &prefix, &["--rate-limit", "off"])).await;
    drive(addr).await;

    let exposition = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), exposition.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let dir = scratch_dir("prometheus");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: reviews\n    \
             static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Proc::spawn(Command::new("prometheus").args([
        &format!("--config.file={}", dir.join("prometheus.yml").display()),
        &format!("--storage.tsdb.path={}", dir.join("data").display()),
        &format!("--web.listen-address={listen}"),
    ]));
    // The first scrape after the traffic has every count; later ones the same.
    wait_until(
        "Prometheus has scraped the server",
        Duration::from_secs(60),
        || {
            let listen = listen.clone();
            async move {
                let Ok(reply) = reqwest::Client::new()
                    .get(query_url(&listen, "up{job=\"reviews\"} == 1"))
                    .send()
                    .await
                else {
                    return false;
                };
                reply
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|r| r["data"]["result"].as_array().is_some_and(|a| a.len() == 1))
            }
        },
    )
    .await;
    let p = listen.as_str();
    let rpc = |m: &str| {
        format!("grpc_service=\"reviews.v1.ReviewService\",grpc_method=\"{m}\",grpc_type=\"unary\"")
    };
    let http = |method: &str, route: &str, status: u16| {
        format!(
            "http_server_request_duration_seconds_count{{http_request_method=\"{method}\",\
             http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
        )
    };
    let exact = [
        (
            format!("grpc_server_started_total{{{}}}", rpc("ListReviews")),
            4.0,
        ),
        (
            format!(
                "grpc_server_handled_total{{{},grpc_code=\"OK\"}}",
                rpc("ListReviews")
            ),
            3.0,
        ),
        (
            format!(
                "grpc_server_handled_total{{{},grpc_code=\"InvalidArgument\"}}",
                rpc("ListReviews")
            ),
            1.0,
        ),
        (
            format!(
                "grpc_server_handled_total{{{},grpc_code=\"OK\"}}",
                rpc("GetReviewMeta")
            ),
            1.0,
        ),
        (
            format!(
                "grpc_server_handled_total{{{},grpc_code=\"NotFound\"}}",
                rpc("MarkReviewHelpful")
            ),
            1.0,
        ),
        // Every code of every method exists from the start, at 0.
        (
            format!(
                "grpc_server_handled_total{{{},grpc_code=\"Unavailable\"}}",
                rpc("ReportReview")
            ),
            0.0,
        ),
        (
            format!(
                "grpc_server_handling_seconds_count{{{}}}",
                rpc("ListReviews")
            ),
            4.0,
        ),
        (
            "sum(grpc_server_handled_total{grpc_service=\"reviews.v1.ReviewService\"})".into(),
            6.0,
        ),
        (http("GET", "/reviews", 200), 2.0),
        (http("GET", "/reviews", 422), 1.0),
        (http("PUT", "/reviews/{review_id}/helpful", 204), 2.0),
        // No route matched: no http_route label at all.
        (http("GET", "", 404), 1.0),
        (
            http("POST", "/reviews.v1.ReviewService/ListReviews", 200),
            1.0,
        ),
        (
            format!(
                "reviews_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
        (
            "reviews_db_pool_max_connections{pool=\"primary\"}".into(),
            4.0,
        ),
        ("reviews_cache_enabled".into(), 1.0),
        ("reviews_ready".into(), 1.0),
        ("reviews_cache_breaker_open".into(), 0.0),
    ];
    for (promql, expected) in &exact {
        assert_eq!(value(p, promql).await, *expected, "{promql}");
    }
    // Routes are templates: no series carries an id or a raw path.
    let routes = query(
        p,
        "count by (http_route) (http_server_request_duration_seconds_count)",
    )
    .await;
    let mut seen: Vec<String> = routes
        .iter()
        .map(|(labels, _)| labels["http_route"].as_str().unwrap_or("").to_owned())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "",
            "/metrics",
            "/reviews",
            "/reviews.v1.ReviewService/ListReviews",
            "/reviews/{review_id}/helpful",
        ],
        "{routes:?}"
    );
    // A plausible histogram: the median list took more than nothing and less than a second,
    // and the buckets are cumulative up to the count.
    let median = value(
        p,
        &format!(
            "histogram_quantile(0.5, sum by (le) (grpc_server_handling_seconds_bucket{{{}}}))",
            rpc("ListReviews")
        ),
    )
    .await;
    assert!(median > 0.0 && median < 1.0, "median {median}");
    assert_eq!(
        value(
            p,
            &format!(
                "grpc_server_handling_seconds_bucket{{{},le=\"+Inf\"}}",
                rpc("ListReviews")
            ),
        )
        .await,
        4.0
    );
    let sum = value(
        p,
        &format!("grpc_server_handling_seconds_sum{{{}}}", rpc("ListReviews")),
    )
    .await;
    assert!(sum > 0.0 && sum < 4.0, "sum {sum}");
    for gauge in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(p, gauge).await > 0.0, "{gauge}");
    }
    // The process collector counts CPU in whole seconds: a young server may be at 0, but the
    // series is there.
    assert!(value(p, "process_cpu_seconds_total").await >= 0.0);
    check_monitoring(p, &dir).await;
    prometheus.signal(libc::SIGTERM);
    prometheus.finish(Duration::from_secs(15)).await;
    sandbox::stop(server).await;
}
