//! The `MacieJob` custom resource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares the status an existing Amazon Macie classification job should be kept in.
///
/// The operator observes every job of a region with one shared ListClassificationJobs sweep per
/// poll interval and calls UpdateClassificationJob only for a transition Macie allows.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "macie.kubeops.dev",
    version = "v1alpha1",
    kind = "MacieJob",
    doc = "MacieJob keeps an existing Amazon Macie classification job in the status its spec declares.",
    plural = "maciejobs",
    shortname = "mj",
    category = "macie",
    namespaced,
    status = "MacieJobStatus",
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".status.job.name"}"#,
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".spec.jobStatus"}"#,
    printcolumn = r#"{"name":"Actual","type":"string","jsonPath":".status.job.jobStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.job.userPausedDetails.jobExpiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.jobId) != has(self.jobName)",
        "message": "exactly one of spec.jobId or spec.jobName must be set"
    },
    {
        "rule": "has(self.jobId) == has(oldSelf.jobId) && has(self.jobName) == has(oldSelf.jobName) && has(self.region) == has(oldSelf.region)",
        "message": "spec.jobId, spec.jobName and spec.region cannot be added or removed after creation: create a new MacieJob to manage another job"
    },
    {
        "rule": "has(self.accountRef) == has(oldSelf.accountRef)",
        "message": "spec.accountRef cannot be added or removed after creation: create a new MacieJob to use another account"
    },
    {
        "rule": "!has(self.definition) || (has(self.jobName) && !has(self.jobId))",
        "message": "spec.definition requires spec.jobName (the name of the job to create) and cannot be used with spec.jobId"
    },
    {
        "rule": "has(self.definition) == has(oldSelf.definition)",
        "message": "spec.definition cannot be added or removed after creation: Macie cannot change a job's settings; create a new MacieJob"
    },
    {
        "rule": "has(self.jobStatus) || (has(self.managementPolicy) && self.managementPolicy == 'Observe')",
        "message": "spec.jobStatus is required unless spec.managementPolicy is Observe"
    },
    {
        "rule": "!(has(self.managementPolicy) && self.managementPolicy == 'Observe' && has(self.deletionPolicy) && self.deletionPolicy == 'Cancel')",
        "message": "deletionPolicy Cancel needs managementPolicy Manage: Observe never writes to Macie"
    }
]))]
pub struct MacieJobSpec {
    /// ID of the Macie classification job to manage (the `jobId` Macie returned when the job
    /// was created, e.g. `3ce7a5e1c0b54d7e9a1f2b3c4d5e6f70`). Set exactly one of jobId and
    /// jobName. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[0-9A-Za-z-]+$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.jobId is immutable"}]))]
    pub job_id: Option<String>,

    /// Exact name of the Macie classification job to manage. The name must match exactly one
    /// job in the region; if several jobs share it, the resource reports AmbiguousName and
    /// nothing is changed (use jobId instead). Set exactly one of jobId and jobName. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 500))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.jobName is immutable"}]))]
    pub job_name: Option<String>,

    /// Status to keep the job in. RUNNING: run (or resume) the job; a scheduled job between
    /// runs (IDLE) and a finished one-time job (COMPLETE) also count as RUNNING. USER_PAUSED:
    /// pause it (Macie cancels a paused job after 30 days; the operator warns before). CANCELLED:
    /// cancel it for good; a cancelled job can never run again. Required unless
    /// managementPolicy is Observe (then, when set, a job in another status is Drifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_status: Option<DesiredJobStatus>,

    /// Manage (default): the operator keeps the job in jobStatus (creating it from definition
    /// first). Observe: it never writes to Macie (no update, no create, no cancel): it reports
    /// the job, Ready when it is as declared and Drifted (saying what differs) when not; with
    /// definition, it finds the job of jobName and names each setting that differs. An Observe
    /// declaration takes no part in conflicts. deletionPolicy Cancel needs Manage.
    #[serde(default)]
    pub management_policy: crate::api::ManagementPolicy,

    /// AWS Region of the job, e.g. `eu-west-1`. Defaults to the operator's region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d+$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.region is immutable"}]))]
    pub region: Option<String>,

    /// The MacieAccount (cluster-scoped) whose AWS account the job is in. Omitted: the
    /// operator's default account (the MacieAccount named `default` unless the operator runs
    /// with `--default-account`). The account must select this namespace and allow what this
    /// resource asks for; otherwise the resource is refused (Stalled) without any Macie call.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.accountRef is immutable"}]))]
    pub account_ref: Option<crate::api::AccountRef>,

