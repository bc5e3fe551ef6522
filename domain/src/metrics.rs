//! The `Metrics` aggregate: one batch of metrics and custom metrics recorded for a service.
//!
//! A batch is recorded whole or not at all: the command is validated in full before the
//! first event is written, so one bad metric rejects the batch and names itself. Each
//! batch is its own aggregate (id: a UUID), which keeps streams short and lets retention
//! delete whole streams.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::validation::{
    check_dimensions, check_name, check_text, check_timestamp, check_value, FieldError,
    MAX_DIMENSIONS, MAX_DIMENSION_VALUE_LEN,
};

/// Most metrics plus custom metrics in one batch: CloudWatch's per-request limit, so a
/// batch never needs more than one `PutMetricData` call per namespace.
pub const MAX_METRICS_PER_BATCH: usize = 1000;

/// Units CloudWatch accepts. The design document lists seven of them; the rest are
/// accepted too because CloudWatch stores them unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs, reason = "the names are CloudWatch's unit names")]
pub enum MetricUnit {
    Seconds,
    Microseconds,
    Milliseconds,
    Bytes,
    Kilobytes,
    Megabytes,
    Gigabytes,
    Terabytes,
    Bits,
    Kilobits,
    Megabits,
    Gigabits,
    Terabits,
    Percent,
    Count,
    #[serde(rename = "Bytes/Second")]
    BytesPerSecond,
    #[serde(rename = "Kilobytes/Second")]
    KilobytesPerSecond,
    #[serde(rename = "Megabytes/Second")]
    MegabytesPerSecond,
    #[serde(rename = "Gigabytes/Second")]
    GigabytesPerSecond,
    #[serde(rename = "Terabytes/Second")]
    TerabytesPerSecond,
    #[serde(rename = "Bits/Second")]
    BitsPerSecond,
    #[serde(rename = "Kilobits/Second")]
    KilobitsPerSecond,
    #[serde(rename = "Megabits/Second")]
    MegabitsPerSecond,
    #[serde(rename = "Gigabits/Second")]
    GigabitsPerSecond,
    #[serde(rename = "Terabits/Second")]
    TerabitsPerSecond,
    #[serde(rename = "Count/Second")]
    CountPerSecond,
    None,
}

impl MetricUnit {
    /// Every unit, in CloudWatch's order.
    pub const ALL: [MetricUnit; 27] = [
        Self::Seconds,
        Self::Microseconds,
        Self::Milliseconds,
        Self::Bytes,
        Self::Kilobytes,
        Self::Megabytes,
        Self::Gigabytes,
        Self::Terabytes,
        Self::Bits,
        Self::Kilobits,
        Self::Megabits,
        Self::Gigabits,
        Self::Terabits,
        Self::Percent,
        Self::Count,
        Self::BytesPerSecond,
        Self::KilobytesPerSecond,
        Self::MegabytesPerSecond,
        Self::GigabytesPerSecond,
        Self::TerabytesPerSecond,
        Self::BitsPerSecond,
        Self::KilobitsPerSecond,
        Self::MegabitsPerSecond,
        Self::GigabitsPerSecond,
        Self::TerabitsPerSecond,
        Self::CountPerSecond,
        Self::None,
    ];

    /// The unit's CloudWatch name, such as `Bytes/Second`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seconds => "Seconds",
            Self::Microseconds => "Microseconds",
            Self::Milliseconds => "Milliseconds",
            Self::Bytes => "Bytes",
            Self::Kilobytes => "Kilobytes",
            Self::Megabytes => "Megabytes",
            Self::Gigabytes => "Gigabytes",
            Self::Terabytes => "Terabytes",
            Self::Bits => "Bits",
            Self::Kilobits => "Kilobits",
            Self::Megabits => "Megabits",
            Self::Gigabits => "Gigabits",
            Self::Terabits => "Terabits",
            Self::Percent => "Percent",
            Self::Count => "Count",
            Self::BytesPerSecond => "Bytes/Second",
            Self::KilobytesPerSecond => "Kilobytes/Second",
            Self::MegabytesPerSecond => "Megabytes/Second",
            Self::GigabytesPerSecond => "Gigabytes/Second",
            Self::TerabytesPerSecond => "Terabytes/Second",
            Self::BitsPerSecond => "Bits/Second",
            Self::KilobitsPerSecond => "Kilobits/Second",
            Self::MegabitsPerSecond => "Megabits/Second",
            Self::GigabitsPerSecond => "Gigabits/Second",
            Self::TerabitsPerSecond => "Terabits/Second",
            Self::CountPerSecond => "Count/Second",
            Self::None => "None",
        }
    }
}

