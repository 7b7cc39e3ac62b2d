//! Two operator processes with leader election against the local control plane: one leader
//! acts, a killed leader is replaced within the lease duration, no update is made twice across
//! the handover, and /metrics parses and moves; /readyz follows the API server.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use macie_operator::api::MacieJob;
use serde_json::json;
use support::*;
use testkit::wait_for;

const LEASE: Duration = Duration::from_secs(4);

fn spawn(name: &str, kubeconfig: &std::path::Path, ns: &str, endpoint: &str) -> Result<OperatorProcess> {
    let lease = format!("{}s", LEASE.as_secs());
    OperatorProcess::spawn(
        name,
        kubeconfig,
        ns,
        endpoint,
        &[
            "--leader-elect",
            "--lease-namespace",
            ns,
            "--lease-duration",
            &lease,
            "--step-timeout",
            "60s",
        ],
    )
}

/// GET on the replica's admin server: (status, body).
async fn admin_get(port: u16, path: &str) -> Result<(u16, String)> {
    testkit::http_get(port, path).await
}

/// Parses /metrics with a Prometheus text parser and returns the value of one sample.
async fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let (_, body) = admin_get(port, "/metrics").await?;
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("parse /metrics")?;
    let mut total = 0.0;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            total += match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            };
        }
    }
    Ok(total)
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("macie-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_acts_and_a_killed_leader_is_replaced_without_double_updates() -> Result<()> {
    let Scene { cp, client, ns, emu } = scene("ha").await?;
    // Status changes show up 8 s late: longer than the handover, so the new leader first sees
    // the old status and must rely on the recorded step.
    emu.state
        .lock()
        .set_faults(serde_json::from_value(json!({"visibilityDelayMs": 8000}))?)
        .map_err(anyhow::Error::msg)?;
    let job = emu.put_job(json!({"name": "ha-job", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "ha", json!({"jobId": job, "jobStatus": "USER_PAUSED"})).await?;

    let mut replicas = [
        spawn("op-a", cp.kubeconfig(), &ns, &emu.url)?,
        spawn("op-b", cp.kubeconfig(), &ns, &emu.url)?,
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let first = wait_for("a leader", Duration::from_secs(60), || async { holder(&leases).await }).await?;
    wait_reason(&api, "ha", "Converged", Duration::from_secs(60)).await?;
    let (leader_idx, follower_idx) = if replicas[0].name == first { (0, 1) } else { (1, 0) };
    let (lp, fp) = (replicas[leader_idx].port, replicas[follower_idx].port);

    // Both serve health and metrics; only the leader acts.
    for port in [lp, fp] {
        wait_for("ready", Duration::from_secs(30), || async {
            Ok((admin_get(port, "/readyz").await?.0 == 200).then_some(()))
        })
        .await?;
        assert_eq!(admin_get(port, "/livez").await?.0, 200);
    }
    assert_eq!(metric(lp, "macie_operator_leader", &[]).await?, 1.0);
    assert_eq!(metric(fp, "macie_operator_leader", &[]).await?, 0.0);
    let ok_update = [("operation", "UpdateClassificationJob"), ("outcome", "ok")];
    assert_eq!(
        metric(lp, "macie_operator_macie_api_calls_total", &ok_update).await?,
        1.0
    );
    assert!(
        metric(
            lp,
            "macie_operator_macie_api_calls_total",
            &[("operation", "ListClassificationJobs")]
        )
        .await?
            >= 1.0
    );
    assert!(metric(lp, "macie_operator_reconciles_total", &[("kind", "MacieJob")]).await? >= 1.0);
    assert!(metric(lp, "macie_operator_job_sweeps_total", &[]).await? >= 1.0);
    assert_eq!(
        metric(lp, "macie_operator_jobs", &[("status", "USER_PAUSED")]).await?,
        1.0
    );
    assert_eq!(
        metric(fp, "macie_operator_reconciles_total", &[]).await?,
        0.0,
        "the follower does not act"
    );
    assert_eq!(metric(fp, "macie_operator_macie_api_calls_total", &[]).await?, 0.0);
    let sweeps = metric(lp, "macie_operator_job_sweeps_total", &[]).await?;
    wait_for("sweeps counter to move", Duration::from_secs(30), || async {
        Ok((metric(lp, "macie_operator_job_sweeps_total", &[]).await? > sweeps).then_some(()))
    })
    .await?;

    // Ask for CANCELLED; kill the leader right after its call reaches Macie.
    api.patch(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobStatus": "CANCELLED"}})),
    )
    .await?;
    wait_for("the cancel call", Duration::from_secs(60), || async {
        Ok(emu
            .update_calls()
            .iter()
            .any(|c| c["requestedStatus"] == "CANCELLED")
            .then_some(()))
    })
    .await?;
    let renewed = leases.get("macie-operator").await?.spec.unwrap().renew_time.unwrap().0;
    replicas[leader_idx].child.start_kill()?;
    replicas[leader_idx].child.wait().await?;

    let second = wait_for("a new leader", Duration::from_secs(60), || async {
        Ok(holder(&leases).await?.filter(|h| *h != first))
    })
    .await?;
    assert_eq!(second, replicas[follower_idx].name);
    let acquired = leases
        .get("macie-operator")
        .await?
        .spec
        .unwrap()
        .acquire_time
        .unwrap()
        .0;
    let gap = renewed.duration_until(acquired).unsigned_abs();
    // Taken over once the lease expired: within the lease duration plus one retry period.
    assert!(
        gap <= LEASE + LEASE / 5 + Duration::from_secs(1),
        "handover took {gap:?}"
    );
    wait_for("new leader metric", Duration::from_secs(30), || async {
        Ok((metric(fp, "macie_operator_leader", &[]).await? == 1.0).then_some(()))
    })
    .await?;

    let done = wait_reason(&api, "ha", "Converged", Duration::from_secs(60)).await?;
    assert_eq!(done.status.unwrap().job.unwrap().job_status, "CANCELLED");
    let calls = emu.update_calls();
    assert_eq!(
        calls.len(),
        2,
        "one pause and one cancel, none repeated across the handover: {calls:#?}"
    );
    for c in &calls {
        assert_eq!(c["valid"], true, "{c}");
        assert_eq!(c["repeated"], false, "{c}");
    }

    // A graceful stop releases the lease.
    let f = &mut replicas[follower_idx].child;
    let pid = f.id().context("pid")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), f.wait()).await??;
    assert!(status.success(), "graceful exit: {status:?}");
    assert_eq!(holder(&leases).await?, None, "lease released on shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_the_api_server() -> Result<()> {
    // A control plane of its own: this test stops its API server.
    let mut cp = testkit::ControlPlane::start().await?;
    install_crds(&cp).await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "ha-readyz").await?;
    let emu = EmulatorHandle::start(Default::default()).await?;
    let op = OperatorProcess::spawn("op-readyz", cp.kubeconfig(), &ns, &emu.url, &[])?;
    let ready = |want: u16| {
        let port = op.port;
        move || async move {
            let (status, body) = admin_get(port, "/readyz").await?;
            Ok((status == want).then_some(body))
        }
    };
    wait_for("ready", Duration::from_secs(60), ready(200)).await?;

    cp.stop_apiserver();
    let body = wait_for(
        "not ready while the API server is down",
        macie_operator::runtime::KUBE_CHECK_PERIOD
            + macie_operator::runtime::KUBE_CHECK_TIMEOUT
            + Duration::from_secs(5),
        ready(503),
    )
    .await?;
    assert!(body.contains("cannot list the watched resources"), "{body}");
    assert_eq!(admin_get(op.port, "/livez").await?.0, 200, "still live");

    cp.start_apiserver().await?;
    wait_for(
        "ready again",
        macie_operator::runtime::KUBE_CHECK_PERIOD + Duration::from_secs(10),
        ready(200),
    )
    .await?;
    Ok(())
}
