//! Whether to publish to AWS at all, and the SDK clients when we do.
//!
//! # The rule
//!
//! Publishing is on when, at startup, both of these hold:
//!
//! 1. a region is configured: [`AwsOverrides::region`], else `AWS_REGION` /
//!    `AWS_DEFAULT_REGION`, else the `region` of the active profile in the shared config
//!    files;
//! 2. credentials resolve from [`AwsOverrides::credentials`], else from the environment
//!    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the active
//!    profile of the shared config and credentials files, or a web identity token
//!    (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`).
//!
//! Otherwise [`load_aws`] returns `None` and says why in an `info` log line; the service
//! then keeps its own read models and publishes nothing.
//!
//! Neither lookup ever asks the EC2 instance metadata service: the SDK's default region and
//! credential chains end with it, and on a machine that is not EC2 it costs a connect
//! timeout to 169.254.169.254 at every start. Both chains are therefore built here without
//! it, whatever `AWS_EC2_METADATA_DISABLED` says. (A profile that names
//! `credential_source = Ec2InstanceMetadata` still asks it, as its operator requested.)
//!
//! Endpoints come from the SDK as usual: `AWS_ENDPOINT_URL`, and per service
//! `AWS_ENDPOINT_URL_CLOUDWATCH` and `AWS_ENDPOINT_URL_XRAY`. An explicit
//! [`AwsOverrides::endpoint_url`] wins over all of them.
//!
//! # Limitations
//!
//! EC2 instance profiles and ECS task roles are not used, since both come from metadata
//! endpoints. A deployment there must pass credentials through the environment or a
//! profile; if that becomes a burden, the fix is an explicit opt-in setting that appends
//! the ECS and IMDS providers to the chain.

use std::time::Duration;

use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatch::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};

/// How long startup waits for credentials. Environment variables and static profiles
/// answer at once; an assume-role or SSO profile calls AWS and may take a few seconds.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings that take precedence over the environment and the shared config files.
///
/// Tests use them to point at an emulator with dummy credentials and no retries.
#[derive(Debug, Clone, Default)]
pub struct AwsOverrides {
    /// Region, such as `us-east-1`.
    pub region: Option<String>,
    /// Endpoint for both services, such as `http://127.0.0.1:5000`.
    pub endpoint_url: Option<String>,
    /// Static credentials used instead of the credential chain.
    pub credentials: Option<Credentials>,
    /// Attempts per call, the first included: 1 turns the SDK's retries off. Without it
    /// the SDK's standard mode applies (3 attempts, or `AWS_MAX_ATTEMPTS`).
    pub max_attempts: Option<u32>,
    /// Upper bound for one call, retries included.
    pub operation_timeout: Option<Duration>,
}

/// The SDK clients, built from one shared configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// CloudWatch client (awsQuery protocol, see `docs/adr/0002`).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// X-Ray client.
    pub xray: aws_sdk_xray::Client,
}

/// Decides whether publishing is on (see the module documentation for the rule) and, if
/// so, builds the clients. It makes no network call unless a configured profile needs one
/// to produce credentials (assume-role, SSO).
pub async fn load_aws(settings: Option<AwsOverrides>) -> Option<AwsClients> {
    let settings = settings.unwrap_or_default();

    let Some(region) = resolve_region(&settings).await else {
        tracing::info!("AWS publishing off: no region configured");
        return None;
    };

    let credentials = credentials_provider(&settings, &region);
    match tokio::time::timeout(CREDENTIALS_TIMEOUT, credentials.provide_credentials()).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::info!(
                error = %aws_sdk_cloudwatch::error::DisplayErrorContext(&err),
                "AWS publishing off: no credentials"
            );
            return None;
        }
        Err(_) => {
            tracing::info!(
                timeout_s = CREDENTIALS_TIMEOUT.as_secs(),
                "AWS publishing off: credentials did not resolve in time"
            );
            return None;
        }
    }

    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region.clone())
        .credentials_provider(credentials);
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(attempts) = settings.max_attempts {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(attempts.max(1)));
    }
    if let Some(timeout) = settings.operation_timeout {
        loader = loader.timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build());
    }
    let sdk_config = loader.load().await;

    tracing::info!(
        region = %region,
        endpoint_url = sdk_config.endpoint_url().unwrap_or("default"),
        "AWS publishing on"
    );
    Some(AwsClients {
        cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk_config),
        xray: aws_sdk_xray::Client::new(&sdk_config),
    })
}

