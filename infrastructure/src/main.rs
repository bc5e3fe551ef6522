//! `skafu-observability`: the observability domain service of the Skafu platform.
//!
//! Run it with `cargo run --release -p skafu-infrastructure -- serve` (an embedded
//! SQLite store under `./data`), or point it at PostgreSQL with
//! `--database-url postgres://user@host/db`. `migrate` applies the schema and exits;
//! `replay` rebuilds every read model from the event store. See the README.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use skafu_infrastructure::db::{redact, Store};
use skafu_infrastructure::projector::Projector;
use skafu_infrastructure::publisher::PublisherSettings;
use skafu_infrastructure::{event_log, install_crypto, start, AwsMode, Settings};

/// Default store: a SQLite file under ./data, created on first start.
const DEFAULT_DATABASE_URL: &str = "sqlite://./data/skafu-observability.db";

#[derive(Parser)]
#[command(
    name = "skafu-observability",
    version,
    about = "Skafu observability domain service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Database {
    /// `sqlite://path/to/file.db` or `postgres://user@host:port/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "SKAFU_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        #[command(flatten)]
        db: Database,
        /// Do not run health checks on their interval (on-demand runs still work).
        #[arg(long, env = "SKAFU_NO_SCHEDULER", value_parser = BoolishValueParser::new())]
        no_scheduler: bool,
        /// Never publish to AWS, even when AWS settings are present.
        #[arg(long, env = "SKAFU_NO_AWS", value_parser = BoolishValueParser::new())]
        no_aws: bool,
        /// Longest pause between retries of a failing AWS call, in milliseconds.
        #[arg(long, env = "SKAFU_PUBLISH_MAX_BACKOFF_MS", default_value_t = 20_000)]
        publish_max_backoff_ms: u64,
    },
    /// Apply pending schema migrations and exit.
    Migrate {
        #[command(flatten)]
        db: Database,
    },
    /// Rebuild every read model from the event store.
    Replay {
        #[command(flatten)]
        db: Database,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,aws_config=warn".into()),
        )
        .init();
    install_crypto();
    match Cli::parse().command {
        Command::Serve {
            bind,
            db,
            no_scheduler,
            no_aws,
            publish_max_backoff_ms,
        } => {
            let running = start(Settings {
                bind,
                database_url: db.database_url.clone(),
                scheduler: !no_scheduler,
                aws: if no_aws {
                    AwsMode::Off
                } else {
                    AwsMode::FromEnvironment
                },
                publisher: PublisherSettings {
                    backoff_max: std::time::Duration::from_millis(publish_max_backoff_ms),
                    ..PublisherSettings::default()
                },
            })
            .await
            .with_context(|| format!("starting on {}", redact(&db.database_url)))?;
            let stop = running.shutdown_handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                let _ = stop.send(true);
            });
            running.wait().await;
            tracing::info!("stopped");
        }
        Command::Migrate { db } => {
            Store::open(&db.database_url).await?;
            tracing::info!(database = %redact(&db.database_url), "schema is up to date");
        }
        Command::Replay { db } => replay(&db.database_url).await?,
    }
    Ok(())
}

async fn replay(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let total = event_log::count_events(&store).await?;
    let projector = Projector::new(store).await?;
    projector.reset().await?;
    let bar = Arc::new(ProgressBar::new(total.max(0) as u64));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let handled = projector.catch_up(|n| bar.inc(n as u64)).await?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        events = handled,
        seconds,
        events_per_second = handled as f64 / seconds.max(1e-9),
        "read models rebuilt"
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
