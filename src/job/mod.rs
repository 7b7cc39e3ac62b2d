//! The MacieJob controller: observe (the shared sweep) -> plan (pure) -> act
//! (UpdateClassificationJob) -> status (server-side apply) and Events.

pub mod create;
mod creating;
pub mod drift;
pub mod lifecycle;
pub mod outcome;
pub mod ownership;
pub mod plan;
mod reconcile;
mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::events::Recorder;
use futures::TryStreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};

use crate::account::policy::{self, JobAsk, JobName, Refusal};
use crate::account::users::UserKind;
use crate::account::{Admitted, Change, Tenancy};
use crate::api::conditions;
use crate::api::macie_job::{CreationRecord, ObservedJob, RequestedTransition, TransitionOutcome};
use crate::api::{DeletionPolicy, DesiredJobStatus, MacieJob, MacieJobSpec, MacieJobStatus, ManagementPolicy};
use crate::macie::jobs::{Changes, InUse, JobPoller, OnChange, RegionView, Wanted};
use crate::macie::{MacieClients, Place};
use crate::runtime::memory::{self, Memory};
use crate::runtime::{Error, MANAGER, Next, status};
use create::CreateQueue;
use lifecycle::{Lifecycle, lifecycle};
use ownership::Declaration;
use plan::{Observation, Reason, Settings, Step, StepState};

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
    /// What this process remembers of each resource (see [`Remembered`]), with its failures
    /// and the version of its own last write: one entry, dropped in one place.
    memory: Arc<Memory<MacieJob, Remembered>>,
    /// Reconciles a resource now (a peer whose conflict this reconcile may have ended).
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<MacieJob>>,
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

