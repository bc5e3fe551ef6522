//! The read-model projector: folds the event log into the `rm_*` tables.
//!
//! Each batch runs in one transaction that locks the projector's checkpoint, reads the
//! next events in commit order, writes every view they change and moves the checkpoint.
//! A crash at any point leaves either the whole batch or none of it, so after a restart
//! the read models equal a full replay; and since the projector reads the log instead of
//! being called by the command handler, no commit can slip past it (the framework's
//! in-process dispatch loses updates on a crash or a concurrent command).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skafu_domain::health::HealthCheckEvent;
use skafu_domain::metrics::{MetricSource, MetricsEvent};
use skafu_domain::trace::TraceEvent;
use skafu_projections::{result_is_up, HealthCheckView, MetricBatchView, TraceView};
use sqlx::{AnyConnection, Row};
use tokio::sync::{watch, Notify};

use crate::db::Store;
use crate::event_log::{self, Checkpoint, StoredEvent};

/// Checkpoint name of the read-model projector.
pub const PROJECTOR: &str = "read_models";
/// Events per transaction.
const BATCH: i64 = 500;
/// How often the projector looks for events nobody woke it for (another instance's
/// commands, or a wake-up lost to a crash).
const POLL: Duration = Duration::from_millis(250);

/// Every read-model table, emptied by a replay.
const TABLES: [&str; 5] = [
    "rm_health_checks",
    "rm_health_results",
    "rm_traces",
    "rm_metric_batches",
    "rm_performance_samples",
];

/// Folds the event log into the read models.
pub struct Projector {
    store: Store,
    wake: Notify,
    progress: watch::Sender<Checkpoint>,
}

#[derive(Default)]
struct Changes {
    health: HashMap<String, HealthCheckView>,
    traces: HashMap<String, TraceView>,
    batches: HashMap<String, MetricBatchView>,
    results: Vec<(String, i64, i64, bool)>,
    samples: Vec<(String, String, String, i64, f64, bool)>,
}

async fn load_json<T: serde::de::DeserializeOwned>(
    conn: &mut AnyConnection,
    sql: &str,
    id: &str,
) -> Result<Option<T>, sqlx::Error> {
    let row = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await?;
    match row {
        Some(row) => {
            let text: String = row.try_get("payload")?;
            let value =
                serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(Some(value))
        }
        None => Ok(None),
    }
}

