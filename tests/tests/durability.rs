//! Durability: what was acknowledged survives a restart and a SIGKILL, the read models
//! after a crash equal a full replay, and concurrent commands on one aggregate lose
//! nothing.
//!
//! The SIGKILL tests run the `skafu-observability` binary as a child process; build it
//! first with `cargo build -p skafu-infrastructure`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{json, Value};
use skafu_tests::{
    eventually, get_json, http_client, log_path, run_binary, spawn_binary, try_post, Backend,
    Behaviour, ServiceProcess, StubServer, TestApp, TestStore,
};
use tokio::task::JoinSet;

/// Acknowledged writes after which the service is killed.
const WRITES_BEFORE_KILL: usize = 200;
/// Upper bound of requests per writer, so the load stops by itself.
const MAX_REQUESTS_PER_WRITER: usize = 2_000;

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {value}"))
        .to_string()
}

fn span_now(name: &str) -> Value {
    let now = Utc::now();
    json!({"name": name, "start_time": now, "end_time": now, "tags": {"writer": name}})
}

/// Reads every path and returns the answers by path.
async fn read_all(
    client: &reqwest::Client,
    base: &str,
    paths: &[String],
) -> BTreeMap<String, (u16, Value)> {
    let mut answers = BTreeMap::new();
    for path in paths {
        let (status, body) = get_json(client, &format!("{base}{path}")).await;
        answers.insert(path.clone(), (status.as_u16(), body));
    }
    answers
}

async fn recorded_data_survives_a_restart(app: &mut TestApp) {
    let server = StubServer::start(Behaviour::Healthy).await;
    let check = json!({
        "service_name": "kept",
        "endpoint": server.endpoint(),
        "interval_seconds": 3600,
        "timeout_seconds": 10,
        "degraded_after_ms": 10_000,
    });
    app.post_created("/v1/health-checks", check).await;
    eventually("the scheduled first run", || async {
        let view = app.get_ok("/v1/health-checks/kept-http").await;
        (view["total_checks"] == json!(1)).then_some(())
    })
    .await;
    let batch = json!({
        "service_name": "kept",
        "dimensions": {"Env": "prod"},
        "metrics": [{"name": "latency", "value": 12.5, "unit": "Milliseconds"}],
        "custom_metrics": [{"name": "orders", "value": 2, "business_context": "sales"}],
    });
    let metrics = text(&app.post_created("/v1/metrics", batch).await, "metrics_id");
    for (ms, ok) in [(10.0, true), (30.0, false), (20.0, true)] {
        let sample = json!({"service_name": "kept", "operation_name": "pay",
                            "duration_ms": ms, "success": ok});
        app.post_created("/v1/performance", sample).await;
    }
    let started = app
        .post_created(
            "/v1/traces",
            json!({"service_name": "kept", "operation_name": "pay"}),
        )
        .await;
    let trace = text(&started, "trace_id");
    app.post_created(&format!("/v1/traces/{trace}/spans"), span_now("db"))
        .await;
    app.post_created(
        &format!("/v1/traces/{trace}/annotations"),
        json!({"key": "tier", "value": "gold"}),
    )
    .await;
    app.post(&format!("/v1/traces/{trace}/complete"), json!({}))
        .await;
    let paths: Vec<String> = [
        format!("/v1/metrics/{metrics}"),
        format!("/v1/traces/{trace}"),
        "/v1/traces?limit=1000".to_string(),
        "/v1/services/kept/performance?window_minutes=60".to_string(),
        "/v1/health-checks/kept-http".to_string(),
        "/v1/health".to_string(),
        format!("/v1/audit/traces/{trace}"),
        format!("/v1/audit/metrics/{metrics}"),
    ]
    .into();
    let before = read_all(&app.client, &app.url(""), &paths).await;
    let events_before = app.event_count().await;

    app.restart().await;

    let after = read_all(&app.client, &app.url(""), &paths).await;
    assert!(
        before.values().all(|(status, _)| *status == 200),
        "{before:?}"
    );
    assert_eq!(after, before);
    assert_eq!(app.event_count().await, events_before);
    assert_eq!(
        after[&paths[1]].1["spans"].as_array().map(Vec::len),
        Some(1)
    );
}

