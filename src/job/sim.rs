//! The perturbation harness of the MacieJob controller (the middle test layer: in process,
//! virtual time, deterministic). A scenario of the corpus (user edits, out-of-band changes in
//! Macie, Macie faults, sweeps, a leader handover) is run against the real reconcile, the real
//! sweep and the real per-resource memory, with the fake API server and the fake Macie behind
//! them, while the harness perturbs what the controller sees the three ways Sieve (OSDI 2022)
//! names:
//!
//! - **intermediate states**: the process crashes right after its n-th effect (an AWS write, an
//!   API write, an Event) and a new one starts from what the API server and Macie hold;
//! - **stale states**: at the n-th reconcile the cache goes back to the version of the object
//!   before the one it held (the next delivery brings the newest again);
//! - **unobserved states**: the n-th watch delivery is dropped (coalesced into the next).
//!
//! The injection-point test runs every injection point of every scenario; `check` runs the
//! seeded schedule of one seed (`schedule`), one that mixes those with Macie faults, spec flips
//! and out-of-band changes. Checked at every AWS write: the write gate is open, the
//! MacieAccount's rules allow it, its write-ahead record is stored, an UpdateClassificationJob
//! is valid for the job's status (unless Macie changed it after the last sweep started), a
//! create never makes a second job of a name. Checked at the end, once perturbations stop:
//! every resource reaches Ready or a documented terminal reason within a bounded number of
//! sweeps, and then makes no write at all.
//!
//! A failure prints its seed and schedule; `SIM_SEED=<seed> make sim` replays it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::plan::JobStatus;
use super::*;
use crate::account::testing::Fed;
use crate::api::MacieAccountSpec;
use crate::api::macie_account::{DiscoveryRules, JobRules};
use crate::macie::MacieError;
use crate::macie::api::{JobsPage, JobsQuery, MacieApi, NewJob};
use crate::macie::fake::FakeMacie;
use crate::runtime::clock::{self, VirtualClock};
use crate::runtime::fake_kube::{FakeKube, Process, Write, path_of};
use crate::runtime::gate::WriteGate;
pub use crate::runtime::sim::Perturb;
use crate::runtime::sim::Rng;

const REGION: &str = "us-east-1";
const POLL: Duration = Duration::from_secs(60);
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Reconciles one settle may run before the harness calls it a hot loop.
const SETTLE_LIMIT: usize = 80;
/// Sweeps (one poll interval apart) every resource gets to converge once perturbations stop.
const QUIET_ROUNDS: usize = 8;

