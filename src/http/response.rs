//! Error responses of the JSON edge: gRPC statuses mapped to HTTP codes, always with a body and a
//! content type. A bad `product_id` keeps the legacy API's exact plain-text answer.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::error::Error;

/// The legacy clients match this body exactly.
pub const INVALID_PRODUCT_ID: &str = "Error: invalid product_id provided";

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// `{"error": message, "code": code}` with the given HTTP status.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": code });
    (status, [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

/// How a route answers errors: the legacy routes' invalid `product_id` is the plain text their
/// clients match; the `v1` routes answer it as any other field violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errors {
    Legacy,
    V1,
}

pub fn error_response(e: Error) -> Response {
    status_response(&Status::from(e))
}

/// The answer for `e` on a route that answers errors as `errors` says.
pub fn error_response_as(e: Error, errors: Errors) -> Response {
    status_response_as(&Status::from(e), errors)
}

/// The HTTP answer for a gRPC status on a legacy route.
pub fn status_response(status: &Status) -> Response {
    status_response_as(status, Errors::Legacy)
}

/// The HTTP answer for a gRPC status; field violations are listed as `fields`.
pub fn status_response_as(status: &Status, errors: Errors) -> Response {
    let fields: Vec<_> = status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default();
    if errors == Errors::Legacy
        && status.code() == Code::InvalidArgument
        && fields.iter().any(|f| f.field == "product_id")
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            INVALID_PRODUCT_ID,
        )
            .into_response();
    }
    let http = http_status(status.code());
    let mut body = serde_json::json!({
        "error": status.message(),
        "code": code_name(status.code()),
    });
    if !fields.is_empty() {
        body["fields"] = fields
            .iter()
            .map(|f| serde_json::json!({ "field": f.field, "reason": f.description }))
            .collect();
    }
    let mut response = (http, [(CONTENT_TYPE, JSON)], body.to_string()).into_response();
    if http == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(delay.as_secs()));
    }
    response
}

/// The usual gRPC-to-HTTP mapping, with the legacy API's 422 for invalid input.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
