//! Reconcile steps against in-process fakes (the middle test layer): the fake Macie API behind
//! the real sweeper, and a fake API server capturing every status write and Event. A scenario
//! takes milliseconds. A resource is reconciled again and again, as its own status writes and
//! the sweeps would trigger it, and the Macie calls are counted.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::account::testing::Fed;
use crate::api::macie_account::{DiscoveryRules, JobRules};
use crate::api::macie_job::CreationOutcome;
use crate::api::{MacieAccountSpec, PAUSED_ANNOTATION};
use crate::macie::MacieError;
use crate::macie::fake::FakeMacie;
use crate::runtime::fake_kube::{FakeKube, path_of};

const REGION: &str = "us-east-1";

struct Rig {
    fed: Fed,
    kube: FakeKube,
    macie: Arc<FakeMacie>,
    ctx: Context,
    writer: Writer<MacieJob>,
}

fn settings() -> Settings {
    Settings {
        step_timeout: Duration::from_millis(300),
        expiry_warning: Duration::from_secs(7 * 86400),
    }
}

/// The default account of the rig: every job, cancel allowed (unless a test narrows it).
fn account_spec(names: &[&str], allow_cancel: bool) -> MacieAccountSpec {
    MacieAccountSpec {
        role_arn: None,
        external_id: None,
        regions: vec![REGION.into()],
        namespace_selector: Default::default(),
        jobs: JobRules {
            names: names.iter().map(|n| n.to_string()).collect(),
            allow_cancel,
            ..JobRules::default()
        },
        discovery: DiscoveryRules::default(),
    }
}

fn place() -> Place {
    Place::new("default", REGION)
}

fn rig(macie: Arc<FakeMacie>) -> Rig {
    let mut fed = Fed::new("default");
    fed.put_verified("default", account_spec(&["*"], true));
    fed.put_namespace("ns", &[]);
    let kube = FakeKube::default();
    let client = kube.client();
    let clients = Arc::new(
        MacieClients::new(aws_config::SdkConfig::builder().build(), None)
            .with_api(macie.clone() as Arc<dyn crate::macie::api::MacieApi>),
    );
    let (store, writer) = reflector::store::<MacieJob>();
    let on_change: OnChange = Arc::new(|_: &Place, _: &Changes, _: Option<Timestamp>| {});
    let in_use: InUse = Arc::new(|_: &Place| true);
    let wanted: Wanted = Arc::new(|_: &Place| Default::default());
    let poller = Arc::new(JobPoller::new(
        clients.clone(),
        100,
        Duration::from_millis(20),
        on_change,
        in_use,
        wanted,
    ));
    let config = Config {
        default_region: REGION.into(),
        poll_interval: Duration::from_millis(20),
        page_size: 100,
        plan: settings(),
        namespace: None,
        concurrency: 1,
        create_rate: 1000.0,
        instance: None,
    };
    let ctx = Context {
        trigger: futures::channel::mpsc::unbounded().0,
        recorder: Recorder::new(client.clone(), MANAGER, None),
        client,
        clients,
        poller,
        tenancy: fed.tenancy.clone(),
        config,
        store,
        memory: Arc::default(),
        tokens: Arc::default(),
        queue: Arc::new(Mutex::new(CreateQueue::new(1000.0))),
    };
    Rig {
        fed,
        kube,
        macie,
        ctx,
        writer,
    }
}

fn object(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1",
        "kind": "MacieJob",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    })
}

impl Rig {
    /// Creates the resource in the fake API server and the controller's cache.
    fn create(&mut self, obj: Value) {
        self.kube.put(obj.clone(), "maciejobs");
        self.sync(&obj);
    }

    fn sync(&mut self, obj: &Value) {
        let path = path_of(obj, "maciejobs");
        if let Some(v) = self.kube.get(&path) {
            let o: MacieJob = serde_json::from_value(v).expect("a MacieJob");
            self.writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
    }

    /// The resource as the API server holds it.
    fn get(&self, name: &str) -> Option<MacieJob> {
        self.kube
            .get(&format!(
                "/apis/macie.kubeops.dev/v1alpha1/namespaces/ns/maciejobs/{name}"
            ))
            .map(|v| serde_json::from_value(v).expect("a MacieJob"))
    }

    /// Waits for `n` more completed sweeps.
    async fn sweeps(&self, n: u64) {
        let mut rx = self.ctx.poller.subscribe(&place());
        let k = rx.borrow().sweeps;
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.sweeps >= k + n))
            .await
            .expect("sweeps within 10 s")
            .expect("the sweeper runs");
    }

    /// Reconciles `name` `times` times in a row, each time with what the API server holds (as
    /// the watch would deliver after each of its own status writes).
    async fn reconcile(&mut self, name: &str, times: usize) {
        for _ in 0..times {
            let Some(o) = self.get(name) else { return };
            self.sync(&serde_json::to_value(&o).unwrap());
            reconcile::reconcile_inner(&o, &self.ctx).await.expect("reconcile");
        }
    }

    fn reason(&self, name: &str) -> (String, String, String) {
        let o = self.get(name).expect("exists");
        let st = o.status.expect("status");
        let c = conditions::find(&st.conditions, conditions::READY)
            .expect("Ready")
            .clone();
        let phase = st
            .conditions
            .iter()
            .find(|c| c.status == "True")
            .map(|c| c.type_.clone())
            .unwrap_or_default();
        (phase, c.reason, c.message)
    }
}

fn denied() -> MacieError {
    MacieError::AccessDenied {
        code: "AccessDeniedException".into(),
        message: "not authorized".into(),
    }
}

#[tokio::test]
async fn status_writes_never_retrigger_a_refused_call() {
    for (err, reason, phase) in [
        (denied(), "AccessDenied", "Stalled"),
        (
            MacieError::Throttled {
                code: "ThrottlingException".into(),
                message: "Rate exceeded".into(),
            },
            "Throttled",
            "Reconciling",
        ),
        (
            MacieError::Other {
                code: "ConflictException".into(),
                message: "busy".into(),
            },
            "UpdateRejected",
            "Reconciling",
        ),
    ] {
        let macie = Arc::new(FakeMacie::default());
        macie.put(REGION, "j1", "n", "RUNNING");
        macie.fail_updates("j1", Some(err.clone()));
        let mut r = rig(macie);
        r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
        r.sweeps(1).await;
        r.reconcile("m", 30).await;
        assert_eq!(r.macie.updates().len(), 1, "{err}: one call, not one per status write");
        let (p, rsn, msg) = r.reason("m");
        assert_eq!((p.as_str(), rsn.as_str()), (phase, reason), "{err}");
        assert!(msg.contains(err.code()), "{msg}");
        let t = r.get("m").unwrap().status.unwrap().last_transition.unwrap();
        assert_eq!(t.outcome, TransitionOutcome::Failed);
        assert_eq!(t.error_code.as_deref(), Some(err.code()));
    }
}

