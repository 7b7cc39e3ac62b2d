//! Issue 11, end to end: MacieAccounts for several AWS accounts reached through assumed roles,
//! tenants in their namespaces, and the refusals a cluster admin's rules produce, against the
//! real kube-apiserver and the emulator (STS and Macie, two AWS accounts) over HTTP.
//!
//! The operator runs in process watching every namespace, so the scenarios of this binary run
//! one at a time (each with its own emulator, accounts and namespaces).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macie_operator::api::{MacieAccount, MacieDiscovery, MacieJob};
use macie_operator::discovery::{DiscoveryController, Engines};
use macie_operator::job::{JobController, plan::Settings};
use macie_operator::macie::jobs::JobPoller;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);
/// Account A (administrator of its member accounts), reached through a role with an external id.
const A: &str = "111122223333";
const ROLE_A: &str = "arn:aws:iam::111122223333:role/macie-operator";
/// Account B, reached through a role.
const B: &str = "444455556666";
const ROLE_B: &str = "arn:aws:iam::444455556666:role/macie-operator";
/// The operator's own account (the emulator's --account-id).
const OWN: &str = "123456789012";

/// One scenario at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The operator in process, watching every namespace: tenancy, MacieAccount, MacieJob and
/// MacieDiscovery controllers on one set of clients.
struct Operator {
    poller: Arc<JobPoller>,
    engines: Arc<Engines>,
    accounts: Accounts,
    jobs: Running,
    discovery: Running,
}

impl Operator {
    async fn start(client: &kube::Client, endpoint: &str) -> Operator {
        init_test_logging();
        let clients = static_clients(endpoint).await;
        let accounts = Accounts::start(client.clone(), clients.clone());
        let config = macie_operator::job::Config {
            default_region: REGION.into(),
            poll_interval: Duration::from_millis(500),
            page_size: 100,
            plan: Settings {
                step_timeout: Duration::from_secs(30),
                expiry_warning: Duration::from_secs(7 * 86400),
            },
            namespace: None,
            concurrency: 8,
            create_rate: 0.1,
            instance: Some("e2e".into()),
        };
        let jobs = JobController::new(client.clone(), clients.clone(), accounts.tenancy.clone(), config);
        let poller = jobs.poller();
        let mut dconfig = discovery_config("unused");
        dconfig.namespace = None;
        let discovery = DiscoveryController::new(client.clone(), clients, accounts.tenancy.clone(), dconfig);
        let engines = discovery.engines();
        Operator {
            poller,
            engines,
            accounts,
            jobs: Running::spawn(|stop| jobs.run(stop)),
            discovery: Running::spawn(|stop| discovery.run(stop)),
        }
    }

    /// Places (account/region) with a running sweeper.
    fn places(&self) -> Vec<String> {
        self.poller.places().iter().map(|p| p.to_string()).collect()
    }

    async fn stop(self) {
        self.jobs.stop().await;
        self.discovery.stop().await;
        self.accounts.stop().await;
    }
}

/// The emulator with accounts A and B (a job named "nightly" in each, and in the operator's
/// own account too) and their member accounts.
async fn two_accounts() -> Result<EmulatorHandle> {
    let seed: macie_emulator::Seed = serde_json::from_value(json!({
        "jobs": [
            {"jobId": "a-nightly", "name": "nightly", "jobType": "SCHEDULED", "jobStatus": "IDLE", "awsAccountId": A},
            {"jobId": "a-weekly", "name": "weekly", "jobType": "SCHEDULED", "jobStatus": "IDLE", "awsAccountId": A},
            {"jobId": "b-nightly", "name": "nightly", "jobType": "SCHEDULED", "jobStatus": "IDLE", "awsAccountId": B},
            {"jobId": "own-nightly", "name": "nightly", "jobType": "SCHEDULED", "jobStatus": "IDLE"}
        ],
        "accounts": [
            {"accountId": "210000000001", "status": "DISABLED", "awsAccountId": A},
            {"accountId": "210000000002", "status": "DISABLED", "awsAccountId": A},
            {"accountId": "220000000001", "status": "DISABLED", "awsAccountId": B},
            {"accountId": "220000000002", "status": "DISABLED", "awsAccountId": B}
        ],
        "roles": [
            {"arn": ROLE_A, "externalId": "team-a-ext"},
            {"arn": ROLE_B}
        ]
    }))?;
    EmulatorHandle::start(seed).await
}