impl fmt::Display for MetricUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MetricUnit {
    type Err = ();

    /// Parses a CloudWatch unit name exactly (case matters, as it does for CloudWatch).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|u| u.as_str() == s).ok_or(())
    }
}

/// A measured value of a service, as stored in a `MetricAdded` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Metric name (CloudWatch `MetricName`).
    pub name: String,
    /// The measurement; always finite.
    pub value: f64,
    /// Unit of `value`.
    pub unit: MetricUnit,
    /// When the value was measured.
    pub timestamp: DateTime<Utc>,
    /// Dimensions of this metric only, on top of the batch's.
    pub dimensions: BTreeMap<String, String>,
}

/// A business metric (always a count), as stored in a `CustomMetricAdded` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomMetric {
    /// Metric name.
    pub name: String,
    /// The measurement; always finite.
    pub value: f64,
    /// The business area it belongs to, published as the `BusinessContext` dimension.
    pub business_context: String,
    /// When the value was measured.
    pub timestamp: DateTime<Utc>,
    /// Caller tags, published as dimensions.
    pub tags: BTreeMap<String, String>,
}

/// A metric as a caller sent it: the unit is still text and the timestamp optional, so
/// that validation can name exactly what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricInput {
    /// Metric name.
    pub name: String,
    /// The measurement.
    pub value: f64,
    /// Unit name as sent.
    pub unit: String,
    /// Measurement time; the time of receipt when absent.
    pub timestamp: Option<DateTime<Utc>>,
    /// Per-metric dimensions.
    pub dimensions: BTreeMap<String, String>,
}

/// A custom metric as a caller sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomMetricInput {
    /// Metric name.
    pub name: String,
    /// The measurement.
    pub value: f64,
    /// Business context; required.
    pub business_context: String,
    /// Caller tags.
    pub tags: BTreeMap<String, String>,
    /// Measurement time; the time of receipt when absent.
    pub timestamp: Option<DateTime<Utc>>,
}

/// Where a batch came from. Read models use it: only `Performance` batches feed the
/// per-operation latency and error-rate model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricSource {
    /// A generic batch from `POST /v1/metrics`.
    Api,
    /// One operation's outcome (`record_performance_metric`).
    Performance {
        /// The operation measured.
        operation_name: String,
        /// How long it took, in milliseconds.
        duration_ms: f64,
        /// Whether it succeeded.
        success: bool,
    },
    /// A business event (`record_business_metric`).
    Business,
}

/// Lifecycle of a batch with respect to CloudWatch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsStatus {
    /// Recorded, not yet handed to CloudWatch.
    #[default]
    Active,
    /// Being sent to CloudWatch.
    Publishing,
    /// Accepted by CloudWatch.
    Published,
    /// CloudWatch rejected it for good; the reason is in the event.
    Failed,
}

/// Commands accepted by [`Metrics`].
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsCommand {
    /// Record a whole batch (creates the aggregate).
    RecordMetrics(RecordMetrics),
    /// Mark the batch as being sent to CloudWatch.
    PublishMetrics {
        /// When publishing started.
        at: DateTime<Utc>,
    },
    /// CloudWatch accepted every datum of the batch.
    ConfirmPublished {
        /// When the last call succeeded.
        at: DateTime<Utc>,
    },
    /// CloudWatch rejected the batch permanently.
    FailPublishing {
        /// The API's reason.
        reason: String,
        /// When it was rejected.
        at: DateTime<Utc>,
    },
}

