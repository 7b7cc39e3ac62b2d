//! The emulator's state and the Macie rules applied to it. Everything here is synchronous and
//! deterministic given the clock and the fault RNG seed; the HTTP layer only decodes and encodes.
//!
//! One state type, [`Emulator`], with its methods grouped by concern in private modules: `jobs`
//! (classification jobs), `discovery` (automated discovery accounts and configuration), `faults`
//! (fault injection), `calls` (call log and counters) and `paging` (page tokens, filter and sort
//! criteria). Their public types are re-exported here.

mod calls;
mod discovery;
mod faults;
mod jobs;
mod paging;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::*;
use crate::seed::Seed;
use discovery::ShownAccount;
use jobs::summary;

pub use calls::{AccountCall, CallRecord, OpCounters};
pub use discovery::{Account, DEFAULT_ACCOUNTS_PAGE};
pub use faults::{ErrorRule, Fault, Faults, JOB_OPERATIONS};
pub use jobs::{DEFAULT_JOBS_PAGE, HEALTH_EVENT_AFTER, Job, PAUSE_EXPIRY, Paused};

/// The operations the emulator serves, by their service-model names.
pub const OPERATIONS: [&str; 7] = [
    "CreateClassificationJob",
    "DescribeClassificationJob",
    "ListClassificationJobs",
    "UpdateClassificationJob",
    "BatchUpdateAutomatedDiscoveryAccounts",
    "ListAutomatedDiscoveryAccounts",
    "GetAutomatedDiscoveryConfiguration",
];

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
    regions: HashMap<String, Region>,
    pub macie_enabled: bool,
    clock_offset: Duration,
    pub faults: Faults,
    rng: StdRng,
    pub counters: BTreeMap<String, OpCounters>,
    pub calls: Vec<CallRecord>,
    next_id: u64,
}

pub type ApiResult = Result<Value, ApiError>;

impl Emulator {
    pub fn new(seed: Seed, default_region: &str, account_id: &str) -> Emulator {
        let mut e = Emulator {
            seed,
            default_region: default_region.to_string(),
            account_id: account_id.to_string(),
            regions: HashMap::new(),
            macie_enabled: true,
            clock_offset: Duration::ZERO,
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(0),
            counters: BTreeMap::new(),
            calls: Vec::new(),
            next_id: 0,
        };
        e.reset();
        e
    }

    /// Back to the seed: state, clock, faults, counters and call log.
    pub fn reset(&mut self) {
        self.regions.clear();
        self.clock_offset = Duration::ZERO;
        self.faults = Faults::default();
        self.rng = StdRng::seed_from_u64(0);
        self.counters.clear();
        self.calls.clear();
        self.macie_enabled = self.seed.macie_enabled;
        let now = self.now();
        let seed = self.seed.clone();
        if let Some(cfg) = &seed.automated_discovery {
            let r = self.region_mut(None);
            r.discovery_status = cfg.status;
            if let Some(a) = &cfg.auto_enable_organization_members {
                r.auto_enable = a.clone();
            }
        }
        for job in &seed.jobs {
            self.put_job(job, now).expect("seed was validated");
        }
        for a in &seed.accounts {
            self.region_mut(a.region.as_deref()).accounts.insert(
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

    pub fn region_mut(&mut self, region: Option<&str>) -> &mut Region {
        let now = self.now();
        let name = region.unwrap_or(&self.default_region).to_string();
        self.regions.entry(name).or_insert_with(|| Region::new(now))
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

    pub fn snapshot(&mut self, region: Option<&str>) -> Value {
        self.tick();
        let now = self.now();
        let r = self.region_mut(region);
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
        json!({ "jobs": jobs, "accounts": accounts, "discoveryStatus": r.discovery_status })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::validation(format!("Invalid request: {e}")))
}
