//! Connection hygiene: what the server does with clients that stall, idle, crowd it or outlive
//! it, with the timeouts shortened so the tests are quick; and gRPC deadlines.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Setup, TestServer, SAMPLE_TEMPLATE};
use reviews::db::DbConfig;
use reviews::server::ServerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(600);
const BODY_TIMEOUT: Duration = Duration::from_millis(900);
const IDLE_TIMEOUT: Duration = Duration::from_millis(800);

fn short_timeouts() -> ServerOptions {
    let mut options = common::options();
    options.connections.header_timeout = HEADER_TIMEOUT;
    options.connections.body_timeout = BODY_TIMEOUT;
    options.connections.idle_timeout = IDLE_TIMEOUT;
    options
}

async fn server(options: ServerOptions) -> TestServer {
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    TestServer::start_with_options(DbConfig::new(&db), options).await
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and
/// how long it took to close.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_send_nothing_or_stall_in_their_headers_are_closed() {
    let s = server(short_timeouts()).await;
    let stalls: [&[u8]; 4] = [
        b"",                                     // TCP only
        b"P",                                    // could still become the HTTP/2 preface
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",     // the preface, then no request
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n", // headers never finished
    ];
    for sent in stalls {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let (_, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("still open after 5 s: {sent:?}"));
        assert!(
            closed >= HEADER_TIMEOUT - Duration::from_millis(50)
                && closed < HEADER_TIMEOUT + Duration::from_secs(1),
            "{sent:?}: closed after {closed:?}"
        );
    }
    let m = s.metrics().await;
    assert!(m["reviews_connections_timed_out_total"] >= 3, "{m:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_arrives_too_slowly_gets_408_closes_the_connection_and_writes_nothing() {
    let s = server(short_timeouts()).await;
    let sql = s.sql().await;
    let count = || common::scalar(&sql, "SELECT count(*) FROM reviews");
    let before = count().await;
    let body = br#"{"product_id":1,"rating":5,"summary":"slow","body":"this body arrives at one byte at a time, much too slowly for the server","recommend":true,"name":"slow","email":"slow@example.com","photos":[],"characteristics":{"1":3,"2":3,"3":3,"4":3}}"#;
    // Shorter than its Content-Length, and then one byte every 200 ms.
    for trickle in [false, true] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST /reviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..20]).await.unwrap();
        let started = Instant::now();
        if trickle {
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                for b in &body[20..] {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if write.write_all(&[*b]).await.is_err() {
                        break;
                    }
                }
            });
            let mut got = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut got))
                .await
                .is_ok();
            assert!(closed, "still open after 5 s");
            check_408(&got, started.elapsed());
            writer.abort();
        } else {
            let (got, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
            assert!(closed.is_some(), "still open after 5 s");
            check_408(&got, started.elapsed());
        }
    }
    assert_eq!(count().await, before, "nothing was written");
    assert_eq!(s.metrics().await["reviews_request_body_timeouts_total"], 2);
}

