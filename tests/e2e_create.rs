//! Issue 12, end to end: MacieJobs with spec.definition against the real kube-apiserver and the
//! emulator over HTTP: created exactly once with the declared settings (checked through
//! DescribeClassificationJob), across a lost answer and a SIGKILL, never adopting another's job,
//! and spaced by the create quota.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, ListParams, Patch, PatchParams};
use macie_operator::api::{MacieAccount, MacieJob};
use macie_operator::macie::Place;
use serde_json::{Value, json};
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);

/// A MacieAccount (the operator's own credentials) that allows creating jobs.
async fn creating_account(client: &kube::Client, name: &str) -> Result<()> {
    let obj: MacieAccount = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": name},
        "spec": {"regions": [REGION], "namespaceSelector": {},
                 "jobs": {"names": ["*"], "allowCancel": true, "allowCreate": true}}
    }))?;
    Api::<MacieAccount>::all(client.clone())
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

fn one_time(name: &str, status: &str, account: &str) -> Value {
    json!({"jobName": name, "jobStatus": status, "accountRef": {"name": account}, "definition": {
        "jobType": "ONE_TIME",
        "description": "one-time scan of the finance buckets",
        "samplingPercentage": 25,
        "managedDataIdentifierSelector": "INCLUDE",
        "managedDataIdentifierIds": ["CREDIT_CARD_NUMBER"],
        "s3JobDefinition": {"bucketDefinitions": [{"accountId": "123456789012", "buckets": ["finance-a", "finance-b"]}]},
        "tags": {"team": "finance"}
    }})
}

fn scheduled(name: &str, status: &str, account: &str) -> Value {
    json!({"jobName": name, "jobStatus": status, "accountRef": {"name": account}, "definition": {
        "jobType": "SCHEDULED",
        "initialRun": false,
        "scheduleFrequency": {"weeklySchedule": {"dayOfWeek": "MONDAY"}},
        "s3JobDefinition": {
            "bucketCriteria": {"includes": {"and": [{"simpleCriterion": {"comparator": "EQ", "key": "S3_BUCKET_NAME", "values": ["logs-archive"]}}]}},
            "scoping": {"excludes": {"and": [{"simpleScopeTerm": {"comparator": "EQ", "key": "OBJECT_EXTENSION", "values": ["gz"]}}]}}
        }
    }})
}

/// CreateClassificationJob calls in the emulator's log: (name, outcome).
fn creates(emu: &EmulatorHandle) -> Vec<(String, String)> {
    let e = emu.state.lock();
    e.calls
        .iter()
        .filter(|c| c.operation == "CreateClassificationJob")
        .map(|c| {
            let v = serde_json::to_value(c).unwrap();
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Job ids by name in the emulator.
fn jobs_named(emu: &EmulatorHandle, name: &str) -> Vec<String> {
    let snap = emu.state.lock().snapshot(None, None);
    snap["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["name"] == name)
        .map(|j| j["jobId"].as_str().unwrap().to_string())
        .collect()
}

async fn describe(
    op: &OperatorHandle,
    job_id: &str,
) -> Result<aws_sdk_macie2::operation::describe_classification_job::DescribeClassificationJobOutput> {
    op.clients.use_account("default", None);
    let client = op.clients.client(&Place::new("default", REGION))?;
    Ok(client.describe_classification_job().job_id(job_id).send().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_time_and_scheduled_definitions_are_created_once_with_their_settings() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("create").await?;
    creating_account(&client, "create-own").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    create_job(&api, "once", one_time("finance-once", "RUNNING", "create-own")).await?;
    create_job(&api, "weekly", scheduled("logs-weekly", "USER_PAUSED", "create-own")).await?;
    let once = wait_reason(&api, "once", "Converged", DEADLINE).await?;
    let weekly = wait_reason(&api, "weekly", "Converged", DEADLINE).await?;

    for (obj, name, token_of) in [(&once, "finance-once", "once"), (&weekly, "logs-weekly", "weekly")] {
        let ids = jobs_named(&emu, name);
        assert_eq!(ids.len(), 1, "exactly one job named {name}");
        let rec = obj.status.as_ref().unwrap().creation.clone().context("creation")?;
        assert_eq!(
            rec.job_id.as_deref(),
            Some(ids[0].as_str()),
            "{token_of}: status follows the created job"
        );
        let d = describe(&op, &ids[0]).await?;
        assert_eq!(
            d.client_token(),
            Some(format!("macie-operator-{}", obj.metadata.uid.clone().unwrap()).as_str())
        );
    }
    // The declared settings, as Macie describes them.
    let d = describe(&op, &jobs_named(&emu, "finance-once")[0]).await?;
    assert_eq!(d.job_type().map(|t| t.as_str()), Some("ONE_TIME"));
    assert_eq!(d.sampling_percentage(), Some(25));
    assert_eq!(d.description(), Some("one-time scan of the finance buckets"));
    assert_eq!(d.managed_data_identifier_ids(), ["CREDIT_CARD_NUMBER"]);
    assert_eq!(
        d.tags().and_then(|t| t.get("team")).map(String::as_str),
        Some("finance")
    );
    let buckets = &d.s3_job_definition().unwrap().bucket_definitions()[0];
    assert_eq!(
        (buckets.account_id(), buckets.buckets()),
        (
            Some("123456789012"),
            &["finance-a".to_string(), "finance-b".to_string()][..]
        )
    );
    let d = describe(&op, &jobs_named(&emu, "logs-weekly")[0]).await?;
    assert_eq!(d.job_type().map(|t| t.as_str()), Some("SCHEDULED"));
    let weekly_day = d
        .schedule_frequency()
        .and_then(|s| s.weekly_schedule())
        .and_then(|w| w.day_of_week())
        .map(|d| d.as_str().to_string());
    assert_eq!(weekly_day.as_deref(), Some("MONDAY"));
    assert!(d.s3_job_definition().unwrap().bucket_criteria().is_some());
    // USER_PAUSED at creation ends paused (through one update).
    assert_eq!(
        emu.status(&jobs_named(&emu, "logs-weekly")[0]).as_deref(),
        Some("USER_PAUSED")
    );
    assert_eq!(creates(&emu).len(), 2, "one create per definition");
    assert_eq!(emu.update_calls().len(), 1);

    // The definition is immutable: Macie cannot change a job's settings.
    let changed = api
        .patch(
            "once",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"definition": {"samplingPercentage": 50}}})),
        )
        .await;
    assert!(
        changed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("spec.definition is immutable")),
        "{changed:?}"
    );
    op.stop().await;
    Ok(())
}

