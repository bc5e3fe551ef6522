//! Aggregate snapshots in the `aggregate_snapshots` table.

use async_trait::async_trait;
use serde_json::Value;
use skafu_application::ports::SnapshotRepository;
use sqlx::Row;

use crate::db::Store;

/// Snapshot storage over the store's own SQL pool.
pub struct SqlSnapshots {
    store: Store,
}

impl SqlSnapshots {
    /// Snapshots kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl SnapshotRepository for SqlSnapshots {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<(Value, usize)>, String> {
        let row = sqlx::query(
            "SELECT sequence, payload FROM aggregate_snapshots \
             WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| e.to_string())?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sequence: i64 = row.try_get("sequence").map_err(|e| e.to_string())?;
        let payload: String = row.try_get("payload").map_err(|e| e.to_string())?;
        let value = serde_json::from_str(&payload).map_err(|e| e.to_string())?;
        Ok(Some((value, sequence as usize)))
    }

    async fn save(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
        aggregate: Value,
    ) -> Result<(), String> {
        // Only a newer snapshot replaces an older one: two racing writers cannot move
        // the snapshot backwards.
        sqlx::query(
            "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, sequence, payload) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
             SET sequence = excluded.sequence, payload = excluded.payload \
             WHERE aggregate_snapshots.sequence < excluded.sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence as i64)
        .bind(aggregate.to_string())
        .execute(&self.store.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}
