//! What a controller remembers about each resource, as one value with one lifetime: made on
//! first use, dropped in one place (`forget`, or `retain` with the live resources after a
//! sweep). Each controller adds its own part (`V`); the parts every controller needs live here:
//! the consecutive failures (the backoff) and the resourceVersion of the controller's own last
//! write, which tells a reconcile whether the copy it was handed is older than that write.
//!
//! The API server backed by etcd gives increasing integer resourceVersions (its watch cache
//! relies on it); a version that is not an integer disables the stale-copy check for that
//! object rather than guessing.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use super::{Flow, Next, backoff, go, stop};

/// How long a reconcile handed a copy older than its own last write waits for the newer copy.
pub const OWN_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One resource's entry.
#[derive(Debug, Default, Clone)]
pub struct Entry<V> {
    /// Consecutive reconcile failures (the backoff).
    pub failures: u32,
    /// The resourceVersion of the newest copy this process knows the API server held: its own
    /// last write (status, finalizers), or a read.
    pub written: Option<u64>,
    /// The controller's own part.
    pub own: V,
}

/// Every resource's entry, by object reference.
pub struct Memory<K: Resource<DynamicType = ()>, V> {
    entries: Mutex<HashMap<ObjectRef<K>, Entry<V>>>,
}

impl<K: Resource<DynamicType = ()>, V> Default for Memory<K, V> {
    fn default() -> Self {
        Memory {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// An object's resourceVersion as a number (None when absent or not an integer).
pub fn version_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

impl<K: Resource<DynamicType = ()>, V: Default> Memory<K, V> {
    fn entries(&self) -> MutexGuard<'_, HashMap<ObjectRef<K>, Entry<V>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the resource's entry (made empty on first use).
    pub fn with<R>(&self, oref: &ObjectRef<K>, f: impl FnOnce(&mut Entry<V>) -> R) -> R {
        f(self.entries().entry(oref.clone()).or_default())
    }

    /// Reads the resource's entry, if there is one (nothing is made).
    pub fn read<R>(&self, oref: &ObjectRef<K>, f: impl FnOnce(&Entry<V>) -> R) -> Option<R> {
        self.entries().get(oref).map(f)
    }

    /// Reads every entry (under one lock).
    pub fn scan<R>(&self, f: impl FnOnce(&HashMap<ObjectRef<K>, Entry<V>>) -> R) -> R {
        f(&self.entries())
    }

    /// Removes and returns the references whose entry `take` selects (the entry itself stays).
    pub fn take_where(&self, mut take: impl FnMut(&mut V) -> bool) -> Vec<ObjectRef<K>> {
        self.entries()
            .iter_mut()
            .filter_map(|(k, e)| take(&mut e.own).then(|| k.clone()))
            .collect()
    }

    /// Drops everything kept for the resource: the one place an entry ends (but `retain`).
    pub fn forget(&self, oref: &ObjectRef<K>) {
        self.entries().remove(oref);
    }

    /// Keeps only the entries of live resources.
    pub fn retain(&self, live: impl Fn(&ObjectRef<K>) -> bool) {
        self.entries().retain(|k, _| live(k));
    }

    /// Resources with an entry.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The error policy: one more failure, logged, and a retry after the backoff.
    pub fn retry(&self, obj: &K, err: &dyn std::fmt::Display) -> Next {
        use kube::ResourceExt as _;
        let n = self.with(&ObjectRef::from_obj(obj), |e| {
            e.failures += 1;
            e.failures
        });
        let delay = backoff(n);
        tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), error = %err, retry_in = ?delay, "reconcile failed");
        Next::After(delay)
    }

    /// A reconcile succeeded: the next failure starts from the shortest wait.
    pub fn succeeded(&self, obj: &K) {
        if let Some(e) = self.entries().get_mut(&ObjectRef::from_obj(obj)) {
            e.failures = 0;
        }
    }

    /// Consecutive failures of the resource.
    pub fn failures(&self, obj: &K) -> u32 {
        self.read(&ObjectRef::from_obj(obj), |e| e.failures).unwrap_or(0)
    }

    /// This process wrote `written` (the object the API server answered with), or read it.
    pub fn wrote(&self, written: &K) {
        let Some(v) = version_of(written) else { return };
        self.with(&ObjectRef::from_obj(written), |e| {
            e.written = Some(e.written.map_or(v, |w| w.max(v)));
        });
    }

    /// The step both reconciles start with: a copy older than this process's own last write
    /// to the resource is not written from (its status would take back what that write said:
    /// a step's record, a transition time); the watch event of that write brings the newer
    /// copy, and a second later the resource is looked at again anyway.
    pub fn wait_for_own_write(&self, obj: &K) -> Flow<()> {
        if self.is_behind(obj) {
            use kube::ResourceExt as _;
            tracing::debug!(name = %obj.name_any(), "the cache has not seen our own last write yet");
            return stop(Next::After(OWN_WRITE_WAIT));
        }
        go(())
    }

    /// The resourceVersion a status write built from `obj` must be made against: `obj`'s own,
    /// for this process's first write to the resource (after a start the cache may come from a
    /// list served by a lagging API server, and nothing this process wrote tells it so; the
    /// API server refuses the write if the copy is older, and it is made again once the cache
    /// has caught up), None once this process has written (then [`Self::wait_for_own_write`]
    /// keeps older copies from being written from).
    pub fn precondition(&self, obj: &K) -> Option<String> {
        let known = self
            .read(&ObjectRef::from_obj(obj), |e| e.written.is_some())
            .unwrap_or(false);
        if known {
            None
        } else {
            obj.meta().resource_version.clone()
        }
    }

    /// Whether `obj` is older than this process's own last write to it: the cache has not yet
    /// seen that write, and a status built from this copy would undo it.
    pub fn is_behind(&self, obj: &K) -> bool {
        let Some(seen) = version_of(obj) else { return false };
        self.read(&ObjectRef::from_obj(obj), |e| e.written.is_some_and(|w| seen < w))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some("a".into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.resource_version = Some(rv.into());
        c
    }

    #[test]
    fn a_copy_older_than_the_own_last_write_is_behind() {
        let m: Memory<ConfigMap, ()> = Memory::default();
        assert!(!m.is_behind(&cm("5")), "nothing written: no copy is behind");
        m.wrote(&cm("10"));
        assert!(m.is_behind(&cm("9")));
        assert!(!m.is_behind(&cm("10")));
        assert!(!m.is_behind(&cm("11")), "someone else wrote later");
        m.wrote(&cm("8"));
        assert!(m.is_behind(&cm("9")), "the newest own write counts");
        assert!(!m.is_behind(&cm("not-a-number")), "no guess on opaque versions");
        assert_eq!(m.precondition(&cm("9")), None, "written: the own write tells");
        m.forget(&ObjectRef::from_obj(&cm("1")));
        assert_eq!(
            m.precondition(&cm("9")).as_deref(),
            Some("9"),
            "a first write is made against its copy"
        );
        assert!(!m.is_behind(&cm("9")) && m.is_empty());
    }

    #[test]
    fn failures_back_off_and_reset() {
        let m: Memory<ConfigMap, ()> = Memory::default();
        let obj = cm("1");
        m.retry(&obj, &"boom");
        m.retry(&obj, &"boom");
        assert_eq!(m.failures(&obj), 2);
        m.succeeded(&obj);
        assert_eq!(m.failures(&obj), 0);
        m.retain(|_| false);
        assert!(m.is_empty());
    }
}
