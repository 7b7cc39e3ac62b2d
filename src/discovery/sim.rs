//! The perturbation harness of the MacieDiscovery controller (the middle test layer: in
//! process, virtual time, deterministic). A scenario of the corpus (user edits, member
//! accounts changing out of band, Macie faults, rules changes, a leader handover) is run
//! against the real reconcile, the real engine (a manual one: its passes run on the harness's
//! task when `engine_loop` would run them) and the real per-resource memory, with the fake API
//! server and the fake discovery API behind them, while the harness perturbs what the
//! controller sees the three ways Sieve (OSDI 2022) names:
//!
//! - **intermediate states**: the process crashes right after its n-th effect (a
//!   BatchUpdateAutomatedDiscoveryAccounts, a status write, an Event) and a new one starts from
//!   what the API server and Macie hold;
//! - **stale states**: at the n-th step (a reconcile or an engine pass, counted together) the
//!   cache goes back to the version of the object before the one it held (at a pass, every
//!   object: a relist from a lagging API server); the next delivery brings the newest again;
//! - **unobserved states**: the n-th watch delivery is dropped (coalesced into the next).
//!
//! The injection-point test runs every injection point of every scenario; `check` runs the
//! seeded schedule of one seed (`schedule`), one that mixes those with Macie faults, spec
//! changes and out-of-band changes. Checked at every BatchUpdateAutomatedDiscoveryAccounts: the
//! write gate is open, the MacieAccount's discovery rules allow every row, every row asks what
//! each declaration of the account in the newest version of the resources the process has seen
//! asks (no account two resources disagree on, nothing from an older version), and no account
//! is sent the status it already has unless Macie changed it out of band since the process last
//! observed it, or another process's change was still hidden from lists then (no repeated
//! write). Checked at every status write: a condition's transition time moves only with a
//! transition. Checked at the end, once perturbations stop: every resource reaches Ready or a
//! documented terminal reason within a bounded number of poll intervals, every account the
//! declarations agree on is in its desired status, and then nothing more is written.
//!
//! A failure prints its seed and schedule; `SIM_SEED=<seed> make sim` replays it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};

use super::*;
use crate::account::testing::Fed;
use crate::api::conditions;
use crate::api::macie_account::{DiscoveryRules, JobRules};
use crate::api::{DiscoveryStatus, MacieAccountSpec};
use crate::macie::discovery::DiscoveryApi;
use crate::macie::fake_discovery::{self, FakeDiscovery};
use crate::runtime::clock::{self, VirtualClock};
use crate::runtime::fake_kube::{FakeKube, Process, Write};
use crate::runtime::gate::WriteGate;
pub use crate::runtime::sim::Perturb;
use crate::runtime::sim::Rng;

const REGION: &str = "us-east-1";
const PLURAL: &str = "maciediscoveries";
const POLL: Duration = Duration::from_secs(60);
const BATCH_WINDOW: Duration = Duration::from_secs(2);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any run: a per-account error stays until the declaration changes.
const ERROR_RETRY: Duration = Duration::from_secs(3600);
/// Shorter than the step timeout (a longer one makes a send that did not show in time go
/// again, by design).
const VISIBILITY: Duration = Duration::from_secs(10);
/// How far ahead a settle moves time to what is due (a kicked pass, a confirmation, a
/// throttling backoff, a requeue).
const HORIZON: Duration = Duration::from_secs(5);
/// Steps (reconciles and passes) one settle may run before the harness calls it a hot loop.
const SETTLE_LIMIT: usize = 150;
/// Poll intervals every resource gets to converge once perturbations stop.
const QUIET_ROUNDS: usize = 6;

/// Member accounts, and one that is not a member.
const A: &str = "111111111111";
const B: &str = "222222222222";
const C: &str = "333333333333";
const NOT_MEMBER: &str = "444444444444";

/// A Macie fault, for the next call of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ThrottleBatch,
    /// A 5xx: not processed, the outcome unknown to the caller.
    ServerErrorBatch,
    /// Processed, then the answer is lost.
    LoseBatchAnswer,
    /// Access denied: not processed, an error on every row.
    DenyBatch,
    FailList,
}

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Op {
    /// A user applies a MacieDiscovery `name` declaring `accounts` (created, or its spec
    /// replaced).
    Apply(&'static str, &'static [(&'static str, &'static str)]),
    Delete(&'static str),
    /// A member account appears or changes its status out of band.
    Member(&'static str, &'static str),
    /// A member is paused (its updates answered ACCOUNT_PAUSED) or resumed.
    Pause(&'static str, bool),
    /// The default MacieAccount's discovery rules change: (account ids, allowed statuses).
    Rules(&'static [&'static str], &'static [&'static str]),
    /// The rules change during the next observation: after an engine decided what to send,
    /// before it sends.
    RulesMidPass(&'static [&'static str], &'static [&'static str]),
    /// Changes show in lists only `VISIBILITY` later (or at once again).
    Delay(bool),
    Inject(Fault),
    /// Watch events, triggers, passes and requeues until nothing is due within the horizon.
    Settle,
    Advance(Duration),
    /// The leader loses its lease (its gate closes), settles what it was doing, and a new
    /// process takes over.
    Handover,
}

