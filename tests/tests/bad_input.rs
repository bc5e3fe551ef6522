//! Bad input: each request gets the right status and names the offending field in
//! `error.field`, and nothing at all is stored (the store's event count, as `/healthz`
//! reports it, is the same before and after).

use axum::http::StatusCode;
use chrono::{Duration, Utc};
use serde_json::{json, Value};
use skafu_tests::TestApp;

/// One rejected request: where it went, what it sent, what must come back.
struct Rejected {
    path: String,
    body: Body,
    status: StatusCode,
    /// The expected `error.field`; `Value::Null` when no single field is to blame.
    field: Value,
}

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn json_case(path: &str, body: Value, status: StatusCode, field: &str) -> Rejected {
    Rejected {
        path: path.to_string(),
        body: Body::Json(body),
        status,
        field: json!(field),
    }
}

fn raw_case(path: &str, body: &str, status: StatusCode, field: Value) -> Rejected {
    Rejected {
        path: path.to_string(),
        body: Body::Raw(body.as_bytes().to_vec()),
        status,
        field,
    }
}

/// Sends every case and checks its answer and that the store did not change.
async fn assert_all_rejected(app: &TestApp, cases: Vec<Rejected>) {
    let before = app.event_count().await;
    for case in cases {
        let (status, answer) = match &case.body {
            Body::Json(body) => app.post(&case.path, body.clone()).await,
            Body::Raw(bytes) => app.post_raw(&case.path, bytes.clone()).await,
        };
        let sent = match &case.body {
            Body::Json(body) => body.to_string(),
            Body::Raw(bytes) => String::from_utf8_lossy(bytes).chars().take(200).collect(),
        };

        assert_eq!(
            status, case.status,
            "POST {} {sent} answered {answer}",
            case.path
        );
        assert_eq!(
            answer["error"]["field"], case.field,
            "POST {} {sent} answered {answer}",
            case.path
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "no message in {answer}");
        assert_eq!(
            app.event_count().await,
            before,
            "POST {} {sent} stored events",
            case.path
        );
    }
}

fn metric(name: &str, value: Value, unit: &str) -> Value {
    json!({"name": name, "value": value, "unit": unit})
}

fn batch(metrics: Vec<Value>) -> Value {
    json!({"service_name": "checkout", "metrics": metrics})
}

