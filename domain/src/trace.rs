//! The `Trace` aggregate: one distributed trace, its spans, annotations and errors.
//!
//! Status: a trace is `active` until completed; completing it makes it `completed`, or
//! `error` when errors were recorded. The design document's sketch let an error end the
//! trace at once, which would have refused the completion (and the duration) of every
//! trace that ever saw an error; here errors are counted while the trace runs and decide
//! the final status. Nothing can be added to a finished trace.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::validation::{check_name, check_text, FieldError};

/// Most spans one trace may hold; X-Ray caps a trace's documents at 500 KB.
pub const MAX_SPANS_PER_TRACE: usize = 500;
/// Longest annotation or tag value X-Ray indexes.
pub const MAX_ANNOTATION_VALUE_LEN: usize = 1000;
/// Longest error message kept.
pub const MAX_ERROR_LEN: usize = 4096;

/// An X-Ray trace id: `1-<8 hex digits of epoch seconds>-<24 hex random digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceId(String);

impl TraceId {
    /// Generates an id whose epoch part is `now`, as X-Ray expects.
    pub fn generate(now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        let random: u128 = rng.gen::<u128>() & ((1u128 << 96) - 1);
        Self(format!("1-{:08x}-{random:024x}", now.timestamp() as u32))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the trace id says the trace started, from its epoch part.
    pub fn epoch_seconds(&self) -> i64 {
        i64::from_str_radix(&self.0[2..10], 16).unwrap_or_default()
    }
}

impl FromStr for TraceId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let is_hex = |p: &str| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["1", epoch, random]
                if epoch.len() == 8 && random.len() == 24 && is_hex(epoch) && is_hex(random) =>
            {
                return Ok(Self(s.to_string()));
            }
            _ => {}
        }
        Err(FieldError::new(
            "trace_id",
            "must look like 1-<8 lowercase hex digits>-<24 lowercase hex digits>",
        ))
    }
}

impl TryFrom<String> for TraceId {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<TraceId> for String {
    fn from(id: TraceId) -> Self {
        id.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One log line attached to a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLog {
    /// The message.
    pub message: String,
    /// Severity, such as `INFO` or `ERROR`.
    pub level: String,
    /// When it was logged.
    pub timestamp: DateTime<Utc>,
}

/// A timed unit of work inside a trace, as stored in `SpanAdded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// 16 hex digits; becomes the X-Ray subsegment id.
    pub span_id: String,
    /// What the span measured.
    pub name: String,
    /// Start of the work.
    pub start_time: DateTime<Utc>,
    /// End of the work; never before `start_time`.
    pub end_time: DateTime<Utc>,
    /// `end_time - start_time` in milliseconds.
    pub duration_ms: f64,
    /// Caller tags.
    pub tags: BTreeMap<String, String>,
    /// Log lines.
    pub logs: Vec<SpanLog>,
}

/// A span as a caller sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanInput {
    /// Span name.
    pub name: String,
    /// Start of the work.
    pub start_time: DateTime<Utc>,
    /// End of the work.
    pub end_time: DateTime<Utc>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Log lines: message and level (default `INFO`).
    pub logs: Vec<(String, Option<String>)>,
}

/// Status of a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    /// Still running.
    #[default]
    Active,
    /// Completed without errors.
    Completed,
    /// Completed with at least one error.
    Error,
    /// Never completed within the trace window (set by retention, not by callers).
    Timeout,
}

