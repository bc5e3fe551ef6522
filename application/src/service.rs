//! Every write use case of the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventRepository;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventStore};
use futures::StreamExt;
use rand::Rng;
use skafu_domain::health::{CheckOutcome, HealthCheck, HealthCheckCommand, HealthCheckDefinition};
use skafu_domain::metrics::{
    CustomMetricInput, MetricInput, MetricSource, Metrics, MetricsCommand, RecordMetrics,
};
use skafu_domain::trace::{SpanInput, Trace, TraceCommand, TraceId};
use skafu_domain::validation::{check_name, check_value, FieldError};

use crate::error::{from_aggregate, AppError};
use crate::ports::{HealthProbe, SnapshotRepository};
use crate::store::SnapshotStore;

/// How many times a command is retried when another writer committed to the same
/// aggregate first. Each retry reloads the aggregate, so the command is decided again on
/// the newer state; nothing the first writer did is overwritten.
const CONFLICT_RETRIES: u32 = 20;

/// Aggregates loaded at once by [`Observability::update_metrics_statuses`].
const LOAD_CONCURRENCY: usize = 8;

/// Events between two snapshots of an aggregate.
pub const SNAPSHOT_EVERY: usize = 100;

/// The write side of the service.
pub struct Observability<R: PersistedEventRepository> {
    metrics: CqrsFramework<Metrics, SnapshotStore<R, Metrics>>,
    traces: CqrsFramework<Trace, SnapshotStore<R, Trace>>,
    health: CqrsFramework<HealthCheck, SnapshotStore<R, HealthCheck>>,
    health_store: SnapshotStore<R, HealthCheck>,
    metrics_store: SnapshotStore<R, Metrics>,
    probe: Arc<dyn HealthProbe>,
}

/// A performance measurement of one operation (`record_performance_metric`).
#[derive(Debug, Clone)]
pub struct PerformanceInput {
    /// The service.
    pub service_name: String,
    /// The operation.
    pub operation_name: String,
    /// Its duration in milliseconds; finite and not negative.
    pub duration_ms: f64,
    /// Whether it succeeded.
    pub success: bool,
}

/// A business metric (`record_business_metric`).
#[derive(Debug, Clone)]
pub struct BusinessMetricInput {
    /// The service.
    pub service_name: String,
    /// Metric name.
    pub metric_name: String,
    /// Value.
    pub value: f64,
    /// Business context.
    pub business_context: String,
    /// Tags, published as dimensions.
    pub tags: BTreeMap<String, String>,
}

/// A new batch of metrics as received from `POST /v1/metrics`.
#[derive(Debug, Clone)]
pub struct MetricsInput {
    /// The service.
    pub service_name: String,
    /// Batch dimensions.
    pub dimensions: BTreeMap<String, String>,
    /// Standard metrics.
    pub metrics: Vec<MetricInput>,
    /// Business metrics.
    pub custom_metrics: Vec<CustomMetricInput>,
}

/// Renames a field path of the generic batch to the field a narrower request used.
fn renamed(err: FieldError, from: &str, to: &str) -> FieldError {
    match err.field.strip_prefix(from) {
        Some(rest) => FieldError::new(format!("{to}{rest}"), err.message),
        None => err,
    }
}

fn invalid_to(from: &'static str, to: &'static str) -> impl Fn(AppError) -> AppError {
    move |e| match e {
        AppError::Invalid(f) => AppError::Invalid(renamed(f, from, to)),
        other => other,
    }
}

