//! Shared helpers for the black-box tests.
//!
//! Every test starts the real service on `127.0.0.1:0` against a store of its own and
//! speaks to it over HTTP only. Two ways to start it:
//! - [`spawn_app`]: in this process, through `skafu_infrastructure::start`;
//! - [`spawn_binary`]: the `skafu-observability` binary as a child process, for tests
//!   that kill it with SIGKILL. Build it first with `cargo build -p skafu-infrastructure`.
//!
//! Stores: a fresh SQLite file under `std::env::temp_dir()/skafu-tests/<uuid>/`, or a
//! fresh PostgreSQL database `skafu_test_<uuid>` created on the server named by
//! `SKAFU_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! A PostgreSQL test fails, never skips, when that server cannot be reached.
//!
//! [`on_both_backends!`] turns each `async fn scenario(app: &TestApp)` into two tests,
//! `scenario::on_sqlite` and `scenario::on_postgres`. [`StubServer`] is an HTTP server
//! on loopback that health checks can probe. Nothing here talks to any host but
//! 127.0.0.1.
//!
//! Run: `cargo build -p skafu-infrastructure && cargo test -p skafu-tests`.

pub mod aws;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use skafu_infrastructure::publisher::PublisherSettings;
use skafu_infrastructure::{AwsMode, Running, Settings};
use sqlx::{Connection, Executor, PgConnection};

/// Longest wait for anything that is eventually true (a scheduled run, a start-up).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Which event store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a fresh temporary folder.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// Where a test's store lives, so that it can be removed once the test has passed.
#[derive(Debug, Clone)]
pub struct TestStore {
    /// The URL the service is started with.
    pub database_url: String,
    cleanup: Cleanup,
}

#[derive(Debug, Clone)]
enum Cleanup {
    Folder(PathBuf),
    Database { server_url: String, name: String },
}

impl TestStore {
    /// Creates an empty store for `backend`.
    ///
    /// # Panics
    ///
    /// When the temporary folder cannot be created or PostgreSQL cannot be reached.
    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let folder = std::env::temp_dir()
                    .join("skafu-tests")
                    .join(uuid::Uuid::new_v4().to_string());
                std::fs::create_dir_all(&folder)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
                let database_url = format!("sqlite://{}", folder.join("skafu.db").display());
                Self {
                    database_url,
                    cleanup: Cleanup::Folder(folder),
                }
            }
            Backend::Postgres => {
                let server_url = postgres_server_url();
                let name = format!("skafu_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = connect_postgres(&server_url).await;
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
                let _ = conn.close().await;
                Self {
                    database_url: with_database(&server_url, &name),
                    cleanup: Cleanup::Database { server_url, name },
                }
            }
        }
    }

    /// Deletes the store. Call it only after the service using it has stopped.
    pub async fn remove(&self) {
        match &self.cleanup {
            Cleanup::Folder(folder) => {
                let _ = std::fs::remove_dir_all(folder);
            }
            Cleanup::Database { server_url, name } => {
                if let Ok(mut conn) = PgConnection::connect(server_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = conn.execute(sql.as_str()).await;
                    let _ = conn.close().await;
                }
            }
        }
    }
}

/// The PostgreSQL server the tests create their databases on.
pub fn postgres_server_url() -> String {
    std::env::var("SKAFU_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

async fn connect_postgres(server_url: &str) -> PgConnection {
    PgConnection::connect(server_url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is unreachable at {} ({e}). Start it, or point \
             SKAFU_TEST_POSTGRES_URL at a server where this user may create databases.",
            without_password(server_url)
        )
    })
}

/// `url` with its database (the path) replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

fn without_password(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let Some(at) = url[after_scheme..].find('@').map(|i| after_scheme + i) else {
        return url.to_string();
    };
    match url[after_scheme..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..after_scheme + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// An HTTP client for the tests: no proxy (everything is on loopback) and a timeout
/// long enough that only a hung server trips it.
pub fn http_client() -> reqwest::Client {
    skafu_infrastructure::install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client can be built")
}

/// The service started in this process.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Client for requests to it.
    pub client: reqwest::Client,
    /// The store it runs on.
    pub database_url: String,
    /// The running service; `None` once stopped.
    pub running: Option<Running>,
    scheduler: bool,
    aws: AwsMode,
    store: TestStore,
}

/// Starts the service in this process on a fresh store of `backend`, with the
/// health-check scheduler running.
///
/// # Panics
///
/// When the store cannot be created or the service does not start.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, true).await
}