/// Commands accepted by [`Trace`].
#[derive(Debug, Clone, PartialEq)]
pub enum TraceCommand {
    /// Start the trace (creates the aggregate).
    StartTrace {
        /// The service that started it.
        service_name: String,
        /// The operation traced.
        operation_name: String,
        /// When it started.
        started_at: DateTime<Utc>,
    },
    /// Add a span.
    AddSpan {
        /// The span as sent.
        span: SpanInput,
        /// Id chosen for it (16 hex digits).
        span_id: String,
        /// When the request arrived (timestamps default to it).
        received_at: DateTime<Utc>,
    },
    /// Add an annotation.
    AddAnnotation {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Record an error.
    MarkError {
        /// What went wrong.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Complete the trace.
    CompleteTrace {
        /// When it ended.
        at: DateTime<Utc>,
    },
}

/// Events of [`Trace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceEvent {
    /// The trace started.
    TraceStarted {
        /// The service.
        service_name: String,
        /// The operation.
        operation_name: String,
        /// Start time.
        start_time: DateTime<Utc>,
    },
    /// A span was added.
    SpanAdded(Span),
    /// An annotation was added (or overwritten).
    AnnotationAdded {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// An error was recorded.
    TraceError {
        /// What went wrong.
        error_message: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The trace completed.
    TraceCompleted {
        /// End time.
        end_time: DateTime<Utc>,
        /// Duration in milliseconds.
        duration_ms: f64,
        /// Final status: `completed` or `error`.
        status: TraceStatus,
    },
}

impl DomainEvent for TraceEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TraceStarted { .. } => "TraceStarted",
            Self::SpanAdded(_) => "SpanAdded",
            Self::AnnotationAdded { .. } => "AnnotationAdded",
            Self::TraceError { .. } => "TraceError",
            Self::TraceCompleted { .. } => "TraceCompleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_string()
    }
}

/// Why a trace command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// A field broke a rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No trace with this id was started.
    #[error("trace not found")]
    NotFound,
    /// A trace with this id already exists.
    #[error("trace already started")]
    AlreadyStarted,
    /// The trace is finished.
    #[error("trace already completed")]
    AlreadyCompleted,
}

/// One distributed trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Service that started it; empty until started.
    pub service_name: String,
    /// Operation traced.
    pub operation_name: String,
    /// Start time.
    pub start_time: Option<DateTime<Utc>>,
    /// End time once completed.
    pub end_time: Option<DateTime<Utc>>,
    /// Number of spans.
    pub span_count: usize,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Status.
    pub status: TraceStatus,
    /// Number of errors recorded.
    pub error_count: usize,
}

impl Trace {
    fn ensure_open(&self) -> Result<DateTime<Utc>, TraceError> {
        let Some(start) = self.start_time else {
            return Err(TraceError::NotFound);
        };
        if self.status != TraceStatus::Active {
            return Err(TraceError::AlreadyCompleted);
        }
        Ok(start)
    }
}

fn span_from(
    input: SpanInput,
    span_id: String,
    received_at: DateTime<Utc>,
) -> Result<Span, FieldError> {
    check_name("name", &input.name)?;
    if input.start_time > input.end_time {
        return Err(FieldError::new("end_time", "must not be before start_time"));
    }
    for (key, value) in &input.tags {
        check_name(&format!("tags.{key}"), key)?;
        check_text(&format!("tags.{key}"), value, MAX_ANNOTATION_VALUE_LEN)?;
    }
    let mut logs = Vec::with_capacity(input.logs.len());
    for (i, (message, level)) in input.logs.into_iter().enumerate() {
        if message.trim().is_empty() {
            return Err(FieldError::new(
                format!("logs[{i}].message"),
                "must not be empty",
            ));
        }
        let level = level.unwrap_or_else(|| "INFO".to_string());
        check_name(&format!("logs[{i}].level"), &level)?;
        logs.push(SpanLog {
            message,
            level,
            timestamp: received_at,
        });
    }
    let duration_ms = (input.end_time - input.start_time)
        .num_microseconds()
        .unwrap_or(i64::MAX) as f64
        / 1000.0;
    Ok(Span {
        span_id,
        name: input.name,
        start_time: input.start_time,
        end_time: input.end_time,
        duration_ms,
        tags: input.tags,
        logs,
    })
}

