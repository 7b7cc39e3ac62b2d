//! The MacieDiscovery controller. Per place (MacieAccount and region), one engine task observes the declared accounts
//! (ListAutomatedDiscoveryAccounts) and coalesces the changes every MacieDiscovery asks for into
//! BatchUpdateAutomatedDiscoveryAccounts calls; reconciles only project the engine's view into
//! each resource's status.
//!
//! The controller owns its watch stream: every event (deletions included) tells the engines
//! whose view it changes, so that deleting one side of a conflict lets the other converge at
//! once. An engine keeps state only for declared accounts and existing resources, and stops when
//! no MacieDiscovery names its region any more (the next reconcile for the region starts it
//! again).

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::events::Recorder;
use futures::TryStreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::account::policy::{self, Refusal};
use crate::account::users::UserKind;
use crate::account::{Admitted, Change, Tenancy};
use crate::api::conditions;
use crate::api::{DiscoveryStatus, MacieDiscovery, MacieDiscoveryStatus};
use crate::macie::{MacieClients, MacieError, Place, discovery as calls};
use crate::runtime::gate::WriteGate;
use crate::runtime::metrics::Metrics;
use crate::runtime::regions::{RegionTasks, Retire};
use crate::runtime::status::{self, api_time};
use crate::runtime::{Error, Failures, MANAGER, backoff};
use plan::{AccountError, AccountState, Declared, DesiredSet, Sent, Settings, TakenIn};

/// Settings of the MacieDiscovery controller.
#[derive(Debug, Clone)]
pub struct Config {
    pub default_region: String,
    /// Time between observations of the declared accounts.
    pub poll_interval: Duration,
    /// How long changes are gathered before they are sent.
    pub batch_window: Duration,
    pub plan: Settings,
    pub namespace: Option<String>,
    pub instance: Option<String>,
}

/// Default accounts per BatchUpdateAutomatedDiscoveryAccounts call. The API publishes no
/// limit; 100 keeps a request small (about 6 KB) and a failed call costs one retry of at most
/// 100 accounts, while 5,000 changes still take only 50 calls.
pub const DEFAULT_BATCH_SIZE: usize = 100;

/// What an engine knows of its region.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub desired: DesiredSet,
    /// The resources `desired` was built from, and which version of each.
    pub resources: BTreeMap<String, TakenIn>,
    pub accounts: HashMap<String, AccountState>,
    /// Error of the latest call (observation or batch), cleared by the next success.
    pub api_error: Option<MacieError>,
    /// Start of the latest observation of every declared account.
    pub observed_at: Option<Timestamp>,
    /// Passes the engine has made.
    pub passes: u64,
}

impl View {
    /// Whether every resource's status computed from `self` equals the one computed from
    /// `other` (observation times and sends in flight are not shown).
    fn shows_like(&self, other: &View) -> bool {
        self.desired == other.desired
            && self.resources == other.resources
            && self.api_error == other.api_error
            && self.accounts.len() == other.accounts.len()
            && self
                .accounts
                .iter()
                .all(|(id, a)| other.accounts.get(id).is_some_and(|b| a.shows_like(b)))
    }

    /// Takes in the declarations: the desired set, which resource versions it comes from, and
    /// no state for accounts nobody declares any more.
    fn take_in(&mut self, declared: &[Declared]) {
        self.desired = plan::desired_set(declared);
        self.resources = declared.iter().map(|d| (d.resource.clone(), d.taken.clone())).collect();
        let ids = self.desired.account_ids();
        self.accounts.retain(|id, _| ids.binary_search(id).is_ok());
    }
}

type Trigger = futures::channel::mpsc::UnboundedSender<ObjectRef<MacieDiscovery>>;
/// What a reconcile gets of a region's engine: its kick channel and its view.
#[derive(Clone)]
struct RegionEngine {
    kick: mpsc::UnboundedSender<()>,
    view: watch::Receiver<Arc<View>>,
}

