//! The MacieJob controller: observe (the shared sweep) -> plan (pure) -> act
//! (UpdateClassificationJob) -> status (server-side apply) and Events.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::conditions::{self, Phase, Summary};
use crate::api::macie_job::{ObservedJob, RequestedTransition, TransitionOutcome};
use crate::api::{DeletionPolicy, DesiredJobStatus, MacieJob, MacieJobSpec, MacieJobStatus};
use crate::macie::jobs::{Changes, JobPoller, OnChange, RegionView};
use crate::macie::{MacieClients, MacieError};
use crate::runtime::{Error, Failures, MANAGER};
use plan::{Act, Observation, Settings, Step, StepOutcome};

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
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub clients: Arc<MacieClients>,
    pub poller: Arc<JobPoller>,
    pub config: Config,
    recorder: Recorder,
    /// Steps in flight, by resource: the source of truth within this process (the status copy
    /// can lag behind the watch), with the status as the fallback after a restart. `None`
    /// records that no step is in flight, whatever an older status copy says.
    steps: Mutex<HashMap<ObjectRef<MacieJob>, Option<Step>>>,
    /// Consecutive failures, for backoff.
    failures: Failures<MacieJob>,
    /// Resources waiting for a sweep that started after the given time (a step in flight):
    /// woken by the first such sweep even if it shows no change.
    waiters: Waiters,
}

/// Resource -> (region, wake after a sweep started later than this).
type Waiters = Arc<Mutex<HashMap<ObjectRef<MacieJob>, (String, Timestamp)>>>;

impl Context {
    fn region_of(&self, spec: &MacieJobSpec) -> String {
        spec.region
            .clone()
            .unwrap_or_else(|| self.config.default_region.clone())
    }

    fn step_for(&self, oref: &ObjectRef<MacieJob>, status: Option<&MacieJobStatus>) -> Option<Step> {
        if let Some(s) = lock(&self.steps).get(oref) {
            return s.clone();
        }
        let status = status?;
        let t = status.last_transition.as_ref()?;
        if t.outcome != TransitionOutcome::Pending {
            return None;
        }
        Some(Step {
            job_id: t.job_id.clone(),
            from: t.from.clone(),
            to: parse_desired(&t.to)?,
            requested_at: t.requested_at.0,
            error: t.error_code.clone(),
        })
    }

    /// Reconcile `oref` after the first sweep of `region` that starts later than `after`.
    fn wake_after_sweep(&self, oref: &ObjectRef<MacieJob>, region: &str, after: Timestamp) {
        lock(&self.waiters).insert(oref.clone(), (region.to_string(), after));
    }

    fn forget(&self, obj: &MacieJob) {
        lock(&self.steps).remove(&ObjectRef::from_obj(obj));
        lock(&self.waiters).remove(&ObjectRef::from_obj(obj));
        self.failures.clear(obj);
    }
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
        return Observation::SweepFailed(e);
    }
    let Some(snap) = &view.snapshot else {
        return Observation::NoSweepYet;
    };
    if let Some(id) = &spec.job_id {
        return snap.jobs.get(id).map_or(Observation::NotFound, Observation::Found);
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
    /// Builds the context and starts the shared poller of the default region.
    pub fn new(client: kube::Client, clients: Arc<MacieClients>, config: Config) -> JobController {
        let api: Api<MacieJob> = match &config.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let controller = Controller::new(api, watcher::Config::default().any_semantic())
            .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency));
        let store = controller.store();
        let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded::<ObjectRef<MacieJob>>();
        let default_region = config.default_region.clone();
        let waiters: Waiters = Arc::default();
        let sweep_waiters = waiters.clone();
        // After a sweep: reconcile the resources that name the changed jobs, and those waiting
        // for a sweep newer than the one they saw.
        let on_change: OnChange = Arc::new(move |region: &str, changes: &Changes, swept_at: Option<Timestamp>| {
            if !changes.is_empty() {
                for obj in store.state() {
                    let r = obj.spec.region.as_deref().unwrap_or(&default_region);
                    if r == region && changes.affects(obj.spec.job_id.as_deref(), obj.spec.job_name.as_deref()) {
                        let _ = trigger_tx.unbounded_send(ObjectRef::from_obj(&*obj));
                    }
                }
            }
            if let Some(t) = swept_at {
                let mut w = lock(&sweep_waiters);
                let due: Vec<ObjectRef<MacieJob>> = w
                    .iter()
                    .filter(|(_, (r, after))| r == region && *after < t)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    w.remove(&k);
                    let _ = trigger_tx.unbounded_send(k);
                }
            }
        });
        let poller = Arc::new(JobPoller::new(
            clients.clone(),
            config.page_size,
            config.poll_interval,
            on_change,
        ));
        poller.subscribe(&config.default_region);
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        let ctx = Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clients,
            poller,
            config,
            steps: Mutex::new(HashMap::new()),
            failures: Failures::default(),
            waiters,
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

    /// Runs until `shutdown` resolves.
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

