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
//!   visible on the resource (but a refused precondition: the copy was older than the API
//!   server's, and the write is made again from a newer one);
//! - records what the status shows in the resource gauges ([`Metrics::resource_shown`]: the
//!   condition that is True and its reason, a paused job's expiry), also when the status was
//!   already stored as is, so that the gauges are whole again after a restart; a failed write
//!   leaves them as they were. [`forget_deleted`] takes deleted resources out again, as the
//!   controllers' watches report them.
//!
//! It is generic over the kind: any `kube::Resource` with a status type that serializes and has
//! kstatus conditions ([`Reported`]).

use super::events::{EventType, Recorder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::metrics::{Metrics, ObjectKey, Shown};
use super::{MANAGER, publish_event};
use crate::api::conditions::{self, READY, RECONCILING, Reason, STALLED};

/// The Events' action: what the operator was doing.
pub const ACTION: &str = "UpdateStatus";
/// Reason of the Warning Event published when a status write fails.
pub const WRITE_FAILED: &str = "StatusWriteFailed";

/// A status the shared write handles: kstatus conditions (`Ready`, `Reconciling`, `Stalled`),
/// and what the metrics report of it.
pub trait Reported {
    fn conditions(&self) -> &[Condition];

    /// When Macie cancels the resource's paused job (Unix seconds): only a job Macie shows
    /// USER_PAUSED has one.
    fn paused_until(&self) -> Option<i64> {
        None
    }
}

impl Reported for crate::api::MacieJobStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn paused_until(&self) -> Option<i64> {
        let job = self.job.as_ref().filter(|j| j.job_status == "USER_PAUSED")?;
        Some(job.user_paused_details.as_ref()?.job_expires_at.as_ref()?.0.as_second())
    }
}

impl Reported for crate::api::MacieAccountStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Reported for crate::api::MacieDiscoveryStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Pure: what `status` shows in the resource gauges. The reason is one of the shared
/// [`Reason`]s, or `Other` (the label's values stay bounded whatever a status holds).
pub fn shown<S: Reported>(status: &S) -> Shown {
    let condition = [READY, RECONCILING, STALLED].into_iter().find_map(|type_| {
        let c = conditions::find(status.conditions(), type_).filter(|c| c.status == "True")?;
        Some((type_, Reason::parse(&c.reason).map_or("Other", Reason::as_str)))
    });
    Shown {
        condition,
        paused_until: status.paused_until(),
    }
}

/// The gauges' key of `obj`.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectKey {
    ObjectKey {
        kind: kind_of::<K>(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
    }
}

/// The kind's name, as a label value (a fixed set: ours).
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "MacieJob" => "MacieJob",
        "MacieDiscovery" => "MacieDiscovery",
        "MacieAccount" => "MacieAccount",
        _ => "Other",
    }
}

