//! Whether a tenant's resource may act with a MacieAccount: pure decisions, decided before any
//! other step (deletion included), one test per rule. A refusal never reaches AWS; its message
//! names the rule that refused and never another namespace's resources or the account's role.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::conditions::{self, Reason};
use crate::api::job_definition::{BucketCriterionKey, Comparator, JobDefinition};
use crate::api::macie_account::{DiscoveryRules, JobRules};
use crate::api::{AccountRef, DeletionPolicy, DesiredJobStatus, DiscoveryStatus, MacieAccount};

/// Why a resource may not act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The account does not exist or does not select the namespace (the message does not say
    /// which, so that a tenant cannot probe other tenants' accounts).
    AccountNotFound { account: String, by_default: bool },
    /// The account's credentials cannot be obtained (`code`), or are not verified yet (None).
    AccountNotReady { account: String, code: Option<String> },
    /// The account does not list the region.
    RegionNotAllowed { account: String, region: String },
    /// A rule of the account forbids what the resource asks for.
    NotPermitted { account: String, rule: Rule },
}

/// The rule of a MacieAccount that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `spec.jobs.names` matches no pattern for the job name the resource declares.
    JobName(String),
    /// `spec.jobs.names` matches no pattern for the name Macie reports for this job id (the
    /// message names the id only: the job may be another team's).
    NameOfJob(String),
    /// `spec.jobs.allowPause` is false and the resource asks for USER_PAUSED.
    Pause,
    /// `spec.jobs.bucketAccountIds` does not include this account, whose buckets the
    /// definition's `bucketDefinitions` name.
    BucketAccount(String),
    /// `spec.jobs.bucketAccountIds` is not `*` and the definition's `bucketCriteria` has no
    /// `ACCOUNT_ID EQ` criterion in `includes.and` (it could select any account's buckets).
    BucketCriteriaUnscoped,
    /// `spec.jobs.bucketAccountIds` does not include this account, which the definition's
    /// `bucketCriteria` `ACCOUNT_ID EQ` criterion names.
    BucketCriteriaAccount(String),
    /// `spec.jobs.allowCancel` is false and the resource asks for CANCELLED.
    Cancel,
    /// `spec.jobs.allowCancel` is false and the resource has `deletionPolicy: Cancel`.
    DeletionPolicyCancel,
    /// `spec.jobs.allowCreate` is false and the resource has a `spec.definition`.
    Create,
    /// `spec.discovery.accountIds` does not include the member account.
    DiscoveryAccount(String),
    /// `spec.discovery.allowedStatuses` does not include the status.
    DiscoveryStatus(DiscoveryStatus),
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::AccountNotFound { .. } => Reason::AccountNotFound,
            Refusal::AccountNotReady { .. } => Reason::AccountNotReady,
            Refusal::RegionNotAllowed { .. } => Reason::RegionNotAllowed,
            Refusal::NotPermitted { .. } => Reason::NotPermitted,
        }
    }

    /// What the tenant reads: the rule and how to get past it.
    pub fn message(&self) -> String {
        match self {
            Refusal::AccountNotFound { account, by_default } => {
                let how = if *by_default {
                    format!(
                        "the resource has no spec.accountRef, so the operator's default account {account:?} is used: \
                         ask a cluster admin to create MacieAccount {account:?} selecting this namespace, or set spec.accountRef"
                    )
                } else {
                    "ask a cluster admin for a MacieAccount that selects this namespace".to_string()
                };
                format!("MacieAccount {account:?} does not exist or does not allow this namespace; {how}")
            }
            Refusal::AccountNotReady {
                account,
                code: Some(code),
            } => format!(
                "MacieAccount {account:?} has no working credentials ({code}); nothing is sent to Macie until it is Ready"
            ),
            Refusal::AccountNotReady { account, code: None } => {
                format!("MacieAccount {account:?} is not verified yet; nothing is sent to Macie until it is Ready")
            }
            Refusal::RegionNotAllowed { account, region } => {
                format!("region {region:?} is not in spec.regions of MacieAccount {account:?}")
            }
            Refusal::NotPermitted { account, rule } => match rule {
                Rule::JobName(name) => {
                    format!("spec.jobs.names of MacieAccount {account:?} does not allow the job name {name:?}")
                }
                Rule::NameOfJob(id) => {
                    format!("spec.jobs.names of MacieAccount {account:?} does not allow the name of job {id}")
                }
                Rule::Pause => format!(
                    "spec.jobs.allowPause of MacieAccount {account:?} is false: jobStatus USER_PAUSED is not allowed"
                ),
                Rule::BucketAccount(id) => format!(
                    "spec.jobs.bucketAccountIds of MacieAccount {account:?} does not include {id}: \
                     spec.definition.s3JobDefinition.bucketDefinitions may not name its buckets"
                ),
                Rule::BucketCriteriaUnscoped => format!(
                    "spec.jobs.bucketAccountIds of MacieAccount {account:?} limits the accounts a job may scan: \
                     spec.definition.s3JobDefinition.bucketCriteria.includes.and needs a simpleCriterion \
                     {{key: ACCOUNT_ID, comparator: EQ}} whose values are all allowed accounts"
                ),
                Rule::BucketCriteriaAccount(id) => format!(
                    "spec.jobs.bucketAccountIds of MacieAccount {account:?} does not include {id}, which the \
                     ACCOUNT_ID EQ criterion of spec.definition.s3JobDefinition.bucketCriteria names"
                ),
                Rule::Cancel => format!(
                    "spec.jobs.allowCancel of MacieAccount {account:?} is false: jobStatus CANCELLED is not allowed"
                ),
                Rule::DeletionPolicyCancel => format!(
                    "spec.jobs.allowCancel of MacieAccount {account:?} is false: deletionPolicy Cancel is not allowed"
                ),
                Rule::Create => format!(
                    "spec.jobs.allowCreate of MacieAccount {account:?} is false: spec.definition (creating a job) is not allowed"
                ),
                Rule::DiscoveryAccount(id) => {
                    format!("spec.discovery.accountIds of MacieAccount {account:?} does not include {id}")
                }
                Rule::DiscoveryStatus(s) => format!(
                    "spec.discovery.allowedStatuses of MacieAccount {account:?} does not include {}",
                    s.as_str()
                ),
            },
        }
    }
}

