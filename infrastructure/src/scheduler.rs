//! Runs every registered health check on its interval.
//!
//! Due checks are found from the read model (last run plus interval); each runs in its
//! own task, at most [`MAX_CONCURRENT`] at a time, and a check never overlaps itself.
//!
//! # Limitations
//!
//! Every instance sharing a database schedules every check, so N instances run each
//! check up to N times per interval. Leader election over the shared database is the
//! intended fix.

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

/// Runs until `shutdown` turns true.
pub async fn run(
    store: Store,
    app: Arc<Observability<AnyRepository>>,
    projector: Arc<Projector>,
    mut shutdown: watch::Receiver<bool>,
) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        match read_models::health_checks(&store).await {
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
            return;
        }
    }
}
