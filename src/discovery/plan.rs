//! Pure steps of the MacieDiscovery controller: the desired set and its conflicts, what to
//! send, batching, and each resource's status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::account::policy::{Pause, Refusal};
use crate::api::DiscoveryStatus;
use crate::api::conditions::{MESSAGE_MAX, Phase, Reason, Summary};
use crate::api::macie_discovery::{AccountStatus, Counts, ErrorCodeStatus};
use crate::macie::MacieError;
use crate::runtime::truncate;

/// What one resource declares: its key (`namespace/name`), which version of it, its accounts,
/// and whether it acts on them.
#[derive(Debug, Clone)]
pub struct Declared {
    pub resource: String,
    pub taken: TakenIn,
    pub accounts: Vec<(String, DiscoveryStatus)>,
    /// False while the resource is paused: its accounts are observed, never sent, and it takes
    /// no part in conflicts.
    pub acts: bool,
}

/// Which version of a resource an engine has taken in: a status may report on that generation
/// only (a deleted and re-created resource has a new uid and starts again at generation 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenIn {
    pub uid: String,
    pub generation: i64,
    /// The resource's own pause annotation (a change of it does not change the generation, but
    /// changes what the engine may send).
    pub paused: bool,
}

/// The generation a resource's status may report: the one the engine took in, when that is the
/// object at hand (same uid and generation). None: the engine has not taken this version in yet,
/// so nothing is reported on it (no stale Ready or Conflict for a new generation).
pub fn taken_generation(
    taken: &BTreeMap<String, TakenIn>,
    resource: &str,
    uid: Option<&str>,
    generation: Option<i64>,
) -> Option<i64> {
    taken
        .get(resource)
        .filter(|t| Some(t.uid.as_str()) == uid && Some(t.generation) == generation)
        .map(|t| t.generation)
}

/// Every declared account of a region: those all acting declarers agree on, the conflicts, and
/// those only paused declarers name (observed, never sent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredSet {
    pub wanted: BTreeMap<String, DiscoveryStatus>,
    /// Accounts declared with different statuses, with every (resource, status) declaring them.
    pub conflicts: BTreeMap<String, Vec<(String, DiscoveryStatus)>>,
    /// Accounts only declarations that do not act name.
    pub observed_only: BTreeSet<String>,
}

impl DesiredSet {
    /// Every declared account id (wanted, conflicting and observed only), sorted.
    pub fn account_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = (self.wanted.keys())
            .chain(self.conflicts.keys())
            .chain(&self.observed_only)
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

pub fn desired_set(declared: &[Declared]) -> DesiredSet {
    let mut by_account: BTreeMap<&str, Vec<(String, DiscoveryStatus)>> = BTreeMap::new();
    for d in declared.iter().filter(|d| d.acts) {
        for (id, status) in &d.accounts {
            by_account.entry(id).or_default().push((d.resource.clone(), *status));
        }
    }
    let mut set = DesiredSet::default();
    for d in declared.iter().filter(|d| !d.acts) {
        let quiet = d
            .accounts
            .iter()
            .filter(|(id, _)| !by_account.contains_key(id.as_str()));
        set.observed_only.extend(quiet.map(|(id, _)| id.clone()));
    }
    for (id, mut decl) in by_account {
        let first = decl[0].1;
        if decl.iter().all(|(_, s)| *s == first) {
            set.wanted.insert(id.to_string(), first);
        } else {
            decl.sort_by(|a, b| a.0.cmp(&b.0));
            set.conflicts.insert(id.to_string(), decl);
        }
    }
    set
}

/// A BatchUpdate the operator made (or may have made) for an account, until an observation
/// settles it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The status asked for.
    pub status: DiscoveryStatus,
    /// The status observed when it was sent (None: Macie did not list the account).
    pub from: Option<DiscoveryStatus>,
    /// When the call started.
    pub at: Timestamp,
}

/// A per-account error from BatchUpdate (or a failed call covering the account).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountError {
    /// The status that was asked for.
    pub status: DiscoveryStatus,
    pub code: String,
    pub message: String,
    pub at: Timestamp,
}

/// What the operator knows of one account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountState {
    /// Status as last observed; None when Macie did not list the account.
    pub observed: Option<DiscoveryStatus>,
    /// Start of the observation behind `observed`; None until the account was observed once.
    pub observed_at: Option<Timestamp>,
    pub sent: Option<Sent>,
    pub error: Option<AccountError>,
}

impl AccountState {
    /// Whether a resource's status would show `self` and `other` alike (what an observation
    /// time or a send in flight change is not shown).
    pub fn shows_like(&self, other: &AccountState) -> bool {
        self.observed == other.observed
            && self.observed_at.is_some() == other.observed_at.is_some()
            && self.error.as_ref().map(|e| (e.status, &e.code, &e.message))
                == other.error.as_ref().map(|e| (e.status, &e.code, &e.message))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A sent account is not sent again until an observation that started after the send shows
    /// it changed, or one that started this long after the send still shows it unchanged.
    pub step_timeout: Duration,
    /// Accounts that failed (ACCOUNT_PAUSED, ACCOUNT_NOT_FOUND, ...) are retried this often.
    pub error_retry: Duration,
    /// Most accounts per BatchUpdateAutomatedDiscoveryAccounts call.
    pub batch_size: usize,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    since.duration_until(now).unsigned_abs()
}

/// How an observation settles a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// No observation has settled it yet: not to be sent again.
    InFlight,
    /// An observation that started after the send shows the account changed.
    Changed,
    /// An observation that started after the step timeout ran out still shows it unchanged:
    /// the send did not take; it may be sent again.
    DidNotTake,
}

