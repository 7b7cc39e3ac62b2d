//! The create steps of a MacieJob with spec.definition, around the pure `create::decide`:
//! `decide_creation` (reads: whose job carries the name, dropping a forged record), then one
//! act step per decision; `create` is the call itself, exactly once: its turn in the per-place
//! quota queue, the rules again, a fresh lookup of the name, the write-ahead, the rules again,
//! the call, and what its result means.

use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

use super::create::{self, CreateAction, Ticket, Waiting};
use super::plan::{self, Observation, Reason};
use super::reconcile::{Reconcile, Seen};
use super::report::publish;
use super::{lock, outcome, paused_now, recheck, resolve};
use crate::api::macie_job::{CreationOutcome, CreationRecord};
use crate::api::{DesiredJobStatus, MacieJobSpec};
use crate::macie::MacieError;
use crate::macie::api::{JobsQuery, NewJob};
use crate::macie::jobs::list_all_jobs;
use crate::proceed;
use crate::runtime::events::EventType;
use crate::runtime::{Error, Flow, Next, clock, go, stop};

/// spec.definition: the job is created once, then followed by id. Hands on what the sweep
/// says of the resource's own job (or of the name, when nothing is to be created yet).
pub(super) async fn create_job<'v>(r: &Reconcile<'_>, mut seen: Seen<'v>, desired: DesiredJobStatus) -> Flow<Seen<'v>> {
    if r.obj.spec.definition.is_none() {
        return go(seen);
    }
    let action = proceed!(decide_creation(r, &mut seen, desired).await);
    let deleting = r.obj.metadata.deletion_timestamp.is_some();
    match action {
        CreateAction::Follow(job_id) => follow(r, seen, job_id).await,
        CreateAction::Ambiguous | CreateAction::Wait(Waiting::ForSweep) => go(seen),
        // Being deleted: the deletion step releases it (nothing to cancel).
        CreateAction::NothingToCreate if deleting => {
            lock(&r.ctx.queue).leave(&r.oref);
            go(seen)
        }
        CreateAction::NothingToCreate => nothing_to_create(r, &seen).await,
        CreateAction::NameInUse(job_id) => name_in_use(r, &seen, &job_id).await,
        CreateAction::Wait(Waiting::ForCreated) => wait_for_created(r, &seen).await,
        CreateAction::Wait(Waiting::ForRetry(at)) => wait_for_retry(r, &seen, at).await,
        CreateAction::Create => create(r, &seen).await,
        // Still undecided after the reads this reconcile may make.
        CreateAction::Describe(_) | CreateAction::Forged(_) => stop(Next::After(r.ctx.poller.interval())),
    }
}

/// The job's name (spec.jobName; admission requires it with a definition).
fn job_name<'a>(r: &'a Reconcile<'_>) -> &'a str {
    r.obj.spec.job_name.as_deref().unwrap_or_default()
}

/// `create::decide`, asking Macie whose a job is when the decision needs it (at most two
/// DescribeClassificationJob per reconcile: the recorded job's, then the named job's once a
/// forged record is dropped).
async fn decide_creation(r: &Reconcile<'_>, seen: &mut Seen<'_>, desired: DesiredJobStatus) -> Flow<CreateAction> {
    let ours = create::client_token(&r.obj.uid().unwrap_or_default());
    let mut action = CreateAction::Ambiguous;
    for _ in 0..4 {
        action = create::decide(create::Facts {
            desired,
            record: seen.creation.as_ref(),
            observation: &seen.observation,
            snapshot_at: seen.snapshot_at,
            token_of: |id: &str| r.ctx.token_of(&seen.place, id),
            ours: &ours,
            step_timeout: r.ctx.config.plan.step_timeout,
            now: clock::now(),
        });
        match &action {
            CreateAction::Describe(job_id) => proceed!(read_token(r, seen, job_id).await),
            CreateAction::Forged(job_id) => {
                proceed!(drop_forged(r, seen, job_id).await);
                seen.creation = None;
            }
            _ => return go(action),
        }
    }
    go(action)
}