/// A Macie fault, for the next call of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ThrottleUpdate,
    /// A 5xx: not processed.
    ServerErrorUpdate,
    /// Processed, then the answer is lost.
    LoseUpdateAnswer,
    ThrottleCreate,
    LoseCreateAnswer,
    FailList,
}

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Op {
    /// A user applies a MacieJob `name` with `spec` (created, or its spec replaced).
    Apply(&'static str, Value),
    /// A user deletes a MacieJob.
    Delete(&'static str),
    /// A job appears or changes in Macie out of band: (id, name, status, client token).
    Job(&'static str, &'static str, &'static str, Option<&'static str>),
    /// The default MacieAccount's job rules change.
    Rules(JobRules),
    Inject(Fault),
    /// One sweep of the place.
    Sweep,
    /// A sweep that reads Macie now and is published only after a second passed and the
    /// reconciles pending then ran (a sweep concurrent with their calls).
    SlowSweep,
    /// The confirmation reads due (DescribeClassificationJob of each job a call waits for).
    Confirm,
    /// Watch events, triggers and due requeues until nothing is pending.
    Settle,
    Advance(Duration),
    /// The leader loses its lease (its gate closes), settles what it was doing, and a new
    /// process takes over.
    Handover,
}

/// A named scenario: the MacieAccount's rules and the steps.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub rules: JobRules,
    pub ops: Vec<Op>,
}

/// What a run counted and found.
#[derive(Debug, Default, Clone)]
pub struct Run {
    pub effects: u64,
    pub reconciles: u64,
    pub deliveries: u64,
    pub violations: Vec<String>,
}

/// What the harness and the processes share.
struct Shared {
    kube: FakeKube,
    macie: Arc<FakeMacie>,
    effects: AtomicU64,
    crash_after: Mutex<BTreeSet<u64>>,
    violations: Mutex<Vec<String>>,
    faults: Mutex<VecDeque<Fault>>,
    rules: Mutex<JobRules>,
    /// Start of the latest sweep, and when each job last changed out of band.
    last_sweep: Mutex<Option<Timestamp>>,
    changed_at: Mutex<HashMap<String, Timestamp>>,
}

impl Shared {
    fn violation(&self, v: String) {
        lock(&self.violations).push(v);
    }

    /// Takes the next fault among `kinds`, if one is queued.
    fn fault(&self, kinds: &[Fault]) -> Option<Fault> {
        let mut q = lock(&self.faults);
        let i = q.iter().position(|f| kinds.contains(f))?;
        q.remove(i)
    }

    /// Whether a job changed out of band after the latest sweep started (the operator could
    /// not know).
    fn changed_unseen(&self, job_id: &str) -> bool {
        let last = *lock(&self.last_sweep);
        lock(&self.changed_at)
            .get(job_id)
            .is_some_and(|c| last.is_none_or(|s| *c >= s))
    }

    /// Whether some stored MacieJob holds this record in its status (the write-ahead).
    fn written_ahead(&self, holds: impl Fn(&Value) -> bool) -> bool {
        self.kube
            .paths()
            .iter()
            .filter_map(|p| self.kube.get(p))
            .any(|o| holds(&o["status"]))
    }
}

/// One operator process: alive until it crashes.
struct Life {
    alive: AtomicBool,
    shared: Arc<Shared>,
}

impl Process for Life {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn effect(&self, _write: &Write) {
        self.counted();
    }
}

impl Life {
    /// One more effect; the process dies right after it if the schedule says so.
    fn counted(&self) {
        let n = self.shared.effects.fetch_add(1, Ordering::SeqCst) + 1;
        if lock(&self.shared.crash_after).contains(&n) {
            self.alive.store(false, Ordering::SeqCst);
        }
    }

    fn dead<T>(&self) -> Option<Result<T, MacieError>> {
        (!self.alive()).then(|| {
            Err(MacieError::Uncertain {
                code: "ProcessDead".into(),
                message: "the process is dead".into(),
            })
        })
    }
}

/// The fake Macie as one process reaches it: nothing once the process is dead, faults as the
/// schedule queues them, and every write checked against the promise.
struct Fenced {
    life: Arc<Life>,
    gate: WriteGate,
}

fn name_allowed(rules: &JobRules, name: &str) -> bool {
    rules.names.iter().any(|n| n == "*" || n == name)
}

impl Fenced {
    fn inner(&self) -> &FakeMacie {
        &self.life.shared.macie
    }

    fn check_update(&self, job_id: &str, to: DesiredJobStatus) {
        let shared = &self.life.shared;
        if !self.gate.allows_writes() {
            shared.violation(format!(
                "UpdateClassificationJob {job_id} while the write gate is closed"
            ));
        }
        let job = self.inner().jobs(REGION).into_iter().find(|j| j.job_id == job_id);
        let rules = lock(&shared.rules).clone();
        let name = job.as_ref().and_then(|j| j.name.clone()).unwrap_or_default();
        let allowed = name_allowed(&rules, &name)
            && (to != DesiredJobStatus::Cancelled || rules.allow_cancel)
            && (to != DesiredJobStatus::UserPaused || rules.allow_pause);
        if !allowed {
            shared.violation(format!(
                "UpdateClassificationJob {job_id} -> {} outside the rules",
                to.as_str()
            ));
        }
        let ahead = shared.written_ahead(|st| {
            let t = &st["lastTransition"];
            t["jobId"] == job_id && t["to"] == to.as_str() && t["outcome"] == "Pending"
        });
        if !ahead {
            shared.violation(format!(
                "UpdateClassificationJob {job_id} -> {} without a write-ahead",
                to.as_str()
            ));
        }
        let from = job.map(|j| j.job_status).unwrap_or_default();
        if !JobStatus::parse(&from).can_update_to(to) && !shared.changed_unseen(job_id) {
            shared.violation(format!(
                "invalid or repeated UpdateClassificationJob {job_id}: {from} -> {}",
                to.as_str()
            ));
        }
    }

    fn check_create(&self, job: &NewJob<'_>) {
        let shared = &self.life.shared;
        if !self.gate.allows_writes() {
            shared.violation(format!(
                "CreateClassificationJob {:?} while the write gate is closed",
                job.name
            ));
        }
        let rules = lock(&shared.rules).clone();
        if !(rules.allow_create && name_allowed(&rules, job.name)) {
            shared.violation(format!("CreateClassificationJob {:?} outside the rules", job.name));
        }
        let token = job.client_token;
        if !shared.written_ahead(|st| st["creation"]["clientToken"] == token && st["creation"]["outcome"] == "Pending")
        {
            shared.violation(format!("CreateClassificationJob {:?} without a write-ahead", job.name));
        }
        for j in self.inner().jobs(REGION) {
            if j.name.as_deref() != Some(job.name) {
                continue;
            }
            match self.inner().token(&j.job_id) {
                Some(t) if t == token => shared.violation(format!(
                    "CreateClassificationJob {:?} sent again: job {} carries its token",
                    job.name, j.job_id
                )),
                _ => shared.violation(format!("a second job named {:?} (beside {})", job.name, j.job_id)),
            }
        }
    }
}

/// A status write never takes the status back: a settled step record written again as
/// Pending, an older step record over a newer one, or a condition's transition time moved
/// without a transition (each a status built from a copy older than the one it replaces).
fn check_status_write(shared: &Shared, stored: &Value, written: &Value) {
    let (old, new) = (&stored["lastTransition"], &written["lastTransition"]);
    if old.is_object() && new.is_object() && old["jobId"] == new["jobId"] {
        let (was, is) = (old["requestedAt"].as_str(), new["requestedAt"].as_str());
        if was == is && old["outcome"] != "Pending" && new["outcome"] == "Pending" {
            shared.violation(format!("a settled step ({}) written back as Pending", old["outcome"]));
        }
        if is < was {
            shared.violation(format!(
                "an older step record ({is:?}) written over a newer one ({was:?})"
            ));
        }
    }
    for c in written["conditions"].as_array().into_iter().flatten() {
        let before = stored["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["type"] == c["type"]);
        if let Some(b) = before
            && b["status"] == c["status"]
            && b["lastTransitionTime"] != c["lastTransitionTime"]
        {
            shared.violation(format!(
                "condition {} moved its transition time without a transition",
                c["type"]
            ));
        }
    }
}

fn error(kind: &str) -> MacieError {
    match kind {
        "throttle" => MacieError::Throttled {
            code: "ThrottlingException".into(),
            message: "Rate exceeded".into(),
        },
        "lost" => MacieError::Uncertain {
            code: "ResponseError".into(),
            message: "connection reset".into(),
        },
        _ => MacieError::Other {
            code: "InternalServerException".into(),
            message: "internal error".into(),
        },
    }
}

impl MacieApi for Fenced {
    fn list_jobs_page<'a>(
        &'a self,
        place: &'a Place,
        query: JobsQuery<'a>,
        page_size: i32,
        token: Option<String>,
    ) -> BoxFuture<'a, Result<JobsPage, MacieError>> {
        if let Some(dead) = self.life.dead() {
            return Box::pin(async move { dead });
        }
        if self.life.shared.fault(&[Fault::FailList]).is_some() {
            return Box::pin(async move { Err(error("5xx")) });
        }
        self.inner().list_jobs_page(place, query, page_size, token)
    }

    fn describe_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedJob>, MacieError>> {
        if let Some(dead) = self.life.dead() {
            return Box::pin(async move { dead });
        }
        self.inner().describe_job(place, job_id)
    }

    fn update_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
        to: DesiredJobStatus,
    ) -> BoxFuture<'a, Result<(), MacieError>> {
        Box::pin(async move {
            if let Some(dead) = self.life.dead() {
                return dead;
            }
            self.check_update(job_id, to);
            let fault =
                self.life
                    .shared
                    .fault(&[Fault::ThrottleUpdate, Fault::ServerErrorUpdate, Fault::LoseUpdateAnswer]);
            let result = match fault {
                Some(Fault::ThrottleUpdate) => Err(error("throttle")),
                Some(Fault::ServerErrorUpdate) => Err(error("5xx")),
                Some(_) => self.inner().update_job(place, job_id, to).await.and(Err(error("lost"))),
                None => self.inner().update_job(place, job_id, to).await,
            };
            self.life.counted();
            result
        })
    }

    fn create_job<'a>(&'a self, place: &'a Place, job: &'a NewJob<'a>) -> BoxFuture<'a, Result<String, MacieError>> {
        Box::pin(async move {
            if let Some(dead) = self.life.dead() {
                return dead;
            }
            self.check_create(job);
            let fault = self
                .life
                .shared
                .fault(&[Fault::ThrottleCreate, Fault::LoseCreateAnswer]);
            let result = match fault {
                Some(Fault::ThrottleCreate) => Err(error("throttle")),
                Some(_) => self.inner().create_job(place, job).await.and(Err(error("lost"))),
                None => self.inner().create_job(place, job).await,
            };
            self.life.counted();
            result
        })
    }

    fn job_client_token<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, MacieError>> {
        if let Some(dead) = self.life.dead() {
            return Box::pin(async move { dead });
        }
        self.inner().job_client_token(place, job_id)
    }

    fn job_settings<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, MacieError>> {
        if let Some(dead) = self.life.dead() {
            return Box::pin(async move { dead });
        }
        self.inner().job_settings(place, job_id)
    }
}

