//! The Helm chart against the local control plane: lint, schema checks, server-side validation
//! of every rendered object, install, and the operator binary doing its whole job
//! authenticated as the chart's ServiceAccount (a TokenRequest token) with the chart's RBAC
//! and nothing more.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macie_emulator::Seed;
use macie_operator::api::{MacieAccount, MacieDiscovery, MacieJob};
use serde_json::{Value, json};
use support::chart::*;
use support::*;
use testkit::{free_port, wait_for, workspace_root};

const RELEASE: &str = "macie";
const RELEASE_NS: &str = "macie-system";
const APP_NS: &str = "rbac-app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_installs_and_its_rbac_is_enough_for_the_whole_job() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let kc = cp.kubeconfig();
    let chart = chart();
    let chart = chart.to_str().unwrap();

    // Lint, and the values schema rejects nonsense with the key named.
    run(helm(kc).args(["lint", chart, "--strict"]), None)?;
    let err = run(
        helm(kc).args(["template", "x", chart, "--set", "operator.logFormat=xml"]),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("/operator/logFormat"), "{err}");
    let err = run(
        helm(kc).args(["template", "x", chart, "--set", "defaultAccount.regions={moon-1}"]),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("/defaultAccount/regions/0"), "{err}");

    // Every rendered object is valid for this Kubernetes version (server-side dry run), in both
    // RBAC modes and with the optional objects on.
    namespace(&client, "team-a").await?;
    for extra in [
        vec![],
        vec![
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "podDisruptionBudget.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/macie",
        ],
    ] {
        let rendered = run(
            helm(kc)
                .args(["template", RELEASE, chart, "--namespace", "default"])
                .args(&extra),
            None,
        )?;
        run(
            kubectl(kc).args(["apply", "--dry-run=server", "-f", "-"]),
            Some(&rendered),
        )?;
    }

    // Install for real, pointing at the emulator, with cancelling and one discovery account
    // opted in (the defaults allow neither; this test cancels a job and changes an account).
    let emu = EmulatorHandle::start(Seed::default()).await?;
    run(
        helm(kc).args([
            "install",
            RELEASE,
            chart,
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            &format!("operator.macieEndpoint={}", emu.url),
            "--set",
            "defaultAccount.jobs.allowCancel=true",
            // (--set would make the account id a number)
            "--set-string",
            "defaultAccount.discovery.accountIds={999900001111}",
            "--wait=false",
        ]),
        None,
    )?;
    let sa = format!("{RELEASE}-macie-operator");
    let deployed = run(
        kubectl(kc).args(["get", "deployment", &sa, "-n", RELEASE_NS, "-o", "json"]),
        None,
    )?;
    let d: serde_json::Value = serde_json::from_str(&deployed)?;
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    let env = |name: &str| {
        c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    assert_eq!(env("MACIE_OPERATOR_DEFAULT_ACCOUNT"), Some(json!("default")));
    assert_eq!(env("AWS_EC2_METADATA_DISABLED"), Some(json!("true")));
    assert_eq!(env("MACIE_OPERATOR_METRICS_SECURE"), Some(json!("true")));
    assert_eq!(env("MACIE_OPERATOR_HEALTH_ADDR"), Some(json!("0.0.0.0:8081")));

    // The default MacieAccount: the operator's own credentials in operator.region, every
    // namespace, every job, and what the values opted in.
    let account = run(kubectl(kc).args(["get", "macieaccount", "default", "-o", "json"]), None)?;
    let account: serde_json::Value = serde_json::from_str(&account)?;
    assert_eq!(
        account["spec"],
        json!({
            "regions": [REGION],
            "namespaceSelector": {},
            "jobs": {"names": ["*"], "allowCancel": true, "allowCreate": false, "allowPause": true,
                     "bucketAccountIds": ["*"]},
            "discovery": {"accountIds": ["999900001111"], "allowedStatuses": ["ENABLED", "DISABLED"]}
        })
    );

    // A token for the chart's ServiceAccount (TokenRequest API), in a kubeconfig of its own.
    let token = run(
        kubectl(kc).args(["create", "token", &sa, "-n", RELEASE_NS, "--duration", "1h"]),
        None,
    )?;
    let sa_kc = cp.token_kubeconfig("sa", &token)?;
    // The token is only as strong as the chart's RBAC: it cannot, say, list Secrets.
    let denied = run(kubectl(&sa_kc).args(["get", "secrets", "-A"]), None).unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    // The operator binary, configured as the Deployment configures it, as that ServiceAccount.
    let (metrics_port, health_port) = (free_port()?, free_port()?);
    let log_path = cp.dir().join("sa-operator.log");
    let mut op = tokio::process::Command::new(env!("CARGO_BIN_EXE_macie-operator"))
        .args([
            "run",
            "--leader-elect",
            "--lease-name",
            &sa,
            "--lease-namespace",
            RELEASE_NS,
        ])
        .args([
            "--region",
            REGION,
            "--macie-endpoint",
            &emu.url,
            "--poll-interval",
            "500ms",
        ])
        .args([
            "--metrics-secure",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--health-addr",
            &format!("127.0.0.1:{health_port}"),
            "--identity",
            "sa-replica",
        ])
        .args(["--log", "info,kube=warn", "--discovery-batch-window", "300ms"])
        .env("KUBECONFIG", &sa_kc)
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // As the Deployment names the default MacieAccount (an environment variable, so a
        // binary without the setting ignores it), and STS at the emulator.
        .env("MACIE_OPERATOR_DEFAULT_ACCOUNT", "default")
        .env("AWS_ENDPOINT_URL_STS", &emu.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()?;

    // Its whole job: a MacieJob with the Cancel finalizer, a MacieDiscovery, Events, the Lease,
    // readiness (which reads the CRDs).
    let ns = namespace(&client, APP_NS).await?;
    let job = emu.put_job(json!({"name": "rbac-job", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    emu.put_account("999900001111", "DISABLED", false);
    let jobs: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(
        &jobs,
        "rbac",
        json!({"jobId": job, "jobStatus": "USER_PAUSED", "deletionPolicy": "Cancel"}),
    )
    .await?;
    let discoveries: Api<MacieDiscovery> = Api::namespaced(client.clone(), &ns);
    let d: MacieDiscovery = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieDiscovery",
        "metadata": {"name": "rbac"}, "spec": {"accounts": [{"accountId": "999900001111", "status": "ENABLED"}]}
    }))?;
    discoveries.create(&PostParams::default(), &d).await?;

    let deadline = Duration::from_secs(90);
    wait_reason(&jobs, "rbac", "Converged", deadline).await?;
    wait_for("MacieDiscovery converged", deadline, || async {
        let o = discoveries.get("rbac").await?;
        let ok = o.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "Converged")
        });
        Ok(ok.then_some(()))
    })
    .await?;
    assert_eq!(emu.account("999900001111").as_deref(), Some("ENABLED"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    let lease = leases.get(&sa).await?;
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("sa-replica"));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for("Events published", deadline, || async {
        let n = events.list(&ListParams::default()).await?.items.len();
        Ok((n >= 2).then_some(()))
    })
    .await?;
    jobs.delete("rbac", &DeleteParams::default()).await?;
    wait_for("MacieJob released by its finalizer", deadline, || async {
        Ok(jobs.get_opt("rbac").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(emu.status(&job).as_deref(), Some("CANCELLED"));
    // The default MacieAccount is held while the MacieDiscovery uses it (the in-use finalizer,
    // which the chart's RBAC lets the operator add and remove): deleted, it stays until the
    // MacieDiscovery is gone.
    let accounts: Api<MacieAccount> = Api::all(client.clone());
    let in_use = |a: &MacieAccount| a.status.as_ref().and_then(|s| s.resources_in_use);
    wait_for(
        "the default MacieAccount held by the MacieDiscovery",
        deadline,
        || async {
            let a = accounts.get("default").await?;
            let held = a.finalizers().iter().any(|f| f == "macie.kubeops.dev/in-use");
            Ok((held && in_use(&a) == Some(1)).then_some(()))
        },
    )
    .await?;
    accounts.delete("default", &DeleteParams::default()).await?;
    wait_for("the default MacieAccount InUse", deadline, || async {
        let a = accounts.get("default").await?;
        let reason = a.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.reason.clone())
        });
        Ok((a.metadata.deletion_timestamp.is_some() && reason.as_deref() == Some("InUse")).then_some(()))
    })
    .await?;
    discoveries.delete("rbac", &DeleteParams::default()).await?;
    wait_for("the default MacieAccount gone", deadline, || async {
        Ok(accounts.get_opt("default").await?.is_none().then_some(()))
    })
    .await?;
    let ready = wait_for("readyz", deadline, || async {
        Ok((testkit::http_get(health_port, "/readyz").await?.0 == 200).then_some(()))
    })
    .await;
    op.start_kill()?;
    op.wait().await?;
    let log = std::fs::read_to_string(&log_path)?;
    ready.with_context(|| format!("operator log:\n{log}"))?;
    // Nothing it tried was refused.
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "a permission is missing:\n{log}"
    );
    run(helm(kc).args(["uninstall", RELEASE, "--namespace", RELEASE_NS]), None)?;
    Ok(())
}

