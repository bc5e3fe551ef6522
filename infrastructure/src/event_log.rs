//! Reading the event store in commit order, and the checkpoints of its readers.
//!
//! Every reader (the read-model projector, the AWS publisher) keeps a checkpoint: the
//! `(tx_id, position)` of the last event it handled. Reads return only events past the
//! checkpoint and behind the dialect's horizon, in `(tx_id, position)` order, so no event
//! can later appear behind a checkpoint.

use serde_json::Value;
use sqlx::{Any, AnyConnection, Row};

use crate::db::{Dialect, Store};

/// Where a reader has got to. Ordered as the log is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// Transaction id of the last event handled (0 on SQLite).
    pub tx_id: i64,
    /// Position of the last event handled.
    pub position: i64,
}

/// One event as stored, with its place in the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Place in the log.
    pub checkpoint: Checkpoint,
    /// When the database recorded it, in ms since the epoch.
    pub recorded_at_ms: i64,
    /// Aggregate type (`Metrics`, `Trace`, `HealthCheck`).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence within the aggregate, from 1.
    pub sequence: i64,
    /// Event type.
    pub event_type: String,
    /// Event version.
    pub event_version: String,
    /// The serialized event.
    pub payload: Value,
    /// The serialized metadata.
    pub metadata: Value,
}

impl StoredEvent {
    /// Deserializes the payload. An event that no longer parses is logged and skipped,
    /// so that one bad row cannot stop a reader; `reader` names it in the log.
    pub fn parse<E: serde::de::DeserializeOwned>(&self, reader: &str) -> Option<E> {
        match serde_json::from_value(self.payload.clone()) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::error!(
                    aggregate_type = %self.aggregate_type,
                    aggregate_id = %self.aggregate_id,
                    sequence = self.sequence,
                    reader,
                    error = %err,
                    "event does not deserialize; skipped"
                );
                None
            }
        }
    }
}

const SELECT_EVENTS: &str = "SELECT l.tx_id, l.position, l.recorded_at_ms, e.aggregate_type, \
     e.aggregate_id, e.sequence, e.event_type, e.event_version, \
     CAST(e.payload AS TEXT) AS payload, CAST(e.metadata AS TEXT) AS metadata \
     FROM event_log l JOIN events e ON e.aggregate_type = l.aggregate_type \
     AND e.aggregate_id = l.aggregate_id AND e.sequence = l.sequence";

fn decode(row: &sqlx::any::AnyRow) -> Result<StoredEvent, sqlx::Error> {
    let json = |name: &str| -> Result<Value, sqlx::Error> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(StoredEvent {
        checkpoint: Checkpoint {
            tx_id: row.try_get("tx_id")?,
            position: row.try_get("position")?,
        },
        recorded_at_ms: row.try_get("recorded_at_ms")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: json("payload")?,
        metadata: json("metadata")?,
    })
}

/// Reads up to `limit` events after `after`, in commit order.
///
/// # Errors
///
/// Any database error.
pub async fn read_after(
    conn: &mut AnyConnection,
    dialect: Dialect,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "{SELECT_EVENTS} WHERE (l.tx_id > $1 OR (l.tx_id = $1 AND l.position > $2)) AND {} \
         ORDER BY l.tx_id, l.position LIMIT $3",
        dialect.log_horizon()
    );
    let rows = sqlx::query(&sql)
        .bind(after.tx_id)
        .bind(after.position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(decode).collect()
}

/// Every event of one aggregate, in sequence order: the audit trail.
///
/// # Errors
///
/// Any database error.
pub async fn aggregate_history(
    store: &Store,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "{SELECT_EVENTS} WHERE l.aggregate_type = $1 AND l.aggregate_id = $2 ORDER BY l.sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&store.pool)
        .await?;
    rows.iter().map(decode).collect()
}

