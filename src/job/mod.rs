//! The MacieJob controller: observe (the shared sweep) -> plan (pure) -> act
//! (UpdateClassificationJob) -> status (server-side apply) and Events.

pub mod create;
mod creating;
pub mod lifecycle;
pub mod outcome;
pub mod ownership;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::events::{EventType, Recorder};
use futures::TryStreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};

use crate::account::policy::{self, JobAsk, JobName, Refusal};
use crate::account::users::UserKind;
use crate::account::{Admitted, Change, Tenancy};
use crate::api::conditions::{self, Summary};
use crate::api::macie_job::{CreationRecord, ObservedJob, RequestedTransition, TransitionOutcome};
use crate::api::{DesiredJobStatus, MacieJob, MacieJobSpec, MacieJobStatus};
use crate::macie::jobs::{Changes, InUse, JobPoller, OnChange, RegionView, Wanted};
use crate::macie::{MacieClients, MacieError, Place};
use crate::runtime::{Error, Failures, MANAGER, status};
use create::CreateQueue;
use creating::{CreateAsk, Created, create_step};
use lifecycle::{AfterRefusal, Lifecycle, after_refusal, lifecycle, release_after_cancel, set_finalizer};
use outcome::{CallEvent, CallVerdict};
use ownership::Declaration;
use plan::{Act, Observation, Reason, Settings, Step, StepOutcome, StepState};

/// Holds a MacieJob with `deletionPolicy: Cancel` until its job is cancelled.
pub const FINALIZER: &str = "macie.kubeops.dev/cancel-job";

/// Settings of the MacieJob controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// Region of MacieJobs without spec.region.
    pub default_region: String,
    pub poll_interval: Duration,
    pub page_size: i32,
    pub plan: Settings,
    /// Only watch this namespace (all when None).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Name of this instance in Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// CreateClassificationJob calls per second per (account, region) (the published quota
    /// is 0.1).
    pub create_rate: f64,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub clients: Arc<MacieClients>,
    pub poller: Arc<JobPoller>,
    /// The MacieAccounts and namespaces: whether a resource may act, and where.
    pub tenancy: Arc<Tenancy>,
    pub config: Config,
    recorder: Recorder,
    /// Every MacieJob (the controller's cache): who else names a job.
    store: Store<MacieJob>,
    /// What this process knows of each resource's step: the source of truth within this
    /// process (the status copy can lag behind the watch), with the status as the fallback
    /// after a restart.
    steps: Steps,
    /// Consecutive reconcile failures, for backoff.
    failures: Arc<Failures<MacieJob>>,
    /// Resources waiting for a sweep that started after the given time (a step in flight):
    /// woken by the first such sweep even if it shows no change.
    waiters: Waiters,
    /// Reconciles a resource now (a peer whose conflict this reconcile may have ended).
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<MacieJob>>,
    /// What this process knows of each resource's create (spec.definition): the source of
    /// truth within this process, with the status as the fallback after a restart.
    creations: Arc<Mutex<HashMap<ObjectRef<MacieJob>, CreationRecord>>>,
    /// The client token of jobs (DescribeClassificationJob), by place and job id: whose job it
    /// is never changes.
    tokens: Arc<Mutex<HashMap<(Place, String), String>>>,
    /// Creates wait their turn per place (the CreateClassificationJob quota).
    queue: Arc<Mutex<CreateQueue<Place, ObjectRef<MacieJob>>>>,
}

/// What this process knows of a resource's step.
#[derive(Debug, Clone)]
enum Known {
    /// This step (in flight, or refused until its retry time).
    Step(Step),
    /// No step blocks the resource, whatever an older status copy says.
    Cleared,
}

type Steps = Arc<Mutex<HashMap<ObjectRef<MacieJob>, Known>>>;

/// Resource -> (place, wake after a sweep started later than this).
type Waiters = Arc<Mutex<HashMap<ObjectRef<MacieJob>, (Place, Timestamp)>>>;

fn region_of<'a>(spec: &'a MacieJobSpec, default_region: &'a str) -> &'a str {
    spec.region.as_deref().unwrap_or(default_region)
}

/// Where a resource's calls would go (whether or not it is admitted).
fn place_of(obj: &MacieJob, tenancy: &Tenancy, default_region: &str) -> Place {
    Place::new(
        tenancy.account_name(obj.spec.account_ref.as_ref()),
        region_of(&obj.spec, default_region),
    )
}

/// Whether the resource's MacieAccount admits it (namespace, region, credentials).
fn admit(obj: &MacieJob, tenancy: &Tenancy, default_region: &str) -> Result<Admitted, Refusal> {
    tenancy.admit(
        &obj.namespace().unwrap_or_default(),
        obj.spec.account_ref.as_ref(),
        region_of(&obj.spec, default_region),
    )
}

/// Whether the account's job rules allow what the resource asks; `name` is the job's name
/// (spec.jobName, or the observed name of the job it acts on by id).
fn job_rules(obj: &MacieJob, admitted: &Admitted, name: Option<JobName<'_>>) -> Result<(), Refusal> {
    policy::job_allowed(
        &admitted.place.account,
        &admitted.account.spec.jobs,
        JobAsk {
            name,
            desired: obj.spec.job_status,
            deletion_policy: obj.spec.deletion_policy,
            definition: obj.spec.definition.as_ref(),
        },
    )
}

