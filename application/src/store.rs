//! An event store that snapshots aggregates correctly.
//!
//! `PersistedEventStore` in cqrs-es 0.5.0 applies every committed event a second time
//! before it serializes a snapshot (docs/adr/0003), so its snapshot and aggregate modes
//! corrupt state. This store keeps the framework's event repositories and its commit
//! path, and adds snapshots of its own: after a commit that crosses a multiple of
//! `snapshot_every` events, the aggregate, which the event sink has already brought up
//! to date, is saved as it is. Loading reads the latest snapshot and only the events
//! after it, so a health check with 30 days of runs loads like a new one.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistenceError, SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, EventStore};

use crate::ports::SnapshotRepository;

/// Event store over a `cqrs-es` repository with correct snapshots.
pub struct SnapshotStore<R, A> {
    repo: Arc<R>,
    snapshots: Arc<dyn SnapshotRepository>,
    snapshot_every: usize,
    _aggregate: PhantomData<fn() -> A>,
}

impl<R, A> SnapshotStore<R, A> {
    /// A store that snapshots every `snapshot_every` events (0 turns snapshots off).
    pub fn new(
        repo: Arc<R>,
        snapshots: Arc<dyn SnapshotRepository>,
        snapshot_every: usize,
    ) -> Self {
        Self {
            repo,
            snapshots,
            snapshot_every,
            _aggregate: PhantomData,
        }
    }
}

impl<R, A> SnapshotStore<R, A>
where
    R: PersistedEventRepository,
    A: Aggregate + Send + Sync,
{
    /// Commits the new events of several aggregates at once: the repositories write one
    /// call's events in one transaction, so either all are stored or none (a conflict on
    /// any aggregate fails the whole call). One commit instead of one per aggregate is
    /// what lets the publisher record the status of many batches cheaply.
    ///
    /// Snapshots are not taken here; the store must have them turned off.
    ///
    /// # Errors
    ///
    /// [`AggregateError::AggregateConflict`] when another writer got to one of the
    /// aggregates first; other errors from the repository.
    pub async fn commit_all(
        &self,
        changes: Vec<(EventStoreAggregateContext<A>, Vec<A::Event>)>,
    ) -> Result<(), AggregateError<A::Error>> {
        debug_assert_eq!(self.snapshot_every, 0, "commit_all takes no snapshots");
        let mut serialized = Vec::new();
        for (context, events) in changes {
            for (payload, sequence) in events.into_iter().zip(context.current_sequence + 1..) {
                serialized.push(SerializedEvent::new(
                    context.aggregate_id.clone(),
                    sequence,
                    A::TYPE.to_string(),
                    payload.event_type(),
                    payload.event_version(),
                    serde_json::to_value(&payload).map_err(PersistenceError::from)?,
                    serde_json::Value::Object(serde_json::Map::new()),
                ));
            }
        }
        if serialized.is_empty() {
            return Ok(());
        }
        self.repo.persist::<A>(&serialized, None).await?;
        Ok(())
    }
}

fn deserialize<A: Aggregate>(
    events: Vec<SerializedEvent>,
) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
    events
        .into_iter()
        .map(|e| {
            let payload = serde_json::from_value(e.payload)
                .map_err(|err| AggregateError::DeserializationError(Box::new(err)))?;
            let metadata = serde_json::from_value(e.metadata)
                .map_err(|err| AggregateError::DeserializationError(Box::new(err)))?;
            Ok(EventEnvelope {
                aggregate_id: e.aggregate_id,
                sequence: e.sequence,
                payload,
                metadata,
            })
        })
        .collect()
}

impl<R, A> EventStore<A> for SnapshotStore<R, A>
where
    R: PersistedEventRepository,
    A: Aggregate + Send + Sync,
{
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        deserialize(self.repo.get_events::<A>(aggregate_id).await?)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        let snapshot = match self.snapshots.load(A::TYPE, aggregate_id).await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(aggregate_type = A::TYPE, error = %err, "snapshot unreadable, loading every event");
                None
            }
        };
        // A snapshot that no longer deserializes (the aggregate changed shape) is
        // ignored: the full history rebuilds the state.
        if let Some((value, sequence)) = snapshot {
            if let Ok(aggregate) = serde_json::from_value::<A>(value) {
                context.aggregate = aggregate;
                context.current_sequence = sequence;
            }
        }
        let events = if context.current_sequence == 0 {
            self.repo.get_events::<A>(aggregate_id).await?
        } else {
            self.repo
                .get_last_events::<A>(aggregate_id, context.current_sequence)
                .await?
        };
        for envelope in deserialize::<A>(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let first = context.current_sequence + 1;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(first..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(|e| {
                Ok(SerializedEvent::new(
                    e.aggregate_id.clone(),
                    e.sequence,
                    A::TYPE.to_string(),
                    e.payload.event_type(),
                    e.payload.event_version(),
                    serde_json::to_value(&e.payload)?,
                    serde_json::to_value(&e.metadata)?,
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(PersistenceError::from)?;
        self.repo.persist::<A>(&serialized, None).await?;

        let last = context.current_sequence + envelopes.len();
        let crossed = self.snapshot_every > 0
            && last / self.snapshot_every > context.current_sequence / self.snapshot_every;
        if crossed {
            // The event sink applied the new events to `context.aggregate` already: it is
            // exactly the state at `last`, and must not be folded again.
            match serde_json::to_value(&context.aggregate) {
                Ok(value) => {
                    if let Err(err) = self
                        .snapshots
                        .save(A::TYPE, &context.aggregate_id, last, value)
                        .await
                    {
                        tracing::warn!(aggregate_type = A::TYPE, error = %err, "snapshot not saved");
                    }
                }
                Err(err) => {
                    tracing::warn!(aggregate_type = A::TYPE, error = %err, "snapshot not serializable")
                }
            }
        }
        Ok(envelopes)
    }
}
