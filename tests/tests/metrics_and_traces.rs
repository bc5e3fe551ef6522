//! Metrics, performance statistics, traces, the dashboard and the audit trail, read back
//! over HTTP with exact values.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skafu_tests::{assert_fields, eventually, Behaviour, StubServer, TestApp};

/// Parses an RFC 3339 timestamp of an answer.
fn instant(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// A whole second shortly before now, so that it survives any round trip unchanged.
fn a_minute_ago() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).expect("a valid instant")
}

fn millis_ago(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis() - ms).expect("a valid instant")
}

/// `value` without its `timestamp` field, to compare the rest exactly.
fn without_timestamp(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("timestamp");
    }
    copy
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {value}"))
        .to_string()
}

/// The `p`-th percentile (in whole percent) of `values` by the nearest-rank method: the
/// value at rank ⌈p·n/100⌉ of the sorted values.
fn nearest_rank(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Whether `id` matches `^1-[0-9a-f]{8}-[0-9a-f]{24}$`.
fn is_xray_trace_id(id: &str) -> bool {
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match id.split('-').collect::<Vec<_>>().as_slice() {
        ["1", epoch, random] => {
            epoch.len() == 8 && random.len() == 24 && lower_hex(epoch) && lower_hex(random)
        }
        _ => false,
    }
}

async fn start_trace(app: &TestApp, service: &str, operation: &str) -> String {
    let body = json!({"service_name": service, "operation_name": operation});
    let started = app.post_created("/v1/traces", body).await;
    text(&started, "trace_id")
}

async fn record_performance(app: &TestApp, service: &str, operation: &str, ms: f64, ok: bool) {
    let body = json!({
        "service_name": service,
        "operation_name": operation,
        "duration_ms": ms,
        "success": ok,
    });
    app.post_created("/v1/performance", body).await;
}

async fn a_metrics_batch_keeps_its_names_values_units_and_dimensions(app: &TestApp) {
    let measured = a_minute_ago();
    let batch = json!({
        "service_name": "checkout",
        "dimensions": {"Env": "prod", "Region": "eu-west-1"},
        "metrics": [
            {"name": "latency", "value": 12.5, "unit": "Milliseconds",
             "timestamp": measured, "dimensions": {"Endpoint": "/pay"}},
            {"name": "queue_depth", "value": 7, "unit": "Count"},
            {"name": "egress", "value": 1024.75, "unit": "Bytes/Second"},
        ],
        "custom_metrics": [
            {"name": "orders_placed", "value": 3, "business_context": "sales",
             "tags": {"channel": "web"}, "timestamp": measured},
        ],
    });

    let created = app.post_created("/v1/metrics", batch).await;
    let id = text(&created, "metrics_id");
    let stored = app.get_ok(&format!("/v1/metrics/{id}")).await;

    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is not a UUID");
    assert_fields(
        &created,
        json!({
            "service_name": "checkout",
            "namespace": "Skafu/checkout",
            "metric_count": 3,
            "custom_metric_count": 1,
        }),
    );
    assert_fields(
        &stored,
        json!({
            "metrics_id": id,
            "service_name": "checkout",
            "namespace": "Skafu/checkout",
            "source": {"kind": "api"},
            "dimensions": {"Env": "prod", "Region": "eu-west-1"},
        }),
    );
    let metrics = stored["metrics"].as_array().expect("a list of metrics");
    let shapes: Vec<Value> = metrics.iter().map(without_timestamp).collect();
    assert_eq!(
        shapes,
        [
            json!({"name": "latency", "value": 12.5, "unit": "Milliseconds",
                   "dimensions": {"Endpoint": "/pay"}}),
            json!({"name": "queue_depth", "value": 7.0, "unit": "Count", "dimensions": {}}),
            json!({"name": "egress", "value": 1024.75, "unit": "Bytes/Second",
                   "dimensions": {}}),
        ]
    );
    let recorded_at = instant(&stored["recorded_at"]);
    assert_eq!(instant(&metrics[0]["timestamp"]), measured);
    assert_eq!(instant(&metrics[1]["timestamp"]), recorded_at);
    assert_eq!(instant(&metrics[2]["timestamp"]), recorded_at);
    let custom = stored["custom_metrics"]
        .as_array()
        .expect("a list of custom metrics");
    assert_eq!(custom.len(), 1, "{stored}");
    assert_eq!(
        without_timestamp(&custom[0]),
        json!({"name": "orders_placed", "value": 3.0, "business_context": "sales",
               "tags": {"channel": "web"}})
    );
    assert_eq!(instant(&custom[0]["timestamp"]), measured);
}

async fn a_business_metric_is_kept_as_one_custom_metric(app: &TestApp) {
    let body = json!({
        "service_name": "shop",
        "metric_name": "carts_abandoned",
        "value": 4.5,
        "business_context": "conversion",
        "tags": {"campaign": "spring"},
    });

    let created = app.post_created("/v1/business-metrics", body).await;
    let stored = app
        .get_ok(&format!("/v1/metrics/{}", text(&created, "metrics_id")))
        .await;

    assert_fields(
        &created,
        json!({"service_name": "shop", "metric_name": "carts_abandoned"}),
    );
    assert_fields(
        &stored,
        json!({
            "service_name": "shop",
            "namespace": "Skafu/shop",
            "source": {"kind": "business"},
            "dimensions": {},
            "metrics": [],
        }),
    );
    let custom: Vec<Value> = stored["custom_metrics"]
        .as_array()
        .expect("a list of custom metrics")
        .iter()
        .map(without_timestamp)
        .collect();
    assert_eq!(
        custom,
        [
            json!({"name": "carts_abandoned", "value": 4.5, "business_context": "conversion",
                "tags": {"campaign": "spring"}})
        ]
    );
}

async fn a_performance_sample_is_kept_as_duration_and_success_metrics(app: &TestApp) {
    let body = json!({
        "service_name": "shop",
        "operation_name": "pay",
        "duration_ms": 87.25,
        "success": false,
    });

    let created = app.post_created("/v1/performance", body).await;
    let stored = app
        .get_ok(&format!("/v1/metrics/{}", text(&created, "metrics_id")))
        .await;

    assert_fields(
        &created,
        json!({"service_name": "shop", "operation_name": "pay"}),
    );
    assert_fields(
        &stored,
        json!({
            "namespace": "Skafu/shop",
            "source": {"kind": "performance", "operation_name": "pay",
                       "duration_ms": 87.25, "success": false},
            "dimensions": {"OperationName": "pay", "ServiceName": "shop"},
            "custom_metrics": [],
        }),
    );
    let metrics: Vec<Value> = stored["metrics"]
        .as_array()
        .expect("a list of metrics")
        .iter()
        .map(without_timestamp)
        .collect();
    assert_eq!(
        metrics,
        [
            json!({"name": "pay_duration", "value": 87.25, "unit": "Milliseconds",
                   "dimensions": {}}),
            json!({"name": "pay_success", "value": 0.0, "unit": "Count", "dimensions": {}}),
        ]
    );
}

async fn performance_percentiles_are_the_nearest_ranks_of_the_recorded_durations(app: &TestApp) {
    // 37 distinct durations in a scrambled order; every fourth request failed.
    let pay: Vec<(f64, bool)> = (0..37)
        .map(|i| (((i * 11) % 37 + 1) as f64 * 2.5, i % 4 != 0))
        .collect();
    let refund = [(15.0, true), (5.0, false), (10.0, true)];
    for (ms, ok) in &pay {
        record_performance(app, "payments", "pay", *ms, *ok).await;
    }
    for (ms, ok) in refund {
        record_performance(app, "payments", "refund", ms, ok).await;
    }
    record_performance(app, "elsewhere", "pay", 9999.0, false).await;

    let stats = app
        .get_ok("/v1/services/payments/performance?window_minutes=60")
        .await;

    assert_eq!(stats["service_name"], json!("payments"));
    assert_eq!(stats["window_minutes"], json!(60));
    let operations = stats["operations"].as_array().expect("a list");
    let names: Vec<&Value> = operations.iter().map(|o| &o["operation_name"]).collect();
    assert_eq!(names, [&json!("pay"), &json!("refund")]);
    let durations: Vec<f64> = pay.iter().map(|(ms, _)| *ms).collect();
    let errors = pay.iter().filter(|(_, ok)| !ok).count();
    let mut sorted = durations.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(errors, 10);
    assert_eq!(
        operations[0],
        json!({
            "operation_name": "pay",
            "count": 37,
            "error_count": 10,
            "error_rate": 10.0 / 37.0,
            "p50_ms": nearest_rank(&durations, 50),
            "p95_ms": nearest_rank(&durations, 95),
            "p99_ms": nearest_rank(&durations, 99),
            "average_ms": sorted.iter().sum::<f64>() / 37.0,
            "throughput_per_minute": 37.0 / 60.0,
        })
    );
    // Ranks 19, 36 and 37 of 1..=37 steps of 2.5: no interpolation anywhere.
    assert_eq!(
        (nearest_rank(&durations, 50), nearest_rank(&durations, 95)),
        (47.5, 90.0)
    );
    assert_eq!(
        operations[1],
        json!({
            "operation_name": "refund",
            "count": 3,
            "error_count": 1,
            "error_rate": 1.0 / 3.0,
            "p50_ms": 10.0,
            "p95_ms": 15.0,
            "p99_ms": 15.0,
            "average_ms": 10.0,
            "throughput_per_minute": 3.0 / 60.0,
        })
    );
}

async fn a_started_trace_gets_an_xray_id_of_the_current_second(app: &TestApp) {
    let before = Utc::now().timestamp();

    let id = start_trace(app, "checkout", "pay").await;

    let after = Utc::now().timestamp();
    assert!(is_xray_trace_id(&id), "{id} is not an X-Ray trace id");
    let epoch = i64::from_str_radix(&id[2..10], 16).expect("hex epoch");
    assert!(
        before - 60 <= epoch && epoch <= after + 60,
        "epoch {epoch} of {id} is not within a minute of now ({before}..{after})"
    );
    let trace = app.get_ok(&format!("/v1/traces/{id}")).await;
    assert_fields(
        &trace,
        json!({
            "trace_id": id,
            "service_name": "checkout",
            "operation_name": "pay",
            "status": "active",
            "end_time": null,
            "duration_ms": null,
            "spans": [],
            "annotations": {},
            "errors": [],
            "error_count": 0,
        }),
    );
}

async fn a_trace_can_be_started_once_with_an_id_the_caller_chose(app: &TestApp) {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("1-{:08x}-{}", Utc::now().timestamp(), &random[..24]);
    let body = json!({"service_name": "checkout", "operation_name": "pay", "trace_id": id});

    let first = app.post_created("/v1/traces", body.clone()).await;
    let (again, again_body) = app.post("/v1/traces", body).await;
    let malformed = json!({"service_name": "checkout", "operation_name": "pay",
                           "trace_id": "1-ABCDEF12-0123"});
    let (bad, bad_body) = app.post("/v1/traces", malformed).await;

    assert_eq!(first["trace_id"], json!(id));
    assert_eq!(again, StatusCode::CONFLICT, "{again_body}");
    assert_eq!(bad, StatusCode::UNPROCESSABLE_ENTITY, "{bad_body}");
    assert_eq!(bad_body["error"]["field"], json!("trace_id"));
    let trace = app.get_ok(&format!("/v1/traces/{id}")).await;
    assert_eq!(trace["service_name"], json!("checkout"));
}

async fn a_trace_keeps_its_spans_annotations_and_errors_and_completes_once(app: &TestApp) {
    let id = start_trace(app, "checkout", "pay").await;
    let base = format!("/v1/traces/{id}");
    let db_start = millis_ago(5_000);
    let db_end = db_start + chrono::Duration::milliseconds(40);
    let call_at = millis_ago(4_000);
    let db = app
        .post_created(
            &format!("{base}/spans"),
            json!({
                "name": "db.query",
                "start_time": db_start,
                "end_time": db_end,
                "tags": {"table": "orders"},
                "logs": [{"message": "slow query"}, {"message": "retrying", "level": "WARN"}],
            }),
        )
        .await;
    let call = app
        .post_created(
            &format!("{base}/spans"),
            json!({"name": "http.call", "start_time": call_at, "end_time": call_at}),
        )
        .await;
    for (key, value) in [
        ("customer_tier", "gold"),
        ("region", "eu"),
        ("region", "us"),
    ] {
        app.post_created(
            &format!("{base}/annotations"),
            json!({"key": key, "value": value}),
        )
        .await;
    }
    app.post_created(&format!("{base}/errors"), json!({"error": "card declined"}))
        .await;

    let (completed, done) = app.post(&format!("{base}/complete"), json!({})).await;
    let (twice, twice_body) = app.post(&format!("{base}/complete"), json!({})).await;
    let (late_span, late_body) = app
        .post(
            &format!("{base}/spans"),
            json!({"name": "late", "start_time": call_at, "end_time": call_at}),
        )
        .await;

    assert_eq!(completed, StatusCode::OK, "{done}");
    assert_eq!(twice, StatusCode::CONFLICT, "{twice_body}");
    assert_eq!(late_span, StatusCode::CONFLICT, "{late_body}");
    let trace = app.get_ok(&base).await;
    assert_eq!(trace, done, "complete answers the stored trace");
    assert_fields(
        &trace,
        json!({
            "trace_id": id,
            "status": "error",
            "annotations": {"customer_tier": "gold", "region": "us"},
            "error_count": 1,
        }),
    );
    let duration = trace["duration_ms"].as_f64().expect("a duration");
    assert!(duration >= 0.0, "{trace}");
    assert!(instant(&trace["end_time"]) >= instant(&trace["start_time"]));
    let errors = trace["errors"].as_array().expect("a list of errors");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["message"], json!("card declined"));
    let spans = trace["spans"].as_array().expect("a list of spans");
    assert_eq!(spans.len(), 2, "{trace}");
    let span_id = text(&db, "span_id");
    assert_eq!(span_id.len(), 16);
    assert!(span_id.bytes().all(|b| b.is_ascii_hexdigit()), "{span_id}");
    assert_fields(
        &spans[0],
        json!({
            "span_id": span_id,
            "name": "db.query",
            "duration_ms": 40.0,
            "tags": {"table": "orders"},
        }),
    );
    assert_eq!(instant(&spans[0]["start_time"]), db_start);
    assert_eq!(instant(&spans[0]["end_time"]), db_end);
    let logs: Vec<(Value, Value)> = spans[0]["logs"]
        .as_array()
        .expect("a list of logs")
        .iter()
        .map(|l| (l["message"].clone(), l["level"].clone()))
        .collect();
    assert_eq!(
        logs,
        [
            (json!("slow query"), json!("INFO")),
            (json!("retrying"), json!("WARN"))
        ]
    );
    assert_fields(
        &spans[1],
        json!({
            "span_id": text(&call, "span_id"),
            "name": "http.call",
            "duration_ms": 0.0,
            "tags": {},
            "logs": [],
        }),
    );
}

