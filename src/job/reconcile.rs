//! One MacieJob reconcile, as named steps. Each step either ends the reconcile (a `Next`) or
//! hands the next step its input, and makes only the effect its name says:
//!
//! 1. `forget_if_gone`: a resource gone from the API server is forgotten.
//! 2. `wait_for_own_write`: a copy older than this process's own last write is never written
//!    from (the watch brings the newer copy).
//! 3. `admit`: the MacieAccount admits the resource and its rules allow what it asks.
//! 4. `keep_finalizer`: the Cancel finalizer is added, or released.
//! 5. `observe`: the place's latest sweep (or a later read that confirmed a call), the
//!    resource's create and step (no effect). managementPolicy Observe ends in `observe_only`:
//!    the name rule, the job against what is declared (and the definition's settings), the
//!    status; no Macie write.
//! 6. `creating::create_job`: spec.definition: the job is created once, then followed.
//! 7. `check_acted_on`: the name rule holds for the job acted on, however it was found.
//! 8. `plan` and `settle_ownership` (pure, but for waking peers whose conflict changes).
//! 9. `release_after_cancel`: a deletion with Cancel ends once the job is cancelled.
//! 10. `settle_step`: what became of the step in flight.
//! 11. `wait_for_list`: a later sweep still lists the job as it was before a confirmed call:
//!     nothing is done until they agree (or the step timeout runs out).
//! 12. `hold_if_paused`: the pause annotation (on the resource or its MacieAccount) holds
//!     every Macie write; the status says so, with what Macie shows.
//! 13. `update_job`: the write-ahead, the rules and the pause again, UpdateClassificationJob;
//!     a read of the job confirms the call before the next sweep (`JobPoller::confirm`).
//! 14. `report`: one status write when something changed, and the Event of a new reason.

use std::ops::ControlFlow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::lifecycle::{AfterRefusal, Lifecycle, after_refusal, lifecycle, set_finalizer};
use super::outcome::{self, CallEvent, CallVerdict};
use super::ownership::{self, Declaration};
use super::plan::{self, Act, Observation, Plan, Step, StepOutcome, StepState};
use super::report::{StatusUpdate, publish, write_status};
use super::{Context, Known, acted_on_name, admit, declared_name, job_rules, paused_now, recheck, resolve};
use crate::account::Admitted;
use crate::account::policy::{Pause, Refusal};
use crate::api::conditions::Summary;
use crate::api::macie_job::{CreationRecord, ObservedJob, RequestedTransition, TransitionOutcome};
use crate::api::{DesiredJobStatus, MacieJob, MacieJobStatus};
use crate::macie::jobs::RegionView;
use crate::macie::{MacieError, Place};
use crate::proceed;
use crate::runtime::events::EventType;
use crate::runtime::{Error, Flow, Next, clock, go, stop};

/// One reconcile of `obj`.
pub(super) async fn reconcile_inner(obj: &MacieJob, ctx: &Context) -> Result<Next, Error> {
    let r = Reconcile::new(obj, ctx);
    proceed!(r.forget_if_gone());
    proceed!(r.wait_for_own_write());
    let admitted = proceed!(r.admit().await);
    let intent = proceed!(r.keep_finalizer().await);
    let view = r.view(&admitted.place);
    let seen = r.observe(&admitted.place, &view);
    let (desired, deleting) = match intent {
        Intent::Observe(desired) => return r.observe_only(&admitted, seen, desired).await,
        Intent::Manage { desired, deleting } => (desired, deleting),
    };
    let seen = proceed!(super::creating::create_job(&r, seen, desired).await);
    proceed!(r.check_acted_on(&admitted, &seen).await);
    let planned = r.settle_ownership(r.plan(desired, &seen), desired, &seen);
    let planned = proceed!(r.release_after_cancel(planned, deleting, &seen).await);
    let report = r.settle_step(&planned, &seen);
    let report = proceed!(r.wait_for_list(report, &seen, deleting).await);
    let report = proceed!(r.hold_if_paused(report, &planned, &seen, deleting).await);
    let report = proceed!(r.update_job(report, &planned, &seen).await);
    r.report(report, &seen, deleting).await
}