/// The log position of an aggregate's latest event, if it has any.
///
/// # Errors
///
/// Any database error.
pub async fn latest_of(
    store: &Store,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_id, position FROM event_log WHERE aggregate_type = $1 AND aggregate_id = $2 \
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(&store.pool)
    .await?;
    row.map(|r| {
        Ok(Checkpoint {
            tx_id: r.try_get("tx_id")?,
            position: r.try_get("position")?,
        })
    })
    .transpose()
}

/// Makes sure the checkpoint row of `name` exists.
///
/// # Errors
///
/// Any database error.
pub async fn ensure_checkpoint(store: &Store, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO checkpoints (name, tx_id, position) VALUES ($1, 0, 0) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Reads a checkpoint outside any transaction.
///
/// # Errors
///
/// Any database error.
pub async fn read_checkpoint(store: &Store, name: &str) -> Result<Checkpoint, sqlx::Error> {
    let mut conn = store.pool.acquire().await?;
    checkpoint_in(&mut conn, name).await
}

/// Reads a checkpoint on a connection (inside the caller's transaction).
///
/// # Errors
///
/// Any database error.
pub async fn checkpoint_in(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Checkpoint, sqlx::Error> {
    let row = sqlx::query("SELECT tx_id, position FROM checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => Checkpoint {
            tx_id: r.try_get("tx_id")?,
            position: r.try_get("position")?,
        },
        None => Checkpoint::default(),
    })
}

/// Locks a reader's checkpoint row for the rest of the transaction, so that two
/// instances sharing a database never handle the same events at once.
///
/// # Errors
///
/// Any database error.
pub async fn lock_checkpoint(conn: &mut AnyConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET position = position WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Moves a checkpoint (inside the caller's transaction).
///
/// # Errors
///
/// Any database error.
pub async fn save_checkpoint(
    conn: &mut AnyConnection,
    name: &str,
    at: Checkpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET tx_id = $2, position = $3 WHERE name = $1")
        .bind(name)
        .bind(at.tx_id)
        .bind(at.position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Number of events in the log.
///
/// # Errors
///
/// Any database error.
pub async fn count_events(store: &Store) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<Any, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM event_log")
        .fetch_one(&store.pool)
        .await
}

/// How far a reader is behind: the events after `at`, and when the oldest of them was
/// recorded (ms since the epoch).
///
/// # Errors
///
/// Any database error.
pub async fn backlog(store: &Store, at: Checkpoint) -> Result<(i64, Option<i64>), sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS backlog, MIN(recorded_at_ms) AS oldest \
         FROM event_log WHERE tx_id > $1 OR (tx_id = $1 AND position > $2)",
    )
    .bind(at.tx_id)
    .bind(at.position)
    .fetch_one(&store.pool)
    .await?;
    Ok((row.try_get("backlog")?, row.try_get("oldest")?))
}

/// Takes or renews the lease on the row `name` of `checkpoints` for `owner`, for
/// `lease` from now; returns whether `owner` holds it. A lease is how one of several
/// instances sharing a database becomes the only one doing a job (publishing,
/// scheduling checks) without holding a transaction open while it works. It relies on
/// the instances' clocks agreeing to well within `lease`.
///
/// # Errors
///
/// Any database error.
pub async fn acquire_lease(
    store: &Store,
    name: &str,
    owner: &str,
    lease: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let now = chrono::Utc::now().timestamp_millis();
    let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    let done = sqlx::query(
        "UPDATE checkpoints SET owner = $2, lease_until_ms = $3 WHERE name = $1 \
         AND (owner IS NULL OR owner = $2 OR lease_until_ms < $4)",
    )
    .bind(name)
    .bind(owner)
    .bind(until)
    .bind(now)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up `owner`'s lease on `name`, so that another instance need not wait for it
/// to expire.
///
/// # Errors
///
/// Any database error.
pub async fn release_lease(store: &Store, name: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET owner = NULL WHERE name = $1 AND owner = $2")
        .bind(name)
        .bind(owner)
        .execute(&store.pool)
        .await?;
    Ok(())
}
