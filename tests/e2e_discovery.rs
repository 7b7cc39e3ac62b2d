//! MacieDiscovery end to end: local kube-apiserver + etcd, macie-emulator over HTTP through the
//! real aws-sdk-macie2 client, and the operator's controller.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use macie_operator::api::MacieDiscovery;
use macie_operator::discovery::DiscoveryController;
use macie_operator::macie::MacieClients;
use macie_operator::runtime::gate::WriteGate;
use macie_operator::runtime::status;
use serde_json::{Value, json};
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
    wait_reason_within(api, name, reason, DEADLINE, pred).await
}

async fn wait_reason_within(
    api: &Api<MacieDiscovery>,
    name: &str,
    reason: &str,
    deadline: Duration,
    pred: impl Fn(&MacieDiscovery) -> bool,
) -> Result<MacieDiscovery> {
    wait_for(
        &format!("MacieDiscovery {name} to report {reason}"),
        deadline,
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
    assert!(msg.contains("by beta"), "{msg}");
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
    assert!(msg.contains("by alpha"), "{msg}");
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

// ---- issue 10: status churn and size, generations, visibility lag, deletions, the write gate,
// engines that stop. Calls are checked against the emulator's call log (GET /__admin/calls).

/// One plain HTTP/1.1 request to the emulator's admin API: (status, body).
async fn admin(emu: &EmulatorHandle, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = emu.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let resp = String::from_utf8(resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no end of HTTP header")?;
    let status = head.get(9..12).unwrap_or("0").parse()?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("chunk end")?;
    }
}

/// The processed BatchUpdateAutomatedDiscoveryAccounts calls of the emulator's call log.
async fn logged_batch_calls(emu: &EmulatorHandle) -> Result<Vec<Value>> {
    let (code, body) = admin(emu, "GET", "/__admin/calls", None).await?;
    anyhow::ensure!(code == 200, "GET /__admin/calls: {code} {body}");
    let log: Value = serde_json::from_str(&body)?;
    Ok(log["calls"]
        .as_array()
        .context("calls")?
        .iter()
        .filter(|c| c["operation"] == "BatchUpdateAutomatedDiscoveryAccounts" && c["injected"] == false)
        .cloned()
        .collect())
}

/// Every account in `calls`, with how often it was sent.
fn sent_in(calls: &[Value]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for c in calls {
        for a in c["accounts"].as_array().into_iter().flatten() {
            *n.entry(a["accountId"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    n
}

/// `n` account ids from `from`, each declared `status`.
fn declare(from: usize, n: usize, status: &'static str) -> Vec<(String, &'static str)> {
    (from..from + n).map(|i| (acct(i), status)).collect()
}

fn ready_condition(o: &MacieDiscovery) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    o.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")
}

/// Macie clients for the emulator whose writes pass `gate`.
async fn gated_clients(endpoint: &str, gate: WriteGate) -> Arc<MacieClients> {
    use aws_config::{BehaviorVersion, Region};
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_macie2::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "e2e",
        ))
        .http_client(macie_operator::macie::http_client())
        .load()
        .await;
    Arc::new(
        MacieClients::new(sdk, Some(endpoint.to_string()))
            .with_sts_endpoint(Some(endpoint.to_string()))
            .with_gate(gate),
    )
}

/// Issue 10.1: a converged resource left alone is not rewritten (its status times are
/// compared at the precision the API stores).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converged_resource_keeps_its_resource_version_while_idle() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-idle").await?;
    let accounts = declare(1000, 3, "ENABLED");
    for (a, _) in &accounts {
        emu.put_account(a, "DISABLED", false);
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "steady", &accounts).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    let o = wait_reason(&api, "steady", "Converged", |_| true).await?;
    let rv = o.metadata.resource_version.clone();
    // Four more full observations (one request each: 3 accounts), i.e. four idle poll intervals.
    let lists = emu.requests("ListAutomatedDiscoveryAccounts");
    wait_for("four idle poll intervals", DEADLINE, || async {
        Ok((emu.requests("ListAutomatedDiscoveryAccounts") >= lists + 4).then_some(()))
    })
    .await?;
    let after = api.get("steady").await?;
    assert_eq!(
        after.metadata.resource_version, rv,
        "status rewritten while nothing changed: {:?}",
        after.status
    );
    assert_eq!(sent_in(&logged_batch_calls(&emu).await?).len(), 3);
    op.stop().await;
    Ok(())
}

/// Issue 10.2: the largest resource the schema accepts, every account unknown to Macie: the
/// errors reach its status, and the whole object stays well under etcd's 1.5 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_unknown_accounts_fit_in_the_status() -> Result<()> {
    use macie_operator::api::macie_discovery::MAX_ACCOUNTS;
    let Scene { client, ns, emu, .. } = scene("disc-max").await?;
    let accounts = declare(10_000, MAX_ACCOUNTS, "ENABLED");
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "everyone", &accounts).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |c| c.plan.batch_size = 100).await;
    let t = std::time::Instant::now();
    // Polled once a second: each GET carries a megabyte.
    wait_for(
        "everyone to report AccountErrors for every account",
        Duration::from_secs(180),
        || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let o = api.get("everyone").await?;
            let failed = o.status.as_ref().and_then(|s| s.counts.as_ref()).map(|c| c.failed);
            Ok(
                (ready_reason(&o).as_deref() == Some("AccountErrors") && failed == Some(MAX_ACCOUNTS as i64))
                    .then_some(()),
            )
        },
    )
    .await?;
    eprintln!("{MAX_ACCOUNTS} failing accounts reported in {:?}", t.elapsed());
    // The object as the API serves it, managed fields included.
    let request = kube::core::Request::new(api.resource_url()).get("everyone", &Default::default())?;
    let text = client.request_text(request).await?;
    eprintln!(
        "MacieDiscovery with {MAX_ACCOUNTS} failing accounts: {} bytes as JSON",
        text.len()
    );
    assert!(
        text.len() < 1536 * 1024,
        "{} bytes: over 1.5 MiB, etcd would refuse it",
        text.len()
    );
    let v: Value = serde_json::from_str(&text)?;
    assert!(v["metadata"]["managedFields"].as_array().is_some_and(|m| !m.is_empty()));
    let st = &v["status"];
    assert_eq!(
        st["errorCodes"].as_array().map(Vec::len),
        Some(1),
        "{}",
        st["errorCodes"]
    );
    assert_eq!(st["errorCodes"][0]["code"], "ACCOUNT_NOT_FOUND");
    assert_eq!(st["errorCodes"][0]["count"], MAX_ACCOUNTS);
    let rows = st["accounts"].as_array().context("status.accounts")?;
    assert_eq!(rows.len(), MAX_ACCOUNTS);
    assert!(
        rows.iter()
            .all(|r| r["errorCode"] == "ACCOUNT_NOT_FOUND" && r["desired"] == "ENABLED")
    );
    let sent = sent_in(&logged_batch_calls(&emu).await?);
    assert_eq!(sent.len(), MAX_ACCOUNTS);
    assert!(sent.values().all(|n| *n == 1), "an account sent twice");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let failed_writes = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(status::WRITE_FAILED))
        .count();
    assert_eq!(failed_writes, 0, "a status write failed");
    op.stop().await;
    Ok(())
}