/// Starts the service without its scheduler: no check runs unless a test asks for it.
/// For tests that register endpoints which must never be fetched, even by a regression.
///
/// # Panics
///
/// As [`spawn_app`].
pub async fn spawn_app_without_scheduler(backend: Backend) -> TestApp {
    spawn_app_with(backend, false).await
}

async fn spawn_app_with(backend: Backend, scheduler: bool) -> TestApp {
    spawn_app_configured(backend, scheduler, AwsMode::Off).await
}

/// Starts the service without its scheduler, publishing to the AWS emulator at
/// `endpoint` (see [`aws::overrides`]).
///
/// # Panics
///
/// As [`spawn_app`], and when `endpoint` is not on loopback.
pub async fn spawn_app_publishing(backend: Backend, endpoint: &str) -> TestApp {
    let mode = AwsMode::With(aws::overrides(endpoint));
    spawn_app_configured(backend, false, mode).await
}

async fn spawn_app_configured(backend: Backend, scheduler: bool, aws: AwsMode) -> TestApp {
    let store = TestStore::fresh(backend).await;
    let running = start_in_process(&store.database_url, scheduler, aws.clone()).await;
    TestApp {
        addr: running.addr,
        client: http_client(),
        database_url: store.database_url.clone(),
        running: Some(running),
        scheduler,
        aws,
        store,
    }
}

/// Starts the service in this process on `database_url` (an existing store), as the
/// other helpers do: loopback, port 0, short publisher backoff. For tests that run
/// several instances on one store.
///
/// # Panics
///
/// When the service does not start.
pub async fn start_in_process(database_url: &str, scheduler: bool, aws: AwsMode) -> Running {
    let settings = Settings {
        bind: "127.0.0.1:0".parse().expect("a loopback address"),
        database_url: database_url.to_string(),
        scheduler,
        aws,
        // Short pauses, so that a test sees the backlog drain soon after an outage.
        publisher: PublisherSettings {
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            ..PublisherSettings::default()
        },
    };
    skafu_infrastructure::start(settings)
        .await
        .unwrap_or_else(|e| panic!("the service does not start: {e:#}"))
}

impl TestApp {
    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON; returns the status and the JSON answer (`Null` if none).
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.client.post(self.url(path)).json(&body)).await
    }

    /// POSTs raw bytes as `application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> (StatusCode, Value) {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.into());
        send(request).await
    }

    /// GETs `path`; returns the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path))).await
    }

    /// GETs `path` and insists on 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path} answered {body}");
        body
    }

    /// POSTs `body` and insists on 201.
    pub async fn post_created(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST {path} {body} answered {answer}"
        );
        answer
    }

    /// Events in the store, as `/healthz` counts them.
    pub async fn event_count(&self) -> i64 {
        let health = self.get_ok("/healthz").await;
        health["events"]
            .as_i64()
            .unwrap_or_else(|| panic!("/healthz has no event count: {health}"))
    }

    /// The publisher's part of `/healthz` once it has handled every event in the log,
    /// `None` before.
    pub async fn publisher_drained(&self) -> Option<Value> {
        let publisher = self.get_ok("/healthz").await["publisher"].clone();
        (publisher["backlog_events"] == 0).then_some(publisher)
    }

    /// Stops the service (finishing in-flight requests); the store is kept.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Starts the service again on the same store, on a new port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = start_in_process(&self.database_url, self.scheduler, self.aws.clone()).await;
        self.addr = running.addr;
        self.running = Some(running);
    }

    /// Stops the service and deletes its store.
    pub async fn finish(mut self) {
        self.stop().await;
        self.store.remove().await;
    }
}

/// GETs an absolute `url`; returns the status and the JSON answer.
pub async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    send(client.get(url)).await
}

/// POSTs `body` as JSON to an absolute `url` and returns the status and the JSON
/// answer, or the transport error (a refused or reset connection) when there was none.
pub async fn try_post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client.post(url).json(body).send().await?;
    let status = StatusCode::from_u16(response.status().as_u16()).expect("a valid status");
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, body))
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = StatusCode::from_u16(response.status().as_u16()).expect("a valid status");
    let bytes = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading the answer failed: {e}"));
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "the answer ({status}) is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

