//! The `HealthCheck` aggregate: a registered check of one service's HTTP endpoint and the
//! outcome of each run.
//!
//! The HTTP request itself happens outside the domain (the checker in infrastructure);
//! this aggregate receives the outcome and decides the status:
//! - a success within the check's `degraded_after_ms` on the first attempt is `healthy`;
//! - a success that was slower, or needed retries, is `degraded`;
//! - a run whose every attempt failed is `unhealthy`;
//! - a check that has never run is `unknown`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::validation::{check_name, FieldError};

/// Default seconds between runs (design document).
pub const DEFAULT_INTERVAL_SECONDS: u64 = 30;
/// Default per-attempt timeout in seconds (design document).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 5;
/// Default retries after a failed first attempt (design document).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default response time above which a success counts as degraded.
pub const DEFAULT_DEGRADED_AFTER_MS: u64 = 1000;

/// What a health check probes and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckDefinition {
    /// The service checked.
    pub service_name: String,
    /// The http(s) URL requested with GET.
    pub endpoint: String,
    /// Kind of check; part of the id `<service>-<check type>`.
    pub check_type: String,
    /// Seconds between runs.
    pub interval_seconds: u64,
    /// Per-attempt timeout in seconds.
    pub timeout_seconds: u64,
    /// Retries after a failed first attempt.
    pub max_retries: u32,
    /// A success slower than this many milliseconds is degraded.
    pub degraded_after_ms: u64,
    /// The status that counts as healthy; any 2xx when absent.
    pub expected_status: Option<u16>,
}

impl HealthCheckDefinition {
    /// The aggregate id of the check, `<service>-<check type>` as in the design document.
    pub fn id(&self) -> String {
        format!("{}-{}", self.service_name, self.check_type)
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// Returns the first broken rule, naming the request field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("service_name", &self.service_name)?;
        check_endpoint(&self.endpoint)?;
        let valid_type = !self.check_type.is_empty()
            && self.check_type.len() <= 32
            && self
                .check_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_type {
            return Err(FieldError::new(
                "check_type",
                "must be 1 to 32 lowercase letters, digits or underscores",
            ));
        }
        if !(5..=86_400).contains(&self.interval_seconds) {
            return Err(FieldError::new(
                "interval_seconds",
                "must be between 5 and 86400",
            ));
        }
        if !(1..=60).contains(&self.timeout_seconds) {
            return Err(FieldError::new(
                "timeout_seconds",
                "must be between 1 and 60",
            ));
        }
        if self.max_retries > 10 {
            return Err(FieldError::new("max_retries", "must be at most 10"));
        }
        if self.degraded_after_ms == 0 {
            return Err(FieldError::new("degraded_after_ms", "must be positive"));
        }
        if let Some(status) = self.expected_status {
            if !(100..=599).contains(&status) {
                return Err(FieldError::new(
                    "expected_status",
                    "must be an HTTP status code",
                ));
            }
        }
        Ok(())
    }

    /// Whether `status` counts as healthy for this check.
    pub fn accepts_status(&self, status: u16) -> bool {
        match self.expected_status {
            Some(expected) => status == expected,
            None => (200..300).contains(&status),
        }
    }
}

