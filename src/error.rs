//! The service's one error type, and its single mapping to gRPC statuses. Internals are logged
//! here, once, and never shown to a client.

use std::fmt;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tonic_types::{ErrorDetails, StatusExt};

/// A request field that broke a rule, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.reason)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// `product_id` missing or not a positive integer; legacy clients match this exact text.
    #[error("invalid product_id provided")]
    InvalidProductId,
    /// Other invalid fields, every one of them (a reply shows the first [`MAX_VIOLATIONS`]).
    #[error("invalid request: {}", join(&bounded(.0)))]
    Invalid(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The database is unreachable, the pool is exhausted, or a query timed out.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Over a rate limit; may be retried after the duration.
    #[error("too many requests from this client: retry in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A reply lists at most this many violations, then one that counts the rest: a request naming
/// thousands of bad ids gets a short answer (and a gRPC status whose header clients can read).
pub const MAX_VIOLATIONS: usize = 10;

/// A wait in whole seconds, rounded up, at least 1 (as `Retry-After` says it).
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Fields and reasons are cut to this many bytes: a client may send a key of any length.
const MAX_TEXT: usize = 200;

fn bounded(v: &[FieldViolation]) -> Vec<FieldViolation> {
    let mut out: Vec<FieldViolation> = v
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|v| FieldViolation::new(cut(&v.field), cut(&v.reason)))
        .collect();
    if v.len() > MAX_VIOLATIONS {
        let more = v.len() - MAX_VIOLATIONS;
        out.push(FieldViolation::new(
            "request",
            format!(
                "and {more} more problem{}",
                if more == 1 { "" } else { "s" }
            ),
        ));
    }
    out
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn join(v: &[FieldViolation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, reason)])
    }

    /// The field violations a client is shown (the product id counts as one), bounded.
    pub fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::InvalidProductId => vec![FieldViolation::new(
                "product_id",
                "must be a positive integer",
            )],
            Self::Invalid(v) => bounded(v),
            _ => Vec::new(),
        }
    }
}

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => Self::Unavailable(e.to_string()),
            // SQLSTATE classes 57 (admin shutdown, cannot connect now, statement timeout) reach
            // diesel only as messages.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if is_outage_message(info.message()) =>
            {
                Self::Unavailable(e.to_string())
            }
            DieselError::BrokenTransactionManager => Self::Unavailable(e.to_string()),
            _ => Self::Internal(e.to_string()),
        }
    }
}

fn is_outage_message(message: &str) -> bool {
    [
        "terminating connection",
        "the database system is",
        "canceling statement due to statement timeout",
        "connection to server",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl<E: fmt::Display> From<bb8::RunError<E>> for Error {
    fn from(e: bb8::RunError<E>) -> Self {
        match e {
            bb8::RunError::TimedOut => {
                Self::Unavailable("timed out waiting for a database connection".into())
            }
            bb8::RunError::User(e) => Self::Unavailable(format!("database connection failed: {e}")),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidProductId | Error::Invalid(_) => {
                let mut details = ErrorDetails::new();
                for v in e.violations() {
                    details.add_bad_request_violation(v.field, v.reason);
                }
                tonic::Status::with_error_details(
                    tonic::Code::InvalidArgument,
                    e.to_string(),
                    details,
                )
            }
            Error::NotFound(_) => tonic::Status::not_found(e.to_string()),
            Error::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            Error::RateLimited(wait) => {
                let mut details = ErrorDetails::new();
                details
                    .set_retry_info(Some(std::time::Duration::from_secs(retry_after_secs(wait))));
                tonic::Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    e.to_string(),
                    details,
                )
            }
            Error::Unavailable(ref cause) => {
                tracing::warn!(%cause, "request failed: database unavailable");
                tonic::Status::unavailable("the review store is unavailable, try again later")
            }
            Error::Internal(ref cause) => {
                tracing::error!(%cause, "request failed with an internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_show_a_bounded_number_of_bounded_violations() {
        let many: Vec<_> = (0..5_499)
            .map(|i| {
                FieldViolation::new(
                    format!("characteristics[{i}]"),
                    "is not one of the product's",
                )
            })
            .collect();
        let shown = Error::Invalid(many).violations();
        assert_eq!(shown.len(), MAX_VIOLATIONS + 1);
        assert_eq!(shown[MAX_VIOLATIONS].reason, "and 5489 more problems");
        let status = tonic::Status::from(Error::Invalid(
            (0..5_499)
                .map(|i| FieldViolation::new(format!("f{i}"), "x"))
                .collect(),
        ));
        assert!(status.message().len() < 400, "{}", status.message());

        let long = Error::invalid("k".repeat(100_000), "é".repeat(1_000)).violations();
        assert!(long[0].field.len() <= MAX_TEXT + 3);
        assert!(long[0].reason.len() <= MAX_TEXT + 3 && long[0].reason.ends_with("..."));
        let one = Error::invalid("a", "b").violations();
        assert_eq!(one, [FieldViolation::new("a", "b")]);
    }
}
