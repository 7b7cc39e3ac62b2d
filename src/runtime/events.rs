//! Kubernetes Events (events.k8s.io/v1) about the operator's resources, what `kubectl describe`
//! shows under Events.
//!
//! The same Event published again within `SERIES_TTL` (same object, type, reason, action and
//! note) grows a series on the first one (one PATCH of its `series`) rather than adding an Event,
//! as the Events API intends. To do that the recorder keeps, per Event, only its name and count,
//! at most `MAX_SERIES` of them; kube-runtime's `Recorder` keeps a whole copy of every Event it
//! published for six minutes, tens of MiB after a flip of 10,000 resources, and scans them all
//! at every publish. When the table is full, an Event that would have grown a series is created
//! anew: nothing is lost, it just takes a line of its own in `kubectl describe`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;

/// How long a published Event can still grow a series (as kube-runtime's recorder).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// The most Events remembered for their series, per recorder.
pub const MAX_SERIES: usize = 4096;

/// What identifies an Event for its series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// The Event's name (in the object's namespace).
    event: String,
    count: i32,
    last: Instant,
}

/// The write that publishes an Event.
#[derive(Clone, Debug, PartialEq)]
enum Write {
    Create,
    /// Patch the series of Event `event` to `count`.
    Grow {
        event: String,
        count: i32,
    },
}

/// The remembered Events: pure bookkeeping, `now` given by the caller.
#[derive(Debug, Default)]
struct Series {
    entries: HashMap<Key, Entry>,
}

impl Series {
    /// How to publish `key` at `now`.
    fn write(&self, key: &Key, now: Instant) -> Write {
        match self.entries.get(key) {
            Some(e) if now.saturating_duration_since(e.last) < SERIES_TTL => Write::Grow {
                event: e.event.clone(),
                count: e.count + 1,
            },
            _ => Write::Create,
        }
    }

    /// Records that `key` was published as `event` (with `count` occurrences) at `now`; when
    /// the table is full, expired entries go first, and a new Event is not remembered if none
    /// expired.
    fn published(&mut self, key: Key, event: String, count: i32, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_SERIES {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last) < SERIES_TTL);
            if self.entries.len() >= MAX_SERIES {
                return;
            }
        }
        self.entries.insert(
            key,
            Entry {
                event,
                count,
                last: now,
            },
        );
    }

    /// Forgets `key` (its Event could not be patched: it expired or was deleted).
    fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }
}

/// Publishes Events as one controller (`reportingController`) of one replica
/// (`reportingInstance`).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Arc<Mutex<Series>>,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Recorder {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Arc::default(),
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an Event about `obj` (cluster-scoped objects: in `default`); the error of
    /// the API call, if any.
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let regarding = obj.object_ref(&());
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let key = Key {
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: matches!(type_, EventType::Warning),
            reason: reason.to_string(),
            action: action.to_string(),
            note: note.clone(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        let write = self.series().write(&key, Instant::now());
        if let Write::Grow { event, count } = write {
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api.patch(&event, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.series().published(key, event, count, Instant::now());
                    return Ok(());
                }
                // The first Event is gone (expired in etcd, or deleted): a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => self.series().forget(&key),
                Err(e) => return Err(e),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", key.name, now.as_nanosecond())),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.to_string()),
            reason: Some(key.reason.clone()),
            action: Some(key.action.clone()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        if let Some(name) = created.metadata.name {
            self.series().published(key, name, 1, Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str, note: &str) -> Key {
        Key {
            namespace: "team-a".into(),
            name: "nightly".into(),
            uid: "u1".into(),
            warning: false,
            reason: reason.into(),
            action: "Reconcile".into(),
            note: note.into(),
        }
    }

    #[test]
    fn a_repeat_within_the_ttl_grows_the_series_anything_else_is_a_new_event() {
        let t0 = Instant::now();
        let mut s = Series::default();
        let k = key("Throttled", "Macie answered ThrottlingException");
        assert_eq!(s.write(&k, t0), Write::Create, "never published");
        s.published(k.clone(), "nightly.1".into(), 1, t0);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            s.write(&k, t1),
            Write::Grow {
                event: "nightly.1".into(),
                count: 2
            }
        );
        s.published(k.clone(), "nightly.1".into(), 2, t1);
        // The TTL runs from the last occurrence.
        let t2 = t1 + SERIES_TTL - Duration::from_secs(1);
        assert!(matches!(s.write(&k, t2), Write::Grow { count: 3, .. }));
        assert_eq!(s.write(&k, t1 + SERIES_TTL), Write::Create, "expired");
        // Another note, reason, type or object: another Event (a transition is never folded
        // into an earlier one that said something else).
        assert_eq!(s.write(&key("Throttled", "other"), t1), Write::Create);
        assert_eq!(
            s.write(&key("Converged", "Macie answered ThrottlingException"), t1),
            Write::Create
        );
        let warning = Key {
            warning: true,
            ..k.clone()
        };
        assert_eq!(s.write(&warning, t1), Write::Create);
        let other = Key {
            uid: "u2".into(),
            ..k.clone()
        };
        assert_eq!(s.write(&other, t1), Write::Create, "a new object of the same name");
        s.forget(&k);
        assert_eq!(s.write(&k, t1), Write::Create, "forgotten after a failed patch");
    }

    #[test]
    fn the_table_is_bounded_expired_entries_go_first() {
        let t0 = Instant::now();
        let mut s = Series::default();
        for i in 0..MAX_SERIES {
            s.published(key("R", &i.to_string()), format!("e{i}"), 1, t0);
        }
        // Full, nothing expired: a new Event is not remembered, the others stay.
        let late = key("R", "late");
        s.published(late.clone(), "late".into(), 1, t0 + Duration::from_secs(1));
        assert_eq!(s.entries.len(), MAX_SERIES);
        assert_eq!(s.write(&late, t0 + Duration::from_secs(2)), Write::Create);
        // A repeat of a remembered Event still grows its series when full.
        s.published(key("R", "0"), "e0".into(), 2, t0 + Duration::from_secs(3));
        assert!(matches!(
            s.write(&key("R", "0"), t0 + Duration::from_secs(4)),
            Write::Grow { count: 3, .. }
        ));
        // Once the others expired, room is made.
        let later = t0 + SERIES_TTL + Duration::from_secs(1);
        s.published(late.clone(), "late".into(), 1, later);
        assert!(s.entries.len() <= 2, "{} entries", s.entries.len());
        assert!(matches!(s.write(&late, later), Write::Grow { count: 2, .. }));
    }
}
