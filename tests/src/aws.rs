//! The AWS emulator (moto) for the black-box tests, and reading back what reached it.
//!
//! Two ways to get an emulator:
//! - [`shared_endpoint`]: the one `scripts/test` started for the whole run
//!   (`SKAFU_TEST_MOTO_ENDPOINT`); tests sharing it use names of their own run;
//! - [`Moto::start`]: a private instance on a port of its own, for tests that stop, freeze
//!   or restart it. It runs `moto_server` from `SKAFU_TEST_MOTO_SERVER` (set by
//!   `scripts/test`), else from the repository's `.venv-moto/`.
//!
//! Every endpoint here is on 127.0.0.1; [`overrides`] refuses anything else, so a stray
//! setting cannot send test traffic to AWS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_cloudwatch::config::Credentials;
use aws_sdk_cloudwatch::types::{Dimension, DimensionFilter, Statistic};
use chrono::{DateTime, Utc};
use serde_json::Value;
use skafu_infrastructure::aws::config::{load_aws, AwsClients, AwsOverrides};

use crate::{free_port, log_path, PATIENCE};

/// The emulator `scripts/test` started for the run.
///
/// # Panics
///
/// When `SKAFU_TEST_MOTO_ENDPOINT` is unset or not a loopback URL.
pub fn shared_endpoint() -> String {
    let endpoint = std::env::var("SKAFU_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "SKAFU_TEST_MOTO_ENDPOINT is not set: run the AWS tests through scripts/test, \
             which starts moto (scripts/moto.sh) and sets it"
        )
    });
    assert_loopback(&endpoint);
    endpoint
}

fn assert_loopback(endpoint: &str) {
    let loopback = endpoint.starts_with("http://127.0.0.1:")
        || endpoint.starts_with("http://localhost:")
        || endpoint.starts_with("http://[::1]:");
    assert!(
        loopback,
        "the AWS endpoint of the tests must be on loopback, got {endpoint}"
    );
}

/// Settings that point the SDK at `endpoint` with dummy credentials, no SDK retries and
/// short timeouts, so that an outage shows at once and the publisher's own backoff is
/// what is tested.
///
/// # Panics
///
/// When `endpoint` is not on loopback.
pub fn overrides(endpoint: &str) -> AwsOverrides {
    assert_loopback(endpoint);
    AwsOverrides {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
        credentials: Some(Credentials::new("testing", "testing", None, None, "tests")),
        max_attempts: Some(1),
        operation_timeout: Some(Duration::from_secs(5)),
    }
}

/// SDK clients on `endpoint`, for reading back.
pub async fn clients(endpoint: &str) -> AwsClients {
    load_aws(Some(overrides(endpoint)))
        .await
        .expect("overrides give a region and credentials")
}

