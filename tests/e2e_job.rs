//! MacieJob end to end: local kube-apiserver + etcd, macie-emulator over HTTP through the real
//! aws-sdk-macie2 client, and the operator's controller.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use macie_operator::api::MacieJob;
use macie_operator::macie::Place;
use serde_json::json;
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(90);

/// The documented outcome of each (desired, actual) cell: final Macie status and Ready reason.
fn outcome(desired: &str, actual: &str) -> (&'static str, &'static str, &'static str) {
    // (final status, Ready status, Ready reason)
    match (desired, actual) {
        ("RUNNING", "RUNNING") => ("RUNNING", "True", "Converged"),
        ("RUNNING", "IDLE") => ("IDLE", "True", "Converged"),
        ("RUNNING", "COMPLETE") => ("COMPLETE", "True", "Converged"),
        ("RUNNING", "USER_PAUSED") => ("RUNNING", "True", "Converged"),
        ("RUNNING", "PAUSED") => ("PAUSED", "False", "PausedByMacie"),
        ("RUNNING", "CANCELLED") => ("CANCELLED", "False", "TerminalState"),
        ("USER_PAUSED", "RUNNING" | "IDLE" | "PAUSED" | "USER_PAUSED") => ("USER_PAUSED", "True", "Converged"),
        ("USER_PAUSED", "COMPLETE") => ("COMPLETE", "True", "TerminalState"),
        ("USER_PAUSED", "CANCELLED") => ("CANCELLED", "True", "TerminalState"),
        ("CANCELLED", "COMPLETE") => ("COMPLETE", "True", "TerminalState"),
        ("CANCELLED", _) => ("CANCELLED", "True", "Converged"),
        _ => unreachable!(),
    }
}

const STATUSES: [&str; 6] = ["RUNNING", "PAUSED", "CANCELLED", "COMPLETE", "IDLE", "USER_PAUSED"];
const DESIRED: [&str; 3] = ["RUNNING", "USER_PAUSED", "CANCELLED"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cell_converges_without_invalid_or_repeated_calls_under_faults() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("cells").await?;
    // A list right after an update still shows the old status for 1.5 s, and 20% of all calls
    // are throttled.
    emu.state
        .lock()
        .set_faults(serde_json::from_value(json!({
            "operations": {"*": {"throttleRate": 0.2}},
            "visibilityDelayMs": 1500,
            "seed": 7
        }))?)
        .map_err(anyhow::Error::msg)?;

    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut cells = BTreeMap::new();
    for desired in DESIRED {
        for actual in STATUSES {
            let job_type = if actual == "IDLE" { "SCHEDULED" } else { "ONE_TIME" };
            let name = format!("{}-{}", desired.to_lowercase(), actual.to_lowercase()).replace('_', "");
            let id = emu.put_job(json!({"name": name, "jobType": job_type, "jobStatus": actual}));
            create_job(&api, &name, json!({"jobId": id, "jobStatus": desired})).await?;
            cells.insert(name, (id, desired, actual));
        }
    }
    create_job(
        &api,
        "missing",
        json!({"jobId": "doesnotexist", "jobStatus": "RUNNING"}),
    )
    .await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    for (name, (id, desired, actual)) in &cells {
        let (final_status, ready_status, reason) = outcome(desired, actual);
        let obj = wait_reason(&api, name, reason, DEADLINE).await?;
        assert_eq!(ready(&obj).unwrap().0, ready_status, "{name}");
        wait_for(&format!("{name}: Macie status {final_status}"), DEADLINE, || async {
            Ok((emu.status(id).as_deref() == Some(final_status)).then_some(()))
        })
        .await?;
        let st = obj.status.unwrap();
        assert_eq!(st.job.as_ref().unwrap().job_id, *id);
        assert_eq!(st.observed_generation, obj.metadata.generation);
        let true_conditions: Vec<_> = st.conditions.iter().filter(|c| c.status == "True").collect();
        assert_eq!(
            true_conditions.len(),
            1,
            "{name}: exactly one of Ready/Reconciling/Stalled is True"
        );
    }
    wait_reason(&api, "missing", "JobNotFound", DEADLINE).await?;

    // Stable: three more sweeps change nothing.
    let before = emu.update_calls().len();
    let lists = emu.requests("ListClassificationJobs");
    wait_for("three more sweeps", DEADLINE, || async {
        Ok((emu.requests("ListClassificationJobs") >= lists + 3).then_some(()))
    })
    .await?;
    let calls = emu.update_calls();
    assert_eq!(calls.len(), before, "no calls once converged");
    let accepted: Vec<_> = calls.iter().filter(|c| c["outcome"] == "OK").collect();
    assert_eq!(
        accepted.len(),
        8,
        "one accepted call per cell that needs one: {calls:#?}"
    );
    for c in &calls {
        assert_eq!(c["valid"], true, "invalid UpdateClassificationJob: {c}");
        assert_eq!(c["repeated"], false, "repeated UpdateClassificationJob: {c}");
    }
    op.stop().await;
    Ok(())
}