fn error_policy(obj: Arc<MacieJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.failures.retry(&obj, err)
}

async fn reconcile(obj: Arc<MacieJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t = std::time::Instant::now();
    let r = reconcile_inner(obj, &ctx).await;
    ctx.clients
        .metrics()
        .reconciled("MacieJob", t.elapsed(), r.as_ref().err().map(Error::category));
    r
}

async fn reconcile_inner(obj: Arc<MacieJob>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ctx = ctx.clone();
    let oref = ObjectRef::from_obj(&*obj);
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<MacieJob> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);

    if obj.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            ctx.forget(&obj);
            return Ok(Action::await_change());
        }
        return cleanup(&obj, &api, &ctx, &oref).await;
    }
    let wants_finalizer = obj.spec.deletion_policy == DeletionPolicy::Cancel;
    if wants_finalizer != has_finalizer {
        set_finalizer(&api, &obj, wants_finalizer).await?;
        // The update triggers the next reconcile.
        return Ok(Action::await_change());
    }

    let region = ctx.region_of(&obj.spec);
    let view = ctx.poller.view(&region);
    let observation = resolve(&obj.spec, &view);
    let snapshot_at = view.snapshot.as_ref().map(|s| s.started_at);
    let step = ctx.step_for(&oref, obj.status.as_ref());
    let now = Timestamp::now();
    let p = plan::plan(
        obj.spec.job_status,
        observation,
        snapshot_at,
        step.as_ref(),
        now,
        &ctx.config.plan,
    );

    if p.step == Some(StepOutcome::Waiting) {
        // Look again after the next sweep, whether or not it shows a change.
        ctx.wake_after_sweep(&oref, &region, snapshot_at.unwrap_or(now));
    }
    // What the resource's status holds (after our own writes in this reconcile).
    let mut stored = obj.status.clone().unwrap_or_default();
    let mut last_transition = stored.last_transition.clone();
    resolve_step(&ctx, &oref, step.as_ref(), p.step.as_ref(), &mut last_transition);

    let mut summary = p.summary.clone();
    let mut recheck_at = p.recheck_at;
    let job = match observation {
        Observation::Found(j) => Some(j.clone()),
        Observation::NotFound | Observation::Ambiguous(_) => None,
        Observation::NoSweepYet | Observation::SweepFailed(_) => stored.job.clone(),
    };
    if let Act::Update { job_id, from, to } = &p.act {
        // Write-ahead: record the step in the status before the call, so that a replica that
        // takes over after a crash between the call and the status write does not repeat it.
        let requested_at = Timestamp::now();
        let intent = RequestedTransition {
            job_id: job_id.clone(),
            from: from.clone(),
            to: to.as_str().to_string(),
            requested_at: Time(requested_at),
            outcome: TransitionOutcome::Pending,
            error_code: None,
            message: None,
        };
        stored = write_status(
            &api,
            &obj,
            &ctx,
            &stored,
            &region,
            job.clone(),
            &summary,
            Some(intent),
            snapshot_at,
        )
        .await?;
        let outcome = act(&ctx, &obj, &region, &oref, job_id, from, *to, requested_at).await?;
        if matches!(lock(&ctx.steps).get(&oref), Some(Some(_))) {
            // A step in flight: only a sweep that started after the call can show its effect.
            ctx.wake_after_sweep(&oref, &region, requested_at);
        }
        summary = outcome.summary;
        last_transition = outcome.transition.or(last_transition);
        if let Some(t) = outcome.recheck_at {
            recheck_at = Some(t);
        }
    }

    write_status(
        &api,
        &obj,
        &ctx,
        &stored,
        &region,
        job,
        &summary,
        last_transition,
        snapshot_at,
    )
    .await?;
    ctx.failures.clear(&obj);

    Ok(match recheck_at {
        Some(t) => {
            let wait = now.duration_until(t).unsigned_abs();
            Action::requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
        }
        None => Action::await_change(),
    })
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
    let new_outcome = match outcome {
        StepOutcome::Waiting => return,
        StepOutcome::Succeeded => TransitionOutcome::Succeeded,
        StepOutcome::Superseded => TransitionOutcome::Superseded,
        StepOutcome::TimedOut => TransitionOutcome::Failed,
    };
    lock(&ctx.steps).insert(oref.clone(), None);
    if let Some(t) = last_transition.as_mut()
        && t.requested_at.0 == step.requested_at
        && t.outcome == TransitionOutcome::Pending
    {
        t.outcome = new_outcome;
        if *outcome == StepOutcome::TimedOut {
            t.message = Some(format!(
                "no sweep showed the change within {:?}",
                ctx.config.plan.step_timeout
            ));
        }
    }
}

