//! Which MacieJobs and MacieDiscoveries use a MacieAccount, and what that means for the
//! account: the finalizer [`IN_USE_FINALIZER`] holds an account in use, so that deleting it
//! waits until nothing uses it (a `deletionPolicy: Cancel` MacieJob can still cancel its job).
//!
//! The resources are counted from the caches the MacieJob and MacieDiscovery controllers keep
//! anyway (no second watch of either kind): each controller registers its cache here with a
//! [`UserFeed`], which also tells the MacieAccount controller which account's users changed (a
//! resource new to the cache, a deleted one, or everything after a relist). The decisions are
//! pure and table-tested below: [`step`] (the finalizer) and [`count_write_wait`] (how often a
//! changed count alone is written).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::api::AccountRef;

/// The finalizer that keeps a MacieAccount while resources use it.
pub const IN_USE_FINALIZER: &str = "macie.kubeops.dev/in-use";

/// A status that differs from the stored one only in `resourcesInUse` is written at most this
/// often per account (creating or deleting many resources at once changes it each time).
pub const COUNT_WRITE_INTERVAL: Duration = Duration::from_secs(2);

/// The kinds that use MacieAccounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserKind {
    MacieJob,
    MacieDiscovery,
}

const USER_KINDS: [UserKind; 2] = [UserKind::MacieJob, UserKind::MacieDiscovery];

/// How many resources of each kind use an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub jobs: u32,
    pub discoveries: u32,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.jobs + self.discoveries
    }

    /// E.g. "3 resources use this MacieAccount (2 MacieJobs, 1 MacieDiscovery)".
    pub fn describe(&self) -> String {
        let kinds = [
            (self.jobs, "MacieJob", "MacieJobs"),
            (self.discoveries, "MacieDiscovery", "MacieDiscoveries"),
        ]
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect::<Vec<_>>()
        .join(", ");
        match self.total() {
            1 => format!("1 resource uses this MacieAccount ({kinds})"),
            n => format!("{n} resources use this MacieAccount ({kinds})"),
        }
    }
}

/// What the operator knows of an account's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Counted from complete caches of both kinds, across every namespace.
    Counted(Counts),
    /// Not every cache has listed its kind yet (or a kind has no controller): wait.
    Unknown,
    /// A controller watches one namespace only: it cannot tell who else uses the account, so
    /// it neither adds nor removes the finalizer.
    Untracked,
}

/// What a MacieAccount's lifecycle asks of a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not being deleted, counted and without the finalizer: add it (the update triggers the
    /// next reconcile).
    AddFinalizer,
    /// Verify the credentials and report, as usual.
    Serve,
    /// Being deleted while resources use it: keep the finalizer, go on serving them (Ready,
    /// reason InUse), and say how many there are.
    Hold(Counts),
    /// Being deleted, and nothing uses it any more: remove the finalizer.
    Release,
    /// Being deleted, and not held by this operator: drop what is kept for it.
    Forget,
}

/// Pure: what the deletion state, the finalizer and the usage ask for.
pub fn step(deleting: bool, has_finalizer: bool, usage: &Usage) -> Step {
    match (deleting, has_finalizer, usage) {
        (false, false, Usage::Counted(_)) => Step::AddFinalizer,
        (false, _, _) => Step::Serve,
        (true, true, Usage::Counted(c)) if c.total() > 0 => Step::Hold(*c),
        (true, true, Usage::Counted(_)) => Step::Release,
        // Not ours to hold (no finalizer, or this operator sees one namespace only), or the
        // caches are not complete yet (a relist tells every account again once they are).
        (true, _, _) => Step::Forget,
    }
}

/// Pure: how long a status write must wait. Only a write that changes nothing but the count
/// waits, until [`COUNT_WRITE_INTERVAL`] has passed since the account's last write (None:
/// write now).
pub fn count_write_wait(count_only: bool, since_last_write: Option<Duration>) -> Option<Duration> {
    match since_last_write {
        Some(since) if count_only && since < COUNT_WRITE_INTERVAL => Some(COUNT_WRITE_INTERVAL - since),
        _ => None,
    }
}

/// An account's users may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersChanged {
    /// The users of this MacieAccount.
    Account(String),
    /// Any account's (a cache listed its kind again).
    All,
}

type Visit = Box<dyn Fn(&mut dyn FnMut(&str, Option<&AccountRef>)) + Send + Sync>;
type Subscriber = Box<dyn Fn(&UsersChanged) + Send + Sync>;

