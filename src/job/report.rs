//! What a MacieJob reports: its status (one write when something changed, recorded as this
//! process's own last write) and its Events.

use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::Api;

use super::Context;
use crate::api::conditions::{self, Summary};
use crate::api::macie_job::{CreationRecord, ObservedJob, RequestedTransition};
use crate::api::{MacieJob, MacieJobStatus};
use crate::runtime::events::EventType;
use crate::runtime::{Error, status};

/// The longest AWS error code a record keeps (its schema's bound).
pub(super) const ERROR_CODE_MAX: usize = 128;

/// What a status write is given.
pub(super) struct StatusUpdate<'a> {
    /// What the resource holds now.
    pub(super) prev: &'a MacieJobStatus,
    pub(super) region: &'a str,
    pub(super) job: Option<ObservedJob>,
    pub(super) summary: &'a Summary,
    pub(super) last_transition: Option<RequestedTransition>,
    pub(super) snapshot_at: Option<Timestamp>,
    pub(super) creation: Option<CreationRecord>,
}

/// Writes the status unless it equals what the resource holds (the shared
/// `runtime::status` write); returns what it holds now. Entering a new reason is announced as
/// the reason says.
pub(super) async fn write_status(
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
        precondition: ctx.memory.precondition(obj),
    };
    if let Some(written) = status::write(to, obj, Some(prev), &status).await? {
        ctx.memory.wrote(&written);
    }
    Ok(status)
}

/// Publishes an Event about the resource, with the action it concerns.
pub(super) async fn publish(ctx: &Context, obj: &MacieJob, type_: EventType, reason: &str, note: String) {
    let action = match reason {
        "UpdateFailed" => "UpdateClassificationJob",
        "Created" | "CreateFailed" => "CreateClassificationJob",
        "Released" => "ReleaseFinalizer",
        _ => "Observe",
    };
    crate::runtime::publish_event(&ctx.recorder, obj, type_, reason, action, note).await;
}
