//! The emulator's state and the Macie rules applied to it. Everything here is synchronous and
//! deterministic given the clock and the fault RNG seed; the HTTP layer only decodes and encodes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::*;
use crate::seed::{Seed, SeedJob, is_account_id};

/// How long a USER_PAUSED job stays paused before Macie expires it.
pub const PAUSE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// When the imminent-expiration health event appears (about 7 days before expiry).
pub const HEALTH_EVENT_AFTER: Duration = Duration::from_secs(23 * 24 * 3600);
/// Page size of ListClassificationJobs when the request has no maxResults.
pub const DEFAULT_JOBS_PAGE: usize = 100;
/// Page size of ListAutomatedDiscoveryAccounts when the request has no maxResults.
pub const DEFAULT_ACCOUNTS_PAGE: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paused {
    pub at: Timestamp,
    /// The status a resume returns to: IDLE for a scheduled job paused while idle, else RUNNING.
    pub resume_to: JobStatus,
}

/// A status change not yet visible to reads (delayed-visibility fault).
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    status: JobStatus,
    paused: Option<Paused>,
    until: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: String,
    pub name: String,
    pub job_type: JobType,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub last_run_error: LastRunErrorCode,
    pub bucket_definitions: Option<Vec<S3BucketDefinitionForJob>>,
    pub bucket_criteria: Option<Value>,
    pub paused: Option<Paused>,
    shown: Option<Shown>,
    /// The status the last accepted UpdateClassificationJob asked for, until anything else
    /// changes the job: a second call asking for the same thing is a repeat.
    last_request: Option<JobStatus>,
    /// Fields only DescribeClassificationJob returns, kept as sent.
    pub details: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub status: DiscoveryStatus,
    pub paused: bool,
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
        }
    }
}

