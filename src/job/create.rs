//! Creating a job from `spec.definition`, exactly once (pure, table-tested): whether to create,
//! follow, ask Macie whose a job is, or wait; and the per-place queue that spaces creates at the
//! published CreateClassificationJob quota.
//!
//! Exactly once: the intent is written to status before the call (write-ahead) with a client
//! token derived from the resource's UID, so that a call Macie processed but whose answer was
//! lost is found again (a job with the name whose token is ours) instead of being repeated; a
//! job of the name with another token is never adopted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use super::plan::Observation;
use crate::api::DesiredJobStatus;
use crate::api::job_definition::RESERVED_TAG_PREFIX;
use crate::api::macie_job::{CreationOutcome, CreationRecord};

/// The client token of the resource with `uid`: the same for every attempt, so that Macie
/// creates at most one job for the resource whatever happens to the calls.
pub fn client_token(uid: &str) -> String {
    format!("macie-operator-{uid}")
}

/// The tags of a job created for a MacieJob: the definition's, and three that tie the job to
/// the resource that made it (its namespace, name and UID), for audits from the AWS side. The
/// operator's tags win over a user tag of the same key (admission refuses those anyway).
pub fn job_tags(
    declared: Option<&BTreeMap<String, String>>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> BTreeMap<String, String> {
    let mut tags = declared.cloned().unwrap_or_default();
    tags.insert(format!("{RESERVED_TAG_PREFIX}namespace"), namespace.to_string());
    tags.insert(format!("{RESERVED_TAG_PREFIX}name"), name.to_string());
    tags.insert(format!("{RESERVED_TAG_PREFIX}uid"), uid.to_string());
    tags
}

/// What a reconcile does about creating the resource's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateAction {
    /// The job is the resource's own (created by it, or found with its token): keep it in the
    /// desired status.
    Follow(String),
    /// A job has the name, or the resource's record names it, but its token is unknown:
    /// DescribeClassificationJob tells.
    Describe(String),
    /// The resource's record names a job whose token is not this resource's: the record was
    /// not written by this operator for this resource (a forged or copied status). Ignored:
    /// nothing is done to that job.
    Forged(String),
    /// A job of the name that this resource did not create: never adopted, nothing created.
    NameInUse(String),
    /// Several jobs have the name: nothing created.
    Ambiguous,
    /// Create the job now (through the quota queue).
    Create,
    /// Wait: for the first sweep, or for a sweep that can show a create in flight.
    Wait(Waiting),
    /// jobStatus CANCELLED and no job: nothing to create.
    NothingToCreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// No sweep of the place yet (or the latest failed).
    ForSweep,
    /// A create is in flight (or its answer was lost): a sweep that started after the call
    /// shows the job; past the step timeout without one, it is sent again (same token).
    ForCreated,
    /// A create was refused or throttled: sent again at this time.
    ForRetry(Timestamp),
}

/// What the create decision looks at.
pub struct Facts<'a, T: Fn(&str) -> Option<String>> {
    pub desired: DesiredJobStatus,
    /// What the resource knows of its create (memory first, else status).
    pub record: Option<&'a CreationRecord>,
    /// The place's latest sweep, by the job's name.
    pub observation: &'a Observation<'a>,
    pub snapshot_at: Option<Timestamp>,
    /// The client token of a job, when known.
    pub token_of: T,
    /// This resource's token.
    pub ours: &'a str,
    pub step_timeout: Duration,
    pub now: Timestamp,
}

