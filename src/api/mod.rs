//! Custom resource types: one file per kind, plus the shared conditions.

pub mod conditions;
pub mod job_definition;
#[cfg(test)]
mod largest;
pub mod macie_account;
pub mod macie_discovery;
pub mod macie_job;

pub use macie_account::{AccountRef, MacieAccount, MacieAccountSpec, MacieAccountStatus};
pub use macie_discovery::{DiscoveryStatus, MacieDiscovery, MacieDiscoverySpec, MacieDiscoveryStatus};
pub use macie_job::{DeletionPolicy, DesiredJobStatus, MacieJob, MacieJobSpec, MacieJobStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every kind.
pub const GROUP: &str = "macie.kubeops.dev";

/// The annotation that pauses the operator's Macie writes for a MacieJob, a MacieDiscovery, or
/// every resource that uses a MacieAccount: only the value `"true"` pauses (any other value,
/// or none, does not). Observation goes on; nothing is sent to Macie while it is set.
pub const PAUSED_ANNOTATION: &str = "macie.kubeops.dev/paused";

/// Whether the operator acts on what a resource declares, or only reports on it.
#[derive(serde::Deserialize, serde::Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ManagementPolicy {
    /// Keep Macie as declared: the operator makes the calls that take it there.
    #[default]
    Manage,
    /// Never write to Macie: report whether it is as declared (Ready) or not (reason Drifted,
    /// saying what differs).
    Observe,
}

/// Longest timestamp a status field may hold. RFC 3339 with nanoseconds and an offset takes 35
/// characters; the `date-time` format alone is no length bound (Go's RFC 3339 parser takes any
/// number of fractional digits).
pub const TIME_MAX: usize = 64;

/// Schema of a `Time` field: an RFC 3339 date-time of at most [`TIME_MAX`] characters. Use it
/// as `#[schemars(schema_with = "crate::api::time_schema")]`.
pub fn time_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "date-time",
        "maxLength": TIME_MAX,
    })
}

/// Schema of an `Option<Time>` field: [`time_schema`], nullable.
pub fn optional_time_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = time_schema(generator);
    schema.insert("nullable".into(), true.into());
    schema
}

/// Every CRD the operator serves, in the order `macie-operator crd` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MacieJob::crd(), MacieDiscovery::crd(), MacieAccount::crd()]
}

/// The CRDs as one multi-document YAML stream (what `crds/` holds). A one-line description stays
/// on one line however long (no folded `>-` block), so that the YAML reads like the doc comment
/// it comes from; multi-line ones are literal `|-` blocks.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string_with_options(&crd, options).expect("CRDs serialize"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `crds/` holds reads back as exactly the CRDs the types declare: the YAML writer
    /// loses nothing (quoting, block scalars, `'True'`-like strings that must stay strings).
    #[test]
    fn crds_yaml_reads_back_as_the_crds() {
        let read: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&crds_yaml()).expect("crds_yaml parses");
        assert_eq!(read, crds());
    }
}
