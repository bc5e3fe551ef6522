//! The AWS publisher: a reader of the event log that sends what it reads to CloudWatch
//! and X-Ray, then moves its checkpoint.
//!
//! # Guarantees
//!
//! - **At least once.** The checkpoint moves only after every call for the events behind
//!   it has succeeded or been refused for good, so after `kill -9` or an outage the
//!   publisher resends from its checkpoint and nothing accepted is skipped.
//! - **In commit order**, a window of up to [`WINDOW`] events at a time, read the same way
//!   as the projector reads (see [`crate::event_log`]).
//! - **Few duplicates.** A metrics batch records `MetricsPublishing` before its datums are
//!   sent and `MetricsPublished` right after the request that carried its last datum; a
//!   resend skips batches already published. X-Ray segments have ids derived from the
//!   trace, so a resent trace overwrites itself. What can still be counted twice in
//!   CloudWatch: the batches of one request whose `MetricsPublished` commits had not
//!   happened at a crash; a request that timed out, lost its answer or was abandoned at
//!   shutdown although AWS processed it (it is sent again); the standard datums of a batch whose custom datums
//!   went in a later request; and the health-check datums of the window in flight.
//! - **Not blocked by bad data.** A request AWS refuses for good is split so that only
//!   the offending batch, health result or trace is recorded as failed (in the
//!   `MetricsPublishFailed` event for batches, in `publish_failures` for all); the stream
//!   goes on. Throttling, 5xx, timeouts and refused connections are retried with
//!   exponential backoff and jitter, for as long as it takes.
//! - **One publisher per database.** Several instances may share a PostgreSQL database;
//!   the one holding the lease on the checkpoint row publishes and the others wait. The
//!   lease is renewed while a call is in flight, so a window is never sent twice at once
//!   as long as the instances' clocks agree to within a few seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use rand::Rng;
use serde_json::{json, Value};
use skafu_application::service::Observability;
use skafu_application::AppError;
use skafu_domain::health::{HealthCheckEvent, HealthStatus};
use skafu_domain::metrics::{Metrics, MetricsCommand, MetricsEvent};
use skafu_domain::trace::TraceEvent;
use sqlx::Row;
use tokio::sync::watch;

use crate::aws::cloudwatch::{self, CloudWatchSender, Datum};
use crate::aws::config::AwsClients;
use crate::aws::xray::{self, TraceForXray, XRaySender};
use crate::aws::PublishError;
use crate::db::{AnyRepository, Store};
use crate::event_log::{self, Checkpoint, StoredEvent};

/// Checkpoint name of the publisher.
pub const PUBLISHER: &str = "aws_publisher";
/// Most events read per window.
pub const WINDOW: i64 = 1000;
/// How often the publisher looks for new events when nobody woke it.
const POLL: Duration = Duration::from_millis(200);
/// How often an instance that does not hold the lease tries for it.
const STAND_BY: Duration = Duration::from_secs(1);
/// Upper bound of one AWS call, whatever the SDK's own timeouts are: a frozen endpoint
/// must not stall the publisher forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Tunables of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// First backoff after a retryable failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// `service.version` of the X-Ray segments.
    pub service_version: String,
    /// How long the publisher's lease lasts without renewal. It is renewed at least after
    /// every AWS call, so it only needs to outlast one call and one window's status
    /// commands; after a crash, a restarted instance waits this long before publishing.
    pub lease: Duration,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            service_version: env!("CARGO_PKG_VERSION").to_string(),
            lease: Duration::from_secs(10),
        }
    }
}

/// Why a window was abandoned; it is read again from the checkpoint.
#[derive(Debug, thiserror::Error)]
enum WindowError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("status command: {0}")]
    App(#[from] AppError),
    #[error("another instance holds the publisher lease")]
    LostLease,
    #[error("shutting down")]
    Stopped,
}

/// Counters shown in `/healthz`.
#[derive(Default)]
struct Stats {
    datums: AtomicU64,
    segments: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    leader: AtomicBool,
    retrying: AtomicBool,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    last_success: Mutex<Option<DateTime<Utc>>>,
    call_started: Mutex<Option<DateTime<Utc>>>,
}

/// Publishes the event log to CloudWatch and X-Ray.
pub struct Publisher {
    store: Store,
    app: Arc<Observability<AnyRepository>>,
    cloudwatch: CloudWatchSender,
    xray: XRaySender,
    settings: PublisherSettings,
    owner: String,
    services: Mutex<HashMap<String, String>>,
    stats: Stats,
}

