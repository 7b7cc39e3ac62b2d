//! Reconcile steps against in-process fakes (the middle test layer): a fake API server
//! capturing every write, and either an engine whose view the test sets (no engine task runs,
//! no Macie call is made) or the real engine against the fake discovery API. A scenario takes
//! milliseconds.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::account::testing::Fed;
use crate::api::conditions;
use crate::api::macie_account::{DiscoveryRules, JobRules};
use crate::api::{DiscoveryStatus, MacieAccountSpec};
use crate::macie::fake_discovery::{FakeDiscovery, Fault};
use crate::runtime::fake_kube::{FakeKube, path_of};

const REGION: &str = "us-east-1";
const PLURAL: &str = "maciediscoveries";
const MEMBER: &str = "111111111111";

struct Rig {
    _fed: Fed,
    kube: FakeKube,
    ctx: Context,
    writer: Writer<MacieDiscovery>,
    /// The engine's view, as the test sets it.
    view: watch::Sender<Arc<View>>,
    /// Kicks the reconciles sent to the engine.
    kicks: mpsc::UnboundedReceiver<()>,
}

/// The rig with the real engine, against the fake discovery API.
struct EngineRig {
    rig: Rig,
    macie: Arc<FakeDiscovery>,
}

fn place() -> Place {
    Place::new("default", REGION)
}

/// The place's engine is the test: its view is set by hand, its kicks are counted.
fn rig() -> Rig {
    let clients = MacieClients::new(aws_config::SdkConfig::builder().build(), None);
    let mut r = rig_with(clients);
    let (view, view_rx) = watch::channel(Arc::new(View::default()));
    let (kick, kicks) = mpsc::unbounded_channel();
    r.ctx.engines.regions.get_or_start(
        &place(),
        |_| true,
        |_| {
            let engine = RegionEngine { kick, view: view_rx };
            (engine, tokio::spawn(std::future::pending()))
        },
    );
    (r.view, r.kicks) = (view, kicks);
    r
}

/// The place's engine runs, against the fake discovery API (started by the first reconcile).
fn engine_rig() -> EngineRig {
    let macie = Arc::new(FakeDiscovery::default());
    let clients = MacieClients::new(aws_config::SdkConfig::builder().build(), None)
        .with_discovery_api(macie.clone() as Arc<dyn crate::macie::discovery::DiscoveryApi>);
    let rig = rig_with(clients);
    // The watch has listed the resources.
    rig.ctx.engines.store_ready.send_replace(true);
    EngineRig { rig, macie }
}

fn rig_with(clients: MacieClients) -> Rig {
    let mut fed = Fed::new("default");
    fed.put_verified(
        "default",
        MacieAccountSpec {
            role_arn: None,
            external_id: None,
            regions: vec![REGION.into()],
            namespace_selector: Default::default(),
            jobs: JobRules::default(),
            discovery: DiscoveryRules {
                account_ids: vec!["*".into()],
                ..DiscoveryRules::default()
            },
        },
    );
    fed.put_namespace("ns", &[]);
    let kube = FakeKube::default();
    let client = kube.client();
    let clients = Arc::new(clients);
    let (store, writer) = reflector::store::<MacieDiscovery>();
    let config = Config {
        default_region: REGION.into(),
        poll_interval: Duration::from_secs(60),
        batch_window: Duration::from_millis(10),
        plan: Settings {
            step_timeout: Duration::from_secs(30),
            error_retry: Duration::from_secs(3600),
            batch_size: DEFAULT_BATCH_SIZE,
        },
        namespace: None,
        instance: None,
    };
    let trigger = futures::channel::mpsc::unbounded().0;
    let engines = Arc::new(Engines::new(clients, fed.tenancy.clone(), config, store, trigger));
    // Unused unless `rig` stands in for the engine.
    let view = watch::channel(Arc::new(View::default())).0;
    let kicks = mpsc::unbounded_channel().1;
    let ctx = Context {
        recorder: Recorder::new(client.clone(), MANAGER, None),
        client,
        engines,
        memory: Arc::default(),
    };
    Rig {
        _fed: fed,
        kube,
        ctx,
        writer,
        view,
        kicks,
    }
}

fn object(name: &str, region: Option<&str>, accounts: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1",
        "kind": "MacieDiscovery",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "accounts": accounts.iter().map(|(id, s)| json!({"accountId": id, "status": s})).collect::<Vec<_>>(),
            "region": region,
        },
    })
}

