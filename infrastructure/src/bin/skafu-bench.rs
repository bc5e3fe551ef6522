//! `skafu-bench`: prints, in one run on this machine, the figures the README quotes.
//!
//! ```text
//! cargo run --release -p skafu-infrastructure --bin skafu-bench
//! ```
//!
//! Figures are ratios against a baseline measured in the same run, never absolute
//! thresholds: the machine is shared and noisy.
//! - metrics accepted per second through the HTTP API, against raw SQL inserts of the
//!   same event rows into the same database, for SQLite and PostgreSQL;
//! - loading a health check with 30 days of 30 s runs (86,400 events) against loading a
//!   new one;
//! - replay speed of the read-model projector, in events per second;
//! - AWS publishing against a private moto on 127.0.0.1 (see [`aws`]): publisher
//!   throughput in datums per second against direct `PutMetricData` calls, and the
//!   latency from the API's answer to the datum being listed by moto at a steady load.
//!   Skipped, with a note, when moto is not installed (`bash scripts/moto.sh install`).
//!
//! PostgreSQL comes from `SKAFU_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); scratch databases are created and
//! dropped. Sizes can be scaled with `SKAFU_BENCH_SCALE` (default 1.0).

#[path = "skafu-bench/aws.rs"]
mod aws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore;
use hdrhistogram::Histogram;
use serde_json::json;
use skafu_application::store::SnapshotStore;
use skafu_domain::health::{HealthCheck, HealthCheckDefinition, HealthCheckEvent};
use skafu_infrastructure::db::{AnyRepository, Store};
use skafu_infrastructure::projector::Projector;
use skafu_infrastructure::snapshots::SqlSnapshots;
use skafu_infrastructure::{event_log, install_crypto, start, Settings};
use sqlx::Connection;

const METRICS_PER_REQUEST: usize = 10;
const CONCURRENCY: usize = 8;

