//! The `MacieAccount` custom resource (cluster-scoped): an AWS account the operator may act in,
//! how it gets credentials there, in which regions, and which namespaces may use it for what.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DiscoveryStatus;

/// An AWS account the operator may act in, and the rules tenants' MacieJobs and
/// MacieDiscoveries must follow there. Cluster admins create these; tenants reference one with
/// `spec.accountRef.name` (or use the operator's default account, `default` unless
/// `--default-account` says otherwise).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "macie.kubeops.dev",
    version = "v1alpha1",
    kind = "MacieAccount",
    doc = "MacieAccount is an AWS account the operator may act in (credentials, regions), and which namespaces may use it for what.",
    plural = "macieaccounts",
    shortname = "macct",
    category = "macie",
    status = "MacieAccountStatus",
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".status.accountId"}"#,
    printcolumn = r#"{"name":"Regions","type":"string","jsonPath":".spec.regions"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MacieAccountSpec {
    /// IAM role the operator assumes (sts:AssumeRole) to act in this account, e.g.
    /// `arn:aws:iam::111122223333:role/macie-operator`. The operator's own credentials (IRSA,
    /// EKS Pod Identity, environment) sign the AssumeRole call; the session credentials are
    /// cached and refreshed before they expire. Omit to use the operator's own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 20, max = 2048),
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$")
    )]
    pub role_arn: Option<String>,

    /// External ID the role's trust policy requires (sts:ExternalId), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224), regex(pattern = r"^[A-Za-z0-9+=,.@:/_-]+$"))]
    pub external_id: Option<String>,

    /// AWS Regions resources may use with this account, e.g. `[us-east-1, eu-west-1]`. A
    /// MacieJob or MacieDiscovery naming another region is refused (RegionNotAllowed) and no
    /// poller starts for it. At least one.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d+$")))]
    pub regions: Vec<String>,

    /// Which namespaces may reference this account, by their labels. `{}` selects every
    /// namespace. A resource in another namespace is refused with AccountNotFound (the
    /// message does not say whether the account exists).
    pub namespace_selector: LabelSelector,

    /// What MacieJobs may do in this account.
    #[serde(default)]
    pub jobs: JobRules,

    /// What MacieDiscoveries may change in this account.
    #[serde(default)]
    pub discovery: DiscoveryRules,
}

/// What MacieJobs may do with this account.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.bucketAccountIds) || !('*' in self.bucketAccountIds) || size(self.bucketAccountIds) == 1",
        "message": "spec.jobs.bucketAccountIds: \"*\" must be the only entry"
    }
]))]
pub struct JobRules {
    /// Job names MacieJobs may manage, as glob patterns (`*` matches any run of characters,
    /// `?` one character), e.g. `["nightly-*", "finance-*"]`. A MacieJob that names its job by
    /// jobId is checked against the job's name as Macie reports it. Default `["*"]`.
    #[serde(default = "all_names")]
    #[schemars(length(max = 100))]
    #[schemars(inner(length(min = 1, max = 500), regex(pattern = r"^[^\[\]{}\\]+$")))]
    pub names: Vec<String>,

    /// Whether MacieJobs may cancel jobs: `jobStatus: CANCELLED` and `deletionPolicy: Cancel`.
    /// A cancelled job can never run again. Default false.
    #[serde(default)]
    pub allow_cancel: bool,

    /// Whether MacieJobs may create jobs from `spec.definition`. Default false.
    #[serde(default)]
    pub allow_create: bool,

    /// Whether MacieJobs may pause jobs (`jobStatus: USER_PAUSED`). Default true. Note that a
    /// pause is not harmless: Macie cancels a one-time job that stays USER_PAUSED for 30 days
    /// (and the current run of a scheduled one), so a tenant that may pause can in effect
    /// cancel; set false where `allowCancel` is false for that reason.
    #[serde(default = "yes")]
    pub allow_pause: bool,

