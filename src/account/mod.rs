//! MacieAccount: which AWS account the operator acts in for a resource, with which credentials,
//! in which regions, and what the resource's namespace may do there.
//!
//! [`Tenancy`] watches the MacieAccounts and the namespaces' labels once for both controllers
//! and answers, before any other step, whether a resource may act ([`policy`] decides). The
//! [`AccountController`] obtains each account's credentials (the operator's own, or a cached
//! session of the assumed role), checks them with sts:GetCallerIdentity and reports in the
//! MacieAccount's status; resources wait for that status to be Ready. It also keeps an account
//! in use from being deleted under its resources ([`users`]).

pub mod policy;
pub mod users;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::events::{EventType, Recorder};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};

use crate::api::conditions::{self, Reason, Summary};
use crate::api::{AccountRef, MacieAccount, MacieAccountStatus};
use crate::macie::credentials::{Identity, RoleSpec, session_name};
use crate::macie::{MacieClients, MacieError, Place};
use crate::runtime::{Error, Failures, MANAGER, status};
use policy::Refusal;
use users::{Counts, IN_USE_FINALIZER, Step, Usage, UserFeed, UserKind, Users, UsersChanged};

/// A MacieAccount or a namespace changed: resources that use it are decided again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Account(String),
    Namespace(String),
}

type Subscriber = Box<dyn Fn(&Change) + Send + Sync>;

/// The MacieAccounts and the namespaces' labels, watched once for both controllers.
pub struct Tenancy {
    accounts: Store<MacieAccount>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    default_account: String,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    /// True once both watches have listed everything (a store's own readiness wakes only one
    /// waiter; this one wakes every controller).
    ready: tokio::sync::watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The MacieJobs and MacieDiscoveries that use accounts, from the controllers' caches.
    users: Arc<Users>,
}

/// A resource the tenancy admits: where its calls go, and the account's rules.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub place: Place,
    pub account: Arc<MacieAccount>,
}

impl Admitted {
    /// The credentials the account asks for.
    pub fn role(&self) -> Option<RoleSpec> {
        role_of(&self.account)
    }
}