/// Fault injection for one operation (or `*` for all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Fraction of calls (0..=1) answered ThrottlingException (429).
    #[serde(default)]
    pub throttle_rate: f64,
    /// Fraction of calls (0..=1) answered InternalServerException (500).
    #[serde(default)]
    pub error_rate: f64,
    /// Added latency per call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Per operation name (e.g. `UpdateClassificationJob`), or `*` for every operation.
    #[serde(default)]
    pub operations: BTreeMap<String, Fault>,
    /// Status changes made by UpdateClassificationJob become visible to reads only after this
    /// many milliseconds (of emulator clock): a list right after an update shows the old status.
    #[serde(default)]
    pub visibility_delay_ms: u64,
    /// Seed of the random draws for throttle and error rates (repeatable runs).
    #[serde(default)]
    pub seed: u64,
    /// Largest page ListClassificationJobs returns whatever maxResults asks (the service may
    /// return fewer items than asked).
    #[serde(default)]
    pub max_jobs_page: Option<usize>,
    /// Reads (list and describe) show this status text for these job ids instead of the real
    /// status: a value newer than the client knows. Updates still follow the real status.
    #[serde(default)]
    pub reported_status: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpCounters {
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub injected: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountCall {
    pub account_id: String,
    pub status: DiscoveryStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<DiscoveryStatus>,
    /// `OK`, `ACCOUNT_NOT_FOUND` or `ACCOUNT_PAUSED`.
    pub outcome: String,
}

/// One UpdateClassificationJob or BatchUpdateAutomatedDiscoveryAccounts call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub seq: u64,
    pub at: Timestamp,
    pub region: String,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The job's real status when the call arrived (not what a delayed read showed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_status: Option<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_status: Option<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_status: Option<JobStatus>,
    /// Whether the transition is one the Macie documentation allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// The same status was already asked for, and accepted, with nothing changed since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountCall>,
    /// `OK` or the error code answered.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The answer was a fault injected before the call was processed.
    pub injected: bool,
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

    fn new_job_id(&mut self) -> String {
        self.next_id += 1;
        let mut h = DefaultHasher::new();
        (self.next_id, "macie-emulator-job").hash(&mut h);
        format!("{:016x}{:016x}", h.finish(), self.next_id)
    }

    /// Adds (or replaces) a job as given, with any status: used by the seed and the admin API.
    pub fn put_job(&mut self, job: &SeedJob, now: Timestamp) -> Result<String, String> {
        let job_id = match &job.job_id {
            Some(id) => id.clone(),
            None => self.new_job_id(),
        };
        let paused = (job.job_status == JobStatus::UserPaused).then(|| Paused {
            at: job.paused_at.unwrap_or(now),
            resume_to: job.paused_while.unwrap_or(JobStatus::Running),
        });
        let bucket_definitions = job.bucket_definitions.clone().or_else(|| {
            Some(vec![S3BucketDefinitionForJob {
                account_id: self.account_id.clone(),
                buckets: vec![format!("{}-data", job.name.to_lowercase().replace(' ', "-"))],
            }])
        });
        let details = json!({
            "clientToken": format!("seed-{job_id}"),
            "description": "",
            "initialRun": true,
            "managedDataIdentifierSelector": "RECOMMENDED",
            "samplingPercentage": 100,
            "s3JobDefinition": { "bucketDefinitions": bucket_definitions },
            "statistics": { "approximateNumberOfObjectsToProcess": 0.0, "numberOfRuns": 1.0 },
            "tags": {},
        });
        let region = job.region.clone();
        let job = Job {
            job_id: job_id.clone(),
            name: job.name.clone(),
            job_type: job.job_type,
            status: job.job_status,
            created_at: job.created_at.unwrap_or(now),
            last_run_error: job.last_run_error_status,
            bucket_definitions,
            bucket_criteria: None,
            paused,
            shown: None,
            last_request: None,
            details,
        };
        self.region_mut(region.as_deref()).jobs.insert(job_id.clone(), job);
        Ok(job_id)
    }

    /// Applies what time does: visibility delays run out, paused jobs expire after 30 days.
    pub fn tick(&mut self) {
        let now = self.now();
        for region in self.regions.values_mut() {
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

    // ---- service-side (admin) changes -------------------------------------------------

    /// A change Macie itself makes (a run completes, a scheduled job goes idle, the quota
    /// pauses a job) or any out-of-band change a test needs. Not subject to the update rules.
    pub fn set_status_service_side(&mut self, region: Option<&str>, job_id: &str, to: JobStatus) -> Result<(), String> {
        let now = self.now();
        let job = self
            .region_mut(region)
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| format!("no job {job_id:?}"))?;
        match (job.job_type, to) {
            (JobType::Scheduled, JobStatus::Complete) => {
                return Err("COMPLETE is only for ONE_TIME jobs".into());
            }
            (JobType::OneTime, JobStatus::Idle) => return Err("IDLE is only for SCHEDULED jobs".into()),
            _ => {}
        }
        job.paused = (to == JobStatus::UserPaused).then(|| Paused {
            at: now,
            resume_to: if job.status == JobStatus::Idle {
                JobStatus::Idle
            } else {
                JobStatus::Running
            },
        });
        job.status = to;
        job.shown = None;
        job.last_request = None;
        Ok(())
    }

    pub fn remove_job(&mut self, region: Option<&str>, job_id: &str) -> bool {
        self.region_mut(region).jobs.remove(job_id).is_some()
    }

    pub fn put_account(&mut self, region: Option<&str>, account_id: &str, account: Account) -> Result<(), String> {
        if !is_account_id(account_id) {
            return Err(format!("accountId: {account_id:?} is not a 12-digit AWS account id"));
        }
        self.region_mut(region).accounts.insert(account_id.to_string(), account);
        Ok(())
    }

    pub fn remove_account(&mut self, region: Option<&str>, account_id: &str) -> bool {
        self.region_mut(region).accounts.remove(account_id).is_some()
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
        json!({ "jobs": jobs, "accounts": r.accounts, "discoveryStatus": r.discovery_status })
    }

    // ---- fault injection, counters, log -------------------------------------------------

    fn fault_for(&self, op: &str) -> Fault {
        let mut f = self.faults.operations.get("*").cloned().unwrap_or_default();
        if let Some(o) = self.faults.operations.get(op) {
            f.throttle_rate = f.throttle_rate.max(o.throttle_rate);
            f.error_rate = f.error_rate.max(o.error_rate);
            f.latency_ms += o.latency_ms;
        }
        f
    }

    pub fn set_faults(&mut self, faults: Faults) -> Result<(), String> {
        for (op, f) in &faults.operations {
            if op != "*" && !OPERATIONS.contains(&op.as_str()) {
                return Err(format!(
                    "operations.{op}: not an operation the emulator serves ({OPERATIONS:?} or *)"
                ));
            }
            for (name, rate) in [("throttleRate", f.throttle_rate), ("errorRate", f.error_rate)] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("operations.{op}.{name}: {rate} is not between 0 and 1"));
                }
            }
        }
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
        Ok(())
    }

    /// Added latency for an operation (applied by the HTTP layer outside the lock).
    pub fn latency(&self, op: &str) -> Duration {
        Duration::from_millis(self.fault_for(op).latency_ms)
    }

    /// Counts the request and decides whether it is answered with an injected fault or with
    /// "Macie is not enabled".
    pub fn admit(&mut self, op: &str) -> Result<(), (ApiError, bool)> {
        self.counters.entry(op.to_string()).or_default().requests += 1;
        let f = self.fault_for(op);
        if f.throttle_rate > 0.0 && self.rng.random_bool(f.throttle_rate) {
            return Err((ApiError::new(ErrorCode::ThrottlingException, "Rate exceeded"), true));
        }
        if f.error_rate > 0.0 && self.rng.random_bool(f.error_rate) {
            return Err((
                ApiError::new(ErrorCode::InternalServerException, "Internal server error (injected)"),
                true,
            ));
        }
        if !self.macie_enabled {
            let mut e = ApiError::new(
                ErrorCode::AccessDeniedException,
                "Macie is not enabled for this AWS account. Enable Macie and try again.",
            );
            e.status = 401;
            return Err((e, false));
        }
        self.tick();
        Ok(())
    }

    /// Records the outcome of a call in the counters (and, for the write operations, in the
    /// call log when the call never reached the handler).
    pub fn record(&mut self, op: &str, region: &str, result: &Result<(), &ApiError>, injected: bool) {
        let c = self.counters.entry(op.to_string()).or_default();
        match result {
            Ok(()) => c.ok += 1,
            Err(e) => *c.errors.entry(e.code.as_str().to_string()).or_default() += 1,
        }
        if injected {
            c.injected += 1;
        }
        if let (Err(e), true) = (result, injected || !self.macie_enabled)
            && (op == "UpdateClassificationJob" || op == "BatchUpdateAutomatedDiscoveryAccounts")
        {
            let rec = self.new_record(region, op, e.code.as_str(), Some(e.message.clone()), injected);
            self.calls.push(rec);
        }
    }

    fn new_record(
        &mut self,
        region: &str,
        op: &str,
        outcome: &str,
        message: Option<String>,
        injected: bool,
    ) -> CallRecord {
        CallRecord {
            seq: self.calls.len() as u64 + 1,
            at: self.now(),
            region: region.to_string(),
            operation: op.to_string(),
            job_id: None,
            from_status: None,
            requested_status: None,
            to_status: None,
            valid: None,
            repeated: None,
            accounts: Vec::new(),
            outcome: outcome.to_string(),
            message,
            injected,
        }
    }

    // ---- the API -------------------------------------------------------------------------

    pub fn create_job(&mut self, region: &str, body: Value) -> ApiResult {
        let req: CreateJobRequest = decode(body)?;
        if let Some(id) = self.region_mut(Some(region)).client_tokens.get(&req.client_token) {
            let id = id.clone();
            return Ok(json!({ "jobId": id, "jobArn": self.job_arn(region, &id) }));
        }
        if req.name.is_empty() || req.name.len() > 500 {
            return Err(ApiError::validation("name must be 1 to 500 characters"));
        }
        if let Some(p) = req.sampling_percentage
            && !(1..=100).contains(&p)
        {
            return Err(ApiError::validation("samplingPercentage must be between 1 and 100"));
        }
        let defs = req.s3_job_definition.get("bucketDefinitions").filter(|v| !v.is_null());
        let criteria = req.s3_job_definition.get("bucketCriteria").filter(|v| !v.is_null());
        if defs.is_some() == criteria.is_some() {
            return Err(ApiError::validation(
                "s3JobDefinition must specify exactly one of bucketDefinitions or bucketCriteria",
            ));
        }
        let bucket_definitions: Option<Vec<S3BucketDefinitionForJob>> = match defs {
            Some(d) => Some(
                serde_json::from_value(d.clone())
                    .map_err(|e| ApiError::validation(format!("s3JobDefinition.bucketDefinitions: {e}")))?,
            ),
            None => None,
        };
        let initial_run = req.initial_run.unwrap_or(false);
        let status = match req.job_type {
            JobType::OneTime => JobStatus::Running,
            JobType::Scheduled => {
                if req.schedule_frequency.is_none() {
                    return Err(ApiError::validation(
                        "scheduleFrequency is required for a SCHEDULED job",
                    ));
                }
                if initial_run {
                    JobStatus::Running
                } else {
                    JobStatus::Idle
                }
            }
        };
        let now = self.now();
        let job_id = self.new_job_id();
        let details = json!({
            "allowListIds": req.allow_list_ids,
            "clientToken": req.client_token,
            "customDataIdentifierIds": req.custom_data_identifier_ids,
            "description": req.description,
            "initialRun": initial_run,
            "managedDataIdentifierIds": req.managed_data_identifier_ids,
            "managedDataIdentifierSelector": req.managed_data_identifier_selector,
            "samplingPercentage": req.sampling_percentage.unwrap_or(100),
            "scheduleFrequency": req.schedule_frequency,
            "s3JobDefinition": req.s3_job_definition,
            "statistics": { "approximateNumberOfObjectsToProcess": 0.0, "numberOfRuns": 0.0 },
            "tags": req.tags.unwrap_or_default(),
        });
        let job = Job {
            job_id: job_id.clone(),
            name: req.name,
            job_type: req.job_type,
            status,
            created_at: now,
            last_run_error: LastRunErrorCode::None,
            bucket_definitions,
            bucket_criteria: criteria.cloned(),
            paused: None,
            shown: None,
            last_request: None,
            details,
        };
        let r = self.region_mut(Some(region));
        r.client_tokens.insert(req.client_token, job_id.clone());
        r.jobs.insert(job_id.clone(), job);
        Ok(json!({ "jobId": job_id, "jobArn": self.job_arn(region, &job_id) }))
    }

    fn job_arn(&self, region: &str, job_id: &str) -> String {
        format!(
            "arn:aws:macie2:{region}:{}:classification-job/{job_id}",
            self.account_id
        )
    }

    pub fn describe_job(&mut self, region: &str, job_id: &str) -> ApiResult {
        let now = self.now();
        let arn = self.job_arn(region, job_id);
        let job = self
            .region_mut(Some(region))
            .jobs
            .get(job_id)
            .ok_or_else(|| not_found(job_id))?;
        let s = summary(job, now, true);
        let mut v = job.details.clone();
        let obj = v.as_object_mut().expect("details is an object");
        obj.retain(|_, v| !v.is_null());
        obj.insert("jobArn".into(), json!(arn));
        obj.insert("jobId".into(), json!(s.job_id));
        obj.insert("name".into(), json!(s.name));
        obj.insert("jobType".into(), json!(s.job_type));
        obj.insert("jobStatus".into(), json!(s.job_status));
        obj.insert("createdAt".into(), json!(s.created_at));
        obj.insert("lastRunErrorStatus".into(), json!(s.last_run_error_status));
        if job.status != JobStatus::Idle || job.details["statistics"]["numberOfRuns"] != json!(0.0) {
            obj.insert("lastRunTime".into(), json!(s.created_at));
        }
        if let Some(p) = s.user_paused_details {
            obj.insert("userPausedDetails".into(), json!(p));
        }
        self.report_status(&mut v);
        Ok(v)
    }

    /// Applies the `reportedStatus` fault to one job (object) or a list of jobs (array).
    fn report_status(&self, v: &mut Value) {
        if self.faults.reported_status.is_empty() {
            return;
        }
        let one = |job: &mut Value| {
            if let Some(s) = job["jobId"].as_str().and_then(|id| self.faults.reported_status.get(id)) {
                job["jobStatus"] = json!(s);
            }
        };
        match v {
            Value::Array(items) => items.iter_mut().for_each(one),
            job => one(job),
        }
    }

    pub fn list_jobs(&mut self, region: &str, body: Value) -> ApiResult {
        let req: ListJobsRequest = decode(body)?;
        let page = match req.max_results {
            Some(n) if n < 1 => return Err(ApiError::validation("maxResults must be at least 1")),
            Some(n) => n as usize,
            None => DEFAULT_JOBS_PAGE,
        };
        let page = self.faults.max_jobs_page.map_or(page, |cap| page.min(cap.max(1)));
        let fingerprint = fingerprint(&(&req.filter_criteria, &req.sort_criteria));
        let offset = match &req.next_token {
            Some(t) => decode_token(t, fingerprint)?,
            None => 0,
        };
        let now = self.now();
        let filter = req.filter_criteria.unwrap_or_default();
        for term in filter.includes.iter().chain(filter.excludes.iter()) {
            term.check()?;
        }
        let r = self.region_mut(Some(region));
        // Filter and sort references; only the page's jobs are turned into summaries.
        let mut items: Vec<&Job> = Vec::with_capacity(r.jobs.len());
        for job in r.jobs.values() {
            let mut keep = true;
            if !filter.includes.is_empty() || !filter.excludes.is_empty() {
                let s = summary(job, now, true);
                for t in &filter.includes {
                    keep &= t.matches(&s)?;
                }
                for t in &filter.excludes {
                    keep &= !t.matches(&s)?;
                }
            }
            if keep {
                items.push(job);
            }
        }
        let sort = req.sort_criteria.unwrap_or(SortCriteria {
            attribute_name: SortAttribute::CreatedAt,
            order_by: OrderBy::Asc,
        });
        items.sort_by(|a, b| {
            let ord = match sort.attribute_name {
                SortAttribute::CreatedAt => a.created_at.cmp(&b.created_at),
                SortAttribute::JobStatus => visible_status(a, now).as_str().cmp(visible_status(b, now).as_str()),
                SortAttribute::Name => a.name.cmp(&b.name),
                SortAttribute::JobType => a.job_type.as_str().cmp(b.job_type.as_str()),
            };
            let ord = if sort.order_by == OrderBy::Desc {
                ord.reverse()
            } else {
                ord
            };
            ord.then_with(|| a.job_id.cmp(&b.job_id))
        });
        let total = items.len();
        let page_items: Vec<JobSummary> = items
            .into_iter()
            .skip(offset)
            .take(page)
            .map(|j| summary(j, now, true))
            .collect();
        let end = offset + page_items.len();
        let mut out = json!({ "items": page_items });
        self.report_status(&mut out["items"]);
        if end < total {
            out["nextToken"] = json!(encode_token(end, fingerprint));
        }
        Ok(out)
    }

    pub fn update_job(&mut self, region: &str, job_id: &str, body: Value) -> ApiResult {
        let req: UpdateJobRequest = decode(body)?;
        let now = self.now();
        let delay = Duration::from_millis(self.faults.visibility_delay_ms);
        let mut rec = self.new_record(region, "UpdateClassificationJob", "OK", None, false);
        rec.job_id = Some(job_id.to_string());
        rec.requested_status = Some(req.job_status);
        let result = match self.region_mut(Some(region)).jobs.get_mut(job_id) {
            None => Err(not_found(job_id)),
            Some(job) => {
                let from = job.status;
                rec.from_status = Some(from);
                rec.valid = Some(from.can_update_to(req.job_status));
                rec.repeated = Some(job.last_request == Some(req.job_status));
                if !from.can_update_to(req.job_status) {
                    Err(ApiError::validation(invalid_transition_message(from, req.job_status)))
                } else {
                    let before = Shown {
                        status: job.status,
                        paused: job.paused,
                        until: now.0 + delay,
                    };
                    let to = match req.job_status {
                        JobStatus::UserPaused => {
                            job.paused = Some(Paused {
                                at: now,
                                resume_to: if from == JobStatus::Idle {
                                    JobStatus::Idle
                                } else {
                                    JobStatus::Running
                                },
                            });
                            JobStatus::UserPaused
                        }
                        JobStatus::Running => {
                            let to = job.paused.map_or(JobStatus::Running, |p| p.resume_to);
                            job.paused = None;
                            to
                        }
                        other => {
                            job.paused = None;
                            other
                        }
                    };
                    job.status = to;
                    job.last_request = Some(req.job_status);
                    if !delay.is_zero() && job.shown.is_none() {
                        job.shown = Some(before);
                    }
                    rec.to_status = Some(to);
                    Ok(json!({}))
                }
            }
        };
        if let Err(e) = &result {
            rec.outcome = e.code.as_str().to_string();
            rec.message = Some(e.message.clone());
        }
        self.calls.push(rec);
        result
    }

    pub fn batch_update_accounts(&mut self, region: &str, body: Value) -> ApiResult {
        let req: BatchUpdateRequest = decode(body)?;
        let accounts = req.accounts.unwrap_or_default();
        for (i, a) in accounts.iter().enumerate() {
            if !is_account_id(&a.account_id) {
                return Err(ApiError::validation(format!(
                    "accounts[{i}].accountId: {:?} is not a valid AWS account id",
                    a.account_id
                )));
            }
        }
        let mut rec = self.new_record(region, "BatchUpdateAutomatedDiscoveryAccounts", "OK", None, false);
        let r = self.region_mut(Some(region));
        let mut errors = Vec::new();
        for a in accounts {
            let (previous, outcome) = match r.accounts.get_mut(&a.account_id) {
                None => (None, "ACCOUNT_NOT_FOUND"),
                Some(acc) if acc.paused => (Some(acc.status), "ACCOUNT_PAUSED"),
                Some(acc) => {
                    let prev = acc.status;
                    acc.status = a.status;
                    (Some(prev), "OK")
                }
            };
            if outcome != "OK" {
                errors.push(json!({ "accountId": a.account_id, "errorCode": outcome }));
            }
            rec.accounts.push(AccountCall {
                account_id: a.account_id,
                status: a.status,
                previous,
                outcome: outcome.to_string(),
            });
        }
        self.calls.push(rec);
        if errors.is_empty() {
            Ok(json!({}))
        } else {
            Ok(json!({ "errors": errors }))
        }
    }

    pub fn list_accounts(
        &mut self,
        region: &str,
        account_ids: &[String],
        max_results: Option<&str>,
        next_token: Option<&str>,
    ) -> ApiResult {
        if account_ids.len() > 50 {
            return Err(ApiError::validation(format!(
                "accountIds: at most 50 account ids per request, got {}",
                account_ids.len()
            )));
        }
        let page = match max_results {
            None => DEFAULT_ACCOUNTS_PAGE,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=25).contains(&n) => n as usize,
                _ => {
                    return Err(ApiError::validation(format!(
                        "maxResults: {s:?} must be an integer from 1 to 25"
                    )));
                }
            },
        };
        let mut wanted: Vec<&String> = account_ids.iter().collect();
        wanted.sort();
        wanted.dedup();
        let fp = fingerprint(&wanted);
        let offset = match next_token {
            Some(t) => decode_token(t, fp)?,
            None => 0,
        };
        let r = self.region_mut(Some(region));
        let all: Vec<Value> = r
            .accounts
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.binary_search(id).is_ok())
            .map(|(id, a)| json!({ "accountId": id, "status": a.status }))
            .collect();
        let end = (offset + page).min(all.len());
        let items = all.get(offset.min(all.len())..end).unwrap_or_default().to_vec();
        let mut out = json!({ "items": items });
        if end < all.len() {
            out["nextToken"] = json!(encode_token(end, fp));
        }
        Ok(out)
    }

    pub fn get_discovery_configuration(&mut self, region: &str) -> ApiResult {
        let r = self.region_mut(Some(region));
        let mut out = json!({
            "autoEnableOrganizationMembers": r.auto_enable,
            "classificationScopeId": "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4",
            "firstEnabledAt": r.discovery_first_enabled,
            "lastUpdatedAt": r.discovery_updated,
            "sensitivityInspectionTemplateId": "b1c2d3e4f5a6b1c2d3e4f5a6b1c2d3e4",
            "status": r.discovery_status,
        });
        if r.discovery_status == DiscoveryStatus::Disabled {
            out["disabledAt"] = json!(r.discovery_updated);
        }
        Ok(out)
    }
}

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

