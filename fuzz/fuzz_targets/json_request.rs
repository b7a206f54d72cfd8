//! The JSON edge: any method, path, query string and body become a request message or a clear,
//! bounded error; never a panic, a 500 or an error reply that repeats the input at length.
//!
//! Input: the first byte picks the method, the bytes up to the first newline are the path and
//! query, the rest is the body (sent as `application/json`).

#![no_main]

mod app;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let method = match pick % 5 {
        0 => http::Method::GET,
        1 => http::Method::POST,
        2 => http::Method::PUT,
        3 => http::Method::HEAD,
        _ => http::Method::DELETE,
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let target = String::from_utf8_lossy(&rest[..split]);
    let body = rest.get(split + 1..).unwrap_or_default().to_vec();
    let uri = format!("/{}", target.trim_start_matches('/'));
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
    else {
        return; // not a request line an HTTP parser would accept
    };
    let (status, _, body) = app::call(request);
    assert!(
        matches!(status.as_u16(), 200 | 201 | 204 | 404 | 405 | 413 | 415 | 422 | 503),
        "status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    // An error names the problem in a bounded reply (documents such as /openapi.json are
    // larger, and fixed).
    if status.as_u16() >= 400 {
        assert!(body.len() <= 8 * 1024, "an error reply of {} bytes", body.len());
    }
});