/// Every manifest under tests/invalid/ is rejected by the API server, through kubectl as a
/// user would apply it, with a message containing its `# expect:` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifest_files_are_rejected_naming_the_field() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "invalid-files").await?;
    let dir = workspace_root().join("tests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert!(files.len() >= 20, "at least 20 examples of invalid manifests");
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .with_context(|| format!("{} has no '# expect:' line", f.display()))?;
        let err = run(kubectl(cp.kubeconfig()).args(["apply", "-n", &ns, "-f"]).arg(f), None)
            .err()
            .with_context(|| format!("{} was accepted", f.display()))?;
        assert!(
            err.to_string().contains(expect),
            "{}: expected {expect:?} in {err}",
            f.display()
        );
    }
    Ok(())
}

/// What `kubectl auth can-i --list` says `user` may do in `ns`, one entry per permission:
/// `resource verb`, `resource[name] verb` for a rule limited to names, `/url verb` for a
/// non-resource URL.
fn can_i_list(kc: &Path, user: &str, ns: &str) -> Result<BTreeSet<String>> {
    let out = run(
        kubectl(kc).args([
            "auth",
            "can-i",
            "--list",
            "--no-headers",
            "--as",
            user,
            "--namespace",
            ns,
        ]),
        None,
    )?;
    let mut granted = BTreeSet::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Columns: the resource (blank on non-resource URL rows), then three bracketed lists:
        // non-resource URLs, resource names, verbs.
        let (resource, mut rest) = match line.strip_prefix('[') {
            Some(_) => ("", line),
            None => line.split_once(char::is_whitespace).unwrap_or((line, "")),
        };
        let mut lists = Vec::new();
        while let Some(start) = rest.find('[') {
            let end = rest[start..].find(']').map(|e| start + e).context(line.to_string())?;
            lists.push(rest[start + 1..end].split_whitespace().collect::<Vec<_>>());
            rest = &rest[end + 1..];
        }
        let [urls, names, verbs] = lists.as_slice() else {
            bail!("unexpected `kubectl auth can-i --list` line: {line}");
        };
        let subjects: Vec<String> = if resource.is_empty() {
            urls.iter().map(|u| u.to_string()).collect()
        } else if names.is_empty() {
            vec![resource.to_string()]
        } else {
            names.iter().map(|n| format!("{resource}[{n}]")).collect()
        };
        for s in &subjects {
            granted.extend(verbs.iter().map(|v| format!("{s} {v}")));
        }
    }
    Ok(granted)
}

