//! The create step of a MacieJob with spec.definition (the effects around the pure
//! `create::decide`): whose job carries the name, the write-ahead, the call through the
//! per-place quota queue, and what its result means for the status.

use std::time::Duration;

use crate::runtime::events::EventType;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::create::{self, CreateAction, Ticket, Waiting};
use super::plan::{self, Observation, Reason};
use super::{Context, StatusUpdate, lock, outcome, publish, recheck, refused, requeue_at, write_status};
use crate::api::conditions::Summary;
use crate::api::macie_job::{CreationOutcome, CreationRecord};
use crate::api::{DesiredJobStatus, MacieJob};
use crate::macie::api::NewJob;
use crate::macie::{MacieError, Place};
use crate::runtime::Error;

/// What the create step is given.
pub(super) struct CreateAsk<'a> {
    pub(super) api: &'a Api<MacieJob>,
    pub(super) obj: &'a MacieJob,
    pub(super) place: &'a Place,
    pub(super) definition: &'a crate::api::job_definition::JobDefinition,
    pub(super) desired: DesiredJobStatus,
    /// The place's latest sweep, by the job's name.
    pub(super) observation: &'a Observation<'a>,
    pub(super) snapshot_at: Option<Timestamp>,
    pub(super) record: Option<CreationRecord>,
}

/// What the create step leaves to the rest of the reconcile.
pub(super) enum Created {
    /// The resource's own job: keep it in the desired status.
    Follow(String, CreationRecord),
    /// Nothing to create now; the plan reports on the job by name (no sweep yet, several jobs
    /// of the name).
    ByName,
    /// The reconcile ends here (a create was sent, waits its turn, or cannot be made).
    Done(Action),
}

