//! The AWS section of `skafu-bench`: the publisher against a private moto on 127.0.0.1.
//!
//! - **Publish throughput**: a backlog of batches of [`METRICS_PER_BATCH`] metrics is
//!   recorded with publishing off, then the service is started again with its publisher
//!   on and timed, from the call to `start` until `/healthz` reports
//!   `publisher.backlog_events == 0`. The baseline is the same datums, read back from the
//!   log, sent one request after another with `CloudWatchSender::put` in the 1000-datum
//!   chunks of `chunk_for_put`; moto is reset before each, so both write into an empty
//!   emulator. With batches of 100 metrics every publisher window of 1000 events carries
//!   10 whole batches, so the publisher's requests also hold 1000 datums: moto parses an
//!   awsQuery request in time that grows with the square of its datums, so requests of
//!   another size would compare moto's parser rather than the publisher.
//! - **Publisher overhead**: the same, with one metric per batch and a CloudWatch
//!   stand-in on loopback that answers at once, so that what is timed is the publisher:
//!   reading the log, two status events per batch, packing.
//! - **End-to-end latency**: one single-metric batch every 1/rate s, each metric named
//!   after its request; a background task lists the run's metrics every
//!   [`POLL_EVERY`] and notes when each name first shows. Latency is that moment minus
//!   the moment the API's 201 arrived, so it is an upper bound, coarse by the gap between
//!   two listings (printed).
//!
//! moto runs from `.venv-moto/bin/moto_server` (`bash scripts/moto.sh install`; another
//! one with `SKAFU_BENCH_MOTO_SERVER`) on a free loopback port, and is stopped by its
//! process id at the end. Without it the section is skipped. The SDK only ever sees that
//! endpoint, with dummy credentials and no retries.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use aws_sdk_cloudwatch::config::Credentials;
use aws_sdk_cloudwatch::types::DimensionFilter;
use cqrs_es::Aggregate;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use skafu_domain::metrics::{Metrics, MetricsEvent};
use skafu_infrastructure::aws::cloudwatch::{self, CloudWatchSender, STANDARD_NAMESPACE};
use skafu_infrastructure::aws::config::{load_aws, AwsClients, AwsOverrides};
use skafu_infrastructure::db::Store;
use skafu_infrastructure::event_log::{self, Checkpoint};
use skafu_infrastructure::{start, AwsMode, Running, Settings};
use tokio::sync::watch;

use crate::{ms, run_concurrently, scaled};

/// Metrics per batch of the throughput measurement.
const METRICS_PER_BATCH: usize = 100;
/// Requests per second of the steady load.
const RATE: f64 = 20.0;
/// Period of the `ListMetrics` polling.
const POLL_EVERY: Duration = Duration::from_millis(25);
/// How often `/healthz` is asked whether the backlog is gone.
const HEALTHZ_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for moto to answer after it was spawned (its first start compiles).
const MOTO_PATIENCE: Duration = Duration::from_secs(30);
/// Longest wait for a published backlog or for the last datum of the steady load.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

/// Fresh databases for one store: one per measurement, so that the publisher sends only
/// what the measurement recorded (never the other sections' rows).
pub struct AwsTarget {
    /// `sqlite` or `postgres`.
    pub label: &'static str,
    /// Database of the throughput measurement.
    pub throughput_url: String,
    /// Database of the latency measurement.
    pub latency_url: String,
}

/// `SKAFU_BENCH_MOTO_SERVER`, else the repository's `.venv-moto/bin/moto_server`.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("SKAFU_BENCH_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".venv-moto")
        .join("bin")
        .join("moto_server")
}

