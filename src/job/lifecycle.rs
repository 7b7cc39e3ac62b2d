//! The resource's lifecycle: the finalizer that deletionPolicy Cancel needs, and what a
//! deletion asks of a reconcile (pure, table-tested), decided before anything else.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::FINALIZER;
use super::plan::{Observation, Plan};
use crate::account::policy::Refusal;
use crate::api::conditions::Phase;
use crate::api::{DeletionPolicy, DesiredJobStatus, MacieJob, ManagementPolicy};
use crate::runtime::Error;

/// What the resource's lifecycle asks of a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Deleted without our finalizer: drop what we know of it.
    Forget,
    /// Add (true) or remove (false) the finalizer, as deletionPolicy asks.
    SetFinalizer(bool),
    /// Being deleted with deletionPolicy Orphan (now): release it without any call.
    Release(&'static str),
    /// Keep the job in `desired` (CANCELLED while being deleted with deletionPolicy Cancel).
    Manage { desired: DesiredJobStatus, deleting: bool },
    /// managementPolicy Observe: report the job against `desired` (if declared), never write.
    Observe { desired: Option<DesiredJobStatus> },
}

/// Pure: what the resource's deletion state, (current) deletionPolicy and managementPolicy ask
/// for. Observe never writes to Macie: it needs no finalizer (admission refuses it with
/// deletionPolicy Cancel; a resource that has one anyway is released without a call).
pub fn lifecycle(obj: &MacieJob) -> Lifecycle {
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let desired = match obj.spec.management_policy {
        ManagementPolicy::Manage => obj.spec.job_status,
        ManagementPolicy::Observe => None,
    };
    let cancel = obj.spec.deletion_policy == DeletionPolicy::Cancel && desired.is_some();
    match (obj.meta().deletion_timestamp.is_some(), has_finalizer, cancel) {
        (true, false, _) => Lifecycle::Forget,
        (true, true, false) if desired.is_none() => {
            Lifecycle::Release("managementPolicy is Observe: the job is left as it is")
        }
        (true, true, false) => Lifecycle::Release("deletionPolicy is Orphan: the job is left as it is"),
        (true, true, true) => Lifecycle::Manage {
            desired: DesiredJobStatus::Cancelled,
            deleting: true,
        },
        (false, has, wants) if has != wants => Lifecycle::SetFinalizer(wants),
        (false, _, _) => match desired {
            Some(desired) => Lifecycle::Manage {
                desired,
                deleting: false,
            },
            None => Lifecycle::Observe {
                desired: obj.spec.job_status,
            },
        },
    }
}

/// What a reconcile does with a resource its MacieAccount refuses (decided before any other
/// step: no Macie call follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Not being deleted: report the refusal (Stalled) and wait for a change.
    Report,
    /// Being deleted: release the finalizer without a call, saying why.
    Release(String),
    /// Being deleted with deletionPolicy Cancel while the account's credentials do not work
    /// (a state that can pass): keep the finalizer and try again later.
    Hold,
}

/// Pure: what a refusal means for the resource's lifecycle.
pub fn after_refusal(obj: &MacieJob, refusal: &Refusal) -> AfterRefusal {
    let deleting = obj.meta().deletion_timestamp.is_some();
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let cancel = obj.spec.deletion_policy == DeletionPolicy::Cancel;
    match (deleting && has_finalizer, cancel, refusal) {
        (false, _, _) => AfterRefusal::Report,
        (true, true, Refusal::AccountNotReady { .. }) => AfterRefusal::Hold,
        (true, true, r) => AfterRefusal::Release(format!(
            "deletionPolicy Cancel refused: {}; the finalizer is released and the job was not cancelled",
            r.message()
        )),
        (true, false, _) => AfterRefusal::Release("deletionPolicy is Orphan: the job is left as it is".into()),
    }
}

/// Pure: while deleting with deletionPolicy Cancel, whether the finalizer can go (nothing left
/// to cancel, or the job cannot be cancelled) and why.
pub fn release_after_cancel(observation: &Observation<'_>, p: &Plan) -> Option<String> {
    match observation {
        Observation::NotFound => Some("the job no longer exists; nothing to cancel".into()),
        Observation::Ambiguous(_) => Some(format!("{}; nothing was cancelled", p.summary.message)),
        Observation::Found(_) if p.summary.phase == Phase::Ready => Some(p.summary.message.clone()),
        _ => None,
    }
}

