//! The AWS side of the service: CloudWatch metrics and X-Ray traces.
//!
//! - [`config`] decides at startup whether publishing is on and builds the SDK clients;
//! - [`cloudwatch`] maps recorded metrics and health-check results to CloudWatch datums,
//!   checks them against CloudWatch's limits, chunks them into requests and sends them;
//! - [`xray`] turns a trace into X-Ray segment documents (split to stay under the 64 kB
//!   document limit) and sends them.
//!
//! The mappings are pure functions over plain structs, so every rule is unit-tested
//! without the SDK. The senders classify failures into [`PublishError::Retryable`] and
//! [`PublishError::Permanent`] so that a caller knows whether trying again can help.
//!
//! # Limitations
//!
//! The emulator the integration tests use (moto) enforces none of AWS's limits; the
//! limits are enforced here and tested by unit tests only.

pub mod cloudwatch;
pub mod config;
pub mod xray;

use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Why a publish call failed, split by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Throttling, a 5xx, a timeout or a connection failure: the same request may succeed
    /// later.
    #[error("retryable AWS failure: {0}")]
    Retryable(String),
    /// The request itself is wrong (validation, authorization, our own limit checks):
    /// sending it again fails again.
    #[error("permanent AWS failure: {0}")]
    Permanent(String),
}

impl PublishError {
    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// Error codes that name a passing condition. Throttling and server-side failures go away
/// by themselves; an expired token or request is renewed by the SDK's identity cache and
/// clock-skew correction on the next attempt.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServiceError",
    "InternalServiceFault",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Whether an AWS error code (of a failed call or of an unprocessed X-Ray segment) names a
/// passing condition.
pub(crate) fn is_retryable_code(code: &str) -> bool {
    RETRYABLE_CODES.contains(&code)
}

fn is_retryable_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Classifies a failed SDK call. Both SDK crates share this error type, so one function
/// serves CloudWatch and X-Ray.
pub(crate) fn classify_sdk_error<E>(operation: &str, err: &SdkError<E>) -> PublishError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // AWS's own code and message say what is wrong; the full error context (raw
    // response, headers) is only worth its length when there is no such answer.
    let message = match (err.code(), err.message()) {
        (Some(code), Some(text)) => format!("{operation}: {code}: {text}"),
        (Some(code), None) => format!("{operation}: {code}"),
        _ => format!("{operation}: {}", DisplayErrorContext(err)),
    };
    let retryable = match err {
        SdkError::TimeoutError(_) => true,
        // A user error is a malformed request or endpoint on our side; every other
        // connector failure (refused, reset, DNS, TLS handshake) can pass.
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        SdkError::ResponseError(response) => is_retryable_status(response.raw().status().as_u16()),
        SdkError::ServiceError(service) => {
            let by_code = err.code().is_some_and(is_retryable_code);
            by_code || is_retryable_status(service.raw().status().as_u16())
        }
        // Construction failures are our own bugs; anything newer than this code is
        // treated the same way rather than retried forever.
        _ => false,
    };
    if retryable {
        PublishError::Retryable(message)
    } else {
        PublishError::Permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudwatch::config::http::HttpResponse;
    use aws_sdk_cloudwatch::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(status: u16, code: &str) -> SdkError<PutMetricDataError> {
        let err = PutMetricDataError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("from the test")
                .build(),
        );
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn throttling_and_server_failures_are_retryable() {
        for (status, code) in [
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (429, "TooManyRequestsException"),
            (500, "InternalServiceError"),
            (503, "ServiceUnavailable"),
            (502, "SomethingNew"),
        ] {
            let classified = classify_sdk_error("PutMetricData", &service_error(status, code));
            assert!(classified.is_retryable(), "{status} {code}: {classified}");
        }
    }

    #[test]
    fn validation_errors_are_permanent_and_keep_the_message() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MissingParameter",
            "AccessDenied",
        ] {
            let classified = classify_sdk_error("PutMetricData", &service_error(400, code));
            let PublishError::Permanent(message) = classified else {
                panic!("{code} should be permanent");
            };
            assert_eq!(message, format!("PutMetricData: {code}: from the test"));
        }
    }

    #[test]
    fn timeouts_and_connection_failures_are_retryable() {
        let timeout: SdkError<PutMetricDataError> = SdkError::timeout_error("too slow");
        assert!(classify_sdk_error("op", &timeout).is_retryable());

        let refused: SdkError<PutMetricDataError> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert!(classify_sdk_error("op", &refused).is_retryable());

        let bad_uri: SdkError<PutMetricDataError> =
            SdkError::dispatch_failure(ConnectorError::user("invalid endpoint".into()));
        assert!(!classify_sdk_error("op", &bad_uri).is_retryable());
    }

    #[test]
    fn an_unparseable_response_is_classified_by_its_status() {
        let not_found: SdkError<PutMetricDataError> = SdkError::response_error(
            "expected XML",
            HttpResponse::new(404.try_into().unwrap(), SdkBody::empty()),
        );
        assert!(!classify_sdk_error("op", &not_found).is_retryable());

        let gateway: SdkError<PutMetricDataError> = SdkError::response_error(
            "expected XML",
            HttpResponse::new(502.try_into().unwrap(), SdkBody::empty()),
        );
        assert!(classify_sdk_error("op", &gateway).is_retryable());
    }

    #[test]
    fn a_request_that_cannot_be_built_is_permanent() {
        let err: SdkError<PutMetricDataError> = SdkError::construction_failure("missing field");
        assert!(!classify_sdk_error("op", &err).is_retryable());
    }
}
