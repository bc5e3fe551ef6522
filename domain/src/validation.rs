//! Field-level rule violations and the checks shared by the aggregates.
//!
//! The limits here are CloudWatch's and X-Ray's where the data ends up there, so that a
//! request the service acknowledges can always be published: a datum AWS would reject is
//! rejected at the door instead of failing later in the publisher.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

/// A broken rule, naming the field as the caller spelled it (for example `metrics[3].unit`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field in the request, such as `metrics[0].value`.
    pub field: String,
    /// What is wrong with it, in a sentence a caller can act on.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest name (metric, dimension key, service) CloudWatch accepts.
pub const MAX_NAME_LEN: usize = 255;
/// Longest dimension value CloudWatch accepts.
pub const MAX_DIMENSION_VALUE_LEN: usize = 1024;
/// Most dimensions CloudWatch accepts on one datum.
pub const MAX_DIMENSIONS: usize = 30;
/// How far ahead of the service's clock a caller's timestamp may be. Callers' clocks drift;
/// a few seconds of skew is not "the future" in any sense a user cares about.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::seconds(5);
/// Oldest timestamp accepted: CloudWatch refuses data older than two weeks.
pub const MAX_TIMESTAMP_AGE: Duration = Duration::days(14);

/// Checks a CloudWatch-style name: non-blank, at most 255 printable ASCII characters and
/// not starting with `:`.
///
/// # Errors
///
/// Returns a [`FieldError`] for `field` describing the first rule broken.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    check_text(field, name, MAX_NAME_LEN)?;
    if name.starts_with(':') {
        return Err(FieldError::new(field, "must not start with ':'"));
    }
    Ok(())
}

/// Checks free text that ends up in a dimension, tag or annotation: non-blank, printable
/// ASCII, at most `max_len` characters.
///
/// # Errors
///
/// Returns a [`FieldError`] for `field` describing the first rule broken.
pub fn check_text(field: &str, text: &str, max_len: usize) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if text.len() > max_len {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_len} characters"),
        ));
    }
    if !text.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return Err(FieldError::new(
            field,
            "must contain printable ASCII characters only",
        ));
    }
    Ok(())
}

/// Checks every key and value of a dimension or tag map, naming entries `{field}.{key}`.
///
/// # Errors
///
/// Returns the first broken rule.
pub fn check_dimensions(field: &str, map: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (key, value) in map {
        check_name(&format!("{field}.{key}"), key)?;
        check_text(&format!("{field}.{key}"), value, MAX_DIMENSION_VALUE_LEN)?;
    }
    Ok(())
}

/// Checks that a measured value is a finite number CloudWatch can store.
///
/// # Errors
///
/// Returns a [`FieldError`] for NaN, infinities and magnitudes beyond 2^360.
pub fn check_value(field: &str, value: f64) -> Result<(), FieldError> {
    // 2^360 is CloudWatch's bound; f64 holds it exactly.
    let bound = 2f64.powi(360);
    if !value.is_finite() {
        return Err(FieldError::new(field, "must be a finite number"));
    }
    if value.abs() > bound {
        return Err(FieldError::new(field, "must lie within -2^360 and 2^360"));
    }
    Ok(())
}

/// Checks that a caller's timestamp is neither in the future (beyond the skew tolerance)
/// nor older than CloudWatch accepts.
///
/// # Errors
///
/// Returns a [`FieldError`] naming `field`.
pub fn check_timestamp(
    field: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), FieldError> {
    if at > now + CLOCK_SKEW_TOLERANCE {
        return Err(FieldError::new(field, "must not be in the future"));
    }
    if at < now - MAX_TIMESTAMP_AGE {
        return Err(FieldError::new(field, "must be within the past 14 days"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_printable_ascii_without_a_leading_colon() {
        assert!(check_name("n", "latency_ms").is_ok());
        assert_eq!(
            check_name("n", "  ").unwrap_err().message,
            "must not be empty"
        );
        assert!(check_name("n", ":x").is_err());
        assert!(check_name("n", "caf\u{e9}").is_err());
        assert!(check_name("n", "a\tb").is_err());
        assert!(check_name("n", &"a".repeat(256)).is_err());
        assert!(check_name("n", &"a".repeat(255)).is_ok());
    }

    #[test]
    fn values_must_be_finite_and_within_cloudwatch_bounds() {
        assert!(check_value("v", 1.5).is_ok());
        assert!(check_value("v", f64::NAN).is_err());
        assert!(check_value("v", f64::INFINITY).is_err());
        assert!(check_value("v", 2f64.powi(361)).is_err());
        assert!(check_value("v", -(2f64.powi(360))).is_ok());
    }

    #[test]
    fn timestamps_are_bounded_by_skew_and_age() {
        let now = Utc::now();
        assert!(check_timestamp("t", now + Duration::seconds(4), now).is_ok());
        assert!(check_timestamp("t", now + Duration::seconds(6), now).is_err());
        assert!(check_timestamp("t", now - Duration::days(13), now).is_ok());
        assert!(check_timestamp("t", now - Duration::days(15), now).is_err());
    }
}