/// The content of a new batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMetrics {
    /// The service the metrics belong to.
    pub service_name: String,
    /// Dimensions applied to every metric of the batch.
    pub dimensions: BTreeMap<String, String>,
    /// Standard metrics.
    pub metrics: Vec<MetricInput>,
    /// Business metrics.
    pub custom_metrics: Vec<CustomMetricInput>,
    /// Which use case produced the batch.
    pub source: MetricSource,
    /// The service's clock when the request arrived: the default timestamp and the
    /// reference for "not in the future".
    pub received_at: DateTime<Utc>,
}

/// Events of [`Metrics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetricsEvent {
    /// A batch was opened for a service.
    MetricsBatchOpened {
        /// The service.
        service_name: String,
        /// CloudWatch namespace of the service, `Skafu/<service>`.
        namespace: String,
        /// Which use case produced it.
        source: MetricSource,
        /// When the request arrived.
        recorded_at: DateTime<Utc>,
    },
    /// A batch-level dimension was added.
    DimensionAdded {
        /// Dimension name.
        key: String,
        /// Dimension value.
        value: String,
    },
    /// A standard metric was added.
    MetricAdded(Metric),
    /// A business metric was added.
    CustomMetricAdded(CustomMetric),
    /// Publishing to CloudWatch started.
    MetricsPublishing {
        /// Number of metrics being published.
        metric_count: usize,
        /// When it started.
        at: DateTime<Utc>,
    },
    /// CloudWatch accepted the batch.
    MetricsPublished {
        /// Number of metrics published.
        metric_count: usize,
        /// When it was confirmed.
        at: DateTime<Utc>,
    },
    /// CloudWatch rejected the batch permanently.
    MetricsPublishFailed {
        /// The API's reason.
        reason: String,
        /// When it was rejected.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MetricsEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MetricsBatchOpened { .. } => "MetricsBatchOpened",
            Self::DimensionAdded { .. } => "DimensionAdded",
            Self::MetricAdded(_) => "MetricAdded",
            Self::CustomMetricAdded(_) => "CustomMetricAdded",
            Self::MetricsPublishing { .. } => "MetricsPublishing",
            Self::MetricsPublished { .. } => "MetricsPublished",
            Self::MetricsPublishFailed { .. } => "MetricsPublishFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_string()
    }
}

/// Why a metrics command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// A field broke a rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The batch id is already taken.
    #[error("metrics batch already recorded")]
    AlreadyRecorded,
    /// The batch does not exist.
    #[error("metrics batch not found")]
    NotFound,
    /// Publishing was asked for a batch without metrics.
    #[error("no metrics to publish")]
    NoMetrics,
    /// The status does not allow the command.
    #[error("metrics batch is {0:?}")]
    InvalidState(MetricsStatus),
}

/// One batch of metrics for one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The service; empty until the batch is recorded.
    pub service_name: String,
    /// CloudWatch namespace, `Skafu/<service>`.
    pub namespace: String,
    /// Batch-level dimensions.
    pub dimensions: BTreeMap<String, String>,
    /// Standard metrics.
    pub metrics: Vec<Metric>,
    /// Business metrics.
    pub custom_metrics: Vec<CustomMetric>,
    /// Publishing status.
    pub status: MetricsStatus,
    /// Reason of the last permanent failure.
    pub failure_reason: Option<String>,
}

impl Metrics {
    fn is_recorded(&self) -> bool {
        !self.service_name.is_empty()
    }

    fn metric_count(&self) -> usize {
        self.metrics.len() + self.custom_metrics.len()
    }
}

/// Dimension carrying the recorded service in CloudWatch.
pub const SERVICE_NAME: &str = "ServiceName";
/// Dimension carrying a custom metric's business context in CloudWatch.
pub const BUSINESS_CONTEXT: &str = "BusinessContext";