#[tokio::test]
async fn an_uncertain_call_waits_for_a_sweep_past_the_step_timeout() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    macie.fail_updates(
        "j1",
        Some(MacieError::Uncertain {
            code: "InternalServerException".into(),
            message: "oops".into(),
        }),
    );
    let mut r = rig(macie);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 20).await;
    assert_eq!(r.macie.updates().len(), 1);
    assert_eq!(r.reason("m").1, "Transitioning");
    let t = r.get("m").unwrap().status.unwrap().last_transition.unwrap();
    assert_eq!(t.outcome, TransitionOutcome::Pending, "a 5xx may have taken effect");
    // Sweeps that started before the deadline show the job unmoved: still no second call.
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    assert_eq!(r.macie.updates().len(), 1);
    // A sweep that started past the step timeout still shows RUNNING: the step ends, one more.
    tokio::time::sleep(settings().step_timeout).await;
    r.macie.fail_updates("j1", None);
    r.sweeps(2).await;
    r.reconcile("m", 5).await;
    assert_eq!(r.macie.updates().len(), 2);
    assert_eq!(r.macie.status(REGION, "j1").as_deref(), Some("USER_PAUSED"));
    assert!(r.macie.updates().iter().all(|u| u.valid));
}

#[tokio::test]
async fn a_converged_step_is_recorded_and_then_nothing_is_written() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert_eq!(r.macie.updates().len(), 1);
    r.sweeps(2).await;
    r.reconcile("m", 2).await;
    let st = r.get("m").unwrap().status.unwrap();
    assert_eq!(st.last_transition.unwrap().outcome, TransitionOutcome::Succeeded);
    assert_eq!(r.reason("m").1, "Converged");
    let writes = r.kube.status_writes().len();
    r.sweeps(2).await;
    r.reconcile("m", 10).await;
    assert_eq!(
        r.kube.status_writes().len(),
        writes,
        "a converged resource is not written again"
    );
    assert_eq!(r.macie.updates().len(), 1);
    // Nothing to poll for: the next sweep or edit wakes it.
    let o = r.get("m").unwrap();
    assert_eq!(reconcile::reconcile_inner(&o, &r.ctx).await.unwrap(), Next::AwaitChange);
}

/// A MacieJob whose pause was written ahead and called once, and the object as it was created
/// (what a cache behind the operator's own writes still holds).
async fn paused_once_and_the_created_object() -> (Rig, MacieJob) {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie);
    let created = object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"}));
    r.create(created.clone());
    r.sweeps(1).await;
    r.reconcile("m", 1).await;
    assert_eq!(r.macie.updates().len(), 1);
    (r, serde_json::from_value(created).unwrap())
}

#[tokio::test]
async fn a_stale_cached_object_never_takes_the_write_ahead_out_of_the_status() {
    let (r, stale) = paused_once_and_the_created_object().await;
    let ahead = r
        .get("m")
        .unwrap()
        .status
        .unwrap()
        .last_transition
        .expect("the write-ahead");
    // Before any sweep settles the step, a reconcile sees the object as created (the watch
    // has not delivered the write-ahead yet): the status keeps the step's record, which a
    // restarted process needs so as not to call again.
    reconcile::reconcile_inner(&stale, &r.ctx).await.expect("reconcile");
    let t = r
        .get("m")
        .unwrap()
        .status
        .unwrap()
        .last_transition
        .expect("still recorded");
    assert_eq!(t, ahead);
    assert_eq!(r.macie.updates().len(), 1);
}

#[tokio::test]
async fn a_stale_cached_object_still_gets_the_steps_outcome() {
    let (r, stale) = paused_once_and_the_created_object().await;
    // The next sweep shows the job paused; the reconcile it triggers still sees the object as
    // created (the watch has not delivered the operator's own status writes yet).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.sweeps(2).await;
    reconcile::reconcile_inner(&stale, &r.ctx).await.expect("reconcile");
    let st = r.get("m").unwrap().status.unwrap();
    assert_eq!(st.last_transition.unwrap().outcome, TransitionOutcome::Succeeded);
    assert_eq!(r.reason("m").1, "Converged");
    assert_eq!(r.macie.updates().len(), 1);
}

#[tokio::test]
async fn disagreeing_resources_never_call_and_agreeing_ones_call_once() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "shared", "RUNNING");
    let mut r = rig(macie);
    r.create(object("a", json!({"jobId": "j1", "jobStatus": "RUNNING"})));
    r.create(object("b", json!({"jobName": "shared", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    for _ in 0..10 {
        r.reconcile("a", 1).await;
        r.reconcile("b", 1).await;
    }
    assert!(r.macie.updates().is_empty());
    assert_eq!(r.reason("a").1, "Conflict");
    assert_eq!(r.reason("b").1, "Conflict");
    assert!(r.reason("a").2.contains("b (USER_PAUSED)"), "{}", r.reason("a").2);
    // They agree: exactly one acts, however often both are reconciled.
    let mut a = r.get("a").unwrap();
    a.spec.job_status = Some(DesiredJobStatus::UserPaused);
    a.metadata.generation = Some(2);
    r.kube.put(serde_json::to_value(&a).unwrap(), "maciejobs");
    for _ in 0..10 {
        r.reconcile("a", 1).await;
        r.reconcile("b", 1).await;
    }
    assert_eq!(r.macie.updates().len(), 1, "{:?}", r.macie.updates());
}

#[tokio::test]
async fn a_transient_sweep_failure_writes_nothing() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "RUNNING"})));
    r.sweeps(1).await;
    r.reconcile("m", 1).await;
    assert_eq!(r.reason("m").1, "Converged");
    let writes = r.kube.writes().len();
    // Two sweeps fail (each: its page and the page's retries), then the next succeeds.
    r.macie.fail_lists(
        2 * (1 + crate::macie::jobs::PAGE_RETRIES as usize),
        MacieError::Uncertain {
            code: "InternalServerException".into(),
            message: "oops".into(),
        },
    );
    let mut rx = r.ctx.poller.subscribe(&place());
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.failures == 1))
        .await
        .expect("a failed sweep")
        .expect("sweeper");
    r.reconcile("m", 3).await;
    assert_eq!(
        r.kube.writes().len(),
        writes,
        "no status write, no Event while it fails"
    );
    assert!(
        r.ctx
            .memory
            .read(&ObjectRef::new("m").within("ns"), |e| e.own.waiter.is_some())
            .unwrap_or(false),
        "woken by the next good sweep (a spec change seen now is not lost)"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|v| v.failures == 0 && v.error.is_none()),
    )
    .await
    .expect("a good sweep")
    .expect("sweeper");
    r.reconcile("m", 3).await;
    assert_eq!(r.kube.writes().len(), writes, "nothing to write after it recovers");
    assert_eq!(r.reason("m").1, "Converged");
}

