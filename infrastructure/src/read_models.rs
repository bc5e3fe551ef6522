//! Queries over the read models.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use skafu_projections::{
    uptime_percentage, HealthCheckView, HealthSummary, MetricBatchView, OperationStats, TraceView,
};
use sqlx::Row;

use crate::db::Store;

/// Uptime over the standard windows, in percent; `None` where nothing was checked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Uptime {
    /// Last 24 hours.
    pub last_24h: Option<f64>,
    /// Last 7 days.
    pub last_7d: Option<f64>,
    /// Last 30 days.
    pub last_30d: Option<f64>,
    /// Since registration.
    pub since_registration: Option<f64>,
}

/// A health check as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheckDetails {
    /// The projected view.
    #[serde(flatten)]
    pub view: HealthCheckView,
    /// Uptime since registration (the design document's single figure).
    pub uptime_percentage: Option<f64>,
    /// Uptime per window.
    pub uptime: Uptime,
}

fn decode<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow) -> Result<T, sqlx::Error> {
    let text: String = row.try_get("payload")?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

async fn uptime_since(
    store: &Store,
    id: &str,
    since: DateTime<Utc>,
) -> Result<Option<f64>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS total, CAST(COALESCE(SUM(up), 0) AS BIGINT) AS up \
         FROM rm_health_results WHERE health_check_id = $1 AND checked_at_ms >= $2",
    )
    .bind(id)
    .bind(since.timestamp_millis())
    .fetch_one(&store.pool)
    .await?;
    let total: i64 = row.try_get("total")?;
    let up: i64 = row.try_get("up")?;
    Ok(uptime_percentage(up as u64, total as u64))
}

/// One health check with its uptime, or `None` when unknown.
///
/// # Errors
///
/// Any database error.
pub async fn health_check(
    store: &Store,
    id: &str,
) -> Result<Option<HealthCheckDetails>, sqlx::Error> {
    let row = sqlx::query("SELECT payload FROM rm_health_checks WHERE health_check_id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let view: HealthCheckView = decode(&row)?;
    let now = Utc::now();
    let uptime = Uptime {
        last_24h: uptime_since(store, id, now - Duration::hours(24)).await?,
        last_7d: uptime_since(store, id, now - Duration::days(7)).await?,
        last_30d: uptime_since(store, id, now - Duration::days(30)).await?,
        since_registration: view.uptime_since_registration(),
    };
    Ok(Some(HealthCheckDetails {
        uptime_percentage: uptime.since_registration,
        uptime,
        view,
    }))
}

/// Every health check, by id.
///
/// # Errors
///
/// Any database error.
pub async fn health_checks(store: &Store) -> Result<Vec<HealthCheckView>, sqlx::Error> {
    let rows = sqlx::query("SELECT payload FROM rm_health_checks ORDER BY health_check_id")
        .fetch_all(&store.pool)
        .await?;
    rows.iter().map(decode).collect()
}

/// One check in the system overview.
#[derive(Debug, Clone, Serialize)]
pub struct CheckSummary {
    /// Status.
    pub status: skafu_domain::health::HealthStatus,
    /// Last response time in ms.
    pub response_time_ms: Option<f64>,
    /// Last run.
    pub last_check: Option<DateTime<Utc>>,
    /// Failed runs in a row.
    pub consecutive_failures: u64,
    /// Last error.
    pub error_message: Option<String>,
}

/// The system overview (`GET /v1/health`).
#[derive(Debug, Clone, Serialize)]
pub struct SystemHealth {
    /// Counts and overall status.
    #[serde(flatten)]
    pub summary: HealthSummary,
    /// Each check by id.
    pub individual_checks: BTreeMap<String, CheckSummary>,
}

/// The system overview.
///
/// # Errors
///
/// Any database error.
pub async fn system_health(store: &Store) -> Result<SystemHealth, sqlx::Error> {
    let views = health_checks(store).await?;
    Ok(SystemHealth {
        summary: HealthSummary::of(views.iter().map(|v| v.status)),
        individual_checks: views
            .into_iter()
            .map(|v| {
                let summary = CheckSummary {
                    status: v.status,
                    response_time_ms: v.response_time_ms,
                    last_check: v.last_check,
                    consecutive_failures: v.consecutive_failures,
                    error_message: v.error_message,
                };
                (v.health_check_id, summary)
            })
            .collect(),
    })
}

/// One trace, or `None` when unknown.
///
/// # Errors
///
/// Any database error.
pub async fn trace(store: &Store, id: &str) -> Result<Option<TraceView>, sqlx::Error> {
    let row = sqlx::query("SELECT payload FROM rm_traces WHERE trace_id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// The most recent traces, newest first, optionally of one service.
///
/// # Errors
///
/// Any database error.
pub async fn recent_traces(
    store: &Store,
    service_name: Option<&str>,
    limit: i64,
) -> Result<Vec<TraceView>, sqlx::Error> {
    let rows = match service_name {
        Some(service) => {
            sqlx::query(
                "SELECT payload FROM rm_traces WHERE service_name = $1 \
                 ORDER BY start_time_ms DESC, trace_id LIMIT $2",
            )
            .bind(service)
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT payload FROM rm_traces ORDER BY start_time_ms DESC, trace_id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
    };
    rows.iter().map(decode).collect()
}

/// One metrics batch, or `None` when unknown.
///
/// # Errors
///
/// Any database error.
pub async fn metric_batch(store: &Store, id: &str) -> Result<Option<MetricBatchView>, sqlx::Error> {
    let row = sqlx::query("SELECT payload FROM rm_metric_batches WHERE metrics_id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Performance of one service (or all, keyed `service/operation`) over the last
/// `window_minutes`.
///
/// # Errors
///
/// Any database error.
pub async fn performance(
    store: &Store,
    service_name: Option<&str>,
    window_minutes: u32,
) -> Result<Vec<OperationStats>, sqlx::Error> {
    let since = (Utc::now() - Duration::minutes(i64::from(window_minutes))).timestamp_millis();
    let sql =
        "SELECT service_name, operation_name, duration_ms, success FROM rm_performance_samples \
               WHERE recorded_at_ms >= $1 AND (service_name = $2 OR $3 = 1)";
    let rows = sqlx::query(sql)
        .bind(since)
        .bind(service_name.unwrap_or(""))
        .bind(i64::from(service_name.is_none()))
        .fetch_all(&store.pool)
        .await?;
    let mut groups: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
    for row in rows {
        let service: String = row.try_get("service_name")?;
        let operation: String = row.try_get("operation_name")?;
        let key = if service_name.is_some() {
            operation
        } else {
            format!("{service}/{operation}")
        };
        let success: i64 = row.try_get("success")?;
        groups
            .entry(key)
            .or_default()
            .push((row.try_get("duration_ms")?, success != 0));
    }
    Ok(groups
        .iter()
        .map(|(op, samples)| OperationStats::from_samples(op, samples, f64::from(window_minutes)))
        .collect())
}
