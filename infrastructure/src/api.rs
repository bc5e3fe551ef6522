//! The JSON HTTP API under `/v1`, plus `/healthz`.
//!
//! Handlers parse, call one use case, wait (briefly) until the read models show the
//! change, and answer. Every error has the shape
//! `{"error": {"code", "message", "field"}}`: 400 for malformed input, 422 for a broken
//! rule, 404, 409, 413 for an oversized body, and 500 with a generic message whose cause
//! is logged once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use skafu_application::service::{
    BusinessMetricInput, MetricsInput, Observability, PerformanceInput,
};
use skafu_application::AppError;
use skafu_domain::health::{
    CheckOutcome, HealthCheckDefinition, DEFAULT_DEGRADED_AFTER_MS, DEFAULT_INTERVAL_SECONDS,
    DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_SECONDS,
};
use skafu_domain::metrics::{CustomMetricInput, MetricInput};
use skafu_domain::trace::SpanInput;

use crate::db::{AnyRepository, Store};
use crate::event_log;
use crate::projector::Projector;
use crate::publisher::Publisher;
use crate::read_models;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a write waits for the read models to show it before answering anyway.
const CONSISTENCY_WAIT: Duration = Duration::from_secs(5);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The use cases.
    pub app: Arc<Observability<AnyRepository>>,
    /// The store, for queries.
    pub store: Store,
    /// The projector, to wait for read-your-writes.
    pub projector: Arc<Projector>,
    /// The AWS publisher, when publishing is on; its status is shown by `/healthz`.
    pub publisher: Option<Arc<Publisher>>,
}

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not the JSON expected.
    Malformed {
        /// What is wrong.
        message: String,
        /// Path of the field, when known.
        field: Option<String>,
    },
    /// 413.
    TooLarge,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// Anything from a use case.
    App(AppError),
    /// 500 from a query.
    Internal(String),
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self::App(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::App(AppError::NotFound(format!("{what} not found")))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match self {
            ApiError::Malformed { message, field } => {
                (StatusCode::BAD_REQUEST, "malformed_request", message, field)
            }
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                None,
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept this method".to_string(),
                None,
            ),
            ApiError::App(AppError::Invalid(e)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.message,
                Some(e.field),
            ),
            ApiError::App(AppError::NotFound(m)) => (StatusCode::NOT_FOUND, "not_found", m, None),
            ApiError::App(AppError::Conflict(m)) => (StatusCode::CONFLICT, "conflict", m, None),
            ApiError::App(AppError::Internal(cause)) | ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                    None,
                )
            }
        };
        let body = json!({"error": {"code": code, "message": message, "field": field}});
        (status, Json(body)).into_response()
    }
}

/// A JSON body whose errors name the offending field (`metrics[3].value`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::Malformed {
                    message: rejection.body_text(),
                    field: None,
                }
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let field = offending_field(err.path(), err.inner());
            ApiError::Malformed {
                message: err.into_inner().to_string(),
                field,
            }
        })?;
        de.end().map_err(|e| ApiError::Malformed {
            message: e.to_string(),
            field: None,
        })?;
        Ok(Self(value))
    }
}

/// A query string whose errors have the API's error shape and name the parameter.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(value)| Self(value))
            .map_err(|rejection| {
                let message = rejection.body_text();
                // axum words it "Failed to deserialize query string: <parameter>: <why>";
                // without a parameter there are only two parts.
                let mut parts = message.splitn(3, ": ");
                let field = match (parts.next(), parts.next(), parts.next()) {
                    (Some(_), Some(name), Some(_)) => Some(name.to_string()),
                    _ => None,
                };
                ApiError::Malformed { message, field }
            })
    }
}