/// DescribeClassificationJob: the job's client token, kept (whose job it is never changes).
async fn read_token(r: &Reconcile<'_>, seen: &Seen<'_>, job_id: &str) -> Flow<()> {
    let ctx = r.ctx;
    let result = ctx.clients.api().job_client_token(&seen.place, job_id).await;
    ctx.clients
        .metrics()
        .call("DescribeClassificationJob", MacieError::outcome(&result));
    match result {
        Ok(token) => ctx.keep_token(&seen.place, job_id, token.unwrap_or_default()),
        // No such job (a record naming an id that does not exist): nobody's token.
        Err(MacieError::NotFound { .. }) => ctx.keep_token(&seen.place, job_id, String::new()),
        Err(e) => {
            let what = format!("DescribeClassificationJob {job_id} (is the job of this name ours?) failed: {e}");
            r.status(read_failed(&e).summary(what), &seen.place, seen.creation.clone())
                .await?;
            return stop(ctx.memory.retry(r.obj, &e));
        }
    }
    go(())
}

/// The reason of a failed read.
fn read_failed(e: &MacieError) -> Reason {
    if matches!(e, MacieError::AccessDenied { .. }) {
        Reason::AccessDenied
    } else {
        Reason::MacieError
    }
}

/// A forged record is dropped (the decision is made again without it); the status says so
/// once (a Warning Event with the reason), and nothing is done to the job it names.
async fn drop_forged(r: &Reconcile<'_>, seen: &Seen<'_>, job_id: &str) -> Flow<()> {
    r.ctx.forget_creation(&r.oref);
    drop_forged_records(r, job_id).await?;
    let place = &seen.place;
    let summary = Reason::RecordIgnored.summary(format!(
        "status.creation named job {job_id}, which is not a job this MacieJob created in {place} (no job of that id carries its client token): the record is ignored and nothing is done to that job; only the operator writes status"
    ));
    r.status(summary, place, None).await?;
    go(())
}

/// Removes a forged creation record (and a transition record naming the same job) from the
/// status with a merge patch: a server-side apply that leaves the fields out would not remove
/// the ones the forger's field manager owns, and would leave a record with fields missing.
async fn drop_forged_records(r: &Reconcile<'_>, job_id: &str) -> Result<(), Error> {
    let names_it = r
        .obj
        .status
        .as_ref()
        .and_then(|s| s.last_transition.as_ref())
        .is_some_and(|t| t.job_id == job_id);
    let mut status = serde_json::json!({"creation": null});
    if names_it {
        status["lastTransition"] = serde_json::Value::Null;
    }
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    let written = r
        .api
        .patch_status(&r.obj.name_any(), &PatchParams::default(), &patch)
        .await?;
    r.ctx.memory.wrote(&written);
    Ok(())
}

