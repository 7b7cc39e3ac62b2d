//! The fault suite: the operator against a failing Macie (throttling, 500s, latency, delayed
//! visibility, a 30-second outage, a status value newer than the SDK), killed with SIGKILL
//! mid-convergence, a leader killed mid-convergence, and kube-apiserver restarted under it.
//! Each scenario ends with every resource converged and an emulator call log with no invalid
//! and no repeated UpdateClassificationJob call.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, Patch, PatchParams};
use macie_emulator::Seed;
use macie_operator::api::{MacieDiscovery, MacieJob};
use macie_operator::macie::Place;
use serde_json::json;
use support::*;
use testkit::{ControlPlane, wait_for};

const DEADLINE: Duration = Duration::from_secs(180);

fn acct(i: usize) -> String {
    format!("{:012}", 600_000_000_000usize + i)
}

async fn discovery(api: &Api<MacieDiscovery>, name: &str, accounts: &[String], status: &str) -> Result<()> {
    let pairs: Vec<(String, &str)> = accounts.iter().map(|a| (a.clone(), status)).collect();
    let obj = discovery_object(name, &pairs)?;
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

/// Waits until the MacieDiscovery reports Converged for its generation and Macie agrees.
async fn wait_discovery(
    api: &Api<MacieDiscovery>,
    emu: &EmulatorHandle,
    name: &str,
    accounts: &[String],
    status: &str,
) -> Result<()> {
    wait_for(&format!("MacieDiscovery {name} to converge"), DEADLINE, || async {
        let o = api.get(name).await?;
        let st = o.status.clone().unwrap_or_default();
        let ready = st.observed_generation == o.metadata.generation
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "Converged");
        let macie = accounts.iter().all(|a| emu.account(a).as_deref() == Some(status));
        Ok((ready && macie).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_errors_latency_delayed_visibility_then_an_outage() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("faults").await?;
    set_faults(
        &emu,
        json!({
            "operations": {"*": {"throttleRate": 0.3, "errorRate": 0.1, "latencyMs": 50}},
            "visibilityDelayMs": 1500,
            "seed": 11
        }),
    )?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut want = jobs(&api, &emu, "pause", 10, "RUNNING", "USER_PAUSED").await?;
    want.extend(jobs(&api, &emu, "resume", 10, "USER_PAUSED", "RUNNING").await?);
    want.extend(jobs(&api, &emu, "cancel", 10, "RUNNING", "CANCELLED").await?);
    let accounts: Vec<String> = (0..60).map(acct).collect();
    for a in &accounts {
        emu.put_account(a, "DISABLED", false);
    }
    let (a0, a1) = accounts.split_at(30);
    let dapi: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    discovery(&dapi, "team-a", a0, "ENABLED").await?;
    discovery(&dapi, "team-b", a1, "ENABLED").await?;

    let jobs_op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    let disc_op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_converged(&api, &emu, &want).await?;
    wait_discovery(&dapi, &emu, "team-a", a0, "ENABLED").await?;
    wait_discovery(&dapi, &emu, "team-b", a1, "ENABLED").await?;
    assert_eq!(accepted_updates(&emu), 30, "one update per job");
    let counters = emu.state.lock().counters.clone();
    let injected: u64 = counters.values().map(|c| c.injected).sum();
    assert!(injected > 0, "faults were injected: {counters:?}");

    // A 30-second outage: every call fails. Desired states change meanwhile.
    let outage = Instant::now();
    set_faults(&emu, json!({"operations": {"*": {"errorRate": 1.0}}}))?;
    for (name, (_, status)) in want.iter_mut() {
        let flipped = match status.as_str() {
            "USER_PAUSED" => "RUNNING",
            "RUNNING" => "USER_PAUSED",
            _ => continue,
        };
        set_desired(&api, name, flipped).await?;
        *status = flipped.to_string();
    }
    discovery(&dapi, "team-a", a0, "DISABLED").await?;
    // The outage shows on the resources as a condition naming the AWS error code.
    wait_for("MacieJobs to report the outage", Duration::from_secs(25), || async {
        let list = api.list(&ListParams::default()).await?;
        let all = list.items.iter().all(|o| {
            o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.message.contains("InternalServerException"))
            })
        });
        Ok(all.then_some(()))
    })
    .await?;
    wait_for("team-a to report the outage", Duration::from_secs(25), || async {
        let o = dapi.get("team-a").await?;
        let st = o.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.message.contains("InternalServerException"))
            .then_some(()))
    })
    .await?;
    ensure!(
        outage.elapsed() < Duration::from_secs(30),
        "the outage checks took too long"
    );
    // The outage lasts 30 s by design: this is the scenario's length, not a wait for a result.
    tokio::time::sleep_until((outage + Duration::from_secs(30)).into()).await;
    assert_eq!(accepted_updates(&emu), 30, "nothing got through the outage");

    // Macie is back (still throttling a little): everything converges.
    set_faults(&emu, json!({"operations": {"*": {"throttleRate": 0.1}}, "seed": 5}))?;
    wait_converged(&api, &emu, &want).await?;
    wait_discovery(&dapi, &emu, "team-a", a0, "DISABLED").await?;
    wait_discovery(&dapi, &emu, "team-b", a1, "ENABLED").await?;
    assert_eq!(accepted_updates(&emu), 50, "30 first, then one per flipped job");
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in emu.batch_calls() {
        for a in c["accounts"].as_array().unwrap() {
            sent.entry(a["accountId"].as_str().unwrap().to_string())
                .or_default()
                .push(a["status"].as_str().unwrap_or_default().to_string());
        }
    }
    for a in a0 {
        assert_eq!(sent[a], ["ENABLED", "DISABLED"], "{a}: each change sent once");
    }
    for a in a1 {
        assert_eq!(sent[a], ["ENABLED"], "{a}: sent once");
    }
    jobs_op.stop().await;
    disc_op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_job_status_is_a_condition_and_others_are_unaffected() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("unknown-status").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let strange = jobs(&api, &emu, "strange", 1, "RUNNING", "USER_PAUSED").await?;
    let strange_id = strange["strange-0"].0.clone();
    set_faults(&emu, json!({"reportedStatus": {&strange_id: "ARCHIVED"}}))?;
    let mut others = jobs(&api, &emu, "pause", 5, "RUNNING", "USER_PAUSED").await?;
    others.extend(jobs(&api, &emu, "resume", 5, "USER_PAUSED", "RUNNING").await?);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    wait_converged(&api, &emu, &others).await?;
    let o = wait_reason(&api, "strange-0", "UnknownJobStatus", DEADLINE).await?;
    let st = o.status.unwrap();
    let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(stalled.status, "True");
    assert!(stalled.message.contains("ARCHIVED"), "{}", stalled.message);
    assert_eq!(st.job.unwrap().job_status, "ARCHIVED", "reported as Macie shows it");
    assert!(
        emu.update_calls().iter().all(|c| c["jobId"] != strange_id.as_str()),
        "no update for a job in a status the operator does not know"
    );
    assert_eq!(accepted_updates(&emu), 10);

    // Once Macie reports a known status again, the resource converges.
    set_faults(&emu, json!({}))?;
    wait_converged(&api, &emu, &strange).await?;
    assert_eq!(accepted_updates(&emu), 11);
    op.stop().await;
    Ok(())
}