/// The request field a body error is about: the path of the bad value, or of the
/// missing field itself (`metrics[1].unit`, not `metrics[1]`). `None` for an error in
/// the JSON text that no field explains, such as a truncated body or a malformed key.
fn offending_field(path: &serde_path_to_error::Path, err: &serde_json::Error) -> Option<String> {
    let unknown = path
        .iter()
        .any(|segment| matches!(segment, serde_path_to_error::Segment::Unknown));
    if err.is_eof() || unknown {
        return None;
    }
    let at = path.to_string();
    // serde reports a missing field only in its message: "missing field `name`".
    let message = err.to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (at.as_str(), missing) {
        (".", Some(name)) => Some(name.to_string()),
        (_, Some(name)) => Some(format!("{at}.{name}")),
        (".", None) => None,
        _ => Some(at),
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/metrics", post(record_metrics))
        .route("/v1/metrics/{metrics_id}", get(get_metrics))
        .route("/v1/performance", post(record_performance))
        .route("/v1/business-metrics", post(record_business_metric))
        .route("/v1/traces", post(start_trace).get(list_traces))
        .route("/v1/traces/{trace_id}", get(get_trace))
        .route("/v1/traces/{trace_id}/spans", post(add_span))
        .route("/v1/traces/{trace_id}/annotations", post(add_annotation))
        .route("/v1/traces/{trace_id}/errors", post(add_error))
        .route("/v1/traces/{trace_id}/complete", post(complete_trace))
        .route(
            "/v1/health-checks",
            post(register_health_check).get(list_health_checks),
        )
        .route("/v1/health-checks/{id}", get(get_health_check))
        .route("/v1/health-checks/{id}/run", post(run_health_check))
        .route("/v1/health", get(system_health))
        .route(
            "/v1/services/{service_name}/performance",
            get(service_performance),
        )
        .route("/v1/dashboard", get(dashboard))
        .route("/v1/audit/{aggregate_type}/{aggregate_id}", get(audit))
        .route("/v1/publishing/failures", get(publish_failures))
        .fallback(|| async { not_found("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Waits until the read models include the latest event of an aggregate, so a caller
/// can read its own write. On timeout the write still stands; the answer says so.
async fn settle(state: &AppState, aggregate_type: &str, id: &str) -> bool {
    match event_log::latest_of(&state.store, aggregate_type, id).await {
        Ok(Some(at)) => state.projector.wait_for(at, CONSISTENCY_WAIT).await,
        Ok(None) => true,
        Err(err) => {
            tracing::warn!(error = %err, "cannot locate the event just written");
            false
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let total = event_log::count_events(&state.store).await?;
    let at = state.projector.position();
    let (backlog, oldest) = event_log::backlog(&state.store, at).await?;
    let now = Utc::now().timestamp_millis();
    let publisher = match &state.publisher {
        Some(publisher) => publisher.status().await?,
        None => json!({"enabled": false}),
    };
    Ok(Json(json!({
        "status": "ok",
        "store": format!("{:?}", state.store.dialect).to_lowercase(),
        "events": total,
        "projector": {
            "position": at.position,
            "backlog_events": backlog,
            "oldest_unprojected_age_ms": oldest.map(|t| (now - t).max(0)),
        },
        "publisher": publisher,
    })))
}

#[derive(Deserialize)]
struct MetricBody {
    name: String,
    value: f64,
    unit: String,
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct CustomMetricBody {
    name: String,
    value: f64,
    business_context: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    timestamp: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct MetricsBody {
    service_name: String,
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
    #[serde(default)]
    metrics: Vec<MetricBody>,
    #[serde(default)]
    custom_metrics: Vec<CustomMetricBody>,
}

async fn record_metrics(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MetricsBody>,
) -> Result<impl IntoResponse, ApiError> {
    let metric_count = body.metrics.len();
    let custom_metric_count = body.custom_metrics.len();
    let input = MetricsInput {
        service_name: body.service_name.clone(),
        dimensions: body.dimensions,
        metrics: body
            .metrics
            .into_iter()
            .map(|m| MetricInput {
                name: m.name,
                value: m.value,
                unit: m.unit,
                timestamp: m.timestamp,
                dimensions: m.dimensions,
            })
            .collect(),
        custom_metrics: body
            .custom_metrics
            .into_iter()
            .map(|m| CustomMetricInput {
                name: m.name,
                value: m.value,
                business_context: m.business_context,
                tags: m.tags,
                timestamp: m.timestamp,
            })
            .collect(),
    };
    let id = state.app.record_metrics(input).await?;
    let consistent = settle(&state, "Metrics", &id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "metrics_id": id,
            "service_name": body.service_name,
            "namespace": format!("Skafu/{}", body.service_name),
            "metric_count": metric_count,
            "custom_metric_count": custom_metric_count,
            "read_models_updated": consistent,
        })),
    ))
}

async fn get_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = read_models::metric_batch(&state.store, &id)
        .await?
        .ok_or_else(|| not_found("metrics batch"))?;
    Ok(Json(json!(view)))
}

#[derive(Deserialize)]
struct PerformanceBody {
    service_name: String,
    operation_name: String,
    duration_ms: f64,
    success: bool,
}

async fn record_performance(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PerformanceBody>,
) -> Result<impl IntoResponse, ApiError> {
    let input = PerformanceInput {
        service_name: body.service_name.clone(),
        operation_name: body.operation_name.clone(),
        duration_ms: body.duration_ms,
        success: body.success,
    };
    let id = state.app.record_performance(input).await?;
    let consistent = settle(&state, "Metrics", &id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "metrics_id": id,
            "service_name": body.service_name,
            "operation_name": body.operation_name,
            "read_models_updated": consistent,
        })),
    ))
}

