//! What the use cases need from the outside world.

use async_trait::async_trait;
use serde_json::Value;
use skafu_domain::health::{CheckOutcome, HealthCheckDefinition};

/// Stores the latest snapshot of an aggregate. A snapshot is a cache: losing or failing
/// to write one costs a longer load, never correctness.
#[async_trait]
pub trait SnapshotRepository: Send + Sync {
    /// The latest snapshot: the serialized aggregate and the sequence it includes.
    ///
    /// # Errors
    ///
    /// Returns a description of a storage failure.
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<(Value, usize)>, String>;

    /// Replaces the snapshot if `sequence` is newer than the stored one.
    ///
    /// # Errors
    ///
    /// Returns a description of a storage failure.
    async fn save(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
        aggregate: Value,
    ) -> Result<(), String>;
}

/// Runs one health check against its endpoint: every attempt, timeout and retry.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// Probes `definition` on behalf of the check and reports what happened. Never
    /// fails: every failure is an outcome.
    async fn probe(&self, definition: &HealthCheckDefinition) -> CheckOutcome;
}
