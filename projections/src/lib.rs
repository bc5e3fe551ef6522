//! Read models of the observability service and the pure logic that folds events into
//! them.
//!
//! Nothing here touches storage: the projector in `skafu-infrastructure` reads events in
//! commit order, hands each to the `apply` functions below, and writes the changed views
//! in the same transaction as its checkpoint. Keeping the folding pure is what lets a
//! `replay` and the live projector produce the same rows. Depends on `skafu-domain` only.
//!
//! Entry points: [`HealthCheckView`], [`TraceView`], [`MetricBatchView`] and the
//! calculations [`percentile`], [`OperationStats`] and [`HealthSummary`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skafu_domain::health::{FailureReason, HealthCheckEvent, HealthStatus};
use skafu_domain::metrics::{CustomMetric, Metric, MetricSource, MetricsEvent, MetricsStatus};
use skafu_domain::trace::{Span, TraceEvent, TraceStatus};

/// Everything known about one health check, as `GET /v1/health-checks/{id}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckView {
    /// `<service>-<check type>`.
    pub health_check_id: String,
    /// The service checked.
    pub service_name: String,
    /// URL probed.
    pub endpoint: String,
    /// Kind of check.
    pub check_type: String,
    /// Seconds between scheduled runs.
    pub interval_seconds: u64,
    /// Per-attempt timeout in seconds.
    pub timeout_seconds: u64,
    /// Retries after a failed first attempt.
    pub max_retries: u32,
    /// Threshold above which a success is degraded, in ms.
    pub degraded_after_ms: u64,
    /// Status accepted as healthy; any 2xx when absent.
    pub expected_status: Option<u16>,
    /// When the check was registered.
    pub registered_at: Option<DateTime<Utc>>,
    /// Current status.
    pub status: HealthStatus,
    /// Failed runs in a row.
    pub consecutive_failures: u64,
    /// Successful runs in a row.
    pub consecutive_successes: u64,
    /// When the last run finished.
    pub last_check: Option<DateTime<Utc>>,
    /// Response time of the last run that got an answer, in ms.
    pub response_time_ms: Option<f64>,
    /// Status code of the last run that got an answer.
    pub last_status_code: Option<u16>,
    /// Error of the last run; `None` after a success.
    pub error_message: Option<String>,
    /// Kind of the last failure; `None` after a success.
    pub failure_reason: Option<FailureReason>,
    /// Attempts the last run needed.
    pub last_attempts: u32,
    /// Runs since registration.
    pub total_checks: u64,
    /// Runs since registration that found the service up (healthy or degraded).
    pub successful_checks: u64,
}

impl HealthCheckView {
    /// Folds one event of this check into the view.
    pub fn apply(&mut self, id: &str, event: &HealthCheckEvent) {
        match event {
            HealthCheckEvent::HealthCheckRegistered {
                definition,
                registered_at,
            } => {
                self.health_check_id = id.to_string();
                self.service_name = definition.service_name.clone();
                self.endpoint = definition.endpoint.clone();
                self.check_type = definition.check_type.clone();
                self.interval_seconds = definition.interval_seconds;
                self.timeout_seconds = definition.timeout_seconds;
                self.max_retries = definition.max_retries;
                self.degraded_after_ms = definition.degraded_after_ms;
                self.expected_status = definition.expected_status;
                self.registered_at = Some(*registered_at);
                self.status = HealthStatus::Unknown;
            }
            HealthCheckEvent::HealthCheckSucceeded {
                response_time_ms,
                status_code,
                attempts,
                degraded,
                checked_at,
            } => {
                self.status = if *degraded {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                };
                self.consecutive_failures = 0;
                self.consecutive_successes += 1;
                self.last_check = Some(*checked_at);
                self.response_time_ms = Some(*response_time_ms);
                self.last_status_code = Some(*status_code);
                self.error_message = None;
                self.failure_reason = None;
                self.last_attempts = *attempts;
                self.total_checks += 1;
                self.successful_checks += 1;
            }
            HealthCheckEvent::HealthCheckFailed {
                reason,
                error_message,
                status_code,
                response_time_ms,
                attempts,
                checked_at,
            } => {
                self.status = HealthStatus::Unhealthy;
                self.consecutive_successes = 0;
                self.consecutive_failures += 1;
                self.last_check = Some(*checked_at);
                self.response_time_ms = *response_time_ms;
                self.last_status_code = *status_code;
                self.error_message = Some(error_message.clone());
                self.failure_reason = Some(*reason);
                self.last_attempts = *attempts;
                self.total_checks += 1;
            }
        }
    }

    /// Uptime since registration, counting only runs that happened.
    pub fn uptime_since_registration(&self) -> Option<f64> {
        uptime_percentage(self.successful_checks, self.total_checks)
    }
}

/// The share of runs that found the service up, in percent; `None` when nothing was
/// checked. Each run stands for one check interval, so time when the checker itself was
/// not running counts neither as up nor as down.
pub fn uptime_percentage(up: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| up as f64 * 100.0 / total as f64)
}

