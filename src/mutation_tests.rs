//! Fast tests for mutants that `make mutants` found alive in modules other work was changing at
//! the time (src/job, src/runtime): each test names the mutant it kills (docs/testing.md,
//! "Mutation testing"). They belong beside their code: move them there once those edits settle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::macie_job::{ObservedJob, UserPausedDetails};
use crate::api::{
    DeletionPolicy, DesiredJobStatus, MacieAccountStatus, MacieDiscoveryStatus, MacieJobSpec, MacieJobStatus,
};
use crate::job::create::{CreateQueue, Ticket};
use crate::job::plan::Observation;
use crate::job::resolve;
use crate::macie::jobs::{RegionView, Snapshot};
use crate::runtime::status::shown;

/// Kills `replace Reported::paused_until -> Option<i64> with Some(1)` (src/runtime/status.rs):
/// only a MacieJob whose job Macie shows USER_PAUSED has an expiry in the gauges.
#[test]
fn only_a_paused_job_shows_an_expiry() {
    assert_eq!(shown(&MacieAccountStatus::default()).paused_until, None);
    assert_eq!(shown(&MacieDiscoveryStatus::default()).paused_until, None);
    let expires = Timestamp::from_second(1_800_000_000).unwrap();
    let mut status = MacieJobStatus {
        job: Some(ObservedJob {
            job_id: "j1".into(),
            job_status: "USER_PAUSED".into(),
            user_paused_details: Some(UserPausedDetails {
                job_expires_at: Some(Time(expires)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(shown(&status).paused_until, Some(1_800_000_000));
    status.job.as_mut().unwrap().job_status = "RUNNING".into();
    assert_eq!(shown(&status).paused_until, None, "resumed: no expiry");
}

fn spec_by_name(name: &str) -> MacieJobSpec {
    MacieJobSpec {
        job_id: None,
        job_name: Some(name.into()),
        job_status: Some(DesiredJobStatus::Running),
        region: None,
        account_ref: None,
        definition: None,
        deletion_policy: DeletionPolicy::Orphan,
        management_policy: Default::default(),
    }
}

fn job(id: &str, name: &str) -> ObservedJob {
    ObservedJob {
        job_id: id.into(),
        name: Some(name.into()),
        job_status: "RUNNING".into(),
        ..Default::default()
    }
}

/// Kills `replace match guard ids.len() == 1 with true in resolve` (src/job/mod.rs): a name
/// two jobs carry (Macie allows duplicate names) resolves to neither of them.
#[test]
fn a_name_two_jobs_carry_is_ambiguous_and_a_unique_one_is_found() {
    let snapshot = |jobs: &[ObservedJob]| {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for j in jobs {
            by_name
                .entry(j.name.clone().unwrap())
                .or_default()
                .push(j.job_id.clone());
        }
        RegionView {
            snapshot: Some(Arc::new(Snapshot {
                started_at: Timestamp::from_second(1_800_000_000).unwrap(),
                jobs: jobs.iter().map(|j| (j.job_id.clone(), j.clone())).collect(),
                by_name,
                pages: 1,
                unread_ids: HashMap::new(),
                unread_names: HashMap::new(),
            })),
            error: None,
            failures: 0,
            sweeps: 1,
            confirmed: HashMap::new(),
        }
    };
    let one = snapshot(&[job("j1", "nightly")]);
    assert!(matches!(resolve(&spec_by_name("nightly"), &one), Observation::Found(j) if j.job_id == "j1"));
    let two = snapshot(&[job("j1", "nightly"), job("j2", "nightly")]);
    match resolve(&spec_by_name("nightly"), &two) {
        Observation::Ambiguous(ids) => assert_eq!(ids.len(), 2),
        other => panic!("two jobs named nightly: {other:?}"),
    }
    assert!(matches!(resolve(&spec_by_name("weekly"), &two), Observation::NotFound));
}

/// Kills `replace || with && in CreateQueue<P, R>::leave` (src/job/create.rs): when the
/// resource that just took its turn leaves the queue (its job created), the place still
/// remembers when the next create may go, so the next resource waits out the interval.
#[test]
fn leaving_after_a_create_keeps_the_places_spacing() {
    let mut q: CreateQueue<&str, &str> = CreateQueue::new(0.1);
    let t0 = Instant::now();
    assert_eq!(q.ticket(&"place", &"a", t0), Ticket::Go);
    q.leave(&"a");
    let later = t0 + Duration::from_secs(1);
    assert_eq!(
        q.ticket(&"place", &"b", later),
        Ticket::Wait {
            position: 1,
            at: t0 + Duration::from_secs(10),
        },
        "one create every 10 s per place"
    );
    assert_eq!(q.ticket(&"place", &"b", t0 + Duration::from_secs(10)), Ticket::Go);
    // Another place has its own line.
    assert_eq!(q.ticket(&"other", &"c", later), Ticket::Go);
}

/// Kills `replace JobStatus::can_update_to -> bool with true` (src/job/plan.rs): the table of
/// valid UpdateClassificationJob transitions, which the plan's tests, the fake Macie and the
/// harness all check calls against, holds exactly the Macie API reference's eight.
#[test]
fn the_valid_transitions_are_exactly_the_api_references() {
    use crate::job::plan::JobStatus;
    use DesiredJobStatus::{Cancelled, Running, UserPaused};
    let valid = [
        ("IDLE", Cancelled),
        ("PAUSED", Cancelled),
        ("RUNNING", Cancelled),
        ("USER_PAUSED", Cancelled),
        ("USER_PAUSED", Running),
        ("IDLE", UserPaused),
        ("PAUSED", UserPaused),
        ("RUNNING", UserPaused),
    ];
    let from = [
        "RUNNING",
        "PAUSED",
        "CANCELLED",
        "COMPLETE",
        "IDLE",
        "USER_PAUSED",
        "SOMETHING_NEW",
    ];
    let mut accepted = 0;
    for f in from {
        for to in [Running, UserPaused, Cancelled] {
            let expected = valid.contains(&(f, to));
            assert_eq!(JobStatus::parse(f).can_update_to(to), expected, "{f} -> {to:?}");
            accepted += usize::from(expected);
        }
    }
    assert_eq!(accepted, valid.len());
}

/// Kills `replace kind_of -> &'static str with ""` (src/runtime/status.rs): the resource
/// gauges' key names each kind of ours.
#[test]
fn the_gauges_key_names_the_kind() {
    use crate::api::{MacieAccount, MacieAccountSpec, MacieDiscovery, MacieDiscoverySpec, MacieJob};
    use crate::runtime::status::object_key;
    let mut job = MacieJob::new("nightly", spec_by_name("nightly"));
    job.metadata.namespace = Some("ns".into());
    let key = object_key(&job);
    assert_eq!(
        (key.kind, key.namespace.as_str(), key.name.as_str()),
        ("MacieJob", "ns", "nightly")
    );
    let discovery = MacieDiscovery::new(
        "d",
        MacieDiscoverySpec {
            accounts: Vec::new(),
            region: None,
            account_ref: None,
            management_policy: Default::default(),
        },
    );
    assert_eq!(object_key(&discovery).kind, "MacieDiscovery");
    let account = MacieAccount::new(
        "a",
        MacieAccountSpec {
            role_arn: None,
            external_id: None,
            regions: vec!["us-east-1".into()],
            namespace_selector: Default::default(),
            jobs: Default::default(),
            discovery: Default::default(),
        },
    );
    assert_eq!(object_key(&account).kind, "MacieAccount");
}

/// Kills `replace > with >= in ambiguous` (src/job/plan.rs): an AmbiguousName message shows
/// up to five ids, and says how many more only when there are more.
#[test]
fn an_ambiguous_name_shows_five_ids_and_counts_the_rest() {
    use crate::job::plan::{Settings, plan};
    let settings = Settings {
        step_timeout: Duration::from_secs(300),
        expiry_warning: Duration::from_secs(7 * 86400),
    };
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let message = |n: usize| {
        let ids: Vec<String> = (1..=n).map(|i| format!("j{i}")).collect();
        let p = plan(
            DesiredJobStatus::Running,
            Observation::Ambiguous(&ids),
            Some(now),
            None,
            now,
            &settings,
        );
        assert_eq!(p.summary.reason, "AmbiguousName");
        p.summary.message
    };
    assert_eq!(
        message(5),
        "5 jobs have this name (j1, j2, j3, j4, j5); use spec.jobId to pick one"
    );
    assert_eq!(
        message(6),
        "6 jobs have this name (j1, j2, j3, j4, j5 and 1 more); use spec.jobId to pick one"
    );
}

/// Kills `replace + with * in glob` at the backtrack (src/account/policy.rs): Macie job names
/// may contain `*` themselves; after a backtrack the pattern's `*` is not matched against the
/// name's `*` as if it were a literal.
#[test]
fn a_glob_backtracks_over_a_name_that_contains_a_star() {
    use crate::account::policy::glob;
    assert!(glob("*?", "a*"));
    assert!(glob("nightly-*?", "nightly-x*"));
    assert!(glob("nightly-*?", "nightly-**"));
    assert!(!glob("nightly-*?", "nightly-"));
}
