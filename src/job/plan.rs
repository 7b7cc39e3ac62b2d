//! The plan: a pure function from (desired status, observed job, the last step taken) to what
//! to do and what to report. No I/O; every cell is unit-tested.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::DesiredJobStatus;
use crate::api::conditions::{Phase, Summary};
use crate::api::macie_job::ObservedJob;
use crate::macie::MacieError;

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
    /// The latest sweep failed.
    SweepFailed(&'a MacieError),
    NotFound,
    /// Several jobs carry the name.
    Ambiguous(&'a [String]),
    Found(&'a ObservedJob),
}

/// The last UpdateClassificationJob call for this resource, while it blocks another.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub job_id: String,
    /// Status observed when the call was made.
    pub from: String,
    pub to: DesiredJobStatus,
    pub requested_at: Timestamp,
    /// The call failed with this code (rejected or uncertain); None when Macie accepted it.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// After this long without the change showing, the step no longer blocks a new call.
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
    /// Still waiting for a sweep to show the change.
    Waiting,
    /// A sweep shows a status the call leads to.
    Succeeded,
    /// A sweep shows the job changed, but not to what was asked (someone else changed it).
    Superseded,
    /// Nothing showed within the step timeout.
    TimedOut,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub act: Act,
    pub summary: Summary,
    /// Some when a step was given: what became of it.
    pub step: Option<StepOutcome>,
    /// Reconcile again at this time even if nothing changes (expiry warning, step timeout).
    pub recheck_at: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// Decides what to do for one resource.
///
/// `snapshot_at` is when the sweep behind `observed` started; `now` is the current time.
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
            return waiting(
                step,
                Summary::new(
                    Phase::Reconciling,
                    "WaitingForSweep",
                    "waiting for the first ListClassificationJobs sweep of the region",
                ),
            );
        }
        Observation::SweepFailed(e) => {
            let summary = match e {
                MacieError::AccessDenied { .. } => Summary::new(
                    Phase::Stalled,
                    "AccessDenied",
                    format!(
                        "ListClassificationJobs failed: {e}. Check that Macie is enabled in the region and that the operator's IAM role allows macie2:ListClassificationJobs"
                    ),
                ),
                MacieError::Throttled { .. } => Summary::new(
                    Phase::Reconciling,
                    "Throttled",
                    format!("ListClassificationJobs was throttled: {e}; retrying at the next sweep"),
                ),
                _ => Summary::new(
                    Phase::Reconciling,
                    "MacieError",
                    format!("ListClassificationJobs failed: {e}; retrying at the next sweep"),
                ),
            };
            return waiting(step, summary);
        }
        Observation::NotFound => {
            return Plan {
                act: Act::Nothing,
                summary: Summary::new(
                    Phase::Reconciling,
                    "JobNotFound",
                    "no classification job with this id or name in the region; checked again at every sweep",
                ),
                step: step.map(|_| StepOutcome::Superseded),
                recheck_at: None,
            };
        }
        Observation::Ambiguous(ids) => {
            return Plan {
                act: Act::Nothing,
                summary: Summary::new(
                    Phase::Stalled,
                    "AmbiguousName",
                    format!(
                        "{} jobs have this name ({}); use spec.jobId to pick one",
                        ids.len(),
                        ids.join(", ")
                    ),
                ),
                step: step.map(|_| StepOutcome::Superseded),
                recheck_at: None,
            };
        }
        Observation::Found(job) => job,
    };
    let actual = JobStatus::parse(&job.job_status);

    // A previous call blocks a new one until a sweep that started after it shows the job moved
    // (or the step times out): Macie applies pause and cancel asynchronously, so a list right
    // after the call can still show the old status.
    let mut outcome = None;
    if let Some(s) = step.filter(|s| s.job_id == job.job_id) {
        let deadline = add(s.requested_at, settings.step_timeout);
        let seen_after = snapshot_at.is_some_and(|t| t > s.requested_at);
        if seen_after && job.job_status != s.from {
            outcome = Some(if JobStatus::results_of(s.to).contains(&job.job_status.as_str()) {
                StepOutcome::Succeeded
            } else {
                StepOutcome::Superseded
            });
        } else if now >= deadline {
            outcome = Some(StepOutcome::TimedOut);
        } else {
            let msg = match &s.error {
                None => transitioning(&s.from, s.to),
                Some(code) => format!(
                    "UpdateClassificationJob {} -> {} failed with {code}; waiting for a sweep to show the job's status before trying again",
                    s.from,
                    s.to.as_str()
                ),
            };
            return Plan {
                act: Act::Nothing,
                summary: Summary::new(Phase::Reconciling, "Transitioning", msg),
                step: Some(StepOutcome::Waiting),
                recheck_at: Some(deadline),
            };
        }
    } else if step.is_some() {
        outcome = Some(StepOutcome::Superseded);
    }

    let mut p = cell(desired, &actual, job, now, settings);
    p.step = outcome;
    p
}

/// The Ready message while an UpdateClassificationJob call is in flight or not yet visible.
pub fn transitioning(from: &str, to: DesiredJobStatus) -> String {
    format!(
        "UpdateClassificationJob {from} -> {} requested; waiting for a sweep to show it",
        to.as_str()
    )
}

