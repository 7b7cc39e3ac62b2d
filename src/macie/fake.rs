//! An in-process fake of the Macie job API for the reconcile-step tests: jobs by id, the
//! documented transition rules, failures on demand, and a log of every update it was sent.
//! Milliseconds per scenario, no HTTP. (End-to-end tests use `macie-emulator` over HTTP.)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::api::{JobsPage, JobsQuery, MacieApi, TERMINAL_STATUSES};
use super::{MacieError, Place};
use crate::api::DesiredJobStatus;
use crate::api::macie_job::ObservedJob;
use crate::job::plan::JobStatus;

/// One UpdateClassificationJob the fake was sent.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeUpdate {
    pub job_id: String,
    /// The job's status when the call arrived (None: no such job).
    pub from: Option<String>,
    pub to: DesiredJobStatus,
    /// `OK` or the error code answered.
    pub outcome: String,
    /// Whether the transition is one Macie allows.
    pub valid: bool,
}

#[derive(Default)]
struct State {
    /// region -> job id -> job.
    jobs: HashMap<String, BTreeMap<String, ObservedJob>>,
    /// Answers for the next list calls (popped one per call).
    list_failures: VecDeque<MacieError>,
    /// Job id -> the error every update of it is answered with.
    update_failures: HashMap<String, MacieError>,
    /// Job id -> the error every describe of it is answered with.
    describe_failures: HashMap<String, MacieError>,
    updates: Vec<FakeUpdate>,
    lists: u64,
    /// Job id -> client token of the jobs it created (or was given).
    tokens: HashMap<String, String>,
    /// The next create calls are answered with these (popped one per call); a `None` answer
    /// processes the call and then answers a lost response.
    create_failures: VecDeque<Option<MacieError>>,
    /// Every create call: (name, client token, outcome).
    creates: Vec<(String, String, String)>,
    /// Settings DescribeClassificationJob shows, by job id (`put_settings`).
    settings: HashMap<String, serde_json::Value>,
    describes: u64,
}

/// The fake. Shared as `Arc<FakeMacie>`; `MacieClients::with_api` puts it behind the clients.
#[derive(Default)]
pub struct FakeMacie {
    state: Mutex<State>,
}

impl FakeMacie {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a job.
    pub fn put(&self, region: &str, job_id: &str, name: &str, status: &str) {
        self.state().jobs.entry(region.to_string()).or_default().insert(
            job_id.to_string(),
            ObservedJob {
                job_id: job_id.to_string(),
                name: Some(name.to_string()),
                job_type: Some("ONE_TIME".into()),
                job_status: status.to_string(),
                ..Default::default()
            },
        );
    }

    /// A service-side or out-of-band status change.
    pub fn set_status(&self, region: &str, job_id: &str, status: &str) {
        if let Some(j) = self.state().jobs.get_mut(region).and_then(|r| r.get_mut(job_id)) {
            j.job_status = status.to_string();
        }
    }

    pub fn status(&self, region: &str, job_id: &str) -> Option<String> {
        self.state()
            .jobs
            .get(region)
            .and_then(|r| r.get(job_id))
            .map(|j| j.job_status.clone())
    }

    /// Every update of `job_id` is answered with `err` (None: processed again).
    pub fn fail_updates(&self, job_id: &str, err: Option<MacieError>) {
        let mut s = self.state();
        match err {
            Some(e) => s.update_failures.insert(job_id.to_string(), e),
            None => s.update_failures.remove(job_id),
        };
    }

    /// Every describe of `job_id` (DescribeClassificationJob) is answered with `err` (None:
    /// answered again).
    pub fn fail_describes(&self, job_id: &str, err: Option<MacieError>) {
        let mut s = self.state();
        match err {
            Some(e) => s.describe_failures.insert(job_id.to_string(), e),
            None => s.describe_failures.remove(job_id),
        };
    }

    /// The next `n` list calls are answered with `err`.
    pub fn fail_lists(&self, n: usize, err: MacieError) {
        self.state().list_failures.extend(std::iter::repeat_n(err, n));
    }

    /// Every update sent so far.
    pub fn updates(&self) -> Vec<FakeUpdate> {
        self.state().updates.clone()
    }

    /// List calls so far.
    pub fn lists(&self) -> u64 {
        self.state().lists
    }

    /// DescribeClassificationJob calls so far.
    pub fn describes(&self) -> u64 {
        self.state().describes
    }

    /// Sets the client token a job was created with.
    pub fn set_token(&self, job_id: &str, token: &str) {
        self.state().tokens.insert(job_id.to_string(), token.to_string());
    }

    /// The next create is answered with `err` (`None`: processed, then the answer is lost).
    pub fn fail_next_create(&self, err: Option<MacieError>) {
        self.state().create_failures.push_back(err);
    }

