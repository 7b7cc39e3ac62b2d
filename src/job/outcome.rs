//! What one UpdateClassificationJob call's result means (pure): the step it leaves, the
//! resource's summary, the outcome recorded in status, the Event, and when a refused call may be
//! tried again. Every kind of result has a row in the tests.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::plan::{Reason, Step, StepState, add, refused_message, transitioning};
use crate::api::conditions::Summary;
use crate::api::macie_job::TransitionOutcome;
use crate::macie::MacieError;

/// How long to wait before trying a refused call again: a base per kind of refusal, doubled
/// per attempt, capped, times `jitter` (0.5..=1.0, drawn by the caller).
pub fn retry_delay(reason: Reason, attempts: u32, jitter: f64) -> Duration {
    let (base, cap) = match reason {
        // Needs a person (IAM, SCPs): try again rarely.
        Reason::AccessDenied => (Duration::from_secs(60), Duration::from_secs(30 * 60)),
        _ => (Duration::from_secs(1), Duration::from_secs(5 * 60)),
    };
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    doubled.min(cap).mul_f64(jitter.clamp(0.5, 1.0))
}

/// What one UpdateClassificationJob call's result means: the step it leaves, the resource's
/// summary, and the outcome recorded in `status.lastTransition`. `step` is the write-ahead
/// step (state InFlight, no error); `previous_attempts` are the refusals in a row before it.
pub fn after_call(
    mut step: Step,
    result: Result<(), &MacieError>,
    previous_attempts: u32,
    now: Timestamp,
    jitter: f64,
) -> CallVerdict {
    let to = step.to.as_str();
    let from = step.from.clone();
    let refused = |reason: Reason, e: &MacieError, step: &mut Step| {
        let attempts = previous_attempts + 1;
        let retry_at = add(now, retry_delay(reason, attempts, jitter));
        step.state = StepState::Refused {
            reason,
            code: e.code().to_string(),
            message: e.message().to_string(),
            retry_at,
            attempts,
        };
        retry_at
    };
    match result {
        Ok(()) => CallVerdict {
            summary: Reason::Transitioning.summary(transitioning(&from, step.to)),
            outcome: TransitionOutcome::Pending,
            // The write-ahead status already says it, and the completed transition is
            // announced once (entering Converged): a flip costs the write-ahead, the confirming
            // status and one Event.
            event: CallEvent::None,
            step,
        },
        Err(e @ MacieError::Throttled { .. }) => {
            let retry_at = refused(Reason::Throttled, e, &mut step);
            CallVerdict {
                summary: Reason::Throttled.summary(format!(
                    "UpdateClassificationJob {from} -> {to} was throttled ({e}); next try at {retry_at}"
                )),
                outcome: TransitionOutcome::Failed,
                event: CallEvent::None,
                step,
            }
        }
        Err(e @ MacieError::AccessDenied { .. }) => {
            let retry_at = refused(Reason::AccessDenied, e, &mut step);
            let summary = Reason::AccessDenied.summary(refused_message(&step, e.code(), e.message(), retry_at));
            CallVerdict {
                summary,
                outcome: TransitionOutcome::Failed,
                event: CallEvent::Failed,
                step,
            }
        }
        Err(e @ MacieError::Other { .. }) => {
            let retry_at = refused(Reason::UpdateRejected, e, &mut step);
            let summary = Reason::UpdateRejected.summary(refused_message(&step, e.code(), e.message(), retry_at));
            CallVerdict {
                summary,
                outcome: TransitionOutcome::Failed,
                event: CallEvent::Failed,
                step,
            }
        }
        Err(e @ (MacieError::Rejected { .. } | MacieError::NotFound { .. })) => {
            // The job is not where the sweep showed it (moved or gone): the next sweep says.
            step.state = StepState::InFlight {
                error: Some(e.code().to_string()),
            };
            CallVerdict {
                summary: Reason::UpdateRejected.summary(format!(
                    "Macie rejected UpdateClassificationJob {from} -> {to}: {e}; the operator waits for a sweep to show the job's status before trying again"
                )),
                outcome: TransitionOutcome::Failed,
                event: CallEvent::Failed,
                step,
            }
        }
        Err(e @ MacieError::Uncertain { .. }) => {
            // It may have taken effect: never repeat it before a sweep shows the job.
            step.state = StepState::InFlight {
                error: Some(e.code().to_string()),
            };
            CallVerdict {
                summary: Reason::Transitioning.summary(format!(
                    "UpdateClassificationJob {from} -> {to} failed with {e}; it may have taken effect, so the operator waits for a sweep to show the job's status before trying again"
                )),
                outcome: TransitionOutcome::Pending,
                event: CallEvent::Failed,
                step,
            }
        }
    }
}

/// The verdict on one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallVerdict {
    pub step: Step,
    pub summary: Summary,
    pub outcome: TransitionOutcome,
    pub event: CallEvent,
}