/// The resource's own job (created by it, or found with its token): followed by id from now
/// on. Just created, only a sweep that started after the create can show it.
async fn follow<'v>(r: &Reconcile<'_>, mut seen: Seen<'v>, job_id: String) -> Flow<Seen<'v>> {
    let record = match seen.creation.take() {
        Some(rec) if rec.job_id.as_deref() == Some(job_id.as_str()) => rec,
        // Found through its token (the create's answer was lost, or a restart).
        other => CreationRecord {
            client_token: create::client_token(&r.obj.uid().unwrap_or_default()),
            requested_at: other.map_or_else(|| Time(plan::ceil_second(clock::now())), |o| o.requested_at),
            outcome: CreationOutcome::Succeeded,
            job_id: Some(job_id.clone()),
            retry_at: None,
            error_code: None,
            message: None,
        },
    };
    lock(&r.ctx.queue).leave(&r.oref);
    r.ctx.remember_creation(&r.oref, record.clone());
    let followed = MacieJobSpec {
        job_id: Some(job_id.clone()),
        job_name: None,
        ..r.obj.spec.clone()
    };
    seen.observation = resolve(&followed, seen.view);
    // A read of the job made after the create (`JobPoller::confirm`) shows it before a sweep.
    if let (Observation::NotFound | Observation::NoSweepYet, Some(c)) =
        (&seen.observation, seen.view.confirmed.get(&job_id))
    {
        seen.observation = Observation::Found(&c.job);
        seen.snapshot_at = Some(c.started_at);
    }
    if matches!(seen.observation, Observation::NotFound | Observation::NoSweepYet)
        && seen.snapshot_at.is_none_or(|s| s <= record.requested_at.0)
    {
        r.ctx.wake_after_sweep(&r.oref, &seen.place, record.requested_at.0);
        let summary = Reason::Creating.summary(format!("created job {job_id}; waiting for a sweep to show it"));
        r.status(summary, &seen.place, Some(record)).await?;
        return stop(Next::AwaitChange);
    }
    seen.creation = Some(record);
    go(seen)
}

/// A job of the name that this resource did not create: never adopted, nothing created.
async fn name_in_use<T>(r: &Reconcile<'_>, seen: &Seen<'_>, job_id: &str) -> Flow<T> {
    lock(&r.ctx.queue).leave(&r.oref);
    let name = job_name(r);
    let summary = Reason::NameInUse.summary(format!(
        "a job named {name:?} ({job_id}) exists and was not created by this MacieJob: it is not adopted and no job is created; manage it with spec.jobId in a MacieJob without a definition, or choose another jobName"
    ));
    r.status(summary, &seen.place, seen.creation.clone()).await?;
    stop(Next::AwaitChange)
}

/// jobStatus CANCELLED and no job of the name: nothing is created.
async fn nothing_to_create<T>(r: &Reconcile<'_>, seen: &Seen<'_>) -> Flow<T> {
    lock(&r.ctx.queue).leave(&r.oref);
    let summary = Reason::TerminalState.summary(format!(
        "jobStatus is CANCELLED and no job named {:?} exists: nothing is created",
        job_name(r)
    ));
    r.status(summary, &seen.place, seen.creation.clone()).await?;
    stop(Next::AwaitChange)
}

/// A create in flight (or whose answer was lost): a sweep that started after the call shows
/// the job.
async fn wait_for_created<T>(r: &Reconcile<'_>, seen: &Seen<'_>) -> Flow<T> {
    let at = seen.creation.as_ref().map_or_else(clock::now, |c| c.requested_at.0);
    r.ctx.wake_after_sweep(&r.oref, &seen.place, at);
    let summary = Reason::Creating.summary(format!(
        "CreateClassificationJob {:?} sent at {at}; waiting for a sweep to show the job",
        job_name(r)
    ));
    r.status(summary, &seen.place, seen.creation.clone()).await?;
    stop(Next::AwaitChange)
}

/// A refused or throttled create: sent again at `at`.
async fn wait_for_retry<T>(r: &Reconcile<'_>, seen: &Seen<'_>, at: k8s_openapi::jiff::Timestamp) -> Flow<T> {
    let summary = match seen.creation.as_ref() {
        Some(CreationRecord {
            outcome: CreationOutcome::Failed,
            message,
            ..
        }) => Reason::CreateFailed.summary(format!("{}; sent again at {at}", message.clone().unwrap_or_default())),
        _ => {
            Reason::WaitingForCreateQuota.summary(format!("CreateClassificationJob was throttled; sent again at {at}"))
        }
    };
    r.status(summary, &seen.place, seen.creation.clone()).await?;
    stop(Next::at(at))
}

