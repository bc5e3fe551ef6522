//! Health checks probing real HTTP servers on loopback: statuses, failure reasons,
//! counters, uptime, retries, the system overview, registration rules.
//!
//! Every check is registered with a one-hour interval, so the scheduler runs it exactly
//! once, right after registration; the tests wait for that run and then run the check
//! on demand a known number of times.

use axum::http::StatusCode;
use serde_json::{json, Value};
use skafu_tests::{assert_fields, eventually, free_port, Behaviour, StubServer, TestApp};
use std::time::Duration;

/// On-demand runs after the scheduled one.
const RUNS: u64 = 2;

/// A check that the scheduler runs once, with no retry and a one-second timeout.
fn check(service: &str, endpoint: &str) -> Value {
    json!({
        "service_name": service,
        "endpoint": endpoint,
        "interval_seconds": 3600,
        "timeout_seconds": 1,
        "max_retries": 0,
    })
}

/// A check of a server that must count as fast: the timeout and the degraded threshold
/// are generous so that a loaded machine cannot turn a healthy answer into another
/// status.
fn relaxed_check(service: &str, endpoint: &str) -> Value {
    let mut body = check(service, endpoint);
    body["timeout_seconds"] = json!(10);
    body["degraded_after_ms"] = json!(10_000);
    body
}

/// Registers a check and waits for its scheduled first run; returns its id.
async fn register_and_await_first_run(app: &TestApp, body: Value) -> String {
    let registered = app.post_created("/v1/health-checks", body).await;
    let id = registered["health_check_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no health_check_id in {registered}"))
        .to_string();
    let path = format!("/v1/health-checks/{id}");
    eventually("the scheduled first run", || async {
        let view = app.get_ok(&path).await;
        (view["total_checks"] == json!(1)).then_some(())
    })
    .await;
    id
}