    /// The AWS accounts whose S3 buckets a job created from `spec.definition` may scan: 12-digit
    /// account IDs, or `["*"]` for any (the default). Every `bucketDefinitions[].accountId` must
    /// be listed; a `bucketCriteria` definition must select accounts explicitly, with a
    /// criterion `{simpleCriterion: {key: ACCOUNT_ID, comparator: EQ, values: [...]}}` in
    /// `bucketCriteria.includes.and` whose values are all listed (a criterion in `excludes`
    /// does not count). Jobs adopted by `jobId` or `jobName` are not checked: only creates.
    #[serde(default = "any_account")]
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(regex(pattern = r"^([0-9]{12}|\*)$")))]
    pub bucket_account_ids: Vec<String>,
}

fn all_names() -> Vec<String> {
    vec!["*".to_string()]
}

fn yes() -> bool {
    true
}

fn any_account() -> Vec<String> {
    vec!["*".to_string()]
}

impl Default for JobRules {
    fn default() -> Self {
        JobRules {
            names: all_names(),
            allow_cancel: false,
            allow_create: false,
            allow_pause: true,
            bucket_account_ids: any_account(),
        }
    }
}

/// What MacieDiscoveries may change with this account.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.accountIds) || !('*' in self.accountIds) || size(self.accountIds) == 1",
        "message": "spec.discovery.accountIds: \"*\" must be the only entry"
    }
]))]
pub struct DiscoveryRules {
    /// Member accounts (12-digit IDs) whose automated discovery status MacieDiscoveries may
    /// change, or `["*"]` for every account. Default `[]`: none.
    #[serde(default)]
    #[schemars(length(max = 5000))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(regex(pattern = r"^([0-9]{12}|\*)$")))]
    pub account_ids: Vec<String>,

    /// Statuses MacieDiscoveries may set: ENABLED, DISABLED or both. Default both.
    #[serde(default = "both_statuses")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_statuses: Vec<DiscoveryStatus>,
}

fn both_statuses() -> Vec<DiscoveryStatus> {
    vec![DiscoveryStatus::Enabled, DiscoveryStatus::Disabled]
}

impl Default for DiscoveryRules {
    fn default() -> Self {
        DiscoveryRules {
            account_ids: Vec::new(),
            allowed_statuses: both_statuses(),
        }
    }
}

/// What the operator found when it obtained credentials for the account.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacieAccountStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus). Ready: credentials were obtained and
    /// sts:GetCallerIdentity answered (reason Verified; reason InUse while it is being deleted
    /// and resources still use it, see resourcesInUse). Stalled with reason AccountNotReady:
    /// the role cannot be assumed (the message carries the AWS error code); resources using the
    /// account say so instead of calling Macie.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,

    /// The AWS account the credentials resolve to (sts:GetCallerIdentity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,

    /// The ARN the credentials resolve to (sts:GetCallerIdentity), e.g. an assumed-role ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,

    /// The AWS error code of the last failure to obtain or verify the credentials (e.g.
    /// AccessDenied); absent while they work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,

    /// How many MacieJobs and MacieDiscoveries use this account: those that name it in
    /// spec.accountRef, or have no accountRef while it is the operator's default account, in
    /// namespaces its namespaceSelector selects (resources being deleted included). While any
    /// does, the finalizer macie.kubeops.dev/in-use keeps the account: deleting it then waits
    /// (Ready reason InUse, and an Event) until they are gone, and they are still served
    /// meanwhile, so that a deletionPolicy Cancel MacieJob can cancel its job. Counted by an
    /// operator that watches every namespace; absent when it watches one namespace only (it
    /// cannot see the others: it then neither adds nor removes the finalizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub resources_in_use: Option<i64>,
}

/// `spec.accountRef` of MacieJob and MacieDiscovery: the MacieAccount to act in.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    /// Name of a MacieAccount (cluster-scoped) that selects this resource's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}