/// A job's real status in an AWS account.
fn job_status(emu: &EmulatorHandle, account: &str, job_id: &str) -> Option<String> {
    let snap = emu.state.lock().snapshot(Some(account), None);
    snap["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["jobId"] == job_id)
        .map(|j| j["jobStatus"].as_str().unwrap_or_default().to_string())
}

fn member_status(emu: &EmulatorHandle, account: &str, member: &str) -> Option<String> {
    let snap = emu.state.lock().snapshot(Some(account), None);
    snap["accounts"][member]["status"].as_str().map(str::to_string)
}

/// The call log (UpdateClassificationJob, BatchUpdate..., AssumeRole), as JSON.
fn calls(emu: &EmulatorHandle) -> Vec<Value> {
    let e = emu.state.lock();
    e.calls.iter().map(|c| serde_json::to_value(c).unwrap()).collect()
}

fn assume_role_calls(emu: &EmulatorHandle, role: &str) -> usize {
    calls(emu)
        .iter()
        .filter(|c| c["operation"] == "AssumeRole" && c["roleArn"] == role)
        .count()
}

/// Creates (server-side apply) a MacieAccount.
async fn put_account(client: &kube::Client, name: &str, spec: Value) -> Result<()> {
    let api: Api<MacieAccount> = Api::all(client.clone());
    let obj: MacieAccount = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": name}, "spec": spec
    }))?;
    api.patch(name, &PatchParams::apply("e2e-admin").force(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

async fn labelled_namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) -> Result<String> {
    let ns = namespace(client, name).await?;
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await?;
    Ok(ns)
}

async fn create<K>(api: &Api<K>, name: &str, spec: Value) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": K::kind(&()),
        "metadata": {"name": name}, "spec": spec
    }))?;
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("create {name}"))?;
    Ok(())
}

/// The Ready condition (reason, message) of any of our kinds, for its current generation.
fn ready_of(v: &Value) -> Option<(String, String)> {
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    (c["observedGeneration"] == v["metadata"]["generation"]).then(|| {
        (
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    })
}

/// Waits until `name` reports `reason`; returns the object as JSON.
async fn wait_ready_reason<K>(api: &Api<K>, name: &str, reason: &str) -> Result<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    wait_for(&format!("{name} to report {reason}"), DEADLINE, || async {
        let v = serde_json::to_value(api.get(name).await?)?;
        Ok(ready_of(&v).filter(|(r, _)| r == reason).map(|_| v.clone()))
    })
    .await
}

