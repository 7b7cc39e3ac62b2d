//! The emulator's state and the Macie rules applied to it. Everything here is synchronous and
//! deterministic given the clock and the fault RNG seed; the HTTP layer only decodes and encodes.
//!
//! One state type, [`Emulator`], with its methods grouped by concern in private modules: `jobs`
//! (classification jobs), `discovery` (automated discovery accounts and configuration), `faults`
//! (fault injection), `calls` (call log and counters) and `paging` (page tokens, filter and sort
//! criteria), `sts` (roles, temporary credentials and who signed a request), `definition`
//! (CreateClassificationJob's input checks) and `quota` (request rate quotas). State is kept
//! per [`Scope`]: an AWS account and a region. Their public types are re-exported here.

mod calls;
mod definition;
mod discovery;
mod faults;
mod jobs;
mod paging;
mod quota;
mod sts;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::*;
use crate::seed::Seed;
use discovery::ShownAccount;
use jobs::summary;

pub use calls::{AccountCall, CallRecord, OpCounters};
pub use definition::{JobDefinition, is_bucket_name};
pub use discovery::{Account, DEFAULT_ACCOUNTS_PAGE};
pub use faults::{ErrorRule, Fault, Faults, Injected, JOB_OPERATIONS};
pub use jobs::{DEFAULT_JOBS_PAGE, HEALTH_EVENT_AFTER, Job, PAUSE_EXPIRY, Paused};
pub use quota::Quotas;
pub use sts::{Caller, DEFAULT_SESSION, Session, StsError};

/// The Macie operations the emulator serves, by their service-model names.
pub const OPERATIONS: [&str; 7] = [
    "CreateClassificationJob",
    "DescribeClassificationJob",
    "ListClassificationJobs",
    "UpdateClassificationJob",
    "BatchUpdateAutomatedDiscoveryAccounts",
    "ListAutomatedDiscoveryAccounts",
    "GetAutomatedDiscoveryConfiguration",
];

/// The STS operations the emulator serves (query protocol, `POST /`).
pub const STS_OPERATIONS: [&str; 2] = ["AssumeRole", "GetCallerIdentity"];

/// Where a call acts: the AWS account of the credentials that signed it and the region of its
/// SigV4 scope. Each scope has its own jobs, member accounts and discovery configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

#[derive(Debug, Clone)]
pub struct Region {
    pub jobs: BTreeMap<String, Job>,
    pub accounts: BTreeMap<String, Account>,
    pub discovery_status: DiscoveryStatus,
    pub auto_enable: String,
    pub discovery_first_enabled: Timestamp,
    pub discovery_updated: Timestamp,
    client_tokens: HashMap<String, String>,
    /// Account status changes not yet visible to ListAutomatedDiscoveryAccounts.
    shown_accounts: BTreeMap<String, ShownAccount>,
}

impl Region {
    fn new(now: Timestamp) -> Region {
        Region {
            jobs: BTreeMap::new(),
            accounts: BTreeMap::new(),
            discovery_status: DiscoveryStatus::Enabled,
            auto_enable: "NONE".into(),
            discovery_first_enabled: now,
            discovery_updated: now,
            client_tokens: HashMap::new(),
            shown_accounts: BTreeMap::new(),
        }
    }
}

pub struct Emulator {
    seed: Seed,
    pub default_region: String,
    pub account_id: String,
    regions: HashMap<Scope, Region>,
    /// Temporary credentials issued by AssumeRole, by access key id. They survive a reset.
    sessions: HashMap<String, Session>,
    pub macie_enabled: bool,
    clock_offset: Duration,
    pub faults: Faults,
    rng: StdRng,
    pub counters: BTreeMap<String, OpCounters>,
    pub calls: Vec<CallRecord>,
    next_id: u64,
    quotas: Quotas,
    /// When each (account, region) last took a CreateClassificationJob token (wall clock).
    create_tokens_taken: HashMap<Scope, Instant>,
}

pub type ApiResult = Result<Value, ApiError>;

impl Emulator {
    pub fn new(seed: Seed, default_region: &str, account_id: &str) -> Emulator {
        let mut e = Emulator {
            seed,
            default_region: default_region.to_string(),
            account_id: account_id.to_string(),
            regions: HashMap::new(),
            sessions: HashMap::new(),
            macie_enabled: true,
            clock_offset: Duration::ZERO,
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(0),
            counters: BTreeMap::new(),
            calls: Vec::new(),
            next_id: 0,
            quotas: Quotas::default(),
            create_tokens_taken: HashMap::new(),
        };
        e.reset();
        e
    }

