//! The JSON edge: matches an HTTP request to an annotated RPC, builds the request message from
//! the path, query and body, calls the RPC in-process through the same tonic service that
//! serves gRPC, and renders the reply (or the status) as the legacy API did.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use prost::Message;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::json_in::{merge_object, set_from_text};
use super::json_out::to_json;
use super::response::{error_response, json_error, status_response};
use super::routes::{BodyRule, Route};
use crate::error::{Error, FieldViolation};

/// The routes and the in-process gRPC service they call.
pub struct JsonEdge {
    routes: Vec<Route>,
    grpc: axum::Router,
    max_body: usize,
}

impl JsonEdge {
    pub fn new(routes: Vec<Route>, grpc: axum::Router, max_body: usize) -> Self {
        Self {
            routes,
            grpc,
            max_body,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// The fallback handler: every request that is not gRPC, gRPC-Web or a fixed route lands here.
pub async fn handle(State(edge): State<Arc<JsonEdge>>, request: Request<Body>) -> Response {
    let path = request.uri().path().to_string();
    let matched: Vec<_> = edge
        .routes
        .iter()
        .filter_map(|r| Some((r, r.match_path(&path)?)))
        .collect();
    if matched.is_empty() {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        );
    }
    // HEAD is a GET without the body (hyper leaves the body out).
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let Some((route, bound)) = matched.iter().find(|(r, _)| r.method == method).cloned() else {
        let allowed: Vec<&str> = matched.iter().map(|(r, _)| r.method.as_str()).collect();
        let mut response = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!(
                "{} is not allowed on {path}; use {}",
                request.method(),
                allowed.join(", ")
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(ALLOW, v);
        }
        return response;
    };
    let message = match build_request(&edge, route, bound, request).await {
        Ok(message) => message,
        Err(response) => return *response,
    };
    match call(&edge.grpc, route, message).await {
        Ok(reply) => success(route, &reply),
        Err(status) => status_response(&status),
    }
}

type Rejection = Box<Response>;

async fn build_request(
    edge: &JsonEdge,
    route: &Route,
    bound: Vec<(&str, String)>,
    request: Request<Body>,
) -> Result<DynamicMessage, Rejection> {
    let mut message = DynamicMessage::new(route.rpc.input());
    let mut violations: Vec<FieldViolation> = Vec::new();
    let mut seen = HashSet::new();
    for (field, value) in &bound {
        if let Err(v) = set_from_text(&mut message, field, value, &mut seen) {
            violations.push(v);
        }
    }
    let (parts, body) = request.into_parts();
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (decode_component(key), decode_component(value)) else {
                violations.push(FieldViolation::new(
                    "query",
                    "is not valid percent-encoded UTF-8",
                ));
                continue;
            };
            if route.body == BodyRule::Whole {
                violations.push(FieldViolation::new(key, "is not a parameter of this route"));
            } else if let Err(v) = set_from_text(&mut message, &key, &value, &mut seen) {
                violations.push(v);
            }
        }
    }
    if route.body != BodyRule::None {
        let json = read_json(edge, &parts.headers, body).await?;
        let target = match &route.body {
            BodyRule::Field(name) => serde_json::json!({ name: json }),
            _ => json,
        };
        if let Err(mut v) = merge_object(&mut message, target, "") {
            violations.append(&mut v);
        }
    }
    if violations.is_empty() {
        Ok(message)
    } else {
        Err(Box::new(error_response(Error::Invalid(violations))))
    }
}

fn decode_component(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The body as JSON: a JSON content type (when one is given), at most `max_body` bytes, and
/// well-formed.
async fn read_json(
    edge: &JsonEdge,
    headers: &http::HeaderMap,
    body: Body,
) -> Result<serde_json::Value, Rejection> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Box::new(json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json",
            )));
        }
    }
    let too_large = || {
        Box::new(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body must be at most {} bytes", edge.max_body),
        ))
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > edge.max_body) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, edge.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => {
            return Err(Box::new(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            )))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Box::new(error_response(Error::invalid(
            "body",
            "a JSON object is required",
        ))));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(error_response(Error::invalid(
            "body",
            format!("is not valid JSON: {e}"),
        )))
    })
}

/// Calls the route's RPC through the gRPC router, as a gRPC client on the wire would.
async fn call(
    grpc: &axum::Router,
    route: &Route,
    message: DynamicMessage,
) -> Result<DynamicMessage, Status> {
    let payload = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(payload.len() as u32);
    frame.extend_from_slice(&payload);
    let request = Request::builder()
        .method(Method::POST)
        .uri(route.grpc_path())
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Body::from(frame.freeze()))
        .map_err(|e| Status::internal(e.to_string()))?;
    let response = grpc
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers).filter(|s| s.code() != Code::Ok) {
        return Err(status);
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    if let Some(status) = collected
        .trailers()
        .and_then(Status::from_header_map)
        .filter(|s| s.code() != Code::Ok)
    {
        return Err(status);
    }
    let data = collected.to_bytes();
    let reply = unframe(&data).ok_or_else(|| Status::internal("malformed gRPC reply"))?;
    DynamicMessage::decode(route.rpc.output(), reply).map_err(|e| Status::internal(e.to_string()))
}

fn unframe(data: &Bytes) -> Option<Bytes> {
    let (&compressed, rest) = data.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (compressed == 0).then(|| data.slice(5..5 + len.min(rest.len() - 4)))
}

/// 201 with the reply for POST, 204 with no body for an `Empty` reply, else 200 with the reply.
fn success(route: &Route, reply: &DynamicMessage) -> Response {
    if route.rpc.output().full_name() == "google.protobuf.Empty" {
        return StatusCode::NO_CONTENT.into_response();
    }
    let status = if route.method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        to_json(reply),
    )
        .into_response()
}