/// Runs the check `RUNS` times on demand; returns the last answer.
async fn run_on_demand(app: &TestApp, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..RUNS {
        let (status, body) = app
            .post(&format!("/v1/health-checks/{id}/run"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "run answered {body}");
        last = body;
    }
    last
}

fn assert_failed_run(view: &Value, reason: &str) {
    assert_fields(
        view,
        json!({
            "status": "unhealthy",
            "consecutive_failures": RUNS + 1,
            "consecutive_successes": 0,
            "total_checks": RUNS + 1,
            "successful_checks": 0,
            "failure_reason": reason,
            "uptime_percentage": 0.0,
        }),
    );
    assert_eq!(view["uptime"]["last_24h"], json!(0.0), "{view}");
    assert_eq!(view["uptime"]["since_registration"], json!(0.0), "{view}");
    let message = view["error_message"].as_str().unwrap_or_default();
    assert!(!message.trim().is_empty(), "no error message in {view}");
    assert_eq!(view["run"]["success"], json!(false), "{view}");
    assert_eq!(view["run"]["reason"], json!(reason), "{view}");
}

async fn a_reachable_endpoint_is_healthy_and_sees_the_checker_user_agent(app: &TestApp) {
    let server = StubServer::start(Behaviour::Healthy).await;
    let id = register_and_await_first_run(app, relaxed_check("payments", &server.endpoint())).await;

    let view = run_on_demand(app, &id).await;

    assert_eq!(id, "payments-http");
    assert_fields(
        &view,
        json!({
            "health_check_id": "payments-http",
            "service_name": "payments",
            "endpoint": server.endpoint(),
            "status": "healthy",
            "consecutive_successes": RUNS + 1,
            "consecutive_failures": 0,
            "total_checks": RUNS + 1,
            "successful_checks": RUNS + 1,
            "last_status_code": 200,
            "last_attempts": 1,
            "error_message": null,
            "failure_reason": null,
            "uptime_percentage": 100.0,
        }),
    );
    assert_eq!(view["uptime"]["last_24h"], json!(100.0), "{view}");
    assert_eq!(view["uptime"]["last_7d"], json!(100.0), "{view}");
    assert_eq!(view["run"]["success"], json!(true), "{view}");
    assert_eq!(view["run"]["status_code"], json!(200), "{view}");
    assert!(
        view["response_time_ms"].as_f64().unwrap_or(-1.0) >= 0.0,
        "{view}"
    );
    let agents = server.user_agents();
    assert_eq!(agents.len() as u64, RUNS + 1, "{agents:?}");
    assert!(
        agents.iter().all(|a| a == "Skafu-HealthChecker/payments"),
        "{agents:?}"
    );
}

async fn an_endpoint_answering_500_is_unhealthy_with_an_unexpected_status(app: &TestApp) {
    let server = StubServer::start(Behaviour::Status(500)).await;
    let id = register_and_await_first_run(app, relaxed_check("ledger", &server.endpoint())).await;

    let view = run_on_demand(app, &id).await;

    assert_failed_run(&view, "unexpected_status");
    assert_eq!(view["last_status_code"], json!(500), "{view}");
    assert_eq!(view["run"]["status_code"], json!(500), "{view}");
    assert_eq!(view["last_attempts"], json!(1), "{view}");
}

async fn an_endpoint_slower_than_the_timeout_is_unhealthy_with_a_timeout(app: &TestApp) {
    let server = StubServer::start(Behaviour::Slow(Duration::from_secs(10))).await;
    let id = register_and_await_first_run(app, check("search", &server.endpoint())).await;

    let view = run_on_demand(app, &id).await;

    assert_failed_run(&view, "timeout");
    assert_eq!(view["last_status_code"], json!(null), "{view}");
}

async fn a_closed_port_is_unhealthy_with_connection_refused(app: &TestApp) {
    let endpoint = format!("http://127.0.0.1:{}/health", free_port());
    let id = register_and_await_first_run(app, check("inventory", &endpoint)).await;

    let view = run_on_demand(app, &id).await;

    assert_failed_run(&view, "connection_refused");
    assert_eq!(view["last_status_code"], json!(null), "{view}");
    assert_eq!(view["last_attempts"], json!(1), "{view}");
}

async fn a_failing_check_with_one_retry_makes_two_attempts_per_run(app: &TestApp) {
    let endpoint = format!("http://127.0.0.1:{}/health", free_port());
    let mut body = check("mailer", &endpoint);
    body["max_retries"] = json!(1);
    let id = register_and_await_first_run(app, body).await;

    let view = run_on_demand(app, &id).await;

    assert_failed_run(&view, "connection_refused");
    assert_eq!(view["last_attempts"], json!(2), "{view}");
    assert_eq!(view["run"]["attempts"], json!(2), "{view}");
}

async fn a_success_slower_than_the_threshold_is_degraded(app: &TestApp) {
    let server = StubServer::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let mut body = relaxed_check("reports", &server.endpoint());
    body["degraded_after_ms"] = json!(100);
    let id = register_and_await_first_run(app, body).await;

    let view = run_on_demand(app, &id).await;

    assert_fields(
        &view,
        json!({
            "status": "degraded",
            "consecutive_successes": RUNS + 1,
            "consecutive_failures": 0,
            "successful_checks": RUNS + 1,
            "last_status_code": 200,
            "last_attempts": 1,
            "failure_reason": null,
            "uptime_percentage": 100.0,
        }),
    );
    assert!(
        view["response_time_ms"].as_f64().unwrap_or(0.0) >= 300.0,
        "{view}"
    );
}

async fn a_success_that_needed_a_retry_is_degraded(app: &TestApp) {
    let server = StubServer::start(Behaviour::FailsEveryOtherRequest).await;
    let mut body = relaxed_check("billing", &server.endpoint());
    body["max_retries"] = json!(1);
    let id = register_and_await_first_run(app, body).await;

    let view = run_on_demand(app, &id).await;

    assert_fields(
        &view,
        json!({
            "status": "degraded",
            "consecutive_successes": RUNS + 1,
            "last_attempts": 2,
            "last_status_code": 200,
            "uptime_percentage": 100.0,
        }),
    );
    assert_eq!(view["run"]["attempts"], json!(2), "{view}");
    assert_eq!(server.user_agents().len() as u64, 2 * (RUNS + 1));
}

async fn the_system_overview_counts_every_check_and_is_as_bad_as_the_worst(app: &TestApp) {
    let healthy = StubServer::start(Behaviour::Healthy).await;
    let failing = StubServer::start(Behaviour::Status(500)).await;
    let slow = StubServer::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let closed = format!("http://127.0.0.1:{}/health", free_port());
    register_and_await_first_run(app, relaxed_check("web", &healthy.endpoint())).await;
    let mut degraded = relaxed_check("api", &slow.endpoint());
    degraded["degraded_after_ms"] = json!(100);
    register_and_await_first_run(app, degraded).await;
    let (status, before) = app.get("/v1/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_fields(
        &before,
        json!({"overall_status": "degraded", "healthy_services": 2, "total_services": 2}),
    );
    register_and_await_first_run(app, relaxed_check("db", &failing.endpoint())).await;
    register_and_await_first_run(app, check("queue", &closed)).await;

    let overview = app.get_ok("/v1/health").await;

    assert_fields(
        &overview,
        json!({
            "overall_status": "unhealthy",
            "healthy_services": 2,
            "degraded_services": 1,
            "unhealthy_services": 2,
            "unknown_services": 0,
            "total_services": 4,
            "health_percentage": 50.0,
        }),
    );
    let checks = &overview["individual_checks"];
    let ids: Vec<&String> = checks
        .as_object()
        .expect("a map of checks")
        .keys()
        .collect();
    assert_eq!(ids, ["api-http", "db-http", "queue-http", "web-http"]);
    assert_eq!(checks["web-http"]["status"], json!("healthy"));
    assert_eq!(checks["api-http"]["status"], json!("degraded"));
    assert_eq!(checks["db-http"]["status"], json!("unhealthy"));
    assert_eq!(checks["db-http"]["consecutive_failures"], json!(1));
    assert_eq!(checks["queue-http"]["status"], json!("unhealthy"));
    assert!(
        checks["queue-http"]["error_message"].is_string(),
        "{checks}"
    );
    assert_eq!(checks["web-http"]["error_message"], json!(null));
}

async fn registering_the_same_check_twice_is_idempotent_but_another_endpoint_conflicts(
    app: &TestApp,
) {
    let server = StubServer::start(Behaviour::Healthy).await;
    let other = StubServer::start(Behaviour::Healthy).await;
    let definition = relaxed_check("orders", &server.endpoint());
    let first = app
        .post_created("/v1/health-checks", definition.clone())
        .await;

    let (again_status, again) = app.post("/v1/health-checks", definition).await;
    let (moved_status, moved) = app
        .post(
            "/v1/health-checks",
            relaxed_check("orders", &other.endpoint()),
        )
        .await;

    assert_eq!(again_status, StatusCode::CREATED, "{again}");
    assert_eq!(again["health_check_id"], first["health_check_id"]);
    assert_eq!(moved_status, StatusCode::CONFLICT, "{moved}");
    assert_eq!(moved["error"]["code"], json!("conflict"), "{moved}");
    let (_, stored) = app.get("/v1/health-checks/orders-http").await;
    assert_eq!(stored["endpoint"], json!(server.endpoint()));
    let (_, audit) = app.get("/v1/audit/health-checks/orders-http").await;
    let registrations = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == json!("HealthCheckRegistered"))
        .count();
    assert_eq!(registrations, 1, "{audit}");
}

