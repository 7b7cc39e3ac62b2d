//! The shared job sweep: per place (MacieAccount and region), one paginated ListClassificationJobs sweep per poll
//! interval feeds a snapshot that every MacieJob reconcile reads. A sweep reports which jobs
//! changed, appeared or vanished, so only the resources that name them are reconciled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use super::api::{JobsPage, JobsQuery, MacieApi, TERMINAL_STATUSES};
use super::{MacieClients, MacieError, Place};
use crate::api::macie_job::{ObservedJob, UserPausedDetails};
use crate::runtime::metrics::Metrics;
use crate::runtime::regions::RegionTasks;

/// Default ListClassificationJobs page size. Macie documents no bound for maxResults; 100 keeps
/// each response small while an account with 1,000 jobs costs 10 calls per sweep.
pub const DEFAULT_PAGE_SIZE: i32 = 100;

/// Sweeps that must fail in a row before the resources of the place say so: one failed sweep
/// (a page that failed after its retries) leaves every resource's condition as it was.
pub const SWEEP_FAILURES_REPORTED: u32 = 3;

/// All jobs of a place as one sweep saw them.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// When the sweep started: any change made before this instant is in the snapshot, unless
    /// Macie shows it late.
    pub started_at: Timestamp,
    pub jobs: HashMap<String, ObservedJob>,
    /// Job ids by exact name.
    pub by_name: HashMap<String, Vec<String>>,
    pub pages: u32,
    /// Job ids this sweep could not read for the resources that name them (a failed
    /// DescribeClassificationJob, or a read left to a later sweep): those resources say so, and
    /// the rest of the place is unaffected.
    pub unread_ids: HashMap<String, Unread>,
    /// Names whose lookup (ListClassificationJobs by name) did not succeed, likewise.
    pub unread_names: HashMap<String, Unread>,
}

impl Snapshot {
    pub fn new(started_at: Timestamp, list: Vec<ObservedJob>, pages: u32) -> Snapshot {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for j in &list {
            if let Some(n) = &j.name {
                by_name.entry(n.clone()).or_default().push(j.job_id.clone());
            }
        }
        Snapshot {
            started_at,
            jobs: list.into_iter().map(|j| (j.job_id.clone(), j)).collect(),
            by_name,
            pages,
            unread_ids: HashMap::new(),
            unread_names: HashMap::new(),
        }
    }

    /// The snapshot of a sweep, with what it could not read.
    pub fn of(started_at: Timestamp, swept: Swept) -> Snapshot {
        Snapshot {
            unread_ids: swept.unread_ids,
            unread_names: swept.unread_names,
            ..Snapshot::new(started_at, swept.jobs, swept.pages)
        }
    }
}

/// A read a sweep makes for resources (a DescribeClassificationJob of a job id, a
/// ListClassificationJobs by name) that did not give an answer this sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unread {
    /// Not made yet: the sweep had made its [`MAX_READS_PER_SWEEP`] reads; a later sweep makes it.
    Deferred,
    /// Failed `failures` times in a row with `error`; tried again at a sweep after a backoff.
    Failed {
        operation: &'static str,
        error: MacieError,
        failures: u32,
    },
}

/// Most reads a sweep makes besides its list (describes of ids no list shows, lookups of names):
/// one resource naming many unknown jobs cannot make a sweep of its place slow for the others.
pub const MAX_READS_PER_SWEEP: usize = 200;

/// What a read for resources is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadKey {
    Job(String),
    Name(String),
}

/// A read that failed: the failure, how many in a row, and when to try again.
#[derive(Debug, Clone)]
pub struct FailedRead {
    pub unread: Unread,
    pub retry_at: Timestamp,
}

/// Whether a read is made this sweep: None to make it (and it takes one of the sweep's reads),
/// else why not (its failure while it waits its backoff, or the bound reached).
pub fn hold_back(failed: Option<&FailedRead>, now: Timestamp, reads_left: &mut usize) -> Option<Unread> {
    if let Some(f) = failed
        && f.retry_at > now
    {
        return Some(f.unread.clone());
    }
    if *reads_left == 0 {
        return Some(Unread::Deferred);
    }
    *reads_left -= 1;
    None
}

/// Records a failed read: the next try after a backoff that grows with the failures.
fn read_failed(
    history: &mut History,
    key: ReadKey,
    operation: &'static str,
    error: MacieError,
    now: Timestamp,
) -> Unread {
    let failures = match history.failed.get(&key).map(|f| &f.unread) {
        Some(Unread::Failed { failures, .. }) => failures + 1,
        _ => 1,
    };
    tracing::warn!(?key, %error, failures, "{operation} for a resource failed; retried with backoff");
    let unread = Unread::Failed {
        operation,
        error,
        failures,
    };
    let retry_at = now
        .checked_add(crate::runtime::backoff(failures))
        .unwrap_or(Timestamp::MAX);
    history.failed.insert(
        key,
        FailedRead {
            unread: unread.clone(),
            retry_at,
        },
    );
    unread
}

/// What the sweeps of one place have found so far.
#[derive(Debug, Clone, Default)]
pub struct RegionView {
    /// The last successful sweep.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Set when the latest sweep failed (after the SDK's retries and the page retries).
    pub error: Option<MacieError>,
    /// Sweeps that failed in a row (0 after a success).
    pub failures: u32,
    /// Completed sweeps, successful or not.
    pub sweeps: u64,
    /// Reads that confirmed a call and no sweep has overtaken yet, by job id (filled by
    /// `JobPoller::view`, not published by the sweeps).
    pub confirmed: HashMap<String, Confirmed>,
}

