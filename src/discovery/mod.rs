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
//!
//! Files: this one holds the view, the engines' registry and the controller; `engine.rs` an
//! engine's pass, `reconcile.rs` a reconcile, each as named steps; `plan.rs` the pure
//! decisions.

mod engine;
pub mod plan;
mod reconcile;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod step_tests;

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
use crate::api::MacieDiscovery;
use crate::macie::{MacieClients, MacieError, Place};
use crate::runtime::memory::Memory;
use crate::runtime::regions::RegionTasks;
use crate::runtime::status;
use crate::runtime::{Error, MANAGER, Next};
use engine::{EngineEnv, engine_loop};
use plan::{AccountState, Declared, DesiredSet, Settings, TakenIn};

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
    /// no state for accounts nobody declares any more (nor an API error once no account is
    /// declared: no call will clear it).
    fn take_in(&mut self, declared: &[Declared]) {
        self.desired = plan::desired_set(declared);
        self.resources = declared.iter().map(|d| (d.resource.clone(), d.taken.clone())).collect();
        let ids = self.desired.account_ids();
        self.accounts.retain(|id, _| ids.binary_search(id).is_ok());
        if ids.is_empty() {
            self.api_error = None;
        }
    }
}

type Trigger = futures::channel::mpsc::UnboundedSender<ObjectRef<MacieDiscovery>>;
/// The newest version of each resource (by key) the watch delivered: a cache that holds an
/// older one went back (a relist from a lagging API server), and the engines wait for it.
type Newest = Arc<std::sync::Mutex<BTreeMap<String, TakenIn>>>;
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
    newest: Newest,
    /// Passes run only when told (`pass_due`), on the caller's task: the perturbation harness
    /// drives the engines in virtual time. None in the operator.
    #[cfg(test)]
    manual: Option<std::sync::Mutex<HashMap<Place, engine::ManualEngine>>>,
}

impl Engines {
    /// The engines of one controller, none running yet.
    fn new(
        clients: Arc<MacieClients>,
        tenancy: Arc<Tenancy>,
        config: Config,
        store: Store<MacieDiscovery>,
        trigger: Trigger,
    ) -> Engines {
        Engines {
            clients,
            tenancy,
            config,
            store,
            store_ready: watch::channel(false).0,
            trigger,
            regions: RegionTasks::default(),
            newest: Newest::default(),
            #[cfg(test)]
            manual: None,
        }
    }

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

    /// Whether the resource is paused, decided on the cache's newest copy of it (its
    /// annotations may have changed since the reconcile began) and the admitting account.
    fn paused(&self, obj: &MacieDiscovery, admitted: &Admitted) -> Option<policy::Pause> {
        let newest = self.store.get(&ObjectRef::from_obj(obj));
        policy::paused(&newest.as_deref().unwrap_or(obj).metadata, &admitted.account)
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
                    gate: self.clients.gate().clone(),
                    config: self.config.clone(),
                    store: self.store.clone(),
                    trigger: self.trigger.clone(),
                    newest: self.newest.clone(),
                    retire,
                };
                #[cfg(test)]
                if let Some(manual) = &self.manual {
                    let m = engine::ManualEngine::new(env, self.store_ready.subscribe(), kick_rx, view_tx);
                    lock(manual).insert(place.clone(), m);
                    let engine = RegionEngine {
                        kick: kick_tx,
                        view: view_rx,
                    };
                    return (engine, tokio::spawn(std::future::pending()));
                }
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

    /// A manual engines' passes that are due now, each on the caller's task; how many ran.
    #[cfg(test)]
    async fn pass_due(&self) -> usize {
        let Some(manual) = &self.manual else { return 0 };
        let places: Vec<Place> = lock(manual).keys().cloned().collect();
        let mut ran = 0;
        for place in places {
            let Some(mut m) = lock(manual).remove(&place) else {
                continue;
            };
            // None: the engine retired (and goes).
            if let Some(r) = m.pass_if_due().await {
                ran += usize::from(r);
                // A successor started while the pass ran keeps its place.
                lock(manual).entry(place).or_insert(m);
            }
        }
        ran
    }

