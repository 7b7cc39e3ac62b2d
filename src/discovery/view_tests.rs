//! The engine's view as the reconciles see it: when two views show alike (a pass that changes
//! nothing shown triggers no resource), what taking in the declarations keeps, which region a
//! resource names, and that the status a view projects fits its schema. Pure, milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use tokio::sync::{mpsc, watch};

use super::plan::{AccountError, AccountState, Declared, Sent, Settings, TakenIn, desired_set, resource_status};
use super::{Config, Engines, RegionEngine, View, key, region_of, taken_in};
use crate::account::testing::Fed;
use crate::api::conditions::MESSAGE_MAX;
use crate::api::macie_discovery::{DiscoveryAccount, MacieDiscoverySpec};
use crate::api::{DiscoveryStatus, MacieDiscovery};
use crate::macie::{MacieClients, MacieError, Place};
use DiscoveryStatus::{Disabled as D, Enabled as E};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn decl(resource: &str, generation: i64, accounts: &[(&str, DiscoveryStatus)]) -> Declared {
    Declared {
        resource: resource.into(),
        taken: TakenIn {
            uid: format!("uid-{resource}"),
            generation,
            ..Default::default()
        },
        accounts: accounts.iter().map(|(a, s)| (a.to_string(), *s)).collect(),
        acts: true,
    }
}

fn observed(status: DiscoveryStatus, at: i64) -> AccountState {
    AccountState {
        observed: Some(status),
        observed_at: Some(t(at)),
        ..Default::default()
    }
}

/// A view of two resources that agree on one account and disagree on another, both observed.
fn view() -> View {
    let mut v = View::default();
    v.take_in(&[
        decl("ns/a", 1, &[("111111111111", E), ("222222222222", E)]),
        decl("ns/b", 1, &[("111111111111", E), ("222222222222", D)]),
    ]);
    v.accounts.insert("111111111111".into(), observed(E, 0));
    v.accounts.insert("222222222222".into(), observed(D, 0));
    v.observed_at = Some(t(0));
    v.passes = 1;
    v
}

fn settings() -> Settings {
    Settings {
        step_timeout: Duration::from_secs(300),
        error_retry: Duration::from_secs(600),
        batch_size: 100,
    }
}

fn throttled() -> MacieError {
    MacieError::Throttled {
        code: "ThrottlingException".into(),
        message: "slow down".into(),
    }
}

#[test]
fn a_view_shows_like_itself_and_like_one_that_differs_only_in_what_no_status_shows() {
    let v = view();
    assert!(v.shows_like(&v.clone()));
    let mut later = v.clone();
    later.observed_at = Some(t(60));
    later.passes = 7;
    let a = later.accounts.get_mut("111111111111").unwrap();
    a.observed_at = Some(t(60));
    a.sent = Some(Sent {
        status: E,
        from: Some(E),
        at: t(30),
    });
    assert!(
        v.shows_like(&later) && later.shows_like(&v),
        "observation times, pass count and sends in flight are not shown"
    );
}

/// Each row changes one thing a status shows; the view no longer shows like the original,
/// whichever side is asked.
#[test]
fn a_view_shows_differently_when_anything_a_status_shows_differs() {
    type Change = fn(&mut View);
    let rows: &[(&str, Change)] = &[
        ("desired set", |v| {
            v.desired.wanted.insert("333333333333".into(), D);
        }),
        ("resource version taken in", |v| {
            v.resources.get_mut("ns/a").unwrap().generation = 2;
        }),
        ("resource taken in", |v| {
            v.resources.remove("ns/b");
        }),
        ("an API error", |v| v.api_error = Some(throttled())),
        ("one account more", |v| {
            v.accounts.insert("333333333333".into(), observed(E, 0));
        }),
        ("one account fewer", |v| {
            v.accounts.remove("222222222222");
        }),
        ("an account under another id", |v| {
            let a = v.accounts.remove("222222222222").unwrap();
            v.accounts.insert("333333333333".into(), a);
        }),
        ("an account's observed status", |v| {
            v.accounts.get_mut("222222222222").unwrap().observed = Some(E);
        }),
        ("an account observed or not", |v| {
            v.accounts.get_mut("222222222222").unwrap().observed_at = None;
        }),
        ("an account's error", |v| {
            v.accounts.get_mut("222222222222").unwrap().error = Some(AccountError {
                status: E,
                code: "ACCOUNT_PAUSED".into(),
                message: String::new(),
                at: t(5),
            });
        }),
    ];
    let v = view();
    for (what, change) in rows {
        let mut other = v.clone();
        change(&mut other);
        assert!(!v.shows_like(&other), "{what}: other shows like the original");
        assert!(!other.shows_like(&v), "{what}: the original shows like other");
    }
    // The same API error on both sides is shown alike.
    let (mut x, mut y) = (v.clone(), v);
    x.api_error = Some(throttled());
    y.api_error = Some(throttled());
    assert!(x.shows_like(&y));
}