/// Which resources a sweep affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Every resource of the place (first sweep, or the sweep error state changed).
    All,
    /// Resources naming one of these job ids or exact names.
    Jobs {
        ids: HashSet<String>,
        names: HashSet<String>,
    },
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        matches!(self, Changes::Jobs { ids, names } if ids.is_empty() && names.is_empty())
    }

    /// Whether a resource naming `job_id` or `job_name` is affected.
    pub fn affects(&self, job_id: Option<&str>, job_name: Option<&str>) -> bool {
        match self {
            Changes::All => true,
            Changes::Jobs { ids, names } => {
                job_id.is_some_and(|i| ids.contains(i)) || job_name.is_some_and(|n| names.contains(n))
            }
        }
    }
}

/// Jobs that differ between two snapshots (changed, appeared or vanished), by id and by name.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Changes {
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for (id, job) in &new.jobs {
        match old.jobs.get(id) {
            Some(prev) if prev == job => {}
            Some(prev) => {
                ids.insert(id.clone());
                names.extend(prev.name.clone());
                names.extend(job.name.clone());
            }
            None => {
                ids.insert(id.clone());
                names.extend(job.name.clone());
            }
        }
    }
    for (id, prev) in &old.jobs {
        if !new.jobs.contains_key(id) {
            ids.insert(id.clone());
            names.extend(prev.name.clone());
        }
    }
    // A read that failed, recovered, or failed again.
    let differ = |a: &HashMap<String, Unread>, b: &HashMap<String, Unread>| -> Vec<String> {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .chain(b.iter().filter(|(k, _)| !a.contains_key(*k)))
            .map(|(k, _)| k.clone())
            .collect()
    };
    ids.extend(differ(&old.unread_ids, &new.unread_ids));
    names.extend(differ(&old.unread_names, &new.unread_names));
    Changes::Jobs { ids, names }
}

pub(crate) fn time(dt: Option<&aws_sdk_macie2::primitives::DateTime>) -> Option<Time> {
    dt.and_then(|d| Timestamp::new(d.secs(), d.subsec_nanos() as i32).ok())
        .map(Time)
}

/// Converts the SDK's JobSummary (statuses newer than this SDK keep their text).
pub fn observed(j: &aws_sdk_macie2::types::JobSummary) -> ObservedJob {
    ObservedJob {
        job_id: j.job_id().unwrap_or_default().to_string(),
        name: j.name().map(str::to_string),
        job_type: j.job_type().map(|t| t.as_str().to_string()),
        job_status: j.job_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
        created_at: time(j.created_at()),
        last_run_error_status: j
            .last_run_error_status()
            .and_then(|s| s.code())
            .map(|c| c.as_str().to_string()),
        user_paused_details: j.user_paused_details().map(|p| UserPausedDetails {
            job_paused_at: time(p.job_paused_at()),
            job_expires_at: time(p.job_expires_at()),
            job_imminent_expiration_health_event_arn: p.job_imminent_expiration_health_event_arn().map(str::to_string),
        }),
    }
}

/// Every page of one ListClassificationJobs query, in a stable order.
pub async fn list_all_jobs(
    api: &dyn MacieApi,
    place: &Place,
    query: JobsQuery<'_>,
    page_size: i32,
    metrics: &Metrics,
) -> Result<(Vec<ObservedJob>, u32), MacieError> {
    let mut token: Option<String> = None;
    let mut jobs = Vec::new();
    let mut pages = 0u32;
    loop {
        let page = list_page(api, place, query, page_size, token.take(), metrics).await?;
        pages += 1;
        jobs.extend(page.jobs);
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    Ok((jobs, pages))
}

/// What a place's sweeper keeps between sweeps. A COMPLETE or CANCELLED job never changes
/// again, so once seen it needs no further reads: sweeps list only the jobs that can change.
#[derive(Debug, Default)]
pub struct History {
    /// Jobs seen COMPLETE or CANCELLED, by id.
    pub terminal: HashMap<String, ObservedJob>,
    /// Names whose jobs (terminal ones included) were listed once.
    pub names: HashSet<String>,
    /// Job ids Macie does not know.
    pub missing: HashSet<String>,
    /// Reads for resources that failed, until one succeeds.
    pub failed: HashMap<ReadKey, FailedRead>,
}

/// What one sweep found: the jobs, the pages of its list, and what it could not read.
#[derive(Debug, Default)]
pub struct Swept {
    pub jobs: Vec<ObservedJob>,
    pub pages: u32,
    pub unread_ids: HashMap<String, Unread>,
    pub unread_names: HashMap<String, Unread>,
}

/// Job ids and exact names the admitted resources of a place name.
pub type Wanted = Arc<dyn Fn(&Place) -> (HashSet<String>, HashSet<String>) + Send + Sync>;

/// Whether a job is COMPLETE or CANCELLED (it never changes again).
pub fn is_terminal(job: &ObservedJob) -> bool {
    TERMINAL_STATUSES.contains(&job.job_status.as_str())
}

/// What one sweep asks besides the jobs that can change.
pub struct SweepAsk<'a> {
    pub place: &'a Place,
    pub page_size: i32,
    /// The previous snapshot: a job in it that can change and is missing from this sweep has
    /// turned terminal (or gone): one DescribeClassificationJob tells.
    pub prev: Option<&'a Snapshot>,
    /// What resources name: ids no sweep shows are described once, names listed once (their
    /// terminal jobs count for AmbiguousName and TerminalState).
    pub wanted: (HashSet<String>, HashSet<String>),
}

