//! The `MacieDiscovery` custom resource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares, per member account, whether Macie automated sensitive data discovery is ENABLED or
/// DISABLED.
///
/// The operator observes the declared accounts with ListAutomatedDiscoveryAccounts and sends
/// only the accounts that differ, coalesced with every other MacieDiscovery of the region into
/// BatchUpdateAutomatedDiscoveryAccounts calls. Deleting a MacieDiscovery leaves the accounts as
/// they are; removing an account from the list stops managing it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "macie.kubeops.dev",
    version = "v1alpha1",
    kind = "MacieDiscovery",
    doc = "MacieDiscovery keeps Macie automated sensitive data discovery ENABLED or DISABLED for a list of member accounts.",
    plural = "maciediscoveries",
    shortname = "mdisc",
    category = "macie",
    namespaced,
    status = "MacieDiscoveryStatus",
    printcolumn = r#"{"name":"Accounts","type":"integer","jsonPath":".status.counts.desired"}"#,
    printcolumn = r#"{"name":"Converged","type":"integer","jsonPath":".status.counts.converged"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MacieDiscoverySpec {
    /// Member accounts and the automated discovery status each should have. Each accountId may
    /// appear once. An account declared by two MacieDiscovery resources with different statuses
    /// is a Conflict on both and is not changed until they agree.
    #[schemars(length(min = 1, max = 5000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["accountId"]))]
    pub accounts: Vec<DiscoveryAccount>,

    /// AWS Region of the Macie administrator account, e.g. `eu-west-1`. Defaults to the
    /// operator's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d+$"))]
    pub region: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryAccount {
    /// The 12-digit AWS account ID of a Macie member account.
    #[schemars(length(min = 12, max = 12), regex(pattern = r"^[0-9]{12}$"))]
    pub account_id: String,
    /// ENABLED or DISABLED.
    pub status: DiscoveryStatus,
}

/// Automated sensitive data discovery status of an account.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryStatus {
    Enabled,
    Disabled,
}

impl DiscoveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryStatus::Enabled => "ENABLED",
            DiscoveryStatus::Disabled => "DISABLED",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacieDiscoveryStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus). Exactly one is True; its reason says why:
    /// Converged, Pending, AccountErrors, Conflict, AccessDenied, Throttled, MacieError.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,

    /// Region the accounts were managed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Per declared account: desired and observed status, and the last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["accountId"]))]
    pub accounts: Vec<AccountStatus>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,

    /// When the observation this status was computed from started (written only on change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    pub account_id: String,
    pub desired: String,
    /// ENABLED or DISABLED as last observed; absent when Macie did not list the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// ACCOUNT_PAUSED, ACCOUNT_NOT_FOUND, Conflict, or the AWS error code of a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the operator last changed this account (or saw it change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Accounts declared.
    pub desired: i64,
    /// Accounts observed in their desired status.
    pub converged: i64,
    /// Accounts with an error or a conflict.
    pub failed: i64,
}