struct ActOutcome {
    summary: Summary,
    transition: Option<RequestedTransition>,
    recheck_at: Option<Timestamp>,
}

/// Calls UpdateClassificationJob for a step the plan chose, and records the step.
#[allow(clippy::too_many_arguments)]
async fn act(
    ctx: &Context,
    obj: &MacieJob,
    region: &str,
    oref: &ObjectRef<MacieJob>,
    job_id: &str,
    from: &str,
    to: DesiredJobStatus,
    requested_at: Timestamp,
) -> Result<ActOutcome, Error> {
    let result = update_job(&ctx.clients.client(region), job_id, to).await;
    ctx.clients
        .metrics()
        .call("UpdateClassificationJob", MacieError::outcome(&result));
    let mut step = Step {
        job_id: job_id.to_string(),
        from: from.to_string(),
        to,
        requested_at,
        error: None,
    };
    let transition = |outcome, err: Option<&MacieError>| RequestedTransition {
        job_id: job_id.to_string(),
        from: from.to_string(),
        to: to.as_str().to_string(),
        requested_at: Time(requested_at),
        outcome,
        error_code: err.map(|e| e.code().to_string()),
        message: err.map(|e| e.message().to_string()),
    };
    let recheck_at = Some(plan_deadline(requested_at, ctx.config.plan.step_timeout));
    match result {
        Ok(()) => {
            lock(&ctx.steps).insert(oref.clone(), Some(step));
            publish(
                ctx,
                obj,
                EventType::Normal,
                "UpdateRequested",
                format!("UpdateClassificationJob {job_id}: {from} -> {}", to.as_str()),
            )
            .await;
            Ok(ActOutcome {
                summary: Summary::new(Phase::Reconciling, "Transitioning", plan::transitioning(from, to)),
                transition: Some(transition(TransitionOutcome::Pending, None)),
                recheck_at,
            })
        }
        // Not processed: no step in flight (whatever the write-ahead status says); retry with
        // backoff through the error policy.
        Err(e @ MacieError::Throttled { .. }) => {
            lock(&ctx.steps).insert(oref.clone(), None);
            Err(Error::Macie(e))
        }
        Err(e) => {
            publish(
                ctx,
                obj,
                EventType::Warning,
                "UpdateFailed",
                format!(
                    "UpdateClassificationJob {job_id}: {from} -> {} failed: {e}",
                    to.as_str()
                ),
            )
            .await;
            let (summary, outcome) = match &e {
                MacieError::AccessDenied { .. } => (
                    Summary::new(
                        Phase::Stalled,
                        "AccessDenied",
                        format!(
                            "UpdateClassificationJob failed: {e}; check the operator's IAM role (macie2:UpdateClassificationJob)"
                        ),
                    ),
                    TransitionOutcome::Failed,
                ),
                MacieError::NotFound { .. } => (
                    Summary::new(
                        Phase::Reconciling,
                        "JobNotFound",
                        format!("UpdateClassificationJob: {e}"),
                    ),
                    TransitionOutcome::Failed,
                ),
                MacieError::Uncertain { .. } => (
                    Summary::new(
                        Phase::Reconciling,
                        "Transitioning",
                        format!(
                            "UpdateClassificationJob failed with {e}; it may have taken effect, so the operator waits for a sweep to show the job's status before trying again"
                        ),
                    ),
                    TransitionOutcome::Pending,
                ),
                _ => (
                    Summary::new(
                        Phase::Reconciling,
                        "UpdateRejected",
                        format!(
                            "Macie rejected UpdateClassificationJob {from} -> {}: {e}; the operator waits for a sweep to show the job's status before trying again",
                            to.as_str()
                        ),
                    ),
                    TransitionOutcome::Failed,
                ),
            };
            if matches!(e, MacieError::AccessDenied { .. } | MacieError::NotFound { .. }) {
                // Nothing was done; look again after a while.
                lock(&ctx.steps).insert(oref.clone(), None);
                return Ok(ActOutcome {
                    summary,
                    transition: Some(transition(outcome, Some(&e))),
                    recheck_at: Some(plan_deadline(Timestamp::now(), ctx.poller.interval() * 5)),
                });
            }
            // Block a repeat until a sweep shows the job (Macie applies changes asynchronously
            // and a 5xx may hide a success).
            step.error = Some(e.code().to_string());
            lock(&ctx.steps).insert(oref.clone(), Some(step));
            Ok(ActOutcome {
                summary,
                transition: Some(transition(outcome, Some(&e))),
                recheck_at,
            })
        }
    }
}

