//! The MacieDiscovery controller. Per region, one engine task observes the declared accounts
//! (ListAutomatedDiscoveryAccounts) and coalesces the changes every MacieDiscovery asks for into
//! BatchUpdateAutomatedDiscoveryAccounts calls; reconciles only project the engine's view into
//! each resource's status.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::api::conditions;
use crate::api::{MacieDiscovery, MacieDiscoveryStatus};
use crate::macie::{MacieClients, MacieError, discovery as calls};
use crate::runtime::metrics::Metrics;
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
    pub observed_at: Option<Timestamp>,
    pub passes: u64,
}

type Trigger = futures::channel::mpsc::UnboundedSender<ObjectRef<MacieDiscovery>>;

struct RegionEngine {
    kick: mpsc::UnboundedSender<()>,
    view: watch::Receiver<Arc<View>>,
    task: tokio::task::JoinHandle<()>,
}

/// One engine per region, started on first use.
pub struct Engines {
    clients: Arc<MacieClients>,
    config: Config,
    store: Store<MacieDiscovery>,
    /// Set by the first reconcile: the store holds every resource.
    store_ready: watch::Sender<bool>,
    trigger: Trigger,
    regions: Mutex<HashMap<String, RegionEngine>>,
}

impl Engines {
    fn region_of<'a>(&'a self, obj: &'a MacieDiscovery) -> &'a str {
        obj.spec.region.as_deref().unwrap_or(&self.config.default_region)
    }

    fn engine(&self, region: &str) -> (mpsc::UnboundedSender<()>, watch::Receiver<Arc<View>>) {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let e = regions.entry(region.to_string()).or_insert_with(|| {
            let (kick_tx, kick_rx) = mpsc::unbounded_channel();
            let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
            let env = EngineEnv {
                region: region.to_string(),
                client: self.clients.client(region),
                metrics: self.clients.metrics().clone(),
                config: self.config.clone(),
                store: self.store.clone(),
                trigger: self.trigger.clone(),
            };
            let task = tokio::spawn(engine_loop(env, self.store_ready.subscribe(), kick_rx, view_tx));
            RegionEngine {
                kick: kick_tx,
                view: view_rx,
                task,
            }
        });
        (e.kick.clone(), e.view.clone())
    }

    /// The region's view (tests and reconciles read it).
    pub fn subscribe(&self, region: &str) -> watch::Receiver<Arc<View>> {
        self.engine(region).1
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        for (_, e) in self.regions.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            e.task.abort();
        }
    }
}