/// The job name the resource declares (spec.jobName).
fn declared_name(obj: &MacieJob) -> Option<JobName<'_>> {
    obj.spec.job_name.as_deref().map(JobName::Declared)
}

/// The name rule for the job a resource acts on, when that job was reached by id (spec.jobId,
/// or the job it created): Macie's name for it, whatever path found it.
/// None when the resource declares that very name (the declared name was checked).
fn acted_on_name<'a>(obj: &MacieJob, job: &'a ObservedJob) -> Option<JobName<'a>> {
    let name = job.name.as_deref().unwrap_or_default();
    (obj.spec.job_name.as_deref() != Some(name)).then_some(JobName::OfJob {
        job_id: &job.job_id,
        name,
    })
}

/// The admission and every rule decided again, from the MacieAccount and namespace as the
/// operator knows them now, right before an AWS write: a MacieAccount narrowed since the
/// reconcile began (or while a create waited in the queue) stops the call.
fn recheck(ctx: &Context, obj: &MacieJob, job: Option<JobName<'_>>) -> Result<(), Refusal> {
    let admitted = admit(obj, &ctx.tenancy, &ctx.config.default_region)?;
    job_rules(obj, &admitted, declared_name(obj))?;
    if job.is_some() {
        job_rules(obj, &admitted, job)?;
    }
    Ok(())
}

impl Context {
    /// The resource's step: in memory, else the write-ahead status after a restart. A step read
    /// back from the status counts only for the job the resource acts on (`acting_on`, found
    /// through its spec): a record naming another job was not written for this resource.
    fn step_for(
        &self,
        oref: &ObjectRef<MacieJob>,
        status: Option<&MacieJobStatus>,
        acting_on: Option<&str>,
    ) -> Option<Step> {
        match lock(&self.steps).get(oref) {
            Some(Known::Step(s)) => return Some(s.clone()),
            Some(Known::Cleared) => return None,
            None => {}
        }
        step_from_status(status?.last_transition.as_ref()?).filter(|s| acting_on == Some(s.job_id.as_str()))
    }

    fn remember(&self, oref: &ObjectRef<MacieJob>, known: Known) {
        lock(&self.steps).insert(oref.clone(), known);
    }

    /// Reconcile `oref` after the first sweep of `place` that starts later than `after`.
    fn wake_after_sweep(&self, oref: &ObjectRef<MacieJob>, place: &Place, after: Timestamp) {
        lock(&self.waiters).insert(oref.clone(), (place.clone(), after));
    }

    fn forget(&self, obj: &MacieJob) {
        let oref = ObjectRef::from_obj(obj);
        lock(&self.steps).remove(&oref);
        lock(&self.waiters).remove(&oref);
        lock(&self.creations).remove(&oref);
        lock(&self.queue).leave(&oref);
        self.failures.clear(obj);
    }

    /// The resource's create: in memory, else the write-ahead status after a restart.
    fn creation_for(&self, oref: &ObjectRef<MacieJob>, status: Option<&MacieJobStatus>) -> Option<CreationRecord> {
        lock(&self.creations)
            .get(oref)
            .cloned()
            .or_else(|| status?.creation.clone())
    }

    fn remember_creation(&self, oref: &ObjectRef<MacieJob>, record: CreationRecord) {
        lock(&self.creations).insert(oref.clone(), record);
    }

    fn forget_creation(&self, oref: &ObjectRef<MacieJob>) {
        lock(&self.creations).remove(oref);
    }

    /// The other MacieJobs that name `job` at `place` and may act on it (admitted by the same
    /// account, allowed by its rules), as the ownership decision sees them.
    fn peers(
        &self,
        obj: &MacieJob,
        place: &Place,
        job: &ObservedJob,
        by_name: &HashMap<String, Vec<String>>,
    ) -> Vec<Declaration> {
        let steps = lock(&self.steps);
        // One pass over the cache per reconcile, cheapest test first (no allocation until a
        // resource names the same job).
        self.store
            .state()
            .iter()
            .filter(|o| names_job(&o.spec, job, by_name))
            .filter(|o| place_of(o, &self.tenancy, &self.config.default_region) == *place)
            .filter(|o| o.metadata.name != obj.metadata.name || o.metadata.namespace != obj.metadata.namespace)
            // A refused resource is no declaration: it can neither act nor hold others in
            // Conflict.
            .filter(|o| {
                admit(o, &self.tenancy, &self.config.default_region)
                    .and_then(|a| {
                        job_rules(o, &a, declared_name(o)).and_then(|()| job_rules(o, &a, acted_on_name(o, job)))
                    })
                    .is_ok()
            })
            .filter_map(|o| {
                let desired = match lifecycle(o) {
                    Lifecycle::Manage { desired, .. } => desired,
                    _ => return None,
                };
                let in_flight = matches!(
                    steps.get(&ObjectRef::from_obj(&**o)),
                    Some(Known::Step(Step { job_id, state: StepState::InFlight { .. }, .. })) if *job_id == job.job_id
                );
                let shows_conflict = o
                    .status
                    .as_ref()
                    .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                    .is_some_and(|c| c.reason == Reason::Conflict.as_str());
                Some(Declaration {
                    namespace: o.namespace().unwrap_or_default(),
                    name: o.name_any(),
                    desired,
                    created: o.meta().creation_timestamp.as_ref().map(|t| t.0),
                    in_flight,
                    shows_conflict,
                })
            })
            .collect()
    }
}