/// What the latest observation says of the account's send, if any. Only an observation that
/// started after the send counts, and "unchanged" only from one that started after the step
/// timeout: never wall clock alone (Macie may show an account's old status for a while after a
/// BatchUpdate).
pub fn settled(st: &AccountState, s: &Settings) -> Option<Settled> {
    let sent = st.sent.as_ref()?;
    let Some(seen_at) = st.observed_at.filter(|at| *at > sent.at) else {
        return Some(Settled::InFlight);
    };
    Some(if st.observed != sent.from {
        Settled::Changed
    } else if elapsed(sent.at, seen_at) >= s.step_timeout {
        Settled::DidNotTake
    } else {
        Settled::InFlight
    })
}

/// After an observation: forgets the send it settled.
pub fn settle(st: &mut AccountState, s: &Settings) {
    if matches!(settled(st, s), Some(Settled::Changed | Settled::DidNotTake)) {
        st.sent = None;
    }
}

/// Accounts to send now, sorted by id: agreed on, observed at least once, not in the desired
/// status, with no send in flight, and not blocked by a recent error for the same status.
pub fn to_send(
    desired: &DesiredSet,
    state: &HashMap<String, AccountState>,
    now: Timestamp,
    s: &Settings,
) -> Vec<(String, DiscoveryStatus)> {
    let mut out = Vec::new();
    for (id, want) in &desired.wanted {
        let Some(st) = state.get(id) else { continue };
        if st.observed_at.is_none() || st.observed == Some(*want) {
            continue;
        }
        if settled(st, s) == Some(Settled::InFlight) {
            continue;
        }
        if let Some(err) = &st.error
            && err.status == *want
            && elapsed(err.at, now) < s.error_retry
        {
            continue;
        }
        out.push((id.clone(), *want));
    }
    out
}

/// Splits the accounts to send into calls of at most `size` accounts.
pub fn batches(accounts: &[(String, DiscoveryStatus)], size: usize) -> Vec<Vec<(String, DiscoveryStatus)>> {
    accounts.chunks(size.max(1)).map(<[_]>::to_vec).collect()
}

/// The resources whose declaration is not the newest the watch delivered (`newest`): an older
/// generation, or another incarnation (a deleted resource of the same name). The cache went back
/// (a relist from a lagging API server); nothing is decided or sent from it until the newer
/// copy is back.
pub fn behind(declared: &[Declared], newest: &BTreeMap<String, TakenIn>) -> Vec<String> {
    declared
        .iter()
        .filter(|d| {
            newest
                .get(&d.resource)
                .is_some_and(|n| n.uid != d.taken.uid || n.generation > d.taken.generation)
        })
        .map(|d| d.resource.clone())
        .collect()
}

/// The rows of `batch` that the declarations as they are now (`declared`: admitted resources,
/// without the rows their account's rules refuse) still ask for, with the same status: the
/// rules decided again right before the write, and no other declaration disagreeing (a rule
/// widened or a resource added meanwhile makes a conflict). The other rows are held back.
pub fn still_declared(batch: Vec<(String, DiscoveryStatus)>, declared: &[Declared]) -> Vec<(String, DiscoveryStatus)> {
    let now = desired_set(declared);
    batch
        .into_iter()
        .filter(|(id, status)| now.wanted.get(id) == Some(status))
        .collect()
}

/// What a paused resource reports (pure): `ReconcilePaused`, Ready when every account is in its
/// declared status, else in the phase of what it would report (Reconciling for work held
/// back), then that report's message.
pub fn paused_summary(pause: Pause, account: &str, counts: &Counts, report: &Summary) -> Summary {
    let phase = match report.phase {
        _ if counts.converged == counts.desired => Phase::Ready,
        Phase::Stalled => Phase::Stalled,
        _ => Phase::Reconciling,
    };
    Summary::new(
        phase,
        Reason::ReconcilePaused.as_str(),
        format!("{}; {}", pause.message(account), report.message),
    )
}

/// What an Observe declaration reports (pure): Drifted, naming the accounts Macie shows in
/// another status than declared (the first ten), else the report as it is (Converged once all
/// are as declared, Pending while some are not observed yet, an API error).
pub fn observed_summary(rows: &[AccountStatus], report: &Summary) -> Summary {
    let drifted: Vec<&AccountStatus> = rows
        .iter()
        .filter(|r| r.observed.as_ref().is_some_and(|o| *o != r.desired))
        .collect();
    if drifted.is_empty() {
        return report.clone();
    }
    let mut named: Vec<String> = (drifted.iter().take(NAMED_MAX))
        .map(|r| {
            format!(
                "{} is {} (declared {})",
                r.account_id,
                r.observed.as_deref().unwrap_or_default(),
                r.desired
            )
        })
        .collect();
    if drifted.len() > NAMED_MAX {
        named.push(format!("and {} more", drifted.len() - NAMED_MAX));
    }
    Reason::Drifted.summary(format!(
        "{} of {} account(s) differ from their declared status (managementPolicy Observe: nothing is sent): {}",
        drifted.len(),
        rows.len(),
        named.join(", ")
    ))
}