/// One operator process as the harness drives it.
struct Operator {
    ctx: Context,
    life: Arc<Life>,
    writer: Writer<MacieJob>,
    triggers: futures::channel::mpsc::UnboundedReceiver<ObjectRef<MacieJob>>,
    /// What its cache holds, by name.
    cache: BTreeMap<String, MacieJob>,
    pending: BTreeSet<String>,
    requeues: BTreeMap<String, Timestamp>,
}

fn account_spec(rules: &JobRules) -> MacieAccountSpec {
    MacieAccountSpec {
        role_arn: None,
        external_id: None,
        regions: vec![REGION.into()],
        namespace_selector: Default::default(),
        jobs: rules.clone(),
        discovery: DiscoveryRules::default(),
    }
}

fn start(shared: &Arc<Shared>, tenancy: &Arc<Tenancy>) -> Operator {
    let life = Arc::new(Life {
        alive: AtomicBool::new(true),
        shared: shared.clone(),
    });
    let client = shared.kube.client_of(life.clone());
    let gate = WriteGate::open();
    let api = Arc::new(Fenced {
        life: life.clone(),
        gate: gate.clone(),
    });
    let clients = Arc::new(
        MacieClients::new(aws_config::SdkConfig::builder().build(), None)
            .with_api(api)
            .with_gate(gate),
    );
    let (store, writer) = reflector::store::<MacieJob>();
    let memory: Arc<Memory<MacieJob, Remembered>> = Arc::default();
    let (trigger, triggers) = futures::channel::mpsc::unbounded();
    let on_change = after_sweep(
        store.clone(),
        memory.clone(),
        trigger.clone(),
        tenancy.clone(),
        REGION.into(),
    );
    let wanted = wanted_by(store.clone(), tenancy.clone(), REGION.into());
    let in_use = in_use_by(store.clone(), tenancy.clone(), REGION.into());
    let poller = JobPoller::new(clients.clone(), 100, POLL, on_change, in_use, wanted).manual();
    let config = Config {
        default_region: REGION.into(),
        poll_interval: POLL,
        page_size: 100,
        plan: Settings {
            step_timeout: STEP_TIMEOUT,
            expiry_warning: Duration::from_secs(7 * 86400),
        },
        namespace: None,
        concurrency: 1,
        create_rate: 1e9,
        instance: None,
    };
    let ctx = Context {
        trigger,
        recorder: Recorder::new(client.clone(), MANAGER, None),
        client,
        clients,
        poller: Arc::new(poller),
        tenancy: tenancy.clone(),
        config,
        store,
        memory,
        tokens: Arc::default(),
        queue: Arc::new(Mutex::new(CreateQueue::new(1e9))),
    };
    Operator {
        ctx,
        life,
        writer,
        triggers,
        cache: BTreeMap::new(),
        pending: BTreeSet::new(),
        requeues: BTreeMap::new(),
    }
}