/// Refuses a dimension or tag that names a dimension the service sets itself
/// (`ServiceName`, `BusinessContext`) with another value: CloudWatch would get the
/// service's value, and the stored batch would say otherwise.
fn reserved(
    field: &str,
    map: &BTreeMap<String, String>,
    owned: &[(&str, &str)],
) -> Result<(), FieldError> {
    for (name, value) in owned {
        if map.get(*name).is_some_and(|given| given != value) {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                format!("is set by the service to '{value}'; leave it out"),
            ));
        }
    }
    Ok(())
}

/// Validates a whole batch and turns it into the events that record it.
///
/// # Errors
///
/// Returns the first broken rule, naming the field (`metrics[3].unit`).
pub fn validate_batch(cmd: RecordMetrics) -> Result<Vec<MetricsEvent>, FieldError> {
    let now = cmd.received_at;
    check_name("service_name", &cmd.service_name)?;
    // The namespace `Skafu/<service>` must itself fit CloudWatch's 255 characters.
    if cmd.service_name.len() > 255 - "Skafu/".len() {
        return Err(FieldError::new(
            "service_name",
            "must be at most 249 characters",
        ));
    }
    check_dimensions("dimensions", &cmd.dimensions)?;
    if cmd.metrics.is_empty() && cmd.custom_metrics.is_empty() {
        return Err(FieldError::new(
            "metrics",
            "a batch needs at least one metric or custom metric",
        ));
    }
    if cmd.metrics.len() + cmd.custom_metrics.len() > MAX_METRICS_PER_BATCH {
        return Err(FieldError::new(
            "metrics",
            format!("a batch holds at most {MAX_METRICS_PER_BATCH} metrics and custom metrics"),
        ));
    }

    reserved(
        "dimensions",
        &cmd.dimensions,
        &[(SERVICE_NAME, &cmd.service_name)],
    )?;
    let mut events = vec![MetricsEvent::MetricsBatchOpened {
        namespace: format!("Skafu/{}", cmd.service_name),
        service_name: cmd.service_name.clone(),
        source: cmd.source,
        recorded_at: now,
    }];
    events.extend(
        cmd.dimensions
            .iter()
            .map(|(key, value)| MetricsEvent::DimensionAdded {
                key: key.clone(),
                value: value.clone(),
            }),
    );

    for (i, m) in cmd.metrics.into_iter().enumerate() {
        let field = |name: &str| format!("metrics[{i}].{name}");
        check_name(&field("name"), &m.name)?;
        check_value(&field("value"), m.value)?;
        let unit = MetricUnit::from_str(&m.unit)
            .map_err(|()| FieldError::new(field("unit"), format!("unknown unit '{}'", m.unit)))?;
        let timestamp = m.timestamp.unwrap_or(now);
        check_timestamp(&field("timestamp"), timestamp, now)?;
        check_dimensions(&field("dimensions"), &m.dimensions)?;
        reserved(
            &field("dimensions"),
            &m.dimensions,
            &[(SERVICE_NAME, &cmd.service_name)],
        )?;
        // ServiceName is added when publishing, hence the + 1.
        let mut all: BTreeMap<_, _> = cmd.dimensions.clone();
        all.extend(m.dimensions.clone());
        if all.len() + 1 > MAX_DIMENSIONS {
            return Err(FieldError::new(
                field("dimensions"),
                format!("at most {} dimensions with the batch's", MAX_DIMENSIONS - 1),
            ));
        }
        events.push(MetricsEvent::MetricAdded(Metric {
            name: m.name,
            value: m.value,
            unit,
            timestamp,
            dimensions: m.dimensions,
        }));
    }

    for (i, m) in cmd.custom_metrics.into_iter().enumerate() {
        let field = |name: &str| format!("custom_metrics[{i}].{name}");
        check_name(&field("name"), &m.name)?;
        check_value(&field("value"), m.value)?;
        check_text(
            &field("business_context"),
            &m.business_context,
            MAX_DIMENSION_VALUE_LEN,
        )?;
        let timestamp = m.timestamp.unwrap_or(now);
        check_timestamp(&field("timestamp"), timestamp, now)?;
        check_dimensions(&field("tags"), &m.tags)?;
        reserved(
            &field("tags"),
            &m.tags,
            &[
                (SERVICE_NAME, &cmd.service_name),
                (BUSINESS_CONTEXT, &m.business_context),
            ],
        )?;
        // ServiceName and BusinessContext are added when publishing.
        if m.tags.len() + 2 > MAX_DIMENSIONS {
            return Err(FieldError::new(
                field("tags"),
                format!("at most {} tags", MAX_DIMENSIONS - 2),
            ));
        }
        events.push(MetricsEvent::CustomMetricAdded(CustomMetric {
            name: m.name,
            value: m.value,
            business_context: m.business_context,
            timestamp,
            tags: m.tags,
        }));
    }
    Ok(events)
}