async fn resolve_region(settings: &AwsOverrides) -> Option<Region> {
    RegionProviderChain::first_try(settings.region.clone().map(Region::new))
        .or_else(EnvironmentVariableRegionProvider::new())
        .or_else(ProfileFileRegionProvider::new())
        .region()
        .await
}

/// The SDK's default chain minus its metadata-endpoint providers (ECS, IMDS).
fn credentials_provider(settings: &AwsOverrides, region: &Region) -> SharedCredentialsProvider {
    if let Some(credentials) = &settings.credentials {
        return SharedCredentialsProvider::new(credentials.clone());
    }
    // The profile and web identity providers may call STS, which needs the region.
    let conf = ProviderConfig::without_region().with_region(Some(region.clone()));
    let chain = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    );
    SharedCredentialsProvider::new(chain)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// Set in the child process that [`decision_in_clean_env`] starts.
    const PROBE_VAR: &str = "SKAFU_AWS_CONFIG_PROBE";

    fn dummy_credentials() -> Credentials {
        Credentials::new("testing", "testing", None, None, "test")
    }

    /// Runs `load_aws(None)` in a child process whose environment holds only `env` plus
    /// guards (no metadata service, a loopback endpoint, empty shared config files), and
    /// returns whether publishing came out on. A child process keeps the test from racing
    /// other tests over the process environment.
    fn decision_in_clean_env(case: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> bool {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("skafu-aws-config-{}-{case}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }

        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "aws::config::tests::probe_child", "--nocapture"])
            .env_clear()
            .env(PROBE_VAR, "1")
            .env("HOME", &dir)
            .env("AWS_CONFIG_FILE", dir.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{case}: child failed: {stdout}");
        match (
            stdout.contains("publishing=on"),
            stdout.contains("publishing=off"),
        ) {
            (true, false) => true,
            (false, true) => false,
            _ => panic!("{case}: child did not report a decision: {stdout}"),
        }
    }

    #[tokio::test]
    async fn probe_child() {
        // Only meaningful inside decision_in_clean_env's child process.
        if std::env::var_os(PROBE_VAR).is_none() {
            return;
        }
        let on = load_aws(None).await.is_some();
        println!("publishing={}", if on { "on" } else { "off" });
    }

    #[test]
    fn publishing_is_off_without_region_or_credentials() {
        assert!(!decision_in_clean_env("nothing", &[], &[]));
        assert!(!decision_in_clean_env(
            "region-only",
            &[("AWS_REGION", "us-east-1")],
            &[]
        ));
        assert!(!decision_in_clean_env(
            "keys-only",
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing")
            ],
            &[]
        ));
    }

    #[test]
    fn publishing_is_on_with_a_region_and_credentials_from_the_environment() {
        assert!(decision_in_clean_env(
            "env",
            &[
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
            &[]
        ));
    }

    #[test]
    fn publishing_is_on_with_a_profile_that_has_a_region_and_keys() {
        let files = [
            ("config", "[profile ops]\nregion = eu-west-1\n"),
            (
                "credentials",
                "[ops]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
            ),
        ];
        assert!(decision_in_clean_env(
            "profile",
            &[("AWS_PROFILE", "ops")],
            &files
        ));
        assert!(!decision_in_clean_env(
            "missing-profile",
            &[("AWS_PROFILE", "nope")],
            &files
        ));
    }

    #[tokio::test]
    async fn overrides_set_region_endpoint_and_credentials() {
        let clients = load_aws(Some(AwsOverrides {
            region: Some("eu-central-1".into()),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            credentials: Some(dummy_credentials()),
            max_attempts: Some(1),
            operation_timeout: None,
        }))
        .await
        .expect("publishing on");

        let config = clients.cloudwatch.config();
        assert_eq!(config.region().map(Region::as_ref), Some("eu-central-1"));
        assert_eq!(config.retry_config().unwrap().max_attempts(), 1);
        assert_eq!(
            clients.xray.config().region().map(Region::as_ref),
            Some("eu-central-1")
        );
    }
}