/// One engine per place, started on first use and stopped when no admitted resource uses the
/// place.
pub struct Engines {
    clients: Arc<MacieClients>,
    tenancy: Arc<Tenancy>,
    config: Config,
    store: Store<MacieDiscovery>,
    /// Set once the watch has listed every resource into the store.
    store_ready: watch::Sender<bool>,
    trigger: Trigger,
    regions: RegionTasks<RegionEngine>,
}

impl Engines {
    fn region_of<'a>(&'a self, obj: &'a MacieDiscovery) -> &'a str {
        region_of(obj, &self.config.default_region)
    }

    /// Where a resource's calls would go (whether or not it is admitted).
    fn place_of(&self, obj: &MacieDiscovery) -> Place {
        place_of(obj, &self.tenancy, &self.config.default_region)
    }

    /// Whether the resource's MacieAccount admits it (namespace, region, credentials).
    fn admit(&self, obj: &MacieDiscovery) -> Result<Admitted, Refusal> {
        admit(obj, &self.tenancy, &self.config.default_region)
    }

    /// The place's engine, started when none runs.
    fn engine(&self, place: &Place) -> (mpsc::UnboundedSender<()>, watch::Receiver<Arc<View>>) {
        let e = self.regions.get_or_start(
            place,
            |e| !e.kick.is_closed(),
            |retire| {
                let (kick_tx, kick_rx) = mpsc::unbounded_channel();
                let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
                let env = EngineEnv {
                    place: place.clone(),
                    clients: self.clients.clone(),
                    tenancy: self.tenancy.clone(),
                    metrics: self.clients.metrics().clone(),
                    gate: self.clients.gate().clone(),
                    config: self.config.clone(),
                    store: self.store.clone(),
                    trigger: self.trigger.clone(),
                    retire,
                };
                let task = tokio::spawn(engine_loop(env, self.store_ready.subscribe(), kick_rx, view_tx));
                (
                    RegionEngine {
                        kick: kick_tx,
                        view: view_rx,
                    },
                    task,
                )
            },
        );
        (e.kick, e.view)
    }

    /// The place's view (starting its engine when none runs; an engine for a place no
    /// resource uses stops after its first pass).
    pub fn subscribe(&self, place: &Place) -> watch::Receiver<Arc<View>> {
        self.engine(place).1
    }

    /// Regions with a running engine, sorted.
    pub fn running(&self) -> Vec<String> {
        self.regions.places().into_iter().map(|p| p.region).collect()
    }

    /// Places with a running engine, sorted.
    pub fn places(&self) -> Vec<Place> {
        self.regions.places()
    }

    /// Kicks the running engines for which `affected(place, view)` holds.
    fn kick_where(&self, affected: impl Fn(&Place, &View) -> bool) {
        for (region, e) in self.regions.handles() {
            if affected(&region, &e.view.borrow()) {
                let _ = e.kick.send(());
            }
        }
    }

    /// A watch event: wakes the engines whose view it changes.
    fn on_event(&self, event: &watcher::Event<MacieDiscovery>) {
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let key = key(o);
                let place = self.place_of(o);
                let version = (o.meta().deletion_timestamp.is_none()).then(|| taken_in(o));
                self.kick_where(|p, view| {
                    let held = view.resources.get(&key);
                    if *p == place {
                        held != version.as_ref()
                    } else {
                        // It moved to another place.
                        held.is_some()
                    }
                });
            }
            watcher::Event::Delete(o) => {
                let key = key(o);
                self.kick_where(|_, view| view.resources.contains_key(&key));
            }
            watcher::Event::InitDone => {
                // A (re)list: resources deleted meanwhile are gone from the store.
                self.store_ready.send_replace(true);
                self.kick_where(|_, _| true);
            }
            watcher::Event::Init => {}
        }
    }
}

fn region_of<'a>(obj: &'a MacieDiscovery, default_region: &'a str) -> &'a str {
    obj.spec.region.as_deref().unwrap_or(default_region)
}