/// The create's answer lost (a 500 after Macie processed it), then the operator SIGKILLed with
/// the create only in its write-ahead status: after the restart, still exactly one job, adopted
/// through its client token, and no second create.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_and_a_sigkill_after_the_create_leave_exactly_one_job() -> Result<()> {
    let Scene { cp, client, ns, emu } = scene("create-kill").await?;
    creating_account(&client, "create-kill").await?;
    set_faults(&emu, json!({"lostResponses": {"CreateClassificationJob": 1}}))?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let mut first = OperatorProcess::spawn("create-first", cp.kubeconfig(), &ns, &emu.url, &["--create-rate", "10"])?;
    create_job(&api, "m", one_time("lost-answer", "RUNNING", "create-kill")).await?;
    wait_for("the create processed and its answer lost", DEADLINE, || async {
        Ok((creates(&emu).len() == 1).then_some(()))
    })
    .await?;
    // The write-ahead record is in status before the call.
    wait_for("the create recorded as Pending", DEADLINE, || async {
        let o = api.get("m").await?;
        Ok(o.status
            .and_then(|s| s.creation)
            .filter(|c| c.outcome == macie_operator::api::macie_job::CreationOutcome::Pending)
            .map(|_| ()))
    })
    .await?;
    first.kill().await?;
    assert_eq!(jobs_named(&emu, "lost-answer").len(), 1, "Macie created it");
    let mut second = OperatorProcess::spawn(
        "create-second",
        cp.kubeconfig(),
        &ns,
        &emu.url,
        &["--create-rate", "10"],
    )?;
    let o = wait_reason(&api, "m", "Converged", DEADLINE).await?;
    let rec = o.status.unwrap().creation.unwrap();
    let ids = jobs_named(&emu, "lost-answer");
    assert_eq!(ids.len(), 1, "exactly one job");
    assert_eq!(
        rec.job_id.as_deref(),
        Some(ids[0].as_str()),
        "adopted through its token"
    );
    assert_eq!(creates(&emu).len(), 1, "no second create");
    second.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_used_by_another_job_is_never_adopted_nor_duplicated() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("create-taken").await?;
    creating_account(&client, "create-taken").await?;
    let theirs = emu.put_job(json!({"name": "taken", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    create_job(&api, "m", one_time("taken", "USER_PAUSED", "create-taken")).await?;
    let o = wait_reason(&api, "m", "NameInUse", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    assert!(
        message.contains(&theirs) && message.contains("not adopted"),
        "{message}"
    );
    assert!(creates(&emu).is_empty(), "no create");
    assert!(emu.update_calls().is_empty(), "their job is not touched");
    assert_eq!(jobs_named(&emu, "taken").len(), 1);
    op.stop().await;
    Ok(())
}

/// A job created out of band a moment before a MacieJob with a definition of the same name,
/// inside one poll interval: the sweep the create decision reads cannot know it, and Macie
/// allows duplicate names; the lookup of the name right before the create finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_taken_inside_one_poll_interval_is_never_duplicated() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("create-race").await?;
    creating_account(&client, "create-race").await?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    // Sweeps 10 minutes apart: after the first, the operator sees nothing new by sweeping.
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.poll_interval = Duration::from_secs(600);
    })
    .await;
    let first = emu.put_job(json!({"name": "first", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let adopt = json!({"jobId": first, "jobStatus": "RUNNING", "accountRef": {"name": "create-race"}});
    create_job(&api, "first", adopt).await?;
    wait_reason(&api, "first", "Converged", DEADLINE).await?;
    let theirs = emu.put_job(json!({"name": "raced", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    create_job(&api, "m", one_time("raced", "RUNNING", "create-race")).await?;
    let o = wait_reason(&api, "m", "NameInUse", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    assert!(message.contains(&theirs), "{message}");
    assert!(creates(&emu).is_empty(), "no create: {:?}", creates(&emu));
    assert_eq!(jobs_named(&emu, "raced"), [theirs]);
    op.stop().await;
    Ok(())
}

/// 12 definitions at once against the emulator's create quota (4 per second here, the
/// operator's --create-rate the same): all created once, throttled creates are not failures,
/// creates are spaced by the rate, and the waiting resources say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_definitions_at_once_wait_their_turn_for_the_create_quota() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("create-quota").await?;
    creating_account(&client, "create-quota").await?;
    emu.state
        .lock()
        .set_quotas(serde_json::from_value(
            json!({"createClassificationJobPerSecond": 4.0}),
        )?)
        .map_err(anyhow::Error::msg)?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 4.0).await;
    for i in 0..12 {
        create_job(
            &api,
            &format!("q{i}"),
            one_time(&format!("quota-{i}"), "RUNNING", "create-quota"),
        )
        .await?;
    }
    let waited: std::sync::Mutex<BTreeSet<String>> = Default::default();
    wait_for("12 created jobs converged", DEADLINE, || {
        let (api, waited) = (&api, &waited);
        async move {
            let list = api.list(&ListParams::default()).await?;
            let mut converged = 0;
            for o in &list.items {
                match ready(o) {
                    Some((_, r)) if r == "WaitingForCreateQuota" => {
                        let m = condition(o, "Ready").message;
                        assert!(m.contains("in line") || m.contains("throttled"), "{m}");
                        waited.lock().unwrap().insert(o.metadata.name.clone().unwrap());
                    }
                    Some((_, r)) if r == "Converged" => converged += 1,
                    _ => {}
                }
            }
            Ok((converged == 12).then_some(()))
        }
    })
    .await?;
    let waited = waited.into_inner().unwrap();
    assert!(
        waited.len() >= 4,
        "waiting resources showed WaitingForCreateQuota: {waited:?}"
    );
    // Each name created once; throttled ones (if any) were sent again, never failures.
    let calls = creates(&emu);
    let ok: BTreeMap<String, usize> = calls
        .iter()
        .filter(|(_, o)| o == "OK")
        .fold(BTreeMap::new(), |mut m, (n, _)| {
            *m.entry(n.clone()).or_default() += 1;
            m
        });
    assert_eq!(ok.len(), 12, "{calls:?}");
    assert!(ok.values().all(|n| *n == 1), "{calls:?}");
    assert!(
        calls.iter().all(|(_, o)| o == "OK" || o == "ThrottlingException"),
        "{calls:?}"
    );
    for i in 0..12 {
        assert_eq!(jobs_named(&emu, &format!("quota-{i}")).len(), 1);
    }
    assert_eq!(op.tracked.counts().2, 0, "no failure counted");
    // Spaced by the rate: 12 creates at 4 per second take at least 11 intervals.
    let times: Vec<u128> = {
        let e = emu.state.lock();
        e.calls
            .iter()
            .filter(|c| c.operation == "CreateClassificationJob")
            .map(|c| c.at.millis())
            .collect()
    };
    let span_ms = times.last().unwrap() - times.first().unwrap();
    assert!(span_ms as f64 >= 11.0 * 250.0 * 0.9, "12 creates within {span_ms} ms");
    op.stop().await;
    Ok(())
}

/// A 500 on the create's answer (Macie created the job): the job is found by its client token,
/// never created twice; deleting the resource with deletionPolicy Cancel cancels that job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_create_answer_alone_leaves_one_job_which_deletion_cancels() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("create-500").await?;
    creating_account(&client, "create-500").await?;
    set_faults(&emu, json!({"lostResponses": {"CreateClassificationJob": 1}}))?;
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let op = OperatorHandle::start(client.clone(), &ns, &emu.url, |c| c.create_rate = 20.0).await;
    let mut spec = scheduled("answer-lost", "RUNNING", "create-500");
    spec["deletionPolicy"] = json!("Cancel");
    create_job(&api, "m", spec).await?;
    let o = wait_reason(&api, "m", "Converged", DEADLINE).await?;
    let ids = jobs_named(&emu, "answer-lost");
    assert_eq!(ids.len(), 1, "exactly one job");
    assert_eq!(
        o.status.unwrap().creation.unwrap().job_id.as_deref(),
        Some(ids[0].as_str())
    );
    assert_eq!(
        creates(&emu),
        [("answer-lost".to_string(), "OK".to_string())],
        "one create call"
    );
    api.delete("m", &Default::default()).await?;
    wait_for("the resource gone after cancelling its job", DEADLINE, || async {
        Ok(api.get_opt("m").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(emu.status(&ids[0]).as_deref(), Some("CANCELLED"));
    op.stop().await;
    Ok(())
}
