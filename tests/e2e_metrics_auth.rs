//! The secured-metrics end-to-end test: the operator binary with `--metrics-secure`, running
//! as the chart's ServiceAccount with the chart's RBAC, against a local kube-apiserver. Only a
//! bearer token the API server authenticates, of an identity bound to the chart's
//! metrics-reader ClusterRole, reads /metrics; the probes stay plain HTTP on the health port.

mod support;

use std::time::{Duration, Instant};

use anyhow::Result;
use macie_emulator::Seed;
use support::chart::*;
use support::*;
use testkit::{https_get, wait_for};

const RELEASE: &str = "metrics";
const RELEASE_NS: &str = "metrics-system";
const MONITORING: &str = "monitoring";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secured_metrics_admit_only_bound_scrapers() -> Result<()> {
    // A control plane of its own: the test stops its API server at the end.
    let mut cp = testkit::ControlPlane::start().await?;
    install_crds(&cp).await?;
    let client = cp.client().await?;
    let kc = cp.kubeconfig().to_path_buf();

    // The chart, with Prometheus' ServiceAccount (monitoring/prometheus) as a metrics reader.
    namespace(&client, MONITORING).await?;
    let chart = chart();
    run(
        helm(&kc)
            .args(["install", RELEASE, chart.to_str().unwrap()])
            .args(["--namespace", RELEASE_NS, "--create-namespace", "--wait=false"])
            .args(["--set", "defaultAccount.create=false"])
            .args(["--set", "metrics.readers[0].name=prometheus"])
            .args(["--set", &format!("metrics.readers[0].namespace={MONITORING}")]),
        None,
    )?;

    // The operator as the chart's ServiceAccount, serving a certificate from a directory (as a
    // mounted Secret provides it) signed by a CA the test trusts.
    let operator_token =
        testkit::service_account_token(&client, RELEASE_NS, &format!("{RELEASE}-macie-operator")).await?;
    let operator_kc = cp.token_kubeconfig("operator", &operator_token)?;
    let certs = cp.dir().join("metrics-cert");
    std::fs::create_dir_all(&certs)?;
    let ca = testkit::write_serving_cert(&certs)?;
    let app = namespace(&client, "metrics-app").await?;
    let emu = EmulatorHandle::start(Seed::default()).await?;
    let op = OperatorProcess::spawn(
        "op-secure",
        &operator_kc,
        &app,
        &emu.url,
        &["--metrics-secure", "--metrics-cert-dir", certs.to_str().unwrap()],
    )?;
    let port = op.metrics_port;
    let scrape = |token: Option<String>| {
        let ca = ca.clone();
        async move { https_get(port, "/metrics", &ca, token.as_deref()).await }
    };

    // Probes: plain HTTP on the health port.
    let health = op.health_port;
    wait_for("the health server", Duration::from_secs(30), || async {
        Ok(testkit::http_get(health, "/livez")
            .await
            .ok()
            .filter(|(s, _)| *s == 200))
    })
    .await?;

    // (1) No token, or one the API server does not know: 401.
    let (status, _) = wait_for("the metrics server", Duration::from_secs(30), || async {
        Ok(scrape(None).await.ok())
    })
    .await?;
    assert_eq!(status, 401, "no token");
    assert_eq!(scrape(Some("not-a-token".into())).await?.0, 401, "a made-up token");

    // A flood of one bogus token: 50 requests (5 waves of 10 at once), every one 401, cost at
    // most 2 TokenReviews (a refused token is remembered for 10 s, and requests with a token
    // under review wait for that review), as the API server counts them: only the operator
    // makes TokenReviews here.
    let before = token_reviews(&client).await?;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let wave = (0..10).map(|_| scrape(Some("bogus-flood-token".into())));
        for answer in futures::future::join_all(wave).await {
            statuses.push(answer?.0);
        }
    }
    assert_eq!(statuses, vec![401; 50]);
    let reviews = wait_for("the flood's TokenReview counted", Duration::from_secs(30), || async {
        let n = token_reviews(&client).await? - before;
        Ok((n >= 1).then_some(n))
    })
    .await?;
    assert!(
        reviews <= 2,
        "50 requests with one bogus token cost {reviews} TokenReviews"
    );
    // Plain HTTP on the metrics port gets no metrics.
    let plain = testkit::http_get(port, "/metrics").await;
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP was served: {plain:?}");

    // (2) A ServiceAccount without get on /metrics: 403, naming it.
    let stranger = testkit::service_account_token(&client, MONITORING, "stranger").await?;
    let (status, body) = scrape(Some(stranger)).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:serviceaccount:monitoring:stranger"), "{body}");

    // (3) Prometheus' ServiceAccount, bound to the metrics-reader ClusterRole: the metrics.
    let prometheus = testkit::service_account_token(&client, MONITORING, "prometheus").await?;
    let allowed_at = Instant::now();
    let (status, body) = scrape(Some(prometheus.clone())).await?;
    assert_eq!(status, 200, "{body}");
    let samples = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))?.samples;
    assert!(
        samples.iter().any(|s| s.metric == "macie_operator_leader"),
        "no macie_operator_leader in:\n{body}"
    );

    // Each new token is reviewed: once the binding is gone, a new Prometheus token is refused
    // (RBAC reaches the API server's authorizer within moments; a refusal is remembered per
    // token, so each try uses a new one).
    run(
        kubectl(&kc).args([
            "delete",
            "clusterrolebinding",
            &format!("{RELEASE}-macie-operator-metrics-reader"),
        ]),
        None,
    )?;
    wait_for(
        "a new token of the unbound ServiceAccount refused",
        Duration::from_secs(30),
        || async {
            let fresh = testkit::service_account_token(&client, MONITORING, "prometheus").await?;
            Ok((scrape(Some(fresh)).await?.0 == 403).then_some(()))
        },
    )
    .await?;

    // With the API server down, a token never seen before cannot be reviewed: 503, not 200.
    // The token allowed a moment ago is still let through from the cache (allowed verdicts
    // last a minute).
    let unseen = testkit::service_account_token(&client, MONITORING, "stranger").await?;
    cp.stop_apiserver();
    let (status, body) = scrape(Some(unseen)).await?;
    assert_eq!(status, 503, "{body}");
    let cached = scrape(Some(prometheus)).await?;
    if allowed_at.elapsed() < macie_operator::runtime::metrics_auth::ALLOWED_TTL - Duration::from_secs(5) {
        assert_eq!(
            cached.0, 200,
            "the allowed token's verdict was not cached: {}",
            cached.1
        );
    }
    assert_eq!(testkit::http_get(health, "/livez").await?.0, 200, "still live");
    drop(op);
    Ok(())
}

/// TokenReviews the API server has answered since it started (its apiserver_request_total
/// for the tokenreviews resource, read from its /metrics as the admin).
async fn token_reviews(client: &kube::Client) -> Result<u64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?.samples;
    Ok(samples
        .iter()
        .filter(|s| s.metric == "apiserver_request_total" && s.labels.get("resource") == Some("tokenreviews"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum::<f64>() as u64)
}