async fn twenty_concurrent_spans_on_one_trace_are_all_kept(app: &mut TestApp) {
    let started = app
        .post_created(
            "/v1/traces",
            json!({"service_name": "busy", "operation_name": "fan-out"}),
        )
        .await;
    let trace = text(&started, "trace_id");
    let url = app.url(&format!("/v1/traces/{trace}/spans"));
    let mut requests = JoinSet::new();

    for i in 0..20 {
        let (client, url) = (app.client.clone(), url.clone());
        requests.spawn(async move { try_post(&client, &url, &span_now(&format!("s{i}"))).await });
    }
    let mut acknowledged = BTreeSet::new();
    while let Some(joined) = requests.join_next().await {
        let (status, body) = joined
            .expect("the request task ran")
            .expect("the service answered");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        acknowledged.insert(text(&body, "span_id"));
    }

    let stored = app.get_ok(&format!("/v1/traces/{trace}")).await;
    let spans: BTreeSet<String> = stored["spans"]
        .as_array()
        .expect("a list of spans")
        .iter()
        .map(|s| text(s, "span_id"))
        .collect();
    assert_eq!(acknowledged.len(), 20);
    assert_eq!(spans, acknowledged);
    let names: BTreeSet<String> = stored["spans"]
        .as_array()
        .expect("a list of spans")
        .iter()
        .map(|s| text(s, "name"))
        .collect();
    assert_eq!(names.len(), 20);
}

skafu_tests::on_both_backends!(
    recorded_data_survives_a_restart,
    twenty_concurrent_spans_on_one_trace_are_all_kept,
);

/// What the service acknowledged (2xx) before it was killed.
#[derive(Default)]
struct Acknowledged {
    metrics: Vec<String>,
    traces: Vec<String>,
    spans: Vec<(String, String)>,
    /// Answers that were neither 2xx nor a dropped connection.
    refusals: Vec<String>,
}