/// A named scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub ops: Vec<Op>,
}

/// What a run counted and found.
#[derive(Debug, Default, Clone)]
pub struct Run {
    pub effects: u64,
    pub reconciles: u64,
    pub passes: u64,
    pub deliveries: u64,
    pub violations: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_of(s: &str) -> DiscoveryStatus {
    if s == "ENABLED" {
        DiscoveryStatus::Enabled
    } else {
        DiscoveryStatus::Disabled
    }
}

fn rules_of(ids: &[&str], statuses: &[&str]) -> DiscoveryRules {
    DiscoveryRules {
        account_ids: ids.iter().map(|s| s.to_string()).collect(),
        allowed_statuses: statuses.iter().map(|s| status_of(s)).collect(),
    }
}

/// The harness's own reading of the rules (not the operator's).
fn allowed(rules: &DiscoveryRules, id: &str, status: DiscoveryStatus) -> bool {
    rules.account_ids.iter().any(|a| a == "*" || a == id) && rules.allowed_statuses.contains(&status)
}

fn place() -> Place {
    Place::new("default", REGION)
}

/// What the harness and the processes share.
struct Shared {
    kube: FakeKube,
    macie: Arc<FakeDiscovery>,
    fed: Mutex<Fed>,
    effects: AtomicU64,
    crash_after: BTreeSet<u64>,
    violations: Mutex<Vec<String>>,
    faults: Mutex<VecDeque<Fault>>,
    rules: Mutex<DiscoveryRules>,
    /// Rules that take effect during the next observation, and whether rules changed since the
    /// harness last told the process.
    rules_mid_pass: Mutex<Option<DiscoveryRules>>,
    rules_changed: AtomicBool,
    /// When each account last changed out of band, and which process's batch made its status
    /// (None: out of band).
    changed_at: Mutex<HashMap<String, Timestamp>>,
    set_by: Mutex<HashMap<String, u64>>,
}

impl Shared {
    fn violation(&self, v: String) {
        lock(&self.violations).push(v);
    }

    fn fault(&self, kinds: &[Fault]) -> Option<Fault> {
        let mut q = lock(&self.faults);
        let i = q.iter().position(|f| kinds.contains(f))?;
        q.remove(i)
    }

    fn set_rules(&self, rules: DiscoveryRules) {
        lock(&self.fed).put_verified("default", account_spec(&rules));
        *lock(&self.rules) = rules;
        self.rules_changed.store(true, Ordering::SeqCst);
    }
}

fn account_spec(rules: &DiscoveryRules) -> MacieAccountSpec {
    MacieAccountSpec {
        role_arn: None,
        external_id: None,
        regions: vec![REGION.into()],
        namespace_selector: Default::default(),
        jobs: JobRules::default(),
        discovery: rules.clone(),
    }
}

/// One operator process: alive until it crashes.
struct Life {
    id: u64,
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
        if self.shared.crash_after.contains(&n) {
            self.alive.store(false, Ordering::SeqCst);
        }
    }
}

fn dead() -> MacieError {
    MacieError::Uncertain {
        code: "ProcessDead".into(),
        message: "the process is dead".into(),
    }
}

/// The fake discovery API as one process reaches it: nothing once the process is dead,
/// faults as the schedule queues them, and every batch checked against the promise.
struct Fenced {
    life: Arc<Life>,
    gate: WriteGate,
    /// The newest version of each resource this process's watch delivered, by name.
    seen: Arc<Mutex<BTreeMap<String, MacieDiscovery>>>,
    /// Per account: the time of this process's latest observation of it and what it showed.
    observed: Mutex<HashMap<String, (Timestamp, Option<DiscoveryStatus>)>>,
}

fn error(kind: Fault) -> MacieError {
    let (code, message) = (format!("{kind:?}"), "injected".to_string());
    match kind {
        Fault::ThrottleBatch => MacieError::Throttled { code, message },
        Fault::DenyBatch => MacieError::AccessDenied { code, message },
        _ => MacieError::Uncertain { code, message },
    }
}

impl Fenced {
    fn shared(&self) -> &Shared {
        &self.life.shared
    }