/// Environment for the `skafu-observability` binary that publishes to `endpoint`.
pub fn binary_env(endpoint: &str) -> Vec<(String, String)> {
    assert_loopback(endpoint);
    [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", endpoint),
        ("AWS_ENDPOINT_URL_XRAY", endpoint),
        ("AWS_MAX_ATTEMPTS", "1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("SKAFU_PUBLISH_MAX_BACKOFF_MS", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A private moto instance on 127.0.0.1.
pub struct Moto {
    /// Its port; kept across [`Moto::restart`].
    pub port: u16,
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

fn moto_server() -> PathBuf {
    if let Ok(path) = std::env::var("SKAFU_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".venv-moto")
        .join("bin")
        .join("moto_server")
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    ///
    /// # Panics
    ///
    /// When moto is not installed (run `scripts/moto.sh install`) or does not come up.
    pub async fn start() -> Self {
        let mut moto = Self {
            port: free_port(),
            child: None,
            log: log_path("moto"),
        };
        moto.launch().await;
        moto
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let server = moto_server();
        assert!(
            server.exists(),
            "{} is missing: run scripts/moto.sh install (scripts/test does)",
            server.display()
        );
        let log = std::fs::File::create(&self.log).expect("a log file for moto");
        let child = tokio::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("a second handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        self.child = Some(child);
        let client = crate::http_client();
        let url = format!("{}/moto-api/", self.endpoint());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while client.get(&url).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not answer on port {}; see {}",
                self.port,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills moto. Its state is gone: moto keeps everything in memory.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts a fresh moto on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) moto: while frozen, connections are
    /// accepted by the kernel but nothing answers, and its state is kept.
    pub async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("moto is running")
            .to_string();
        let status = tokio::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

/// `Sum` and `SampleCount` of a metric with exactly these dimensions over the last two
/// hours (and the next one), or `None` when it has no data.
pub async fn metric_totals(
    clients: &AwsClients,
    namespace: &str,
    name: &str,
    dimensions: &[(&str, &str)],
) -> Option<(f64, f64)> {
    let now = Utc::now();
    let dims: Vec<Dimension> = dimensions
        .iter()
        .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
        .collect();
    let output = clients
        .cloudwatch
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(name)
        .set_dimensions(Some(dims))
        .start_time(smithy_time(now - chrono::Duration::hours(2)))
        .end_time(smithy_time(now + chrono::Duration::hours(1)))
        .period(60)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .expect("GetMetricStatistics answers");
    let points = output.datapoints();
    if points.is_empty() {
        return None;
    }
    let sum = points.iter().filter_map(|p| p.sum()).sum();
    let count = points.iter().filter_map(|p| p.sample_count()).sum();
    Some((sum, count))
}

/// Every metric of `namespace` whose `ServiceName` is `service`: name → dimensions.
/// moto lists some metrics more than once; the map keeps one entry per distinct
/// (name, dimensions).
pub async fn list_metrics(
    clients: &AwsClients,
    namespace: &str,
    service: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let output = clients
            .cloudwatch
            .list_metrics()
            .namespace(namespace)
            .dimensions(
                DimensionFilter::builder()
                    .name("ServiceName")
                    .value(service)
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
            .expect("ListMetrics answers");
        for metric in output.metrics() {
            let dims: BTreeMap<String, String> = metric
                .dimensions()
                .iter()
                .map(|d| {
                    (
                        d.name().unwrap_or_default().to_string(),
                        d.value().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let entry = (metric.metric_name().unwrap_or_default().to_string(), dims);
            if !found.contains(&entry) {
                found.push(entry);
            }
        }
        token = output.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    found.sort();
    found
}

/// The segment documents X-Ray holds for each of `trace_ids`, as sent (unparsed, so that
/// copies can be compared byte for byte), in the order returned, duplicates included.
pub async fn raw_segment_documents(
    clients: &AwsClients,
    trace_ids: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ids in trace_ids.chunks(5) {
        let mut token = None;
        loop {
            let output = clients
                .xray
                .batch_get_traces()
                .set_trace_ids(Some(ids.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .expect("BatchGetTraces answers");
            for trace in output.traces() {
                let id = trace.id().unwrap_or_default().to_string();
                for segment in trace.segments() {
                    let doc = segment.document().unwrap_or_default().to_string();
                    found.entry(id.clone()).or_default().push(doc);
                }
            }
            token = output.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    found
}

/// [`raw_segment_documents`], parsed.
pub async fn segment_documents(
    clients: &AwsClients,
    trace_ids: &[String],
) -> BTreeMap<String, Vec<Value>> {
    raw_segment_documents(clients, trace_ids)
        .await
        .into_iter()
        .map(|(id, docs)| {
            let parsed = docs
                .iter()
                .map(|doc| serde_json::from_str(doc).expect("a segment document is JSON"))
                .collect();
            (id, parsed)
        })
        .collect()
}

fn smithy_time(t: DateTime<Utc>) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs_and_nanos(t.timestamp(), t.timestamp_subsec_nanos())
}