/// One run of a scenario under a perturbation.
struct Sim {
    shared: Arc<Shared>,
    fed: Fed,
    clock: VirtualClock,
    op: Operator,
    perturb: Perturb,
    run: Run,
    /// Every version of each object the watch delivered, oldest first.
    history: HashMap<String, Vec<MacieJob>>,
    /// Names ever applied.
    names: BTreeSet<&'static str>,
    /// The API server's version at the last delivery (nothing to deliver while it holds).
    delivered_at: Option<u64>,
}

fn path(name: &str) -> String {
    format!("/apis/macie.kubeops.dev/v1alpha1/namespaces/ns/maciejobs/{name}")
}

fn version(o: &MacieJob) -> Option<String> {
    o.metadata.resource_version.clone()
}

impl Sim {
    fn new(scenario: &Scenario, perturb: Perturb, seed: u64) -> Sim {
        let clock = VirtualClock::install(
            Timestamp::from_second(1_900_000_000).unwrap_or(Timestamp::UNIX_EPOCH),
            seed,
        );
        let mut fed = Fed::new("default");
        fed.put_verified("default", account_spec(&scenario.rules));
        fed.put_namespace("ns", &[]);
        let shared = Arc::new(Shared {
            kube: FakeKube::default(),
            macie: Arc::new(FakeMacie::default()),
            effects: AtomicU64::new(0),
            crash_after: Mutex::new(perturb.crash_after.clone()),
            violations: Mutex::default(),
            faults: Mutex::default(),
            rules: Mutex::new(scenario.rules.clone()),
            last_sweep: Mutex::default(),
            changed_at: Mutex::default(),
        });
        let checked = shared.clone();
        shared
            .kube
            .check_status_writes(move |stored, written| check_status_write(&checked, stored, written));
        let op = start(&shared, &fed.tenancy);
        Sim {
            shared,
            fed,
            clock,
            op,
            perturb,
            run: Run::default(),
            history: HashMap::new(),
            names: BTreeSet::new(),
            delivered_at: None,
        }
    }

