//! Day two (issue 21): `macie-operator export` against the emulator, applied with kubectl to
//! the real API server, adopts every job without a Macie write; the pause annotation holds
//! every write (on a MacieJob and on a MacieAccount) and Argo CD's health check says
//! Suspended; managementPolicy Observe reports Drifted and never writes. Calls are checked in
//! the emulator's call log.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, Patch, PatchParams};
use macie_operator::api::{MacieAccount, MacieDiscovery, MacieJob};
use serde_json::{Value, json};
use support::chart::{kubectl, run};
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);

/// `macie-operator export` with `args`, its stdout.
fn export(emu: &EmulatorHandle, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_macie-operator"))
        .args(["export", "--region", REGION, "--macie-endpoint", &emu.url])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_STS", &emu.url)
        .output()
        .context("run macie-operator export")?;
    anyhow::ensure!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Macie writes the emulator saw (any outcome).
fn writes(emu: &EmulatorHandle) -> u64 {
    [
        "UpdateClassificationJob",
        "CreateClassificationJob",
        "BatchUpdateAutomatedDiscoveryAccounts",
    ]
    .iter()
    .map(|op| emu.requests(op))
    .sum()
}

/// Waits until every MacieJob of the namespace has a Ready reason for its generation, and
/// returns (name, reason, job status shown) of each.
async fn settled(api: &Api<MacieJob>, n: usize) -> Result<Vec<(String, String, String)>> {
    wait_for("every MacieJob reported", DEADLINE, || async {
        let list = api.list(&Default::default()).await?;
        let rows: Vec<(String, String, String)> = list
            .items
            .iter()
            .filter_map(|o| {
                let st = o.status.as_ref()?;
                (st.observed_generation == o.metadata.generation).then_some(())?;
                let (_, reason) = ready(o)?;
                let shown = st.job.as_ref().map(|j| j.job_status.clone()).unwrap_or_default();
                Some((o.metadata.name.clone().unwrap_or_default(), reason, shown))
            })
            .collect();
        Ok((rows.len() == n && list.items.len() == n).then_some(rows))
    })
    .await
}

/// Applies MacieAccount `name` (the operator's own credentials, every namespace) with the job
/// rules `jobs` and, when `paused`, the pause annotation.
async fn apply_account(client: &kube::Client, name: &str, jobs: Value, paused: bool) -> Result<()> {
    let annotations = paused.then(|| json!({"macie.kubeops.dev/paused": "true"}));
    let account: MacieAccount = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"regions": [REGION], "namespaceSelector": {}, "jobs": jobs},
    }))?;
    Api::<MacieAccount>::all(client.clone())
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&account))
        .await?;
    Ok(())
}