/// Issue 10.2: a status write that fails leaves a Warning Event on the resource saying why
/// (here the operator's identity may not write the status subresource).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_status_write_is_a_warning_event() -> Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let Scene { cp, client, ns, emu } = scene("disc-nowrite").await?;
    let user = format!("system:serviceaccount:{ns}:no-status");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "no-status"},
        "rules": [
            {"apiGroups": ["macie.kubeops.dev"], "resources": ["maciediscoveries"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    }))?;
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "no-status"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-status"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;
    let kc = kube::config::Kubeconfig::read_from(cp.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.auth_info.impersonate = Some(user);
    let limited = kube::Client::try_from(config)?;

    emu.put_account(&acct(2000), "DISABLED", false);
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "unwritable", &declare(2000, 1, "ENABLED")).await?;
    let clients = gated_clients(&emu.url, WriteGate::open()).await;
    // The tenancy reads MacieAccounts and namespaces with the admin client: this test is about
    // the status write.
    let _accounts = Accounts::start(client.clone(), clients.clone());
    let controller = DiscoveryController::new(limited, clients, _accounts.tenancy.clone(), discovery_config(&ns));
    let op = Running::spawn(|stop| controller.run(stop));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let e = wait_for("a StatusWriteFailed Warning Event", DEADLINE, || async {
        Ok(events.list(&Default::default()).await?.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(status::WRITE_FAILED)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("unwritable")
        }))
    })
    .await?;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.action.as_deref(), Some(status::ACTION));
    let note = e.note.unwrap_or_default();
    assert!(note.contains("forbidden"), "{note}");
    assert!(api.get("unwritable").await?.status.is_none());
    op.stop().await;
    Ok(())
}