/// Runs the section, or says why it is skipped.
pub async fn run(work: &Path, targets: &[AwsTarget]) -> anyhow::Result<()> {
    let server = moto_server();
    if !server.exists() {
        println!(
            "[aws] skipped: {} not found; install moto with `bash scripts/moto.sh install`",
            server.display()
        );
        return Ok(());
    }
    let moto = match Moto::start(&server, work.join("moto.log")).await {
        Ok(moto) => moto,
        Err(err) => {
            println!("[aws] skipped: moto did not start: {err:#}");
            return Ok(());
        }
    };
    let result = measure(&moto, targets).await;
    moto.stop().await;
    result
}

async fn measure(moto: &Moto, targets: &[AwsTarget]) -> anyhow::Result<()> {
    let batches = scaled(10);
    let requests = scaled(250);
    println!(
        "[aws] moto {} (pid {}); throughput: {batches} batches x {METRICS_PER_BATCH} metrics; \
         latency: {requests} single-metric requests at {RATE:.0}/s",
        moto.endpoint, moto.pid
    );
    let mut warm = false;
    for target in targets {
        let (datums, events) = record_backlog(&target.throughput_url, batches).await?;
        if !warm {
            warm_up(moto, datums.first()).await?;
            warm = true;
        }
        // The baseline right before the publisher, so that both see the same machine.
        let count = datums.len();
        let (direct_secs, direct_requests) = direct_put(moto, datums).await?;
        let direct = Rate {
            datums: count,
            secs: direct_secs,
            requests: direct_requests,
        };
        publish_backlog(moto, target.label, &target.throughput_url, events, &direct).await?;
    }
    for target in targets {
        steady_latency(moto, target.label, &target.latency_url, requests).await?;
    }
    // Last, on the latency databases, whose publisher checkpoints are now at their end.
    let stand_in = StandIn::start().await?;
    for target in targets {
        small_batches(moto, &stand_in, target.label, &target.latency_url).await?;
    }
    Ok(())
}

/// A CloudWatch stand-in on loopback that accepts every `PutMetricData` at once: moto's
/// parsing hides the publisher's own cost, this does not.
struct StandIn {
    endpoint: String,
}

