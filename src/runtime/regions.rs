//! The per-place task registry both controllers use: one task per (MacieAccount, region) (the
//! job sweeper, the discovery engine), started on first use and retired by itself once no
//! resource uses its place. Starting and retiring happen under one lock, so a reconcile either finds the task
//! still serving or starts a new one; a retired task's entry is never confused with its
//! successor's (each start gets an id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::JoinHandle;

use crate::macie::Place;

struct Entry<H> {
    id: u64,
    handle: H,
    task: JoinHandle<()>,
}

type Map<H> = Arc<Mutex<HashMap<Place, Entry<H>>>>;

/// Place -> the running task and the handle callers get (its channels).
pub struct RegionTasks<H: Clone> {
    map: Map<H>,
    next_id: AtomicU64,
}

impl<H: Clone> Default for RegionTasks<H> {
    fn default() -> Self {
        RegionTasks {
            map: Arc::default(),
            next_id: AtomicU64::new(0),
        }
    }
}

/// Given to a region's task: lets it remove itself from the registry.
pub struct Retire<H> {
    map: Map<H>,
    place: Place,
    id: u64,
}

fn lock<H>(map: &Map<H>) -> MutexGuard<'_, HashMap<Place, Entry<H>>> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

impl<H: Clone> RegionTasks<H> {
    /// The region's handle; `start` spawns its task when none runs (or the one there has
    /// ended, as `alive` tells).
    pub fn get_or_start(
        &self,
        place: &Place,
        alive: impl Fn(&H) -> bool,
        start: impl FnOnce(Retire<H>) -> (H, JoinHandle<()>),
    ) -> H {
        let mut map = lock(&self.map);
        if let Some(e) = map.get(place).filter(|e| alive(&e.handle) && !e.task.is_finished()) {
            return e.handle.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let retire = Retire {
            map: self.map.clone(),
            place: place.clone(),
            id,
        };
        let (handle, task) = start(retire);
        map.insert(
            place.clone(),
            Entry {
                id,
                handle: handle.clone(),
                task,
            },
        );
        handle
    }

    /// Places with a running task, sorted.
    pub fn places(&self) -> Vec<Place> {
        let mut out: Vec<Place> = lock(&self.map)
            .iter()
            .filter(|(_, e)| !e.task.is_finished())
            .map(|(r, _)| r.clone())
            .collect();
        out.sort();
        out
    }

    /// Every running task's place and handle.
    pub fn handles(&self) -> Vec<(Place, H)> {
        lock(&self.map)
            .iter()
            .map(|(r, e)| (r.clone(), e.handle.clone()))
            .collect()
    }
}

impl<H> Retire<H> {
    /// Under the registry's lock: when `unused()` holds, removes this task's entry (not a
    /// successor's) and returns true; the task should then end.
    pub fn retire_if(&self, unused: impl FnOnce() -> bool) -> bool {
        let mut map = lock(&self.map);
        if !unused() {
            return false;
        }
        if map.get(&self.place).is_some_and(|e| e.id == self.id) {
            map.remove(&self.place);
        }
        true
    }
}

impl<H: Clone> Drop for RegionTasks<H> {
    fn drop(&mut self) {
        for (_, e) in lock(&self.map).drain() {
            e.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_starts_once_retires_itself_and_restarts_on_demand() {
        let tasks: RegionTasks<u32> = RegionTasks::default();
        let r1 = Place::new("acct", "r1");
        let (tx, rx) = tokio::sync::oneshot::channel::<Retire<u32>>();
        let mut tx = Some(tx);
        let h = tasks.get_or_start(
            &r1,
            |_| true,
            |retire| {
                let _ = tx.take().unwrap().send(retire);
                (7, tokio::spawn(std::future::pending()))
            },
        );
        assert_eq!(h, 7);
        // Running: the same handle, no second start.
        let again = tasks.get_or_start(&r1, |_| true, |_| panic!("started twice"));
        assert_eq!(again, 7);
        assert_eq!(tasks.places(), vec![r1.clone()]);
        let retire = rx.await.unwrap();
        assert!(!retire.retire_if(|| false), "still in use");
        assert_eq!(tasks.places(), vec![r1.clone()]);
        assert!(retire.retire_if(|| true));
        assert!(tasks.places().is_empty());
        // On demand again, with a new task; the old Retire cannot remove the new entry.
        let h = tasks.get_or_start(&r1, |_| true, |_| (8, tokio::spawn(std::future::pending())));
        assert_eq!(h, 8);
        assert!(retire.retire_if(|| true));
        assert_eq!(tasks.places(), vec![r1.clone()]);
    }
}