/// Most other resources a conflict message names (then "and N more").
const NAMED_MAX: usize = 10;

fn name_some<'a>(names: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = names.len();
    let mut out: Vec<&str> = names.take(NAMED_MAX).map(String::as_str).collect();
    let more = format!("and {} more", n.saturating_sub(NAMED_MAX));
    if n > NAMED_MAX {
        out.push(&more);
    }
    out.join(", ")
}

/// The resources `resource` conflicts with, as its status may show them: names of its own
/// namespace (some of them), and only a count of those in other namespaces (a tenant must not
/// learn another's resource names).
fn name_peers<'a>(resource: &str, peers: impl Iterator<Item = &'a String>) -> String {
    let ns = resource.split_once('/').map_or("", |(ns, _)| ns);
    let mut local: Vec<String> = Vec::new();
    let mut elsewhere = 0usize;
    for p in peers {
        match p.split_once('/') {
            Some((pns, name)) if pns == ns => local.push(name.to_string()),
            _ => elsewhere += 1,
        }
    }
    let mut out = if local.is_empty() {
        String::new()
    } else {
        name_some(local.iter())
    };
    if elsewhere > 0 {
        if !out.is_empty() {
            out.push_str(" and ");
        }
        out.push_str(&format!("{elsewhere} MacieDiscovery resource(s) in other namespaces"));
    }
    out
}

fn explain(code: &str, message: &str, retry: Duration) -> String {
    let every = humantime::format_duration(retry);
    match code {
        "ACCOUNT_PAUSED" => format!("Macie is suspended for the account; resume Macie for it (retried every {every})"),
        "ACCOUNT_NOT_FOUND" => {
            format!("not a member account of this Macie administrator account in the region (retried every {every})")
        }
        other if message.is_empty() => {
            format!("BatchUpdateAutomatedDiscoveryAccounts failed with {other} (retried every {every})")
        }
        _ => format!("BatchUpdateAutomatedDiscoveryAccounts failed: {message} (retried every {every})"),
    }
}

/// A resource's status, as the engine's view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    pub accounts: Vec<AccountStatus>,
    pub error_codes: Vec<ErrorCodeStatus>,
    pub counts: Counts,
    pub summary: Summary,
}