fn days_ago(days: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(days * 86400)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_late_jobs_names_deletion_and_expiry() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("lifecycle").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);

    let drift = emu.put_job(json!({"jobId": "drift1", "name": "drift", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    emu.put_job(json!({"jobId": "named1", "name": "named-job", "jobType": "SCHEDULED", "jobStatus": "IDLE"}));
    emu.put_job(json!({"jobId": "twin1", "name": "twin", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    emu.put_job(json!({"jobId": "twin2", "name": "twin", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let cancel_me =
        emu.put_job(json!({"jobId": "cancel1", "name": "c", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    emu.put_job(
        json!({"jobId": "expiring1", "name": "e", "jobType": "ONE_TIME", "jobStatus": "USER_PAUSED",
        "pausedAt": days_ago(25)}),
    );

    create_job(&api, "drift", json!({"jobId": drift, "jobStatus": "USER_PAUSED"})).await?;
    create_job(&api, "late", json!({"jobId": "late1", "jobStatus": "CANCELLED"})).await?;
    create_job(
        &api,
        "named",
        json!({"jobName": "named-job", "jobStatus": "USER_PAUSED"}),
    )
    .await?;
    create_job(&api, "ambiguous", json!({"jobName": "twin", "jobStatus": "CANCELLED"})).await?;
    create_job(
        &api,
        "cancel-on-delete",
        json!({"jobId": cancel_me, "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    )
    .await?;
    create_job(
        &api,
        "expiring",
        json!({"jobId": "expiring1", "jobStatus": "USER_PAUSED"}),
    )
    .await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    // Convergence, name resolution, ambiguity, not-yet-existing job, expiry warning.
    wait_reason(&api, "drift", "Converged", DEADLINE).await?;
    assert_eq!(emu.status(&drift).as_deref(), Some("USER_PAUSED"));
    let named = wait_reason(&api, "named", "Converged", DEADLINE).await?;
    assert_eq!(named.status.unwrap().job.unwrap().job_id, "named1");
    assert_eq!(emu.status("named1").as_deref(), Some("USER_PAUSED"));
    let amb = wait_reason(&api, "ambiguous", "AmbiguousName", DEADLINE).await?;
    assert_eq!(ready(&amb).unwrap().0, "False");
    wait_reason(&api, "late", "JobNotFound", DEADLINE).await?;
    let exp = wait_reason(&api, "expiring", "ExpiringSoon", DEADLINE).await?;
    let details = exp.status.unwrap().job.unwrap().user_paused_details.unwrap();
    assert!(details.job_expires_at.is_some(), "printer column Expires has a value");
    let cod = wait_reason(&api, "cancel-on-delete", "Converged", DEADLINE).await?;
    assert!(
        cod.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"macie.kubeops.dev/cancel-job".to_string())
    );
    assert!(
        emu.update_calls()
            .iter()
            .all(|c| c["jobId"] != "twin1" && c["jobId"] != "twin2"),
        "nothing done to ambiguous jobs"
    );

    // Out-of-band drift is corrected at the first sweep that sees it.
    let lists_at_drift = emu.requests("ListClassificationJobs");
    emu.state
        .lock()
        .set_status_service_side(None, None, &drift, macie_emulator::model::JobStatus::Running)
        .map_err(anyhow::Error::msg)?;
    wait_for("drift corrected", DEADLINE, || async {
        Ok((emu.status(&drift).as_deref() == Some("USER_PAUSED")).then_some(()))
    })
    .await?;
    let sweeps = emu.requests("ListClassificationJobs") - lists_at_drift;
    assert!(
        sweeps <= 2,
        "corrected after {sweeps} sweeps (one may have been in flight)"
    );

    // A job created after its MacieJob is picked up at the next sweep.
    emu.put_job(json!({"jobId": "late1", "name": "late", "jobType": "SCHEDULED", "jobStatus": "IDLE"}));
    wait_reason(&api, "late", "Converged", DEADLINE).await?;
    assert_eq!(emu.status("late1").as_deref(), Some("CANCELLED"));

    // A job that vanishes shows JobNotFound.
    emu.state.lock().remove_job(None, None, &drift);
    wait_reason(&api, "drift", "JobNotFound", DEADLINE).await?;

    // deletionPolicy Cancel: the job is cancelled before the resource goes away.
    api.delete("cancel-on-delete", &DeleteParams::default()).await?;
    wait_for("cancel-on-delete to be gone", DEADLINE, || async {
        Ok(api.get_opt("cancel-on-delete").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(emu.status(&cancel_me).as_deref(), Some("CANCELLED"));

    // Changing the desired status converges again (a scheduled job paused while idle resumes to IDLE).
    api.patch(
        "named",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobStatus": "RUNNING"}})),
    )
    .await?;
    wait_for("named resumed", DEADLINE, || async {
        let o = api.get("named").await?;
        Ok((ready(&o) == Some(("True".into(), "Converged".into()))
            && o.status
                .as_ref()
                .and_then(|s| s.job.as_ref())
                .map(|j| j.job_status.as_str())
                == Some("IDLE"))
        .then_some(()))
    })
    .await?;

    // Events: the update made, and the states entered.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let list = events.list(&ListParams::default()).await?;
    let reasons: Vec<(String, String)> = list
        .items
        .iter()
        .map(|e| {
            (
                e.involved_object.name.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    for (obj, reason) in [
        ("drift", "Converged"),
        ("ambiguous", "AmbiguousName"),
        ("late", "JobNotFound"),
        ("expiring", "ExpiringSoon"),
        ("drift", "JobNotFound"),
    ] {
        assert!(
            reasons.iter().any(|(o, r)| o == obj && r == reason),
            "no {reason} Event for {obj}: {reasons:?}"
        );
    }
    let calls = emu.update_calls();
    for c in &calls {
        assert_eq!(c["valid"], true, "invalid call {c}");
        assert_eq!(c["repeated"], false, "repeated call {c}");
    }
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sweep_costs_pages_whatever_the_number_of_resources() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("scale").await?;
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(emu.put_job(json!({"name": format!("job-{i:04}"), "jobType": "SCHEDULED", "jobStatus": "IDLE"})));
    }
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    for (i, id) in ids.iter().take(500).enumerate() {
        create_job(
            &api,
            &format!("mj-{i:03}"),
            json!({"jobId": id, "jobStatus": "RUNNING"}),
        )
        .await?;
    }
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.poll_interval = Duration::from_secs(1);
        c.page_size = 100;
    })
    .await;
    wait_for("500 MacieJobs Ready", Duration::from_secs(180), || async {
        let list = api.list(&ListParams::default()).await?;
        let ready_count = list
            .items
            .iter()
            .filter(|o| ready(o) == Some(("True".into(), "Converged".into())))
            .count();
        Ok((ready_count == 500).then_some(()))
    })
    .await?;

    // Count calls between sweep k and sweep k+3 (the next sweep starts a whole interval after
    // the previous one finished, so the counters are read between sweeps).
    let mut rx = op.poller.subscribe(&Place::new("default", REGION));
    let k = rx.borrow().sweeps;
    rx.wait_for(|v| v.sweeps > k).await?;
    let k = rx.borrow().sweeps;
    let lists = emu.requests("ListClassificationJobs");
    let describes = emu.requests("DescribeClassificationJob");
    let updates = emu.requests("UpdateClassificationJob");
    rx.wait_for(|v| v.sweeps >= k + 3).await?;
    let per_sweep = (emu.requests("ListClassificationJobs") - lists) / 3;
    assert_eq!(
        emu.requests("ListClassificationJobs") - lists,
        3 * 10,
        "ceil(1000 / 100) calls per sweep"
    );
    assert_eq!(per_sweep, 10);
    assert_eq!(
        emu.requests("DescribeClassificationJob"),
        describes,
        "no per-resource reads"
    );
    assert_eq!(emu.requests("DescribeClassificationJob"), 0);
    assert_eq!(emu.requests("UpdateClassificationJob"), updates);
    let snap = rx.borrow().snapshot.clone().unwrap();
    assert_eq!((snap.jobs.len(), snap.pages), (1000, 10));
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_by_the_api_server() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "invalid").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let cases = [
        (json!({"jobId": "a1", "jobStatus": "PAUSED"}), "spec.jobStatus"),
        (json!({"jobId": "a1", "jobStatus": "running"}), "spec.jobStatus"),
        (
            json!({"jobId": "a1", "jobName": "n", "jobStatus": "RUNNING"}),
            "exactly one of spec.jobId or spec.jobName",
        ),
        (
            json!({"jobStatus": "RUNNING"}),
            "exactly one of spec.jobId or spec.jobName",
        ),
        (json!({"jobId": "a1"}), "spec.jobStatus"),
        (json!({"jobId": "not valid!", "jobStatus": "RUNNING"}), "spec.jobId"),
        (
            json!({"jobId": "a1", "jobStatus": "RUNNING", "region": "Mars"}),
            "spec.region",
        ),
        (
            json!({"jobId": "a1", "jobStatus": "RUNNING", "deletionPolicy": "Delete"}),
            "spec.deletionPolicy",
        ),
    ];
    assert_rejected::<MacieJob>(&client, &ns, &cases).await?;
    // Immutable job reference.
    create_job(&api, "ok", json!({"jobId": "a1", "jobStatus": "RUNNING"})).await?;
    for (patch, field) in [
        (json!({"spec": {"jobId": "b2"}}), "spec.jobId is immutable"),
        (
            json!({"spec": {"jobId": null, "jobName": "x"}}),
            "cannot be added or removed",
        ),
        (json!({"spec": {"region": "eu-west-1"}}), "cannot be added or removed"),
    ] {
        let err = api
            .patch("ok", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(&format!("{patch} must be rejected"));
        assert!(err.to_string().contains(field), "{patch}: {err}");
    }
    // Changing the desired status is fine.
    api.patch(
        "ok",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobStatus": "CANCELLED"}})),
    )
    .await?;
    Ok(())
}
