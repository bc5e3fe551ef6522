//! AWS faults: the emulator stopped or frozen while the service records data, and the
//! service killed with SIGKILL in the middle of publishing.
//!
//! Every test starts a private moto ([`Moto`]), so that stopping or freezing it touches
//! no other test. The service is spoken to over HTTP only; what reached AWS is read back
//! through the SDK. The SIGKILL tests run the `skafu-observability` binary: build it
//! first with `cargo build --workspace --bins`.
//!
//! One difference between moto and X-Ray matters here. Probed on moto 5.2.5 with boto3:
//! the same segment document (same `id`) put three times, the third time with another
//! `end_time`, came back from `BatchGetTraces` as three segments with that id. moto
//! appends every document it is sent, where X-Ray keeps one document per id and a later
//! one overwrites it. A trace the publisher sends again therefore shows up in moto as
//! extra copies; the tests accept a copy only when it is byte-identical to the first,
//! since that is the copy an overwrite on X-Ray makes invisible.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skafu_infrastructure::aws::cloudwatch::MAX_DATUMS_PER_REQUEST;
use skafu_infrastructure::aws::config::AwsClients;
use skafu_infrastructure::aws::xray::segment_id;
use skafu_infrastructure::db::Store;
use skafu_infrastructure::event_log;
use skafu_infrastructure::publisher::PUBLISHER;
use skafu_tests::aws::{self, list_metrics, metric_totals, segment_documents, Moto};
use skafu_tests::{
    eventually, log_path, spawn_app_publishing, spawn_binary_publishing, try_post, Backend,
    TestStore,
};
use tokio::task::JoinSet;

/// Batches recorded, and seen in the emulator, before it goes away.
const BEFORE_BATCHES: usize = 3;
/// Batches recorded while the emulator is away.
const OUTAGE_BATCHES: usize = 30;
/// Spans of the trace recorded while the emulator is away.
const OUTAGE_SPANS: usize = 2;
/// How soon `/healthz` must show an outage. A frozen emulator shows only once the SDK's
/// operation timeout of the tests (5 s) has expired.
const OUTAGE_SHOWS_WITHIN: Duration = Duration::from_secs(15);
/// How long the emulator stays frozen: past the SDK's 5 s timeout, so that calls time
/// out and are retried, and well under the publisher's own 20 s bound.
const FREEZE: Duration = Duration::from_secs(8);

/// Metrics writers in the SIGKILL test.
const BATCH_WRITERS: usize = 2;
/// Upper bound of batches per writer, so that the load stops by itself.
const MAX_BATCHES_PER_WRITER: usize = 250;
/// Trace writers in the SIGKILL test.
const TRACE_WRITERS: usize = 2;
/// Traces each trace writer records, each with [`SPANS_PER_TRACE`] spans.
const TRACES_PER_WRITER: usize = 10;
/// Spans per trace in the SIGKILL test.
const SPANS_PER_TRACE: usize = 3;
/// Datums the publisher must have sent before the kill.
const DATUMS_BEFORE_KILL: u64 = 40;
/// Completed traces acknowledged before the kill.
const TRACES_BEFORE_KILL: usize = 14;

/// A CloudWatch series: namespace, metric name, and dimensions in the order sent.
type Series = (String, String, Vec<(String, String)>);

/// `Sum` and `SampleCount` expected per series.
#[derive(Debug, Default)]
struct Expected(BTreeMap<Series, (f64, f64)>);

impl Expected {
    fn add(&mut self, namespace: &str, name: &str, dimensions: &[(&str, &str)], value: f64) {
        let dimensions = dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let entry = self
            .0
            .entry((namespace.to_string(), name.to_string(), dimensions))
            .or_default();
        entry.0 += value;
        entry.1 += 1.0;
    }
}

/// The service's HTTP API, started in process or as a child process.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn try_post(&self, path: &str, body: &Value) -> Option<(StatusCode, Value)> {
        try_post(&self.client, &format!("{}{path}", self.base), body)
            .await
            .ok()
    }

    async fn post_expecting(&self, path: &str, body: Value, expected: StatusCode) -> Value {
        let (status, answer) = self
            .try_post(path, &body)
            .await
            .unwrap_or_else(|| panic!("POST {path} got no answer"));
        assert_eq!(status, expected, "POST {path} {body} answered {answer}");
        answer
    }

    async fn get_ok(&self, path: &str) -> Value {
        let (status, body) =
            skafu_tests::get_json(&self.client, &format!("{}{path}", self.base)).await;
        assert_eq!(status, StatusCode::OK, "GET {path} answered {body}");
        body
    }

    async fn publisher(&self) -> Value {
        self.get_ok("/healthz").await["publisher"].clone()
    }
}

