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
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.accountRef) == has(oldSelf.accountRef)",
        "message": "spec.accountRef cannot be added or removed after creation: create a new MacieDiscovery to use another account"
    }
]))]
pub struct MacieDiscoverySpec {
    /// Member accounts and the automated discovery status each should have. Each accountId may
    /// appear once. An account declared by two MacieDiscovery resources with different statuses
    /// is a Conflict on both and is not changed until they agree. At most 5,000 accounts.
    #[schemars(length(min = 1, max = 5000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["accountId"]))]
    pub accounts: Vec<DiscoveryAccount>,

    /// AWS Region of the Macie administrator account, e.g. `eu-west-1`. Defaults to the
    /// operator's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d+$"))]
    pub region: Option<String>,

    /// The MacieAccount (cluster-scoped) to act in: the Macie administrator account. Omitted:
    /// the operator's default account (the MacieAccount named `default` unless the operator
    /// runs with `--default-account`). Accounts the MacieAccount does not allow are refused one
    /// by one (NotPermitted); the others proceed. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.accountRef is immutable"}]))]
    pub account_ref: Option<crate::api::AccountRef>,

    /// Manage (default): the operator sends the accounts that differ from their declared
    /// status. Observe: it never writes to Macie; the accounts are observed, and the resource
    /// is Ready when every one is in its declared status, else Drifted (naming the accounts
    /// that differ). An Observe declaration takes no part in conflicts.
    #[serde(default)]
    pub management_policy: crate::api::ManagementPolicy,
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

/// Most accounts one MacieDiscovery may declare (`spec.accounts` maxItems). With every account
/// failing, the whole object (spec, status, managed fields) stays near 1 MiB, under etcd's
/// 1.5 MiB request limit: see the status shape below.
pub const MAX_ACCOUNTS: usize = 5000;

/// What the operator last saw and did for a MacieDiscovery. Sized for 5,000 accounts: one
/// short row per account, each error code explained once in errorCodes, and accounts an atomic
/// list (its managed fields name the list, not every row).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacieDiscoveryStatus {
    /// The metadata.generation this status was computed for: the one the region's engine has
    /// taken in (a newer spec is not reported on before the engine works with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus). Exactly one is True; its reason says why:
    /// Converged, Pending, AccountErrors, Conflict, AccessDenied, Throttled, MacieError.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,

    /// Region the accounts were managed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub region: Option<String>,

    /// One row per declared account, sorted by accountId: desired and observed status, and the
    /// error code when the account failed (explained in errorCodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000), extend("x-kubernetes-list-type" = "atomic"))]
    pub accounts: Vec<AccountStatus>,

    /// Each error code found in `accounts`, once: what it means, what to do, and how many
    /// accounts have it (at most 32 codes; Macie's per-account codes, the operator's own and the
    /// AWS error codes of failed calls are far fewer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub error_codes: Vec<ErrorCodeStatus>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,

    /// When the observation this status was computed from started (written only on change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::optional_time_schema")]
    pub last_sync_time: Option<Time>,
}

/// One declared account in `status.accounts`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    #[schemars(length(max = 12))]
    pub account_id: String,
    /// ENABLED or DISABLED, as declared.
    #[schemars(length(max = 8))]
    pub desired: String,
    /// ENABLED or DISABLED as last observed; absent when Macie did not list the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub observed: Option<String>,
    /// ACCOUNT_PAUSED, ACCOUNT_NOT_FOUND, Conflict, or the AWS error code of a failed call; see
    /// status.errorCodes for what it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub error_code: Option<String>,
}

/// An error code of `status.accounts`, explained once.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCodeStatus {
    /// The errorCode as it appears in status.accounts.
    #[schemars(length(max = 64))]
    pub code: String,
    /// What it means and what to do about it.
    #[schemars(length(max = 4096))]
    pub message: String,
    /// How many accounts of this resource have it.
    pub count: i64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn schema_bounds_the_accounts_and_keeps_status_rows_atomic() {
        let crd = serde_json::to_value(MacieDiscovery::crd()).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        assert_eq!(props["spec"]["properties"]["accounts"]["maxItems"], MAX_ACCOUNTS);
        let status = &props["status"]["properties"];
        assert_eq!(status["accounts"]["x-kubernetes-list-type"], "atomic");
        assert_eq!(status["accounts"]["maxItems"], MAX_ACCOUNTS);
        assert!(status["accounts"]["items"]["properties"].get("errorMessage").is_none());
        assert_eq!(status["errorCodes"]["x-kubernetes-list-type"], "atomic");
        let cond = &status["conditions"]["items"]["properties"];
        assert_eq!(cond["reason"]["maxLength"], 1024);
        assert_eq!(cond["message"]["maxLength"], crate::api::conditions::MESSAGE_MAX);
        assert_eq!(cond["type"]["maxLength"], 316);
    }
}
