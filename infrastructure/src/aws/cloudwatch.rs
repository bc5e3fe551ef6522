//! CloudWatch metrics: mapping, limits, chunking and the sender.
//!
//! Recorded metrics become [`Datum`]s, a plain struct the mapping rules are tested on;
//! [`chunk_for_put`] groups them into `PutMetricData` requests and
//! [`CloudWatchSender::put`] checks each request against CloudWatch's limits before
//! sending it.
//!
//! Namespaces and dimensions follow the design document:
//!
//! | Source | Namespace | Dimensions |
//! |---|---|---|
//! | standard metric | `Skafu` | `ServiceName`, the batch's, the metric's own |
//! | custom metric | `Skafu/CustomMetrics` | `ServiceName`, `BusinessContext`, the tags |
//! | health-check result | `Skafu/HealthChecks` | `ServiceName`, `HealthCheckId` |
//!
//! `ServiceName` (and `BusinessContext`) always carry the recorded values: a caller
//! dimension or tag with the same name is dropped, so that one service cannot publish
//! under another's name. Between batch and metric dimensions, the metric's wins.
//!
//! # Limitations
//!
//! `PutMetricData` is not idempotent: CloudWatch adds every datapoint it receives, so a
//! request sent twice (a retry after a lost response, or resending the earlier chunks of
//! a batch whose later chunk failed) counts twice in `Sum` and `SampleCount`.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use chrono::{DateTime, Duration, Utc};
use skafu_domain::health::HealthStatus;
use skafu_domain::metrics::{CustomMetric, Metric, MetricUnit, Metrics};

use super::{classify_sdk_error, PublishError};

/// Namespace of standard metrics.
pub const STANDARD_NAMESPACE: &str = "Skafu";
/// Namespace of business (custom) metrics.
pub const CUSTOM_NAMESPACE: &str = "Skafu/CustomMetrics";
/// Namespace of health-check results.
pub const HEALTH_NAMESPACE: &str = "Skafu/HealthChecks";

/// Most datums in one `PutMetricData` request.
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// Largest estimated request body we send. CloudWatch's limit is 1 MB (1,048,576 bytes);
/// the margin covers what the estimate leaves out (headers, number formatting).
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Most dimensions on one datum.
pub const MAX_DIMENSIONS: usize = 30;
/// Longest namespace, metric name or dimension name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest dimension value.
pub const MAX_DIMENSION_VALUE_LEN: usize = 1024;
/// Largest magnitude of a value, 2^360; the bits are built directly so the bound is exact.
pub const MAX_ABS_VALUE: f64 = f64::from_bits((1023 + 360) << 52);
/// Oldest timestamp CloudWatch accepts, relative to now.
pub const MAX_TIMESTAMP_AGE: Duration = Duration::days(14);
/// Furthest into the future CloudWatch accepts a timestamp.
pub const MAX_TIMESTAMP_AHEAD: Duration = Duration::hours(2);
/// Storage resolution of standard metrics, in seconds.
pub const STANDARD_RESOLUTION: u32 = 60;
/// Storage resolution of high-resolution metrics, in seconds.
pub const HIGH_RESOLUTION: u32 = 1;

/// One datapoint bound for CloudWatch, before it is turned into the SDK's type.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// CloudWatch namespace, such as [`STANDARD_NAMESPACE`].
    pub namespace: String,
    /// Metric name.
    pub name: String,
    /// The value; must be finite and within ±[`MAX_ABS_VALUE`].
    pub value: f64,
    /// Unit of `value`.
    pub unit: MetricUnit,
    /// When the value was measured.
    pub timestamp: DateTime<Utc>,
    /// Dimensions in the order they are sent; names are unique.
    pub dimensions: Vec<(String, String)>,
    /// [`STANDARD_RESOLUTION`] or [`HIGH_RESOLUTION`] seconds.
    pub storage_resolution: u32,
}