/// The MacieAccount a resource uses: its `spec.accountRef`, else the operator's default.
pub fn account_name<'a>(account_ref: Option<&'a AccountRef>, default: &'a str) -> &'a str {
    account_ref.map_or(default, |r| r.name.as_str())
}

/// Whether `selector` selects an object with `labels` (matchLabels and matchExpressions, as
/// Kubernetes evaluates them; an empty selector selects everything). An operator it does not
/// know selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether `name` matches the glob `pattern`: `*` any run of characters (none included), `?`
/// exactly one character, anything else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with backtracking to the last `*` (linear in practice).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether an account's credentials work, as its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not verified for the current generation yet.
    Verifying,
    /// Credentials cannot be obtained: the AWS error code.
    Failed(String),
}

/// The readiness of `account`: Ready only when its status was computed for the current
/// generation and says Ready.
pub fn readiness(account: &MacieAccount) -> Readiness {
    let Some(status) = &account.status else {
        return Readiness::Verifying;
    };
    if status.observed_generation != account.metadata.generation {
        return Readiness::Verifying;
    }
    match conditions::find(&status.conditions, conditions::READY) {
        Some(c) if c.status == "True" => Readiness::Ready,
        Some(c) if c.reason == Reason::AccountNotReady.as_str() => {
            Readiness::Failed(status.error_code.clone().unwrap_or_else(|| "Unknown".into()))
        }
        _ => Readiness::Verifying,
    }
}

/// Why a resource's Macie writes are held back: the pause annotation
/// ([`PAUSED_ANNOTATION`](crate::api::PAUSED_ANNOTATION)) on the resource itself, or on the
/// MacieAccount it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    Resource,
    Account,
}

impl Pause {
    /// What the status says (the account named is the resource's own, which its spec names).
    pub fn message(self, account: &str) -> String {
        let on = match self {
            Pause::Resource => "this resource".to_string(),
            Pause::Account => format!("MacieAccount {account}"),
        };
        format!(
            "paused by the annotation {}=\"true\" on {on}: nothing is sent to Macie until it is removed",
            crate::api::PAUSED_ANNOTATION
        )
    }
}