async fn an_unknown_check_can_be_neither_read_nor_run(app: &TestApp) {
    let before = app.event_count().await;

    let (read, read_body) = app.get("/v1/health-checks/ghost-http").await;
    let (run, run_body) = app
        .post("/v1/health-checks/ghost-http/run", json!({}))
        .await;

    assert_eq!(read, StatusCode::NOT_FOUND, "{read_body}");
    assert_eq!(run, StatusCode::NOT_FOUND, "{run_body}");
    assert_eq!(run_body["error"]["code"], json!("not_found"));
    assert_eq!(app.event_count().await, before);
}

async fn a_check_lists_its_definition_and_defaults(app: &TestApp) {
    let server = StubServer::start(Behaviour::Healthy).await;
    let body = json!({"service_name": "catalog", "endpoint": server.endpoint()});

    let registered = app.post_created("/v1/health-checks", body).await;

    assert_fields(
        &registered,
        json!({
            "health_check_id": "catalog-http",
            "check_type": "http",
            "interval_seconds": 30,
            "timeout_seconds": 5,
            "max_retries": 3,
            "degraded_after_ms": 1000,
            "expected_status": null,
        }),
    );
    let listed = app.get_ok("/v1/health-checks").await;
    let ids: Vec<&Value> = listed["health_checks"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| &c["health_check_id"])
        .collect();
    assert_eq!(ids, [&json!("catalog-http")]);
}

async fn an_expected_status_replaces_any_2xx_as_the_healthy_answer(app: &TestApp) {
    let teapot = StubServer::start(Behaviour::Status(418)).await;
    let plain = StubServer::start(Behaviour::Healthy).await;
    let mut accepts_418 = relaxed_check("teapot", &teapot.endpoint());
    accepts_418["expected_status"] = json!(418);
    let mut wants_204 = relaxed_check("strict", &plain.endpoint());
    wants_204["expected_status"] = json!(204);

    let teapot_id = register_and_await_first_run(app, accepts_418).await;
    let strict_id = register_and_await_first_run(app, wants_204).await;

    let teapot_view = app.get_ok(&format!("/v1/health-checks/{teapot_id}")).await;
    let strict_view = app.get_ok(&format!("/v1/health-checks/{strict_id}")).await;
    assert_fields(
        &teapot_view,
        json!({"status": "healthy", "last_status_code": 418, "expected_status": 418}),
    );
    assert_fields(
        &strict_view,
        json!({"status": "unhealthy", "last_status_code": 200,
               "failure_reason": "unexpected_status"}),
    );
}

skafu_tests::on_both_backends!(
    a_reachable_endpoint_is_healthy_and_sees_the_checker_user_agent,
    an_endpoint_answering_500_is_unhealthy_with_an_unexpected_status,
    an_endpoint_slower_than_the_timeout_is_unhealthy_with_a_timeout,
    a_closed_port_is_unhealthy_with_connection_refused,
    a_failing_check_with_one_retry_makes_two_attempts_per_run,
    a_success_slower_than_the_threshold_is_degraded,
    a_success_that_needed_a_retry_is_degraded,
    the_system_overview_counts_every_check_and_is_as_bad_as_the_worst,
    registering_the_same_check_twice_is_idempotent_but_another_endpoint_conflicts,
    an_unknown_check_can_be_neither_read_nor_run,
    a_check_lists_its_definition_and_defaults,
    an_expected_status_replaces_any_2xx_as_the_healthy_answer,
);
