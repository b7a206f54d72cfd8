//! Per-client rate limits on the writes: the burst goes through, the rest is refused with 429 /
//! RESOURCE_EXHAUSTED and a retry delay and writes nothing; limits are shared by servers on one
//! Redis, kept locally while Redis is away, per client (the peer, or a trusted header), and off
//! when switched off.

mod common;

use std::time::{Duration, Instant};

use common::{Setup, TestServer, SAMPLE_TEMPLATE};
use futures_util::future::join_all;
use reviews::db::DbConfig;
use reviews::limits::{parse_rate, LimitsConfig};
use reviews::pb;

fn limits(create: &str, votes: &str) -> LimitsConfig {
    LimitsConfig {
        enabled: true,
        create: parse_rate(create).unwrap(),
        helpful: parse_rate(votes).unwrap(),
        report: parse_rate(votes).unwrap(),
        client_header: None,
    }
}

async fn launch(db: &str, limits: LimitsConfig, redis: Option<&str>, prefix: &str) -> TestServer {
    let mut setup = Setup::new(DbConfig::new(db));
    if let Some(url) = redis {
        setup = setup.cached(url, prefix);
    }
    setup.options.limits = limits;
    TestServer::launch(setup).await
}

fn review(summary: &str) -> String {
    serde_json::json!({
        "product_id": 27, "rating": 4, "summary": summary,
        "body": "A review posted by the rate limit tests, long enough to pass validation.",
        "recommend": true, "name": "limits", "email": "limits@example.com",
        "photos": [], "characteristics": {}
    })
    .to_string()
}

/// How many of `answers` have `status`.
fn with_status(answers: &[reqwest::Response], status: u16) -> u64 {
    answers.iter().filter(|r| r.status() == status).count() as u64
}

/// Sends `n` requests, `concurrency` at a time; returns the statuses and how long it took.
async fn burst(
    n: usize,
    concurrency: usize,
    send: impl Fn(usize) -> reqwest::RequestBuilder,
) -> (Vec<reqwest::Response>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let sent = join_all(chunk.iter().map(|&i| send(i).send())).await;
        out.extend(sent.into_iter().map(Result::unwrap));
    }
    (out, started.elapsed())
}

