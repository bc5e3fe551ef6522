//! The HTTP health checker: GET with a timeout, retries with a short backoff, and a
//! resolver that refuses cloud metadata addresses.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use skafu_application::ports::HealthProbe;
use skafu_domain::health::{
    is_metadata_address, CheckOutcome, FailureReason, HealthCheckDefinition,
};

/// First pause between attempts; doubles after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Resolves host names with the system resolver, dropping metadata addresses so that a
/// name pointing at 169.254.169.254 cannot smuggle a check there.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_metadata_address(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("forbidden or unresolvable address for {host}").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Probes health-check endpoints over HTTP.
pub struct HttpChecker {
    client: reqwest::Client,
}

impl HttpChecker {
    /// A checker with its own connection pool.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (TLS initialisation).
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirect is an answer to judge, not a hop to follow to another host.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver))
            // Each run must measure a fresh connection, as a user's first request would.
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Self { client })
    }

    async fn attempt(
        &self,
        def: &HealthCheckDefinition,
    ) -> Result<(u16, f64), (FailureReason, String, Option<u16>, Option<f64>)> {
        let started = Instant::now();
        let response = self
            .client
            .get(&def.endpoint)
            .timeout(Duration::from_secs(def.timeout_seconds))
            .header(
                reqwest::header::USER_AGENT,
                format!("Skafu-HealthChecker/{}", def.service_name),
            )
            .send()
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                if def.accepts_status(status) {
                    Ok((status, elapsed_ms))
                } else {
                    Err((
                        FailureReason::UnexpectedStatus,
                        format!("unexpected status {status}"),
                        Some(status),
                        Some(elapsed_ms),
                    ))
                }
            }
            Err(err) => {
                let (reason, message) = classify(&err, def.timeout_seconds);
                Err((reason, message, None, None))
            }
        }
    }
}

/// Names the kind of a transport failure. reqwest reports connection failures as one
/// kind, so the cause chain decides between refused, DNS and forbidden.
fn classify(err: &reqwest::Error, timeout_seconds: u64) -> (FailureReason, String) {
    if err.is_timeout() {
        return (
            FailureReason::Timeout,
            format!("no response within {timeout_seconds} s"),
        );
    }
    let mut chain = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return (
                    FailureReason::ConnectionRefused,
                    "connection refused".into(),
                );
            }
            if io.kind() == std::io::ErrorKind::TimedOut {
                return (FailureReason::Timeout, "connect timed out".into());
            }
        }
        chain.push(cause.to_string());
        source = cause.source();
    }
    let text = chain.join(": ");
    if text.contains("forbidden") {
        (
            FailureReason::Forbidden,
            "endpoint resolves to a forbidden address".into(),
        )
    } else if text.contains("dns error") || text.contains("lookup") || text.contains("resolve") {
        (
            FailureReason::DnsFailure,
            format!("DNS resolution failed: {text}"),
        )
    } else {
        let message = if text.is_empty() {
            err.to_string()
        } else {
            text
        };
        (FailureReason::Other, message)
    }
}

#[async_trait]
impl HealthProbe for HttpChecker {
    async fn probe(&self, def: &HealthCheckDefinition) -> CheckOutcome {
        let attempts_allowed = def.max_retries + 1;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.attempt(def).await {
                Ok((status_code, response_time_ms)) => {
                    return CheckOutcome::Success {
                        response_time_ms,
                        status_code,
                        attempts: attempt,
                    }
                }
                Err((reason, error_message, status_code, response_time_ms)) => {
                    if attempt >= attempts_allowed {
                        return CheckOutcome::Failure {
                            reason,
                            error_message,
                            status_code,
                            response_time_ms,
                            attempts: attempt,
                        };
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}