/// A scheduled definition with bucket criteria and scoping.
fn criteria_definition() -> Value {
    json!({"jobType": "SCHEDULED", "initialRun": false,
    "scheduleFrequency": {"weeklySchedule": {"dayOfWeek": "MONDAY"}},
    "s3JobDefinition": {
        "bucketCriteria": {"includes": {"and": [
            {"simpleCriterion": {"comparator": "EQ", "key": "S3_BUCKET_NAME", "values": ["logs-archive"]}},
            {"tagCriterion": {"comparator": "EQ", "tagValues": [{"key": "team", "value": "finance"}]}}]}},
        "scoping": {"excludes": {"and": [{"simpleScopeTerm": {"comparator": "EQ", "key": "OBJECT_EXTENSION", "values": ["gz"]}}]}}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_applied_adopts_every_job_without_a_write() -> Result<()> {
    let s = scene("export").await?;
    // 30 jobs of mixed statuses: 20 that can still change, 10 terminal.
    let statuses = [
        ("RUNNING", "ONE_TIME", 8),
        ("IDLE", "SCHEDULED", 4),
        ("USER_PAUSED", "ONE_TIME", 6),
        ("PAUSED", "ONE_TIME", 2),
        ("COMPLETE", "ONE_TIME", 5),
        ("CANCELLED", "ONE_TIME", 5),
    ];
    for (status, job_type, n) in statuses {
        for i in 0..n {
            s.emu
                .put_job(json!({"name": format!("Team {status} scan #{i}"), "jobType": job_type, "jobStatus": status}));
        }
    }
    let first = export(&s.emu, &["--namespace", &s.ns])?;
    let second = export(&s.emu, &["--namespace", &s.ns])?;
    assert_eq!(first, second, "a second export of the same account is byte-identical");
    // The same binary as a kubectl plugin.
    let plugins = tempfile::tempdir()?;
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_macie-operator"),
        plugins.path().join("kubectl-macie"),
    )?;
    let path = format!(
        "{}:{}",
        plugins.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args = [
        "macie",
        "export",
        "--region",
        REGION,
        "--macie-endpoint",
        &s.emu.url,
        "--namespace",
        &s.ns,
    ];
    let plugin = run(
        kubectl(s.cp.kubeconfig())
            .args(args)
            .env("PATH", path)
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true"),
        None,
    )?;
    assert_eq!(plugin, first, "kubectl macie export prints the same");
    assert_eq!(
        first.matches("kind: MacieJob").count(),
        20,
        "the jobs that can still change"
    );

    let kc = s.cp.kubeconfig();
    run(kubectl(kc).args(["apply", "-f", "-"]), Some(&first))?;
    let all_ns = namespace(&s.client, "export-all").await?;
    let all = export(&s.emu, &["--namespace", &all_ns, "--all"])?;
    run(kubectl(kc).args(["apply", "-f", "-"]), Some(&all))?;
    let observe_ns = namespace(&s.client, "export-observe").await?;
    let observe = export(&s.emu, &["--namespace", &observe_ns, "--observe"])?;
    assert_eq!(observe.matches("managementPolicy: Observe").count(), 20);
    run(kubectl(kc).args(["apply", "-f", "-"]), Some(&observe))?;

    let writes_before = writes(&s.emu);
    let mut ops = Vec::new();
    for ns in [&s.ns, &all_ns, &observe_ns] {
        ops.push(OperatorHandle::start(s.client.clone(), ns, &s.emu.url, |_| {}).await);
    }
    for (ns, n) in [(&s.ns, 20), (&all_ns, 30), (&observe_ns, 20)] {
        let api: Api<MacieJob> = Api::namespaced(s.client.clone(), ns);
        for (name, reason, shown) in settled(&api, n).await? {
            let obj = api.get(&name).await?;
            let ready = condition(&obj, "Ready");
            if shown == "PAUSED" {
                assert_eq!(reason, "PausedByMacie", "{ns}/{name}: says why");
            } else {
                assert_eq!(ready.status, "True", "{ns}/{name}: {reason}: {}", ready.message);
            }
        }
    }
    // Three sweeps more: still nothing written.
    let place = macie_operator::macie::Place::new("default", REGION);
    let swept = ops[0].poller.subscribe(&place).borrow().sweeps;
    wait_for("three more sweeps", DEADLINE, || async {
        Ok((ops[0].poller.subscribe(&place).borrow().sweeps >= swept + 3).then_some(()))
    })
    .await?;
    assert_eq!(
        writes(&s.emu),
        writes_before,
        "applying an export writes nothing to Macie"
    );
    for op in ops {
        op.stop().await;
    }
    Ok(())
}

/// What docs/argocd/health.lua (the shipped Argo CD health check) says of `obj`.
fn argocd_health(obj: &Value) -> Result<String> {
    fn lua(v: &Value) -> String {
        match v {
            Value::Null => "nil".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
            Value::Object(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let script = testkit::workspace_root().join("docs/argocd/health.lua");
    let program = format!(
        "obj = {}\nlocal f = assert(loadfile({:?}))\nprint(f().status)",
        lua(obj),
        script.display().to_string()
    );
    let out = std::process::Command::new("lua5.4").args(["-e", &program]).output()?;
    anyhow::ensure!(out.status.success(), "lua: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

async fn annotate<K>(api: &Api<K>, name: &str, paused: Option<&str>) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {"macie.kubeops.dev/paused": paused}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_job_is_left_alone_until_resumed() -> Result<()> {
    let s = scene("pause").await?;
    let job = s
        .emu
        .put_job(json!({"name": "held", "jobType": "ONE_TIME", "jobStatus": "USER_PAUSED"}));
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |_| {}).await;
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    let obj: MacieJob = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob",
        "metadata": {"name": "held", "annotations": {"macie.kubeops.dev/paused": "true"}},
        "spec": {"jobId": job, "jobStatus": "USER_PAUSED"},
    }))?;
    api.create(&Default::default(), &obj).await?;
    wait_reason(&api, "held", "ReconcilePaused", DEADLINE).await?;
    // Resumed out of band while paused: observed, not corrected.
    s.emu.set_status(&job, "RUNNING")?;
    let seen = wait_for("the resumed job observed", DEADLINE, || async {
        let o = api.get("held").await?;
        let shown = o
            .status
            .as_ref()
            .and_then(|s| s.job.as_ref())
            .map(|j| j.job_status.clone());
        Ok((shown.as_deref() == Some("RUNNING")).then_some(o))
    })
    .await?;
    assert_eq!(ready(&seen).map(|r| r.1).as_deref(), Some("ReconcilePaused"));
    assert_eq!(condition(&seen, "Paused").status, "True");
    assert_eq!(argocd_health(&serde_json::to_value(&seen)?)?, "Suspended");
    assert!(s.emu.update_attempts().is_empty(), "no call while paused");
    // Unpaused: one call, then Ready.
    annotate(&api, "held", None).await?;
    wait_reason(&api, "held", "Converged", DEADLINE).await?;
    assert_eq!(s.emu.update_calls().len(), 1);
    assert_eq!(s.emu.status(&job).as_deref(), Some("USER_PAUSED"));
    let ready_now = api.get("held").await?;
    assert_eq!(argocd_health(&serde_json::to_value(&ready_now)?)?, "Healthy");
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_account_holds_every_resource_that_uses_it() -> Result<()> {
    let s = scene("pause-account").await?;
    let accounts: Api<MacieAccount> = Api::all(s.client.clone());
    apply_account(&s.client, "held-account", json!({"allowCancel": true}), true).await?;
    let running = s
        .emu
        .put_job(json!({"name": "a", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |_| {}).await;
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    for (name, status) in [("pause-it", "USER_PAUSED"), ("cancel-it", "CANCELLED")] {
        create_job(
            &api,
            name,
            json!({"jobId": running, "jobStatus": status, "accountRef": {"name": "held-account"}}),
        )
        .await?;
    }
    for name in ["pause-it", "cancel-it"] {
        let o = wait_reason(&api, name, "ReconcilePaused", DEADLINE).await?;
        assert!(ready(&o).unwrap().1 == "ReconcilePaused");
        assert!(condition(&o, "Ready").message.contains("MacieAccount held-account"));
    }
    assert!(s.emu.update_attempts().is_empty(), "no call through a paused account");
    accounts.delete("held-account", &Default::default()).await.ok();
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_reports_drift_and_never_writes() -> Result<()> {
    let s = scene("observe").await?;
    let job = s
        .emu
        .put_job(json!({"name": "watched", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let member = "210987654321";
    s.emu.put_account(member, "DISABLED", false);
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |_| {}).await;
    let disc = DiscoveryHandle::start(s.client.clone(), &s.ns, &s.emu.url, |_| {}).await;
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    create_job(
        &api,
        "watched",
        json!({"jobId": job, "jobStatus": "USER_PAUSED", "managementPolicy": "Observe"}),
    )
    .await?;
    let o = wait_reason(&api, "watched", "Drifted", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    assert!(
        message.contains("RUNNING") && message.contains("USER_PAUSED"),
        "{message}"
    );
    let discoveries: Api<MacieDiscovery> = Api::namespaced(s.client.clone(), &s.ns);
    let mut d = discovery_object("watched", &[(member.to_string(), "ENABLED")])?;
    d.spec.management_policy = macie_operator::api::ManagementPolicy::Observe;
    discoveries.create(&Default::default(), &d).await?;
    let drifted = wait_for("the discovery drift reported", DEADLINE, || async {
        let d = discoveries.get("watched").await?;
        let c = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        Ok(c.filter(|c| c.reason == "Drifted"))
    })
    .await?;
    assert!(drifted.message.contains(member), "{}", drifted.message);
    // Observe with a definition: the job of that name, each setting that differs.
    s.emu.put_job(
        json!({"name": "observed-scan", "jobType": "ONE_TIME", "jobStatus": "RUNNING",
        "bucketDefinitions": [{"accountId": "123456789012", "buckets": ["finance-a"]}]}),
    );
    let observed_definition = json!({"jobName": "observed-scan", "managementPolicy": "Observe",
        "definition": {"jobType": "SCHEDULED", "scheduleFrequency": {"dailySchedule": {}},
            "s3JobDefinition": {"bucketDefinitions": [{"accountId": "123456789012", "buckets": ["finance-a", "finance-b"]}]}}});
    create_job(&api, "observed-scan", observed_definition).await?;
    let o = wait_reason(&api, "observed-scan", "Drifted", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    for field in ["jobType", "scheduleFrequency", "s3JobDefinition.bucketDefinitions"] {
        assert!(message.contains(field), "{field} named: {message}");
    }
    // Macie moves to the declaration out of band: Ready, still without a write.
    s.emu.set_status(&job, "USER_PAUSED")?;
    wait_reason(&api, "watched", "Converged", DEADLINE).await?;
    assert_eq!(writes(&s.emu), 0, "Observe never writes to Macie");
    assert_eq!(s.emu.account(member).as_deref(), Some("DISABLED"));
    disc.stop().await;
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exported_discovery_declares_every_account_as_it_is() -> Result<()> {
    let s = scene("export-discovery").await?;
    let members = [
        ("111111111111", "ENABLED"),
        ("222222222222", "DISABLED"),
        ("333333333333", "ENABLED"),
    ];
    for (id, status) in members {
        s.emu.put_account(id, status, false);
    }
    let out = export(&s.emu, &["--namespace", &s.ns, "--discovery"])?;
    for (id, status) in members {
        assert!(
            out.contains(&format!("accountId: '{id}'")) || out.contains(&format!("accountId: \"{id}\"")),
            "{out}"
        );
        assert!(out.contains(status));
    }
    run(kubectl(s.cp.kubeconfig()).args(["apply", "-f", "-"]), Some(&out))?;
    let disc = DiscoveryHandle::start(s.client.clone(), &s.ns, &s.emu.url, |_| {}).await;
    let api: Api<MacieDiscovery> = Api::namespaced(s.client.clone(), &s.ns);
    let name = format!("automated-discovery-{REGION}");
    wait_for("the exported discovery Converged", DEADLINE, || async {
        let d = api.get(&name).await?;
        let st = d.status.as_ref();
        let reason = st
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.clone());
        let counts = st.and_then(|s| s.counts.clone()).map(|c| (c.desired, c.converged));
        Ok((reason.as_deref() == Some("Converged") && counts == Some((3, 3))).then_some(()))
    })
    .await?;
    assert_eq!(writes(&s.emu), 0, "nothing sent");
    disc.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_is_confirmed_before_the_next_sweep_and_never_repeated() -> Result<()> {
    let s = scene("confirm").await?;
    let (quick, late) = (
        s.emu
            .put_job(json!({"name": "quick", "jobType": "ONE_TIME", "jobStatus": "RUNNING"})),
        s.emu
            .put_job(json!({"name": "late", "jobType": "ONE_TIME", "jobStatus": "RUNNING"})),
    );
    // The default poll interval: a confirmation that waited for the next sweep would take a
    // minute.
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |c| {
        c.poll_interval = Duration::from_secs(60);
    })
    .await;
    let place = macie_operator::macie::Place::new("default", REGION);
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    create_job(&api, "quick", json!({"jobId": quick, "jobStatus": "USER_PAUSED"})).await?;
    let t = std::time::Instant::now();
    wait_reason(&api, "quick", "Converged", Duration::from_secs(30)).await?;
    let took = t.elapsed();
    assert_eq!(
        op.poller.view(&place).sweeps,
        1,
        "confirmed before the next sweep (in {took:?})"
    );
    // Macie shows the change 3 s late: the reads at 1 s and 3 s still show RUNNING, the one at
    // 7 s the change; one call, none repeated.
    set_faults(&s.emu, json!({"visibilityDelayMs": 3000}))?;
    create_job(&api, "late", json!({"jobId": late, "jobStatus": "USER_PAUSED"})).await?;
    wait_reason(&api, "late", "Converged", Duration::from_secs(30)).await?;
    assert_eq!(op.poller.view(&place).sweeps, 1, "still before the next sweep");
    let calls = s.emu.update_attempts();
    assert_eq!(calls.len(), 2, "one call per job, none repeated: {calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c["outcome"] == "OK" && c["valid"] == true && c["repeated"] != true),
        "every call valid and none repeated: {calls:?}"
    );
    let reads = s.emu.requests("DescribeClassificationJob");
    assert!(reads <= 4, "1 read for the first, at most 3 for the late one: {reads}");
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_is_confirmed_before_the_next_sweep() -> Result<()> {
    let s = scene("confirm-create").await?;
    apply_account(&s.client, "creates-confirmed", json!({"allowCreate": true}), false).await?;
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |c| {
        c.poll_interval = Duration::from_secs(60);
        c.create_rate = 10.0;
    })
    .await;
    let place = macie_operator::macie::Place::new("creates-confirmed", REGION);
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    let definition = criteria_definition();
    let spec = json!({"jobName": "confirmed-scan", "jobStatus": "RUNNING", "accountRef": {"name": "creates-confirmed"},
        "definition": definition});
    create_job(&api, "created", spec).await?;
    let o = wait_reason(&api, "created", "Converged", Duration::from_secs(30)).await?;
    assert_eq!(op.poller.view(&place).sweeps, 1, "confirmed before the next sweep");
    let shown = o.status.and_then(|s| s.job);
    assert!(shown.is_some_and(|j| j.name.as_deref() == Some("confirmed-scan")));
    assert_eq!(s.emu.requests("CreateClassificationJob"), 1);
    Api::<MacieAccount>::all(s.client.clone())
        .delete("creates-confirmed", &Default::default())
        .await
        .ok();
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_observed_definition_reads_back_as_created() -> Result<()> {
    let s = scene("observe-created").await?;
    apply_account(&s.client, "observe-created", json!({"allowCreate": true}), false).await?;
    let accounts: Api<MacieAccount> = Api::all(s.client.clone());
    let op = OperatorHandle::start(s.client.clone(), &s.ns, &s.emu.url, |c| c.create_rate = 10.0).await;
    let api: Api<MacieJob> = Api::namespaced(s.client.clone(), &s.ns);
    let definition = criteria_definition();
    let spec = json!({"jobName": "observed-created", "jobStatus": "RUNNING",
        "accountRef": {"name": "observe-created"}, "definition": definition});
    create_job(&api, "creator", spec.clone()).await?;
    wait_reason(&api, "creator", "Converged", DEADLINE).await?;
    // The same definition, observed: its settings read back as declared, bucket criteria and
    // scoping included; with other scoping, that setting is named.
    let mut observe = spec;
    observe["managementPolicy"] = json!("Observe");
    create_job(&api, "same", observe.clone()).await?;
    let o = wait_reason(&api, "same", "Converged", DEADLINE).await?;
    assert_eq!(condition(&o, "Ready").reason, "Converged");
    observe["definition"]["s3JobDefinition"]["scoping"]["excludes"]["and"][0]["simpleScopeTerm"]["values"] =
        json!(["zip"]);
    create_job(&api, "other", observe).await?;
    let o = wait_reason(&api, "other", "Drifted", DEADLINE).await?;
    let message = condition(&o, "Ready").message;
    assert!(
        message.contains("s3JobDefinition.scoping") && !message.contains("bucketCriteria"),
        "{message}"
    );
    assert_eq!(s.emu.requests("CreateClassificationJob"), 1);
    accounts.delete("observe-created", &Default::default()).await.ok();
    op.stop().await;
    Ok(())
}