/// Whether an object's metadata carries the pause annotation (value `"true"` only).
pub fn has_pause(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether a resource (its metadata) using `account` is paused, and by which annotation (the
/// resource's own first).
pub fn paused(
    resource: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    account: &MacieAccount,
) -> Option<Pause> {
    if has_pause(resource) {
        Some(Pause::Resource)
    } else if has_pause(&account.metadata) {
        Some(Pause::Account)
    } else {
        None
    }
}

/// Whether a resource in a namespace with `namespace_labels` (None: the namespace is not known)
/// may use `account` (None: no such MacieAccount) in `region`. Checked in this order: the
/// account exists and selects the namespace, allows the region, has working credentials.
pub fn admit<'a>(
    name: &str,
    by_default: bool,
    account: Option<&'a MacieAccount>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    region: &str,
) -> Result<&'a MacieAccount, Refusal> {
    let selected = account.filter(|a| namespace_labels.is_some_and(|l| selects(&a.spec.namespace_selector, l)));
    let Some(account) = selected else {
        return Err(Refusal::AccountNotFound {
            account: name.to_string(),
            by_default,
        });
    };
    if !account.spec.regions.iter().any(|r| r == region) {
        return Err(Refusal::RegionNotAllowed {
            account: name.to_string(),
            region: region.to_string(),
        });
    }
    match readiness(account) {
        Readiness::Ready => Ok(account),
        Readiness::Verifying => Err(Refusal::AccountNotReady {
            account: name.to_string(),
            code: None,
        }),
        Readiness::Failed(code) => Err(Refusal::AccountNotReady {
            account: name.to_string(),
            code: Some(code),
        }),
    }
}

/// The job name a MacieJob's rules are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobName<'a> {
    /// The name the resource declares (spec.jobName): a refusal may repeat it.
    Declared(&'a str),
    /// The name Macie reports for the job the resource acts on by id (spec.jobId, or the job
    /// it created): a refusal names the id only, since the job may be another team's.
    OfJob { job_id: &'a str, name: &'a str },
}

/// What a MacieJob asks of an account's job rules.
#[derive(Debug, Clone, Copy)]
pub struct JobAsk<'a> {
    /// The job's name (None while a job named by id is not observed yet: the name rule is
    /// checked once it is, and again for every job the resource acts on).
    pub name: Option<JobName<'a>>,
    /// The status the resource keeps the job in (None: it writes none, e.g. Observe).
    pub desired: Option<DesiredJobStatus>,
    pub deletion_policy: DeletionPolicy,
    /// The definition of the job the resource creates (spec.definition), if it creates one.
    pub definition: Option<&'a JobDefinition>,
}

/// Whether `account`'s job rules allow what a MacieJob asks.
pub fn job_allowed(account: &str, rules: &JobRules, ask: JobAsk<'_>) -> Result<(), Refusal> {
    let refuse = |rule| {
        Err(Refusal::NotPermitted {
            account: account.to_string(),
            rule,
        })
    };
    let name_allowed = |name: &str| rules.names.iter().any(|p| glob(p, name));
    match ask.name {
        Some(JobName::Declared(name)) if !name_allowed(name) => return refuse(Rule::JobName(name.to_string())),
        Some(JobName::OfJob { job_id, name }) if !name_allowed(name) => {
            return refuse(Rule::NameOfJob(job_id.to_string()));
        }
        _ => {}
    }
    if let Some(definition) = ask.definition {
        if !rules.allow_create {
            return refuse(Rule::Create);
        }
        if let Err(rule) = buckets_allowed(&rules.bucket_account_ids, definition) {
            return refuse(rule);
        }
    }
    if !rules.allow_cancel {
        if ask.desired == Some(DesiredJobStatus::Cancelled) {
            return refuse(Rule::Cancel);
        }
        if ask.deletion_policy == DeletionPolicy::Cancel {
            return refuse(Rule::DeletionPolicyCancel);
        }
    }
    if !rules.allow_pause && ask.desired == Some(DesiredJobStatus::UserPaused) {
        return refuse(Rule::Pause);
    }
    Ok(())
}