#[derive(Deserialize)]
struct BusinessBody {
    service_name: String,
    metric_name: String,
    value: f64,
    business_context: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

async fn record_business_metric(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BusinessBody>,
) -> Result<impl IntoResponse, ApiError> {
    let input = BusinessMetricInput {
        service_name: body.service_name.clone(),
        metric_name: body.metric_name.clone(),
        value: body.value,
        business_context: body.business_context,
        tags: body.tags,
    };
    let id = state.app.record_business(input).await?;
    let consistent = settle(&state, "Metrics", &id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "metrics_id": id,
            "service_name": body.service_name,
            "metric_name": body.metric_name,
            "read_models_updated": consistent,
        })),
    ))
}

#[derive(Deserialize)]
struct StartTraceBody {
    service_name: String,
    operation_name: String,
    trace_id: Option<String>,
}

async fn start_trace(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<StartTraceBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = state
        .app
        .start_trace(
            body.service_name.clone(),
            body.operation_name.clone(),
            body.trace_id,
        )
        .await?;
    let consistent = settle(&state, "Trace", &id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "trace_id": id,
            "service_name": body.service_name,
            "operation_name": body.operation_name,
            "read_models_updated": consistent,
        })),
    ))
}

#[derive(Deserialize)]
struct LogBody {
    message: String,
    level: Option<String>,
}

#[derive(Deserialize)]
struct SpanBody {
    name: String,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    logs: Vec<LogBody>,
}

async fn add_span(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    JsonBody(body): JsonBody<SpanBody>,
) -> Result<impl IntoResponse, ApiError> {
    let span = SpanInput {
        name: body.name,
        start_time: body.start_time,
        end_time: body.end_time,
        tags: body.tags,
        logs: body
            .logs
            .into_iter()
            .map(|l| (l.message, l.level))
            .collect(),
    };
    let span_id = state.app.add_span(&trace_id, span).await?;
    let consistent = settle(&state, "Trace", &trace_id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"trace_id": trace_id, "span_id": span_id, "read_models_updated": consistent})),
    ))
}

#[derive(Deserialize)]
struct AnnotationBody {
    key: String,
    value: String,
}

async fn add_annotation(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    JsonBody(body): JsonBody<AnnotationBody>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .app
        .add_annotation(&trace_id, body.key.clone(), body.value.clone())
        .await?;
    let consistent = settle(&state, "Trace", &trace_id).await;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"trace_id": trace_id, "key": body.key, "value": body.value, "read_models_updated": consistent}),
        ),
    ))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

async fn add_error(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    JsonBody(body): JsonBody<ErrorBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.app.mark_error(&trace_id, body.error).await?;
    let consistent = settle(&state, "Trace", &trace_id).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"trace_id": trace_id, "read_models_updated": consistent})),
    ))
}

async fn complete_trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.app.complete_trace(&trace_id).await?;
    settle(&state, "Trace", &trace_id).await;
    let view = read_models::trace(&state.store, &trace_id)
        .await?
        .ok_or_else(|| not_found("trace"))?;
    Ok(Json(json!(view)))
}

async fn get_trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = read_models::trace(&state.store, &trace_id)
        .await?
        .ok_or_else(|| not_found("trace"))?;
    Ok(Json(json!(view)))
}

#[derive(Deserialize)]
struct TraceQuery {
    service_name: Option<String>,
    limit: Option<i64>,
}

async fn list_traces(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<TraceQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::App(AppError::Invalid(
            skafu_domain::validation::FieldError::new("limit", "must be between 1 and 1000"),
        )));
    }
    let traces = read_models::recent_traces(&state.store, q.service_name.as_deref(), limit).await?;
    Ok(Json(json!({"traces": traces})))
}

#[derive(Deserialize)]
struct FailuresQuery {
    limit: Option<i64>,
}

async fn publish_failures(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<FailuresQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::App(AppError::Invalid(
            skafu_domain::validation::FieldError::new("limit", "must be between 1 and 1000"),
        )));
    }
    let failures = Publisher::failures(&state.store, limit).await?;
    Ok(Json(json!({"failures": failures})))
}

#[derive(Deserialize)]
struct HealthCheckBody {
    service_name: String,
    endpoint: String,
    check_type: Option<String>,
    interval_seconds: Option<u64>,
    timeout_seconds: Option<u64>,
    max_retries: Option<u32>,
    degraded_after_ms: Option<u64>,
    expected_status: Option<u16>,
}

