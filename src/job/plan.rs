//! The plan: a pure function from (desired status, observed job, the last step taken) to what
//! to do and what to report. No I/O; every cell is unit-tested.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::account::policy::Pause;
use crate::api::DesiredJobStatus;
pub use crate::api::conditions::{ALL_REASONS, Announce, Reason};
use crate::api::conditions::{Phase, Summary};
use crate::api::macie_job::ObservedJob;
use crate::macie::MacieError;
use crate::macie::jobs::{SWEEP_FAILURES_REPORTED, Unread};

/// A Macie job status as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    Paused,
    Cancelled,
    Complete,
    Idle,
    UserPaused,
    /// A value this operator does not know (newer API).
    Unknown(String),
}

impl JobStatus {
    pub fn parse(s: &str) -> JobStatus {
        match s {
            "RUNNING" => JobStatus::Running,
            "PAUSED" => JobStatus::Paused,
            "CANCELLED" => JobStatus::Cancelled,
            "COMPLETE" => JobStatus::Complete,
            "IDLE" => JobStatus::Idle,
            "USER_PAUSED" => JobStatus::UserPaused,
            other => JobStatus::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Paused => "PAUSED",
            JobStatus::Cancelled => "CANCELLED",
            JobStatus::Complete => "COMPLETE",
            JobStatus::Idle => "IDLE",
            JobStatus::UserPaused => "USER_PAUSED",
            JobStatus::Unknown(s) => s,
        }
    }

