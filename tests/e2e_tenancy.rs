//! Issue 19, end to end: tenancy that holds against the real kube-apiserver and the emulator
//! over HTTP. Nothing a tenant writes into a status moves another team's job; the rules on
//! scanned accounts, pausing and job names refuse before any call; one tenant's unreadable job
//! never holds up another tenant of the same account and region; a MacieAccount narrowed while
//! a create waits in the queue stops the create; created jobs name their resource in tags.
//!
//! Every scenario creates its own MacieAccount and namespaces; one runs at a time, since one of
//! them runs the operator over every namespace.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use macie_operator::api::{MacieAccount, MacieJob};
use macie_operator::macie::Place;
use serde_json::{Value, json};
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);

/// One scenario at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates or replaces (server-side apply, as a cluster admin) a MacieAccount using the
/// operator's own credentials, every namespace, in the test region.
async fn put_account(client: &kube::Client, name: &str, jobs: Value) -> Result<()> {
    let obj: MacieAccount = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": name},
        "spec": {"regions": [REGION], "namespaceSelector": {}, "jobs": jobs}
    }))?;
    Api::<MacieAccount>::all(client.clone())
        .patch(name, &PatchParams::apply("e2e-admin").force(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

fn definition(name: &str, status: &str, account: &str, s3: Value) -> Value {
    json!({"jobName": name, "jobStatus": status, "accountRef": {"name": account},
           "definition": {"jobType": "ONE_TIME", "s3JobDefinition": s3}})
}

fn buckets_of(account_id: &str) -> Value {
    json!({"bucketDefinitions": [{"accountId": account_id, "buckets": ["finance-data"]}]})
}

/// The emulator's write log, as JSON.
fn calls(emu: &EmulatorHandle, operation: &str) -> Vec<Value> {
    let e = emu.state.lock();
    e.calls
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .filter(|c| c["operation"] == operation)
        .collect()
}

/// Waits for `n` more sweeps of the place.
async fn sweeps(op: &OperatorHandle, account: &str, n: u64) -> Result<()> {
    let mut rx = op.poller.subscribe(&Place::new(account, REGION));
    let k = rx.borrow().sweeps;
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| v.sweeps >= k + n)).await??;
    Ok(())
}