/// Whether a result event counts as "up" for uptime (healthy or degraded).
pub fn result_is_up(event: &HealthCheckEvent) -> Option<(bool, DateTime<Utc>)> {
    match event {
        HealthCheckEvent::HealthCheckSucceeded { checked_at, .. } => Some((true, *checked_at)),
        HealthCheckEvent::HealthCheckFailed { checked_at, .. } => Some((false, *checked_at)),
        HealthCheckEvent::HealthCheckRegistered { .. } => None,
    }
}

/// An error recorded on a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceErrorView {
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One trace with its spans, as `GET /v1/traces/{id}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    /// X-Ray trace id.
    pub trace_id: String,
    /// Service that started it.
    pub service_name: String,
    /// Operation traced.
    pub operation_name: String,
    /// Start.
    pub start_time: Option<DateTime<Utc>>,
    /// End, once completed.
    pub end_time: Option<DateTime<Utc>>,
    /// Duration in ms, once completed.
    pub duration_ms: Option<f64>,
    /// Status.
    pub status: TraceStatus,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Spans in the order they were added.
    pub spans: Vec<Span>,
    /// Errors in the order they were recorded.
    pub errors: Vec<TraceErrorView>,
    /// Number of errors.
    pub error_count: usize,
}

impl TraceView {
    /// Folds one event of this trace into the view.
    pub fn apply(&mut self, id: &str, event: &TraceEvent) {
        match event {
            TraceEvent::TraceStarted {
                service_name,
                operation_name,
                start_time,
            } => {
                self.trace_id = id.to_string();
                self.service_name = service_name.clone();
                self.operation_name = operation_name.clone();
                self.start_time = Some(*start_time);
            }
            TraceEvent::SpanAdded(span) => self.spans.push(span.clone()),
            TraceEvent::AnnotationAdded { key, value } => {
                self.annotations.insert(key.clone(), value.clone());
            }
            TraceEvent::TraceError { error_message, at } => {
                self.errors.push(TraceErrorView {
                    message: error_message.clone(),
                    at: *at,
                });
                self.error_count += 1;
            }
            TraceEvent::TraceCompleted {
                end_time,
                duration_ms,
                status,
            } => {
                self.end_time = Some(*end_time);
                self.duration_ms = Some(*duration_ms);
                self.status = *status;
            }
        }
    }
}

/// One recorded batch of metrics, as `GET /v1/metrics/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBatchView {
    /// Batch id.
    pub metrics_id: String,
    /// The service.
    pub service_name: String,
    /// CloudWatch namespace of the service.
    pub namespace: String,
    /// Where the batch came from.
    pub source: MetricSource,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Batch dimensions.
    pub dimensions: BTreeMap<String, String>,
    /// Standard metrics.
    pub metrics: Vec<Metric>,
    /// Business metrics.
    pub custom_metrics: Vec<CustomMetric>,
    /// Publishing status.
    pub status: MetricsStatus,
    /// Why publishing failed, if it did.
    pub failure_reason: Option<String>,
}

impl MetricBatchView {
    /// Starts a view from the batch's first event; `None` for any other event.
    pub fn open(id: &str, event: &MetricsEvent) -> Option<Self> {
        match event {
            MetricsEvent::MetricsBatchOpened {
                service_name,
                namespace,
                source,
                recorded_at,
            } => Some(Self {
                metrics_id: id.to_string(),
                service_name: service_name.clone(),
                namespace: namespace.clone(),
                source: source.clone(),
                recorded_at: *recorded_at,
                dimensions: BTreeMap::new(),
                metrics: vec![],
                custom_metrics: vec![],
                status: MetricsStatus::Active,
                failure_reason: None,
            }),
            _ => None,
        }
    }

    /// Folds a later event of this batch into the view.
    pub fn apply(&mut self, event: &MetricsEvent) {
        match event {
            MetricsEvent::MetricsBatchOpened { .. } => {}
            MetricsEvent::DimensionAdded { key, value } => {
                self.dimensions.insert(key.clone(), value.clone());
            }
            MetricsEvent::MetricAdded(m) => self.metrics.push(m.clone()),
            MetricsEvent::CustomMetricAdded(m) => self.custom_metrics.push(m.clone()),
            MetricsEvent::MetricsPublishing { .. } => self.status = MetricsStatus::Publishing,
            MetricsEvent::MetricsPublished { .. } => self.status = MetricsStatus::Published,
            MetricsEvent::MetricsPublishFailed { reason, .. } => {
                self.status = MetricsStatus::Failed;
                self.failure_reason = Some(reason.clone());
            }
        }
    }
}