    /// The transitions UpdateClassificationJob accepts (Macie API reference): CANCELLED from
    /// IDLE, PAUSED, RUNNING, USER_PAUSED; RUNNING from USER_PAUSED; USER_PAUSED from IDLE,
    /// PAUSED, RUNNING.
    pub fn can_update_to(&self, to: DesiredJobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Idle | Paused | Running | UserPaused, DesiredJobStatus::Cancelled)
                | (UserPaused, DesiredJobStatus::Running)
                | (Idle | Paused | Running, DesiredJobStatus::UserPaused)
        )
    }

    /// Statuses a successful update to `to` can lead to (resuming a scheduled job that was
    /// paused while idle lands on IDLE).
    pub fn results_of(to: DesiredJobStatus) -> &'static [&'static str] {
        match to {
            DesiredJobStatus::Running => &["RUNNING", "IDLE", "COMPLETE"],
            DesiredJobStatus::UserPaused => &["USER_PAUSED"],
            DesiredJobStatus::Cancelled => &["CANCELLED"],
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the shared sweep says about the job a resource names.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    /// No sweep of the region has finished yet.
    NoSweepYet,
    /// The latest sweeps failed (`failures` in a row, after page retries); the last good
    /// snapshot is not used to act on.
    SweepFailed {
        error: &'a MacieError,
        failures: u32,
    },
    NotFound,
    /// Several jobs carry the name.
    Ambiguous(&'a [String]),
    Found(&'a ObservedJob),
    /// The sweep could not read the job (or name) this resource names: a read of its own that
    /// failed or waits for a later sweep. Only this resource's job is in doubt; nothing is
    /// done to it until a read answers.
    Unread(&'a Unread),
}

/// The step: the last UpdateClassificationJob call of a resource, for as long as it decides
/// what the resource may do next. One type for the in-memory record, the write-ahead status
/// (`status.lastTransition` with outcome Pending) and a call's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub job_id: String,
    /// Status observed when the call was made.
    pub from: String,
    pub to: DesiredJobStatus,
    /// When the call was made. The status keeps it in whole seconds rounded up
    /// ([`ceil_second`]): never earlier than the call, so that after a restart a sweep counts as
    /// "after the call" only if it is.
    pub requested_at: Timestamp,
    pub state: StepState,
}

/// What is known of a step's call.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Macie accepted the call, or its outcome is unknown (5xx, lost response, timeout) or it
    /// was refused for a reason a sweep will explain (the job moved or vanished): `error` holds
    /// the code then. Blocks any new call until a sweep that started after the call shows the
    /// job moved, or a sweep that started after `requested_at + step_timeout` still shows it
    /// where it was (timed out): never wall clock alone.
    InFlight { error: Option<String> },
    /// Not processed (throttled, access denied, another refusal): no call for this transition
    /// before `retry_at`; `attempts` in a row so far drive the backoff.
    Refused {
        reason: Reason,
        code: String,
        message: String,
        retry_at: Timestamp,
        attempts: u32,
    },
}

impl Step {
    /// A step for a call made at `now`.
    pub fn new(job_id: &str, from: &str, to: DesiredJobStatus, now: Timestamp) -> Step {
        Step {
            job_id: job_id.to_string(),
            from: from.to_string(),
            to,
            requested_at: now,
            state: StepState::InFlight { error: None },
        }
    }

    pub fn attempts(&self) -> u32 {
        match &self.state {
            StepState::Refused { attempts, .. } => *attempts,
            StepState::InFlight { .. } => 0,
        }
    }
}

/// `t` rounded up to a whole second (what metav1.Time keeps).
pub fn ceil_second(t: Timestamp) -> Timestamp {
    let floor = Timestamp::from_second(t.as_second()).unwrap_or(t);
    if floor == t {
        t
    } else {
        floor.checked_add(SignedDuration::from_secs(1)).unwrap_or(t)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A sweep that started this long after a call and still shows the job unmoved ends the
    /// step (the call is then taken as lost).
    pub step_timeout: Duration,
    /// Warn when a USER_PAUSED job is this close to `jobExpiresAt`.
    pub expiry_warning: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    Nothing,
    /// Call UpdateClassificationJob: `from` is the observed status.
    Update {
        job_id: String,
        from: String,
        to: DesiredJobStatus,
    },
}

/// What happened to the step the plan was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Still waiting for a sweep to show the change (or for the retry time of a refusal).
    Waiting,
    /// A sweep shows a status the call leads to.
    Succeeded,
    /// A sweep shows the job changed, but not to what was asked (someone else changed it), or
    /// the resource no longer asks for it.
    Superseded,
    /// A sweep that started past the step timeout still shows the job unmoved.
    TimedOut,
    /// A refused call's retry time has come (or the resource asks for something else).
    RetryDue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub act: Act,
    pub summary: Summary,
    /// Leave the stored conditions as they are (a transient sweep failure): `summary` is used
    /// only when the resource has none yet.
    pub hold: bool,
    /// Some when a step was given: what became of it.
    pub step: Option<StepOutcome>,
    /// Reconcile again at this time even if nothing changes (expiry warning, retry time).
    pub recheck_at: Option<Timestamp>,
    /// Reconcile again after the next sweep of the region, even if it shows no change.
    pub after_next_sweep: bool,
}

impl Plan {
    fn report(summary: Summary) -> Plan {
        Plan {
            act: Act::Nothing,
            summary,
            hold: false,
            step: None,
            recheck_at: None,
            after_next_sweep: false,
        }
    }
}

pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// What a sweep failure means for the resources of its region.
fn sweep_failed(e: &MacieError) -> Summary {
    match e {
        MacieError::AccessDenied { .. } => Reason::AccessDenied.summary(format!(
            "ListClassificationJobs failed: {e}. Check that Macie is enabled in the region and that the operator's IAM role allows macie2:ListClassificationJobs"
        )),
        MacieError::Throttled { .. } => Reason::Throttled.summary(format!(
            "ListClassificationJobs was throttled: {e}; retrying at the next sweep"
        )),
        _ => Reason::MacieError.summary(format!(
            "ListClassificationJobs failed: {e}; retrying at the next sweep"
        )),
    }
}

/// Why a resource's job is not known: its own read failed (reported at once, with the AWS
/// error code) or waits for a later sweep.
fn not_read(unread: &Unread) -> Summary {
    match unread {
        Unread::Deferred => Reason::WaitingForSweep.summary(format!(
            "the job is not read yet: a sweep makes at most {} reads besides its list; a later sweep reads it",
            crate::macie::jobs::MAX_READS_PER_SWEEP
        )),
        Unread::Failed {
            operation,
            error,
            failures,
        } => {
            let reason = match error {
                MacieError::AccessDenied { .. } => Reason::AccessDenied,
                MacieError::Throttled { .. } => Reason::Throttled,
                _ => Reason::MacieError,
            };
            reason.summary(format!(
                "{operation} for this resource's job failed ({failures} in a row): {error}; tried again at a later sweep, with backoff; nothing is done to the job meanwhile"
            ))
        }
    }
}

/// Decides what to do for one resource.
///
/// `snapshot_at` is when the sweep behind `observed` started; `now` is the current time (used
/// for retry times and the expiry warning; a step in flight is judged by sweeps alone).
pub fn plan(
    desired: DesiredJobStatus,
    observed: Observation<'_>,
    snapshot_at: Option<Timestamp>,
    step: Option<&Step>,
    now: Timestamp,
    settings: &Settings,
) -> Plan {
    let job = match observed {
        Observation::NoSweepYet => {
            let mut p = Plan::report(
                Reason::WaitingForSweep.summary("waiting for the first ListClassificationJobs sweep of the region"),
            );
            p.step = step.map(|_| StepOutcome::Waiting);
            return p;
        }
        Observation::SweepFailed { error, failures } => {
            let mut p = Plan::report(sweep_failed(error));
            p.hold = failures < SWEEP_FAILURES_REPORTED;
            p.step = step.map(|_| StepOutcome::Waiting);
            // Whatever brought the resource here (a spec change) is looked at again after the
            // next good sweep, even if that sweep shows no change of its job.
            p.after_next_sweep = true;
            return p;
        }
        Observation::NotFound => {
            let mut p = Plan::report(
                Reason::JobNotFound
                    .summary("no classification job with this id or name in the region; checked again at every sweep"),
            );
            p.step = step.map(|_| StepOutcome::Superseded);
            return p;
        }
        Observation::Ambiguous(ids) => {
            let mut p = Plan::report(Reason::AmbiguousName.summary(ambiguous(ids)));
            p.step = step.map(|_| StepOutcome::Superseded);
            return p;
        }
        Observation::Unread(unread) => {
            let mut p = Plan::report(not_read(unread));
            p.step = step.map(|_| StepOutcome::Waiting);
            return p;
        }
        Observation::Found(job) => job,
    };
    let actual = JobStatus::parse(&job.job_status);

    let mut outcome = None;
    if let Some(s) = step {
        match &s.state {
            StepState::InFlight { error } if s.job_id == job.job_id => {
                // A call blocks a new one until a sweep that started after it shows the job
                // moved: Macie applies pause and cancel asynchronously, so a list right after
                // the call can still show the old status. Only a sweep that started past the
                // step timeout and still shows the job unmoved ends the wait.
                let seen_after = snapshot_at.is_some_and(|t| t > s.requested_at);
                let deadline = add(s.requested_at, settings.step_timeout);
                if seen_after && job.job_status != s.from {
                    outcome = Some(if JobStatus::results_of(s.to).contains(&job.job_status.as_str()) {
                        StepOutcome::Succeeded
                    } else {
                        StepOutcome::Superseded
                    });
                } else if snapshot_at.is_some_and(|t| t > deadline) {
                    outcome = Some(StepOutcome::TimedOut);
                } else {
                    let msg = match error {
                        None => transitioning(&s.from, s.to),
                        Some(code) => format!(
                            "UpdateClassificationJob {} -> {} failed with {code}; waiting for a sweep to show the job's status before trying again",
                            s.from,
                            s.to.as_str()
                        ),
                    };
                    let mut p = Plan::report(Reason::Transitioning.summary(msg));
                    p.step = Some(StepOutcome::Waiting);
                    p.after_next_sweep = true;
                    return p;
                }
            }
            StepState::Refused {
                reason,
                code,
                message,
                retry_at,
                ..
            } if s.job_id == job.job_id && s.to == desired && job.job_status == s.from => {
                if now < *retry_at {
                    let mut p = Plan::report(reason.summary(refused_message(s, code, message, *retry_at)));
                    p.step = Some(StepOutcome::Waiting);
                    p.recheck_at = Some(*retry_at);
                    return p;
                }
                outcome = Some(StepOutcome::RetryDue);
            }
            StepState::Refused { .. } => outcome = Some(StepOutcome::RetryDue),
            StepState::InFlight { .. } => outcome = Some(StepOutcome::Superseded),
        }
    }

    let mut p = cell(desired, &actual, job, now, settings);
    p.step = outcome;
    p
}

/// The AmbiguousName message: the count and the first few ids (a name can match hundreds).
fn ambiguous(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut shown = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        shown.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    format!(
        "{} jobs have this name ({shown}); use spec.jobId to pick one",
        ids.len()
    )
}

pub(crate) fn refused_message(s: &Step, code: &str, message: &str, retry_at: Timestamp) -> String {
    let hint = if code == "AccessDeniedException" {
        "; check the operator's IAM role (macie2:UpdateClassificationJob)"
    } else {
        ""
    };
    format!(
        "UpdateClassificationJob {} -> {} failed: {code}: {message}{hint}; next try at {retry_at}",
        s.from,
        s.to.as_str()
    )
}

/// The Ready message while an UpdateClassificationJob call is in flight or not yet visible.
pub fn transitioning(from: &str, to: DesiredJobStatus) -> String {
    format!(
        "UpdateClassificationJob {from} -> {} requested; waiting for a sweep to show it",
        to.as_str()
    )
}

/// One cell of the (desired x actual) table, for a job with no step in flight.
fn cell(desired: DesiredJobStatus, actual: &JobStatus, job: &ObservedJob, now: Timestamp, s: &Settings) -> Plan {
    use DesiredJobStatus as D;
    use JobStatus as A;
    let done = |reason: Reason, msg: String| Plan::report(reason.summary(msg));
    // A terminal job that was asked to run needs a person: Stalled, whatever the reason's
    // usual phase.
    let stalled = |reason: Reason, msg: String| Plan::report(Summary::new(Phase::Stalled, reason.as_str(), msg));
    let update = |to: D| Plan {
        act: Act::Update {
            job_id: job.job_id.clone(),
            from: actual.to_string(),
            to,
        },
        // The same words before and after the call: the write-ahead status is then already
        // what a successful call leaves, and needs no second write.
        ..Plan::report(Reason::Transitioning.summary(transitioning(&actual.to_string(), to)))
    };
    match (desired, actual) {
        (_, A::Unknown(v)) => stalled(
            Reason::UnknownJobStatus,
            format!("Macie reports job status {v:?}, which this operator version does not know; nothing is changed"),
        ),
        (D::Running, A::Running) => done(Reason::Converged, "job is RUNNING".into()),
        (D::Running, A::Idle) => done(Reason::Converged, "scheduled job is IDLE between runs".into()),
        (D::Running, A::Complete) => done(Reason::Converged, "one-time job has run and is COMPLETE".into()),
        (D::Running, A::UserPaused) => update(D::Running),
        (D::Running, A::Paused) => stalled(
            Reason::PausedByMacie,
            "Macie paused the job because the account's monthly sensitive data discovery quota would be exceeded; it resumes when quota is available (no API call can resume it)".into(),
        ),
        (D::Running, A::Cancelled) => stalled(
            Reason::TerminalState,
            "job is CANCELLED and can never run again; create a new job (and a MacieJob for it)".into(),
        ),
        (D::UserPaused, A::Running | A::Idle | A::Paused) => update(D::UserPaused),
        (D::UserPaused, A::UserPaused) => paused(job, now, s),
        (D::UserPaused | D::Cancelled, A::Complete) => done(
            Reason::TerminalState,
            "job is COMPLETE and will not run again; nothing to change".into(),
        ),
        (D::UserPaused, A::Cancelled) => done(
            Reason::TerminalState,
            "job is CANCELLED and will not run again; nothing to change".into(),
        ),
        (D::Cancelled, A::Idle | A::Paused | A::Running | A::UserPaused) => update(D::Cancelled),
        (D::Cancelled, A::Cancelled) => done(Reason::Converged, "job is CANCELLED".into()),
    }
}

/// Desired and actual USER_PAUSED: converged, with a warning once expiry is near.
fn paused(job: &ObservedJob, now: Timestamp, s: &Settings) -> Plan {
    let expires = job
        .user_paused_details
        .as_ref()
        .and_then(|d| d.job_expires_at.as_ref())
        .map(|t| t.0);
    match expires {
        Some(at) if now >= sub(at, s.expiry_warning) => Plan::report(Reason::ExpiringSoon.summary(format!(
            "job is USER_PAUSED and Macie will cancel it (or its paused run) at {at}; set jobStatus RUNNING before then to keep it"
        ))),
        Some(at) => Plan {
            recheck_at: Some(sub(at, s.expiry_warning)),
            ..Plan::report(Reason::Converged.summary(format!("job is USER_PAUSED until {at}")))
        },
        None => Plan::report(Reason::Converged.summary("job is USER_PAUSED")),
    }
}

/// The observed job the status shows after a sweep. A sweep that cannot settle the step in
/// flight (it started before the call, or still shows the job where the step found it) shows
/// nothing the status should report either: the status keeps the job it showed when the step
/// was written, and the sweep that settles the step writes both at once (one status write per
/// step after the write-ahead, not one per sweep in between).
pub fn shown_job(
    observation: &Observation<'_>,
    step: Option<&StepOutcome>,
    stored: Option<&ObservedJob>,
) -> Option<ObservedJob> {
    match observation {
        Observation::Found(_) if step == Some(&StepOutcome::Waiting) && stored.is_some() => stored.cloned(),
        Observation::Found(j) => Some((*j).clone()),
        Observation::NotFound | Observation::Ambiguous(_) => None,
        Observation::NoSweepYet | Observation::SweepFailed { .. } | Observation::Unread(_) => stored.cloned(),
    }
}

/// What an Observe declaration reports (pure): the plan's picture of the job against `desired`,
/// but Drifted where Manage would call (naming the status Macie shows and the one declared);
/// without a declared status, a job found is Ready as it is.
pub fn observed_summary(
    desired: Option<DesiredJobStatus>,
    observed: Observation<'_>,
    snapshot_at: Option<Timestamp>,
    now: Timestamp,
    settings: &Settings,
) -> Summary {
    let p = plan(
        desired.unwrap_or(DesiredJobStatus::Running),
        observed,
        snapshot_at,
        None,
        now,
        settings,
    );
    match (desired, observed, &p.act) {
        (Some(_), _, Act::Update { job_id, from, to }) => Reason::Drifted.summary(format!(
            "job {job_id} is {from}; {} is declared (managementPolicy Observe: no call is made)",
            to.as_str()
        )),
        (None, Observation::Found(job), _) => Reason::Converged.summary(format!(
            "job {} is {} (managementPolicy Observe, no jobStatus declared: reported as it is)",
            job.job_id, job.job_status
        )),
        _ => p.summary,
    }
}

/// What a paused resource reports (pure): `ReconcilePaused`, in the phase the plan reports when
/// it would not act (Ready when Macie shows what is declared) and Reconciling when it would: a
/// held call is work left to do. The message says which annotation pauses it, then the plan's.
pub fn paused_summary(pause: Pause, account: &str, plan: &Plan) -> Summary {
    let phase = match plan.act {
        Act::Nothing => plan.summary.phase,
        Act::Update { .. } => Phase::Reconciling,
    };
    Summary::new(
        phase,
        Reason::ReconcilePaused.as_str(),
        format!("{}; {}", pause.message(account), plan.summary.message),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::api::macie_job::UserPausedDetails;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) const ALL: [&str; 6] = ["RUNNING", "PAUSED", "CANCELLED", "COMPLETE", "IDLE", "USER_PAUSED"];
    pub(crate) const DESIRED: [DesiredJobStatus; 3] = [
        DesiredJobStatus::Running,
        DesiredJobStatus::UserPaused,
        DesiredJobStatus::Cancelled,
    ];

    pub(crate) fn settings() -> Settings {
        Settings {
            step_timeout: Duration::from_secs(300),
            expiry_warning: Duration::from_secs(7 * 86400),
        }
    }

    pub(crate) fn job(status: &str) -> ObservedJob {
        ObservedJob {
            job_id: "j1".into(),
            name: Some("n".into()),
            job_status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_observed_job_is_drifted_where_manage_would_call() {
        use DesiredJobStatus::*;
        // (actual, declared, reason)
        let rows = [
            ("RUNNING", Some(Running), "Converged"),
            ("RUNNING", Some(UserPaused), "Drifted"),
            ("USER_PAUSED", Some(Cancelled), "Drifted"),
            ("IDLE", Some(Running), "Converged"),
            ("PAUSED", Some(Running), "PausedByMacie"),
            ("CANCELLED", Some(Running), p_reason(Running, "CANCELLED")),
            ("USER_PAUSED", None, "Converged"),
            ("CANCELLED", None, "Converged"),
        ];
        for (actual, declared, reason) in rows {
            let j = job(actual);
            let s = observed_summary(declared, Observation::Found(&j), Some(now()), now(), &settings());
            assert_eq!(s.reason, reason, "{actual} declared {declared:?}: {}", s.message);
            if reason == "Drifted" {
                assert!(
                    s.message.contains(actual) && s.message.contains("no call"),
                    "{}",
                    s.message
                );
            }
        }
        let s = observed_summary(None, Observation::NotFound, Some(now()), now(), &settings());
        assert_eq!(s.reason, "JobNotFound");
    }

    /// The reason Manage reports where it would not call.
    fn p_reason(desired: DesiredJobStatus, actual: &str) -> &'static str {
        let p = run(desired, actual);
        assert_eq!(p.act, Act::Nothing);
        ALL_REASONS
            .into_iter()
            .find(|r| r.as_str() == p.summary.reason)
            .unwrap()
            .as_str()
    }

    #[test]
    fn a_paused_plan_holds_its_act_and_keeps_its_picture() {
        let rows = [
            ("RUNNING", DesiredJobStatus::Running, Phase::Ready),
            ("RUNNING", DesiredJobStatus::UserPaused, Phase::Reconciling),
            ("CANCELLED", DesiredJobStatus::Running, Phase::Stalled),
            ("PAUSED", DesiredJobStatus::Running, Phase::Stalled),
        ];
        for (actual, desired, phase) in rows {
            let p = run(desired, actual);
            let s = paused_summary(Pause::Resource, "prod", &p);
            assert_eq!(
                (s.phase, s.reason.as_str()),
                (phase, "ReconcilePaused"),
                "{actual} -> {desired:?}"
            );
            assert!(s.message.starts_with("paused by the annotation"), "{}", s.message);
            assert!(
                s.message.ends_with(&p.summary.message),
                "the plan's picture follows: {}",
                s.message
            );
        }
    }

    #[test]
    fn a_call_in_flight_says_which_transition_it_waits_to_see() {
        assert_eq!(
            transitioning("RUNNING", DesiredJobStatus::UserPaused),
            "UpdateClassificationJob RUNNING -> USER_PAUSED requested; waiting for a sweep to show it"
        );
    }

    #[test]
    fn the_status_shows_a_sweep_only_when_it_settles_the_step_in_flight() {
        let (before, after) = (job("RUNNING"), job("USER_PAUSED"));
        let e = err("InternalServerException");
        let ids = ["a".to_string(), "b".to_string()];
        let waiting = Some(&StepOutcome::Waiting);
        let settled = Some(&StepOutcome::Succeeded);
        // (row, observation, step outcome, stored job, the job shown)
        type Row<'a> = (
            &'a str,
            Observation<'a>,
            Option<&'a StepOutcome>,
            Option<&'a ObservedJob>,
            Option<&'a ObservedJob>,
        );
        let rows: Vec<Row<'_>> = vec![
            // A sweep from before the call shows the job moved: not yet reported.
            (
                "waiting, stored",
                Observation::Found(&after),
                waiting,
                Some(&before),
                Some(&before),
            ),
            (
                "waiting, nothing stored",
                Observation::Found(&after),
                waiting,
                None,
                Some(&after),
            ),
            (
                "settled",
                Observation::Found(&after),
                settled,
                Some(&before),
                Some(&after),
            ),
            ("no step", Observation::Found(&after), None, Some(&before), Some(&after)),
            ("not found", Observation::NotFound, waiting, Some(&before), None),
            ("ambiguous", Observation::Ambiguous(&ids), None, Some(&before), None),
            (
                "no sweep yet",
                Observation::NoSweepYet,
                None,
                Some(&before),
                Some(&before),
            ),
            (
                "sweep failed",
                Observation::SweepFailed { error: &e, failures: 2 },
                waiting,
                Some(&before),
                Some(&before),
            ),
            (
                "job not read",
                Observation::Unread(&Unread::Deferred),
                None,
                Some(&before),
                Some(&before),
            ),
        ];
        for (row, observation, step, stored, want) in rows {
            assert_eq!(shown_job(&observation, step, stored).as_ref(), want, "{row}");
        }
    }

    #[test]
    fn a_job_not_read_is_reported_on_its_resource_and_never_acted_on() {
        use DesiredJobStatus::{Cancelled, Running, UserPaused};
        let failed = |kind: &str| Unread::Failed {
            operation: "DescribeClassificationJob",
            error: err(kind),
            failures: 1,
        };
        let in_flight = Step::new("j1", "RUNNING", UserPaused, now());
        // (unread, reason reported)
        let rows = [
            (Unread::Deferred, Reason::WaitingForSweep),
            (failed("ValidationException"), Reason::MacieError),
            (failed("AccessDeniedException"), Reason::AccessDenied),
            (failed("ThrottlingException"), Reason::Throttled),
            (failed("InternalServerException"), Reason::MacieError),
        ];
        for (unread, reason) in &rows {
            for desired in [Running, UserPaused, Cancelled] {
                for step in [None, Some(&in_flight)] {
                    let p = plan(
                        desired,
                        Observation::Unread(unread),
                        Some(now()),
                        step,
                        now(),
                        &settings(),
                    );
                    let what = format!("{unread:?} {desired:?} step {}", step.is_some());
                    assert_eq!(p.act, Act::Nothing, "{what}");
                    assert_eq!(p.summary.reason, reason.as_str(), "{what}");
                    assert!(!p.hold, "{what}: reported at once");
                    // A step in flight stays in flight: a later read settles it.
                    assert_eq!(p.step, step.map(|_| StepOutcome::Waiting), "{what}");
                    if let Unread::Failed { error, .. } = unread {
                        assert!(
                            p.summary.message.contains(error.code()),
                            "{what}: {}",
                            p.summary.message
                        );
                    }
                }
            }
        }
    }

    pub(crate) fn err(kind: &str) -> MacieError {
        let (code, message) = (kind.to_string(), "m".to_string());
        match kind {
            "ThrottlingException" => MacieError::Throttled { code, message },
            "AccessDeniedException" => MacieError::AccessDenied { code, message },
            "ResourceNotFoundException" => MacieError::NotFound { code, message },
            "ValidationException" => MacieError::Rejected { code, message },
            "InternalServerException" | "Timeout" | "DispatchFailure" => MacieError::Uncertain { code, message },
            _ => MacieError::Other { code, message },
        }
    }

    pub(crate) fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    pub(crate) fn run(desired: DesiredJobStatus, status: &str) -> Plan {
        let j = job(status);
        plan(desired, Observation::Found(&j), Some(now()), None, now(), &settings())
    }

    /// The documented outcome of every (desired, actual) cell: the call made (if any), the
    /// phase and the reason.
    fn expected(desired: DesiredJobStatus, actual: &str) -> (Option<DesiredJobStatus>, Phase, &'static str) {
        use DesiredJobStatus::*;
        match (desired, actual) {
            (Running, "RUNNING" | "IDLE" | "COMPLETE") => (None, Phase::Ready, "Converged"),
            (Running, "USER_PAUSED") => (Some(Running), Phase::Reconciling, "Transitioning"),
            (Running, "PAUSED") => (None, Phase::Stalled, "PausedByMacie"),
            (Running, "CANCELLED") => (None, Phase::Stalled, "TerminalState"),
            (UserPaused, "RUNNING" | "IDLE" | "PAUSED") => (Some(UserPaused), Phase::Reconciling, "Transitioning"),
            (UserPaused, "USER_PAUSED") => (None, Phase::Ready, "Converged"),
            (UserPaused, "COMPLETE" | "CANCELLED") => (None, Phase::Ready, "TerminalState"),
            (Cancelled, "RUNNING" | "IDLE" | "PAUSED" | "USER_PAUSED") => {
                (Some(Cancelled), Phase::Reconciling, "Transitioning")
            }
            (Cancelled, "CANCELLED") => (None, Phase::Ready, "Converged"),
            (Cancelled, "COMPLETE") => (None, Phase::Ready, "TerminalState"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_cell_of_desired_by_actual() {
        let mut cells = 0;
        for d in DESIRED {
            for a in ALL {
                let p = run(d, a);
                let (call, phase, reason) = expected(d, a);
                assert_eq!(p.summary.phase, phase, "{d:?} x {a}");
                assert_eq!(p.summary.reason, reason, "{d:?} x {a}");
                match call {
                    Some(to) => {
                        assert_eq!(
                            p.act,
                            Act::Update {
                                job_id: "j1".into(),
                                from: a.into(),
                                to
                            },
                            "{d:?} x {a}"
                        );
                        assert!(
                            JobStatus::parse(a).can_update_to(to),
                            "{a} -> {to:?} must be a valid transition"
                        );
                    }
                    None => assert_eq!(p.act, Act::Nothing, "{d:?} x {a}"),
                }
                cells += 1;
            }
        }
        assert_eq!(cells, 18);
    }

    #[test]
    fn the_plan_never_asks_for_an_invalid_transition() {
        for d in DESIRED {
            for a in ALL.iter().copied().chain(["SOMETHING_NEW"]) {
                if let Act::Update { from, to, .. } = run(d, a).act {
                    assert!(JobStatus::parse(&from).can_update_to(to));
                }
            }
        }
    }

    #[test]
    fn not_found_ambiguous_unknown_and_sweep_errors() {
        let s = settings();
        let p = plan(
            DesiredJobStatus::Running,
            Observation::NotFound,
            Some(now()),
            None,
            now(),
            &s,
        );
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Reconciling, "JobNotFound")
        );
        assert_eq!(p.act, Act::Nothing);
        let ids = vec!["a".to_string(), "b".to_string()];
        let p = plan(
            DesiredJobStatus::Running,
            Observation::Ambiguous(&ids),
            Some(now()),
            None,
            now(),
            &s,
        );
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Stalled, "AmbiguousName")
        );
        assert!(p.summary.message.contains("a, b"));
        let p = run(DesiredJobStatus::Cancelled, "ARCHIVED");
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Stalled, "UnknownJobStatus")
        );
        assert_eq!(p.act, Act::Nothing);
        let denied = MacieError::AccessDenied {
            code: "AccessDeniedException".into(),
            message: "Macie is not enabled".into(),
        };
        let p = plan(
            DesiredJobStatus::Running,
            Observation::SweepFailed {
                error: &denied,
                failures: SWEEP_FAILURES_REPORTED,
            },
            None,
            None,
            now(),
            &s,
        );
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Stalled, "AccessDenied")
        );
        assert!(p.summary.message.contains("AccessDeniedException"));
        let throttled = MacieError::Throttled {
            code: "ThrottlingException".into(),
            message: "Rate exceeded".into(),
        };
        let p = plan(
            DesiredJobStatus::Running,
            Observation::SweepFailed {
                error: &throttled,
                failures: SWEEP_FAILURES_REPORTED,
            },
            None,
            None,
            now(),
            &s,
        );
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Reconciling, "Throttled")
        );
        let p = plan(
            DesiredJobStatus::Running,
            Observation::NoSweepYet,
            None,
            None,
            now(),
            &s,
        );
        assert_eq!(p.summary.reason, "WaitingForSweep");
    }

    fn step(from: &str, to: DesiredJobStatus, at: Timestamp) -> Step {
        Step::new("j1", from, to, at)
    }

    #[test]
    fn a_step_blocks_a_second_call_until_a_later_sweep_shows_the_change() {
        let s = settings();
        let t_call = now();
        let st = step("RUNNING", DesiredJobStatus::UserPaused, t_call);
        let running = job("RUNNING");
        // Snapshot from before the call: wait.
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&running),
            Some(t_call - SignedDuration::from_secs(1)),
            Some(&st),
            t_call + SignedDuration::from_secs(2),
            &s,
        );
        assert_eq!(p.act, Act::Nothing);
        assert_eq!(p.step, Some(StepOutcome::Waiting));
        assert_eq!(p.summary.reason, "Transitioning");
        assert!(p.after_next_sweep, "woken by the next sweep");
        // Snapshot after the call still shows RUNNING (Macie is slow to show it): still wait.
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&running),
            Some(t_call + SignedDuration::from_secs(5)),
            Some(&st),
            t_call + SignedDuration::from_secs(6),
            &s,
        );
        assert_eq!(p.act, Act::Nothing);
        // A later sweep shows USER_PAUSED: succeeded and converged.
        let paused = job("USER_PAUSED");
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&paused),
            Some(t_call + SignedDuration::from_secs(60)),
            Some(&st),
            t_call + SignedDuration::from_secs(61),
            &s,
        );
        assert_eq!(p.step, Some(StepOutcome::Succeeded));
        assert_eq!(p.summary.reason, "Converged");
        // Wall clock past the timeout, but the newest sweep started before the deadline (a slow
        // sweep): still waiting, never a second call.
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&running),
            Some(t_call + SignedDuration::from_secs(299)),
            Some(&st),
            t_call + SignedDuration::from_secs(3600),
            &s,
        );
        assert_eq!(p.step, Some(StepOutcome::Waiting));
        assert_eq!(p.act, Act::Nothing);
        // A sweep that started past the deadline still shows nothing: the step stops blocking,
        // and the plan may act again.
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&running),
            Some(t_call + SignedDuration::from_secs(301)),
            Some(&st),
            t_call + SignedDuration::from_secs(301),
            &s,
        );
        assert_eq!(p.step, Some(StepOutcome::TimedOut));
        assert!(matches!(p.act, Act::Update { .. }));
    }

    #[test]
    fn a_step_superseded_by_an_out_of_band_change_replans() {
        let st = step("RUNNING", DesiredJobStatus::UserPaused, now());
        let cancelled = job("CANCELLED");
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&cancelled),
            Some(now() + SignedDuration::from_secs(10)),
            Some(&st),
            now() + SignedDuration::from_secs(10),
            &settings(),
        );
        assert_eq!(p.step, Some(StepOutcome::Superseded));
        assert_eq!(p.summary.reason, "TerminalState");
        // Resuming a scheduled job paused while idle lands on IDLE: that is success.
        let st = step("USER_PAUSED", DesiredJobStatus::Running, now());
        let idle = job("IDLE");
        let p = plan(
            DesiredJobStatus::Running,
            Observation::Found(&idle),
            Some(now() + SignedDuration::from_secs(10)),
            Some(&st),
            now() + SignedDuration::from_secs(10),
            &settings(),
        );
        assert_eq!(p.step, Some(StepOutcome::Succeeded));
        assert_eq!(p.summary.phase, Phase::Ready);
    }

    #[test]
    fn expiry_warning_window() {
        let s = settings();
        let mut j = job("USER_PAUSED");
        let expires = now() + SignedDuration::from_hours(24 * 10);
        j.user_paused_details = Some(UserPausedDetails {
            job_expires_at: Some(Time(expires)),
            ..Default::default()
        });
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&j),
            Some(now()),
            None,
            now(),
            &s,
        );
        assert_eq!(p.summary.reason, "Converged");
        assert_eq!(p.recheck_at, Some(expires - SignedDuration::from_hours(24 * 7)));
        let later = now() + SignedDuration::from_hours(24 * 4);
        let p = plan(
            DesiredJobStatus::UserPaused,
            Observation::Found(&j),
            Some(later),
            None,
            later,
            &s,
        );
        assert_eq!(
            (p.summary.phase, p.summary.reason.as_str()),
            (Phase::Ready, "ExpiringSoon")
        );
    }

    #[test]
    fn sweep_failures_hold_the_conditions_until_they_repeat() {
        let e = err("InternalServerException");
        for failures in 1..=5 {
            let p = plan(
                DesiredJobStatus::Running,
                Observation::SweepFailed { error: &e, failures },
                None,
                None,
                now(),
                &settings(),
            );
            assert_eq!(p.act, Act::Nothing);
            assert_eq!(p.hold, failures < SWEEP_FAILURES_REPORTED, "{failures}");
            assert!(p.after_next_sweep, "looked at again after the next good sweep");
            assert_eq!(p.summary.reason, "MacieError");
        }
    }

    #[test]
    fn requested_at_is_rounded_up_to_the_second() {
        let t = Timestamp::from_second(100).unwrap() + SignedDuration::from_millis(1);
        assert_eq!(ceil_second(t), Timestamp::from_second(101).unwrap());
        let whole = Timestamp::from_second(100).unwrap();
        assert_eq!(ceil_second(whole), whole);
        // What the status stores (whole seconds, rounded up) is never before the call.
        let st = Step::new("j1", "RUNNING", DesiredJobStatus::UserPaused, t);
        assert!(ceil_second(st.requested_at) >= st.requested_at);
    }

    #[test]
    fn an_ambiguous_name_message_stays_short() {
        let ids: Vec<String> = (0..60).map(|i| format!("{i:032x}")).collect();
        let p = plan(
            DesiredJobStatus::Running,
            Observation::Ambiguous(&ids),
            None,
            None,
            now(),
            &settings(),
        );
        assert!(p.summary.message.starts_with("60 jobs have this name"));
        assert!(p.summary.message.contains("and 55 more"));
        assert!(p.summary.message.len() < 400, "{}", p.summary.message.len());
    }

    #[test]
    fn every_reason_round_trips_and_has_one_phase() {
        for r in ALL_REASONS {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(r.summary("m").phase, r.phase());
            assert_eq!(r.summary("m").reason, r.as_str());
        }
        assert_eq!(Reason::Transitioning.announce(), Announce::Silent);
        assert_eq!(Reason::Conflict.announce(), Announce::Warning);
        assert_eq!(Reason::Converged.announce(), Announce::Normal);
    }
}