/// Pure: what to do about the resource's job.
pub fn decide<T: Fn(&str) -> Option<String>>(f: Facts<'_, T>) -> CreateAction {
    let Facts {
        desired,
        record,
        observation,
        snapshot_at,
        token_of,
        ours,
        step_timeout,
        now,
    } = f;
    // A recorded job id is followed only once its token proves the job this resource's: the
    // record may come from the status, which whoever can write `maciejobs/status` can forge.
    if let Some(id) = record.and_then(|r| r.job_id.clone()) {
        return match token_of(&id) {
            Some(t) if t == ours => CreateAction::Follow(id),
            Some(_) => CreateAction::Forged(id),
            None => CreateAction::Describe(id),
        };
    }
    match observation {
        // Never create blind: a failed or pending read of the name could hide a job of it.
        Observation::NoSweepYet | Observation::SweepFailed { .. } | Observation::Unread(_) => {
            CreateAction::Wait(Waiting::ForSweep)
        }
        Observation::Found(job) => match token_of(&job.job_id) {
            Some(t) if t == ours => CreateAction::Follow(job.job_id.clone()),
            Some(_) => CreateAction::NameInUse(job.job_id.clone()),
            None => CreateAction::Describe(job.job_id.clone()),
        },
        Observation::Ambiguous(_) => CreateAction::Ambiguous,
        Observation::NotFound => match record {
            // A create in flight may still show up (also when the resource now asks for
            // CANCELLED, or is being deleted): only a sweep that started past the step timeout
            // after the call, and still shows no job of the name, settles it.
            Some(r)
                if r.outcome == CreationOutcome::Pending
                    && snapshot_at
                        .is_none_or(|s| s <= r.requested_at.0.checked_add(step_timeout).unwrap_or(Timestamp::MAX)) =>
            {
                CreateAction::Wait(Waiting::ForCreated)
            }
            _ if desired == DesiredJobStatus::Cancelled => CreateAction::NothingToCreate,
            None => CreateAction::Create,
            Some(r) => match r.outcome {
                CreationOutcome::Pending => CreateAction::Create,
                CreationOutcome::NotProcessed | CreationOutcome::Failed => match r.retry_at.as_ref() {
                    Some(t) if t.0 > now => CreateAction::Wait(Waiting::ForRetry(t.0)),
                    _ => CreateAction::Create,
                },
                // Succeeded always carries the job id (handled above).
                CreationOutcome::Succeeded => CreateAction::Create,
            },
        },
    }
}

/// Where a resource stands in its place's create queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Create now.
    Go,
    /// Wait: `position` in the queue (1 = next), its turn comes at `at`.
    Wait { position: usize, at: Instant },
}

/// Creates per place, spaced `interval` apart (the published quota: 0.1 per second, one every
/// 10 s), first come first served.
#[derive(Debug)]
pub struct CreateQueue<P, R> {
    interval: Duration,
    places: HashMap<P, PlaceQueue<R>>,
}

#[derive(Debug)]
struct PlaceQueue<R> {
    /// When the next create may go.
    next_at: Option<Instant>,
    waiting: VecDeque<R>,
}

