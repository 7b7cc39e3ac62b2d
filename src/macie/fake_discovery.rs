//! An in-process fake of the automated-discovery calls, for tests that drive the MacieDiscovery
//! engines without HTTP: member accounts per place, paused ones, faults on demand (answered in
//! order, one per call), a visibility delay, and a log of every batch it was sent. Time is
//! `clock::now()`: virtual on a thread in virtual time, so a run replays exactly. (End-to-end
//! tests use `macie-emulator` over HTTP.)
//!
//! As Macie does, BatchUpdateAutomatedDiscoveryAccounts answers `ACCOUNT_NOT_FOUND` for an
//! account that is not a member and `ACCOUNT_PAUSED` for a paused member (and changes neither),
//! and ListAutomatedDiscoveryAccounts lists members only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;

use super::discovery::DiscoveryApi;
use super::{MacieError, Place};
use crate::api::DiscoveryStatus;
use crate::runtime::clock;

/// A fault the next call of a kind is answered with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call fails with this error; nothing is processed.
    Fail(MacieError),
    /// The call is processed, then its answer is lost: the caller gets an `Uncertain` error.
    Lost,
}

/// One row of a batch the fake was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRow {
    pub account_id: String,
    /// The status asked for.
    pub status: DiscoveryStatus,
    /// The member's status when the call arrived (None: not a member).
    pub previous: Option<DiscoveryStatus>,
    /// `OK`, `ACCOUNT_NOT_FOUND`, `ACCOUNT_PAUSED`, or the error code of the whole call when
    /// it failed without being processed.
    pub outcome: String,
}

/// One BatchUpdateAutomatedDiscoveryAccounts the fake was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeBatch {
    pub place: Place,
    pub rows: Vec<FakeRow>,
    /// When it arrived (`clock::now()`).
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
struct Member {
    status: DiscoveryStatus,
    paused: bool,
    /// The status lists still show, until when (a visibility delay).
    shown: Option<(DiscoveryStatus, Timestamp)>,
}

impl Member {
    fn visible(&self, now: Timestamp) -> DiscoveryStatus {
        match self.shown {
            Some((status, until)) if now < until => status,
            _ => self.status,
        }
    }
}

#[derive(Default)]
struct State {
    members: HashMap<Place, BTreeMap<String, Member>>,
    list_faults: VecDeque<MacieError>,
    batch_faults: VecDeque<Fault>,
    visibility_delay: Duration,
    batches: Vec<FakeBatch>,
    lists: u64,
}

/// The fake. Shared as `Arc<FakeDiscovery>`; `MacieClients::with_discovery_api` puts it
/// behind the clients.
#[derive(Default)]
pub struct FakeDiscovery {
    state: Mutex<State>,
}

impl FakeDiscovery {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a member account, or sets its status out of band (visible at once).
    pub fn put(&self, place: &Place, account_id: &str, status: DiscoveryStatus) {
        let mut s = self.state();
        let members = s.members.entry(place.clone()).or_default();
        let paused = members.get(account_id).is_some_and(|m| m.paused);
        members.insert(
            account_id.to_string(),
            Member {
                status,
                paused,
                shown: None,
            },
        );
    }

    /// Pauses a member (its updates are answered ACCOUNT_PAUSED) or resumes it.
    pub fn pause(&self, place: &Place, account_id: &str, paused: bool) {
        if let Some(m) = self.state().members.get_mut(place).and_then(|m| m.get_mut(account_id)) {
            m.paused = paused;
        }
    }

    /// A member's status as Macie holds it (what lists show once a visibility delay ran out).
    pub fn status(&self, place: &Place, account_id: &str) -> Option<DiscoveryStatus> {
        self.state().members.get(place)?.get(account_id).map(|m| m.status)
    }

    /// The next `n` list calls fail with `err`.
    pub fn fail_lists(&self, n: usize, err: MacieError) {
        self.state().list_faults.extend(std::iter::repeat_n(err, n));
    }

    /// The next batch call (after those already told) is answered with `fault`.
    pub fn fail_next_batch(&self, fault: Fault) {
        self.state().batch_faults.push_back(fault);
    }

    /// A processed change shows in lists only `delay` later (the old status until then); a
    /// change made while an older one is still hidden stays hidden as long.
    pub fn delay_visibility(&self, delay: Duration) {
        self.state().visibility_delay = delay;
    }

