//! The JSON edge: matches an HTTP request to an annotated RPC, parses its path, query and body
//! straight into the generated request message, calls the handler, and writes the reply (typed,
//! or the bytes the cache kept) as the legacy API did. The route table, the handler trait and
//! the typed parsing and writing are generated at build time from the proto's `google.api.http`
//! options (`build/codegen.rs`), so annotating an RPC adds its route.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::codec::{self, FromHttp, Seen, WriteJson};
use super::conditional;
use super::response::{error_response, error_response_as, json_error, Errors};
use crate::error::{Error, FieldViolation};
use crate::service::Context;
use crate::transport::Peer;

pub use generated::{dispatch, Call, JsonApi, ROUTES};

/// The generated route table, handler trait, dispatch and message codecs.
#[allow(clippy::all, unused_parens, unused_variables, unreachable_code)]
mod generated {
    use super::*;
    use crate::http::codec::*;
    include!(concat!(env!("OUT_DIR"), "/json_edge.rs"));
}

/// One segment of a path template: a literal, or a variable bound to a request field.
#[derive(Debug)]
pub enum Segment {
    Literal(&'static str),
    Field(&'static str),
}

/// Which part of the request the HTTP body fills.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the body is the whole request message.
    Whole,
}

#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// The path template, as the proto declares it: the `http_route` of its metrics.
    pub template: &'static str,
    pub segments: &'static [Segment],
    pub body: BodyRule,
    pub call: Call,
}

impl Route {
    /// How this route answers errors: the `v1` routes are not bound by the legacy ones' text.
    pub fn errors(&self) -> Errors {
        if self.template.starts_with("/v1/") {
            Errors::V1
        } else {
            Errors::Legacy
        }
    }
}

/// The method a request is routed by: HEAD is a GET without the body (hyper leaves it out).
fn routed_as(method: &Method) -> &Method {
    if method == Method::HEAD {
        &Method::GET
    } else {
        method
    }
}

/// The route a request with `method` and `path` takes, if any.
pub fn route_of(method: &Method, path: &str) -> Option<&'static Route> {
    let method = routed_as(method);
    ROUTES
        .iter()
        .find(|r| r.method == *method && r.matches(path))
}

impl Route {
    /// Walks `path` along this template, handing each path variable's decoded value to `bind`;
    /// false when the path does not match.
    fn walk<'p>(&self, path: &'p str, mut bind: impl FnMut(&'static str, Cow<'p, str>)) -> bool {
        let Some(mut parts) = path.strip_prefix('/').map(|p| p.split('/')) else {
            return false;
        };
        for segment in self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let Ok(decoded) = percent_encoding::percent_decode_str(part).decode_utf8() else {
                return false;
            };
            match segment {
                Segment::Literal(literal) if decoded != *literal => return false,
                Segment::Literal(_) => {}
                Segment::Field(name) => bind(name, decoded),
            }
        }
        parts.next().is_none()
    }

    /// Whether `path` matches this template.
    fn matches(&self, path: &str) -> bool {
        self.walk(path, |_, _| {})
    }

    /// The path variables bound by `path`, or `None` when it does not match this template.
    fn match_path(&self, path: &str) -> Option<Vec<(&'static str, String)>> {
        let mut bound = Vec::new();
        self.walk(path, |name, value| bound.push((name, value.into_owned())))
            .then_some(bound)
    }
}

/// A handler's answer: a message to write, or the JSON the cache kept for it, or another
/// representation of it: schema.org JSON-LD.
pub enum Reply<T> {
    Message(T),
    Json(Bytes),
    LinkedData(Bytes),
}

/// The edge's state: the handlers, the body limit and the `Cache-Control` of GET answers.
pub struct Edge<A> {
    pub api: A,
    pub max_body: usize,
    pub cache_control: HeaderValue,
}

/// The fallback handler: every request that is not gRPC, gRPC-Web or a fixed route lands here.
pub async fn handle<A: JsonApi>(
    State(edge): State<Arc<Edge<A>>>,
    request: Request<Body>,
) -> Response {
    let path = request.uri().path();
    let method = routed_as(request.method());
    let found = ROUTES
        .iter()
        .filter(|r| r.method == *method)
        .find_map(|r| Some((r, r.match_path(path)?)));
    let Some((route, bound)) = found else {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.matches(path))
            .map(|r| r.method.as_str())
            .collect();
        if allowed.is_empty() {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            );
        }
        return method_not_allowed(request.method(), path, &allowed);
    };
    let peer = request.extensions().get::<Peer>().map(|p| p.0.ip());
    let ctx = edge.api.context(request.headers(), peer);
    let if_none_match = request.headers().get(IF_NONE_MATCH).cloned();
    let input = Input {
        route,
        bound,
        request,
        max_body: edge.max_body,
    };
    let mut response = dispatch(&edge.api, route.call, ctx, input).await;
    if route.call == Call::GetProductRating {
        // Answered as JSON or as JSON-LD, by `Accept`: caches must key on it.
        response
            .headers_mut()
            .append(VARY, HeaderValue::from_static("accept"));
    }
    if route.method == Method::GET {
        conditional::finish(response, if_none_match.as_ref(), &edge.cache_control)
    } else {
        response
    }
}