impl StandIn {
    async fn start() -> anyhow::Result<Self> {
        const OK: &str = "<PutMetricDataResponse \
            xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\"><ResponseMetadata>\
            <RequestId>bench</RequestId></ResponseMetadata></PutMetricDataResponse>";
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(|| async { ([("content-type", "text/xml")], OK) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { endpoint })
    }
}

/// Publisher throughput with one metric per batch, where each batch costs the publisher
/// two status events of its own, against the same datums sent directly, both to the
/// stand-in.
async fn small_batches(
    moto: &Moto,
    stand_in: &StandIn,
    label: &str,
    url: &str,
) -> anyhow::Result<()> {
    let batches = scaled(2000);
    let overrides = AwsOverrides {
        endpoint_url: Some(stand_in.endpoint.clone()),
        ..moto.overrides()
    };

    record_with_publishing_off(url, batches, |i| {
        json!({"service_name": "bench-small",
               "metrics": [{"name": "small", "value": i as f64, "unit": "Count"}]})
    })
    .await?;
    let http = http_client()?;

    let now = chrono::Utc::now();
    let datums: Vec<cloudwatch::Datum> = (0..batches)
        .map(|i| cloudwatch::Datum {
            namespace: STANDARD_NAMESPACE.to_string(),
            name: "small".to_string(),
            value: i as f64,
            unit: skafu_domain::metrics::MetricUnit::Count,
            timestamp: now,
            dimensions: vec![("ServiceName".to_string(), "bench-small".to_string())],
            storage_resolution: cloudwatch::STANDARD_RESOLUTION,
        })
        .collect();
    let clients = load_aws(Some(overrides.clone()))
        .await
        .context("stand-in clients")?;
    let sender = CloudWatchSender::new(clients.cloudwatch);
    let chunks = cloudwatch::chunk_for_put(datums);
    let t = Instant::now();
    for (namespace, chunk) in &chunks {
        sender
            .put(namespace, chunk)
            .await
            .context("direct PutMetricData")?;
    }
    let direct = batches as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let running = start_service(url, AwsMode::With(overrides)).await?;
    let status = wait_for_empty_backlog(&http, &format!("http://{}", running.addr)).await;
    let secs = t.elapsed().as_secs_f64();
    running.stop().await;
    let publisher = status?;
    let published = publisher["datums_published"].as_u64().unwrap_or(0) as usize;
    ensure!(
        published == batches && publisher["failures"] == 0,
        "publisher sent {published} of {batches} datums: {publisher}"
    );
    let rate = batches as f64 / secs;
    println!(
        "[aws/{label}] publish throughput, {batches} one-metric batches to a stand-in that \
         answers at once: publisher {rate:.0} datums/s ({} PutMetricData, {secs:.2} s); \
         direct put {direct:.0} datums/s ({} PutMetricData); publisher/direct = {:.3}",
        publisher["requests"],
        chunks.len(),
        rate / direct,
    );
    Ok(())
}

/// A moto server of our own on a free loopback port.
struct Moto {
    child: tokio::process::Child,
    pid: u32,
    endpoint: String,
}

impl Moto {
    async fn start(server: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let http = http_client()?;
        let mut last = anyhow::anyhow!("no attempt made");
        // The port is free when picked but could be taken before moto binds it: retry.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let file = std::fs::File::create(&log)?;
            let mut child = tokio::process::Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone()?))
                .stderr(Stdio::from(file))
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot run {}", server.display()))?;
            let pid = child.id().context("moto exited at once")?;
            let endpoint = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + MOTO_PATIENCE;
            loop {
                if let Some(status) = child.try_wait()? {
                    last = anyhow::anyhow!("moto exited with {status}: {}", log_tail(&log));
                    break;
                }
                // Any HTTP answer means it is up (moto answers 404 to unknown paths).
                if http
                    .get(format!("{endpoint}/moto-api/"))
                    .send()
                    .await
                    .is_ok()
                {
                    return Ok(Self {
                        child,
                        pid,
                        endpoint,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    last = anyhow::anyhow!(
                        "no answer on port {port} within {} s: {}",
                        MOTO_PATIENCE.as_secs(),
                        log_tail(&log)
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last)
    }

    /// Forgets every metric moto holds (moto keeps its state in memory only).
    async fn reset(&self) -> anyhow::Result<()> {
        let response = http_client()?
            .post(format!("{}/moto-api/reset", self.endpoint))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "moto reset: {}",
            response.status()
        );
        Ok(())
    }

    /// Sends SIGTERM to moto's pid, then SIGKILL if it is still there after 5 s.
    async fn stop(mut self) {
        let pid = self.pid.to_string();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await;
        let exited = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            let _ = self.child.kill().await;
        }
    }

    fn overrides(&self) -> AwsOverrides {
        assert!(
            self.endpoint.starts_with("http://127.0.0.1:"),
            "the benchmark's AWS endpoint must be on loopback, got {}",
            self.endpoint
        );
        AwsOverrides {
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.endpoint.clone()),
            credentials: Some(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "skafu-bench",
            )),
            max_attempts: Some(1),
            operation_timeout: Some(Duration::from_secs(20)),
        }
    }

    async fn clients(&self) -> anyhow::Result<AwsClients> {
        load_aws(Some(self.overrides()))
            .await
            .context("overrides with a region and credentials should turn publishing on")
    }
}

/// The last lines of moto's log (the log itself goes with the scratch directory).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "its log is empty".into()
    } else {
        tail
    }
}

/// HTTP client for loopback only: proxies from the environment are ignored.
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn start_service(url: &str, aws: AwsMode) -> anyhow::Result<Running> {
    start(Settings {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: url.to_string(),
        scheduler: false,
        aws,
        publisher: Default::default(),
    })
    .await
}