#[tokio::test]
async fn a_deletion_cancel_is_written_ahead_and_not_repeated_after_a_restart() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    // Macie takes the call, but the response is lost.
    macie.fail_updates(
        "j1",
        Some(MacieError::Uncertain {
            code: "ResponseError".into(),
            message: "connection reset".into(),
        }),
    );
    let mut r = rig(macie.clone());
    let mut obj = object(
        "m",
        json!({"jobId": "j1", "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    );
    obj["metadata"]["finalizers"] = json!([FINALIZER]);
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
    r.create(obj.clone());
    r.sweeps(1).await;
    r.reconcile("m", 1).await;
    assert_eq!(macie.updates().len(), 1);
    // The first status write came before the call and records it as Pending.
    let first = &r.kube.status_writes()[0];
    assert_eq!(first.body["status"]["lastTransition"]["outcome"], "Pending");
    assert_eq!(first.body["status"]["lastTransition"]["to"], "CANCELLED");
    // A new process (nothing in memory) reads the step from the status: no second call.
    let kube = r.kube.clone();
    let mut r2 = rig(macie.clone());
    r2.kube = kube;
    r2.ctx.client = r2.kube.client();
    r2.sync(&obj);
    r2.sweeps(1).await;
    r2.reconcile("m", 5).await;
    assert_eq!(macie.updates().len(), 1, "not repeated after the restart");
    assert!(
        r2.get("m").is_some(),
        "the finalizer stays until a sweep shows the job cancelled"
    );
}

#[tokio::test]
async fn refused_resources_never_call_say_which_rule_and_hold_no_one_in_conflict() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "nightly-1", "RUNNING");
    macie.put(REGION, "j2", "weekly-2", "RUNNING");
    let mut r = rig(macie.clone());
    r.fed.put_verified("default", account_spec(&["nightly-*"], false));
    // (name, spec, the rule its message names)
    let refused = [
        (
            "by-name",
            json!({"jobName": "weekly-2", "jobStatus": "USER_PAUSED"}),
            "spec.jobs.names",
        ),
        // By id: the name rule holds for the name Macie reports.
        (
            "by-id",
            json!({"jobId": "j2", "jobStatus": "USER_PAUSED"}),
            "spec.jobs.names",
        ),
        (
            "cancel",
            json!({"jobId": "j1", "jobStatus": "CANCELLED"}),
            "allowCancel",
        ),
        (
            "cancel-on-delete",
            json!({"jobId": "j1", "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
            "deletionPolicy Cancel",
        ),
        (
            "far",
            json!({"jobName": "nightly-1", "jobStatus": "USER_PAUSED", "region": "eu-west-1"}),
            "spec.regions",
        ),
    ];
    for (name, spec, _) in &refused {
        r.create(object(name, spec.clone()));
    }
    // An allowed resource naming j1 with another status than "cancel" asks: not a conflict.
    r.create(object(
        "ok",
        json!({"jobName": "nightly-1", "jobStatus": "USER_PAUSED"}),
    ));
    r.sweeps(1).await;
    for (name, _, rule) in &refused {
        r.reconcile(name, 3).await;
        let (phase, reason, message) = r.reason(name);
        assert_eq!(phase, "Stalled", "{name}");
        assert!(
            ["NotPermitted", "RegionNotAllowed"].contains(&reason.as_str()),
            "{name}: {reason}"
        );
        assert!(message.contains(rule), "{name}: {message}");
        let o = r.get(name).unwrap();
        assert!(o.status.unwrap().job.is_none(), "{name}: nothing observed is shown");
        assert!(
            o.metadata.finalizers.is_none(),
            "{name}: no finalizer for a refused resource"
        );
    }
    assert!(macie.updates().is_empty(), "refused: no call");
    r.reconcile("ok", 3).await;
    assert_eq!(r.reason("ok").1, "Transitioning");
    assert_eq!(macie.updates().len(), 1);
    assert_eq!(macie.updates()[0].job_id, "j1");
    assert_eq!(macie.updates()[0].to, DesiredJobStatus::UserPaused);
    // No sweeper for the refused region.
    assert_eq!(r.ctx.poller.places(), vec![place()]);
}

#[tokio::test]
async fn a_refused_deletion_cancel_releases_the_finalizer_without_a_call() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    r.fed.put_verified("default", account_spec(&["*"], false));
    let mut obj = object(
        "m",
        json!({"jobId": "j1", "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    );
    obj["metadata"]["finalizers"] = json!([FINALIZER]);
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
    r.create(obj);
    r.sweeps(1).await;
    r.reconcile("m", 2).await;
    assert!(r.get("m").is_none(), "released: the deletion completes");
    assert!(macie.updates().is_empty(), "no CancelClassificationJob call");
    let (_, note) = r
        .kube
        .events()
        .into_iter()
        .find(|(reason, _)| reason == "Released")
        .expect("a Released Event");
    assert!(note.contains("allowCancel") && note.contains("not cancelled"), "{note}");
}

#[tokio::test]
async fn a_deleted_definition_with_nothing_created_is_released_without_a_call() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    let mut obj = object("m", definition("scan", "CANCELLED"));
    obj["spec"]["deletionPolicy"] = json!("Cancel");
    obj["metadata"]["finalizers"] = json!([FINALIZER]);
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
    r.create(obj);
    r.sweeps(1).await;
    r.reconcile("m", 2).await;
    assert!(r.get("m").is_none(), "released: the deletion completes");
    assert!(macie.creates().is_empty() && macie.updates().is_empty(), "no call");
}

#[tokio::test]
async fn an_account_without_working_credentials_holds_a_cancel_deletion() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    // Not verified (no status): AccountNotReady, a state that can pass.
    r.fed
        .put(crate::api::MacieAccount::new("default", account_spec(&["*"], true)));
    let mut obj = object(
        "m",
        json!({"jobId": "j1", "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
    );
    obj["metadata"]["finalizers"] = json!([FINALIZER]);
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
    r.create(obj);
    r.reconcile("m", 3).await;
    assert!(r.get("m").is_some(), "the finalizer waits for the account");
    assert_eq!(r.reason("m").1, "AccountNotReady");
    assert!(macie.updates().is_empty());
    assert!(
        r.ctx.poller.places().is_empty(),
        "no sweeper for an account that is not ready"
    );
    // Verified: the cancel goes out once.
    r.fed.put_verified("default", account_spec(&["*"], true));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert_eq!(macie.updates().len(), 1);
    assert_eq!(macie.updates()[0].to, DesiredJobStatus::Cancelled);
}

fn creating_rig(macie: Arc<FakeMacie>) -> Rig {
    let mut r = rig(macie);
    let mut spec = account_spec(&["*"], true);
    spec.jobs.allow_create = true;
    r.fed.put_verified("default", spec);
    r
}

fn definition(name: &str, status: &str) -> Value {
    json!({"jobName": name, "jobStatus": status, "definition": {
        "jobType": "ONE_TIME",
        "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b1"]}]}
    }})
}