impl Rig {
    /// Creates the resource in the fake API server and the controller's cache; returns the
    /// copy as created.
    fn create(&mut self, obj: Value) -> MacieDiscovery {
        self.kube.put(obj.clone(), PLURAL);
        let created = self.get(obj["metadata"]["name"].as_str().unwrap()).expect("created");
        self.writer.apply_watcher_event(&watcher::Event::Apply(created.clone()));
        created
    }

    /// The resource as the API server holds it.
    fn get(&self, name: &str) -> Option<MacieDiscovery> {
        let path = path_of(&object(name, None, &[]), PLURAL);
        self.kube
            .get(&path)
            .map(|v| serde_json::from_value(v).expect("a MacieDiscovery"))
    }

    /// The engine has taken in every cached declaration, and observed each account as
    /// `observed` shows it.
    fn engine_shows(&self, observed: &[(&str, DiscoveryStatus)]) {
        let env = self.ctx.engines.as_ref();
        let declared: Vec<Declared> = env
            .store
            .state()
            .iter()
            .map(|o| Declared {
                resource: key(o),
                taken: taken_in(o),
                accounts: o
                    .spec
                    .accounts
                    .iter()
                    .map(|a| (a.account_id.clone(), a.status))
                    .collect(),
                acts: true,
            })
            .collect();
        let mut view = View::default();
        view.take_in(&declared);
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        for (id, s) in observed {
            view.accounts.insert(
                id.to_string(),
                AccountState {
                    observed: Some(*s),
                    observed_at: Some(at),
                    ..Default::default()
                },
            );
        }
        view.observed_at = Some(at);
        self.view.send_replace(Arc::new(view));
    }

    async fn reconcile(&self, obj: &MacieDiscovery) -> Next {
        reconcile::reconcile_inner(obj, &self.ctx).await.expect("reconcile")
    }

    /// The Ready condition's reason.
    fn reason(&self, name: &str) -> String {
        let st = self.get(name).and_then(|o| o.status).expect("a status");
        conditions::find(&st.conditions, conditions::READY)
            .expect("Ready")
            .reason
            .clone()
    }
}

#[tokio::test]
async fn a_copy_older_than_the_own_last_write_writes_nothing() {
    let mut r = rig();
    let created = r.create(object("d", None, &[(MEMBER, "ENABLED")]));
    r.engine_shows(&[(MEMBER, DiscoveryStatus::Enabled)]);
    assert_eq!(r.reconcile(&created).await, Next::AwaitChange);
    assert_eq!(r.reason("d"), "Converged");
    assert_eq!(r.kube.status_writes().len(), 1);
    // The cache still holds the copy from before that write (its watch event not yet in):
    // a status built from it would undo the write (its transition times among others).
    let writes = r.kube.writes().len();
    let next = r.reconcile(&created).await;
    assert_eq!(r.kube.writes().len(), writes, "nothing written from the older copy");
    assert_eq!(
        next,
        Next::After(crate::runtime::memory::OWN_WRITE_WAIT),
        "waits for the newer copy"
    );
    // The copy the API server holds is reconciled as usual: nothing changed, nothing written.
    let current = r.get("d").unwrap();
    assert_eq!(r.reconcile(&current).await, Next::AwaitChange);
    assert_eq!(r.kube.writes().len(), writes);
    // What the engine shows next is written from the current copy, keeping what it holds.
    r.engine_shows(&[(MEMBER, DiscoveryStatus::Disabled)]);
    r.reconcile(&current).await;
    assert_eq!(r.reason("d"), "Pending");
    assert_eq!(r.kube.status_writes().len(), 2);
}

#[tokio::test]
async fn a_copy_older_than_the_own_last_write_writes_no_refusal_either() {
    let mut r = rig();
    let created = r.create(object("d", Some("eu-west-1"), &[(MEMBER, "ENABLED")]));
    assert_eq!(r.reconcile(&created).await, Next::AwaitChange);
    assert_eq!(r.reason("d"), "RegionNotAllowed");
    let writes = r.kube.writes().len();
    let next = r.reconcile(&created).await;
    assert_eq!(r.kube.writes().len(), writes, "nothing written from the older copy");
    assert_eq!(next, Next::After(crate::runtime::memory::OWN_WRITE_WAIT));
}

