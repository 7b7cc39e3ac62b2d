//! MacieAccount: which AWS account the operator acts in for a resource, with which credentials,
//! in which regions, and what the resource's namespace may do there.
//!
//! [`Tenancy`] watches the MacieAccounts and the namespaces' labels once for both controllers
//! and answers, before any other step, whether a resource may act ([`policy`] decides). The
//! [`AccountController`] obtains each account's credentials (the operator's own, or a cached
//! session of the assumed role), checks them with sts:GetCallerIdentity and reports in the
//! MacieAccount's status; resources wait for that status to be Ready.

pub mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::events::Recorder;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};

use crate::api::conditions::{self, Reason};
use crate::api::{AccountRef, MacieAccount, MacieAccountStatus};
use crate::macie::credentials::{RoleSpec, session_name};
use crate::macie::{MacieClients, Place};
use crate::runtime::{Error, Failures, MANAGER, status};
use policy::Refusal;

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
}

/// The MacieAccount controller: credentials, sts:GetCallerIdentity, status.
pub struct AccountController {
    controller: Controller<MacieAccount>,
    ctx: Arc<Context>,
}

impl AccountController {
    pub fn new(client: kube::Client, clients: Arc<MacieClients>, config: Config) -> AccountController {
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
        let controller = Controller::for_stream(events, store);
        AccountController {
            controller,
            ctx: Arc::new(Context {
                recorder: Recorder::new(client.clone(), MANAGER, config.instance.clone()),
                client,
                clients,
                config,
                failures: Failures::default(),
            }),
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        crate::runtime::drive(
            self.controller
                .graceful_shutdown_on(shutdown)
                .run(reconcile, error_policy, self.ctx),
        )
        .await;
    }
}

fn error_policy(obj: Arc<MacieAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.failures.retry(&obj, err)
}

/// One reconcile: register the credentials -> verify them -> status.
async fn reconcile(obj: Arc<MacieAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = obj.name_any();
    if obj.meta().deletion_timestamp.is_some() {
        ctx.clients.forget_account(&name);
        return Ok(Action::await_change());
    }
    let role = role_of(&obj);
    ctx.clients.use_account(&name, role.clone());
    let region = obj.spec.regions.first().cloned().unwrap_or_else(|| "us-east-1".into());
    let verified = ctx.clients.verify(&name, &region).await;
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.meta().generation;
    let (summary, next) = match &verified {
        Ok(id) => (
            Reason::Verified.summary(format!("credentials work: {} in account {}", id.arn, id.account)),
            MacieAccountStatus {
                account_id: Some(id.account.clone()),
                arn: Some(id.arn.clone()),
                error_code: None,
                ..Default::default()
            },
        ),
        Err(e) => {
            let how = match &role {
                Some(r) => format!("sts:AssumeRole of {} failed", r.role_arn),
                None => "the operator's own credentials do not work".to_string(),
            };
            (
                Reason::AccountNotReady.summary(format!(
                    "{how}: {e}; resources using this account are refused (AccountNotReady) until it is Ready"
                )),
                MacieAccountStatus {
                    // What worked last stays visible.
                    account_id: prev.account_id.clone(),
                    arn: prev.arn.clone(),
                    error_code: Some(e.code().to_string()),
                    ..Default::default()
                },
            )
        }
    };
    let status = MacieAccountStatus {
        observed_generation: generation,
        conditions: conditions::conditions(&summary, generation, &prev.conditions, Timestamp::now()),
        ..next
    };
    let api: Api<MacieAccount> = Api::all(ctx.client.clone());
    let to = status::Writer {
        api: &api,
        recorder: &ctx.recorder,
        metrics: ctx.clients.metrics(),
    };
    status::write(to, &*obj, obj.status.as_ref(), &status).await?;
    Ok(match verified {
        Ok(_) => {
            ctx.failures.clear(&obj);
            Action::requeue(ctx.config.recheck)
        }
        Err(e) => ctx.failures.retry(&obj, &e),
    })
}

/// Namespace labels as the tenancy reads them (tests).
pub fn labels_of(ns: &PartialObjectMeta<Namespace>) -> &BTreeMap<String, String> {
    ns.labels()
}