/// A datum CloudWatch would reject, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DatumError {
    /// The namespace is empty, too long, starts with `:` or is reserved (`AWS/`).
    #[error("namespace '{namespace}' {reason}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The metric name is empty, too long or not printable ASCII.
    #[error("metric name '{name}' {reason}")]
    Name {
        /// The name.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// More than [`MAX_DIMENSIONS`] dimensions.
    #[error("{count} dimensions, at most {MAX_DIMENSIONS} allowed")]
    TooManyDimensions {
        /// How many there are.
        count: usize,
    },
    /// A dimension name or value breaks a rule, or a name repeats.
    #[error("dimension '{name}' {reason}")]
    Dimension {
        /// The dimension's name.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The value is NaN, infinite or beyond ±2^360.
    #[error("value {value} is not finite or beyond ±2^360")]
    Value {
        /// The value.
        value: f64,
    },
    /// The timestamp is more than two weeks old.
    #[error("timestamp {timestamp} is more than 14 days old")]
    TimestampTooOld {
        /// The timestamp.
        timestamp: DateTime<Utc>,
    },
    /// The timestamp is more than two hours ahead.
    #[error("timestamp {timestamp} is more than 2 hours in the future")]
    TimestampInFuture {
        /// The timestamp.
        timestamp: DateTime<Utc>,
    },
    /// The storage resolution is neither 1 nor 60.
    #[error("storage resolution {resolution} is neither 1 nor 60")]
    StorageResolution {
        /// The resolution.
        resolution: u32,
    },
}

/// Maps a batch's standard metrics to datums in [`STANDARD_NAMESPACE`].
pub fn metric_datums(
    service_name: &str,
    batch_dimensions: &BTreeMap<String, String>,
    metrics: &[Metric],
) -> Vec<Datum> {
    metrics
        .iter()
        .map(|metric| {
            let mut merged = batch_dimensions.clone();
            merged.extend(metric.dimensions.clone());
            merged.remove(SERVICE_NAME);
            let mut dimensions = vec![(SERVICE_NAME.to_string(), service_name.to_string())];
            dimensions.extend(merged);
            Datum {
                namespace: STANDARD_NAMESPACE.to_string(),
                name: metric.name.clone(),
                value: metric.value,
                unit: metric.unit,
                timestamp: metric.timestamp,
                dimensions,
                storage_resolution: STANDARD_RESOLUTION,
            }
        })
        .collect()
}

/// Maps business metrics to datums in [`CUSTOM_NAMESPACE`], always counted.
pub fn custom_metric_datums(service_name: &str, metrics: &[CustomMetric]) -> Vec<Datum> {
    metrics
        .iter()
        .map(|metric| {
            let mut dimensions = vec![
                (SERVICE_NAME.to_string(), service_name.to_string()),
                (
                    BUSINESS_CONTEXT.to_string(),
                    metric.business_context.clone(),
                ),
            ];
            let tags = metric
                .tags
                .iter()
                .filter(|(key, _)| *key != SERVICE_NAME && *key != BUSINESS_CONTEXT);
            dimensions.extend(tags.map(|(k, v)| (k.clone(), v.clone())));
            Datum {
                namespace: CUSTOM_NAMESPACE.to_string(),
                name: metric.name.clone(),
                value: metric.value,
                unit: MetricUnit::Count,
                timestamp: metric.timestamp,
                dimensions,
                storage_resolution: STANDARD_RESOLUTION,
            }
        })
        .collect()
}

/// Every datum of a recorded batch: its standard metrics, then its custom metrics.
pub fn batch_datums(batch: &Metrics) -> Vec<Datum> {
    let mut datums = metric_datums(&batch.service_name, &batch.dimensions, &batch.metrics);
    datums.extend(custom_metric_datums(
        &batch.service_name,
        &batch.custom_metrics,
    ));
    datums
}

/// Maps one health-check result to datums in [`HEALTH_NAMESPACE`]: `HealthCheckStatus`
/// (1 when healthy or degraded, since the service answered; 0 when unhealthy) and, when
/// an answer came, `ResponseTime` in milliseconds.
///
/// [`HealthStatus::Unknown`] means "never checked" and publishes no status.
pub fn health_datums(
    service_name: &str,
    check_id: &str,
    status: HealthStatus,
    response_time_ms: Option<f64>,
    at: DateTime<Utc>,
) -> Vec<Datum> {
    let datum = |name: &str, value: f64, unit: MetricUnit| Datum {
        namespace: HEALTH_NAMESPACE.to_string(),
        name: name.to_string(),
        value,
        unit,
        timestamp: at,
        dimensions: vec![
            (SERVICE_NAME.to_string(), service_name.to_string()),
            ("HealthCheckId".to_string(), check_id.to_string()),
        ],
        storage_resolution: STANDARD_RESOLUTION,
    };

    let mut datums = Vec::with_capacity(2);
    let up = match status {
        HealthStatus::Healthy | HealthStatus::Degraded => Some(1.0),
        HealthStatus::Unhealthy => Some(0.0),
        HealthStatus::Unknown => None,
    };
    if let Some(up) = up {
        datums.push(datum("HealthCheckStatus", up, MetricUnit::Count));
    }
    if let Some(ms) = response_time_ms.filter(|ms| ms.is_finite()) {
        datums.push(datum("ResponseTime", ms, MetricUnit::Milliseconds));
    }
    datums
}

const SERVICE_NAME: &str = "ServiceName";
const BUSINESS_CONTEXT: &str = "BusinessContext";

/// Checks one datum against CloudWatch's limits, with `now` as the reference for its
/// timestamp.
///
/// # Errors
///
/// Returns the first rule the datum breaks.
pub fn validate(datum: &Datum, now: DateTime<Utc>) -> Result<(), DatumError> {
    let namespace = |reason| DatumError::Namespace {
        namespace: datum.namespace.clone(),
        reason,
    };
    check_text(&datum.namespace, MAX_NAME_LEN).map_err(namespace)?;
    if datum.namespace.starts_with(':') {
        return Err(namespace("must not start with ':'"));
    }
    if datum.namespace.starts_with("AWS/") {
        return Err(namespace("is reserved for AWS services"));
    }

    check_text(&datum.name, MAX_NAME_LEN).map_err(|reason| DatumError::Name {
        name: datum.name.clone(),
        reason,
    })?;

    if datum.dimensions.len() > MAX_DIMENSIONS {
        return Err(DatumError::TooManyDimensions {
            count: datum.dimensions.len(),
        });
    }
    for (i, (name, value)) in datum.dimensions.iter().enumerate() {
        let dimension = |reason| DatumError::Dimension {
            name: name.clone(),
            reason,
        };
        check_text(name, MAX_NAME_LEN).map_err(dimension)?;
        if name.starts_with(':') {
            return Err(dimension("must not start with ':'"));
        }
        check_text(value, MAX_DIMENSION_VALUE_LEN)
            .map_err(|_| dimension("has a value that is empty, too long or not ASCII"))?;
        if datum.dimensions[..i].iter().any(|(other, _)| other == name) {
            return Err(dimension("appears twice"));
        }
    }

    if !datum.value.is_finite() || datum.value.abs() > MAX_ABS_VALUE {
        return Err(DatumError::Value { value: datum.value });
    }
    if datum.timestamp < now - MAX_TIMESTAMP_AGE {
        return Err(DatumError::TimestampTooOld {
            timestamp: datum.timestamp,
        });
    }
    if datum.timestamp > now + MAX_TIMESTAMP_AHEAD {
        return Err(DatumError::TimestampInFuture {
            timestamp: datum.timestamp,
        });
    }
    if ![STANDARD_RESOLUTION, HIGH_RESOLUTION].contains(&datum.storage_resolution) {
        return Err(DatumError::StorageResolution {
            resolution: datum.storage_resolution,
        });
    }
    Ok(())
}

/// CloudWatch's rule for names and values: 1 to `max_len` printable ASCII characters, not
/// all whitespace.
fn check_text(text: &str, max_len: usize) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        return Err("must not be empty");
    }
    if text.len() > max_len {
        return Err("is too long");
    }
    if !text.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return Err("must be printable ASCII");
    }
    Ok(())
}