/// A service name of this run, so that its series are its own.
fn service_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("faults-{}", &id[..12])
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {value}"))
        .to_string()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records batch `i` of `phase`: two standard metrics and one business metric, all with
/// a `Batch` dimension of their own (`A-0`, `B-7`...), so that each datum is a series that
/// can be checked alone. Values are exact in binary, so sums compare exactly.
async fn record_batch(
    api: &Api,
    service: &str,
    phase: &str,
    i: usize,
    expected: &mut Expected,
) -> String {
    let batch = format!("{phase}-{i}");
    let latency = i as f64 + 0.5;
    let payload = 100.0 * (i + 1) as f64;
    let orders = (i % 4 + 1) as f64;
    let body = json!({
        "service_name": service,
        "dimensions": {"Batch": batch},
        "metrics": [
            {"name": "latency", "value": latency, "unit": "Milliseconds"},
            {"name": "payload", "value": payload, "unit": "Bytes"},
        ],
        "custom_metrics": [
            {"name": "orders", "value": orders, "business_context": "sales",
             "tags": {"Batch": batch}},
        ],
    });
    let answer = api
        .post_expecting("/v1/metrics", body, StatusCode::CREATED)
        .await;

    let standard = [("ServiceName", service), ("Batch", batch.as_str())];
    expected.add("Skafu", "latency", &standard, latency);
    expected.add("Skafu", "payload", &standard, payload);
    let custom = [
        ("ServiceName", service),
        ("BusinessContext", "sales"),
        ("Batch", batch.as_str()),
    ];
    expected.add("Skafu/CustomMetrics", "orders", &custom, orders);
    text(&answer, "metrics_id")
}