/// The role a MacieAccount assumes (None: the operator's own credentials), in a session named
/// after the MacieAccount.
pub fn role_of(account: &MacieAccount) -> Option<RoleSpec> {
    account.spec.role_arn.as_ref().map(|arn| RoleSpec {
        role_arn: arn.clone(),
        external_id: account.spec.external_id.clone(),
        session_name: session_name(&account.name_any()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drives a reflector's stream, telling the subscribers what changed once the cache holds it.
fn spawn_watch<K: kube::Resource<DynamicType = ()> + Send + 'static>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    change: fn(&K) -> Change,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(stream.for_each(move |r| {
        match r {
            Ok(obj) => {
                let c = change(&obj);
                for s in lock(&subscribers).iter() {
                    s(&c);
                }
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
        }
        std::future::ready(())
    }))
}

impl Tenancy {
    /// Starts watching MacieAccounts and namespaces (metadata only). Resources without
    /// spec.accountRef use the MacieAccount named `default_account`.
    pub fn start(client: kube::Client, default_account: &str) -> Arc<Tenancy> {
        let subscribers: Arc<Mutex<Vec<Subscriber>>> = Arc::default();
        let (accounts, account_writer) = reflector::store::<MacieAccount>();
        let (namespaces, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let account_task = spawn_watch(
            watcher(Api::<MacieAccount>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .modify(crate::runtime::slim)
                .reflect(account_writer)
                .touched_objects(),
            subscribers.clone(),
            |a: &MacieAccount| Change::Account(a.name_any()),
        );
        let ns_task = spawn_watch(
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client),
                watcher::Config::default(),
            )
            .default_backoff()
            .reflect(ns_writer)
            .touched_objects(),
            subscribers.clone(),
            |n: &PartialObjectMeta<Namespace>| Change::Namespace(n.name_any()),
        );
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let ready_task = {
            let (accounts, namespaces) = (accounts.clone(), namespaces.clone());
            tokio::spawn(async move {
                if accounts.wait_until_ready().await.is_ok() && namespaces.wait_until_ready().await.is_ok() {
                    ready_tx.send_replace(true);
                }
            })
        };
        Arc::new(Tenancy {
            accounts,
            namespaces,
            default_account: default_account.to_string(),
            subscribers,
            ready,
            tasks: vec![account_task, ns_task, ready_task],
            users: Arc::default(),
        })
    }

    /// Waits until both watches have listed everything once.
    pub async fn ready(&self) {
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }

    /// Waits until both watches have listed everything once, or `shutdown` resolves first
    /// (false).
    pub async fn ready_or<F: std::future::Future<Output = ()>>(&self, shutdown: std::pin::Pin<&mut F>) -> bool {
        tokio::select! {
            _ = self.ready() => {
                tracing::debug!("MacieAccounts and namespaces listed");
                true
            }
            _ = shutdown => false,
        }
    }

    /// Calls `f` after every change of a MacieAccount or a namespace (once the cache holds it).
    pub fn subscribe(&self, f: impl Fn(&Change) + Send + Sync + 'static) {
        lock(&self.subscribers).push(Box::new(f));
    }

    /// The MacieAccount a resource uses.
    pub fn account_name<'a>(&'a self, account_ref: Option<&'a AccountRef>) -> &'a str {
        policy::account_name(account_ref, &self.default_account)
    }

    /// Whether a resource in `namespace` may use its account in `region` (see `policy::admit`).
    pub fn admit(&self, namespace: &str, account_ref: Option<&AccountRef>, region: &str) -> Result<Admitted, Refusal> {
        let name = self.account_name(account_ref);
        let account = self.accounts.get(&reflector::ObjectRef::new(name));
        let ns = self.namespaces.get(&reflector::ObjectRef::new(namespace));
        let labels = ns.as_ref().map(|n| n.labels());
        policy::admit(name, account_ref.is_none(), account.as_deref(), labels, region)?;
        Ok(Admitted {
            place: Place::new(name, region),
            account: account.expect("admitted accounts exist"),
        })
    }

    /// Registers a controller's cache of `kind` (watching `namespace`, or every namespace) as
    /// users of MacieAccounts; the feed goes around its reflector (see [`UserFeed`]).
    pub fn user_feed<K>(
        &self,
        kind: UserKind,
        namespace: Option<String>,
        store: Store<K>,
        account_ref: fn(&K) -> Option<&AccountRef>,
    ) -> Arc<UserFeed<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.users
            .feed(kind, namespace, store, account_ref, &self.default_account)
    }

    /// Calls `f` whenever a MacieAccount's users may have changed.
    pub fn on_users_changed(&self, f: impl Fn(&UsersChanged) + Send + Sync + 'static) {
        self.users.subscribe(f);
    }

    /// Who uses `account`: the resources that reference it (or have no accountRef while it is
    /// the default account) in namespaces it selects.
    pub fn usage(&self, account: &MacieAccount) -> Usage {
        if !*self.ready.borrow() {
            return Usage::Unknown;
        }
        let selector = &account.spec.namespace_selector;
        self.users
            .usage(&account.name_any(), &self.default_account, |namespace| {
                self.namespaces
                    .get(&reflector::ObjectRef::new(namespace))
                    .is_some_and(|n| policy::selects(selector, n.labels()))
            })
    }

    /// Whether `change` can alter the decision for a resource in `namespace` using `account`.
    pub fn affects(&self, change: &Change, namespace: &str, account_ref: Option<&AccountRef>) -> bool {
        match change {
            Change::Account(a) => a == self.account_name(account_ref),
            Change::Namespace(n) => n == namespace,
        }
    }
}

#[cfg(test)]
pub mod testing {
    //! A tenancy fed by hand (the step tests): no watches.
    use super::*;
    use crate::api::MacieAccountSpec;
    use kube::runtime::reflector::store::Writer;