/// Whether a definition scans only the buckets of `allowed` accounts (`*`: any): every
/// `bucketDefinitions[].accountId` listed; `bucketCriteria` with an `ACCOUNT_ID EQ` criterion
/// in `includes.and` whose values are all listed (the criteria of `and` must all hold, so one
/// such criterion bounds the accounts; `excludes` bound nothing).
pub fn buckets_allowed(allowed: &[String], definition: &JobDefinition) -> Result<(), Rule> {
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let listed = |id: &str| allowed.iter().any(|a| a == id);
    let s3 = &definition.s3_job_definition;
    for d in s3.bucket_definitions.iter().flatten() {
        if !listed(&d.account_id) {
            return Err(Rule::BucketAccount(d.account_id.clone()));
        }
    }
    let Some(criteria) = &s3.bucket_criteria else {
        return Ok(());
    };
    let by_account: Vec<&[String]> = criteria
        .includes
        .iter()
        .flat_map(|b| &b.and)
        .filter_map(|c| c.simple_criterion.as_ref())
        .filter(|c| c.key == BucketCriterionKey::AccountId && c.comparator == Comparator::Eq && !c.values.is_empty())
        .map(|c| c.values.as_slice())
        .collect();
    if by_account.iter().any(|values| values.iter().all(|v| listed(v))) {
        return Ok(());
    }
    match by_account.iter().flat_map(|values| values.iter()).find(|v| !listed(v)) {
        Some(id) => Err(Rule::BucketCriteriaAccount(id.clone())),
        None => Err(Rule::BucketCriteriaUnscoped),
    }
}

