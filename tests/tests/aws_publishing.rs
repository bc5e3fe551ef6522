//! End to end: what other services record over HTTP arrives in CloudWatch and X-Ray
//! (moto on loopback, started by `scripts/test`), read back through the SDK with exact
//! names, values, units, dimensions and segment documents.
//!
//! Every test names its services after its own run, so the tests share one moto.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skafu_infrastructure::aws::xray::segment_id;
use skafu_tests::aws::{
    clients, list_metrics, metric_totals, segment_documents, shared_endpoint, Moto,
};
use skafu_tests::{
    eventually, log_path, spawn_app, spawn_app_publishing, spawn_binary_without_aws, Backend,
    Behaviour, StubServer, TestApp, TestStore,
};

fn run_service(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn dims(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn epoch(value: &str) -> f64 {
    let t: DateTime<Utc> = value.parse().expect("an RFC 3339 instant");
    t.timestamp_millis() as f64 / 1000.0
}

async fn event_types(app: &TestApp, aggregate: &str, id: &str) -> Vec<String> {
    let audit = app.get_ok(&format!("/v1/audit/{aggregate}/{id}")).await;
    audit["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {audit}"))
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn metrics_arrive_with_their_mapping(backend: Backend) {
    let endpoint = shared_endpoint();
    let aws = clients(&endpoint).await;
    let app = spawn_app_publishing(backend, &endpoint).await;
    let service = run_service("e2e-metrics");

    let recorded = app
        .post_created(
            "/v1/metrics",
            json!({
                "service_name": service,
                "dimensions": {"Env": "test", "Region": "eu"},
                "metrics": [
                    {"name": "latency", "value": 12.5, "unit": "Milliseconds",
                     "dimensions": {"Route": "/orders", "Env": "canary"}},
                    {"name": "latency", "value": 7.5, "unit": "Milliseconds",
                     "dimensions": {"Route": "/orders", "Env": "canary"}},
                    {"name": "queue_depth", "value": 42.0, "unit": "Count"},
                    // Naming the service again is allowed; another service is not
                    // (see bad_input).
                    {"name": "payload", "value": 2048.0, "unit": "Bytes",
                     "dimensions": {"ServiceName": service}}
                ],
                "custom_metrics": [
                    {"name": "signups", "value": 3.0, "business_context": "growth",
                     "tags": {"Plan": "pro"}}
                ]
            }),
        )
        .await;
    let metrics_id = recorded["metrics_id"].as_str().expect("an id").to_string();
    app.post_created(
        "/v1/performance",
        json!({"service_name": service, "operation_name": "checkout",
               "duration_ms": 40.0, "success": true}),
    )
    .await;
    app.post_created(
        "/v1/performance",
        json!({"service_name": service, "operation_name": "checkout",
               "duration_ms": 60.0, "success": false}),
    )
    .await;
    app.post_created(
        "/v1/business-metrics",
        json!({"service_name": service, "metric_name": "revenue", "value": 99.5,
               "business_context": "sales", "tags": {"Currency": "EUR"}}),
    )
    .await;

    // Once the publisher has handled every event, everything is in CloudWatch.
    let status = eventually("the publisher to drain", || app.publisher_drained()).await;
    assert_eq!(status["enabled"], true);
    assert_eq!(status["failures"], 0);
    // 4 standard + 1 custom, 2 × 2 performance, 1 business.
    assert_eq!(status["datums_published"], 10);

    let listed = list_metrics(&aws, "Skafu", &service).await;
    assert_eq!(
        listed,
        vec![
            (
                "checkout_duration".to_string(),
                dims(&[("OperationName", "checkout"), ("ServiceName", &service)])
            ),
            (
                "checkout_success".to_string(),
                dims(&[("OperationName", "checkout"), ("ServiceName", &service)])
            ),
            (
                "latency".to_string(),
                dims(&[
                    ("Env", "canary"),
                    ("Region", "eu"),
                    ("Route", "/orders"),
                    ("ServiceName", &service)
                ])
            ),
            (
                "payload".to_string(),
                dims(&[("Env", "test"), ("Region", "eu"), ("ServiceName", &service)])
            ),
            (
                "queue_depth".to_string(),
                dims(&[("Env", "test"), ("Region", "eu"), ("ServiceName", &service)])
            ),
        ]
    );
    let custom = list_metrics(&aws, "Skafu/CustomMetrics", &service).await;
    assert_eq!(
        custom,
        vec![
            (
                "revenue".to_string(),
                dims(&[
                    ("BusinessContext", "sales"),
                    ("Currency", "EUR"),
                    ("ServiceName", &service)
                ])
            ),
            (
                "signups".to_string(),
                dims(&[
                    ("BusinessContext", "growth"),
                    ("Plan", "pro"),
                    ("ServiceName", &service)
                ])
            ),
        ]
    );

    let latency_dims = [
        ("ServiceName", service.as_str()),
        ("Env", "canary"),
        ("Region", "eu"),
        ("Route", "/orders"),
    ];
    assert_eq!(
        metric_totals(&aws, "Skafu", "latency", &latency_dims).await,
        Some((20.0, 2.0))
    );
    let op_dims = [
        ("ServiceName", service.as_str()),
        ("OperationName", "checkout"),
    ];
    assert_eq!(
        metric_totals(&aws, "Skafu", "checkout_duration", &op_dims).await,
        Some((100.0, 2.0))
    );
    assert_eq!(
        metric_totals(&aws, "Skafu", "checkout_success", &op_dims).await,
        Some((1.0, 2.0))
    );
    let signup_dims = [
        ("ServiceName", service.as_str()),
        ("BusinessContext", "growth"),
        ("Plan", "pro"),
    ];
    assert_eq!(
        metric_totals(&aws, "Skafu/CustomMetrics", "signups", &signup_dims).await,
        Some((3.0, 1.0))
    );

    // Units as recorded: a query in another unit finds nothing.
    let payload = aws
        .cloudwatch
        .get_metric_statistics()
        .namespace("Skafu")
        .metric_name("payload")
        .dimensions(dimension("ServiceName", &service))
        .dimensions(dimension("Env", "test"))
        .dimensions(dimension("Region", "eu"))
        .start_time(aws_smithy_types::DateTime::from_secs(
            Utc::now().timestamp() - 3600,
        ))
        .end_time(aws_smithy_types::DateTime::from_secs(
            Utc::now().timestamp() + 3600,
        ))
        .period(60)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
        .send()
        .await
        .expect("GetMetricStatistics answers");
    let points = payload.datapoints();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].maximum(), Some(2048.0));
    assert_eq!(
        points[0].unit(),
        Some(&aws_sdk_cloudwatch::types::StandardUnit::Bytes)
    );

    // The batch's status moved through publishing to published, as events.
    let published = eventually("MetricsPublished in the audit trail", || async {
        let types = event_types(&app, "Metrics", &metrics_id).await;
        types
            .contains(&"MetricsPublished".to_string())
            .then_some(types)
    })
    .await;
    assert_eq!(
        published[published.len() - 2..],
        [
            "MetricsPublishing".to_string(),
            "MetricsPublished".to_string()
        ]
    );

    app.finish().await;
}