/// The `p`-th percentile (0 < p ≤ 100) of sorted values by the nearest-rank method: the
/// smallest recorded value such that at least `p` percent of values are at or below it.
/// It is always one of the recorded values, never an interpolation.
///
/// # Panics
///
/// Never; an empty slice yields `None`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency and error figures of one operation over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationStats {
    /// The operation.
    pub operation_name: String,
    /// Requests recorded in the window.
    pub count: u64,
    /// Of which failed.
    pub error_count: u64,
    /// `error_count / count` (0 to 1).
    pub error_rate: f64,
    /// Median duration in ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile in ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile in ms.
    pub p99_ms: Option<f64>,
    /// Mean duration in ms.
    pub average_ms: Option<f64>,
    /// Requests per minute over the window.
    pub throughput_per_minute: f64,
}

impl OperationStats {
    /// Computes the figures from `(duration_ms, success)` samples of a window of
    /// `window_minutes`.
    pub fn from_samples(
        operation_name: &str,
        samples: &[(f64, bool)],
        window_minutes: f64,
    ) -> Self {
        let mut durations: Vec<f64> = samples.iter().map(|(d, _)| *d).collect();
        durations.sort_by(f64::total_cmp);
        let count = samples.len() as u64;
        let error_count = samples.iter().filter(|(_, ok)| !ok).count() as u64;
        let average = (count > 0).then(|| durations.iter().sum::<f64>() / count as f64);
        Self {
            operation_name: operation_name.to_string(),
            count,
            error_count,
            error_rate: if count == 0 {
                0.0
            } else {
                error_count as f64 / count as f64
            },
            p50_ms: percentile(&durations, 50.0),
            p95_ms: percentile(&durations, 95.0),
            p99_ms: percentile(&durations, 99.0),
            average_ms: average,
            throughput_per_minute: if window_minutes > 0.0 {
                count as f64 / window_minutes
            } else {
                0.0
            },
        }
    }
}

/// The system overview of the design document (`get_service_health_summary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSummary {
    /// `unhealthy` if any check is, else `degraded` if any is, else `unknown` if any
    /// check never ran (or there are none), else `healthy`.
    pub overall_status: HealthStatus,
    /// Checks that are up: healthy or degraded.
    pub healthy_services: u64,
    /// Of which degraded.
    pub degraded_services: u64,
    /// Checks that are down.
    pub unhealthy_services: u64,
    /// Checks that never ran.
    pub unknown_services: u64,
    /// Registered checks.
    pub total_services: u64,
    /// `healthy_services / total_services` in percent; 0 without checks.
    pub health_percentage: f64,
}

impl HealthSummary {
    /// Summarises the current status of every check.
    pub fn of(statuses: impl IntoIterator<Item = HealthStatus>) -> Self {
        let (mut healthy, mut degraded, mut unhealthy, mut unknown) = (0, 0, 0, 0);
        for status in statuses {
            match status {
                HealthStatus::Healthy => healthy += 1,
                HealthStatus::Degraded => degraded += 1,
                HealthStatus::Unhealthy => unhealthy += 1,
                HealthStatus::Unknown => unknown += 1,
            }
        }
        let total = healthy + degraded + unhealthy + unknown;
        let overall_status = if unhealthy > 0 {
            HealthStatus::Unhealthy
        } else if degraded > 0 {
            HealthStatus::Degraded
        } else if unknown > 0 || total == 0 {
            HealthStatus::Unknown
        } else {
            HealthStatus::Healthy
        };
        let up = healthy + degraded;
        Self {
            overall_status,
            healthy_services: up,
            degraded_services: degraded,
            unhealthy_services: unhealthy,
            unknown_services: unknown,
            total_services: total,
            health_percentage: if total == 0 {
                0.0
            } else {
                up as f64 * 100.0 / total as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 95.0), Some(95.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn operation_stats_count_errors_and_throughput() {
        let samples = [(10.0, true), (30.0, false), (20.0, true), (40.0, false)];
        let stats = OperationStats::from_samples("pay", &samples, 2.0);
        assert_eq!(stats.count, 4);
        assert_eq!(stats.error_count, 2);
        assert_eq!(stats.error_rate, 0.5);
        assert_eq!(stats.p50_ms, Some(20.0));
        assert_eq!(stats.p99_ms, Some(40.0));
        assert_eq!(stats.average_ms, Some(25.0));
        assert_eq!(stats.throughput_per_minute, 2.0);
    }

    #[test]
    fn the_summary_is_as_bad_as_its_worst_check() {
        use HealthStatus::*;
        let s = HealthSummary::of([Healthy, Degraded, Unhealthy, Unknown]);
        assert_eq!(s.overall_status, Unhealthy);
        assert_eq!((s.healthy_services, s.total_services), (2, 4));
        assert_eq!(s.health_percentage, 50.0);
        assert_eq!(
            HealthSummary::of([Healthy, Degraded]).overall_status,
            Degraded
        );
        assert_eq!(HealthSummary::of([Healthy]).overall_status, Healthy);
        assert_eq!(HealthSummary::of([]).overall_status, Unknown);
        assert_eq!(HealthSummary::of([]).health_percentage, 0.0);
    }

    #[test]
    fn uptime_counts_only_checked_runs() {
        assert_eq!(uptime_percentage(3, 4), Some(75.0));
        assert_eq!(uptime_percentage(0, 0), None);
    }
}
