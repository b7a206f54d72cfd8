//! A real shared cache in front of the built `reviews serve`: Debian's Varnish with the shipped
//! `varnish/reviews.vcl`. Repeat reads are answered by Varnish after a conditional request the
//! service answers `304`; a write through Varnish shows in the very next read through it; and
//! while the service is down Varnish serves the last answers for stale-if-error. Also the
//! service's own conditional GETs, on the legacy and the v1 routes.
//! `scripts/test` installs Varnish.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sandbox::{self, Proc};
use common::{fresh_db, SAMPLE_TEMPLATE};

/// Varnish on a free port with the shipped VCL, its backend pointed at `backend`.
fn varnish(dir: &Path, backend: std::net::SocketAddr) -> (Proc, String) {
    let vcl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/varnish/reviews.vcl"))
        .unwrap()
        .replace("\"127.0.0.1\"", &format!("\"{}\"", backend.ip()))
        .replace("\"50051\"", &format!("\"{}\"", backend.port()));
    let path = dir.join("reviews.vcl");
    std::fs::write(&path, vcl).unwrap();
    let port = reviews::local::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let proc = Proc::spawn(Command::new("varnishd").args([
        "-F",
        "-j",
        "none",
        "-n",
        dir.join("n").to_str().unwrap(),
        "-a",
        &listen,
        "-f",
        path.to_str().unwrap(),
        "-s",
        "malloc,32m",
    ]));
    (proc, format!("http://{listen}"))
}

/// Whether Varnish's probe of the service says healthy.
fn backend_healthy(dir: &Path) -> bool {
    let out = Command::new("varnishadm")
        .args(["-n", dir.join("n").to_str().unwrap(), "backend.list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    list.lines()
        .any(|l| l.contains("reviews") && l.contains("healthy"))
}

/// How many of `route`'s GETs the service answered with `status`, from its own metrics.
async fn answered(http: &reqwest::Client, service: &str, route: &str, status: u16) -> u64 {
    let text = sandbox::get_text(http, &format!("{service}/metrics")).await;
    let wanted = [
        "http_server_request_duration_seconds_count{".to_string(),
        format!("http_response_status_code=\"{status}\""),
        format!("http_route=\"{route}\""),
    ];
    text.lines()
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let tag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    (status, tag, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn varnish_revalidates_every_read_and_serves_stale_only_on_error() {
    let db_url = fresh_db(SAMPLE_TEMPLATE).await;
    let prefix = format!("varnish-{}", std::process::id());
    let (server, addr) = sandbox::started(&mut sandbox::serve(
        &db_url,
        &prefix,
        &["--rate-limit", "off", "--stale-if-error", "120s"],
    ))
    .await;
    let service = format!("http://{addr}");
    let http = reqwest::Client::new();

    // The service's own conditional GETs: every GET route's 200 carries a strong ETag and
    // Cache-Control; If-None-Match with it is 304 without a body, with another tag the 200.
    for path in [
        "/reviews/meta?product_id=2",
        "/reviews?product_id=2&count=2",
        "/v1/products/2/rating",
        "/v1/products/2/reviews?rating=4&page_size=1",
    ] {
        let first = http.get(format!("{service}{path}")).send().await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(
            first.headers()["cache-control"],
            "no-cache, stale-if-error=120"
        );
        let tag = first.headers()["etag"].clone();
        assert!(
            tag.to_str().unwrap().starts_with('"'),
            "a strong tag: {tag:?}"
        );
        let again = http
            .get(format!("{service}{path}"))
            .header("if-none-match", tag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], tag);
        assert!(again.headers().get("content-type").is_none());
        assert!(again.bytes().await.unwrap().is_empty());
        let other = http
            .get(format!("{service}{path}"))
            .header("if-none-match", "\"another\", W/\"tag\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}");
    }
    // Errors and writes carry no validator.
    let missing = http
        .get(format!("{service}/reviews/meta?product_id=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
    assert!(missing.headers().get("etag").is_none());

    let dir = tempfile::tempdir().unwrap();
    let (mut cache, front) = varnish(dir.path(), addr);
    sandbox::wait_until(
        "Varnish finds the service healthy",
        Duration::from_secs(20),
        || {
            let dir = dir.path().to_path_buf();
            async move { backend_healthy(&dir) }
        },
    )
    .await;

    // Repeat reads through Varnish: the same body and tag each time, each one a conditional
    // request that the service answered 304, with no body.
    for (path, route) in [
        ("/reviews/meta?product_id=2", "/reviews/meta"),
        (
            "/v1/products/2/reviews?rating=4&rating=3&page_size=2",
            "/v1/products/{product_id}/reviews",
        ),
    ] {
        let first = get(&http, &format!("{front}{path}")).await;
        assert_eq!(first.0, 200, "{path}: {}", first.2);
        let before = answered(&http, &service, route, 304).await;
        for _ in 0..3 {
            assert_eq!(get(&http, &format!("{front}{path}")).await, first, "{path}");
        }
        // (A request is counted once its answer is sent, a moment after Varnish has it.)
        let what = format!("{path}: every repeat revalidated with the service");
        sandbox::wait_until(&what, Duration::from_secs(5), || async {
            answered(&http, &service, route, 304).await == before + 3
        })
        .await;
        assert_eq!(
            answered(&http, &service, route, 304).await,
            before + 3,
            "{what}"
        );
        // A client's own conditional request is answered by Varnish.
        let r = http
            .get(format!("{front}{path}"))
            .header("if-none-match", first.1.clone().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
    }

    // A write through Varnish (passed to the service) shows in the very next read through it.
    let (_, tag_before, meta_before) =
        get(&http, &format!("{front}/reviews/meta?product_id=2")).await;
    let characteristics = sandbox::rate_all(&serde_json::from_str(&meta_before).unwrap(), 2);
    let created = http
        .post(format!("{front}/reviews"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "product_id": 2, "rating": 2, "summary": "through Varnish", "recommend": false,
                "body": "a review posted through the shared cache, fifty characters at least",
                "name": "cdn", "email": "cdn@example.com", "characteristics": characteristics
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (status, tag_after, meta_after) =
        get(&http, &format!("{front}/reviews/meta?product_id=2")).await;
    assert_eq!(status, 200);
    assert_ne!(meta_after, meta_before, "the write is visible at once");
    assert_ne!(tag_after, tag_before);
    assert_eq!(
        meta_after,
        sandbox::get_text(&http, &format!("{service}/reviews/meta?product_id=2")).await
    );
    let listed = get(&http, &format!("{front}/v1/products/2/reviews?rating=2")).await;
    assert!(listed.2.contains("through Varnish"), "{}", listed.2);

    // The service down: once Varnish's probe sees it, the last answers are served, stale, for
    // stale-if-error; what was never fetched is an error.
    sandbox::stop(server).await;
    sandbox::wait_until(
        "Varnish sees the service down",
        Duration::from_secs(20),
        || {
            let dir = dir.path().to_path_buf();
            async move { !backend_healthy(&dir) }
        },
    )
    .await;
    let stale = get(&http, &format!("{front}/reviews/meta?product_id=2")).await;
    assert_eq!(
        stale,
        (200, tag_after, meta_after),
        "served stale while down"
    );
    let never = get(&http, &format!("{front}/reviews/meta?product_id=7")).await;
    assert_eq!(never.0, 503);

    cache.signal(libc::SIGTERM);
    cache.wait_for(Duration::from_secs(10)).await;
}