#[test]
fn taking_in_sets_the_desired_set_and_versions_and_drops_accounts_nobody_declares() {
    let mut v = view();
    v.accounts.insert("999999999999".into(), observed(E, 0));
    let declared = [
        decl("ns/a", 2, &[("111111111111", D), ("333333333333", E)]),
        decl("ns/c", 1, &[("222222222222", E), ("333333333333", D)]),
    ];
    v.take_in(&declared);
    assert_eq!(v.desired, desired_set(&declared));
    assert_eq!(
        v.resources
            .iter()
            .map(|(k, t)| (k.as_str(), t.generation))
            .collect::<Vec<_>>(),
        [("ns/a", 2), ("ns/c", 1)],
        "ns/b declares nothing any more; ns/a is taken in at its new generation"
    );
    assert_eq!(v.resources["ns/c"].uid, "uid-ns/c");
    let mut kept: Vec<&str> = v.accounts.keys().map(String::as_str).collect();
    kept.sort();
    assert_eq!(
        kept,
        ["111111111111", "222222222222"],
        "the state of declared accounts stays (333333333333, in conflict, has none yet); 999999999999 is dropped"
    );
    assert_eq!(v.accounts["222222222222"], observed(D, 0), "kept as it was");
    assert_eq!(v.passes, 1, "taking in is not a pass");

    v.take_in(&[]);
    assert!(v.desired.account_ids().is_empty() && v.resources.is_empty() && v.accounts.is_empty());
}

fn discovery(region: Option<&str>) -> MacieDiscovery {
    let mut o = MacieDiscovery::new(
        "d",
        MacieDiscoverySpec {
            accounts: vec![DiscoveryAccount {
                account_id: "111111111111".into(),
                status: E,
            }],
            region: region.map(str::to_string),
            account_ref: None,
            management_policy: Default::default(),
        },
    );
    o.metadata.namespace = Some("ns".into());
    o
}

/// The controller's engines, none running, with "ap-south-1" as the default region.
fn engines() -> Engines {
    let fed = Fed::new("default");
    let (store, _writer) = reflector::store::<MacieDiscovery>();
    let clients = Arc::new(MacieClients::new(aws_config::SdkConfig::builder().build(), None));
    let config = Config {
        default_region: "ap-south-1".into(),
        poll_interval: Duration::from_secs(60),
        batch_window: Duration::from_millis(10),
        plan: settings(),
        namespace: None,
        instance: None,
    };
    Engines::new(
        clients,
        fed.tenancy.clone(),
        config,
        store,
        futures::channel::mpsc::unbounded().0,
    )
}

#[test]
fn a_resource_names_its_region_or_gets_the_operators() {
    assert_eq!(region_of(&discovery(Some("eu-west-1")), "us-east-1"), "eu-west-1");
    assert_eq!(region_of(&discovery(None), "us-east-1"), "us-east-1");

    let engines = engines();
    assert_eq!(engines.region_of(&discovery(Some("eu-west-1"))), "eu-west-1");
    assert_eq!(
        engines.region_of(&discovery(None)),
        "ap-south-1",
        "the controller's default region"
    );
}