    pub struct Fed {
        pub tenancy: Arc<Tenancy>,
        pub accounts: Writer<MacieAccount>,
        pub namespaces: Writer<PartialObjectMeta<Namespace>>,
    }

    impl Fed {
        pub fn new(default_account: &str) -> Fed {
            let (accounts, account_writer) = reflector::store::<MacieAccount>();
            let (namespaces, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
            Fed {
                tenancy: Arc::new(Tenancy {
                    accounts,
                    namespaces,
                    default_account: default_account.to_string(),
                    subscribers: Arc::default(),
                    ready: tokio::sync::watch::channel(true).1,
                    tasks: Vec::new(),
                    users: Arc::default(),
                }),
                accounts: account_writer,
                namespaces: ns_writer,
            }
        }

        /// Puts a MacieAccount whose credentials were verified for its generation.
        pub fn put_verified(&mut self, name: &str, spec: MacieAccountSpec) {
            let mut a = MacieAccount::new(name, spec);
            a.metadata.generation = Some(1);
            a.status = Some(MacieAccountStatus {
                observed_generation: Some(1),
                conditions: conditions::conditions(&Reason::Verified.summary("ok"), Some(1), &[], Timestamp::now()),
                account_id: Some("123456789012".into()),
                ..Default::default()
            });
            self.accounts.apply_watcher_event(&watcher::Event::Apply(a));
        }

        /// Puts a MacieAccount as it is (e.g. without a status: not verified yet).
        pub fn put(&mut self, account: MacieAccount) {
            self.accounts.apply_watcher_event(&watcher::Event::Apply(account));
        }

        pub fn put_namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
            let mut ns: PartialObjectMeta<Namespace> = PartialObjectMeta::default();
            ns.metadata.name = Some(name.to_string());
            ns.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            self.namespaces.apply_watcher_event(&watcher::Event::Apply(ns));
        }
    }
}

impl Drop for Tenancy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Settings of the MacieAccount controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often working credentials are checked again (sts:GetCallerIdentity).
    pub recheck: Duration,
    /// Name of this instance in Events.
    pub instance: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            recheck: Duration::from_secs(15 * 60),
            instance: None,
        }
    }
}

struct Context {
    client: kube::Client,
    clients: Arc<MacieClients>,
    recorder: Recorder,
    config: Config,
    failures: Failures<MacieAccount>,
    tenancy: Arc<Tenancy>,
    /// The last verification of each account's credentials.
    verified: Mutex<HashMap<String, Verification>>,
    /// When this process last wrote each account's status.
    written: Mutex<HashMap<String, Instant>>,
}

/// One sts:GetCallerIdentity of an account's credentials.
#[derive(Debug, Clone)]
struct Verification {
    /// The account's metadata.generation it was made for.
    generation: Option<i64>,
    role: Option<RoleSpec>,
    region: String,
    result: Result<Identity, MacieError>,
    at: Instant,
    /// When the next one is due: the recheck interval after a success, the backoff after a
    /// failure.
    due_in: Duration,
}

impl Verification {
    /// Pure: whether it still stands at `now` for the account's `generation`, `role` and
    /// `region`. Reconciles that the account's users trigger (one per resource created or
    /// deleted) reuse it for half the time until the next is due, so that they make no STS
    /// call; a changed spec, and the reconcile scheduled when it is due, verify again.
    fn stands(&self, generation: Option<i64>, role: &Option<RoleSpec>, region: &str, now: Instant) -> bool {
        self.generation == generation
            && self.role == *role
            && self.region == region
            && now.saturating_duration_since(self.at) < self.due_in / 2
    }

    /// How long until the next one is due, from `now`.
    fn due_after(&self, now: Instant) -> Duration {
        self.due_in.saturating_sub(now.saturating_duration_since(self.at))
    }
}

impl Context {
    /// Drops what is kept for an account that is gone, or not held by this operator.
    fn forget(&self, obj: &MacieAccount) {
        let name = obj.name_any();
        self.clients.forget_account(&name);
        lock(&self.verified).remove(&name);
        lock(&self.written).remove(&name);
        self.failures.clear(obj);
    }