    async fn apply(&mut self, o: &Op) {
        if std::env::var_os("SIM_TRACE").is_some() {
            println!("op {o:?}");
        }
        match o {
            Op::Apply(name, spec) => self.put(name, spec),
            Op::Delete(name) => self.shared.kube.edit(&path(name), |o| {
                o["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
            }),
            Op::Job(id, name, status, token) => {
                // Macie never changes a job in a terminal status.
                let was = self.shared.macie.status(REGION, id);
                if was.is_some_and(|w| crate::macie::api::TERMINAL_STATUSES.contains(&w.as_str())) {
                    return;
                }
                self.shared.macie.put(REGION, id, name, status);
                if let Some(t) = token {
                    self.shared.macie.set_token(id, t);
                }
                lock(&self.shared.changed_at).insert(id.to_string(), clock::now());
            }
            Op::Rules(rules) => {
                *lock(&self.shared.rules) = rules.clone();
                self.fed.put_verified("default", account_spec(rules));
                // The MacieAccount's change reaches every resource it concerns.
                self.op.pending.extend(self.op.cache.keys().cloned());
            }
            Op::Inject(f) => lock(&self.shared.faults).push_back(*f),
            Op::Sweep => self.sweep().await,
            Op::SlowSweep => self.slow_sweep().await,
            Op::Confirm => {
                if self.op.life.alive() {
                    self.op.ctx.poller.confirm_now(&Place::new("default", REGION)).await;
                }
            }
            Op::Settle => self.settle().await,
            Op::Advance(d) => self.clock.advance(*d),
            Op::Handover => {
                self.op.ctx.clients.gate().close();
                self.settle().await;
                self.op.life.alive.store(false, Ordering::SeqCst);
                self.restart();
            }
        }
        if !self.op.life.alive() {
            self.restart();
        }
    }

    /// A user's apply: created, or the spec replaced (the generation moves).
    fn put(&mut self, name: &'static str, spec: &Value) {
        self.names.insert(name);
        let p = path(name);
        if self.shared.kube.get(&p).is_some() {
            let spec = spec.clone();
            self.shared.kube.edit(&p, move |o| o["spec"] = spec);
            return;
        }
        let obj = json!({
            "apiVersion": "macie.kubeops.dev/v1alpha1",
            "kind": "MacieJob",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1,
                         "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": spec,
        });
        self.shared.kube.put(obj.clone(), "maciejobs");
        debug_assert_eq!(path_of(&obj, "maciejobs"), p);
    }

    async fn sweep(&mut self) {
        if !self.op.life.alive() {
            return;
        }
        let started = clock::now();
        self.op.ctx.poller.sweep_now(&Place::new("default", REGION)).await;
        *lock(&self.shared.last_sweep) = Some(started);
    }

    async fn slow_sweep(&mut self) {
        if !self.op.life.alive() {
            return;
        }
        let (place, started) = (Place::new("default", REGION), clock::now());
        let Some(taken) = self.op.ctx.poller.begin_sweep(&place).await else {
            return;
        };
        let life = self.op.life.clone();
        self.clock.advance(Duration::from_secs(1));
        self.settle().await;
        // A process that crashed meanwhile never publishes its sweep.
        if !Arc::ptr_eq(&life, &self.op.life) {
            return;
        }
        self.op.ctx.poller.finish_sweep(&place, taken);
        *lock(&self.shared.last_sweep) = Some(started);
    }

    /// A new process takes over from what the API server and Macie hold.
    fn restart(&mut self) {
        self.op = start(&self.shared, &self.fed.tenancy);
        self.delivered_at = None;
        self.deliver();
    }

    /// The watch: every object whose version the cache does not hold is delivered (unless
    /// the schedule drops that delivery) and reconciled.
    fn deliver(&mut self) {
        let at = self.shared.kube.version();
        if self.delivered_at == Some(at) {
            return;
        }
        let mut complete = true;
        let stored: BTreeMap<String, MacieJob> = self
            .shared
            .kube
            .paths()
            .iter()
            .filter_map(|p| self.shared.kube.get(p))
            .filter_map(|v| serde_json::from_value::<MacieJob>(v).ok())
            .map(|o| (o.name_any(), o))
            .collect();
        let gone: Vec<String> = self
            .op
            .cache
            .keys()
            .filter(|k| !stored.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(o) = self.op.cache.remove(&name) {
                self.op.writer.apply_watcher_event(&watcher::Event::Delete(o));
            }
        }
        for (name, obj) in stored {
            if self.op.cache.get(&name).and_then(version) == version(&obj) {
                continue;
            }
            self.run.deliveries += 1;
            if self.perturb.dropped.contains(&self.run.deliveries) {
                complete = false;
                continue;
            }
            self.op.writer.apply_watcher_event(&watcher::Event::Apply(obj.clone()));
            let h = self.history.entry(name.clone()).or_default();
            if h.last().and_then(version) != version(&obj) {
                h.push(obj.clone());
            }
            self.op.cache.insert(name.clone(), obj);
            self.op.pending.insert(name);
        }
        // Nothing left behind: nothing to deliver until the API server changes.
        self.delivered_at = complete.then_some(at);
    }

    /// Runs what is pending (watch events, triggers, due requeues) until nothing is.
    async fn settle(&mut self) {
        for _ in 0..SETTLE_LIMIT {
            self.deliver();
            while let Ok(o) = self.op.triggers.try_recv() {
                self.op.pending.insert(o.name);
            }
            let now = clock::now();
            let due: Vec<String> = self
                .op
                .requeues
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                self.op.requeues.remove(&k);
                self.op.pending.insert(k);
            }
            let Some(name) = self.op.pending.pop_first() else {
                return;
            };
            self.reconcile(&name).await;
            if !self.op.life.alive() {
                self.restart();
            }
        }
        self.shared.violation(format!(
            "no quiescence after {SETTLE_LIMIT} reconciles in one settle (a hot loop)"
        ));
    }