    /// A classification job to create when none with jobName exists: the operator calls
    /// CreateClassificationJob once (a client token derived from this resource's UID makes a
    /// retried call create nothing new) and then keeps the job in jobStatus. Requires jobName;
    /// a job of that name this resource did not create is never adopted (NameInUse). The
    /// MacieAccount must allow it (spec.jobs.allowCreate). Immutable: Macie cannot change a
    /// job's settings; to change a job, create a new MacieJob and delete this one with
    /// deletionPolicy Cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<crate::api::job_definition::JobDefinition>,

    /// What happens to the Macie job when this resource is deleted. Orphan (default): the job
    /// is left as it is. Cancel: the operator cancels the job first (a finalizer holds the
    /// deletion until the job is CANCELLED, COMPLETE or gone).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The statuses a MacieJob can ask for (the ones UpdateClassificationJob can set).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredJobStatus {
    Running,
    UserPaused,
    Cancelled,
}

impl DesiredJobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredJobStatus::Running => "RUNNING",
            DesiredJobStatus::UserPaused => "USER_PAUSED",
            DesiredJobStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave the Macie job as it is.
    #[default]
    Orphan,
    /// Cancel the Macie job before the resource goes away.
    Cancel,
}

/// What the operator last observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacieJobStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus). Exactly one is True; its reason says why:
    /// Converged, Transitioning, TerminalState, JobNotFound, AmbiguousName, Conflict,
    /// PausedByMacie, AccessDenied, Throttled, UpdateRejected, ExpiringSoon, WaitingForSweep,
    /// MacieError.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,

    /// Region the job was looked up in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub region: Option<String>,

    /// The Macie job as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ObservedJob>,

    /// When the ListClassificationJobs sweep this status was computed from started. Status is
    /// written only when something changes, so this is the time of the last change the
    /// operator saw, not of the latest sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub last_sync_time: Option<Time>,

    /// The last UpdateClassificationJob call the operator made for this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<RequestedTransition>,

    /// spec.definition: the CreateClassificationJob call for this resource, written before
    /// the call (so that it is never repeated) and completed with the job it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation: Option<CreationRecord>,
}

/// A Macie job as ListClassificationJobs reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedJob {
    #[schemars(length(max = 64))]
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub name: Option<String>,
    /// ONE_TIME or SCHEDULED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub job_type: Option<String>,
    /// RUNNING, PAUSED, CANCELLED, COMPLETE, IDLE or USER_PAUSED (or a value newer than this
    /// operator, shown as Macie sent it).
    #[schemars(length(max = 64))]
    pub job_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub created_at: Option<Time>,
    /// NONE, or ERROR if the last run had errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_run_error_status: Option<String>,
    /// Set while the job is USER_PAUSED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_paused_details: Option<UserPausedDetails>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPausedDetails {
    /// When the job was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub job_paused_at: Option<Time>,
    /// When Macie will cancel the paused job (or, for a scheduled job, its paused run): 30 days
    /// after the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub job_expires_at: Option<Time>,
    /// The AWS Health event Macie sent about the coming expiry (about 7 days before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub job_imminent_expiration_health_event_arn: Option<String>,
}

/// An UpdateClassificationJob call and what came of it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedTransition {
    /// The job the call was for.
    #[schemars(length(max = 64))]
    pub job_id: String,
    /// The job status observed when the call was made.
    #[schemars(length(max = 64))]
    pub from: String,
    /// The status asked for.
    #[schemars(length(max = 64))]
    pub to: String,
    #[schemars(schema_with = "crate::api::time_schema")]
    pub requested_at: Time,
    /// Pending (waiting for a sweep to show the result; also after an error that leaves the
    /// result unknown), Succeeded, Failed (Macie refused the call, or nothing showed within the
    /// step timeout), or Superseded (the job changed some other way).
    pub outcome: TransitionOutcome,
    /// AWS error code when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TransitionOutcome {
    Pending,
    Succeeded,
    Failed,
    Superseded,
}

/// The create of a MacieJob with spec.definition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreationRecord {
    /// The idempotency token sent (derived from the resource's UID): a job with this token is
    /// this resource's job.
    #[schemars(length(max = 64))]
    pub client_token: String,
    /// When the call was made (whole seconds, rounded up).
    #[schemars(schema_with = "crate::api::time_schema")]
    pub requested_at: Time,
    /// Pending (sent; its result not known yet), Succeeded, NotProcessed (throttled: sent again
    /// later) or Failed (refused: sent again at retryAt).
    pub outcome: CreationOutcome,
    /// The job created (the resource follows it from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub job_id: Option<String>,
    /// When a create that was not processed or was refused is sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub retry_at: Option<Time>,
    /// The AWS error code of a failed create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CreationOutcome {
    Pending,
    Succeeded,
    NotProcessed,
    Failed,
}
