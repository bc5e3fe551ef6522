//! Adapters of the observability service and the wiring that starts it.
//!
//! This crate owns every piece of I/O: the event stores (`sqlite-es`, `postgres-es`),
//! the event log and read-model SQL, the projector, the HTTP health checker and its
//! scheduler, the HTTP API, and the AWS publishing. It is the only crate that names
//! sqlx, axum, reqwest or the AWS SDK. Nothing depends on it but the binary and the
//! black-box tests.
//!
//! Entry points: [`start`] runs the whole service in the current runtime and returns a
//! handle; [`db::Store::open`] connects and migrates; [`projector::Projector`] rebuilds
//! read models (`replay`).

pub mod api;
pub mod aws;
pub mod checker;
pub mod db;
pub mod event_log;
pub mod projector;
pub mod publisher;
pub mod read_models;
pub mod scheduler;
pub mod snapshots;

use std::net::SocketAddr;
use std::sync::Arc;

use skafu_application::service::Observability;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aws::config::{load_aws, AwsOverrides};
use crate::db::Store;
use crate::projector::Projector;
use crate::publisher::{Publisher, PublisherSettings};

/// How long in-flight requests may run on after a shutdown was asked for.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// Whether the health-check scheduler runs.
    pub scheduler: bool,
    /// Where AWS settings come from.
    pub aws: AwsMode,
    /// Tunables of the AWS publisher.
    pub publisher: PublisherSettings,
}

/// Whether and how to publish to AWS.
#[derive(Debug, Clone, Default)]
pub enum AwsMode {
    /// Never publish.
    #[default]
    Off,
    /// The standard AWS configuration chain decides (see [`aws::config`]).
    FromEnvironment,
    /// The chain, with these settings taking precedence (tests point it at an emulator).
    With(AwsOverrides),
}

/// A running service.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, finishes in-flight ones and stops the background tasks.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Resolves when a shutdown has been requested and every task has ended.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// A sender that asks the service to stop.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Installs the process-wide TLS provider. The AWS SDK and sqlx pull in two rustls
/// back ends; without a chosen default, code that relies on it panics.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts the service: store, projector, scheduler and HTTP server.
///
/// # Errors
///
/// When the store cannot be opened or the address bound.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    install_crypto();
    let store = Store::open(&settings.database_url).await?;
    let projector = Projector::new(store.clone()).await?;
    let checker = Arc::new(checker::HttpChecker::new()?);
    let snapshots = Arc::new(snapshots::SqlSnapshots::new(store.clone()));
    let app = Arc::new(Observability::new(store.repo.clone(), snapshots, checker));

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(projector.clone().run(rx.clone()))];
    let clients = match settings.aws {
        AwsMode::Off => {
            tracing::info!("AWS publishing off: disabled by configuration");
            None
        }
        AwsMode::FromEnvironment => load_aws(None).await,
        AwsMode::With(overrides) => load_aws(Some(overrides)).await,
    };
    let publisher = match clients {
        Some(clients) => {
            let publisher =
                Publisher::new(store.clone(), app.clone(), clients, settings.publisher).await?;
            tasks.push(tokio::spawn(
                publisher.clone().run(projector.subscribe(), rx.clone()),
            ));
            Some(publisher)
        }
        None => None,
    };
    if settings.scheduler {
        tasks.push(tokio::spawn(scheduler::run(
            store.clone(),
            app.clone(),
            projector.clone(),
            rx.clone(),
        )));
    }

    let state = api::AppState {
        app,
        store: store.clone(),
        projector,
        publisher,
    };
    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    let addr = listener.local_addr()?;
    let router = api::router(state).layer(
        tower_http::trace::TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", |p| p.as_str())
                    .to_string();
                tracing::debug_span!("request", method = %req.method(), route = %route)
            },
        ),
    );
    let mut server_rx = rx.clone();
    let mut grace_rx = rx;
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            while !*server_rx.borrow() {
                if server_rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let serve = axum::serve(listener, router).with_graceful_shutdown(shutdown);
        // In-flight requests get a grace period, not a veto: an on-demand check of a
        // hanging endpoint could otherwise hold the process for minutes.
        let deadline = async move {
            while !*grace_rx.borrow() {
                if grace_rx.changed().await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = async { serve.await } => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "HTTP server stopped");
                }
            }
            () = deadline => {
                tracing::warn!(
                    grace_s = SHUTDOWN_GRACE.as_secs(),
                    "requests still running at shutdown were cut off"
                );
            }
        }
    }));
    tracing::info!(%addr, store = ?store.dialect, "skafu-observability listening");
    Ok(Running {
        addr,
        shutdown,
        tasks,
    })
}
