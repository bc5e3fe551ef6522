//! Connecting to the event store, migrating it, and the repository that serves either
//! backend.
//!
//! Two pools reach the same database: a typed pool that the `cqrs-es` repositories need
//! (`postgres-es`, `sqlite-es`), and an `Any` pool that our own SQL (event log, read
//! models, checkpoints, snapshots) uses, so that SQL is written once for both. The few
//! statements that differ between the dialects come from [`Dialect`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::AnyPool;

/// The SQL dialect of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The condition limiting event-log reads to rows no running transaction can still
    /// precede. PostgreSQL assigns positions at insert, not at commit, so a reader must
    /// stay behind the oldest running transaction; SQLite has one writer at a time, so
    /// every committed row is final.
    pub fn log_horizon(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "l.tx_id < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"
            }
            Dialect::Sqlite => "1 = 1",
        }
    }

    /// Statement that opens a transaction that will write. SQLite must take the write
    /// lock up front: a deferred transaction that read first cannot upgrade once another
    /// writer has committed.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Postgres => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }
}

/// The event repository of either backend. The `cqrs-es` repository trait is not object
/// safe, so the choice made at start-up is an enum that delegates.
pub enum AnyRepository {
    /// postgres-es.
    Postgres(PostgresEventRepository),
    /// sqlite-es.
    Sqlite(SqliteEventRepository),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect)
            .finish()
    }
}

macro_rules! delegate {
    ($self:ident, $repo:ident => $call:expr) => {
        match $self {
            AnyRepository::Postgres($repo) => $call,
            AnyRepository::Sqlite($repo) => $call,
        }
    };
}

impl PersistedEventRepository for AnyRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        delegate!(self, r => r.get_events::<A>(aggregate_id).await)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        delegate!(self, r => r.get_last_events::<A>(aggregate_id, last_sequence).await)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        delegate!(self, r => r.get_snapshot::<A>(aggregate_id).await)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        delegate!(self, r => r.persist::<A>(events, snapshot_update).await)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        delegate!(self, r => r.stream_events::<A>(aggregate_id).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        delegate!(self, r => r.stream_all_events::<A>().await)
    }
}

/// A connected, migrated event store.
#[derive(Clone)]
pub struct Store {
    /// Pool for our own SQL.
    pub pool: AnyPool,
    /// Its dialect.
    pub dialect: Dialect,
    /// The `cqrs-es` repository over the same database.
    pub repo: std::sync::Arc<AnyRepository>,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `postgres://` nor `sqlite:`.
    #[error("unsupported database URL (expected postgres:// or sqlite://): {0}")]
    UnsupportedUrl(String),
    /// The data folder could not be created.
    #[error("cannot create {path}: {source}")]
    Folder {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Connecting or querying failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Store {
    /// Connects to `url`, creating a SQLite file and its folder when missing, and applies
    /// pending migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the URL is unsupported, the database unreachable or a
    /// migration fails.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let typed = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            PG_MIGRATIONS.run(&typed).await?;
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(Self {
                pool,
                dialect: Dialect::Postgres,
                repo: std::sync::Arc::new(AnyRepository::Postgres(PostgresEventRepository::new(
                    typed,
                ))),
            })
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acknowledged event survives power loss, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30));
            if let Some(folder) = options.get_filename().parent() {
                create_folder(folder)?;
            }
            let typed = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await?;
            SQLITE_MIGRATIONS.run(&typed).await?;
            let any_url = format!("sqlite://{}", options.get_filename().display());
            let pool = AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // The Any driver cannot set these through the URL.
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .connect(&any_url)
                .await?;
            Ok(Self {
                pool,
                dialect: Dialect::Sqlite,
                repo: std::sync::Arc::new(AnyRepository::Sqlite(SqliteEventRepository::new(typed))),
            })
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }
}

fn create_folder(folder: &Path) -> Result<(), StoreError> {
    if folder.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
        path: folder.display().to_string(),
        source,
    })
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