impl Aggregate for Metrics {
    const TYPE: &'static str = "Metrics";
    type Command = MetricsCommand;
    type Event = MetricsEvent;
    type Error = MetricsError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            MetricsCommand::RecordMetrics(cmd) => {
                if self.is_recorded() {
                    return Err(MetricsError::AlreadyRecorded);
                }
                // Validate everything before writing anything: a rejected batch stores nothing.
                for event in validate_batch(cmd)? {
                    sink.write(event, self).await;
                }
            }
            MetricsCommand::PublishMetrics { at } => {
                if !self.is_recorded() {
                    return Err(MetricsError::NotFound);
                }
                if self.metric_count() == 0 {
                    return Err(MetricsError::NoMetrics);
                }
                match self.status {
                    MetricsStatus::Active => {}
                    // A publisher that crashed after starting resumes: nothing to record.
                    MetricsStatus::Publishing => return Ok(()),
                    done => return Err(MetricsError::InvalidState(done)),
                }
                let metric_count = self.metric_count();
                sink.write(MetricsEvent::MetricsPublishing { metric_count, at }, self)
                    .await;
            }
            MetricsCommand::ConfirmPublished { at } => {
                if !self.is_recorded() {
                    return Err(MetricsError::NotFound);
                }
                // Publishing is at least once: a repeated confirmation changes nothing.
                if self.status == MetricsStatus::Published {
                    return Ok(());
                }
                let metric_count = self.metric_count();
                sink.write(MetricsEvent::MetricsPublished { metric_count, at }, self)
                    .await;
            }
            MetricsCommand::FailPublishing { reason, at } => {
                if !self.is_recorded() {
                    return Err(MetricsError::NotFound);
                }
                if self.status == MetricsStatus::Failed {
                    return Ok(());
                }
                sink.write(MetricsEvent::MetricsPublishFailed { reason, at }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MetricsEvent::MetricsBatchOpened {
                service_name,
                namespace,
                ..
            } => {
                self.service_name = service_name;
                self.namespace = namespace;
            }
            MetricsEvent::DimensionAdded { key, value } => {
                self.dimensions.insert(key, value);
            }
            MetricsEvent::MetricAdded(metric) => self.metrics.push(metric),
            MetricsEvent::CustomMetricAdded(metric) => self.custom_metrics.push(metric),
            MetricsEvent::MetricsPublishing { .. } => self.status = MetricsStatus::Publishing,
            MetricsEvent::MetricsPublished { .. } => self.status = MetricsStatus::Published,
            MetricsEvent::MetricsPublishFailed { reason, .. } => {
                self.status = MetricsStatus::Failed;
                self.failure_reason = Some(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<Metrics>;

    fn now() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn metric(name: &str, value: f64, unit: &str) -> MetricInput {
        MetricInput {
            name: name.into(),
            value,
            unit: unit.into(),
            timestamp: None,
            dimensions: BTreeMap::new(),
        }
    }

    fn batch(metrics: Vec<MetricInput>) -> RecordMetrics {
        RecordMetrics {
            service_name: "checkout".into(),
            dimensions: BTreeMap::from([("Env".into(), "prod".into())]),
            metrics,
            custom_metrics: vec![],
            source: MetricSource::Api,
            received_at: now(),
        }
    }

    fn opened() -> MetricsEvent {
        MetricsEvent::MetricsBatchOpened {
            service_name: "checkout".into(),
            namespace: "Skafu/checkout".into(),
            source: MetricSource::Api,
            recorded_at: now(),
        }
    }

    fn invalid(field: &str, message: &str) -> MetricsError {
        MetricsError::Invalid(FieldError::new(field, message))
    }

    #[test]
    fn a_valid_batch_records_the_batch_its_dimensions_and_each_metric() {
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(batch(vec![metric(
                "latency",
                12.5,
                "Milliseconds",
            )])))
            .then_expect_events(vec![
                opened(),
                MetricsEvent::DimensionAdded {
                    key: "Env".into(),
                    value: "prod".into(),
                },
                MetricsEvent::MetricAdded(Metric {
                    name: "latency".into(),
                    value: 12.5,
                    unit: MetricUnit::Milliseconds,
                    timestamp: now(),
                    dimensions: BTreeMap::new(),
                }),
            ]);
    }

    #[test]
    fn a_metric_needs_a_name() {
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(batch(vec![metric(
                " ", 1.0, "Count",
            )])))
            .then_expect_error(invalid("metrics[0].name", "must not be empty"));
    }

    #[test]
    fn a_metric_needs_a_finite_value() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            Given::with(())
                .given_no_previous_events()
                .when(MetricsCommand::RecordMetrics(batch(vec![
                    metric("ok", 1.0, "Count"),
                    metric("bad", bad, "Count"),
                ])))
                .then_expect_error(invalid("metrics[1].value", "must be a finite number"));
        }
    }