pub async fn set_finalizer(api: &Api<MacieJob>, obj: &MacieJob, present: bool) -> Result<MacieJob, Error> {
    let mut finalizers: Vec<String> = obj.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": obj.resource_version() }
    });
    Ok(api
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::api::MacieJobSpec;
    use crate::api::macie_job::ObservedJob;
    use crate::job::plan::{self, Settings};
    use crate::macie::MacieError;

    fn obj(policy: DeletionPolicy, finalizer: bool, deleting: bool) -> MacieJob {
        let mut o = MacieJob::new(
            "m",
            MacieJobSpec {
                job_id: Some("j1".into()),
                job_name: None,
                job_status: Some(DesiredJobStatus::UserPaused),
                region: None,
                account_ref: None,
                definition: None,
                deletion_policy: policy,
                management_policy: ManagementPolicy::Manage,
            },
        );
        o.metadata = ObjectMeta {
            name: Some("m".into()),
            namespace: Some("ns".into()),
            finalizers: finalizer.then(|| vec![FINALIZER.to_string()]),
            deletion_timestamp: deleting.then(|| Time(crate::runtime::clock::now())),
            ..Default::default()
        };
        o
    }

    #[test]
    fn lifecycle_rows() {
        use DeletionPolicy::*;
        use DesiredJobStatus::*;
        let rows = [
            // (policy, finalizer, deleting) -> lifecycle
            (
                (Orphan, false, false),
                Lifecycle::Manage {
                    desired: UserPaused,
                    deleting: false,
                },
            ),
            ((Orphan, true, false), Lifecycle::SetFinalizer(false)),
            ((Cancel, false, false), Lifecycle::SetFinalizer(true)),
            (
                (Cancel, true, false),
                Lifecycle::Manage {
                    desired: UserPaused,
                    deleting: false,
                },
            ),
            ((Orphan, false, true), Lifecycle::Forget),
            ((Cancel, false, true), Lifecycle::Forget),
            // Switched to Orphan while deleting: released, no call.
            (
                (Orphan, true, true),
                Lifecycle::Release("deletionPolicy is Orphan: the job is left as it is"),
            ),
            (
                (Cancel, true, true),
                Lifecycle::Manage {
                    desired: Cancelled,
                    deleting: true,
                },
            ),
        ];
        for ((policy, finalizer, deleting), want) in rows {
            assert_eq!(
                lifecycle(&obj(policy, finalizer, deleting)),
                want,
                "{policy:?} {finalizer} {deleting}"
            );
        }
    }

    #[test]
    fn after_refusal_rows() {
        use DeletionPolicy::*;
        let not_ready = Refusal::AccountNotReady {
            account: "a".into(),
            code: Some("AccessDenied".into()),
        };
        let not_permitted = Refusal::NotPermitted {
            account: "a".into(),
            rule: crate::account::policy::Rule::DeletionPolicyCancel,
        };
        let not_found = Refusal::AccountNotFound {
            account: "a".into(),
            by_default: false,
        };
        // (policy, finalizer, deleting, refusal) -> what happens
        type Case<'a> = (DeletionPolicy, bool, bool, &'a Refusal);
        type Check = fn(&AfterRefusal) -> bool;
        let rows: Vec<(Case, Check)> = vec![
            ((Cancel, false, false, &not_permitted), |a| *a == AfterRefusal::Report),
            ((Cancel, true, false, &not_ready), |a| *a == AfterRefusal::Report),
            ((Orphan, false, false, &not_found), |a| *a == AfterRefusal::Report),
            // Deleting without our finalizer: nothing to hold (lifecycle forgets it).
            ((Cancel, false, true, &not_permitted), |a| *a == AfterRefusal::Report),
            // Cancel not allowed: released without a call, and it says so.
            (
                (Cancel, true, true, &not_permitted),
                |a| matches!(a, AfterRefusal::Release(m) if m.contains("not cancelled") && m.contains("allowCancel")),
            ),
            (
                (Cancel, true, true, &not_found),
                |a| matches!(a, AfterRefusal::Release(m) if m.contains("not cancelled")),
            ),
            // Credentials that do not work (yet): the finalizer waits.
            ((Cancel, true, true, &not_ready), |a| *a == AfterRefusal::Hold),
            (
                (Orphan, true, true, &not_ready),
                |a| matches!(a, AfterRefusal::Release(m) if m.contains("Orphan")),
            ),
        ];
        for ((policy, finalizer, deleting, refusal), ok) in rows {
            let got = after_refusal(&obj(policy, finalizer, deleting), refusal);
            assert!(ok(&got), "{policy:?} {finalizer} {deleting} {refusal:?}: {got:?}");
        }
    }

    #[test]
    fn release_after_cancel_rows() {
        let settings = Settings {
            step_timeout: Duration::from_secs(300),
            expiry_warning: Duration::from_secs(86400),
        };
        let job = |s: &str| ObservedJob {
            job_id: "j1".into(),
            job_status: s.into(),
            ..Default::default()
        };
        let t = crate::runtime::clock::now();
        let err = MacieError::Uncertain {
            code: "DispatchFailure".into(),
            message: "dns error".into(),
        };
        let ids = vec!["a".to_string(), "b".to_string()];
        let cases: Vec<(Observation<'_>, bool)> = vec![
            (Observation::NotFound, true),
            (Observation::Ambiguous(&ids), true),
            (Observation::NoSweepYet, false),
            (
                Observation::SweepFailed {
                    error: &err,
                    failures: 5,
                },
                false,
            ),
        ];
        for (o, released) in cases {
            let p = plan::plan(DesiredJobStatus::Cancelled, o, Some(t), None, t, &settings);
            assert_eq!(release_after_cancel(&o, &p).is_some(), released, "{o:?}");
        }
        for (status, released) in [
            ("CANCELLED", true),
            ("COMPLETE", true),
            ("RUNNING", false),
            ("USER_PAUSED", false),
        ] {
            let j = job(status);
            let o = Observation::Found(&j);
            let p = plan::plan(DesiredJobStatus::Cancelled, o, Some(t), None, t, &settings);
            assert_eq!(release_after_cancel(&o, &p).is_some(), released, "{status}");
        }
    }
}