/// Whether a MacieJob's spec names `job` (by id, or by a name that only this job carries).
fn names_job(spec: &MacieJobSpec, job: &ObservedJob, by_name: &HashMap<String, Vec<String>>) -> bool {
    if let Some(id) = &spec.job_id {
        return *id == job.job_id;
    }
    spec.job_name
        .as_ref()
        .is_some_and(|n| job.name.as_ref() == Some(n) && by_name.get(n).is_some_and(|ids| ids.len() == 1))
}

/// The step a status records, for a process that has none in memory (after a restart or a
/// takeover): a Pending transition is a call in flight; an AccessDenied one is held for the
/// first retry delay from when it was made.
fn step_from_status(t: &RequestedTransition) -> Option<Step> {
    let to = parse_desired(&t.to)?;
    let mut step = Step::new(&t.job_id, &t.from, to, t.requested_at.0);
    match (t.outcome, t.error_code.as_deref()) {
        (TransitionOutcome::Pending, code) => {
            step.state = StepState::InFlight {
                error: code.map(str::to_string),
            };
        }
        (TransitionOutcome::Failed, Some(code @ "AccessDeniedException")) => {
            let retry_at = t
                .requested_at
                .0
                .checked_add(outcome::retry_delay(Reason::AccessDenied, 1, 1.0))
                .unwrap_or(Timestamp::MAX);
            step.state = StepState::Refused {
                reason: Reason::AccessDenied,
                code: code.to_string(),
                message: t.message.clone().unwrap_or_default(),
                retry_at,
                attempts: 1,
            };
        }
        _ => return None,
    }
    Some(step)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_desired(s: &str) -> Option<DesiredJobStatus> {
    match s {
        "RUNNING" => Some(DesiredJobStatus::Running),
        "USER_PAUSED" => Some(DesiredJobStatus::UserPaused),
        "CANCELLED" => Some(DesiredJobStatus::Cancelled),
        _ => None,
    }
}

/// What the region's latest sweep says about the job `spec` names.
pub fn resolve<'a>(spec: &MacieJobSpec, view: &'a RegionView) -> Observation<'a> {
    if let Some(e) = &view.error {
        return Observation::SweepFailed {
            error: e,
            failures: view.failures,
        };
    }
    let Some(snap) = &view.snapshot else {
        return Observation::NoSweepYet;
    };
    if let Some(id) = &spec.job_id {
        return match (snap.jobs.get(id), snap.unread_ids.get(id)) {
            (Some(job), _) => Observation::Found(job),
            (None, Some(unread)) => Observation::Unread(unread),
            (None, None) => Observation::NotFound,
        };
    }
    if let Some(unread) = spec.job_name.as_ref().and_then(|n| snap.unread_names.get(n)) {
        return Observation::Unread(unread);
    }
    match spec.job_name.as_ref().and_then(|n| snap.by_name.get(n)) {
        Some(ids) if ids.len() == 1 => snap.jobs.get(&ids[0]).map_or(Observation::NotFound, Observation::Found),
        Some(ids) if ids.len() > 1 => Observation::Ambiguous(ids),
        _ => Observation::NotFound,
    }
}

/// The MacieJob controller, built and ready to run.
pub struct JobController {
    controller: Controller<MacieJob>,
    trigger_rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<MacieJob>>,
    ctx: Arc<Context>,
}