/// Deletes this scenario's resources (while the operator runs, so finalizers are released)
/// and its MacieAccounts.
async fn clean_up(client: &kube::Client, namespaces: &[&str], accounts: &[&str]) -> Result<()> {
    for ns in namespaces {
        let jobs: Api<MacieJob> = Api::namespaced(client.clone(), ns);
        let discoveries: Api<MacieDiscovery> = Api::namespaced(client.clone(), ns);
        jobs.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        discoveries
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        wait_for("resources gone", DEADLINE, || async {
            Ok(jobs.list(&ListParams::default()).await?.items.is_empty().then_some(()))
        })
        .await?;
    }
    let api: Api<MacieAccount> = Api::all(client.clone());
    for a in accounts {
        api.delete(a, &DeleteParams::default()).await?;
    }
    // Nothing uses them any more: the operator releases its in-use finalizer.
    for a in accounts {
        wait_for(&format!("MacieAccount {a} gone"), DEADLINE, || async {
            Ok(api.get_opt(a).await?.is_none().then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// Two MacieAccounts for two AWS accounts through assumed roles, two tenant namespaces: each
/// tenant converges in its own account only; a job name in both accounts is touched only in
/// the referenced one; one sweeper per (account, region); AssumeRole once per account per
/// credential lifetime, also across an expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_converge_each_in_its_own_aws_account() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let emu = two_accounts().await?;
    let ns_a = labelled_namespace(&client, "tenant-a", &[("team", "a")]).await?;
    let ns_b = labelled_namespace(&client, "tenant-b", &[("team", "b")]).await?;
    put_account(
        &client,
        "t1-team-a",
        json!({"roleArn": ROLE_A, "externalId": "team-a-ext", "regions": [REGION],
               "namespaceSelector": {"matchLabels": {"team": "a"}},
               "discovery": {"accountIds": ["210000000001"]}}),
    )
    .await?;
    put_account(
        &client,
        "t1-team-b",
        json!({"roleArn": ROLE_B, "regions": [REGION],
               "namespaceSelector": {"matchLabels": {"team": "b"}},
               "discovery": {"accountIds": ["220000000001"]}}),
    )
    .await?;
    let op = Operator::start(&client, &emu.url).await;

    let accounts: Api<MacieAccount> = Api::all(client.clone());
    for (name, id) in [("t1-team-a", A), ("t1-team-b", B)] {
        let v = wait_ready_reason(&accounts, name, "Verified").await?;
        assert_eq!(v["status"]["accountId"], id);
        // The session names the MacieAccount (CloudTrail shows which one acted).
        assert_eq!(
            v["status"]["arn"],
            format!("arn:aws:sts::{id}:assumed-role/macie-operator/macie-operator-{name}")
        );
    }
    let sessions: Vec<String> = calls(&emu)
        .iter()
        .filter(|c| c["operation"] == "AssumeRole")
        .map(|c| c["roleSessionName"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        sessions.contains(&"macie-operator-t1-team-a".to_string())
            && sessions.contains(&"macie-operator-t1-team-b".to_string()),
        "{sessions:?}"
    );

    let jobs_a: Api<MacieJob> = Api::namespaced(client.clone(), &ns_a);
    let jobs_b: Api<MacieJob> = Api::namespaced(client.clone(), &ns_b);
    // The same job name in both accounts (and in the operator's own).
    create(
        &jobs_a,
        "nightly",
        json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "accountRef": {"name": "t1-team-a"}}),
    )
    .await?;
    create(
        &jobs_b,
        "nightly",
        json!({"jobId": "b-nightly", "jobStatus": "USER_PAUSED", "accountRef": {"name": "t1-team-b"}}),
    )
    .await?;
    let disc_a: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns_a);
    let disc_b: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns_b);
    create(
        &disc_a,
        "members",
        json!({"accountRef": {"name": "t1-team-a"}, "accounts": [{"accountId": "210000000001", "status": "ENABLED"}]}),
    )
    .await?;
    // 220000000002 is not in t1-team-b's discovery.accountIds: that row is refused, the other
    // converges.
    create(
        &disc_b,
        "members",
        json!({"accountRef": {"name": "t1-team-b"}, "accounts": [
            {"accountId": "220000000001", "status": "ENABLED"},
            {"accountId": "220000000002", "status": "ENABLED"}]}),
    )
    .await?;

    wait_ready_reason(&jobs_a, "nightly", "Converged").await?;
    wait_ready_reason(&jobs_b, "nightly", "Converged").await?;
    wait_ready_reason(&disc_a, "members", "Converged").await?;
    let b = wait_for("the permitted row of tenant b converged", DEADLINE, || async {
        let v = serde_json::to_value(disc_b.get("members").await?)?;
        let converged = v["status"]["counts"]["converged"] == 1;
        Ok((converged && ready_of(&v).is_some_and(|(r, _)| r == "NotPermitted")).then_some(v))
    })
    .await?;
    let (_, message) = ready_of(&b).unwrap();
    assert!(message.contains("spec.discovery.accountIds"), "{message}");
    let rows = b["status"]["accounts"].as_array().unwrap();
    let refused = rows.iter().find(|r| r["accountId"] == "220000000002").unwrap();
    assert_eq!(refused["errorCode"], "NotPermitted");
    assert!(refused.get("observed").is_none(), "nothing observed for a refused row");

    // Each tenant acted in its own account only.
    assert_eq!(job_status(&emu, A, "a-nightly").as_deref(), Some("USER_PAUSED"));
    assert_eq!(job_status(&emu, B, "b-nightly").as_deref(), Some("USER_PAUSED"));
    assert_eq!(job_status(&emu, OWN, "own-nightly").as_deref(), Some("IDLE"));
    assert_eq!(member_status(&emu, A, "210000000001").as_deref(), Some("ENABLED"));
    assert_eq!(member_status(&emu, B, "220000000001").as_deref(), Some("ENABLED"));
    assert_eq!(member_status(&emu, B, "220000000002").as_deref(), Some("DISABLED"));
    let log = calls(&emu);
    let updates: Vec<(&str, &str)> = log
        .iter()
        .filter(|c| c["operation"] == "UpdateClassificationJob")
        .map(|c| (c["awsAccountId"].as_str().unwrap(), c["jobId"].as_str().unwrap()))
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(updates.contains(&(A, "a-nightly")) && updates.contains(&(B, "b-nightly")));
    for c in log
        .iter()
        .filter(|c| c["operation"] == "BatchUpdateAutomatedDiscoveryAccounts")
    {
        let ids: Vec<&str> = c["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["accountId"].as_str().unwrap())
            .collect();
        let expect = if c["awsAccountId"] == A {
            "210000000001"
        } else {
            "220000000001"
        };
        assert_eq!(ids, [expect], "{c}");
    }
    // One sweeper per (account, region), shared by the resources of that account.
    assert_eq!(op.places(), ["t1-team-a/us-east-1", "t1-team-b/us-east-1"]);
    assert_eq!(op.engines.places().len(), 2);

    // One AssumeRole per account so far (the Macie calls and GetCallerIdentity share it).
    assert_eq!(assume_role_calls(&emu, ROLE_A), 1);
    assert_eq!(assume_role_calls(&emu, ROLE_B), 1);
    // Past the credentials' lifetime (1 h on the emulator clock): AWS refuses them as expired,
    // the operator assumes the role again, once per account, and keeps correcting drift.
    emu.state.lock().advance_clock(Duration::from_secs(3700));
    emu.state
        .lock()
        .set_status_service_side(Some(B), None, "b-nightly", serde_json::from_value(json!("RUNNING"))?)
        .map_err(anyhow::Error::msg)?;
    wait_for(
        "drift in account B corrected with new credentials",
        DEADLINE,
        || async { Ok((job_status(&emu, B, "b-nightly").as_deref() == Some("USER_PAUSED")).then_some(())) },
    )
    .await?;
    wait_for("account A's sweeps use new credentials", DEADLINE, || async {
        Ok((assume_role_calls(&emu, ROLE_A) == 2).then_some(()))
    })
    .await?;
    // A few more sweeps: no further AssumeRole within the new lifetime.
    let sweeps = op
        .poller
        .view(&macie_operator::macie::Place::new("t1-team-a", REGION))
        .sweeps;
    wait_for("four more sweeps", DEADLINE, || async {
        let now = op
            .poller
            .view(&macie_operator::macie::Place::new("t1-team-a", REGION))
            .sweeps;
        Ok((now >= sweeps + 4).then_some(()))
    })
    .await?;
    assert_eq!(assume_role_calls(&emu, ROLE_A), 2, "one per credential lifetime");
    assert_eq!(assume_role_calls(&emu, ROLE_B), 2, "one per credential lifetime");
    let repeated = calls(&emu)
        .iter()
        .filter(|c| c["operation"] == "UpdateClassificationJob" && (c["valid"] == false || c["repeated"] == true))
        .count();
    assert_eq!(repeated, 0, "no invalid or repeated update");

    clean_up(&client, &[&ns_a, &ns_b], &["t1-team-a", "t1-team-b"]).await?;
    op.stop().await;
    Ok(())
}

/// Every refusal of issue 11, without any Macie call for the refused resources (call log and
/// counters); a changed MacieAccount decides again within one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_never_reach_macie_and_a_changed_account_decides_again() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let emu = two_accounts().await?;
    let ns = labelled_namespace(&client, "refused-in", &[("team", "a")]).await?;
    let outsider = labelled_namespace(&client, "refused-out", &[("team", "c")]).await?;
    put_account(
        &client,
        "t2-team-a",
        json!({"roleArn": ROLE_A, "externalId": "team-a-ext", "regions": [REGION],
               "namespaceSelector": {"matchLabels": {"team": "a"}},
               "jobs": {"names": ["nightly*"], "allowCancel": false},
               "discovery": {"accountIds": ["210000000001"], "allowedStatuses": ["ENABLED"]}}),
    )
    .await?;
    let op = Operator::start(&client, &emu.url).await;
    let at = |name: &str| json!({"name": name});
    let jobs: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let out_jobs: Api<MacieJob> = Api::namespaced(client.clone(), &outsider);
    // (api, name, spec, reason, what the message names)
    let cases: Vec<(&Api<MacieJob>, &str, Value, &str, &str)> = vec![
        (
            &out_jobs,
            "outsider",
            json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "accountRef": at("t2-team-a")}),
            "AccountNotFound",
            "does not exist or does not allow this namespace",
        ),
        (
            &jobs,
            "by-name",
            json!({"jobName": "weekly", "jobStatus": "USER_PAUSED", "accountRef": at("t2-team-a")}),
            "NotPermitted",
            "spec.jobs.names",
        ),
        (
            &jobs,
            "by-id",
            json!({"jobId": "a-weekly", "jobStatus": "USER_PAUSED", "accountRef": at("t2-team-a")}),
            "NotPermitted",
            "spec.jobs.names",
        ),
        (
            &jobs,
            "cancel",
            json!({"jobName": "nightly", "jobStatus": "CANCELLED", "accountRef": at("t2-team-a")}),
            "NotPermitted",
            "spec.jobs.allowCancel",
        ),
        (
            &jobs,
            "cancel-on-delete",
            json!({"jobName": "nightly", "jobStatus": "RUNNING", "deletionPolicy": "Cancel", "accountRef": at("t2-team-a")}),
            "NotPermitted",
            "deletionPolicy Cancel",
        ),
        (
            &jobs,
            "far",
            json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "region": "eu-west-1", "accountRef": at("t2-team-a")}),
            "RegionNotAllowed",
            "spec.regions",
        ),
    ];
    for (api, name, spec, _, _) in &cases {
        create(*api, name, spec.clone()).await?;
    }
    let disc: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(
        &disc,
        "members",
        json!({"accountRef": at("t2-team-a"), "accounts": [
            {"accountId": "210000000001", "status": "ENABLED"},
            {"accountId": "210000000002", "status": "ENABLED"}]}),
    )
    .await?;
    for (api, name, _, reason, names) in &cases {
        let v = wait_ready_reason(*api, name, reason).await?;
        let (_, message) = ready_of(&v).unwrap();
        assert!(message.contains(names), "{name}: {message}");
        assert!(
            !message.contains("arn:"),
            "{name}: a refusal never names the role: {message}"
        );
        assert!(v["status"].get("job").is_none(), "{name}: nothing observed is shown");
        let stalled = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Stalled" && c["status"] == "True");
        assert!(stalled, "{name}: Stalled");
    }
    let d = wait_for("the permitted discovery row converged", DEADLINE, || async {
        let v = serde_json::to_value(disc.get("members").await?)?;
        Ok((v["status"]["counts"]["converged"] == 1).then_some(v))
    })
    .await?;
    assert_eq!(ready_of(&d).unwrap().0, "NotPermitted");
    // Events say so too.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let warned = wait_for("a NotPermitted Warning Event", DEADLINE, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NotPermitted") && e.type_.as_deref() == Some("Warning")))
    })
    .await?;
    assert!(warned.note.unwrap_or_default().contains("t2-team-a"));

    // Nothing reached Macie for the refused resources; the refused region has no poller.
    assert!(
        calls(&emu).iter().all(|c| c["operation"] != "UpdateClassificationJob"),
        "no UpdateClassificationJob at all"
    );
    assert_eq!(member_status(&emu, A, "210000000002").as_deref(), Some("DISABLED"));
    assert_eq!(op.places(), ["t2-team-a/us-east-1"], "no sweeper for eu-west-1");
    assert!(!op.places().iter().any(|p| p.contains("eu-west-1")));
    // accountRef cannot be changed to get around a refusal.
    let moved = jobs
        .patch(
            "by-name",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"accountRef": {"name": "default"}}})),
        )
        .await;
    assert!(
        moved
            .as_ref()
            .is_err_and(|e| e.to_string().contains("spec.accountRef is immutable")),
        "{moved:?}"
    );

    // The cluster admin widens the account: the outsider's namespace and weekly jobs. The
    // refused resources are decided again at once (well within one poll interval's worth of
    // deadline), and act once.
    let before = std::time::Instant::now();
    put_account(
        &client,
        "t2-team-a",
        json!({"roleArn": ROLE_A, "externalId": "team-a-ext", "regions": [REGION],
               "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "c"]}]},
               "jobs": {"names": ["nightly*", "weekly"], "allowCancel": false},
               "discovery": {"accountIds": ["210000000001"], "allowedStatuses": ["ENABLED"]}}),
    )
    .await?;
    wait_ready_reason(&jobs, "by-name", "Converged").await?;
    wait_ready_reason(&jobs, "by-id", "Converged").await?;
    // The outsider now agrees with nobody else on "nightly" (cancel* are still refused): it acts.
    wait_ready_reason(&out_jobs, "outsider", "Converged").await?;
    let took = before.elapsed();
    assert_eq!(job_status(&emu, A, "a-weekly").as_deref(), Some("USER_PAUSED"));
    assert_eq!(job_status(&emu, A, "a-nightly").as_deref(), Some("USER_PAUSED"));
    let updates: Vec<Value> = calls(&emu)
        .into_iter()
        .filter(|c| c["operation"] == "UpdateClassificationJob")
        .collect();
    assert_eq!(updates.len(), 2, "one call per job: {updates:?}");
    assert!(updates.iter().all(|c| c["awsAccountId"] == A && c["valid"] == true));
    tracing::info!(?took, "re-evaluated after the MacieAccount change");
    // The still-refused ones stay refused, without a call.
    for name in ["cancel", "cancel-on-delete", "far"] {
        let v = serde_json::to_value(jobs.get(name).await?)?;
        assert_ne!(ready_of(&v).unwrap().0, "Converged", "{name}");
    }

    // A namespace gains the selected label: its refused resource is decided again at once.
    let late = labelled_namespace(&client, "refused-late", &[("team", "d")]).await?;
    let late_jobs: Api<MacieJob> = Api::namespaced(client.clone(), &late);
    create(
        &late_jobs,
        "late",
        json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "accountRef": at("t2-team-a")}),
    )
    .await?;
    wait_ready_reason(&late_jobs, "late", "AccountNotFound").await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &late,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await?;
    wait_ready_reason(&late_jobs, "late", "Converged").await?;

    clean_up(&client, &[&ns, &outsider, &late], &["t2-team-a"]).await?;
    assert_eq!(
        calls(&emu)
            .iter()
            .filter(|c| c["operation"] == "UpdateClassificationJob")
            .count(),
        2,
        "deleting the refused deletionPolicy Cancel resource made no call"
    );
    op.stop().await;
    Ok(())
}