/// Groups datums by namespace (in namespace order) and cuts each group into requests of
/// at most [`MAX_DATUMS_PER_REQUEST`] datums and [`MAX_REQUEST_BYTES`] estimated bytes.
/// The order of datums within a namespace is kept.
pub fn chunk_for_put(datums: Vec<Datum>) -> Vec<(String, Vec<Datum>)> {
    let mut by_namespace: BTreeMap<String, Vec<Datum>> = BTreeMap::new();
    for datum in datums {
        by_namespace
            .entry(datum.namespace.clone())
            .or_default()
            .push(datum);
    }

    let mut requests = Vec::new();
    for (namespace, datums) in by_namespace {
        let mut chunk = Vec::new();
        let mut bytes = request_overhead(&namespace);
        for datum in datums {
            let size = estimated_datum_bytes(&datum);
            let full = chunk.len() == MAX_DATUMS_PER_REQUEST || bytes + size > MAX_REQUEST_BYTES;
            if full && !chunk.is_empty() {
                requests.push((namespace.clone(), std::mem::take(&mut chunk)));
                bytes = request_overhead(&namespace);
            }
            bytes += size;
            chunk.push(datum);
        }
        if !chunk.is_empty() {
            requests.push((namespace, chunk));
        }
    }
    requests
}