    #[test]
    fn a_metric_needs_a_known_unit() {
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(batch(vec![metric(
                "x", 1.0, "Millis",
            )])))
            .then_expect_error(invalid("metrics[0].unit", "unknown unit 'Millis'"));
    }

    #[test]
    fn a_metric_timestamp_must_not_be_in_the_future() {
        let mut m = metric("x", 1.0, "Count");
        m.timestamp = Some(now() + Duration::minutes(1));
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(batch(vec![m])))
            .then_expect_error(invalid("metrics[0].timestamp", "must not be in the future"));
    }

    #[test]
    fn a_custom_metric_needs_a_business_context() {
        let mut cmd = batch(vec![]);
        cmd.custom_metrics.push(CustomMetricInput {
            name: "orders".into(),
            value: 1.0,
            business_context: String::new(),
            tags: BTreeMap::new(),
            timestamp: None,
        });
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(cmd))
            .then_expect_error(invalid(
                "custom_metrics[0].business_context",
                "must not be empty",
            ));
    }

    #[test]
    fn dimension_keys_and_values_must_not_be_empty() {
        let mut cmd = batch(vec![metric("x", 1.0, "Count")]);
        cmd.dimensions.insert("Region".into(), String::new());
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(cmd))
            .then_expect_error(invalid("dimensions.Region", "must not be empty"));

        let mut cmd = batch(vec![metric("x", 1.0, "Count")]);
        cmd.dimensions.insert(String::new(), "v".into());
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(cmd))
            .then_expect_error(invalid("dimensions.", "must not be empty"));
    }

    #[test]
    fn an_empty_batch_is_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(MetricsCommand::RecordMetrics(batch(vec![])))
            .then_expect_error(invalid(
                "metrics",
                "a batch needs at least one metric or custom metric",
            ));
    }

    #[test]
    fn publishing_a_batch_with_no_metrics_fails() {
        // A batch holding only its opening event: it can exist after an upcast or a
        // retention cut, and must not be published as empty.
        Given::with(())
            .given(vec![opened()])
            .when(MetricsCommand::PublishMetrics { at: now() })
            .then_expect_error(MetricsError::NoMetrics);
    }

    #[test]
    fn publishing_moves_through_publishing_to_published() {
        let added = MetricsEvent::MetricAdded(Metric {
            name: "x".into(),
            value: 1.0,
            unit: MetricUnit::Count,
            timestamp: now(),
            dimensions: BTreeMap::new(),
        });
        Given::with(())
            .given(vec![opened(), added.clone()])
            .when(MetricsCommand::PublishMetrics { at: now() })
            .then_expect_events(vec![MetricsEvent::MetricsPublishing {
                metric_count: 1,
                at: now(),
            }]);
        Given::with(())
            .given(vec![
                opened(),
                added,
                MetricsEvent::MetricsPublishing {
                    metric_count: 1,
                    at: now(),
                },
            ])
            .when(MetricsCommand::ConfirmPublished { at: now() })
            .then_expect_events(vec![MetricsEvent::MetricsPublished {
                metric_count: 1,
                at: now(),
            }]);
    }

    #[test]
    fn a_publisher_resuming_after_a_crash_records_nothing_new() {
        let added = MetricsEvent::MetricAdded(Metric {
            name: "x".into(),
            value: 1.0,
            unit: MetricUnit::Count,
            timestamp: now(),
            dimensions: BTreeMap::new(),
        });
        let publishing = MetricsEvent::MetricsPublishing {
            metric_count: 1,
            at: now(),
        };
        Given::with(())
            .given(vec![opened(), added.clone(), publishing.clone()])
            .when(MetricsCommand::PublishMetrics { at: now() })
            .then_expect_events(vec![]);
        // Once published, publishing again is refused: the datums must not be resent.
        Given::with(())
            .given(vec![
                opened(),
                added,
                publishing,
                MetricsEvent::MetricsPublished {
                    metric_count: 1,
                    at: now(),
                },
            ])
            .when(MetricsCommand::PublishMetrics { at: now() })
            .then_expect_error(MetricsError::InvalidState(MetricsStatus::Published));
    }

    #[test]
    fn dimensions_the_service_sets_cannot_be_given_other_values() {
        let mut cmd = batch(vec![metric("x", 1.0, "Count")]);
        cmd.dimensions
            .insert("ServiceName".into(), "someone-else".into());
        assert_eq!(
            validate_batch(cmd).unwrap_err().field,
            "dimensions.ServiceName"
        );

        let mut cmd = batch(vec![metric("x", 1.0, "Count")]);
        cmd.metrics[0]
            .dimensions
            .insert("ServiceName".into(), "someone-else".into());
        assert_eq!(
            validate_batch(cmd).unwrap_err().field,
            "metrics[0].dimensions.ServiceName"
        );

        let mut cmd = batch(vec![]);
        cmd.custom_metrics.push(CustomMetricInput {
            name: "signups".into(),
            value: 1.0,
            business_context: "growth".into(),
            tags: BTreeMap::from([("BusinessContext".into(), "other".into())]),
            timestamp: None,
        });
        assert_eq!(
            validate_batch(cmd).unwrap_err().field,
            "custom_metrics[0].tags.BusinessContext"
        );

        // The same value is harmless: the performance use case sets it so.
        let mut cmd = batch(vec![metric("x", 1.0, "Count")]);
        let service = cmd.service_name.clone();
        cmd.dimensions.insert("ServiceName".into(), service);
        assert!(validate_batch(cmd).is_ok());
    }

    #[test]
    fn a_batch_is_recorded_once() {
        Given::with(())
            .given(vec![opened()])
            .when(MetricsCommand::RecordMetrics(batch(vec![metric(
                "x", 1.0, "Count",
            )])))
            .then_expect_error(MetricsError::AlreadyRecorded);
    }

    #[test]
    fn units_round_trip_through_their_cloudwatch_names() {
        for unit in MetricUnit::ALL {
            assert_eq!(unit.as_str().parse::<MetricUnit>(), Ok(unit));
            let json = serde_json::to_string(&unit).unwrap();
            assert_eq!(json, format!("\"{}\"", unit.as_str()));
        }
        assert!("milliseconds".parse::<MetricUnit>().is_err());
    }
}
