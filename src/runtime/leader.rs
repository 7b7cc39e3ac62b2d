//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
//!
//! - Every write carries the resourceVersion it read (optimistic concurrency), so two replicas
//!   never both win one round.
//! - A holder's lease is judged expired from the LOCAL monotonic time at which this process last
//!   saw the Lease record change, never by comparing the holder's `renewTime` with the local
//!   clock: node clocks differ, and a leader whose clock is behind must not lose its lease to a
//!   follower whose clock is ahead (see [`decide`]).
//! - Every get and write has a deadline; a leader that has not renewed for its renew deadline
//!   (shorter than the lease duration) gives up, and its [`WriteGate`] closes at that deadline
//!   whether or not its controllers have stopped yet, so it makes no Macie write once a follower
//!   may have taken over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use super::gate::WriteGate;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name, or [`default_identity`]).
    pub identity: String,
    /// How long a lease is valid without renewal; a follower takes over once it has seen no
    /// change to the Lease for this long.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up (and stops writing).
    pub renew_deadline: Duration,
    /// Renew (or try to acquire) this often.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The renew deadline when none is given: two thirds of the lease duration (client-go's
    /// 10 s for 15 s).
    pub fn default_renew_deadline(lease_duration: Duration) -> Duration {
        lease_duration * 2 / 3
    }

    /// The retry period: 2/15 of the lease duration (client-go's 2 s for 15 s), at least 100 ms.
    pub fn default_retry_period(lease_duration: Duration) -> Duration {
        (lease_duration * 2 / 15).max(Duration::from_millis(100))
    }

    /// client-go's rules: lease duration > renew deadline > retry period > 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--lease-renew-deadline ({}) must be shorter than --lease-duration ({}): a leader must stop writing before a follower may take over",
                humantime::format_duration(self.renew_deadline),
                humantime::format_duration(self.lease_duration)
            ));
        }
        if self.retry_period.is_zero() || self.renew_deadline <= self.retry_period {
            return Err(format!(
                "--lease-renew-deadline ({}) must be longer than the retry period ({}, 2/15 of --lease-duration)",
                humantime::format_duration(self.renew_deadline),
                humantime::format_duration(self.retry_period)
            ));
        }
        if self.identity.is_empty() {
            return Err("--identity must not be empty".into());
        }
        Ok(())
    }
}

/// A unique identity for this process: the host name (in a pod, the pod name) and a random
/// suffix, so that two replicas never share one even when POD_NAME is not set.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "macie-operator".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The parts of a Lease that leader election reads. Two reads that differ in any of them are a
/// change: the holder is alive (or someone else wrote).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// Empty: nobody holds the lease.
    pub holder: String,
    /// The holder's lease duration (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    pub acquire_time: Option<Timestamp>,
    /// The holder's clock: only compared for equality, never with the local clock.
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// Reads a Lease; `fallback` stands in for a missing or non-positive `leaseDurationSeconds`.
    pub fn from_lease(lease: &Lease, fallback: Duration) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration: spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(fallback, |s| Duration::from_secs(s.unsigned_abs().into())),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// A Lease record and the local monotonic time at which this process first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub since: Instant,
}

impl Observed {
    /// What this process knows after reading `record` at `now`: an unchanged record keeps the
    /// time it was first seen; any change restarts the clock.
    pub fn next(prev: Option<&Observed>, record: LeaseRecord, now: Instant) -> Observed {
        match prev {
            Some(p) if p.record == record => p.clone(),
            _ => Observed { record, since: now },
        }
    }

    /// Whether the holder's claim has run out at `now`: no change to the record was seen for a
    /// whole lease duration (the holder's, as written in the record).
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.record.lease_duration
    }
}

/// What to do about a Lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This replica holds it: renew.
    Renew,
    /// Nobody holds it, or the holder's claim ran out: take it.
    Acquire,
    /// Another replica holds a live lease.
    Follow(String),
}

/// Decides from what this process has observed (not from the holder's clock).
pub fn decide(observed: &Observed, identity: &str, now: Instant) -> Decision {
    let holder = &observed.record.holder;
    if holder == identity {
        Decision::Renew
    } else if holder.is_empty() || observed.expired(now) {
        Decision::Acquire
    } else {
        Decision::Follow(holder.clone())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now.
    Leading,
    /// Another replica holds a live lease.
    Following(String),
}

/// Why an attempt neither won nor lost.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Lease {0} did not answer in time")]
    TimedOut(&'static str),
    #[error("another replica wrote the Lease at the same time")]
    Conflict,
}

/// Holds or waits for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    gate: WriteGate,
    observed: Mutex<Option<Observed>>,
    /// When the last successful acquire or renew attempt started.
    last_ok: Mutex<Option<Instant>>,
}