    fn check_batch(&self, rows: &[(String, DiscoveryStatus)]) {
        let shared = self.shared();
        if !self.gate.allows_writes() {
            shared.violation(format!("BatchUpdate {rows:?} while the write gate is closed"));
        }
        let rules = lock(&shared.rules).clone();
        for (id, status) in rows {
            if !allowed(&rules, id, *status) {
                shared.violation(format!("BatchUpdate {id} -> {status:?} outside the rules"));
            }
            self.check_declared(&rules, id, *status);
            self.check_not_repeated(id, *status);
        }
    }

    /// Every declaration of the account the rules allow, in the newest version of each
    /// resource this process has seen, asks for `status`.
    fn check_declared(&self, rules: &DiscoveryRules, id: &str, status: DiscoveryStatus) {
        let seen = lock(&self.seen);
        let asks: Vec<(String, DiscoveryStatus)> = seen
            .values()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .flat_map(|o| o.spec.accounts.iter().map(move |a| (o.name_any(), a)))
            .filter(|(_, a)| a.account_id == id && allowed(rules, id, a.status))
            .map(|(n, a)| (n, a.status))
            .collect();
        if asks.is_empty() || asks.iter().any(|(_, s)| *s != status) {
            self.shared().violation(format!(
                "BatchUpdate {id} -> {status:?} where the newest declarations seen ask {asks:?}"
            ));
        }
    }

    /// Not the status the account has, unless Macie changed it out of band since this
    /// process observed it, or another process's change was hidden from that observation.
    fn check_not_repeated(&self, id: &str, status: DiscoveryStatus) {
        let shared = self.shared();
        if shared.macie.status(&place(), id) != Some(status) {
            return;
        }
        let Some((at, shown)) = lock(&self.observed).get(id).copied() else {
            shared.violation(format!("BatchUpdate {id} -> {status:?} never observed"));
            return;
        };
        let out_of_band = lock(&shared.changed_at).get(id).is_some_and(|c| *c >= at);
        let hidden = shown != Some(status) && lock(&shared.set_by).get(id).is_some_and(|p| *p != self.life.id);
        if !out_of_band && !hidden {
            shared.violation(format!(
                "repeated BatchUpdate {id} -> {status:?}: it has it (observed {shown:?} at {at})"
            ));
        }
    }

    /// Records which process's batch changed each account.
    fn record_changes(&self, before: usize) {
        let shared = self.shared();
        let batches = shared.macie.batches();
        let mut set_by = lock(&shared.set_by);
        for row in batches.iter().skip(before).flat_map(|b| &b.rows) {
            if row.outcome == "OK" && row.previous != Some(row.status) {
                set_by.insert(row.account_id.clone(), self.life.id);
            }
        }
    }
}

impl DiscoveryApi for Fenced {
    fn list_accounts<'a>(
        &'a self,
        place: &'a Place,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, DiscoveryStatus>, MacieError>> {
        Box::pin(async move {
            if !self.life.alive() {
                return Err(dead());
            }
            let shared = self.shared();
            if let Some(rules) = lock(&shared.rules_mid_pass).take() {
                shared.set_rules(rules);
            }
            if let Some(f) = shared.fault(&[Fault::FailList]) {
                return Err(error(f));
            }
            let listed = shared.macie.list_accounts(place, ids).await?;
            let now = clock::now();
            let mut observed = lock(&self.observed);
            for id in ids {
                observed.insert(id.clone(), (now, listed.get(id).copied()));
            }
            Ok(listed)
        })
    }

    fn batch_update<'a>(
        &'a self,
        place: &'a Place,
        updates: &'a [(String, DiscoveryStatus)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MacieError>> {
        Box::pin(async move {
            if !self.life.alive() {
                return Err(dead());
            }
            self.check_batch(updates);
            let shared = self.shared();
            let kinds = [
                Fault::ThrottleBatch,
                Fault::ServerErrorBatch,
                Fault::LoseBatchAnswer,
                Fault::DenyBatch,
            ];
            match shared.fault(&kinds) {
                Some(Fault::LoseBatchAnswer) => shared.macie.fail_next_batch(fake_discovery::Fault::Lost),
                Some(f) => shared.macie.fail_next_batch(fake_discovery::Fault::Fail(error(f))),
                None => {}
            }
            let before = shared.macie.batches().len();
            let result = shared.macie.batch_update(place, updates).await;
            self.record_changes(before);
            self.life.counted();
            result
        })
    }
}

