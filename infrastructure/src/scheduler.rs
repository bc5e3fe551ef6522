//! Runs every registered health check on its interval.
//!
//! Due checks are found from the read model (last run plus interval); each runs in its
//! own task, at most [`MAX_CONCURRENT`] at a time, and a check never overlaps itself.
//!
//! Several instances may share a database: only the one holding the scheduler's lease
//! (a row of `checkpoints`, see [`event_log::acquire_lease`]) runs scheduled checks, so a
//! check runs once per interval however many instances there are. When the holder
//! dies, another takes over within [`LEASE`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use skafu_application::service::Observability;
use tokio::sync::{watch, Semaphore};

use crate::db::{AnyRepository, Store};
use crate::event_log;
use crate::projector::Projector;
use crate::read_models;

/// Most checks running at once.
pub const MAX_CONCURRENT: usize = 32;
const TICK: Duration = Duration::from_millis(500);
/// Name of the scheduler's lease row.
pub const SCHEDULER: &str = "health_scheduler";
/// How long the scheduler's lease lasts without renewal (it is renewed every tick).
pub const LEASE: Duration = Duration::from_secs(10);

/// Runs until `shutdown` turns true.
pub async fn run(
    store: Store,
    app: Arc<Observability<AnyRepository>>,
    projector: Arc<Projector>,
    mut shutdown: watch::Receiver<bool>,
) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let owner = uuid::Uuid::new_v4().to_string();
    if let Err(err) = event_log::ensure_checkpoint(&store, SCHEDULER).await {
        tracing::warn!(error = %err, "cannot create the scheduler's lease row");
    }
    loop {
        let leader = match event_log::acquire_lease(&store, SCHEDULER, &owner, LEASE).await {
            Ok(leader) => leader,
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew the scheduler's lease");
                false
            }
        };
        let checks = if leader {
            read_models::health_checks(&store).await
        } else {
            Ok(Vec::new())
        };
        match checks {
            Ok(views) => {
                let now = Utc::now();
                for view in views {
                    let due = match view.last_check {
                        None => true,
                        Some(last) => {
                            now - last >= chrono::Duration::seconds(view.interval_seconds as i64)
                        }
                    };
                    let id = view.health_check_id.clone();
                    if !due
                        || !running
                            .lock()
                            .map(|mut r| r.insert(id.clone()))
                            .unwrap_or(false)
                    {
                        continue;
                    }
                    let (app, running, permits, projector, store) = (
                        app.clone(),
                        running.clone(),
                        permits.clone(),
                        projector.clone(),
                        store.clone(),
                    );
                    tokio::spawn(async move {
                        let _permit = permits.acquire().await;
                        if let Err(err) = app.run_health_check(&id).await {
                            tracing::warn!(health_check_id = %id, error = %err, "scheduled check not recorded");
                        }
                        // The read model must show this run before the next tick judges
                        // the check due again.
                        if let Ok(Some(at)) = event_log::latest_of(&store, "HealthCheck", &id).await
                        {
                            projector.wait_for(at, Duration::from_secs(5)).await;
                        }
                        if let Ok(mut r) = running.lock() {
                            r.remove(&id);
                        }
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list health checks"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            if let Err(err) = event_log::release_lease(&store, SCHEDULER, &owner).await {
                tracing::warn!(error = %err, "scheduler lease not released; it expires by itself");
            }
            return;
        }
    }
}
