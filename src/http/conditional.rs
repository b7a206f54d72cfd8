//! HTTP caching of the JSON edge's GET answers: each `200` carries a strong `ETag` taken from
//! its body, and `Cache-Control: no-cache` (with a configurable `stale-if-error`), so a shared
//! cache (a CDN, Varnish) may keep the answer but asks the service every time; a request whose
//! `If-None-Match` names the current tag gets `304` with no body.
//!
//! The tag is a digest of the body, not of a version counter: the body a read returns is never
//! stale (the cache is invalidated by every write before it returns, on every replica), so the
//! tag changes exactly when the body does, after a write through any replica and while Redis is
//! down alike, and a write that leaves this body as it was (a vote on a review on another page)
//! does not make caches download it again. A `304` costs what the read costs (a cache hit, as a
//! rule) plus a SHA-256 of the body (hardware-accelerated here: a few microseconds for a page),
//! and saves sending the body.

use std::time::Duration;

use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, StatusCode};
use sha2::Digest;

/// The strong entity tag of `body`: 128 bits of its SHA-256, quoted.
pub fn etag(body: &[u8]) -> HeaderValue {
    let digest = sha2::Sha256::digest(body);
    let tag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16]));
    HeaderValue::from_str(&tag).expect("base64url is a valid header value")
}

/// The `Cache-Control` of GET answers: revalidate every time; with a `stale_if_error` above
/// zero, a cache may serve the last answer that long while the service fails (RFC 5861).
pub fn cache_control(stale_if_error: Duration) -> HeaderValue {
    let value = match stale_if_error.as_secs() {
        0 => "no-cache".to_string(),
        secs => format!("no-cache, stale-if-error={secs}"),
    };
    HeaderValue::from_str(&value).expect("ASCII")
}

/// Whether an `If-None-Match` header names `etag` (or is `*`): the weak comparison RFC 9110
/// prescribes for it, over a comma-separated list of tags.
pub fn none_match_hits(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let ours = etag.as_bytes();
    let ours = ours.strip_prefix(b"W/").unwrap_or(ours);
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// Finishes a GET answer: a `200` that carries an `ETag` gets `cache_control` and, when the
/// request's `If-None-Match` names that tag, becomes a `304` with the same validators and no
/// body.
pub fn finish(
    mut response: Response,
    if_none_match: Option<&HeaderValue>,
    cache_control: &HeaderValue,
) -> Response {
    if response.status() != StatusCode::OK {
        return response;
    }
    let Some(tag) = response.headers().get(ETAG).cloned() else {
        return response;
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, cache_control.clone());
    if !if_none_match.is_some_and(|inm| none_match_hits(inm, &tag)) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_over_a_list() {
        let tag = etag(b"{\"a\":1}");
        assert_eq!(tag.len(), 24);
        assert_ne!(tag, etag(b"{\"a\":2}"));
        let hv = |s: &str| HeaderValue::from_str(s).unwrap();
        let text = tag.to_str().unwrap();
        assert!(none_match_hits(&hv(text), &tag));
        assert!(none_match_hits(&hv(&format!("W/{text}")), &tag));
        assert!(none_match_hits(&hv(&format!("\"x\", {text}")), &tag));
        assert!(none_match_hits(&hv("*"), &tag));
        assert!(!none_match_hits(&hv("\"x\""), &tag));
        assert!(!none_match_hits(&hv(&text[1..]), &tag));
        assert_eq!(cache_control(Duration::ZERO), "no-cache");
        assert_eq!(
            cache_control(Duration::from_secs(60)),
            "no-cache, stale-if-error=60"
        );
    }
}