#[tokio::test]
async fn a_version_the_engine_has_not_taken_in_is_not_reported_and_kicks_the_engine() {
    let mut r = rig();
    let created = r.create(object("d", None, &[(MEMBER, "ENABLED")]));
    assert_eq!(r.reconcile(&created).await, Next::AwaitChange);
    assert!(
        r.kube.writes().is_empty(),
        "nothing reported before the engine took it in"
    );
    assert!(r.kicks.try_recv().is_ok(), "the engine was kicked");
    r.engine_shows(&[]);
    r.reconcile(&created).await;
    assert_eq!(r.reason("d"), "Pending");
    assert!(r.kicks.try_recv().is_err(), "no kick once taken in");
}

#[tokio::test]
async fn failures_back_off_until_a_reconcile_succeeds_and_go_with_the_resource() {
    let mut r = rig();
    let created = r.create(object("d", None, &[(MEMBER, "ENABLED")]));
    // In the cache, no longer in the API server (deleted meanwhile): its status write fails.
    let mut other: MacieDiscovery = serde_json::from_value(object("gone", None, &[(MEMBER, "ENABLED")])).unwrap();
    other.metadata.resource_version = Some("1".into());
    r.writer.apply_watcher_event(&watcher::Event::Apply(other.clone()));
    r.engine_shows(&[(MEMBER, DiscoveryStatus::Enabled)]);
    for _ in 0..2 {
        let err = reconcile::reconcile_inner(&other, &r.ctx)
            .await
            .expect_err("no such object");
        assert!(matches!(r.ctx.memory.retry(&other, &err), Next::After(_)));
    }
    assert_eq!(r.ctx.memory.failures(&other), 2);
    r.ctx.memory.retry(&created, &"boom");
    r.reconcile(&created).await;
    assert_eq!(r.ctx.memory.failures(&created), 0, "a success starts the backoff over");
    // Deleted: everything kept for it goes, in one place.
    let store = r.ctx.engines.store.clone();
    forget_gone(&r.ctx.memory, &watcher::Event::Delete(created.clone()), &store);
    assert!(!r.ctx.memory.is_behind(&created), "its own last write is forgotten too");
    assert_eq!(r.ctx.memory.len(), 1);
    // A relist drops what the store no longer shows.
    r.writer.apply_watcher_event(&watcher::Event::Delete(other.clone()));
    forget_gone(&r.ctx.memory, &watcher::Event::InitDone, &store);
    assert!(r.ctx.memory.is_empty());
}

impl EngineRig {
    /// Waits (at most 5 s) until the engine's view satisfies `done`.
    async fn until(&self, what: &str, done: impl Fn(&View) -> bool) {
        let mut rx = self.rig.ctx.engines.subscribe(&place());
        let waited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| done(v))).await;
        assert!(matches!(waited, Ok(Ok(_))), "the engine never got to: {what}");
    }
}

/// The account observed in `status`, with no send in flight.
fn settled_at(status: DiscoveryStatus) -> impl Fn(&View) -> bool {
    move |v| {
        v.accounts
            .get(MEMBER)
            .is_some_and(|a| a.observed == Some(status) && a.sent.is_none())
    }
}

#[tokio::test]
async fn the_engine_sends_a_change_once_and_the_status_converges() {
    for (case, fault) in [("answered", None), ("answer lost", Some(Fault::Lost))] {
        let mut e = engine_rig();
        e.macie.put(&place(), MEMBER, DiscoveryStatus::Disabled);
        if let Some(f) = fault {
            e.macie.fail_next_batch(f);
        }
        let created = e.rig.create(object("d", None, &[(MEMBER, "ENABLED")]));
        assert_eq!(
            e.rig.reconcile(&created).await,
            Next::AwaitChange,
            "{case}: starts the engine"
        );
        e.until("the change observed", settled_at(DiscoveryStatus::Enabled))
            .await;
        let batches = e.macie.batches();
        assert_eq!(batches.len(), 1, "{case}: sent once: {batches:?}");
        let row = &batches[0].rows[0];
        assert_eq!(
            (row.status, row.previous),
            (DiscoveryStatus::Enabled, Some(DiscoveryStatus::Disabled))
        );
        e.rig.reconcile(&e.rig.get("d").unwrap()).await;
        assert_eq!(e.rig.reason("d"), "Converged", "{case}");
    }
}