/// What every step of one reconcile shares.
pub(super) struct Reconcile<'a> {
    pub(super) obj: &'a MacieJob,
    pub(super) ctx: &'a Context,
    pub(super) api: Api<MacieJob>,
    pub(super) oref: ObjectRef<MacieJob>,
}

/// What the reconcile saw of Macie: the place's latest sweep and what it says of the job.
pub(super) struct Seen<'v> {
    pub(super) place: Place,
    pub(super) view: &'v RegionView,
    /// Start of the sweep the observation comes from.
    pub(super) snapshot_at: Option<Timestamp>,
    pub(super) observation: Observation<'v>,
    /// The resource's create (spec.definition), as this process knows it.
    pub(super) creation: Option<CreationRecord>,
    /// The observation is a read that confirmed a call, and a later sweep still lists the job
    /// in its status before the call: the list may be behind the read, or the job changed back.
    pub(super) list_behind: bool,
}

/// What the resource asks of the reconcile, once its lifecycle is settled.
enum Intent {
    /// Keep the job in `desired` (CANCELLED while being deleted with Cancel).
    Manage { desired: DesiredJobStatus, deleting: bool },
    /// managementPolicy Observe: report the job against what is declared, write nothing.
    Observe(Option<DesiredJobStatus>),
}

/// The plan, and the step it was made with.
pub(super) struct Planned {
    plan: Plan,
    step: Option<Step>,
}

/// What the status will say.
pub(super) struct Report {
    stored: MacieJobStatus,
    job: Option<ObservedJob>,
    summary: Summary,
    last_transition: Option<RequestedTransition>,
    recheck_at: Option<Timestamp>,
}