    /// The verification of `obj`'s credentials: the last one while it stands, else a new one.
    async fn verify(&self, obj: &MacieAccount, role: Option<RoleSpec>, region: String) -> Verification {
        let name = obj.name_any();
        if let Some(v) = lock(&self.verified)
            .get(&name)
            .filter(|v| v.stands(obj.meta().generation, &role, &region, Instant::now()))
        {
            return v.clone();
        }
        let result = self.clients.verify(&name, &region).await;
        let due_in = match &result {
            Ok(_) => {
                self.failures.clear(obj);
                self.config.recheck
            }
            Err(e) => {
                let delay = self.failures.record(obj);
                tracing::warn!(account = %name, error = %e, retry_in = ?delay, "MacieAccount credentials do not work");
                delay
            }
        };
        let v = Verification {
            generation: obj.meta().generation,
            role,
            region,
            result,
            at: Instant::now(),
            due_in,
        };
        lock(&self.verified).insert(name, v.clone());
        v
    }
}

/// The MacieAccount controller: credentials, sts:GetCallerIdentity, the in-use finalizer,
/// status.
pub struct AccountController {
    controller: Controller<MacieAccount>,
    trigger_rx: futures::channel::mpsc::UnboundedReceiver<reflector::ObjectRef<MacieAccount>>,
    ctx: Arc<Context>,
}

