//! One place's discovery engine, as a pass of named steps:
//!
//! 1. `declarations`: the place's admitted declarations; none left retires the engine;
//!    `cache_went_back`: an older generation than the view took in holds the pass back.
//! 2. `take_in`: the view takes them in and is published (new declarations show Pending).
//! 3. `Schedule::due` (pure): which accounts to observe now.
//! 4. `observe`: ListAutomatedDiscoveryAccounts of those, recorded by `record_listing` (pure).
//! 5. `send`: BatchUpdateAutomatedDiscoveryAccounts of the accounts that differ, batch by
//!    batch while the write gate allows, each answer recorded by `record_batch` (pure).
//! 6. `publish`: the view to the reconciles, triggering the place's resources when what they
//!    show changes.
//!
//! The pass hands back when the next one is due (`Schedule::wake`); `wait` sleeps until then
//! or until a kick (a watch event that changes the declarations).

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::plan::{self, AccountError, Declared, Sent, Settings};
use super::{Config, Newest, RegionEngine, Trigger, View, admit, key, lock, place_of, refused_rows, taken_in};
use crate::account::{Tenancy, policy};
use crate::api::{DiscoveryStatus, MacieDiscovery, ManagementPolicy};
use crate::macie::{MacieClients, MacieError, Place};
use crate::runtime::gate::WriteGate;
use crate::runtime::regions::Retire;
use crate::runtime::{backoff, clock};

/// What an engine works with.
pub(super) struct EngineEnv {
    pub(super) place: Place,
    pub(super) clients: Arc<MacieClients>,
    pub(super) tenancy: Arc<Tenancy>,
    pub(super) gate: WriteGate,
    pub(super) config: Config,
    pub(super) store: Store<MacieDiscovery>,
    pub(super) trigger: Trigger,
    pub(super) newest: Newest,
    pub(super) retire: Retire<RegionEngine>,
}

/// The engine of one place: once the watch has listed the resources and the first batch
/// window has gathered the declarations that arrive together (e.g. a GitOps sync), a pass,
/// then a wait for the next, until no resource uses the place.
pub(super) async fn engine_loop(
    env: EngineEnv,
    mut store_ready: watch::Receiver<bool>,
    mut kick: mpsc::UnboundedReceiver<()>,
    view_tx: watch::Sender<Arc<View>>,
) {
    if store_ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    tracing::debug!(place = %env.place, "discovery engine started");
    let batch_window = env.config.batch_window;
    let mut engine = Engine::new(env, view_tx);
    tokio::time::sleep(batch_window).await;
    while let Some(wake) = engine.pass().await {
        if !wait(&mut kick, wake, batch_window).await {
            return;
        }
    }
    tracing::debug!(place = %engine.env.place, "no MacieDiscovery uses the account and region: discovery engine stopped");
}

/// Sleeps until `wake` or a kick; after a kick, a batch window more gathers the changes that
/// come together. False when the kicks can no longer come (the engine was dropped).
async fn wait(kick: &mut mpsc::UnboundedReceiver<()>, wake: Instant, batch_window: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(wake) => true,
        k = kick.recv() => {
            if k.is_none() {
                return false;
            }
            tokio::time::sleep(batch_window).await;
            while kick.try_recv().is_ok() {}
            true
        }
    }
}

/// The engine's time: `clock::instant()` (the wall clock's in the operator, virtual in the
/// perturbation harness).
fn instant() -> Instant {
    Instant::from_std(clock::instant())
}

/// An engine the caller drives (the perturbation harness): no task runs; `pass_if_due` makes
/// a pass on the caller's task when `engine_loop` would: a batch window after the start or
/// after a kick, else at the schedule's wake.
#[cfg(test)]
pub(super) struct ManualEngine {
    engine: Engine,
    kicks: mpsc::UnboundedReceiver<()>,
    store_ready: watch::Receiver<bool>,
    /// When the next pass is due.
    due: Instant,
    /// Waiting between passes (before the first, the batch window runs whatever comes).
    waiting: bool,
    /// The wait took a kick: the pass at `due` takes in the kicks gathered until then.
    kicked: bool,
}

