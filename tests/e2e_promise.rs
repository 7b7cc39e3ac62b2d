//! The no-repeat promise on the paths that used to break it (issue 10): disagreeing and
//! agreeing MacieJobs on one job, sweeps slower than the step timeout, throttled updates,
//! transient sweep failures, a converged resource left alone, a name shared by 60 jobs,
//! deletion with a policy switched while deleting, and a region's sweeper after its last
//! resource is gone. Each scenario is checked against the emulator's call log.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use macie_operator::api::MacieJob;
use macie_operator::api::macie_job::TransitionOutcome;
use macie_operator::macie::Place;
use serde_json::{Value, json};
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(90);

/// UpdateClassificationJob calls Macie saw for one job.
fn calls_for(emu: &EmulatorHandle, job_id: &str) -> Vec<Value> {
    emu.update_calls()
        .into_iter()
        .filter(|c| c["jobId"] == job_id)
        .collect()
}

/// UpdateClassificationJob calls for one job that reached the emulator, refused ones included.
fn attempts_for(emu: &EmulatorHandle, job_id: &str) -> Vec<Value> {
    emu.update_attempts()
        .into_iter()
        .filter(|c| c["jobId"] == job_id)
        .collect()
}

/// Waits until the region's sweeper has completed `n` more sweeps.
async fn sweeps(op: &OperatorHandle, n: u64) -> Result<()> {
    let mut rx = op.poller.subscribe(&Place::new("default", REGION));
    let k = rx.borrow().sweeps;
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| v.sweeps >= k + n)).await??;
    Ok(())
}