impl Changes {
    async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        event: &StoredEvent,
    ) -> Result<(), sqlx::Error> {
        let id = event.aggregate_id.as_str();
        match event.aggregate_type.as_str() {
            "HealthCheck" => {
                let Some(payload) = event.parse::<HealthCheckEvent>(PROJECTOR) else {
                    return Ok(());
                };
                if !self.health.contains_key(id) {
                    let sql = "SELECT payload FROM rm_health_checks WHERE health_check_id = $1";
                    let view = load_json(conn, sql, id).await?.unwrap_or_default();
                    self.health.insert(id.to_string(), view);
                }
                if let Some(view) = self.health.get_mut(id) {
                    view.apply(id, &payload);
                }
                if let Some((up, at)) = result_is_up(&payload) {
                    self.results
                        .push((id.to_string(), event.sequence, at.timestamp_millis(), up));
                }
            }
            "Trace" => {
                let Some(payload) = event.parse::<TraceEvent>(PROJECTOR) else {
                    return Ok(());
                };
                if !self.traces.contains_key(id) {
                    let sql = "SELECT payload FROM rm_traces WHERE trace_id = $1";
                    let view = load_json(conn, sql, id).await?.unwrap_or_default();
                    self.traces.insert(id.to_string(), view);
                }
                if let Some(view) = self.traces.get_mut(id) {
                    view.apply(id, &payload);
                }
            }
            "Metrics" => {
                let Some(payload) = event.parse::<MetricsEvent>(PROJECTOR) else {
                    return Ok(());
                };
                if let Some(view) = MetricBatchView::open(id, &payload) {
                    if let MetricSource::Performance {
                        operation_name,
                        duration_ms,
                        success,
                    } = &view.source
                    {
                        self.samples.push((
                            id.to_string(),
                            view.service_name.clone(),
                            operation_name.clone(),
                            view.recorded_at.timestamp_millis(),
                            *duration_ms,
                            *success,
                        ));
                    }
                    self.batches.insert(id.to_string(), view);
                    return Ok(());
                }
                if !self.batches.contains_key(id) {
                    let sql = "SELECT payload FROM rm_metric_batches WHERE metrics_id = $1";
                    match load_json::<MetricBatchView>(conn, sql, id).await? {
                        Some(view) => {
                            self.batches.insert(id.to_string(), view);
                        }
                        None => {
                            tracing::error!(
                                metrics_id = id,
                                "metrics event before its batch was opened; skipped"
                            );
                            return Ok(());
                        }
                    }
                }
                if let Some(view) = self.batches.get_mut(id) {
                    view.apply(&payload);
                }
            }
            // Aggregates added later are not part of these read models.
            _ => {}
        }
        Ok(())
    }

    async fn write(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        for (id, view) in self.health {
            sqlx::query(
                "INSERT INTO rm_health_checks (health_check_id, service_name, payload) \
                 VALUES ($1, $2, $3) ON CONFLICT (health_check_id) DO UPDATE \
                 SET service_name = excluded.service_name, payload = excluded.payload",
            )
            .bind(id)
            .bind(view.service_name.clone())
            .bind(to_json(&view))
            .execute(&mut *conn)
            .await?;
        }
        for (id, view) in self.traces {
            let start = view.start_time.map_or(0, |t| t.timestamp_millis());
            sqlx::query(
                "INSERT INTO rm_traces (trace_id, service_name, start_time_ms, payload) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (trace_id) DO UPDATE \
                 SET service_name = excluded.service_name, \
                 start_time_ms = excluded.start_time_ms, payload = excluded.payload",
            )
            .bind(id)
            .bind(view.service_name.clone())
            .bind(start)
            .bind(to_json(&view))
            .execute(&mut *conn)
            .await?;
        }
        for (id, view) in self.batches {
            sqlx::query(
                "INSERT INTO rm_metric_batches (metrics_id, service_name, recorded_at_ms, payload) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (metrics_id) DO UPDATE \
                 SET payload = excluded.payload",
            )
            .bind(id)
            .bind(view.service_name.clone())
            .bind(view.recorded_at.timestamp_millis())
            .bind(to_json(&view))
            .execute(&mut *conn)
            .await?;
        }
        for (id, sequence, at, up) in self.results {
            sqlx::query(
                "INSERT INTO rm_health_results (health_check_id, sequence, checked_at_ms, up) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (health_check_id, sequence) DO NOTHING",
            )
            .bind(id)
            .bind(sequence)
            .bind(at)
            .bind(i64::from(up))
            .execute(&mut *conn)
            .await?;
        }
        for (id, service, operation, at, duration, success) in self.samples {
            sqlx::query(
                "INSERT INTO rm_performance_samples (metrics_id, service_name, operation_name, \
                 recorded_at_ms, duration_ms, success) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (metrics_id) DO NOTHING",
            )
            .bind(id)
            .bind(service)
            .bind(operation)
            .bind(at)
            .bind(duration)
            .bind(i64::from(success))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Views are plain data with string keys: serializing them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

impl Projector {
    /// A projector over `store`.
    ///
    /// # Errors
    ///
    /// Any database error while creating its checkpoint.
    pub async fn new(store: Store) -> Result<Arc<Self>, sqlx::Error> {
        event_log::ensure_checkpoint(&store, PROJECTOR).await?;
        let at = event_log::read_checkpoint(&store, PROJECTOR).await?;
        Ok(Arc::new(Self {
            store,
            wake: Notify::new(),
            progress: watch::Sender::new(at),
        }))
    }

    /// Projects the next batch; returns how many events it handled.
    ///
    /// # Errors
    ///
    /// Any database error; the batch is then rolled back whole.
    pub async fn run_batch(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self
            .store
            .pool
            .begin_with(self.store.dialect.begin_write())
            .await?;
        event_log::lock_checkpoint(&mut tx, PROJECTOR).await?;
        let from = event_log::checkpoint_in(&mut tx, PROJECTOR).await?;
        let events = event_log::read_after(&mut tx, self.store.dialect, from, BATCH).await?;
        let Some(last) = events.last().map(|e| e.checkpoint) else {
            tx.rollback().await?;
            self.advance(from);
            return Ok(0);
        };
        let mut changes = Changes::default();
        for event in &events {
            changes.apply(&mut tx, event).await?;
        }
        changes.write(&mut tx).await?;
        event_log::save_checkpoint(&mut tx, PROJECTOR, last).await?;
        tx.commit().await?;
        self.advance(last);
        Ok(events.len())
    }

    fn advance(&self, to: Checkpoint) {
        self.progress.send_if_modified(|at| {
            let newer = to > *at;
            if newer {
                *at = to;
            }
            newer
        });
    }

    /// Projects until the log is exhausted; returns the number of events handled.
    ///
    /// # Errors
    ///
    /// The first database error.
    pub async fn catch_up(&self, mut on_batch: impl FnMut(usize)) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = self.run_batch().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
            on_batch(n);
        }
    }

    /// Runs until `shutdown` turns true: projects whenever woken, and at least every
    /// 250 ms. Errors are logged and retried with a pause.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.catch_up(|_| {}).await {
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "projector batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Asks the projector to look for new events now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until the read models include the event at `target`, or `timeout` passes.
    /// Returns whether they do. Lets a write request answer only once its own effect is
    /// readable.
    pub async fn wait_for(&self, target: Checkpoint, timeout: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        self.wake();
        loop {
            if *rx.borrow_and_update() >= target {
                return true;
            }
            let tick = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                _ = rx.changed() => {}
                _ = tick => {
                    // Another instance may have projected it.
                    if let Ok(at) = event_log::read_checkpoint(&self.store, PROJECTOR).await {
                        self.advance(at);
                    }
                    self.wake();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return *rx.borrow() >= target;
            }
        }
    }

    /// A receiver that changes whenever the projector moves: new events are in the log.
    pub fn subscribe(&self) -> watch::Receiver<Checkpoint> {
        self.progress.subscribe()
    }

    /// Where the projector has got to.
    pub fn position(&self) -> Checkpoint {
        *self.progress.borrow()
    }

    /// Empties every read model and rewinds the checkpoint, in one transaction that
    /// holds the checkpoint lock, so a running projector cannot interleave.
    ///
    /// # Errors
    ///
    /// Any database error; nothing is changed then.
    pub async fn reset(&self) -> Result<(), sqlx::Error> {
        let mut tx = self
            .store
            .pool
            .begin_with(self.store.dialect.begin_write())
            .await?;
        event_log::lock_checkpoint(&mut tx, PROJECTOR).await?;
        for table in TABLES {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        event_log::save_checkpoint(&mut tx, PROJECTOR, Checkpoint::default()).await?;
        tx.commit().await?;
        self.progress.send_replace(Checkpoint::default());
        Ok(())
    }
}