#[cfg(test)]
impl ManualEngine {
    pub(super) fn new(
        env: EngineEnv,
        store_ready: watch::Receiver<bool>,
        kicks: mpsc::UnboundedReceiver<()>,
        view_tx: watch::Sender<Arc<View>>,
    ) -> ManualEngine {
        let due = instant() + env.config.batch_window;
        ManualEngine {
            engine: Engine::new(env, view_tx),
            kicks,
            store_ready,
            due,
            waiting: false,
            kicked: false,
        }
    }

    /// When the next pass is due, as `engine_loop`'s wait would have it now (a kick that came
    /// before the wake moves the pass to a batch window after it).
    pub(super) fn next_pass(&mut self) -> Instant {
        let now = instant();
        if self.waiting && !self.kicked && now < self.due && self.kicks.try_recv().is_ok() {
            self.kicked = true;
            self.due = now + self.engine.env.config.batch_window;
        }
        self.due
    }

    /// One pass when one is due (and the watch has listed the resources): Some(true) when
    /// it ran, None once the engine retired.
    pub(super) async fn pass_if_due(&mut self) -> Option<bool> {
        if !*self.store_ready.borrow() || instant() < self.next_pass() {
            return Some(false);
        }
        if self.kicked {
            while self.kicks.try_recv().is_ok() {}
        }
        self.due = self.engine.pass().await?;
        (self.waiting, self.kicked) = (true, false);
        Some(true)
    }
}

/// An engine between passes.
struct Engine {
    env: EngineEnv,
    view: View,
    /// What the reconciles were last shown.
    shown: Arc<View>,
    tx: watch::Sender<Arc<View>>,
    schedule: Schedule,
}

impl Engine {
    fn new(env: EngineEnv, tx: watch::Sender<Arc<View>>) -> Engine {
        Engine {
            view: View::default(),
            shown: Arc::new(View::default()),
            schedule: Schedule::new(instant()),
            tx,
            env,
        }
    }

    /// One pass; hands back when the next is due, or None once the engine retired.
    async fn pass(&mut self) -> Option<Instant> {
        let declared = self.declarations()?;
        if self.cache_went_back(&declared) {
            return Some(self.schedule.wake());
        }
        self.take_in(&declared);
        let now = instant();
        let due = self.schedule.due(now, &self.view);
        self.observe(&due).await;
        self.schedule.observed(&due, now, self.env.config.poll_interval);
        if self.schedule.may_send(now) {
            let step = self.send().await;
            let config = &self.env.config;
            self.schedule
                .sent(step, instant(), config.poll_interval, config.batch_window);
        }
        self.view.passes += 1;
        self.publish();
        Some(self.schedule.wake())
    }

    /// The place's declarations; None when there are none and the engine retired (checked
    /// under the registry's lock, so a reconcile either finds it serving or starts another).
    fn declarations(&self) -> Option<Vec<Declared>> {
        let declared = self.env.declared();
        if declared.is_empty() && self.env.retire.retire_if(|| self.env.declared().is_empty()) {
            return None;
        }
        Some(declared)
    }

    /// Whether the cache holds an older generation of a resource than the watch delivered (a
    /// relist from a lagging API server): nothing is taken in, observed or sent until the newer
    /// copy is back (its watch event kicks the engine).
    fn cache_went_back(&self, declared: &[Declared]) -> bool {
        let behind = self.env.behind(declared);
        if !behind.is_empty() {
            tracing::info!(place = %self.env.place, ?behind, "the cache holds older generations than taken in: pass held back");
        }
        !behind.is_empty()
    }

    /// The view takes in the declarations, and the reconciles report on them at once (Pending
    /// until observed).
    fn take_in(&mut self, declared: &[Declared]) {
        self.view.take_in(declared);
        self.publish();
    }