/// (involved object, reason) of every Event in the namespace.
async fn events(client: &kube::Client, ns: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|e| {
            (
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disagreeing_macie_jobs_are_a_conflict_and_agreeing_ones_act_once() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("owners").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let id = emu.put_job(json!({"jobId": "shared1", "name": "shared", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    create_job(&api, "by-id", json!({"jobId": id, "jobStatus": "RUNNING"})).await?;
    create_job(
        &api,
        "by-name",
        json!({"jobName": "shared", "jobStatus": "USER_PAUSED"}),
    )
    .await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    // Both report the conflict, each naming the other; nothing is called over 6 sweeps.
    let a = wait_reason(&api, "by-id", "Conflict", DEADLINE).await?;
    let b = wait_reason(&api, "by-name", "Conflict", DEADLINE).await?;
    let msg = |o: &MacieJob| {
        let c = condition(o, "Ready");
        (c.status, c.message)
    };
    assert_eq!(msg(&a).0, "False");
    assert!(msg(&a).1.contains("by-name (USER_PAUSED)"), "{}", msg(&a).1);
    assert!(msg(&b).1.contains("by-id (RUNNING)"), "{}", msg(&b).1);
    sweeps(&op, 6).await?;
    assert!(
        calls_for(&emu, &id).is_empty(),
        "no call while they disagree: {:?}",
        emu.update_calls()
    );
    let stalled = |o: &MacieJob| condition(o, "Stalled").status == "True";
    assert!(stalled(&api.get("by-id").await?) && stalled(&api.get("by-name").await?));
    let evs = events(&client, &ns).await?;
    for name in ["by-id", "by-name"] {
        assert!(
            evs.iter().any(|(o, r, _)| o == name && r == "Conflict"),
            "Conflict Event on {name}: {evs:?}"
        );
    }

    // One changes to agree: exactly one call, and both converge.
    set_desired(&api, "by-id", "USER_PAUSED").await?;
    wait_reason(&api, "by-id", "Converged", DEADLINE).await?;
    wait_reason(&api, "by-name", "Converged", DEADLINE).await?;
    assert_eq!(calls_for(&emu, &id).len(), 1, "{:?}", emu.update_calls());

    // Drift while they agree: exactly one more (valid) call, made by one of them.
    emu.state
        .lock()
        .set_status_service_side(None, None, &id, macie_emulator::model::JobStatus::Running)
        .map_err(anyhow::Error::msg)?;
    wait_for("drift corrected", DEADLINE, || async {
        Ok((emu.status(&id).as_deref() == Some("USER_PAUSED")).then_some(()))
    })
    .await?;
    wait_reason(&api, "by-id", "Converged", DEADLINE).await?;
    wait_reason(&api, "by-name", "Converged", DEADLINE).await?;
    sweeps(&op, 3).await?;
    assert_eq!(accepted_updates(&emu), 2, "one call per change, never two");

    // A third declaration disagrees: all three in conflict; deleting it ends the conflict of
    // the other two within a sweep or two, with no call.
    create_job(&api, "third", json!({"jobId": id, "jobStatus": "CANCELLED"})).await?;
    for name in ["by-id", "by-name", "third"] {
        wait_reason(&api, name, "Conflict", DEADLINE).await?;
    }
    api.delete("third", &DeleteParams::default()).await?;
    let t = Instant::now();
    wait_reason(&api, "by-id", "Converged", DEADLINE).await?;
    wait_reason(&api, "by-name", "Converged", DEADLINE).await?;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "conflict ended after {:?}",
        t.elapsed()
    );
    assert_eq!(accepted_updates(&emu), 2, "no call for the conflict or its end");
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweeps_slower_than_the_step_timeout_never_repeat_a_step() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("slow-sweep").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let want = jobs(&api, &emu, "slow", 5, "RUNNING", "USER_PAUSED").await?;
    // Each List page takes 3.5 s, the step timeout is 2 s: a step always outlives its timeout
    // before a sweep that started after it completes.
    set_faults(
        &emu,
        json!({"operations": {"ListClassificationJobs": {"latencyMs": 3500}}}),
    )?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.plan.step_timeout = Duration::from_secs(2);
    })
    .await;
    wait_converged(&api, &emu, &want).await?;
    sweeps(&op, 2).await?;
    assert_eq!(
        accepted_updates(&emu),
        5,
        "one valid update per job: {:?}",
        emu.update_calls()
    );
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_converged_resource_records_success_and_is_not_rewritten() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("idle").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let want = jobs(&api, &emu, "idle", 2, "RUNNING", "USER_PAUSED").await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_converged(&api, &emu, &want).await?;
    // The step's outcome is recorded once a sweep shows it.
    let name = "idle-0";
    let o = wait_for("lastTransition Succeeded", DEADLINE, || async {
        let o = api.get(name).await?;
        let t = o.status.as_ref().and_then(|s| s.last_transition.clone());
        Ok(t.filter(|t| t.outcome == TransitionOutcome::Succeeded).map(|_| o))
    })
    .await?;
    let rv = o.metadata.resource_version.clone();
    // Four idle poll intervals later, the object has not been written again.
    sweeps(&op, 4).await?;
    let again = api.get(name).await?;
    assert_eq!(
        again.metadata.resource_version, rv,
        "a converged MacieJob was rewritten"
    );
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_shared_by_60_jobs_publishes_ambiguous_name() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("sixty").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    for _ in 0..60 {
        emu.put_job(json!({"name": "everywhere", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    }
    create_job(&api, "many", json!({"jobName": "everywhere", "jobStatus": "CANCELLED"})).await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "many", "AmbiguousName", DEADLINE).await?;
    let ev = wait_for("an AmbiguousName Event", DEADLINE, || async {
        let evs = events(&client, &ns).await?;
        Ok(evs.into_iter().find(|(o, r, _)| o == "many" && r == "AmbiguousName"))
    })
    .await?;
    assert!(ev.2.starts_with("60 jobs have this name"), "{}", ev.2);
    assert!(emu.update_calls().is_empty());
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_updates_back_off() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("throttled").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let want = jobs(&api, &emu, "thr", 1, "RUNNING", "USER_PAUSED").await?;
    set_faults(
        &emu,
        json!({"operations": {"UpdateClassificationJob": {"throttleRate": 1.0}}}),
    )?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "thr-0", "Throttled", DEADLINE).await?;
    let first = Instant::now();
    let at_first = emu.requests("UpdateClassificationJob");
    // Backoff 1, 2, 4, 8 s (times 0.5..1): at most one call per step, so at most 5 calls in
    // the next 15 s (a hot loop makes hundreds).
    let window = Duration::from_secs(15);
    tokio::time::sleep_until((first + window).into()).await;
    let in_window = emu.requests("UpdateClassificationJob") - at_first;
    assert!(in_window <= 5, "{in_window} throttled calls in {window:?}");
    assert!(in_window >= 2, "retried: {in_window} calls in {window:?}");
    set_faults(&emu, json!({}))?;
    wait_converged(&api, &emu, &want).await?;
    assert_eq!(accepted_updates(&emu), 1);
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_sweeps_leave_every_resource_as_it_was_until_they_repeat() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("sweep-fail").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let want = jobs(&api, &emu, "sf", 20, "RUNNING", "RUNNING").await?;
    // 5 pages per sweep.
    set_faults(&emu, json!({"maxJobsPage": 4}))?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.page_size = 4;
    })
    .await;
    wait_converged(&api, &emu, &want).await?;
    let versions = |list: &[MacieJob]| -> BTreeMap<String, Option<String>> {
        list.iter()
            .map(|o| {
                (
                    o.metadata.name.clone().unwrap_or_default(),
                    o.metadata.resource_version.clone(),
                )
            })
            .collect()
    };
    let before = versions(&api.list(&ListParams::default()).await?.items);
    let events_before = events(&client, &ns).await?.len();

    // 10% of List calls fail for a while, then one whole sweep fails.
    set_faults(
        &emu,
        json!({"maxJobsPage": 4, "operations": {"ListClassificationJobs": {"errorRate": 0.1}}, "seed": 3}),
    )?;
    sweeps(&op, 8).await?;
    set_faults(
        &emu,
        json!({"maxJobsPage": 4, "operations": {"ListClassificationJobs": {"errorRate": 1.0}}}),
    )?;
    let mut rx = op.poller.subscribe(&Place::new("default", REGION));
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| v.failures == 1)).await??;
    set_faults(&emu, json!({"maxJobsPage": 4}))?;
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| v.failures == 0)).await??;
    sweeps(&op, 2).await?;
    let after = versions(&api.list(&ListParams::default()).await?.items);
    assert_eq!(before, after, "a transient sweep failure rewrote resources");
    let evs = events(&client, &ns).await?;
    assert_eq!(
        evs.len(),
        events_before,
        "Events for a transient sweep failure: {evs:?}"
    );

    // Failures that repeat are reported on every resource, and cleared after.
    set_faults(
        &emu,
        json!({"maxJobsPage": 4, "operations": {"ListClassificationJobs": {"errorRate": 1.0}}}),
    )?;
    wait_reason(&api, "sf-0", "MacieError", DEADLINE).await?;
    set_faults(&emu, json!({"maxJobsPage": 4}))?;
    wait_converged(&api, &emu, &want).await?;
    assert_eq!(accepted_updates(&emu), 0);
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_honours_the_policy_in_force_and_survives_a_restart() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("deletion").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let keep = emu.put_job(json!({"name": "keep", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let cancel = emu.put_job(json!({"name": "cancel", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    create_job(
        &api,
        "keep",
        json!({"jobId": keep, "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    )
    .await?;
    create_job(
        &api,
        "cancel",
        json!({"jobId": cancel, "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    )
    .await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    for name in ["keep", "cancel"] {
        wait_for(&format!("{name}: finalizer and Converged"), DEADLINE, || async {
            let o = api.get(name).await?;
            let fin = o.metadata.finalizers.clone().unwrap_or_default();
            Ok((!fin.is_empty() && ready(&o).is_some_and(|(_, r)| r == "Converged")).then_some(()))
        })
        .await?;
    }
    op.stop().await;

    // While no operator runs: both deleted, then "keep" switched to Orphan.
    api.delete("keep", &DeleteParams::default()).await?;
    api.delete("cancel", &DeleteParams::default()).await?;
    api.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
    )
    .await?;
    // Cancels are shown late (3 s): the operator is stopped right after its call, and the one
    // that takes over must rely on the write-ahead status.
    set_faults(&emu, json!({"visibilityDelayMs": 3000}))?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_for("the cancel call", DEADLINE, || async {
        Ok((!calls_for(&emu, &cancel).is_empty()).then_some(()))
    })
    .await?;
    op.stop().await;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    for name in ["keep", "cancel"] {
        wait_for(&format!("{name} to be gone"), DEADLINE, || async {
            Ok(api.get_opt(name).await?.is_none().then_some(()))
        })
        .await?;
    }
    assert!(
        calls_for(&emu, &keep).is_empty(),
        "Orphan in force at deletion: no call"
    );
    assert_eq!(emu.status(&keep).as_deref(), Some("RUNNING"));
    assert_eq!(calls_for(&emu, &cancel).len(), 1, "cancelled once across the restart");
    assert_eq!(emu.status(&cancel).as_deref(), Some("CANCELLED"));
    accepted_updates(&emu);
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_regions_sweeper_stops_with_its_last_resource() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("regions").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    let places = |op: &OperatorHandle| -> Vec<String> { op.poller.places().iter().map(|p| p.to_string()).collect() };
    assert!(places(&op).is_empty(), "no sweeper before a resource uses a place");
    for i in 0..200 {
        emu.put_job(
            json!({"jobId": format!("far{i}"), "name": format!("far{i}"), "jobType": "ONE_TIME",
            "jobStatus": "RUNNING", "region": "ap-southeast-4"}),
        );
        create_job(
            &api,
            &format!("far-{i}"),
            json!({"jobId": format!("far{i}"), "jobStatus": "USER_PAUSED", "region": "ap-southeast-4"}),
        )
        .await?;
    }
    // And 100 in a region nobody serves: every call signed for it fails.
    set_faults(
        &emu,
        json!({"errors": [{"operations": ["ListClassificationJobs"], "regions": ["us-eats-1"],
            "code": "UnprocessableEntityException", "message": "no such region"}]}),
    )?;
    for i in 0..100 {
        create_job(
            &api,
            &format!("typo-{i}"),
            json!({"jobId": format!("typo{i}"), "jobStatus": "RUNNING", "region": "us-eats-1"}),
        )
        .await?;
    }
    wait_reason(&api, "typo-99", "MacieError", CONVERGE_DEADLINE).await?;
    wait_for(
        "200 MacieJobs in the far region converged",
        CONVERGE_DEADLINE,
        || async {
            let list = api.list(&ListParams::default()).await?;
            let n = list
                .items
                .iter()
                .filter(|o| ready(o).is_some_and(|(_, r)| r == "Converged"))
                .count();
            Ok((n == 200).then_some(()))
        },
    )
    .await?;
    assert_eq!(places(&op), ["default/ap-southeast-4", "default/us-eats-1"]);
    let (steps, _, _) = op.tracked.counts();
    assert_eq!(steps, 200, "each resource's (resolved) step is known while it exists");
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for("the sweepers to stop", DEADLINE, || async {
        Ok(places(&op).is_empty().then_some(()))
    })
    .await?;
    // Nothing is kept for the deleted resources (pruned after the next sweep).
    wait_for("per-resource state dropped", DEADLINE, || async {
        Ok((op.tracked.counts() == (0, 0, 0)).then_some(()))
    })
    .await?;
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_update_is_stalled_and_retried_rarely() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("denied").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let want = jobs(&api, &emu, "den", 2, "RUNNING", "USER_PAUSED").await?;
    let denied = want["den-0"].0.clone();
    set_faults(
        &emu,
        json!({"errors": [{"operations": ["UpdateClassificationJob"], "jobIds": [denied],
            "code": "AccessDeniedException", "message": "not authorized to perform macie2:UpdateClassificationJob"}]}),
    )?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    // Stalled/AccessDenied within two sweeps of the first call.
    wait_for("the first denied call", DEADLINE, || async {
        Ok((!attempts_for(&emu, &denied).is_empty()).then_some(()))
    })
    .await?;
    let mut rx = op.poller.subscribe(&Place::new("default", REGION));
    let k = rx.borrow().sweeps;
    let o = wait_reason(&api, "den-0", "AccessDenied", DEADLINE).await?;
    assert!(rx.borrow_and_update().sweeps <= k + 2, "reported within two sweeps");
    let c = condition(&o, "Stalled");
    assert_eq!(c.status, "True");
    assert!(c.message.contains("AccessDeniedException"), "{}", c.message);
    // At most 2 further calls in the next 20 s (the operator's own status writes and the
    // sweeps must not re-trigger it).
    let at = attempts_for(&emu, &denied).len();
    let t = Instant::now();
    sweeps(&op, 4).await?;
    tokio::time::sleep_until((t + Duration::from_secs(20)).into()).await;
    let further = attempts_for(&emu, &denied).len() - at;
    assert!(further <= 2, "{further} denied calls in 20 s");
    // The other job is unaffected.
    wait_reason(&api, "den-1", "Converged", DEADLINE).await?;
    let evs = events(&client, &ns).await?;
    assert!(
        evs.iter()
            .any(|(o, r, m)| o == "den-0" && r == "UpdateFailed" && m.contains("AccessDeniedException")),
        "{evs:?}"
    );
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finalizer_held_by_an_unreachable_region_says_why() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("bad-region").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    // A region nobody serves: every call signed for it fails.
    set_faults(
        &emu,
        json!({"errors": [{"operations": ["ListClassificationJobs"], "regions": ["us-eats-1"],
            "code": "UnprocessableEntityException", "message": "no such region"}]}),
    )?;
    create_job(
        &api,
        "typo",
        json!({"jobId": "j1", "jobStatus": "RUNNING", "region": "us-eats-1", "deletionPolicy": "Cancel"}),
    )
    .await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_for("the finalizer", DEADLINE, || async {
        let o = api.get("typo").await?;
        Ok((!o.metadata.finalizers.unwrap_or_default().is_empty()).then_some(()))
    })
    .await?;
    api.delete("typo", &DeleteParams::default()).await?;
    let o = wait_reason(&api, "typo", "MacieError", DEADLINE).await?;
    let c = condition(&o, "Ready");
    assert!(c.message.contains("finalizer stays"), "{}", c.message);
    assert!(c.message.contains("UnprocessableEntityException"), "{}", c.message);
    let ev = wait_for("an Event saying why", DEADLINE, || async {
        let evs = events(&client, &ns).await?;
        Ok(evs.into_iter().find(|(o, r, _)| o == "typo" && r == "MacieError"))
    })
    .await?;
    assert!(ev.2.contains("finalizer stays"), "{}", ev.2);
    assert!(emu.update_calls().is_empty());
    // Switching to Orphan lets it go, with no call.
    api.patch(
        "typo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
    )
    .await?;
    wait_for("typo to be gone", DEADLINE, || async {
        Ok(api.get_opt("typo").await?.is_none().then_some(()))
    })
    .await?;
    assert!(emu.update_calls().is_empty());
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_right_after_cancel_calls_of_deleted_resources_then_restart() -> Result<()> {
    let Scene { cp, client, ns, emu } = scene("kill-delete").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = emu.put_job(json!({"name": format!("kd-{i}"), "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
        create_job(
            &api,
            &format!("kd-{i}"),
            json!({"jobId": id, "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
        )
        .await?;
        ids.push(id);
    }
    let flags = ["--concurrency", "4", "--step-timeout", "30s"];
    let mut op = OperatorProcess::spawn("kd-1", cp.kubeconfig(), &ns, &emu.url, &flags)?;
    wait_for("20 finalizers", DEADLINE, || async {
        let list = api.list(&ListParams::default()).await?;
        let n = list
            .items
            .iter()
            .filter(|o| !o.metadata.finalizers.clone().unwrap_or_default().is_empty())
            .count();
        Ok((n == 20).then_some(()))
    })
    .await?;
    // Cancels take 100 ms and show 3 s late: the kill lands with calls made whose effect no
    // sweep has shown yet.
    set_faults(
        &emu,
        json!({"operations": {"UpdateClassificationJob": {"latencyMs": 100}}, "visibilityDelayMs": 3000}),
    )?;
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for("the first cancel calls", DEADLINE, || async {
        Ok((emu.update_calls().len() >= 3).then_some(()))
    })
    .await?;
    op.kill().await?;
    let at_kill = emu.update_calls().len();
    assert!(at_kill < 20, "killed in the middle: {at_kill} of 20 cancelled");
    let _op = OperatorProcess::spawn("kd-2", cp.kubeconfig(), &ns, &emu.url, &flags)?;
    wait_for("every resource gone", CONVERGE_DEADLINE, || async {
        Ok(api.list(&ListParams::default()).await?.items.is_empty().then_some(()))
    })
    .await?;
    for id in &ids {
        assert_eq!(emu.status(id).as_deref(), Some("CANCELLED"), "{id}");
    }
    assert_eq!(accepted_updates(&emu), 20, "one cancel per job across the SIGKILL");
    Ok(())
}

/// What the first status write of a process relies on, against the real API server: a
/// server-side apply of the status that names the resourceVersion of the copy it was built from
/// is refused (409) once the object has moved on, writes nothing and sends no Warning Event;
/// named with the current version, it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_made_against_an_older_copy_is_refused() -> Result<()> {
    use macie_operator::api::conditions::{Phase, Summary};
    use macie_operator::api::{MacieJobStatus, conditions};
    use macie_operator::runtime::{events::Recorder, metrics::Metrics, status};
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "precondition").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let obj: MacieJob = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob",
        "metadata": {"name": "m"}, "spec": {"jobId": "0123456789abcdef0123456789abcdef", "jobStatus": "RUNNING"},
    }))?;
    let older = api.create(&Default::default(), &obj).await?;
    let label = json!({"metadata": {"labels": {"moved": "on"}}});
    api.patch("m", &PatchParams::default(), &Patch::Merge(&label)).await?;
    let (recorder, metrics) = (Recorder::new(client.clone(), "test", None), Metrics::new());
    let summary = Summary::new(Phase::Ready, "Converged", "as declared");
    let new = MacieJobStatus {
        observed_generation: Some(1),
        conditions: conditions::conditions(&summary, Some(1), &[], k8s_openapi::jiff::Timestamp::now()),
        ..Default::default()
    };
    let writer = |precondition| status::Writer {
        api: &api,
        recorder: &recorder,
        metrics: &metrics,
        precondition,
    };
    let refused = status::write(writer(older.metadata.resource_version.clone()), &older, None, &new).await;
    match refused {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("an older copy's write was not refused: {other:?}"),
    }
    assert!(api.get("m").await?.status.is_none(), "nothing written");
    assert!(
        events(&client, &ns).await?.is_empty(),
        "no Warning Event for a refused precondition"
    );
    let current = api.get("m").await?;
    let written = status::write(writer(current.metadata.resource_version.clone()), &current, None, &new).await?;
    assert!(
        written.and_then(|w| w.status).is_some(),
        "the current copy's write is taken"
    );
    Ok(())
}