/// Starts the service with publishing off, posts `batches` bodies made by `body`
/// concurrently, insisting on 201, and stops it.
async fn record_with_publishing_off(
    url: &str,
    batches: usize,
    body: impl Fn(usize) -> Value,
) -> anyhow::Result<()> {
    let running = start_service(url, AwsMode::Off).await?;
    let base = format!("http://{}", running.addr);
    let http = http_client()?;
    let recorded = run_concurrently(batches, |i| {
        let request = http.post(format!("{base}/v1/metrics")).json(&body(i));
        async move {
            let t = Instant::now();
            let response = request.send().await?;
            ensure!(response.status() == 201, "status {}", response.status());
            Ok(t.elapsed())
        }
    })
    .await;
    running.stop().await;
    recorded.map(|_| ())
}

/// Records `batches` wide batches with publishing off; returns the datums the log holds
/// and its number of events.
async fn record_backlog(
    url: &str,
    batches: usize,
) -> anyhow::Result<(Vec<cloudwatch::Datum>, i64)> {
    record_with_publishing_off(url, batches, wide_batch).await?;

    let store = Store::open(url).await?;
    let datums = recorded_datums(&store).await;
    let events = event_log::count_events(&store).await;
    store.pool.close().await;
    let datums = datums?;
    let expected = batches * METRICS_PER_BATCH;
    ensure!(
        datums.len() == expected,
        "{} datums in the log, {expected} recorded",
        datums.len()
    );
    Ok((datums, events?))
}

/// moto sets up its CloudWatch backend on the first call: one small put and one listing
/// pay for that before anything is timed.
async fn warm_up(moto: &Moto, datum: Option<&cloudwatch::Datum>) -> anyhow::Result<()> {
    let client = moto.clients().await?.cloudwatch;
    if let Some(datum) = datum {
        CloudWatchSender::new(client.clone())
            .put(&datum.namespace, std::slice::from_ref(datum))
            .await
            .context("warm-up PutMetricData")?;
    }
    client
        .list_metrics()
        .namespace(STANDARD_NAMESPACE)
        .send()
        .await
        .context("warm-up ListMetrics")?;
    Ok(())
}

/// The baseline: `datums` straight to moto with `CloudWatchSender::put`, in the chunks of
/// `chunk_for_put`, one request after another as the publisher sends them. Returns the
/// seconds taken and the number of requests.
async fn direct_put(moto: &Moto, datums: Vec<cloudwatch::Datum>) -> anyhow::Result<(f64, usize)> {
    moto.reset().await?;
    let sender = CloudWatchSender::new(moto.clients().await?.cloudwatch);
    let chunks = cloudwatch::chunk_for_put(datums);
    let t = Instant::now();
    for (namespace, chunk) in &chunks {
        sender
            .put(namespace, chunk)
            .await
            .context("direct PutMetricData")?;
    }
    Ok((t.elapsed().as_secs_f64(), chunks.len()))
}

/// How fast a number of datums went out.
struct Rate {
    datums: usize,
    secs: f64,
    requests: usize,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.datums as f64 / self.secs
    }
}

/// Datums per second through the publisher, from its checkpoint at the start of a log of
/// `events` events holding `direct.datums` datums, against the baseline `direct`.
async fn publish_backlog(
    moto: &Moto,
    label: &str,
    url: &str,
    events: i64,
    direct: &Rate,
) -> anyhow::Result<()> {
    moto.reset().await?;
    let http = http_client()?;
    let t = Instant::now();
    let running = start_service(url, AwsMode::With(moto.overrides())).await?;
    let base = format!("http://{}", running.addr);
    let status = wait_for_empty_backlog(&http, &base).await;
    let secs = t.elapsed().as_secs_f64();
    running.stop().await;
    let publisher = status?;

    let datums = direct.datums;
    let published = publisher["datums_published"].as_u64().unwrap_or(0) as usize;
    ensure!(
        published == datums && publisher["failures"] == 0,
        "publisher sent {published} of {datums} datums: {publisher}"
    );
    let rate = datums as f64 / secs;
    println!(
        "[aws/{label}] publish throughput: publisher {rate:.0} datums/s ({datums} datums, \
         {events} events in {secs:.2} s, {} PutMetricData, {} retries); direct put {:.0} \
         datums/s ({} PutMetricData in {:.2} s, just before); publisher/direct = {:.2}",
        publisher["requests"],
        publisher["retries"],
        direct.per_sec(),
        direct.requests,
        direct.secs,
        rate / direct.per_sec(),
    );
    Ok(())
}