/// The chart's RBAC grants its ServiceAccount exactly what the operator's code uses (list,
/// watch and patch through watchers, finalizer patches, server-side-apply status, Events, the
/// Lease, the readiness CRD reads), in both RBAC modes and in the namespaces that matter: a
/// verb added to or dropped from a rule fails this test. What every authenticated account may
/// do (discovery, self reviews) is measured on a ServiceAccount with no binding and left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_grants_exactly_what_the_operator_uses() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let kc = cp.kubeconfig();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let set = |items: &[&[&str]]| -> BTreeSet<String> { items.concat().iter().map(|s| s.to_string()).collect() };

    // Cluster-scoped, granted in every mode: readiness reads the three CRDs by name; the
    // MacieAccounts are watched and their status applied; namespace labels are watched; each
    // scrape of the secured metrics is reviewed (metrics.secure, the default).
    let cluster: &[&str] = &[
        "tokenreviews.authentication.k8s.io create",
        "subjectaccessreviews.authorization.k8s.io create",
        "customresourcedefinitions.apiextensions.k8s.io[maciejobs.macie.kubeops.dev] get",
        "customresourcedefinitions.apiextensions.k8s.io[maciediscoveries.macie.kubeops.dev] get",
        "customresourcedefinitions.apiextensions.k8s.io[macieaccounts.macie.kubeops.dev] get",
        "macieaccounts.macie.kubeops.dev list",
        "macieaccounts.macie.kubeops.dev watch",
        "macieaccounts.macie.kubeops.dev/status patch",
        "namespaces list",
        "namespaces watch",
    ];
    // The namespaced kinds, where they are watched: no get (nothing is read outside the watch),
    // no patch on MacieDiscoveries.
    let kinds: &[&str] = &[
        "maciejobs.macie.kubeops.dev list",
        "maciejobs.macie.kubeops.dev watch",
        "maciejobs.macie.kubeops.dev patch",
        "maciejobs.macie.kubeops.dev/status patch",
        "maciediscoveries.macie.kubeops.dev list",
        "maciediscoveries.macie.kubeops.dev watch",
        "maciediscoveries.macie.kubeops.dev/status patch",
    ];
    // Events about the watched resources, and in `default` about MacieAccounts.
    let events: &[&str] = &["events.events.k8s.io create", "events.events.k8s.io patch"];
    // Every namespace watched: the in-use finalizer of MacieAccounts (a merge patch).
    let in_use: &[&str] = &["macieaccounts.macie.kubeops.dev patch"];

    namespace(&client, "rbac-tenant").await?;
    namespace(&client, "rbac-watched").await?;
    // Two releases side by side; neither creates the default MacieAccount (the install test's
    // release owns `default`).
    let all = "rbac-all";
    let one = "rbac-one";
    let lease = |release: &str| -> Vec<String> {
        vec![
            "leases.coordination.k8s.io create".to_string(),
            format!("leases.coordination.k8s.io[{release}-macie-operator] get"),
            format!("leases.coordination.k8s.io[{release}-macie-operator] update"),
        ]
    };
    let with_lease = |base: BTreeSet<String>, release: &str| -> BTreeSet<String> {
        base.into_iter().chain(lease(release)).collect()
    };
    // (release, extra values, [(namespace, permissions expected there)])
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, BTreeSet<String>)>);
    let cases: Vec<Case> = vec![
        // Every namespace watched: a ClusterRole for the kinds and Events.
        (
            all,
            vec![],
            vec![
                (
                    "rbac-all-system",
                    with_lease(set(&[cluster, in_use, kinds, events]), all),
                ),
                ("rbac-tenant", set(&[cluster, in_use, kinds, events])),
                ("default", set(&[cluster, in_use, kinds, events])),
            ],
        ),
        // One namespace watched: the kinds and Events only there, Events about MacieAccounts in
        // `default`, and still the cluster-scoped reads.
        (
            one,
            vec!["--set", "operator.watchNamespace=rbac-watched"],
            vec![
                ("rbac-one-system", with_lease(set(&[cluster]), one)),
                ("rbac-watched", set(&[cluster, kinds, events])),
                ("default", set(&[cluster, events])),
                ("rbac-tenant", set(&[cluster])),
            ],
        ),
    ];
    for (release, extra, expectations) in &cases {
        let release_ns = format!("{release}-system");
        run(
            helm(kc)
                .args([
                    "install",
                    release,
                    chart,
                    "--namespace",
                    &release_ns,
                    "--create-namespace",
                ])
                .args(["--set", "defaultAccount.create=false", "--wait=false"])
                .args(extra),
            None,
        )?;
        let sa = format!("system:serviceaccount:{release_ns}:{release}-macie-operator");
        let nobody = format!("system:serviceaccount:{release_ns}:rbac-baseline");
        for (ns, expected) in expectations {
            let baseline = can_i_list(kc, &nobody, ns)?;
            let granted: BTreeSet<String> = can_i_list(kc, &sa, ns)?.difference(&baseline).cloned().collect();
            let extra: Vec<_> = granted.difference(expected).collect();
            let missing: Vec<_> = expected.difference(&granted).collect();
            assert!(
                extra.is_empty() && missing.is_empty(),
                "release {release}, namespace {ns}:\n  granted but not expected: {extra:#?}\n  expected but not granted: {missing:#?}"
            );
        }
        run(helm(kc).args(["uninstall", release, "--namespace", &release_ns]), None)?;
    }
    Ok(())
}