/// 405 for a path whose routes take only the `allowed` methods.
fn method_not_allowed(method: &Method, path: &str, allowed: &[&str]) -> Response {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{method} is not allowed on {path}; use {}",
            allowed.join(", ")
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(ALLOW, v);
    }
    response
}

/// A matched request, not yet parsed.
pub struct Input<'a> {
    route: &'a Route,
    bound: Vec<(&'static str, String)>,
    request: Request<Body>,
    max_body: usize,
}

impl Input<'_> {
    /// How the route answers errors.
    pub fn errors(&self) -> Errors {
        self.route.errors()
    }

    /// The request message from the path variables, the query string and the body, or the
    /// answer that lists every problem.
    pub async fn decode<M: FromHttp>(self) -> Result<M, Response> {
        let mut message = M::default();
        let mut violations: Vec<FieldViolation> = Vec::new();
        let mut seen = Seen::default();
        for (field, value) in &self.bound {
            if let Err(v) = message.set_param(field, value, &mut seen) {
                violations.push(v);
            }
        }
        let (parts, body) = self.request.into_parts();
        if let Some(query) = parts.uri.query() {
            for (key, value) in query_pairs(query, &mut violations) {
                if self.route.body == BodyRule::Whole {
                    violations.push(FieldViolation::new(key, "is not a parameter of this route"));
                } else if let Err(v) = message.set_param(&key, &value, &mut seen) {
                    violations.push(v);
                }
            }
        }
        if self.route.body == BodyRule::Whole {
            match read_json(self.max_body, &parts.headers, body).await? {
                serde_json::Value::Object(object) => {
                    message.merge_json(object, "", &mut violations)
                }
                _ => violations.push(FieldViolation::new("body", "must be a JSON object")),
            }
        }
        if violations.is_empty() {
            Ok(message)
        } else {
            Err(error_response_as(
                Error::Invalid(violations),
                self.route.errors(),
            ))
        }
    }
}

/// The decoded `key=value` pairs; an undecodable pair is reported and skipped.
fn query_pairs(query: &str, violations: &mut Vec<FieldViolation>) -> Vec<(String, String)> {
    let decode = |raw: &str| {
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(key), decode(value)) {
            (Some(key), Some(value)) => pairs.push((key, value)),
            _ => violations.push(FieldViolation::new(
                "query",
                "is not valid percent-encoded UTF-8",
            )),
        }
    }
    pairs
}

/// The body as JSON: sent as `application/json`, at most `max_body` bytes, well-formed, and no
/// object member given twice.
async fn read_json(
    max_body: usize,
    headers: &http::HeaderMap,
    body: Body,
) -> Result<serde_json::Value, Response> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|ct| ct.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        ));
    }
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body must be at most {max_body} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) if crate::transport::is_body_timeout(&*e) => {
            let mut response = json_error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &e.to_string(),
            );
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return Err(response);
        }
        Err(_) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(error_response(Error::invalid(
            "body",
            "a JSON object is required",
        )));
    }
    codec::parse_json(&bytes)
        .map_err(|e| error_response(Error::invalid("body", format!("is not valid JSON: {e}"))))
}

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const JSON_LD: HeaderValue = HeaderValue::from_static("application/ld+json");

/// `status` with the reply as JSON, or the error's answer.
fn reply<T: WriteJson>(
    result: Result<Reply<T>, Error>,
    status: StatusCode,
    errors: Errors,
) -> Response {
    let (body, media) = match result {
        Ok(Reply::Json(bytes)) => (bytes, JSON),
        Ok(Reply::LinkedData(bytes)) => (bytes, JSON_LD),
        Ok(Reply::Message(message)) => (to_json(&message), JSON),
        Err(e) => return error_response_as(e, errors),
    };
    if status == StatusCode::OK {
        // A read's answer (writes answer 201 or 204): its validator, for conditional GETs.
        let tag = conditional::etag(&body);
        return (status, [(CONTENT_TYPE, media), (ETAG, tag)], body).into_response();
    }
    (status, [(CONTENT_TYPE, media)], body).into_response()
}

/// 204 with no body, or the error's answer.
fn no_content(result: Result<(), Error>, errors: Errors) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response_as(e, errors),
    }
}

/// The legacy JSON of a reply, as the cache keeps it.
pub fn to_json<T: WriteJson>(message: &T) -> Bytes {
    let mut out = Vec::with_capacity(512);
    message.write_json(&mut out);
    out.into()
}