/// Number of UpdateClassificationJob calls Macie processed.
fn updates(emu: &EmulatorHandle) -> usize {
    emu.update_calls().len()
}

/// A namespace and an emulator whose updates are slow (40 ms) and shown late (3 s): a kill lands
/// with calls in flight and with accepted changes that reads do not show yet, so the process that
/// takes over must rely on the recorded steps.
async fn slow_updates(name: &str) -> Result<(&'static ControlPlane, String, EmulatorHandle, Api<MacieJob>)> {
    let Scene { cp, client, ns, emu } = scene(name).await?;
    set_faults(
        &emu,
        json!({"operations": {"UpdateClassificationJob": {"latencyMs": 40}}, "visibilityDelayMs": 3000}),
    )?;
    let api: Api<MacieJob> = Api::namespaced(client, &ns);
    Ok((cp, ns, emu, api))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_200_resources_then_restart() -> Result<()> {
    let (cp, ns, emu, api) = slow_updates("sigkill").await?;
    let want = jobs(&api, &emu, "kill", 200, "RUNNING", "USER_PAUSED").await?;
    let flags = ["--concurrency", "4", "--step-timeout", "10s"];
    let mut op = OperatorProcess::spawn("op-1", cp.kubeconfig(), &ns, &emu.url, &flags)?;
    wait_for("50 updates", DEADLINE, || async {
        Ok((updates(&emu) >= 50).then_some(()))
    })
    .await?;
    op.kill().await?;
    let at_kill = updates(&emu);
    assert!(at_kill < 200, "killed in the middle: {at_kill} of 200 done");

    let _op = OperatorProcess::spawn("op-2", cp.kubeconfig(), &ns, &emu.url, &flags)?;
    wait_converged(&api, &emu, &want).await?;
    assert_eq!(accepted_updates(&emu), 200, "one update per job across the restart");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_in_the_middle_of_200_resources() -> Result<()> {
    let (cp, ns, emu, api) = slow_updates("handover").await?;
    let client = cp.client().await?;
    let flags = [
        "--leader-elect",
        "--lease-namespace",
        &ns,
        "--lease-duration",
        "4s",
        "--concurrency",
        "4",
        "--step-timeout",
        "10s",
    ];
    let mut replicas = [
        OperatorProcess::spawn("op-a", cp.kubeconfig(), &ns, &emu.url, &flags)?,
        OperatorProcess::spawn("op-b", cp.kubeconfig(), &ns, &emu.url, &flags)?,
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = wait_for("a leader", DEADLINE, || async {
        Ok(leases
            .get_opt("macie-operator")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    })
    .await?;
    let want = jobs(&api, &emu, "ho", 200, "RUNNING", "CANCELLED").await?;
    wait_for("50 updates", DEADLINE, || async {
        Ok((updates(&emu) >= 50).then_some(()))
    })
    .await?;
    let idx = replicas.iter().position(|r| r.name == leader).unwrap();
    replicas[idx].kill().await?;
    let at_kill = updates(&emu);
    assert!(at_kill < 200, "killed in the middle: {at_kill} of 200 done");

    wait_converged(&api, &emu, &want).await?;
    let holder = leases.get("macie-operator").await?.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some(replicas[1 - idx].name.as_str()));
    assert_eq!(accepted_updates(&emu), 200, "one update per job across the handover");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_apiserver_restart_watches_recover() -> Result<()> {
    // A control plane of its own: this test stops its API server.
    let mut cp = ControlPlane::start().await?;
    install_crds(&cp).await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "restart").await?;
    let emu = EmulatorHandle::start(Seed::default()).await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut want = jobs(&api, &emu, "r", 10, "RUNNING", "RUNNING").await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_converged(&api, &emu, &want).await?;

    // API server down. Meanwhile jobs drift in Macie: the operator sees it but cannot record or
    // act on it until the API server is back.
    cp.stop_apiserver();
    for (_, (id, _)) in want.iter().take(3) {
        emu.state
            .lock()
            .set_status_service_side(None, None, id, serde_json::from_value(json!("USER_PAUSED"))?)
            .map_err(anyhow::Error::msg)?;
    }
    let sweeps = op.poller.view(&Place::new("default", REGION)).sweeps;
    wait_for("two sweeps while the API server is down", DEADLINE, || async {
        Ok((op.poller.view(&Place::new("default", REGION)).sweeps >= sweeps + 2).then_some(()))
    })
    .await?;
    cp.start_apiserver().await?;

    // Right after the restart (before the watch has necessarily reconnected): spec changes and a
    // new resource. The operator must see them through its recovered watch.
    for name in ["r-5", "r-6"] {
        set_desired(&api, name, "USER_PAUSED").await?;
        want.get_mut(name).unwrap().1 = "USER_PAUSED".into();
    }
    want.extend(jobs(&api, &emu, "late", 1, "RUNNING", "CANCELLED").await?);
    wait_converged(&api, &emu, &want).await?;
    // 3 drifted jobs resumed, 2 paused, 1 cancelled.
    assert_eq!(accepted_updates(&emu), 6);
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_shown_by_the_sweep_in_flight_is_confirmed_by_the_next_sweep() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("slow-sweeps").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut want = jobs(&api, &emu, "slow", 5, "RUNNING", "RUNNING").await?;
    // Each page takes 2 s, so a sweep is nearly always in flight: an update lands after a sweep
    // started and before it reads the job, so that sweep already shows the new status and the
    // next one shows no change. The step must still be confirmed by that next sweep, not by the
    // (here 10-minute) step timeout.
    set_faults(
        &emu,
        json!({"operations": {"ListClassificationJobs": {"latencyMs": 2000}}}),
    )?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.plan.step_timeout = Duration::from_secs(600);
    })
    .await;
    wait_converged(&api, &emu, &want).await?;
    // Every status change of the flip, as a watch sees them (one per write that changed it).
    let changes = status_changes(api.clone());
    changes.wait_seen(want.len()).await?;
    let t = Instant::now();
    for (name, (_, status)) in want.iter_mut() {
        set_desired(&api, name, "USER_PAUSED").await?;
        *status = "USER_PAUSED".into();
    }
    wait_converged(&api, &emu, &want).await?;
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "converged in {:?}: waited for the step timeout instead of the next sweep",
        t.elapsed()
    );
    assert_eq!(accepted_updates(&emu), 5);
    // The write-ahead and the confirmation: the sweep in flight, which cannot confirm the step,
    // writes nothing (it would show the job moved a sweep early, a third write per flip).
    let per_resource = changes.stop().await;
    for name in want.keys() {
        let n = per_resource.get(name).copied().unwrap_or(0);
        ensure!(
            n == 2,
            "{name}: {n} status writes in the flip, not 2 ({per_resource:?})"
        );
    }
    op.stop().await;
    Ok(())
}