    /// ListAutomatedDiscoveryAccounts of the accounts due, recorded in the view.
    async fn observe(&mut self, due: &Due) {
        if due.ids.is_empty() {
            return;
        }
        let started = clock::now();
        let listed = self.env.list(&due.ids).await;
        record_listing(
            &mut self.view,
            &due.ids,
            listed,
            started,
            due.full,
            &self.env.config.plan,
        );
    }

    /// Sends the accounts that differ from their declaration, in batches, while the write
    /// gate allows Macie writes; a throttled call holds the rest back.
    async fn send(&mut self) -> SendStep {
        let plan = &self.env.config.plan;
        let sends = plan::to_send(&self.view.desired, &self.view.accounts, clock::now(), plan);
        let mut step = SendStep::default();
        for batch in plan::batches(&sends, plan.batch_size) {
            if !self.env.gate.allows_writes() {
                tracing::info!(place = %self.env.place, accounts = batch.len(), "write gate closed (not the leader): BatchUpdateAutomatedDiscoveryAccounts held back");
                break;
            }
            let batch = self.env.still_declared(batch);
            if batch.is_empty() {
                continue;
            }
            let at = clock::now();
            let answer = self.env.batch_update(&batch).await;
            if record_batch(&mut self.view, &mut step, &batch, answer, at).is_break() {
                break;
            }
        }
        step
    }

    /// Publishes the view to the reconciles, and triggers the place's resources when what
    /// their status shows would change.
    fn publish(&mut self) {
        let changed = !self.view.shows_like(&self.shown);
        self.shown = Arc::new(self.view.clone());
        self.tx.send_replace(self.shown.clone());
        if changed {
            self.env.trigger_resources();
        }
    }
}