    /// When the next pass of a manual engine is due.
    #[cfg(test)]
    fn next_pass(&self) -> Option<tokio::time::Instant> {
        let manual = self.manual.as_ref()?;
        lock(manual).values_mut().map(engine::ManualEngine::next_pass).min()
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

    /// A MacieAccount or a namespace changed: the engines take in the declarations again and
    /// the resources it concerns are decided again.
    fn follow_tenancy(engines: &Arc<Engines>) {
        let weak = Arc::downgrade(engines);
        engines.tenancy.subscribe(move |change: &Change| {
            let Some(engines) = weak.upgrade() else { return };
            engines.kick_where(|_, _| true);
            for o in engines.store.state() {
                if engines
                    .tenancy
                    .affects(change, &o.namespace().unwrap_or_default(), o.spec.account_ref.as_ref())
                {
                    let _ = engines.trigger.unbounded_send(ObjectRef::from_obj(&*o));
                }
            }
        });
    }

    /// A watch event: wakes the engines whose view it changes.
    fn on_event(&self, event: &watcher::Event<MacieDiscovery>) {
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let key = key(o);
                let seen = taken_in(o);
                lock(&self.newest)
                    .entry(key.clone())
                    .and_modify(|n| {
                        if n.uid != seen.uid || n.generation < seen.generation {
                            *n = seen.clone();
                        }
                    })
                    .or_insert(seen);
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
                lock(&self.newest).remove(&key);
                self.kick_where(|_, view| view.resources.contains_key(&key));
            }
            watcher::Event::InitDone => {
                // A (re)list: resources deleted meanwhile are gone from the store.
                let listed: std::collections::BTreeSet<String> = self.store.state().iter().map(|o| key(o)).collect();
                lock(&self.newest).retain(|k, _| listed.contains(k));
                self.store_ready.send_replace(true);
                self.kick_where(|_, _| true);
            }
            watcher::Event::Init => {}
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        paused: policy::has_pause(o.meta()),
    }
}

/// Shared by every reconcile.
struct Context {
    client: kube::Client,
    engines: Arc<Engines>,
    recorder: Recorder,
    /// What the controller remembers of each resource: its failures (the backoff) and the
    /// version of its own last write. Nothing else is kept per resource (an engine keeps its
    /// place's state); the entry is dropped in one place, [`forget_gone`].
    memory: Arc<Memory<MacieDiscovery, ()>>,
}

impl Context {
    fn status_writer<'a>(
        &'a self,
        api: &'a Api<MacieDiscovery>,
        precondition: Option<String>,
    ) -> status::Writer<'a, MacieDiscovery> {
        status::Writer {
            api,
            recorder: &self.recorder,
            metrics: self.engines.clients.metrics(),
            precondition,
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
        let engines = Arc::new(Engines::new(
            clients,
            tenancy.clone(),
            config,
            store.clone(),
            trigger_tx,
        ));
        let memory: Arc<Memory<MacieDiscovery, ()>> = Arc::default();
        let (e, m, s) = (engines.clone(), memory.clone(), store.clone());
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
                forget_gone(&m, event, &s);
            })
            .touched_objects();
        Engines::follow_tenancy(&engines);
        let controller = Controller::for_stream(events, store);
        DiscoveryController {
            controller,
            trigger_rx,
            ctx: Arc::new(Context {
                recorder,
                client,
                engines,
                memory,
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

/// Drops what the controller remembers of resources gone, as the watch reports them (after
/// the reflector applied the event to `store`): a deletion, and at the end of a (re)list the
/// resources it did not show (deleted while the watch was down).
fn forget_gone(
    memory: &Memory<MacieDiscovery, ()>,
    event: &watcher::Event<MacieDiscovery>,
    store: &Store<MacieDiscovery>,
) {
    match event {
        watcher::Event::Delete(o) => memory.forget(&ObjectRef::from_obj(o)),
        watcher::Event::InitDone => memory.retain(|k| store.get(k).is_some()),
        watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Init => {}
    }
}

fn error_policy(obj: Arc<MacieDiscovery>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.memory.retry(&obj, err).action()
}

async fn reconcile(obj: Arc<MacieDiscovery>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t = std::time::Instant::now();
    let r = reconcile::reconcile_inner(&obj, &ctx).await;
    let metrics = ctx.engines.clients.metrics();
    metrics.reconciled("MacieDiscovery", t.elapsed(), r.as_ref().err().map(Error::category));
    r.map(Next::action)
}

#[cfg(test)]
mod view_tests;
