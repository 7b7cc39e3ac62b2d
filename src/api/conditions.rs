//! kstatus-style conditions shared by both kinds: `Ready`, `Reconciling`, `Stalled`.
//!
//! Exactly one picture holds at a time: Ready=True (converged), Reconciling=True (work in
//! progress or waiting for Macie), or Stalled=True (needs a person). The other two are present
//! with status False, so `kubectl wait --for=condition=Ready` and Flux/Argo health checks work.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
/// Present (True) only while the resource is paused (the Ready reason is `ReconcilePaused`).
pub const PAUSED: &str = "Paused";

/// Which of the three conditions is True.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ready,
    Reconciling,
    Stalled,
}

/// The summary a controller computes: phase, a CamelCase reason and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub phase: Phase,
    pub reason: String,
    pub message: String,
}

impl Summary {
    pub fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Summary {
        Summary {
            phase,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Why a resource is in its state, for both kinds: the condition reason, its phase, and
/// whether entering it is announced with an Event (and of which type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Converged,
    Transitioning,
    TerminalState,
    JobNotFound,
    AmbiguousName,
    PausedByMacie,
    ExpiringSoon,
    AccessDenied,
    Throttled,
    UpdateRejected,
    UnknownJobStatus,
    WaitingForSweep,
    MacieError,
    /// Several resources declare different statuses for one job or account.
    Conflict,
    /// MacieDiscovery: accounts not yet in their declared status.
    Pending,
    /// MacieDiscovery: some accounts failed (per-account error codes).
    AccountErrors,
    /// A rule of the MacieAccount forbids what the resource asks for (the message names it).
    NotPermitted,
    /// The MacieAccount's credentials cannot be obtained (or are being verified).
    AccountNotReady,
    /// The MacieAccount does not list the resource's region.
    RegionNotAllowed,
    /// The referenced MacieAccount does not exist or does not select the namespace.
    AccountNotFound,
    /// MacieAccount: credentials obtained and verified.
    Verified,
    /// MacieJob with spec.definition: a job of the name exists that this resource did not
    /// create; it is not adopted and nothing is created.
    NameInUse,
    /// MacieJob with spec.definition: waiting for its turn in the create queue (the
    /// CreateClassificationJob quota), or throttled.
    WaitingForCreateQuota,
    /// MacieJob with spec.definition: CreateClassificationJob sent; waiting for the job.
    Creating,
    /// MacieJob with spec.definition: Macie refused CreateClassificationJob.
    CreateFailed,
    /// MacieJob: the status recorded a job this resource did not create (its client token is
    /// not the resource's): a forged or copied record, ignored; nothing is done to that job.
    RecordIgnored,
    /// MacieAccount being deleted while resources use it: it stays (and serves them) until
    /// they are gone.
    InUse,
    /// The pause annotation (on the resource or its MacieAccount) holds back every Macie
    /// write; observation goes on. Ready says whether Macie shows what is declared.
    ReconcilePaused,
    /// managementPolicy Observe: Macie differs from the declaration (the message says how);
    /// nothing is written.
    Drifted,
}

/// The type of Event a reason is announced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    Normal,
    Warning,
    /// Not announced (the call's own Event already said it).
    Silent,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Converged => "Converged",
            Reason::Transitioning => "Transitioning",
            Reason::TerminalState => "TerminalState",
            Reason::JobNotFound => "JobNotFound",
            Reason::AmbiguousName => "AmbiguousName",
            Reason::PausedByMacie => "PausedByMacie",
            Reason::ExpiringSoon => "ExpiringSoon",
            Reason::AccessDenied => "AccessDenied",
            Reason::Throttled => "Throttled",
            Reason::UpdateRejected => "UpdateRejected",
            Reason::UnknownJobStatus => "UnknownJobStatus",
            Reason::WaitingForSweep => "WaitingForSweep",
            Reason::MacieError => "MacieError",
            Reason::Conflict => "Conflict",
            Reason::Pending => "Pending",
            Reason::AccountErrors => "AccountErrors",
            Reason::NotPermitted => "NotPermitted",
            Reason::AccountNotReady => "AccountNotReady",
            Reason::RegionNotAllowed => "RegionNotAllowed",
            Reason::AccountNotFound => "AccountNotFound",
            Reason::Verified => "Verified",
            Reason::NameInUse => "NameInUse",
            Reason::WaitingForCreateQuota => "WaitingForCreateQuota",
            Reason::Creating => "Creating",
            Reason::CreateFailed => "CreateFailed",
            Reason::RecordIgnored => "RecordIgnored",
            Reason::InUse => "InUse",
            Reason::ReconcilePaused => "ReconcilePaused",
            Reason::Drifted => "Drifted",
        }
    }

    /// The reason of a stored condition, if it is one of ours.
    pub fn parse(s: &str) -> Option<Reason> {
        ALL_REASONS.into_iter().find(|r| r.as_str() == s)
    }

    /// Which of Ready, Reconciling, Stalled is True with this reason.
    pub fn phase(self) -> Phase {
        match self {
            // InUse: the account still works, and must, for the resources that hold it.
            Reason::Converged | Reason::TerminalState | Reason::ExpiringSoon | Reason::Verified | Reason::InUse => {
                Phase::Ready
            }
            Reason::Transitioning
            | Reason::JobNotFound
            | Reason::Throttled
            | Reason::UpdateRejected
            | Reason::WaitingForSweep
            | Reason::MacieError
            | Reason::Pending
            | Reason::WaitingForCreateQuota
            | Reason::Creating
            | Reason::RecordIgnored
            | Reason::ReconcilePaused => Phase::Reconciling,
            Reason::AmbiguousName
            | Reason::PausedByMacie
            | Reason::AccessDenied
            | Reason::UnknownJobStatus
            | Reason::Conflict
            | Reason::AccountErrors
            | Reason::NotPermitted
            | Reason::AccountNotReady
            | Reason::RegionNotAllowed
            | Reason::AccountNotFound
            | Reason::NameInUse
            | Reason::CreateFailed
            | Reason::Drifted => Phase::Stalled,
        }
    }

    /// How entering this reason is announced.
    pub fn announce(self) -> Announce {
        match self {
            // The call's own Event (or the resource's creation) already said it.
            Reason::Transitioning | Reason::Pending | Reason::WaitingForCreateQuota | Reason::Creating => {
                Announce::Silent
            }
            Reason::Converged
            | Reason::TerminalState
            | Reason::WaitingForSweep
            | Reason::Verified
            | Reason::ReconcilePaused => Announce::Normal,
            _ => Announce::Warning,
        }
    }

    pub fn summary(self, message: impl Into<String>) -> Summary {
        Summary::new(self.phase(), self.as_str(), message)
    }
}