/// A status write never moves a condition's transition time without a transition (a status
/// built from a copy older than the one it replaces).
fn check_status_write(shared: &Shared, stored: &Value, written: &Value) {
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

/// One operator process as the harness drives it.
struct Operator {
    ctx: Context,
    life: Arc<Life>,
    gate: WriteGate,
    writer: Writer<MacieDiscovery>,
    triggers: futures::channel::mpsc::UnboundedReceiver<ObjectRef<MacieDiscovery>>,
    /// What its cache holds, by name.
    cache: BTreeMap<String, MacieDiscovery>,
    /// The newest version its watch delivered, by name.
    seen: Arc<Mutex<BTreeMap<String, MacieDiscovery>>>,
    pending: BTreeSet<String>,
    requeues: BTreeMap<String, Timestamp>,
    /// Whether the watch listed once (InitDone).
    listed: bool,
}

fn start(shared: &Arc<Shared>, id: u64) -> Operator {
    let life = Arc::new(Life {
        id,
        alive: AtomicBool::new(true),
        shared: shared.clone(),
    });
    let client = shared.kube.client_of(life.clone());
    // A leader's gate, open until the lease is lost.
    let gate = WriteGate::closed();
    gate.extend(std::time::Instant::now(), Duration::from_secs(1 << 30));
    let seen: Arc<Mutex<BTreeMap<String, MacieDiscovery>>> = Arc::default();
    let api = Arc::new(Fenced {
        life: life.clone(),
        gate: gate.clone(),
        seen: seen.clone(),
        observed: Mutex::default(),
    });
    let clients = Arc::new(
        MacieClients::new(aws_config::SdkConfig::builder().build(), None)
            .with_discovery_api(api)
            .with_gate(gate.clone()),
    );
    let (store, writer) = reflector::store::<MacieDiscovery>();
    let (trigger, triggers) = futures::channel::mpsc::unbounded();
    let config = Config {
        default_region: REGION.into(),
        poll_interval: POLL,
        batch_window: BATCH_WINDOW,
        plan: Settings {
            step_timeout: STEP_TIMEOUT,
            error_retry: ERROR_RETRY,
            batch_size: 2,
        },
        namespace: None,
        instance: None,
    };
    let tenancy = lock(&shared.fed).tenancy.clone();
    let engines = Arc::new(Engines {
        manual: Some(Mutex::default()),
        ..Engines::new(clients, tenancy, config, store, trigger)
    });
    let ctx = Context {
        recorder: Recorder::new(client.clone(), MANAGER, None),
        client,
        engines,
        memory: Arc::default(),
    };
    Operator {
        ctx,
        life,
        gate,
        writer,
        triggers,
        cache: BTreeMap::new(),
        seen,
        pending: BTreeSet::new(),
        requeues: BTreeMap::new(),
        listed: false,
    }
}

/// One run of a scenario under a perturbation.
struct Sim {
    shared: Arc<Shared>,
    clock: VirtualClock,
    op: Operator,
    processes: u64,
    perturb: Perturb,
    run: Run,
    /// Every version of each object the watch delivered, oldest first.
    history: HashMap<String, Vec<MacieDiscovery>>,
    /// The API server's version at the last complete delivery.
    delivered_at: Option<u64>,
    /// Reconciles and passes so far (the stale perturbation's count).
    steps: u64,
}

fn path(name: &str) -> String {
    format!("/apis/macie.kubeops.dev/v1alpha1/namespaces/ns/{PLURAL}/{name}")
}

fn version(o: &MacieDiscovery) -> Option<String> {
    o.metadata.resource_version.clone()
}

impl Sim {
    fn new(perturb: Perturb, seed: u64) -> Sim {
        let clock = VirtualClock::install(
            Timestamp::from_second(1_900_000_000).unwrap_or(Timestamp::UNIX_EPOCH),
            seed,
        );
        let rules = rules_of(&["*"], &["ENABLED", "DISABLED"]);
        let mut fed = Fed::new("default");
        fed.put_verified("default", account_spec(&rules));
        fed.put_namespace("ns", &[]);
        let shared = Arc::new(Shared {
            kube: FakeKube::default(),
            macie: Arc::new(FakeDiscovery::default()),
            fed: Mutex::new(fed),
            effects: AtomicU64::new(0),
            crash_after: perturb.crash_after.clone(),
            violations: Mutex::default(),
            faults: Mutex::default(),
            rules: Mutex::new(rules),
            rules_mid_pass: Mutex::default(),
            rules_changed: AtomicBool::new(false),
            changed_at: Mutex::default(),
            set_by: Mutex::default(),
        });
        for (id, s) in [(A, "DISABLED"), (B, "DISABLED"), (C, "ENABLED")] {
            shared.macie.put(&place(), id, status_of(s));
        }
        let checked = shared.clone();
        shared
            .kube
            .check_status_writes(move |stored, written| check_status_write(&checked, stored, written));
        let op = start(&shared, 1);
        Sim {
            shared,
            clock,
            op,
            processes: 1,
            perturb,
            run: Run::default(),
            history: HashMap::new(),
            delivered_at: None,
            steps: 0,
        }
    }

    async fn apply(&mut self, o: &Op) {
        if std::env::var_os("SIM_TRACE").is_some() {
            println!("op {o:?} at {}", clock::now());
        }
        match o {
            Op::Apply(name, accounts) => self.put(name, accounts),
            Op::Delete(name) => self.shared.kube.edit(&path(name), |o| {
                o["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
            }),
            Op::Member(id, status) => {
                self.shared.macie.put(&place(), id, status_of(status));
                lock(&self.shared.changed_at).insert(id.to_string(), clock::now());
                lock(&self.shared.set_by).remove(*id);
            }
            Op::Pause(id, paused) => self.shared.macie.pause(&place(), id, *paused),
            Op::Rules(ids, statuses) => self.shared.set_rules(rules_of(ids, statuses)),
            Op::RulesMidPass(ids, statuses) => {
                *lock(&self.shared.rules_mid_pass) = Some(rules_of(ids, statuses));
            }
            Op::Delay(on) => self
                .shared
                .macie
                .delay_visibility(if *on { VISIBILITY } else { Duration::ZERO }),
            Op::Inject(f) => lock(&self.shared.faults).push_back(*f),
            Op::Settle => self.settle().await,
            Op::Advance(d) => self.clock.advance(*d),
            Op::Handover => {
                self.op.gate.close();
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
    fn put(&mut self, name: &str, accounts: &[(&str, &str)]) {
        let spec = json!({
            "accounts": accounts.iter().map(|(id, s)| json!({"accountId": id, "status": s})).collect::<Vec<_>>(),
        });
        let p = path(name);
        if self.shared.kube.get(&p).is_some() {
            self.shared.kube.edit(&p, move |o| o["spec"] = spec);
            return;
        }
        let obj = json!({
            "apiVersion": "macie.kubeops.dev/v1alpha1",
            "kind": "MacieDiscovery",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}-{}", self.shared.kube.version()),
                         "generation": 1, "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": spec,
        });
        self.shared.kube.put(obj, PLURAL);
    }

    /// A new process takes over from what the API server and Macie hold.
    fn restart(&mut self) {
        self.processes += 1;
        self.op = start(&self.shared, self.processes);
        self.delivered_at = None;
        self.deliver();
    }

    /// The watch: every object whose version the cache does not hold is delivered (unless the
    /// schedule drops that delivery); the first complete one ends the initial list.
    fn deliver(&mut self) {
        let at = self.shared.kube.version();
        if self.delivered_at == Some(at) {
            return;
        }
        let mut complete = true;
        let stored: BTreeMap<String, MacieDiscovery> = self
            .shared
            .kube
            .paths()
            .iter()
            .filter_map(|p| self.shared.kube.get(p))
            .filter_map(|v| serde_json::from_value::<MacieDiscovery>(v).ok())
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
                lock(&self.op.seen).remove(&name);
                self.event(watcher::Event::Delete(o));
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
            let h = self.history.entry(name.clone()).or_default();
            if h.last().and_then(version) != version(&obj) {
                h.push(obj.clone());
            }
            self.op.cache.insert(name.clone(), obj.clone());
            lock(&self.op.seen).insert(name.clone(), obj.clone());
            self.event(watcher::Event::Apply(obj));
            self.op.pending.insert(name);
        }
        if complete && !self.op.listed {
            self.op.listed = true;
            self.event(watcher::Event::InitDone);
        }
        self.delivered_at = complete.then_some(at);
    }

    /// One watch event as the controller's stream handles it: into the store, then the
    /// engines and the memory.
    fn event(&mut self, e: watcher::Event<MacieDiscovery>) {
        // (The store's own InitDone would swap in the objects of an Init it was not sent.)
        if !matches!(e, watcher::Event::InitDone) {
            self.op.writer.apply_watcher_event(&e);
        }
        let engines = &self.op.ctx.engines;
        engines.on_event(&e);
        forget_gone(&self.op.ctx.memory, &e, &engines.store);
    }

    /// The cache goes back to the version before the one it holds of `name` (a watch that
    /// served an older state, a relist from a lagging API server); the next delivery brings
    /// the newest again.
    fn go_stale(&mut self, name: &str) {
        let Some(held) = self.op.cache.get(name) else { return };
        let h = self.history.get(name).map(Vec::as_slice).unwrap_or_default();
        if let Some(i) = h.iter().position(|o| version(o) == version(held))
            && i > 0
        {
            let older = h[i - 1].clone();
            self.op
                .writer
                .apply_watcher_event(&watcher::Event::Apply(older.clone()));
            self.op.cache.insert(name.to_string(), older);
            self.delivered_at = None;
        }
    }

    /// Whether the next step meets a stale cache.
    fn next_step_stale(&mut self) -> bool {
        self.steps += 1;
        self.perturb.stale.contains(&self.steps)
    }

    /// Runs what is due (watch events, triggers, requeues, engine passes) until nothing is
    /// within the horizon.
    async fn settle(&mut self) {
        for _ in 0..SETTLE_LIMIT {
            if !self.step().await {
                return;
            }
            if !self.op.life.alive() {
                self.restart();
            }
        }
        self.shared.violation(format!(
            "no quiescence after {SETTLE_LIMIT} steps in one settle (a hot loop)"
        ));
    }

    /// One reconcile or pass that is due, or else time moved to the next one within the
    /// horizon; false when nothing is due within it.
    async fn step(&mut self) -> bool {
        {
            self.deliver();
            if self.shared.rules_changed.swap(false, Ordering::SeqCst) {
                // What follow_tenancy does on a MacieAccount change.
                self.op.ctx.engines.kick_where(|_, _| true);
                self.op.pending.extend(self.op.cache.keys().cloned());
            }
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
            if let Some(name) = self.op.pending.pop_first() {
                self.reconcile(&name).await;
                return true;
            }
            if self.pass().await {
                return true;
            }
            let Some(wait) = self.next_due() else { return false };
            if wait > HORIZON {
                return false;
            }
            self.clock.advance(wait);
            true
        }
    }

    /// How long until the next requeue or engine pass.
    fn next_due(&self) -> Option<Duration> {
        let now = clock::now();
        let requeue = self
            .op
            .requeues
            .values()
            .min()
            .map(|at| now.duration_until(*at).unsigned_abs());
        let pass = self
            .op
            .ctx
            .engines
            .next_pass()
            .map(|at| at.into_std().saturating_duration_since(clock::instant()));
        requeue.into_iter().chain(pass).min()
    }

    /// The engine passes due now; whether one ran.
    async fn pass(&mut self) -> bool {
        let engines = self.op.ctx.engines.clone();
        let due = engines.next_pass().is_some_and(|at| at.into_std() <= clock::instant());
        if !due || !*engines.store_ready.borrow() {
            return false;
        }
        if self.next_step_stale() {
            let names: Vec<String> = self.op.cache.keys().cloned().collect();
            for n in names {
                self.go_stale(&n);
            }
        }
        let ran = engines.pass_due().await;
        self.run.passes += ran as u64;
        if std::env::var_os("SIM_TRACE").is_some() {
            let v = engines.subscribe(&place()).borrow().clone();
            println!(
                "  pass #{} at {}: accounts {:?}, error {:?}; batches {}",
                self.run.passes,
                clock::now(),
                v.accounts,
                v.api_error,
                self.shared.macie.batches().len()
            );
        }
        ran > 0
    }

    async fn reconcile(&mut self, name: &str) {
        if !self.op.cache.contains_key(name) {
            return;
        }
        self.run.reconciles += 1;
        if self.next_step_stale() {
            self.go_stale(name);
        }
        let Some(obj) = self.op.cache.get(name).cloned() else {
            return;
        };
        let result = reconcile::reconcile_inner(&obj, &self.op.ctx).await;
        if std::env::var_os("SIM_TRACE").is_some() {
            println!(
                "  reconcile #{} {name} rv {:?} -> {result:?}; effects {}",
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

    /// Once perturbations stop: poll intervals until every resource is Ready or in a terminal
    /// reason, then two more that must write nothing.
    async fn quiet(&mut self) {
        self.perturb = Perturb::default();
        lock(&self.shared.faults).clear();
        if !self.op.life.alive() {
            self.restart();
        }
        for _ in 0..QUIET_ROUNDS {
            self.clock.advance(POLL);
            self.settle().await;
        }
        self.check_end();
        let writes = self.writes();
        for _ in 0..2 {
            self.clock.advance(POLL);
            self.settle().await;
        }
        if self.writes() != writes {
            self.shared.violation(format!(
                "writes after convergence: {writes:?} -> {:?} (API, batches)",
                self.writes()
            ));
        }
    }

    fn writes(&self) -> (usize, usize) {
        (self.shared.kube.writes().len(), self.shared.macie.batches().len())
    }

    /// The resources in the API server, by name.
    fn stored(&self) -> BTreeMap<String, MacieDiscovery> {
        self.shared
            .kube
            .paths()
            .iter()
            .filter_map(|p| self.shared.kube.get(p))
            .filter_map(|v| serde_json::from_value::<MacieDiscovery>(v).ok())
            .map(|o| (o.name_any(), o))
            .collect()
    }

    fn check_end(&self) {
        let shared = &self.shared;
        let stored = self.stored();
        let rules = lock(&shared.rules).clone();
        // Account -> the statuses the allowed declarations ask.
        let mut asks: BTreeMap<String, Vec<DiscoveryStatus>> = BTreeMap::new();
        for o in stored.values() {
            for a in &o.spec.accounts {
                let statuses = asks.entry(a.account_id.clone()).or_default();
                if allowed(&rules, &a.account_id, a.status) && !statuses.contains(&a.status) {
                    statuses.push(a.status);
                }
            }
        }
        for (name, o) in &stored {
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
            let terminal = ["Converged", "Conflict", "NotPermitted", "AccountErrors"];
            if !terminal.contains(&ready.reason.as_str()) {
                shared.violation(format!(
                    "{name}: stuck in {} after {QUIET_ROUNDS} quiet intervals: {}",
                    ready.reason, ready.message
                ));
            }
            let conflicting = o
                .spec
                .accounts
                .iter()
                .any(|a| asks.get(&a.account_id).is_some_and(|s| s.len() > 1));
            if (ready.reason == "Conflict") != conflicting && ready.reason != "NotPermitted" {
                shared.violation(format!("{name}: {} where a conflict is {conflicting}", ready.reason));
            }
            for row in &st.accounts {
                let actual = shared.macie.status(&place(), &row.account_id);
                if row.error_code.is_none() && row.observed != actual.map(|s| s.as_str().to_string()) {
                    shared.violation(format!(
                        "{name}: {} shown {:?}, Macie has {actual:?}",
                        row.account_id, row.observed
                    ));
                }
            }
        }
        // Every account the declarations agree on is in its status, unless Macie refuses it
        // (not a member, paused) or its error waits for the retry.
        for (id, statuses) in &asks {
            let [want] = statuses[..] else {
                continue;
            };
            let actual = shared.macie.status(&place(), id);
            let errored = stored.values().any(|o| {
                o.status
                    .as_ref()
                    .is_some_and(|s| s.accounts.iter().any(|r| r.account_id == *id && r.error_code.is_some()))
            });
            if actual != Some(want) && !errored {
                shared.violation(format!("{id}: declared {want:?}, Macie has {actual:?}"));
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
        let mut sim = Sim::new(perturb, seed);
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

/// The corpus: every path of the controller.
pub fn corpus() -> Vec<Scenario> {
    use Op::*;
    let round = || [Advance(POLL), Settle];
    let both: &[&str] = &["ENABLED", "DISABLED"];
    let scenario = |name, ops: Vec<Op>| Scenario { name, ops };
    let mut batches = vec![Apply("m", &[(A, "ENABLED"), (B, "ENABLED"), (C, "DISABLED")]), Settle];
    batches.extend(round());
    batches.extend([Apply("m", &[(A, "DISABLED"), (B, "ENABLED"), (C, "DISABLED")]), Settle]);
    batches.extend(round());
    let mut errors = vec![
        Pause(B, true),
        Apply("m", &[(A, "ENABLED"), (B, "ENABLED"), (NOT_MEMBER, "ENABLED")]),
        Settle,
    ];
    errors.extend(round());
    errors.extend([Pause(B, false), Apply("m", &[(A, "ENABLED"), (B, "DISABLED")]), Settle]);
    errors.extend(round());
    let mut lost = vec![
        Inject(Fault::LoseBatchAnswer),
        Apply("m", &[(A, "ENABLED"), (B, "ENABLED")]),
        Settle,
    ];
    lost.extend(round());
    lost.extend([
        Inject(Fault::ServerErrorBatch),
        Apply("m", &[(A, "DISABLED"), (B, "ENABLED")]),
        Settle,
    ]);
    lost.extend(round());
    let mut throttled = vec![
        Inject(Fault::ThrottleBatch),
        Inject(Fault::ThrottleBatch),
        Inject(Fault::FailList),
        Apply("m", &[(A, "ENABLED"), (B, "ENABLED"), (C, "DISABLED")]),
        Settle,
    ];
    throttled.extend(round());
    throttled.extend(round());
    let mut conflict = vec![
        Apply("a", &[(A, "ENABLED"), (B, "ENABLED")]),
        Apply("b", &[(A, "DISABLED"), (C, "ENABLED")]),
        Settle,
    ];
    conflict.extend(round());
    conflict.extend([Apply("b", &[(A, "ENABLED"), (C, "ENABLED")]), Settle]);
    conflict.extend(round());
    conflict.extend([
        Apply("b", &[(A, "DISABLED"), (C, "ENABLED")]),
        Settle,
        Delete("a"),
        Settle,
    ]);
    conflict.extend(round());
    let mut refusal = vec![
        Rules(&[A, B], &["ENABLED"]),
        Apply("m", &[(A, "ENABLED"), (B, "DISABLED"), (C, "DISABLED")]),
        Settle,
    ];
    refusal.extend(round());
    refusal.extend([Rules(&["*"], both), Settle]);
    refusal.extend(round());
    let mut narrowed = vec![
        Apply("m", &[(A, "ENABLED"), (B, "ENABLED")]),
        RulesMidPass(&[A], both),
        Settle,
    ];
    narrowed.extend(round());
    narrowed.extend([
        Apply("m", &[(A, "DISABLED"), (B, "DISABLED")]),
        Rules(&["*"], both),
        Settle,
    ]);
    narrowed.extend(round());
    let mut deletion = vec![Apply("m", &[(A, "ENABLED")]), Apply("n", &[(B, "ENABLED")]), Settle];
    deletion.extend(round());
    deletion.extend([Delete("m"), Apply("n", &[(B, "DISABLED")]), Settle]);
    deletion.extend(round());
    deletion.extend([Apply("m", &[(A, "DISABLED")]), Settle]);
    deletion.extend(round());
    let mut handover = vec![
        Apply("m", &[(A, "ENABLED"), (B, "ENABLED")]),
        Advance(BATCH_WINDOW),
        Handover,
        Settle,
    ];
    handover.extend(round());
    handover.extend([Apply("m", &[(A, "DISABLED"), (B, "ENABLED")]), Handover, Settle]);
    handover.extend(round());
    let mut visibility = vec![Delay(true), Apply("m", &[(A, "ENABLED"), (B, "ENABLED")]), Settle];
    visibility.extend([Advance(Duration::from_secs(15)), Settle]);
    visibility.extend([
        Member(B, "DISABLED"),
        Apply("m", &[(A, "DISABLED"), (B, "ENABLED")]),
        Settle,
    ]);
    visibility.extend(round());
    visibility.extend(round());
    let mut drift = vec![Apply("m", &[(A, "ENABLED"), (C, "ENABLED")]), Settle];
    drift.extend(round());
    drift.extend([Member(A, "DISABLED"), Member(C, "DISABLED")]);
    drift.extend(round());
    drift.extend(round());
    vec![
        scenario("batches", batches),
        scenario("account-errors", errors),
        scenario("lost-answer", lost),
        scenario("throttled", throttled),
        scenario("conflict", conflict),
        scenario("refusal", refusal),
        scenario("narrowed-mid-pass", narrowed),
        scenario("deletion", deletion),
        scenario("handover", handover),
        scenario("visibility-delay", visibility),
        scenario("drift", drift),
    ]
}

#[test]
fn the_corpus_converges_unperturbed() {
    for s in corpus() {
        let r = run(&s, Perturb::default(), 1);
        assert!(r.violations.is_empty(), "{}: {:#?}", s.name, r.violations);
        assert!(r.effects > 0 && r.reconciles > 0 && r.passes > 0, "{}: {r:?}", s.name);
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
            (base.effects, base.reconciles + base.passes, base.deliveries)
        },
        |s, p| run(s, p.clone(), 1).violations,
    );
}

/// The schedule of `seed`: a corpus scenario with random operations inserted (faults, spec
/// changes, out-of-band changes, rules, time, handovers) under random perturbations.
pub fn schedule(seed: u64) -> (Scenario, Perturb) {
    use Op::*;
    let mut rng = Rng::new(seed);
    let mut s = rng.pick(&corpus());
    let both: &[&str] = &["ENABLED", "DISABLED"];
    let extra = [
        Inject(Fault::ThrottleBatch),
        Inject(Fault::ServerErrorBatch),
        Inject(Fault::LoseBatchAnswer),
        Inject(Fault::DenyBatch),
        Inject(Fault::FailList),
        Member(A, "ENABLED"),
        Member(A, "DISABLED"),
        Member(B, "DISABLED"),
        Pause(C, true),
        Apply("m", &[(A, "DISABLED"), (B, "ENABLED")]),
        Apply("m", &[(A, "ENABLED"), (C, "DISABLED")]),
        Apply("n", &[(A, "DISABLED")]),
        Delete("m"),
        Rules(&[A, B], both),
        Rules(&["*"], &["ENABLED"]),
        RulesMidPass(&[B, C], both),
        Delay(true),
        Advance(Duration::from_secs(1)),
        Advance(STEP_TIMEOUT),
        Settle,
        Handover,
    ];
    rng.insert_some(&mut s.ops, &extra, 5);
    let p = Perturb::random(&mut rng, 30, 80, 6);
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