/// One controller's cache of a kind that uses accounts.
struct Source {
    kind: UserKind,
    /// The one namespace the controller watches (None: every namespace).
    namespace: Option<String>,
    /// Calls its argument with the namespace and accountRef of every cached resource.
    visit: Visit,
    /// Whether the cache has listed the kind once.
    ready: Arc<AtomicBool>,
}

/// The caches of the kinds that use accounts, and who hears of their changes.
#[derive(Default)]
pub struct Users {
    sources: Mutex<Vec<Source>>,
    subscribers: Mutex<Vec<Subscriber>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Users {
    /// Calls `f` whenever an account's users may have changed.
    pub fn subscribe(&self, f: impl Fn(&UsersChanged) + Send + Sync + 'static) {
        lock(&self.subscribers).push(Box::new(f));
    }

    fn notify(&self, change: &UsersChanged) {
        for s in lock(&self.subscribers).iter() {
            s(change);
        }
    }

    /// Registers a controller's cache of `kind` (watching `namespace`, or every namespace);
    /// the returned feed goes around its reflector (see [`UserFeed`]).
    pub fn feed<K>(
        self: &Arc<Self>,
        kind: UserKind,
        namespace: Option<String>,
        store: Store<K>,
        account_ref: fn(&K) -> Option<&AccountRef>,
        default_account: &str,
    ) -> Arc<UserFeed<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let ready = Arc::new(AtomicBool::new(false));
        let visit: Visit = {
            let store = store.clone();
            Box::new(move |f: &mut dyn FnMut(&str, Option<&AccountRef>)| {
                for o in store.state() {
                    f(o.meta().namespace.as_deref().unwrap_or_default(), account_ref(&o));
                }
            })
        };
        let tracked = namespace.is_none();
        lock(&self.sources).push(Source {
            kind,
            namespace,
            visit,
            ready: ready.clone(),
        });
        Arc::new(UserFeed {
            store,
            account_ref,
            default_account: default_account.to_string(),
            users: self.clone(),
            tracked,
            ready,
            noted: Mutex::new(None),
        })
    }

    /// The users of MacieAccount `account` (resources without accountRef use
    /// `default_account`), counting only those in namespaces `selected` accepts.
    pub fn usage(&self, account: &str, default_account: &str, mut selected: impl FnMut(&str) -> bool) -> Usage {
        let sources = lock(&self.sources);
        if sources.iter().any(|s| s.namespace.is_some()) {
            return Usage::Untracked;
        }
        let every_kind = USER_KINDS.iter().all(|k| sources.iter().any(|s| s.kind == *k));
        if !every_kind || !sources.iter().all(|s| s.ready.load(Ordering::Acquire)) {
            return Usage::Unknown;
        }
        let mut counts = Counts::default();
        // Namespaces are few and resources many: each namespace is decided once.
        let mut namespaces: BTreeMap<String, bool> = BTreeMap::new();
        for s in sources.iter() {
            let n = match s.kind {
                UserKind::MacieJob => &mut counts.jobs,
                UserKind::MacieDiscovery => &mut counts.discoveries,
            };
            (s.visit)(&mut |namespace, account_ref| {
                if super::policy::account_name(account_ref, default_account) != account {
                    return;
                }
                let chosen = match namespaces.get(namespace) {
                    Some(c) => *c,
                    None => {
                        let c = selected(namespace);
                        namespaces.insert(namespace.to_string(), c);
                        c
                    }
                };
                if chosen {
                    *n += 1;
                }
            });
        }
        Usage::Counted(counts)
    }
}

/// Goes around a controller's reflector: [`UserFeed::before_reflect`] right before it (to
/// see whether a resource is new to the cache), [`UserFeed::after_reflect`] right after (to
/// tell the MacieAccount controller once the cache holds the change).
pub struct UserFeed<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    account_ref: fn(&K) -> Option<&AccountRef>,
    default_account: String,
    users: Arc<Users>,
    /// The controller watches every namespace (otherwise nothing is counted: no notices).
    tracked: bool,
    ready: Arc<AtomicBool>,
    /// The account of a resource new to the cache, noted before the reflector applies it.
    noted: Mutex<Option<String>>,
}