/// Estimated size of a `PutMetricData` request body for these datums.
pub fn estimated_request_bytes(namespace: &str, datums: &[Datum]) -> usize {
    request_overhead(namespace) + datums.iter().map(estimated_datum_bytes).sum::<usize>()
}

// The SDK sends awsQuery form bodies: every field is `&MetricData.member.N.Field=value`
// with the value percent-encoded. The estimate assumes the widest member indexes (four
// digits for datums, two for dimensions) and a 24-byte number for the value.
const DATUM_FIELD_KEY: usize = "&MetricData.member.1000.".len();
const DIMENSION_FIELD_KEY: usize = "&MetricData.member.1000.Dimensions.member.30.".len();

fn request_overhead(namespace: &str) -> usize {
    "Action=PutMetricData&Version=2010-08-01&Namespace=".len() + encoded_len(namespace)
}

fn estimated_datum_bytes(datum: &Datum) -> usize {
    let fields = (DATUM_FIELD_KEY + "MetricName=".len() + encoded_len(&datum.name))
        + (DATUM_FIELD_KEY + "Value=".len() + 24)
        + (DATUM_FIELD_KEY + "Unit=".len() + encoded_len(datum.unit.as_str()))
        + (DATUM_FIELD_KEY + "Timestamp=".len() + "2026-12-04T12%3A00%3A00.000Z".len())
        + (DATUM_FIELD_KEY + "StorageResolution=".len() + 2);
    let dimensions: usize = datum
        .dimensions
        .iter()
        .map(|(name, value)| {
            (DIMENSION_FIELD_KEY + "Name=".len() + encoded_len(name))
                + (DIMENSION_FIELD_KEY + "Value=".len() + encoded_len(value))
        })
        .sum();
    fields + dimensions
}

/// Length after form encoding: unreserved bytes stay, every other byte becomes `%XX`.
fn encoded_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => 1,
            _ => 3,
        })
        .sum()
}

impl From<&Datum> for MetricDatum {
    fn from(datum: &Datum) -> Self {
        let timestamp = aws_smithy_types::DateTime::from_secs_and_nanos(
            datum.timestamp.timestamp(),
            datum.timestamp.timestamp_subsec_nanos(),
        );
        let dimensions = datum
            .dimensions
            .iter()
            .map(|(name, value)| Dimension::builder().name(name).value(value).build())
            .collect();
        MetricDatum::builder()
            .metric_name(&datum.name)
            .value(datum.value)
            .unit(StandardUnit::from(datum.unit.as_str()))
            .timestamp(timestamp)
            .set_dimensions(Some(dimensions))
            .storage_resolution(datum.storage_resolution as i32)
            .build()
    }
}

/// Sends datums to CloudWatch with `PutMetricData`.
#[derive(Debug, Clone)]
pub struct CloudWatchSender {
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatchSender {
    /// Wraps a client (see [`super::config::load_aws`]).
    pub fn new(client: aws_sdk_cloudwatch::Client) -> Self {
        Self { client }
    }

    /// Sends one request: `datums` must all be in `namespace` and fit one request, as the
    /// chunks of [`chunk_for_put`] do. Every datum is checked with [`validate`] first,
    /// because one bad datum fails CloudWatch's whole request.
    ///
    /// # Errors
    ///
    /// [`PublishError::Permanent`] when the request breaks a limit or CloudWatch rejects
    /// it; [`PublishError::Retryable`] for throttling, server errors, timeouts and
    /// connection failures.
    pub async fn put(&self, namespace: &str, datums: &[Datum]) -> Result<(), PublishError> {
        check_request(namespace, datums, Utc::now())?;

        let metric_data = datums.iter().map(MetricDatum::from).collect();
        self.client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(metric_data))
            .send()
            .await
            .map_err(|err| classify_sdk_error("PutMetricData", &err))?;
        Ok(())
    }
}