/// Deletes the MacieJobs of a scenario (none holds a finalizer), so that a later scenario's
/// operator over every namespace does not meet them.
async fn clean_up(apis: &[&Api<MacieJob>]) -> Result<()> {
    for api in apis {
        api.delete_collection(&Default::default(), &ListParams::default())
            .await?;
        wait_for("the scenario's MacieJobs gone", DEADLINE, || async {
            Ok(api.list(&ListParams::default()).await?.items.is_empty().then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// (type, reason, message) of every Event about `name`.
async fn events_of(client: &kube::Client, ns: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect())
}

/// A user holding `maciejobs/status` writes another team's job id into the records of a
/// MacieJob with a definition, and the operator restarts: the forged records are ignored
/// (Warning Event RecordIgnored), the other team's job is never updated over 5 sweeps, and the
/// resource goes on with its own job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_status_record_never_moves_another_teams_job() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Scene { client, ns, emu, .. } = scene("forged").await?;
    let theirs = emu.put_job(json!({"name": "finance-nightly", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    put_account(
        &client,
        "tenancy-forged",
        json!({"allowCreate": true, "allowCancel": true}),
    )
    .await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    create_job(
        &api,
        "mine",
        definition("team-scan", "USER_PAUSED", "tenancy-forged", buckets_of("123456789012")),
    )
    .await?;
    let converged = wait_reason(&api, "mine", "Converged", DEADLINE).await?;
    let ours = converged
        .status
        .and_then(|s| s.creation?.job_id)
        .context("created job")?;
    op.stop().await;

    // The forgery, through the status subresource.
    let forged = json!({"status": {
        "creation": {"clientToken": "macie-operator-forged", "requestedAt": "2026-01-01T00:00:00Z",
                     "outcome": "Succeeded", "jobId": theirs},
        "lastTransition": {"jobId": theirs, "from": "RUNNING", "to": "CANCELLED",
                           "requestedAt": "2026-01-01T00:00:00Z", "outcome": "Pending"},
    }});
    api.patch_status("mine", &PatchParams::default(), &Patch::Merge(&forged))
        .await?;
    // Asking for CANCELLED now: following the forged record would cancel the other team's job.
    set_desired(&api, "mine", "CANCELLED").await?;

    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    let ignored = wait_for("a RecordIgnored Warning", DEADLINE, || async {
        let e = events_of(&client, &ns, "mine").await?;
        Ok(e.into_iter().find(|(t, r, _)| t == "Warning" && r == "RecordIgnored"))
    })
    .await?;
    sweeps(&op, "tenancy-forged", 5).await?;
    assert!(ignored.2.contains(&theirs), "{ignored:?}");
    let updates = calls(&emu, "UpdateClassificationJob");
    assert!(
        updates.iter().all(|c| c["jobId"] != theirs.as_str()),
        "no UpdateClassificationJob for the other team's job: {updates:?}"
    );
    assert_eq!(emu.status(&theirs).as_deref(), Some("RUNNING"), "their job unchanged");
    // The resource acts on its own job only.
    let obj = wait_reason(&api, "mine", "Converged", DEADLINE).await?;
    let st = obj.status.context("status")?;
    assert_eq!(st.job.context("job")?.job_id, ours, "not Ready on their job");
    assert_eq!(st.creation.and_then(|c| c.job_id).as_deref(), Some(ours.as_str()));
    assert_eq!(emu.status(&ours).as_deref(), Some("CANCELLED"));
    assert_eq!(calls(&emu, "CreateClassificationJob").len(), 1, "created once");
    clean_up(&[&api]).await?;
    op.stop().await;
    Ok(())
}

/// The rules that refuse before any call: accounts a created job may scan
/// (`bucketAccountIds`), `allowPause: false`, and the name rule for a job named by id (whose
/// name the refusal does not reveal). Definitions within the rules are created, with the tags
/// that name their resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_on_scanned_accounts_pausing_and_names_refuse_before_any_call() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Scene { client, ns, emu, .. } = scene("rules").await?;
    let secret = emu.put_job(json!({"name": "finance-secret-scan", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let ok_job = emu.put_job(json!({"name": "team-running", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    put_account(
        &client,
        "tenancy-rules",
        json!({"names": ["team-*"], "allowCreate": true, "allowPause": false,
               "bucketAccountIds": ["111122223333"]}),
    )
    .await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    let acct = "tenancy-rules";
    let refused = [
        (
            "other-account",
            definition("team-a", "RUNNING", acct, buckets_of("444455556666")),
            "bucketAccountIds",
        ),
        (
            "no-account-criterion",
            definition(
                "team-b",
                "RUNNING",
                acct,
                json!({"bucketCriteria": {"includes": {"and": [
                    {"simpleCriterion": {"comparator": "STARTS_WITH", "key": "S3_BUCKET_NAME", "values": ["finance"]}}]}}}),
            ),
            "ACCOUNT_ID",
        ),
        (
            "pause",
            json!({"jobId": ok_job, "jobStatus": "USER_PAUSED", "accountRef": {"name": acct}}),
            "spec.jobs.allowPause",
        ),
        (
            "by-id-outside-names",
            json!({"jobId": secret, "jobStatus": "RUNNING", "accountRef": {"name": acct}}),
            "spec.jobs.names",
        ),
    ];
    for (name, spec, _) in &refused {
        create_job(&api, name, spec.clone()).await?;
    }
    let allowed = [
        (
            "buckets",
            definition("team-c", "RUNNING", acct, buckets_of("111122223333")),
        ),
        (
            "criteria",
            definition(
                "team-d",
                "RUNNING",
                acct,
                json!({"bucketCriteria": {"includes": {"and": [
                    {"simpleCriterion": {"comparator": "EQ", "key": "ACCOUNT_ID", "values": ["111122223333"]}}]}}}),
            ),
        ),
    ];
    for (name, spec) in &allowed {
        create_job(&api, name, spec.clone()).await?;
    }
    for (name, _, rule) in &refused {
        let obj = wait_reason(&api, name, "NotPermitted", DEADLINE).await?;
        let message = condition(&obj, "Ready").message;
        assert!(message.contains(rule), "{name}: {message}");
        assert!(
            !message.contains("finance-secret-scan"),
            "{name} reveals a job name: {message}"
        );
    }
    let mut created = Vec::new();
    for (name, _) in &allowed {
        let obj = wait_reason(&api, name, "Converged", DEADLINE).await?;
        created.push((name, obj));
    }
    let creates = calls(&emu, "CreateClassificationJob");
    let names: Vec<&str> = creates.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "only the allowed definitions were created: {names:?}");
    assert!(names.contains(&"team-c") && names.contains(&"team-d"), "{names:?}");
    assert!(calls(&emu, "UpdateClassificationJob").is_empty(), "no update at all");
    for (_, _, e) in events_of(&client, &ns, "by-id-outside-names").await? {
        assert!(!e.contains("finance-secret-scan"), "an Event reveals the job name: {e}");
    }

    // Created jobs carry the tags that name their resource (DescribeClassificationJob).
    op.clients.use_account(acct, None);
    let macie = op.clients.client(&Place::new(acct, REGION))?;
    for (name, obj) in &created {
        let id = obj
            .status
            .as_ref()
            .and_then(|s| s.creation.as_ref()?.job_id.clone())
            .context("id")?;
        let job = macie.describe_classification_job().job_id(&id).send().await?;
        let tags = job.tags().context("tags")?;
        assert_eq!(
            tags.get("macie.kubeops.dev/namespace").map(String::as_str),
            Some(ns.as_str())
        );
        assert_eq!(tags.get("macie.kubeops.dev/name").map(String::as_str), Some(**name));
        assert_eq!(
            tags.get("macie.kubeops.dev/uid"),
            obj.metadata.uid.as_ref(),
            "{name}: {tags:?}"
        );
    }
    clean_up(&[&api]).await?;
    op.stop().await;
    Ok(())
}

/// Two namespaces share one MacieAccount and region. DescribeClassificationJob answers
/// ValidationException for the job one of them names: the other namespace's flip converges
/// within 3 poll intervals, and the failing resource says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenants_unreadable_job_never_holds_up_another_tenant() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Scene { client, ns, emu, .. } = scene("reads-x").await?;
    let ns_y = namespace(&client, "reads-y").await?;
    put_account(&client, "tenancy-shared", json!({"allowCancel": true})).await?;
    let acct = json!({"name": "tenancy-shared"});
    // A terminal job (not in the sweep's list: described for the resource that names it).
    let bad = emu.put_job(json!({"name": "x-old", "jobType": "ONE_TIME", "jobStatus": "COMPLETE"}));
    set_faults(
        &emu,
        json!({"errors": [{"operations": ["DescribeClassificationJob"], "jobIds": [bad],
                           "code": "ValidationException", "message": "The jobId is not valid"}]}),
    )?;
    let poll = Duration::from_secs(2);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.namespace = None;
        c.poll_interval = poll;
    })
    .await;
    let x: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(
        &x,
        "x",
        json!({"jobId": bad, "jobStatus": "RUNNING", "accountRef": acct}),
    )
    .await?;
    let failing = wait_reason(&x, "x", "MacieError", DEADLINE).await?;
    let why = condition(&failing, "Ready").message;
    assert!(
        why.contains("ValidationException") && why.contains("DescribeClassificationJob"),
        "{why}"
    );

    let y: Api<MacieJob> = Api::namespaced(client.clone(), &ns_y);
    let mut ids = Vec::new();
    let started = Instant::now();
    for i in 0..3 {
        let id = emu.put_job(json!({"name": format!("y-{i}"), "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
        create_job(
            &y,
            &format!("y-{i}"),
            json!({"jobId": id, "jobStatus": "USER_PAUSED", "accountRef": acct}),
        )
        .await?;
        ids.push(id);
    }
    wait_for("the other namespace's flip", DEADLINE, || async {
        let list = y.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .all(|o| ready(o).is_some_and(|(_, r)| r == "Converged"))
            .then_some(()))
    })
    .await?;
    let took = started.elapsed();
    assert!(
        took <= poll * 3,
        "converged in {took:?}, more than 3 poll intervals of {poll:?}"
    );
    for id in &ids {
        assert_eq!(emu.status(id).as_deref(), Some("USER_PAUSED"));
    }
    // Still failing, still reported on its own resource only (the backoff between its reads
    // is checked by the sweep's unit tests).
    let x_now = x.get("x").await?;
    assert_eq!(ready(&x_now).map(|(_, r)| r).as_deref(), Some("MacieError"));
    accepted_updates(&emu);
    clean_up(&[&x, &y]).await?;
    op.stop().await;
    Ok(())
}

/// A MacieAccount narrowed (`allowCreate: false`) while a create waits its turn in the create
/// queue: that create is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_waiting_in_the_queue_is_not_sent_once_the_account_forbids_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Scene { client, ns, emu, .. } = scene("queued").await?;
    let acct = "tenancy-queue";
    put_account(&client, acct, json!({"allowCreate": true})).await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    // One create every 5 s at the place.
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 0.2).await;
    create_job(
        &api,
        "first",
        definition("q-first", "RUNNING", acct, buckets_of("123456789012")),
    )
    .await?;
    wait_for("the first create", DEADLINE, || async {
        Ok((!calls(&emu, "CreateClassificationJob").is_empty()).then_some(()))
    })
    .await?;
    create_job(
        &api,
        "second",
        definition("q-second", "RUNNING", acct, buckets_of("123456789012")),
    )
    .await?;
    wait_reason(&api, "second", "WaitingForCreateQuota", DEADLINE).await?;
    put_account(&client, acct, json!({"allowCreate": false})).await?;
    let refused = wait_reason(&api, "second", "NotPermitted", DEADLINE).await?;
    let why = condition(&refused, "Ready").message;
    assert!(why.contains("spec.jobs.allowCreate"), "{why}");
    // Past the time its turn would have come (sweeps of 500 ms for over 5 s).
    sweeps(&op, acct, 12).await?;
    let names: Vec<String> = calls(&emu, "CreateClassificationJob")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["q-first"], "the queued create was not sent");
    clean_up(&[&api]).await?;
    op.stop().await;
    Ok(())
}