/// One sweep: every page of the jobs that can change, plus what it takes to know the terminal
/// jobs that matter (described when they drop out, or when a resource names them), merged with
/// `history`; and the pages of the sweep proper. Only the list fails the sweep: a read for
/// some resources that fails (or waits for a later sweep) is reported on those resources.
pub async fn sweep(
    api: &dyn MacieApi,
    ask: SweepAsk<'_>,
    history: &mut History,
    metrics: &Metrics,
) -> Result<Swept, MacieError> {
    let SweepAsk {
        place,
        page_size,
        prev,
        wanted: (ids, names),
    } = ask;
    let (live, pages) = list_all_jobs(api, place, JobsQuery::NotTerminal, page_size, metrics).await?;
    let live_ids: HashSet<String> = live.iter().map(|j| j.job_id.clone()).collect();
    let mut extra: Vec<ObservedJob> = Vec::new();
    let now = crate::runtime::clock::now();
    let mut reads_left = MAX_READS_PER_SWEEP;
    let (mut unread_ids, mut unread_names) = (HashMap::new(), HashMap::new());
    // Jobs that dropped out of the list (turned terminal, or gone), with their names: a name
    // whose job cannot be read now is not reported as naming nothing.
    let dropped: HashMap<String, Option<String>> = prev
        .map(|p| {
            p.jobs
                .values()
                .filter(|j| !is_terminal(j) && !live_ids.contains(&j.job_id))
                .map(|j| (j.job_id.clone(), j.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut describe: Vec<String> = dropped.keys().cloned().collect();
    describe
        .extend(ids.into_iter().filter(|id| {
            !live_ids.contains(id) && !history.terminal.contains_key(id) && !history.missing.contains(id)
        }));
    describe.sort();
    describe.dedup();
    for id in describe {
        let key = ReadKey::Job(id.clone());
        let held = hold_back(history.failed.get(&key), now, &mut reads_left);
        let unread = match held {
            Some(unread) => unread,
            None => {
                let r = api.describe_job(place, &id).await;
                metrics.call("DescribeClassificationJob", MacieError::outcome(&r));
                match r {
                    Ok(found) => {
                        history.failed.remove(&key);
                        match found {
                            Some(j) if is_terminal(&j) => {
                                history.terminal.insert(id, j);
                            }
                            Some(j) => extra.push(j),
                            None => {
                                history.missing.insert(id);
                            }
                        }
                        continue;
                    }
                    Err(e) => read_failed(history, key, "DescribeClassificationJob", e, now),
                }
            }
        };
        if let Some(Some(name)) = dropped.get(&id) {
            unread_names.insert(name.clone(), unread.clone());
        }
        unread_ids.insert(id, unread);
    }
    let mut names: Vec<String> = names.into_iter().filter(|n| !history.names.contains(n)).collect();
    names.sort();
    for name in names {
        let key = ReadKey::Name(name.clone());
        if let Some(unread) = hold_back(history.failed.get(&key), now, &mut reads_left) {
            unread_names.insert(name, unread);
            continue;
        }
        let jobs = match list_all_jobs(api, place, JobsQuery::Named(&name), page_size, metrics).await {
            Ok((jobs, _)) => jobs,
            Err(e) => {
                let unread = read_failed(history, key, "ListClassificationJobs", e, now);
                unread_names.insert(name, unread);
                continue;
            }
        };
        history.failed.remove(&key);
        for j in jobs {
            if is_terminal(&j) {
                history.terminal.insert(j.job_id.clone(), j);
            } else if !live_ids.contains(&j.job_id) {
                extra.push(j);
            }
        }
        history.names.insert(name);
    }
    let mut all = live;
    let mut seen = live_ids;
    for j in extra.into_iter().chain(history.terminal.values().cloned()) {
        if seen.insert(j.job_id.clone()) {
            all.push(j);
        }
    }
    Ok(Swept {
        jobs: all,
        pages,
        unread_ids,
        unread_names,
    })
}

/// Extra tries of one failed page (after the SDK's own retries) before the sweep fails: a
/// failed page is retried, not the whole sweep.
pub const PAGE_RETRIES: u32 = 2;

/// One page, retried on throttling and uncertain failures with a jittered backoff.
async fn list_page(
    api: &dyn MacieApi,
    place: &Place,
    query: JobsQuery<'_>,
    page_size: i32,
    token: Option<String>,
    metrics: &Metrics,
) -> Result<JobsPage, MacieError> {
    let mut tries = 0u32;
    loop {
        let resp = api.list_jobs_page(place, query, page_size, token.clone()).await;
        metrics.call("ListClassificationJobs", MacieError::outcome(&resp));
        match resp {
            Err(e @ (MacieError::Throttled { .. } | MacieError::Uncertain { .. })) if tries < PAGE_RETRIES => {
                tries += 1;
                let wait = crate::runtime::backoff(tries) / 2;
                tracing::debug!(error = %e, ?wait, "ListClassificationJobs page failed; retrying the page");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Called after each sweep with the place, what changed, and when the sweep started if it
/// succeeded (so that resources waiting for a sweep newer than the one they saw can be woken
/// even when nothing changed).
pub type OnChange = Arc<dyn Fn(&Place, &Changes, Option<Timestamp>) + Send + Sync>;

/// Whether any admitted resource still uses a place (checked after each sweep, under the
/// poller's lock, so that a resource created meanwhile either is seen here or starts a new
/// sweeper).
pub type InUse = Arc<dyn Fn(&Place) -> bool + Send + Sync>;

/// A job read on its own after a call (DescribeClassificationJob), to confirm the call before
/// the next sweep: what it showed, when the read started, and the status the job had when the
/// call was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmed {
    pub started_at: Timestamp,
    pub job: ObservedJob,
    pub from: String,
    /// Until when it stands against a sweep that still shows `from` (Macie can show a change
    /// later in a list than in a read of the job).
    pub holds_until: Timestamp,
}

/// The confirmations not yet overtaken by a sweep, by (place, job id).
type Confirmations = Arc<std::sync::Mutex<HashMap<(Place, String), Confirmed>>>;

/// DescribeClassificationJob calls of confirmations in flight at once (all places).
const CONFIRMING_AT_ONCE: usize = 8;

/// Whether a sweep's `snapshot` overtakes a confirmation: it shows the job in another status
/// than when the call was made (the change, or a later one), or the confirmation's hold ran
/// out. Until then a sweep that still shows the old status is a list behind the read.
/// A create's confirmation (`from` empty: the job did not exist) is overtaken once a sweep
/// lists the job.
pub fn overtaken(c: &Confirmed, snapshot: &Snapshot) -> bool {
    snapshot.started_at > c.holds_until
        || match snapshot.jobs.get(&c.job.job_id) {
            Some(j) => j.job_status != c.from,
            None => !c.from.is_empty(),
        }
}

/// Runs one sweeper task per place (the shared per-place registry), started on first use by
/// an admitted resource and stopped after a sweep when no admitted resource uses the place
/// any more.
pub struct JobPoller {
    clients: Arc<MacieClients>,
    page_size: i32,
    interval: Duration,
    on_change: OnChange,
    in_use: InUse,
    wanted: Wanted,
    places: RegionTasks<watch::Receiver<RegionView>>,
    /// Sweeps only when told (`sweep_now`), on the caller's task: the perturbation harness
    /// drives them in virtual time. None in the operator.
    manual: Option<std::sync::Mutex<HashMap<Place, Manual>>>,
    confirmed: Confirmations,
    confirming: Arc<tokio::sync::Semaphore>,
    /// A manual poller's confirmations to make (`confirm_now`): (place, job, call time, hold).
    pending_confirms: std::sync::Mutex<Vec<PendingConfirm>>,
}

type PendingConfirm = (Place, ObservedJob, Timestamp, Duration);

/// A manual poller's place: its view and the history of its sweeps.
type Manual = (watch::Sender<RegionView>, History);

/// What a sweeper needs to stop itself.
struct Retire {
    retire: crate::runtime::regions::Retire<watch::Receiver<RegionView>>,
    in_use: InUse,
}

impl JobPoller {
    pub fn new(
        clients: Arc<MacieClients>,
        page_size: i32,
        interval: Duration,
        on_change: OnChange,
        in_use: InUse,
        wanted: Wanted,
    ) -> JobPoller {
        JobPoller {
            clients,
            page_size,
            interval,
            on_change,
            in_use,
            wanted,
            places: RegionTasks::default(),
            manual: None,
            confirmed: Arc::default(),
            confirming: Arc::new(tokio::sync::Semaphore::new(CONFIRMING_AT_ONCE)),
            pending_confirms: std::sync::Mutex::default(),
        }
    }

    /// A manual poller's confirmation reads of `place`, now, on the caller's task: each call
    /// waiting for one gets one DescribeClassificationJob (recorded as `confirm` does); one whose
    /// job still shows the old status waits for the next.
    pub async fn confirm_now(&self, place: &Place) {
        let due: Vec<PendingConfirm> = {
            let mut pending = lock(&self.pending_confirms);
            let (due, rest) = std::mem::take(&mut *pending).into_iter().partition(|p| p.0 == *place);
            *pending = rest;
            due
        };
        for (place, job, after, hold) in due {
            let swept = self.subscribe(&place).borrow().snapshot.as_ref().map(|s| s.started_at);
            if swept.is_some_and(|t| t > after) {
                continue;
            }
            let task = self.confirming_task(&place, &job, after, hold);
            if task.read_once().await == Some(false) {
                lock(&self.pending_confirms).push((place, job, after, hold));
            }
        }
    }

    /// The confirmations of `place` that no sweep has overtaken yet, by job id.
    /// The confirmations of `ids` at the place of `view` that no sweep has overtaken, put into
    /// `view` (one lookup per id: a reconcile asks for its own job only).
    pub fn add_confirmations(&self, place: &Place, view: &mut RegionView, ids: &[&str]) {
        let snapshot = view.snapshot.as_deref();
        let standing = |c: &Confirmed| snapshot.is_none_or(|s| s.started_at <= c.started_at || !overtaken(c, s));
        let all = lock(&self.confirmed);
        for id in ids {
            if let Some(c) = all.get(&(place.clone(), id.to_string())).filter(|c| standing(c)) {
                view.confirmed.insert(id.to_string(), c.clone());
            }
        }
    }

    /// Confirms a call made at `after` on `job` (then in status `from`) before the next
    /// sweep: DescribeClassificationJob 1 s after the call, then 2, 4, 8, ... s later while
    /// Macie still shows `from`, as long as no sweep that started after the call has come;
    /// each read is recorded (for `hold` against sweeps that still show `from`) and the
    /// resources naming the job are looked at. A manual poller (the harness) confirms by its
    /// sweeps only.
    pub fn confirm(&self, place: &Place, job: &ObservedJob, after: Timestamp, hold: Duration) {
        if self.manual.is_some() {
            lock(&self.pending_confirms).push((place.clone(), job.clone(), after, hold));
            return;
        }
        tokio::spawn(self.confirming_task(place, job, after, hold).run());
    }

    fn confirming_task(&self, place: &Place, job: &ObservedJob, after: Timestamp, hold: Duration) -> Confirming {
        Confirming {
            place: place.clone(),
            job_id: job.job_id.clone(),
            name: job.name.clone(),
            from: job.job_status.clone(),
            after,
            hold,
            interval: self.interval,
            view: self.subscribe(place),
            clients: self.clients.clone(),
            on_change: self.on_change.clone(),
            confirmed: self.confirmed.clone(),
            permits: self.confirming.clone(),
        }
    }

    /// A poller that sweeps only when `sweep_now` is called (no task is started).
    pub fn manual(mut self) -> JobPoller {
        self.manual = Some(std::sync::Mutex::default());
        self
    }

    /// One sweep of `place` now, on the caller's task (a manual poller only).
    pub async fn sweep_now(&self, place: &Place) {
        if let Some(taken) = self.begin_sweep(place).await {
            self.finish_sweep(place, taken);
        }
    }

    /// A manual poller's sweep of `place`, read from Macie now and published only by
    /// `finish_sweep` (a sweep that runs while reconciles act).
    pub async fn begin_sweep(&self, place: &Place) -> Option<Taken> {
        let manual = self.manual.as_ref()?;
        let (prev, mut history) = {
            let mut m = manual.lock().unwrap_or_else(|p| p.into_inner());
            let (tx, history) = m
                .entry(place.clone())
                .or_insert_with(|| (watch::channel(RegionView::default()).0, History::default()));
            (tx.borrow().clone(), std::mem::take(history))
        };
        let taken = take_sweep(&self.sweeper(place), &mut history, &prev).await;
        if let Some(entry) = manual.lock().unwrap_or_else(|p| p.into_inner()).get_mut(place) {
            entry.1 = history;
        }
        Some(taken)
    }

    /// Publishes a sweep `begin_sweep` took.
    pub fn finish_sweep(&self, place: &Place, taken: Taken) {
        let Some(manual) = &self.manual else { return };
        let tx = manual
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(place)
            .map(|(tx, _)| tx.clone());
        if let Some(tx) = tx {
            publish_sweep(&self.sweeper(place), &tx, taken);
        }
    }

    /// What one sweep of `place` needs.
    fn sweeper(&self, place: &Place) -> Sweeper {
        Sweeper {
            place: place.clone(),
            clients: self.clients.clone(),
            metrics: self.clients.metrics().clone(),
            page_size: self.page_size,
            on_change: self.on_change.clone(),
            wanted: self.wanted.clone(),
            confirmed: self.confirmed.clone(),
        }
    }

    /// Places with a running sweeper.
    pub fn places(&self) -> Vec<Place> {
        self.places.places()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The place's sweep results; starts its sweeper on first use.
    pub fn subscribe(&self, place: &Place) -> watch::Receiver<RegionView> {
        if let Some(manual) = &self.manual {
            let mut m = manual.lock().unwrap_or_else(|p| p.into_inner());
            let (tx, _) = m
                .entry(place.clone())
                .or_insert_with(|| (watch::channel(RegionView::default()).0, History::default()));
            return tx.subscribe();
        }
        self.places.get_or_start(
            place,
            |_| true,
            |retire| {
                let (tx, rx) = watch::channel(RegionView::default());
                self.clients.metrics().region_started(place);
                let retire = Retire {
                    retire,
                    in_use: self.in_use.clone(),
                };
                let task = tokio::spawn(sweep_loop(self.sweeper(place), self.interval, retire, tx));
                (rx, task)
            },
        )
    }

    /// The latest view of a place (starting its sweeper if needed), without confirmations
    /// (`add_confirmations` adds the ones a reconcile needs).
    pub fn view(&self, place: &Place) -> RegionView {
        self.subscribe(place).borrow().clone()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call's confirmation, as a task.
struct Confirming {
    place: Place,
    job_id: String,
    name: Option<String>,
    from: String,
    after: Timestamp,
    hold: Duration,
    interval: Duration,
    view: watch::Receiver<RegionView>,
    clients: Arc<MacieClients>,
    on_change: OnChange,
    confirmed: Confirmations,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Confirming {
    async fn run(self) {
        let mut delay = Duration::from_secs(1);
        let mut waited = Duration::ZERO;
        while waited + delay < self.interval {
            tokio::time::sleep(delay).await;
            waited += delay;
            delay *= 2;
            let swept = self.view.borrow().snapshot.as_ref().map(|s| s.started_at);
            if swept.is_some_and(|t| t > self.after) {
                return;
            }
            let Ok(_permit) = self.permits.acquire().await else {
                return;
            };
            if self.read_once().await != Some(false) {
                return;
            }
        }
    }

    /// One read of the job, recorded, and the resources naming it told: Some(true) when it
    /// shows the change, Some(false) when it still shows the old status, None when it could
    /// not be read (the next sweep tells).
    async fn read_once(&self) -> Option<bool> {
        let started_at = crate::runtime::clock::now();
        let read = self.clients.api().describe_job(&self.place, &self.job_id).await;
        self.clients
            .metrics()
            .call("DescribeClassificationJob", MacieError::outcome(&read));
        let Ok(Some(job)) = read else { return None };
        let shows_change = job.job_status != self.from;
        let holds_until = started_at + SignedDuration::try_from(self.hold).unwrap_or_default();
        let key = (self.place.clone(), self.job_id.clone());
        lock(&self.confirmed).insert(
            key,
            Confirmed {
                started_at,
                job,
                from: self.from.clone(),
                holds_until,
            },
        );
        let changes = Changes::Jobs {
            ids: [self.job_id.clone()].into(),
            names: self.name.iter().cloned().collect(),
        };
        (self.on_change)(&self.place, &changes, None);
        Some(shows_change)
    }
}

/// What one sweep of a place needs.
struct Sweeper {
    place: Place,
    clients: Arc<MacieClients>,
    metrics: Arc<Metrics>,
    page_size: i32,
    on_change: OnChange,
    wanted: Wanted,
    confirmed: Confirmations,
}

/// Which resources a failed sweep affects: none until the failures are reported (the
/// resources keep their conditions), all when they start to be.
pub fn changes_after_failure(failures: u32) -> Changes {
    if failures == SWEEP_FAILURES_REPORTED {
        Changes::All
    } else {
        Changes::Jobs {
            ids: HashSet::new(),
            names: HashSet::new(),
        }
    }
}

/// One place's sweeper: a sweep every `interval` until no resource uses the place.
async fn sweep_loop(sweeper: Sweeper, interval: Duration, retire: Retire, tx: watch::Sender<RegionView>) {
    let mut history = History::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        sweep_once(&sweeper, &mut history, &tx).await;
        let (place, metrics) = (&sweeper.place, &sweeper.metrics);
        if retire.retire.retire_if(|| !(retire.in_use)(place)) {
            metrics.region_stopped(place);
            tracing::info!(%place, "no MacieJob uses the account and region any more; its sweeper stops");
            return;
        }
    }
}

/// One sweep: taken, then published.
async fn sweep_once(sweeper: &Sweeper, history: &mut History, tx: &watch::Sender<RegionView>) {
    let prev = tx.borrow().clone();
    let taken = take_sweep(sweeper, history, &prev).await;
    publish_sweep(sweeper, tx, taken);
}

/// A sweep taken and not yet published: the view it makes and what changed.
pub struct Taken {
    next: RegionView,
    changes: Changes,
    /// Its start, when it succeeded.
    swept_at: Option<Timestamp>,
}

/// The new view of the place (after `prev`), read from Macie.
async fn take_sweep(sweeper: &Sweeper, history: &mut History, prev: &RegionView) -> Taken {
    let Sweeper {
        place,
        clients,
        metrics,
        page_size,
        wanted,
        ..
    } = sweeper;
    let started_at = crate::runtime::clock::now();
    let t = std::time::Instant::now();
    let ask = SweepAsk {
        place,
        page_size: *page_size,
        prev: prev.snapshot.as_deref(),
        wanted: wanted(place),
    };
    let result = self::sweep(clients.api(), ask, history, metrics).await;
    let mut next = RegionView {
        sweeps: prev.sweeps + 1,
        ..prev.clone()
    };
    let changes = match result {
        Ok(swept) => {
            let pages = swept.pages;
            metrics.swept(place, t.elapsed(), pages);
            let mut by_status: HashMap<&str, i64> = HashMap::new();
            for j in &swept.jobs {
                *by_status.entry(j.job_status.as_str()).or_default() += 1;
            }
            let counts: Vec<(String, i64)> = by_status.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
            metrics.set_jobs(place, &counts);
            let snap = Snapshot::of(started_at, swept);
            let reported = prev.failures >= SWEEP_FAILURES_REPORTED;
            let changes = match &prev.snapshot {
                Some(old) if !reported => diff(old, &snap),
                _ => Changes::All,
            };
            tracing::debug!(%place, jobs = snap.jobs.len(), pages, elapsed = ?t.elapsed(), "sweep");
            next.snapshot = Some(Arc::new(snap));
            next.error = None;
            next.failures = 0;
            changes
        }
        Err(e) => {
            next.failures = prev.failures + 1;
            // One log line per failure streak (and one when it starts to be reported).
            if next.failures == 1 || next.failures == SWEEP_FAILURES_REPORTED {
                tracing::warn!(%place, error = %e, failures = next.failures, "ListClassificationJobs sweep failed");
            } else {
                tracing::debug!(%place, error = %e, failures = next.failures, "ListClassificationJobs sweep failed again");
            }
            next.error = Some(e);
            changes_after_failure(next.failures)
        }
    };
    let swept_at = next.error.is_none().then_some(started_at);
    Taken {
        next,
        changes,
        swept_at,
    }
}

/// Publishes a sweep, then tells the resources it concerns (so that the reconciles it
/// triggers read it).
fn publish_sweep(sweeper: &Sweeper, tx: &watch::Sender<RegionView>, taken: Taken) {
    let Taken {
        next,
        mut changes,
        swept_at,
    } = taken;
    sweeper.metrics.sweep_finished(&sweeper.place, next.error.is_none());
    if let (Some(s), Some(_)) = (&next.snapshot, swept_at) {
        let mut confirmed = lock(&sweeper.confirmed);
        // A job this sweep lists otherwise than the read that confirmed a call showed: the
        // resources naming it look again (their snapshots may not differ).
        if let Changes::Jobs { ids, names } = &mut changes {
            for ((place, id), c) in confirmed.iter() {
                if *place == sweeper.place && s.jobs.get(id).map(|j| &j.job_status) != Some(&c.job.job_status) {
                    ids.insert(id.clone());
                    names.extend(c.job.name.clone());
                }
            }
        }
        confirmed.retain(|(place, _), c| *place != sweeper.place || s.started_at <= c.started_at || !overtaken(c, s));
    }
    tx.send_replace(next);
    (sweeper.on_change)(&sweeper.place, &changes, swept_at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, name: &str, status: &str) -> ObservedJob {
        ObservedJob {
            job_id: id.into(),
            name: Some(name.into()),
            job_status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_confirmation_stands_against_a_list_behind_it_until_its_hold_runs_out() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let c = Confirmed {
            started_at: at(1),
            job: job("j1", "n", "USER_PAUSED"),
            from: "RUNNING".into(),
            holds_until: at(301),
        };
        let sweep = |t: i64, status: &str| Snapshot::new(at(t), vec![job("j1", "n", status)], 1);
        // (what the sweep shows, when it started, overtaken)
        let rows = [
            ("RUNNING", 60, false),
            ("USER_PAUSED", 60, true),
            ("CANCELLED", 60, true),
            ("RUNNING", 302, true),
        ];
        for (status, t, want) in rows {
            assert_eq!(overtaken(&c, &sweep(t, status)), want, "{status} at {t}");
        }
        assert!(overtaken(&c, &Snapshot::new(at(60), vec![], 1)), "the job is gone");
        let created = Confirmed {
            from: String::new(),
            ..c.clone()
        };
        assert!(
            !overtaken(&created, &Snapshot::new(at(60), vec![], 1)),
            "a create the list does not show yet"
        );
        assert!(overtaken(&created, &sweep(60, "RUNNING")), "listed");
        assert!(
            overtaken(&created, &Snapshot::new(at(302), vec![], 1)),
            "the hold ran out"
        );
    }

    #[test]
    fn diff_reports_changed_appeared_and_vanished_jobs_by_id_and_name() {
        let t = crate::runtime::clock::now();
        let old = Snapshot::new(
            t,
            vec![
                job("a", "alpha", "RUNNING"),
                job("b", "beta", "IDLE"),
                job("c", "gamma", "RUNNING"),
            ],
            1,
        );
        let new = Snapshot::new(
            t,
            vec![
                job("a", "alpha", "RUNNING"),
                job("b", "beta", "USER_PAUSED"),
                job("d", "delta", "RUNNING"),
            ],
            1,
        );
        let Changes::Jobs { ids, names } = diff(&old, &new) else {
            panic!("expected a job diff")
        };
        let mut ids: Vec<_> = ids.into_iter().collect();
        ids.sort();
        assert_eq!(ids, ["b", "c", "d"]);
        assert!(names.contains("gamma") && names.contains("delta") && names.contains("beta"));
        assert!(!names.contains("alpha"));
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn changes_affect_resources_by_id_or_name() {
        let c = Changes::Jobs {
            ids: ["x".to_string()].into(),
            names: ["n".to_string()].into(),
        };
        assert!(c.affects(Some("x"), None));
        assert!(c.affects(None, Some("n")));
        assert!(!c.affects(Some("y"), Some("m")));
        assert!(Changes::All.affects(None, None));
    }

    fn ask<'a>(place: &'a Place, prev: Option<&'a Snapshot>, ids: &[&str], names: &[&str]) -> SweepAsk<'a> {
        SweepAsk {
            place,
            page_size: 100,
            prev,
            wanted: (
                ids.iter().map(|s| s.to_string()).collect(),
                names.iter().map(|s| s.to_string()).collect(),
            ),
        }
    }

    #[tokio::test]
    async fn sweeps_read_what_can_change_and_terminal_jobs_once() {
        use crate::macie::fake::FakeMacie;
        let fake = FakeMacie::default();
        let place = Place::new("default", "us-east-1");
        fake.put("us-east-1", "live", "nightly", "RUNNING");
        for i in 0..300 {
            fake.put("us-east-1", &format!("old{i:03}"), &format!("old-{i}"), "COMPLETE");
        }
        fake.put("us-east-1", "done", "finished", "CANCELLED");
        fake.put("us-east-1", "twin1", "twin", "COMPLETE");
        fake.put("us-east-1", "twin2", "twin", "CANCELLED");
        let metrics = Metrics::new();
        let mut history = History::default();
        // First sweep: one page of what can change, plus one name lookup per name resources
        // use and one describe per id no sweep shows.
        let Swept { jobs, pages, .. } = sweep(
            &fake,
            ask(&place, None, &["done", "nope"], &["twin", "nightly"]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(pages, 1, "300 terminal jobs are not paged through");
        assert_eq!((fake.lists(), fake.describes()), (3, 2));
        let snap = Snapshot::new(crate::runtime::clock::now(), jobs, pages);
        assert_eq!(snap.jobs["done"].job_status, "CANCELLED");
        assert_eq!(snap.by_name["twin"].len(), 2, "terminal jobs of a name still count");
        assert!(!snap.jobs.contains_key("old000"));
        assert!(history.missing.contains("nope"));
        // Steady state: one call per sweep, whatever the history.
        let Swept { jobs, .. } = sweep(
            &fake,
            ask(&place, Some(&snap), &["done", "nope"], &["twin", "nightly"]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!((fake.lists(), fake.describes()), (4, 2));
        let snap = Snapshot::new(crate::runtime::clock::now(), jobs, 1);
        // A job that completes drops out of the sweep: described once, then known.
        fake.set_status("us-east-1", "live", "COMPLETE");
        let Swept { jobs, .. } = sweep(
            &fake,
            ask(&place, Some(&snap), &["done"], &["nightly"]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!((fake.lists(), fake.describes()), (5, 3));
        let snap2 = Snapshot::new(crate::runtime::clock::now(), jobs, 1);
        assert_eq!(snap2.jobs["live"].job_status, "COMPLETE");
        assert!(diff(&snap, &snap2).affects(Some("live"), None), "the change is seen");
        let Swept { jobs, .. } = sweep(
            &fake,
            ask(&place, Some(&snap2), &["done"], &["nightly"]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!((fake.lists(), fake.describes()), (6, 3));
        assert_eq!(
            Snapshot::new(crate::runtime::clock::now(), jobs, 1).jobs["live"].job_status,
            "COMPLETE"
        );
    }

    #[tokio::test]
    async fn a_read_that_fails_stays_with_the_resources_that_need_it() {
        use crate::macie::fake::FakeMacie;
        let fake = FakeMacie::default();
        let place = Place::new("default", "us-east-1");
        fake.put("us-east-1", "live", "nightly", "RUNNING");
        fake.put("us-east-1", "bad", "theirs", "COMPLETE");
        fake.put("us-east-1", "good", "ours", "COMPLETE");
        let invalid = MacieError::Rejected {
            code: "ValidationException".into(),
            message: "bad id".into(),
        };
        fake.fail_describes("bad", Some(invalid.clone()));
        let metrics = Metrics::new();
        let mut history = History::default();
        let swept = sweep(&fake, ask(&place, None, &["bad", "good"], &[]), &mut history, &metrics)
            .await
            .expect("one job's describe failing does not fail the sweep");
        let snap = Snapshot::of(crate::runtime::clock::now(), swept);
        assert!(snap.jobs.contains_key("live") && snap.jobs.contains_key("good"));
        assert_eq!(
            snap.unread_ids.get("bad"),
            Some(&Unread::Failed {
                operation: "DescribeClassificationJob",
                error: invalid.clone(),
                failures: 1
            })
        );
        assert_eq!(fake.describes(), 2);
        // Within its backoff the read is not made again, and the failure is still reported.
        let swept = sweep(
            &fake,
            ask(&place, Some(&snap), &["bad", "good"], &[]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(fake.describes(), 2, "no describe within the backoff");
        let snap2 = Snapshot::of(crate::runtime::clock::now(), swept);
        assert!(matches!(
            snap2.unread_ids.get("bad"),
            Some(Unread::Failed { failures: 1, .. })
        ));
        assert!(!diff(&snap, &snap2).affects(Some("bad"), None), "nothing new to report");
        // Past the backoff it is read again; once it answers, the resources are woken.
        fake.fail_describes("bad", None);
        history
            .failed
            .values_mut()
            .for_each(|f| f.retry_at = crate::runtime::clock::now());
        let swept = sweep(
            &fake,
            ask(&place, Some(&snap2), &["bad", "good"], &[]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        let snap3 = Snapshot::of(crate::runtime::clock::now(), swept);
        assert_eq!(fake.describes(), 3);
        assert!(snap3.unread_ids.is_empty() && snap3.jobs.contains_key("bad"));
        assert!(diff(&snap2, &snap3).affects(Some("bad"), None));
    }

    #[tokio::test]
    async fn a_sweep_makes_a_bounded_number_of_reads_for_resources() {
        use crate::macie::fake::FakeMacie;
        let fake = FakeMacie::default();
        let place = Place::new("default", "us-east-1");
        let n = MAX_READS_PER_SWEEP + 50;
        let ids: Vec<String> = (0..n).map(|i| format!("old{i:04}")).collect();
        for id in &ids {
            fake.put("us-east-1", id, id, "COMPLETE");
        }
        let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (metrics, mut history) = (Metrics::new(), History::default());
        let swept = sweep(&fake, ask(&place, None, &wanted, &["a-name"]), &mut history, &metrics)
            .await
            .unwrap();
        assert_eq!(fake.describes() as usize, MAX_READS_PER_SWEEP);
        let snap = Snapshot::of(crate::runtime::clock::now(), swept);
        assert_eq!(snap.unread_ids.len(), 50);
        assert!(snap.unread_ids.values().all(|u| *u == Unread::Deferred));
        assert_eq!(snap.unread_names.get("a-name"), Some(&Unread::Deferred));
        // The next sweep reads the rest.
        let swept = sweep(
            &fake,
            ask(&place, Some(&snap), &wanted, &["a-name"]),
            &mut history,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(fake.describes() as usize, n);
        let snap2 = Snapshot::of(crate::runtime::clock::now(), swept);
        assert!(snap2.unread_ids.is_empty() && snap2.unread_names.is_empty());
        assert_eq!(snap2.jobs.len(), n);
    }

    #[test]
    fn hold_back_rows() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let failed = |retry_in: i64| FailedRead {
            unread: Unread::Failed {
                operation: "DescribeClassificationJob",
                error: MacieError::Throttled {
                    code: "ThrottlingException".into(),
                    message: String::new(),
                },
                failures: 2,
            },
            retry_at: Timestamp::from_second(1_800_000_000 + retry_in).unwrap(),
        };
        let f = failed(10);
        // (what, failed read, reads left) -> (held back as, reads left after)
        type Row<'a> = (&'a str, Option<FailedRead>, usize, Option<Unread>, usize);
        let rows: Vec<Row> = vec![
            ("a fresh read", None, 3, None, 2),
            ("the bound reached", None, 0, Some(Unread::Deferred), 0),
            (
                "within its backoff: the failure",
                Some(f.clone()),
                3,
                Some(f.unread.clone()),
                3,
            ),
            ("past its backoff: read", Some(failed(-1)), 3, None, 2),
            (
                "past its backoff, bound reached",
                Some(failed(0)),
                0,
                Some(Unread::Deferred),
                0,
            ),
        ];
        for (what, failed, mut left, want, left_after) in rows {
            assert_eq!(hold_back(failed.as_ref(), now, &mut left), want, "{what}");
            assert_eq!(left, left_after, "{what}");
        }
    }

    #[test]
    fn snapshot_indexes_names_with_duplicates() {
        let s = Snapshot::new(
            crate::runtime::clock::now(),
            vec![job("a", "same", "RUNNING"), job("b", "same", "IDLE")],
            1,
        );
        assert_eq!(s.by_name["same"].len(), 2);
    }
}