/// Refuses anything but an http(s) URL with a host, and the cloud metadata services: a
/// health check must never become a way to read instance credentials.
fn check_endpoint(endpoint: &str) -> Result<(), FieldError> {
    let field = "endpoint";
    let url = url::Url::parse(endpoint)
        .map_err(|e| FieldError::new(field, format!("must be an http(s) URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::new(field, "must be an http(s) URL"));
    }
    let Some(host) = url.host() else {
        return Err(FieldError::new(field, "must name a host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::new(field, "must not carry credentials"));
    }
    let forbidden = match host {
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "metadata.google.internal" || name == "metadata"
        }
        url::Host::Ipv4(ip) => is_metadata_address(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => is_metadata_address(IpAddr::V6(ip)),
    };
    if forbidden {
        return Err(FieldError::new(
            field,
            "must not point at a cloud metadata service",
        ));
    }
    Ok(())
}

/// Whether `ip` belongs to a cloud instance metadata service: the IPv4 link-local range
/// (169.254.0.0/16, which holds AWS, GCP and Azure's 169.254.169.254), Alibaba's
/// 100.100.100.200, and AWS's IPv6 endpoint fd00:ec2::254 (and IPv6 link-local).
pub fn is_metadata_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_metadata_address(IpAddr::V4(v4));
            }
            v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Why a run failed, one reason per kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Nothing listened on the port.
    ConnectionRefused,
    /// The host name did not resolve.
    DnsFailure,
    /// No answer within the timeout.
    Timeout,
    /// An answer with a status the check does not accept.
    UnexpectedStatus,
    /// The target is not allowed (a metadata address after resolution).
    Forbidden,
    /// Anything else (TLS, reset connection, ...).
    Other,
}

/// The outcome of one run (all attempts) as measured by the checker.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// An attempt got an accepted status.
    Success {
        /// Response time of the successful attempt, in milliseconds.
        response_time_ms: f64,
        /// Its status code.
        status_code: u16,
        /// Attempts made, the successful one included.
        attempts: u32,
    },
    /// Every attempt failed; the last failure is reported.
    Failure {
        /// Kind of the last failure.
        reason: FailureReason,
        /// Its description.
        error_message: String,
        /// Status code when the last attempt got an answer.
        status_code: Option<u16>,
        /// Response time of the last attempt when it got an answer.
        response_time_ms: Option<f64>,
        /// Attempts made.
        attempts: u32,
    },
}

/// Health of a check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Responding as expected.
    Healthy,
    /// Not responding as expected.
    Unhealthy,
    /// Responding, but slowly or only after retries.
    Degraded,
    /// Never checked.
    #[default]
    Unknown,
}

/// Commands accepted by [`HealthCheck`].
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckCommand {
    /// Register the check (idempotent for an identical definition).
    Register {
        /// The definition.
        definition: HealthCheckDefinition,
        /// When.
        at: DateTime<Utc>,
    },
    /// Record the outcome of a run.
    RecordResult {
        /// What the checker saw.
        outcome: CheckOutcome,
        /// When the run finished.
        checked_at: DateTime<Utc>,
    },
}

/// Events of [`HealthCheck`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthCheckEvent {
    /// The check was registered.
    HealthCheckRegistered {
        /// The definition.
        definition: HealthCheckDefinition,
        /// When.
        registered_at: DateTime<Utc>,
    },
    /// A run succeeded (status `healthy`, or `degraded` when `degraded` is set).
    HealthCheckSucceeded {
        /// Response time in milliseconds.
        response_time_ms: f64,
        /// Status code received.
        status_code: u16,
        /// Attempts made.
        attempts: u32,
        /// Slower than the threshold or needed retries.
        degraded: bool,
        /// When the run finished.
        checked_at: DateTime<Utc>,
    },
    /// A run failed.
    HealthCheckFailed {
        /// Kind of failure.
        reason: FailureReason,
        /// Description.
        error_message: String,
        /// Status code when an answer came.
        status_code: Option<u16>,
        /// Response time when an answer came.
        response_time_ms: Option<f64>,
        /// Attempts made.
        attempts: u32,
        /// When the run finished.
        checked_at: DateTime<Utc>,
    },
}

impl DomainEvent for HealthCheckEvent {
    fn event_type(&self) -> String {
        match self {
            Self::HealthCheckRegistered { .. } => "HealthCheckRegistered",
            Self::HealthCheckSucceeded { .. } => "HealthCheckSucceeded",
            Self::HealthCheckFailed { .. } => "HealthCheckFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_string()
    }
}

/// Why a health-check command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthCheckError {
    /// A field broke a rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No check with this id is registered.
    #[error("health check not found")]
    NotFound,
    /// The id is registered with a different definition.
    #[error("health check already registered with a different definition")]
    AlreadyRegistered,
}