impl<'a> Reconcile<'a> {
    fn new(obj: &'a MacieJob, ctx: &'a Context) -> Reconcile<'a> {
        Reconcile {
            obj,
            ctx,
            api: crate::runtime::object_api(ctx.client.clone(), obj),
            oref: ObjectRef::from_obj(obj),
        }
    }

    /// A resource gone (deleted, no finalizer left) is forgotten.
    fn forget_if_gone(&self) -> Flow<()> {
        if lifecycle(self.obj) == Lifecycle::Forget {
            self.ctx.forget(&self.oref);
            return stop(Next::AwaitChange);
        }
        go(())
    }

    /// A copy older than this process's own last write is not written from.
    fn wait_for_own_write(&self) -> Flow<()> {
        self.ctx.memory.wait_for_own_write(self.obj)
    }

    /// The MacieAccount admits the resource and its rules allow what the resource declares.
    async fn admit(&self) -> Flow<Admitted> {
        let (obj, ctx) = (self.obj, self.ctx);
        match admit(obj, &ctx.tenancy, &ctx.config.default_region)
            .and_then(|a| job_rules(obj, &a, declared_name(obj)).map(|()| a))
        {
            Ok(a) => {
                ctx.clients.use_account(&a.place.account, a.role());
                go(a)
            }
            Err(refusal) => self.refused(&refusal).await.map(ControlFlow::Break),
        }
    }

    /// The Cancel finalizer is added or removed as `deletionPolicy` says; a deletion that
    /// needs nothing of Macie releases it. Hands on what the resource asks.
    async fn keep_finalizer(&self) -> Flow<Intent> {
        match lifecycle(self.obj) {
            Lifecycle::Forget => stop(Next::AwaitChange),
            Lifecycle::SetFinalizer(present) => {
                // The update triggers the next reconcile.
                let written = set_finalizer(&self.api, self.obj, present).await?;
                self.ctx.memory.wrote(&written);
                stop(Next::AwaitChange)
            }
            Lifecycle::Release(why) => {
                self.release(why.to_string()).await?;
                stop(Next::AwaitChange)
            }
            Lifecycle::Manage { desired, deleting } => go(Intent::Manage { desired, deleting }),
            Lifecycle::Observe { desired } => go(Intent::Observe(desired)),
        }
    }

    /// managementPolicy Observe: the name rule for the job seen, then its picture against what
    /// is declared (Drifted where Manage would act); a step an earlier Manage left in flight
    /// keeps its record. No Macie write, no part in ownership.
    async fn observe_only(
        &self,
        admitted: &Admitted,
        seen: Seen<'_>,
        desired: Option<DesiredJobStatus>,
    ) -> Result<Next, Error> {
        proceed!(self.check_acted_on(admitted, &seen).await);
        self.release_peers(&seen);
        let drift = match (&self.obj.spec.definition, &seen.observation) {
            (Some(definition), Observation::Found(job)) => {
                proceed!(self.definition_drift(definition, job, &seen).await)
            }
            _ => Vec::new(),
        };
        let stored = self.obj.status.clone().unwrap_or_default();
        let summary = match drift.is_empty() {
            true => plan::observed_summary(
                desired,
                seen.observation,
                seen.snapshot_at,
                clock::now(),
                &self.ctx.config.plan,
            ),
            false => plan::Reason::Drifted.summary(super::drift::describe(&drift)),
        };
        let job = match &seen.observation {
            Observation::Found(job) => Some((*job).clone()),
            _ => None,
        };
        let report = Report {
            last_transition: stored.last_transition.clone(),
            stored,
            job,
            summary,
            recheck_at: None,
        };
        self.report(report, &seen, false).await
    }

    /// The place's latest sweep, with the reads that confirmed a call on this resource's job
    /// (the one its spec names, or the one it created) and no sweep has overtaken.
    fn view(&self, place: &Place) -> RegionView {
        let mut view = self.ctx.poller.view(place);
        let named = match resolve(&self.obj.spec, &view) {
            Observation::Found(job) => Some(job.job_id.clone()),
            _ => None,
        };
        let created = (self.ctx.creation_for(&self.oref, self.obj.status.as_ref())).and_then(|c| c.job_id);
        let ids: Vec<&str> = named.iter().chain(created.iter()).map(String::as_str).collect();
        self.ctx.poller.add_confirmations(place, &mut view, &ids);
        view
    }

    /// What the place's latest sweep (or a later read that confirms a call) says of the job
    /// the spec names (no effect).
    fn observe<'v>(&self, place: &Place, view: &'v RegionView) -> Seen<'v> {
        let swept_at = view.snapshot.as_ref().map(|s| s.started_at);
        let found = resolve(&self.obj.spec, view);
        let confirmed = match found {
            Observation::Found(job) => view.confirmed.get(&job.job_id),
            _ => None,
        };
        let (observation, snapshot_at, list_behind) = match (found, confirmed) {
            (Observation::Found(_), Some(c)) => (
                Observation::Found(&c.job),
                Some(c.started_at),
                swept_at.is_some_and(|t| t > c.started_at),
            ),
            (found, _) => (found, swept_at, false),
        };
        Seen {
            place: place.clone(),
            view,
            snapshot_at,
            observation,
            creation: self.ctx.creation_for(&self.oref, self.obj.status.as_ref()),
            list_behind,
        }
    }

    /// The job acted on, whatever path found it (spec.jobId, the created job): the name rule
    /// holds for the name Macie reports, so an id cannot bypass it.
    async fn check_acted_on(&self, admitted: &Admitted, seen: &Seen<'_>) -> Flow<()> {
        if let Observation::Found(job) = &seen.observation
            && let Err(refusal) = job_rules(self.obj, admitted, acted_on_name(self.obj, job))
        {
            return self.refused(&refusal).await.map(ControlFlow::Break);
        }
        go(())
    }

    /// The pure plan, with the step this process (or the status) holds.
    fn plan(&self, desired: DesiredJobStatus, seen: &Seen<'_>) -> Planned {
        let acting_on = match &seen.observation {
            Observation::Found(job) => Some(job.job_id.as_str()),
            _ => None,
        };
        let step = self.ctx.step_for(&self.oref, self.obj.status.as_ref(), acting_on);
        let plan = plan::plan(
            desired,
            seen.observation,
            seen.snapshot_at,
            step.as_ref(),
            clock::now(),
            &self.ctx.config.plan,
        );
        Planned { plan, step }
    }

    /// Who else declares the job: the plan as ownership allows it, and the peers whose
    /// reported conflict this declaration starts or ends are looked at now.
    fn settle_ownership(&self, mut planned: Planned, desired: DesiredJobStatus, seen: &Seen<'_>) -> Planned {
        let (obj, ctx) = (self.obj, self.ctx);
        let (Observation::Found(job), Some(snap)) = (&seen.observation, &seen.view.snapshot) else {
            return planned;
        };
        if paused_now(ctx, obj).is_some() {
            self.release_peers(seen);
            return planned;
        }
        let peers = ctx.peers(obj, &seen.place, job, &snap.by_name);
        let me = Declaration {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            desired,
            created: obj.meta().creation_timestamp.as_ref().map(|t| t.0),
            in_flight: matches!(
                &planned.step,
                Some(Step {
                    state: StepState::InFlight { .. },
                    ..
                })
            ),
            shows_conflict: false,
        };
        let own = ownership::ownership(&me, &peers);
        for peer in ownership::peers_to_wake(&own, &peers) {
            let _ = ctx
                .trigger
                .unbounded_send(ObjectRef::new(&peer.name).within(&peer.namespace));
        }
        planned.plan = ownership::owned(planned.plan, &own);
        planned
    }

    /// Observe with spec.definition: DescribeClassificationJob of the job found by name, and
    /// which of its settings differ from the definition. A failed read is the resource's
    /// status, retried with backoff.
    async fn definition_drift(
        &self,
        definition: &crate::api::job_definition::JobDefinition,
        job: &ObservedJob,
        seen: &Seen<'_>,
    ) -> Flow<Vec<String>> {
        let ctx = self.ctx;
        let read = ctx.clients.api().job_settings(&seen.place, &job.job_id).await;
        ctx.clients
            .metrics()
            .call("DescribeClassificationJob", MacieError::outcome(&read));
        match read {
            Ok(Some(settings)) => go(super::drift::definition_drift(definition, &settings)),
            Ok(None) => go(Vec::new()),
            Err(e) => {
                let reason = match e {
                    MacieError::AccessDenied { .. } => plan::Reason::AccessDenied,
                    _ => plan::Reason::MacieError,
                };
                let what = format!("DescribeClassificationJob {} (its settings) failed: {e}", job.job_id);
                self.status(reason.summary(what), &seen.place, seen.creation.clone())
                    .await?;
                stop(ctx.memory.retry(self.obj, &e))
            }
        }
    }

    /// A paused or Observe declaration takes no part in ownership: the peers that show a
    /// Conflict (perhaps with it) look again.
    fn release_peers(&self, seen: &Seen<'_>) {
        let (Observation::Found(job), Some(snap)) = (&seen.observation, &seen.view.snapshot) else {
            return;
        };
        for peer in (self.ctx.peers(self.obj, &seen.place, job, &snap.by_name).iter()).filter(|p| p.shows_conflict) {
            let _ = self
                .ctx
                .trigger
                .unbounded_send(ObjectRef::new(&peer.name).within(&peer.namespace));
        }
    }

    /// A resource being deleted with Cancel: released once its job is cancelled (or cannot
    /// be); else the status says what the finalizer waits for.
    async fn release_after_cancel(&self, mut planned: Planned, deleting: bool, seen: &Seen<'_>) -> Flow<Planned> {
        if !deleting {
            return go(planned);
        }
        if let Some(why) = super::lifecycle::release_after_cancel(&seen.observation, &planned.plan) {
            self.release(format!("deletionPolicy Cancel: {why}")).await?;
            return stop(Next::AwaitChange);
        }
        let p = &mut planned.plan;
        p.summary.message = format!(
            "deletionPolicy Cancel: the finalizer stays until the job is cancelled: {}",
            p.summary.message
        );
        go(planned)
    }

    /// What became of the step in flight (its record in the status), and a wake-up after the
    /// next sweep when the plan waits for one.
    fn settle_step(&self, planned: &Planned, seen: &Seen<'_>) -> Report {
        let p = &planned.plan;
        let stored = self.obj.status.clone().unwrap_or_default();
        let mut last_transition = stored.last_transition.clone();
        resolve_step(
            self.ctx,
            &self.oref,
            planned.step.as_ref(),
            p.step.as_ref(),
            &mut last_transition,
        );
        if p.after_next_sweep {
            let after = seen.snapshot_at.unwrap_or_else(clock::now);
            self.ctx.wake_after_sweep(&self.oref, &seen.place, after);
        }
        Report {
            job: plan::shown_job(&seen.observation, p.step.as_ref(), stored.job.as_ref()),
            summary: p.summary.clone(),
            recheck_at: p.recheck_at,
            stored,
            last_transition,
        }
    }

    /// A read of the job confirmed the call, and a later sweep still lists the job as it was
    /// before: nothing is done, and nothing is claimed, until they agree or the confirmation's
    /// hold (the step timeout) runs out and the lists are believed.
    async fn wait_for_list(&self, mut report: Report, seen: &Seen<'_>, deleting: bool) -> Flow<Report> {
        if !seen.list_behind {
            return go(report);
        }
        let Observation::Found(job) = &seen.observation else {
            return go(report);
        };
        report.summary = plan::Reason::WaitingForSweep.summary(format!(
            "a read of job {} after the call showed {}; a later sweep still lists its status from before the call: nothing is done until they agree (at most the step timeout)",
            job.job_id, job.job_status
        ));
        report.recheck_at = None;
        self.ctx.wake_after_sweep(&self.oref, &seen.place, clock::now());
        stop(self.report(report, seen, deleting).await?)
    }

    /// A paused resource makes no Macie write: its status says so, with what Macie shows (a
    /// transient sweep failure keeps the conditions, as below).
    async fn hold_if_paused(&self, report: Report, planned: &Planned, seen: &Seen<'_>, deleting: bool) -> Flow<Report> {
        let Some(pause) = paused_now(self.ctx, self.obj) else {
            return go(report);
        };
        if planned.plan.hold && !report.stored.conditions.is_empty() {
            return stop(Next::AwaitChange);
        }
        let next = self.held(pause, report, &planned.plan, seen).await?;
        stop(if deleting {
            Next::After(self.ctx.poller.interval())
        } else {
            next
        })
    }

    /// The status of a paused resource: `ReconcilePaused`, the step's record as settled (never
    /// a write-ahead of a call not made), and what the plan would have done.
    async fn held(&self, pause: Pause, mut report: Report, plan: &Plan, seen: &Seen<'_>) -> Result<Next, Error> {
        report.summary = plan::paused_summary(pause, &seen.place.account, plan);
        report.recheck_at = None;
        self.report(report, seen, false).await
    }

    /// The plan's UpdateClassificationJob: only by the leader, only within the rules (decided
    /// again before the write-ahead and right before the call), after the write-ahead.
    async fn update_job(&self, mut report: Report, planned: &Planned, seen: &Seen<'_>) -> Flow<Report> {
        let (obj, ctx) = (self.obj, self.ctx);
        let p = &planned.plan;
        let Act::Update { job_id, from, to } = &p.act else {
            // A transient sweep failure: the resource keeps its conditions.
            if p.hold && !report.stored.conditions.is_empty() {
                return stop(Next::AwaitChange);
            }
            return go(report);
        };
        if !ctx.clients.gate().allows_writes() {
            tracing::info!(name = %obj.name_any(), "not the leader any more: no UpdateClassificationJob");
            return stop(Next::After(ctx.poller.interval()));
        }
        let acted_on = match &seen.observation {
            Observation::Found(job) => acted_on_name(obj, job),
            _ => None,
        };
        if let Err(refusal) = recheck(ctx, obj, acted_on) {
            return self.refused(&refusal).await.map(ControlFlow::Break);
        }
        let step = Step::new(job_id, from, *to, step_time(report.stored.last_transition.as_ref()));
        report.stored = self.write_ahead(&report, &step, seen).await?;
        // Again right before the call: the write-ahead took a round trip. A refusal or a pause
        // here rewrites the status without the write-ahead (no call was made).
        if let Err(refusal) = recheck(ctx, obj, acted_on) {
            return self.refused(&refusal).await.map(ControlFlow::Break);
        }
        if let Some(pause) = paused_now(ctx, obj) {
            return stop(self.held(pause, report, p, seen).await?);
        }
        let prev_attempts = planned
            .step
            .as_ref()
            .filter(|s| s.to == *to && p.step == Some(StepOutcome::RetryDue))
            .map_or(0, Step::attempts);
        let verdict = call_update(ctx, obj, &seen.place, step, prev_attempts).await;
        go(self.after_call(report, verdict, seen))
    }

    /// Write-ahead: the step is recorded in the status before the call, so that a replica that
    /// takes over after a crash between the call and the next status write does not repeat it.
    async fn write_ahead(&self, report: &Report, step: &Step, seen: &Seen<'_>) -> Result<MacieJobStatus, Error> {
        let update = StatusUpdate {
            prev: &report.stored,
            region: &seen.place.region,
            job: report.job.clone(),
            summary: &report.summary,
            last_transition: Some(transition_record(step, TransitionOutcome::Pending, None)),
            snapshot_at: seen.snapshot_at,
            creation: seen.creation.clone(),
        };
        write_status(&self.api, self.obj, self.ctx, update).await
    }

    /// What the call's verdict means for the step this process holds and the status.
    fn after_call(&self, mut report: Report, verdict: CallVerdict, seen: &Seen<'_>) -> Report {
        let place = &seen.place;
        match &verdict.step.state {
            // Only an observation that started after the call can show its effect: the next
            // sweep, or a read of the job before it.
            StepState::InFlight { .. } => {
                self.ctx.wake_after_sweep(&self.oref, place, verdict.step.requested_at);
                if let Observation::Found(job) = &seen.observation {
                    let hold = self.ctx.config.plan.step_timeout;
                    self.ctx.poller.confirm(place, job, verdict.step.requested_at, hold);
                }
            }
            StepState::Refused { retry_at, .. } => report.recheck_at = Some(*retry_at),
        }
        let mut record = transition_record(&verdict.step, verdict.outcome, step_error(&verdict.step));
        if record.error_code.is_some() {
            record.message = Some(verdict.summary.message.clone());
        }
        report.last_transition = Some(record);
        self.ctx.remember(&self.oref, Known::Step(verdict.step));
        report.summary = verdict.summary;
        report
    }

    /// The status: one write when something changed, and an Event when the reason did.
    async fn report(&self, report: Report, seen: &Seen<'_>, deleting: bool) -> Result<Next, Error> {
        let update = StatusUpdate {
            prev: &report.stored,
            region: &seen.place.region,
            job: report.job,
            summary: &report.summary,
            last_transition: report.last_transition,
            snapshot_at: seen.snapshot_at,
            creation: seen.creation.clone(),
        };
        write_status(&self.api, self.obj, self.ctx, update).await?;
        self.ctx.memory.succeeded(self.obj);
        Ok(match report.recheck_at {
            Some(t) => Next::at(t),
            None if deleting => Next::After(self.ctx.poller.interval()),
            None => Next::AwaitChange,
        })
    }

    /// A resource its MacieAccount refuses: no Macie call; the status says which rule refused
    /// (Stalled, with an Event on entering it), and a deletion proceeds as `after_refusal` says.
    pub(super) async fn refused(&self, refusal: &Refusal) -> Result<Next, Error> {
        let (obj, ctx) = (self.obj, self.ctx);
        let mut summary = refusal.reason().summary(refusal.message());
        let next = match after_refusal(obj, refusal) {
            AfterRefusal::Release(why) => {
                self.release(why).await?;
                return Ok(Next::AwaitChange);
            }
            AfterRefusal::Hold => {
                summary.message = format!(
                    "deletionPolicy Cancel: the finalizer stays until the job can be cancelled: {}",
                    summary.message
                );
                ctx.memory.retry(obj, &summary.message)
            }
            AfterRefusal::Report => Next::AwaitChange,
        };
        let stored = obj.status.clone().unwrap_or_default();
        let update = StatusUpdate {
            prev: &stored,
            region: super::region_of(&obj.spec, &ctx.config.default_region),
            // Nothing observed is shown to a refused resource.
            job: None,
            summary: &summary,
            last_transition: stored.last_transition.clone(),
            snapshot_at: None,
            creation: stored.creation.clone(),
        };
        write_status(&self.api, obj, ctx, update).await?;
        Ok(next)
    }

    /// Releases the finalizer of a resource being deleted, with an Event saying why.
    pub(super) async fn release(&self, why: String) -> Result<(), Error> {
        publish(self.ctx, self.obj, EventType::Normal, "Released", why).await;
        set_finalizer(&self.api, self.obj, false).await?;
        self.ctx.forget(&self.oref);
        Ok(())
    }

    /// A status write that keeps the step's record and shows no job (the create steps).
    pub(super) async fn status(
        &self,
        summary: Summary,
        place: &Place,
        creation: Option<CreationRecord>,
    ) -> Result<(), Error> {
        let stored = self.obj.status.clone().unwrap_or_default();
        let update = StatusUpdate {
            prev: &stored,
            region: &place.region,
            job: None,
            summary: &summary,
            last_transition: stored.last_transition.clone(),
            snapshot_at: None,
            creation,
        };
        write_status(&self.api, self.obj, self.ctx, update).await.map(|_| ())
    }
}