fn waiting(step: Option<&Step>, summary: Summary) -> Plan {
    Plan {
        act: Act::Nothing,
        summary,
        step: step.map(|_| StepOutcome::Waiting),
        recheck_at: None,
    }
}

/// One cell of the (desired x actual) table, for a job with no step in flight.
fn cell(desired: DesiredJobStatus, actual: &JobStatus, job: &ObservedJob, now: Timestamp, s: &Settings) -> Plan {
    use DesiredJobStatus as D;
    use JobStatus as A;
    let done = |reason: &str, msg: String| Plan {
        act: Act::Nothing,
        summary: Summary::new(Phase::Ready, reason, msg),
        step: None,
        recheck_at: None,
    };
    let stalled = |reason: &str, msg: String| Plan {
        act: Act::Nothing,
        summary: Summary::new(Phase::Stalled, reason, msg),
        step: None,
        recheck_at: None,
    };
    let update = |to: D| Plan {
        act: Act::Update {
            job_id: job.job_id.clone(),
            from: actual.to_string(),
            to,
        },
        // The same words before and after the call: the write-ahead status is then already
        // what a successful call leaves, and needs no second write.
        summary: Summary::new(
            Phase::Reconciling,
            "Transitioning",
            transitioning(&actual.to_string(), to),
        ),
        step: None,
        recheck_at: None,
    };
    match (desired, actual) {
        (_, A::Unknown(v)) => stalled(
            "UnknownJobStatus",
            format!("Macie reports job status {v:?}, which this operator version does not know; nothing is changed"),
        ),
        (D::Running, A::Running) => done("Converged", "job is RUNNING".into()),
        (D::Running, A::Idle) => done("Converged", "scheduled job is IDLE between runs".into()),
        (D::Running, A::Complete) => done("Converged", "one-time job has run and is COMPLETE".into()),
        (D::Running, A::UserPaused) => update(D::Running),
        (D::Running, A::Paused) => stalled(
            "PausedByMacie",
            "Macie paused the job because the account's monthly sensitive data discovery quota would be exceeded; it resumes when quota is available (no API call can resume it)".into(),
        ),
        (D::Running, A::Cancelled) => stalled(
            "TerminalState",
            "job is CANCELLED and can never run again; create a new job (and a MacieJob for it)".into(),
        ),
        (D::UserPaused, A::Running | A::Idle | A::Paused) => update(D::UserPaused),
        (D::UserPaused, A::UserPaused) => paused(job, now, s),
        (D::UserPaused | D::Cancelled, A::Complete) => done(
            "TerminalState",
            "job is COMPLETE and will not run again; nothing to change".into(),
        ),
        (D::UserPaused, A::Cancelled) => done(
            "TerminalState",
            "job is CANCELLED and will not run again; nothing to change".into(),
        ),
        (D::Cancelled, A::Idle | A::Paused | A::Running | A::UserPaused) => update(D::Cancelled),
        (D::Cancelled, A::Cancelled) => done("Converged", "job is CANCELLED".into()),
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
        Some(at) if now >= sub(at, s.expiry_warning) => Plan {
            act: Act::Nothing,
            summary: Summary::new(
                Phase::Ready,
                "ExpiringSoon",
                format!(
                    "job is USER_PAUSED and Macie will cancel it (or its paused run) at {at}; set jobStatus RUNNING before then to keep it"
                ),
            ),
            step: None,
            recheck_at: None,
        },
        Some(at) => Plan {
            act: Act::Nothing,
            summary: Summary::new(Phase::Ready, "Converged", format!("job is USER_PAUSED until {at}")),
            step: None,
            recheck_at: Some(sub(at, s.expiry_warning)),
        },
        None => Plan {
            act: Act::Nothing,
            summary: Summary::new(Phase::Ready, "Converged", "job is USER_PAUSED".to_string()),
            step: None,
            recheck_at: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::macie_job::UserPausedDetails;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const ALL: [&str; 6] = ["RUNNING", "PAUSED", "CANCELLED", "COMPLETE", "IDLE", "USER_PAUSED"];
    const DESIRED: [DesiredJobStatus; 3] = [
        DesiredJobStatus::Running,
        DesiredJobStatus::UserPaused,
        DesiredJobStatus::Cancelled,
    ];

    fn settings() -> Settings {
        Settings {
            step_timeout: Duration::from_secs(300),
            expiry_warning: Duration::from_secs(7 * 86400),
        }
    }

    fn job(status: &str) -> ObservedJob {
        ObservedJob {
            job_id: "j1".into(),
            name: Some("n".into()),
            job_status: status.into(),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn run(desired: DesiredJobStatus, status: &str) -> Plan {
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
            Observation::SweepFailed(&denied),
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
            Observation::SweepFailed(&throttled),
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
        Step {
            job_id: "j1".into(),
            from: from.into(),
            to,
            requested_at: at,
            error: None,
        }
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
        assert_eq!(p.recheck_at, Some(t_call + SignedDuration::from_secs(300)));
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
        // Nothing shows within the timeout: the step stops blocking, and the plan may act again.
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
}