/// A registered health check. Its state is small and does not grow with the number of
/// runs, which is what makes snapshots of it cheap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The definition; `None` until registered.
    pub definition: Option<HealthCheckDefinition>,
    /// Current status.
    pub status: HealthStatus,
    /// Runs in a row that failed.
    pub consecutive_failures: u64,
    /// Runs in a row that succeeded (healthy or degraded).
    pub consecutive_successes: u64,
    /// When the last run finished.
    pub last_check: Option<DateTime<Utc>>,
}

impl Aggregate for HealthCheck {
    const TYPE: &'static str = "HealthCheck";
    type Command = HealthCheckCommand;
    type Event = HealthCheckEvent;
    type Error = HealthCheckError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            HealthCheckCommand::Register { definition, at } => {
                definition.validate()?;
                match &self.definition {
                    // Registering the same check again is a no-op, so callers can
                    // register on every start-up.
                    Some(existing) if *existing == definition => {}
                    Some(_) => return Err(HealthCheckError::AlreadyRegistered),
                    None => {
                        let event = HealthCheckEvent::HealthCheckRegistered {
                            definition,
                            registered_at: at,
                        };
                        sink.write(event, self).await;
                    }
                }
            }
            HealthCheckCommand::RecordResult {
                outcome,
                checked_at,
            } => {
                let Some(definition) = &self.definition else {
                    return Err(HealthCheckError::NotFound);
                };
                let event = match outcome {
                    CheckOutcome::Success {
                        response_time_ms,
                        status_code,
                        attempts,
                    } => HealthCheckEvent::HealthCheckSucceeded {
                        degraded: attempts > 1
                            || response_time_ms > definition.degraded_after_ms as f64,
                        response_time_ms,
                        status_code,
                        attempts,
                        checked_at,
                    },
                    CheckOutcome::Failure {
                        reason,
                        error_message,
                        status_code,
                        response_time_ms,
                        attempts,
                    } => HealthCheckEvent::HealthCheckFailed {
                        reason,
                        error_message,
                        status_code,
                        response_time_ms,
                        attempts,
                        checked_at,
                    },
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            HealthCheckEvent::HealthCheckRegistered { definition, .. } => {
                self.definition = Some(definition);
                self.status = HealthStatus::Unknown;
            }
            HealthCheckEvent::HealthCheckSucceeded {
                degraded,
                checked_at,
                ..
            } => {
                self.status = if degraded {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                };
                self.consecutive_failures = 0;
                self.consecutive_successes += 1;
                self.last_check = Some(checked_at);
            }
            HealthCheckEvent::HealthCheckFailed { checked_at, .. } => {
                self.status = HealthStatus::Unhealthy;
                self.consecutive_successes = 0;
                self.consecutive_failures += 1;
                self.last_check = Some(checked_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<HealthCheck>;

    fn t0() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn definition() -> HealthCheckDefinition {
        HealthCheckDefinition {
            service_name: "checkout".into(),
            endpoint: "http://127.0.0.1:8080/health".into(),
            check_type: "http".into(),
            interval_seconds: DEFAULT_INTERVAL_SECONDS,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_retries: DEFAULT_MAX_RETRIES,
            degraded_after_ms: 500,
            expected_status: None,
        }
    }

    fn registered() -> HealthCheckEvent {
        HealthCheckEvent::HealthCheckRegistered {
            definition: definition(),
            registered_at: t0(),
        }
    }

    fn success(ms: f64, attempts: u32) -> HealthCheckCommand {
        HealthCheckCommand::RecordResult {
            outcome: CheckOutcome::Success {
                response_time_ms: ms,
                status_code: 200,
                attempts,
            },
            checked_at: t0(),
        }
    }

    fn failed() -> HealthCheckEvent {
        HealthCheckEvent::HealthCheckFailed {
            reason: FailureReason::ConnectionRefused,
            error_message: "connection refused".into(),
            status_code: None,
            response_time_ms: None,
            attempts: 4,
            checked_at: t0(),
        }
    }

    fn succeeded(degraded: bool, ms: f64, attempts: u32) -> HealthCheckEvent {
        HealthCheckEvent::HealthCheckSucceeded {
            response_time_ms: ms,
            status_code: 200,
            attempts,
            degraded,
            checked_at: t0(),
        }
    }

    #[test]
    fn the_id_is_service_dash_check_type() {
        assert_eq!(definition().id(), "checkout-http");
    }

    #[test]
    fn a_fast_first_attempt_success_is_healthy() {
        Given::with(())
            .given(vec![registered()])
            .when(success(12.0, 1))
            .then_expect_events(vec![succeeded(false, 12.0, 1)]);
    }

    #[test]
    fn a_slow_success_or_one_that_needed_retries_is_degraded() {
        Given::with(())
            .given(vec![registered()])
            .when(success(501.0, 1))
            .then_expect_events(vec![succeeded(true, 501.0, 1)]);
        Given::with(())
            .given(vec![registered()])
            .when(success(5.0, 2))
            .then_expect_events(vec![succeeded(true, 5.0, 2)]);
    }

    #[test]
    fn status_and_consecutive_counts_follow_the_results() {
        let mut check = HealthCheck::default();
        check.apply(registered());
        assert_eq!(check.status, HealthStatus::Unknown);
        check.apply(failed());
        check.apply(failed());
        assert_eq!(
            (
                check.status,
                check.consecutive_failures,
                check.consecutive_successes
            ),
            (HealthStatus::Unhealthy, 2, 0)
        );
        check.apply(succeeded(true, 900.0, 1));
        assert_eq!(
            (
                check.status,
                check.consecutive_failures,
                check.consecutive_successes
            ),
            (HealthStatus::Degraded, 0, 1)
        );
        check.apply(succeeded(false, 9.0, 1));
        assert_eq!(
            (
                check.status,
                check.consecutive_failures,
                check.consecutive_successes
            ),
            (HealthStatus::Healthy, 0, 2)
        );
    }

    #[test]
    fn results_for_an_unregistered_check_are_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(success(1.0, 1))
            .then_expect_error(HealthCheckError::NotFound);
    }

    #[test]
    fn registering_again_is_idempotent_but_a_different_definition_conflicts() {
        Given::with(())
            .given(vec![registered()])
            .when(HealthCheckCommand::Register {
                definition: definition(),
                at: t0(),
            })
            .then_expect_events(vec![]);
        let mut other = definition();
        other.endpoint = "http://127.0.0.1:9090/health".into();
        Given::with(())
            .given(vec![registered()])
            .when(HealthCheckCommand::Register {
                definition: other,
                at: t0(),
            })
            .then_expect_error(HealthCheckError::AlreadyRegistered);
    }

    #[test]
    fn the_endpoint_must_be_an_http_url_and_not_a_metadata_service() {
        for bad in [
            "ftp://example.test/",
            "not a url",
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/",
            "http://[::ffff:169.254.169.254]/",
            "http://user:pw@127.0.0.1/",
        ] {
            let mut d = definition();
            d.endpoint = bad.into();
            let err = d.validate().unwrap_err();
            assert_eq!(err.field, "endpoint", "{bad}");
        }
    }

    #[test]
    fn timing_fields_are_bounded() {
        let mut d = definition();
        d.interval_seconds = 1;
        assert_eq!(d.validate().unwrap_err().field, "interval_seconds");
        let mut d = definition();
        d.timeout_seconds = 0;
        assert_eq!(d.validate().unwrap_err().field, "timeout_seconds");
        let mut d = definition();
        d.max_retries = 11;
        assert_eq!(d.validate().unwrap_err().field, "max_retries");
    }

    #[test]
    fn expected_status_defaults_to_any_2xx() {
        let mut d = definition();
        assert!(d.accepts_status(204));
        assert!(!d.accepts_status(301));
        d.expected_status = Some(301);
        assert!(d.accepts_status(301));
        assert!(!d.accepts_status(200));
    }
}