/// Who a datum speaks for, so that a refusal lands on the right record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Batch(String),
    Health { check_id: String, sequence: i64 },
}

/// The datums of one origin in one namespace: never split across requests unless they
/// alone exceed one.
struct Part {
    unit: usize,
    datums: Vec<Datum>,
}

/// One `PutMetricData` request.
struct Request {
    namespace: String,
    parts: Vec<Part>,
}

impl Request {
    fn datums(&self) -> Vec<Datum> {
        self.parts
            .iter()
            .flat_map(|p| p.datums.iter().cloned())
            .collect()
    }
}

/// What one window asks for.
#[derive(Default)]
struct Plan {
    units: Vec<Origin>,
    batches: Vec<(String, Metrics)>,
    datums: Vec<(usize, Datum)>,
    traces: Vec<(String, i64)>,
}

impl Publisher {
    /// A publisher over `store`, sending with `clients`.
    ///
    /// # Errors
    ///
    /// Any database error while creating its checkpoint.
    pub async fn new(
        store: Store,
        app: Arc<Observability<AnyRepository>>,
        clients: AwsClients,
        settings: PublisherSettings,
    ) -> Result<Arc<Self>, sqlx::Error> {
        event_log::ensure_checkpoint(&store, PUBLISHER).await?;
        Ok(Arc::new(Self {
            store,
            app,
            cloudwatch: CloudWatchSender::new(clients.cloudwatch),
            xray: XRaySender::new(clients.xray),
            settings,
            owner: uuid::Uuid::new_v4().to_string(),
            services: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }))
    }

