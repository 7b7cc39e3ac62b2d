//! Who acts for a job that several MacieJobs name (pure): disagreeing declarations are a
//! conflict on each and nobody calls; of agreeing ones exactly one acts.

use k8s_openapi::jiff::Timestamp;

use super::plan::{Act, Plan, Reason};
use crate::api::DesiredJobStatus;

/// A MacieJob that names a job, as the ownership decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    pub namespace: String,
    pub name: String,
    pub desired: DesiredJobStatus,
    /// Creation time: the oldest agreeing declaration acts.
    pub created: Option<Timestamp>,
    /// It has a step in flight for the job.
    pub in_flight: bool,
    /// Its status reports a Conflict.
    pub shows_conflict: bool,
}

/// Who acts for a job that several MacieJobs name.
#[derive(Debug, Clone, PartialEq)]
pub enum Ownership {
    /// This resource acts (alone, or the oldest of those that agree).
    Acts,
    /// Another agreeing resource acts (or has a call in flight); this one only reports.
    Follows { by: String },
    /// The declarations disagree: nobody acts until they do.
    Conflict { message: String },
}

/// Decides who acts for one job: `me` and the other MacieJobs naming the same job in the same
/// region. Names of resources in other namespaces are never shown, only counted.
pub fn ownership(me: &Declaration, peers: &[Declaration]) -> Ownership {
    if peers.is_empty() {
        return Ownership::Acts;
    }
    let label = |d: &Declaration| {
        if d.namespace == me.namespace {
            d.name.clone()
        } else {
            "a MacieJob in another namespace".to_string()
        }
    };
    if peers.iter().any(|p| p.desired != me.desired) {
        let mut local: Vec<String> = peers
            .iter()
            .filter(|p| p.namespace == me.namespace)
            .map(|p| format!("{} ({})", p.name, p.desired.as_str()))
            .collect();
        local.sort();
        let elsewhere = peers.iter().filter(|p| p.namespace != me.namespace).count();
        let mut others = local.join(", ");
        if elsewhere > 0 {
            if !others.is_empty() {
                others.push_str(" and ");
            }
            others.push_str(&format!("{elsewhere} in other namespaces"));
        }
        return Ownership::Conflict {
            message: format!(
                "this MacieJob declares {} but other MacieJobs name the same job: {others}; nothing is changed until they agree",
                me.desired.as_str()
            ),
        };
    }
    if let Some(p) = peers.iter().find(|p| p.in_flight) {
        return Ownership::Follows { by: label(p) };
    }
    let key = |d: &Declaration| (d.created, d.namespace.clone(), d.name.clone());
    let owner = peers.iter().min_by_key(|p| key(p)).filter(|p| key(p) < key(me));
    match owner {
        Some(p) => Ownership::Follows { by: label(p) },
        None => Ownership::Acts,
    }
}

/// The peers to reconcile now because `own` (this resource's decision) starts or ends their
/// conflict: in a conflict, those not yet showing one; out of it, those still showing one.
pub fn peers_to_wake<'a>(own: &Ownership, peers: &'a [Declaration]) -> Vec<&'a Declaration> {
    let conflict = matches!(own, Ownership::Conflict { .. });
    peers.iter().filter(|p| p.shows_conflict != conflict).collect()
}