/// Every reason (tests and parsing).
pub const ALL_REASONS: [Reason; 29] = [
    Reason::Converged,
    Reason::Transitioning,
    Reason::TerminalState,
    Reason::JobNotFound,
    Reason::AmbiguousName,
    Reason::PausedByMacie,
    Reason::ExpiringSoon,
    Reason::AccessDenied,
    Reason::Throttled,
    Reason::UpdateRejected,
    Reason::UnknownJobStatus,
    Reason::WaitingForSweep,
    Reason::MacieError,
    Reason::Conflict,
    Reason::Pending,
    Reason::AccountErrors,
    Reason::NotPermitted,
    Reason::AccountNotReady,
    Reason::RegionNotAllowed,
    Reason::AccountNotFound,
    Reason::Verified,
    Reason::NameInUse,
    Reason::WaitingForCreateQuota,
    Reason::Creating,
    Reason::CreateFailed,
    Reason::RecordIgnored,
    Reason::InUse,
    Reason::ReconcilePaused,
    Reason::Drifted,
];

/// Builds the three conditions for `summary` (and `Paused`, True, while the reason is
/// `ReconcilePaused`: a condition that leaves with the pause), keeping `lastTransitionTime` from `previous` when
/// a condition's status did not change. A message longer than [`MESSAGE_MAX`] bytes is cut (so
/// that the status fits the schema whatever an AWS error message says).
pub fn conditions(
    summary: &Summary,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    [
        (READY, Phase::Ready),
        (RECONCILING, Phase::Reconciling),
        (STALLED, Phase::Stalled),
    ]
    .into_iter()
    .map(|(type_, phase)| (type_, summary.phase == phase))
    .chain((summary.reason == Reason::ReconcilePaused.as_str()).then_some((PAUSED, true)))
    .map(|(type_, holds)| {
        let status = if holds { "True" } else { "False" };
        let (reason, message) = if holds || type_ == READY {
            (
                summary.reason.clone(),
                crate::runtime::truncate(&summary.message, MESSAGE_MAX),
            )
        } else {
            (summary.reason.clone(), String::new())
        };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time,
        }
    })
    .collect()
}

/// Longest `type` a condition may have (metav1.Condition).
pub const TYPE_MAX: usize = 316;
/// Longest `reason` a condition may have (metav1.Condition).
pub const REASON_MAX: usize = 1024;
/// Longest `message` a condition may have: 4096 characters, below metav1.Condition's 32768 so
/// that a resource stays small (issue 19: the largest MacieJob is under 256 KiB); messages are
/// cut to it when the conditions are built.
pub const MESSAGE_MAX: usize = 4096;
/// Most conditions a `status.conditions` list may hold: the operator writes 3 (Ready,
/// Reconciling, Stalled); the rest is room for more types.
pub const CONDITIONS_MAX: usize = 8;
/// What a `reason` must look like (metav1.Condition): CamelCase, letters first.
pub const REASON_PATTERN: &str = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";
/// What a `type` must look like (metav1.Condition), optionally prefixed by a DNS subdomain.
pub const TYPE_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// Schema of a `status.conditions` field: a list map keyed by `type` of metav1.Condition with
/// the limits the Kubernetes API declares for it (type at most 316 characters, reason 1..1024
/// CamelCase characters, status True/False/Unknown) and tighter ones of our own (at most
/// [`CONDITIONS_MAX`] conditions, message at most [`MESSAGE_MAX`] characters, lastTransitionTime
/// at most [`crate::api::TIME_MAX`]). Use it as
/// `#[schemars(schema_with = "crate::api::conditions::schema")]` on a `Vec<Condition>`.
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "maxItems": CONDITIONS_MAX,
        "items": {
            "type": "object",
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "lastTransitionTime is the last time the condition transitioned from one status to another.",
                    "type": "string",
                    "format": "date-time",
                    "maxLength": crate::api::TIME_MAX,
                },
                "message": {
                    "description": "message is a human readable message indicating details about the transition. This may be an empty string.",
                    "type": "string",
                    "maxLength": MESSAGE_MAX,
                },
                "observedGeneration": {
                    "description": "observedGeneration represents the .metadata.generation that the condition was set based upon.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                },
                "reason": {
                    "description": "reason contains a programmatic identifier indicating the reason for the condition's last transition, in CamelCase.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": REASON_MAX,
                    "pattern": REASON_PATTERN,
                },
                "status": {
                    "description": "status of the condition, one of True, False, Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                },
                "type": {
                    "description": "type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": TYPE_MAX,
                    "pattern": TYPE_PATTERN,
                },
            },
        },
    })
}

