//! The server around the service: health, reflection, database outages, graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, TestServer};
use reviews::db::DbConfig;
use reviews::local::{self, LocalPostgres};
use reviews::pb::{self, ListReviewsRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health(s: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(s.channel().await);
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

async fn serving(s: &TestServer, want: ServingStatus) -> bool {
    eventually(Duration::from_secs(10), || async {
        health(s, "").await.ok() == Some(want)
            && health(s, "reviews.v1.ReviewService").await.ok() == Some(want)
    })
    .await
}

fn list_request(product_id: i32) -> ListReviewsRequest {
    ListReviewsRequest {
        product_id,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_for_the_server_and_the_service() {
    let s = TestServer::sample().await;
    assert!(serving(&s, ServingStatus::Serving).await);
    let unknown = health(&s, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_and_v1alpha_describe_the_service_with_its_http_routes() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};
    let s = TestServer::sample().await;

    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(s.channel().await);
    let requests = [
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "reviews.v1.ReviewService".into(),
        ),
    ]
    .map(|m| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = v1_client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"reviews.v1.ReviewService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    let bytes: Vec<u8> = files.file_descriptor_proto.concat();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("/reviews/{review_id}/helpful"),
        "google.api.http options kept"
    );

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(s.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "reviews.v1.ReviewService"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_means_unavailable_not_a_hang_and_recovery_after() {
    // This test stops its database, so it has a PostgreSQL of its own.
    let dir = common::scratch_dir("outage");
    let mut pg = LocalPostgres::init(&dir.join("pg")).unwrap();
    pg.start().unwrap();
    local::create_database(&pg.url("postgres"), "reviews", None)
        .await
        .unwrap();
    reviews::db::migrate(&pg.url("reviews")).await.unwrap();
    reviews::etl::load(&pg.url("reviews"), &common::sample_dir(), None)
        .await
        .unwrap();

    let mut db = DbConfig::new(pg.url("reviews"));
    db.connect_timeout = Duration::from_millis(500);
    db.query_timeout = Duration::from_secs(2);
    let mut s = TestServer::start_with(db).await;
    s.client.list_reviews(list_request(1)).await.unwrap();
    assert!(serving(&s, ServingStatus::Serving).await);

    pg.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let e = s.client.list_reviews(list_request(1)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered in {:?}",
            started.elapsed()
        );
        assert!(
            !e.message().contains("127.0.0.1"),
            "no internals in the message"
        );
    }
    let e = s
        .client
        .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(serving(&s, ServingStatus::NotServing).await);
    assert_eq!(
        health(&s, "liveness").await.unwrap(),
        ServingStatus::Serving,
        "liveness does not follow the database"
    );

    pg.start().unwrap();
    let mut client = s.client.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            async move { c.list_reviews(list_request(1)).await.is_ok() }
        })
        .await,
        "the service recovers when the database is back"
    );
    assert!(serving(&s, ServingStatus::Serving).await);
    let results = client
        .list_reviews(list_request(1))
        .await
        .unwrap()
        .into_inner()
        .results;
    let r1 = results.iter().find(|r| r.review_id == 1).unwrap();
    assert_eq!(
        r1.helpfulness, 8,
        "the vote attempted during the outage was not applied"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_calls_in_flight_finish_and_refuses_new_ones() {
    let mut s = TestServer::sample().await;
    // Hold product 1's aggregate row so the next create waits inside the server.
    let blocker = s.sql().await;
    blocker
        .batch_execute("BEGIN; SELECT * FROM product_stats WHERE product_id = 1 FOR UPDATE")
        .await
        .unwrap();

    let mut client = s.client.clone();
    let create = tokio::spawn(async move {
        client
            .create_review(pb::CreateReviewRequest {
                product_id: 1,
                rating: 5,
                summary: "Still here".into(),
                body: "Posted while the server was shutting down, and it still went through."
                    .into(),
                recommend: true,
                name: "latecomer".into(),
                email: "late@example.com".into(),
                photos: vec![],
                characteristics: [(1, 3), (2, 3), (3, 3), (4, 3)].into(),
            })
            .await
    });
    let watcher = s.sql().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting == 1
        })
        .await,
        "the create is in flight"
    );

    let addr = s.addr;
    let server = s.begin_shutdown();
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "no new connections once shutdown began"
    );
    assert!(
        !server.is_finished(),
        "the server waits for the call in flight"
    );

    blocker.batch_execute("ROLLBACK").await.unwrap();
    let id = create
        .await
        .unwrap()
        .expect("the call in flight completes")
        .into_inner()
        .review_id;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once idle")
        .unwrap()
        .unwrap();
    let stored: i64 = watcher
        .query_one("SELECT count(*) FROM reviews WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_plan_once() {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        plan_cache_mode: String,
    }
    let db = DbConfig::new(common::fresh_db(common::SAMPLE_TEMPLATE).await);
    let store = reviews::db::Db::new(&db, Default::default());
    let mut conn = store.primary().get().await.unwrap();
    let s: Setting = diesel::sql_query("SHOW plan_cache_mode")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(s.plan_cache_mode, "force_generic_plan");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_connections_are_rotated_without_failing_a_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let db = DbConfig::new(common::fresh_db(common::SAMPLE_TEMPLATE).await);
    let mut options = reviews::server::ServerOptions::default();
    options.connections.max_age = Some(Duration::from_millis(600));
    let s = TestServer::start_with_options(db, options).await;
    let connects = Arc::new(AtomicUsize::new(0));
    let (counter, addr) = (connects.clone(), s.addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let client = reviews::pb::review_service_client::ReviewServiceClient::new(channel);
    let until = Instant::now() + Duration::from_secs(3);
    let mut calls = 0;
    let mut resent = 0;
    while Instant::now() < until {
        let (result, tries) = common::resend_never_sent(|| {
            let mut client = client.clone();
            async move {
                client
                    .get_review_meta(pb::GetReviewMetaRequest { product_id: 1 })
                    .await
            }
        })
        .await;
        result.expect("no call fails when its connection is rotated");
        calls += 1;
        resent += tries - 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = connects.load(Ordering::SeqCst);
    assert!(n >= 3, "{calls} calls over 3 s used {n} connections");
    // Only a call that raced a GOAWAY, at most one per rotation, is sent again.
    assert!(
        (resent as usize) < n,
        "{resent} calls sent again over {n} connections"
    );
}

/// Under continuous load, shutting down completes every call the server took: a call either
/// succeeds or is refused unprocessed (UNAVAILABLE, safe to retry on another replica).
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_under_load_loses_no_accepted_call() {
    let mut options = common::options();
    // A connection that has not closed this long after its GOAWAY is cut, which bounds the
    // drain on a busy machine; a call cut in flight would fail the checks below.
    options.connections.body_timeout = Duration::from_secs(3);
    let db = DbConfig::new(common::fresh_db(common::SAMPLE_TEMPLATE).await);
    let mut s = TestServer::start_with_options(db, options).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (channel, stop) = (s.channel().await, stop.clone());
        workers.push(tokio::spawn(async move {
            let mut client = reviews::pb::review_service_client::ReviewServiceClient::new(channel);
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let r = client
                    .list_reviews(ListReviewsRequest {
                        product_id: 3,
                        count: Some(20),
                        ..Default::default()
                    })
                    .await;
                outcomes.push((started, r.map(|r| r.into_inner().results.len())));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shutdown_at = Instant::now();
    let server = s.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut refused_before) = (0, 0);
    for w in workers {
        for (started, outcome) in w.await.unwrap() {
            match outcome {
                Ok(n) => {
                    assert_eq!(n, 20, "a complete answer: all 20 listable reviews");
                    ok += 1;
                }
                Err(e) => {
                    assert!(
                        e.code() == Code::Unavailable || common::never_sent(&e),
                        "only clean refusals: {e:?}"
                    );
                    refused_before += usize::from(started < shutdown_at);
                }
            }
        }
    }
    assert!(ok > 20, "the load ran: {ok} answers");
    // At most the one call each client had in flight as the server said GOAWAY can be refused;
    // everything the server had taken was answered.
    assert!(
        refused_before <= 6,
        "{refused_before} calls from before the shutdown failed"
    );
}

/// Past the in-flight limit a request is refused at once, in its own protocol's terms, while the
/// requests admitted carry on and probes and metrics still answer.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_in_flight_limit_requests_are_refused_at_once_and_probes_still_answer() {
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // Every database read waits at this gate until the test opens it.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let hook = {
        let (gate, reached) = (gate.clone(), reached.clone());
        Arc::new(move || {
            let (gate, reached) = (gate.clone(), reached.clone());
            async move {
                reached.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
            }
            .boxed()
        })
    };
    let db = common::fresh_db(common::SAMPLE_TEMPLATE).await;
    let mut setup = common::Setup::new(DbConfig::new(&db));
    setup.options.http.max_in_flight = Some(2);
    setup.hooks.during_load = Some(hook);
    let s = TestServer::launch(setup).await;
    let base = format!("http://{}", s.addr);
    // A refusal comes at once; a request that queued instead would fail this test by its timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Two slow reads, one JSON and one gRPC, take the two places.
    let json_read = tokio::spawn(http.get(format!("{base}/reviews?product_id=1")).send());
    let mut grpc = s.client.clone();
    let grpc_read = tokio::spawn(async move {
        grpc.get_review_meta(pb::GetReviewMetaRequest { product_id: 2 })
            .await
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            reached.load(Ordering::SeqCst) == 2
        })
        .await,
        "both reads are in their database load"
    );

    let meta_3 = || async {
        http.get(format!("{base}/reviews/meta?product_id=3"))
            .send()
            .await
            .unwrap()
    };
    // JSON: 503 with Retry-After and a JSON body.
    let r = meta_3().await;
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "unavailable");
    assert!(body["error"].as_str().unwrap().contains("overloaded"));
    // gRPC: UNAVAILABLE, which gRPC clients may retry.
    let err = s
        .client
        .clone()
        .get_review_meta(pb::GetReviewMetaRequest { product_id: 3 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("overloaded"), "{}", err.message());
    // gRPC-Web: the same status, trailers-only.
    let r = http
        .post(format!("{base}/reviews.v1.ReviewService/GetReviewMeta"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 2, 0x08, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["content-type"], "application/grpc-web+proto");
    // Probes and metrics are never refused.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{path}");
    }
    assert_eq!(s.metrics().await["reviews_requests_shed_total"], 3);

    // The admitted reads finish normally, and then there is room again.
    gate.add_permits(1_000);
    let r = json_read.await.unwrap().unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(grpc_read.await.unwrap().is_ok());
    assert_eq!(meta_3().await.status(), reqwest::StatusCode::OK);
}