/// The documents `helm template` renders for release `release` with values `extra`.
fn rendered(kc: &Path, release: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart();
    let out = run(
        helm(kc)
            .args(["template", release, chart.to_str().unwrap(), "--namespace", "default"])
            .args(extra),
        None,
    )?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// What a ClusterRole grants, one `group resource verb` per permission; a rule with resource
/// names or non-resource URLs fails (the tenant roles have none).
fn grants(role: &Value) -> Result<BTreeSet<String>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().context("a ClusterRole without rules")? {
        if rule.get("resourceNames").is_some() || rule.get("nonResourceURLs").is_some() {
            bail!("unexpected rule {rule}");
        }
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert(format!("{g} {r} {v}"));
                }
            }
        }
    }
    Ok(out)
}

/// `group resource verb` for each of `resources` and `verbs` in the operator's API group.
fn macie_grants(resources: &[&str], verbs: &[&str]) -> BTreeSet<String> {
    resources
        .iter()
        .flat_map(|r| verbs.iter().map(move |v| format!("macie.kubeops.dev {r} {v}")))
        .collect()
}

/// Whether the API server's authorizer lets `user` (an authenticated user of no group) do
/// `verb` on `resource` (`plural` or `plural/subresource`) of the operator's group in `ns`.
async fn allowed(client: &kube::Client, user: &str, verb: &str, resource: &str, ns: &str) -> Result<bool> {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec!["system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("macie.kubeops.dev".into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Issue 19.8: the chart's defaults allow nothing irreversible or organisation-wide, and its
/// tenant ClusterRoles, aggregated into `edit`, `admin` and `view`, let tenants declare
/// MacieJobs and MacieDiscoveries but never write their status. Checked on the rendered chart,
/// and against the API server's authorizer with the roles bound directly (no
/// controller-manager runs here, so nothing aggregates them into `edit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_defaults_are_safe_and_tenant_roles_leave_status_to_the_operator() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let kc = cp.kubeconfig();
    let release = "tenancy";
    let fullname = format!("{release}-macie-operator");
    let docs = rendered(kc, release, &[])?;

    // The default MacieAccount: no cancel, no create, no discovery account.
    let accounts: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "MacieAccount").collect();
    let [account] = accounts.as_slice() else {
        bail!("expected one MacieAccount, got {accounts:#?}");
    };
    assert_eq!(account["spec"]["jobs"]["allowCancel"], false, "{account:#}");
    assert_eq!(account["spec"]["jobs"]["allowCreate"], false, "{account:#}");
    assert_eq!(account["spec"]["discovery"]["accountIds"], json!([]), "{account:#}");
    // ... unless the values say so.
    let opted = rendered(
        kc,
        release,
        &[
            "--set",
            "defaultAccount.jobs.allowCancel=true",
            "--set",
            "defaultAccount.discovery.accountIds={*}",
        ],
    )?;
    let opted = opted
        .iter()
        .find(|d| d["kind"] == "MacieAccount")
        .context("no MacieAccount")?;
    assert_eq!(opted["spec"]["jobs"]["allowCancel"], true);
    assert_eq!(opted["spec"]["discovery"]["accountIds"], json!(["*"]));

    // The tenant ClusterRoles: aggregated, and granting exactly what a tenant needs.
    let cluster_role = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .cloned()
            .with_context(|| format!("no ClusterRole {name}"))
    };
    let edit = cluster_role(&format!("{fullname}-tenant-edit"))?;
    let view = cluster_role(&format!("{fullname}-tenant-view"))?;
    let aggregate = |role: &Value, to: &str| {
        role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")].clone()
    };
    assert_eq!(aggregate(&edit, "edit"), "true");
    assert_eq!(aggregate(&edit, "admin"), "true");
    assert_eq!(
        aggregate(&edit, "view"),
        Value::Null,
        "viewers must not get the edit rules"
    );
    assert_eq!(aggregate(&view, "view"), "true");
    let kinds = ["maciejobs", "maciediscoveries"];
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "update", "patch", "delete"];
    assert_eq!(grants(&edit)?, macie_grants(&kinds, &write));
    assert_eq!(grants(&view)?, macie_grants(&kinds, &read));
    // No role aggregated into the built-in ones grants anything on a subresource (status
    // above all), any wildcard, or anything on MacieAccounts.
    let aggregated: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["labels"].as_object().is_some_and(|l| {
                    l.keys()
                        .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                })
        })
        .collect();
    assert_eq!(aggregated.len(), 2, "{aggregated:#?}");
    for role in &aggregated {
        for grant in grants(role)? {
            let (_, resource) = grant.split_once(' ').unwrap();
            assert!(
                !grant.contains('/') && !grant.contains('*') && !resource.starts_with("macieaccounts"),
                "{}: {grant}",
                role["metadata"]["name"]
            );
        }
    }
    // They can be left out.
    let without = rendered(kc, release, &["--set", "tenantRoles.enabled=false"])?;
    assert!(
        !without
            .iter()
            .any(|d| d["metadata"]["name"].as_str().is_some_and(|n| n.contains("tenant"))),
        "tenant roles rendered with tenantRoles.enabled=false"
    );

    // Against the API server: alice bound to the edit role, bob to the view role, in one
    // namespace (RoleBindings to the ClusterRoles, as `edit` and `view` are bound).
    let ns = namespace(&client, "tenancy-team").await?;
    let other = namespace(&client, "tenancy-other").await?;
    let roles = run(
        helm(kc)
            .args(["template", release, chart().to_str().unwrap()])
            .args(["--show-only", "templates/tenant-roles.yaml"]),
        None,
    )?;
    run(kubectl(kc).args(["apply", "-f", "-"]), Some(&roles))?;
    for (user, role) in [("alice", "edit"), ("bob", "view")] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{user}-macie")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": format!("{fullname}-tenant-{role}")},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
        }))?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await?;
    }
    // The authorizer sees new bindings through its own watch: wait until both have reached it.
    wait_for(
        "the tenant bindings to take effect",
        Duration::from_secs(30),
        || async {
            let alice = allowed(&client, "alice", "create", "maciejobs", &ns).await?;
            let bob = allowed(&client, "bob", "get", "maciejobs", &ns).await?;
            Ok((alice && bob).then_some(()))
        },
    )
    .await?;
    // (user, verb, resource, namespace, allowed)
    let mut table: Vec<(&str, &str, &str, &str, bool)> = Vec::new();
    for kind in kinds {
        for verb in write {
            table.push(("alice", verb, kind, &ns, true));
            table.push(("bob", verb, kind, &ns, read.contains(&verb)));
            table.push(("alice", verb, kind, &other, false));
        }
        for verb in ["get", "update", "patch"] {
            let status = if kind == "maciejobs" {
                "maciejobs/status"
            } else {
                "maciediscoveries/status"
            };
            table.push(("alice", verb, status, &ns, false));
            table.push(("bob", verb, status, &ns, false));
        }
    }
    table.push(("alice", "list", "macieaccounts", &ns, false));
    let mut wrong = Vec::new();
    for (user, verb, resource, ns, want) in table {
        if allowed(&client, user, verb, resource, ns).await? != want {
            wrong.push(format!("{user} {verb} {resource} in {ns}: expected allowed={want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // As alice: she declares a MacieJob and changes it, but cannot write its status, which the
    // admin can (so the refusal is the authorizer's, not the patch's).
    let kubeconfig = kube::config::Kubeconfig::read_from(kc)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info.impersonate = Some("alice".into());
    let alice = kube::Client::try_from(config)?;
    let as_alice: Api<MacieJob> = Api::namespaced(alice, &ns);
    create_job(
        &as_alice,
        "team-job",
        json!({"jobName": "team-nightly", "jobStatus": "USER_PAUSED"}),
    )
    .await?;
    as_alice
        .patch(
            "team-job",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"jobStatus": "RUNNING"}})),
        )
        .await?;
    // Another team's job id, as a forged record of the job this resource created.
    let forged = Patch::Merge(json!({"status": {"creation": {
        "clientToken": "forged",
        "outcome": "Succeeded",
        "requestedAt": "2026-01-01T00:00:00Z",
        "jobId": "0123456789abcdef0123456789abcdef",
    }}}));
    let err = as_alice
        .patch_status("team-job", &PatchParams::default(), &forged)
        .await
        .expect_err("alice wrote a MacieJob's status");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");
    assert!(err.to_string().contains("maciejobs/status"), "{err}");
    let as_admin: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    as_admin
        .patch_status("team-job", &PatchParams::default(), &forged)
        .await?;
    as_admin.delete("team-job", &DeleteParams::default()).await?;
    Ok(())
}