/// Whether `reason` matches [`REASON_PATTERN`] and fits [`REASON_MAX`] (what the schema checks).
pub fn valid_reason(reason: &str) -> bool {
    let b = reason.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':');
    !b.is_empty()
        && b.len() <= REASON_MAX
        && b[0].is_ascii_alphabetic()
        && b[1..].iter().all(inner)
        && (b.len() == 1 || b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
}

/// The condition of `type_` in `conds`, if any.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_condition_true_and_transition_times_kept() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let s = Summary::new(Phase::Reconciling, "Transitioning", "asked Macie to pause the job");
        let c0 = conditions(&s, Some(1), &[], t0);
        assert_eq!(c0.len(), 3);
        assert_eq!(find(&c0, RECONCILING).unwrap().status, "True");
        assert_eq!(find(&c0, READY).unwrap().status, "False");
        assert_eq!(find(&c0, STALLED).unwrap().status, "False");
        let s2 = Summary::new(Phase::Ready, "Converged", "job is USER_PAUSED");
        let c1 = conditions(&s2, Some(2), &c0, t1);
        assert_eq!(find(&c1, READY).unwrap().last_transition_time.0, t1);
        assert_eq!(
            find(&c1, STALLED).unwrap().last_transition_time.0,
            t0,
            "unchanged status keeps its time"
        );
        assert_eq!(find(&c1, READY).unwrap().observed_generation, Some(2));
    }

    #[test]
    fn a_pause_adds_the_paused_condition_and_leaving_it_drops_it() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let paused = Summary::new(Phase::Ready, "ReconcilePaused", "paused: the job is as declared");
        let c = conditions(&paused, Some(1), &[], t0);
        assert_eq!(c.len(), 4);
        let p = find(&c, PAUSED).expect("Paused");
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "ReconcilePaused"));
        assert_eq!(p.message, "paused: the job is as declared");
        assert_eq!(
            find(&c, READY).unwrap().reason,
            "ReconcilePaused",
            "the printer column's reason"
        );
        let resumed = conditions(&Summary::new(Phase::Ready, "Converged", "as declared"), Some(1), &c, t0);
        assert_eq!((resumed.len(), find(&resumed, PAUSED)), (3, None));
        assert!(c.len() <= CONDITIONS_MAX);
    }

    #[test]
    fn a_message_longer_than_the_schema_allows_is_cut() {
        let long = "x".repeat(MESSAGE_MAX + 1);
        let c = conditions(
            &Summary::new(Phase::Stalled, "MacieError", long),
            Some(1),
            &[],
            Timestamp::now(),
        );
        for type_ in [READY, STALLED] {
            let m = &find(&c, type_).unwrap().message;
            assert!(m.len() <= MESSAGE_MAX && m.ends_with('…'), "{type_}: {} bytes", m.len());
        }
    }

    #[test]
    fn reasons_are_checked_like_the_schema_pattern() {
        for ok in ["Converged", "A", "Account_Errors", "x:y,z"] {
            assert!(valid_reason(ok), "{ok}");
        }
        for bad in [
            "",
            "1Converged",
            "Not ready",
            "Trailing,",
            "Dash-ed",
            &"A".repeat(REASON_MAX + 1),
        ] {
            assert!(!valid_reason(bad), "{bad}");
        }
    }

    #[test]
    fn schema_carries_the_condition_limits() {
        let s = serde_json::to_value(schema(&mut schemars::SchemaGenerator::default())).unwrap();
        let p = &s["items"]["properties"];
        assert_eq!(p["type"]["maxLength"], 316);
        assert_eq!(p["reason"]["maxLength"], 1024);
        assert_eq!(p["reason"]["pattern"], REASON_PATTERN);
        assert_eq!(p["message"]["maxLength"], MESSAGE_MAX);
        assert_eq!(p["lastTransitionTime"]["maxLength"], crate::api::TIME_MAX);
        assert_eq!(s["maxItems"], CONDITIONS_MAX);
        assert_eq!(s["x-kubernetes-list-map-keys"][0], "type");
    }
}