/// Whether `account`'s discovery rules allow setting member account `id` to `status`.
pub fn discovery_allowed(
    account: &str,
    rules: &DiscoveryRules,
    id: &str,
    status: DiscoveryStatus,
) -> Result<(), Refusal> {
    let refuse = |rule| {
        Err(Refusal::NotPermitted {
            account: account.to_string(),
            rule,
        })
    };
    if !rules.account_ids.iter().any(|a| a == "*" || a == id) {
        return refuse(Rule::DiscoveryAccount(id.to_string()));
    }
    if !rules.allowed_statuses.contains(&status) {
        return refuse(Rule::DiscoveryStatus(status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MacieAccountSpec;

    #[test]
    fn only_true_pauses_and_the_resources_own_annotation_is_named_first() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let meta = |v: Option<&str>| ObjectMeta {
            annotations: v.map(|v| [(crate::api::PAUSED_ANNOTATION.to_string(), v.to_string())].into()),
            ..Default::default()
        };
        let account = |v: Option<&str>| MacieAccount {
            metadata: meta(v),
            spec: serde_json::from_value(serde_json::json!({"regions": ["us-east-1"], "namespaceSelector": {}}))
                .unwrap(),
            status: None,
        };
        let rows = [
            (None, None, None),
            (Some("true"), None, Some(Pause::Resource)),
            (Some("True"), None, None),
            (Some("false"), Some("true"), Some(Pause::Account)),
            (None, Some("yes"), None),
            (Some("true"), Some("true"), Some(Pause::Resource)),
        ];
        for (on_resource, on_account, want) in rows {
            assert_eq!(
                paused(&meta(on_resource), &account(on_account)),
                want,
                "{on_resource:?} {on_account:?}"
            );
        }
        assert!(Pause::Account.message("prod").contains("MacieAccount prod"));
        assert!(Pause::Resource.message("prod").contains("on this resource"));
    }
    use crate::api::MacieAccountStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelectorRequirement, Time};
    use k8s_openapi::jiff::Timestamp;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_rows() {
        let team = labels(&[("team", "security"), ("env", "prod")]);
        let none = labels(&[]);
        let by_labels = |pairs: &[(&str, &str)]| LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        };
        let by_expr = |e: LabelSelectorRequirement| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![e]),
        };
        // (selector, labels, selected)
        let rows: Vec<(LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            (LabelSelector::default(), &none, true),
            (LabelSelector::default(), &team, true),
            (by_labels(&[("team", "security")]), &team, true),
            (by_labels(&[("team", "finance")]), &team, false),
            (by_labels(&[("team", "security")]), &none, false),
            (by_expr(expr("team", "In", &["finance", "security"])), &team, true),
            (by_expr(expr("team", "In", &["finance"])), &team, false),
            (by_expr(expr("team", "NotIn", &["finance"])), &team, true),
            (by_expr(expr("team", "NotIn", &["security"])), &team, false),
            (by_expr(expr("team", "NotIn", &["security"])), &none, true),
            (by_expr(expr("env", "Exists", &[])), &team, true),
            (by_expr(expr("env", "Exists", &[])), &none, false),
            (by_expr(expr("env", "DoesNotExist", &[])), &team, false),
            (by_expr(expr("env", "DoesNotExist", &[])), &none, true),
            (by_expr(expr("env", "Gt", &["1"])), &team, false),
        ];
        for (i, (sel, l, want)) in rows.iter().enumerate() {
            assert_eq!(selects(sel, l), *want, "row {i}: {sel:?} on {l:?}");
        }
    }

    #[test]
    fn glob_rows() {
        let rows = [
            ("*", "anything", true),
            ("*", "", true),
            ("nightly-*", "nightly-scan", true),
            ("nightly-*", "nightly-", true),
            ("nightly-*", "weekly-scan", false),
            ("nightly-*", "a-nightly-scan", false),
            ("*-prod", "scan-prod", true),
            ("*-prod", "scan-prod-2", false),
            ("scan-?", "scan-1", true),
            ("scan-?", "scan-12", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "Exact", false),
            ("**", "x", true),
            ("finance-*-daily", "finance-eu-daily", true),
            ("finance-*-daily", "finance-eu-weekly", false),
            ("ünï*", "ünïcode", true),
        ];
        for (p, n, want) in rows {
            assert_eq!(glob(p, n), want, "{p:?} vs {n:?}");
        }
    }

    fn account(
        regions: &[&str],
        selector: LabelSelector,
        ready: Option<(&str, Option<&str>)>,
        gen_seen: i64,
    ) -> MacieAccount {
        let mut a = MacieAccount::new(
            "acct",
            MacieAccountSpec {
                role_arn: Some("arn:aws:iam::111122223333:role/secret-role".into()),
                external_id: None,
                regions: regions.iter().map(|r| r.to_string()).collect(),
                namespace_selector: selector,
                jobs: JobRules::default(),
                discovery: DiscoveryRules::default(),
            },
        );
        a.metadata.generation = Some(2);
        if let Some((reason, code)) = ready {
            let phase_true = reason == Reason::Verified.as_str();
            a.status = Some(MacieAccountStatus {
                observed_generation: Some(gen_seen),
                conditions: vec![Condition {
                    type_: conditions::READY.into(),
                    status: if phase_true { "True" } else { "False" }.into(),
                    reason: reason.into(),
                    message: String::new(),
                    observed_generation: Some(gen_seen),
                    last_transition_time: Time(Timestamp::now()),
                }],
                error_code: code.map(str::to_string),
                ..Default::default()
            });
        }
        a
    }

    /// (what, account, namespace labels, region, expected reason)
    type AdmissionRow<'a> = (
        &'a str,
        Option<MacieAccount>,
        Option<&'a BTreeMap<String, String>>,
        &'a str,
        Result<(), Reason>,
    );

    #[test]
    fn admission_rows() {
        let sec = LabelSelector {
            match_labels: Some(labels(&[("team", "security")])),
            match_expressions: None,
        };
        let ready = Some(("Verified", None));
        let denied = Some(("AccountNotReady", Some("AccessDenied")));
        let ns_sec = labels(&[("team", "security")]);
        let ns_other = labels(&[("team", "finance")]);
        let found = |r: Result<&MacieAccount, Refusal>| r.map(|_| ()).map_err(|e| e.reason());
        let ok: Result<(), Reason> = Ok(());
        let rows: Vec<AdmissionRow> = vec![
            (
                "ready, selected, region listed",
                Some(account(&["us-east-1"], sec.clone(), ready, 2)),
                Some(&ns_sec),
                "us-east-1",
                ok,
            ),
            (
                "no such account",
                None,
                Some(&ns_sec),
                "us-east-1",
                Err(Reason::AccountNotFound),
            ),
            (
                "namespace not selected",
                Some(account(&["us-east-1"], sec.clone(), ready, 2)),
                Some(&ns_other),
                "us-east-1",
                Err(Reason::AccountNotFound),
            ),
            (
                "namespace not known",
                Some(account(&["us-east-1"], LabelSelector::default(), ready, 2)),
                None,
                "us-east-1",
                Err(Reason::AccountNotFound),
            ),
            (
                "region not listed",
                Some(account(&["us-east-1"], sec.clone(), ready, 2)),
                Some(&ns_sec),
                "eu-west-1",
                Err(Reason::RegionNotAllowed),
            ),
            (
                "not selected beats region",
                Some(account(&["us-east-1"], sec.clone(), ready, 2)),
                Some(&ns_other),
                "eu-west-1",
                Err(Reason::AccountNotFound),
            ),
            (
                "role cannot be assumed",
                Some(account(&["us-east-1"], sec.clone(), denied, 2)),
                Some(&ns_sec),
                "us-east-1",
                Err(Reason::AccountNotReady),
            ),
            (
                "region beats readiness",
                Some(account(&["us-east-1"], sec.clone(), denied, 2)),
                Some(&ns_sec),
                "eu-west-1",
                Err(Reason::RegionNotAllowed),
            ),
            (
                "no status yet",
                Some(account(&["us-east-1"], sec.clone(), None, 2)),
                Some(&ns_sec),
                "us-east-1",
                Err(Reason::AccountNotReady),
            ),
            (
                "status of an older generation",
                Some(account(&["us-east-1"], sec.clone(), ready, 1)),
                Some(&ns_sec),
                "us-east-1",
                Err(Reason::AccountNotReady),
            ),
        ];
        for (what, acct, ns, region, want) in rows {
            assert_eq!(found(admit("acct", false, acct.as_ref(), ns, region)), want, "{what}");
        }
    }

    #[test]
    fn job_rule_rows() {
        let rules = |names: &[&str], cancel: bool| JobRules {
            names: names.iter().map(|n| n.to_string()).collect(),
            allow_cancel: cancel,
            ..JobRules::default()
        };
        let ask = |name: Option<&'static str>, desired, deletion_policy| JobAsk {
            name: name.map(JobName::Declared),
            desired: Some(desired),
            deletion_policy,
            definition: None,
        };
        let by_id = |job_id: &'static str, name: &'static str, desired| JobAsk {
            name: Some(JobName::OfJob { job_id, name }),
            desired: Some(desired),
            deletion_policy: Orphan,
            definition: None,
        };
        let no_pause = |names: &[&str]| JobRules {
            allow_pause: false,
            ..rules(names, false)
        };
        use DeletionPolicy::{Cancel as DelCancel, Orphan};
        use DesiredJobStatus::{Cancelled, Running, UserPaused};
        let rows: Vec<(&str, JobRules, JobAsk, Option<Rule>)> = vec![
            (
                "anything runs",
                rules(&["*"], false),
                ask(Some("x"), Running, Orphan),
                None,
            ),
            (
                "pause allowed by default",
                rules(&["*"], false),
                ask(Some("x"), UserPaused, Orphan),
                None,
            ),
            (
                "cancel needs allowCancel",
                rules(&["*"], false),
                ask(Some("x"), Cancelled, Orphan),
                Some(Rule::Cancel),
            ),
            (
                "deletionPolicy Cancel needs allowCancel",
                rules(&["*"], false),
                ask(Some("x"), Running, DelCancel),
                Some(Rule::DeletionPolicyCancel),
            ),
            (
                "allowCancel allows both",
                rules(&["*"], true),
                ask(Some("x"), Cancelled, DelCancel),
                None,
            ),
            (
                "name matches",
                rules(&["nightly-*"], true),
                ask(Some("nightly-1"), Running, Orphan),
                None,
            ),
            (
                "name does not match",
                rules(&["nightly-*"], true),
                ask(Some("weekly-1"), Running, Orphan),
                Some(Rule::JobName("weekly-1".into())),
            ),
            (
                "no pattern",
                rules(&[], true),
                ask(Some("x"), Running, Orphan),
                Some(Rule::JobName("x".into())),
            ),
            // A job by id before it is observed: the name rule waits for the name.
            (
                "by id, not observed",
                rules(&["nightly-*"], false),
                ask(None, Running, Orphan),
                None,
            ),
            (
                "by id, not observed, cancel",
                rules(&["nightly-*"], false),
                ask(None, Cancelled, Orphan),
                Some(Rule::Cancel),
            ),
            // The name rule is named first.
            (
                "name before cancel",
                rules(&["nightly-*"], false),
                ask(Some("weekly-1"), Cancelled, Orphan),
                Some(Rule::JobName("weekly-1".into())),
            ),
            // A job reached by id: its Macie name is checked, and the refusal names the id.
            (
                "by id, name allowed",
                rules(&["nightly-*"], false),
                by_id("j1", "nightly-1", Running),
                None,
            ),
            (
                "by id, name refused: the id is named, not the name",
                rules(&["nightly-*"], false),
                by_id("j1", "finance-secret", Running),
                Some(Rule::NameOfJob("j1".into())),
            ),
            // allowPause.
            (
                "allowPause false refuses USER_PAUSED",
                no_pause(&["*"]),
                ask(Some("x"), UserPaused, Orphan),
                Some(Rule::Pause),
            ),
            (
                "allowPause false leaves RUNNING",
                no_pause(&["*"]),
                ask(Some("x"), Running, Orphan),
                None,
            ),
            (
                "allowPause false, job by id",
                no_pause(&["*"]),
                by_id("j1", "x", UserPaused),
                Some(Rule::Pause),
            ),
            (
                "cancel rule named before pause",
                no_pause(&["*"]),
                ask(Some("x"), Cancelled, Orphan),
                Some(Rule::Cancel),
            ),
        ];
        for (what, r, a, want) in rows {
            let got = job_allowed("acct", &r, a);
            let want = want.map_or(Ok(()), |rule| {
                Err(Refusal::NotPermitted {
                    account: "acct".into(),
                    rule,
                })
            });
            assert_eq!(got, want, "{what}");
        }
    }

    fn definition(s3: serde_json::Value) -> JobDefinition {
        serde_json::from_value(serde_json::json!({"jobType": "ONE_TIME", "s3JobDefinition": s3}))
            .expect("a valid definition")
    }

    fn account_criterion(comparator: &str, values: &[&str]) -> serde_json::Value {
        serde_json::json!({"simpleCriterion": {"comparator": comparator, "key": "ACCOUNT_ID", "values": values}})
    }

    #[test]
    fn create_rule_rows() {
        use serde_json::json;
        let a = "111122223333";
        let b = "444455556666";
        let by_buckets = |ids: &[&str]| {
            definition(
                json!({"bucketDefinitions": ids.iter().map(|id| json!({"accountId": id, "buckets": ["b-1"]})).collect::<Vec<_>>()}),
            )
        };
        let by_criteria = |includes: Vec<serde_json::Value>, excludes: Vec<serde_json::Value>| {
            definition(json!({"bucketCriteria": {"includes": {"and": includes}, "excludes": {"and": excludes}}}))
        };
        let name_crit =
            json!({"simpleCriterion": {"comparator": "STARTS_WITH", "key": "S3_BUCKET_NAME", "values": ["fin"]}});
        let rules = |create: bool, accounts: &[&str]| JobRules {
            names: vec!["nightly-*".into()],
            allow_create: create,
            bucket_account_ids: accounts.iter().map(|s| s.to_string()).collect(),
            ..JobRules::default()
        };
        let rows: Vec<(&str, JobRules, &str, JobDefinition, Option<Rule>)> = vec![
            (
                "create allowed",
                rules(true, &["*"]),
                "nightly-1",
                by_buckets(&[a]),
                None,
            ),
            (
                "create not allowed",
                rules(false, &["*"]),
                "nightly-1",
                by_buckets(&[a]),
                Some(Rule::Create),
            ),
            (
                "name before create",
                rules(false, &["*"]),
                "weekly",
                by_buckets(&[a]),
                Some(Rule::JobName("weekly".into())),
            ),
            (
                "* allows criteria without an account",
                rules(true, &["*"]),
                "nightly-1",
                by_criteria(vec![name_crit.clone()], vec![]),
                None,
            ),
            (
                "listed bucket account",
                rules(true, &[a]),
                "nightly-1",
                by_buckets(&[a]),
                None,
            ),
            (
                "bucket of another account",
                rules(true, &[a]),
                "nightly-1",
                by_buckets(&[a, b]),
                Some(Rule::BucketAccount(b.into())),
            ),
            (
                "create refused before the buckets",
                rules(false, &[a]),
                "nightly-1",
                by_buckets(&[b]),
                Some(Rule::Create),
            ),
            (
                "criteria without ACCOUNT_ID",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(vec![name_crit.clone()], vec![]),
                Some(Rule::BucketCriteriaUnscoped),
            ),
            (
                "criteria with ACCOUNT_ID EQ listed",
                rules(true, &[a, b]),
                "nightly-1",
                by_criteria(vec![name_crit.clone(), account_criterion("EQ", &[a, b])], vec![]),
                None,
            ),
            (
                "criteria with ACCOUNT_ID EQ of an unlisted account",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(vec![account_criterion("EQ", &[a, b])], vec![]),
                Some(Rule::BucketCriteriaAccount(b.into())),
            ),
            (
                "ACCOUNT_ID NE bounds nothing",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(vec![account_criterion("NE", &[b])], vec![]),
                Some(Rule::BucketCriteriaUnscoped),
            ),
            (
                "ACCOUNT_ID EQ in excludes does not count",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(vec![name_crit.clone()], vec![account_criterion("EQ", &[a])]),
                Some(Rule::BucketCriteriaUnscoped),
            ),
            (
                "one bounding criterion is enough (and)",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(
                    vec![account_criterion("EQ", &[a, b]), account_criterion("EQ", &[a])],
                    vec![],
                ),
                None,
            ),
            (
                "ACCOUNT_ID EQ with no values bounds nothing",
                rules(true, &[a]),
                "nightly-1",
                by_criteria(vec![account_criterion("EQ", &[])], vec![]),
                Some(Rule::BucketCriteriaUnscoped),
            ),
        ];
        for (what, r, name, def, want) in rows {
            let got = job_allowed(
                "acct",
                &r,
                JobAsk {
                    name: Some(JobName::Declared(name)),
                    desired: Some(DesiredJobStatus::Running),
                    deletion_policy: DeletionPolicy::Orphan,
                    definition: Some(&def),
                },
            );
            let want = want.map_or(Ok(()), |rule| {
                Err(Refusal::NotPermitted {
                    account: "acct".into(),
                    rule,
                })
            });
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn discovery_rule_rows() {
        use DiscoveryStatus::{Disabled, Enabled};
        let rules = |ids: &[&str], statuses: &[DiscoveryStatus]| DiscoveryRules {
            account_ids: ids.iter().map(|n| n.to_string()).collect(),
            allowed_statuses: statuses.to_vec(),
        };
        let a = "111111111111";
        let rows: Vec<(DiscoveryRules, DiscoveryStatus, Option<Rule>)> = vec![
            (rules(&["*"], &[Enabled, Disabled]), Enabled, None),
            (rules(&[a], &[Enabled, Disabled]), Disabled, None),
            (
                rules(&["222222222222"], &[Enabled, Disabled]),
                Enabled,
                Some(Rule::DiscoveryAccount(a.into())),
            ),
            (
                rules(&[], &[Enabled, Disabled]),
                Enabled,
                Some(Rule::DiscoveryAccount(a.into())),
            ),
            (
                rules(&["*"], &[Enabled]),
                Disabled,
                Some(Rule::DiscoveryStatus(Disabled)),
            ),
            (rules(&[a], &[Disabled]), Disabled, None),
            (
                DiscoveryRules::default(),
                Enabled,
                Some(Rule::DiscoveryAccount(a.into())),
            ),
        ];
        for (i, (r, s, want)) in rows.into_iter().enumerate() {
            let got = discovery_allowed("acct", &r, a, s);
            assert_eq!(
                got,
                want.map_or(Ok(()), |rule| Err(Refusal::NotPermitted {
                    account: "acct".into(),
                    rule
                })),
                "row {i}"
            );
        }
    }

    #[test]
    fn messages_name_the_rule_and_never_the_role() {
        let all = [
            Refusal::AccountNotFound {
                account: "acct".into(),
                by_default: true,
            },
            Refusal::AccountNotFound {
                account: "acct".into(),
                by_default: false,
            },
            Refusal::AccountNotReady {
                account: "acct".into(),
                code: Some("AccessDenied".into()),
            },
            Refusal::AccountNotReady {
                account: "acct".into(),
                code: None,
            },
            Refusal::RegionNotAllowed {
                account: "acct".into(),
                region: "eu-west-1".into(),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::JobName("weekly".into()),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::Cancel,
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::DeletionPolicyCancel,
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::Create,
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::DiscoveryAccount("111111111111".into()),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::DiscoveryStatus(DiscoveryStatus::Disabled),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::NameOfJob("j1".into()),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::Pause,
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::BucketAccount("444455556666".into()),
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::BucketCriteriaUnscoped,
            },
            Refusal::NotPermitted {
                account: "acct".into(),
                rule: Rule::BucketCriteriaAccount("444455556666".into()),
            },
        ];
        let expect = [
            "spec.accountRef",
            "selects this namespace",
            "AccessDenied",
            "not verified",
            "spec.regions",
            "spec.jobs.names",
            "spec.jobs.allowCancel",
            "deletionPolicy Cancel",
            "spec.jobs.allowCreate",
            "spec.discovery.accountIds",
            "spec.discovery.allowedStatuses",
            "the name of job j1",
            "spec.jobs.allowPause",
            "bucketDefinitions",
            "ACCOUNT_ID",
            "444455556666",
        ];
        for (r, e) in all.iter().zip(expect) {
            let m = r.message();
            assert!(m.contains(e), "{m:?} should contain {e:?}");
            assert!(!m.contains("arn:"), "{m:?} names a role");
            assert_eq!(r.reason().phase(), conditions::Phase::Stalled);
        }
        assert_eq!(account_name(None, "default"), "default");
        let r = AccountRef { name: "team".into() };
        assert_eq!(account_name(Some(&r), "default"), "team");
    }
}