    /// Every batch call so far.
    pub fn batches(&self) -> Vec<FakeBatch> {
        self.state().batches.clone()
    }

    /// List calls so far (each call of `list_accounts`, whatever its number of ids).
    pub fn lists(&self) -> u64 {
        self.state().lists
    }

    fn list(&self, place: &Place, ids: &[String]) -> Result<HashMap<String, DiscoveryStatus>, MacieError> {
        let mut s = self.state();
        s.lists += 1;
        if let Some(e) = s.list_faults.pop_front() {
            return Err(e);
        }
        let now = clock::now();
        let Some(members) = s.members.get(place) else {
            return Ok(HashMap::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| Some((id.clone(), members.get(id)?.visible(now))))
            .collect())
    }

    fn batch(&self, place: &Place, updates: &[(String, DiscoveryStatus)]) -> Result<Vec<(String, String)>, MacieError> {
        let mut s = self.state();
        let now = clock::now();
        let fault = s.batch_faults.pop_front();
        if let Some(Fault::Fail(e)) = fault {
            let rows = updates
                .iter()
                .map(|(id, status)| FakeRow {
                    account_id: id.clone(),
                    status: *status,
                    previous: s.members.get(place).and_then(|m| m.get(id)).map(|m| m.status),
                    outcome: e.code().to_string(),
                })
                .collect();
            s.batches.push(FakeBatch {
                place: place.clone(),
                rows,
                at: now,
            });
            return Err(e);
        }
        let delay = s.visibility_delay;
        let members = s.members.entry(place.clone()).or_default();
        let rows: Vec<FakeRow> = updates
            .iter()
            .map(|(id, status)| apply(members.get_mut(id), id, *status, now, delay))
            .collect();
        let errors = rows
            .iter()
            .filter(|r| r.outcome != "OK")
            .map(|r| (r.account_id.clone(), r.outcome.clone()))
            .collect();
        s.batches.push(FakeBatch {
            place: place.clone(),
            rows,
            at: now,
        });
        match fault {
            Some(Fault::Lost) => Err(MacieError::Uncertain {
                code: "ResponseLost".into(),
                message: "the call was processed and its answer lost (fake)".into(),
            }),
            _ => Ok(errors),
        }
    }
}

/// One row of a processed batch: the member changed (its old status shown for `delay`), or why
/// not.
fn apply(member: Option<&mut Member>, id: &str, status: DiscoveryStatus, now: Timestamp, delay: Duration) -> FakeRow {
    let row = |previous, outcome: &str| FakeRow {
        account_id: id.to_string(),
        status,
        previous,
        outcome: outcome.to_string(),
    };
    let Some(m) = member else {
        return row(None, "ACCOUNT_NOT_FOUND");
    };
    let previous = m.status;
    if m.paused {
        return row(Some(previous), "ACCOUNT_PAUSED");
    }
    let hiding = m.shown.is_some_and(|(_, until)| now < until);
    if !delay.is_zero() && previous != status && !hiding {
        m.shown = Some((previous, now.checked_add(delay).unwrap_or(Timestamp::MAX)));
    }
    m.status = status;
    row(Some(previous), "OK")
}