/// Issue 10.4: Macie shows a BatchUpdate's effect only 4 s later; the observations in between
/// (every 500 ms) still show the old status, and no account is sent twice.
/// Needs the emulator's `discoveryVisibilityDelayMs` fault (PUT /__admin/faults).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_observations_never_send_an_account_twice() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-lag").await?;
    let accounts = declare(4000, 20, "ENABLED");
    for (a, _) in &accounts {
        emu.put_account(a, "DISABLED", false);
    }
    let (code, body) = admin(
        &emu,
        "PUT",
        "/__admin/faults",
        Some(&json!({"discoveryVisibilityDelayMs": 4000})),
    )
    .await?;
    anyhow::ensure!(
        (200..300).contains(&code),
        "PUT /__admin/faults {{\"discoveryVisibilityDelayMs\": 4000}}: {code} {body}"
    );
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "lagging", &accounts).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "lagging", "Converged", |_| true).await?;
    let calls = logged_batch_calls(&emu).await?;
    let sent = sent_in(&calls);
    assert_eq!(sent.len(), accounts.len(), "{calls:?}");
    assert!(sent.values().all(|n| *n == 1), "an account sent twice: {calls:?}");
    op.stop().await;
    Ok(())
}

/// Issue 10.3: a new generation is reported only once the engine has taken it in: no status
/// ever shows the new generation with the old picture (here the Conflict it resolves).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_generation_is_reported_only_once_the_engine_has_it() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-generation").await?;
    let x = acct(3000);
    emu.put_account(&x, "DISABLED", false);
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "alpha", &[(x.clone(), "ENABLED")]).await?;
    create(&api, "beta", &[(x.clone(), "DISABLED")]).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "beta", "Conflict", |_| true).await?;

    // Record every version of beta from here on: (status.observedGeneration, Ready reason).
    type Versions = std::sync::Mutex<Vec<(Option<i64>, Option<String>)>>;
    let seen: Arc<Versions> = Arc::default();
    let (listed_tx, mut listed) = tokio::sync::watch::channel(false);
    let recorder = {
        let seen = seen.clone();
        let stream = kube::runtime::watcher(
            api.clone(),
            kube::runtime::watcher::Config::default().fields("metadata.name=beta"),
        );
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(kube::runtime::watcher::Event::Apply(o) | kube::runtime::watcher::Event::InitApply(o)) => {
                        let entry = (
                            o.status.as_ref().and_then(|s| s.observed_generation),
                            ready_condition(&o).map(|c| c.reason.clone()),
                        );
                        seen.lock().unwrap().push(entry);
                    }
                    Ok(kube::runtime::watcher::Event::InitDone) => {
                        listed_tx.send_replace(true);
                    }
                    _ => {}
                }
            }
        })
    };
    listed.wait_for(|l| *l).await?;
    let patched = api
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"accounts": [{"accountId": x, "status": "ENABLED"}]}})),
        )
        .await?;
    let generation = patched.metadata.generation;
    wait_reason(&api, "beta", "Converged", |_| true).await?;
    wait_for("the watch to deliver Converged", DEADLINE, || async {
        Ok(seen
            .lock()
            .unwrap()
            .iter()
            .any(|(g, r)| *g == generation && r.as_deref() == Some("Converged"))
            .then_some(()))
    })
    .await?;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    let stale: Vec<_> = seen
        .iter()
        .filter(|(g, r)| *g == generation && r.as_deref() == Some("Conflict"))
        .collect();
    assert!(
        stale.is_empty(),
        "generation {generation:?} reported with the old Conflict: {seen:?}"
    );
    wait_reason(&api, "alpha", "Converged", |_| true).await?;
    assert_eq!(sent_in(&logged_batch_calls(&emu).await?).get(&x), Some(&1));
    op.stop().await;
    Ok(())
}