/// The most a limit of `per_hour` with `burst` may let through in `elapsed`.
fn allowance(burst: u64, per_hour: u64, elapsed: Duration) -> u64 {
    burst + (elapsed.as_secs_f64() * per_hour as f64 / 3600.0).ceil() as u64 + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_burst_a_client_gets_429_with_retry_after_and_nothing_is_written() {
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    let redis = common::cluster().redis_url.clone();
    let s = launch(&db, limits("60/1h:5", "360/1h:10"), Some(&redis), &db).await;
    let sql = s.sql().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", s.addr);

    let before = common::scalar(&sql, "SELECT count(*) FROM reviews").await;
    let (answers, elapsed) = burst(100, 20, |i| {
        http.post(format!("{base}/reviews"))
            .header("content-type", "application/json")
            .body(review(&format!("burst {i}")))
    })
    .await;
    let created = with_status(&answers, 201);

    assert!(
        (5..=allowance(5, 60, elapsed)).contains(&created),
        "{created} of 100 created in {elapsed:?}"
    );
    let refused: Vec<_> = answers.into_iter().filter(|r| r.status() != 201).collect();
    for r in &refused {
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    }
    let body: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{base}/reviews"))
            .header("content-type", "application/json")
            .body(review("one more"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["code"], "resource_exhausted", "{body}");
    assert_eq!(
        common::scalar(&sql, "SELECT count(*) FROM reviews").await,
        before + created as i64,
        "every refused create wrote nothing"
    );

    // Votes without a voter: each counts, up to the burst.
    let helpful = || common::scalar(&sql, "SELECT helpfulness::bigint FROM reviews WHERE id = 3");
    let start = helpful().await;
    let (answers, elapsed) =
        burst(1_000, 50, |_| http.put(format!("{base}/reviews/3/helpful"))).await;
    let counted = with_status(&answers, 204);
    assert!(
        (10..=allowance(10, 360, elapsed)).contains(&counted),
        "{counted} of 1000 votes counted in {elapsed:?}"
    );
    assert!(answers
        .iter()
        .all(|r| r.status() == 204 || r.status() == 429));
    assert_eq!(helpful().await, start + counted as i64);
    // Reports have a budget of their own.
    let r = http
        .put(format!("{base}/reviews/4/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Over gRPC: RESOURCE_EXHAUSTED, with the delay as RetryInfo.
    let mut client = s.client.clone();
    let status = client
        .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: 3 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    use tonic_types::StatusExt;
    let delay = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(10));
    // Every refusal above, counted: the creates past the burst and the one more, the votes past
    // theirs, and the gRPC vote.
    assert_eq!(
        s.metrics().await["reviews_rate_limited_total"],
        (100 - created) + 1 + (1_000 - counted) + 1
    );
}

/// 1,000 votes from one named voter: one counts, the burst passes as harmless no-ops, the rest
/// is limited.
#[tokio::test(flavor = "multi_thread")]
async fn a_named_voter_counts_once_however_often_it_votes() {
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    let s = launch(&db, limits("60/1h:5", "360/1h:10"), None, &db).await;
    let sql = s.sql().await;
    let helpful = || common::scalar(&sql, "SELECT helpfulness::bigint FROM reviews WHERE id = 3");
    let start = helpful().await;
    let http = reqwest::Client::new();
    let (answers, _) = burst(1_000, 50, |_| {
        http.put(format!("http://{}/reviews/3/helpful", s.addr))
            .header("reviews-voter", "session-dave")
    })
    .await;
    assert!(with_status(&answers, 204) >= 10);
    assert_eq!(helpful().await, start + 1);
}

/// Two servers on one Redis share one budget per client; with Redis unreachable each server
/// still limits on its own; a trusted client header gives each named client its own budget.
#[tokio::test(flavor = "multi_thread")]
async fn limits_are_shared_through_redis_kept_locally_without_it_and_per_client() {
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    let redis = common::cluster().redis_url.clone();
    let prefix = format!("{db}-shared");
    let a = launch(&db, limits("60/1h:5", "360/1h:20"), Some(&redis), &prefix).await;
    let b = launch(&db, limits("60/1h:5", "360/1h:20"), Some(&redis), &prefix).await;
    let http = reqwest::Client::new();
    let (answers, elapsed) = burst(200, 20, |i| {
        let s = if i % 2 == 0 { &a } else { &b };
        http.put(format!("http://{}/reviews/5/helpful", s.addr))
    })
    .await;
    let counted = with_status(&answers, 204);
    assert!(
        (20..=allowance(20, 360, elapsed)).contains(&counted),
        "two servers let {counted} through in {elapsed:?}: one budget, not two"
    );

    // Redis unreachable (nothing listens on the port): the limit still holds, per server.
    let dead = format!(
        "redis://127.0.0.1:{}/",
        reviews::local::free_port().unwrap()
    );
    let alone = launch(&db, limits("60/1h:5", "360/1h:20"), Some(&dead), &prefix).await;
    let (answers, elapsed) = burst(200, 20, |_| {
        http.put(format!("http://{}/reviews/6/helpful", alone.addr))
    })
    .await;
    let counted = with_status(&answers, 204);
    assert!(
        (20..=allowance(20, 360, elapsed)).contains(&counted),
        "without Redis {counted} got through in {elapsed:?}"
    );

    // Behind a trusted proxy: each forwarded client has its own budget.
    let mut behind = limits("60/1h:5", "360/1h:3");
    behind.client_header = Some(http::HeaderName::from_static("x-forwarded-for"));
    let proxied = launch(&db, behind, Some(&redis), &format!("{db}-proxied")).await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        let (answers, _) = burst(10, 10, |_| {
            http.put(format!("http://{}/reviews/7/helpful", proxied.addr))
                .header("x-forwarded-for", format!("203.0.113.9, {client}"))
        })
        .await;
        let counted = with_status(&answers, 204);
        assert!((3..=4).contains(&counted), "{client}: {counted} counted");
    }
}