fn wide_batch(i: usize) -> Value {
    let metrics: Vec<_> = (0..METRICS_PER_BATCH)
        .map(|m| {
            json!({"name": format!("metric_{}", m % 10), "value": (i * m) as f64,
                   "unit": "Count", "dimensions": {"Shard": format!("{}", m / 10)}})
        })
        .collect();
    json!({"service_name": "bench", "dimensions": {"Env": "bench"}, "metrics": metrics})
}

/// The datums of every batch in the log, built as the publisher builds them.
async fn recorded_datums(store: &Store) -> anyhow::Result<Vec<cloudwatch::Datum>> {
    let mut batches: BTreeMap<(Checkpoint, String), Metrics> = BTreeMap::new();
    let mut opened_at: HashMap<String, Checkpoint> = HashMap::new();
    let mut after = Checkpoint::default();
    let mut conn = store.pool.acquire().await?;
    loop {
        let events = event_log::read_after(&mut conn, store.dialect, after, 1000).await?;
        let Some(last) = events.last() else { break };
        after = last.checkpoint;
        for event in events.into_iter().filter(|e| e.aggregate_type == "Metrics") {
            let payload: MetricsEvent = serde_json::from_value(event.payload)?;
            let id = event.aggregate_id;
            let key = (*opened_at.entry(id.clone()).or_insert(event.checkpoint), id);
            batches.entry(key).or_default().apply(payload);
        }
    }
    Ok(batches
        .values()
        .flat_map(cloudwatch::batch_datums)
        .collect())
}

