//! `macie-operator export`: an account's classification jobs (and, with `--discovery`, its
//! member accounts' automated-discovery status) as manifests that adopt them as they are.
//! Applying the output changes nothing in Macie: each MacieJob names its job by id and declares
//! the status the job already satisfies. The output depends only on what Macie holds (sorted,
//! no timestamps), so a second export of an unchanged account is byte-identical.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::macie_discovery::MAX_ACCOUNTS;
use crate::api::macie_job::ObservedJob;
use crate::api::{DesiredJobStatus, DiscoveryStatus, GROUP};
use crate::macie::api::JobsQuery;
use crate::macie::{MacieClients, MacieError, Place};

/// What to export and how the manifests read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub region: String,
    pub namespace: String,
    /// `spec.accountRef` of every manifest (None: the operator's default account).
    pub account_ref: Option<String>,
    /// Every job, COMPLETE and CANCELLED included (default: only jobs that can still change).
    pub all: bool,
    /// Only jobs Macie shows in one of these statuses (empty: any).
    pub statuses: Vec<String>,
    /// Only jobs whose name starts with this.
    pub name_prefix: Option<String>,
    /// managementPolicy Observe on every manifest.
    pub observe: bool,
}

/// The status a MacieJob declares for a job Macie shows in `status`: the one the job already
/// satisfies. A job PAUSED by Macie is declared RUNNING (the resource then says PausedByMacie
/// and why); a status this operator does not know is not exported.
pub fn declared_status(status: &str) -> Option<DesiredJobStatus> {
    match status {
        "RUNNING" | "IDLE" | "COMPLETE" | "PAUSED" => Some(DesiredJobStatus::Running),
        "USER_PAUSED" => Some(DesiredJobStatus::UserPaused),
        "CANCELLED" => Some(DesiredJobStatus::Cancelled),
        _ => None,
    }
}

/// Longest resource name `resource_name` makes (a DNS label's length: it also fits a label
/// selector value).
pub const NAME_MAX: usize = 63;

/// The resource name of a job: its name in DNS-1123 form (lowercase letters, digits and `-`,
/// starting and ending with a letter or digit), then `-` and the job id's first 8 characters,
/// so that two jobs of one name (Macie allows it) get two names, and a job's name is the same
/// in every export.
pub fn resource_name(job_name: Option<&str>, job_id: &str) -> String {
    let mut base = String::new();
    for c in job_name.unwrap_or_default().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.is_empty() && !base.ends_with('-') {
            base.push('-');
        }
    }
    let id: String = (job_id.chars())
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    base.truncate(NAME_MAX - id.len() - 1);
    let base = base.trim_end_matches('-');
    match (base.is_empty(), id.is_empty()) {
        (true, true) => "job".to_string(),
        (true, false) => format!("job-{id}"),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}-{id}"),
    }
}

/// Whether `job` is among those `o` selects (the query already left out terminal jobs unless
/// `--all`).
pub fn selected(job: &ObservedJob, o: &Options) -> bool {
    let status_ok = o.statuses.is_empty() || o.statuses.iter().any(|s| s.eq_ignore_ascii_case(&job.job_status));
    let name_ok = o
        .name_prefix
        .as_deref()
        .is_none_or(|p| job.name.as_deref().is_some_and(|n| n.starts_with(p)));
    status_ok && name_ok
}

/// The MacieJob manifest that adopts `job` as it is (None: a status this operator does not
/// know).
pub fn job_manifest(job: &ObservedJob, o: &Options) -> Option<Value> {
    let status = declared_status(&job.job_status)?;
    let mut spec = json!({
        "jobId": job.job_id,
        "jobStatus": status.as_str(),
        "region": o.region,
    });
    if let Some(a) = &o.account_ref {
        spec["accountRef"] = json!({ "name": a });
    }
    if o.observe {
        spec["managementPolicy"] = json!("Observe");
    }
    Some(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "MacieJob",
        "metadata": {"name": resource_name(job.name.as_deref(), &job.job_id), "namespace": o.namespace},
        "spec": spec,
    }))
}

/// MacieDiscovery manifests declaring each member account's current status, at most
/// `MAX_ACCOUNTS` per resource (`automated-discovery-<region>`, then `-2`, `-3`, ...).
pub fn discovery_manifests(accounts: &BTreeMap<String, DiscoveryStatus>, o: &Options) -> Vec<Value> {
    let rows: Vec<Value> = (accounts.iter())
        .map(|(id, s)| json!({"accountId": id, "status": s.as_str()}))
        .collect();
    rows.chunks(MAX_ACCOUNTS)
        .enumerate()
        .map(|(i, chunk)| {
            let name = match i {
                0 => format!("automated-discovery-{}", o.region),
                n => format!("automated-discovery-{}-{}", o.region, n + 1),
            };
            let mut spec = json!({"accounts": chunk, "region": o.region});
            if let Some(a) = &o.account_ref {
                spec["accountRef"] = json!({ "name": a });
            }
            if o.observe {
                spec["managementPolicy"] = json!("Observe");
            }
            json!({
                "apiVersion": format!("{GROUP}/v1alpha1"),
                "kind": "MacieDiscovery",
                "metadata": {"name": name, "namespace": o.namespace},
                "spec": spec,
            })
        })
        .collect()
}

/// The manifests as one YAML stream, a document each.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).expect("JSON values serialize")))
        .collect()
}

/// What an export found: the manifests, and the jobs left out (id, status) for a status this
/// operator does not know.
#[derive(Debug, Default)]
pub struct Exported {
    pub manifests: Vec<Value>,
    pub skipped: Vec<(String, String)>,
}