#[tokio::test]
async fn a_definition_is_created_once_then_followed_and_paused() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    r.create(object("m", definition("scan", "USER_PAUSED")));
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    assert_eq!(macie.creates().len(), 1, "created once");
    let (_, token, outcome) = &macie.creates()[0];
    assert_eq!((token.as_str(), outcome.as_str()), ("macie-operator-uid-m", "OK"));
    let rec = r.get("m").unwrap().status.unwrap().creation.unwrap();
    assert_eq!(rec.outcome, CreationOutcome::Succeeded);
    let id = rec.job_id.expect("the created job id is in status");
    // The first status write recorded the create before the call.
    let first = &r.kube.status_writes()[0];
    assert_eq!(first.body["status"]["creation"]["outcome"], "Pending");
    // Until a sweep that started after the create shows it, the job is being created (not
    // "not found").
    assert_eq!(r.reason("m").1, "Creating");
    assert!(!r.kube.events().iter().any(|(reason, _)| reason == "JobNotFound"));
    // Followed by id, then paused through the usual step.
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    assert_eq!(macie.status(REGION, &id).as_deref(), Some("USER_PAUSED"));
    assert_eq!(macie.creates().len(), 1, "never created again");
    assert_eq!(macie.updates().len(), 1);
    assert!(macie.updates().iter().all(|u| u.valid));
    assert_eq!(r.reason("m").1, "Converged");
}

#[tokio::test]
async fn a_lost_create_answer_is_found_by_its_token_also_after_a_restart() {
    let macie = Arc::new(FakeMacie::default());
    // Macie creates the job, but the answer is lost.
    macie.fail_next_create(None);
    let mut r = creating_rig(macie.clone());
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert_eq!(macie.creates().len(), 1);
    assert_eq!(r.reason("m").1, "Creating");
    let rec = r.get("m").unwrap().status.unwrap().creation.unwrap();
    assert_eq!((rec.outcome, rec.job_id), (CreationOutcome::Pending, None));
    // A new process (nothing in memory) reads the create from the status: no second call;
    // the next sweep shows a job of the name whose token is ours.
    let kube = r.kube.clone();
    let mut r2 = creating_rig(macie.clone());
    r2.kube = kube;
    r2.ctx.client = r2.kube.client();
    r2.sync(&object("m", definition("scan", "RUNNING")));
    r2.sweeps(1).await;
    r2.reconcile("m", 5).await;
    assert_eq!(macie.creates().len(), 1, "not created again");
    let rec = r2.get("m").unwrap().status.unwrap().creation.unwrap();
    assert_eq!(rec.outcome, CreationOutcome::Succeeded);
    assert_eq!(rec.job_id.as_deref(), Some("created1"));
    assert_eq!(r2.reason("m").1, "Converged");
}

#[tokio::test]
async fn a_job_of_the_name_created_by_someone_else_is_name_in_use() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "theirs", "scan", "RUNNING");
    macie.set_token("theirs", "console-1234");
    let mut r = creating_rig(macie.clone());
    r.create(object("m", definition("scan", "USER_PAUSED")));
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Stalled", "NameInUse"));
    assert!(
        message.contains("theirs") && message.contains("not adopted"),
        "{message}"
    );
    assert!(macie.creates().is_empty() && macie.updates().is_empty());
}

#[tokio::test]
async fn cancelled_at_creation_creates_nothing() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    r.create(object("m", definition("scan", "CANCELLED")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.creates().is_empty());
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Ready", "TerminalState"));
    assert!(message.contains("nothing is created"), "{message}");
}