/// What the controller remembers of one resource, beyond its failures and own last write: the
/// source of truth within this process (a status copy can lag behind the watch), with the
/// status as the fallback after a restart. Boxed parts: every resource has an entry once the
/// process wrote to it, and most hold none of them (10,000 entries: about 2 MiB, not 8).
#[derive(Debug, Clone, Default)]
pub(crate) struct Remembered {
    /// The step: in flight, refused until its retry time, or cleared.
    step: Option<Box<Known>>,
    /// The create of spec.definition.
    creation: Option<Box<CreationRecord>>,
    /// Reconcile after the first sweep of this place that starts later than this time (a
    /// step or a create in flight), even if it shows no change.
    waiter: Option<Box<(Place, Timestamp)>>,
}

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
/// (spec.jobName, or the observed name of the job it acts on by id). An Observe declaration
/// asks only to see the job: the name rules apply, the rules on writes do not.
fn job_rules(obj: &MacieJob, admitted: &Admitted, name: Option<JobName<'_>>) -> Result<(), Refusal> {
    let manage = obj.spec.management_policy == ManagementPolicy::Manage;
    policy::job_allowed(
        &admitted.place.account,
        &admitted.account.spec.jobs,
        JobAsk {
            name,
            desired: obj.spec.job_status.filter(|_| manage),
            deletion_policy: if manage {
                obj.spec.deletion_policy
            } else {
                DeletionPolicy::Orphan
            },
            definition: obj.spec.definition.as_ref().filter(|_| manage),
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

/// Whether the resource is paused, decided on the newest copies: the cache's copy of the
/// resource (its annotations may have changed since this reconcile began) and the MacieAccount
/// as the tenancy holds it now. None also for a resource not admitted (its refusal says why).
fn paused_now(ctx: &Context, obj: &MacieJob) -> Option<policy::Pause> {
    let newest = ctx.store.get(&ObjectRef::from_obj(obj));
    let obj = newest.as_deref().unwrap_or(obj);
    let admitted = admit(obj, &ctx.tenancy, &ctx.config.default_region).ok()?;
    policy::paused(&obj.metadata, &admitted.account)
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
        match self.memory.read(oref, |e| e.own.step.as_deref().cloned()).flatten() {
            Some(Known::Step(s)) => return Some(s),
            Some(Known::Cleared) => return None,
            None => {}
        }
        step_from_status(status?.last_transition.as_ref()?).filter(|s| acting_on == Some(s.job_id.as_str()))
    }

    fn remember(&self, oref: &ObjectRef<MacieJob>, known: Known) {
        self.memory.with(oref, |e| e.own.step = Some(Box::new(known)));
    }

    /// Reconcile `oref` after the first sweep of `place` that starts later than `after`.
    fn wake_after_sweep(&self, oref: &ObjectRef<MacieJob>, place: &Place, after: Timestamp) {
        self.memory
            .with(oref, |e| e.own.waiter = Some(Box::new((place.clone(), after))));
    }

    /// Drops everything this process keeps for the resource (memory, place in a create line).
    fn forget(&self, oref: &ObjectRef<MacieJob>) {
        self.memory.forget(oref);
        lock(&self.queue).leave(oref);
    }

    /// The resource's create: in memory, else the write-ahead status after a restart.
    fn creation_for(&self, oref: &ObjectRef<MacieJob>, status: Option<&MacieJobStatus>) -> Option<CreationRecord> {
        self.memory
            .read(oref, |e| e.own.creation.as_deref().cloned())
            .flatten()
            .or_else(|| status?.creation.clone())
    }

    fn remember_creation(&self, oref: &ObjectRef<MacieJob>, record: CreationRecord) {
        self.memory.with(oref, |e| e.own.creation = Some(Box::new(record)));
    }

    fn forget_creation(&self, oref: &ObjectRef<MacieJob>) {
        self.memory.with(oref, |e| e.own.creation = None);
    }

    /// The client token of a job at `place`, when known.
    fn token_of(&self, place: &Place, job_id: &str) -> Option<String> {
        lock(&self.tokens).get(&(place.clone(), job_id.to_string())).cloned()
    }

    fn keep_token(&self, place: &Place, job_id: &str, token: String) {
        lock(&self.tokens).insert((place.clone(), job_id.to_string()), token);
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
        // One pass over the cache per reconcile, cheapest test first (no allocation until a
        // resource names the same job).
        self.store
            .state()
            .iter()
            .filter(|o| names_job(&o.spec, job, by_name))
            .filter(|o| place_of(o, &self.tenancy, &self.config.default_region) == *place)
            .filter(|o| o.metadata.name != obj.metadata.name || o.metadata.namespace != obj.metadata.namespace)
            // A refused, paused or Observe resource is no declaration: it can neither act nor
            // hold others in Conflict.
            .filter(|o| o.spec.management_policy == ManagementPolicy::Manage)
            .filter(|o| {
                admit(o, &self.tenancy, &self.config.default_region)
                    .and_then(|a| {
                        job_rules(o, &a, declared_name(o)).and_then(|()| job_rules(o, &a, acted_on_name(o, job)))?;
                        Ok(policy::paused(&o.metadata, &a.account))
                    })
                    .is_ok_and(|paused| paused.is_none())
            })
            .filter_map(|o| {
                let desired = match lifecycle(o) {
                    Lifecycle::Manage { desired, .. } => desired,
                    _ => return None,
                };
                let in_flight = self
                    .memory
                    .read(&ObjectRef::from_obj(&**o), |e| {
                        matches!(e.own.step.as_deref(), Some(Known::Step(Step { job_id, state: StepState::InFlight { .. }, .. })) if *job_id == job.job_id)
                    })
                    .unwrap_or(false);
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
        let memory: Arc<Memory<MacieJob, Remembered>> = Arc::default();
        let on_change = after_sweep(
            store.clone(),
            memory.clone(),
            trigger_tx.clone(),
            tenancy.clone(),
            default_region.clone(),
        );
        let in_use = in_use_by(store.clone(), tenancy.clone(), default_region.clone());
        let wanted = wanted_by(store.clone(), tenancy.clone(), default_region.clone());
        let poller = Arc::new(JobPoller::new(
            clients.clone(),
            config.page_size,
            config.poll_interval,
            on_change,
            in_use,
            wanted,
        ));
        follow_tenancy(&tenancy, store.clone(), trigger_tx.clone());
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
            memory,
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
    /// Resources with (a step known, a sweep waited for, a failure counted).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.0.memory.scan(|m| {
            let count = |f: &dyn Fn(&memory::Entry<Remembered>) -> bool| m.values().filter(|e| f(e)).count();
            (
                count(&|e| e.own.step.is_some()),
                count(&|e| e.own.waiter.is_some()),
                count(&|e| e.failures > 0),
            )
        })
    }
}

/// Whether a place still needs its sweeper: only admitted resources keep one (a refused region
/// gets none).
fn in_use_by(store: Store<MacieJob>, tenancy: Arc<Tenancy>, default_region: String) -> InUse {
    Arc::new(move |place: &Place| {
        store
            .state()
            .iter()
            .any(|o| admit(o, &tenancy, &default_region).is_ok_and(|a| a.place == *place))
    })
}

/// A MacieAccount or a namespace changed: decide again for the resources it concerns.
fn follow_tenancy(
    tenancy: &Arc<Tenancy>,
    store: Store<MacieJob>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<MacieJob>>,
) {
    let t = Arc::downgrade(tenancy);
    tenancy.subscribe(move |change: &Change| {
        let Some(tenancy) = t.upgrade() else { return };
        for o in store.state() {
            if tenancy.affects(change, &o.namespace().unwrap_or_default(), o.spec.account_ref.as_ref()) {
                let _ = trigger.unbounded_send(ObjectRef::from_obj(&*o));
            }
        }
    });
}

/// What the admitted resources at a place name, for its sweeps to read (a refused resource
/// causes no read either): job ids (spec.jobId, created jobs) and names.
fn wanted_by(store: Store<MacieJob>, tenancy: Arc<Tenancy>, default_region: String) -> Wanted {
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
}

/// After a sweep of `place`: reconcile the resources that name the changed jobs and those
/// waiting for a sweep newer than the one they saw; drop what is kept for deleted resources.
fn after_sweep(
    store: Store<MacieJob>,
    memory: Arc<Memory<MacieJob, Remembered>>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<MacieJob>>,
    tenancy: Arc<Tenancy>,
    default_region: String,
) -> OnChange {
    Arc::new(move |place: &Place, changes: &Changes, swept_at: Option<Timestamp>| {
        let objs = store.state();
        if !changes.is_empty() {
            for obj in &objs {
                if place_of(obj, &tenancy, &default_region) == *place
                    && changes.affects(obj.spec.job_id.as_deref(), obj.spec.job_name.as_deref())
                {
                    let _ = trigger.unbounded_send(ObjectRef::from_obj(&**obj));
                }
            }
        }
        if let Some(t) = swept_at {
            let due = memory.take_where(|r| {
                let due = r.waiter.as_deref().is_some_and(|(p, after)| p == place && *after < t);
                if due {
                    r.waiter = None;
                }
                due
            });
            for k in due {
                let _ = trigger.unbounded_send(k);
            }
        }
        let live: std::collections::HashSet<ObjectRef<MacieJob>> =
            objs.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
        memory.retain(|k| live.contains(k));
    })
}

fn error_policy(obj: Arc<MacieJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.memory.retry(&obj, err).action()
}

async fn reconcile(obj: Arc<MacieJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t = std::time::Instant::now();
    let r = reconcile::reconcile_inner(&obj, &ctx).await;
    ctx.clients
        .metrics()
        .reconciled("MacieJob", t.elapsed(), r.as_ref().err().map(Error::category));
    r.map(Next::action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeletionPolicy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
            job_status: Some(DesiredJobStatus::Running),
            region: None,
            account_ref: None,
            definition: None,
            deletion_policy: DeletionPolicy::Orphan,
            management_policy: Default::default(),
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
mod sim;
#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod wanted_tests;