fn not_found(job_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ResourceNotFoundException,
        format!("The classification job {job_id} does not exist."),
    )
}

fn invalid_transition_message(from: JobStatus, to: JobStatus) -> String {
    match from {
        JobStatus::Cancelled => "cannot update cancelled job".to_string(),
        JobStatus::Complete => "cannot update completed job".to_string(),
        _ => format!("cannot change the status of a job from {from} to {to}"),
    }
}

/// The status a read shows (the pre-update one while a visibility delay runs).
fn visible_status(job: &Job, now: Timestamp) -> JobStatus {
    match &job.shown {
        Some(s) if now.0 < s.until => s.status,
        _ => job.status,
    }
}

/// The job as a read shows it: with the pre-update status while a visibility delay runs.
fn summary(job: &Job, now: Timestamp, visible: bool) -> JobSummary {
    let (status, paused) = match (&job.shown, visible) {
        (Some(s), true) if now.0 < s.until => (s.status, s.paused),
        _ => (job.status, job.paused),
    };
    let user_paused_details = match (status, paused) {
        (JobStatus::UserPaused, Some(p)) => Some(UserPausedDetails {
            job_paused_at: p.at,
            job_expires_at: Timestamp(p.at.0 + PAUSE_EXPIRY),
            job_imminent_expiration_health_event_arn: (now.0 >= p.at.0 + HEALTH_EVENT_AFTER).then(|| {
                format!(
                    "arn:aws:health:us-east-1::event/MACIE/AWS_MACIE_CLASSIFICATION_JOB_EXPIRING/AWS_MACIE_CLASSIFICATION_JOB_EXPIRING_{}",
                    job.job_id
                )
            }),
        }),
        _ => None,
    };
    JobSummary {
        bucket_criteria: job.bucket_criteria.clone(),
        bucket_definitions: if job.bucket_criteria.is_some() {
            None
        } else {
            job.bucket_definitions.clone()
        },
        created_at: job.created_at,
        job_id: job.job_id.clone(),
        job_status: status,
        job_type: job.job_type,
        last_run_error_status: LastRunErrorStatus {
            code: job.last_run_error,
        },
        name: job.name.clone(),
        user_paused_details,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::validation(format!("Invalid request: {e}")))
}