/// Asserts that `actual` has every field of the object `expected` with the same value.
///
/// # Panics
///
/// On the first field that differs, naming it.
pub fn assert_fields(actual: &Value, expected: Value) {
    let Value::Object(expected) = expected else {
        panic!("assert_fields expects an object, got {expected}");
    };
    for (key, value) in expected {
        assert_eq!(actual[&key], value, "field `{key}` of {actual}");
    }
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that value.
///
/// # Panics
///
/// When [`PATIENCE`] runs out first; `what` says what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that was free a moment ago and on which nothing listens now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// Generates `on_sqlite` and `on_postgres` tests for each scenario. A scenario is an
/// `async fn name(app: &TestApp)` (or `&mut TestApp` to restart it) defined next to
/// the macro call; each test starts the service on a fresh store, runs the scenario
/// and, when it passed, stops the service and deletes the store. Prefix the list with
/// `without_scheduler:` to start the service without its health-check scheduler.
#[macro_export]
macro_rules! on_both_backends {
    (without_scheduler: $($scenario:ident),+ $(,)?) => {
        $crate::on_both_backends!(@with spawn_app_without_scheduler; $($scenario),+);
    };
    (@with $spawn:ident; $($scenario:ident),+) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let mut app = $crate::$spawn($crate::Backend::Sqlite).await;

                    super::$scenario(&mut app).await;

                    app.finish().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let mut app = $crate::$spawn($crate::Backend::Postgres).await;

                    super::$scenario(&mut app).await;

                    app.finish().await;
                }
            }
        )+
    };
    ($($scenario:ident),+ $(,)?) => {
        $crate::on_both_backends!(@with spawn_app; $($scenario),+);
    };
}

/// Generates `on_sqlite` and `on_postgres` tests for each scenario written as
/// `async fn name(backend: Backend)`, for scenarios that start the service themselves
/// (publishing to an emulator, several instances).
#[macro_export]
macro_rules! for_each_backend {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    super::$scenario($crate::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    super::$scenario($crate::Backend::Postgres).await;
                }
            }
        )+
    };
}

/// How a [`StubServer`] answers `GET /health`.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 at once.
    Healthy,
    /// This status at once.
    Status(u16),
    /// 200 after this long.
    Slow(Duration),
    /// 500 to the 1st, 3rd, 5th... request and 200 to the others, so that a check
    /// with one retry fails its first attempt and passes its second on every run.
    FailsEveryOtherRequest,
}

/// An HTTP server on 127.0.0.1 that health checks can probe at `/health`. It records
/// each request's `User-Agent`. It runs until the test's runtime ends.
pub struct StubServer {
    /// Where it listens.
    pub addr: SocketAddr,
    user_agents: Arc<Mutex<Vec<String>>>,
}

impl StubServer {
    /// Starts a server answering as `behaviour` says.
    pub async fn start(behaviour: Behaviour) -> Self {
        let user_agents: Arc<Mutex<Vec<String>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = user_agents.clone();
        let handler = move |headers: HeaderMap| {
            let seen = seen.clone();
            let requests = requests.clone();
            async move {
                let agent = headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().expect("not poisoned").push(agent);
                let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                match behaviour {
                    Behaviour::Healthy => StatusCode::OK,
                    Behaviour::Status(code) => {
                        StatusCode::from_u16(code).expect("a valid status code")
                    }
                    Behaviour::Slow(delay) => {
                        tokio::time::sleep(delay).await;
                        StatusCode::OK
                    }
                    Behaviour::FailsEveryOtherRequest if n % 2 == 1 => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                    Behaviour::FailsEveryOtherRequest => StatusCode::OK,
                }
            }
        };
        let router = Router::new().route("/health", get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, user_agents }
    }

    /// The URL a health check should probe.
    pub fn endpoint(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    /// The `User-Agent` of every request received so far.
    pub fn user_agents(&self) -> Vec<String> {
        self.user_agents.lock().expect("not poisoned").clone()
    }
}

/// A fresh file path for a child process's output, under
/// `std::env::temp_dir()/skafu-tests/logs/`.
///
/// # Panics
///
/// When the folder cannot be created.
pub fn log_path(label: &str) -> PathBuf {
    let folder = std::env::temp_dir().join("skafu-tests").join("logs");
    std::fs::create_dir_all(&folder)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
    folder.join(format!("{label}-{}.log", uuid::Uuid::new_v4().simple()))
}

/// Path of the `skafu-observability` binary next to this test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/skafu-observability`).
///
/// # Panics
///
/// When it has not been built.
pub fn binary_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let binary = profile_dir.join(format!(
        "skafu-observability{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        binary.exists(),
        "{} does not exist: run `cargo build -p skafu-infrastructure` before the tests",
        binary.display()
    );
    binary
}

fn binary_command(args: &[&str], log: &std::path::Path) -> tokio::process::Command {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    let log_err = log_file.try_clone().expect("a second handle on the log");
    let mut command = tokio::process::Command::new(binary_path());
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SKAFU_BIND")
        // Only a test that asks for it publishes, and then only to its emulator. "1",
        // not "true": the switch once refused "1" and the service did not start.
        .env("SKAFU_NO_AWS", "1")
        // The AWS SDK must never look for credentials on the instance metadata service.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true);
    command
}

/// The binary running as a child process.
pub struct ServiceProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Client for requests to it.
    pub client: reqwest::Client,
    child: tokio::process::Child,
}