/// When a new step starts: now, or past the second of the stored record if that is not over
/// yet. A record keeps whole seconds, and two steps never share one's identity (a retry within
/// the second of a settled record would otherwise write it back as Pending).
fn step_time(stored: Option<&RequestedTransition>) -> Timestamp {
    let now = clock::now();
    match stored {
        Some(t) if plan::ceil_second(now) <= t.requested_at.0 => t
            .requested_at
            .0
            .checked_add(std::time::Duration::from_millis(500))
            .unwrap_or(Timestamp::MAX),
        _ => now,
    }
}

pub(super) fn transition_record(step: &Step, outcome: TransitionOutcome, error: Option<String>) -> RequestedTransition {
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
            // The step this process holds is the record until a sweep settles it.
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
        // A newer record than this step (another process's): it is the record.
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
async fn call_update(ctx: &Context, obj: &MacieJob, place: &Place, step: Step, prev_attempts: u32) -> CallVerdict {
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
    let jitter = 0.5 + clock::random() * 0.5;
    let (from, to, job_id) = (step.from.clone(), step.to, step.job_id.clone());
    let verdict = outcome::after_call(step, result.as_ref().map(|_| ()), prev_attempts, clock::now(), jitter);
    if let (CallEvent::Failed, Err(e)) = (verdict.event, &result) {
        let note = format!(
            "UpdateClassificationJob {job_id}: {from} -> {} failed: {e}",
            to.as_str()
        );
        publish(ctx, obj, EventType::Warning, "UpdateFailed", note).await;
    }
    verdict
}
