//! CloudWatch and X-Ray publishing against moto, the AWS emulator, on 127.0.0.1.
//!
//! Run through `scripts/test`, which starts moto with `scripts/moto.sh` and sets
//! `SKAFU_TEST_MOTO_ENDPOINT` (such as `http://127.0.0.1:41799`). By hand:
//!
//! ```text
//! scripts/moto.sh install
//! scripts/moto.sh start /tmp/moto.port /tmp/moto.pid
//! SKAFU_TEST_MOTO_ENDPOINT=http://127.0.0.1:$(cat /tmp/moto.port) \
//!     cargo test -p skafu-infrastructure --test aws_moto
//! scripts/moto.sh stop /tmp/moto.pid
//! ```
//!
//! moto checks none of AWS's limits, so these tests prove the wire format and the
//! read-back only; the limits are unit-tested in `aws::cloudwatch` and `aws::xray`.
//! Every test works under names of its own run, so the tests share one moto without
//! resetting it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_cloudwatch::config::Credentials;
use aws_sdk_cloudwatch::types::{Dimension, DimensionFilter, Statistic};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};
use skafu_domain::health::HealthStatus;
use skafu_domain::metrics::{CustomMetric, Metric, MetricUnit, Metrics};
use skafu_domain::trace::{Span, SpanLog, TraceId, TraceStatus};
use skafu_infrastructure::aws::cloudwatch::{
    batch_datums, chunk_for_put, health_datums, CloudWatchSender, Datum, STANDARD_NAMESPACE,
};
use skafu_infrastructure::aws::config::{load_aws, AwsClients, AwsOverrides};
use skafu_infrastructure::aws::xray::{segment_documents, TraceForXray, XRaySender};
use skafu_infrastructure::aws::PublishError;

/// The emulator's endpoint; refuses anything but a loopback address, so that a stray
/// setting can never send test traffic to AWS.
fn moto_endpoint() -> String {
    let endpoint = std::env::var("SKAFU_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "SKAFU_TEST_MOTO_ENDPOINT is not set: run the AWS tests through scripts/test, \
             which starts moto (scripts/moto.sh) and sets it"
        )
    });
    let url = url::Url::parse(&endpoint).expect("SKAFU_TEST_MOTO_ENDPOINT is a URL");
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    assert!(
        loopback,
        "SKAFU_TEST_MOTO_ENDPOINT must be a loopback address, got {endpoint}"
    );
    endpoint
}

/// Clients with dummy credentials and no retries: an unsupported call fails at once
/// instead of being retried into a timeout.
async fn clients(endpoint: &str) -> AwsClients {
    load_aws(Some(AwsOverrides {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
        credentials: Some(Credentials::new("testing", "testing", None, None, "tests")),
        max_attempts: Some(1),
        operation_timeout: Some(Duration::from_secs(20)),
    }))
    .await
    .expect("overrides give a region and credentials")
}

fn run_id() -> String {
    format!(
        "{:012x}",
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    )
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn smithy_time(t: DateTime<Utc>) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs(t.timestamp())
}

/// Sum and SampleCount of one series, over a window wide enough to be one datapoint.
async fn sum_and_count(
    clients: &AwsClients,
    namespace: &str,
    name: &str,
    dimensions: &[(String, String)],
    unit: MetricUnit,
) -> (f64, f64) {
    let now = Utc::now();
    let dimensions = dimensions
        .iter()
        .map(|(n, v)| Dimension::builder().name(n).value(v).build())
        .collect();
    let out = clients
        .cloudwatch
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(name)
        .set_dimensions(Some(dimensions))
        .start_time(smithy_time(now - chrono::Duration::hours(1)))
        .end_time(smithy_time(now + chrono::Duration::hours(1)))
        .period(7200)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .unit(aws_sdk_cloudwatch::types::StandardUnit::from(unit.as_str()))
        .send()
        .await
        .expect("GetMetricStatistics");
    let points = out.datapoints();
    assert_eq!(points.len(), 1, "{namespace}/{name}: {points:?}");
    (points[0].sum().unwrap(), points[0].sample_count().unwrap())
}

fn dims_of<'a>(datums: &'a [Datum], namespace: &str, name: &str) -> &'a [(String, String)] {
    &datums
        .iter()
        .find(|d| d.namespace == namespace && d.name == name)
        .unwrap_or_else(|| panic!("no datum {namespace}/{name}"))
        .dimensions
}