/// CreateClassificationJob, exactly once.
async fn create<T>(r: &Reconcile<'_>, seen: &Seen<'_>) -> Flow<T> {
    proceed!(hold_create_if_paused(r, seen, false).await);
    proceed!(take_turn(r, seen).await);
    if !r.ctx.clients.gate().allows_writes() {
        lock(&r.ctx.queue).leave(&r.oref);
        tracing::info!(name = %r.obj.name_any(), "not the leader any more: no CreateClassificationJob");
        return stop(Next::After(r.ctx.poller.interval()));
    }
    // The MacieAccount and namespace as they are now (the queue may have held the create for
    // minutes).
    proceed!(recheck_create(r).await);
    proceed!(look_up_name(r, seen).await);
    let record = write_ahead(r, seen).await?;
    // Again right before the call: the write-ahead took a round trip. A pause here rewrites
    // the status with the creation as it was before the write-ahead (no call was made).
    proceed!(recheck_create(r).await);
    proceed!(hold_create_if_paused(r, seen, true).await);
    let result = send_create(r, seen).await;
    judge_create(r, seen, record, result).await
}

/// A paused resource creates nothing: it leaves the create queue, and the status says so (after
/// the write-ahead: with the creation as it was stored before it, the write-ahead forgotten).
async fn hold_create_if_paused(r: &Reconcile<'_>, seen: &Seen<'_>, after_write_ahead: bool) -> Flow<()> {
    let Some(pause) = paused_now(r.ctx, r.obj) else {
        return go(());
    };
    lock(&r.ctx.queue).leave(&r.oref);
    let creation = if after_write_ahead {
        r.ctx.forget_creation(&r.oref);
        r.obj.status.as_ref().and_then(|s| s.creation.clone())
    } else {
        seen.creation.clone()
    };
    let message = format!(
        "{}; the job {:?} is not created while paused",
        pause.message(&seen.place.account),
        job_name(r)
    );
    let summary = crate::api::conditions::Summary::new(
        crate::api::conditions::Phase::Reconciling,
        Reason::ReconcilePaused.as_str(),
        message,
    );
    r.status(summary, &seen.place, creation).await?;
    stop(Next::AwaitChange)
}

/// The create's turn in the place's queue (the CreateClassificationJob quota).
async fn take_turn(r: &Reconcile<'_>, seen: &Seen<'_>) -> Flow<()> {
    let ticket = lock(&r.ctx.queue).ticket(&seen.place, &r.oref, clock::instant());
    let Ticket::Wait { position, at } = ticket else {
        return go(());
    };
    let wait = at.saturating_duration_since(clock::instant());
    let summary = Reason::WaitingForCreateQuota.summary(format!(
        "number {position} in line for CreateClassificationJob in {} (one every {:?}, the create quota); about {}s to go",
        seen.place,
        lock(&r.ctx.queue).interval(),
        wait.as_secs()
    ));
    r.status(summary, &seen.place, seen.creation.clone()).await?;
    stop(Next::After(wait.max(Duration::from_millis(100))))
}

/// The rules decided again before a create: a refusal ends the create (nothing was sent).
async fn recheck_create(r: &Reconcile<'_>) -> Flow<()> {
    if let Err(refusal) = recheck(r.ctx, r.obj, None) {
        lock(&r.ctx.queue).leave(&r.oref);
        r.ctx.forget_creation(&r.oref);
        return r.refused(&refusal).await.map(ControlFlow::Break);
    }
    go(())
}