impl AccountController {
    /// Counts each account's users from what `tenancy` is given by the MacieJob and
    /// MacieDiscovery controllers (see [`users`]).
    pub fn new(
        client: kube::Client,
        clients: Arc<MacieClients>,
        tenancy: Arc<Tenancy>,
        config: Config,
    ) -> AccountController {
        let (store, writer) = reflector::store::<MacieAccount>();
        let (metrics, cached) = (clients.metrics().clone(), store.clone());
        let events = watcher(
            Api::<MacieAccount>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| status::forget_deleted(&metrics, event, &cached))
        .applied_objects();
        let controller = Controller::for_stream(events, store.clone());
        let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
        let every_account = {
            let (store, tx) = (store, trigger_tx.clone());
            move || {
                for a in store.state() {
                    let _ = tx.unbounded_send(reflector::ObjectRef::from_obj(&*a));
                }
            }
        };
        {
            // Resources created or deleted: their account counts again.
            let every_account = every_account.clone();
            tenancy.on_users_changed(move |change| match change {
                UsersChanged::Account(name) => {
                    let _ = trigger_tx.unbounded_send(reflector::ObjectRef::new(name));
                }
                UsersChanged::All => every_account(),
            });
        }
        // A namespace's labels decide whether its resources count for an account.
        tenancy.subscribe(move |change| {
            if let Change::Namespace(_) = change {
                every_account();
            }
        });
        AccountController {
            controller,
            trigger_rx,
            ctx: Arc::new(Context {
                recorder: Recorder::new(client.clone(), MANAGER, config.instance.clone()),
                client,
                clients,
                config,
                failures: Failures::default(),
                tenancy,
                verified: Mutex::default(),
                written: Mutex::default(),
            }),
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        // Counting users needs every namespace's labels.
        let mut shutdown = Box::pin(shutdown);
        if !self.ctx.tenancy.ready_or(shutdown.as_mut()).await {
            return;
        }
        crate::runtime::drive(
            self.controller
                .reconcile_on(self.trigger_rx)
                .graceful_shutdown_on(shutdown)
                .run(reconcile, error_policy, self.ctx),
        )
        .await;
    }
}

fn error_policy(obj: Arc<MacieAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.failures.retry(&obj, err)
}

/// Pure: the Ready summary and the credential fields of the status, from the verification and,
/// while the account is held by its users during its deletion, how many they are.
/// A paused MacieAccount that works says so (`ReconcilePaused`, still Ready: the resources that
/// use it keep being observed); one that does not keeps saying why, which matters more.
fn paused_account(summary: Summary, paused: bool) -> Summary {
    if !paused || summary.phase != conditions::Phase::Ready {
        return summary;
    }
    let message = format!(
        "paused by the annotation {}=\"true\" on this MacieAccount: no resource that uses it writes to Macie until it is removed; {}",
        crate::api::PAUSED_ANNOTATION,
        summary.message
    );
    Summary::new(conditions::Phase::Ready, Reason::ReconcilePaused.as_str(), message)
}

fn report(
    verified: &Result<Identity, MacieError>,
    role: Option<&RoleSpec>,
    held: Option<Counts>,
    prev: &MacieAccountStatus,
) -> (Summary, MacieAccountStatus) {
    let waits = |c: Counts| {
        format!(
            "deletion waits: {}; it is deleted once they are gone, and serves them until then",
            c.describe()
        )
    };
    match verified {
        Ok(id) => {
            let works = format!("credentials work: {} in account {}", id.arn, id.account);
            let summary = match held {
                Some(c) => Reason::InUse.summary(format!("{}; {works}", waits(c))),
                None => Reason::Verified.summary(works),
            };
            (
                summary,
                MacieAccountStatus {
                    account_id: Some(id.account.clone()),
                    arn: Some(id.arn.clone()),
                    error_code: None,
                    ..Default::default()
                },
            )
        }
        Err(e) => {
            let how = match role {
                Some(r) => format!("sts:AssumeRole of {} failed", r.role_arn),
                None => "the operator's own credentials do not work".to_string(),
            };
            let mut message =
                format!("{how}: {e}; resources using this account are refused (AccountNotReady) until it is Ready");
            if let Some(c) = held {
                message = format!("{message}; {}", waits(c));
            }
            (
                Reason::AccountNotReady.summary(message),
                MacieAccountStatus {
                    // What worked last stays visible.
                    account_id: prev.account_id.clone(),
                    arn: prev.arn.clone(),
                    error_code: Some(e.code().to_string()),
                    ..Default::default()
                },
            )
        }
    }
}

/// Adds (true) or removes (false) the in-use finalizer, keeping any other; the
/// resourceVersion makes it fail on a stale copy (retried after the backoff).
async fn set_finalizer(api: &Api<MacieAccount>, obj: &MacieAccount, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != IN_USE_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(IN_USE_FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": obj.resource_version() }
    });
    api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// One reconcile: the in-use finalizer -> register the credentials -> verify them -> status.
async fn reconcile(obj: Arc<MacieAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = obj.name_any();
    let api: Api<MacieAccount> = Api::all(ctx.client.clone());
    let usage = ctx.tenancy.usage(&obj);
    let has_finalizer = obj.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
    let held = match users::step(obj.meta().deletion_timestamp.is_some(), has_finalizer, &usage) {
        Step::AddFinalizer => {
            // The update triggers the next reconcile.
            set_finalizer(&api, &obj, true).await?;
            return Ok(Action::await_change());
        }
        Step::Release => {
            crate::runtime::publish_event(
                &ctx.recorder,
                &*obj,
                EventType::Normal,
                "Released",
                "ReleaseFinalizer",
                "no MacieJob or MacieDiscovery uses this MacieAccount any more: its deletion proceeds".into(),
            )
            .await;
            set_finalizer(&api, &obj, false).await?;
            ctx.forget(&obj);
            return Ok(Action::await_change());
        }
        Step::Forget => {
            ctx.forget(&obj);
            return Ok(Action::await_change());
        }
        Step::Serve => None,
        Step::Hold(c) => Some(c),
    };
    let role = role_of(&obj);
    ctx.clients.use_account(&name, role.clone());
    let region = obj.spec.regions.first().cloned().unwrap_or_else(|| "us-east-1".into());
    let verification = ctx.verify(&obj, role.clone(), region).await;
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.meta().generation;
    let (summary, next) = report(&verification.result, role.as_ref(), held, &prev);
    let summary = paused_account(summary, policy::has_pause(obj.meta()));
    let status = MacieAccountStatus {
        observed_generation: generation,
        conditions: conditions::conditions(&summary, generation, &prev.conditions, Timestamp::now()),
        resources_in_use: match usage {
            Usage::Counted(c) => Some(i64::from(c.total())),
            // Not counted here: what an operator that counts wrote stays.
            Usage::Unknown | Usage::Untracked => prev.resources_in_use,
        },
        ..next
    };
    let now = Instant::now();
    let due = verification.due_after(now);
    let count_only = status::differs(Some(&prev), &status)
        && !status::differs(
            Some(&prev),
            &MacieAccountStatus {
                resources_in_use: prev.resources_in_use,
                ..status.clone()
            },
        );
    let since = lock(&ctx.written).get(&name).map(|t| now.saturating_duration_since(*t));
    if let Some(wait) = users::count_write_wait(count_only, since) {
        return Ok(Action::requeue(wait.min(due)));
    }
    let to = status::Writer {
        api: &api,
        recorder: &ctx.recorder,
        metrics: ctx.clients.metrics(),
        precondition: None,
    };
    if status::write(to, &*obj, obj.status.as_ref(), &status).await?.is_some() {
        lock(&ctx.written).insert(name, Instant::now());
    }
    Ok(Action::requeue(due))
}

#[cfg(test)]
mod controller_tests {
    use super::*;
    use crate::api::conditions::Phase;