    async fn reconcile(&mut self, name: &str) {
        let Some(mut obj) = self.op.cache.get(name).cloned() else {
            return;
        };
        self.run.reconciles += 1;
        if self.perturb.stale.contains(&self.run.reconciles) {
            // The cache goes back to the version before (a watch that served an older state,
            // a relist from a lagging API server); the next delivery brings the newest again.
            let h = self.history.get(name).map(Vec::as_slice).unwrap_or_default();
            if let Some(i) = h.iter().position(|o| version(o) == version(&obj))
                && i > 0
            {
                obj = h[i - 1].clone();
                self.op.writer.apply_watcher_event(&watcher::Event::Apply(obj.clone()));
                self.op.cache.insert(name.to_string(), obj.clone());
                self.delivered_at = None;
            }
        }
        let result = reconcile::reconcile_inner(&obj, &self.op.ctx).await;
        if std::env::var_os("SIM_TRACE").is_some() {
            let st = obj
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, conditions::READY).map(|c| c.reason.clone()));
            let written = self
                .op
                .ctx
                .memory
                .read(&ObjectRef::from_obj(&obj), |e| e.written)
                .flatten();
            let stored = self
                .shared
                .kube
                .get(&path(name))
                .map(|v| v["metadata"]["resourceVersion"].clone());
            println!(
                "  reconcile #{} {name} rv {:?} (shown {st:?}) -> {result:?}; effects {}, own write {written:?}, stored {stored:?}",
                self.run.reconciles,
                obj.metadata.resource_version,
                self.shared.effects.load(Ordering::SeqCst)
            );
        }
        let next = match result {
            Ok(next) => next,
            Err(e) => self.op.ctx.memory.retry(&obj, &e),
        };
        match next {
            Next::AwaitChange => {
                self.op.requeues.remove(name);
            }
            Next::After(d) => {
                let at = clock::now().checked_add(d).unwrap_or(Timestamp::MAX);
                self.op.requeues.insert(name.to_string(), at);
            }
        }
    }

    /// Once perturbations stop: sweeps a poll interval apart until every resource is Ready or
    /// in a terminal reason, then two more rounds that must write nothing.
    async fn quiet(&mut self) {
        self.perturb = Perturb::default();
        lock(&self.shared.crash_after).clear();
        lock(&self.shared.faults).clear();
        if !self.op.life.alive() {
            self.restart();
        }
        for _ in 0..QUIET_ROUNDS {
            self.clock.advance(POLL);
            self.sweep().await;
            self.settle().await;
        }
        self.check_end();
        let (writes, updates, creates) = self.writes();
        for _ in 0..2 {
            self.clock.advance(POLL);
            self.sweep().await;
            self.settle().await;
        }
        if self.writes() != (writes, updates, creates) {
            self.shared.violation(format!(
                "writes after convergence: {:?} -> {:?} (API, updates, creates)",
                (writes, updates, creates),
                self.writes()
            ));
        }
    }

    fn writes(&self) -> (usize, usize, usize) {
        (
            self.shared.kube.write_count(),
            self.shared.macie.updates().len(),
            self.shared.macie.creates().len(),
        )
    }

    fn check_end(&self) {
        let shared = &self.shared;
        for name in &self.names {
            let Some(v) = shared.kube.get(&path(name)) else {
                continue;
            };
            let Ok(o) = serde_json::from_value::<MacieJob>(v) else {
                continue;
            };
            if o.metadata.deletion_timestamp.is_some() && o.spec.deletion_policy == crate::api::DeletionPolicy::Orphan {
                shared.violation(format!("{name}: deleted but still held"));
            }
            let st = o.status.clone().unwrap_or_default();
            let Some(ready) = conditions::find(&st.conditions, conditions::READY) else {
                shared.violation(format!("{name}: no Ready condition"));
                continue;
            };
            if st.observed_generation != o.metadata.generation {
                shared.violation(format!(
                    "{name}: observedGeneration {:?} behind",
                    st.observed_generation
                ));
            }
            let terminal = [
                "Converged",
                "NameInUse",
                "Conflict",
                "TerminalState",
                "NotPermitted",
                "PausedByMacie",
                "AmbiguousName",
                "JobNotFound",
            ];
            if !terminal.contains(&ready.reason.as_str()) {
                shared.violation(format!(
                    "{name}: stuck in {} after {QUIET_ROUNDS} quiet sweeps: {}",
                    ready.reason, ready.message
                ));
            }
            if ready.reason == "Converged" {
                let shown = st.job.clone().unwrap_or_default();
                let actual = shared.macie.status(REGION, &shown.job_id).unwrap_or_default();
                let ok = match o.spec.job_status {
                    Some(DesiredJobStatus::Running) => ["RUNNING", "IDLE", "COMPLETE"].contains(&actual.as_str()),
                    Some(other) => actual == other.as_str(),
                    None => true,
                };
                if !ok || actual != shown.job_status {
                    shared.violation(format!(
                        "{name}: Converged but job {} is {actual} (status shows {})",
                        shown.job_id, shown.job_status
                    ));
                }
            }
        }
    }
}