fn place_of(obj: &MacieDiscovery, tenancy: &Tenancy, default_region: &str) -> Place {
    Place::new(
        tenancy.account_name(obj.spec.account_ref.as_ref()),
        region_of(obj, default_region),
    )
}

fn admit(obj: &MacieDiscovery, tenancy: &Tenancy, default_region: &str) -> Result<Admitted, Refusal> {
    tenancy.admit(
        &obj.namespace().unwrap_or_default(),
        obj.spec.account_ref.as_ref(),
        region_of(obj, default_region),
    )
}

/// The rows of a resource its account's discovery rules refuse, by member account id.
fn refused_rows(obj: &MacieDiscovery, admitted: &Admitted) -> BTreeMap<String, Refusal> {
    obj.spec
        .accounts
        .iter()
        .filter_map(|a| {
            policy::discovery_allowed(
                &admitted.place.account,
                &admitted.account.spec.discovery,
                &a.account_id,
                a.status,
            )
            .err()
            .map(|r| (a.account_id.clone(), r))
        })
        .collect()
}

fn key(o: &MacieDiscovery) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn taken_in(o: &MacieDiscovery) -> TakenIn {
    TakenIn {
        uid: o.uid().unwrap_or_default(),
        generation: o.meta().generation.unwrap_or_default(),
    }
}

/// What an engine works with.
struct EngineEnv {
    place: Place,
    clients: Arc<MacieClients>,
    tenancy: Arc<Tenancy>,
    metrics: Arc<Metrics>,
    gate: WriteGate,
    config: Config,
    store: Store<MacieDiscovery>,
    trigger: Trigger,
    retire: Retire<RegionEngine>,
}