/// However long Macie's error message, the summary a view projects fits the condition's schema.
#[test]
fn a_summary_from_an_overlong_aws_message_fits_the_condition() {
    let v = view();
    let denied = MacieError::AccessDenied {
        code: "AccessDeniedException".into(),
        message: "é".repeat(MESSAGE_MAX),
    };
    let r = resource_status(
        "ns/a",
        &[("111111111111".to_string(), E)],
        &BTreeMap::new(),
        &v.desired,
        &v.accounts,
        Some(&denied),
        &settings(),
    );
    assert_eq!(r.summary.reason, "AccessDenied");
    assert!(
        r.summary.message.len() <= MESSAGE_MAX,
        "{} bytes",
        r.summary.message.len()
    );
    assert!(r.summary.message.starts_with("AccessDeniedException: éé"));
    assert!(r.summary.message.ends_with('…'));
}

/// Rows still on their way are Pending (not Converged) until every one is observed as
/// declared; accounts in conflict are counted once each under the Conflict code.
#[test]
fn the_status_a_view_projects_counts_pending_and_conflicting_rows() {
    // 111111111111: agreed ENABLED and observed so. 222222222222: ns/a and ns/b disagree.
    let mut v = view();
    let one = [("111111111111".to_string(), E)];
    let r = resource_status(
        "ns/a",
        &one,
        &BTreeMap::new(),
        &v.desired,
        &v.accounts,
        None,
        &settings(),
    );
    assert_eq!((r.summary.reason.as_str(), r.counts.converged), ("Converged", 1));

    v.accounts.get_mut("111111111111").unwrap().observed = Some(D);
    let r = resource_status(
        "ns/a",
        &one,
        &BTreeMap::new(),
        &v.desired,
        &v.accounts,
        None,
        &settings(),
    );
    assert_eq!(r.summary.reason, "Pending", "{}", r.summary.message);
    assert_eq!(r.summary.message, "0 of 1 account(s) in their desired status");

    v.take_in(&[
        decl(
            "ns/a",
            1,
            &[("111111111111", E), ("222222222222", E), ("333333333333", E)],
        ),
        decl("ns/b", 1, &[("222222222222", D), ("333333333333", D)]),
    ]);
    let mine = [
        ("111111111111".to_string(), E),
        ("222222222222".to_string(), E),
        ("333333333333".to_string(), E),
    ];
    let r = resource_status(
        "ns/a",
        &mine,
        &BTreeMap::new(),
        &v.desired,
        &v.accounts,
        None,
        &settings(),
    );
    assert_eq!(r.summary.reason, "Conflict");
    assert_eq!(
        r.error_codes
            .iter()
            .map(|c| (c.code.as_str(), c.count))
            .collect::<Vec<_>>(),
        [("Conflict", 2)],
        "two accounts in conflict"
    );
    assert_eq!((r.counts.desired, r.counts.failed), (3, 2));
}

/// An engine runs for each place a reconcile asked about, and is listed while it runs, in the
/// places' order (account, then region).
#[tokio::test]
async fn the_engines_list_the_places_they_run_for() {
    let engines = engines();
    assert!(engines.running().is_empty() && engines.places().is_empty());
    let _eu = engines.subscribe(&Place::new("default", "eu-west-1"));
    let _ap = engines.subscribe(&Place::new("team", "ap-south-1"));
    assert_eq!(engines.running(), ["eu-west-1", "ap-south-1"]);
    assert_eq!(
        engines.places(),
        [Place::new("default", "eu-west-1"), Place::new("team", "ap-south-1")]
    );
}

/// A row its MacieAccount refuses counts as failed, under NotPermitted, beside the rows that
/// proceed.
#[test]
fn a_refused_row_counts_as_failed_beside_the_rows_that_proceed() {
    use crate::account::policy::{Refusal, Rule};
    let v = view();
    let refused = BTreeMap::from([(
        "222222222222".to_string(),
        Refusal::NotPermitted {
            account: "default".into(),
            rule: Rule::DiscoveryAccount("222222222222".into()),
        },
    )]);
    let mine = [("111111111111".to_string(), E), ("222222222222".to_string(), E)];
    let r = resource_status("ns/a", &mine, &refused, &v.desired, &v.accounts, None, &settings());
    assert_eq!(r.summary.reason, "NotPermitted", "{}", r.summary.message);
    assert_eq!((r.counts.desired, r.counts.converged, r.counts.failed), (2, 1, 1));
    assert_eq!(
        r.error_codes
            .iter()
            .map(|c| (c.code.as_str(), c.count))
            .collect::<Vec<_>>(),
        [("NotPermitted", 1)]
    );
}