fn scale() -> f64 {
    std::env::var("SKAFU_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1)
}

struct Target {
    label: &'static str,
    url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    install_crypto();
    let work = std::env::temp_dir().join(format!("skafu-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let pg_base = std::env::var("SKAFU_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg_name = format!("skafu_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&pg_base)
        .await
        .context("PostgreSQL is needed for the benchmark (SKAFU_BENCH_POSTGRES_URL)")?;
    // The main database, then one each for the AWS throughput and latency measurements.
    let pg_names = [
        pg_name.clone(),
        format!("{pg_name}_aws_throughput"),
        format!("{pg_name}_aws_latency"),
    ];
    for name in &pg_names {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
    }
    let pg_url = replace_db(&pg_base, &pg_name)?;

    let targets = [
        Target {
            label: "sqlite",
            url: format!("sqlite://{}", work.join("bench.db").display()),
        },
        Target {
            label: "postgres",
            url: pg_url,
        },
    ];
    println!(
        "skafu-bench: {} requests x {METRICS_PER_REQUEST} metrics, concurrency {CONCURRENCY}",
        scaled(600)
    );
    for target in &targets {
        ingest(target).await?;
    }
    for target in &targets {
        aggregate_load(target).await?;
        replay(target).await?;
    }

    let sqlite_url = |name: &str| format!("sqlite://{}", work.join(name).display());
    let aws_targets = [
        aws::AwsTarget {
            label: "sqlite",
            throughput_url: sqlite_url("aws-throughput.db"),
            latency_url: sqlite_url("aws-latency.db"),
        },
        aws::AwsTarget {
            label: "postgres",
            throughput_url: replace_db(&pg_base, &pg_names[1])?,
            latency_url: replace_db(&pg_base, &pg_names[2])?,
        },
    ];
    // Measured last, so that a failure here leaves the figures above printed; the
    // scratch databases go either way.
    let aws = aws::run(&work, &aws_targets).await;

    for name in &pg_names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    let _ = std::fs::remove_dir_all(&work);
    aws
}

fn replace_db(url: &str, db: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(db);
    Ok(parsed.to_string())
}

fn batch_body(i: usize) -> serde_json::Value {
    let metrics: Vec<_> = (0..METRICS_PER_REQUEST)
        .map(|m| {
            json!({"name": format!("metric_{m}"), "value": (i * m) as f64, "unit": "Count",
                        "dimensions": {"Shard": format!("{}", m % 4)}})
        })
        .collect();
    json!({"service_name": "bench", "dimensions": {"Env": "bench"}, "metrics": metrics})
}

/// Metrics per second through the API, against raw inserts of the same rows.
async fn ingest(target: &Target) -> anyhow::Result<()> {
    let requests = scaled(600);
    let running = start(Settings {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: target.url.clone(),
        scheduler: false,
        aws: skafu_infrastructure::AwsMode::Off,
        publisher: Default::default(),
    })
    .await?;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    // Warm up connections and caches.
    for i in 0..20 {
        client
            .post(format!("{base}/v1/metrics"))
            .json(&batch_body(i))
            .send()
            .await?;
    }

    let started = Instant::now();
    let latencies = run_concurrently(requests, |i| {
        let client = client.clone();
        let url = format!("{base}/v1/metrics");
        async move {
            let t = Instant::now();
            let response = client.post(url).json(&batch_body(i)).send().await?;
            anyhow::ensure!(response.status() == 201, "status {}", response.status());
            Ok(t.elapsed())
        }
    })
    .await?;
    let api_secs = started.elapsed().as_secs_f64();
    running.stop().await;

    // The baseline: the same number of event rows (batch opened + dimension + metrics),
    // one transaction per request, at the same concurrency, into a copy of the events
    // table of the same database.
    let store = Store::open(&target.url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_events AS SELECT * FROM events WHERE 1 = 0")
        .execute(&store.pool)
        .await?;
    let rows_per_request = METRICS_PER_REQUEST + 2;
    let started = Instant::now();
    let pool = store.pool.clone();
    // PostgreSQL's events columns are `json`; SQLite's are text.
    let json_param = |n: u8| match store.dialect {
        skafu_infrastructure::db::Dialect::Postgres => format!("CAST(${n} AS json)"),
        skafu_infrastructure::db::Dialect::Sqlite => format!("${n}"),
    };
    let insert = format!(
        "INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, {}, {})",
        json_param(6),
        json_param(7)
    );
    run_concurrently(requests, |i| {
        let pool = pool.clone();
        let insert = insert.clone();
        async move {
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            for seq in 1..=rows_per_request {
                sqlx::query(&insert)
                    .bind("Metrics")
                    .bind(format!("raw-{i}"))
                    .bind(seq as i64)
                    .bind("MetricAdded")
                    .bind("1.0")
                    .bind(batch_body(i)["metrics"][0].to_string())
                    .bind("{}")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(t.elapsed())
        }
    })
    .await?;
    let raw_secs = started.elapsed().as_secs_f64();

    let metrics = (requests * METRICS_PER_REQUEST) as f64;
    let api_rate = metrics / api_secs;
    let raw_rate = metrics / raw_secs;
    println!(
        "[{}] ingest: API {:.0} metrics/s ({:.0} req/s, p50 {:.1} ms, p99 {:.1} ms); raw SQL {:.0} metrics/s; API/raw = {:.2}",
        target.label,
        api_rate,
        requests as f64 / api_secs,
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        raw_rate,
        api_rate / raw_rate
    );
    Ok(())
}

async fn run_concurrently<F, Fut>(n: usize, make: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send + 'static,
{
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    let mut issued = 0;
    while issued < n.min(CONCURRENCY) {
        pending.push(tokio::spawn(make(issued)));
        issued += 1;
    }
    while let Some(done) = pending.next().await {
        let elapsed = done??;
        histogram.record(elapsed.as_micros() as u64)?;
        if issued < n {
            pending.push(tokio::spawn(make(issued)));
            issued += 1;
        }
    }
    Ok(histogram)
}

fn result_event(i: usize) -> HealthCheckEvent {
    HealthCheckEvent::HealthCheckSucceeded {
        response_time_ms: 3.0 + (i % 7) as f64,
        status_code: 200,
        attempts: 1,
        degraded: false,
        checked_at: Utc::now(),
    }
}

fn definition(service: &str) -> HealthCheckDefinition {
    HealthCheckDefinition {
        service_name: service.into(),
        endpoint: "http://127.0.0.1:9/health".into(),
        check_type: "http".into(),
        interval_seconds: 30,
        timeout_seconds: 5,
        max_retries: 3,
        degraded_after_ms: 1000,
        expected_status: None,
    }
}

/// Loading a check with 30 days of history against loading a new one.
async fn aggregate_load(target: &Target) -> anyhow::Result<()> {
    let history = scaled(86_400);
    let store = Store::open(&target.url).await?;
    let snapshots = Arc::new(SqlSnapshots::new(store.clone()));
    let es: SnapshotStore<AnyRepository, HealthCheck> = SnapshotStore::new(
        store.repo.clone(),
        snapshots,
        skafu_application::service::SNAPSHOT_EVERY,
    );

    for (id, results) in [("old-http", history), ("new-http", 1)] {
        let service = id.trim_end_matches("-http");
        let mut written = 0;
        let mut first = true;
        while written < results || first {
            let context = es.load_aggregate(id).await?;
            let mut aggregate = context.aggregate.clone();
            let mut events = Vec::new();
            if first {
                events.push(HealthCheckEvent::HealthCheckRegistered {
                    definition: definition(service),
                    registered_at: Utc::now(),
                });
                first = false;
            }
            let chunk = (results - written).min(1000);
            events.extend((written..written + chunk).map(result_event));
            written += chunk;
            // The store expects the sink to have applied the events already.
            for e in &events {
                cqrs_es::Aggregate::apply(&mut aggregate, e.clone());
            }
            let mut context = context;
            context.aggregate = aggregate;
            es.commit(events, context, HashMap::new()).await?;
        }
    }

    let time_loads = |id: &'static str| {
        let es = &es;
        async move {
            let mut best = Duration::MAX;
            let mut total = Duration::ZERO;
            let rounds = 30;
            for _ in 0..rounds {
                let t = Instant::now();
                let context = es.load_aggregate(id).await?;
                let elapsed = t.elapsed();
                anyhow::ensure!(context.aggregate.definition.is_some());
                best = best.min(elapsed);
                total += elapsed;
            }
            Ok::<_, anyhow::Error>((best, total / rounds))
        }
    };
    let (old_best, old_mean) = time_loads("old-http").await?;
    let (new_best, new_mean) = time_loads("new-http").await?;

    // For contrast: the framework's own event-sourced store replays every event.
    let Store { repo, .. } = Store::open(&target.url).await?;
    let repo = Arc::try_unwrap(repo)
        .map_err(|_| anyhow::anyhow!("a freshly opened store's repository is not shared"))?;
    let full: PersistedEventStore<AnyRepository, HealthCheck> =
        PersistedEventStore::new_event_store(repo);
    let t = Instant::now();
    let replayed = full.load_aggregate("old-http").await?;
    let full_load = t.elapsed();
    anyhow::ensure!(replayed.aggregate.consecutive_successes as usize == history);

    println!(
        "[{}] aggregate load: {} events -> mean {:.2} ms (best {:.2}); new check -> mean {:.2} ms (best {:.2}); ratio {:.2} (mean), {:.2} (best); full replay without snapshot {:.1} ms",
        target.label,
        history + 1,
        ms(old_mean),
        ms(old_best),
        ms(new_mean),
        ms(new_best),
        ms(old_mean) / ms(new_mean),
        ms(old_best) / ms(new_best),
        ms(full_load),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Events per second of a full read-model rebuild.
async fn replay(target: &Target) -> anyhow::Result<()> {
    let store = Store::open(&target.url).await?;
    let total = event_log::count_events(&store).await?;
    let projector = Projector::new(store).await?;
    projector.reset().await?;
    let t = Instant::now();
    let handled = projector.catch_up(|_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(handled as i64 == total, "replayed {handled} of {total}");
    println!(
        "[{}] replay: {handled} events in {secs:.2} s = {:.0} events/s",
        target.label,
        handled as f64 / secs
    );
    Ok(())
}
