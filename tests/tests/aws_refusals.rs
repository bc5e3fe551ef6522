//! What moto cannot be made to do on demand: refuse one batch for good, or throttle.
//! A small CloudWatch stand-in on loopback answers `PutMetricData` in the awsQuery
//! protocol, refusing any request that carries a metric named `poison` and throttling
//! the first requests when told to. Everything it accepts is kept for the assertions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use skafu_tests::{eventually, spawn_app_publishing, Backend, TestApp};

const NS: &str = "http://monitoring.amazonaws.com/doc/2010-08-01/";

#[derive(Clone, Default)]
struct FakeCloudWatch {
    accepted: Arc<Mutex<Vec<String>>>,
    segments: Arc<Mutex<Vec<Value>>>,
    refused: Arc<AtomicUsize>,
    throttle_first: Arc<AtomicUsize>,
}

impl FakeCloudWatch {
    async fn start(throttle_first: usize) -> (Self, String) {
        let fake = Self::default();
        fake.throttle_first.store(throttle_first, Ordering::SeqCst);
        let state = fake.clone();
        let segments = fake.clone();
        let router = Router::new()
            .route(
                "/",
                post(move |body: String| {
                    let state = state.clone();
                    async move { state.answer(body) }
                }),
            )
            .route(
                "/TraceSegments",
                post(move |body: String| {
                    let state = segments.clone();
                    async move { state.answer_segments(&body) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (fake, format!("http://{addr}"))
    }

    fn answer(&self, body: String) -> axum::response::Response {
        let error = |status: StatusCode, code: &str, message: &str| {
            let xml = format!(
                "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
                 <Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
            );
            (status, [("content-type", "text/xml")], xml).into_response()
        };
        if self
            .throttle_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return error(StatusCode::BAD_REQUEST, "Throttling", "Rate exceeded");
        }
        if body.contains("MetricName=poison") {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValue",
                "poison is not welcome here",
            );
        }
        self.accepted.lock().expect("not poisoned").push(body);
        let xml = format!(
            "<PutMetricDataResponse xmlns=\"{NS}\"><ResponseMetadata><RequestId>r</RequestId>\
             </ResponseMetadata></PutMetricDataResponse>"
        );
        ([("content-type", "text/xml")], xml).into_response()
    }

    /// X-Ray's `PutTraceSegments` (rest-json): a document of the service `poison` is
    /// reported unprocessed inside a 200 answer, as X-Ray does for an invalid segment.
    fn answer_segments(&self, body: &str) -> axum::response::Response {
        let request: Value = serde_json::from_str(body).expect("a JSON request");
        let mut unprocessed = Vec::new();
        for doc in request["TraceSegmentDocuments"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let doc: Value = serde_json::from_str(doc.as_str().unwrap_or("null"))
                .expect("a JSON segment document");
            if doc["name"] == "poison" {
                unprocessed.push(json!({"Id": doc["id"], "ErrorCode": "InvalidSegment",
                                        "Message": "segment refused by the test"}));
            } else {
                self.segments.lock().expect("not poisoned").push(doc);
            }
        }
        axum::Json(json!({"UnprocessedTraceSegments": unprocessed})).into_response()
    }

    fn accepted_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .accepted
            .lock()
            .expect("not poisoned")
            .iter()
            .flat_map(|body| {
                body.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .filter(|(key, _)| key.ends_with(".MetricName"))
                    .map(|(_, value)| value.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names
    }
}

async fn last_event(app: &TestApp, id: &str) -> Value {
    let audit = app.get_ok(&format!("/v1/audit/Metrics/{id}")).await;
    audit["events"]
        .as_array()
        .and_then(|events| events.last().cloned())
        .unwrap_or_else(|| panic!("no events in {audit}"))
}

async fn record(app: &TestApp, name: &str) -> String {
    let answer = app
        .post_created(
            "/v1/metrics",
            json!({"service_name": "refusals",
                   "metrics": [{"name": name, "value": 1.0, "unit": "Count"}]}),
        )
        .await;
    answer["metrics_id"].as_str().expect("an id").to_string()
}

async fn a_refused_batch_is_failed_and_the_stream_goes_on(backend: Backend) {
    let (fake, endpoint) = FakeCloudWatch::start(0).await;
    let app = spawn_app_publishing(backend, &endpoint).await;

    let before = record(&app, "before").await;
    let poison = record(&app, "poison").await;
    let after = record(&app, "after").await;

    let status = eventually("the publisher to drain", || app.publisher_drained()).await;
    assert_eq!(status["failures"], 1, "{status}");
    assert_eq!(fake.accepted_names(), vec!["after", "before"]);
    assert!(fake.refused.load(Ordering::SeqCst) >= 1);

    for id in [&before, &after] {
        assert_eq!(last_event(&app, id).await["event_type"], "MetricsPublished");
    }
    let failed = last_event(&app, &poison).await;
    assert_eq!(failed["event_type"], "MetricsPublishFailed");
    let reason = failed["payload"]["MetricsPublishFailed"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {failed}"));
    assert!(
        reason.contains("InvalidParameterValue") && reason.contains("poison is not welcome"),
        "{reason}"
    );

    // The refusal is the last error shown.
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("poison is not welcome"), "{status}");

    // Half a batch refused: the reason says what was delivered all the same.
    let answer = app
        .post_created(
            "/v1/metrics",
            json!({"service_name": "refusals",
                   "metrics": [{"name": "half", "value": 1.0, "unit": "Count"}],
                   "custom_metrics": [{"name": "poison", "value": 1.0,
                                       "business_context": "test"}]}),
        )
        .await;
    let half = answer["metrics_id"].as_str().expect("an id").to_string();
    let failed = eventually("the half-refused batch to fail", || async {
        let last = last_event(&app, &half).await;
        (last["event_type"] == "MetricsPublishFailed").then_some(last)
    })
    .await;
    assert_eq!(
        failed["payload"]["MetricsPublishFailed"]["reason"],
        "Skafu/CustomMetrics refused: PutMetricData: InvalidParameterValue: \
         poison is not welcome here (the datums in Skafu were delivered)"
    );

    // Operators can list what was refused, newest first.
    let listed = app.get_ok("/v1/publishing/failures").await;
    let failures = listed["failures"].as_array().expect("a list");
    assert_eq!(failures.len(), 2, "{listed}");
    assert_eq!(failures[0]["aggregate_id"], half.as_str());
    assert_eq!(failures[1]["aggregate_id"], poison.as_str());
    assert_eq!(failures[1]["target"], "cloudwatch");
    assert_eq!(failures[1]["aggregate_type"], "Metrics");
    assert_eq!(
        failures[0]["reason"],
        failed["payload"]["MetricsPublishFailed"]["reason"]
    );
    let (status, _) = app.get("/v1/publishing/failures?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The stream is not blocked: a later batch goes through.
    let later = record(&app, "later").await;
    eventually("the later batch to be published", || async {
        (last_event(&app, &later).await["event_type"] == "MetricsPublished").then_some(())
    })
    .await;
    assert_eq!(
        fake.accepted_names(),
        vec!["after", "before", "half", "later"]
    );
    app.finish().await;
}

async fn throttling_is_retried_until_it_passes(backend: Backend) {
    let (fake, endpoint) = FakeCloudWatch::start(3).await;
    let app = spawn_app_publishing(backend, &endpoint).await;

    let id = record(&app, "patient").await;

    let status = eventually("the publisher to drain", || app.publisher_drained()).await;
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["retries"], 3, "{status}");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("Throttling"), "{status}");
    // Sent once it passed, and only once.
    assert_eq!(fake.accepted_names(), vec!["patient"]);
    assert_eq!(
        last_event(&app, &id).await["event_type"],
        "MetricsPublished"
    );
    app.finish().await;
}

async fn trace(app: &TestApp, service: &str) -> String {
    let started = app
        .post_created(
            "/v1/traces",
            json!({"service_name": service, "operation_name": "op"}),
        )
        .await;
    let id = started["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let (status, answer) = app
        .post(&format!("/v1/traces/{id}/complete"), json!({}))
        .await;
    assert!(status.is_success(), "{answer}");
    id
}

async fn a_segment_x_ray_reports_unprocessed_is_failed_not_lost(backend: Backend) {
    let (fake, endpoint) = FakeCloudWatch::start(0).await;
    let app = spawn_app_publishing(backend, &endpoint).await;

    let good = trace(&app, "orders").await;
    trace(&app, "poison").await;
    let also_good = trace(&app, "billing").await;

    let status = eventually("the publisher to drain", || app.publisher_drained()).await;
    assert_eq!(status["failures"], 1, "{status}");
    assert_eq!(status["segments_published"], 2, "{status}");
    // Traces share calls; a refused call is repeated per trace, so a good trace can
    // arrive twice with the same ids, which X-Ray treats as one (it overwrites).
    let sent: std::collections::BTreeSet<String> = fake
        .segments
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|doc| doc["trace_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = [good, also_good].into_iter().collect();
    assert_eq!(sent, expected);
    app.finish().await;
}

skafu_tests::for_each_backend!(
    a_refused_batch_is_failed_and_the_stream_goes_on,
    throttling_is_retried_until_it_passes,
    a_segment_x_ray_reports_unprocessed_is_failed_not_lost
);