/// Issue 10.5: deleting one side of a conflict lets the other converge at once, not at the next
/// poll interval (15 s here). The deletion comes right after a periodic observation, when the
/// engine has nothing else left to do before the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_one_side_of_a_conflict_lets_the_other_converge_at_once() -> Result<()> {
    const POLL: Duration = Duration::from_secs(15);
    let Scene { client, ns, emu, .. } = scene("disc-delete").await?;
    let x = acct(5000);
    emu.put_account(&x, "DISABLED", false);
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "alpha", &[(x.clone(), "ENABLED")]).await?;
    create(&api, "beta", &[(x.clone(), "DISABLED")]).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |c| c.poll_interval = POLL).await;
    wait_reason(&api, "alpha", "Conflict", |_| true).await?;
    wait_reason(&api, "beta", "Conflict", |_| true).await?;
    let lists = emu.requests("ListAutomatedDiscoveryAccounts");
    wait_for("the next periodic observation", POLL * 3, || async {
        Ok((emu.requests("ListAutomatedDiscoveryAccounts") > lists).then_some(()))
    })
    .await?;
    api.delete("beta", &DeleteParams::default()).await?;
    let t = std::time::Instant::now();
    wait_reason_within(&api, "alpha", "Converged", POLL * 2 / 3, |_| true).await?;
    eprintln!("converged {:?} after the other side was deleted", t.elapsed());
    assert_eq!(emu.account(&x).as_deref(), Some("ENABLED"));
    assert_eq!(sent_in(&logged_batch_calls(&emu).await?).get(&x), Some(&1));
    op.stop().await;
    Ok(())
}

/// Issue 10.6: with the write gate closed (leader election lost or not yet won) the engine
/// observes but never calls BatchUpdate; once it opens, every account is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_write_gate_sends_nothing_until_it_opens() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-gate").await?;
    let accounts = declare(6000, 5, "ENABLED");
    for (a, _) in &accounts {
        emu.put_account(a, "DISABLED", false);
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "gated", &accounts).await?;
    let gate = WriteGate::closed();
    let clients = gated_clients(&emu.url, gate.clone()).await;
    let _accounts = Accounts::start(client.clone(), clients.clone());
    let controller = DiscoveryController::new(
        client.clone(),
        clients,
        _accounts.tenancy.clone(),
        discovery_config(&ns),
    );
    let op = Running::spawn(|stop| controller.run(stop));
    wait_reason(&api, "gated", "Pending", |_| true).await?;
    let lists = emu.requests("ListAutomatedDiscoveryAccounts");
    wait_for("three more observations", DEADLINE, || async {
        Ok((emu.requests("ListAutomatedDiscoveryAccounts") >= lists + 3).then_some(()))
    })
    .await?;
    assert!(
        logged_batch_calls(&emu).await?.is_empty(),
        "BatchUpdate with the write gate closed"
    );
    for (a, _) in &accounts {
        assert_eq!(emu.account(a).as_deref(), Some("DISABLED"));
    }
    gate.extend(std::time::Instant::now(), Duration::from_secs(600));
    wait_reason(&api, "gated", "Converged", |_| true).await?;
    let sent = sent_in(&logged_batch_calls(&emu).await?);
    assert_eq!(sent.len(), accounts.len());
    assert!(sent.values().all(|n| *n == 1));
    op.stop().await;
    Ok(())
}