/// Takes deleted resources out of the resource gauges, as a controller's watch reports them
/// (call it with each event, after the reflector has applied it to `store`): a deletion drops
/// the resource; the end of a (re)list drops every resource the list did not show (deleted
/// while the watch was down).
pub fn forget_deleted<K>(metrics: &Metrics, event: &watcher::Event<K>, store: &Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match event {
        watcher::Event::Delete(o) => metrics.resource_gone(&object_key(o)),
        watcher::Event::InitDone => metrics.resources_retain(kind_of::<K>(), |k| {
            let mut r = ObjectRef::<K>::new(&k.name);
            if !k.namespace.is_empty() {
                r = r.within(&k.namespace);
            }
            store.get(&r).is_some()
        }),
        watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Init => {}
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
pub fn ready_event<S: Reported>(previous: Option<&S>, new: &S) -> Option<(EventType, String, String)> {
    let ready = conditions::find(new.conditions(), READY)?;
    let before = previous.and_then(|p| conditions::find(p.conditions(), READY));
    if before.is_some_and(|b| b.reason == ready.reason) {
        return None;
    }
    let stalled = conditions::find(new.conditions(), STALLED).is_some_and(|c| c.status == "True");
    let type_ = if stalled { EventType::Warning } else { EventType::Normal };
    Some((type_, ready.reason.clone(), ready.message.clone()))
}

/// The Event reason of a pause that ended (entering one is announced by its Ready reason,
/// `ReconcilePaused`).
pub const RESUMED: &str = "ReconcileResumed";

/// The note of the Event to publish when the `Paused` condition goes away, or None.
pub fn resumed<S: Reported>(previous: Option<&S>, new: &S) -> Option<String> {
    let was = previous.and_then(|p| conditions::find(p.conditions(), conditions::PAUSED))?;
    if conditions::find(new.conditions(), conditions::PAUSED).is_some() || was.status != "True" {
        return None;
    }
    let now = conditions::find(new.conditions(), READY).map_or(String::new(), |c| format!(": {}", c.message));
    Some(format!("the pause annotation is gone; the operator acts again{now}"))
}

/// Where a status write goes and who hears of it.
pub struct Writer<'a, K> {
    pub api: &'a Api<K>,
    pub recorder: &'a Recorder,
    pub metrics: &'a Metrics,
    /// The resourceVersion the status was built from, when the write must be made against it
    /// ([`Memory::precondition`](super::memory::Memory::precondition)): if the object changed
    /// since, the API server refuses the write (409 Conflict) and nothing is written.
    pub precondition: Option<String>,
}

/// Writes `new` as the status of `obj` unless it equals `previous` (see the module
/// documentation); returns the object as written (None: nothing to write).
pub async fn write<K, S>(to: Writer<'_, K>, obj: &K, previous: Option<&S>, new: &S) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq + Reported,
{
    write_announcing(to, obj, previous, new, by_reason).await
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
    to: Writer<'_, K>,
    obj: &K,
    previous: Option<&S>,
    new: &S,
    announce: impl Fn(EventType, &str) -> Option<EventType>,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq + Reported,
{
    let Writer {
        api,
        recorder,
        metrics,
        precondition,
    } = to;
    if !differs(previous, new) {
        metrics.resource_shown(object_key(obj), shown(new));
        return Ok(None);
    }
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    if let Some(version) = &precondition {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    let outdated = |e: &kube::Error| precondition.is_some() && matches!(e, kube::Error::Api(s) if s.code == 409);
    if let Err(e) = &written
        && !outdated(e)
    {
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
    let written = written?;
    metrics.resource_shown(object_key(obj), shown(new));
    if let Some((type_, reason, note)) = ready_event(previous, new)
        && let Some(type_) = announce(type_, &reason)
    {
        publish_event(recorder, obj, type_, &reason, ACTION, note).await;
    }
    if let Some(note) = resumed(previous, new) {
        publish_event(recorder, obj, EventType::Normal, RESUMED, ACTION, note).await;
    }
    Ok(Some(written))
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
    fn a_macie_account_shows_what_its_conditions_say() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let s = Summary::new(Phase::Stalled, "AccessDenied", "the role cannot be assumed");
        let account = crate::api::MacieAccountStatus {
            conditions: conditions::conditions(&s, Some(1), &[], now),
            ..Default::default()
        };
        assert_eq!(shown(&account).condition, Some((STALLED, "AccessDenied")));
        assert_eq!(shown(&crate::api::MacieAccountStatus::default()).condition, None);
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
    fn leaving_a_pause_is_announced_once() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let paused = status(&Summary::new(Phase::Ready, "ReconcilePaused", "paused"), now);
        let ready = status(&Summary::new(Phase::Ready, "Converged", "all 1"), now);
        let (t, reason, _) = ready_event(Some(&ready), &paused).unwrap();
        assert_eq!((t, reason.as_str()), (EventType::Normal, "ReconcilePaused"), "entering");
        assert_eq!(by_reason(EventType::Normal, "ReconcilePaused"), Some(EventType::Normal));
        let note = resumed(Some(&paused), &ready).expect("leaving");
        assert!(note.ends_with(": all 1"), "{note}");
        assert_eq!(resumed(Some(&paused), &paused), None, "still paused");
        assert_eq!(resumed(Some(&ready), &ready), None, "never paused");
        assert_eq!(resumed(None, &ready), None);
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

    fn job_status(reason: &str, phase: Phase, job_status: &str, expires: Option<i64>) -> crate::api::MacieJobStatus {
        use crate::api::macie_job::{ObservedJob, UserPausedDetails};
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        crate::api::MacieJobStatus {
            conditions: conditions::conditions(&Summary::new(phase, reason, "m"), Some(1), &[], now),
            job: Some(ObservedJob {
                job_id: "j".into(),
                job_status: job_status.into(),
                user_paused_details: expires.map(|t| UserPausedDetails {
                    job_expires_at: Some(Time(Timestamp::from_second(t).unwrap())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_status_shows_in_the_gauges() {
        let shows = |condition: Option<(&'static str, &'static str)>, paused_until: Option<i64>| Shown {
            condition,
            paused_until,
        };
        let rows: [(&str, crate::api::MacieJobStatus, Shown); 6] = [
            (
                "converged",
                job_status("Converged", Phase::Ready, "RUNNING", None),
                shows(Some(("Ready", "Converged")), None),
            ),
            (
                "stalled, access denied",
                job_status("AccessDenied", Phase::Stalled, "RUNNING", None),
                shows(Some(("Stalled", "AccessDenied")), None),
            ),
            (
                "paused: its expiry",
                job_status("ExpiringSoon", Phase::Ready, "USER_PAUSED", Some(1_800_600_000)),
                shows(Some(("Ready", "ExpiringSoon")), Some(1_800_600_000)),
            ),
            (
                "expiry details of a job no longer paused do not count",
                job_status("Transitioning", Phase::Reconciling, "RUNNING", Some(1_800_600_000)),
                shows(Some(("Reconciling", "Transitioning")), None),
            ),
            (
                "a reason that is not ours is Other",
                job_status("SomethingNew", Phase::Reconciling, "RUNNING", None),
                shows(Some(("Reconciling", "Other")), None),
            ),
            (
                "no conditions",
                crate::api::MacieJobStatus::default(),
                shows(None, None),
            ),
        ];
        for (name, status, want) in rows {
            assert_eq!(shown(&status), want, "{name}");
        }
    }
}