fn check_408(response: &[u8], after: Duration) {
    let text = String::from_utf8_lossy(response);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    assert!(
        after >= BODY_TIMEOUT - Duration::from_millis(50) && after < BODY_TIMEOUT * 3,
        "answered after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_after_their_timeouts() {
    let s = server(short_timeouts()).await;
    // HTTP/1.1: once answered, the connection may wait for its next request for the header
    // timeout.
    let mut h1 = TcpStream::connect(s.addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = until_closed(&mut h1, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "));
    let closed = closed.expect("the idle HTTP/1.1 connection was closed");
    assert!(
        closed < HEADER_TIMEOUT + Duration::from_secs(1),
        "{closed:?}"
    );

    // HTTP/2: a GOAWAY once idle for the idle timeout, and a connection kept busy past it stays.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let opened = Instant::now();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let until = opened + IDLE_TIMEOUT * 2;
    let mut last = Instant::now();
    while last < until {
        client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{}/healthz", s.addr))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        last = Instant::now();
        tokio::time::sleep(IDLE_TIMEOUT / 4).await;
    }
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .expect("closed cleanly, by a GOAWAY");
    let idle = last.elapsed();
    assert!(
        idle >= IDLE_TIMEOUT - Duration::from_millis(100) && idle < IDLE_TIMEOUT * 3,
        "closed {idle:?} after its last request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_limit_a_new_connection_is_closed_at_once() {
    let mut options = short_timeouts();
    options.connections.header_timeout = Duration::from_secs(30);
    options.connections.max_connections = 3;
    let s = server(options).await;
    // The harness's gRPC channel holds one.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let (_, closed) = until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|c| c < Duration::from_millis(500)),
        "{closed:?}"
    );
    drop(held);
    let addr = s.addr;
    assert!(
        eventually(Duration::from_secs(5), || async move {
            status(addr, "/healthz").await.is_ok()
        })
        .await,
        "connections are taken again once others have closed"
    );
    assert!(s.metrics().await["reviews_connections_refused_total"] >= 1);
}

/// A gRPC call whose `grpc-timeout` passes is answered DEADLINE_EXCEEDED (not CANCELLED), on
/// plain gRPC and on gRPC-Web alike; a malformed one is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_deadlines_are_answered_deadline_exceeded() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let hooks = reviews::service::Hooks {
        during_load: Some(Arc::new(move || {
            let gate = held.clone();
            Box::pin(async move {
                let _ = gate.acquire().await;
            })
        })),
        ..Default::default()
    };
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    let s = TestServer::launch(Setup {
        hooks,
        ..Setup::new(DbConfig::new(&db))
    })
    .await;
    // (A tonic client gives up at the deadline on its own: these calls are written by hand, to
    // see what the server answers.)
    let h1 = reqwest::Client::new();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let frame = [0u8, 0, 0, 0, 2, 0x08, 0x01]; // GetReviewMetaRequest { product_id: 1 }
    let url = format!("http://{}/reviews.v1.ReviewService/GetReviewMeta", s.addr);
    for (client, content_type) in [
        (&h2, "application/grpc"),
        (&h1, "application/grpc-web+proto"),
    ] {
        for (timeout, code) in [("300m", "4"), ("2 seconds", "3")] {
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", content_type)
                .header("te", "trailers")
                .header("grpc-timeout", timeout)
                .body(frame.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.headers()["grpc-status"],
                code,
                "{content_type}, grpc-timeout {timeout}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }
    gate.add_permits(1000);
    // Without a deadline the same call waits for its answer.
    let meta = s
        .client
        .clone()
        .get_review_meta(reviews::pb::GetReviewMetaRequest { product_id: 1 })
        .await
        .unwrap();
    assert_eq!(meta.into_inner().product_id, 1);
    // One for each face's call with 300 ms (the malformed one never started its clock).
    assert_eq!(
        s.metrics().await["reviews_grpc_deadlines_exceeded_total"],
        2
    );
}

/// SIGTERM to `reviews serve` under 300 requests/s of keep-alive traffic (JSON over HTTP/1.1 and
/// gRPC over HTTP/2), the load moving away within the drain delay as a load balancer's would:
/// no request fails (a gRPC call that raced its connection's GOAWAY, and so never reached the
/// server, is sent again as gRPC clients do). Readiness is withdrawn at once, HTTP/1.1 answers carry `Connection: close`,
/// and once the delay is over the process stops accepting and exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_keep_alive_load_fails_no_request() {
    use common::sandbox::{self, served_addr, Proc};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    let mut server = Proc::spawn(std::process::Command::new(sandbox::BIN).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--drain-delay",
        "3s",
    ]));
    let line = server
        .stderr_line("serving gRPC", Duration::from_secs(30))
        .await;
    let addr = served_addr(&line);

    let stop = Arc::new(AtomicBool::new(false));
    let closes = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    // 6 clients at 50 requests/s each.
    for i in 0..6 {
        let (stop, closes) = (stop.clone(), closes.clone());
        let channel = common::channel(addr).await;
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let grpc = reviews::pb::review_service_client::ReviewServiceClient::new(channel);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (mut ok, mut failed, mut resent) = (0, Vec::new(), 0);
            while !stop.load(SeqCst) {
                tick.tick().await;
                if i % 2 == 0 {
                    match http
                        .get(format!("http://{addr}/reviews/meta?product_id=2"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            if r.headers().get("connection").is_some_and(|v| v == "close") {
                                closes.fetch_add(1, SeqCst);
                            }
                            ok += 1;
                        }
                        Ok(r) => failed.push(format!("JSON: {}", r.status())),
                        Err(e) => failed.push(format!("JSON: {e:?}")),
                    }
                } else {
                    // As a gRPC client that resends what never reached the server would.
                    let (result, tries) = common::resend_never_sent(|| {
                        let mut grpc = grpc.clone();
                        async move {
                            let request = reviews::pb::GetReviewMetaRequest { product_id: 2 };
                            grpc.get_review_meta(request).await
                        }
                    })
                    .await;
                    resent += tries - 1;
                    match result {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("gRPC: {e:?}")),
                    }
                }
            }
            (ok, failed, resent)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(addr, "/readyz").await.unwrap(),
        503,
        "not ready while draining"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, SeqCst);
    let (mut ok, mut failed, mut resent) = (0, Vec::new(), 0);
    for w in workers {
        let (n, f, r) = w.await.unwrap();
        ok += n;
        failed.extend(f);
        resent += r;
    }
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
    // A call sent again raced its connection's GOAWAY: at most one per gRPC client.
    assert!(resent <= 3, "{resent} gRPC calls were sent again");
    assert!(ok > 400, "the load ran: {ok} answers");
    assert!(
        closes.load(SeqCst) > 10,
        "HTTP/1.1 answers during the drain carry Connection: close"
    );
    assert_eq!(server.finish(Duration::from_secs(10)).await, 0);
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "the listener stayed open for the drain delay"
    );
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(server.stderr().iter().any(|l| l.contains("server stopped")));
}

async fn status(addr: SocketAddr, path: &str) -> Result<u16, reqwest::Error> {
    let response = reqwest::get(format!("http://{addr}{path}")).await?;
    Ok(response.status().as_u16())
}