/// Reads the place's jobs (and member accounts when `discovery`) and builds the manifests.
pub async fn export(
    clients: &MacieClients,
    place: &Place,
    o: &Options,
    discovery: bool,
) -> Result<Exported, MacieError> {
    let query = if o.all { JobsQuery::All } else { JobsQuery::NotTerminal };
    let (mut jobs, _) = crate::macie::jobs::list_all_jobs(clients.api(), place, query, 100, clients.metrics()).await?;
    jobs.retain(|j| selected(j, o));
    jobs.sort_by(|a, b| {
        resource_name(a.name.as_deref(), &a.job_id)
            .cmp(&resource_name(b.name.as_deref(), &b.job_id))
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    let mut out = Exported::default();
    for job in &jobs {
        match job_manifest(job, o) {
            Some(m) => out.manifests.push(m),
            None => out.skipped.push((job.job_id.clone(), job.job_status.clone())),
        }
    }
    if discovery {
        let accounts = clients.every_discovery_account(place).await?;
        out.manifests.extend(discovery_manifests(&accounts, o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MacieDiscovery, MacieJob};

    fn job(id: &str, name: Option<&str>, status: &str) -> ObservedJob {
        ObservedJob {
            job_id: id.into(),
            name: name.map(str::to_string),
            job_status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_is_declared_in_the_status_it_already_satisfies() {
        let rows = [
            ("RUNNING", Some("RUNNING")),
            ("IDLE", Some("RUNNING")),
            ("COMPLETE", Some("RUNNING")),
            ("PAUSED", Some("RUNNING")),
            ("USER_PAUSED", Some("USER_PAUSED")),
            ("CANCELLED", Some("CANCELLED")),
            ("SOMETHING_NEW", None),
        ];
        for (shown, declared) in rows {
            assert_eq!(
                declared_status(shown).map(DesiredJobStatus::as_str),
                declared,
                "{shown}"
            );
        }
    }

    #[test]
    fn names_are_dns_labels_unique_per_job_and_stable() {
        let id = "3ce7a5e1c0b54d7e9a1f2b3c4d5e6f70";
        let rows = [
            (Some("Nightly PII scan"), "nightly-pii-scan-3ce7a5e1"),
            (Some("finance_2026/Q1 -- buckets!"), "finance-2026-q1-buckets-3ce7a5e1"),
            (Some("--"), "job-3ce7a5e1"),
            (Some("ÉTÉ"), "t-3ce7a5e1"),
            (None, "job-3ce7a5e1"),
        ];
        for (name, want) in rows {
            assert_eq!(resource_name(name, id), want, "{name:?}");
        }
        let long = "x".repeat(500);
        let n = resource_name(Some(&long), id);
        assert_eq!(n.len(), NAME_MAX);
        assert!(n.ends_with("-3ce7a5e1"));
        assert_ne!(
            resource_name(Some("a"), id),
            resource_name(Some("a"), "0000000011112222")
        );
        let dns = |s: &str| {
            s.len() <= NAME_MAX
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        for name in ["", "-a-", "A__B", "  x  ", &"y-".repeat(100)] {
            assert!(dns(&resource_name(Some(name), id)), "{name:?}");
        }
    }

    #[test]
    fn the_selection_follows_status_and_prefix() {
        let o = Options {
            statuses: vec!["user_paused".into()],
            name_prefix: Some("fin".into()),
            ..Default::default()
        };
        assert!(selected(&job("1", Some("finance"), "USER_PAUSED"), &o));
        assert!(!selected(&job("1", Some("finance"), "RUNNING"), &o));
        assert!(!selected(&job("1", Some("hr"), "USER_PAUSED"), &o));
        assert!(!selected(&job("1", None, "USER_PAUSED"), &o));
        assert!(selected(&job("1", None, "RUNNING"), &Options::default()));
    }

    #[test]
    fn the_manifests_read_back_as_the_kinds_and_adopt_by_id() {
        let o = Options {
            region: "eu-west-1".into(),
            namespace: "security".into(),
            account_ref: Some("prod".into()),
            observe: true,
            ..Default::default()
        };
        let m = job_manifest(&job("3ce7a5e1c0b54d7e", Some("Nightly"), "IDLE"), &o).unwrap();
        let docs = to_yaml(&[m]);
        let back: Vec<MacieJob> = serde_saphyr::from_multiple(&docs).unwrap();
        let spec = &back[0].spec;
        assert_eq!(spec.job_id.as_deref(), Some("3ce7a5e1c0b54d7e"));
        assert_eq!(spec.job_status, Some(DesiredJobStatus::Running));
        assert_eq!(spec.region.as_deref(), Some("eu-west-1"));
        assert_eq!(spec.account_ref.as_ref().map(|a| a.name.as_str()), Some("prod"));
        assert_eq!(spec.management_policy, crate::api::ManagementPolicy::Observe);
        assert_eq!(back[0].metadata.namespace.as_deref(), Some("security"));
        assert!(job_manifest(&job("1", None, "SOMETHING_NEW"), &o).is_none());
        // Account ids stay strings; more than MAX_ACCOUNTS make a second resource.
        let accounts: BTreeMap<String, DiscoveryStatus> = (0..MAX_ACCOUNTS + 1)
            .map(|i| (format!("{i:012}"), DiscoveryStatus::Enabled))
            .collect();
        let docs = to_yaml(&discovery_manifests(&accounts, &o));
        let back: Vec<MacieDiscovery> = serde_saphyr::from_multiple(&docs).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].spec.accounts[0].account_id, "000000000000");
        assert_eq!(
            back[1].metadata.name.as_deref(),
            Some("automated-discovery-eu-west-1-2")
        );
        assert_eq!(
            back[0].spec.accounts.len() + back[1].spec.accounts.len(),
            MAX_ACCOUNTS + 1
        );
    }
}