    /// Runs until `shutdown` turns true. `wake` changes whenever the projector moves,
    /// which is the cue that new events are in the log.
    pub async fn run(
        self: Arc<Self>,
        mut wake: watch::Receiver<Checkpoint>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        let mut standing_by = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.drain(&shutdown).await {
                Ok(()) => {
                    failures = 0;
                    if standing_by {
                        tracing::info!("this instance publishes now");
                        standing_by = false;
                    }
                }
                Err(WindowError::Stopped) => break,
                Err(WindowError::LostLease) => {
                    if !standing_by {
                        tracing::info!("another instance publishes; standing by");
                    }
                    standing_by = true;
                    // Wake-ups are for the publisher; a stand-by only checks the lease.
                    let mut shutdown = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(STAND_BY) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(err) => {
                    failures += 1;
                    self.note_error(&err.to_string());
                    tracing::warn!(error = %err, "publisher window abandoned; it will be read again");
                    if !self.pause(failures, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
        self.release().await;
    }

    /// Publishes windows until the log is exhausted.
    async fn drain(&self, shutdown: &watch::Receiver<bool>) -> Result<(), WindowError> {
        loop {
            if !self.acquire().await? {
                self.stats.leader.store(false, Ordering::Relaxed);
                return Err(WindowError::LostLease);
            }
            self.stats.leader.store(true, Ordering::Relaxed);
            if self.publish_window(shutdown).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Takes or renews the lease; returns whether this instance holds it.
    async fn acquire(&self) -> Result<bool, sqlx::Error> {
        event_log::acquire_lease(&self.store, PUBLISHER, &self.owner, self.settings.lease).await
    }

    async fn release(&self) {
        if let Err(err) = event_log::release_lease(&self.store, PUBLISHER, &self.owner).await {
            tracing::warn!(error = %err, "publisher lease not released; it expires by itself");
        }
    }

    /// Reads, plans, sends and checkpoints one window; returns how many events it read.
    async fn publish_window(&self, shutdown: &watch::Receiver<bool>) -> Result<usize, WindowError> {
        let from = event_log::read_checkpoint(&self.store, PUBLISHER).await?;
        let events = {
            let mut conn = self.store.pool.acquire().await?;
            event_log::read_after(&mut conn, self.store.dialect, from, WINDOW).await?
        };
        let Some(last) = events.last().map(|e| e.checkpoint) else {
            return Ok(0);
        };
        let full = events.len() as i64 == WINDOW;
        let plan = self.plan(&events, full).await?;
        self.send_metrics(plan.units, plan.batches, plan.datums, shutdown)
            .await?;
        self.send_traces(plan.traces, shutdown).await?;
        self.save(last).await?;
        self.stats.retrying.store(false, Ordering::Relaxed);
        *lock(&self.stats.last_success) = Some(Utc::now());
        Ok(events.len())
    }

    /// Moves the checkpoint if the lease is still ours.
    async fn save(&self, at: Checkpoint) -> Result<(), WindowError> {
        let done = sqlx::query(
            "UPDATE checkpoints SET tx_id = $2, position = $3 WHERE name = $1 AND owner = $4",
        )
        .bind(PUBLISHER)
        .bind(at.tx_id)
        .bind(at.position)
        .bind(&self.owner)
        .execute(&self.store.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(WindowError::LostLease)
        }
    }

    /// Turns a window's events into batches, datums and traces to send.
    async fn plan(&self, events: &[StoredEvent], full: bool) -> Result<Plan, WindowError> {
        let mut plan = Plan::default();
        // Batches opened in this window, folded from its events. A batch is recorded in
        // one transaction, so its events are contiguous; only the last one of a full
        // window can be cut short, and that one is read whole from the store.
        let mut open: BTreeMap<String, Metrics> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for event in events {
            match event.aggregate_type.as_str() {
                "Metrics" => {
                    let Some(payload) = event.parse::<MetricsEvent>(PUBLISHER) else {
                        continue;
                    };
                    let id = &event.aggregate_id;
                    if let MetricsEvent::MetricsBatchOpened { .. } = payload {
                        order.push(id.clone());
                        open.insert(id.clone(), Metrics::default());
                    }
                    let recording = matches!(
                        payload,
                        MetricsEvent::MetricsBatchOpened { .. }
                            | MetricsEvent::DimensionAdded { .. }
                            | MetricsEvent::MetricAdded(_)
                            | MetricsEvent::CustomMetricAdded(_)
                    );
                    if let (true, Some(batch)) = (recording, open.get_mut(id)) {
                        batch.apply(payload);
                    }
                }
                "HealthCheck" => {
                    let Some(payload) = event.parse::<HealthCheckEvent>(PUBLISHER) else {
                        continue;
                    };
                    let (status, response_time_ms, at) = match payload {
                        HealthCheckEvent::HealthCheckSucceeded {
                            response_time_ms,
                            degraded,
                            checked_at,
                            ..
                        } => {
                            let status = if degraded {
                                HealthStatus::Degraded
                            } else {
                                HealthStatus::Healthy
                            };
                            (status, Some(response_time_ms), checked_at)
                        }
                        HealthCheckEvent::HealthCheckFailed {
                            response_time_ms,
                            checked_at,
                            ..
                        } => (HealthStatus::Unhealthy, response_time_ms, checked_at),
                        HealthCheckEvent::HealthCheckRegistered { .. } => continue,
                    };
                    let service = self.service_of(&event.aggregate_id).await?;
                    let unit = plan.units.len();
                    plan.units.push(Origin::Health {
                        check_id: event.aggregate_id.clone(),
                        sequence: event.sequence,
                    });
                    let datums = cloudwatch::health_datums(
                        &service,
                        &event.aggregate_id,
                        status,
                        response_time_ms,
                        at,
                    );
                    plan.datums.extend(datums.into_iter().map(|d| (unit, d)));
                }
                "Trace" => {
                    // A completed trace is sent whole. An error on an open trace sends it
                    // in progress, so that a failing request that never completes is
                    // still seen; its completion later overwrites it (same ids).
                    if let Some(TraceEvent::TraceCompleted { .. } | TraceEvent::TraceError { .. }) =
                        event.parse::<TraceEvent>(PUBLISHER)
                    {
                        let id = &event.aggregate_id;
                        // Once per window, as of its last event in the window.
                        plan.traces.retain(|(other, _)| other != id);
                        plan.traces.push((id.clone(), event.sequence));
                    }
                }
                _ => {}
            }
        }

        if full {
            if let Some(last) = order.last() {
                let history = event_log::aggregate_history(&self.store, "Metrics", last).await?;
                let mut whole = Metrics::default();
                for event in &history {
                    if let Some(payload) = event.parse::<MetricsEvent>(PUBLISHER) {
                        whole.apply(payload);
                    }
                }
                open.insert(last.clone(), whole);
            }
        }

        for id in order {
            if let Some(batch) = open.remove(&id) {
                plan.batches.push((id, batch));
            }
        }
        Ok(plan)
    }

    /// The service a health check belongs to, from its registration.
    async fn service_of(&self, check_id: &str) -> Result<String, sqlx::Error> {
        if let Some(service) = lock(&self.services).get(check_id) {
            return Ok(service.clone());
        }
        let row = sqlx::query(
            "SELECT CAST(payload AS TEXT) AS payload FROM events \
             WHERE aggregate_type = 'HealthCheck' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(check_id)
        .fetch_optional(&self.store.pool)
        .await?;
        let registered = row
            .map(|r| r.try_get::<String, _>("payload"))
            .transpose()?
            .and_then(|text| serde_json::from_str::<HealthCheckEvent>(&text).ok());
        let service = match registered {
            Some(HealthCheckEvent::HealthCheckRegistered { definition, .. }) => {
                definition.service_name
            }
            // Ids are `<service>-<check type>`; good enough for a check whose
            // registration is gone.
            _ => check_id
                .rsplit_once('-')
                .map_or(check_id, |(service, _)| service)
                .to_string(),
        };
        lock(&self.services).insert(check_id.to_string(), service.clone());
        Ok(service)
    }

    /// Sends the window's datums: marks batches as publishing, checks every datum against
    /// CloudWatch's limits, packs requests, sends them, and confirms each batch as soon as
    /// the request with its last datum succeeded.
    async fn send_metrics(
        &self,
        mut units: Vec<Origin>,
        batches: Vec<(String, Metrics)>,
        mut datums: Vec<(usize, Datum)>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), WindowError> {
        // Start publishing every batch, in one commit; one already published or failed
        // is skipped.
        let at = Utc::now();
        let commands = batches
            .iter()
            .map(|(id, _)| (id.clone(), MetricsCommand::PublishMetrics { at }))
            .collect();
        let results = self.app.update_metrics_statuses(commands).await;
        let started = batches
            .into_iter()
            .zip(results)
            .map(|((id, batch), result)| (id, batch, result));
        let now = Utc::now();
        for (id, batch, result) in started {
            match result {
                Ok(()) => {}
                // Already published or failed: a resend after a crash.
                Err(AppError::Conflict(_)) => continue,
                // Nothing publishable (an empty or vanished batch): skipping it is all
                // that can be done, and blocking the stream on it would be worse.
                Err(AppError::Invalid(_) | AppError::NotFound(_)) => {
                    tracing::warn!(metrics_id = %id, "batch cannot be published; skipped");
                    continue;
                }
                Err(other) => return Err(other.into()),
            }
            let unit = units.len();
            units.push(Origin::Batch(id.clone()));
            let batch_datums = cloudwatch::batch_datums(&batch);
            // One datum CloudWatch would refuse fails the whole request: catch it here,
            // before it can take other batches down with it.
            if let Some(err) = batch_datums
                .iter()
                .enumerate()
                .find_map(|(i, d)| cloudwatch::validate(d, now).err().map(|e| (i, e)))
            {
                let reason = format!("datum {}: {}", err.0, err.1);
                self.fail(&units[unit], &reason).await?;
                continue;
            }
            datums.extend(batch_datums.into_iter().map(|d| (unit, d)));
        }

        let mut outstanding = vec![0usize; units.len()];
        // Why a unit failed, and where its datums were delivered before it did: a
        // batch's standard and custom metrics go in separate requests.
        let mut failed: Vec<Option<String>> = vec![None; units.len()];
        let mut delivered: Vec<Vec<String>> = vec![Vec::new(); units.len()];
        let requests = pack(datums);
        for request in &requests {
            for part in &request.parts {
                outstanding[part.unit] += 1;
            }
        }
        let mut queue: Vec<Request> = requests.into_iter().rev().collect();
        while let Some(request) = queue.pop() {
            match self
                .send_with_retry(shutdown, || {
                    let datums = request.datums();
                    let namespace = request.namespace.clone();
                    async move { self.cloudwatch.put(&namespace, &datums).await }
                })
                .await?
            {
                Ok(()) => {
                    let mut done = Vec::new();
                    let mut refused = Vec::new();
                    for part in &request.parts {
                        let unit = part.unit;
                        outstanding[unit] -= 1;
                        if !delivered[unit].contains(&request.namespace) {
                            delivered[unit].push(request.namespace.clone());
                        }
                        if outstanding[unit] > 0 {
                            continue;
                        }
                        match (&failed[unit], &units[unit]) {
                            (Some(_), _) => refused.push(unit),
                            (None, Origin::Batch(id)) => done.push(id.clone()),
                            (None, Origin::Health { .. }) => {}
                        }
                    }
                    // Confirm at once and in one commit: until it is stored, a crash
                    // resends these batches and CloudWatch counts them twice.
                    self.confirm(done).await?;
                    for unit in refused {
                        let reason = failure_reason(&failed[unit], &delivered[unit]);
                        self.fail(&units[unit], &reason).await?;
                    }
                    let sent = request.parts.iter().map(|p| p.datums.len()).sum::<usize>();
                    self.stats.datums.fetch_add(sent as u64, Ordering::Relaxed);
                    if !self.acquire().await? {
                        return Err(WindowError::LostLease);
                    }
                }
                Err(reason) if request.parts.len() > 1 => {
                    // Find the culprit: send each origin's datums on its own.
                    tracing::warn!(reason = %reason, "request refused; resending per origin");
                    for part in request.parts.into_iter().rev() {
                        queue.push(Request {
                            namespace: request.namespace.clone(),
                            parts: vec![part],
                        });
                    }
                }
                Err(reason) => {
                    let unit = request.parts[0].unit;
                    outstanding[unit] -= 1;
                    if failed[unit].is_none() {
                        failed[unit] = Some(format!("{} refused: {reason}", request.namespace));
                    }
                    if outstanding[unit] == 0 {
                        let reason = failure_reason(&failed[unit], &delivered[unit]);
                        self.fail(&units[unit], &reason).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn confirm(&self, batches: Vec<String>) -> Result<(), WindowError> {
        let at = Utc::now();
        let commands = batches
            .into_iter()
            .map(|id| (id, MetricsCommand::ConfirmPublished { at }))
            .collect();
        for result in self.app.update_metrics_statuses(commands).await {
            match result {
                // Confirming is idempotent; a batch that vanished has nothing to confirm.
                Ok(()) | Err(AppError::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Records a permanent refusal; a batch also gets its `MetricsPublishFailed` event.
    async fn fail(&self, origin: &Origin, reason: &str) -> Result<(), WindowError> {
        let at = Utc::now();
        let (target, aggregate_type, aggregate_id, sequence) = match origin {
            Origin::Batch(id) => {
                self.app
                    .update_metrics_status(
                        id,
                        MetricsCommand::FailPublishing {
                            reason: reason.to_string(),
                            at,
                        },
                    )
                    .await?;
                ("cloudwatch", "Metrics", id.as_str(), 1)
            }
            Origin::Health { check_id, sequence } => {
                ("cloudwatch", "HealthCheck", check_id.as_str(), *sequence)
            }
        };
        self.record_failure(target, aggregate_type, aggregate_id, sequence, reason, at)
            .await?;
        Ok(())
    }

    async fn record_failure(
        &self,
        target: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(
            target_service = target,
            aggregate_type,
            aggregate_id,
            sequence,
            reason,
            "AWS refused a record for good; recorded and skipped"
        );
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.note_error(reason);
        sqlx::query(
            "INSERT INTO publish_failures (target, aggregate_type, aggregate_id, sequence, \
             reason, failed_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(target)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(reason)
        .bind(at.timestamp_millis())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    /// Sends the documents of the window's completed traces, several traces per
    /// `PutTraceSegments` call. A call refused for good is repeated one trace at a time,
    /// so that only the offending trace is recorded as failed.
    async fn send_traces(
        &self,
        traces: Vec<(String, i64)>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), WindowError> {
        let mut built = Vec::with_capacity(traces.len());
        for (trace_id, sequence) in traces {
            let history = event_log::aggregate_history(&self.store, "Trace", &trace_id).await?;
            let events: Vec<TraceEvent> = history
                .iter()
                // As of the planned event, not of whatever came since: an error's
                // window must not send a completion that its own window sends again.
                .filter(|e| e.sequence <= sequence)
                .filter_map(|e| e.parse(PUBLISHER))
                .collect();
            let version = &self.settings.service_version;
            if let Some(trace) = TraceForXray::from_events(&trace_id, version, &events) {
                built.push((trace_id, sequence, xray::segment_documents(&trace)));
            }
        }

        let groups = group_whole(built, |trace| trace.2.len(), xray::MAX_DOCUMENTS_PER_CALL);
        let mut queue: Vec<Vec<(String, i64, Vec<Value>)>> = groups.into_iter().rev().collect();
        while let Some(group) = queue.pop() {
            let docs: Vec<Value> = group.iter().flat_map(|t| t.2.iter().cloned()).collect();
            let count = docs.len();
            let outcome = self
                .send_with_retry(shutdown, || {
                    let docs = docs.clone();
                    async move { self.xray.put(docs).await }
                })
                .await?;
            match outcome {
                Ok(()) => {
                    self.stats
                        .segments
                        .fetch_add(count as u64, Ordering::Relaxed);
                }
                Err(reason) if group.len() > 1 => {
                    tracing::warn!(reason = %reason, "segments refused; resending per trace");
                    queue.extend(group.into_iter().rev().map(|trace| vec![trace]));
                }
                Err(reason) => {
                    let (trace_id, sequence, _) = &group[0];
                    let at = Utc::now();
                    self.record_failure("xray", "Trace", trace_id, *sequence, &reason, at)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Calls `send` until it succeeds or fails for good, backing off between retryable
    /// failures and renewing the lease meanwhile. The outer error means "stop": shutdown
    /// or a lost lease.
    async fn send_with_retry<F, Fut>(
        &self,
        shutdown: &watch::Receiver<bool>,
        send: F,
    ) -> Result<Result<(), String>, WindowError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PublishError>>,
    {
        let mut attempt = 0u32;
        loop {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            *lock(&self.stats.call_started) = Some(Utc::now());
            let outcome = self.call(shutdown, send()).await;
            *lock(&self.stats.call_started) = None;
            match outcome? {
                Ok(()) => return Ok(Ok(())),
                Err(PublishError::Permanent(reason)) => return Ok(Err(reason)),
                Err(PublishError::Retryable(reason)) => {
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.retrying.store(true, Ordering::Relaxed);
                    self.note_error(&reason);
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(attempt, reason = %reason, "AWS call failed; retrying");
                    }
                    let mut shutdown = shutdown.clone();
                    if !self.pause(attempt, &mut shutdown).await {
                        return Err(WindowError::Stopped);
                    }
                    if !self.acquire().await? {
                        return Err(WindowError::LostLease);
                    }
                }
            }
        }
    }

    /// One AWS call, bounded by [`CALL_TIMEOUT`], while the lease is kept alive beside
    /// it: a call may outlast the lease, and another instance must not take over and send
    /// the same window meanwhile. A shutdown abandons the call (it is resent after the
    /// restart, like a call that timed out).
    async fn call(
        &self,
        shutdown: &watch::Receiver<bool>,
        request: impl std::future::Future<Output = Result<(), PublishError>>,
    ) -> Result<Result<(), PublishError>, WindowError> {
        let bounded = async {
            match tokio::time::timeout(CALL_TIMEOUT, request).await {
                Ok(result) => result,
                Err(_) => Err(PublishError::Retryable(format!(
                    "no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
            }
        };
        let keep_lease = async {
            loop {
                tokio::time::sleep(self.settings.lease / 3).await;
                match self.acquire().await {
                    Ok(true) => {}
                    Ok(false) => return WindowError::LostLease,
                    Err(err) => return WindowError::Db(err),
                }
            }
        };
        let mut shutdown = shutdown.clone();
        tokio::select! {
            result = bounded => Ok(result),
            err = keep_lease => Err(err),
            _ = shutdown.changed() => Err(WindowError::Stopped),
        }
    }

    /// Sleeps an exponential backoff with jitter; returns false when shutdown came first.
    async fn pause(&self, attempt: u32, shutdown: &mut watch::Receiver<bool>) -> bool {
        let delay = backoff(
            attempt,
            self.settings.backoff_base,
            self.settings.backoff_max,
            &mut rand::thread_rng(),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => !*shutdown.borrow(),
            _ = shutdown.changed() => false,
        }
    }

    fn note_error(&self, reason: &str) {
        *lock(&self.stats.last_error) = Some((reason.to_string(), Utc::now()));
    }

    /// What `/healthz` shows: lag, backlog, counters and the last error.
    ///
    /// # Errors
    ///
    /// Any database error.
    pub async fn status(&self) -> Result<Value, sqlx::Error> {
        let at = event_log::read_checkpoint(&self.store, PUBLISHER).await?;
        let (backlog, oldest) = event_log::backlog(&self.store, at).await?;
        let failures: i64 =
            sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM publish_failures")
                .fetch_one(&self.store.pool)
                .await?;
        let now = Utc::now().timestamp_millis();
        let stats = &self.stats;
        let last_error = lock(&stats.last_error).clone();
        Ok(json!({
            "enabled": true,
            "leader": stats.leader.load(Ordering::Relaxed),
            "checkpoint": {"tx_id": at.tx_id, "position": at.position},
            "backlog_events": backlog,
            "oldest_unpublished_age_ms": oldest.map(|t| (now - t).max(0)),
            "datums_published": stats.datums.load(Ordering::Relaxed),
            "segments_published": stats.segments.load(Ordering::Relaxed),
            "requests": stats.requests.load(Ordering::Relaxed),
            "retries": stats.retries.load(Ordering::Relaxed),
            "retrying": stats.retrying.load(Ordering::Relaxed),
            "failures": failures,
            "last_error": last_error.as_ref().map(|(reason, _)| reason),
            "last_error_at": last_error.as_ref().map(|(_, at)| at),
            "last_success": *lock(&stats.last_success),
            // A call hanging on a frozen endpoint shows here before it times out.
            "current_call_age_ms": lock(&stats.call_started)
                .map(|at| (Utc::now() - at).num_milliseconds().max(0)),
        }))
    }

    /// The most recent refusals, newest first: what AWS refused for good, and why.
    ///
    /// # Errors
    ///
    /// Any database error.
    pub async fn failures(store: &Store, limit: i64) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT target, aggregate_type, aggregate_id, sequence, reason, failed_at_ms \
             FROM publish_failures ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&store.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let at: i64 = row.try_get("failed_at_ms")?;
                Ok(json!({
                    "target": row.try_get::<String, _>("target")?,
                    "aggregate_type": row.try_get::<String, _>("aggregate_type")?,
                    "aggregate_id": row.try_get::<String, _>("aggregate_id")?,
                    "sequence": row.try_get::<i64, _>("sequence")?,
                    "reason": row.try_get::<String, _>("reason")?,
                    "failed_at": DateTime::<Utc>::from_timestamp_millis(at),
                }))
            })
            .collect()
    }
}

/// Groups items in order so that each group holds at most `limit` of what `size` counts,
/// never splitting an item; an item larger than `limit` gets a group of its own.
fn group_whole<T>(items: Vec<T>, size: impl Fn(&T) -> usize, limit: usize) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut in_last = 0;
    for item in items {
        let n = size(&item);
        match groups.last_mut() {
            Some(group) if in_last + n <= limit => {
                group.push(item);
                in_last += n;
            }
            _ => {
                groups.push(vec![item]);
                in_last = n;
            }
        }
    }
    groups
}

/// The recorded reason of a failed unit: what was refused, and what of it had been
/// delivered all the same.
fn failure_reason(refused: &Option<String>, delivered: &[String]) -> String {
    let refused = refused.as_deref().unwrap_or("refused");
    if delivered.is_empty() {
        refused.to_string()
    } else {
        format!(
            "{refused} (the datums in {} were delivered)",
            delivered.join(", ")
        )
    }
}

/// Packs datums into requests: by namespace, each origin's datums kept together, at most
/// [`cloudwatch::MAX_DATUMS_PER_REQUEST`] datums and
/// [`cloudwatch::MAX_REQUEST_BYTES`] estimated bytes per request.
fn pack(datums: Vec<(usize, Datum)>) -> Vec<Request> {
    // (namespace, unit) -> datums, in first-seen order.
    let mut groups: Vec<((String, usize), Vec<Datum>)> = Vec::new();
    let mut index: HashMap<(String, usize), usize> = HashMap::new();
    for (unit, datum) in datums {
        let key = (datum.namespace.clone(), unit);
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(datum);
    }

    let mut by_namespace: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for ((namespace, unit), datums) in groups {
        by_namespace
            .entry(namespace)
            .or_default()
            .push(Part { unit, datums });
    }

    let mut requests = Vec::new();
    for (namespace, parts) in by_namespace {
        let overhead = cloudwatch::estimated_request_bytes(&namespace, &[]);
        let mut current: Vec<Part> = Vec::new();
        let (mut count, mut bytes) = (0, overhead);
        for part in parts {
            let part_bytes =
                cloudwatch::estimated_request_bytes(&namespace, &part.datums) - overhead;
            if part.datums.len() > cloudwatch::MAX_DATUMS_PER_REQUEST
                || overhead + part_bytes > cloudwatch::MAX_REQUEST_BYTES
            {
                // Too big for one request on its own: its own requests, in order.
                for (ns, chunk) in cloudwatch::chunk_for_put(part.datums) {
                    requests.push(Request {
                        namespace: ns,
                        parts: vec![Part {
                            unit: part.unit,
                            datums: chunk,
                        }],
                    });
                }
                continue;
            }
            let fits = count + part.datums.len() <= cloudwatch::MAX_DATUMS_PER_REQUEST
                && bytes + part_bytes <= cloudwatch::MAX_REQUEST_BYTES;
            if !fits {
                requests.push(Request {
                    namespace: namespace.clone(),
                    parts: std::mem::take(&mut current),
                });
                (count, bytes) = (0, overhead);
            }
            count += part.datums.len();
            bytes += part_bytes;
            current.push(part);
        }
        if !current.is_empty() {
            requests.push(Request {
                namespace,
                parts: current,
            });
        }
    }
    requests
}

/// Exponential backoff with jitter: a uniform delay between half and all of
/// `base · 2^(attempt-1)`, capped at `max`, so that instances retrying together spread
/// out while the delay still grows.
fn backoff(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(max).as_millis().max(1) as u64;
    Duration::from_millis(rng.gen_range(ceiling / 2..=ceiling))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain counters and strings: a panic elsewhere cannot leave
    // them half-written, so a poisoned lock is still safe to use.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skafu_domain::metrics::MetricUnit;

    fn datum(namespace: &str, name: &str) -> Datum {
        Datum {
            namespace: namespace.into(),
            name: name.into(),
            value: 1.0,
            unit: MetricUnit::Count,
            timestamp: Utc::now(),
            dimensions: vec![("ServiceName".into(), "svc".into())],
            storage_resolution: 60,
        }
    }

    #[test]
    fn packing_keeps_each_origin_whole_and_respects_the_datum_limit() {
        // 3 origins of 400 datums each: two fit a 1000-datum request, the third does not.
        let mut datums = Vec::new();
        for unit in 0..3 {
            for i in 0..400 {
                datums.push((unit, datum("Skafu", &format!("m{i}"))));
            }
        }
        let requests = pack(datums);
        let shape: Vec<Vec<(usize, usize)>> = requests
            .iter()
            .map(|r| r.parts.iter().map(|p| (p.unit, p.datums.len())).collect())
            .collect();
        assert_eq!(shape, vec![vec![(0, 400), (1, 400)], vec![(2, 400)]]);
    }

    #[test]
    fn packing_separates_namespaces_and_splits_an_oversized_origin() {
        let mut datums = vec![(0, datum("Skafu/CustomMetrics", "c"))];
        for i in 0..1500 {
            datums.push((1, datum("Skafu", &format!("m{i}"))));
        }
        datums.push((0, datum("Skafu", "s")));
        let requests = pack(datums);
        let shape: Vec<(String, Vec<(usize, usize)>)> = requests
            .iter()
            .map(|r| {
                (
                    r.namespace.clone(),
                    r.parts.iter().map(|p| (p.unit, p.datums.len())).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("Skafu".to_string(), vec![(1, 1000)]),
                ("Skafu".to_string(), vec![(1, 500)]),
                ("Skafu".to_string(), vec![(0, 1)]),
                ("Skafu/CustomMetrics".to_string(), vec![(0, 1)]),
            ]
        );
        for request in &requests {
            assert!(request.datums().len() <= cloudwatch::MAX_DATUMS_PER_REQUEST);
        }
    }

    #[test]
    fn traces_are_grouped_whole_up_to_a_calls_worth_of_documents() {
        let groups = group_whole(vec![20, 25, 10, 70, 3, 50], |n| *n, 50);
        assert_eq!(
            groups,
            vec![vec![20, 25], vec![10], vec![70], vec![3], vec![50]]
        );
        assert!(group_whole(Vec::<usize>::new(), |n| *n, 50).is_empty());
    }

    #[test]
    fn backoff_grows_exponentially_within_jittered_bounds_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut rng = rand::thread_rng();
        for (attempt, ceiling_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3200),
            (7, 5000),
            (40, 5000),
        ] {
            for _ in 0..50 {
                let d = backoff(attempt, base, max, &mut rng).as_millis() as u64;
                assert!(
                    (ceiling_ms / 2..=ceiling_ms).contains(&d),
                    "attempt {attempt}: {d} ms outside {}..={ceiling_ms}",
                    ceiling_ms / 2
                );
            }
        }
    }
}
