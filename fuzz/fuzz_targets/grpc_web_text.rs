//! gRPC-Web in text mode (base64 of frames): any body sent to a ReviewService method gets a
//! well-formed gRPC answer with a status a client can act on, a short message that names no
//! decoder internals; never a panic or INTERNAL.
//!
//! Input: the first byte picks the method, the rest is the request body. Each call carries a
//! 20 ms `grpc-timeout`, so one that decodes (and goes on to the refusing database) ends soon.

#![no_main]

mod app;

use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 5] = [
    "ListReviews",
    "GetReviewMeta",
    "CreateReview",
    "MarkReviewHelpful",
    "ReportReview",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = format!(
        "/reviews.v1.ReviewService/{}",
        METHODS[pick as usize % METHODS.len()]
    );
    let request = http::Request::post(path)
        .header("content-type", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        // A request that decodes goes on to the (refusing) database: bound what that may take.
        .header("grpc-timeout", "20m")
        .body(axum::body::Body::from(body.to_vec()))
        .unwrap();
    let (status, headers, reply) = app::call(request);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    // A trailers-only answer has its status in the headers; else it is in the trailer frame at
    // the end of the (base64) body.
    let code: Option<u32> = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(code) = code {
        // OK never comes without a message here; INTERNAL (13) and UNKNOWN (2) would be bugs.
        assert!(matches!(code, 3 | 4 | 5 | 8 | 14), "grpc-status {code}: {headers:?}");
        let message = headers
            .get("grpc-message")
            .map(|v| v.as_bytes().len())
            .unwrap_or(0);
        assert!(message <= 512, "a grpc-message of {message} bytes");
    }
    assert!(reply.len() <= 16 * 1024, "a reply of {} bytes", reply.len());
});