impl DiscoveryApi for FakeDiscovery {
    fn list_accounts<'a>(
        &'a self,
        place: &'a Place,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, DiscoveryStatus>, MacieError>> {
        let result = self.list(place, ids);
        Box::pin(async move { result })
    }

    fn batch_update<'a>(
        &'a self,
        place: &'a Place,
        updates: &'a [(String, DiscoveryStatus)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MacieError>> {
        let result = self.batch(place, updates);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DiscoveryStatus::{Disabled, Enabled};
    use crate::runtime::clock::VirtualClock;

    fn place() -> Place {
        Place::new("default", "us-east-1")
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rows(v: &[(&str, DiscoveryStatus)]) -> Vec<(String, DiscoveryStatus)> {
        v.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[tokio::test]
    async fn members_change_paused_and_unknown_ones_are_refused_per_account() {
        let f = FakeDiscovery::default();
        let p = place();
        f.put(&p, "111111111111", Disabled);
        f.put(&p, "222222222222", Disabled);
        f.pause(&p, "222222222222", true);
        let asked = rows(&[
            ("111111111111", Enabled),
            ("222222222222", Enabled),
            ("333333333333", Enabled),
        ]);
        let errors = f.batch_update(&p, &asked).await.expect("answered");
        assert_eq!(
            errors,
            vec![
                ("222222222222".to_string(), "ACCOUNT_PAUSED".to_string()),
                ("333333333333".to_string(), "ACCOUNT_NOT_FOUND".to_string()),
            ]
        );
        let listed = f
            .list_accounts(&p, &ids(&["111111111111", "222222222222", "333333333333"]))
            .await;
        let want: HashMap<String, DiscoveryStatus> =
            [("111111111111".into(), Enabled), ("222222222222".into(), Disabled)].into();
        assert_eq!(listed.expect("listed"), want, "members only, the paused one unchanged");
        let other = Place::new("other", "us-east-1");
        assert!(
            f.list_accounts(&other, &ids(&["111111111111"]))
                .await
                .unwrap()
                .is_empty(),
            "per place"
        );
        let log = f.batches();
        assert_eq!(log.len(), 1);
        let outcomes: Vec<(&str, Option<DiscoveryStatus>)> =
            log[0].rows.iter().map(|r| (r.outcome.as_str(), r.previous)).collect();
        assert_eq!(
            outcomes,
            [
                ("OK", Some(Disabled)),
                ("ACCOUNT_PAUSED", Some(Disabled)),
                ("ACCOUNT_NOT_FOUND", None)
            ]
        );
        assert_eq!(f.lists(), 2);
    }

    #[tokio::test]
    async fn faults_come_in_order_and_a_lost_answer_was_processed() {
        let f = FakeDiscovery::default();
        let p = place();
        f.put(&p, "111111111111", Disabled);
        let throttled = MacieError::Throttled {
            code: "ThrottlingException".into(),
            message: "slow down".into(),
        };
        f.fail_next_batch(Fault::Fail(throttled.clone()));
        f.fail_next_batch(Fault::Lost);
        let asked = rows(&[("111111111111", Enabled)]);
        let first = f.batch_update(&p, &asked).await;
        assert!(matches!(first, Err(MacieError::Throttled { .. })));
        assert_eq!(f.status(&p, "111111111111"), Some(Disabled), "not processed");
        let second = f.batch_update(&p, &asked).await;
        assert!(matches!(second, Err(MacieError::Uncertain { .. })));
        assert_eq!(f.status(&p, "111111111111"), Some(Enabled), "processed, answer lost");
        assert!(f.batch_update(&p, &asked).await.is_ok(), "faults used up");
        let outcomes: Vec<String> = f.batches().iter().map(|b| b.rows[0].outcome.clone()).collect();
        assert_eq!(outcomes, ["ThrottlingException", "OK", "OK"]);
        f.fail_lists(2, throttled);
        for _ in 0..2 {
            assert!(f.list_accounts(&p, &ids(&["111111111111"])).await.is_err());
        }
        assert!(f.list_accounts(&p, &ids(&["111111111111"])).await.is_ok());
    }

    #[tokio::test]
    async fn a_change_shows_in_lists_only_after_the_visibility_delay() {
        let clock = VirtualClock::install(Timestamp::from_second(1_800_000_000).unwrap(), 1);
        let f = FakeDiscovery::default();
        let p = place();
        let id = ids(&["111111111111"]);
        f.put(&p, &id[0], Disabled);
        f.delay_visibility(Duration::from_secs(10));
        f.batch_update(&p, &rows(&[("111111111111", Enabled)])).await.unwrap();
        let shown = |l: HashMap<String, DiscoveryStatus>| l.get(&id[0]).copied();
        assert_eq!(shown(f.list_accounts(&p, &id).await.unwrap()), Some(Disabled), "hidden");
        clock.advance(Duration::from_secs(9));
        // Changed back and forth while hidden: still the first status until the delay ends.
        f.batch_update(&p, &rows(&[("111111111111", Disabled)])).await.unwrap();
        f.batch_update(&p, &rows(&[("111111111111", Enabled)])).await.unwrap();
        assert_eq!(shown(f.list_accounts(&p, &id).await.unwrap()), Some(Disabled));
        clock.advance(Duration::from_secs(1));
        assert_eq!(shown(f.list_accounts(&p, &id).await.unwrap()), Some(Enabled), "visible");
        // An out-of-band change is visible at once.
        f.put(&p, &id[0], Disabled);
        assert_eq!(shown(f.list_accounts(&p, &id).await.unwrap()), Some(Disabled));
    }
}