#[tokio::test]
async fn creates_wait_their_turn_and_a_throttled_create_is_not_a_failure() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    // One create every 10 s at this place.
    r.ctx.queue = Arc::new(Mutex::new(CreateQueue::new(0.1)));
    for n in ["a", "b", "c"] {
        r.create(object(n, definition(&format!("scan-{n}"), "RUNNING")));
    }
    r.sweeps(1).await;
    for n in ["a", "b", "c"] {
        r.reconcile(n, 1).await;
    }
    assert_eq!(macie.creates().len(), 1, "one create per interval");
    for (n, place) in [("b", "number 1 in line"), ("c", "number 2 in line")] {
        let (phase, reason, message) = r.reason(n);
        assert_eq!(
            (phase.as_str(), reason.as_str()),
            ("Reconciling", "WaitingForCreateQuota")
        );
        assert!(message.contains(place), "{n}: {message}");
    }
    // A throttled create: not processed, first in line again, no failure counted.
    let macie = Arc::new(FakeMacie::default());
    macie.fail_next_create(Some(MacieError::Throttled {
        code: "ThrottlingException".into(),
        message: "Rate exceeded".into(),
    }));
    let mut r = creating_rig(macie.clone());
    r.ctx.queue = Arc::new(Mutex::new(CreateQueue::new(0.1)));
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 1).await;
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "WaitingForCreateQuota");
    assert!(message.contains("throttled"), "{message}");
    assert_eq!(
        r.ctx.memory.scan(|m| m.values().filter(|e| e.failures > 0).count()),
        0,
        "a throttled create is not a failure"
    );
    let rec = r.get("m").unwrap().status.unwrap().creation.unwrap();
    assert_eq!(rec.outcome, CreationOutcome::NotProcessed);
    // Back in line after two create intervals (10 s each at this rate).
    let wait = rec.retry_at.expect("a retry time").0.as_second() - rec.requested_at.0.as_second();
    assert!((19..=21).contains(&wait), "retry after {wait} s");
    // Reconciles before its retry time send nothing.
    r.reconcile("m", 3).await;
    assert_eq!(macie.creates().len(), 1);
}

#[tokio::test]
async fn a_definition_needs_allow_create() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = rig(macie.clone());
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 2).await;
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "NotPermitted");
    assert!(message.contains("spec.jobs.allowCreate"), "{message}");
    assert!(macie.creates().is_empty());
}

/// A new process over the same API server and Macie: nothing in memory.
fn restarted(r: &Rig, macie: Arc<FakeMacie>, names: &[&str]) -> Rig {
    let mut r2 = creating_rig(macie);
    r2.kube = r.kube.clone();
    r2.ctx.client = r2.kube.client();
    r2.ctx.recorder = Recorder::new(r2.ctx.client.clone(), MANAGER, None);
    for n in names {
        let o = r.get(n).expect("exists");
        r2.sync(&serde_json::to_value(&o).unwrap());
    }
    r2
}

/// Writes `status` fields into the stored object, as a user holding `maciejobs/status` could.
fn forge_status(r: &Rig, name: &str, fields: Value) {
    let mut o = serde_json::to_value(r.get(name).expect("exists")).unwrap();
    for (k, v) in fields.as_object().unwrap() {
        o["status"][k] = v.clone();
    }
    r.kube.put(o, "maciejobs");
}

#[tokio::test]
async fn a_forged_status_record_never_moves_another_teams_job() {
    let macie = Arc::new(FakeMacie::default());
    // Another team's job, created outside this resource (another token).
    macie.put(REGION, "theirs", "finance-nightly", "RUNNING");
    macie.set_token("theirs", "macie-operator-uid-of-another-team");
    let mut r = creating_rig(macie.clone());
    r.create(object("m", definition("scan", "USER_PAUSED")));
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    let ours = r.get("m").unwrap().status.unwrap().creation.unwrap().job_id.unwrap();
    // A tenant rewrites the records to name the other team's job, then the operator restarts.
    forge_status(
        &r,
        "m",
        json!({
            "creation": {"clientToken": "macie-operator-uid-m", "requestedAt": "2026-01-01T00:00:00Z",
                         "outcome": "Succeeded", "jobId": "theirs"},
            "lastTransition": {"jobId": "theirs", "from": "RUNNING", "to": "USER_PAUSED",
                               "requestedAt": "2026-01-01T00:00:00Z", "outcome": "Pending"},
        }),
    );
    let mut r2 = restarted(&r, macie.clone(), &["m"]);
    for _ in 0..5 {
        r2.sweeps(1).await;
        r2.reconcile("m", 3).await;
    }
    assert!(
        macie.updates().iter().all(|u| u.job_id != "theirs"),
        "no call for the forged job: {:?}",
        macie.updates()
    );
    assert_eq!(macie.status(REGION, "theirs").as_deref(), Some("RUNNING"));
    let ignored: Vec<_> = r2
        .kube
        .events()
        .into_iter()
        .filter(|(reason, _)| reason == "RecordIgnored")
        .collect();
    assert_eq!(ignored.len(), 1, "one Warning Event: {ignored:?}");
    assert!(
        ignored[0].1.contains("theirs") && ignored[0].1.contains("ignored"),
        "{ignored:?}"
    );
    // The resource goes on with its own job, found again through its token.
    let st = r2.get("m").unwrap().status.unwrap();
    assert_eq!(st.creation.unwrap().job_id.as_deref(), Some(ours.as_str()));
    assert_eq!(st.job.unwrap().job_id, ours);
    assert_eq!(macie.status(REGION, &ours).as_deref(), Some("USER_PAUSED"));
    assert_eq!(macie.creates().len(), 1, "not created again");
}

#[tokio::test]
async fn a_forged_record_of_a_resource_that_created_nothing_is_ignored() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "theirs", "finance-nightly", "RUNNING");
    let mut r = creating_rig(macie.clone());
    // CANCELLED: the resource creates nothing, but following the forged id would cancel it.
    r.create(object("m", definition("scan", "CANCELLED")));
    forge_status(
        &r,
        "m",
        json!({"creation": {"clientToken": "x", "requestedAt": "2026-01-01T00:00:00Z",
                            "outcome": "Succeeded", "jobId": "theirs"}}),
    );
    r.sync(&serde_json::to_value(r.get("m").unwrap()).unwrap());
    r.sweeps(1).await;
    r.reconcile("m", 5).await;
    assert!(macie.updates().is_empty() && macie.creates().is_empty());
    assert_eq!(macie.status(REGION, "theirs").as_deref(), Some("RUNNING"));
    assert!(r.kube.events().iter().any(|(reason, _)| reason == "RecordIgnored"));
    assert_eq!(r.reason("m").1, "TerminalState");
    assert!(
        r.get("m").unwrap().status.unwrap().creation.is_none(),
        "the record is dropped"
    );
}

#[tokio::test]
async fn allow_pause_false_refuses_user_paused() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    let mut spec = account_spec(&["*"], true);
    spec.jobs.allow_pause = false;
    r.fed.put_verified("default", spec);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Stalled", "NotPermitted"));
    assert!(message.contains("spec.jobs.allowPause"), "{message}");
    assert!(macie.updates().is_empty());
}