    /// Back to the seed: state, clock, faults, quotas, counters and call log.
    pub fn reset(&mut self) {
        self.regions.clear();
        self.quotas = Quotas {
            create_classification_job_per_second: self.seed.create_quota_per_second,
        };
        self.create_tokens_taken.clear();
        self.clock_offset = Duration::ZERO;
        self.faults = Faults::default();
        self.rng = StdRng::seed_from_u64(0);
        self.counters.clear();
        self.calls.clear();
        self.macie_enabled = self.seed.macie_enabled;
        let now = self.now();
        let seed = self.seed.clone();
        if let Some(cfg) = &seed.automated_discovery {
            let at = self.scope(None, None);
            let r = self.region_mut(&at);
            r.discovery_status = cfg.status;
            if let Some(a) = &cfg.auto_enable_organization_members {
                r.auto_enable = a.clone();
            }
        }
        for job in &seed.jobs {
            self.put_job(job, now).expect("seed was validated");
        }
        for a in &seed.accounts {
            let at = self.scope(a.aws_account_id.as_deref(), a.region.as_deref());
            self.region_mut(&at).accounts.insert(
                a.account_id.clone(),
                Account {
                    status: a.status,
                    paused: a.paused,
                },
            );
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(SystemTime::now() + self.clock_offset)
    }

    pub fn advance_clock(&mut self, by: Duration) {
        self.clock_offset += by;
        self.tick();
    }

    pub fn clock_offset(&self) -> Duration {
        self.clock_offset
    }

    /// The scope named by an (optional) account and region: `--account-id` and `--region` by
    /// default.
    pub fn scope(&self, account: Option<&str>, region: Option<&str>) -> Scope {
        Scope {
            account: account.unwrap_or(&self.account_id).to_string(),
            region: region.unwrap_or(&self.default_region).to_string(),
        }
    }

    pub fn region_mut(&mut self, at: &Scope) -> &mut Region {
        let now = self.now();
        self.regions.entry(at.clone()).or_insert_with(|| Region::new(now))
    }

    /// Applies what time does: visibility delays run out, paused jobs expire after 30 days.
    pub fn tick(&mut self) {
        let now = self.now();
        for region in self.regions.values_mut() {
            region.shown_accounts.retain(|_, s| now.0 < s.until);
            for job in region.jobs.values_mut() {
                if job.shown.as_ref().is_some_and(|s| now.0 >= s.until) {
                    job.shown = None;
                }
                if let (JobStatus::UserPaused, Some(p)) = (job.status, job.paused)
                    && now.0 >= p.at.0 + PAUSE_EXPIRY
                {
                    // A one-time job is cancelled; a scheduled job's paused run is cancelled and
                    // the job waits for its next run.
                    job.status = match job.job_type {
                        JobType::OneTime => JobStatus::Cancelled,
                        JobType::Scheduled => JobStatus::Idle,
                    };
                    job.paused = None;
                    job.shown = None;
                    job.last_request = None;
                }
            }
        }
    }

    /// The state of one account in one region (defaults: `--account-id`, `--region`).
    pub fn snapshot(&mut self, account: Option<&str>, region: Option<&str>) -> Value {
        self.tick();
        let now = self.now();
        let at = self.scope(account, region);
        let r = self.region_mut(&at);
        let jobs: Vec<Value> = r
            .jobs
            .values()
            .map(|j| {
                let mut v = serde_json::to_value(summary(j, now, false)).unwrap_or_default();
                v["visibleJobStatus"] = json!(summary(j, now, true).job_status);
                v
            })
            .collect();
        let accounts: serde_json::Map<String, Value> = r
            .accounts
            .iter()
            .map(|(id, a)| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["visibleStatus"] = json!(r.visible_account_status(id, a, now));
                (id.clone(), v)
            })
            .collect();
        json!({
            "awsAccountId": at.account,
            "region": at.region,
            "jobs": jobs,
            "accounts": accounts,
            "discoveryStatus": r.discovery_status,
        })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::validation(format!("Invalid request: {e}")))
}
