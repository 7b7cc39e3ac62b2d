//! kstatus-style conditions shared by both kinds: `Ready`, `Reconciling`, `Stalled`.
//!
//! Exactly one picture holds at a time: Ready=True (converged), Reconciling=True (work in
//! progress or waiting for Macie), or Stalled=True (needs a person). The other two are present
//! with status False, so `kubectl wait --for=condition=Ready` and Flux/Argo health checks work.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Which of the three conditions is True.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ready,
    Reconciling,
    Stalled,
}

/// The summary a controller computes: phase, a CamelCase reason and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub phase: Phase,
    pub reason: String,
    pub message: String,
}

impl Summary {
    pub fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Summary {
        Summary {
            phase,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Builds the three conditions for `summary`, keeping `lastTransitionTime` from `previous` when
/// a condition's status did not change.
pub fn conditions(
    summary: &Summary,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    [
        (READY, Phase::Ready),
        (RECONCILING, Phase::Reconciling),
        (STALLED, Phase::Stalled),
    ]
    .into_iter()
    .map(|(type_, phase)| {
        let status = if summary.phase == phase { "True" } else { "False" };
        let (reason, message) = if summary.phase == phase || type_ == READY {
            (summary.reason.clone(), summary.message.clone())
        } else {
            (summary.reason.clone(), String::new())
        };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time,
        }
    })
    .collect()
}

/// The condition of `type_` in `conds`, if any.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_condition_true_and_transition_times_kept() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let s = Summary::new(Phase::Reconciling, "Transitioning", "asked Macie to pause the job");
        let c0 = conditions(&s, Some(1), &[], t0);
        assert_eq!(c0.len(), 3);
        assert_eq!(find(&c0, RECONCILING).unwrap().status, "True");
        assert_eq!(find(&c0, READY).unwrap().status, "False");
        assert_eq!(find(&c0, STALLED).unwrap().status, "False");
        let s2 = Summary::new(Phase::Ready, "Converged", "job is USER_PAUSED");
        let c1 = conditions(&s2, Some(2), &c0, t1);
        assert_eq!(find(&c1, READY).unwrap().last_transition_time.0, t1);
        assert_eq!(
            find(&c1, STALLED).unwrap().last_transition_time.0,
            t0,
            "unchanged status keeps its time"
        );
        assert_eq!(find(&c1, READY).unwrap().observed_generation, Some(2));
    }
}
