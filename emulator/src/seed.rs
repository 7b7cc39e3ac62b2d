//! The `--seed` file: jobs and accounts the emulator starts with (YAML or JSON).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::{DiscoveryStatus, JobStatus, JobType, LastRunErrorCode, S3BucketDefinitionForJob, Timestamp};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// When false, every API call answers AccessDeniedException ("Macie is not enabled").
    #[serde(default = "yes")]
    pub macie_enabled: bool,
    /// Automated sensitive data discovery configuration of the administrator account.
    #[serde(default)]
    pub automated_discovery: Option<SeedDiscoveryConfig>,
    #[serde(default)]
    pub jobs: Vec<SeedJob>,
    #[serde(default)]
    pub accounts: Vec<SeedAccount>,
    /// IAM roles STS AssumeRole accepts.
    #[serde(default)]
    pub roles: Vec<SeedRole>,
    /// CreateClassificationJob calls admitted per second per AWS account and region (real
    /// time, no burst); absent: unlimited.
    #[serde(default)]
    pub create_quota_per_second: Option<f64>,
}

/// A role AssumeRole accepts; its AWS account is the one in its ARN.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRole {
    /// `arn:aws:iam::<12-digit account>:role/<name>` (a path before the name is allowed).
    pub arn: String,
    /// When set, AssumeRole must pass exactly this `ExternalId`.
    #[serde(default)]
    pub external_id: Option<String>,
}

impl SeedRole {
    /// The role's AWS account (from its ARN; valid once the seed is validated).
    pub fn account(&self) -> &str {
        role_arn_parts(&self.arn).map(|(a, _)| a).unwrap_or_default()
    }

    /// The role's name: the last segment of its ARN.
    pub fn name(&self) -> &str {
        role_arn_parts(&self.arn).map(|(_, n)| n).unwrap_or_default()
    }
}

/// Splits `arn:aws:iam::<account>:role/<path/><name>` into the account and the role name.
pub fn role_arn_parts(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix("iam::")?;
    let (account, resource) = rest.split_once(':')?;
    let path = resource.strip_prefix("role/")?;
    let name = path.rsplit('/').next()?;
    let ok = !partition.is_empty()
        && is_account_id(account)
        && !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    ok.then_some((account, name))
}

fn yes() -> bool {
    true
}