fn check_request(
    namespace: &str,
    datums: &[Datum],
    now: DateTime<Utc>,
) -> Result<(), PublishError> {
    if datums.is_empty() {
        return Err(PublishError::Permanent(
            "PutMetricData: no datums to send".into(),
        ));
    }
    if datums.len() > MAX_DATUMS_PER_REQUEST {
        return Err(PublishError::Permanent(format!(
            "PutMetricData: {} datums, at most {MAX_DATUMS_PER_REQUEST} per request",
            datums.len()
        )));
    }
    let bytes = estimated_request_bytes(namespace, datums);
    if bytes > MAX_REQUEST_BYTES {
        return Err(PublishError::Permanent(format!(
            "PutMetricData: about {bytes} bytes, at most {MAX_REQUEST_BYTES} per request"
        )));
    }
    for (i, datum) in datums.iter().enumerate() {
        if datum.namespace != namespace {
            return Err(PublishError::Permanent(format!(
                "PutMetricData: datum {i} is in namespace '{}', not '{namespace}'",
                datum.namespace
            )));
        }
        validate(datum, now)
            .map_err(|err| PublishError::Permanent(format!("PutMetricData: datum {i}: {err}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn datum() -> Datum {
        Datum {
            namespace: STANDARD_NAMESPACE.into(),
            name: "latency".into(),
            value: 12.5,
            unit: MetricUnit::Milliseconds,
            timestamp: now(),
            dimensions: pairs(&[("ServiceName", "checkout")]),
            storage_resolution: STANDARD_RESOLUTION,
        }
    }

    #[test]
    fn a_standard_metric_gets_the_service_then_batch_then_its_own_dimensions() {
        let metric = Metric {
            name: "latency".into(),
            value: 12.5,
            unit: MetricUnit::Milliseconds,
            timestamp: now() - Duration::seconds(3),
            dimensions: map(&[("Env", "staging"), ("Route", "/pay")]),
        };

        let datums = metric_datums(
            "checkout",
            &map(&[("Env", "prod"), ("Region", "eu")]),
            &[metric],
        );

        assert_eq!(
            datums,
            vec![Datum {
                namespace: "Skafu".into(),
                name: "latency".into(),
                value: 12.5,
                unit: MetricUnit::Milliseconds,
                timestamp: now() - Duration::seconds(3),
                dimensions: pairs(&[
                    ("ServiceName", "checkout"),
                    ("Env", "staging"),
                    ("Region", "eu"),
                    ("Route", "/pay"),
                ]),
                storage_resolution: 60,
            }]
        );
    }

    #[test]
    fn a_caller_dimension_cannot_replace_the_service_name() {
        let metric = Metric {
            name: "x".into(),
            value: 1.0,
            unit: MetricUnit::Count,
            timestamp: now(),
            dimensions: map(&[("ServiceName", "someone-else")]),
        };

        let datums = metric_datums("checkout", &map(&[("ServiceName", "other")]), &[metric]);

        assert_eq!(datums[0].dimensions, pairs(&[("ServiceName", "checkout")]));
    }

    #[test]
    fn a_custom_metric_is_a_count_with_service_context_and_tags() {
        let metric = CustomMetric {
            name: "orders".into(),
            value: 3.0,
            business_context: "sales".into(),
            timestamp: now(),
            tags: map(&[
                ("channel", "web"),
                ("BusinessContext", "spoofed"),
                ("ServiceName", "spoofed"),
            ]),
        };

        let datums = custom_metric_datums("checkout", &[metric]);

        assert_eq!(
            datums,
            vec![Datum {
                namespace: "Skafu/CustomMetrics".into(),
                name: "orders".into(),
                value: 3.0,
                unit: MetricUnit::Count,
                timestamp: now(),
                dimensions: pairs(&[
                    ("ServiceName", "checkout"),
                    ("BusinessContext", "sales"),
                    ("channel", "web"),
                ]),
                storage_resolution: 60,
            }]
        );
    }

    #[test]
    fn a_batch_maps_its_standard_then_its_custom_metrics() {
        let batch = Metrics {
            service_name: "checkout".into(),
            dimensions: map(&[("Env", "prod")]),
            metrics: vec![Metric {
                name: "latency".into(),
                value: 1.0,
                unit: MetricUnit::Seconds,
                timestamp: now(),
                dimensions: BTreeMap::new(),
            }],
            custom_metrics: vec![CustomMetric {
                name: "orders".into(),
                value: 2.0,
                business_context: "sales".into(),
                timestamp: now(),
                tags: BTreeMap::new(),
            }],
            ..Metrics::default()
        };

        let datums = batch_datums(&batch);

        let names: Vec<_> = datums
            .iter()
            .map(|d| (d.namespace.as_str(), d.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("Skafu", "latency"), ("Skafu/CustomMetrics", "orders")]
        );
    }

    #[test]
    fn a_health_result_publishes_status_and_response_time() {
        let healthy = health_datums(
            "checkout",
            "checkout-http",
            HealthStatus::Healthy,
            Some(42.0),
            now(),
        );
        assert_eq!(
            healthy,
            vec![
                Datum {
                    namespace: "Skafu/HealthChecks".into(),
                    name: "HealthCheckStatus".into(),
                    value: 1.0,
                    unit: MetricUnit::Count,
                    timestamp: now(),
                    dimensions: pairs(&[
                        ("ServiceName", "checkout"),
                        ("HealthCheckId", "checkout-http")
                    ]),
                    storage_resolution: 60,
                },
                Datum {
                    namespace: "Skafu/HealthChecks".into(),
                    name: "ResponseTime".into(),
                    value: 42.0,
                    unit: MetricUnit::Milliseconds,
                    timestamp: now(),
                    dimensions: pairs(&[
                        ("ServiceName", "checkout"),
                        ("HealthCheckId", "checkout-http")
                    ]),
                    storage_resolution: 60,
                },
            ]
        );
    }

    #[test]
    fn degraded_counts_as_up_and_unhealthy_as_down() {
        let status = |s| health_datums("svc", "svc-http", s, None, now())[0].value;
        assert_eq!(status(HealthStatus::Degraded), 1.0);
        assert_eq!(status(HealthStatus::Unhealthy), 0.0);
        assert!(health_datums("svc", "svc-http", HealthStatus::Unknown, None, now()).is_empty());
        assert_eq!(
            health_datums("svc", "id", HealthStatus::Unhealthy, Some(f64::NAN), now()).len(),
            1
        );
    }

    #[test]
    fn a_well_formed_datum_is_valid() {
        assert_eq!(validate(&datum(), now()), Ok(()));
        let high = Datum {
            storage_resolution: HIGH_RESOLUTION,
            ..datum()
        };
        assert_eq!(validate(&high, now()), Ok(()));
    }

    #[test]
    fn namespaces_must_be_present_short_and_not_reserved() {
        for bad in ["", " ", "AWS/EC2", ":x", &"n".repeat(256)] {
            let d = Datum {
                namespace: bad.into(),
                ..datum()
            };
            assert!(
                matches!(validate(&d, now()), Err(DatumError::Namespace { .. })),
                "{bad:?}"
            );
        }
        let longest = Datum {
            namespace: "n".repeat(255),
            ..datum()
        };
        assert_eq!(validate(&longest, now()), Ok(()));
    }

    #[test]
    fn metric_names_are_one_to_255_printable_ascii_characters() {
        for bad in ["", "  ", "caf\u{e9}", "tab\there", &"m".repeat(256)] {
            let d = Datum {
                name: bad.into(),
                ..datum()
            };
            assert!(
                matches!(validate(&d, now()), Err(DatumError::Name { .. })),
                "{bad:?}"
            );
        }
        let longest = Datum {
            name: "m".repeat(255),
            ..datum()
        };
        assert_eq!(validate(&longest, now()), Ok(()));
    }

    #[test]
    fn at_most_30_dimensions() {
        let dims = |n: usize| (0..n).map(|i| (format!("d{i}"), "v".to_string())).collect();
        let thirty = Datum {
            dimensions: dims(30),
            ..datum()
        };
        assert_eq!(validate(&thirty, now()), Ok(()));

        let thirty_one = Datum {
            dimensions: dims(31),
            ..datum()
        };
        assert_eq!(
            validate(&thirty_one, now()),
            Err(DatumError::TooManyDimensions { count: 31 })
        );
    }

    #[test]
    fn dimension_names_and_values_respect_their_lengths() {
        let long_value = "v".repeat(1024);
        let ok = Datum {
            dimensions: pairs(&[(&"k".repeat(255), &long_value)]),
            ..datum()
        };
        assert_eq!(validate(&ok, now()), Ok(()));

        let too_long_value = "v".repeat(1025);
        let too_long_name = "k".repeat(256);
        for dims in [
            pairs(&[("k", &too_long_value)]),
            pairs(&[(&too_long_name, "v")]),
            pairs(&[("k", "")]),
            pairs(&[("", "v")]),
            pairs(&[(":k", "v")]),
            pairs(&[("k", "v"), ("k", "w")]),
        ] {
            let d = Datum {
                dimensions: dims.clone(),
                ..datum()
            };
            assert!(
                matches!(validate(&d, now()), Err(DatumError::Dimension { .. })),
                "{dims:?}"
            );
        }
    }

    #[test]
    fn values_must_be_finite_and_within_two_to_the_360() {
        assert_eq!(MAX_ABS_VALUE, 2f64.powi(360));
        for ok in [0.0, -1.5, MAX_ABS_VALUE, -MAX_ABS_VALUE] {
            let d = Datum {
                value: ok,
                ..datum()
            };
            assert_eq!(validate(&d, now()), Ok(()), "{ok}");
        }
        let just_over = f64::from_bits(MAX_ABS_VALUE.to_bits() + 1);
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            just_over,
            -just_over,
        ] {
            let d = Datum {
                value: bad,
                ..datum()
            };
            assert!(
                matches!(validate(&d, now()), Err(DatumError::Value { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_must_be_within_two_weeks_back_and_two_hours_ahead() {
        let at = |timestamp| Datum {
            timestamp,
            ..datum()
        };
        assert_eq!(validate(&at(now() - Duration::days(14)), now()), Ok(()));
        assert_eq!(validate(&at(now() + Duration::hours(2)), now()), Ok(()));
        assert!(matches!(
            validate(
                &at(now() - Duration::days(14) - Duration::seconds(1)),
                now()
            ),
            Err(DatumError::TimestampTooOld { .. })
        ));
        assert!(matches!(
            validate(
                &at(now() + Duration::hours(2) + Duration::seconds(1)),
                now()
            ),
            Err(DatumError::TimestampInFuture { .. })
        ));
    }

    #[test]
    fn storage_resolution_is_one_or_sixty() {
        let d = Datum {
            storage_resolution: 5,
            ..datum()
        };
        assert_eq!(
            validate(&d, now()),
            Err(DatumError::StorageResolution { resolution: 5 })
        );
    }

    #[test]
    fn chunks_group_by_namespace_and_hold_at_most_1000_datums() {
        let mut datums: Vec<Datum> = (0..2500)
            .map(|i| Datum {
                name: format!("m{i}"),
                ..datum()
            })
            .collect();
        datums.push(Datum {
            namespace: CUSTOM_NAMESPACE.into(),
            ..datum()
        });

        let chunks = chunk_for_put(datums);

        let shape: Vec<_> = chunks
            .iter()
            .map(|(ns, d)| (ns.as_str(), d.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("Skafu", 1000),
                ("Skafu", 1000),
                ("Skafu", 500),
                ("Skafu/CustomMetrics", 1)
            ]
        );
        let names: Vec<_> = chunks[..3]
            .iter()
            .flat_map(|(_, d)| d.iter().map(|d| d.name.clone()))
            .collect();
        let expected: Vec<_> = (0..2500).map(|i| format!("m{i}")).collect();
        assert_eq!(names, expected, "order within a namespace is kept");
    }

    #[test]
    fn chunks_stay_under_the_request_size_estimate() {
        // 30 dimensions with 1 KiB values of characters that encode to 3 bytes each:
        // about 95 kB per datum, so only a handful fit one request.
        let heavy_value = "/".repeat(MAX_DIMENSION_VALUE_LEN);
        let heavy = Datum {
            dimensions: (0..30)
                .map(|i| (format!("d{i}"), heavy_value.clone()))
                .collect(),
            ..datum()
        };
        let datums = vec![heavy; 40];

        let chunks = chunk_for_put(datums);

        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|(_, d)| d.len()).sum::<usize>(), 40);
        for (namespace, chunk) in &chunks {
            assert!(estimated_request_bytes(namespace, chunk) <= MAX_REQUEST_BYTES);
            assert!(chunk.len() <= MAX_DATUMS_PER_REQUEST);
        }
    }

    #[test]
    fn the_size_estimate_is_not_below_the_form_encoding() {
        // The literal awsQuery body of one datum, as the SDK would send it.
        let d = Datum {
            dimensions: pairs(&[("ServiceName", "check out")]),
            ..datum()
        };
        let body = "Action=PutMetricData&Version=2010-08-01&Namespace=Skafu\
            &MetricData.member.1.MetricName=latency\
            &MetricData.member.1.Dimensions.member.1.Name=ServiceName\
            &MetricData.member.1.Dimensions.member.1.Value=check%20out\
            &MetricData.member.1.Timestamp=2026-12-04T12%3A00%3A00Z\
            &MetricData.member.1.Value=12.5\
            &MetricData.member.1.Unit=Milliseconds\
            &MetricData.member.1.StorageResolution=60";

        assert!(estimated_request_bytes("Skafu", &[d]) >= body.len());
    }

    #[test]
    fn a_request_is_refused_before_sending_when_it_breaks_a_limit() {
        assert!(matches!(
            check_request("Skafu", &[], now()),
            Err(PublishError::Permanent(_))
        ));
        let too_many = vec![datum(); 1001];
        assert!(matches!(
            check_request("Skafu", &too_many, now()),
            Err(PublishError::Permanent(m)) if m.contains("1001 datums")
        ));
        let wrong_namespace = [datum()];
        assert!(matches!(
            check_request("Skafu/CustomMetrics", &wrong_namespace, now()),
            Err(PublishError::Permanent(m)) if m.contains("namespace")
        ));
        let infinite = [Datum {
            value: f64::INFINITY,
            ..datum()
        }];
        assert!(matches!(
            check_request("Skafu", &infinite, now()),
            Err(PublishError::Permanent(m)) if m.contains("datum 0")
        ));
        assert_eq!(check_request("Skafu", &vec![datum(); 1000], now()), Ok(()));
    }

    #[test]
    fn a_datum_converts_to_the_sdk_type_field_by_field() {
        let d = Datum {
            timestamp: "2026-12-04T12:00:00.250Z".parse().unwrap(),
            dimensions: pairs(&[("ServiceName", "checkout"), ("Env", "prod")]),
            storage_resolution: HIGH_RESOLUTION,
            unit: MetricUnit::BytesPerSecond,
            ..datum()
        };

        let sdk = MetricDatum::from(&d);

        assert_eq!(sdk.metric_name(), Some("latency"));
        assert_eq!(sdk.value(), Some(12.5));
        assert_eq!(sdk.unit(), Some(&StandardUnit::BytesSecond));
        assert_eq!(sdk.storage_resolution(), Some(1));
        assert_eq!(
            sdk.timestamp().map(|t| t.to_millis().unwrap()),
            Some(d.timestamp.timestamp_millis())
        );
        let dims: Vec<_> = sdk
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap(), d.value().unwrap()))
            .collect();
        assert_eq!(dims, [("ServiceName", "checkout"), ("Env", "prod")]);
    }

    #[test]
    fn every_domain_unit_is_a_known_sdk_unit() {
        for unit in MetricUnit::ALL {
            assert!(
                StandardUnit::values().contains(&unit.as_str()),
                "{unit} is unknown to the SDK"
            );
        }
    }
}
