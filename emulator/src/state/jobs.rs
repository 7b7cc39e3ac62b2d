//! Classification jobs: the job model and CreateClassificationJob, DescribeClassificationJob,
//! ListClassificationJobs, UpdateClassificationJob, plus the service-side changes of the admin API.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use super::definition::JobDefinition;
use super::paging::{FilterCriteria, OrderBy, SortAttribute, SortCriteria, decode_token, encode_token, fingerprint};
use super::{ApiResult, Emulator, Scope, decode};
use crate::model::*;
use crate::seed::SeedJob;

/// How long a USER_PAUSED job stays paused before Macie expires it.
pub const PAUSE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// When the imminent-expiration health event appears (about 7 days before expiry).
pub const HEALTH_EVENT_AFTER: Duration = Duration::from_secs(23 * 24 * 3600);
/// Page size of ListClassificationJobs when the request has no maxResults.
pub const DEFAULT_JOBS_PAGE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paused {
    pub at: Timestamp,
    /// The status a resume returns to: IDLE for a scheduled job paused while idle, else RUNNING.
    pub resume_to: JobStatus,
}

/// A status change not yet visible to reads (delayed-visibility fault).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Shown {
    status: JobStatus,
    paused: Option<Paused>,
    pub(super) until: SystemTime,
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
    pub(super) shown: Option<Shown>,
    /// The status the last accepted UpdateClassificationJob asked for, until anything else
    /// changes the job: a second call asking for the same thing is a repeat.
    pub(super) last_request: Option<JobStatus>,
    /// Fields only DescribeClassificationJob returns, kept as sent.
    pub details: Value,
}