/// A lookup of the name that starts now, after the resource was seen: the sweep the decision
/// read may predate a job of the name created since (Macie allows duplicate names). A job
/// carrying this resource's token is its own (a create whose answer was lost): a sweep shows it;
/// any other is `NameInUse`.
async fn look_up_name(r: &Reconcile<'_>, seen: &Seen<'_>) -> Flow<()> {
    let (ctx, name) = (r.ctx, job_name(r));
    let started = clock::now();
    let query = JobsQuery::Named(name);
    let listed = list_all_jobs(
        ctx.clients.api(),
        &seen.place,
        query,
        ctx.config.page_size,
        ctx.clients.metrics(),
    )
    .await;
    let jobs = match listed {
        Ok((jobs, _)) => jobs,
        Err(e) => {
            let what = format!("ListClassificationJobs (is the name {name:?} free?) failed: {e}");
            r.status(read_failed(&e).summary(what), &seen.place, seen.creation.clone())
                .await?;
            return stop(ctx.memory.retry(r.obj, &e));
        }
    };
    let ours = create::client_token(&r.obj.uid().unwrap_or_default());
    let named: Vec<&str> = jobs
        .iter()
        .filter(|j| j.name.as_deref() == Some(name))
        .map(|j| j.job_id.as_str())
        .collect();
    for job_id in &named {
        if ctx.token_of(&seen.place, job_id).is_none() {
            proceed!(read_token(r, seen, job_id).await);
        }
    }
    if let Some(own) = named
        .iter()
        .find(|id| ctx.token_of(&seen.place, id).as_deref() == Some(ours.as_str()))
    {
        ctx.wake_after_sweep(&r.oref, &seen.place, started);
        let summary = Reason::Creating.summary(format!(
            "job {own} of the name carries this resource's token; waiting for a sweep to show it"
        ));
        r.status(summary, &seen.place, seen.creation.clone()).await?;
        return stop(Next::AwaitChange);
    }
    if let Some(theirs) = named.first() {
        return name_in_use(r, seen, theirs).await;
    }
    go(())
}

/// Write-ahead: the create is recorded (status and memory) before the call.
async fn write_ahead(r: &Reconcile<'_>, seen: &Seen<'_>) -> Result<CreationRecord, Error> {
    let record = CreationRecord {
        client_token: create::client_token(&r.obj.uid().unwrap_or_default()),
        requested_at: Time(plan::ceil_second(clock::now())),
        outcome: CreationOutcome::Pending,
        job_id: None,
        retry_at: None,
        error_code: None,
        message: None,
    };
    let summary = Reason::Creating.summary(format!("CreateClassificationJob {:?} being sent", job_name(r)));
    r.status(summary, &seen.place, Some(record.clone())).await?;
    r.ctx.remember_creation(&r.oref, record.clone());
    Ok(record)
}

/// The call.
async fn send_create(r: &Reconcile<'_>, seen: &Seen<'_>) -> Result<String, MacieError> {
    let (obj, ctx, place, name) = (r.obj, r.ctx, &seen.place, job_name(r));
    let token = create::client_token(&obj.uid().unwrap_or_default());
    tracing::info!(
        account = %place.account,
        region = %place.region,
        operation = "CreateClassificationJob",
        job_name = %name,
        client_token = %token,
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        uid = %obj.uid().unwrap_or_default(),
        "AWS write"
    );
    let Some(definition) = obj.spec.definition.as_ref() else {
        unreachable!("create_job runs only with a definition")
    };
    let tags = create::job_tags(
        definition.tags.as_ref(),
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        &obj.uid().unwrap_or_default(),
    );
    let new_job = NewJob {
        name,
        definition,
        client_token: &token,
        tags: &tags,
    };
    lock(&ctx.queue).sending(place, clock::instant());
    let result = ctx.clients.api().create_job(place, &new_job).await;
    ctx.clients
        .metrics()
        .call("CreateClassificationJob", MacieError::outcome(&result));
    result
}

