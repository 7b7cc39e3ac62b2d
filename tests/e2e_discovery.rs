//! MacieDiscovery end to end: local kube-apiserver + etcd, macie-emulator over HTTP through the
//! real aws-sdk-macie2 client, and the operator's controller.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;
use kube::api::{Api, Patch, PatchParams, PostParams};
use macie_operator::api::MacieDiscovery;
use serde_json::json;
use support::*;
use testkit::wait_for;

const DEADLINE: Duration = Duration::from_secs(120);

fn acct(i: usize) -> String {
    format!("{:012}", 500_000_000_000usize + i)
}

async fn create(api: &Api<MacieDiscovery>, name: &str, accounts: &[(String, &str)]) -> Result<()> {
    api.create(&PostParams::default(), &discovery_object(name, accounts)?)
        .await?;
    Ok(())
}

fn ready_reason(o: &MacieDiscovery) -> Option<String> {
    let st = o.status.as_ref()?;
    if st.observed_generation != o.metadata.generation {
        return None;
    }
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

async fn wait_reason(
    api: &Api<MacieDiscovery>,
    name: &str,
    reason: &str,
    pred: impl Fn(&MacieDiscovery) -> bool,
) -> Result<MacieDiscovery> {
    wait_for(
        &format!("MacieDiscovery {name} to report {reason}"),
        DEADLINE,
        || async {
            let o = api.get(name).await?;
            Ok((ready_reason(&o).as_deref() == Some(reason) && pred(&o)).then_some(o))
        },
    )
    .await
}

/// Every account sent by a processed BatchUpdate call, with how often.
fn sent_counts(emu: &EmulatorHandle) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for c in emu.batch_calls() {
        for a in c["accounts"].as_array().unwrap() {
            *n.entry(a["accountId"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_resources_250_accounts_with_unknown_and_paused_ones() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-batch").await?;
    // 250 declared accounts: 0..200 known (150 to change, 50 already right), 200..210 paused,
    // 210..250 unknown to Macie.
    let mut want = BTreeMap::new();
    for i in 0..250 {
        let desired = if i % 2 == 0 { "ENABLED" } else { "DISABLED" };
        let other = if desired == "ENABLED" { "DISABLED" } else { "ENABLED" };
        match i {
            0..150 => emu.put_account(&acct(i), other, false),
            150..200 => emu.put_account(&acct(i), desired, false),
            200..210 => emu.put_account(&acct(i), other, true),
            _ => {}
        }
        want.insert(acct(i), desired);
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    let all: Vec<(String, &str)> = want.iter().map(|(a, s)| (a.clone(), *s)).collect();
    // Resources take interleaved slices so every one holds some of each kind.
    let parts: Vec<Vec<(String, &str)>> = (0..3)
        .map(|r| all.iter().skip(r).step_by(3).cloned().collect())
        .collect();
    for (r, part) in parts.iter().enumerate() {
        create(&api, &format!("team-{r}"), part).await?;
    }
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    for (r, part) in parts.iter().enumerate() {
        let name = format!("team-{r}");
        let o = wait_reason(&api, &name, "AccountErrors", |o| {
            let c = o.status.as_ref().and_then(|s| s.counts.clone()).unwrap_or_default();
            c.converged + c.failed == c.desired
        })
        .await?;
        let st = o.status.unwrap();
        let rows: HashMap<&str, _> = st.accounts.iter().map(|a| (a.account_id.as_str(), a)).collect();
        assert_eq!(rows.len(), part.len());
        for (id, desired) in part {
            let i: usize = id.parse::<usize>().unwrap() - 500_000_000_000;
            let row = rows[id.as_str()];
            assert_eq!(row.desired, *desired);
            let expected_code = match i {
                200..210 => Some("ACCOUNT_PAUSED"),
                210..250 => Some("ACCOUNT_NOT_FOUND"),
                _ => None,
            };
            assert_eq!(row.error_code.as_deref(), expected_code, "{name} {id}");
            if expected_code.is_none() {
                assert_eq!(row.observed.as_deref(), Some(*desired), "{name} {id}");
                assert_eq!(emu.account(id).as_deref(), Some(*desired), "{id} in Macie");
            }
        }
        let c = st.counts.unwrap();
        assert_eq!(c.desired as usize, part.len());
    }
    // 200 changes (150 + 10 paused + 40 unknown) at batch size 50: 4 calls, nobody twice, and
    // nothing sent for the 50 accounts already right.
    let calls = emu.batch_calls();
    assert_eq!(calls.len(), 4, "ceil(200 / 50) BatchUpdate calls");
    let sent = sent_counts(&emu);
    assert_eq!(sent.len(), 200);
    assert!(sent.values().all(|n| *n == 1), "an account sent twice");
    for i in 150..200 {
        assert!(
            !sent.contains_key(&acct(i)),
            "{} was already in its desired status",
            acct(i)
        );
    }
    // Observation asked only for declared accounts: 250 ids in chunks of 50, pages of 25.
    assert!(emu.requests("ListAutomatedDiscoveryAccounts") >= 10);
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_corrected_and_conflicts_block_until_resolved() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-conflict").await?;
    let (x, y, z) = (acct(1), acct(2), acct(3));
    for a in [&x, &y, &z] {
        emu.put_account(a, "DISABLED", false);
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "alpha", &[(x.clone(), "ENABLED"), (y.clone(), "ENABLED")]).await?;
    create(&api, "beta", &[(x.clone(), "DISABLED"), (z.clone(), "ENABLED")]).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;

    // Both sides report the conflict, naming the other; the other accounts converge.
    let a = wait_reason(&api, "alpha", "Conflict", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.counts.as_ref())
            .is_some_and(|c| c.converged == 1)
    })
    .await?;
    let msg = &a
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains(&format!("{ns}/beta")), "{msg}");
    let b = wait_reason(&api, "beta", "Conflict", |_| true).await?;
    let msg = &b
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains(&format!("{ns}/alpha")), "{msg}");
    let row = b
        .status
        .unwrap()
        .accounts
        .into_iter()
        .find(|r| r.account_id == x)
        .unwrap();
    assert_eq!(row.error_code.as_deref(), Some("Conflict"));
    assert_eq!(emu.account(&y).as_deref(), Some("ENABLED"));
    wait_for("z enabled", DEADLINE, || async {
        Ok((emu.account(&z).as_deref() == Some("ENABLED")).then_some(()))
    })
    .await?;

    // Several observations later, still no BatchUpdate for the conflicting account.
    let lists = emu.requests("ListAutomatedDiscoveryAccounts");
    wait_for("three more observations", DEADLINE, || async {
        Ok((emu.requests("ListAutomatedDiscoveryAccounts") >= lists + 3).then_some(()))
    })
    .await?;
    assert!(!sent_counts(&emu).contains_key(&x), "no flip-flopping on a conflict");
    assert_eq!(emu.account(&x).as_deref(), Some("DISABLED"));

    // Drift made in Macie is corrected at the next observation.
    emu.put_account(&y, "DISABLED", false);
    wait_for("drift on y corrected", DEADLINE, || async {
        Ok((emu.account(&y).as_deref() == Some("ENABLED")).then_some(()))
    })
    .await?;

    // One side changes: the conflict resolves and the account is sent once.
    api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"accounts": [{"accountId": x, "status": "ENABLED"}, {"accountId": z, "status": "ENABLED"}]}})),
    )
    .await?;
    wait_reason(&api, "alpha", "Converged", |_| true).await?;
    wait_reason(&api, "beta", "Converged", |_| true).await?;
    assert_eq!(emu.account(&x).as_deref(), Some("ENABLED"));
    assert_eq!(sent_counts(&emu).get(&x), Some(&1));
    // Removing an account stops managing it: a later change in Macie is left alone.
    api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"accounts": [{"accountId": x, "status": "ENABLED"}]}})),
    )
    .await?;
    wait_reason(&api, "beta", "Converged", |o| {
        o.status.as_ref().is_some_and(|s| s.accounts.len() == 1)
    })
    .await?;
    emu.put_account(&z, "DISABLED", false);
    let lists = emu.requests("ListAutomatedDiscoveryAccounts");
    wait_for("two more observations", DEADLINE, || async {
        Ok((emu.requests("ListAutomatedDiscoveryAccounts") >= lists + 2).then_some(()))
    })
    .await?;
    assert_eq!(emu.account(&z).as_deref(), Some("DISABLED"), "z is no longer managed");
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converges_under_20_percent_throttling_without_losing_or_repeating() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-throttle").await?;
    emu.state
        .lock()
        .set_faults(serde_json::from_value(
            json!({"operations": {"*": {"throttleRate": 0.2}}, "seed": 11}),
        )?)
        .map_err(anyhow::Error::msg)?;
    let mut accounts = Vec::new();
    for i in 0..120 {
        emu.put_account(&acct(i), "DISABLED", false);
        accounts.push((acct(i), "ENABLED"));
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "one", &accounts[..60]).await?;
    create(&api, "two", &accounts[60..]).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |c| c.plan.batch_size = 25).await;
    wait_reason(&api, "one", "Converged", |_| true).await?;
    wait_reason(&api, "two", "Converged", |_| true).await?;
    for (a, _) in &accounts {
        assert_eq!(emu.account(a).as_deref(), Some("ENABLED"), "{a}");
    }
    let sent = sent_counts(&emu);
    assert_eq!(sent.len(), 120, "nothing lost");
    assert!(sent.values().all(|n| *n == 1), "nothing sent twice: {sent:?}");
    let injected = {
        let e = emu.state.lock();
        e.counters["BatchUpdateAutomatedDiscoveryAccounts"].injected
            + e.counters["ListAutomatedDiscoveryAccounts"].injected
    };
    assert!(injected > 0, "the run did meet throttling");
    op.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_discovery_manifests_are_rejected() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "disc-invalid").await?;
    let cases = [
        (
            json!({"accounts": [{"accountId": "12345", "status": "ENABLED"}]}),
            "spec.accounts[0].accountId",
        ),
        (
            json!({"accounts": [{"accountId": "12345678901a", "status": "ENABLED"}]}),
            "spec.accounts[0].accountId",
        ),
        (
            json!({"accounts": [{"accountId": "111111111111", "status": "ENABLED"}, {"accountId": "111111111111", "status": "DISABLED"}]}),
            "Duplicate value",
        ),
        (
            json!({"accounts": [{"accountId": "111111111111", "status": "ON"}]}),
            "spec.accounts[0].status",
        ),
        (
            json!({"accounts": [{"accountId": "111111111111"}]}),
            "spec.accounts[0].status",
        ),
        (json!({"accounts": []}), "spec.accounts"),
        (json!({}), "spec.accounts"),
        (
            json!({"accounts": [{"accountId": "111111111111", "status": "ENABLED"}], "region": "moon"}),
            "spec.region",
        ),
    ];
    assert_rejected::<MacieDiscovery>(&client, &ns, &cases).await?;
    Ok(())
}