async fn bounded<T>(
    deadline: Instant,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, AttemptError> {
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call).await {
        Ok(r) => r.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => AttemptError::Conflict,
            e => AttemptError::Kube(e),
        }),
        Err(_) => Err(AttemptError::TimedOut(what)),
    }
}

impl LeaderElector {
    /// `gate` opens after each successful acquire or renew until that attempt's start plus
    /// the renew deadline, and closes when the lease is lost or released.
    pub fn new(client: kube::Client, cfg: LeaseConfig, gate: WriteGate) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            gate,
            observed: Mutex::new(None),
            last_ok: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn remember(&self, record: LeaseRecord, now: Instant) -> Observed {
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let next = Observed::next(o.as_ref(), record, now);
        *o = Some(next.clone());
        next
    }

    fn won(&self, written: &Lease, started: Instant) -> Attempt {
        let now = Instant::now();
        self.remember(LeaseRecord::from_lease(written, self.cfg.lease_duration), now);
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        self.gate.extend(started, self.cfg.renew_deadline);
        Attempt::Leading
    }

    /// One try to acquire or renew the lease; every call to the API server ends by `deadline`.
    pub async fn try_acquire_or_renew(&self, deadline: Instant) -> Result<Attempt, AttemptError> {
        let started = Instant::now();
        let now_wall = Timestamp::now();
        let secs = i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = bounded(deadline, "read", self.api.get_opt(&self.cfg.name)).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now_wall)),
                    renew_time: Some(MicroTime(now_wall)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            let created = bounded(deadline, "create", self.api.create(&PostParams::default(), &lease)).await?;
            return Ok(self.won(&created, started));
        };
        let observed = self.remember(LeaseRecord::from_lease(&lease, self.cfg.lease_duration), Instant::now());
        let decision = decide(&observed, &self.cfg.identity, Instant::now());
        if let Decision::Follow(holder) = decision {
            return Ok(Attempt::Following(holder));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let mut new_spec = spec.clone();
        if decision == Decision::Acquire {
            new_spec.acquire_time = Some(MicroTime(now_wall));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new_spec.holder_identity = Some(self.cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(secs);
        new_spec.renew_time = Some(MicroTime(now_wall));
        lease.spec = Some(new_spec);
        // replace() sends the resourceVersion we read: a concurrent writer makes it fail (409).
        let written = bounded(
            deadline,
            "update",
            self.api.replace(&self.cfg.name, &PostParams::default(), &lease),
        )
        .await?;
        Ok(self.won(&written, started))
    }

    /// Waits until this replica holds the lease (trying every retry period, with jitter).
    pub async fn acquire(&self) {
        let mut last = None;
        loop {
            let deadline = Instant::now() + self.cfg.renew_deadline;
            match self.try_acquire_or_renew(deadline).await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    if last.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.cfg.name, %holder, "following the leader");
                        last = Some(holder);
                    }
                }
                Err(AttemptError::Conflict) => {
                    tracing::debug!(lease = %self.cfg.name, "another replica wrote the Lease first")
                }
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the Lease"),
            }
            // client-go's jitter factor 1.2: retry period times 1.0..2.2.
            let jitter = 1.0 + rand::random::<f64>() * 1.2;
            tokio::time::sleep(self.cfg.retry_period.mul_f64(jitter)).await;
        }
    }

    /// Renews the lease every retry period until a renewal has not succeeded for the renew
    /// deadline (or another replica took the lease); then closes the write gate and returns.
    /// The caller must stop acting as leader.
    pub async fn hold(&self) {
        loop {
            let last_ok = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
            let Some(last_ok) = last_ok else {
                tracing::error!("lost the leader lease: it was never acquired");
                break;
            };
            let give_up_at = last_ok + self.cfg.renew_deadline;
            // The next try, or the renew deadline if it comes first: leadership ends on time.
            let next = (Instant::now() + self.cfg.retry_period).min(give_up_at);
            tokio::time::sleep_until(next.into()).await;
            if Instant::now() >= give_up_at {
                tracing::error!(renew_deadline = ?self.cfg.renew_deadline, "lost the leader lease: no renewal succeeded within the renew deadline");
                break;
            }
            match self.try_acquire_or_renew(give_up_at).await {
                Ok(Attempt::Leading) => {}
                Ok(Attempt::Following(holder)) => {
                    tracing::error!(%holder, "lost the leader lease to another replica");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the leader lease"),
            }
        }
        self.gate.close();
    }

    /// Gives the lease up (on shutdown) so a follower takes over at once. The write gate closes
    /// first.
    pub async fn release(&self) {
        self.gate.close();
        let deadline = Instant::now() + self.cfg.renew_deadline;
        let mut lease = match bounded(deadline, "read", self.api.get_opt(&self.cfg.name)).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader lease");
                return;
            }
        };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.cfg.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match bounded(
            deadline,
            "update",
            self.api.replace(&self.cfg.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn record(holder: &str, renew_time: &str, rv: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            lease_duration: secs(15),
            acquire_time: None,
            renew_time: Some(renew_time.parse().unwrap()),
            transitions: 1,
            resource_version: Some(rv.into()),
        }
    }

    /// (case, previously observed record and when it was first seen (seconds after t0), record
    /// read now, now (seconds after t0), expected decision for identity "me").
    #[test]
    fn expiry_is_judged_from_when_this_process_saw_the_record_change() {
        // The local wall clock plays no part: renew times are in the holder's clock, here far
        // in the past or in the future.
        let past = "2020-01-01T00:00:00Z";
        let past2 = "2020-01-01T00:00:02Z";
        let future = "2099-01-01T00:00:00Z";
        let follow = || Decision::Follow("other".into());
        /// Case, what was observed before (record, first seen at t0 + n s), record read now,
        /// now (t0 + n s), expected decision.
        type Row = (&'static str, Option<(LeaseRecord, u64)>, LeaseRecord, u64, Decision);
        let table: Vec<Row> = vec![
            (
                "first sight of a record 20 s old by its holder's clock: live for a lease duration",
                None,
                record("other", past, "1"),
                0,
                follow(),
            ),
            (
                "unchanged for less than the lease duration",
                Some((record("other", past, "1"), 0)),
                record("other", past, "1"),
                14,
                follow(),
            ),
            (
                "unchanged for exactly the lease duration: expired",
                Some((record("other", past, "1"), 0)),
                record("other", past, "1"),
                15,
                Decision::Acquire,
            ),
            (
                "a renew time in the future does not keep an unchanged record alive",
                Some((record("other", future, "1"), 0)),
                record("other", future, "1"),
                16,
                Decision::Acquire,
            ),
            (
                "renewed (new renew time and resourceVersion) just before expiry: live again",
                Some((record("other", past, "1"), 0)),
                record("other", past2, "2"),
                15,
                follow(),
            ),
            (
                "only the resourceVersion changed: still a change",
                Some((record("other", past, "1"), 0)),
                record("other", past, "2"),
                20,
                follow(),
            ),
            (
                "a new holder restarts the clock",
                Some((record("old", past, "1"), 0)),
                record("other", past, "2"),
                30,
                follow(),
            ),
            (
                "nobody holds it",
                Some((record("other", past, "1"), 0)),
                record("", past, "2"),
                1,
                Decision::Acquire,
            ),
            (
                "this replica holds it, however old",
                Some((record("me", past, "1"), 0)),
                record("me", past, "1"),
                100,
                Decision::Renew,
            ),
        ];
        let t0 = Instant::now();
        for (case, prev, current, now, want) in table {
            let prev = prev.map(|(record, seen)| Observed {
                record,
                since: t0 + secs(seen),
            });
            let now = t0 + secs(now);
            let observed = Observed::next(prev.as_ref(), current, now);
            assert_eq!(decide(&observed, "me", now), want, "{case}");
        }
    }

    #[test]
    fn the_holders_lease_duration_counts_and_a_missing_one_falls_back() {
        let t0 = Instant::now();
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("other".into()),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = Observed::next(None, LeaseRecord::from_lease(&lease, secs(15)), t0);
        assert!(!o.expired(t0 + secs(39)));
        assert!(o.expired(t0 + secs(40)));
        lease.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        let o = Observed::next(None, LeaseRecord::from_lease(&lease, secs(15)), t0);
        assert_eq!(o.record.lease_duration, secs(15));
    }

    #[test]
    fn config_rules_and_defaults() {
        let cfg = |lease: u64, renew: u64| LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: secs(lease),
            renew_deadline: secs(renew),
            retry_period: LeaseConfig::default_retry_period(secs(lease)),
        };
        assert_eq!(LeaseConfig::default_renew_deadline(secs(15)), secs(10));
        assert_eq!(LeaseConfig::default_retry_period(secs(15)), secs(2));
        assert!(cfg(15, 10).validate().is_ok());
        let err = cfg(15, 15).validate().unwrap_err();
        assert!(
            err.contains("--lease-renew-deadline (15s) must be shorter than --lease-duration (15s)"),
            "{err}"
        );
        let err = cfg(15, 1).validate().unwrap_err();
        assert!(err.contains("longer than the retry period (2s"), "{err}");
    }

    #[test]
    fn default_identities_are_unique_and_name_the_host() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        let host = a.rsplit_once('-').unwrap().0;
        assert!(!host.is_empty());
        assert!(b.starts_with(host), "{a} {b}");
    }
}