#[tokio::test]
async fn a_change_macie_does_not_show_yet_is_not_sent_again() {
    let mut e = engine_rig();
    e.macie.put(&place(), MEMBER, DiscoveryStatus::Disabled);
    e.macie.delay_visibility(Duration::from_secs(3600));
    let created = e.rig.create(object("d", None, &[(MEMBER, "ENABLED")]));
    e.rig.reconcile(&created).await;
    // The pass that sends, then the confirmation a batch window later, which still shows the
    // old status: in flight (the step timeout is 30 s), not sent again.
    e.until("an observation after the send", |v| {
        v.accounts
            .get(MEMBER)
            .and_then(|a| Some(a.observed_at? > a.sent.as_ref()?.at))
            .unwrap_or(false)
    })
    .await;
    let v = e.rig.ctx.engines.subscribe(&place()).borrow().clone();
    let a = &v.accounts[MEMBER];
    assert_eq!(a.observed, Some(DiscoveryStatus::Disabled));
    assert!(a.sent.is_some(), "still in flight: {a:?}");
    assert_eq!(e.macie.batches().len(), 1);
    assert_eq!(e.macie.lists(), 2, "the first observation and the confirmation");
}

#[tokio::test]
async fn a_first_write_from_a_copy_older_than_the_api_servers_is_held_back() {
    let mut r = rig();
    let created = r.create(object("d", None, &[(MEMBER, "ENABLED")]));
    r.engine_shows(&[(MEMBER, DiscoveryStatus::Enabled)]);
    // The API server moved on (another process wrote its status) while this new process's
    // cache, listed from a lagging API server, still holds the created copy.
    let path = path_of(&object("d", None, &[]), PLURAL);
    r.kube.edit(&path, |o| o["metadata"]["labels"] = json!({"moved": "on"}));
    let err = reconcile::reconcile_inner(&created, &r.ctx)
        .await
        .expect_err("an older copy is not written from");
    assert!(
        format!("{err:?}").contains("409"),
        "the API server refused the precondition: {err:?}"
    );
    assert!(r.kube.writes().is_empty(), "nothing written, and no Warning Event");
    // The newer copy is written from (and the next write needs no precondition).
    let current = r.get("d").unwrap();
    assert_eq!(r.reconcile(&current).await, Next::AwaitChange);
    assert_eq!(r.reason("d"), "Converged");
    assert_eq!(r.kube.status_writes().len(), 1);
}

#[tokio::test]
async fn a_paused_discovery_is_observed_sends_nothing_and_sends_once_resumed() {
    let mut e = engine_rig();
    e.macie.put(&place(), MEMBER, DiscoveryStatus::Disabled);
    let mut obj = object("d", None, &[(MEMBER, "ENABLED")]);
    obj["metadata"]["annotations"] = json!({ crate::api::PAUSED_ANNOTATION: "true" });
    let created = e.rig.create(obj);
    e.rig.reconcile(&created).await;
    e.until("the account observed", |v| {
        v.accounts
            .get(MEMBER)
            .is_some_and(|a| a.observed == Some(DiscoveryStatus::Disabled))
    })
    .await;
    e.rig.reconcile(&e.rig.get("d").unwrap()).await;
    assert_eq!(e.rig.reason("d"), "ReconcilePaused");
    let st = e.rig.get("d").unwrap().status.unwrap();
    let paused = conditions::find(&st.conditions, conditions::PAUSED).expect("Paused");
    assert_eq!(paused.status, "True");
    assert_eq!(
        st.accounts[0].observed.as_deref(),
        Some("DISABLED"),
        "observation goes on"
    );
    assert!(e.macie.batches().is_empty(), "nothing sent while paused");
    // Resumed: the watch event kicks the engine, which sends once.
    let mut resumed = e.rig.get("d").unwrap();
    resumed.metadata.annotations = None;
    e.rig.kube.put(serde_json::to_value(&resumed).unwrap(), PLURAL);
    let resumed = e.rig.get("d").unwrap();
    e.rig
        .writer
        .apply_watcher_event(&watcher::Event::Apply(resumed.clone()));
    e.rig.ctx.engines.on_event(&watcher::Event::Apply(resumed));
    e.until("the change observed", settled_at(DiscoveryStatus::Enabled))
        .await;
    assert_eq!(e.macie.batches().len(), 1);
    e.rig.reconcile(&e.rig.get("d").unwrap()).await;
    assert_eq!(e.rig.reason("d"), "Converged");
}
