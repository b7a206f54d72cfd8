//! A real browser (headless Chromium, driven by playwright-core) loads a page from another local
//! origin whose bundled Connect client calls the service over gRPC-Web (binary), and whose own
//! fetch makes a gRPC-Web text-mode call; it also walks a filtered v1 list by its cursor.
//! `scripts/test` installs Chromium and the page's npm packages.

mod common;

use std::process::Command;

use common::TestServer;

fn run_page(addr: std::net::SocketAddr) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let out = Command::new("node")
        .arg("run.mjs")
        .arg(format!("http://{addr}"))
        .current_dir(dir)
        .output()
        .expect("node runs (scripts/test installs the browser test's packages)");
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no results from the page ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_lists_creates_and_reads_meta_over_grpc_web() {
    let server = TestServer::sample().await;
    let addr = server.addr;
    let r = tokio::task::spawn_blocking(move || run_page(addr))
        .await
        .unwrap();
    assert!(r.get("fatal").is_none(), "{r}");
    assert_ne!(
        r["origin"],
        format!("http://{addr}"),
        "the page has another origin"
    );
    assert_eq!(r["listed"], serde_json::json!([3, 4, 5]));
    // Reviews 3 and 4 have four stars, 5 has three: a cursor walk of two one-review pages.
    assert_eq!(
        r["filteredWalk"],
        serde_json::json!({"ids": [3, 4], "totals": [2, 2], "pages": 2})
    );
    assert_eq!(r["firstDateMillis"], 1_609_325_851_021i64);
    let id = r["createdId"].as_i64().unwrap();
    assert!(id > 149);
    assert_eq!(
        r["newestAfterCreate"],
        serde_json::json!([[
            id,
            "Posted from a browser",
            ["https://images.example.com/browser.jpg"]
        ]])
    );
    assert_eq!(r["ratings"], serde_json::json!({"4": 1, "5": 2}));
    assert_eq!(r["comfort"], "4.3333333333333333");
    assert_eq!(r["notFound"]["ok"], false);
    assert_eq!(r["notFound"]["code"], "NotFound");
    assert_eq!(r["invalid"]["code"], "InvalidArgument");
    assert_eq!(
        r["invalid"]["fields"],
        serde_json::json!(["rating", "body", "name", "email"])
    );
    assert_eq!(r["badProduct"]["code"], "InvalidArgument");
    assert_eq!(r["badProduct"]["message"], "invalid product_id provided");
    assert_eq!(
        r["textMode"]["contentType"],
        "application/grpc-web-text+proto"
    );
    assert_eq!(
        r["textMode"]["fit"], "4.3333333333333333",
        "Fit (4 + 4 + 5) / 3 after the create"
    );
    assert!(r["textMode"]["trailer"]
        .as_str()
        .unwrap()
        .contains("grpc-status:0"));
    assert_eq!(r["consoleErrors"].as_array().map(Vec::len), Some(0), "{r}");
}