/// Starts a trace, adds `spans` spans and completes it; returns its id and span ids.
async fn record_trace(api: &Api, service: &str, spans: usize) -> (String, BTreeSet<String>) {
    let started = api
        .post_expecting(
            "/v1/traces",
            json!({"service_name": service, "operation_name": "checkout"}),
            StatusCode::CREATED,
        )
        .await;
    let trace = text(&started, "trace_id");
    let mut span_ids = BTreeSet::new();
    for s in 0..spans {
        let now = Utc::now();
        let span = json!({"name": format!("step-{s}"), "start_time": now, "end_time": now});
        let added = api
            .post_expecting(
                &format!("/v1/traces/{trace}/spans"),
                span,
                StatusCode::CREATED,
            )
            .await;
        span_ids.insert(text(&added, "span_id"));
    }
    api.post_expecting(
        &format!("/v1/traces/{trace}/complete"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    (trace, span_ids)
}

/// Waits until the publisher has nothing left to send and is not retrying.
async fn drained(api: &Api) -> Value {
    eventually("the publisher to drain its backlog", || async {
        let publisher = api.publisher().await;
        let done = publisher["backlog_events"] == json!(0) && publisher["retrying"] == json!(false);
        done.then_some(publisher)
    })
    .await
}

/// Waits, at most [`OUTAGE_SHOWS_WITHIN`], until `/healthz` shows the outage.
async fn outage_shows(api: &Api) -> Value {
    within(
        OUTAGE_SHOWS_WITHIN,
        "/healthz to show the outage",
        || async {
            let publisher = api.publisher().await;
            let shows = publisher["backlog_events"].as_i64().is_some_and(|n| n > 0)
                && publisher["retrying"] == json!(true)
                && !publisher["last_error"].is_null();
            shows.then_some(publisher)
        },
    )
    .await
}

/// What CloudWatch holds for each series of `expected`.
async fn totals(clients: &AwsClients, expected: &Expected) -> BTreeMap<Series, Option<(f64, f64)>> {
    let mut found = BTreeMap::new();
    for series in expected.0.keys() {
        let (namespace, name, dimensions) = series;
        let dims: Vec<(&str, &str)> = dimensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = metric_totals(clients, namespace, name, &dims).await;
        found.insert(series.clone(), got);
    }
    found
}

/// Asserts that CloudWatch holds exactly `expected`: every series, each with exactly
/// the recorded `Sum` and `SampleCount`.
async fn assert_exact_totals(clients: &AwsClients, expected: &Expected) {
    let want: BTreeMap<Series, Option<(f64, f64)>> = expected
        .0
        .iter()
        .map(|(series, totals)| (series.clone(), Some(*totals)))
        .collect();
    assert_eq!(totals(clients, expected).await, want);
}

/// Asserts that the batch was published once: its audit trail ends with one
/// `MetricsPublishing` followed by one `MetricsPublished`, and holds no failure. Returns
/// when `MetricsPublished` was recorded.
async fn published_once(api: &Api, metrics_id: &str) -> DateTime<Utc> {
    let audit = api.get_ok(&format!("/v1/audit/Metrics/{metrics_id}")).await;
    let events = audit["events"].as_array().expect("a list of events");
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    let tail = &types[types.len().saturating_sub(2)..];
    assert_eq!(
        tail,
        ["MetricsPublishing", "MetricsPublished"],
        "{metrics_id}: {types:?}"
    );
    let statuses = types.iter().filter(|t| t.starts_with("MetricsPublish"));
    assert_eq!(statuses.count(), 2, "{metrics_id}: {types:?}");
    let last = &events[events.len() - 1];
    serde_json::from_value(last["recorded_at"].clone())
        .unwrap_or_else(|e| panic!("no recorded_at in {last}: {e}"))
}

/// Checks that X-Ray holds `trace` whole and once: the ids of its documents and their
/// subsegments are exactly the segment id and the span ids, and a document returned more
/// than once is byte-identical to its first copy. Returns what is wrong, if anything.
fn trace_problem(trace: &str, spans: &BTreeSet<String>, docs: &[String]) -> Option<String> {
    if docs.is_empty() {
        return Some(format!("{trace}: not in X-Ray"));
    }
    let mut first_copy: BTreeMap<String, &String> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for raw in docs {
        let doc: Value = serde_json::from_str(raw).expect("a segment document is JSON");
        let id = text(&doc, "id");
        match first_copy.get(&id) {
            Some(first) if *first != raw => {
                return Some(format!(
                    "{trace}: two different documents {id}:\n{first}\n{raw}"
                ));
            }
            Some(_) => continue,
            None => first_copy.insert(id.clone(), raw),
        };
        ids.insert(id);
        for sub in doc["subsegments"].as_array().into_iter().flatten() {
            if !ids.insert(text(sub, "id")) {
                return Some(format!("{trace}: subsegment {} twice in {raw}", sub["id"]));
            }
        }
    }
    let mut expected = spans.clone();
    expected.insert(segment_id(trace));
    (ids != expected).then(|| format!("{trace}: ids {ids:?}, expected {expected:?}"))
}

/// Checks what CloudWatch holds after a freeze against `expected`, whose series hold one
/// datum each: every datum must be there, every copy with its value, and the only datums
/// counted more than once must be those of the one request in flight when moto froze,
/// once more for each call that timed out.
///
/// Exact totals cannot be asked for here. A call that timed out is not a call that
/// failed: the frozen moto holds the request in its socket and runs it once thawed, just
/// as CloudWatch may have run a request whose answer was lost, and `PutMetricData` has no
/// idempotency key. The publisher cannot tell, and sends again. In commit order and with
/// each batch's datums of one namespace in one request, that request holds the first
/// batches recorded during the freeze, in one namespace.
fn freeze_problem(
    expected: &Expected,
    found: &BTreeMap<Series, Option<(f64, f64)>>,
    timed_out: u64,
) -> Option<String> {
    // (namespace, batch) -> how many times each of its datums there was counted.
    let mut copies: BTreeMap<(String, usize), BTreeSet<u64>> = BTreeMap::new();
    for (series, (value, _)) in &expected.0 {
        let Some((sum, count)) = found.get(series).copied().flatten() else {
            return Some(format!("{series:?} is not in CloudWatch"));
        };
        if count < 1.0 || sum != value * count {
            return Some(format!(
                "{series:?}: sum {sum} of {count}, recorded {value}"
            ));
        }
        let (namespace, _, dimensions) = series;
        copies
            .entry((namespace.clone(), batch_index(dimensions)))
            .or_default()
            .insert(count as u64);
    }
    let repeated: BTreeMap<(String, usize), BTreeSet<u64>> = copies
        .into_iter()
        .filter(|(_, counts)| counts.iter().any(|n| *n > 1))
        .collect();
    if repeated.is_empty() {
        return None;
    }
    let namespaces: BTreeSet<&str> = repeated.keys().map(|(ns, _)| ns.as_str()).collect();
    let counts: BTreeSet<u64> = repeated.values().flatten().copied().collect();
    let batches: Vec<usize> = repeated.keys().map(|(_, batch)| *batch).collect();
    let one_request = namespaces.len() == 1
        && counts.len() == 1
        && counts.iter().all(|n| *n <= 1 + timed_out)
        && batches == (0..batches.len()).collect::<Vec<_>>();
    (!one_request).then(|| {
        format!("counted more than once beyond one request: {repeated:?} ({timed_out} timeouts)")
    })
}

/// The `i` of a `Batch` dimension `<phase>-<i>`.
fn batch_index(dimensions: &[(String, String)]) -> usize {
    dimensions
        .iter()
        .find(|(name, _)| name == "Batch")
        .and_then(|(_, value)| value.rsplit_once('-'))
        .and_then(|(_, i)| i.parse().ok())
        .unwrap_or_else(|| panic!("no Batch dimension in {dimensions:?}"))
}

/// Stops the emulator during a load, or freezes it (`SIGSTOP`) for [`FREEZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Killed and started again: connections are refused meanwhile, and moto comes back
    /// empty since it keeps everything in memory.
    Stop,
    /// Frozen and thawed: connections hang meanwhile, and moto keeps its state.
    Freeze,
}

/// Records phase A and sees it in moto, breaks moto, records phase B (batches and one
/// trace) while it is broken, mends it, and asserts what AWS ends up with. After a stop,
/// exactly phase B: moto lost phase A, and the publisher must not send it again. After a
/// freeze, exactly phase A, and phase B whole with no duplicates but those
/// [`freeze_problem`] allows. Either way every phase-B batch is marked published once and
/// the trace is in X-Ray once.
async fn emulator_fault_during_load(backend: Backend, fault: Fault) {
    let mut moto = Moto::start().await;
    let app = spawn_app_publishing(backend, &moto.endpoint()).await;
    let api = Api {
        client: app.client.clone(),
        base: app.url(""),
    };
    let clients = aws::clients(&moto.endpoint()).await;
    let service = service_name();
    let mut phase_a = Expected::default();
    for i in 0..BEFORE_BATCHES {
        record_batch(&api, &service, "A", i, &mut phase_a).await;
    }
    let before = drained(&api).await;
    assert_exact_totals(&clients, &phase_a).await;
    assert_eq!(before["last_error"], Value::Null, "{before}");

    let broken_at = tokio::time::Instant::now();
    match fault {
        Fault::Stop => moto.stop().await,
        Fault::Freeze => moto.signal("STOP").await,
    }
    let mut phase_b = Expected::default();
    let mut batches_b = Vec::new();
    for i in 0..OUTAGE_BATCHES {
        batches_b.push(record_batch(&api, &service, "B", i, &mut phase_b).await);
    }
    let (trace, spans) = record_trace(&api, &service, OUTAGE_SPANS).await;
    let during = outage_shows(&api).await;
    match fault {
        Fault::Stop => moto.restart().await,
        Fault::Freeze => {
            // The fault itself lasts a set time; nothing is awaited here.
            tokio::time::sleep_until(broken_at + FREEZE).await;
            moto.signal("CONT").await;
        }
    }
    let after = drained(&api).await;

    match fault {
        Fault::Stop => {
            assert_exact_totals(&clients, &phase_b).await;
            let resent: Vec<_> = totals(&clients, &phase_a)
                .await
                .into_iter()
                .filter(|(_, found)| found.is_some())
                .collect();
            assert!(resent.is_empty(), "phase A sent again: {resent:?}");
        }
        Fault::Freeze => {
            assert_exact_totals(&clients, &phase_a).await;
            // Every retry since phase A was a call to the frozen moto that timed out.
            let timed_out = after["retries"].as_u64().expect("a retry count");
            assert!(
                timed_out >= 1,
                "no call timed out during the freeze: {after}"
            );
            let found = totals(&clients, &phase_b).await;
            assert_eq!(freeze_problem(&phase_b, &found, timed_out), None);
            let counted: f64 = found.values().flatten().map(|(_, count)| count).sum();
            println!(
                "Freeze: {counted} datapoints for {} datums",
                phase_b.0.len()
            );
        }
    }
    for id in &batches_b {
        published_once(&api, id).await;
    }
    let parsed = segment_documents(&clients, std::slice::from_ref(&trace)).await;
    let segment = &parsed
        .get(&trace)
        .unwrap_or_else(|| panic!("{trace} is not in X-Ray"))[0];
    assert_eq!(segment["name"], json!(service), "{segment}");
    assert_eq!(segment["trace_id"], json!(trace), "{segment}");
    let raw = aws::raw_segment_documents(&clients, std::slice::from_ref(&trace)).await;
    let problem = trace_problem(&trace, &spans, raw.get(&trace).map_or(&[], Vec::as_slice));
    assert_eq!(problem, None);
    println!(
        "{fault:?}: during the outage, backlog {} and last error {}; {} retries in all",
        during["backlog_events"], during["last_error"], after["retries"]
    );

    app.finish().await;
    moto.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_down_during_load_then_back_on_sqlite() {
    emulator_fault_during_load(Backend::Sqlite, Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_down_during_load_then_back_on_postgres() {
    emulator_fault_during_load(Backend::Postgres, Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_frozen_during_load_then_thawed_on_sqlite() {
    emulator_fault_during_load(Backend::Sqlite, Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_frozen_during_load_then_thawed_on_postgres() {
    emulator_fault_during_load(Backend::Postgres, Fault::Freeze).await;
}

/// What the service acknowledged before it was killed.
#[derive(Debug, Default)]
struct Acknowledged {
    /// By the batch's `Batch` dimension: its id and the values of its `load` and `size`
    /// metrics.
    batches: BTreeMap<String, (String, f64, f64)>,
    /// Completed traces and their span ids.
    traces: BTreeMap<String, BTreeSet<String>>,
    /// Answers that were neither the expected status nor a dropped connection.
    refusals: Vec<String>,
}

fn lock(acknowledged: &Mutex<Acknowledged>) -> std::sync::MutexGuard<'_, Acknowledged> {
    acknowledged.lock().expect("not poisoned")
}

/// Records batches until the service stops answering. Every batch has a `Batch`
/// dimension of its own, so that each can be found in CloudWatch. Only standard metrics:
/// one namespace keeps each batch's datums in one request, which is what bounds the
/// duplicates after a crash.
async fn write_batches(writer: usize, api: Api, service: String, ack: Arc<Mutex<Acknowledged>>) {
    for i in 0..MAX_BATCHES_PER_WRITER {
        let key = format!("w{writer}-{i}");
        let load = (i % 7 + 1) as f64;
        let size = (writer * 1000 + i) as f64 + 0.25;
        if !write_batch(&api, &service, key, (load, size), &ack).await {
            return;
        }
    }
}

/// Records one batch with a `load` and a `size` metric; returns whether it was
/// acknowledged.
async fn write_batch(
    api: &Api,
    service: &str,
    key: String,
    (load, size): (f64, f64),
    ack: &Mutex<Acknowledged>,
) -> bool {
    let body = json!({
        "service_name": service,
        "dimensions": {"Batch": key},
        "metrics": [
            {"name": "load", "value": load, "unit": "Count"},
            {"name": "size", "value": size, "unit": "Bytes"},
        ],
    });
    let Some((status, answer)) = api.try_post("/v1/metrics", &body).await else {
        return false;
    };
    let mut seen = lock(ack);
    if status != StatusCode::CREATED {
        seen.refusals
            .push(format!("POST /v1/metrics: {status} {answer}"));
        return false;
    }
    seen.batches
        .insert(key, (text(&answer, "metrics_id"), load, size));
    true
}

/// Records [`TRACES_PER_WRITER`] completed traces, or fewer if the service stops
/// answering.
async fn write_traces(writer: usize, api: Api, service: String, ack: Arc<Mutex<Acknowledged>>) {
    let refused = |what: &str, status: StatusCode, answer: &Value| {
        lock(&ack)
            .refusals
            .push(format!("{what}: {status} {answer}"));
    };
    for t in 0..TRACES_PER_WRITER {
        let start = json!({"service_name": service, "operation_name": format!("op-{writer}-{t}")});
        let Some((status, answer)) = api.try_post("/v1/traces", &start).await else {
            return;
        };
        if status != StatusCode::CREATED {
            return refused("POST /v1/traces", status, &answer);
        }
        let trace = text(&answer, "trace_id");
        let mut spans = BTreeSet::new();
        for s in 0..SPANS_PER_TRACE {
            let now = Utc::now();
            let span = json!({"name": format!("span-{s}"), "start_time": now, "end_time": now,
                              "tags": {"n": s.to_string()}});
            let path = format!("/v1/traces/{trace}/spans");
            let Some((status, answer)) = api.try_post(&path, &span).await else {
                return;
            };
            if status != StatusCode::CREATED {
                return refused(&path, status, &answer);
            }
            spans.insert(text(&answer, "span_id"));
        }
        let path = format!("/v1/traces/{trace}/complete");
        let Some((status, answer)) = api.try_post(&path, &json!({})).await else {
            return;
        };
        if status != StatusCode::OK {
            return refused(&path, status, &answer);
        }
        lock(&ack).traces.insert(trace, spans);
    }
}

/// Kills the publishing service once part of a concurrent load has reached moto,
/// restarts it on the same store, and asserts that every acknowledged datum and completed
/// trace is in AWS, with duplicates bounded. CloudWatch may count twice only the datums
/// of the request in flight at the crash (`PutMetricData` is not idempotent): never a
/// batch confirmed published before the crash, never more than one extra copy, never
/// more than one request's worth. X-Ray may receive a trace again, but only as an
/// identical copy.
async fn sigkill_mid_publish_then_restart(backend: Backend) {
    let store = TestStore::fresh(backend).await;
    let mut moto = Moto::start().await;
    let endpoint = moto.endpoint();
    let clients = aws::clients(&endpoint).await;
    let log = log_path("aws-faults-sigkill");
    let service = spawn_binary_publishing(&store.database_url, &log, &endpoint).await;
    let api = Api {
        client: service.client.clone(),
        base: service.url(""),
    };
    let name = service_name();
    let ack = Arc::new(Mutex::new(Acknowledged::default()));
    let mut writers = JoinSet::new();
    for writer in 0..BATCH_WRITERS {
        writers.spawn(write_batches(
            writer,
            api.clone(),
            name.clone(),
            ack.clone(),
        ));
    }
    for writer in 0..TRACE_WRITERS {
        writers.spawn(write_traces(writer, api.clone(), name.clone(), ack.clone()));
    }

    let at_kill = eventually("part of the load to reach moto", || async {
        let publisher = api.publisher().await;
        let datums = publisher["datums_published"].as_u64().unwrap_or(0);
        let segments = publisher["segments_published"].as_u64().unwrap_or(0);
        let traces = lock(&ack).traces.len();
        (datums >= DATUMS_BEFORE_KILL && segments >= 1 && traces >= TRACES_BEFORE_KILL)
            .then_some(publisher)
    })
    .await;
    // A batch acknowledged right before the kill, with moto frozen so that its window
    // cannot complete: the kill then always falls mid-publish, even when the publisher
    // keeps up with the writers (it once had sent everything before the kill).
    moto.signal("STOP").await;
    let last = write_batch(&api, &name, "last-0".into(), (1.0, 0.25), &ack).await;
    service.kill().await;
    let killed_at = Utc::now();
    moto.signal("CONT").await;
    assert!(last, "the last batch before the kill was not acknowledged");
    let unpublished_at_kill = {
        let store = Store::open(&store.database_url)
            .await
            .expect("the store opens");
        let at = event_log::read_checkpoint(&store, PUBLISHER)
            .await
            .expect("the publisher's checkpoint");
        let (backlog, _) = event_log::backlog(&store, at).await.expect("the backlog");
        store.pool.close().await;
        backlog
    };
    while writers.join_next().await.is_some() {}
    let known = std::mem::take(&mut *lock(&ack));
    let listed = list_metrics(&clients, "Skafu", &name).await;
    let in_moto: BTreeSet<&str> = listed
        .iter()
        .filter(|(metric, _)| metric == "load")
        .filter_map(|(_, dims)| dims.get("Batch").map(String::as_str))
        .collect();
    let batches_before = known
        .batches
        .keys()
        .filter(|key| in_moto.contains(key.as_str()))
        .count();
    let trace_ids: Vec<String> = known.traces.keys().cloned().collect();
    let traces_before = aws::raw_segment_documents(&clients, &trace_ids).await.len();

    let restarted = spawn_binary_publishing(&store.database_url, &log, &endpoint).await;
    let api = Api {
        client: restarted.client.clone(),
        base: restarted.url(""),
    };
    drained(&api).await;

    assert!(known.refusals.is_empty(), "refused: {:?}", known.refusals);
    // Mid-publish: some of what was acknowledged had reached moto, and the publisher's
    // checkpoint was behind the log.
    assert!(
        batches_before > 0 && unpublished_at_kill > 0,
        "the kill came at the wrong time: {batches_before} of {} batches and \
         {traces_before} of {} traces were in moto, {unpublished_at_kill} events unpublished",
        known.batches.len(),
        known.traces.len()
    );
    let mut problems = Vec::new();
    let (mut expected_count, mut count_found) = (0u64, 0u64);
    // Datums of batches not confirmed published before the kill: only they may have been
    // counted twice.
    let (mut unconfirmed, mut repeated) = (0u64, 0u64);
    for (key, (metrics_id, load, size)) in &known.batches {
        let confirmed_before_kill = published_once(&api, metrics_id).await < killed_at;
        // Both datums of a batch travel in one request, so they are counted alike.
        let mut batch_copies = BTreeSet::new();
        for (metric, value) in [("load", *load), ("size", *size)] {
            let dims = [("ServiceName", name.as_str()), ("Batch", key.as_str())];
            expected_count += 1;
            unconfirmed += u64::from(!confirmed_before_kill);
            let found = metric_totals(&clients, "Skafu", metric, &dims).await;
            let copies = match found {
                // Every copy of a datum carries its value.
                Some((sum, count)) if count >= 1.0 && sum == value * count => count as u64,
                other => {
                    problems.push(format!("{key} {metric}={value}: {other:?}"));
                    continue;
                }
            };
            count_found += copies;
            repeated += copies - 1;
            batch_copies.insert(copies);
            if copies > 2 || (copies > 1 && confirmed_before_kill) {
                problems.push(format!(
                    "{key} {metric} counted {copies} times (confirmed before the kill: \
                     {confirmed_before_kill})"
                ));
            }
        }
        if batch_copies.len() > 1 {
            problems.push(format!("{key}: its datums counted {batch_copies:?} times"));
        }
    }
    assert!(
        problems.is_empty(),
        "datums lost or repeated: {problems:#?}"
    );
    let allowance = (MAX_DATUMS_PER_REQUEST as u64).min(unconfirmed);
    assert!(
        repeated <= allowance,
        "{count_found} datapoints for {expected_count} datums; at most {allowance} may repeat"
    );
    let docs = aws::raw_segment_documents(&clients, &trace_ids).await;
    let trace_problems: Vec<String> = known
        .traces
        .iter()
        .filter_map(|(trace, spans)| {
            let found = docs.get(trace).map_or(&[][..], Vec::as_slice);
            trace_problem(trace, spans, found)
        })
        .collect();
    assert!(trace_problems.is_empty(), "{trace_problems:#?}");
    let copies: usize = docs.values().map(Vec::len).sum();
    println!(
        "{backend:?}: killed at {at_kill}; {} batches and {} traces acknowledged, \
         {batches_before} batches and {traces_before} traces in moto before the restart; \
         {count_found} datapoints for {expected_count} datums, {unconfirmed} of them \
         unconfirmed at the kill; {copies} segment documents for {} traces",
        known.batches.len(),
        known.traces.len(),
        trace_ids.len(),
    );

    restarted.kill().await;
    moto.stop().await;
    store.remove().await;
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_then_restart_on_sqlite() {
    sigkill_mid_publish_then_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_then_restart_on_postgres() {
    sigkill_mid_publish_then_restart(Backend::Postgres).await;
}
