//! The status write both controllers share.
//!
//! A reconcile computes the whole status it wants, then calls [`write`] with the status the
//! object had. The write
//! - compares the two as the API stores them (serialized: `metav1.Time` keeps whole seconds, so
//!   a timestamp taken in memory at nanosecond precision does not count as a change), and does
//!   nothing when they are equal: a converged resource left alone keeps its resourceVersion;
//! - otherwise server-side-applies the status (field manager [`MANAGER`], forced) with the
//!   status subresource;
//! - publishes an Event when the Ready condition's reason changes (Normal, or Warning when the
//!   resource is Stalled), and a Warning Event `StatusWriteFailed` saying why when the write
//!   fails, so that a status that cannot be written (too large, rejected by the schema) is still
//!   visible on the resource.
//!
//! It is generic over the kind: any `kube::Resource` with a status type that serializes and has
//! kstatus conditions ([`Conditions`]).

use super::events::{EventType, Recorder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{MANAGER, publish_event};
use crate::api::conditions::{self, READY, STALLED};

/// The Events' action: what the operator was doing.
pub const ACTION: &str = "UpdateStatus";
/// Reason of the Warning Event published when a status write fails.
pub const WRITE_FAILED: &str = "StatusWriteFailed";

/// A status with kstatus conditions (`Ready`, `Reconciling`, `Stalled`).
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Conditions for crate::api::MacieJobStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for crate::api::MacieAccountStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for crate::api::MacieDiscoveryStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// `t` as the API stores a `metav1.Time`: whole seconds.
pub fn api_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Whether `new` differs from `previous` as the API would store them.
pub fn differs<S: Serialize + PartialEq>(previous: Option<&S>, new: &S) -> bool {
    match previous {
        None => true,
        Some(p) if p == new => false,
        Some(p) => serde_json::to_value(p).ok() != serde_json::to_value(new).ok(),
    }
}

/// The Event to publish when the Ready reason goes from `previous` to `new`: (type, reason,
/// note), or None when it did not change.
pub fn ready_event<S: Conditions>(previous: Option<&S>, new: &S) -> Option<(EventType, String, String)> {
    let ready = conditions::find(new.conditions(), READY)?;
    let before = previous.and_then(|p| conditions::find(p.conditions(), READY));
    if before.is_some_and(|b| b.reason == ready.reason) {
        return None;
    }
    let stalled = conditions::find(new.conditions(), STALLED).is_some_and(|c| c.status == "True");
    let type_ = if stalled { EventType::Warning } else { EventType::Normal };
    Some((type_, ready.reason.clone(), ready.message.clone()))
}

/// Writes `new` as the status of `obj` unless it equals `previous` (see the module
/// documentation); returns whether it wrote.
pub async fn write<K, S>(
    api: &Api<K>,
    recorder: &Recorder,
    obj: &K,
    previous: Option<&S>,
    new: &S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq + Conditions,
{
    write_announcing(api, recorder, obj, previous, new, by_reason).await
}

/// How entering a reason is announced, as the shared [`Reason`](crate::api::conditions::Reason)
/// says (a reason it does not know keeps the default type).
pub fn by_reason(default: EventType, reason: &str) -> Option<EventType> {
    use crate::api::conditions::{Announce, Reason};
    match Reason::parse(reason).map(Reason::announce) {
        Some(Announce::Silent) => None,
        Some(Announce::Normal) => Some(EventType::Normal),
        Some(Announce::Warning) => Some(EventType::Warning),
        None => Some(default),
    }
}

/// [`write`], with the kind's own say on the Event of a new Ready reason: `announce` gets the
/// default type and the reason, and returns the type to publish with, or None for no Event.
pub async fn write_announcing<K, S>(
    api: &Api<K>,
    recorder: &Recorder,
    obj: &K,
    previous: Option<&S>,
    new: &S,
    announce: impl Fn(EventType, &str) -> Option<EventType>,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq + Conditions,
{
    if !differs(previous, new) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    if let Err(e) = &written {
        publish_event(
            recorder,
            obj,
            EventType::Warning,
            WRITE_FAILED,
            ACTION,
            format!("could not write the status: {e}"),
        )
        .await;
    }
    written?;
    if let Some((type_, reason, note)) = ready_event(previous, new)
        && let Some(type_) = announce(type_, &reason)
    {
        publish_event(recorder, obj, type_, &reason, ACTION, note).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MacieDiscoveryStatus;
    use crate::api::conditions::{Phase, Summary};

    fn status(summary: &Summary, now: Timestamp) -> MacieDiscoveryStatus {
        MacieDiscoveryStatus {
            observed_generation: Some(1),
            conditions: conditions::conditions(summary, Some(1), &[], now),
            last_sync_time: Some(Time(now)),
            ..Default::default()
        }
    }

    #[test]
    fn times_compare_at_the_precision_the_api_stores() {
        let s = Summary::new(Phase::Ready, "Converged", "all 1 account(s) in their desired status");
        let precise = Timestamp::from_second(1_800_000_000).unwrap() + std::time::Duration::from_nanos(123_456_789);
        let in_memory = status(&s, precise);
        // What a GET returns after the write: whole seconds.
        let stored: MacieDiscoveryStatus = serde_json::from_value(serde_json::to_value(&in_memory).unwrap()).unwrap();
        assert_ne!(stored, in_memory, "PartialEq alone sees the nanoseconds");
        assert!(!differs(Some(&stored), &in_memory), "as stored they are equal");
        assert!(differs(None, &in_memory));
        let later = status(&s, precise + std::time::Duration::from_secs(1));
        assert!(differs(Some(&stored), &later));
        assert_eq!(api_time(precise).0, Timestamp::from_second(1_800_000_000).unwrap());
    }

    #[test]
    fn an_event_when_the_ready_reason_changes() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let pending = status(&Summary::new(Phase::Reconciling, "Pending", "0 of 1"), now);
        let stalled = status(&Summary::new(Phase::Stalled, "AccountErrors", "1 of 1 failed"), now);
        let ready = status(&Summary::new(Phase::Ready, "Converged", "all 1"), now);
        let (t, reason, note) = ready_event(None, &pending).unwrap();
        assert_eq!((t, reason.as_str()), (EventType::Normal, "Pending"));
        assert_eq!(note, "0 of 1");
        let (t, reason, _) = ready_event(Some(&pending), &stalled).unwrap();
        assert_eq!((t, reason.as_str()), (EventType::Warning, "AccountErrors"));
        assert_eq!(ready_event(Some(&stalled), &ready).unwrap().0, EventType::Normal);
        assert_eq!(ready_event(Some(&ready), &ready), None, "same reason: no Event");
    }

    #[test]
    fn the_shared_reasons_decide_the_event_type() {
        assert_eq!(by_reason(EventType::Normal, "Pending"), None, "silent");
        assert_eq!(
            by_reason(EventType::Normal, "Transitioning"),
            None,
            "the call's Event said it"
        );
        assert_eq!(by_reason(EventType::Normal, "JobNotFound"), Some(EventType::Warning));
        assert_eq!(by_reason(EventType::Warning, "Converged"), Some(EventType::Normal));
        assert_eq!(by_reason(EventType::Normal, "SomethingNew"), Some(EventType::Normal));
    }
}
