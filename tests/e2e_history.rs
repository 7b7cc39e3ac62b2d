//! Issue 13.1, end to end: sweeps list only the jobs that can change (COMPLETE and CANCELLED
//! excluded by the ListClassificationJobs filter), and nothing a user sees is lost: a managed
//! job completing out of band, a name resolving to an already-terminal job, a late job by
//! name, an ambiguous name among terminal jobs.

mod support;

use std::time::Duration;

use anyhow::Result;
use kube::api::Api;
use macie_operator::api::MacieJob;
use macie_operator::macie::Place;
use serde_json::json;
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);

/// An account's history: `n` one-time jobs that ran long ago (COMPLETE or CANCELLED).
fn history(emu: &EmulatorHandle, n: usize) {
    for i in 0..n {
        let status = if i % 3 == 0 { "CANCELLED" } else { "COMPLETE" };
        emu.put_job(json!({"jobId": format!("old{i:04}"), "name": format!("old-{i}"), "jobType": "ONE_TIME", "jobStatus": status}));
    }
}

async fn sweeps(op: &OperatorHandle, n: u64) -> Result<()> {
    let mut rx = op.poller.subscribe(&Place::new("default", REGION));
    let k = rx.borrow().sweeps;
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| v.sweeps >= k + n)).await??;
    Ok(())
}

/// A managed job completing out of band is reported as it is (one DescribeClassificationJob
/// when it drops out of the filtered sweep), while steady-state sweeps cost one call each
/// with 600 terminal jobs in the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_managed_job_completing_out_of_band_is_seen_and_sweeps_skip_the_history() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("history-complete").await?;
    history(&emu, 600);
    let id = emu.put_job(json!({"name": "today", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "today", json!({"jobId": id, "jobStatus": "RUNNING"})).await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.page_size = 100).await;
    wait_reason(&api, "today", "Converged", DEADLINE).await?;
    sweeps(&op, 1).await?;
    let lists = emu.requests("ListClassificationJobs");
    let describes = emu.requests("DescribeClassificationJob");
    sweeps(&op, 3).await?;
    let per_sweep = (emu.requests("ListClassificationJobs") - lists) as f64 / 3.0;
    assert!(
        per_sweep <= 1.34,
        "one call per sweep, not ceil(601 / 100): {per_sweep}"
    );
    assert_eq!(emu.requests("DescribeClassificationJob"), describes);
    // The job completes out of band.
    emu.state
        .lock()
        .set_status_service_side(None, None, &id, serde_json::from_value(json!("COMPLETE"))?)
        .map_err(anyhow::Error::msg)?;
    wait_for("the resource shows the job COMPLETE", DEADLINE, || async {
        let o = api.get("today").await?;
        Ok(o.status
            .and_then(|s| s.job)
            .filter(|j| j.job_status == "COMPLETE")
            .map(|_| ()))
    })
    .await?;
    assert_eq!(
        emu.requests("DescribeClassificationJob") - describes,
        1,
        "one describe when it dropped out"
    );
    let o = wait_reason(&api, "today", "Converged", DEADLINE).await?;
    assert!(
        condition(&o, "Ready").message.contains("COMPLETE"),
        "{:?}",
        condition(&o, "Ready")
    );
    assert!(emu.update_calls().is_empty());
    op.stop().await;
    Ok(())
}

/// A name that resolves to a job that was already terminal: TerminalState, no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_resolving_to_an_already_terminal_job_is_a_terminal_state() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("history-terminal").await?;
    history(&emu, 300);
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "old", json!({"jobName": "old-7", "jobStatus": "USER_PAUSED"})).await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    let o = wait_reason(&api, "old", "TerminalState", DEADLINE).await?;
    assert_eq!(o.status.unwrap().job.unwrap().job_id, "old0007");
    assert!(emu.update_calls().is_empty());
    op.stop().await;
    Ok(())
}

/// A job created after its MacieJob (by name) is picked up at the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_job_by_name_is_picked_up_at_the_next_sweep() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("history-late").await?;
    history(&emu, 300);
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "late", json!({"jobName": "late-one", "jobStatus": "USER_PAUSED"})).await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "late", "JobNotFound", DEADLINE).await?;
    let id = emu.put_job(json!({"name": "late-one", "jobType": "SCHEDULED", "jobStatus": "IDLE"}));
    wait_reason(&api, "late", "Converged", DEADLINE).await?;
    assert_eq!(emu.status(&id).as_deref(), Some("USER_PAUSED"));
    assert_eq!(emu.update_calls().len(), 1);
    op.stop().await;
    Ok(())
}

/// A name shared by terminal jobs (and one that can still change) is ambiguous: no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_name_among_terminal_jobs_is_still_ambiguous() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("history-ambiguous").await?;
    history(&emu, 300);
    emu.put_job(json!({"jobId": "dup-old", "name": "dup", "jobType": "ONE_TIME", "jobStatus": "COMPLETE"}));
    emu.put_job(json!({"jobId": "dup-new", "name": "dup", "jobType": "SCHEDULED", "jobStatus": "IDLE"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "dup", json!({"jobName": "dup", "jobStatus": "USER_PAUSED"})).await?;
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    let o = wait_reason(&api, "dup", "AmbiguousName", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    assert!(message.contains("dup-old") && message.contains("dup-new"), "{message}");
    assert!(emu.update_calls().is_empty());
    op.stop().await;
    Ok(())
}