#[tokio::test]
async fn a_refusal_by_id_does_not_reveal_the_jobs_name() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j9", "finance-secret-scan", "RUNNING");
    let mut r = rig(macie.clone());
    r.fed.put_verified("default", account_spec(&["nightly-*"], true));
    r.create(object("m", json!({"jobId": "j9", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "NotPermitted");
    assert!(
        message.contains("j9") && message.contains("spec.jobs.names"),
        "{message}"
    );
    assert!(!message.contains("finance-secret-scan"), "{message}");
    assert!(
        r.kube
            .events()
            .iter()
            .all(|(_, note)| !note.contains("finance-secret-scan"))
    );
    assert!(macie.updates().is_empty());
}

#[tokio::test]
async fn buckets_of_accounts_outside_the_rule_are_never_created() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    let mut spec = account_spec(&["*"], true);
    spec.jobs.allow_create = true;
    spec.jobs.bucket_account_ids = vec!["999999999999".into()];
    r.fed.put_verified("default", spec);
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "NotPermitted");
    assert!(
        message.contains("bucketAccountIds") && message.contains("111122223333"),
        "{message}"
    );
    assert!(macie.creates().is_empty());
}

/// Narrows (or pauses) the default account when the first status write that matches `when` is
/// made (the write-ahead of a call): the world changes between the write-ahead and the call.
fn narrow_at_write_ahead(r: &mut Rig, when: fn(&Value) -> bool, narrowed: MacieAccountSpec, paused: bool) {
    let (_, dummy) = reflector::store::<crate::api::MacieAccount>();
    let mut accounts = std::mem::replace(&mut r.fed.accounts, dummy);
    let mut narrowed = Some(narrowed);
    r.kube.before_status_write(move |body| {
        if when(body)
            && let Some(spec) = narrowed.take()
        {
            let mut a = crate::api::MacieAccount::new("default", spec);
            a.metadata.generation = Some(1);
            if paused {
                a.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), "true".to_string())].into());
            }
            a.status = Some(crate::api::MacieAccountStatus {
                observed_generation: Some(1),
                conditions: conditions::conditions(
                    &conditions::Reason::Verified.summary("ok"),
                    Some(1),
                    &[],
                    Timestamp::now(),
                ),
                ..Default::default()
            });
            accounts.apply_watcher_event(&watcher::Event::Apply(a));
        }
    });
}

#[tokio::test]
async fn a_rule_narrowed_after_the_write_ahead_stops_the_create() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    narrow_at_write_ahead(
        &mut r,
        |b| b["status"]["creation"]["outcome"] == "Pending",
        account_spec(&["*"], true),
        false,
    );
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.creates().is_empty(), "no CreateClassificationJob");
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "NotPermitted");
    assert!(message.contains("spec.jobs.allowCreate"), "{message}");
    let creation = r.get("m").unwrap().status.unwrap().creation;
    assert!(
        creation.is_none_or(|c| c.outcome != CreationOutcome::Pending),
        "no create is recorded in flight"
    );
}

#[tokio::test]
async fn a_rule_narrowed_after_the_write_ahead_stops_the_update() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    let mut no_pause = account_spec(&["*"], true);
    no_pause.jobs.allow_pause = false;
    narrow_at_write_ahead(
        &mut r,
        |b| b["status"]["lastTransition"]["outcome"] == "Pending",
        no_pause,
        false,
    );
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.updates().is_empty(), "no UpdateClassificationJob");
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "NotPermitted");
    assert!(message.contains("spec.jobs.allowPause"), "{message}");
    let t = r.get("m").unwrap().status.unwrap().last_transition;
    assert!(
        t.is_none_or(|t| t.outcome != TransitionOutcome::Pending),
        "no call is recorded in flight"
    );
}

#[tokio::test]
async fn a_job_that_cannot_be_read_is_reported_on_its_resource_only() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "ours", "RUNNING");
    macie.put(REGION, "bad", "theirs", "COMPLETE");
    macie.fail_describes(
        "bad",
        Some(MacieError::Rejected {
            code: "ValidationException".into(),
            message: "The jobId is not valid".into(),
        }),
    );
    let mut r = rig(macie.clone());
    // The sweep reads the ids resources name (as the controller's own `wanted` does).
    let wanted: Wanted = Arc::new(|_: &Place| (["bad".to_string()].into(), Default::default()));
    r.ctx.poller = Arc::new(JobPoller::new(
        r.ctx.clients.clone(),
        100,
        Duration::from_millis(20),
        Arc::new(|_: &Place, _: &Changes, _: Option<Timestamp>| {}),
        Arc::new(|_: &Place| true),
        wanted,
    ));
    r.create(object("bad", json!({"jobId": "bad", "jobStatus": "USER_PAUSED"})));
    r.create(object("good", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("bad", 2).await;
    r.reconcile("good", 2).await;
    let (_, reason, message) = r.reason("bad");
    assert_eq!(reason, "MacieError");
    assert!(
        message.contains("ValidationException") && message.contains("DescribeClassificationJob"),
        "{message}"
    );
    assert_eq!(
        r.reason("good").1,
        "Transitioning",
        "the other resource of the place goes on"
    );
    assert_eq!(macie.updates().len(), 1);
    assert_eq!(macie.updates()[0].job_id, "j1");
}

#[tokio::test]
async fn a_long_aws_message_is_cut_to_the_status_schemas_bounds() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    macie.fail_updates(
        "j1",
        Some(MacieError::Rejected {
            code: "ValidationException".into(),
            message: "x".repeat(10_000),
        }),
    );
    let mut r = rig(macie);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 2).await;
    let st = r.get("m").unwrap().status.unwrap();
    let t = st.last_transition.expect("recorded");
    assert_eq!(t.error_code.as_deref(), Some("ValidationException"));
    let m = t.message.expect("message");
    assert!(m.len() <= conditions::MESSAGE_MAX, "{} bytes", m.len());
    assert!(st.conditions.iter().all(|c| c.message.len() <= conditions::MESSAGE_MAX));
}