/// One writer's loop: sends requests until the service stops answering or the bound is
/// reached, and records what was acknowledged.
async fn write_until_killed(
    writer: usize,
    base: String,
    shared_trace: String,
    acknowledged: Arc<Mutex<Acknowledged>>,
    count: Arc<AtomicUsize>,
) {
    let client = http_client();
    for i in 0..MAX_REQUESTS_PER_WRITER {
        let (path, body) = match (writer, i % 4) {
            (0, _) => (
                "/v1/metrics".to_string(),
                json!({"service_name": "load", "dimensions": {"Writer": "0"},
                       "metrics": [{"name": "m", "value": i, "unit": "Count"}]}),
            ),
            (1, _) => (
                "/v1/performance".to_string(),
                json!({"service_name": "load", "operation_name": "op",
                       "duration_ms": (i % 97) as f64 + 0.5, "success": i % 5 != 0}),
            ),
            (_, 0) => (
                "/v1/traces".to_string(),
                json!({"service_name": "load", "operation_name": format!("w{writer}-{i}")}),
            ),
            _ => (
                format!("/v1/traces/{shared_trace}/spans"),
                span_now(&format!("w{writer}-{i}")),
            ),
        };
        let Ok((status, answer)) = try_post(&client, &format!("{base}{path}"), &body).await else {
            return;
        };
        let mut seen = acknowledged.lock().expect("not poisoned");
        if !status.is_success() {
            seen.refusals
                .push(format!("POST {path} answered {status}: {answer}"));
            return;
        }
        if let Some(id) = answer["metrics_id"].as_str() {
            seen.metrics.push(id.to_string());
        } else if let Some(span) = answer["span_id"].as_str() {
            seen.spans.push((shared_trace.clone(), span.to_string()));
        } else if let Some(trace) = answer["trace_id"].as_str() {
            seen.traces.push(trace.to_string());
        }
        drop(seen);
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every read model reachable over HTTP for the ids in `known`, plus the projector's
/// position and the event count.
async fn snapshot(service: &ServiceProcess, known: &Acknowledged) -> BTreeMap<String, Value> {
    let mut paths: Vec<String> = vec![
        "/v1/health".to_string(),
        "/v1/health-checks".to_string(),
        "/v1/traces?limit=1000".to_string(),
        "/v1/services/load/performance?window_minutes=60".to_string(),
    ];
    paths.extend(known.traces.iter().map(|id| format!("/v1/traces/{id}")));
    paths.extend(known.metrics.iter().map(|id| format!("/v1/metrics/{id}")));
    let answers = read_all(&service.client, &service.url(""), &paths).await;
    let mut models = BTreeMap::new();
    for (path, (status, body)) in answers {
        assert_eq!(status, 200, "GET {path} answered {body}");
        models.insert(path, body);
    }
    let health = service.get_ok("/healthz").await;
    models.insert("events".to_string(), health["events"].clone());
    models.insert(
        "projector".to_string(),
        health["projector"]["position"].clone(),
    );
    models
}

/// A snapshot once the projector has caught up: two reads half a second apart (twice
/// the projector's polling period) that agree.
async fn settled_snapshot(
    service: &ServiceProcess,
    known: &Acknowledged,
) -> BTreeMap<String, Value> {
    let previous = Mutex::new(snapshot(service, known).await);
    eventually("the read models to settle", || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = snapshot(service, known).await;
        let mut previous = previous.lock().expect("not poisoned");
        if *previous == next {
            Some(next)
        } else {
            *previous = next;
            None
        }
    })
    .await
}

async fn acknowledged_writes_survive_a_sigkill_and_read_models_equal_a_replay(backend: Backend) {
    let store = TestStore::fresh(backend).await;
    let url = store.database_url.clone();
    let log = log_path("sigkill");
    let server = StubServer::start(Behaviour::Healthy).await;
    let service = spawn_binary(&url, &log).await;
    let check = json!({"service_name": "load", "endpoint": server.endpoint(),
                       "interval_seconds": 3600, "timeout_seconds": 10,
                       "degraded_after_ms": 10_000});
    service.post_created("/v1/health-checks", check).await;
    eventually("the scheduled first run", || async {
        let view = service.get_ok("/v1/health-checks/load-http").await;
        (view["total_checks"] == json!(1)).then_some(())
    })
    .await;
    let started = service
        .post_created(
            "/v1/traces",
            json!({"service_name": "load", "operation_name": "shared"}),
        )
        .await;
    let shared_trace = text(&started, "trace_id");
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    acknowledged
        .lock()
        .expect("not poisoned")
        .traces
        .push(shared_trace.clone());
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = JoinSet::new();
    for writer in 0..4 {
        writers.spawn(write_until_killed(
            writer,
            service.url(""),
            shared_trace.clone(),
            acknowledged.clone(),
            count.clone(),
        ));
    }
    eventually("enough acknowledged writes", || async {
        (count.load(Ordering::SeqCst) >= WRITES_BEFORE_KILL).then_some(())
    })
    .await;

    service.kill().await;
    while writers.join_next().await.is_some() {}
    let restarted = spawn_binary(&url, &log).await;
    let known = std::mem::take(&mut *acknowledged.lock().expect("not poisoned"));
    let after_crash = settled_snapshot(&restarted, &known).await;
    let stopped_cleanly = restarted.terminate().await;
    let replayed = run_binary(&["replay", "--database-url", &url], &log).await;
    let after_replay_service = spawn_binary(&url, &log).await;
    let after_replay = settled_snapshot(&after_replay_service, &known).await;
    after_replay_service.kill().await;

    println!(
        "acknowledged before SIGKILL: {} batches, {} traces, {} spans; {} events after",
        known.metrics.len(),
        known.traces.len(),
        known.spans.len(),
        after_crash["events"]
    );
    assert!(
        known.refusals.is_empty(),
        "refused before the kill: {:?}",
        known.refusals
    );
    assert!(
        known.metrics.len() >= 2 && known.spans.len() >= 2,
        "the load did not reach every writer: {} batches, {} spans",
        known.metrics.len(),
        known.spans.len()
    );
    assert!(stopped_cleanly, "SIGTERM did not stop the service cleanly");
    assert!(replayed, "`replay` failed; see {}", log.display());
    assert_eq!(
        after_replay, after_crash,
        "read models differ from a replay"
    );
    let shared = &after_crash[&format!("/v1/traces/{shared_trace}")];
    let stored_spans: BTreeSet<&str> = shared["spans"]
        .as_array()
        .expect("a list of spans")
        .iter()
        .filter_map(|s| s["span_id"].as_str())
        .collect();
    let missing: Vec<&(String, String)> = known
        .spans
        .iter()
        .filter(|(_, span)| !stored_spans.contains(span.as_str()))
        .collect();
    assert!(missing.is_empty(), "acknowledged spans lost: {missing:?}");
    let listed = after_crash["/v1/traces?limit=1000"]["traces"]
        .as_array()
        .expect("a list of traces")
        .len();
    assert!(listed >= known.traces.len(), "{listed} traces listed");
    let samples = &after_crash["/v1/services/load/performance?window_minutes=60"]["operations"];
    let recorded = samples[0]["count"].as_u64().unwrap_or(0);
    let acknowledged_samples = known
        .metrics
        .iter()
        .filter(|id| {
            after_crash[&format!("/v1/metrics/{id}")]["source"]["kind"] == json!("performance")
        })
        .count() as u64;
    assert!(
        recorded >= acknowledged_samples,
        "{recorded} samples for {acknowledged_samples} acknowledged"
    );
    store.remove().await;
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_and_read_models_equal_a_replay_on_sqlite() {
    acknowledged_writes_survive_a_sigkill_and_read_models_equal_a_replay(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_and_read_models_equal_a_replay_on_postgres() {
    acknowledged_writes_survive_a_sigkill_and_read_models_equal_a_replay(Backend::Postgres).await;
}

/// Found: SIGTERM during an on-demand run of a hanging endpoint kept the process alive
/// until the run ended, up to (retries + 1) × timeout = 11 minutes. In-flight requests now
/// get a grace period of 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_a_run_of_a_hanging_endpoint() {
    let hanging = StubServer::start(Behaviour::Slow(Duration::from_secs(3600))).await;
    let store = TestStore::fresh(Backend::Sqlite).await;
    let log = log_path("sigterm-hang");
    let service = spawn_binary(&store.database_url, &log).await;
    let registered = service
        .post_created(
            "/v1/health-checks",
            json!({"service_name": "stuck", "endpoint": hanging.endpoint(),
                   "timeout_seconds": 60, "max_retries": 10, "interval_seconds": 86400}),
        )
        .await;
    let id = text(&registered, "health_check_id");
    let client = http_client();
    let run_url = service.url(&format!("/v1/health-checks/{id}/run"));
    let run = tokio::spawn(async move { client.post(run_url).send().await });
    eventually("the run to reach the hanging endpoint", || async {
        (!hanging.user_agents().is_empty()).then_some(())
    })
    .await;

    let asked = tokio::time::Instant::now();
    let exited_cleanly = service.terminate().await;
    let took = asked.elapsed();

    assert!(exited_cleanly, "see {}", log.display());
    // The grace period plus a margin for a loaded machine; the run itself would take
    // up to 11 minutes.
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    assert!(
        run.await.expect("the request task").is_err(),
        "the cut-off run answered"
    );
    store.remove().await;
}