#[tokio::test]
async fn metrics_published_to_moto_read_back_exactly() {
    let endpoint = moto_endpoint();
    let clients = clients(&endpoint).await;
    let sender = CloudWatchSender::new(clients.cloudwatch.clone());
    let service = format!("moto-test-{}", run_id());
    let at = Utc::now() - chrono::Duration::seconds(30);

    let metric = |name: &str, value: f64| Metric {
        name: name.into(),
        value,
        unit: MetricUnit::Milliseconds,
        timestamp: at,
        dimensions: map(&[("Route", "/pay")]),
    };
    let mut bulk: Vec<Metric> = (0..998)
        .map(|i| Metric {
            dimensions: BTreeMap::new(),
            unit: MetricUnit::Count,
            ..metric("bulk", f64::from(i))
        })
        .collect();
    bulk.push(metric("latency", 10.0));
    bulk.push(metric("latency", 30.0));
    let batch = Metrics {
        service_name: service.clone(),
        dimensions: map(&[("Env", "test")]),
        metrics: bulk,
        custom_metrics: vec![CustomMetric {
            name: "orders".into(),
            value: 3.0,
            business_context: "sales".into(),
            timestamp: at,
            tags: map(&[("channel", "web")]),
        }],
        ..Metrics::default()
    };
    let mut datums = batch_datums(&batch);
    datums.extend(health_datums(
        &service,
        &format!("{service}-http"),
        HealthStatus::Degraded,
        Some(87.5),
        at,
    ));

    // 1,000 standard datums make one request of the maximum count, which the SDK gzips.
    let chunks = chunk_for_put(datums.clone());
    let shape: Vec<_> = chunks
        .iter()
        .map(|(ns, d)| (ns.as_str(), d.len()))
        .collect();
    assert_eq!(
        shape,
        [
            ("Skafu", 1000),
            ("Skafu/CustomMetrics", 1),
            ("Skafu/HealthChecks", 2)
        ]
    );
    for (namespace, chunk) in &chunks {
        sender.put(namespace, chunk).await.expect("PutMetricData");
    }

    let latency_dims = dims_of(&datums, "Skafu", "latency");
    assert_eq!(
        sum_and_count(
            &clients,
            "Skafu",
            "latency",
            latency_dims,
            MetricUnit::Milliseconds
        )
        .await,
        (40.0, 2.0)
    );
    let bulk_dims = dims_of(&datums, "Skafu", "bulk");
    assert_eq!(
        sum_and_count(&clients, "Skafu", "bulk", bulk_dims, MetricUnit::Count).await,
        ((0..998).sum::<i32>() as f64, 998.0)
    );
    let orders_dims = dims_of(&datums, "Skafu/CustomMetrics", "orders");
    assert_eq!(
        sum_and_count(
            &clients,
            "Skafu/CustomMetrics",
            "orders",
            orders_dims,
            MetricUnit::Count
        )
        .await,
        (3.0, 1.0)
    );
    let health_dims = dims_of(&datums, "Skafu/HealthChecks", "HealthCheckStatus");
    assert_eq!(
        sum_and_count(
            &clients,
            "Skafu/HealthChecks",
            "HealthCheckStatus",
            health_dims,
            MetricUnit::Count
        )
        .await,
        (1.0, 1.0)
    );
    assert_eq!(
        sum_and_count(
            &clients,
            "Skafu/HealthChecks",
            "ResponseTime",
            health_dims,
            MetricUnit::Milliseconds
        )
        .await,
        (87.5, 1.0)
    );

    // moto lists a series once per datapoint when it has two or more dimensions, so the
    // listing is compared as a set.
    let listed = clients
        .cloudwatch
        .list_metrics()
        .namespace(STANDARD_NAMESPACE)
        .dimensions(
            DimensionFilter::builder()
                .name("ServiceName")
                .value(&service)
                .build(),
        )
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("ListMetrics");
    let series: BTreeSet<(String, BTreeSet<(String, String)>)> = listed
        .iter()
        .flat_map(|page| page.metrics())
        .map(|m| {
            let dims = m
                .dimensions()
                .iter()
                .map(|d| {
                    let name = d.name().unwrap_or_default().to_string();
                    (name, d.value().unwrap_or_default().to_string())
                })
                .collect();
            (m.metric_name().unwrap_or_default().to_string(), dims)
        })
        .collect();
    let expected: BTreeSet<_> = [("bulk", bulk_dims), ("latency", latency_dims)]
        .into_iter()
        .map(|(name, dims)| (name.to_string(), dims.iter().cloned().collect()))
        .collect();
    assert_eq!(series, expected);
}