/// Runs `scenario` under `perturb`; the run's counts and violations.
pub fn run(scenario: &Scenario, perturb: Perturb, seed: u64) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut sim = Sim::new(scenario, perturb, seed);
        for o in &scenario.ops {
            sim.apply(o).await;
        }
        sim.quiet().await;
        let mut run = std::mem::take(&mut sim.run);
        run.effects = sim.shared.effects.load(Ordering::SeqCst);
        run.violations = lock(&sim.shared.violations).clone();
        run
    })
}

fn rules(names: &[&str], allow_cancel: bool, allow_create: bool) -> JobRules {
    JobRules {
        names: names.iter().map(|n| n.to_string()).collect(),
        allow_cancel,
        allow_create,
        ..JobRules::default()
    }
}

fn by_id(id: &str, status: &str) -> Value {
    json!({"jobId": id, "jobStatus": status})
}

fn definition(name: &str, status: &str) -> Value {
    json!({"jobName": name, "jobStatus": status, "definition": {
        "jobType": "ONE_TIME",
        "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b1"]}]}
    }})
}

/// The corpus: every path of the controller.
pub fn corpus() -> Vec<Scenario> {
    use Op::*;
    let all = rules(&["*"], true, true);
    let round = || vec![Sweep, Settle, Advance(POLL)];
    let mut flip = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "USER_PAUSED")),
        Settle,
    ];
    flip.extend(round());
    flip.extend(round());
    flip.extend([Apply("m", by_id("j1", "RUNNING")), Settle]);
    flip.extend(round());
    // A call confirmed by a read of the job before the next sweep; the job changed back out of
    // band after it (a list that still shows the old status is held against for the step
    // timeout, then believed).
    let mut confirm = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "RUNNING")),
        Sweep,
        Settle,
        Apply("m", by_id("j1", "USER_PAUSED")),
        Settle,
        Advance(Duration::from_secs(1)),
        Confirm,
        Settle,
        Job("j1", "nightly", "RUNNING", None),
    ];
    confirm.extend(round());
    confirm.extend([Advance(STEP_TIMEOUT)]);
    confirm.extend(round());
    confirm.extend(round());
    confirm.extend([
        Apply("m", by_id("j1", "RUNNING")),
        Settle,
        Advance(Duration::from_secs(1)),
        Confirm,
        Settle,
    ]);
    confirm.extend(round());
    let mut drift = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "RUNNING")),
        Settle,
    ];
    drift.extend(round());
    drift.extend([Job("j1", "nightly", "USER_PAUSED", None)]);
    drift.extend(round());
    drift.extend(round());
    let mut conflict = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("a", by_id("j1", "USER_PAUSED")),
        Apply("b", json!({"jobName": "nightly", "jobStatus": "RUNNING"})),
        Settle,
    ];
    conflict.extend(round());
    conflict.extend([Delete("b"), Settle]);
    conflict.extend(round());
    let mut refusal = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "CANCELLED")),
        Settle,
    ];
    refusal.extend(round());
    refusal.extend([Rules(rules(&["*"], true, false)), Settle]);
    refusal.extend(round());
    let mut create_lost = vec![
        Inject(Fault::LoseCreateAnswer),
        Apply("m", definition("scan", "RUNNING")),
        Sweep,
        Settle,
    ];
    create_lost.extend(round());
    create_lost.extend(round());
    create_lost.extend([Apply("m", definition("scan", "USER_PAUSED")), Settle]);
    create_lost.extend(round());
    let mut cancel_on_delete = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply(
            "m",
            json!({"jobId": "j1", "jobStatus": "RUNNING", "deletionPolicy": "Cancel"}),
        ),
        Settle,
    ];
    cancel_on_delete.extend(round());
    cancel_on_delete.extend([Delete("m"), Settle]);
    cancel_on_delete.extend(round());
    cancel_on_delete.extend(round());
    let mut handover = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "USER_PAUSED")),
        Sweep,
        Handover,
        Settle,
    ];
    handover.extend(round());
    handover.extend(round());
    let name_race = vec![
        Apply("first", by_id("j0", "RUNNING")),
        Job("j0", "other", "RUNNING", None),
        Sweep,
        Settle,
        Job("theirs", "scan", "RUNNING", Some("console")),
        Apply("m", definition("scan", "RUNNING")),
        Settle,
    ];
    let mut faults = vec![
        Job("j1", "nightly", "RUNNING", None),
        Inject(Fault::ThrottleUpdate),
        Inject(Fault::LoseUpdateAnswer),
        Apply("m", by_id("j1", "USER_PAUSED")),
        Sweep,
        Settle,
    ];
    for _ in 0..3 {
        faults.extend(round());
    }
    faults.extend([
        Inject(Fault::ServerErrorUpdate),
        Inject(Fault::FailList),
        Apply("m", by_id("j1", "RUNNING")),
        Settle,
    ]);
    for _ in 0..3 {
        faults.extend(round());
    }
    let mut sweep_during_call = vec![
        Job("j1", "nightly", "RUNNING", None),
        Apply("m", by_id("j1", "RUNNING")),
        Sweep,
        Settle,
    ];
    sweep_during_call.extend([
        Apply("m", by_id("j1", "USER_PAUSED")),
        Advance(Duration::from_secs(1)),
        Job("j1", "nightly", "PAUSED", None),
        Advance(Duration::from_secs(1)),
        SlowSweep,
        Settle,
    ]);
    sweep_during_call.extend(round());
    vec![
        Scenario {
            name: "sweep-during-call",
            rules: all.clone(),
            ops: sweep_during_call,
        },
        Scenario {
            name: "flip",
            rules: all.clone(),
            ops: flip,
        },
        Scenario {
            name: "confirm",
            rules: all.clone(),
            ops: confirm,
        },
        Scenario {
            name: "drift",
            rules: all.clone(),
            ops: drift,
        },
        Scenario {
            name: "conflict",
            rules: all.clone(),
            ops: conflict,
        },
        Scenario {
            name: "refusal",
            rules: rules(&["*"], false, false),
            ops: refusal,
        },
        Scenario {
            name: "create-lost",
            rules: all.clone(),
            ops: create_lost,
        },
        Scenario {
            name: "cancel-on-delete",
            rules: all.clone(),
            ops: cancel_on_delete,
        },
        Scenario {
            name: "handover",
            rules: all.clone(),
            ops: handover,
        },
        Scenario {
            name: "name-race",
            rules: all.clone(),
            ops: name_race,
        },
        Scenario {
            name: "faults",
            rules: all,
            ops: faults,
        },
    ]
}