/// Polls `/healthz` until the publisher has nothing left; returns its status.
async fn wait_for_empty_backlog(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + PUBLISH_PATIENCE;
    loop {
        let health: Value = http
            .get(format!("{base}/healthz"))
            .send()
            .await?
            .json()
            .await?;
        let publisher = &health["publisher"];
        ensure!(
            publisher["enabled"] == true,
            "publishing is off: {publisher}"
        );
        if publisher["backlog_events"] == 0 {
            return Ok(publisher.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "backlog not published within {} s: {publisher}",
                PUBLISH_PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(HEALTHZ_EVERY).await;
    }
}

/// What the `ListMetrics` poller saw.
struct Sightings {
    first_seen: HashMap<String, Instant>,
    polls: usize,
    max_gap: Duration,
    mean_gap: Duration,
}

/// Latency from the API's acknowledgement to the datum being listed by moto, at a steady
/// request rate.
async fn steady_latency(
    moto: &Moto,
    label: &str,
    url: &str,
    requests: usize,
) -> anyhow::Result<()> {
    moto.reset().await?;
    let service = format!(
        "bench-latency-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let running = start_service(url, AwsMode::With(moto.overrides())).await?;
    let base = format!("http://{}", running.addr);
    let http = http_client()?;

    let (stop, stopped) = watch::channel(false);
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let poller = tokio::spawn(poll_listed_names(
        moto.clients().await?.cloudwatch,
        service.clone(),
        seen.clone(),
        stopped,
    ));

    // Open loop: one request per tick whatever the previous ones are doing.
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    let mut sends = Vec::with_capacity(requests);
    let sending = Instant::now();
    for i in 0..requests {
        tick.tick().await;
        let name = format!("steady_{i}");
        let body = json!({"service_name": service,
            "metrics": [{"name": name, "value": i as f64, "unit": "Count"}]});
        let request = http.post(format!("{base}/v1/metrics")).json(&body);
        sends.push(tokio::spawn(async move {
            let response = request.send().await?;
            let acked = Instant::now();
            ensure!(response.status() == 201, "status {}", response.status());
            Ok::<_, anyhow::Error>((name, acked))
        }));
    }
    let mut acked = HashMap::with_capacity(requests);
    for send in sends {
        let (name, at) = send.await??;
        acked.insert(name, at);
    }
    let sent_rate = requests as f64 / sending.elapsed().as_secs_f64();

    let deadline = Instant::now() + PUBLISH_PATIENCE;
    while lock(&seen).len() < requests && Instant::now() < deadline && !poller.is_finished() {
        tokio::time::sleep(POLL_EVERY).await;
    }
    let _ = stop.send(true);
    let sightings = poller.await??;
    let publisher: Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await?
        .json::<Value>()
        .await?["publisher"]
        .clone();
    running.stop().await;

    let mut latencies = Histogram::<u64>::new(3)?;
    let mut early = 0;
    for (name, ack) in &acked {
        let Some(seen_at) = sightings.first_seen.get(name) else {
            bail!(
                "{name} was not listed by moto within {} s of the last request ({} of {requests} seen); publisher: {publisher}",
                PUBLISH_PATIENCE.as_secs(),
                sightings.first_seen.len()
            );
        };
        // The publisher may put a datum before the API's answer reaches us.
        if seen_at < ack {
            early += 1;
        }
        latencies.record(seen_at.saturating_duration_since(*ack).as_micros() as u64)?;
    }
    let q = |quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "[aws/{label}] end-to-end latency (201 -> listed by moto), {requests} datums at \
         {sent_rate:.1} req/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; polled every \
         {} ms ({} polls, gap between listings mean {:.0} ms, max {:.0} ms), so each figure \
         is an upper bound within that gap; {early} listed before their 201 arrived (counted \
         as 0); publisher made {} PutMetricData, {} retries",
        q(0.5),
        q(0.99),
        latencies.max() as f64 / 1000.0,
        POLL_EVERY.as_millis(),
        sightings.polls,
        ms(sightings.mean_gap),
        ms(sightings.max_gap),
        publisher["requests"],
        publisher["retries"],
    );
    Ok(())
}

/// Lists the service's metrics every [`POLL_EVERY`] until told to stop, noting when each
/// name is first listed (moto may list a name more than once).
async fn poll_listed_names(
    cloudwatch: aws_sdk_cloudwatch::Client,
    service: String,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Sightings> {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut polls, mut max_gap) = (0usize, Duration::ZERO);
    let (mut first, mut previous): (Option<Instant>, Option<Instant>) = (None, None);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let output = cloudwatch
                .list_metrics()
                .namespace(STANDARD_NAMESPACE)
                .dimensions(
                    DimensionFilter::builder()
                        .name("ServiceName")
                        .value(&service)
                        .build(),
                )
                .set_next_token(token)
                .send()
                .await
                .context("ListMetrics")?;
            names.extend(
                output
                    .metrics()
                    .iter()
                    .filter_map(|m| m.metric_name().map(str::to_string)),
            );
            token = output.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let listed = Instant::now();
        {
            let mut seen = lock(&seen);
            for name in names {
                seen.entry(name).or_insert(listed);
            }
        }
        polls += 1;
        if let Some(previous) = previous {
            max_gap = max_gap.max(listed - previous);
        }
        first.get_or_insert(listed);
        previous = Some(listed);
    }
    let mean_gap = match (first, previous) {
        (Some(first), Some(last)) if polls > 1 => (last - first) / (polls as u32 - 1),
        _ => Duration::ZERO,
    };
    let first_seen = lock(&seen).clone();
    Ok(Sightings {
        first_seen,
        polls,
        max_gap,
        mean_gap,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
