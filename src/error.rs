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
    /// Other invalid fields, every one of them.
    #[error("invalid request: {}", join(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    /// The database is unreachable, the pool is exhausted, or a query timed out.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
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

    /// The field violations a client can act on (the product id counts as one).
    pub fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::InvalidProductId => vec![FieldViolation::new(
                "product_id",
                "must be a positive integer",
            )],
            Self::Invalid(v) => v.clone(),
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