    #[test]
    fn a_paused_account_says_so_only_while_it_works() {
        let works = Reason::Verified.summary("credentials work");
        let paused = paused_account(works.clone(), true);
        assert_eq!(
            (paused.phase, paused.reason.as_str()),
            (Phase::Ready, "ReconcilePaused")
        );
        assert!(paused.message.ends_with("; credentials work"), "{}", paused.message);
        assert_eq!(paused_account(works.clone(), false), works);
        let broken = Reason::AccountNotReady.summary("sts:AssumeRole failed");
        assert_eq!(
            paused_account(broken.clone(), true),
            broken,
            "why it does not work matters more"
        );
    }

    fn identity() -> Identity {
        Identity {
            account: "111122223333".into(),
            arn: "arn:aws:sts::111122223333:assumed-role/ops/macie-operator-team-a".into(),
        }
    }

    #[test]
    fn report_rows() {
        let role = RoleSpec {
            role_arn: "arn:aws:iam::111122223333:role/ops".into(),
            external_id: None,
            session_name: session_name("team-a"),
        };
        let denied = MacieError::AccessDenied {
            code: "AccessDenied".into(),
            message: "not authorized to perform sts:AssumeRole".into(),
        };
        let prev = MacieAccountStatus {
            account_id: Some("111122223333".into()),
            arn: Some(identity().arn),
            ..Default::default()
        };
        let two = Counts {
            jobs: 1,
            discoveries: 1,
        };
        // (verified, held by users while deleted) -> (reason, phase, the message contains)
        type Row = (
            Result<Identity, MacieError>,
            Option<Counts>,
            &'static str,
            Phase,
            &'static str,
        );
        let rows: Vec<Row> = vec![
            (
                Ok(identity()),
                None,
                "Verified",
                Phase::Ready,
                "credentials work: arn:aws:sts::",
            ),
            // Held: still Ready (the resources that hold it are admitted), saying why it stays.
            (
                Ok(identity()),
                Some(two),
                "InUse",
                Phase::Ready,
                "deletion waits: 2 resources use this MacieAccount (1 MacieJob, 1 MacieDiscovery); it is deleted once they are gone",
            ),
            (
                Err(denied.clone()),
                None,
                "AccountNotReady",
                Phase::Stalled,
                "AccessDenied",
            ),
            (
                Err(denied),
                Some(two),
                "AccountNotReady",
                Phase::Stalled,
                "deletion waits: 2 resources use this MacieAccount",
            ),
        ];
        for (verified, held, reason, phase, text) in rows {
            let (summary, status) = report(&verified, Some(&role), held, &prev);
            assert_eq!(summary.reason, reason, "{held:?}");
            assert_eq!(summary.phase, phase, "{held:?}");
            assert!(summary.message.contains(text), "{}", summary.message);
            assert_eq!(status.account_id, prev.account_id, "the last account that worked stays");
            assert_eq!(status.error_code.is_some(), verified.is_err());
        }
    }