/// What the create's answer means: the record, the status, an Event, and when to look again.
async fn judge_create<T>(
    r: &Reconcile<'_>,
    seen: &Seen<'_>,
    mut record: CreationRecord,
    result: Result<String, MacieError>,
) -> Flow<T> {
    let (ctx, place, name) = (r.ctx, &seen.place, job_name(r));
    let (summary, next) = match result {
        Ok(job_id) => {
            record.outcome = CreationOutcome::Succeeded;
            record.job_id = Some(job_id.clone());
            ctx.keep_token(place, &job_id, record.client_token.clone());
            let note = format!("CreateClassificationJob {name:?}: job {job_id}");
            publish(ctx, r.obj, EventType::Normal, "Created", note).await;
            ctx.wake_after_sweep(&r.oref, place, clock::now());
            // Confirmed by a read of the new job before the next sweep (it did not exist: no
            // status before the call).
            let created = crate::api::macie_job::ObservedJob {
                job_id: job_id.clone(),
                name: Some(name.to_string()),
                ..Default::default()
            };
            let hold = ctx.config.plan.step_timeout;
            ctx.poller.confirm(place, &created, record.requested_at.0, hold);
            let summary = Reason::Creating.summary(format!("created job {job_id}; waiting for a sweep to show it"));
            (summary, Next::AwaitChange)
        }
        Err(e @ MacieError::Throttled { .. }) => throttled(r, seen, &mut record, &e),
        Err(e @ MacieError::Uncertain { .. }) => {
            // It may have been processed: a sweep shows the job (found by its token) or, past
            // the step timeout, the same token is sent again.
            record.error_code = Some(e.code().to_string());
            ctx.wake_after_sweep(&r.oref, place, record.requested_at.0);
            let note = format!("CreateClassificationJob {name:?}: outcome unknown: {e}");
            publish(ctx, r.obj, EventType::Warning, "CreateFailed", note).await;
            let summary = Reason::Creating.summary(format!(
                "CreateClassificationJob {name:?}: outcome unknown ({e}); a sweep shows whether the job exists"
            ));
            (summary, Next::AwaitChange)
        }
        Err(e) => failed(r, &mut record, &e).await,
    };
    ctx.remember_creation(&r.oref, record.clone());
    r.status(summary, place, Some(record)).await?;
    stop(next)
}

/// A throttled create: not processed, not a failure; first in line again after a backoff.
fn throttled(
    r: &Reconcile<'_>,
    seen: &Seen<'_>,
    record: &mut CreationRecord,
    e: &MacieError,
) -> (crate::api::conditions::Summary, Next) {
    let wait = (lock(&r.ctx.queue).interval() * 2).max(Duration::from_secs(2));
    lock(&r.ctx.queue).throttled(&seen.place, &r.oref, clock::instant(), wait);
    record.outcome = CreationOutcome::NotProcessed;
    record.error_code = Some(e.code().to_string());
    let at = clock::now()
        .checked_add(wait)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX);
    record.retry_at = Some(Time(at));
    let summary = Reason::WaitingForCreateQuota.summary(format!(
        "CreateClassificationJob was throttled ({}); sent again in {}s",
        e.code(),
        wait.as_secs()
    ));
    (summary, Next::After(wait))
}

/// A refused create: recorded as failed, sent again (same token) after the first retry delay.
async fn failed(
    r: &Reconcile<'_>,
    record: &mut CreationRecord,
    e: &MacieError,
) -> (crate::api::conditions::Summary, Next) {
    let name = job_name(r);
    let reason = if matches!(e, MacieError::AccessDenied { .. }) {
        Reason::AccessDenied
    } else {
        Reason::CreateFailed
    };
    let wait = outcome::retry_delay(Reason::AccessDenied, 1, 0.75);
    let at = clock::now()
        .checked_add(wait)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX);
    record.outcome = CreationOutcome::Failed;
    record.error_code = Some(e.code().to_string());
    record.retry_at = Some(Time(at));
    record.message = Some(format!("CreateClassificationJob {name:?} failed: {e}"));
    let note = format!("CreateClassificationJob {name:?} failed: {e}");
    publish(r.ctx, r.obj, EventType::Warning, "CreateFailed", note).await;
    let summary = reason.summary(format!(
        "CreateClassificationJob {name:?} failed: {e}; sent again at {at}"
    ));
    (summary, Next::at(at))
}