impl Emulator {
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
        let at = self.scope(job.aws_account_id.as_deref(), job.region.as_deref());
        let bucket_definitions = job.bucket_definitions.clone().or_else(|| {
            Some(vec![S3BucketDefinitionForJob {
                account_id: at.account.clone(),
                buckets: vec![format!("{}-data", job.name.to_lowercase().replace(' ', "-"))],
            }])
        });
        let details = json!({
            "clientToken": format!("seed-{job_id}"),
            "description": "",
            "initialRun": job.job_type == JobType::Scheduled,
            "managedDataIdentifierSelector": "RECOMMENDED",
            "samplingPercentage": 100,
            "scheduleFrequency": (job.job_type == JobType::Scheduled).then(|| json!({ "dailySchedule": {} })),
            "s3JobDefinition": { "bucketDefinitions": bucket_definitions },
            "statistics": { "approximateNumberOfObjectsToProcess": 0.0, "numberOfRuns": 1.0 },
            "tags": {},
        });
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
        self.region_mut(&at).jobs.insert(job_id.clone(), job);
        Ok(job_id)
    }

    /// A change Macie itself makes (a run completes, a scheduled job goes idle, the quota
    /// pauses a job) or any out-of-band change a test needs. Not subject to the update rules.
    pub fn set_status_service_side(
        &mut self,
        account: Option<&str>,
        region: Option<&str>,
        job_id: &str,
        to: JobStatus,
    ) -> Result<(), String> {
        let now = self.now();
        let at = self.scope(account, region);
        let job = self
            .region_mut(&at)
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

    pub fn remove_job(&mut self, account: Option<&str>, region: Option<&str>, job_id: &str) -> bool {
        let at = self.scope(account, region);
        self.region_mut(&at).jobs.remove(job_id).is_some()
    }

    /// CreateClassificationJob. In order: the create quota (a throttled call changes nothing),
    /// the input checks ([`JobDefinition::parse`]), then the clientToken: a token already used
    /// in this account and region returns the job it created, whatever else the request says.
    /// Every call is in the call log with the name and clientToken sent.
    pub fn create_job(&mut self, at: &Scope, body: Result<Value, ApiError>) -> ApiResult {
        let mut rec = self.new_record(at, "CreateClassificationJob", "OK", None, false);
        if let Ok(v) = &body {
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            rec.name = text("name");
            rec.client_token = text("clientToken");
        }
        let result = self.admit_create(at, body, &mut rec.repeated);
        match &result {
            Ok(v) => rec.job_id = v["jobId"].as_str().map(str::to_string),
            Err(e) => {
                rec.outcome = e.code.as_str().to_string();
                rec.message = Some(e.message.clone());
            }
        }
        self.calls.push(rec);
        result
    }

    fn admit_create(&mut self, at: &Scope, body: Result<Value, ApiError>, repeated: &mut Option<bool>) -> ApiResult {
        if !self.take_create_token(at) {
            return Err(ApiError::new(
                ErrorCode::ThrottlingException,
                "Rate exceeded: too many CreateClassificationJob requests",
            ));
        }
        let def = JobDefinition::parse(&body?)?;
        let existing = self.region_mut(at).client_tokens.get(&def.client_token).cloned();
        *repeated = Some(existing.is_some());
        if let Some(id) = existing {
            return Ok(json!({ "jobId": id, "jobArn": self.job_arn(at, &id) }));
        }
        let defs = def.s3_job_definition.get("bucketDefinitions").filter(|v| !v.is_null());
        let bucket_definitions = defs.and_then(Value::as_array).map(|defs| {
            defs.iter()
                .map(|d| S3BucketDefinitionForJob {
                    account_id: d["accountId"].as_str().unwrap_or_default().to_string(),
                    buckets: d["buckets"]
                        .as_array()
                        .map(|b| b.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default(),
                })
                .collect()
        });
        let bucket_criteria = def
            .s3_job_definition
            .get("bucketCriteria")
            .filter(|v| !v.is_null())
            .cloned();
        let status = match def.job_type {
            JobType::OneTime => JobStatus::Running,
            JobType::Scheduled if def.initial_run == Some(true) => JobStatus::Running,
            JobType::Scheduled => JobStatus::Idle,
        };
        let mut details = def.describe();
        details["statistics"] = json!({ "approximateNumberOfObjectsToProcess": 0.0, "numberOfRuns": 0.0 });
        let now = self.now();
        let job_id = self.new_job_id();
        let job = Job {
            job_id: job_id.clone(),
            name: def.name,
            job_type: def.job_type,
            status,
            created_at: now,
            last_run_error: LastRunErrorCode::None,
            bucket_definitions,
            bucket_criteria,
            paused: None,
            shown: None,
            last_request: None,
            details,
        };
        let r = self.region_mut(at);
        r.client_tokens.insert(def.client_token, job_id.clone());
        r.jobs.insert(job_id.clone(), job);
        Ok(json!({ "jobId": job_id, "jobArn": self.job_arn(at, &job_id) }))
    }

    fn job_arn(&self, at: &Scope, job_id: &str) -> String {
        format!(
            "arn:aws:macie2:{}:{}:classification-job/{job_id}",
            at.region, at.account
        )
    }

    pub fn describe_job(&mut self, at: &Scope, job_id: &str) -> ApiResult {
        let now = self.now();
        let arn = self.job_arn(at, job_id);
        let job = self.region_mut(at).jobs.get(job_id).ok_or_else(|| not_found(job_id))?;
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

    pub fn list_jobs(&mut self, at: &Scope, body: Value) -> ApiResult {
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
        let r = self.region_mut(at);
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

    pub fn update_job(&mut self, at: &Scope, job_id: &str, body: Value) -> ApiResult {
        let req: UpdateJobRequest = decode(body)?;
        let now = self.now();
        let delay = Duration::from_millis(self.faults.visibility_delay_ms);
        let mut rec = self.new_record(at, "UpdateClassificationJob", "OK", None, false);
        rec.job_id = Some(job_id.to_string());
        rec.requested_status = Some(req.job_status);
        let result = match self.region_mut(at).jobs.get_mut(job_id) {
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
}

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
pub(super) fn summary(job: &Job, now: Timestamp, visible: bool) -> JobSummary {
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateJobRequest {
    job_status: JobStatus,
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