/// The server's connections to its database, as PostgreSQL counts them.
async fn backends(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// `calls` concurrent GetReviewMeta calls over one channel (fewer than the default in-flight
/// limit); panics if any fails.
async fn concurrent_meta(s: &TestServer, calls: i32) {
    let reads = (0..calls).map(|i| {
        let mut client = s.client.clone();
        async move {
            client
                .get_review_meta(pb::GetReviewMetaRequest {
                    product_id: 1 + i % 20,
                })
                .await
        }
    });
    for result in futures_util::future::join_all(reads).await {
        result.expect("every read succeeds");
    }
}

/// Short reads pipeline over the read lanes: however many run at once, they use the lanes'
/// connections (and the one bb8 keeps idle), where exclusive checkouts open the whole pool.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_share_the_read_lanes_connections() {
    let mut used = Vec::new();
    for lanes in [2, 0] {
        let mut db = DbConfig::new(common::fresh_db(common::SAMPLE_TEMPLATE).await);
        db.read_lanes = lanes;
        let s = TestServer::start_with(db).await;
        let sql = s.sql().await;
        concurrent_meta(&s, 60).await;
        used.push(backends(&sql).await);
    }
    // The two lanes' connections and the idle one bb8 keeps; at times two idle ones, when its
    // refill of the idle one races the lanes' first checkouts.
    assert!(
        used[0] <= 4,
        "2 lanes, 60 concurrent reads: {} connections",
        used[0]
    );
    assert!(
        used[1] > 5,
        "no lanes, 60 concurrent reads: {} connections",
        used[1]
    );
}

/// A lane whose connection dies (its backend terminated, as a PostgreSQL restart or a failover
/// would) is replaced, and the reads queued on it run again on a fresh connection: none fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_lane_whose_connection_dies_fails_no_read() {
    let s = TestServer::start(&common::fresh_db(common::SAMPLE_TEMPLATE).await).await;
    let sql = s.sql().await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = async {
        let mut batches = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            concurrent_meta(&s, 50).await;
            batches += 1;
        }
        batches
    };
    let kills = async {
        let mut killed = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND query LIKE '%product_stats%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            killed += n;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        killed
    };
    let (batches, killed) = tokio::join!(reads, kills);
    assert!(killed >= 5, "lane backends terminated: {killed}");
    assert!(batches >= 5, "{batches} batches of 50 reads");
}