async fn a_trace_to_add_to(app: &TestApp) -> String {
    let started = app
        .post_created(
            "/v1/traces",
            json!({"service_name": "checkout", "operation_name": "pay"}),
        )
        .await;
    started["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string()
}

async fn malformed_json_is_a_bad_request(app: &TestApp) {
    let trace = a_trace_to_add_to(app).await;
    let null = Value::Null;
    let cases = vec![
        raw_case(
            "/v1/metrics",
            "not json",
            StatusCode::BAD_REQUEST,
            null.clone(),
        ),
        raw_case(
            "/v1/metrics",
            r#"{"service_name": "checkout", "metrics": ["#,
            StatusCode::BAD_REQUEST,
            null.clone(),
        ),
        raw_case("/v1/performance", "", StatusCode::BAD_REQUEST, null.clone()),
        raw_case(
            "/v1/traces",
            r#"{"service_name": "a", "operation_name": "b"} trailing"#,
            StatusCode::BAD_REQUEST,
            null.clone(),
        ),
        raw_case(
            &format!("/v1/traces/{trace}/spans"),
            "{'name': 'single quotes'}",
            StatusCode::BAD_REQUEST,
            null.clone(),
        ),
        raw_case("/v1/health-checks", "[]", StatusCode::BAD_REQUEST, null),
    ];

    assert_all_rejected(app, cases).await;
}

async fn a_value_of_the_wrong_type_is_a_bad_request_naming_the_field(app: &TestApp) {
    let trace = a_trace_to_add_to(app).await;
    let bad = StatusCode::BAD_REQUEST;
    let now = Utc::now();
    let cases = vec![
        json_case(
            "/v1/metrics",
            batch(vec![
                metric("ok", json!(1), "Count"),
                metric("latency", json!("12"), "Milliseconds"),
            ]),
            bad,
            "metrics[1].value",
        ),
        json_case(
            "/v1/metrics",
            json!({"service_name": 42, "metrics": [metric("x", json!(1), "Count")]}),
            bad,
            "service_name",
        ),
        json_case(
            "/v1/metrics",
            json!({"service_name": "a", "dimensions": {"Env": 3},
                   "metrics": [metric("x", json!(1), "Count")]}),
            bad,
            "dimensions.Env",
        ),
        json_case(
            "/v1/performance",
            json!({"service_name": "a", "operation_name": "b", "duration_ms": 1,
                   "success": "yes"}),
            bad,
            "success",
        ),
        json_case(
            &format!("/v1/traces/{trace}/spans"),
            json!({"name": "db", "start_time": "yesterday", "end_time": now}),
            bad,
            "start_time",
        ),
        json_case(
            "/v1/health-checks",
            json!({"service_name": "a", "endpoint": "http://127.0.0.1:1/",
                   "timeout_seconds": -1}),
            bad,
            "timeout_seconds",
        ),
    ];

    assert_all_rejected(app, cases).await;
}

async fn a_missing_field_is_a_bad_request_naming_the_field(app: &TestApp) {
    let trace = a_trace_to_add_to(app).await;
    let bad = StatusCode::BAD_REQUEST;
    let now = Utc::now();
    let cases = vec![
        json_case(
            "/v1/metrics",
            batch(vec![
                metric("ok", json!(1), "Count"),
                json!({"name": "latency", "value": 3}),
            ]),
            bad,
            "metrics[1].unit",
        ),
        json_case(
            "/v1/metrics",
            json!({"metrics": [metric("x", json!(1), "Count")]}),
            bad,
            "service_name",
        ),
        json_case(
            "/v1/performance",
            json!({"service_name": "a", "duration_ms": 1, "success": true}),
            bad,
            "operation_name",
        ),
        json_case(
            &format!("/v1/traces/{trace}/spans"),
            json!({"name": "db", "start_time": now}),
            bad,
            "end_time",
        ),
        json_case(
            "/v1/health-checks",
            json!({"service_name": "a"}),
            bad,
            "endpoint",
        ),
    ];

    assert_all_rejected(app, cases).await;
}

async fn one_unknown_unit_rejects_the_whole_batch_naming_its_index(app: &TestApp) {
    let cases = vec![json_case(
        "/v1/metrics",
        batch(vec![
            metric("requests", json!(10), "Count"),
            metric("latency", json!(12.5), "Milliseconds"),
            metric("size", json!(3), "Millis"),
            metric("errors", json!(0), "Count"),
        ]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "metrics[2].unit",
    )];

    assert_all_rejected(app, cases).await;

    let (_, listed) = app.get("/v1/services/checkout/performance").await;
    assert_eq!(listed["operations"], json!([]));
}

async fn numbers_that_are_not_finite_are_refused(app: &TestApp) {
    let huge = r#"{"service_name": "checkout",
                   "metrics": [{"name": "x", "value": 1e999, "unit": "Count"}]}"#;
    let huge_duration = r#"{"service_name": "a", "operation_name": "b",
                            "duration_ms": -1e999, "success": true}"#;
    let cases = vec![
        json_case(
            "/v1/metrics",
            batch(vec![metric("x", json!("NaN"), "Count")]),
            StatusCode::BAD_REQUEST,
            "metrics[0].value",
        ),
        json_case(
            "/v1/performance",
            json!({"service_name": "a", "operation_name": "b", "duration_ms": "NaN",
                   "success": true}),
            StatusCode::BAD_REQUEST,
            "duration_ms",
        ),
        raw_case(
            "/v1/metrics",
            huge,
            StatusCode::BAD_REQUEST,
            json!("metrics[0].value"),
        ),
        raw_case(
            "/v1/performance",
            huge_duration,
            StatusCode::BAD_REQUEST,
            json!("duration_ms"),
        ),
        json_case(
            "/v1/metrics",
            batch(vec![metric("x", json!(1e300), "Count")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metrics[0].value",
        ),
        json_case(
            "/v1/performance",
            json!({"service_name": "a", "operation_name": "b", "duration_ms": -5,
                   "success": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duration_ms",
        ),
    ];

    assert_all_rejected(app, cases).await;
}

async fn timestamps_in_the_future_or_older_than_two_weeks_are_refused(app: &TestApp) {
    let later = Utc::now() + Duration::hours(1);
    let long_ago = Utc::now() - Duration::days(15);
    let cases = vec![
        json_case(
            "/v1/metrics",
            batch(vec![json!({"name": "x", "value": 1, "unit": "Count",
                              "timestamp": later})]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metrics[0].timestamp",
        ),
        json_case(
            "/v1/metrics",
            json!({"service_name": "checkout",
                   "custom_metrics": [{"name": "orders", "value": 1,
                                       "business_context": "sales",
                                       "timestamp": later}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "custom_metrics[0].timestamp",
        ),
        json_case(
            "/v1/metrics",
            batch(vec![json!({"name": "x", "value": 1, "unit": "Count",
                              "timestamp": long_ago})]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metrics[0].timestamp",
        ),
    ];

    assert_all_rejected(app, cases).await;
}

async fn empty_names_are_refused(app: &TestApp) {
    let trace = a_trace_to_add_to(app).await;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    let now = Utc::now();
    let cases = vec![
        json_case(
            "/v1/metrics",
            batch(vec![metric("", json!(1), "Count")]),
            invalid,
            "metrics[0].name",
        ),
        json_case(
            "/v1/metrics",
            json!({"service_name": " ", "metrics": [metric("x", json!(1), "Count")]}),
            invalid,
            "service_name",
        ),
        json_case(
            "/v1/metrics",
            json!({"service_name": "a", "dimensions": {"Env": ""},
                   "metrics": [metric("x", json!(1), "Count")]}),
            invalid,
            "dimensions.Env",
        ),
        json_case("/v1/metrics", batch(vec![]), invalid, "metrics"),
        json_case(
            "/v1/business-metrics",
            json!({"service_name": "a", "metric_name": "", "value": 1,
                   "business_context": "sales"}),
            invalid,
            "metric_name",
        ),
        json_case(
            "/v1/business-metrics",
            json!({"service_name": "a", "metric_name": "orders", "value": 1,
                   "business_context": ""}),
            invalid,
            "business_context",
        ),
        json_case(
            "/v1/performance",
            json!({"service_name": "a", "operation_name": "", "duration_ms": 1,
                   "success": true}),
            invalid,
            "operation_name",
        ),
        json_case(
            "/v1/traces",
            json!({"service_name": "a", "operation_name": ""}),
            invalid,
            "operation_name",
        ),
        json_case(
            &format!("/v1/traces/{trace}/spans"),
            json!({"name": "", "start_time": now, "end_time": now}),
            invalid,
            "name",
        ),
        json_case(
            &format!("/v1/traces/{trace}/annotations"),
            json!({"key": "", "value": "gold"}),
            invalid,
            "key",
        ),
        json_case(
            &format!("/v1/traces/{trace}/errors"),
            json!({"error": "  "}),
            invalid,
            "error",
        ),
        json_case(
            "/v1/health-checks",
            json!({"service_name": "", "endpoint": "http://127.0.0.1:1/"}),
            invalid,
            "service_name",
        ),
    ];

    assert_all_rejected(app, cases).await;
}

async fn a_span_that_ends_before_it_starts_is_refused(app: &TestApp) {
    let trace = a_trace_to_add_to(app).await;
    let start = Utc::now() - Duration::seconds(10);
    let cases = vec![json_case(
        &format!("/v1/traces/{trace}/spans"),
        json!({"name": "db", "start_time": start,
               "end_time": start - Duration::milliseconds(1)}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "end_time",
    )];

    assert_all_rejected(app, cases).await;

    let stored = app.get_ok(&format!("/v1/traces/{trace}")).await;
    assert_eq!(stored["spans"], json!([]));
}

async fn writes_to_unknown_traces_and_checks_are_not_found(app: &TestApp) {
    let ghost = "1-00000001-0000000000000000000000ff";
    let now = Utc::now();
    let cases = vec![
        Rejected {
            field: Value::Null,
            ..json_case(
                &format!("/v1/traces/{ghost}/spans"),
                json!({"name": "db", "start_time": now, "end_time": now}),
                StatusCode::NOT_FOUND,
                "",
            )
        },
        Rejected {
            field: Value::Null,
            ..json_case(
                "/v1/health-checks/ghost-http/run",
                json!({}),
                StatusCode::NOT_FOUND,
                "",
            )
        },
    ];

    assert_all_rejected(app, cases).await;
}

async fn a_health_check_endpoint_must_be_http_and_not_a_metadata_service(app: &TestApp) {
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    let check = |endpoint: &str| json!({"service_name": "svc", "endpoint": endpoint, "interval_seconds": 3600});
    let cases = vec![
        json_case(
            "/v1/health-checks",
            check("ftp://127.0.0.1/health"),
            invalid,
            "endpoint",
        ),
        json_case("/v1/health-checks", check("not a url"), invalid, "endpoint"),
        json_case(
            "/v1/health-checks",
            check("file:///etc/passwd"),
            invalid,
            "endpoint",
        ),
        json_case(
            "/v1/health-checks",
            check("http://169.254.169.254/"),
            invalid,
            "endpoint",
        ),
        json_case(
            "/v1/health-checks",
            check("http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
            invalid,
            "endpoint",
        ),
        json_case(
            "/v1/health-checks",
            check("http://[::ffff:169.254.169.254]/"),
            invalid,
            "endpoint",
        ),
        json_case(
            "/v1/health-checks",
            check("http://[fd00:ec2::254]/"),
            invalid,
            "endpoint",
        ),
        json_case(
            "/v1/health-checks",
            check("http://user:secret@127.0.0.1:1/"),
            invalid,
            "endpoint",
        ),
    ];

    assert_all_rejected(app, cases).await;

    let listed = app.get_ok("/v1/health-checks").await;
    assert_eq!(listed["health_checks"], json!([]));
    let (status, _) = app.get("/v1/health-checks/svc-http").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_body_over_one_mebibyte_is_too_large(app: &TestApp) {
    let filler = "x".repeat(1024 * 1024);
    let body = json!({"service_name": filler, "metrics": [metric("x", json!(1), "Count")]});
    let before = app.event_count().await;

    let (status, answer) = app.post("/v1/metrics", body).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], json!("payload_too_large"));
    assert_eq!(app.event_count().await, before);
}

async fn a_batch_over_the_cloudwatch_limit_is_refused_whole(app: &TestApp) {
    let metrics: Vec<Value> = (0..1001)
        .map(|i| metric(&format!("m{i}"), json!(i), "Count"))
        .collect();
    let cases = vec![json_case(
        "/v1/metrics",
        batch(metrics),
        StatusCode::UNPROCESSABLE_ENTITY,
        "metrics",
    )];

    assert_all_rejected(app, cases).await;
}

async fn query_parameters_get_the_error_shape_and_name_the_parameter(app: &TestApp) {
    let cases = [
        ("/v1/traces?limit=abc", StatusCode::BAD_REQUEST, "limit"),
        (
            "/v1/traces?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
        (
            "/v1/dashboard?window_minutes=-1",
            StatusCode::BAD_REQUEST,
            "window_minutes",
        ),
        (
            "/v1/dashboard?window_minutes=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "window_minutes",
        ),
        (
            "/v1/services/checkout/performance?window_minutes=lots",
            StatusCode::BAD_REQUEST,
            "window_minutes",
        ),
        (
            "/v1/services/checkout/performance?window_minutes=43201",
            StatusCode::UNPROCESSABLE_ENTITY,
            "window_minutes",
        ),
    ];

    for (path, status, field) in cases {
        let (answered, answer) = app.get(path).await;

        assert_eq!(answered, status, "GET {path} answered {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "GET {path}");
    }
}

async fn dimensions_the_service_sets_are_not_overridden(app: &TestApp) {
    // Found accepted, stored, then silently replaced in CloudWatch.
    let cases = [
        (
            json!({"service_name": "a", "dimensions": {"ServiceName": "b"},
                   "metrics": [{"name": "x", "value": 1.0, "unit": "Count"}]}),
            "dimensions.ServiceName",
        ),
        (
            json!({"service_name": "a", "custom_metrics": [{"name": "x", "value": 1.0,
                   "business_context": "c", "tags": {"BusinessContext": "d"}}]}),
            "custom_metrics[0].tags.BusinessContext",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/v1/metrics", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["field"], field);
    }
    assert_eq!(app.event_count().await, 0);
}

async fn a_wrong_method_or_route_gets_the_error_shape(app: &TestApp) {
    // Found as an empty 405 body: every error must carry the documented shape.
    let (status, answer) = app.get("/v1/performance").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{answer}");
    assert_eq!(answer["error"]["code"], "method_not_allowed");
    let allow = app
        .client
        .delete(app.url("/v1/metrics"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(allow.status().as_u16(), 405);
    assert_eq!(allow.headers()["allow"], "POST");

    let (status, answer) = app.get("/v1/no-such-thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    assert_eq!(app.event_count().await, 0);
}

skafu_tests::on_both_backends!(
    malformed_json_is_a_bad_request,
    a_value_of_the_wrong_type_is_a_bad_request_naming_the_field,
    a_missing_field_is_a_bad_request_naming_the_field,
    one_unknown_unit_rejects_the_whole_batch_naming_its_index,
    numbers_that_are_not_finite_are_refused,
    timestamps_in_the_future_or_older_than_two_weeks_are_refused,
    empty_names_are_refused,
    a_span_that_ends_before_it_starts_is_refused,
    writes_to_unknown_traces_and_checks_are_not_found,
    a_body_over_one_mebibyte_is_too_large,
    a_batch_over_the_cloudwatch_limit_is_refused_whole,
    query_parameters_get_the_error_shape_and_name_the_parameter,
    a_wrong_method_or_route_gets_the_error_shape,
    dimensions_the_service_sets_are_not_overridden,
);

// The scheduler stays off here: should validation ever let a metadata address through,
// no run may fetch it.
skafu_tests::on_both_backends!(
    without_scheduler: a_health_check_endpoint_must_be_http_and_not_a_metadata_service,
);