impl<P: Eq + Hash + Clone, R: Eq + Clone> CreateQueue<P, R> {
    /// `rate`: creates per second per place.
    pub fn new(rate: f64) -> CreateQueue<P, R> {
        CreateQueue {
            interval: Duration::from_secs_f64(1.0 / rate.max(1e-6)),
            places: HashMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `who` asks to create at `place` at `now`: its turn, or its place in the line.
    pub fn ticket(&mut self, place: &P, who: &R, now: Instant) -> Ticket {
        let interval = self.interval;
        let q = self.places.entry(place.clone()).or_insert_with(|| PlaceQueue {
            next_at: None,
            waiting: VecDeque::new(),
        });
        if !q.waiting.contains(who) {
            q.waiting.push_back(who.clone());
        }
        let position = q.waiting.iter().position(|w| w == who).unwrap_or(0);
        let ready_at = q.next_at.unwrap_or(now);
        if position == 0 && now >= ready_at {
            q.waiting.pop_front();
            q.next_at = Some(now + interval);
            return Ticket::Go;
        }
        Ticket::Wait {
            position: position + 1,
            at: ready_at.max(now) + interval * position as u32,
        }
    }

    /// The create that took its turn at `place` is being sent now (after its write-ahead): the
    /// next one goes an interval after this, so that calls reach Macie spaced whatever the
    /// status write took.
    pub fn sending(&mut self, place: &P, now: Instant) {
        if let Some(q) = self.places.get_mut(place) {
            q.next_at = Some(q.next_at.unwrap_or(now).max(now + self.interval));
        }
    }

    /// The create `who` sent at `place` was throttled: it goes first again, after `backoff`.
    pub fn throttled(&mut self, place: &P, who: &R, now: Instant, backoff: Duration) {
        if let Some(q) = self.places.get_mut(place) {
            q.next_at = Some(q.next_at.unwrap_or(now).max(now + backoff));
            q.waiting.retain(|w| w != who);
            q.waiting.push_front(who.clone());
        }
    }

    /// `who` no longer waits (created, deleted, or no longer asking).
    pub fn leave(&mut self, who: &R) {
        for q in self.places.values_mut() {
            q.waiting.retain(|w| w != who);
        }
        self.places.retain(|_, q| !q.waiting.is_empty() || q.next_at.is_some());
    }

    /// Resources waiting, over all places.
    pub fn waiting(&self) -> usize {
        self.places.values().map(|q| q.waiting.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::macie_job::ObservedJob;
    use crate::macie::MacieError;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn record(outcome: CreationOutcome, at: i64, job_id: Option<&str>, retry_at: Option<i64>) -> CreationRecord {
        CreationRecord {
            client_token: "macie-operator-uid".into(),
            requested_at: Time(t(at)),
            outcome,
            job_id: job_id.map(str::to_string),
            retry_at: retry_at.map(|s| Time(t(s))),
            error_code: None,
            message: None,
        }
    }

    #[test]
    fn created_jobs_name_their_resource_in_tags() {
        let declared: BTreeMap<String, String> = [("team".to_string(), "fin".to_string())].into();
        let tags = job_tags(Some(&declared), "ns", "m", "uid-1");
        assert_eq!(tags["team"], "fin");
        assert_eq!(tags["macie.kubeops.dev/namespace"], "ns");
        assert_eq!(tags["macie.kubeops.dev/name"], "m");
        assert_eq!(tags["macie.kubeops.dev/uid"], "uid-1");
        // The operator's tags win over a user tag of the same key (refused at admission anyway).
        let forged: BTreeMap<String, String> = [("macie.kubeops.dev/uid".to_string(), "other".to_string())].into();
        assert_eq!(
            job_tags(Some(&forged), "ns", "m", "uid-1")["macie.kubeops.dev/uid"],
            "uid-1"
        );
        assert_eq!(
            job_tags(None, "ns", "m", "uid-1").len(),
            crate::api::job_definition::OPERATOR_TAGS
        );
    }

    #[test]
    fn decide_rows() {
        use CreateAction::*;
        use CreationOutcome::*;
        let ours = "macie-operator-uid";
        let job = ObservedJob {
            job_id: "j1".into(),
            name: Some("scan".into()),
            job_status: "RUNNING".into(),
            ..Default::default()
        };
        let err = MacieError::Uncertain {
            code: "InternalServerException".into(),
            message: "x".into(),
        };
        let ids = vec!["j1".to_string(), "j2".to_string()];
        let timeout = Duration::from_secs(300);
        use DesiredJobStatus::{Cancelled, Running, UserPaused};
        // (desired, record, observation, snapshot_at, token of the found job) -> action
        type Row<'a> = (
            DesiredJobStatus,
            Option<CreationRecord>,
            Observation<'a>,
            Option<i64>,
            Option<&'static str>,
            CreateAction,
        );
        let rows: Vec<Row<'_>> = vec![
            // Nothing yet: create, whatever the desired status but CANCELLED.
            (Running, None, Observation::NotFound, Some(0), None, Create),
            (UserPaused, None, Observation::NotFound, Some(0), None, Create),
            (Cancelled, None, Observation::NotFound, Some(0), None, NothingToCreate),
            // No sweep yet (or a failing one): never create blind.
            (
                Running,
                None,
                Observation::NoSweepYet,
                None,
                None,
                Wait(Waiting::ForSweep),
            ),
            (
                Running,
                None,
                Observation::SweepFailed {
                    error: &err,
                    failures: 1,
                },
                Some(0),
                None,
                Wait(Waiting::ForSweep),
            ),
            // Created: follow the id, whatever a sweep by name shows, once its token proves it
            // ours (a record read back from the status is not proof: it can be forged).
            (
                Running,
                Some(record(Succeeded, 0, Some("j1"), None)),
                Observation::NotFound,
                Some(10),
                Some(ours),
                Follow("j1".into()),
            ),
            (
                Cancelled,
                Some(record(Succeeded, 0, Some("j1"), None)),
                Observation::NotFound,
                Some(10),
                Some(ours),
                Follow("j1".into()),
            ),
            (
                Running,
                Some(record(Succeeded, 0, Some("j1"), None)),
                Observation::NotFound,
                Some(10),
                None,
                Describe("j1".into()),
            ),
            (
                Running,
                Some(record(Succeeded, 0, Some("j1"), None)),
                Observation::Found(&job),
                Some(10),
                Some("macie-operator-other-uid"),
                Forged("j1".into()),
            ),
            // A job created without a client token (console, CLI) is nobody's record.
            (
                UserPaused,
                Some(record(Succeeded, 0, Some("j1"), None)),
                Observation::NotFound,
                Some(10),
                Some(""),
                Forged("j1".into()),
            ),
            // A job of the name: ours (by token) is followed, another's is NameInUse, unknown is asked.
            (
                Running,
                None,
                Observation::Found(&job),
                Some(0),
                Some(ours),
                Follow("j1".into()),
            ),
            (
                Running,
                None,
                Observation::Found(&job),
                Some(0),
                Some("someone-else"),
                NameInUse("j1".into()),
            ),
            (
                Running,
                None,
                Observation::Found(&job),
                Some(0),
                None,
                Describe("j1".into()),
            ),
            (
                Cancelled,
                None,
                Observation::Found(&job),
                Some(0),
                Some(ours),
                Follow("j1".into()),
            ),
            (Running, None, Observation::Ambiguous(&ids), Some(0), None, Ambiguous),
            // In flight (or the answer lost): wait for a sweep past the step timeout, then send
            // again with the same token.
            (
                Running,
                Some(record(Pending, 0, None, None)),
                Observation::NotFound,
                Some(10),
                None,
                Wait(Waiting::ForCreated),
            ),
            (
                Running,
                Some(record(Pending, 0, None, None)),
                Observation::NotFound,
                Some(300),
                None,
                Wait(Waiting::ForCreated),
            ),
            (
                Running,
                Some(record(Pending, 0, None, None)),
                Observation::NotFound,
                Some(301),
                None,
                Create,
            ),
            // CANCELLED (or a deletion) while a create may be in flight: wait for it to show.
            (
                Cancelled,
                Some(record(Pending, 0, None, None)),
                Observation::NotFound,
                Some(10),
                None,
                Wait(Waiting::ForCreated),
            ),
            (
                Cancelled,
                Some(record(Pending, 0, None, None)),
                Observation::NotFound,
                Some(301),
                None,
                NothingToCreate,
            ),
            (
                Cancelled,
                Some(record(Pending, 0, None, None)),
                Observation::Found(&job),
                Some(10),
                Some(ours),
                Follow("j1".into()),
            ),
            (
                Running,
                Some(record(Pending, 0, None, None)),
                Observation::Found(&job),
                Some(5),
                None,
                Describe("j1".into()),
            ),
            (
                Running,
                Some(record(Pending, 0, None, None)),
                Observation::Found(&job),
                Some(5),
                Some(ours),
                Follow("j1".into()),
            ),
            // Throttled or refused: again at its retry time.
            (
                Running,
                Some(record(NotProcessed, 0, None, Some(20))),
                Observation::NotFound,
                Some(10),
                None,
                Wait(Waiting::ForRetry(t(20))),
            ),
            (
                Running,
                Some(record(NotProcessed, 0, None, Some(5))),
                Observation::NotFound,
                Some(10),
                None,
                Create,
            ),
            (
                Running,
                Some(record(Failed, 0, None, Some(900))),
                Observation::NotFound,
                Some(10),
                None,
                Wait(Waiting::ForRetry(t(900))),
            ),
        ];
        for (i, (desired, rec, obs, snap, token, want)) in rows.into_iter().enumerate() {
            let got = decide(Facts {
                desired,
                record: rec.as_ref(),
                observation: &obs,
                snapshot_at: snap.map(t),
                token_of: |_: &str| token.map(str::to_string),
                ours,
                step_timeout: timeout,
                now: t(10),
            });
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn a_create_is_never_sent_twice_before_a_sweep_past_the_timeout_shows_nothing() {
        let rec = record(CreationOutcome::Pending, 0, None, None);
        let ours = "macie-operator-uid";
        for snap in 0..=300 {
            let a = decide(Facts {
                desired: DesiredJobStatus::Running,
                record: Some(&rec),
                observation: &Observation::NotFound,
                snapshot_at: Some(t(snap)),
                token_of: |_: &str| None,
                ours,
                step_timeout: Duration::from_secs(300),
                now: t(100_000),
            });
            assert_ne!(a, CreateAction::Create, "sweep at {snap}");
        }
    }

    #[test]
    fn client_tokens_are_per_resource_and_stable() {
        assert_eq!(client_token("a"), client_token("a"));
        assert_ne!(client_token("a"), client_token("b"));
        assert!(client_token("0d9f7e2a-1111-2222-3333-444455556666").len() <= 64);
    }

    #[test]
    fn the_queue_spaces_creates_per_place_first_come_first_served() {
        let mut q: CreateQueue<&str, &str> = CreateQueue::new(0.1);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(q.interval(), s(10));
        assert_eq!(q.ticket(&"east", &"a", t0), Ticket::Go);
        // b and c wait their turn: 10 s apart.
        assert_eq!(
            q.ticket(&"east", &"b", t0),
            Ticket::Wait {
                position: 1,
                at: t0 + s(10)
            }
        );
        assert_eq!(
            q.ticket(&"east", &"c", t0),
            Ticket::Wait {
                position: 2,
                at: t0 + s(20)
            }
        );
        // Another place has its own quota.
        assert_eq!(q.ticket(&"west", &"x", t0), Ticket::Go);
        // c asking early does not jump b.
        assert_eq!(
            q.ticket(&"east", &"c", t0 + s(10)),
            Ticket::Wait {
                position: 2,
                at: t0 + s(20)
            }
        );
        assert_eq!(q.ticket(&"east", &"b", t0 + s(10)), Ticket::Go);
        assert_eq!(
            q.ticket(&"east", &"c", t0 + s(19)),
            Ticket::Wait {
                position: 1,
                at: t0 + s(20)
            }
        );
        assert_eq!(q.ticket(&"east", &"c", t0 + s(20)), Ticket::Go);
        assert_eq!(q.waiting(), 0);
        // c's call goes out 3 s after its turn (its status write took that long): the next
        // create waits an interval from the send, not from the turn.
        q.sending(&"east", t0 + s(23));
        assert_eq!(
            q.ticket(&"east", &"d", t0 + s(30)),
            Ticket::Wait {
                position: 1,
                at: t0 + s(33)
            }
        );
        assert_eq!(q.ticket(&"east", &"d", t0 + s(33)), Ticket::Go);
    }

    #[test]
    fn a_throttled_create_keeps_everyone_else_in_line() {
        let mut q: CreateQueue<&str, &str> = CreateQueue::new(1.0);
        let t0 = Instant::now();
        assert_eq!(q.ticket(&"east", &"a", t0), Ticket::Go);
        for who in ["b", "c"] {
            assert!(matches!(q.ticket(&"east", &who, t0), Ticket::Wait { .. }));
        }
        q.throttled(&"east", &"a", t0, Duration::from_secs(5));
        assert_eq!(q.waiting(), 3, "a first again, b and c behind it");
        assert_eq!(
            q.ticket(&"east", &"c", t0),
            Ticket::Wait {
                position: 3,
                at: t0 + Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn a_throttled_create_goes_first_again_after_its_backoff() {
        let mut q: CreateQueue<&str, &str> = CreateQueue::new(1.0);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(q.ticket(&"east", &"a", t0), Ticket::Go);
        assert_eq!(
            q.ticket(&"east", &"b", t0),
            Ticket::Wait {
                position: 1,
                at: t0 + s(1)
            }
        );
        q.throttled(&"east", &"a", t0, s(5));
        assert_eq!(
            q.ticket(&"east", &"b", t0 + s(1)),
            Ticket::Wait {
                position: 2,
                at: t0 + s(6)
            }
        );
        assert_eq!(
            q.ticket(&"east", &"a", t0 + s(4)),
            Ticket::Wait {
                position: 1,
                at: t0 + s(5)
            }
        );
        assert_eq!(q.ticket(&"east", &"a", t0 + s(5)), Ticket::Go);
        assert_eq!(q.ticket(&"east", &"b", t0 + s(6)), Ticket::Go);
        q.leave(&"b");
        assert_eq!(q.waiting(), 0);
    }
}