impl JobController {
    /// Builds the context; sweepers start as admitted resources need them.
    pub fn new(
        client: kube::Client,
        clients: Arc<MacieClients>,
        tenancy: Arc<Tenancy>,
        config: Config,
    ) -> JobController {
        let api: Api<MacieJob> = crate::runtime::scoped_api(client.clone(), config.namespace.as_deref());
        // The cache keeps only what the reconciles read (no managed fields, no last-applied).
        let (store, writer) = kube::runtime::reflector::store::<MacieJob>();
        let (metrics, cached) = (clients.metrics().clone(), store.clone());
        // The MacieAccount controller counts each account's users from this cache.
        let users = tenancy.user_feed(UserKind::MacieJob, config.namespace.clone(), store.clone(), |o| {
            o.spec.account_ref.as_ref()
        });
        let users_before = users.clone();
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(crate::runtime::slim)
            .inspect_ok(move |event| users_before.before_reflect(event))
            .reflect(writer)
            .inspect_ok(move |event| {
                status::forget_deleted(&metrics, event, &cached);
                users.after_reflect(event);
            })
            .applied_objects();
        let controller = Controller::for_stream(events, store.clone())
            .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency));
        let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded::<ObjectRef<MacieJob>>();
        let default_region = config.default_region.clone();
        let waiters: Waiters = Arc::default();
        let steps: Steps = Arc::default();
        let failures: Arc<Failures<MacieJob>> = Arc::default();
        let on_change: OnChange = {
            let (store, waiters, steps, failures) = (store.clone(), waiters.clone(), steps.clone(), failures.clone());
            let trigger_tx = trigger_tx.clone();
            let default_region = default_region.clone();
            let tenancy = tenancy.clone();
            // After a sweep: reconcile the resources that name the changed jobs and those
            // waiting for a sweep newer than the one they saw; drop what is kept for deleted
            // resources.
            Arc::new(move |place: &Place, changes: &Changes, swept_at: Option<Timestamp>| {
                let objs = store.state();
                if !changes.is_empty() {
                    for obj in &objs {
                        if place_of(obj, &tenancy, &default_region) == *place
                            && changes.affects(obj.spec.job_id.as_deref(), obj.spec.job_name.as_deref())
                        {
                            let _ = trigger_tx.unbounded_send(ObjectRef::from_obj(&**obj));
                        }
                    }
                }
                if let Some(t) = swept_at {
                    let mut w = lock(&waiters);
                    let due: Vec<ObjectRef<MacieJob>> = w
                        .iter()
                        .filter(|(_, (p, after))| p == place && *after < t)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in due {
                        w.remove(&k);
                        let _ = trigger_tx.unbounded_send(k);
                    }
                }
                // Drop what is kept for deleted resources.
                let live: std::collections::HashSet<ObjectRef<MacieJob>> =
                    objs.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
                lock(&steps).retain(|k, _| live.contains(k));
                lock(&waiters).retain(|k, _| live.contains(k));
                failures.retain(|k| live.contains(k));
            })
        };
        let in_use: InUse = {
            let (store, default_region, tenancy) = (store.clone(), default_region.clone(), tenancy.clone());
            // Only admitted resources keep a sweeper: a refused region gets none.
            Arc::new(move |place: &Place| {
                store
                    .state()
                    .iter()
                    .any(|o| admit(o, &tenancy, &default_region).is_ok_and(|a| a.place == *place))
            })
        };
        let wanted: Wanted = {
            let (store, default_region, tenancy) = (store.clone(), default_region.clone(), tenancy.clone());
            // What admitted resources name: a refused resource causes no read either.
            Arc::new(move |place: &Place| {
                let mut ids = std::collections::HashSet::new();
                let mut names = std::collections::HashSet::new();
                for o in store.state() {
                    if !admit(&o, &tenancy, &default_region).is_ok_and(|a| a.place == *place) {
                        continue;
                    }
                    ids.extend(o.spec.job_id.clone());
                    names.extend(o.spec.job_name.clone());
                    ids.extend(o.status.as_ref().and_then(|s| s.creation.as_ref()?.job_id.clone()));
                }
                (ids, names)
            })
        };
        let poller = Arc::new(JobPoller::new(
            clients.clone(),
            config.page_size,
            config.poll_interval,
            on_change,
            in_use,
            wanted,
        ));
        {
            // A MacieAccount or a namespace changed: decide again for the resources it concerns.
            let (store, trigger_tx, t) = (store.clone(), trigger_tx.clone(), Arc::downgrade(&tenancy));
            tenancy.subscribe(move |change: &Change| {
                let Some(tenancy) = t.upgrade() else { return };
                for o in store.state() {
                    if tenancy.affects(change, &o.namespace().unwrap_or_default(), o.spec.account_ref.as_ref()) {
                        let _ = trigger_tx.unbounded_send(ObjectRef::from_obj(&*o));
                    }
                }
            });
        }
        let config_rate = config.create_rate;
        let ctx = Arc::new(Context {
            trigger: trigger_tx,
            recorder: Recorder::new(client.clone(), MANAGER, config.instance.clone()),
            client,
            clients,
            poller,
            tenancy,
            config,
            store,
            steps,
            failures,
            waiters,
            creations: Arc::default(),
            tokens: Arc::default(),
            queue: Arc::new(Mutex::new(CreateQueue::new(config_rate))),
        });
        JobController {
            controller,
            trigger_rx,
            ctx,
        }
    }

    /// The shared poller (tests and metrics read its sweep results).
    pub fn poller(&self) -> Arc<JobPoller> {
        self.ctx.poller.clone()
    }

    /// What the controller keeps per resource (tests check it is dropped with the resources).
    pub fn tracked(&self) -> Tracked {
        Tracked(self.ctx.clone())
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        // Decisions need every MacieAccount and namespace.
        let mut shutdown = Box::pin(shutdown);
        if !self.ctx.tenancy.ready_or(shutdown.as_mut()).await {
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

/// A view of what the controller keeps per resource.
#[derive(Clone)]
pub struct Tracked(Arc<Context>);

impl Tracked {
    /// Entries kept per resource: (steps, sweep waiters, failure counts).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            lock(&self.0.steps).len(),
            lock(&self.0.waiters).len(),
            self.0.failures.len(),
        )
    }
}

fn error_policy(obj: Arc<MacieJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.failures.retry(&obj, err)
}