#[test]
fn the_corpus_converges_unperturbed() {
    for s in corpus() {
        let r = run(&s, Perturb::default(), 1);
        assert!(r.violations.is_empty(), "{}: {:#?}", s.name, r.violations);
        assert!(r.effects > 0 && r.reconciles > 0, "{}: {r:?}", s.name);
    }
}

/// Every injection point of every scenario: a crash after each effect, a stale copy at each
/// step, a dropped delivery at each delivery.
#[test]
fn every_injection_point_of_the_corpus_keeps_the_promise() {
    crate::runtime::sim::every_point_of(
        &corpus(),
        |s| s.name,
        |s| {
            let base = run(s, Perturb::default(), 1);
            (base.effects, base.reconciles, base.deliveries)
        },
        |s, p| run(s, p.clone(), 1).violations,
    );
}

/// The schedule of `seed`: a corpus scenario with random operations inserted (faults, spec
/// flips, out-of-band changes, time, sweeps, handovers) under random perturbations.
pub fn schedule(seed: u64) -> (Scenario, Perturb) {
    use Op::*;
    let mut rng = Rng::new(seed);
    let mut s = rng.pick(&corpus());
    let extra = [
        Inject(Fault::ThrottleUpdate),
        Inject(Fault::ServerErrorUpdate),
        Inject(Fault::LoseUpdateAnswer),
        Inject(Fault::ThrottleCreate),
        Inject(Fault::LoseCreateAnswer),
        Inject(Fault::FailList),
        Job("j1", "nightly", "USER_PAUSED", None),
        Job("j1", "nightly", "RUNNING", None),
        Job("j1", "nightly", "COMPLETE", None),
        Job("j1", "nightly", "PAUSED", None),
        Apply("m", by_id("j1", "RUNNING")),
        Apply("m", by_id("j1", "USER_PAUSED")),
        Apply("m", definition("scan", "USER_PAUSED")),
        Advance(Duration::from_secs(1)),
        Advance(STEP_TIMEOUT),
        Sweep,
        SlowSweep,
        Confirm,
        Confirm,
        Settle,
        Handover,
    ];
    rng.insert_some(&mut s.ops, &extra, 5);
    let p = Perturb::random(&mut rng, 40, 60, 8);
    (s, p)
}

/// What the schedule of `seed` is (printed with a failure and when a seed is replayed).
fn describe(seed: u64) -> String {
    let (s, p) = schedule(seed);
    format!("scenario {} ops {:?} under {p:?}", s.name, s.ops)
}

/// The schedule of `seed` run; its violations with the seed and schedule, if any.
pub fn check(seed: u64) -> Option<String> {
    let (s, p) = schedule(seed);
    let r = run(&s, p, seed);
    (!r.violations.is_empty()).then(|| {
        format!(
            "seed {seed} (replay: SIM_SEED={seed} make sim): {:?}\n{}",
            r.violations,
            describe(seed)
        )
    })
}

/// `SIM_SEED` replays one schedule; else `SIM_SCHEDULES` random schedules (10,000 unless set).
#[test]
fn random_schedules_keep_the_promise() {
    crate::runtime::sim::random_schedules(describe, check);
}

/// `SIM_TRACE=<scenario>` runs that scenario of the corpus unperturbed, printing each step
/// (with `make sim`, any `SIM_TRACE` prints the steps of the schedules run).
#[test]
fn trace_one() {
    let Ok(name) = std::env::var("SIM_TRACE") else { return };
    let Some(s) = corpus().into_iter().find(|s| s.name == name) else {
        return;
    };
    let r = run(&s, Perturb::default(), 1);
    println!("{r:#?}");
}
