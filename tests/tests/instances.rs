//! Several instances on one PostgreSQL database: scheduled checks run once per
//! interval, and every datum is published once, whichever instance recorded it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skafu_infrastructure::aws::config::AwsOverrides;
use skafu_infrastructure::{AwsMode, Running};
use skafu_tests::aws::{clients, metric_totals, overrides, shared_endpoint, Moto};
use skafu_tests::{
    eventually, http_client, start_in_process, Backend, Behaviour, StubServer, TestStore,
};

async fn post(client: &reqwest::Client, running: &Running, path: &str, body: Value) -> Value {
    let response = client
        .post(format!("http://{}{path}", running.addr))
        .json(&body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 201, "POST {path}");
    response.json().await.expect("a JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_each_scheduled_check_once_per_interval() {
    let store = TestStore::fresh(Backend::Postgres).await;
    let first = start_in_process(&store.database_url, true, AwsMode::Off).await;
    let second = start_in_process(&store.database_url, true, AwsMode::Off).await;
    let client = http_client();
    let target = StubServer::start(Behaviour::Healthy).await;

    let registered = post(
        &client,
        &first,
        "/v1/health-checks",
        json!({"service_name": "twins", "endpoint": target.endpoint(), "interval_seconds": 5}),
    )
    .await;
    let id = registered["health_check_id"]
        .as_str()
        .expect("an id")
        .to_string();

    // Wait for three scheduled runs: enough to see two gaps.
    let audit_url = format!("http://{}/v1/audit/HealthCheck/{id}", second.addr);
    let runs: Vec<DateTime<Utc>> = eventually("three scheduled runs", || async {
        let audit: Value = client
            .get(&audit_url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let runs: Vec<DateTime<Utc>> = audit["events"]
            .as_array()?
            .iter()
            .filter(|e| e["event_type"] == "HealthCheckSucceeded")
            .filter_map(|e| {
                e["payload"]["HealthCheckSucceeded"]["checked_at"]
                    .as_str()?
                    .parse()
                    .ok()
            })
            .collect();
        (runs.len() >= 3).then_some(runs)
    })
    .await;
    // Before the lease, both instances judged the check due at the same tick and ran it
    // twice within milliseconds.
    for pair in runs.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(gap >= 4_500, "two runs {gap} ms apart: {runs:?}");
    }
    assert_eq!(target.user_agents().len(), runs.len());

    first.stop().await;
    second.stop().await;
    store.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishing_instances_send_every_datum_once() {
    let endpoint = shared_endpoint();
    let aws = clients(&endpoint).await;
    let store = TestStore::fresh(Backend::Postgres).await;
    let mode = AwsMode::With(overrides(&endpoint));
    let first = start_in_process(&store.database_url, false, mode.clone()).await;
    let second = start_in_process(&store.database_url, false, mode).await;
    let client = http_client();
    let service = format!("twins-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    let batches = 40;
    for i in 0..batches {
        let target = if i % 2 == 0 { &first } else { &second };
        post(
            &client,
            target,
            "/v1/metrics",
            json!({"service_name": service,
                   "metrics": [{"name": "orders", "value": f64::from(i), "unit": "Count"}]}),
        )
        .await;
    }

    let expected_sum: f64 = (0..batches).map(f64::from).sum();
    let dims = [("ServiceName", service.as_str())];
    let totals = eventually("every datum in CloudWatch", || async {
        let totals = metric_totals(&aws, "Skafu", "orders", &dims).await?;
        (totals.1 >= f64::from(batches)).then_some(totals)
    })
    .await;
    // Give a duplicate time to show before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let totals = metric_totals(&aws, "Skafu", "orders", &dims)
        .await
        .unwrap_or(totals);
    assert_eq!(totals, (expected_sum, f64::from(batches)));

    first.stop().await;
    second.stop().await;
    store.remove().await;
}

/// Found: an AWS call that hung longer than the 10 s lease let the second instance take
/// the lease and send the same window, so CloudWatch counted it twice. The lease is now
/// kept alive while a call is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_hanging_past_the_lease_does_not_let_a_second_instance_resend() {
    let mut moto = Moto::start().await;
    let aws = clients(&moto.endpoint()).await;
    let store = TestStore::fresh(Backend::Postgres).await;
    // No SDK timeout under the freeze: the call must hang, not time out and be resent
    // (a resent call that moto then runs twice is the other, documented, double count).
    let patient = AwsOverrides {
        operation_timeout: Some(Duration::from_secs(60)),
        ..overrides(&moto.endpoint())
    };
    let mode = AwsMode::With(patient);
    let first = start_in_process(&store.database_url, false, mode.clone()).await;
    let second = start_in_process(&store.database_url, false, mode).await;
    let client = http_client();
    let service = format!("hang-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let record = |i: u32| {
        let (client, service) = (client.clone(), service.clone());
        let target = if i.is_multiple_of(2) {
            first.addr
        } else {
            second.addr
        };
        async move {
            let response = client
                .post(format!("http://{target}/v1/metrics"))
                .json(&json!({"service_name": service,
                              "metrics": [{"name": "orders", "value": f64::from(i),
                                           "unit": "Count"}]}))
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status().as_u16(), 201);
        }
    };

    moto.signal("STOP").await;
    for i in 0..10 {
        record(i).await;
    }
    // Past the lease (10 s) and under the call timeout (20 s): the leader's call hangs.
    let frozen_until = tokio::time::Instant::now() + Duration::from_secs(14);
    while tokio::time::Instant::now() < frozen_until {
        let mut leaders = 0;
        for running in [&first, &second] {
            let health: Value = client
                .get(format!("http://{}/healthz", running.addr))
                .send()
                .await
                .expect("an answer")
                .json()
                .await
                .expect("JSON");
            leaders += usize::from(health["publisher"]["leader"] == true);
        }
        assert!(leaders <= 1, "both instances publish at once");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    moto.signal("CONT").await;

    let dims = [("ServiceName", service.as_str())];
    let expected = ((0..10).map(f64::from).sum::<f64>(), 10.0);
    eventually("the frozen window in CloudWatch", || async {
        let totals = metric_totals(&aws, "Skafu", "orders", &dims).await?;
        (totals.1 >= expected.1).then_some(())
    })
    .await;
    // Give a resend time to land before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric_totals(&aws, "Skafu", "orders", &dims).await,
        Some(expected)
    );

    first.stop().await;
    second.stop().await;
    moto.stop().await;
    store.remove().await;
}