/// Issue 10.6: an engine whose region no MacieDiscovery names any more stops (its state goes
/// with it), and a new resource for the region starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_stops_when_its_region_is_unused_and_restarts_on_demand() -> Result<()> {
    const EU: &str = "eu-west-1";
    let Scene { client, ns, emu, .. } = scene("disc-region").await?;
    let accounts = declare(7000, 2, "ENABLED");
    for (a, _) in &accounts {
        let account = serde_json::from_value(json!({"status": "DISABLED", "paused": false}))?;
        emu.state
            .lock()
            .put_account(None, Some(EU), a, account)
            .map_err(anyhow::Error::msg)?;
    }
    let in_eu = |status: &str| -> Result<MacieDiscovery> {
        let decl: Vec<(String, &str)> = accounts.iter().map(|(a, _)| (a.clone(), status)).collect();
        let mut o = discovery_object("eu", &decl)?;
        o.spec.region = Some(EU.into());
        Ok(o)
    };
    let eu_status = |id: &str| {
        let mut e = emu.state.lock();
        e.snapshot(None, Some(EU))["accounts"][id]["status"]
            .as_str()
            .map(str::to_string)
    };
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &in_eu("ENABLED")?).await?;
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |_| {}).await;
    wait_reason(&api, "eu", "Converged", |_| true).await?;
    assert_eq!(op.engines.running(), [EU], "only the region in use has an engine");
    assert_eq!(eu_status(&accounts[0].0).as_deref(), Some("ENABLED"));

    api.delete("eu", &DeleteParams::default()).await?;
    wait_for("the eu-west-1 engine to stop", DEADLINE, || async {
        Ok(op.engines.running().is_empty().then_some(()))
    })
    .await?;

    api.create(&PostParams::default(), &in_eu("DISABLED")?).await?;
    wait_reason(&api, "eu", "Converged", |_| true).await?;
    assert_eq!(op.engines.running(), [EU], "started again on demand");
    for (a, _) in &accounts {
        assert_eq!(eu_status(a).as_deref(), Some("DISABLED"), "{a}");
    }
    op.stop().await;
    Ok(())
}

/// Issue 13.3: confirming a change lists only the accounts that changed; the full observation
/// of every declared account (ceil(declared / 25) calls) runs once per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirming_one_change_among_500_accounts_costs_one_list_call() -> Result<()> {
    let Scene { client, ns, emu, .. } = scene("disc-confirm").await?;
    let accounts = declare(7000, 500, "ENABLED");
    for (a, _) in &accounts {
        emu.put_account(a, "ENABLED", false);
    }
    let api: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    create(&api, "many", &accounts).await?;
    // A long interval: no full observation falls inside the measured change.
    let op = DiscoveryHandle::start(client.clone(), &ns, &emu.url, |c| {
        c.poll_interval = Duration::from_secs(600)
    })
    .await;
    wait_reason(&api, "many", "Converged", |_| true).await?;
    let full = emu.requests("ListAutomatedDiscoveryAccounts");
    assert_eq!(
        full,
        500_u64.div_ceil(25),
        "the first full observation: one call per page of 25"
    );
    // One account changes its declaration.
    let mut changed = accounts.clone();
    changed[123].1 = "DISABLED";
    let patch = json!({"spec": {"accounts": changed.iter().map(|(a, s)| json!({"accountId": a, "status": s})).collect::<Vec<_>>()}});
    api.patch("many", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_reason(&api, "many", "Converged", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.accounts
                .iter()
                .any(|r| r.account_id == accounts[123].0 && r.observed.as_deref() == Some("DISABLED"))
        })
    })
    .await?;
    assert_eq!(emu.account(&accounts[123].0).as_deref(), Some("DISABLED"));
    assert_eq!(
        emu.requests("ListAutomatedDiscoveryAccounts") - full,
        1,
        "confirming one change lists that account only"
    );
    op.stop().await;
    Ok(())
}