fn plan_deadline(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// UpdateClassificationJob without SDK retries: a retried call after a lost response could
/// repeat a step that already took effect. Throttling is retried by the caller (the call was
/// not processed); anything uncertain waits for the next sweep.
pub async fn update_job(client: &aws_sdk_macie2::Client, job_id: &str, to: DesiredJobStatus) -> Result<(), MacieError> {
    use aws_sdk_macie2::config::retry::RetryConfig;
    client
        .update_classification_job()
        .job_id(job_id)
        .job_status(aws_sdk_macie2::types::JobStatus::from(to.as_str()))
        .customize()
        .config_override(aws_sdk_macie2::config::Config::builder().retry_config(RetryConfig::disabled()))
        .send()
        .await
        .map(|_| ())
        .map_err(MacieError::from_sdk)
}

/// Deletion with `deletionPolicy: Cancel`: cancel the job (unless it is already CANCELLED,
/// COMPLETE or gone), then release the finalizer.
async fn cleanup(
    obj: &MacieJob,
    api: &Api<MacieJob>,
    ctx: &Context,
    oref: &ObjectRef<MacieJob>,
) -> Result<Action, Error> {
    let region = ctx.region_of(&obj.spec);
    let view = ctx.poller.view(&region);
    let observation = resolve(&obj.spec, &view);
    let step = ctx.step_for(oref, obj.status.as_ref());
    let snapshot_at = view.snapshot.as_ref().map(|s| s.started_at);
    let p = plan::plan(
        DesiredJobStatus::Cancelled,
        observation,
        snapshot_at,
        step.as_ref(),
        Timestamp::now(),
        &ctx.config.plan,
    );
    let release = match observation {
        Observation::NotFound => Some("job no longer exists; nothing to cancel".to_string()),
        Observation::Ambiguous(_) => Some(format!("{}; nothing was cancelled", p.summary.message)),
        Observation::Found(_) if p.summary.phase == Phase::Ready => Some(p.summary.message.clone()),
        _ => None,
    };
    if let Some(msg) = release {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Released",
            format!("deletionPolicy Cancel: {msg}"),
        )
        .await;
        set_finalizer(api, obj, false).await?;
        ctx.forget(obj);
        return Ok(Action::await_change());
    }
    if let Act::Update { job_id, from, to } = &p.act {
        let out = act(ctx, obj, &region, oref, job_id, from, *to, Timestamp::now()).await?;
        tracing::info!(name = %obj.name_any(), reason = %out.summary.reason, "cancelling job before deletion");
    } else if p.step == Some(StepOutcome::Waiting) || step.is_none() {
        tracing::debug!(name = %obj.name_any(), reason = %p.summary.reason, "waiting to release finalizer");
    }
    // The sweep that shows the job cancelled triggers the next reconcile; recheck anyway.
    Ok(Action::requeue(ctx.poller.interval()))
}

async fn set_finalizer(api: &Api<MacieJob>, obj: &MacieJob, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = obj.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": obj.resource_version() }
    });
    api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Writes the status unless it equals `prev` (what the resource holds); returns what it holds now.
#[allow(clippy::too_many_arguments)]
async fn write_status(
    api: &Api<MacieJob>,
    obj: &MacieJob,
    ctx: &Context,
    prev: &MacieJobStatus,
    region: &str,
    job: Option<ObservedJob>,
    summary: &Summary,
    last_transition: Option<RequestedTransition>,
    snapshot_at: Option<Timestamp>,
) -> Result<MacieJobStatus, Error> {
    let mut status = MacieJobStatus {
        observed_generation: obj.meta().generation,
        conditions: conditions::conditions(summary, obj.meta().generation, &prev.conditions, Timestamp::now()),
        region: Some(region.to_string()),
        job,
        last_sync_time: prev.last_sync_time.clone(),
        last_transition,
    };
    if status == *prev {
        return Ok(status);
    }
    if let Some(t) = snapshot_at {
        status.last_sync_time = Some(Time(t));
    }
    let patch = json!({
        "apiVersion": MacieJob::api_version(&()),
        "kind": MacieJob::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;

    // An Event when the resource enters a new state.
    let before = conditions::find(&prev.conditions, conditions::READY).map(|c| c.reason.as_str());
    if before != Some(summary.reason.as_str()) && summary.reason != "Transitioning" {
        let kind = match (summary.phase, summary.reason.as_str()) {
            (Phase::Ready, "Converged" | "TerminalState") => EventType::Normal,
            (Phase::Reconciling, "WaitingForSweep") => EventType::Normal,
            _ => EventType::Warning,
        };
        publish(ctx, obj, kind, &summary.reason, summary.message.clone()).await;
    }
    Ok(status)
}

async fn publish(ctx: &Context, obj: &MacieJob, type_: EventType, reason: &str, note: String) {
    crate::runtime::publish_event(&ctx.recorder, obj, type_, reason, "Reconcile", note).await;
}