impl<R: PersistedEventRepository + 'static> Observability<R> {
    /// Builds the use cases over one event repository.
    pub fn new(
        repo: Arc<R>,
        snapshots: Arc<dyn SnapshotRepository>,
        probe: Arc<dyn HealthProbe>,
    ) -> Self {
        // Metrics batches and traces are short streams; only health checks grow.
        Self {
            metrics: CqrsFramework::new(
                SnapshotStore::new(repo.clone(), snapshots.clone(), 0),
                vec![],
                (),
            ),
            traces: CqrsFramework::new(
                SnapshotStore::new(repo.clone(), snapshots.clone(), 0),
                vec![],
                (),
            ),
            health: CqrsFramework::new(
                SnapshotStore::new(repo.clone(), snapshots.clone(), SNAPSHOT_EVERY),
                vec![],
                (),
            ),
            health_store: SnapshotStore::new(repo.clone(), snapshots.clone(), SNAPSHOT_EVERY),
            metrics_store: SnapshotStore::new(repo, snapshots, 0),
            probe,
        }
    }

    /// Records a batch of metrics and returns its id.
    ///
    /// # Errors
    ///
    /// [`AppError::Invalid`] naming the first bad field; nothing is stored then.
    pub async fn record_metrics(&self, input: MetricsInput) -> Result<String, AppError> {
        self.record_batch(RecordMetrics {
            service_name: input.service_name,
            dimensions: input.dimensions,
            metrics: input.metrics,
            custom_metrics: input.custom_metrics,
            source: MetricSource::Api,
            received_at: Utc::now(),
        })
        .await
    }

    /// Records an operation's duration and outcome as the design document's two metrics,
    /// `<operation>_duration` (ms) and `<operation>_success` (count), with the
    /// `ServiceName` and `OperationName` dimensions. Returns the batch id.
    ///
    /// # Errors
    ///
    /// [`AppError::Invalid`] naming the bad field.
    pub async fn record_performance(&self, input: PerformanceInput) -> Result<String, AppError> {
        check_name("operation_name", &input.operation_name)?;
        check_value("duration_ms", input.duration_ms)?;
        if input.duration_ms < 0.0 {
            return Err(FieldError::new("duration_ms", "must not be negative").into());
        }
        let op = &input.operation_name;
        let metric = |name: String, value: f64, unit: &str| MetricInput {
            name,
            value,
            unit: unit.to_string(),
            timestamp: None,
            dimensions: BTreeMap::new(),
        };
        let cmd = RecordMetrics {
            dimensions: BTreeMap::from([
                ("ServiceName".to_string(), input.service_name.clone()),
                ("OperationName".to_string(), op.clone()),
            ]),
            metrics: vec![
                metric(format!("{op}_duration"), input.duration_ms, "Milliseconds"),
                metric(
                    format!("{op}_success"),
                    if input.success { 1.0 } else { 0.0 },
                    "Count",
                ),
            ],
            custom_metrics: vec![],
            source: MetricSource::Performance {
                operation_name: op.clone(),
                duration_ms: input.duration_ms,
                success: input.success,
            },
            service_name: input.service_name,
            received_at: Utc::now(),
        };
        // A too-long operation name overflows the derived metric names.
        self.record_batch(cmd)
            .await
            .map_err(invalid_to("metrics[0].name", "operation_name"))
            .map_err(invalid_to("metrics[1].name", "operation_name"))
            .map_err(invalid_to("dimensions.OperationName", "operation_name"))
            .map_err(invalid_to("dimensions.ServiceName", "service_name"))
    }

    /// Records one business metric. Returns the batch id.
    ///
    /// # Errors
    ///
    /// [`AppError::Invalid`] naming the bad field.
    pub async fn record_business(&self, input: BusinessMetricInput) -> Result<String, AppError> {
        let cmd = RecordMetrics {
            service_name: input.service_name,
            dimensions: BTreeMap::new(),
            metrics: vec![],
            custom_metrics: vec![CustomMetricInput {
                name: input.metric_name,
                value: input.value,
                business_context: input.business_context,
                tags: input.tags,
                timestamp: None,
            }],
            source: MetricSource::Business,
            received_at: Utc::now(),
        };
        self.record_batch(cmd)
            .await
            .map_err(invalid_to("custom_metrics[0].name", "metric_name"))
            .map_err(invalid_to("custom_metrics[0].", ""))
    }

    async fn record_batch(&self, cmd: RecordMetrics) -> Result<String, AppError> {
        let id = uuid::Uuid::new_v4().to_string();
        execute(&self.metrics, &id, MetricsCommand::RecordMetrics(cmd)).await?;
        Ok(id)
    }

    /// Applies a publishing-status command to a batch (used by the CloudWatch publisher).
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`] for an unknown batch, [`AppError::Internal`] on storage
    /// failure.
    pub async fn update_metrics_status(
        &self,
        metrics_id: &str,
        command: MetricsCommand,
    ) -> Result<(), AppError> {
        execute(&self.metrics, metrics_id, command).await
    }

    /// Applies publishing-status commands to many batches with one commit, and returns
    /// each command's outcome in order. A command the batch refuses (already published,
    /// unknown) fails alone; when another writer raced for one of the batches, the
    /// commands are applied one by one instead.
    pub async fn update_metrics_statuses(
        &self,
        commands: Vec<(String, MetricsCommand)>,
    ) -> Vec<Result<(), AppError>> {
        let mut results: Vec<Option<Result<(), AppError>>> =
            commands.iter().map(|_| None).collect();
        let mut changes = Vec::new();
        let mut changed = Vec::new();
        // Loading is most of the work and the aggregates are independent: load several
        // at once (PostgreSQL serves them on separate connections).
        let decided: Vec<_> = futures::stream::iter(commands.iter().cloned())
            .map(|(id, command)| async move {
                let mut context = self
                    .metrics_store
                    .load_aggregate(&id)
                    .await
                    .map_err(|err| from_aggregate(err, Into::into))?;
                let sink = EventSink::default();
                context
                    .aggregate
                    .handle(command, &(), &sink)
                    .await
                    .map_err(AppError::from)?;
                Ok::<_, AppError>((context, sink.collect().await))
            })
            .buffered(LOAD_CONCURRENCY)
            .collect()
            .await;
        for (i, outcome) in decided.into_iter().enumerate() {
            match outcome {
                Err(err) => results[i] = Some(Err(err)),
                Ok((_, events)) if events.is_empty() => results[i] = Some(Ok(())),
                Ok(change) => {
                    changes.push(change);
                    changed.push(i);
                }
            }
        }
        match self.metrics_store.commit_all(changes).await {
            Ok(()) => {
                for i in changed {
                    results[i] = Some(Ok(()));
                }
            }
            Err(AggregateError::AggregateConflict) => {
                for i in changed {
                    let (id, command) = &commands[i];
                    results[i] = Some(execute(&self.metrics, id, command.clone()).await);
                }
            }
            Err(err) => {
                let message = err.to_string();
                for i in changed {
                    results[i] = Some(Err(AppError::Internal(message.clone())));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(AppError::Internal("no outcome".into()))))
            .collect()
    }

    /// Starts a trace, with the caller's id when given, and returns the id.
    ///
    /// # Errors
    ///
    /// [`AppError::Invalid`] for a malformed id or name, [`AppError::Conflict`] when the
    /// id is taken.
    pub async fn start_trace(
        &self,
        service_name: String,
        operation_name: String,
        trace_id: Option<String>,
    ) -> Result<String, AppError> {
        let now = Utc::now();
        let id = match trace_id {
            Some(id) => id.parse::<TraceId>()?,
            None => TraceId::generate(now, &mut rand::thread_rng()),
        };
        let cmd = TraceCommand::StartTrace {
            service_name,
            operation_name,
            started_at: now,
        };
        execute(&self.traces, id.as_str(), cmd).await?;
        Ok(id.to_string())
    }

    /// Adds a span to an open trace and returns the span's id.
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`], [`AppError::Conflict`] for a finished trace,
    /// [`AppError::Invalid`].
    pub async fn add_span(&self, trace_id: &str, span: SpanInput) -> Result<String, AppError> {
        let span_id = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let cmd = TraceCommand::AddSpan {
            span,
            span_id: span_id.clone(),
            received_at: Utc::now(),
        };
        execute(&self.traces, trace_id, cmd).await?;
        Ok(span_id)
    }

    /// Adds (or replaces) an annotation on an open trace.
    ///
    /// # Errors
    ///
    /// As [`Observability::add_span`].
    pub async fn add_annotation(
        &self,
        trace_id: &str,
        key: String,
        value: String,
    ) -> Result<(), AppError> {
        execute(
            &self.traces,
            trace_id,
            TraceCommand::AddAnnotation { key, value },
        )
        .await
    }

    /// Records an error on an open trace.
    ///
    /// # Errors
    ///
    /// As [`Observability::add_span`].
    pub async fn mark_error(&self, trace_id: &str, error: String) -> Result<(), AppError> {
        let cmd = TraceCommand::MarkError {
            error,
            at: Utc::now(),
        };
        execute(&self.traces, trace_id, cmd).await
    }

    /// Completes a trace.
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`], or [`AppError::Conflict`] when already completed.
    pub async fn complete_trace(&self, trace_id: &str) -> Result<(), AppError> {
        let cmd = TraceCommand::CompleteTrace { at: Utc::now() };
        execute(&self.traces, trace_id, cmd).await
    }

    /// Registers a health check and returns its id, `<service>-<check type>`.
    ///
    /// # Errors
    ///
    /// [`AppError::Invalid`], or [`AppError::Conflict`] when the id is registered with
    /// a different definition.
    pub async fn register_health_check(
        &self,
        definition: HealthCheckDefinition,
    ) -> Result<String, AppError> {
        // Validate before building the id: a bad service name must be reported as
        // such, not as an odd aggregate id.
        definition.validate()?;
        let id = definition.id();
        let cmd = HealthCheckCommand::Register {
            definition,
            at: Utc::now(),
        };
        execute(&self.health, &id, cmd).await?;
        Ok(id)
    }

    /// The definition of a registered check.
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`] for an unknown id.
    pub async fn health_check_definition(
        &self,
        id: &str,
    ) -> Result<HealthCheckDefinition, AppError> {
        let context = self
            .health_store
            .load_aggregate(id)
            .await
            .map_err(|e| from_aggregate(e, AppError::from))?;
        context
            .aggregate
            .definition
            .ok_or_else(|| AppError::NotFound("health check not found".into()))
    }

    /// Runs a registered check now, records the outcome and returns it.
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`] for an unknown id, [`AppError::Internal`] when the result
    /// cannot be stored.
    pub async fn run_health_check(&self, id: &str) -> Result<CheckOutcome, AppError> {
        let definition = self.health_check_definition(id).await?;
        let outcome = self.probe.probe(&definition).await;
        self.record_check_result(id, outcome.clone()).await?;
        Ok(outcome)
    }

    /// Records a check outcome measured elsewhere.
    ///
    /// # Errors
    ///
    /// [`AppError::NotFound`] for an unknown id.
    pub async fn record_check_result(
        &self,
        id: &str,
        outcome: CheckOutcome,
    ) -> Result<(), AppError> {
        let cmd = HealthCheckCommand::RecordResult {
            outcome,
            checked_at: Utc::now(),
        };
        execute(&self.health, id, cmd).await
    }
}

/// Executes a command, retrying with jitter when another writer won the race for the
/// aggregate. The framework reports that race as a conflict and retries nothing itself.
async fn execute<A, ES>(
    cqrs: &CqrsFramework<A, ES>,
    id: &str,
    command: A::Command,
) -> Result<(), AppError>
where
    A: Aggregate,
    A::Command: Clone,
    A::Error: Into<AppError>,
    ES: EventStore<A>,
{
    let mut attempt = 0;
    loop {
        match cqrs.execute(id, command.clone()).await {
            Ok(()) => return Ok(()),
            Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => {
                attempt += 1;
                let jitter = rand::thread_rng().gen_range(1..=5 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(err) => return Err(from_aggregate(err, Into::into)),
        }
    }
}