    /// The jobs of a region.
    pub fn jobs(&self, region: &str) -> Vec<ObservedJob> {
        self.state()
            .jobs
            .get(region)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The client token a job was created with, if any.
    pub fn token(&self, job_id: &str) -> Option<String> {
        self.state().tokens.get(job_id).cloned()
    }

    /// Every create call: (name, client token, outcome).
    /// The settings DescribeClassificationJob shows for `job_id` (in spec.definition's shape).
    pub fn put_settings(&self, job_id: &str, settings: serde_json::Value) {
        self.state().settings.insert(job_id.to_string(), settings);
    }

    pub fn creates(&self) -> Vec<(String, String, String)> {
        self.state().creates.clone()
    }
}

impl MacieApi for FakeMacie {
    fn list_jobs_page<'a>(
        &'a self,
        place: &'a Place,
        query: JobsQuery<'a>,
        page_size: i32,
        token: Option<String>,
    ) -> BoxFuture<'a, Result<JobsPage, MacieError>> {
        let mut s = self.state();
        s.lists += 1;
        let result = match s.list_failures.pop_front() {
            Some(e) => Err(e),
            None => {
                let start: usize = token.and_then(|t| t.parse().ok()).unwrap_or(0);
                let size = usize::try_from(page_size.max(1)).unwrap_or(1);
                let all: Vec<ObservedJob> = s
                    .jobs
                    .get(&place.region)
                    .map(|r| {
                        r.values()
                            .filter(|j| match query {
                                JobsQuery::NotTerminal => !TERMINAL_STATUSES.contains(&j.job_status.as_str()),
                                JobsQuery::Named(n) => j.name.as_deref() == Some(n),
                                JobsQuery::All => true,
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let end = (start + size).min(all.len());
                Ok(JobsPage {
                    jobs: all.get(start..end).map(<[_]>::to_vec).unwrap_or_default(),
                    next_token: (end < all.len()).then(|| end.to_string()),
                })
            }
        };
        Box::pin(async move { result })
    }

    fn update_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
        to: DesiredJobStatus,
    ) -> BoxFuture<'a, Result<(), MacieError>> {
        let mut s = self.state();
        let from = s
            .jobs
            .get(&place.region)
            .and_then(|r| r.get(job_id))
            .map(|j| j.job_status.clone());
        let valid = from.as_deref().is_some_and(|f| JobStatus::parse(f).can_update_to(to));
        let result = if let Some(e) = s.update_failures.get(job_id) {
            Err(e.clone())
        } else if from.is_none() {
            Err(MacieError::NotFound {
                code: "ResourceNotFoundException".into(),
                message: format!("job {job_id} not found"),
            })
        } else if !valid {
            Err(MacieError::Rejected {
                code: "ValidationException".into(),
                message: format!(
                    "cannot update job from {} to {}",
                    from.clone().unwrap_or_default(),
                    to.as_str()
                ),
            })
        } else {
            if let Some(j) = s.jobs.get_mut(&place.region).and_then(|r| r.get_mut(job_id)) {
                // Resuming lands on RUNNING here (the fake has no scheduled jobs).
                j.job_status = to.as_str().to_string();
            }
            Ok(())
        };
        s.updates.push(FakeUpdate {
            job_id: job_id.to_string(),
            from,
            to,
            outcome: result.as_ref().map_or_else(|e| e.code().to_string(), |_| "OK".into()),
            valid,
        });
        Box::pin(async move { result })
    }

    fn create_job<'a>(
        &'a self,
        place: &'a Place,
        job: &'a super::api::NewJob<'a>,
    ) -> BoxFuture<'a, Result<String, MacieError>> {
        let mut s = self.state();
        let failure = s.create_failures.pop_front();
        let result = match failure {
            Some(Some(e)) => Err(e),
            _ => {
                // Idempotent on the client token, as Macie is.
                let existing = s
                    .tokens
                    .iter()
                    .find(|(_, t)| *t == job.client_token)
                    .map(|(id, _)| id.clone());
                let id = existing.unwrap_or_else(|| {
                    let id = format!("created{}", s.tokens.len() + 1);
                    s.tokens.insert(id.clone(), job.client_token.to_string());
                    let status = match job.definition.job_type {
                        crate::api::job_definition::JobType::OneTime => "RUNNING",
                        crate::api::job_definition::JobType::Scheduled => "IDLE",
                    };
                    s.jobs.entry(place.region.clone()).or_default().insert(
                        id.clone(),
                        ObservedJob {
                            job_id: id.clone(),
                            name: Some(job.name.to_string()),
                            job_type: Some(job.definition.job_type.as_str().into()),
                            job_status: status.into(),
                            ..Default::default()
                        },
                    );
                    id
                });
                match failure {
                    Some(None) => Err(MacieError::Uncertain {
                        code: "ResponseError".into(),
                        message: "connection reset".into(),
                    }),
                    _ => Ok(id),
                }
            }
        };
        let outcome = result.as_ref().map_or_else(|e| e.code().to_string(), |_| "OK".into());
        s.creates
            .push((job.name.to_string(), job.client_token.to_string(), outcome));
        Box::pin(async move { result })
    }

    fn job_client_token<'a>(
        &'a self,
        _place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, MacieError>> {
        let token = self.state().tokens.get(job_id).cloned();
        Box::pin(async move { Ok(token) })
    }

    fn job_settings<'a>(
        &'a self,
        _place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, MacieError>> {
        let mut s = self.state();
        s.describes += 1;
        let result = match s.describe_failures.get(job_id) {
            Some(e) => Err(e.clone()),
            None => Ok(s.settings.get(job_id).cloned()),
        };
        Box::pin(async move { result })
    }

    fn describe_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedJob>, MacieError>> {
        let mut s = self.state();
        s.describes += 1;
        let result = match s.describe_failures.get(job_id) {
            Some(e) => Err(e.clone()),
            None => Ok(s.jobs.get(&place.region).and_then(|r| r.get(job_id)).cloned()),
        };
        Box::pin(async move { result })
    }
}