fn fingerprint<T: Serialize>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Opaque page token: the offset and a fingerprint of the query it belongs to.
fn encode_token(offset: usize, fingerprint: u64) -> String {
    let raw = format!("v1:{offset}:{fingerprint:016x}");
    raw.bytes().map(|b| format!("{:02x}", b ^ 0x5a)).collect()
}

fn decode_token(token: &str, fingerprint: u64) -> Result<usize, ApiError> {
    let bad = || ApiError::validation("The nextToken is not valid for this request.");
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).map(|b| b ^ 0x5a))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = raw.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(off), Some(fp), None) if fp == format!("{fingerprint:016x}") => {
            off.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

// ---- request shapes --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateJobRequest {
    #[serde(default)]
    allow_list_ids: Option<Vec<String>>,
    client_token: String,
    #[serde(default)]
    custom_data_identifier_ids: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    initial_run: Option<bool>,
    job_type: JobType,
    #[serde(default)]
    managed_data_identifier_ids: Option<Vec<String>>,
    #[serde(default)]
    managed_data_identifier_selector: Option<String>,
    name: String,
    s3_job_definition: Value,
    #[serde(default)]
    sampling_percentage: Option<i64>,
    #[serde(default)]
    schedule_frequency: Option<Value>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateJobRequest {
    job_status: JobStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountUpdate {
    account_id: String,
    status: DiscoveryStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchUpdateRequest {
    #[serde(default)]
    accounts: Option<Vec<AccountUpdate>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListJobsRequest {
    #[serde(default)]
    filter_criteria: Option<FilterCriteria>,
    #[serde(default)]
    max_results: Option<i64>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    sort_criteria: Option<SortCriteria>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct FilterCriteria {
    #[serde(default)]
    includes: Vec<FilterTerm>,
    #[serde(default)]
    excludes: Vec<FilterTerm>,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Comparator {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    Ne,
    Contains,
    StartsWith,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum FilterKey {
    JobType,
    JobStatus,
    CreatedAt,
    Name,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilterTerm {
    comparator: Comparator,
    key: FilterKey,
    #[serde(default)]
    values: Vec<String>,
}

impl FilterTerm {
    fn check(&self) -> Result<(), ApiError> {
        if self.values.is_empty() {
            return Err(ApiError::validation(
                "filterCriteria: every term needs at least one value",
            ));
        }
        // CONTAINS and STARTS_WITH match text; every other comparator compares times.
        let textual = matches!(self.comparator, Comparator::Contains | Comparator::StartsWith);
        if self.key == FilterKey::CreatedAt && !textual {
            for v in &self.values {
                Timestamp::parse(v).map_err(|e| ApiError::validation(format!("filterCriteria createdAt: {e}")))?;
            }
        }
        Ok(())
    }

    /// EQ, GT, GTE, LT, LTE, CONTAINS, STARTS_WITH match when any value does; NE when none is
    /// equal. createdAt compares as time; the other keys compare as strings.
    fn matches(&self, job: &JobSummary) -> Result<bool, ApiError> {
        use std::cmp::Ordering;
        let field = match self.key {
            FilterKey::JobType => job.job_type.as_str().to_string(),
            FilterKey::JobStatus => job.job_status.as_str().to_string(),
            FilterKey::Name => job.name.clone(),
            FilterKey::CreatedAt => job.created_at.to_string(),
        };
        let cmp = |v: &str| -> Result<Ordering, ApiError> {
            Ok(if self.key == FilterKey::CreatedAt {
                let t = Timestamp::parse(v).map_err(ApiError::validation)?;
                job.created_at.millis().cmp(&t.millis())
            } else {
                field.as_str().cmp(v)
            })
        };
        let mut any = false;
        for v in &self.values {
            any |= match self.comparator {
                Comparator::Eq | Comparator::Ne => cmp(v)? == Ordering::Equal,
                Comparator::Gt => cmp(v)? == Ordering::Greater,
                Comparator::Gte => cmp(v)? != Ordering::Less,
                Comparator::Lt => cmp(v)? == Ordering::Less,
                Comparator::Lte => cmp(v)? != Ordering::Greater,
                Comparator::Contains => field.contains(v.as_str()),
                Comparator::StartsWith => field.starts_with(v.as_str()),
            };
        }
        Ok(if self.comparator == Comparator::Ne { !any } else { any })
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum SortAttribute {
    CreatedAt,
    JobStatus,
    Name,
    JobType,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum OrderBy {
    Asc,
    Desc,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct SortCriteria {
    #[serde(default = "default_sort_attr")]
    attribute_name: SortAttribute,
    #[serde(default = "default_order")]
    order_by: OrderBy,
}

fn default_sort_attr() -> SortAttribute {
    SortAttribute::CreatedAt
}

fn default_order() -> OrderBy {
    OrderBy::Asc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let t = encode_token(40, 7);
        assert_eq!(decode_token(&t, 7).unwrap(), 40);
        assert!(decode_token(&t, 8).is_err());
        assert!(decode_token("zz", 7).is_err());
        assert!(!t.contains("40"), "token should be opaque: {t}");
    }
}