    /// A MacieAccount being deleted while it is held, with its status written for `seen` (the
    /// deletion moved its generation to 3).
    fn held_account(seen: i64) -> MacieAccount {
        let mut a: MacieAccount = serde_json::from_value(serde_json::json!({
            "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
            "metadata": {
                "name": "team-a", "generation": 3, "finalizers": [IN_USE_FINALIZER],
                "deletionTimestamp": "2030-01-01T00:00:00Z"
            },
            "spec": {"regions": ["us-east-1"], "namespaceSelector": {"matchLabels": {"team": "a"}}}
        }))
        .unwrap();
        let held = Counts {
            jobs: 1,
            discoveries: 0,
        };
        let (summary, status) = report(&Ok(identity()), None, Some(held), &MacieAccountStatus::default());
        a.status = Some(MacieAccountStatus {
            observed_generation: Some(seen),
            conditions: conditions::conditions(&summary, Some(seen), &[], Timestamp::now()),
            resources_in_use: Some(1),
            ..status
        });
        a
    }

    #[test]
    fn an_account_held_while_it_is_deleted_still_admits_its_resources() {
        let mut fed = testing::Fed::new("default");
        fed.put_namespace("ns-a", &[("team", "a")]);
        let by_ref = AccountRef { name: "team-a".into() };
        // (status written for generation, admitted)
        let rows = [
            // The held status of the current generation: Ready (reason InUse), admitted, so a
            // deletionPolicy Cancel MacieJob can still cancel its job.
            (3, Ok(())),
            // The deletion moved the generation and the held status is not written yet: not
            // verified (AccountNotReady, which such a MacieJob waits out).
            (2, Err(Reason::AccountNotReady)),
        ];
        for (seen, expected) in rows {
            fed.put(held_account(seen));
            let got = fed
                .tenancy
                .admit("ns-a", Some(&by_ref), "us-east-1")
                .map(|a| assert_eq!(a.place, Place::new("team-a", "us-east-1")))
                .map_err(|r| r.reason());
            assert_eq!(got, expected, "status of generation {seen}");
        }
    }

    #[test]
    fn verifications_stand_for_half_their_time_and_the_same_spec() {
        let t0 = Instant::now();
        let v = Verification {
            generation: Some(1),
            role: None,
            region: "us-east-1".into(),
            result: Ok(identity()),
            at: t0,
            due_in: Duration::from_secs(60),
        };
        let role = Some(RoleSpec {
            role_arn: "arn:aws:iam::111122223333:role/ops".into(),
            external_id: None,
            session_name: session_name("team-a"),
        });
        let s = Duration::from_secs;
        // (generation, role, region, at) -> stands
        let rows: Vec<(i64, Option<RoleSpec>, &str, Instant, bool)> = vec![
            (1, None, "us-east-1", t0, true),
            (1, None, "us-east-1", t0 + s(29), true),
            (1, None, "us-east-1", t0 + s(30), false),
            (1, None, "us-east-1", t0 + s(60), false),
            (2, None, "us-east-1", t0, false),
            (1, None, "eu-west-1", t0, false),
            (1, role, "us-east-1", t0, false),
        ];
        for (generation, role, region, now, stands) in rows {
            assert_eq!(
                v.stands(Some(generation), &role, region, now),
                stands,
                "{generation} {role:?} {region} {:?}",
                now - t0
            );
        }
        assert_eq!(v.due_after(t0 + s(20)), s(40));
        assert_eq!(v.due_after(t0 + s(90)), Duration::ZERO);
    }
}

/// Namespace labels as the tenancy reads them (tests).
pub fn labels_of(ns: &PartialObjectMeta<Namespace>) -> &BTreeMap<String, String> {
    ns.labels()
}