impl<K> UserFeed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn account(&self, obj: &K) -> String {
        super::policy::account_name((self.account_ref)(obj), &self.default_account).to_string()
    }

    /// Before the reflector: a resource the cache does not hold yet is a new user.
    pub fn before_reflect(&self, event: &watcher::Event<K>) {
        if let watcher::Event::Apply(o) = event
            && self.tracked
            && self.store.get(&ObjectRef::from_obj(o)).is_none()
        {
            *lock(&self.noted) = Some(self.account(o));
        }
    }

    /// After the reflector: the account of a new or deleted resource, or every account once a
    /// (re)list is complete, is told to the subscribers.
    pub fn after_reflect(&self, event: &watcher::Event<K>) {
        let change = match event {
            watcher::Event::Apply(_) => lock(&self.noted).take().map(UsersChanged::Account),
            watcher::Event::Delete(o) => Some(UsersChanged::Account(self.account(o))),
            watcher::Event::InitDone => {
                self.ready.store(true, Ordering::Release);
                Some(UsersChanged::All)
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
        };
        if let Some(c) = change.filter(|_| self.tracked) {
            self.users.notify(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MacieJob, MacieJobSpec};
    use kube::runtime::reflector;

    fn counted(jobs: u32, discoveries: u32) -> Usage {
        Usage::Counted(Counts { jobs, discoveries })
    }

    #[test]
    fn finalizer_rows() {
        let c = Counts {
            jobs: 2,
            discoveries: 1,
        };
        // (deleting, has the finalizer, usage) -> step
        let rows: Vec<(bool, bool, Usage, Step)> = vec![
            (false, false, counted(0, 0), Step::AddFinalizer),
            (false, false, counted(2, 1), Step::AddFinalizer),
            (false, true, counted(0, 0), Step::Serve),
            (false, true, counted(2, 1), Step::Serve),
            (false, false, Usage::Unknown, Step::Serve),
            (false, false, Usage::Untracked, Step::Serve),
            (false, true, Usage::Untracked, Step::Serve),
            (true, true, counted(2, 1), Step::Hold(c)),
            (
                true,
                true,
                counted(0, 1),
                Step::Hold(Counts {
                    jobs: 0,
                    discoveries: 1,
                }),
            ),
            (true, true, counted(0, 0), Step::Release),
            // Not known yet: nothing is released on a partial cache.
            (true, true, Usage::Unknown, Step::Forget),
            // One namespace watched: the finalizer is not this operator's to remove.
            (true, true, Usage::Untracked, Step::Forget),
            (true, false, counted(2, 1), Step::Forget),
            (true, false, counted(0, 0), Step::Forget),
        ];
        for (deleting, has, usage, expected) in rows {
            assert_eq!(step(deleting, has, &usage), expected, "{deleting} {has} {usage:?}");
        }
    }

    #[test]
    fn count_write_rows() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (count only, since the last write) -> wait
        let rows: Vec<(bool, Option<Duration>, Option<Duration>)> = vec![
            (true, None, None),
            (true, Some(ms(500)), Some(ms(1500))),
            (true, Some(s(2)), None),
            (true, Some(s(60)), None),
            (false, Some(ms(500)), None),
            (false, None, None),
        ];
        for (count_only, since, expected) in rows {
            assert_eq!(count_write_wait(count_only, since), expected, "{count_only} {since:?}");
        }
    }

    #[test]
    fn counts_say_how_many_of_each_kind() {
        let rows = [
            (1, 0, "1 resource uses this MacieAccount (1 MacieJob)"),
            (0, 1, "1 resource uses this MacieAccount (1 MacieDiscovery)"),
            (
                2,
                1,
                "3 resources use this MacieAccount (2 MacieJobs, 1 MacieDiscovery)",
            ),
            (0, 3, "3 resources use this MacieAccount (3 MacieDiscoveries)"),
        ];
        for (jobs, discoveries, text) in rows {
            assert_eq!(Counts { jobs, discoveries }.describe(), text);
        }
    }

    fn job(ns: &str, name: &str, account: Option<&str>) -> MacieJob {
        let mut spec: MacieJobSpec =
            serde_json::from_value(serde_json::json!({"jobName": name, "jobStatus": "RUNNING"})).unwrap();
        spec.account_ref = account.map(|a| AccountRef { name: a.into() });
        let mut j = MacieJob::new(name, spec);
        j.metadata.namespace = Some(ns.into());
        j
    }

    fn job_ref(j: &MacieJob) -> Option<&AccountRef> {
        j.spec.account_ref.as_ref()
    }

    /// A feed around a hand-fed cache, as a controller's watch drives it.
    struct Fed {
        writer: reflector::store::Writer<MacieJob>,
        feed: Arc<UserFeed<MacieJob>>,
    }

    impl Fed {
        fn event(&mut self, e: watcher::Event<MacieJob>) {
            self.feed.before_reflect(&e);
            self.writer.apply_watcher_event(&e);
            self.feed.after_reflect(&e);
        }
    }

    fn fed(users: &Arc<Users>, namespace: Option<&str>) -> Fed {
        let (store, writer) = reflector::store::<MacieJob>();
        let feed = users.feed(
            UserKind::MacieJob,
            namespace.map(str::to_string),
            store,
            job_ref,
            "default",
        );
        Fed { writer, feed }
    }

    /// A MacieDiscovery cache with nothing in it, listed.
    fn no_discoveries(users: &Arc<Users>) {
        let (store, mut writer) = reflector::store::<crate::api::MacieDiscovery>();
        let feed = users.feed(
            UserKind::MacieDiscovery,
            None,
            store,
            |d| d.spec.account_ref.as_ref(),
            "default",
        );
        for e in [watcher::Event::Init, watcher::Event::InitDone] {
            writer.apply_watcher_event(&e);
            feed.after_reflect(&e);
        }
    }

    #[test]
    fn users_are_counted_by_account_and_selected_namespace_once_every_cache_is_listed() {
        let users = Arc::new(Users::default());
        let heard = Arc::new(Mutex::new(Vec::new()));
        {
            let heard = heard.clone();
            users.subscribe(move |c| heard.lock().unwrap().push(c.clone()));
        }
        let mut jobs = fed(&users, None);
        let all = |_: &str| true;
        assert_eq!(
            users.usage("team-a", "default", all),
            Usage::Unknown,
            "no MacieDiscovery cache"
        );
        no_discoveries(&users);
        assert_eq!(
            users.usage("team-a", "default", all),
            Usage::Unknown,
            "MacieJobs not listed"
        );

        jobs.event(watcher::Event::Init);
        jobs.event(watcher::Event::InitApply(job("a", "j1", Some("team-a"))));
        jobs.event(watcher::Event::InitApply(job("b", "j2", Some("team-a"))));
        jobs.event(watcher::Event::InitApply(job("a", "j3", None)));
        jobs.event(watcher::Event::InitDone);
        assert_eq!(users.usage("team-a", "default", all), counted(2, 0));
        assert_eq!(users.usage("default", "default", all), counted(1, 0));
        assert_eq!(users.usage("team-b", "default", all), counted(0, 0));
        // Only namespaces the account selects count.
        assert_eq!(users.usage("team-a", "default", |ns| ns == "a"), counted(1, 0));

        heard.lock().unwrap().clear();
        // A new resource, then a change to it (not new: no notice), then its deletion.
        jobs.event(watcher::Event::Apply(job("a", "j4", Some("team-a"))));
        assert_eq!(users.usage("team-a", "default", all), counted(3, 0));
        jobs.event(watcher::Event::Apply(job("a", "j4", Some("team-a"))));
        jobs.event(watcher::Event::Delete(job("b", "j2", Some("team-a"))));
        assert_eq!(users.usage("team-a", "default", all), counted(2, 0));
        jobs.event(watcher::Event::Apply(job("a", "j5", None)));
        assert_eq!(
            *heard.lock().unwrap(),
            vec![
                UsersChanged::Account("team-a".into()),
                UsersChanged::Account("team-a".into()),
                UsersChanged::Account("default".into()),
            ]
        );
        // A relist: every account is told once it is complete.
        jobs.event(watcher::Event::Init);
        jobs.event(watcher::Event::InitApply(job("a", "j1", Some("team-a"))));
        assert_eq!(heard.lock().unwrap().len(), 3);
        jobs.event(watcher::Event::InitDone);
        assert_eq!(heard.lock().unwrap().last(), Some(&UsersChanged::All));
        assert_eq!(users.usage("team-a", "default", all), counted(1, 0));
    }

    #[test]
    fn a_controller_watching_one_namespace_leaves_usage_untracked_and_tells_nobody() {
        let users = Arc::new(Users::default());
        let heard = Arc::new(Mutex::new(0));
        {
            let heard = heard.clone();
            users.subscribe(move |_| *heard.lock().unwrap() += 1);
        }
        no_discoveries(&users);
        let heard_before = *heard.lock().unwrap();
        let mut jobs = fed(&users, Some("a"));
        jobs.event(watcher::Event::Init);
        jobs.event(watcher::Event::InitDone);
        jobs.event(watcher::Event::Apply(job("a", "j1", Some("team-a"))));
        jobs.event(watcher::Event::Delete(job("a", "j1", Some("team-a"))));
        assert_eq!(users.usage("team-a", "default", |_| true), Usage::Untracked);
        assert_eq!(*heard.lock().unwrap(), heard_before);
    }
}