/// spec.definition: whose job carries the name, and the create, exactly once (see `create`).
pub(super) async fn create_step(ctx: &Context, ask: CreateAsk<'_>) -> Result<Created, Error> {
    let CreateAsk {
        api,
        obj,
        place,
        definition,
        desired,
        observation,
        snapshot_at,
        mut record,
    } = ask;
    let oref = ObjectRef::from_obj(obj);
    let ours = create::client_token(&obj.uid().unwrap_or_default());
    let name = obj.spec.job_name.clone().unwrap_or_default();
    let status = |summary: Summary, record: Option<CreationRecord>| async move {
        let stored = obj.status.clone().unwrap_or_default();
        write_status(
            api,
            obj,
            ctx,
            StatusUpdate {
                prev: &stored,
                region: &place.region,
                job: None,
                summary: &summary,
                last_transition: stored.last_transition.clone(),
                snapshot_at: None,
                creation: record,
            },
        )
        .await
        .map(|_| ())
    };
    // At most two DescribeClassificationJob per reconcile (the recorded job's, then the named
    // job's once a forged record is dropped): each answer decides again.
    for _ in 0..4 {
        let now = crate::runtime::clock::now();
        let action = create::decide(create::Facts {
            desired,
            record: record.as_ref(),
            observation,
            snapshot_at,
            token_of: |id: &str| lock(&ctx.tokens).get(&(place.clone(), id.to_string())).cloned(),
            ours: &ours,
            step_timeout: ctx.config.plan.step_timeout,
            now,
        });
        match action {
            CreateAction::Follow(job_id) => {
                let r = match record {
                    Some(r) if r.job_id.as_deref() == Some(job_id.as_str()) => r,
                    // Found through its token (the create's answer was lost, or a restart).
                    other => CreationRecord {
                        client_token: ours.clone(),
                        requested_at: other.map_or(Time(plan::ceil_second(now)), |r| r.requested_at),
                        outcome: CreationOutcome::Succeeded,
                        job_id: Some(job_id.clone()),
                        retry_at: None,
                        error_code: None,
                        message: None,
                    },
                };
                lock(&ctx.queue).leave(&oref);
                ctx.remember_creation(&oref, r.clone());
                return Ok(Created::Follow(job_id, r));
            }
            CreateAction::Describe(job_id) => {
                let r = ctx.clients.api().job_client_token(place, &job_id).await;
                ctx.clients
                    .metrics()
                    .call("DescribeClassificationJob", MacieError::outcome(&r));
                match r {
                    // No such job (a record naming an id that does not exist): nobody's token.
                    Ok(token) => {
                        lock(&ctx.tokens).insert((place.clone(), job_id), token.unwrap_or_default());
                    }
                    Err(MacieError::NotFound { .. }) => {
                        lock(&ctx.tokens).insert((place.clone(), job_id), String::new());
                    }
                    Err(e) => {
                        let reason = if matches!(e, MacieError::AccessDenied { .. }) {
                            Reason::AccessDenied
                        } else {
                            Reason::MacieError
                        };
                        status(
                            reason.summary(format!(
                                "DescribeClassificationJob {job_id} (is the job of this name ours?) failed: {e}"
                            )),
                            record,
                        )
                        .await?;
                        return Ok(Created::Done(ctx.failures.retry(obj, &e)));
                    }
                }
            }
            CreateAction::Forged(job_id) => {
                // The record is dropped and the decision made again without it; the status
                // says so once (a Warning Event with the reason), and nothing is done to the job.
                ctx.forget_creation(&oref);
                drop_forged_records(api, obj, &job_id).await?;
                status(
                    Reason::RecordIgnored.summary(format!(
                        "status.creation named job {job_id}, which is not a job this MacieJob created in {place} (no job of that id carries its client token): the record is ignored and nothing is done to that job; only the operator writes status"
                    )),
                    None,
                )
                .await?;
                record = None;
            }
            CreateAction::NameInUse(job_id) => {
                lock(&ctx.queue).leave(&oref);
                status(
                    Reason::NameInUse.summary(format!(
                        "a job named {name:?} ({job_id}) exists and was not created by this MacieJob: it is not adopted and no job is created; manage it with spec.jobId in a MacieJob without a definition, or choose another jobName"
                    )),
                    record,
                )
                .await?;
                return Ok(Created::Done(Action::await_change()));
            }
            CreateAction::Ambiguous | CreateAction::Wait(Waiting::ForSweep) => return Ok(Created::ByName),
            // Being deleted: the deletion step releases it (nothing to cancel).
            CreateAction::NothingToCreate if obj.meta().deletion_timestamp.is_some() => {
                lock(&ctx.queue).leave(&oref);
                return Ok(Created::ByName);
            }
            CreateAction::NothingToCreate => {
                lock(&ctx.queue).leave(&oref);
                status(
                    Reason::TerminalState.summary(format!(
                        "jobStatus is CANCELLED and no job named {name:?} exists: nothing is created"
                    )),
                    record,
                )
                .await?;
                return Ok(Created::Done(Action::await_change()));
            }
            CreateAction::Wait(Waiting::ForCreated) => {
                let at = record.as_ref().map_or(now, |r| r.requested_at.0);
                ctx.wake_after_sweep(&oref, place, at);
                status(
                    Reason::Creating.summary(format!(
                        "CreateClassificationJob {name:?} sent at {at}; waiting for a sweep to show the job"
                    )),
                    record,
                )
                .await?;
                return Ok(Created::Done(Action::await_change()));
            }
            CreateAction::Wait(Waiting::ForRetry(at)) => {
                let summary = match record.as_ref() {
                    Some(CreationRecord {
                        outcome: CreationOutcome::Failed,
                        message,
                        ..
                    }) => Reason::CreateFailed
                        .summary(format!("{}; sent again at {at}", message.clone().unwrap_or_default())),
                    _ => Reason::WaitingForCreateQuota
                        .summary(format!("CreateClassificationJob was throttled; sent again at {at}")),
                };
                status(summary, record).await?;
                return Ok(Created::Done(requeue_at(at)));
            }
            CreateAction::Create => {
                let ticket = lock(&ctx.queue).ticket(place, &oref, std::time::Instant::now());
                if let Ticket::Wait { position, at } = ticket {
                    let wait = at.saturating_duration_since(std::time::Instant::now());
                    status(
                        Reason::WaitingForCreateQuota.summary(format!(
                            "number {position} in line for CreateClassificationJob in {place} (one every {:?}, the create quota); about {}s to go",
                            lock(&ctx.queue).interval(),
                            wait.as_secs()
                        )),
                        record,
                    )
                    .await?;
                    return Ok(Created::Done(Action::requeue(wait.max(Duration::from_millis(100)))));
                }
                if !ctx.clients.gate().allows_writes() {
                    lock(&ctx.queue).leave(&oref);
                    tracing::info!(name = %obj.name_any(), "not the leader any more: no CreateClassificationJob");
                    return Ok(Created::Done(Action::requeue(ctx.poller.interval())));
                }
                // The MacieAccount and namespace as they are now (the queue may have held the
                // create for minutes).
                if let Err(refusal) = recheck(ctx, obj, None) {
                    lock(&ctx.queue).leave(&oref);
                    return refused(ctx, api, obj, &refusal).await.map(Created::Done);
                }
                // Write-ahead: the create is recorded before the call.
                let mut r = CreationRecord {
                    client_token: ours.clone(),
                    requested_at: Time(plan::ceil_second(crate::runtime::clock::now())),
                    outcome: CreationOutcome::Pending,
                    job_id: None,
                    retry_at: None,
                    error_code: None,
                    message: None,
                };
                status(
                    Reason::Creating.summary(format!("CreateClassificationJob {name:?} being sent")),
                    Some(r.clone()),
                )
                .await?;
                ctx.remember_creation(&oref, r.clone());
                // Again right before the call: the write-ahead took a round trip.
                if let Err(refusal) = recheck(ctx, obj, None) {
                    lock(&ctx.queue).leave(&oref);
                    ctx.forget_creation(&oref);
                    return refused(ctx, api, obj, &refusal).await.map(Created::Done);
                }
                tracing::info!(
                    account = %place.account,
                    region = %place.region,
                    operation = "CreateClassificationJob",
                    job_name = %name,
                    client_token = %ours,
                    namespace = %obj.namespace().unwrap_or_default(),
                    name = %obj.name_any(),
                    uid = %obj.uid().unwrap_or_default(),
                    "AWS write"
                );
                let tags = create::job_tags(
                    definition.tags.as_ref(),
                    &obj.namespace().unwrap_or_default(),
                    &obj.name_any(),
                    &obj.uid().unwrap_or_default(),
                );
                let new_job = NewJob {
                    name: &name,
                    definition,
                    client_token: &ours,
                    tags: &tags,
                };
                lock(&ctx.queue).sending(place, std::time::Instant::now());
                let result = ctx.clients.api().create_job(place, &new_job).await;
                ctx.clients
                    .metrics()
                    .call("CreateClassificationJob", MacieError::outcome(&result));
                let (summary, next) = match result {
                    Ok(job_id) => {
                        r.outcome = CreationOutcome::Succeeded;
                        r.job_id = Some(job_id.clone());
                        lock(&ctx.tokens).insert((place.clone(), job_id.clone()), ours.clone());
                        publish(
                            ctx,
                            obj,
                            EventType::Normal,
                            "Created",
                            format!("CreateClassificationJob {name:?}: job {job_id}"),
                        )
                        .await;
                        ctx.wake_after_sweep(&oref, place, crate::runtime::clock::now());
                        (
                            Reason::Creating.summary(format!("created job {job_id}; waiting for a sweep to show it")),
                            Action::await_change(),
                        )
                    }
                    Err(e @ MacieError::Throttled { .. }) => {
                        // Not processed, not a failure: first in line again after a backoff.
                        let wait = (lock(&ctx.queue).interval() * 2).max(Duration::from_secs(2));
                        lock(&ctx.queue).throttled(place, &oref, std::time::Instant::now(), wait);
                        r.outcome = CreationOutcome::NotProcessed;
                        r.error_code = Some(e.code().to_string());
                        let at = crate::runtime::clock::now().checked_add(wait).unwrap_or(Timestamp::MAX);
                        r.retry_at = Some(Time(at));
                        (
                            Reason::WaitingForCreateQuota.summary(format!(
                                "CreateClassificationJob was throttled ({}); sent again in {}s",
                                e.code(),
                                wait.as_secs()
                            )),
                            Action::requeue(wait),
                        )
                    }
                    Err(e @ MacieError::Uncertain { .. }) => {
                        // It may have been processed: a sweep shows the job (found by its
                        // token) or, past the step timeout, the same token is sent again.
                        r.error_code = Some(e.code().to_string());
                        ctx.wake_after_sweep(&oref, place, r.requested_at.0);
                        publish(
                            ctx,
                            obj,
                            EventType::Warning,
                            "CreateFailed",
                            format!("CreateClassificationJob {name:?}: outcome unknown: {e}"),
                        )
                        .await;
                        (
                            Reason::Creating.summary(format!(
                                "CreateClassificationJob {name:?}: outcome unknown ({e}); a sweep shows whether the job exists"
                            )),
                            Action::await_change(),
                        )
                    }
                    Err(e) => {
                        let reason = if matches!(e, MacieError::AccessDenied { .. }) {
                            Reason::AccessDenied
                        } else {
                            Reason::CreateFailed
                        };
                        let wait = outcome::retry_delay(Reason::AccessDenied, 1, 0.75);
                        let at = crate::runtime::clock::now().checked_add(wait).unwrap_or(Timestamp::MAX);
                        r.outcome = CreationOutcome::Failed;
                        r.error_code = Some(e.code().to_string());
                        r.retry_at = Some(Time(at));
                        r.message = Some(format!("CreateClassificationJob {name:?} failed: {e}"));
                        publish(
                            ctx,
                            obj,
                            EventType::Warning,
                            "CreateFailed",
                            format!("CreateClassificationJob {name:?} failed: {e}"),
                        )
                        .await;
                        (
                            reason.summary(format!(
                                "CreateClassificationJob {name:?} failed: {e}; sent again at {at}"
                            )),
                            requeue_at(at),
                        )
                    }
                };
                ctx.remember_creation(&oref, r.clone());
                status(summary, Some(r)).await?;
                return Ok(Created::Done(next));
            }
        }
    }
    Ok(Created::Done(Action::requeue(ctx.poller.interval())))
}

/// Removes a forged creation record (and a transition record naming the same job) from the
/// status with a merge patch: a server-side apply that leaves the fields out would not remove
/// the ones the forger's field manager owns, and would leave a record with fields missing.
async fn drop_forged_records(api: &Api<MacieJob>, obj: &MacieJob, job_id: &str) -> Result<(), Error> {
    let names_it = obj
        .status
        .as_ref()
        .and_then(|s| s.last_transition.as_ref())
        .is_some_and(|t| t.job_id == job_id);
    let mut status = serde_json::json!({"creation": null});
    if names_it {
        status["lastTransition"] = serde_json::Value::Null;
    }
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}