/// The Event a call deserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// Warning `UpdateFailed` with the AWS error code.
    Failed,
    /// None (an accepted call: its completion is announced; throttling is routine; the
    /// condition says it).
    None,
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::api::DesiredJobStatus;
    use crate::api::conditions::Phase;
    use crate::job::plan::tests::{err, job, now, settings};
    use crate::job::plan::{Act, Observation, StepOutcome, plan};

    /// Every kind of call result: the resource's reason, the recorded outcome, the Event, and
    /// whether (and when) the step may be retried.
    #[test]
    fn every_call_outcome_row() {
        use StepOutcome as O;
        let t = now();
        let s = settings();
        // (result code or "ok", reason, lastTransition outcome, event, state after,
        //  outcome of a plan 10 s later with the job still unmoved)
        let rows: [(&str, &str, TransitionOutcome, CallEvent, &str, O); 8] = [
            (
                "ok",
                "Transitioning",
                TransitionOutcome::Pending,
                CallEvent::None,
                "in-flight",
                O::Waiting,
            ),
            (
                "ThrottlingException",
                "Throttled",
                TransitionOutcome::Failed,
                CallEvent::None,
                "refused",
                O::RetryDue,
            ),
            (
                "AccessDeniedException",
                "AccessDenied",
                TransitionOutcome::Failed,
                CallEvent::Failed,
                "refused",
                O::Waiting,
            ),
            (
                "ResourceNotFoundException",
                "UpdateRejected",
                TransitionOutcome::Failed,
                CallEvent::Failed,
                "in-flight",
                O::Waiting,
            ),
            (
                "ValidationException",
                "UpdateRejected",
                TransitionOutcome::Failed,
                CallEvent::Failed,
                "in-flight",
                O::Waiting,
            ),
            (
                "InternalServerException",
                "Transitioning",
                TransitionOutcome::Pending,
                CallEvent::Failed,
                "in-flight",
                O::Waiting,
            ),
            (
                "Timeout",
                "Transitioning",
                TransitionOutcome::Pending,
                CallEvent::Failed,
                "in-flight",
                O::Waiting,
            ),
            (
                "ConflictException",
                "UpdateRejected",
                TransitionOutcome::Failed,
                CallEvent::Failed,
                "refused",
                O::RetryDue,
            ),
        ];
        for (code, reason, outcome, event, state, later) in rows {
            let e = err(code);
            let result = if code == "ok" { Ok(()) } else { Err(&e) };
            let st = Step::new("j1", "RUNNING", DesiredJobStatus::UserPaused, t);
            let v = after_call(st, result, 0, t, 1.0);
            assert_eq!(v.summary.reason, reason, "{code}");
            assert_eq!(v.outcome, outcome, "{code}");
            assert_eq!(v.event, event, "{code}");
            let is_refused = matches!(v.step.state, StepState::Refused { .. });
            assert_eq!(is_refused, state == "refused", "{code}");
            if code != "ok" {
                assert!(v.summary.message.contains(code), "{code}: the AWS error code is shown");
            }
            // 10 s later, a sweep that started after the call still shows RUNNING.
            let running = job("RUNNING");
            let later_t = t + SignedDuration::from_secs(10);
            let p = plan(
                DesiredJobStatus::UserPaused,
                Observation::Found(&running),
                Some(later_t),
                Some(&v.step),
                later_t,
                &s,
            );
            assert_eq!(p.step, Some(later.clone()), "{code}");
            // Never a second call while the step blocks.
            if later == O::Waiting {
                assert_eq!(p.act, Act::Nothing, "{code}");
            }
        }
    }

    #[test]
    fn a_refused_call_is_retried_only_at_its_retry_time_with_growing_backoff() {
        let t = now();
        let s = settings();
        let denied = err("AccessDeniedException");
        let running = job("RUNNING");
        let mut st = Step::new("j1", "RUNNING", DesiredJobStatus::UserPaused, t);
        let mut last_delay = Duration::ZERO;
        for attempt in 1..=4u32 {
            let v = after_call(st.clone(), Err(&denied), attempt - 1, t, 1.0);
            let StepState::Refused { retry_at, attempts, .. } = v.step.state.clone() else {
                panic!("refused")
            };
            assert_eq!(attempts, attempt);
            let delay = t.duration_until(retry_at).unsigned_abs();
            assert!(delay > last_delay, "backoff grows: {delay:?} after {last_delay:?}");
            assert!(
                delay >= Duration::from_secs(60),
                "access denied waits at least a minute"
            );
            last_delay = delay;
            // Any number of reconciles before the retry time (status writes, sweeps): no call.
            let before = retry_at - SignedDuration::from_secs(1);
            let p = plan(
                DesiredJobStatus::UserPaused,
                Observation::Found(&running),
                Some(before),
                Some(&v.step),
                before,
                &s,
            );
            assert_eq!(p.act, Act::Nothing);
            assert_eq!(
                (p.summary.phase, p.summary.reason.as_str()),
                (Phase::Stalled, "AccessDenied")
            );
            assert_eq!(p.recheck_at, Some(retry_at));
            // At the retry time: one call.
            let p = plan(
                DesiredJobStatus::UserPaused,
                Observation::Found(&running),
                Some(retry_at),
                Some(&v.step),
                retry_at,
                &s,
            );
            assert_eq!(p.step, Some(StepOutcome::RetryDue));
            assert!(matches!(p.act, Act::Update { .. }));
            st = Step::new("j1", "RUNNING", DesiredJobStatus::UserPaused, retry_at);
        }
        // A new desired status is a new request: not held by the old refusal.
        let v = after_call(st, Err(&denied), 0, t, 1.0);
        let p = plan(
            DesiredJobStatus::Cancelled,
            Observation::Found(&running),
            Some(t),
            Some(&v.step),
            t,
            &s,
        );
        assert!(matches!(
            p.act,
            Act::Update {
                to: DesiredJobStatus::Cancelled,
                ..
            }
        ));
    }

    #[test]
    fn retry_delay_is_jittered_and_capped() {
        assert_eq!(retry_delay(Reason::Throttled, 1, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(Reason::Throttled, 3, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(Reason::Throttled, 3, 0.5), Duration::from_secs(2));
        assert_eq!(retry_delay(Reason::Throttled, 40, 1.0), Duration::from_secs(300));
        assert_eq!(retry_delay(Reason::AccessDenied, 40, 1.0), Duration::from_secs(1800));
        assert_eq!(
            retry_delay(Reason::AccessDenied, 1, 0.1),
            Duration::from_secs(30),
            "jitter is clamped"
        );
    }
}