#[tokio::test]
async fn a_copy_older_than_the_own_last_write_writes_nothing() {
    let (r, _) = paused_once_and_the_created_object().await;
    // The copy the watch delivered before the operator's own write-ahead (an older version).
    let mut stale = r.get("m").unwrap();
    stale.status = None;
    stale.metadata.resource_version = Some("1".into());
    let writes = r.kube.writes().len();
    let next = reconcile::reconcile_inner(&stale, &r.ctx).await.expect("reconcile");
    assert_eq!(next, Next::After(Duration::from_secs(1)), "waits for the newer copy");
    assert_eq!(r.kube.writes().len(), writes, "nothing written from the older copy");
    assert_eq!(r.macie.updates().len(), 1);
    // The copy the API server holds is acted on as usual.
    let current = r.get("m").unwrap();
    reconcile::reconcile_inner(&current, &r.ctx).await.expect("reconcile");
}

/// A new process's cache may be listed from a lagging API server: its first status write to a
/// resource is made against the copy it was built from, and refused when that copy is old.
#[tokio::test]
async fn a_first_write_from_a_copy_older_than_the_api_servers_is_refused() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    let cached = r.get("m").unwrap();
    // Another process wrote after the copy this one holds.
    let path = "/apis/macie.kubeops.dev/v1alpha1/namespaces/ns/maciejobs/m";
    r.kube.edit(path, |o| o["metadata"]["labels"] = json!({"moved": "on"}));
    let err = reconcile::reconcile_inner(&cached, &r.ctx)
        .await
        .expect_err("an older copy is not written from");
    assert!(
        format!("{err:?}").contains("409"),
        "the precondition refused it: {err:?}"
    );
    assert!(r.kube.writes().is_empty(), "nothing written, and no Warning Event");
    assert!(r.macie.updates().is_empty(), "no call without its write-ahead");
    // The newer copy is written from: the write-ahead, then the call.
    r.reconcile("m", 1).await;
    assert_eq!(r.macie.updates().len(), 1);
    let body = &r.kube.status_writes()[0].body;
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "the first write names its version: {body}"
    );
    r.reconcile("m", 1).await;
    let later = r.kube.status_writes();
    assert!(
        later[1..]
            .iter()
            .all(|w| w.body["metadata"]["resourceVersion"].is_null()),
        "later writes are guarded by the own last write instead"
    );
}

/// The rig's sweeps: the first at once, the next an hour later.
fn hourly_sweeps(r: &mut Rig) {
    let on_change: OnChange = Arc::new(|_: &Place, _: &Changes, _: Option<Timestamp>| {});
    let (in_use, wanted): (InUse, Wanted) = (Arc::new(|_: &Place| true), Arc::new(|_: &Place| Default::default()));
    let hour = Duration::from_secs(3600);
    r.ctx.poller = Arc::new(JobPoller::new(
        r.ctx.clients.clone(),
        100,
        hour,
        on_change,
        in_use,
        wanted,
    ));
}

#[tokio::test]
async fn a_job_of_the_name_created_after_the_sweep_is_name_in_use() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    hourly_sweeps(&mut r);
    r.create(object("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    // Created out of band after the sweep the create decision reads (the next sweep is an
    // hour away): only a fresh lookup of the name can see it.
    macie.put(REGION, "theirs", "scan", "RUNNING");
    macie.set_token("theirs", "console-1234");
    assert!(
        !r.ctx
            .poller
            .view(&place())
            .snapshot
            .expect("a sweep")
            .by_name
            .contains_key("scan")
    );
    let obj = r.get("m").unwrap();
    reconcile::reconcile_inner(&obj, &r.ctx).await.expect("reconcile");
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Stalled", "NameInUse"), "{message}");
    assert!(message.contains("theirs"), "{message}");
    assert!(macie.creates().is_empty(), "no second job of the name");
}

/// A rig whose Macie holds job j1 named `name` in `status`, with `obj` created and swept once.
async fn one_job(name: &str, status: &str, obj: Value) -> (Rig, Arc<FakeMacie>) {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", name, status);
    let mut r = rig(macie.clone());
    r.create(obj);
    r.sweeps(1).await;
    (r, macie)
}

/// A MacieJob with the pause annotation.
fn paused(name: &str, spec: Value) -> Value {
    let mut o = object(name, spec);
    o["metadata"]["annotations"] = json!({ PAUSED_ANNOTATION: "true" });
    o
}

fn conditions_of(r: &Rig, name: &str) -> Vec<(String, String, String)> {
    let st = r.get(name).unwrap().status.unwrap();
    st.conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

#[tokio::test]
async fn a_paused_job_makes_no_call_says_so_and_acts_once_resumed() {
    let (mut r, macie) = one_job(
        "n",
        "RUNNING",
        paused("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})),
    )
    .await;
    r.reconcile("m", 5).await;
    assert!(macie.updates().is_empty(), "no call while paused");
    let (phase, reason, message) = r.reason("m");
    assert_eq!(
        (phase.as_str(), reason.as_str()),
        ("Reconciling", "ReconcilePaused"),
        "a call is held"
    );
    assert!(message.contains("on this resource"), "{message}");
    assert!(
        conditions_of(&r, "m").contains(&("Paused".into(), "True".into(), "ReconcilePaused".into())),
        "{:?}",
        conditions_of(&r, "m")
    );
    let events = r
        .kube
        .writes()
        .into_iter()
        .filter(|w| w.path.contains("/events"))
        .count();
    assert_eq!(events, 1, "one Event on entering the pause");
    // Resumed: one call, then Ready once a sweep shows it; the pause's leaving is announced.
    let mut o = r.get("m").unwrap();
    o.metadata.annotations = None;
    r.kube.put(serde_json::to_value(&o).unwrap(), "maciejobs");
    r.reconcile("m", 3).await;
    assert_eq!(macie.updates().len(), 1);
    r.sweeps(2).await;
    r.reconcile("m", 3).await;
    assert_eq!(r.reason("m").1, "Converged");
    assert!(conditions_of(&r, "m").iter().all(|c| c.0 != "Paused"));
    let resumed = r
        .kube
        .writes()
        .into_iter()
        .filter(|w| w.body["reason"] == "ReconcileResumed")
        .count();
    assert_eq!(resumed, 1, "one Event on leaving the pause");
    assert_eq!(macie.updates().len(), 1);
}

#[tokio::test]
async fn a_paused_job_already_as_declared_is_ready() {
    let (mut r, macie) = one_job(
        "n",
        "RUNNING",
        paused("m", json!({"jobId": "j1", "jobStatus": "RUNNING"})),
    )
    .await;
    r.reconcile("m", 2).await;
    let (phase, reason, _) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Ready", "ReconcilePaused"));
    assert!(macie.updates().is_empty());
}

#[tokio::test]
async fn a_paused_account_holds_every_resource_that_uses_it() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    let mut a = crate::api::MacieAccount::new("default", account_spec(&["*"], true));
    a.metadata.generation = Some(1);
    a.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), "true".to_string())].into());
    a.status = Some(crate::api::MacieAccountStatus {
        observed_generation: Some(1),
        conditions: conditions::conditions(
            &conditions::Reason::Verified.summary("ok"),
            Some(1),
            &[],
            Timestamp::now(),
        ),
        ..Default::default()
    });
    r.fed.put(a);
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "CANCELLED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.updates().is_empty());
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "ReconcilePaused");
    assert!(message.contains("MacieAccount default"), "{message}");
}