async fn a_trace_without_errors_completes_as_completed(app: &TestApp) {
    let id = start_trace(app, "checkout", "browse").await;

    let (status, done) = app
        .post(&format!("/v1/traces/{id}/complete"), json!({}))
        .await;

    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], json!("completed"));
    assert!(done["duration_ms"].as_f64().expect("a duration") >= 0.0);
}

async fn recent_traces_are_listed_newest_first_within_the_limit(app: &TestApp) {
    let mut started = Vec::new();
    for operation in ["first", "second", "third"] {
        started.push(start_trace(app, "listing", operation).await);
        // Distinct start milliseconds make "newest first" a single order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stranger = start_trace(app, "elsewhere", "other").await;

    let two = app.get_ok("/v1/traces?service_name=listing&limit=2").await;
    let all = app.get_ok("/v1/traces?service_name=listing&limit=10").await;
    let everything = app.get_ok("/v1/traces?limit=1000").await;
    let (zero, zero_body) = app.get("/v1/traces?limit=0").await;

    let ids = |list: &Value| -> Vec<String> {
        list["traces"]
            .as_array()
            .expect("a list of traces")
            .iter()
            .map(|t| text(t, "trace_id"))
            .collect()
    };
    assert_eq!(ids(&two), [started[2].clone(), started[1].clone()]);
    assert_eq!(
        ids(&all),
        [started[2].clone(), started[1].clone(), started[0].clone()]
    );
    assert_eq!(ids(&everything).len(), 4);
    assert_eq!(ids(&everything)[0], stranger);
    assert_eq!(zero, StatusCode::UNPROCESSABLE_ENTITY, "{zero_body}");
    assert_eq!(zero_body["error"]["field"], json!("limit"));
}

async fn nothing_can_be_added_to_an_unknown_trace(app: &TestApp) {
    let ghost = "1-00000001-000000000000000000000001";
    let now = Utc::now();
    let before = app.event_count().await;

    let span = json!({"name": "x", "start_time": now, "end_time": now});
    let (span_status, _) = app.post(&format!("/v1/traces/{ghost}/spans"), span).await;
    let annotation = json!({"key": "k", "value": "v"});
    let (annotation_status, _) = app
        .post(&format!("/v1/traces/{ghost}/annotations"), annotation)
        .await;
    let (error_status, _) = app
        .post(&format!("/v1/traces/{ghost}/errors"), json!({"error": "e"}))
        .await;
    let (complete_status, _) = app
        .post(&format!("/v1/traces/{ghost}/complete"), json!({}))
        .await;
    let (read_status, read) = app.get(&format!("/v1/traces/{ghost}")).await;

    assert_eq!(span_status, StatusCode::NOT_FOUND);
    assert_eq!(annotation_status, StatusCode::NOT_FOUND);
    assert_eq!(error_status, StatusCode::NOT_FOUND);
    assert_eq!(complete_status, StatusCode::NOT_FOUND);
    assert_eq!(read_status, StatusCode::NOT_FOUND);
    assert_eq!(read["error"]["code"], json!("not_found"));
    assert_eq!(app.event_count().await, before);
}

async fn the_dashboard_shows_recent_traces_error_rates_response_times_and_throughput(
    app: &TestApp,
) {
    for (ms, ok) in [(40.0, true), (10.0, true), (30.0, false), (20.0, true)] {
        record_performance(app, "shop", "checkout", ms, ok).await;
    }
    record_performance(app, "shop", "search", 5.0, true).await;
    record_performance(app, "warehouse", "pick", 70.0, false).await;
    let trace = start_trace(app, "shop", "checkout").await;
    start_trace(app, "warehouse", "pick").await;

    let dashboard = app.get_ok("/v1/dashboard?service_name=shop").await;

    assert_fields(
        &dashboard,
        json!({
            "service_name": "shop",
            "window_minutes": 60,
            "error_rates": {"checkout": 0.25, "search": 0.0},
            "response_times": {
                "checkout": {"p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 40.0,
                             "average_ms": 25.0},
                "search": {"p50_ms": 5.0, "p95_ms": 5.0, "p99_ms": 5.0, "average_ms": 5.0},
            },
            "throughput": {"checkout": 4.0 / 60.0, "search": 1.0 / 60.0},
        }),
    );
    let recent: Vec<String> = dashboard["recent_traces"]
        .as_array()
        .expect("a list of traces")
        .iter()
        .map(|t| text(t, "trace_id"))
        .collect();
    assert_eq!(recent, [trace]);
    assert!(instant(&dashboard["generated_at"]) <= Utc::now());
    assert_eq!(
        dashboard["system_health"]["total_services"],
        json!(0),
        "{dashboard}"
    );
    let everywhere = app.get_ok("/v1/dashboard?window_minutes=5").await;
    assert_eq!(
        everywhere["error_rates"],
        json!({"shop/checkout": 0.25, "shop/search": 0.0, "warehouse/pick": 1.0})
    );
    assert_eq!(
        everywhere["recent_traces"].as_array().map(Vec::len),
        Some(2)
    );
}

/// Checks an audit answer: sequences 1..=n, the event types in order, RFC 3339
/// recording times that never go backwards and lie within ten minutes of now.
fn assert_audit(audit: &Value, aggregate_type: &str, id: &str, types: &[&str]) {
    assert_eq!(audit["aggregate_type"], json!(aggregate_type), "{audit}");
    assert_eq!(audit["aggregate_id"], json!(id), "{audit}");
    let events = audit["events"].as_array().expect("a list of events");
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("a sequence"))
        .collect();
    let expected: Vec<i64> = (1..=types.len() as i64).collect();
    assert_eq!(sequences, expected, "{audit}");
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().expect("an event type"))
        .collect();
    assert_eq!(names, types, "{audit}");
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| instant(&e["recorded_at"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{audit}");
    let now = Utc::now();
    for at in times {
        assert!((now - at).num_minutes().abs() < 10, "{at} is not recent");
    }
    assert!(events.iter().all(|e| e["event_version"] == json!("1.0")));
}

async fn the_audit_trail_lists_each_aggregates_events_in_sequence(app: &TestApp) {
    let trace = start_trace(app, "checkout", "pay").await;
    let now = Utc::now();
    let span = json!({"name": "db", "start_time": now, "end_time": now});
    app.post_created(&format!("/v1/traces/{trace}/spans"), span)
        .await;
    app.post_created(
        &format!("/v1/traces/{trace}/annotations"),
        json!({"key": "tier", "value": "gold"}),
    )
    .await;
    app.post_created(
        &format!("/v1/traces/{trace}/errors"),
        json!({"error": "declined"}),
    )
    .await;
    app.post(&format!("/v1/traces/{trace}/complete"), json!({}))
        .await;
    let batch = json!({
        "service_name": "checkout",
        "dimensions": {"Env": "prod"},
        "metrics": [{"name": "latency", "value": 1.0, "unit": "Milliseconds"}],
        "custom_metrics": [{"name": "orders", "value": 1, "business_context": "sales"}],
    });
    let metrics = text(&app.post_created("/v1/metrics", batch).await, "metrics_id");
    let server = StubServer::start(Behaviour::Healthy).await;
    let definition = json!({
        "service_name": "audited",
        "endpoint": server.endpoint(),
        "interval_seconds": 3600,
        "timeout_seconds": 10,
        "degraded_after_ms": 10_000,
    });
    app.post_created("/v1/health-checks", definition).await;
    eventually("the scheduled first run", || async {
        let view = app.get_ok("/v1/health-checks/audited-http").await;
        (view["total_checks"] == json!(1)).then_some(())
    })
    .await;

    let trace_audit = app.get_ok(&format!("/v1/audit/traces/{trace}")).await;
    let metrics_audit = app.get_ok(&format!("/v1/audit/metrics/{metrics}")).await;
    let check_audit = app.get_ok("/v1/audit/health-checks/audited-http").await;
    let (unknown_id, _) = app
        .get("/v1/audit/traces/1-00000001-000000000000000000000001")
        .await;
    let (unknown_type, _) = app.get(&format!("/v1/audit/widgets/{trace}")).await;

    assert_audit(
        &trace_audit,
        "Trace",
        &trace,
        &[
            "TraceStarted",
            "SpanAdded",
            "AnnotationAdded",
            "TraceError",
            "TraceCompleted",
        ],
    );
    assert_audit(
        &metrics_audit,
        "Metrics",
        &metrics,
        &[
            "MetricsBatchOpened",
            "DimensionAdded",
            "MetricAdded",
            "CustomMetricAdded",
        ],
    );
    assert_audit(
        &check_audit,
        "HealthCheck",
        "audited-http",
        &["HealthCheckRegistered", "HealthCheckSucceeded"],
    );
    assert_eq!(unknown_id, StatusCode::NOT_FOUND);
    assert_eq!(unknown_type, StatusCode::NOT_FOUND);
    let services: BTreeSet<&str> = [&trace_audit, &metrics_audit]
        .iter()
        .map(|a| {
            let first = &a["events"][0]["payload"];
            let (_, inner) = first
                .as_object()
                .and_then(|m| m.iter().next())
                .expect("an externally tagged event");
            inner["service_name"].as_str().expect("a service name")
        })
        .collect();
    assert_eq!(services, BTreeSet::from(["checkout"]));
}

skafu_tests::on_both_backends!(
    a_metrics_batch_keeps_its_names_values_units_and_dimensions,
    a_business_metric_is_kept_as_one_custom_metric,
    a_performance_sample_is_kept_as_duration_and_success_metrics,
    performance_percentiles_are_the_nearest_ranks_of_the_recorded_durations,
    a_started_trace_gets_an_xray_id_of_the_current_second,
    a_trace_can_be_started_once_with_an_id_the_caller_chose,
    a_trace_keeps_its_spans_annotations_and_errors_and_completes_once,
    a_trace_without_errors_completes_as_completed,
    recent_traces_are_listed_newest_first_within_the_limit,
    nothing_can_be_added_to_an_unknown_trace,
    the_dashboard_shows_recent_traces_error_rates_response_times_and_throughput,
    the_audit_trail_lists_each_aggregates_events_in_sequence,
);