async fn register_health_check(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<HealthCheckBody>,
) -> Result<impl IntoResponse, ApiError> {
    let definition = HealthCheckDefinition {
        service_name: body.service_name,
        endpoint: body.endpoint,
        check_type: body.check_type.unwrap_or_else(|| "http".into()),
        interval_seconds: body.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECONDS),
        timeout_seconds: body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        max_retries: body.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        degraded_after_ms: body.degraded_after_ms.unwrap_or(DEFAULT_DEGRADED_AFTER_MS),
        expected_status: body.expected_status,
    };
    let id = state.app.register_health_check(definition).await?;
    settle(&state, "HealthCheck", &id).await;
    let details = read_models::health_check(&state.store, &id).await?;
    let mut body = json!(details);
    body["health_check_id"] = json!(id);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_health_checks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let views = read_models::health_checks(&state.store).await?;
    Ok(Json(json!({"health_checks": views})))
}

async fn get_health_check(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let details = read_models::health_check(&state.store, &id)
        .await?
        .ok_or_else(|| not_found("health check"))?;
    Ok(Json(json!(details)))
}

async fn run_health_check(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let outcome = state.app.run_health_check(&id).await?;
    settle(&state, "HealthCheck", &id).await;
    let details = read_models::health_check(&state.store, &id)
        .await?
        .ok_or_else(|| not_found("health check"))?;
    let run = match outcome {
        CheckOutcome::Success {
            response_time_ms,
            status_code,
            attempts,
        } => json!({"success": true, "response_time_ms": response_time_ms,
                    "status_code": status_code, "attempts": attempts}),
        CheckOutcome::Failure {
            reason,
            error_message,
            status_code,
            attempts,
            ..
        } => json!({"success": false, "reason": reason, "error_message": error_message,
                    "status_code": status_code, "attempts": attempts}),
    };
    let mut body = json!(details);
    body["run"] = run;
    Ok(Json(body))
}

async fn system_health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(read_models::system_health(&state.store).await?)))
}

#[derive(Deserialize)]
struct WindowQuery {
    window_minutes: Option<u32>,
    service_name: Option<String>,
}

fn window(q: &WindowQuery) -> Result<u32, ApiError> {
    let minutes = q.window_minutes.unwrap_or(60);
    if !(1..=43_200).contains(&minutes) {
        return Err(ApiError::App(AppError::Invalid(
            skafu_domain::validation::FieldError::new(
                "window_minutes",
                "must be between 1 and 43200 (30 days)",
            ),
        )));
    }
    Ok(minutes)
}

async fn service_performance(
    State(state): State<AppState>,
    Path(service_name): Path<String>,
    QueryParams(q): QueryParams<WindowQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = window(&q)?;
    let operations = read_models::performance(&state.store, Some(&service_name), minutes).await?;
    Ok(Json(json!({
        "service_name": service_name,
        "window_minutes": minutes,
        "operations": operations,
    })))
}

async fn dashboard(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<WindowQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = window(&q)?;
    let service = q.service_name.as_deref();
    let operations = read_models::performance(&state.store, service, minutes).await?;
    let recent = read_models::recent_traces(&state.store, service, 20).await?;
    let mut error_rates = serde_json::Map::new();
    let mut response_times = serde_json::Map::new();
    let mut throughput = serde_json::Map::new();
    for op in &operations {
        error_rates.insert(op.operation_name.clone(), json!(op.error_rate));
        response_times.insert(
            op.operation_name.clone(),
            json!({"p50_ms": op.p50_ms, "p95_ms": op.p95_ms, "p99_ms": op.p99_ms,
                   "average_ms": op.average_ms}),
        );
        throughput.insert(op.operation_name.clone(), json!(op.throughput_per_minute));
    }
    Ok(Json(json!({
        "service_name": service,
        "window_minutes": minutes,
        "generated_at": Utc::now(),
        "system_health": read_models::system_health(&state.store).await?,
        "recent_traces": recent,
        "error_rates": error_rates,
        "response_times": response_times,
        "throughput": throughput,
    })))
}

async fn audit(
    State(state): State<AppState>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    // Accept the API's resource names as well as the stored type names.
    let stored_type = match aggregate_type.as_str() {
        "Metrics" | "metrics" => "Metrics",
        "Trace" | "trace" | "traces" => "Trace",
        "HealthCheck" | "health-check" | "health-checks" | "health_check" => "HealthCheck",
        _ => return Err(not_found("aggregate type")),
    };
    let events = event_log::aggregate_history(&state.store, stored_type, &aggregate_id).await?;
    if events.is_empty() {
        return Err(not_found("aggregate"));
    }
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "sequence": e.sequence,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "recorded_at": DateTime::<Utc>::from_timestamp_millis(e.recorded_at_ms),
                "payload": e.payload,
                "metadata": e.metadata,
            })
        })
        .collect();
    Ok(Json(json!({
        "aggregate_type": stored_type,
        "aggregate_id": aggregate_id,
        "events": events,
    })))
}