fn span(i: usize, start: DateTime<Utc>, tag_kb: usize) -> Span {
    Span {
        span_id: format!("{:016x}", rand::thread_rng().gen::<u64>()),
        name: format!("step {i}"),
        start_time: start + chrono::Duration::milliseconds(i as i64 * 10),
        end_time: start + chrono::Duration::milliseconds(i as i64 * 10 + 7),
        duration_ms: 7.0,
        tags: (0..tag_kb)
            .map(|t| (format!("tag{t}"), "x".repeat(1000)))
            .chain([("db.table".to_string(), "orders".to_string())])
            .collect(),
        logs: vec![SpanLog {
            message: format!("step {i} done"),
            level: "INFO".into(),
            timestamp: start,
        }],
    }
}

fn trace(spans: Vec<Span>, errors: Vec<String>, now: DateTime<Utc>) -> TraceForXray {
    let start = now - chrono::Duration::seconds(5);
    let status = if errors.is_empty() {
        TraceStatus::Completed
    } else {
        TraceStatus::Error
    };
    TraceForXray {
        trace_id: TraceId::generate(now, &mut rand::thread_rng()).to_string(),
        service_name: "checkout".into(),
        service_version: "1.0".into(),
        operation_name: "POST /orders".into(),
        start_time: start,
        end_time: Some(start + chrono::Duration::milliseconds(900)),
        annotations: map(&[("customer.tier", "gold")]),
        spans,
        errors,
        status,
    }
}

fn by_id(mut docs: Vec<Value>) -> Vec<Value> {
    docs.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    docs
}

#[tokio::test]
async fn traces_published_to_moto_come_back_unchanged() {
    let endpoint = moto_endpoint();
    let clients = clients(&endpoint).await;
    let sender = XRaySender::new(clients.xray.clone());
    let now = Utc::now();
    let start = now - chrono::Duration::seconds(5);

    let small = trace((0..3).map(|i| span(i, start, 0)).collect(), vec![], now);
    let large = trace(
        (0..5).map(|i| span(i, start, 25)).collect(),
        vec!["payment declined".into()],
        now,
    );
    let small_docs = segment_documents(&small);
    let large_docs = segment_documents(&large);
    assert_eq!(small_docs.len(), 1);
    assert!(large_docs.len() > 1, "the large trace must be split");
    assert!(large_docs[1..].iter().all(|d| d["type"] == "subsegment"));

    let mut all = small_docs.clone();
    all.extend(large_docs.clone());
    sender.put(all).await.expect("PutTraceSegments");

    let out = clients
        .xray
        .batch_get_traces()
        .trace_ids(&small.trace_id)
        .trace_ids(&large.trace_id)
        .send()
        .await
        .expect("BatchGetTraces");
    assert!(out.unprocessed_trace_ids().is_empty());
    let stored = |trace_id: &str| -> Vec<Value> {
        let trace = out
            .traces()
            .iter()
            .find(|t| t.id() == Some(trace_id))
            .unwrap_or_else(|| panic!("trace {trace_id} not returned"));
        let docs = trace
            .segments()
            .iter()
            .map(|s| serde_json::from_str(s.document().unwrap()).unwrap())
            .collect();
        by_id(docs)
    };
    assert_eq!(stored(&small.trace_id), by_id(small_docs));
    assert_eq!(stored(&large.trace_id), by_id(large_docs));
}

#[tokio::test]
async fn a_segment_moto_refuses_is_a_permanent_failure() {
    let endpoint = moto_endpoint();
    let sender = XRaySender::new(clients(&endpoint).await.xray);
    let now = Utc::now();
    let trace_id = TraceId::generate(now, &mut rand::thread_rng()).to_string();

    // No name: X-Ray answers 200 and lists the document as unprocessed.
    let nameless = json!({
        "id": "0123456789abcdef",
        "trace_id": trace_id,
        "start_time": now.timestamp_millis() as f64 / 1000.0,
        "end_time": now.timestamp_millis() as f64 / 1000.0,
    });
    let err = sender.put(vec![nameless]).await.unwrap_err();

    assert!(
        matches!(&err, PublishError::Permanent(m) if m.contains("0123456789abcdef")),
        "{err}"
    );
}

#[tokio::test]
async fn publishing_to_a_closed_port_is_retryable() {
    // A port that was just free: nothing listens there once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let clients = clients(&endpoint).await;
    let now = Utc::now();

    let datums = health_datums("svc", "svc-http", HealthStatus::Healthy, Some(1.0), now);
    let metrics = CloudWatchSender::new(clients.cloudwatch)
        .put("Skafu/HealthChecks", &datums)
        .await;
    let docs = segment_documents(&trace(vec![], vec![], now));
    let traces = XRaySender::new(clients.xray).put(docs).await;

    assert!(
        matches!(&metrics, Err(PublishError::Retryable(_))),
        "{metrics:?}"
    );
    assert!(
        matches!(&traces, Err(PublishError::Retryable(_))),
        "{traces:?}"
    );
}
