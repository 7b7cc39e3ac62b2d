//! Operator processes with leader election against the local control plane: one leader acts,
//! a killed leader is replaced within the lease duration, no update is made twice across the
//! handover, and /metrics parses and moves; a leader whose clock is behind keeps its lease; a
//! leader that cannot renew makes no Macie write past its renew deadline; /readyz follows the
//! API server.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use macie_operator::api::{MacieDiscovery, MacieJob};
use serde_json::json;
use support::*;
use testkit::wait_for;

const LEASE: Duration = Duration::from_secs(4);
/// The operator's retry period for a lease duration (2/15 of it), and the longest wait between
/// two tries while following (client-go's jitter: up to 2.2 retry periods).
fn retry_period(lease: Duration) -> Duration {
    lease * 2 / 15
}
fn longest_follower_wait(lease: Duration) -> Duration {
    retry_period(lease).mul_f64(2.2)
}

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

/// GET on one of the replica's servers (plain HTTP): (status, body).
async fn admin_get(port: u16, path: &str) -> Result<(u16, String)> {
    testkit::http_get(port, path).await
}

/// Parses /metrics (on the metrics server's port) with a Prometheus text parser and returns
/// the value of one sample.
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
    let (lp, fp) = (replicas[leader_idx].metrics_port, replicas[follower_idx].metrics_port);

    // Both serve health and metrics; only the leader acts.
    for port in replicas.iter().map(|r| r.health_port) {
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
    let gap = renewed.duration_until(acquired);
    // Taken over once the follower had seen the Lease unchanged for a lease duration (never
    // before), and within a lease duration plus two follower waits (one to see the last
    // renewal, one to notice the expiry).
    assert!(
        gap >= k8s_openapi::jiff::SignedDuration::try_from(LEASE)?,
        "taken over before the lease ran out: {gap:?}"
    );
    assert!(
        gap.unsigned_abs() <= LEASE + 2 * longest_follower_wait(LEASE) + Duration::from_secs(1),
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

/// Writes the Lease as a leader named "other" whose clock is `skew` behind, then renews it every
/// 2 s (renewTime always `skew` in the past) until told to stop. Returns the instants just before
/// and just after its last successful write.
fn skewed_leader(
    leases: Api<Lease>,
    skew: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(Instant, Instant)>> {
    tokio::spawn(async move {
        let skewed = || -> Result<serde_json::Value> {
            Ok(serde_json::to_value(MicroTime(Timestamp::now().checked_sub(skew)?))?)
        };
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "macie-operator"},
            "spec": {
                "holderIdentity": "other", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                "acquireTime": skewed()?, "renewTime": skewed()?,
            }
        }))?;
        let before = Instant::now();
        leases.create(&PostParams::default(), &lease).await?;
        let mut last = (before, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await; // the first tick is immediate: the create was the first write
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(last),
                _ = tick.tick() => {
                    let before = Instant::now();
                    leases
                        .patch(
                            "macie-operator",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"renewTime": skewed()?}})),
                        )
                        .await?;
                    last = (before, Instant::now());
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_clock_is_behind_keeps_its_lease_until_it_stops_renewing() -> Result<()> {
    const HOLDER_LEASE: Duration = Duration::from_secs(15);
    let Scene { cp, client, ns, emu } = scene("ha-skew").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let (stop_renewing, stop) = tokio::sync::oneshot::channel();
    let fake = skewed_leader(leases.clone(), Duration::from_secs(20), stop);
    wait_for("the skewed leader's Lease", Duration::from_secs(30), || async {
        Ok(holder(&leases).await?.filter(|h| h == "other"))
    })
    .await?;

    // The operator with its defaults: lease duration 15 s, renew deadline 10 s, retry 2 s.
    let mut op = OperatorProcess::spawn(
        "op-skew",
        cp.kubeconfig(),
        &ns,
        &emu.url,
        &["--leader-elect", "--lease-namespace", &ns],
    )?;
    let log = op.log.clone();
    wait_for("the operator to follow \"other\"", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log)?;
        Ok(text
            .lines()
            .any(|l| l.contains("following the leader") && l.contains("holder=other"))
            .then_some(()))
    })
    .await
    .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;

    // Its renewTime is 20 s old by the local clock, more than the lease duration, at every
    // renewal: a follower comparing it with its own clock would take over at once. This one
    // judges by when it saw the Lease change, and stays a follower.
    let until = Instant::now() + 3 * HOLDER_LEASE;
    while Instant::now() < until {
        if let Some(status) = op.child.try_wait()? {
            bail!("the operator exited ({status}): {}", std::fs::read_to_string(&log)?);
        }
        assert!(!fake.is_finished(), "the skewed leader stopped renewing: {fake:?}");
        assert_eq!(
            metric(op.metrics_port, "macie_operator_leader", &[]).await?,
            0.0,
            "the operator took the lease"
        );
        assert_eq!(holder(&leases).await?.as_deref(), Some("other"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        admin_get(op.health_port, "/readyz").await?.0,
        200,
        "a follower is ready"
    );

    // The leader stops renewing: the operator takes over once it has seen no change for the
    // lease duration, not earlier, and not much later.
    let _ = stop_renewing.send(());
    let (before_last, after_last) = fake.await??;
    let taken = wait_for(
        "the operator to take over",
        HOLDER_LEASE + 2 * longest_follower_wait(HOLDER_LEASE) + Duration::from_secs(5),
        || async {
            Ok(holder(&leases)
                .await?
                .filter(|h| h == "op-skew")
                .map(|_| Instant::now()))
        },
    )
    .await?;
    let since_last = taken - before_last;
    assert!(
        since_last >= HOLDER_LEASE,
        "took over {since_last:?} after the last renewal"
    );
    assert!(
        taken - after_last <= HOLDER_LEASE + 2 * longest_follower_wait(HOLDER_LEASE) + Duration::from_secs(1),
        "took over {:?} after the last renewal",
        taken - after_last
    );
    let spec = leases.get("macie-operator").await?.spec.context("spec")?;
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    wait_for("leader metric", Duration::from_secs(10), || async {
        Ok((metric(op.metrics_port, "macie_operator_leader", &[]).await? == 1.0).then_some(()))
    })
    .await?;
    op.kill().await?;
    Ok(())
}

/// Makes every UPDATE of the Lease `macie-operator` in `ns` fail in admission (a policy of the
/// API server itself): renewals fail while everything else, status writes included, works.
async fn block_lease_updates(client: &kube::Client, ns: &str) -> Result<()> {
    let name = format!("e2e-block-lease-{ns}");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["coordination.k8s.io"], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["leases"], "resourceNames": ["macie-operator"],
            }]},
            "validations": [{
                "expression": format!("object.metadata.namespace != '{ns}'"),
                "message": "lease renewals are blocked by the test",
            }],
        }
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]}
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