/// The chart's Deployment into `ns` (values `extra`), checked by the API server with a dry run:
/// the Deployment's warnings (PodSecurity checks a workload's pod template only as a warning),
/// and a Pod made from its pod template, which PodSecurity admits (None) or refuses
/// (Some(message)).
fn pod_security(kc: &Path, ns: &str, extra: &[&str]) -> Result<(String, Option<String>)> {
    let chart = chart();
    let rendered = run(
        helm(kc)
            .args(["template", "psa", chart.to_str().unwrap(), "--namespace", ns])
            .args(["--show-only", "templates/deployment.yaml"])
            .args(extra),
        None,
    )?;
    let (_, warnings) = run_with_stderr(
        kubectl(kc).args(["apply", "--dry-run=server", "-f", "-"]),
        Some(&rendered),
    )?;
    let deployment: serde_json::Value = serde_saphyr::from_str(&rendered)?;
    let template = &deployment["spec"]["template"];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "psa-check", "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    });
    let created = run(
        kubectl(kc).args(["create", "--dry-run=server", "-f", "-"]),
        Some(&pod.to_string()),
    );
    Ok((warnings, created.err().map(|e| e.to_string())))
}

/// The chart's workload meets the Pod Security `restricted` standard: in a namespace that
/// enforces it, a Pod from the Deployment's pod template is admitted and the Deployment draws
/// no PodSecurity warning. The same check refuses a template that may run as root, so it is
/// live (no controller-manager runs here, so the Deployment itself never makes Pods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_workload_passes_pod_security_restricted() -> Result<()> {
    let cp = control_plane().await?;
    let kc = cp.kubeconfig();
    let ns = "psa-restricted";
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }},
    });
    run(kubectl(kc).args(["create", "-f", "-"]), Some(&manifest.to_string()))?;

    let (warnings, refused) = pod_security(kc, ns, &[])?;
    assert_eq!(refused, None, "a Pod from the chart's pod template is refused");
    assert!(
        !warnings.contains("PodSecurity"),
        "the Deployment draws warnings: {warnings}"
    );

    let (warnings, refused) = pod_security(kc, ns, &["--set", "podSecurityContext.runAsNonRoot=false"])?;
    let refused = refused.context("a pod template that may run as root was admitted")?;
    assert!(
        refused.contains("violates PodSecurity \"restricted:latest\""),
        "{refused}"
    );
    assert!(refused.contains("runAsNonRoot"), "{refused}");
    assert!(warnings.contains("would violate PodSecurity"), "no warning: {warnings}");
    Ok(())
}
