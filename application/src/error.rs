//! The error every use case returns, shaped for the API's status codes.

use cqrs_es::AggregateError;
use skafu_domain::health::HealthCheckError;
use skafu_domain::metrics::MetricsError;
use skafu_domain::trace::TraceError;
use skafu_domain::validation::FieldError;

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request broke a domain rule (422).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The target does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else: storage failures, serialization bugs (500). The message is for
    /// the log, not for the caller.
    #[error("{0}")]
    Internal(String),
}

/// Maps a framework error, delegating user errors to `user`.
pub(crate) fn from_aggregate<E: std::error::Error>(
    err: AggregateError<E>,
    user: impl FnOnce(E) -> AppError,
) -> AppError {
    match err {
        AggregateError::UserError(e) => user(e),
        AggregateError::AggregateConflict => {
            AppError::Conflict("concurrent update, retry the request".into())
        }
        other => AppError::Internal(other.to_string()),
    }
}

impl From<MetricsError> for AppError {
    fn from(e: MetricsError) -> Self {
        match e {
            MetricsError::Invalid(f) => Self::Invalid(f),
            MetricsError::NotFound => Self::NotFound(e.to_string()),
            MetricsError::NoMetrics => Self::Invalid(FieldError::new("metrics", e.to_string())),
            MetricsError::AlreadyRecorded | MetricsError::InvalidState(_) => {
                Self::Conflict(e.to_string())
            }
        }
    }
}

impl From<TraceError> for AppError {
    fn from(e: TraceError) -> Self {
        match e {
            TraceError::Invalid(f) => Self::Invalid(f),
            TraceError::NotFound => Self::NotFound(e.to_string()),
            TraceError::AlreadyStarted | TraceError::AlreadyCompleted => {
                Self::Conflict(e.to_string())
            }
        }
    }
}

impl From<HealthCheckError> for AppError {
    fn from(e: HealthCheckError) -> Self {
        match e {
            HealthCheckError::Invalid(f) => Self::Invalid(f),
            HealthCheckError::NotFound => Self::NotFound(e.to_string()),
            HealthCheckError::AlreadyRegistered => Self::Conflict(e.to_string()),
        }
    }
}