/// A watch event kicks the engine of the resource's place when the engine's view holds no or
/// another version of the resource, and not when it holds this one; the engine of a place the
/// resource left is kicked too.
#[tokio::test]
async fn a_watch_event_kicks_only_the_engines_whose_view_it_changes() {
    use kube::runtime::watcher::Event;
    let engines = engines();
    // Engines whose kicks and views the test holds (no engine loop runs).
    let stand_in = |place: &Place| {
        let (kick, kicks) = mpsc::unbounded_channel();
        let (view_tx, view) = watch::channel(Arc::new(View::default()));
        engines.regions.get_or_start(
            place,
            |_| true,
            |_| (RegionEngine { kick, view }, tokio::spawn(std::future::pending())),
        );
        (kicks, view_tx)
    };
    let (mut here, here_view) = stand_in(&Place::new("default", "ap-south-1"));
    let (mut there, there_view) = stand_in(&Place::new("default", "eu-west-1"));
    let mut obj = discovery(None);
    obj.metadata.uid = Some("uid-d".into());
    obj.metadata.generation = Some(1);

    engines.on_event(&Event::Apply(obj.clone()));
    assert!(here.try_recv().is_ok(), "new to the engine of its place");
    assert!(there.try_recv().is_err(), "nothing to the engine of another place");

    let holding = |o: &MacieDiscovery| {
        let mut v = View::default();
        v.resources.insert(key(o), taken_in(o));
        Arc::new(v)
    };
    here_view.send_replace(holding(&obj));
    engines.on_event(&Event::Apply(obj.clone()));
    assert!(here.try_recv().is_err(), "the version the engine holds: no kick");

    obj.metadata.generation = Some(2);
    engines.on_event(&Event::Apply(obj.clone()));
    assert!(here.try_recv().is_ok(), "a new generation");

    // Moved to eu-west-1 (as the engine of ap-south-1 still holds it): both engines are kicked.
    obj.spec.region = Some("eu-west-1".into());
    engines.on_event(&Event::Apply(obj.clone()));
    assert!(here.try_recv().is_ok() && there.try_recv().is_ok());

    there_view.send_replace(holding(&obj));
    here_view.send_replace(Arc::new(View::default()));
    engines.on_event(&Event::Delete(obj));
    assert!(there.try_recv().is_ok(), "deleted: the engine that holds it");
    assert!(here.try_recv().is_err());
}

/// An account's error shows while the account is not in the status the error was about and
/// that status is still the one declared: not once the account got there, nor when the
/// declaration changed since.
#[test]
fn an_account_error_shows_only_while_it_still_stands_in_the_way() {
    let mut v = view();
    let failed = |status| AccountError {
        status,
        code: "ACCOUNT_PAUSED".into(),
        message: String::new(),
        at: t(5),
    };
    let one = [("111111111111".to_string(), E)];
    let shown = |v: &View| {
        let r = resource_status(
            "ns/a",
            &one,
            &BTreeMap::new(),
            &v.desired,
            &v.accounts,
            None,
            &settings(),
        );
        (r.summary.reason, r.accounts[0].error_code.clone())
    };
    let a = v.accounts.get_mut("111111111111").unwrap();
    a.observed = Some(D);
    a.error = Some(failed(E));
    assert_eq!(shown(&v), ("AccountErrors".into(), Some("ACCOUNT_PAUSED".into())));
    // It got there after all (the error is from an earlier try).
    v.accounts.get_mut("111111111111").unwrap().observed = Some(E);
    assert_eq!(shown(&v), ("Converged".into(), None));
    // The error was about DISABLED, declared before: ENABLED is pending, not failed.
    let a = v.accounts.get_mut("111111111111").unwrap();
    a.observed = Some(D);
    a.error = Some(failed(D));
    assert_eq!(shown(&v), ("Pending".into(), None));
}