impl EngineEnv {
    /// The declarations of the place's admitted resources (those being deleted excluded), by
    /// key, without the rows their account's rules refuse.
    pub(super) fn declared(&self) -> Vec<Declared> {
        let default_region = &self.config.default_region;
        let mut out: Vec<Declared> = self
            .store
            .state()
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .filter_map(|o| {
                let admitted = admit(o, &self.tenancy, default_region).ok()?;
                (admitted.place == self.place).then(|| {
                    let refused = refused_rows(o, &admitted);
                    Declared {
                        acts: o.spec.management_policy == ManagementPolicy::Manage
                            && policy::paused(&o.metadata, &admitted.account).is_none(),
                        resource: key(o),
                        taken: taken_in(o),
                        accounts: o
                            .spec
                            .accounts
                            .iter()
                            .filter(|a| !refused.contains_key(&a.account_id))
                            .map(|a| (a.account_id.clone(), a.status))
                            .collect(),
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| a.resource.cmp(&b.resource));
        out
    }

    /// The resources `declared` shows older than the watch delivered them.
    fn behind(&self, declared: &[Declared]) -> Vec<String> {
        plan::behind(declared, &lock(&self.newest))
    }

    /// Reconciles every resource of the place.
    fn trigger_resources(&self) {
        for obj in self.store.state() {
            if place_of(&obj, &self.tenancy, &self.config.default_region) == self.place {
                let _ = self.trigger.unbounded_send(ObjectRef::from_obj(&*obj));
            }
        }
    }

    /// The rows of `batch` the MacieAccounts, namespaces and declarations allow as they are
    /// now: a row whose rule was narrowed (or whose resource went) since the pass began is not
    /// sent, nor anything while the cache went back.
    fn still_declared(&self, batch: Vec<(String, DiscoveryStatus)>) -> Vec<(String, DiscoveryStatus)> {
        let asked = batch.len();
        let now = self.declared();
        if !self.behind(&now).is_empty() {
            tracing::info!(place = %self.place, held_back = asked, "the cache went back: not sent");
            return Vec::new();
        }
        let batch = plan::still_declared(batch, &now);
        if batch.len() < asked {
            tracing::info!(place = %self.place, held_back = asked - batch.len(), "rows no longer declared or allowed: not sent");
        }
        batch
    }

    /// ListAutomatedDiscoveryAccounts of `ids`: what Macie shows of each it lists.
    async fn list(&self, ids: &[String]) -> Result<HashMap<String, DiscoveryStatus>, MacieError> {
        let listed = self.clients.discovery_api().list_accounts(&self.place, ids).await;
        if let Err(e) = &listed {
            tracing::warn!(place = %self.place, error = %e, "ListAutomatedDiscoveryAccounts failed");
        }
        listed
    }

    /// One BatchUpdateAutomatedDiscoveryAccounts call (logged as an AWS write): the
    /// per-account errors.
    async fn batch_update(&self, batch: &[(String, DiscoveryStatus)]) -> Result<Vec<(String, String)>, MacieError> {
        self.log_write(batch);
        let sent = self.clients.discovery_api().batch_update(&self.place, batch).await;
        let place = &self.place;
        match &sent {
            Ok(_) => {}
            Err(e @ MacieError::Throttled { .. }) => {
                tracing::debug!(%place, error = %e, "BatchUpdateAutomatedDiscoveryAccounts throttled");
            }
            Err(e @ MacieError::Uncertain { .. }) => {
                tracing::warn!(%place, error = %e, "BatchUpdateAutomatedDiscoveryAccounts outcome unknown");
            }
            Err(e) => tracing::warn!(%place, error = %e, "BatchUpdateAutomatedDiscoveryAccounts failed"),
        }
        sent
    }

    /// Logs an AWS write: where it goes, the accounts it changes, and the resources that ask.
    fn log_write(&self, batch: &[(String, DiscoveryStatus)]) {
        let ids: BTreeSet<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let resources: Vec<String> = self
            .store
            .state()
            .iter()
            .filter(|o| place_of(o, &self.tenancy, &self.config.default_region) == self.place)
            .filter(|o| o.spec.accounts.iter().any(|a| ids.contains(a.account_id.as_str())))
            .map(|o| {
                format!(
                    "{}/{} ({})",
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                    o.uid().unwrap_or_default()
                )
            })
            .collect();
        tracing::info!(
            account = %self.place.account,
            region = %self.place.region,
            operation = "BatchUpdateAutomatedDiscoveryAccounts",
            accounts = ?batch.iter().map(|(id, s)| format!("{id}={}", s.as_str())).collect::<Vec<_>>(),
            resources = ?resources,
            "AWS write"
        );
    }
}

/// What a pass observes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Due {
    ids: Vec<String>,
    /// Every declared account (the poll interval's observation).
    full: bool,
    /// The accounts sent a batch window ago are due for their confirmation.
    confirming: bool,
}

/// When the engine observes and sends (bookkeeping on the engine's instants, no effect).
#[derive(Debug, Clone)]
struct Schedule {
    /// The next observation of every declared account.
    next_observe: Instant,
    /// Sends are held back until then after a throttled call.
    retry_at: Option<Instant>,
    /// Throttled calls in a row since the last answered one (the backoff).
    throttled: u32,
    /// Accounts sent and not observed since: confirmed on their own at `confirm_at`, soon,
    /// while the observation of every declared account runs once per interval.
    confirm: BTreeSet<String>,
    confirm_at: Option<Instant>,
}

impl Schedule {
    /// Everything due at `now`.
    fn new(now: Instant) -> Schedule {
        Schedule {
            next_observe: now,
            retry_at: None,
            throttled: 0,
            confirm: BTreeSet::new(),
            confirm_at: None,
        }
    }

    /// The accounts to observe at `now`: every declared one each poll interval, the ones never
    /// observed at once, the ones just sent once their confirmation is due.
    fn due(&self, now: Instant, view: &View) -> Due {
        let full = now >= self.next_observe;
        let confirming = self.confirm_at.is_some_and(|c| now >= c);
        let ids = view
            .desired
            .account_ids()
            .into_iter()
            .filter(|id| {
                full || view.accounts.get(id).is_none_or(|a| a.observed_at.is_none())
                    || (confirming && self.confirm.contains(id))
            })
            .collect();
        Due { ids, full, confirming }
    }

    /// `due` was observed at `now`: the confirmations are done, and after a full observation
    /// the next is a poll interval later.
    fn observed(&mut self, due: &Due, now: Instant, poll_interval: Duration) {
        if due.full || due.confirming {
            self.confirm.clear();
            self.confirm_at = None;
        }
        if due.full {
            self.next_observe = now + poll_interval;
        }
    }

    /// Whether sends may go at `now` (no throttling backoff running); a backoff that ran out
    /// is over.
    fn may_send(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|r| now < r) {
            return false;
        }
        self.retry_at = None;
        true
    }

    /// The sends of a pass ended at `now`: a throttled call holds the next sends back for a
    /// jittered backoff (at most a poll interval); the accounts sent are confirmed a batch
    /// window later.
    fn sent(&mut self, step: SendStep, now: Instant, poll_interval: Duration, batch_window: Duration) {
        if step.answered {
            self.throttled = 0;
        }
        if step.throttled {
            self.throttled += 1;
            self.retry_at = Some(now + backoff(self.throttled).min(poll_interval));
        }
        if !step.ids.is_empty() {
            self.confirm.extend(step.ids);
            let at = now + batch_window;
            self.confirm_at = Some(self.confirm_at.map_or(at, |c| c.min(at)));
        }
    }

    /// When the next pass is due.
    fn wake(&self) -> Instant {
        [self.retry_at, self.confirm_at]
            .into_iter()
            .flatten()
            .fold(self.next_observe, Instant::min)
    }
}

/// What the sends of a pass came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SendStep {
    /// Accounts whose change was (or may have been) processed: to be confirmed.
    ids: Vec<String>,
    /// A call was answered (the throttling backoff starts over).
    answered: bool,
    /// A call was throttled: nothing more is sent this pass.
    throttled: bool,
}

/// Records what a ListAutomatedDiscoveryAccounts of `ids` started at `started` showed; `full`
/// when they are every declared account. A failure is the view's API error, nothing else.
fn record_listing(
    view: &mut View,
    ids: &[String],
    listed: Result<HashMap<String, DiscoveryStatus>, MacieError>,
    started: Timestamp,
    full: bool,
    settings: &Settings,
) {
    let found = match listed {
        Ok(found) => found,
        Err(e) => {
            view.api_error = Some(e);
            return;
        }
    };
    for id in ids {
        let a = view.accounts.entry(id.clone()).or_default();
        a.observed = found.get(id).copied();
        a.observed_at = Some(started);
        plan::settle(a, settings);
    }
    if full {
        view.observed_at = Some(started);
    }
    view.api_error = None;
}

/// Records Macie's answer to one batch sent at `at` in the view and the pass's `step`; Break
/// when the call was throttled (the rest waits).
fn record_batch(
    view: &mut View,
    step: &mut SendStep,
    batch: &[(String, DiscoveryStatus)],
    answer: Result<Vec<(String, String)>, MacieError>,
    at: Timestamp,
) -> ControlFlow<()> {
    let sent = |a: &mut plan::AccountState, status: DiscoveryStatus| {
        a.sent = Some(Sent {
            status,
            from: a.observed,
            at,
        })
    };
    match answer {
        Ok(errors) => {
            step.answered = true;
            view.api_error = None;
            let failed: HashMap<String, String> = errors.into_iter().collect();
            for (id, status) in batch {
                let a = view.accounts.entry(id.clone()).or_default();
                a.error = failed.get(id).map(|code| AccountError {
                    status: *status,
                    code: code.clone(),
                    message: String::new(),
                    at,
                });
                if a.error.is_none() {
                    step.ids.push(id.clone());
                    sent(a, *status);
                }
            }
        }
        Err(e @ MacieError::Throttled { .. }) => {
            // Not processed: the rest is retried after a backoff.
            step.throttled = true;
            view.api_error = Some(e);
            return ControlFlow::Break(());
        }
        Err(e @ MacieError::Uncertain { .. }) => {
            // It may have taken effect: treated as sent, an observation settles it.
            for (id, status) in batch {
                step.ids.push(id.clone());
                sent(view.accounts.entry(id.clone()).or_default(), *status);
            }
            view.api_error = Some(e);
        }
        Err(e) => {
            for (id, status) in batch {
                view.accounts.entry(id.clone()).or_default().error = Some(AccountError {
                    status: *status,
                    code: e.code().to_string(),
                    message: format!("{e}"),
                    at,
                });
            }
            view.api_error = Some(e);
        }
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DiscoveryStatus::{Disabled, Enabled};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn settings() -> Settings {
        Settings {
            step_timeout: S(30),
            error_retry: S(3600),
            batch_size: 100,
        }
    }

    /// A view declaring `a`, `b` and `c` (ENABLED); `observed` of them seen DISABLED.
    fn view(observed: &[&str]) -> View {
        let mut v = View::default();
        v.desired.wanted = ["a", "b", "c"].iter().map(|id| (id.to_string(), Enabled)).collect();
        for id in observed {
            let a = v.accounts.entry(id.to_string()).or_default();
            a.observed = Some(Disabled);
            a.observed_at = Some(t(0));
        }
        v
    }

    fn err(kind: &str) -> MacieError {
        let (code, message) = (kind.to_string(), "m".to_string());
        match kind {
            "ThrottlingException" => MacieError::Throttled { code, message },
            "InternalServerException" => MacieError::Uncertain { code, message },
            _ => MacieError::AccessDenied { code, message },
        }
    }

    #[test]
    fn which_accounts_a_pass_observes() {
        let t0 = Instant::now();
        let v = view(&["a", "b"]);
        let mut s = Schedule::new(t0);
        s.next_observe = t0 + S(60);
        s.confirm = ["b".to_string()].into();
        // (case, now, confirmation due at, expected ids, full, confirming)
        type Row<'a> = (&'a str, Instant, Option<Instant>, &'a [&'a str], bool, bool);
        let rows: [Row; 5] = [
            (
                "the interval's observation: every account",
                t0 + S(60),
                None,
                &["a", "b", "c"],
                true,
                false,
            ),
            (
                "between: only the never observed",
                t0 + S(59),
                None,
                &["c"],
                false,
                false,
            ),
            (
                "the sent ones once due",
                t0 + S(5),
                Some(t0 + S(5)),
                &["b", "c"],
                false,
                true,
            ),
            ("not before", t0 + S(4), Some(t0 + S(5)), &["c"], false, false),
            ("both due", t0 + S(61), Some(t0 + S(5)), &["a", "b", "c"], true, true),
        ];
        for (case, now, confirm_at, want, full, confirming) in rows {
            s.confirm_at = confirm_at;
            let due = s.due(now, &v);
            assert_eq!(
                due,
                Due {
                    ids: ids(want),
                    full,
                    confirming
                },
                "{case}"
            );
        }
    }