async fn reconcile(obj: Arc<MacieJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t = std::time::Instant::now();
    let r = reconcile_inner(&obj, &ctx).await;
    ctx.clients
        .metrics()
        .reconciled("MacieJob", t.elapsed(), r.as_ref().err().map(Error::category));
    r
}

/// One reconcile: tenancy -> lifecycle -> observe -> plan (pure) -> act -> status.
async fn reconcile_inner(obj: &MacieJob, ctx: &Context) -> Result<Action, Error> {
    let api: Api<MacieJob> = crate::runtime::object_api(ctx.client.clone(), obj);
    let lifecycle = lifecycle(obj);
    if lifecycle == Lifecycle::Forget {
        ctx.forget(obj);
        return Ok(Action::await_change());
    }
    // Tenancy, before any other step (deletion included): the account must admit the
    // resource, and its rules allow what it asks.
    let admitted = match admit(obj, &ctx.tenancy, &ctx.config.default_region)
        .and_then(|a| job_rules(obj, &a, declared_name(obj)).map(|()| a))
    {
        Ok(a) => a,
        Err(refusal) => return refused(ctx, &api, obj, &refusal).await,
    };
    ctx.clients.use_account(&admitted.place.account, admitted.role());
    let (desired, deleting) = match lifecycle {
        Lifecycle::Forget => return Ok(Action::await_change()),
        Lifecycle::SetFinalizer(present) => {
            // The update triggers the next reconcile.
            set_finalizer(&api, obj, present).await?;
            return Ok(Action::await_change());
        }
        Lifecycle::Release(why) => {
            release(ctx, &api, obj, why.to_string()).await?;
            return Ok(Action::await_change());
        }
        Lifecycle::Manage { desired, deleting } => (desired, deleting),
    };

    // Observe: the place's shared sweep, the step in flight, and who else names the job.
    let oref = ObjectRef::from_obj(obj);
    let place = admitted.place.clone();
    let view = ctx.poller.view(&place);
    let snapshot_at = view.snapshot.as_ref().map(|s| s.started_at);
    let mut creation = ctx.creation_for(&oref, obj.status.as_ref());
    let mut observation = resolve(&obj.spec, &view);
    // spec.definition: create the job once, then follow it by id.
    if let Some(definition) = &obj.spec.definition {
        let asked = CreateAsk {
            api: &api,
            obj,
            place: &place,
            definition,
            desired,
            observation: &observation,
            snapshot_at,
            record: creation.clone(),
        };
        match create_step(ctx, asked).await? {
            Created::Follow(job_id, record) => {
                let followed = MacieJobSpec {
                    job_id: Some(job_id.clone()),
                    job_name: None,
                    ..obj.spec.clone()
                };
                observation = resolve(&followed, &view);
                // Just created: only a sweep that started after the create can show the job.
                if matches!(observation, Observation::NotFound | Observation::NoSweepYet)
                    && snapshot_at.is_none_or(|s| s <= record.requested_at.0)
                {
                    ctx.wake_after_sweep(&oref, &place, record.requested_at.0);
                    let stored = obj.status.clone().unwrap_or_default();
                    write_status(
                        &api,
                        obj,
                        ctx,
                        StatusUpdate {
                            prev: &stored,
                            region: &place.region,
                            job: None,
                            summary: &Reason::Creating
                                .summary(format!("created job {job_id}; waiting for a sweep to show it")),
                            last_transition: stored.last_transition.clone(),
                            snapshot_at: None,
                            creation: Some(record),
                        },
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
                creation = Some(record);
            }
            Created::ByName => {}
            Created::Done(action) => return Ok(action),
        }
    }
    // The job acted on, whatever path found it (spec.jobId, the created job): the name rule
    // holds for the name Macie reports, so an id cannot bypass it.
    if let Observation::Found(job) = &observation
        && let Err(refusal) = job_rules(obj, &admitted, acted_on_name(obj, job))
    {
        return refused(ctx, &api, obj, &refusal).await;
    }
    let acting_on = match &observation {
        Observation::Found(job) => Some(job.job_id.as_str()),
        _ => None,
    };
    let step = ctx.step_for(&oref, obj.status.as_ref(), acting_on);
    let now = crate::runtime::clock::now();

    // Plan (pure).
    let mut p = plan::plan(desired, observation, snapshot_at, step.as_ref(), now, &ctx.config.plan);
    if let (Observation::Found(job), Some(snap)) = (&observation, &view.snapshot) {
        let peers = ctx.peers(obj, &place, job, &snap.by_name);
        let me = Declaration {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            desired,
            created: obj.meta().creation_timestamp.as_ref().map(|t| t.0),
            in_flight: matches!(
                &step,
                Some(Step {
                    state: StepState::InFlight { .. },
                    ..
                })
            ),
            shows_conflict: false,
        };
        let own = ownership::ownership(&me, &peers);
        // Peers whose reported conflict this declaration starts or ends: look at them now.
        for peer in ownership::peers_to_wake(&own, &peers) {
            let _ = ctx
                .trigger
                .unbounded_send(ObjectRef::new(&peer.name).within(&peer.namespace));
        }
        p = ownership::owned(p, &own);
    }
    if deleting {
        if let Some(why) = release_after_cancel(&observation, &p) {
            release(ctx, &api, obj, format!("deletionPolicy Cancel: {why}")).await?;
            return Ok(Action::await_change());
        }
        p.summary.message = format!(
            "deletionPolicy Cancel: the finalizer stays until the job is cancelled: {}",
            p.summary.message
        );
    }
    let mut stored = obj.status.clone().unwrap_or_default();
    let mut last_transition = stored.last_transition.clone();
    let prev_attempts = step
        .as_ref()
        .filter(|s| s.to == desired && p.step == Some(StepOutcome::RetryDue))
        .map_or(0, Step::attempts);
    resolve_step(ctx, &oref, step.as_ref(), p.step.as_ref(), &mut last_transition);
    if p.after_next_sweep {
        ctx.wake_after_sweep(&oref, &place, snapshot_at.unwrap_or(now));
    }
    let job = plan::shown_job(&observation, p.step.as_ref(), stored.job.as_ref());
    let mut summary = p.summary.clone();
    let mut recheck_at = p.recheck_at;

    // Act: write-ahead, the call, and what its result means.
    if let Act::Update { job_id, from, to } = &p.act {
        if !ctx.clients.gate().allows_writes() {
            tracing::info!(name = %obj.name_any(), "not the leader any more: no UpdateClassificationJob");
            return Ok(Action::requeue(ctx.poller.interval()));
        }
        let acted_on = match &observation {
            Observation::Found(job) => acted_on_name(obj, job),
            _ => None,
        };
        if let Err(refusal) = recheck(ctx, obj, acted_on) {
            return refused(ctx, &api, obj, &refusal).await;
        }
        let st = Step::new(job_id, from, *to, crate::runtime::clock::now());
        // Write-ahead: record the step in the status before the call, so that a replica that
        // takes over after a crash between the call and the status write does not repeat it.
        let intent = transition_record(&st, TransitionOutcome::Pending, None);
        stored = write_status(
            &api,
            obj,
            ctx,
            StatusUpdate {
                prev: &stored,
                region: &place.region,
                job: job.clone(),
                summary: &summary,
                last_transition: Some(intent),
                snapshot_at,
                creation: creation.clone(),
            },
        )
        .await?;
        // Again right before the call: the write-ahead took a round trip. A refusal here
        // rewrites the status without the write-ahead (no call was made).
        if let Err(refusal) = recheck(ctx, obj, acted_on) {
            return refused(ctx, &api, obj, &refusal).await;
        }
        let verdict = act(ctx, obj, &place, st, prev_attempts).await;
        match &verdict.step.state {
            StepState::InFlight { .. } => {
                // Only a sweep that started after the call can show its effect.
                ctx.wake_after_sweep(&oref, &place, verdict.step.requested_at);
            }
            StepState::Refused { retry_at, .. } => recheck_at = Some(*retry_at),
        }
        let mut record = transition_record(&verdict.step, verdict.outcome, step_error(&verdict.step));
        if record.error_code.is_some() {
            record.message = Some(verdict.summary.message.clone());
        }
        last_transition = Some(record);
        ctx.remember(&oref, Known::Step(verdict.step));
        summary = verdict.summary;
    } else if p.hold && !stored.conditions.is_empty() {
        // A transient sweep failure: the resource keeps its conditions.
        return Ok(Action::await_change());
    }

    // Status: one write when something changed, and an Event when the reason did.
    write_status(
        &api,
        obj,
        ctx,
        StatusUpdate {
            prev: &stored,
            region: &place.region,
            job,
            summary: &summary,
            last_transition,
            snapshot_at,
            creation,
        },
    )
    .await?;
    ctx.failures.clear(obj);

    Ok(match recheck_at {
        Some(t) => {
            let wait = crate::runtime::clock::now().duration_until(t).unsigned_abs();
            Action::requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
        }
        None if deleting => Action::requeue(ctx.poller.interval()),
        None => Action::await_change(),
    })
}

fn transition_record(step: &Step, outcome: TransitionOutcome, error: Option<String>) -> RequestedTransition {
    RequestedTransition {
        job_id: step.job_id.clone(),
        from: step.from.clone(),
        to: step.to.as_str().to_string(),
        // Whole seconds, rounded up: what the API stores, and never before the call.
        requested_at: Time(plan::ceil_second(step.requested_at)),
        outcome,
        error_code: error,
        message: None,
    }
}

/// The AWS error code a step's call ended with, if any.
fn step_error(step: &Step) -> Option<String> {
    match &step.state {
        StepState::InFlight { error } => error.clone(),
        StepState::Refused { code, .. } => Some(code.clone()),
    }
}

/// Records what became of the step in flight.
fn resolve_step(
    ctx: &Context,
    oref: &ObjectRef<MacieJob>,
    step: Option<&Step>,
    outcome: Option<&StepOutcome>,
    last_transition: &mut Option<RequestedTransition>,
) {
    let (Some(step), Some(outcome)) = (step, outcome) else {
        return;
    };
    // Timestamps are compared at the precision the API stores (whole seconds).
    let at = plan::ceil_second(step.requested_at).as_second();
    let new_outcome = match outcome {
        StepOutcome::Waiting => {
            // A cached object older than this step's own write-ahead (the watch lags behind
            // our writes) must not take the step's record out of the status: the step this
            // process holds is the record until a sweep settles it.
            if last_transition
                .as_ref()
                .is_none_or(|t| t.requested_at.0.as_second() < at)
            {
                *last_transition = Some(transition_record(step, TransitionOutcome::Pending, step_error(step)));
            }
            return;
        }
        StepOutcome::Succeeded => Some(TransitionOutcome::Succeeded),
        StepOutcome::Superseded => Some(TransitionOutcome::Superseded),
        StepOutcome::TimedOut => Some(TransitionOutcome::Failed),
        StepOutcome::RetryDue => None,
    };
    ctx.remember(oref, Known::Cleared);
    let Some(new_outcome) = new_outcome else {
        return;
    };
    let t = match last_transition {
        Some(t) if t.requested_at.0.as_second() == at => t,
        // The cached object predates this step's own write-ahead (the watch lags behind our
        // writes): the step this process holds is the record.
        Some(t) if t.requested_at.0.as_second() > at => return,
        _ => last_transition.insert(transition_record(step, TransitionOutcome::Pending, step_error(step))),
    };
    if t.outcome != TransitionOutcome::Pending {
        return;
    }
    t.outcome = new_outcome;
    if *outcome == StepOutcome::TimedOut {
        t.message = Some(format!(
            "no sweep that started within {:?} after the call showed the change",
            ctx.config.plan.step_timeout
        ));
    }
}

/// Calls UpdateClassificationJob for the step the plan chose, and judges the result.
async fn act(ctx: &Context, obj: &MacieJob, place: &Place, step: Step, prev_attempts: u32) -> CallVerdict {
    // Every AWS write is logged with where it goes and who asked for it.
    tracing::info!(
        account = %place.account,
        region = %place.region,
        operation = "UpdateClassificationJob",
        job_id = %step.job_id,
        from = %step.from,
        to = step.to.as_str(),
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        uid = %obj.uid().unwrap_or_default(),
        "AWS write"
    );
    let result = ctx.clients.api().update_job(place, &step.job_id, step.to).await;
    ctx.clients
        .metrics()
        .call("UpdateClassificationJob", MacieError::outcome(&result));
    let what = format!(
        "UpdateClassificationJob {}: {} -> {}",
        step.job_id,
        step.from,
        step.to.as_str()
    );
    let jitter = 0.5 + crate::runtime::clock::random() * 0.5;
    let verdict = outcome::after_call(
        step,
        result.as_ref().map(|_| ()),
        prev_attempts,
        crate::runtime::clock::now(),
        jitter,
    );
    if let (CallEvent::Failed, Err(e)) = (verdict.event, &result) {
        publish(
            ctx,
            obj,
            EventType::Warning,
            "UpdateFailed",
            format!("{what} failed: {e}"),
        )
        .await;
    }
    verdict
}

/// Reconcile again at `at` (at least 1 s, at most a day from now).
fn requeue_at(at: Timestamp) -> Action {
    let wait = crate::runtime::clock::now().duration_until(at).unsigned_abs();
    Action::requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
}

/// A resource its MacieAccount refuses: no Macie call; the status says which rule refused
/// (Stalled, with an Event on entering it), and a deletion proceeds as `after_refusal` says.
async fn refused(ctx: &Context, api: &Api<MacieJob>, obj: &MacieJob, refusal: &Refusal) -> Result<Action, Error> {
    let mut summary = refusal.reason().summary(refusal.message());
    let next = match after_refusal(obj, refusal) {
        AfterRefusal::Release(why) => {
            release(ctx, api, obj, why).await?;
            return Ok(Action::await_change());
        }
        AfterRefusal::Hold => {
            summary.message = format!(
                "deletionPolicy Cancel: the finalizer stays until the job can be cancelled: {}",
                summary.message
            );
            ctx.failures.retry(obj, &summary.message)
        }
        AfterRefusal::Report => Action::await_change(),
    };
    let stored = obj.status.clone().unwrap_or_default();
    write_status(
        api,
        obj,
        ctx,
        StatusUpdate {
            prev: &stored,
            region: region_of(&obj.spec, &ctx.config.default_region),
            // Nothing observed is shown to a refused resource.
            job: None,
            summary: &summary,
            last_transition: stored.last_transition.clone(),
            snapshot_at: None,
            creation: stored.creation.clone(),
        },
    )
    .await?;
    Ok(next)
}

/// Releases the finalizer of a resource being deleted, with an Event saying why.
async fn release(ctx: &Context, api: &Api<MacieJob>, obj: &MacieJob, why: String) -> Result<(), Error> {
    publish(ctx, obj, EventType::Normal, "Released", why).await;
    set_finalizer(api, obj, false).await?;
    ctx.forget(obj);
    Ok(())
}

/// The longest AWS error code a record keeps (its schema's bound).
const ERROR_CODE_MAX: usize = 128;

/// What a status write is given.
struct StatusUpdate<'a> {
    /// What the resource holds now.
    prev: &'a MacieJobStatus,
    region: &'a str,
    job: Option<ObservedJob>,
    summary: &'a Summary,
    last_transition: Option<RequestedTransition>,
    snapshot_at: Option<Timestamp>,
    creation: Option<CreationRecord>,
}

/// Writes the status unless it equals what the resource holds (the shared
/// `runtime::status` write); returns what it holds now. Entering a new reason is announced as
/// the reason says.
async fn write_status(
    api: &Api<MacieJob>,
    obj: &MacieJob,
    ctx: &Context,
    u: StatusUpdate<'_>,
) -> Result<MacieJobStatus, Error> {
    let StatusUpdate {
        prev,
        region,
        job,
        summary,
        last_transition,
        snapshot_at,
        creation,
    } = u;
    // The records fit their schema's bounds, whatever Macie's messages are.
    let last_transition = last_transition.map(|mut t| {
        t.message = t.message.map(|m| crate::runtime::truncate(&m, conditions::MESSAGE_MAX));
        t.error_code = t.error_code.map(|c| crate::runtime::truncate(&c, ERROR_CODE_MAX));
        t
    });
    let creation = creation.map(|mut c| {
        c.message = c.message.map(|m| crate::runtime::truncate(&m, conditions::MESSAGE_MAX));
        c.error_code = c.error_code.map(|e| crate::runtime::truncate(&e, ERROR_CODE_MAX));
        c
    });
    let mut status = MacieJobStatus {
        observed_generation: obj.meta().generation,
        conditions: conditions::conditions(
            summary,
            obj.meta().generation,
            &prev.conditions,
            crate::runtime::clock::now(),
        ),
        region: Some(region.to_string()),
        job,
        last_sync_time: prev.last_sync_time.clone(),
        last_transition,
        creation,
    };
    if status::differs(Some(prev), &status)
        && let Some(t) = snapshot_at
    {
        status.last_sync_time = Some(status::api_time(t));
    }
    // Also when nothing changed: the write records what the status shows in the metrics.
    let to = status::Writer {
        api,
        recorder: &ctx.recorder,
        metrics: ctx.clients.metrics(),
    };
    status::write(to, obj, Some(prev), &status).await?;
    Ok(status)
}

async fn publish(ctx: &Context, obj: &MacieJob, type_: EventType, reason: &str, note: String) {
    let action = match reason {
        "UpdateFailed" => "UpdateClassificationJob",
        "Created" | "CreateFailed" => "CreateClassificationJob",
        "Released" => "ReleaseFinalizer",
        _ => "Observe",
    };
    crate::runtime::publish_event(&ctx.recorder, obj, type_, reason, action, note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeletionPolicy;

    #[test]
    fn a_restarted_process_reads_the_step_from_the_status() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let mut t = RequestedTransition {
            job_id: "j1".into(),
            from: "RUNNING".into(),
            to: "USER_PAUSED".into(),
            requested_at: Time(at),
            outcome: TransitionOutcome::Pending,
            error_code: None,
            message: None,
        };
        let s = step_from_status(&t).expect("pending is in flight");
        assert_eq!(s.state, StepState::InFlight { error: None });
        assert_eq!(s.requested_at, at);
        t.outcome = TransitionOutcome::Failed;
        t.error_code = Some("AccessDeniedException".into());
        let s = step_from_status(&t).expect("denied is held");
        assert!(matches!(
            s.state,
            StepState::Refused {
                reason: Reason::AccessDenied,
                ..
            }
        ));
        t.error_code = Some("ValidationException".into());
        assert_eq!(step_from_status(&t), None);
        t.outcome = TransitionOutcome::Succeeded;
        t.error_code = None;
        assert_eq!(step_from_status(&t), None);
    }

    #[test]
    fn names_job_by_id_or_by_a_unique_name() {
        let job = ObservedJob {
            job_id: "j1".into(),
            name: Some("nightly".into()),
            job_status: "RUNNING".into(),
            ..Default::default()
        };
        let mut by_name = HashMap::new();
        by_name.insert("nightly".to_string(), vec!["j1".to_string()]);
        let spec = |id: Option<&str>, name: Option<&str>| MacieJobSpec {
            job_id: id.map(str::to_string),
            job_name: name.map(str::to_string),
            job_status: DesiredJobStatus::Running,
            region: None,
            account_ref: None,
            definition: None,
            deletion_policy: DeletionPolicy::Orphan,
        };
        assert!(names_job(&spec(Some("j1"), None), &job, &by_name));
        assert!(!names_job(&spec(Some("j2"), None), &job, &by_name));
        assert!(names_job(&spec(None, Some("nightly")), &job, &by_name));
        assert!(!names_job(&spec(None, Some("other")), &job, &by_name));
        by_name.insert("nightly".to_string(), vec!["j1".to_string(), "j9".to_string()]);
        assert!(
            !names_job(&spec(None, Some("nightly")), &job, &by_name),
            "an ambiguous name names no job"
        );
    }
}

#[cfg(test)]
mod step_tests;