fn declared(store: &Store<MacieDiscovery>, region: &str, default_region: &str) -> Vec<Declared> {
    let mut out: Vec<Declared> = store
        .state()
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .filter(|o| o.spec.region.as_deref().unwrap_or(default_region) == region)
        .map(|o| Declared {
            resource: key(o),
            taken: TakenIn {
                uid: o.uid().unwrap_or_default(),
                generation: o.meta().generation.unwrap_or_default(),
            },
            accounts: o
                .spec
                .accounts
                .iter()
                .map(|a| (a.account_id.clone(), a.status))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.resource.cmp(&b.resource));
    out
}

fn key(o: &MacieDiscovery) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// The engine of one region: observe, decide, send in batches, publish, trigger reconciles.
/// What an engine works with.
struct EngineEnv {
    region: String,
    client: aws_sdk_macie2::Client,
    metrics: Arc<Metrics>,
    config: Config,
    store: Store<MacieDiscovery>,
    trigger: Trigger,
}

async fn engine_loop(
    env: EngineEnv,
    mut store_ready: watch::Receiver<bool>,
    mut kick: mpsc::UnboundedReceiver<()>,
    view_tx: watch::Sender<Arc<View>>,
) {
    let EngineEnv {
        region,
        client,
        metrics,
        config,
        store,
        ..
    } = &env;
    // Start once the controller has listed the resources: its first reconcile says so.
    // (Store::wait_until_ready wakes only one waiter, and the controller already waits on it.)
    if store_ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    tracing::debug!(%region, "discovery engine started");
    let mut view = View::default();
    let mut next_observe = tokio::time::Instant::now();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut throttled = 0u32;
    // Gather the declarations that arrive together (e.g. a GitOps sync) before the first pass.
    tokio::time::sleep(config.batch_window).await;
    loop {
        let wake = retry_at.map_or(next_observe, |r| r.min(next_observe));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            k = kick.recv() => {
                if k.is_none() { return; }
                // Coalesce: wait for more changes, then take them all.
                tokio::time::sleep(config.batch_window).await;
                while kick.try_recv().is_ok() {}
            }
        }
        let before = view.clone();
        tracing::debug!(%region, "discovery pass");
        let declared = declared(store, region, &config.default_region);
        view.desired = plan::desired_set(&declared);
        view.resources = declared.iter().map(|d| (d.resource.clone(), d.taken.clone())).collect();
        let ids = view.desired.account_ids();
        view.accounts.retain(|id, _| ids.binary_search(id).is_ok());
        let unseen = ids
            .iter()
            .any(|id| view.accounts.get(id).is_none_or(|a| a.observed_at.is_none()));
        let now = tokio::time::Instant::now();
        if (now >= next_observe || unseen) && !ids.is_empty() {
            observe(client, &ids, &mut view, metrics, &config.plan).await;
            next_observe = now + config.poll_interval;
        } else if now >= next_observe {
            next_observe = now + config.poll_interval;
        }
        if retry_at.is_some_and(|r| now < r) {
            publish(&env, &view, &before, &view_tx);
            continue;
        }
        retry_at = None;
        let sends = plan::to_send(&view.desired, &view.accounts, Timestamp::now(), &config.plan);
        let mut sent_any = false;
        for batch in plan::batches(&sends, config.plan.batch_size) {
            let at = Timestamp::now();
            match calls::batch_update(client, &batch, metrics).await {
                Ok(errors) => {
                    throttled = 0;
                    sent_any = true;
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
                    throttled += 1;
                    tracing::debug!(%region, error = %e, "BatchUpdateAutomatedDiscoveryAccounts throttled");
                    view.api_error = Some(e);
                    retry_at = Some(tokio::time::Instant::now() + backoff(throttled).min(config.poll_interval));
                    break;
                }
                Err(e @ MacieError::Uncertain { .. }) => {
                    // It may have taken effect: treat as sent, the next observation decides.
                    sent_any = true;
                    tracing::warn!(%region, error = %e, "BatchUpdateAutomatedDiscoveryAccounts outcome unknown");
                    for (id, status) in &batch {
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
        if sent_any {
            // Confirm soon rather than a whole interval later.
            next_observe = next_observe.min(tokio::time::Instant::now() + config.batch_window);
        }
        publish(&env, &view, &before, &view_tx);
    }
}

/// Lists the declared accounts and records what changed.
async fn observe(
    client: &aws_sdk_macie2::Client,
    ids: &[String],
    view: &mut View,
    metrics: &Metrics,
    plan_settings: &Settings,
) {
    let started = Timestamp::now();
    match calls::list_accounts(client, ids, metrics).await {
        Ok((found, _calls)) => {
            for id in ids {
                let a = view.accounts.entry(id.clone()).or_default();
                a.observed = found.get(id).copied();
                a.observed_at = Some(started);
                // Forget a send this observation settles (and only then).
                plan::settle(a, plan_settings);
            }
            view.observed_at = Some(started);
            view.api_error = None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "ListAutomatedDiscoveryAccounts failed");
            view.api_error = Some(e);
        }
    }
}

fn publish(env: &EngineEnv, view: &View, before: &View, tx: &watch::Sender<Arc<View>>) {
    let mut v = view.clone();
    v.passes = before.passes + 1;
    let changed = view.desired != before.desired
        || view.resources != before.resources
        || view.accounts != before.accounts
        || view.api_error != before.api_error;
    tx.send_replace(Arc::new(v));
    if changed {
        for obj in env.store.state() {
            if obj.spec.region.as_deref().unwrap_or(&env.config.default_region) == env.region {
                let _ = env.trigger.unbounded_send(ObjectRef::from_obj(&*obj));
            }
        }
    }
}

struct Context {
    client: kube::Client,
    engines: Arc<Engines>,
    recorder: Recorder,
    failures: Failures<MacieDiscovery>,
}

/// The MacieDiscovery controller, built and ready to run.
pub struct DiscoveryController {
    controller: Controller<MacieDiscovery>,
    trigger_rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<MacieDiscovery>>,
    ctx: Arc<Context>,
}

impl DiscoveryController {
    pub fn new(client: kube::Client, clients: Arc<MacieClients>, config: Config) -> DiscoveryController {
        let api: Api<MacieDiscovery> = match &config.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let controller = Controller::new(api, watcher::Config::default().any_semantic());
        let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        let engines = Arc::new(Engines {
            clients,
            store: controller.store(),
            store_ready: watch::channel(false).0,
            trigger: trigger_tx,
            regions: Mutex::new(HashMap::new()),
            config: config.clone(),
        });
        engines.engine(&config.default_region);
        DiscoveryController {
            controller,
            trigger_rx,
            ctx: Arc::new(Context {
                recorder: Recorder::new(client.clone(), reporter),
                client,
                engines,
                failures: Failures::default(),
            }),
        }
    }

    pub fn engines(&self) -> Arc<Engines> {
        self.ctx.engines.clone()
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
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

async fn reconcile_inner(obj: &Arc<MacieDiscovery>, ctx: &Arc<Context>) -> Result<Action, Error> {
    if obj.meta().deletion_timestamp.is_some() {
        // Deleting a MacieDiscovery leaves the accounts as they are.
        return Ok(Action::await_change());
    }
    let engines = &ctx.engines;
    engines.store_ready.send_replace(true);
    let region = engines.region_of(obj).to_string();
    tracing::debug!(name = %obj.name_any(), %region, "reconcile MacieDiscovery");
    let (kick, view_rx) = engines.engine(&region);
    let view = view_rx.borrow().clone();
    let Some(generation) =
        plan::taken_generation(&view.resources, &key(obj), obj.uid().as_deref(), obj.meta().generation)
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
        &key(obj),
        &accounts,
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
            api_time(Timestamp::now()).0,
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
    let api: Api<MacieDiscovery> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    status::write(&api, &ctx.recorder, &**obj, prev, &status).await?;
    ctx.failures.clear(obj);
    Ok(Action::await_change())
}