/// Issue 19.6: a MacieAccount in use is not deleted from under its resources. It carries the
/// in-use finalizer and counts its users (resources of namespaces it does not select do not
/// count); deleted while MacieJobs and a MacieDiscovery use it, it stays, Ready with reason
/// InUse and a Warning Event saying how many, and still serves them: a deletionPolicy Cancel
/// MacieJob deleted then cancels its job through the account's role. It goes once the last one
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_macie_account_in_use_stays_until_its_resources_are_gone() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let emu = two_accounts().await?;
    let ns = labelled_namespace(&client, "in-use", &[("team", "a")]).await?;
    let outsider = labelled_namespace(&client, "in-use-out", &[("team", "z")]).await?;
    let name = "t5-in-use";
    put_account(
        &client,
        name,
        json!({"roleArn": ROLE_A, "externalId": "team-a-ext", "regions": [REGION],
               "namespaceSelector": {"matchLabels": {"team": "a"}},
               "jobs": {"allowCancel": true},
               "discovery": {"accountIds": ["210000000001"]}}),
    )
    .await?;
    let op = Operator::start(&client, &emu.url).await;
    let accounts: Api<MacieAccount> = Api::all(client.clone());
    let in_use = |v: &Value| v["status"]["resourcesInUse"].as_i64();
    let held = |v: &Value| {
        v["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "macie.kubeops.dev/in-use"))
    };
    wait_for("the in-use finalizer, nothing in use", DEADLINE, || async {
        let v = serde_json::to_value(accounts.get(name).await?)?;
        Ok((held(&v) && in_use(&v) == Some(0)).then_some(()))
    })
    .await?;

    let jobs: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    let at = json!({"name": name});
    create(
        &jobs,
        "cancel-on-delete",
        json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "deletionPolicy": "Cancel", "accountRef": at}),
    )
    .await?;
    create(
        &jobs,
        "weekly",
        json!({"jobName": "weekly", "jobStatus": "USER_PAUSED", "accountRef": at}),
    )
    .await?;
    let disc: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(
        &disc,
        "members",
        json!({"accountRef": at, "accounts": [{"accountId": "210000000001", "status": "ENABLED"}]}),
    )
    .await?;
    // Refused (its namespace is not selected): it does not hold the account.
    let out_jobs: Api<MacieJob> = Api::namespaced(client.clone(), &outsider);
    create(
        &out_jobs,
        "outsider",
        json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "accountRef": at}),
    )
    .await?;
    wait_ready_reason(&jobs, "cancel-on-delete", "Converged").await?;
    wait_ready_reason(&jobs, "weekly", "Converged").await?;
    wait_ready_reason(&disc, "members", "Converged").await?;
    wait_ready_reason(&out_jobs, "outsider", "AccountNotFound").await?;
    wait_for("3 resources in use", DEADLINE, || async {
        let v = serde_json::to_value(accounts.get(name).await?)?;
        Ok((in_use(&v) == Some(3)).then_some(()))
    })
    .await?;

    // Deleted while in use: it stays, says why, and still serves its resources.
    accounts.delete(name, &DeleteParams::default()).await?;
    let v = wait_ready_reason(&accounts, name, "InUse").await?;
    assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
    assert_eq!(in_use(&v), Some(3));
    let (_, message) = ready_of(&v).unwrap();
    assert!(
        message.contains("3 resources use this MacieAccount (2 MacieJobs, 1 MacieDiscovery)")
            && message.contains("it is deleted once they are gone"),
        "{message}"
    );
    let ready = v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "it still serves the resources that hold it");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let about = |reason: &'static str| {
        let events = events.clone();
        async move {
            Ok::<_, anyhow::Error>(events.list(&ListParams::default()).await?.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            }))
        }
    };
    let warned = wait_for("an InUse Warning Event", DEADLINE, || about("InUse")).await?;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    assert!(
        warned
            .note
            .unwrap_or_default()
            .contains("3 resources use this MacieAccount")
    );

    // The MacieDiscovery goes: 2 left, still held.
    disc.delete("members", &DeleteParams::default()).await?;
    wait_for("2 resources in use", DEADLINE, || async {
        let v = serde_json::to_value(accounts.get(name).await?)?;
        let (_, message) = ready_of(&v).unwrap_or_default();
        Ok((in_use(&v) == Some(2) && message.contains("2 resources use this MacieAccount")).then_some(()))
    })
    .await?;
    // The deletionPolicy Cancel MacieJob goes: the held account still admits it, so it cancels
    // its job in account A before its finalizer is released.
    jobs.delete("cancel-on-delete", &DeleteParams::default()).await?;
    wait_for("the Cancel MacieJob released", DEADLINE, || async {
        Ok(jobs.get_opt("cancel-on-delete").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(job_status(&emu, A, "a-nightly").as_deref(), Some("CANCELLED"));
    let cancels: Vec<Value> = calls(&emu)
        .into_iter()
        .filter(|c| c["operation"] == "UpdateClassificationJob" && c["requestedStatus"] == "CANCELLED")
        .collect();
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["awsAccountId"], A);
    assert_eq!(cancels[0]["jobId"], "a-nightly");
    assert_eq!(cancels[0]["outcome"], "OK");
    let v = serde_json::to_value(accounts.get(name).await?)?;
    assert!(held(&v), "one MacieJob still uses it: {v}");

    // The last one goes: so does the account.
    jobs.delete("weekly", &DeleteParams::default()).await?;
    wait_for("the MacieAccount gone", DEADLINE, || async {
        Ok(accounts.get_opt(name).await?.is_none().then_some(()))
    })
    .await?;
    let released = wait_for("a Released Event", DEADLINE, || about("Released")).await?;
    assert_eq!(released.type_.as_deref(), Some("Normal"));
    // The refused resource is left as it was (it never held the account).
    assert!(out_jobs.get_opt("outsider").await?.is_some());

    clean_up(&client, &[&ns, &outsider], &[]).await?;
    op.stop().await;
    Ok(())
}

/// A role that cannot be assumed: the MacieAccount is Stalled with the AWS error code, and its
/// resources say AccountNotReady instead of calling Macie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_that_cannot_be_assumed_stalls_the_account_and_its_resources() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let emu = two_accounts().await?;
    let ns = labelled_namespace(&client, "denied", &[("team", "a")]).await?;
    // The right role with a wrong external id.
    put_account(
        &client,
        "t3-wrong-id",
        json!({"roleArn": ROLE_A, "externalId": "not-the-one", "regions": [REGION],
               "namespaceSelector": {}, "discovery": {"accountIds": ["*"]}}),
    )
    .await?;
    let op = Operator::start(&client, &emu.url).await;
    let accounts: Api<MacieAccount> = Api::all(client.clone());
    let v = wait_ready_reason(&accounts, "t3-wrong-id", "AccountNotReady").await?;
    assert_eq!(v["status"]["errorCode"], "AccessDenied");
    let stalled = v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()
        .clone();
    assert_eq!(stalled["status"], "True");
    assert!(stalled["message"].as_str().unwrap().contains("AccessDenied"));

    let jobs: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create(
        &jobs,
        "nightly",
        json!({"jobName": "nightly", "jobStatus": "USER_PAUSED", "accountRef": {"name": "t3-wrong-id"}}),
    )
    .await?;
    let disc: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(
        &disc,
        "members",
        json!({"accountRef": {"name": "t3-wrong-id"}, "accounts": [{"accountId": "210000000001", "status": "ENABLED"}]}),
    )
    .await?;
    let j = wait_ready_reason(&jobs, "nightly", "AccountNotReady").await?;
    let message = ready_of(&j).unwrap().1;
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(
        !message.contains("arn:"),
        "the role is not named to the tenant: {message}"
    );
    wait_ready_reason(&disc, "members", "AccountNotReady").await?;
    assert_eq!(emu.requests("ListClassificationJobs"), 0, "no Macie call");
    assert_eq!(emu.requests("ListAutomatedDiscoveryAccounts"), 0, "no Macie call");
    assert!(op.places().is_empty());

    // Fixed by the admin: the resources proceed.
    put_account(
        &client,
        "t3-wrong-id",
        json!({"roleArn": ROLE_A, "externalId": "team-a-ext", "regions": [REGION],
               "namespaceSelector": {}, "discovery": {"accountIds": ["*"]}}),
    )
    .await?;
    wait_ready_reason(&accounts, "t3-wrong-id", "Verified").await?;
    wait_ready_reason(&jobs, "nightly", "Converged").await?;
    wait_ready_reason(&disc, "members", "Converged").await?;
    assert_eq!(job_status(&emu, A, "a-nightly").as_deref(), Some("USER_PAUSED"));

    clean_up(&client, &[&ns], &["t3-wrong-id"]).await?;
    op.stop().await;
    Ok(())
}