/// Applies the ownership decision to a plan.
pub fn owned(mut p: Plan, own: &Ownership) -> Plan {
    match own {
        Ownership::Acts => p,
        Ownership::Conflict { message } => {
            p.act = Act::Nothing;
            p.summary = Reason::Conflict.summary(message.clone());
            // Looked at again every sweep: a peer deleted meanwhile ends the conflict.
            p.after_next_sweep = true;
            p
        }
        Ownership::Follows { by } => {
            if let Act::Update { from, to, .. } = &p.act {
                p.summary = Reason::Transitioning.summary(format!(
                    "{from} -> {}: {by} declares the same status and acts for this job",
                    to.as_str()
                ));
                p.act = Act::Nothing;
                p.after_next_sweep = true;
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::Phase;
    use crate::job::plan::tests::{ALL, DESIRED, run};

    fn decl(ns: &str, name: &str, desired: DesiredJobStatus, created: i64) -> Declaration {
        Declaration {
            namespace: ns.into(),
            name: name.into(),
            desired,
            created: Some(Timestamp::from_second(created).unwrap()),
            in_flight: false,
            shows_conflict: false,
        }
    }

    #[test]
    fn peers_are_woken_when_a_conflict_starts_or_ends() {
        use DesiredJobStatus::*;
        let mut calm = decl("a", "calm", UserPaused, 1);
        let mut flagged = decl("a", "flagged", UserPaused, 2);
        flagged.shows_conflict = true;
        let peers = [calm.clone(), flagged.clone()];
        let names = |v: Vec<&Declaration>| v.into_iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        // Agreeing now: the one still showing a conflict is looked at.
        assert_eq!(names(peers_to_wake(&Ownership::Acts, &peers)), ["flagged"]);
        assert_eq!(
            names(peers_to_wake(&Ownership::Follows { by: "x".into() }, &peers)),
            ["flagged"]
        );
        // In conflict now: the one not showing it yet is.
        let conflict = Ownership::Conflict { message: "m".into() };
        assert_eq!(names(peers_to_wake(&conflict, &peers)), ["calm"]);
        calm.shows_conflict = true;
        flagged.shows_conflict = true;
        assert!(peers_to_wake(&conflict, &[calm, flagged]).is_empty(), "nothing to tell");
    }

    #[test]
    fn ownership_rows() {
        use DesiredJobStatus::*;
        let me = decl("a", "mine", UserPaused, 10);
        // Alone: acts.
        assert_eq!(ownership(&me, &[]), Ownership::Acts);
        // Agreeing, I am the oldest: acts; a younger peer follows me.
        let younger = decl("a", "young", UserPaused, 20);
        assert_eq!(ownership(&me, std::slice::from_ref(&younger)), Ownership::Acts);
        assert_eq!(
            ownership(&younger, std::slice::from_ref(&me)),
            Ownership::Follows { by: "mine".into() }
        );
        // Same age: the name breaks the tie, so exactly one acts.
        let twin = decl("a", "twin", UserPaused, 10);
        let acts = [
            ownership(&me, std::slice::from_ref(&twin)),
            ownership(&twin, std::slice::from_ref(&me)),
        ]
        .iter()
        .filter(|o| **o == Ownership::Acts)
        .count();
        assert_eq!(acts, 1);
        // An older peer in another namespace acts; its name is not shown.
        let foreign = decl("b", "secret-name", UserPaused, 1);
        let o = ownership(&me, std::slice::from_ref(&foreign));
        assert_eq!(
            o,
            Ownership::Follows {
                by: "a MacieJob in another namespace".into()
            }
        );
        // A peer with a call in flight: follow it, even if I am older.
        let mut busy = younger.clone();
        busy.in_flight = true;
        assert!(matches!(ownership(&me, &[busy]), Ownership::Follows { .. }));
        // Disagreeing: a conflict on both sides, naming local peers only.
        let other = decl("a", "other", Running, 30);
        let Ownership::Conflict { message } = ownership(&me, &[other.clone(), foreign.clone()]) else {
            panic!("conflict")
        };
        assert!(
            message.contains(": other (RUNNING) and 1 in other namespaces;"),
            "{message}"
        );
        assert!(!message.contains("secret-name"), "{message}");
        assert!(matches!(
            ownership(&other, std::slice::from_ref(&me)),
            Ownership::Conflict { .. }
        ));
        let Ownership::Conflict { message } = ownership(&decl("b", "x", Running, 1), &[me]) else {
            panic!("conflict")
        };
        assert!(!message.contains("mine"), "{message}");
        assert!(message.contains("same job: 1 in other namespaces;"), "{message}");
    }

    #[test]
    fn a_conflict_or_a_follower_never_calls() {
        for d in DESIRED {
            for a in ALL {
                let conflict = owned(run(d, a), &Ownership::Conflict { message: "m".into() });
                assert_eq!(conflict.act, Act::Nothing);
                assert_eq!(
                    (conflict.summary.phase, conflict.summary.reason.as_str()),
                    (Phase::Stalled, "Conflict")
                );
                let follower = owned(run(d, a), &Ownership::Follows { by: "x".into() });
                assert_eq!(follower.act, Act::Nothing);
                let owner = owned(run(d, a), &Ownership::Acts);
                assert_eq!(owner, run(d, a));
            }
        }
    }
}