impl Default for Seed {
    /// Macie enabled, no jobs, no accounts.
    fn default() -> Seed {
        Seed {
            macie_enabled: true,
            automated_discovery: None,
            jobs: Vec::new(),
            accounts: Vec::new(),
            roles: Vec::new(),
            create_quota_per_second: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedDiscoveryConfig {
    pub status: DiscoveryStatus,
    #[serde(default)]
    pub auto_enable_organization_members: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedJob {
    /// 32 lowercase hex characters, as Macie makes them; generated when omitted.
    #[serde(default)]
    pub job_id: Option<String>,
    pub name: String,
    pub job_type: JobType,
    pub job_status: JobStatus,
    /// AWS account the job lives in; the emulator's `--account-id` when omitted.
    #[serde(default)]
    pub aws_account_id: Option<String>,
    /// Region the job lives in; the emulator's default region when omitted.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// For USER_PAUSED: when the job was paused (default: the emulator's start).
    #[serde(default)]
    pub paused_at: Option<Timestamp>,
    /// For USER_PAUSED: the status the job was paused from, RUNNING (default) or IDLE
    /// (scheduled jobs only). Resuming returns a job paused while IDLE to IDLE.
    #[serde(default)]
    pub paused_while: Option<JobStatus>,
    #[serde(default)]
    pub last_run_error_status: LastRunErrorCode,
    #[serde(default)]
    pub bucket_definitions: Option<Vec<S3BucketDefinitionForJob>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedAccount {
    pub account_id: String,
    pub status: DiscoveryStatus,
    /// Macie is suspended for this account: BatchUpdateAutomatedDiscoveryAccounts answers
    /// ACCOUNT_PAUSED for it.
    #[serde(default)]
    pub paused: bool,
    /// AWS account (the Macie administrator) whose member this is; `--account-id` when omitted.
    #[serde(default)]
    pub aws_account_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `externalIdType` in the STS model: 2-1224 of `[\w+=,.@:/-]`.
pub fn is_external_id(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b))
}

pub fn is_job_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Seed {
    pub fn load(path: &Path) -> Result<Seed, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Seed::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses YAML (JSON is YAML too) and checks what the types cannot: every error names
    /// the field, e.g. `jobs[2].jobStatus: ...`.
    pub fn parse(text: &str) -> Result<Seed, String> {
        let seed: Seed = from_yaml(text)?;
        seed.validate()?;
        Ok(seed)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        for (i, job) in self.jobs.iter().enumerate() {
            job.validate().map_err(|e| format!("jobs[{i}].{e}"))?;
            if let Some(id) = &job.job_id
                && !ids.insert(id.clone())
            {
                return Err(format!("jobs[{i}].jobId: duplicate job id {id:?}"));
            }
        }
        let mut accounts = BTreeSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !is_account_id(&a.account_id) {
                return Err(format!(
                    "accounts[{i}].accountId: {:?} is not a 12-digit AWS account id",
                    a.account_id
                ));
            }
            if let Some(owner) = &a.aws_account_id
                && !is_account_id(owner)
            {
                return Err(format!(
                    "accounts[{i}].awsAccountId: {owner:?} is not a 12-digit AWS account id"
                ));
            }
            let key = (a.aws_account_id.clone(), a.region.clone(), a.account_id.clone());
            if !accounts.insert(key) {
                return Err(format!("accounts[{i}].accountId: duplicate account {:?}", a.account_id));
            }
        }
        if let Some(r) = self.create_quota_per_second
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(format!("createQuotaPerSecond: {r} must be a non-negative number"));
        }
        let mut roles = BTreeSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            if role_arn_parts(&r.arn).is_none() {
                return Err(format!(
                    "roles[{i}].arn: {:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
                    r.arn
                ));
            }
            if !roles.insert(r.arn.as_str()) {
                return Err(format!("roles[{i}].arn: duplicate role {:?}", r.arn));
            }
            if let Some(x) = &r.external_id
                && !is_external_id(x)
            {
                return Err(format!(
                    "roles[{i}].externalId: must be 2-1224 letters, digits or any of _+=,.@:/-"
                ));
            }
        }
        Ok(())
    }
}

impl SeedJob {
    fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.job_id
            && !is_job_id(id)
        {
            return Err(format!("jobId: {id:?} must be 1-64 letters, digits or '-'"));
        }
        if let Some(a) = &self.aws_account_id
            && !is_account_id(a)
        {
            return Err(format!("awsAccountId: {a:?} is not a 12-digit AWS account id"));
        }
        if self.name.is_empty() {
            return Err("name: must not be empty".into());
        }
        match (self.job_type, self.job_status) {
            (JobType::Scheduled, JobStatus::Complete) => {
                return Err(
                    "jobStatus: COMPLETE is only for ONE_TIME jobs (a scheduled job goes IDLE between runs)".into(),
                );
            }
            (JobType::OneTime, JobStatus::Idle) => {
                return Err("jobStatus: IDLE is only for SCHEDULED jobs".into());
            }
            _ => {}
        }
        if self.job_status != JobStatus::UserPaused && (self.paused_at.is_some() || self.paused_while.is_some()) {
            return Err("pausedAt: pausedAt and pausedWhile apply only to USER_PAUSED jobs".into());
        }
        match (self.job_type, self.paused_while) {
            (_, None | Some(JobStatus::Running)) => {}
            (JobType::Scheduled, Some(JobStatus::Idle)) => {}
            (JobType::OneTime, Some(JobStatus::Idle)) => {
                return Err("pausedWhile: IDLE is only for SCHEDULED jobs".into());
            }
            (_, Some(other)) => {
                return Err(format!("pausedWhile: must be RUNNING or IDLE, not {other}"));
            }
        }
        if let Some(defs) = &self.bucket_definitions {
            for (j, d) in defs.iter().enumerate() {
                if !is_account_id(&d.account_id) {
                    return Err(format!(
                        "bucketDefinitions[{j}].accountId: {:?} is not a 12-digit AWS account id",
                        d.account_id
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Reads YAML (JSON is YAML too) into `T`. An error names the field it is about and where it
/// is, on one line: `jobs[2].jobStatus: unknown variant ... at line 3, column 40`.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut path = None;
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| match path {
        Some(p) if p != "." => format!("{p}: {e}"),
        _ => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_seeds_name_the_bad_field() {
        let cases = [
            (
                "jobs: [{name: a, jobType: ONE_TIME, jobStatus: BOGUS}]",
                "jobs[0].jobStatus",
            ),
            (
                "jobs: [{name: a, jobType: SCHEDULED, jobStatus: COMPLETE}]",
                "jobs[0].jobStatus",
            ),
            (
                "jobs: [{name: a, jobType: ONE_TIME, jobStatus: RUNNING}, {name: b, jobType: ONE_TIME, jobStatus: IDLE}]",
                "jobs[1].jobStatus",
            ),
            (
                "jobs: [{name: a, jobType: ONE_TIME, jobStatus: RUNNING, colour: red}]",
                "colour",
            ),
            (
                "accounts: [{accountId: '12345', status: ENABLED}]",
                "accounts[0].accountId",
            ),
            (
                "accounts: [{accountId: '111122223333', status: ENABLED}, {accountId: '111122223333', status: DISABLED}]",
                "accounts[1].accountId",
            ),
            (
                "accounts: [{accountId: '111122223333', status: ON}]",
                "accounts[0].status",
            ),
            (
                "jobs: [{jobId: x1, name: a, jobType: ONE_TIME, jobStatus: RUNNING}, {jobId: x1, name: b, jobType: ONE_TIME, jobStatus: RUNNING}]",
                "jobs[1].jobId",
            ),
            (
                "jobs: [{name: a, jobType: ONE_TIME, jobStatus: USER_PAUSED, pausedWhile: IDLE}]",
                "jobs[0].pausedWhile",
            ),
            (
                "jobs: [{name: a, jobType: ONE_TIME, jobStatus: RUNNING, awsAccountId: '42'}]",
                "jobs[0].awsAccountId",
            ),
            (
                "accounts: [{accountId: '111122223333', status: ENABLED, awsAccountId: x}]",
                "accounts[0].awsAccountId",
            ),
            ("roles: [{arn: 'arn:aws:iam::1234:role/r'}]", "roles[0].arn"),
            ("roles: [{arn: 'arn:aws:iam::111122223333:user/u'}]", "roles[0].arn"),
            (
                "roles: [{arn: 'arn:aws:iam::111122223333:role/r'}, {arn: 'arn:aws:iam::111122223333:role/r'}]",
                "roles[1].arn",
            ),
            (
                "roles: [{arn: 'arn:aws:iam::111122223333:role/r', externalId: 'a b'}]",
                "roles[0].externalId",
            ),
            (
                "roles: [{arn: 'arn:aws:iam::111122223333:role/r', colour: red}]",
                "colour",
            ),
            ("createQuotaPerSecond: -1", "createQuotaPerSecond"),
            ("createQuotaPerSecond: fast", "createQuotaPerSecond"),
        ];
        for (text, field) in cases {
            let err = Seed::parse(text).expect_err(text);
            assert!(err.contains(field), "{text}: error {err:?} does not name {field}");
        }
    }

    #[test]
    fn good_seed_parses() {
        let seed = Seed::parse(
            "macieEnabled: true\njobs:\n- {jobId: abc, name: a, jobType: SCHEDULED, jobStatus: USER_PAUSED, pausedWhile: IDLE}\naccounts:\n- {accountId: '111122223333', status: DISABLED, paused: true}\n",
        )
        .unwrap();
        assert_eq!(seed.jobs.len(), 1);
        assert!(seed.accounts[0].paused);
        let seed = Seed::parse(
            "roles:\n- {arn: 'arn:aws:iam::111122223333:role/team/macie-operator', externalId: 'ext-1'}\njobs:\n- {name: a, jobType: ONE_TIME, jobStatus: RUNNING, awsAccountId: '111122223333'}\n",
        )
        .unwrap();
        assert_eq!(seed.roles[0].account(), "111122223333");
        assert_eq!(seed.roles[0].name(), "macie-operator");
        assert_eq!(seed.jobs[0].aws_account_id.as_deref(), Some("111122223333"));
    }
}