#[tokio::test]
async fn a_pause_between_the_write_ahead_and_the_call_stops_the_call() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "n", "RUNNING");
    let mut r = rig(macie.clone());
    narrow_at_write_ahead(
        &mut r,
        |b| b["status"]["lastTransition"]["outcome"] == "Pending",
        account_spec(&["*"], true),
        true,
    );
    r.create(object("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.updates().is_empty(), "no UpdateClassificationJob");
    assert_eq!(r.reason("m").1, "ReconcilePaused");
    let t = r.get("m").unwrap().status.unwrap().last_transition;
    assert!(
        t.is_none_or(|t| t.outcome != TransitionOutcome::Pending),
        "no call is recorded in flight"
    );
}

#[tokio::test]
async fn a_paused_definition_creates_nothing_and_is_created_once_resumed() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    r.create(paused("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.creates().is_empty(), "no CreateClassificationJob while paused");
    let (_, reason, message) = r.reason("m");
    assert_eq!(reason, "ReconcilePaused");
    assert!(message.contains("\"scan\" is not created"), "{message}");
    let mut o = r.get("m").unwrap();
    o.metadata.annotations = None;
    r.kube.put(serde_json::to_value(&o).unwrap(), "maciejobs");
    r.reconcile("m", 3).await;
    assert_eq!(macie.creates().len(), 1);
}

/// A MacieJob in managementPolicy Observe.
fn observing(name: &str, mut spec: Value) -> Value {
    spec["managementPolicy"] = json!("Observe");
    object(name, spec)
}

#[tokio::test]
async fn an_observed_job_that_differs_is_drifted_and_never_called() {
    let (mut r, macie) = one_job(
        "n",
        "RUNNING",
        observing("m", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})),
    )
    .await;
    r.reconcile("m", 3).await;
    assert!(macie.updates().is_empty(), "Observe never writes");
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Stalled", "Drifted"));
    assert!(
        message.contains("RUNNING") && message.contains("USER_PAUSED"),
        "{message}"
    );
    assert_eq!(r.get("m").unwrap().status.unwrap().job.unwrap().job_status, "RUNNING");
    // Macie moves to what is declared (out of band): Ready.
    macie.set_status(REGION, "j1", "USER_PAUSED");
    r.sweeps(2).await;
    r.reconcile("m", 1).await;
    assert_eq!(r.reason("m").1, "Converged");
    assert!(macie.updates().is_empty());
}

#[tokio::test]
async fn an_observed_job_without_a_status_is_reported_as_it_is() {
    let (mut r, _) = one_job("n", "USER_PAUSED", observing("m", json!({"jobName": "n"}))).await;
    r.reconcile("m", 2).await;
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Ready", "Converged"), "{message}");
    assert!(message.contains("USER_PAUSED"), "{message}");
}

#[tokio::test]
async fn an_observed_definition_creates_nothing() {
    let macie = Arc::new(FakeMacie::default());
    let mut r = creating_rig(macie.clone());
    r.create(observing("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 3).await;
    assert!(macie.creates().is_empty(), "Observe never creates");
    assert_eq!(r.reason("m").1, "JobNotFound");
}

#[tokio::test]
async fn a_paused_or_observe_declaration_holds_no_one_in_conflict() {
    type Declare = fn(&str, Value) -> Value;
    let quiet: [(&str, Declare); 2] = [("paused", paused), ("Observe", observing)];
    for (what, declare) in quiet {
        let macie = Arc::new(FakeMacie::default());
        macie.put(REGION, "j1", "shared", "RUNNING");
        let mut r = rig(macie.clone());
        r.create(object("a", json!({"jobId": "j1", "jobStatus": "USER_PAUSED"})));
        r.create(declare("b", json!({"jobName": "shared", "jobStatus": "RUNNING"})));
        r.sweeps(1).await;
        for _ in 0..5 {
            r.reconcile("a", 1).await;
            r.reconcile("b", 1).await;
        }
        assert_eq!(macie.updates().len(), 1, "{what}: the declaration that acts, once");
        assert_ne!(r.reason("a").1, "Conflict", "{what}");
    }
}

#[tokio::test]
async fn an_observed_definition_names_each_setting_that_differs() {
    let macie = Arc::new(FakeMacie::default());
    macie.put(REGION, "j1", "scan", "RUNNING");
    let settings = json!({
        "jobType": "ONE_TIME",
        "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b1", "b2"]}]},
    });
    macie.put_settings("j1", settings);
    let mut r = creating_rig(macie.clone());
    r.create(observing("m", definition("scan", "RUNNING")));
    r.sweeps(1).await;
    r.reconcile("m", 2).await;
    let (phase, reason, message) = r.reason("m");
    assert_eq!((phase.as_str(), reason.as_str()), ("Stalled", "Drifted"));
    assert!(message.contains("s3JobDefinition.bucketDefinitions"), "{message}");
    assert!(
        macie.creates().is_empty() && macie.updates().is_empty(),
        "Observe never writes"
    );
    // The same settings: Ready.
    macie.put_settings(
        "j1",
        json!({"jobType": "ONE_TIME", "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b1"]}]}}),
    );
    let mut o = r.get("m").unwrap();
    o.metadata.labels = Some([("look".to_string(), "again".to_string())].into());
    r.kube.put(serde_json::to_value(&o).unwrap(), "maciejobs");
    r.reconcile("m", 1).await;
    assert_eq!(r.reason("m").1, "Converged");
}