/// Counts, per MacieJob, the status changes a watch delivers until `stop`.
struct StatusChanges {
    task: tokio::task::JoinHandle<()>,
    counts: std::sync::Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    /// Resources seen so far (their first sight is the baseline).
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn status_changes(api: Api<MacieJob>) -> StatusChanges {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let counts: std::sync::Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Default::default();
    let seen: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let task = {
        let (counts, seen) = (counts.clone(), seen.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(o)) = events.next().await {
                let name = kube::ResourceExt::name_any(&o);
                let status = serde_json::to_value(&o.status).unwrap_or_default();
                // The first sight of each resource is where it stands, not a change.
                if let Some(before) = last.insert(name.clone(), status.clone())
                    && before != status
                {
                    *counts.lock().unwrap().entry(name).or_default() += 1;
                }
                seen.store(last.len(), std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    StatusChanges { task, counts, seen }
}

impl StatusChanges {
    /// Waits until the watch has seen `n` resources.
    async fn wait_seen(&self, n: usize) -> Result<()> {
        wait_for("the watch sees every resource", DEADLINE, || async {
            Ok((self.seen.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(()))
        })
        .await
    }

    async fn stop(self) -> BTreeMap<String, usize> {
        self.task.abort();
        let _ = self.task.await;
        self.counts.lock().unwrap().clone()
    }
}
