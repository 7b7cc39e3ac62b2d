//! Custom resource types: one file per kind, plus the shared conditions.

pub mod conditions;
pub mod job_definition;
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

/// Every CRD the operator serves, in the order `macie-operator crd` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MacieJob::crd(), MacieDiscovery::crd(), MacieAccount::crd()]
}

/// The CRDs as one multi-document YAML stream (what `crds/` holds).
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRDs serialize"));
    }
    out
}