/// One resource's per-account rows (sorted by account id), its error codes explained once,
/// counts and summary. Rows in `refused` (refused by the MacieAccount's rules) show the
/// refusal and nothing observed.
pub fn resource_status(
    resource: &str,
    accounts: &[(String, DiscoveryStatus)],
    refused: &BTreeMap<String, Refusal>,
    desired: &DesiredSet,
    state: &HashMap<String, AccountState>,
    api_error: Option<&MacieError>,
    s: &Settings,
) -> ResourceStatus {
    let mut rows = Vec::with_capacity(accounts.len());
    let (mut converged, mut failed) = (0i64, 0i64);
    let mut conflicting_with: BTreeMap<String, usize> = BTreeMap::new();
    // code -> (explanation, count)
    let mut codes: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut refusals: BTreeSet<String> = BTreeSet::new();
    for (id, want) in accounts {
        if let Some(r) = refused.get(id) {
            refusals.insert(r.message());
            rows.push(AccountStatus {
                account_id: id.clone(),
                desired: want.as_str().to_string(),
                observed: None,
                error_code: Some(NOT_PERMITTED.into()),
            });
            codes.entry(NOT_PERMITTED.into()).or_default().1 += 1;
            failed += 1;
            continue;
        }
        let st = state.get(id);
        let observed = st.and_then(|st| st.observed);
        let mut row = AccountStatus {
            account_id: id.clone(),
            desired: want.as_str().to_string(),
            observed: observed.map(|o| o.as_str().to_string()),
            error_code: None,
        };
        if let Some(decl) = desired.conflicts.get(id) {
            for o in decl.iter().filter(|(r, _)| r != resource) {
                *conflicting_with.entry(o.0.clone()).or_default() += 1;
            }
            row.error_code = Some(CONFLICT.into());
            codes.entry(CONFLICT.into()).or_default().1 += 1;
            failed += 1;
        } else if let Some(err) = st
            .and_then(|st| st.error.as_ref())
            .filter(|e| e.status == *want && observed != Some(*want))
        {
            let code = truncate(&err.code, ERROR_CODE_MAX);
            row.error_code = Some(code.clone());
            let e = codes
                .entry(code)
                .or_insert_with(|| (explain(&err.code, &err.message, s.error_retry), 0));
            e.1 += 1;
            failed += 1;
        } else if observed == Some(*want) {
            converged += 1;
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    if let Some(c) = codes.get_mut(NOT_PERMITTED) {
        c.0 = format!(
            "refused without any call: {}",
            refusals.iter().cloned().collect::<Vec<_>>().join("; ")
        );
    }
    if let Some(c) = codes.get_mut(CONFLICT) {
        c.0 = format!(
            "declared with another status by {}; not changed until the declarations agree",
            name_peers(resource, conflicting_with.keys())
        );
    }
    let mut error_codes: Vec<ErrorCodeStatus> = codes
        .into_iter()
        .map(|(code, (message, count))| ErrorCodeStatus {
            code,
            message: truncate(&message, ERROR_MESSAGE_MAX),
            count,
        })
        .collect();
    // The schema keeps the most frequent codes; every row still carries its own.
    error_codes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
    error_codes.truncate(ERROR_CODES_MAX);
    let total = accounts.len() as i64;
    let counts = Counts {
        desired: total,
        converged,
        failed,
    };
    let summary = match api_error {
        Some(e @ MacieError::AccessDenied { .. }) => Reason::AccessDenied.summary(format!(
                "{e}. Check that Macie is enabled and the operator's IAM role allows macie2:ListAutomatedDiscoveryAccounts and macie2:BatchUpdateAutomatedDiscoveryAccounts"
            ),
        ),
        _ if !refusals.is_empty() => Reason::NotPermitted.summary(format!(
            "{} of {total} account(s) refused: {}; the other accounts proceed",
            refused.len(),
            refusals.iter().cloned().collect::<Vec<_>>().join("; ")
        )),
        _ if !conflicting_with.is_empty() => Reason::Conflict.summary(format!(
                "{} account(s) are declared with another status by {}; they are not changed until the declarations agree",
                conflicting_with.values().sum::<usize>(),
                name_peers(resource, conflicting_with.keys())
            ),
        ),
        _ if failed > 0 => Reason::AccountErrors.summary(format!(
                "{failed} of {total} account(s) failed: {}; see status.errorCodes and status.accounts",
                error_codes
                    .iter()
                    .map(|c| format!("{} {}", c.count, c.code))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(e @ MacieError::Throttled { .. }) => {
            Reason::Throttled.summary(format!("{e}; retrying with backoff"))
        }
        Some(e) => Reason::MacieError.summary(format!("{e}; retrying")),
        None if converged < total => Reason::Pending.summary(format!("{converged} of {total} account(s) in their desired status"),
        ),
        None => Reason::Converged.summary(format!("all {total} account(s) in their desired status"),
        ),
    };
    let summary = Summary {
        message: truncate(&summary.message, MESSAGE_MAX),
        ..summary
    };
    ResourceStatus {
        accounts: rows,
        error_codes,
        counts,
        summary,
    }
}

/// The errorCode of an account the MacieAccount's rules refuse.
pub const NOT_PERMITTED: &str = "NotPermitted";
/// The errorCode of an account declared with different statuses by several resources.
pub const CONFLICT: &str = "Conflict";
/// Longest explanation of an error code (the schema's maxLength).
const ERROR_MESSAGE_MAX: usize = 4096;
/// The longest error code a row keeps, and the most codes `status.errorCodes` lists (the
/// schema's bounds).
const ERROR_CODE_MAX: usize = 64;
const ERROR_CODES_MAX: usize = 32;

#[cfg(test)]
mod tests {

    #[test]
    fn an_api_error_says_what_macie_said_or_its_code() {
        let hour = Duration::from_secs(3600);
        let said = explain("ValidationException", "accountIds is too long", hour);
        assert!(
            said.contains("failed: accountIds is too long (retried every 1h)"),
            "{said}"
        );
        let silent = explain("InternalServerException", "", hour);
        assert!(silent.contains("failed with InternalServerException"), "{silent}");
    }

    #[test]
    fn a_conflict_names_ten_resources_then_counts_the_rest() {
        let names = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        assert_eq!(
            name_some(names(10).iter()),
            names(10).join(", "),
            "ten: all named, no count"
        );
        assert_eq!(
            name_some(names(12).iter()),
            format!("{}, and 2 more", names(10).join(", "))
        );
    }
    use super::*;
    use DiscoveryStatus::{Disabled as D, Enabled as E};

    fn decl(resource: &str, accounts: &[(&str, DiscoveryStatus)]) -> Declared {
        Declared {
            resource: resource.into(),
            taken: TakenIn {
                uid: format!("uid-{resource}"),
                generation: 1,
                ..Default::default()
            },
            accounts: accounts.iter().map(|(a, s)| (a.to_string(), *s)).collect(),
            acts: true,
        }
    }

    fn settings() -> Settings {
        Settings {
            step_timeout: Duration::from_secs(300),
            error_retry: Duration::from_secs(600),
            batch_size: 2,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn observed(status: Option<DiscoveryStatus>, at: i64) -> AccountState {
        AccountState {
            observed: status,
            observed_at: Some(t(at)),
            ..Default::default()
        }
    }

    #[test]
    fn agreement_is_wanted_and_disagreement_is_a_conflict_naming_both() {
        let set = desired_set(&[
            decl("ns/a", &[("111111111111", E), ("222222222222", E)]),
            decl("ns/b", &[("222222222222", D), ("333333333333", D)]),
            decl("ns/c", &[("111111111111", E)]),
        ]);
        assert_eq!(
            set.wanted.get("111111111111"),
            Some(&E),
            "same status from two resources is fine"
        );
        assert_eq!(set.wanted.get("333333333333"), Some(&D));
        assert_eq!(
            set.conflicts.get("222222222222").unwrap(),
            &vec![("ns/a".to_string(), E), ("ns/b".to_string(), D)]
        );
        assert_eq!(set.account_ids().len(), 3);
    }

    #[test]
    fn a_status_reports_only_the_generation_the_engine_took_in() {
        let taken = BTreeMap::from([(
            "ns/a".to_string(),
            TakenIn {
                uid: "u1".into(),
                generation: 2,
                ..Default::default()
            },
        )]);
        assert_eq!(taken_generation(&taken, "ns/a", Some("u1"), Some(2)), Some(2));
        assert_eq!(
            taken_generation(&taken, "ns/a", Some("u1"), Some(3)),
            None,
            "a newer spec the engine has not taken in"
        );
        assert_eq!(
            taken_generation(&taken, "ns/a", Some("u2"), Some(2)),
            None,
            "re-created under the same name"
        );
        assert_eq!(taken_generation(&taken, "ns/b", Some("u1"), Some(2)), None);
    }

    /// One row of the `to_send` table: the account is declared ENABLED.
    struct Case {
        what: &'static str,
        /// (status, start of the observation) or None: never observed.
        seen: Option<(Option<DiscoveryStatus>, i64)>,
        /// (status asked for, status observed when sent, when).
        sent: Option<(DiscoveryStatus, Option<DiscoveryStatus>, i64)>,
        /// (status asked for, when) of a per-account error.
        error: Option<(DiscoveryStatus, i64)>,
        now: i64,
        send: bool,
    }

    #[test]
    fn to_send_table() {
        let cases = [
            Case {
                what: "observed DISABLED",
                seen: Some((Some(D), 0)),
                sent: None,
                error: None,
                now: 10,
                send: true,
            },
            Case {
                what: "already ENABLED",
                seen: Some((Some(E), 0)),
                sent: None,
                error: None,
                now: 10,
                send: false,
            },
            Case {
                what: "never observed",
                seen: None,
                sent: None,
                error: None,
                now: 10,
                send: false,
            },
            Case {
                what: "not listed by Macie (it answers ACCOUNT_NOT_FOUND)",
                seen: Some((None, 0)),
                sent: None,
                error: None,
                now: 10,
                send: true,
            },
            Case {
                what: "sent, no observation since",
                seen: Some((Some(D), 0)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 10,
                send: false,
            },
            Case {
                what: "sent, an observation since still shows the old status (visibility lag)",
                seen: Some((Some(D), 6)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 10,
                send: false,
            },
            Case {
                what: "sent, unchanged and the step timeout long past on the wall clock only",
                seen: Some((Some(D), 6)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 100_000,
                send: false,
            },
            Case {
                what: "sent, an observation that started just before the deadline shows it unchanged",
                seen: Some((Some(D), 304)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 400,
                send: false,
            },
            Case {
                what: "sent, an observation that started after the deadline shows it unchanged",
                seen: Some((Some(D), 305)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 400,
                send: true,
            },
            Case {
                what: "sent, then the account vanished from Macie (changed)",
                seen: Some((None, 6)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 10,
                send: true,
            },
            Case {
                what: "sent and took",
                seen: Some((Some(E), 6)),
                sent: Some((E, Some(D), 5)),
                error: None,
                now: 10,
                send: false,
            },
            Case {
                what: "an older DISABLED send took, the declaration is now ENABLED",
                seen: Some((Some(D), 6)),
                sent: Some((D, Some(E), 5)),
                error: None,
                now: 10,
                send: true,
            },
            Case {
                what: "recent error for ENABLED",
                seen: Some((Some(D), 0)),
                sent: None,
                error: Some((E, 5)),
                now: 10,
                send: false,
            },
            Case {
                what: "old error for ENABLED: retried",
                seen: Some((Some(D), 0)),
                sent: None,
                error: Some((E, -1000)),
                now: 10,
                send: true,
            },
            Case {
                what: "recent error for another status",
                seen: Some((Some(D), 0)),
                sent: None,
                error: Some((D, 5)),
                now: 10,
                send: true,
            },
        ];
        let set = desired_set(&[decl("ns/a", &[("000000000001", E)])]);
        for c in cases {
            let mut state = HashMap::new();
            let mut st = AccountState::default();
            if let Some((status, at)) = c.seen {
                st.observed = status;
                st.observed_at = Some(t(at));
            }
            st.sent = c.sent.map(|(status, from, at)| Sent {
                status,
                from,
                at: t(at),
            });
            st.error = c.error.map(|(status, at)| AccountError {
                status,
                code: "ACCOUNT_PAUSED".into(),
                message: String::new(),
                at: t(at),
            });
            if c.seen.is_some() || c.sent.is_some() {
                state.insert("000000000001".to_string(), st);
            }
            let sends = to_send(&set, &state, t(c.now), &settings());
            assert_eq!(!sends.is_empty(), c.send, "{}", c.what);
            if c.send {
                assert_eq!(sends, [("000000000001".to_string(), E)], "{}", c.what);
            }
        }
    }

    #[test]
    fn settle_forgets_a_send_only_when_an_observation_settles_it() {
        let sent = Sent {
            status: E,
            from: Some(D),
            at: t(5),
        };
        // An observation that started with the send cannot show it, whatever it shows.
        let mut st = observed(Some(E), 5);
        st.sent = Some(sent.clone());
        assert_eq!(settled(&st, &settings()), Some(Settled::InFlight));
        let mut st = observed(Some(D), 6);
        st.sent = Some(sent.clone());
        settle(&mut st, &settings());
        assert_eq!(st.sent.as_ref(), Some(&sent), "lagging observation: still in flight");
        st.observed = Some(E);
        settle(&mut st, &settings());
        assert_eq!(st.sent, None, "the change showed up");
        // Drift after the send settled: a plain difference, sent again at once.
        st.observed = Some(D);
        st.observed_at = Some(t(20));
        let set = desired_set(&[decl("ns/a", &[("000000000001", E)])]);
        let state = HashMap::from([("000000000001".to_string(), st)]);
        assert_eq!(to_send(&set, &state, t(21), &settings()).len(), 1);
        let mut st = observed(Some(D), 305);
        st.sent = Some(sent);
        assert_eq!(settled(&st, &settings()), Some(Settled::DidNotTake));
        settle(&mut st, &settings());
        assert_eq!(st.sent, None);
    }

    #[test]
    fn conflicting_accounts_are_never_sent() {
        let set = desired_set(&[
            decl("ns/a", &[("000000000001", E)]),
            decl("ns/b", &[("000000000001", D)]),
        ]);
        let mut state = HashMap::new();
        state.insert("000000000001".into(), observed(Some(D), 0));
        assert!(to_send(&set, &state, t(10), &settings()).is_empty());
    }

    #[test]
    fn a_paused_declaration_is_observed_never_sent_and_in_no_conflict() {
        let paused = |r: &str, accounts: &[(&str, DiscoveryStatus)]| Declared {
            acts: false,
            ..decl(r, accounts)
        };
        let (one, two) = ("000000000001", "000000000002");
        let set = desired_set(&[decl("ns/a", &[(one, E)]), paused("ns/b", &[(one, D), (two, E)])]);
        assert_eq!(
            set.wanted,
            [(one.to_string(), E)].into(),
            "the acting declaration alone"
        );
        assert!(set.conflicts.is_empty(), "no conflict with a paused declaration");
        assert_eq!(set.observed_only, [two.to_string()].into());
        assert_eq!(
            set.account_ids(),
            vec![one.to_string(), two.to_string()],
            "both observed"
        );
        let state: HashMap<String, AccountState> = [
            (one.to_string(), observed(Some(D), 0)),
            (two.to_string(), observed(Some(D), 0)),
        ]
        .into();
        assert_eq!(to_send(&set, &state, t(10), &settings()), vec![(one.to_string(), E)]);
        // Paused right before the write: its rows are held back.
        let batch = vec![(one.to_string(), E)];
        assert!(still_declared(batch, &[paused("ns/a", &[(one, E)])]).is_empty());
        let counts = Counts {
            desired: 2,
            converged: 1,
            failed: 0,
        };
        let held = paused_summary(Pause::Resource, "prod", &counts, &Reason::Pending.summary("1 of 2"));
        assert_eq!(
            (held.phase, held.reason.as_str()),
            (Phase::Reconciling, "ReconcilePaused")
        );
        assert!(held.message.ends_with("; 1 of 2"), "{}", held.message);
        let all = Counts { converged: 2, ..counts };
        assert_eq!(
            paused_summary(Pause::Account, "prod", &all, &Reason::Converged.summary("2 of 2")).phase,
            Phase::Ready
        );
    }

    #[test]
    fn a_batch_keeps_only_the_rows_still_declared_and_allowed() {
        let a = "000000000001".to_string();
        let b = "000000000002".to_string();
        let c = "000000000003".to_string();
        let batch = vec![(a.clone(), E), (b.clone(), D), (c.clone(), E)];
        // (what, declarations now, rows sent)
        type Row<'a> = (&'a str, Vec<Declared>, Vec<(String, DiscoveryStatus)>);
        let rows: Vec<Row> = vec![
            (
                "nothing changed",
                vec![
                    decl("ns/x", &[("000000000001", E), ("000000000002", D)]),
                    decl("ns/y", &[("000000000003", E)]),
                ],
                batch.clone(),
            ),
            (
                "a rule narrowed: the row left the declaration",
                vec![
                    decl("ns/x", &[("000000000001", E)]),
                    decl("ns/y", &[("000000000003", E)]),
                ],
                vec![(a.clone(), E), (c.clone(), E)],
            ),
            (
                "the resource went (or its account stopped admitting it)",
                vec![decl("ns/x", &[("000000000001", E), ("000000000002", D)])],
                vec![(a.clone(), E), (b.clone(), D)],
            ),
            (
                "the declared status changed",
                vec![
                    decl("ns/x", &[("000000000001", D), ("000000000002", D)]),
                    decl("ns/y", &[("000000000003", E)]),
                ],
                vec![(b.clone(), D), (c.clone(), E)],
            ),
            ("nothing declared", vec![], vec![]),
            (
                "another declaration now disagrees (a rule widened, a resource added)",
                vec![
                    decl("ns/x", &[("000000000001", E), ("000000000002", D)]),
                    decl("ns/y", &[("000000000003", E)]),
                    decl("ns/z", &[("000000000001", D)]),
                ],
                vec![(b.clone(), D), (c.clone(), E)],
            ),
        ];
        for (what, declared, want) in rows {
            assert_eq!(still_declared(batch.clone(), &declared), want, "{what}");
        }
    }

    #[test]
    fn a_cache_older_than_the_watch_delivered_is_behind() {
        let newest = BTreeMap::from([
            (
                "ns/a".to_string(),
                TakenIn {
                    uid: "uid-ns/a".into(),
                    generation: 2,
                    ..Default::default()
                },
            ),
            (
                "ns/b".to_string(),
                TakenIn {
                    uid: "uid-ns/b".into(),
                    generation: 1,
                    ..Default::default()
                },
            ),
        ]);
        let older = |r: &str, uid: &str, generation| Declared {
            taken: TakenIn {
                uid: uid.into(),
                generation,
                ..Default::default()
            },
            ..decl(r, &[])
        };
        // (case, declarations, behind)
        let rows: [(&str, Vec<Declared>, &[&str]); 4] = [
            ("the newest", vec![older("ns/a", "uid-ns/a", 2), decl("ns/b", &[])], &[]),
            ("an older generation", vec![older("ns/a", "uid-ns/a", 1)], &["ns/a"]),
            ("another incarnation", vec![older("ns/b", "old", 3)], &["ns/b"]),
            ("not delivered yet (nothing to compare)", vec![decl("ns/c", &[])], &[]),
        ];
        for (case, declared, want) in rows {
            assert_eq!(behind(&declared, &newest), want, "{case}");
        }
    }

    #[test]
    fn batches_hold_at_most_the_batch_size() {
        let accounts: Vec<_> = (0..5).map(|i| (format!("{i:012}"), E)).collect();
        let b = batches(&accounts, 2);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(batches(&accounts, 100).len(), 1);
    }

    #[test]
    fn what_a_status_shows_ignores_observation_times_and_sends() {
        let a = observed(Some(D), 0);
        let mut b = observed(Some(D), 60);
        b.sent = Some(Sent {
            status: E,
            from: Some(D),
            at: t(30),
        });
        assert!(a.shows_like(&b));
        b.observed = Some(E);
        assert!(!a.shows_like(&b));
        assert!(
            !a.shows_like(&AccountState::default()),
            "never observed is shown as such"
        );
    }

    #[test]
    fn resource_status_reports_errors_once_per_code_conflicts_and_convergence() {
        let set = desired_set(&[
            decl(
                "ns/a",
                &[
                    ("000000000003", D),
                    ("000000000001", E),
                    ("000000000002", E),
                    ("000000000004", E),
                ],
            ),
            decl("ns/b", &[("000000000003", E)]),
        ]);
        let mut state = HashMap::new();
        state.insert("000000000001".into(), observed(Some(E), 0));
        for id in ["000000000002", "000000000004"] {
            let mut st = observed(None, 0);
            st.error = Some(AccountError {
                status: E,
                code: "ACCOUNT_NOT_FOUND".into(),
                message: String::new(),
                at: t(1),
            });
            state.insert(id.into(), st);
        }
        state.insert("000000000003".into(), observed(Some(D), 0));
        let a = &[
            ("000000000003".to_string(), D),
            ("000000000001".to_string(), E),
            ("000000000002".to_string(), E),
            ("000000000004".to_string(), E),
        ];
        let r = resource_status("ns/a", a, &BTreeMap::new(), &set, &state, None, &settings());
        assert_eq!((r.counts.desired, r.counts.converged, r.counts.failed), (4, 1, 3));
        let ids: Vec<&str> = r.accounts.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(
            ids,
            ["000000000001", "000000000002", "000000000003", "000000000004"],
            "sorted"
        );
        assert_eq!(r.accounts[1].error_code.as_deref(), Some("ACCOUNT_NOT_FOUND"));
        assert_eq!(r.accounts[2].error_code.as_deref(), Some("Conflict"));
        assert_eq!(r.error_codes.len(), 2, "one entry per code: {:?}", r.error_codes);
        let nf = r.error_codes.iter().find(|c| c.code == "ACCOUNT_NOT_FOUND").unwrap();
        assert_eq!(nf.count, 2);
        assert!(nf.message.contains("not a member account"), "{}", nf.message);
        let conflict = r.error_codes.iter().find(|c| c.code == "Conflict").unwrap();
        assert!(conflict.message.contains("by b;"), "{}", conflict.message);
        assert_eq!(
            (r.summary.phase, r.summary.reason.as_str()),
            (Phase::Stalled, "Conflict")
        );
        assert!(r.summary.message.contains("by b;"));
        let b = &[("000000000003".to_string(), E)];
        let r = resource_status("ns/b", b, &BTreeMap::new(), &set, &state, None, &settings());
        assert!(
            r.summary.message.contains("by a;"),
            "the conflict is reported on both sides"
        );
        // Errors only.
        let r = resource_status("ns/a", &a[1..], &BTreeMap::new(), &set, &state, None, &settings());
        assert_eq!(r.summary.reason, "AccountErrors");
        assert!(
            r.summary.message.contains("2 ACCOUNT_NOT_FOUND"),
            "{}",
            r.summary.message
        );
        // All converged.
        let one = &[("000000000001".to_string(), E)];
        let r = resource_status("ns/a", one, &BTreeMap::new(), &set, &state, None, &settings());
        assert_eq!((r.counts.converged, r.summary.reason.as_str()), (1, "Converged"));
        assert_eq!(r.summary.phase, Phase::Ready);
        assert!(r.error_codes.is_empty());
        let denied = MacieError::AccessDenied {
            code: "AccessDeniedException".into(),
            message: "no".into(),
        };
        let r = resource_status("ns/a", one, &BTreeMap::new(), &set, &state, Some(&denied), &settings());
        assert_eq!(r.summary.reason, "AccessDenied");
    }

    #[test]
    fn a_conflict_with_many_resources_names_ten_and_fits_the_condition() {
        let mut declared = vec![decl("ns/a", &[("000000000001", E)])];
        for i in 0..50 {
            declared.push(decl(&format!("ns/other-{i:02}"), &[("000000000001", D)]));
        }
        let set = desired_set(&declared);
        let r = resource_status(
            "ns/a",
            &[("000000000001".to_string(), E)],
            &BTreeMap::new(),
            &set,
            &HashMap::new(),
            None,
            &settings(),
        );
        assert!(r.summary.message.contains("and 40 more"), "{}", r.summary.message);
        assert!(!r.summary.message.contains("other-10"), "{}", r.summary.message);
        assert!(r.summary.message.len() <= MESSAGE_MAX);
    }

    #[test]
    fn every_reason_fits_the_condition_schema() {
        for reason in [
            "Converged",
            "Pending",
            "AccountErrors",
            "Conflict",
            "AccessDenied",
            "Throttled",
            "MacieError",
        ] {
            assert!(crate::api::conditions::valid_reason(reason), "{reason}");
        }
    }

    #[test]
    fn five_thousand_failing_accounts_make_a_small_status() {
        let ids: Vec<(String, DiscoveryStatus)> = (0..5000)
            .map(|i| (format!("{:012}", 500_000_000_000u64 + i), E))
            .collect();
        let set = desired_set(&[Declared {
            resource: "ns/big".into(),
            taken: TakenIn::default(),
            accounts: ids.clone(),
            acts: true,
        }]);
        let state: HashMap<String, AccountState> = ids
            .iter()
            .map(|(id, _)| {
                let mut st = observed(None, 0);
                st.error = Some(AccountError {
                    status: E,
                    code: "ACCOUNT_NOT_FOUND".into(),
                    message: String::new(),
                    at: t(1),
                });
                (id.clone(), st)
            })
            .collect();
        let r = resource_status("ns/big", &ids, &BTreeMap::new(), &set, &state, None, &settings());
        assert_eq!(r.counts.failed, 5000);
        assert_eq!(r.error_codes.len(), 1);
        assert_eq!(r.error_codes[0].count, 5000);
        let bytes = serde_json::to_vec(&r.accounts).unwrap().len();
        // About 81 bytes a row: the status stays well under etcd's 1.5 MiB with the spec beside it.
        assert!(bytes < 5000 * 90, "{bytes} bytes");
    }

    #[test]
    fn error_codes_stay_within_the_schemas_bounds() {
        // 40 accounts, each failing with a code of its own; one code longer than any AWS one.
        let ids: Vec<(String, DiscoveryStatus)> = (0..40)
            .map(|i| (format!("{:012}", 600_000_000_000u64 + i), E))
            .collect();
        let set = desired_set(&[Declared {
            resource: "ns/many".into(),
            taken: TakenIn::default(),
            accounts: ids.clone(),
            acts: true,
        }]);
        let state: HashMap<String, AccountState> = ids
            .iter()
            .enumerate()
            .map(|(i, (id, _))| {
                let mut st = observed(None, 0);
                let code = if i == 0 { "C".repeat(300) } else { format!("Code{i:02}") };
                st.error = Some(AccountError {
                    status: E,
                    code,
                    message: String::new(),
                    at: t(1),
                });
                (id.clone(), st)
            })
            .collect();
        let r = resource_status("ns/many", &ids, &BTreeMap::new(), &set, &state, None, &settings());
        assert_eq!(r.counts.failed, 40);
        assert_eq!(r.error_codes.len(), ERROR_CODES_MAX);
        assert!(r.error_codes.iter().all(|c| c.code.len() <= ERROR_CODE_MAX));
        assert!(
            r.accounts
                .iter()
                .all(|a| a.error_code.as_ref().is_some_and(|c| c.len() <= ERROR_CODE_MAX))
        );
    }

    #[test]
    fn a_conflict_names_only_resources_of_the_same_namespace() {
        let peers = [
            "team-a/other".to_string(),
            "team-b/secret".to_string(),
            "team-c/x".to_string(),
        ];
        let msg = name_peers("team-a/mine", peers.iter());
        assert!(msg.contains("other"), "{msg}");
        assert!(
            !msg.contains("secret") && !msg.contains("team-b") && !msg.contains("team-c"),
            "{msg}"
        );
        assert!(
            msg.contains("2 MacieDiscovery resource(s) in other namespaces"),
            "{msg}"
        );
        let msg = name_peers("team-z/mine", peers[1..].iter());
        assert_eq!(msg, "2 MacieDiscovery resource(s) in other namespaces");
    }
}