impl Aggregate for Trace {
    const TYPE: &'static str = "Trace";
    type Command = TraceCommand;
    type Event = TraceEvent;
    type Error = TraceError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TraceCommand::StartTrace {
                service_name,
                operation_name,
                started_at,
            } => {
                if self.start_time.is_some() {
                    return Err(TraceError::AlreadyStarted);
                }
                check_name("service_name", &service_name)?;
                check_name("operation_name", &operation_name)?;
                let event = TraceEvent::TraceStarted {
                    service_name,
                    operation_name,
                    start_time: started_at,
                };
                sink.write(event, self).await;
            }
            TraceCommand::AddSpan {
                span,
                span_id,
                received_at,
            } => {
                self.ensure_open()?;
                if self.span_count >= MAX_SPANS_PER_TRACE {
                    return Err(FieldError::new(
                        "name",
                        format!("a trace holds at most {MAX_SPANS_PER_TRACE} spans"),
                    )
                    .into());
                }
                let span = span_from(span, span_id, received_at)?;
                sink.write(TraceEvent::SpanAdded(span), self).await;
            }
            TraceCommand::AddAnnotation { key, value } => {
                self.ensure_open()?;
                check_name("key", &key)?;
                check_text("value", &value, MAX_ANNOTATION_VALUE_LEN)?;
                sink.write(TraceEvent::AnnotationAdded { key, value }, self)
                    .await;
            }
            TraceCommand::MarkError { error, at } => {
                self.ensure_open()?;
                if error.trim().is_empty() {
                    return Err(FieldError::new("error", "must not be empty").into());
                }
                if error.len() > MAX_ERROR_LEN {
                    return Err(FieldError::new(
                        "error",
                        format!("must be at most {MAX_ERROR_LEN} bytes"),
                    )
                    .into());
                }
                let event = TraceEvent::TraceError {
                    error_message: error,
                    at,
                };
                sink.write(event, self).await;
            }
            TraceCommand::CompleteTrace { at } => {
                let start = self.ensure_open()?;
                // A clock that stepped back must not produce a negative duration.
                let end_time = at.max(start);
                let duration_ms =
                    (end_time - start).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                let status = if self.error_count > 0 {
                    TraceStatus::Error
                } else {
                    TraceStatus::Completed
                };
                let event = TraceEvent::TraceCompleted {
                    end_time,
                    duration_ms,
                    status,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TraceEvent::TraceStarted {
                service_name,
                operation_name,
                start_time,
            } => {
                self.service_name = service_name;
                self.operation_name = operation_name;
                self.start_time = Some(start_time);
            }
            TraceEvent::SpanAdded(_) => self.span_count += 1,
            TraceEvent::AnnotationAdded { key, value } => {
                self.annotations.insert(key, value);
            }
            TraceEvent::TraceError { .. } => self.error_count += 1,
            TraceEvent::TraceCompleted {
                end_time, status, ..
            } => {
                self.end_time = Some(end_time);
                self.status = status;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<Trace>;

    fn t0() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn started() -> TraceEvent {
        TraceEvent::TraceStarted {
            service_name: "checkout".into(),
            operation_name: "pay".into(),
            start_time: t0(),
        }
    }

    fn completed() -> TraceEvent {
        TraceEvent::TraceCompleted {
            end_time: t0() + Duration::milliseconds(250),
            duration_ms: 250.0,
            status: TraceStatus::Completed,
        }
    }

    fn span(start: DateTime<Utc>, end: DateTime<Utc>) -> TraceCommand {
        TraceCommand::AddSpan {
            span: SpanInput {
                name: "db".into(),
                start_time: start,
                end_time: end,
                tags: BTreeMap::from([("table".into(), "orders".into())]),
                logs: vec![("slow query".into(), None)],
            },
            span_id: "00000000000000aa".into(),
            received_at: t0(),
        }
    }

    #[test]
    fn generated_trace_ids_have_the_xray_shape_and_the_current_epoch() {
        let id = TraceId::generate(t0(), &mut rand::thread_rng());
        assert_eq!(id.as_str().len(), 35);
        assert_eq!(id.epoch_seconds(), t0().timestamp());
        assert_eq!(id.as_str().parse::<TraceId>(), Ok(id));
    }

    #[test]
    fn malformed_trace_ids_are_refused() {
        for bad in [
            "abc",
            "1-5759e988-bd862e3fe1be46a99427227",
            "2-5759e988-bd862e3fe1be46a994272793",
            "1-5759E988-bd862e3fe1be46a994272793",
            "1-5759e98g-bd862e3fe1be46a994272793",
        ] {
            assert!(bad.parse::<TraceId>().is_err(), "{bad}");
        }
        assert!("1-5759e988-bd862e3fe1be46a994272793"
            .parse::<TraceId>()
            .is_ok());
    }

    #[test]
    fn a_span_records_its_duration_tags_and_logs() {
        let end = t0() + Duration::milliseconds(40);
        Given::with(())
            .given(vec![started()])
            .when(span(t0(), end))
            .then_expect_events(vec![TraceEvent::SpanAdded(Span {
                span_id: "00000000000000aa".into(),
                name: "db".into(),
                start_time: t0(),
                end_time: end,
                duration_ms: 40.0,
                tags: BTreeMap::from([("table".into(), "orders".into())]),
                logs: vec![SpanLog {
                    message: "slow query".into(),
                    level: "INFO".into(),
                    timestamp: t0(),
                }],
            })]);
    }

    #[test]
    fn a_span_must_not_end_before_it_starts() {
        Given::with(())
            .given(vec![started()])
            .when(span(t0(), t0() - Duration::milliseconds(1)))
            .then_expect_error(TraceError::Invalid(FieldError::new(
                "end_time",
                "must not be before start_time",
            )));
    }

    #[test]
    fn a_span_needs_a_name() {
        let TraceCommand::AddSpan {
            mut span,
            span_id,
            received_at,
        } = span(t0(), t0())
        else {
            unreachable!("span() builds AddSpan")
        };
        span.name = String::new();
        Given::with(())
            .given(vec![started()])
            .when(TraceCommand::AddSpan {
                span,
                span_id,
                received_at,
            })
            .then_expect_error(TraceError::Invalid(FieldError::new(
                "name",
                "must not be empty",
            )));
    }

    #[test]
    fn annotation_keys_and_values_must_not_be_empty() {
        Given::with(())
            .given(vec![started()])
            .when(TraceCommand::AddAnnotation {
                key: "customer_tier".into(),
                value: String::new(),
            })
            .then_expect_error(TraceError::Invalid(FieldError::new(
                "value",
                "must not be empty",
            )));
        Given::with(())
            .given(vec![started()])
            .when(TraceCommand::AddAnnotation {
                key: String::new(),
                value: "gold".into(),
            })
            .then_expect_error(TraceError::Invalid(FieldError::new(
                "key",
                "must not be empty",
            )));
    }

    #[test]
    fn a_trace_completes_once_with_its_duration() {
        Given::with(())
            .given(vec![started()])
            .when(TraceCommand::CompleteTrace {
                at: t0() + Duration::milliseconds(250),
            })
            .then_expect_events(vec![completed()]);
        Given::with(())
            .given(vec![started(), completed()])
            .when(TraceCommand::CompleteTrace { at: t0() })
            .then_expect_error(TraceError::AlreadyCompleted);
    }

    #[test]
    fn a_trace_with_errors_completes_in_error() {
        let error = TraceEvent::TraceError {
            error_message: "card declined".into(),
            at: t0(),
        };
        Given::with(())
            .given(vec![started(), error])
            .when(TraceCommand::CompleteTrace {
                at: t0() + Duration::milliseconds(250),
            })
            .then_expect_events(vec![TraceEvent::TraceCompleted {
                end_time: t0() + Duration::milliseconds(250),
                duration_ms: 250.0,
                status: TraceStatus::Error,
            }]);
    }

    #[test]
    fn nothing_is_added_to_an_unknown_or_finished_trace() {
        Given::with(())
            .given_no_previous_events()
            .when(span(t0(), t0()))
            .then_expect_error(TraceError::NotFound);
        Given::with(())
            .given(vec![started(), completed()])
            .when(TraceCommand::MarkError {
                error: "late".into(),
                at: t0(),
            })
            .then_expect_error(TraceError::AlreadyCompleted);
    }

    #[test]
    fn a_trace_id_is_started_once() {
        Given::with(())
            .given(vec![started()])
            .when(TraceCommand::StartTrace {
                service_name: "checkout".into(),
                operation_name: "pay".into(),
                started_at: t0(),
            })
            .then_expect_error(TraceError::AlreadyStarted);
    }
}