impl EngineEnv {
    /// The declarations of the place's admitted resources (those being deleted excluded), by
    /// key, without the rows their account's rules refuse.
    fn declared(&self) -> Vec<Declared> {
        let default_region = &self.config.default_region;
        let mut out: Vec<Declared> = self
            .store
            .state()
            .iter()
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .filter_map(|o| {
                let admitted = admit(o, &self.tenancy, default_region).ok()?;
                (admitted.place == self.place).then(|| {
                    let refused = refused_rows(o, &admitted);
                    Declared {
                        resource: key(o),
                        taken: taken_in(o),
                        accounts: o
                            .spec
                            .accounts
                            .iter()
                            .filter(|a| !refused.contains_key(&a.account_id))
                            .map(|a| (a.account_id.clone(), a.status))
                            .collect(),
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| a.resource.cmp(&b.resource));
        out
    }

    /// Removes this engine when no resource names its region; true when it did. Checked under
    /// the registry's lock, so a reconcile either finds this engine still serving or starts a new one.
    fn retire_if_unused(&self) -> bool {
        self.retire.retire_if(|| self.declared().is_empty())
    }

    /// Publishes `view` to the reconciles, and triggers the region's resources when their
    /// status would change.
    fn publish(&self, view: &View, shown: &mut Arc<View>, tx: &watch::Sender<Arc<View>>) {
        let changed = !view.shows_like(shown);
        *shown = Arc::new(view.clone());
        tx.send_replace(shown.clone());
        if changed {
            for obj in self.store.state() {
                if place_of(&obj, &self.tenancy, &self.config.default_region) == self.place {
                    let _ = self.trigger.unbounded_send(ObjectRef::from_obj(&*obj));
                }
            }
        }
    }
}

/// The engine of one region: take in the declarations, observe, send in batches, publish.
async fn engine_loop(
    env: EngineEnv,
    mut store_ready: watch::Receiver<bool>,
    mut kick: mpsc::UnboundedReceiver<()>,
    view_tx: watch::Sender<Arc<View>>,
) {
    let region = &env.place;
    let config = &env.config;
    // Start once the watch has listed the resources.
    if store_ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    tracing::debug!(%region, "discovery engine started");
    let mut view = View::default();
    let mut shown = Arc::new(View::default());
    let mut next_observe = tokio::time::Instant::now();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut throttled = 0u32;
    // Accounts sent and not observed since: confirmed on their own, soon, while the full
    // observation of every declared account runs once per interval.
    let mut confirm: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut confirm_at: Option<tokio::time::Instant> = None;
    // Gather the declarations that arrive together (e.g. a GitOps sync) before the first pass.
    tokio::time::sleep(config.batch_window).await;
    loop {
        let declared = env.declared();
        if declared.is_empty() && env.retire_if_unused() {
            tracing::debug!(%region, "no MacieDiscovery uses the account and region: discovery engine stopped");
            return;
        }
        view.take_in(&declared);
        // Reconciles report on the new declarations at once (Pending until observed).
        env.publish(&view, &mut shown, &view_tx);

        // Every declared account each poll interval; newly declared ones at once; the ones just
        // sent, on their own, a batch window after the send.
        let now = tokio::time::Instant::now();
        let due = now >= next_observe;
        let confirming = confirm_at.is_some_and(|c| now >= c);
        let ids: Vec<String> = view
            .desired
            .account_ids()
            .into_iter()
            .filter(|id| {
                due || view.accounts.get(id).is_none_or(|a| a.observed_at.is_none())
                    || (confirming && confirm.contains(id))
            })
            .collect();
        if !ids.is_empty() {
            observe(&env, &ids, &mut view, due).await;
        }
        if due || confirming {
            confirm.clear();
            confirm_at = None;
        }
        if due {
            next_observe = now + config.poll_interval;
        }

        if retry_at.is_none_or(|r| now >= r) {
            retry_at = None;
            let sent = send(&env, &mut view, &mut throttled).await;
            if let Some(wait) = sent.retry_after {
                retry_at = Some(tokio::time::Instant::now() + wait.min(config.poll_interval));
            }
            if !sent.ids.is_empty() {
                // Confirm soon rather than a whole interval later: those accounts only.
                confirm.extend(sent.ids);
                let at = tokio::time::Instant::now() + config.batch_window;
                confirm_at = Some(confirm_at.map_or(at, |c| c.min(at)));
            }
        }
        view.passes += 1;
        env.publish(&view, &mut shown, &view_tx);

        let wake = [retry_at, confirm_at]
            .into_iter()
            .flatten()
            .fold(next_observe, |w, t| w.min(t));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            k = kick.recv() => {
                if k.is_none() { return; }
                // Coalesce: wait for more changes, then take them all.
                tokio::time::sleep(config.batch_window).await;
                while kick.try_recv().is_ok() {}
            }
        }
    }
}

/// Lists `ids` and records what each shows; `full` when they are every declared account.
async fn observe(env: &EngineEnv, ids: &[String], view: &mut View, full: bool) {
    let started = crate::runtime::clock::now();
    let listed = env
        .clients
        .with_client(&env.place, |c| async move {
            calls::list_accounts(&c, ids, &env.metrics).await
        })
        .await;
    match listed {
        Ok((found, _calls)) => {
            for id in ids {
                let a = view.accounts.entry(id.clone()).or_default();
                a.observed = found.get(id).copied();
                a.observed_at = Some(started);
                plan::settle(a, &env.config.plan);
            }
            if full {
                view.observed_at = Some(started);
            }
            view.api_error = None;
        }
        Err(e) => {
            tracing::warn!(place = %env.place, error = %e, "ListAutomatedDiscoveryAccounts failed");
            view.api_error = Some(e);
        }
    }
}

/// What a send step did.
struct SendStep {
    /// Accounts whose change was (or may have been) processed: to be confirmed.
    ids: Vec<String>,
    /// Throttled: try the rest after this long.
    retry_after: Option<Duration>,
}

/// Sends the accounts that differ from their declaration, in batches, while the write gate
/// allows Macie writes.
async fn send(env: &EngineEnv, view: &mut View, throttled: &mut u32) -> SendStep {
    let region = &env.place;
    let mut step = SendStep {
        ids: Vec::new(),
        retry_after: None,
    };
    let sends = plan::to_send(
        &view.desired,
        &view.accounts,
        crate::runtime::clock::now(),
        &env.config.plan,
    );
    for batch in plan::batches(&sends, env.config.plan.batch_size) {
        if !env.gate.allows_writes() {
            tracing::info!(%region, accounts = batch.len(), "write gate closed (not the leader): BatchUpdateAutomatedDiscoveryAccounts held back");
            break;
        }
        // The MacieAccounts, namespaces and declarations as they are now: a row whose rule
        // was narrowed (or whose resource went) since the pass began is not sent.
        let asked = batch.len();
        let batch = plan::still_declared(batch, &env.declared());
        if batch.len() < asked {
            tracing::info!(%region, held_back = asked - batch.len(), "rows no longer declared or allowed: not sent");
        }
        if batch.is_empty() {
            continue;
        }
        let at = crate::runtime::clock::now();
        log_write(env, &batch);
        let sent = env
            .clients
            .with_client(&env.place, |c| {
                let batch = &batch;
                async move { calls::batch_update(&c, batch, &env.metrics).await }
            })
            .await;
        match sent {
            Ok(errors) => {
                *throttled = 0;
                view.api_error = None;
                let failed: HashMap<String, String> = errors.into_iter().collect();
                for (id, status) in &batch {
                    let a = view.accounts.entry(id.clone()).or_default();
                    match failed.get(id) {
                        Some(code) => {
                            a.error = Some(AccountError {
                                status: *status,
                                code: code.clone(),
                                message: String::new(),
                                at,
                            });
                        }
                        None => {
                            step.ids.push(id.clone());
                            a.sent = Some(Sent {
                                status: *status,
                                from: a.observed,
                                at,
                            });
                            a.error = None;
                        }
                    }
                }
            }
            Err(e @ MacieError::Throttled { .. }) => {
                // Not processed: keep the rest for a retry after a jittered backoff.
                *throttled += 1;
                tracing::debug!(%region, error = %e, "BatchUpdateAutomatedDiscoveryAccounts throttled");
                view.api_error = Some(e);
                step.retry_after = Some(backoff(*throttled));
                break;
            }
            Err(e @ MacieError::Uncertain { .. }) => {
                // It may have taken effect: treat as sent, an observation settles it.
                tracing::warn!(%region, error = %e, "BatchUpdateAutomatedDiscoveryAccounts outcome unknown");
                for (id, status) in &batch {
                    step.ids.push(id.clone());
                    let a = view.accounts.entry(id.clone()).or_default();
                    a.sent = Some(Sent {
                        status: *status,
                        from: a.observed,
                        at,
                    });
                }
                view.api_error = Some(e);
            }
            Err(e) => {
                tracing::warn!(%region, error = %e, "BatchUpdateAutomatedDiscoveryAccounts failed");
                for (id, status) in &batch {
                    view.accounts.entry(id.clone()).or_default().error = Some(AccountError {
                        status: *status,
                        code: e.code().to_string(),
                        message: format!("{e}"),
                        at,
                    });
                }
                view.api_error = Some(e);
            }
        }
    }
    step
}

/// Logs an AWS write: where it goes, the accounts it changes, and the resources that ask.
fn log_write(env: &EngineEnv, batch: &[(String, DiscoveryStatus)]) {
    let ids: std::collections::BTreeSet<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
    let resources: Vec<String> = env
        .store
        .state()
        .iter()
        .filter(|o| place_of(o, &env.tenancy, &env.config.default_region) == env.place)
        .filter(|o| o.spec.accounts.iter().any(|a| ids.contains(a.account_id.as_str())))
        .map(|o| {
            format!(
                "{}/{} ({})",
                o.namespace().unwrap_or_default(),
                o.name_any(),
                o.uid().unwrap_or_default()
            )
        })
        .collect();
    tracing::info!(
        account = %env.place.account,
        region = %env.place.region,
        operation = "BatchUpdateAutomatedDiscoveryAccounts",
        accounts = ?batch.iter().map(|(id, s)| format!("{id}={}", s.as_str())).collect::<Vec<_>>(),
        resources = ?resources,
        "AWS write"
    );
}

struct Context {
    client: kube::Client,
    engines: Arc<Engines>,
    recorder: Recorder,
    failures: Arc<Failures<MacieDiscovery>>,
}

impl Context {
    fn status_writer<'a>(&'a self, api: &'a Api<MacieDiscovery>) -> status::Writer<'a, MacieDiscovery> {
        status::Writer {
            api,
            recorder: &self.recorder,
            metrics: self.engines.clients.metrics(),
        }
    }
}

/// The MacieDiscovery controller, built and ready to run.
pub struct DiscoveryController {
    controller: Controller<MacieDiscovery>,
    trigger_rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<MacieDiscovery>>,
    ctx: Arc<Context>,
}

impl DiscoveryController {
    pub fn new(
        client: kube::Client,
        clients: Arc<MacieClients>,
        tenancy: Arc<Tenancy>,
        config: Config,
    ) -> DiscoveryController {
        let api: Api<MacieDiscovery> = crate::runtime::scoped_api(client.clone(), config.namespace.as_deref());
        let (store, writer) = reflector::store();
        let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
        let recorder = Recorder::new(client.clone(), MANAGER, config.instance.clone());
        let engines = Arc::new(Engines {
            clients,
            tenancy: tenancy.clone(),
            store: store.clone(),
            store_ready: watch::channel(false).0,
            trigger: trigger_tx,
            regions: RegionTasks::default(),
            config,
        });
        let failures: Arc<Failures<MacieDiscovery>> = Arc::default();
        let (e, f, s) = (engines.clone(), failures.clone(), store.clone());
        // The MacieAccount controller counts each account's users from this cache.
        let users = tenancy.user_feed(
            UserKind::MacieDiscovery,
            engines.config.namespace.clone(),
            store.clone(),
            |o| o.spec.account_ref.as_ref(),
        );
        let users_before = users.clone();
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(crate::runtime::slim)
            .inspect_ok(move |event| users_before.before_reflect(event))
            .reflect(writer)
            .inspect_ok(move |event| {
                users.after_reflect(event);
                e.on_event(event);
                status::forget_deleted(e.clients.metrics(), event, &s);
                if let watcher::Event::Delete(o) = event {
                    // No state for deleted resources.
                    f.clear(o);
                }
            })
            .touched_objects();
        {
            // A MacieAccount or a namespace changed: the engines take in the declarations again
            // and the resources it concerns are decided again.
            let (engines, store) = (Arc::downgrade(&engines), store.clone());
            tenancy.subscribe(move |change: &Change| {
                let Some(engines) = engines.upgrade() else { return };
                engines.kick_where(|_, _| true);
                for o in store.state() {
                    if engines
                        .tenancy
                        .affects(change, &o.namespace().unwrap_or_default(), o.spec.account_ref.as_ref())
                    {
                        let _ = engines.trigger.unbounded_send(ObjectRef::from_obj(&*o));
                    }
                }
            });
        }
        let controller = Controller::for_stream(events, store);
        DiscoveryController {
            controller,
            trigger_rx,
            ctx: Arc::new(Context {
                recorder,
                client,
                engines,
                failures,
            }),
        }
    }

    pub fn engines(&self) -> Arc<Engines> {
        self.ctx.engines.clone()
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        // Decisions need every MacieAccount and namespace.
        let mut shutdown = Box::pin(shutdown);
        if !self.ctx.engines.tenancy.ready_or(shutdown.as_mut()).await {
            return;
        }
        crate::runtime::drive(
            self.controller
                .reconcile_on(self.trigger_rx)
                .graceful_shutdown_on(shutdown)
                .run(reconcile, error_policy, self.ctx),
        )
        .await;
    }
}

fn error_policy(obj: Arc<MacieDiscovery>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.failures.retry(&obj, err)
}

async fn reconcile(obj: Arc<MacieDiscovery>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t = std::time::Instant::now();
    let r = reconcile_inner(&obj, &ctx).await;
    let metrics = ctx.engines.clients.metrics();
    metrics.reconciled("MacieDiscovery", t.elapsed(), r.as_ref().err().map(Error::category));
    r
}

/// A resource its MacieAccount refuses as a whole: no Macie call, no engine; the status says
/// which rule refused (Stalled, with an Event on entering it) and shows nothing observed.
async fn refused(ctx: &Context, obj: &MacieDiscovery, region: &str, refusal: &Refusal) -> Result<Action, Error> {
    let prev = obj.status.as_ref();
    let summary = refusal.reason().summary(refusal.message());
    let generation = obj.meta().generation;
    let status = MacieDiscoveryStatus {
        observed_generation: generation,
        conditions: conditions::conditions(
            &summary,
            generation,
            prev.map_or(&[][..], |p| &p.conditions),
            api_time(crate::runtime::clock::now()).0,
        ),
        region: Some(region.to_string()),
        ..Default::default()
    };
    let api: Api<MacieDiscovery> = crate::runtime::object_api(ctx.client.clone(), obj);
    status::write(ctx.status_writer(&api), obj, prev, &status).await?;
    ctx.failures.clear(obj);
    Ok(Action::await_change())
}

async fn reconcile_inner(obj: &Arc<MacieDiscovery>, ctx: &Arc<Context>) -> Result<Action, Error> {
    if obj.meta().deletion_timestamp.is_some() {
        // Deleting a MacieDiscovery leaves the accounts as they are.
        return Ok(Action::await_change());
    }
    let engines = &ctx.engines;
    let region = engines.region_of(obj).to_string();
    tracing::debug!(name = %obj.name_any(), %region, "reconcile MacieDiscovery");
    // Tenancy, before any other step: the account must admit the resource; rows its rules
    // refuse are reported, the others proceed.
    let admitted = match engines.admit(obj) {
        Ok(a) => a,
        Err(refusal) => return refused(ctx, obj, &region, &refusal).await,
    };
    ctx.engines
        .clients
        .use_account(&admitted.place.account, admitted.role());
    let refused = refused_rows(obj, &admitted);
    let (kick, view_rx) = engines.engine(&admitted.place);
    let view = view_rx.borrow().clone();
    let resource = key(obj);
    let Some(generation) =
        plan::taken_generation(&view.resources, &resource, obj.uid().as_deref(), obj.meta().generation)
    else {
        // The engine has not taken this version in: its next pass does, and triggers this
        // resource again.
        let _ = kick.send(());
        return Ok(Action::await_change());
    };
    let accounts: Vec<(String, crate::api::DiscoveryStatus)> = obj
        .spec
        .accounts
        .iter()
        .map(|a| (a.account_id.clone(), a.status))
        .collect();
    let r = plan::resource_status(
        &resource,
        &accounts,
        &refused,
        &view.desired,
        &view.accounts,
        view.api_error.as_ref(),
        &engines.config.plan,
    );
    let prev = obj.status.as_ref();
    let mut status = MacieDiscoveryStatus {
        observed_generation: Some(generation),
        conditions: conditions::conditions(
            &r.summary,
            Some(generation),
            prev.map_or(&[][..], |p| &p.conditions),
            api_time(crate::runtime::clock::now()).0,
        ),
        region: Some(region),
        accounts: r.accounts,
        error_codes: r.error_codes,
        counts: Some(r.counts),
        last_sync_time: prev.and_then(|p| p.last_sync_time.clone()),
    };
    if status::differs(prev, &status) {
        status.last_sync_time = view.observed_at.map(api_time);
    }
    let api: Api<MacieDiscovery> = crate::runtime::object_api(ctx.client.clone(), &**obj);
    status::write(ctx.status_writer(&api), &**obj, prev, &status).await?;
    ctx.failures.clear(obj);
    Ok(Action::await_change())
}