fn dimension(name: &str, value: &str) -> aws_sdk_cloudwatch::types::Dimension {
    aws_sdk_cloudwatch::types::Dimension::builder()
        .name(name)
        .value(value)
        .build()
}

async fn health_results_and_traces_arrive(backend: Backend) {
    let endpoint = shared_endpoint();
    let aws = clients(&endpoint).await;
    let app = spawn_app_publishing(backend, &endpoint).await;
    let service = run_service("e2e-traces");

    // A health check run on demand publishes its status and response time.
    let healthy = StubServer::start(Behaviour::Healthy).await;
    let registered = app
        .post_created(
            "/v1/health-checks",
            json!({"service_name": service, "endpoint": healthy.endpoint()}),
        )
        .await;
    let check_id = registered["health_check_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let (status, run) = app
        .post(&format!("/v1/health-checks/{check_id}/run"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    let check_dims = [
        ("ServiceName", service.as_str()),
        ("HealthCheckId", check_id.as_str()),
    ];
    let up = eventually("HealthCheckStatus in CloudWatch", || async {
        metric_totals(&aws, "Skafu/HealthChecks", "HealthCheckStatus", &check_dims).await
    })
    .await;
    assert_eq!(up, (1.0, 1.0));
    let (_, samples) = metric_totals(&aws, "Skafu/HealthChecks", "ResponseTime", &check_dims)
        .await
        .expect("a response time");
    assert_eq!(samples, 1.0);

    // A trace with a span, annotations and an error.
    let started = app
        .post_created(
            "/v1/traces",
            json!({"service_name": service, "operation_name": "checkout"}),
        )
        .await;
    let trace_id = started["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let span_start = "2026-12-04T12:00:00.125Z";
    let span_end = "2026-12-04T12:00:00.375Z";
    let span = app
        .post_created(
            &format!("/v1/traces/{trace_id}/spans"),
            json!({"name": "charge card", "start_time": span_start, "end_time": span_end,
                   "tags": {"provider": "acme"},
                   "logs": [{"message": "card accepted", "level": "info"}]}),
        )
        .await;
    let span_id = span["span_id"].as_str().expect("a span id").to_string();
    app.post_created(
        &format!("/v1/traces/{trace_id}/annotations"),
        json!({"key": "http.status", "value": "502"}),
    )
    .await;
    app.post_created(
        &format!("/v1/traces/{trace_id}/errors"),
        json!({"error": "payment gateway timed out"}),
    )
    .await;
    let (status, completed) = app
        .post(&format!("/v1/traces/{trace_id}/complete"), json!({}))
        .await;
    assert!(status.is_success(), "{completed}");
    // A trace still open is not sent, unless it has failed.
    let open = app
        .post_created(
            "/v1/traces",
            json!({"service_name": service, "operation_name": "still running"}),
        )
        .await;
    let open_id = open["trace_id"].as_str().expect("a trace id").to_string();
    let failing = app
        .post_created(
            "/v1/traces",
            json!({"service_name": service, "operation_name": "never ends"}),
        )
        .await;
    let failing_id = failing["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    app.post_created(
        &format!("/v1/traces/{failing_id}/errors"),
        json!({"error": "worker crashed"}),
    )
    .await;

    eventually("the publisher to drain", || app.publisher_drained()).await;
    let ids = vec![trace_id.clone(), open_id.clone(), failing_id.clone()];
    // moto files an in-progress trace under an empty id: find documents by their own.
    let all: Vec<Value> = segment_documents(&aws, &ids)
        .await
        .into_values()
        .flatten()
        .collect();
    let of = |id: &str| -> Vec<Value> {
        all.iter()
            .filter(|doc| doc["trace_id"] == id)
            .cloned()
            .collect()
    };
    assert!(of(&open_id).is_empty(), "an open trace was sent: {all:?}");

    let failing_docs = of(&failing_id);
    assert_eq!(failing_docs.len(), 1, "{failing_docs:?}");
    assert_subset(
        &failing_docs[0],
        &json!({"id": segment_id(&failing_id), "in_progress": true, "error": true,
                "cause": {"exceptions": [{"message": "worker crashed"}]}}),
        "in-progress segment",
    );
    assert!(failing_docs[0].get("end_time").is_none());

    // The error may have gone out in progress before the completion: X-Ray keeps the
    // later document of an id (moto keeps both), and the publisher sends in commit order.
    let segments = of(&trace_id);
    assert!(segments
        .iter()
        .all(|doc| doc["id"] == segment_id(&trace_id).as_str()));
    let (completed, in_progress): (Vec<&Value>, Vec<&Value>) = segments
        .iter()
        .partition(|doc| doc.get("in_progress").is_none());
    assert_eq!(completed.len(), 1, "{segments:?}");
    assert!(in_progress.len() <= 1, "{segments:?}");
    let doc = completed[0];
    let view = app.get_ok(&format!("/v1/traces/{trace_id}")).await;
    let expected = json!({
        "name": service,
        "id": segment_id(&trace_id),
        "trace_id": trace_id,
        "start_time": epoch(view["start_time"].as_str().expect("a start")),
        "end_time": epoch(view["end_time"].as_str().expect("an end")),
        "service": {"name": service, "version": env!("CARGO_PKG_VERSION")},
        "error": true,
        "fault": true,
        "annotations": {"operation": "checkout", "http_status": "502"},
        "cause": {"exceptions": [{"message": "payment gateway timed out"}]},
        "subsegments": [{
            "name": "charge card",
            "id": span_id,
            "start_time": epoch(span_start),
            "end_time": epoch(span_end),
            "metadata": {"default": {
                "tags": {"provider": "acme"},
                "logs": [{"message": "card accepted", "level": "info"}],
            }},
        }],
    });
    assert_subset(doc, &expected, "segment");

    let status = eventually("the publisher to drain", || app.publisher_drained()).await;
    let published = status["segments_published"].as_u64().unwrap_or(0);
    assert_eq!(published as usize, segments.len() + 1, "{status}");
    assert_eq!(status["failures"], 0);
    app.finish().await;
}

/// Asserts that every field of `expected` is in `actual` with the same value; arrays
/// match element by element and must have the same length.
fn assert_subset(actual: &Value, expected: &Value, path: &str) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (key, value) in e {
                let field = format!("{path}.{key}");
                let got = a
                    .get(key)
                    .unwrap_or_else(|| panic!("{field} is missing in {actual}"));
                assert_subset(got, value, &field);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: {actual} vs {expected}");
            for (i, (got, want)) in a.iter().zip(e).enumerate() {
                assert_subset(got, want, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (
                a.as_f64().unwrap_or(f64::NAN),
                e.as_f64().unwrap_or(f64::NAN),
            );
            assert!((a - e).abs() < 1e-6, "{path}: {a} != {e}");
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

async fn without_aws_settings_publishing_is_off(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.get_ok("/healthz").await;
    assert_eq!(health["publisher"], json!({"enabled": false}));
    app.post_created(
        "/v1/metrics",
        json!({"service_name": "quiet", "metrics": [{"name": "x", "value": 1.0, "unit": "Count"}]}),
    )
    .await;
    assert_eq!(
        app.get_ok("/healthz").await["publisher"],
        json!({"enabled": false})
    );
    app.finish().await;
}

/// The binary with no AWS settings in its environment says once why it does not
/// publish, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_aws_configuration_the_binary_says_so_once_and_works() {
    let store = TestStore::fresh(Backend::Sqlite).await;
    let log = log_path("no-aws");
    let service = spawn_binary_without_aws(&store.database_url, &log).await;
    assert_eq!(
        service.get_ok("/healthz").await["publisher"],
        json!({"enabled": false})
    );
    service
        .post_created(
            "/v1/metrics",
            json!({"service_name": "offline",
                   "metrics": [{"name": "x", "value": 1.0, "unit": "Count"}]}),
        )
        .await;
    assert!(
        service.terminate().await,
        "the service did not exit cleanly"
    );
    let output = std::fs::read_to_string(&log).expect("the service's log");
    let said: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("AWS publishing"))
        .collect();
    assert_eq!(said.len(), 1, "{output}");
    assert!(
        said[0].contains("AWS publishing off: no region configured"),
        "{output}"
    );
    store.remove().await;
}

/// Found: a stop asked for while an AWS call hung on a frozen endpoint waited for the
/// call's 20 s timeout. The call is now abandoned, and sent again after the restart.
async fn a_stop_does_not_wait_for_a_hanging_aws_call(backend: Backend) {
    let moto = Moto::start().await;
    let aws = clients(&moto.endpoint()).await;
    let mut app = spawn_app_publishing(backend, &moto.endpoint()).await;
    let service = run_service("stop-hang");

    moto.signal("STOP").await;
    app.post_created(
        "/v1/metrics",
        json!({"service_name": service,
               "metrics": [{"name": "patience", "value": 7.0, "unit": "Count"}]}),
    )
    .await;
    let status = eventually("a call hanging on the frozen endpoint", || async {
        let publisher = app.get_ok("/healthz").await["publisher"].clone();
        publisher["current_call_age_ms"]
            .is_number()
            .then_some(publisher)
    })
    .await;
    assert_eq!(status["retrying"], false, "{status}");

    let asked = std::time::Instant::now();
    app.stop().await;
    let took = asked.elapsed();
    // The call would hang for its 20 s timeout; a margin for a loaded machine.
    assert!(
        took < std::time::Duration::from_secs(5),
        "stop took {took:?}"
    );

    moto.signal("CONT").await;
    app.restart().await;
    eventually("the abandoned datum after the restart", || {
        app.publisher_drained()
    })
    .await;
    let (sum, _) = eventually("the datum in CloudWatch", || async {
        metric_totals(
            &aws,
            "Skafu",
            "patience",
            &[("ServiceName", service.as_str())],
        )
        .await
    })
    .await;
    // Sent at least once; the abandoned call may have been run by moto after the thaw.
    assert!(sum == 7.0 || sum == 14.0, "sum {sum}");
    app.finish().await;
}

skafu_tests::for_each_backend!(
    metrics_arrive_with_their_mapping,
    health_results_and_traces_arrive,
    without_aws_settings_publishing_is_off,
    a_stop_does_not_wait_for_a_hanging_aws_call
);