/// The binary with --default-account unset and no MacieAccount named `default`: a resource
/// without spec.accountRef is refused (AccountNotFound) with a message saying how to fix it,
/// and nothing reaches Macie; creating the account lets it converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_default_account_unreferenced_resources_say_how_to_fix_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let accounts: Api<MacieAccount> = Api::all(client.clone());
    if accounts.get_opt("default").await?.is_some() {
        accounts.delete("default", &DeleteParams::default()).await?;
    }
    let emu = EmulatorHandle::start(macie_emulator::Seed::default()).await?;
    let id = emu.put_job(json!({"jobId": "d1", "name": "plain", "jobType": "SCHEDULED", "jobStatus": "IDLE"}));
    let ns = namespace(&client, "no-default").await?;
    let mut proc = OperatorProcess::spawn("no-default", cp.kubeconfig(), &ns, &emu.url, &[])?;
    let jobs: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create(&jobs, "plain", json!({"jobName": "plain", "jobStatus": "USER_PAUSED"})).await?;
    let v = wait_ready_reason(&jobs, "plain", "AccountNotFound").await?;
    let message = ready_of(&v).unwrap().1;
    assert!(
        message.contains("MacieAccount \"default\"") && message.contains("spec.accountRef"),
        "{message}"
    );
    assert_eq!(emu.requests("ListClassificationJobs"), 0, "no Macie call");
    default_account(&client).await?;
    wait_ready_reason(&jobs, "plain", "Converged").await?;
    assert_eq!(emu.status(&id).as_deref(), Some("USER_PAUSED"));
    assert_eq!(emu.update_calls().len(), 1);
    jobs.delete("plain", &DeleteParams::default()).await?;
    proc.kill().await?;
    Ok(())
}