    #[test]
    fn an_observation_moves_the_schedule_on() {
        let t0 = Instant::now();
        let pending = |s: &mut Schedule| {
            s.next_observe = t0 + S(60);
            s.confirm = ["b".to_string()].into();
            s.confirm_at = Some(t0 + S(5));
        };
        let mut s = Schedule::new(t0);
        // (case, full, confirming, next observation, confirmations left)
        for (case, full, confirming, next, left) in [
            ("nothing due", false, false, t0 + S(60), true),
            ("the confirmations", false, true, t0 + S(60), false),
            ("the interval's", true, false, t0 + S(70), false),
        ] {
            pending(&mut s);
            let due = Due {
                ids: vec![],
                full,
                confirming,
            };
            s.observed(&due, t0 + S(10), S(60));
            assert_eq!(s.next_observe, next, "{case}");
            assert_eq!((!s.confirm.is_empty(), s.confirm_at.is_some()), (left, left), "{case}");
        }
    }

    #[test]
    fn throttling_holds_sends_back_for_a_backoff_of_at_most_an_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.next_observe = t0 + S(60);
        assert!(s.may_send(t0));
        let throttled = SendStep {
            throttled: true,
            ..SendStep::default()
        };
        s.sent(throttled.clone(), t0, S(60), S(1));
        let r1 = s.retry_at.expect("held back");
        assert!(
            r1 >= t0 + Duration::from_millis(500) && r1 <= t0 + S(1),
            "1 s jittered: {:?}",
            r1 - t0
        );
        assert!(!s.may_send(r1 - Duration::from_millis(1)));
        assert_eq!(s.retry_at, Some(r1), "still held back");
        s.sent(throttled.clone(), t0, S(60), S(1));
        s.sent(throttled.clone(), t0, S(60), S(1));
        let r3 = s.retry_at.unwrap();
        assert!(
            r3 >= t0 + S(2) && r3 <= t0 + S(4),
            "third in a row: 4 s jittered: {:?}",
            r3 - t0
        );
        assert_eq!(s.wake(), r3, "the next pass is the retry");
        assert!(s.may_send(r3));
        assert_eq!(s.retry_at, None, "the backoff is over");
        for _ in 0..20 {
            s.sent(throttled.clone(), t0, S(60), S(1));
        }
        assert_eq!(s.retry_at, Some(t0 + S(60)), "capped at the poll interval");
        // An answered call, then throttled: the backoff starts over.
        s.sent(
            SendStep {
                answered: true,
                throttled: true,
                ids: vec![],
            },
            t0,
            S(60),
            S(1),
        );
        assert!(s.retry_at.unwrap() <= t0 + S(1));
        s.sent(
            SendStep {
                answered: true,
                ..SendStep::default()
            },
            t0,
            S(60),
            S(1),
        );
        assert_eq!(s.throttled, 0);
    }

    #[test]
    fn sent_accounts_are_confirmed_a_batch_window_later() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.next_observe = t0 + S(60);
        let step = |v: &[&str]| SendStep {
            ids: ids(v),
            answered: true,
            throttled: false,
        };
        s.sent(step(&[]), t0, S(60), S(2));
        assert_eq!(
            (s.confirm_at, s.wake()),
            (None, t0 + S(60)),
            "nothing sent, nothing to confirm"
        );
        s.sent(step(&["a"]), t0 + S(1), S(60), S(2));
        s.sent(step(&["b"]), t0 + S(2), S(60), S(2));
        assert_eq!(s.confirm, ["a".to_string(), "b".to_string()].into());
        assert_eq!(s.confirm_at, Some(t0 + S(3)), "the earliest confirmation");
        assert_eq!(s.wake(), t0 + S(3));
    }

    #[test]
    fn a_listing_records_what_it_showed_and_a_failure_only_the_error() {
        let mut v = view(&["a"]);
        let shown = [("a".to_string(), Enabled)].into();
        record_listing(&mut v, &ids(&["a", "b"]), Ok(shown), t(10), false, &settings());
        assert_eq!(v.accounts["a"].observed, Some(Enabled));
        assert_eq!(v.accounts["b"].observed, None, "not listed");
        assert_eq!(v.accounts["b"].observed_at, Some(t(10)));
        assert_eq!(v.observed_at, None, "not every account");
        assert!(!v.accounts.contains_key("c"));
        record_listing(
            &mut v,
            &ids(&["a"]),
            Err(err("AccessDeniedException")),
            t(20),
            true,
            &settings(),
        );
        assert_eq!(
            v.api_error.as_ref().map(MacieError::code),
            Some("AccessDeniedException")
        );
        assert_eq!(v.accounts["a"].observed_at, Some(t(10)), "a failure observed nothing");
        assert_eq!(v.observed_at, None);
        let all = ids(&["a", "b", "c"]);
        record_listing(&mut v, &all, Ok(HashMap::new()), t(30), true, &settings());
        assert_eq!((v.api_error.as_ref(), v.observed_at), (None, Some(t(30))));
        assert_eq!(v.accounts["c"].observed_at, Some(t(30)));
    }

    #[test]
    fn an_api_error_goes_once_no_account_is_declared() {
        let decl = |accounts: Vec<(String, DiscoveryStatus)>| Declared {
            resource: "ns/d".into(),
            taken: Default::default(),
            accounts,
            acts: true,
        };
        let mut v = view(&["a"]);
        v.api_error = Some(err("AccessDeniedException"));
        v.take_in(&[decl(vec![("a".into(), Enabled)])]);
        assert!(v.api_error.is_some(), "an observation of the account clears it");
        // Every row refused (or gone): nothing is observed or sent that would clear it.
        v.take_in(&[decl(vec![])]);
        assert_eq!((v.api_error, v.accounts.len()), (None, 0));
    }

    #[test]
    fn a_listing_settles_a_send_it_shows_taken() {
        let mut v = view(&["a"]);
        v.accounts.get_mut("a").unwrap().sent = Some(Sent {
            status: Enabled,
            from: Some(Disabled),
            at: t(5),
        });
        record_listing(
            &mut v,
            &ids(&["a"]),
            Ok([("a".to_string(), Enabled)].into()),
            t(10),
            false,
            &settings(),
        );
        assert_eq!(v.accounts["a"].sent, None);
    }

    #[test]
    fn a_batch_answer_is_recorded_per_account() {
        let batch: Vec<(String, DiscoveryStatus)> = vec![("a".into(), Enabled), ("b".into(), Enabled)];
        let at = t(7);
        // (case, answer, break, confirmed ids, answered, sent a, error code of b, API error)
        type Row = (
            &'static str,
            Result<Vec<(String, String)>, MacieError>,
            bool,
            &'static [&'static str],
            bool,
            bool,
            Option<&'static str>,
            Option<&'static str>,
        );
        let rows: Vec<Row> = vec![
            ("all taken", Ok(vec![]), false, &["a", "b"], true, true, None, None),
            (
                "one refused",
                Ok(vec![("b".into(), "ACCOUNT_PAUSED".into())]),
                false,
                &["a"],
                true,
                true,
                Some("ACCOUNT_PAUSED"),
                None,
            ),
            (
                "throttled: nothing processed",
                Err(err("ThrottlingException")),
                true,
                &[],
                false,
                false,
                None,
                Some("ThrottlingException"),
            ),
            (
                "uncertain: maybe taken",
                Err(err("InternalServerException")),
                false,
                &["a", "b"],
                false,
                true,
                None,
                Some("InternalServerException"),
            ),
            (
                "failed: an error on each",
                Err(err("AccessDeniedException")),
                false,
                &[],
                false,
                false,
                Some("AccessDeniedException"),
                Some("AccessDeniedException"),
            ),
        ];
        for (case, answer, stops, confirmed, answered, sent_a, code_b, api_error) in rows {
            let mut v = view(&["a", "b"]);
            v.api_error = Some(err("Earlier"));
            let mut step = SendStep::default();
            let flow = record_batch(&mut v, &mut step, &batch, answer, at);
            assert_eq!(flow.is_break(), stops, "{case}");
            assert_eq!(step.throttled, stops, "{case}");
            assert_eq!((step.ids.clone(), step.answered), (ids(confirmed), answered), "{case}");
            let a = &v.accounts["a"];
            let want_sent = sent_a.then_some(Sent {
                status: Enabled,
                from: Some(Disabled),
                at,
            });
            assert_eq!(a.sent, want_sent, "{case}");
            assert_eq!(
                v.accounts["b"].error.as_ref().map(|e| e.code.as_str()),
                code_b,
                "{case}"
            );
            assert_eq!(
                v.api_error.as_ref().map(MacieError::code),
                api_error,
                "{case}: the earlier error goes with an answer"
            );
        }
    }
}