/// Starts `skafu-observability serve` on a free loopback port against `database_url`
/// and waits until `/healthz` answers. Its output goes to `log`.
///
/// # Panics
///
/// When the binary is missing, exits, or does not answer within [`PATIENCE`].
pub async fn spawn_binary(database_url: &str, log: &std::path::Path) -> ServiceProcess {
    spawn_binary_with_env(database_url, log, &[]).await
}

/// Starts `skafu-observability serve` publishing to the AWS emulator at `endpoint`
/// (see [`aws::binary_env`]); otherwise as [`spawn_binary`].
///
/// # Panics
///
/// As [`spawn_binary`], and when `endpoint` is not on loopback.
pub async fn spawn_binary_publishing(
    database_url: &str,
    log: &std::path::Path,
    endpoint: &str,
) -> ServiceProcess {
    spawn_binary_with_env(database_url, log, &aws::binary_env(endpoint)).await
}

/// Starts `skafu-observability serve` with no AWS settings at all: every AWS variable
/// and `SKAFU_NO_AWS` removed, and the shared config files pointed at a path that does
/// not exist. Otherwise as [`spawn_binary`].
///
/// # Panics
///
/// As [`spawn_binary`].
pub async fn spawn_binary_without_aws(database_url: &str, log: &std::path::Path) -> ServiceProcess {
    let nowhere = std::env::temp_dir()
        .join("skafu-tests")
        .join("no-such-aws-config");
    let nowhere = nowhere.display().to_string();
    let env = vec![
        ("AWS_CONFIG_FILE".to_string(), nowhere.clone()),
        ("AWS_SHARED_CREDENTIALS_FILE".to_string(), nowhere),
    ];
    spawn_binary_with_env(database_url, log, &env).await
}

async fn spawn_binary_with_env(
    database_url: &str,
    log: &std::path::Path,
    env: &[(String, String)],
) -> ServiceProcess {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("a loopback address");
    let bind = addr.to_string();
    let mut command = binary_command(
        &["serve", "--bind", &bind, "--database-url", database_url],
        log,
    );
    if !env.is_empty() {
        // Only what the test sets reaches the service.
        command.env_remove("SKAFU_NO_AWS");
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        command.env("AWS_EC2_METADATA_DISABLED", "true");
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary_path().display()));
    let client = http_client();
    let healthz = format!("http://{addr}/healthz");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be polled") {
            panic!(
                "skafu-observability exited with {status} before answering; see {}",
                log.display()
            );
        }
        if let Ok(response) = client.get(&healthz).send().await {
            if response.status().is_success() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "skafu-observability did not answer on {addr} within {PATIENCE:?}; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ServiceProcess {
        addr,
        client,
        child,
    }
}

/// Runs the binary with `args` to completion and returns whether it exited with 0.
pub async fn run_binary(args: &[&str], log: &std::path::Path) -> bool {
    let status = binary_command(args, log)
        .status()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary_path().display()));
    status.success()
}

impl ServiceProcess {
    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path`; returns the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path))).await
    }

    /// GETs `path` and insists on 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path} answered {body}");
        body
    }

    /// POSTs `body` as JSON and insists on 201.
    pub async fn post_created(&self, path: &str, body: Value) -> Value {
        let (status, answer) = send(self.client.post(self.url(path)).json(&body)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST {path} {body} answered {answer}"
        );
        answer
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("the child can be killed");
    }

    /// Asks the process to stop with SIGTERM and waits for it to exit; returns whether
    /// it exited with 0.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("the child is running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the service did not stop within {PATIENCE:?}"))
            .expect("the child can be awaited");
        status.success()
    }
}