async fn unblock_lease_updates(client: &kube::Client, ns: &str) -> Result<()> {
    let name = format!("e2e-block-lease-{ns}");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_cannot_renew_makes_no_update_after_its_renew_deadline() -> Result<()> {
    const OP_LEASE: Duration = Duration::from_secs(8);
    const RENEW_DEADLINE: Duration = Duration::from_secs(3);
    let Scene { cp, client, ns, emu } = scene("ha-deadline").await?;
    let job = emu.put_job(json!({"name": "deadline-job", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "deadline", json!({"jobId": job, "jobStatus": "USER_PAUSED"})).await?;
    // The discovery engine too: one account, kept DISABLED.
    let account = "111111111111";
    emu.put_account(account, "ENABLED", false);
    let discoveries: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    discoveries
        .create(
            &PostParams::default(),
            &discovery_object("deadline", &[(account.to_string(), "DISABLED")])?,
        )
        .await?;
    let mut op = OperatorProcess::spawn(
        "op-deadline",
        cp.kubeconfig(),
        &ns,
        &emu.url,
        &[
            "--leader-elect",
            "--lease-namespace",
            &ns,
            "--lease-duration",
            &format!("{}s", OP_LEASE.as_secs()),
            "--lease-renew-deadline",
            &format!("{}s", RENEW_DEADLINE.as_secs()),
        ],
    )?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    wait_for("the operator to lead", Duration::from_secs(60), || async {
        Ok(holder(&leases).await?.filter(|h| h == "op-deadline"))
    })
    .await?;
    wait_reason(&api, "deadline", "Converged", Duration::from_secs(60)).await?;
    assert_eq!(emu.update_calls().len(), 1);
    wait_for("the account disabled", Duration::from_secs(60), || async {
        Ok((emu.account(account).as_deref() == Some("DISABLED")).then_some(()))
    })
    .await?;

    // While it leads, a change made out of band is corrected within a sweep or two.
    let drift = || {
        emu.state
            .lock()
            .set_status_service_side(
                None,
                None,
                &job,
                serde_json::from_value(json!("RUNNING")).expect("status"),
            )
            .map_err(anyhow::Error::msg)
    };
    drift()?;
    wait_for("the drift corrected", Duration::from_secs(30), || async {
        Ok((emu.update_calls().len() == 2).then_some(()))
    })
    .await?;
    wait_for("the job paused again", Duration::from_secs(30), || async {
        Ok((emu.status(&job).as_deref() == Some("USER_PAUSED")).then_some(()))
    })
    .await?;

    // Renewals now fail. Once a dry-run update by the test is refused, no later renewal can
    // succeed: the last successful one started before now, so the leader's renew deadline ends
    // before `now + RENEW_DEADLINE`.
    block_lease_updates(&client, &ns).await?;
    let blocked_at = wait_for("the policy to be in force", Duration::from_secs(30), || async {
        let lease = leases.get("macie-operator").await?;
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match leases.replace("macie-operator", &dry_run, &lease).await {
            Err(kube::Error::Api(e)) if e.message.contains("blocked by the test") => Ok(Some(Instant::now())),
            _ => Ok(None),
        }
    })
    .await?;
    let calls_before = emu.update_calls().len();
    let batches_before = emu.batch_calls().len();
    tokio::time::sleep_until((blocked_at + RENEW_DEADLINE).into()).await;
    // Past the renew deadline, the same changes must not be corrected by this leader any more.
    drift()?;
    emu.put_account(account, "ENABLED", false);
    let status = tokio::time::timeout(Duration::from_secs(60), op.child.wait())
        .await
        .context("the operator did not exit after losing its lease")??;
    let log = std::fs::read_to_string(&op.log)?;
    assert!(!status.success(), "exits with an error when the lease is lost: {log}");
    assert!(
        log.contains("no renewal succeeded within the renew deadline"),
        "gave up at the renew deadline: {log}"
    );
    let calls = emu.update_calls();
    assert_eq!(
        calls.len(),
        calls_before,
        "UpdateClassificationJob after the renew deadline: {:#?}",
        &calls[calls_before..]
    );
    assert_eq!(emu.status(&job).as_deref(), Some("RUNNING"));
    let batches = emu.batch_calls();
    assert_eq!(
        batches.len(),
        batches_before,
        "BatchUpdateAutomatedDiscoveryAccounts after the renew deadline: {:#?}",
        &batches[batches_before..]
    );
    assert_eq!(emu.account(account).as_deref(), Some("ENABLED"));
    unblock_lease_updates(&client, &ns).await?;
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
        let port = op.health_port;
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
    assert_eq!(admin_get(op.health_port, "/livez").await?.0, 200, "still live");

    cp.start_apiserver().await?;
    wait_for(
        "ready again",
        macie_operator::runtime::KUBE_CHECK_PERIOD + Duration::from_secs(10),
        ready(200),
    )
    .await?;
    Ok(())
}
