//! End-to-end test support: one local control plane per test binary (with the CRDs applied),
//! and per test a namespace, an in-process macie-emulator and an in-process operator.
#![allow(dead_code)]

pub mod chart;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aws_sdk_macie2::config::{BehaviorVersion, Credentials, Region};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use macie_emulator::seed::SeedJob;
use macie_emulator::{Seed, Shared};
use macie_operator::account::{self, AccountController, Tenancy};
use macie_operator::api::{MacieAccount, MacieJob};
use macie_operator::job::{self, JobController};
use macie_operator::macie::MacieClients;
use macie_operator::macie::jobs::JobPoller;
use serde_json::{Value, json};
use testkit::{ControlPlane, wait_for};
use tokio::sync::OnceCell;

pub const REGION: &str = "us-east-1";

static CONTROL_PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// The control plane shared by the tests of this binary, with the CRDs established. Its
/// processes stop when the test binary exits (testkit's guard).
pub async fn control_plane() -> Result<&'static ControlPlane> {
    CONTROL_PLANE
        .get_or_try_init(|| async {
            let cp = ControlPlane::start().await?;
            install_crds(&cp).await?;
            Ok::<_, anyhow::Error>(cp)
        })
        .await
}

/// What most end-to-end tests start from: the shared control plane, an admin client, a fresh
/// namespace and an emulator with the default seed.
pub struct Scene {
    pub cp: &'static ControlPlane,
    pub client: kube::Client,
    pub ns: String,
    pub emu: EmulatorHandle,
}

/// (with the `default` MacieAccount, as the chart creates it with cancelling and every
/// discovery account opted in).
pub async fn scene(namespace_name: &str) -> Result<Scene> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    default_account(&client).await?;
    let ns = namespace(&client, namespace_name).await?;
    let emu = EmulatorHandle::start(Seed::default()).await?;
    Ok(Scene { cp, client, ns, emu })
}

/// Regions the tests' default account allows (us-eats-1: a typo region some tests use for an
/// unreachable region).
pub const TEST_REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "ap-southeast-4", "us-eats-1"];

/// The `default` MacieAccount as the chart creates it with `defaultAccount.jobs.allowCancel`
/// and `defaultAccount.discovery.accountIds: ["*"]` opted in (the operator's own credentials,
/// every namespace, every job, cancel allowed, every discovery account), with the regions the
/// tests use.
pub async fn default_account(client: &kube::Client) -> Result<()> {
    let api: Api<MacieAccount> = Api::all(client.clone());
    let obj: MacieAccount = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": "default"},
        "spec": {
            "regions": TEST_REGIONS,
            "namespaceSelector": {},
            "jobs": {"names": ["*"], "allowCancel": true},
            "discovery": {"accountIds": ["*"]}
        }
    }))?;
    api.patch("default", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

/// Applies the operator's CRDs and waits until they are established.
pub async fn install_crds(cp: &ControlPlane) -> Result<()> {
    testkit::install_crds(cp, macie_operator::api::crds()).await
}

/// A running emulator.
pub struct EmulatorHandle {
    pub url: String,
    pub state: Shared,
    _bg: macie_emulator::Background,
}

impl EmulatorHandle {
    pub async fn start(seed: Seed) -> Result<EmulatorHandle> {
        let bg = macie_emulator::Background::start(seed, REGION, "123456789012").await?;
        Ok(EmulatorHandle {
            url: bg.url.clone(),
            state: bg.state.clone(),
            _bg: bg,
        })
    }

    /// Adds a job with any status; returns its id.
    pub fn put_job(&self, job: Value) -> String {
        let job: SeedJob = serde_json::from_value(job).expect("valid seed job");
        let mut e = self.state.lock();
        let now = e.now();
        e.put_job(&job, now).expect("job added")
    }

    /// Changes a job's status as Macie would on its own (out of band).
    pub fn set_status(&self, job_id: &str, status: &str) -> Result<()> {
        let status = serde_json::from_value(json!(status))?;
        self.state
            .lock()
            .set_status_service_side(None, None, job_id, status)
            .map_err(anyhow::Error::msg)
    }

    pub fn status(&self, job_id: &str) -> Option<String> {
        let mut e = self.state.lock();
        let snap = e.snapshot(None, None);
        snap["jobs"]
            .as_array()?
            .iter()
            .find(|j| j["jobId"] == job_id)
            .map(|j| j["jobStatus"].as_str().unwrap_or_default().to_string())
    }

    /// Every UpdateClassificationJob call that reached the emulator, injected failures included.
    pub fn update_attempts(&self) -> Vec<Value> {
        let e = self.state.lock();
        e.calls
            .iter()
            .filter(|c| c.operation == "UpdateClassificationJob")
            .map(|c| serde_json::to_value(c).unwrap())
            .collect()
    }

    /// UpdateClassificationJob calls from the log (injected failures excluded).
    pub fn update_calls(&self) -> Vec<Value> {
        let e = self.state.lock();
        e.calls
            .iter()
            .filter(|c| c.operation == "UpdateClassificationJob" && !c.injected)
            .map(|c| serde_json::to_value(c).unwrap())
            .collect()
    }

    pub fn requests(&self, op: &str) -> u64 {
        self.state.lock().counters.get(op).map_or(0, |c| c.requests)
    }
}

/// A controller running in a task until stopped.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Spawns `run(shutdown)`.
    pub fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async {
            let _ = rx.await;
        })));
        Running { stop, task }
    }

    /// Asks for a graceful stop and waits (up to 20 s) for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

pub fn init_test_logging() {
    // Operator logs go to the test output; RUST_LOG picks the level (default warn).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = macie_operator::runtime::init_logging(macie_operator::runtime::LogFormat::Text, &filter);
}

/// The MacieAccount controller and the tenancy, in process (what both controllers need).
pub struct Accounts {
    pub tenancy: Arc<Tenancy>,
    running: Running,
}

impl Accounts {
    pub fn start(client: kube::Client, clients: Arc<MacieClients>) -> Accounts {
        let tenancy = Tenancy::start(client.clone(), "default");
        let controller = AccountController::new(
            client,
            clients,
            tenancy.clone(),
            account::Config {
                recheck: Duration::from_secs(60),
                instance: Some("e2e".into()),
            },
        );
        Accounts {
            tenancy,
            running: Running::spawn(|stop| controller.run(stop)),
        }
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// The MacieJob controller, in process, watching one namespace.
pub struct OperatorHandle {
    pub poller: Arc<JobPoller>,
    pub tracked: job::Tracked,
    pub clients: Arc<MacieClients>,
    accounts: Accounts,
    running: Running,
}

impl OperatorHandle {
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        endpoint: &str,
        tune: impl FnOnce(&mut job::Config),
    ) -> OperatorHandle {
        init_test_logging();
        let clients = static_clients(endpoint).await;
        let mut config = job::Config {
            default_region: REGION.into(),
            poll_interval: Duration::from_millis(500),
            page_size: 100,
            plan: job::plan::Settings {
                step_timeout: Duration::from_secs(30),
                expiry_warning: Duration::from_secs(7 * 86400),
            },
            namespace: Some(namespace.to_string()),
            concurrency: 8,
            create_rate: 0.1,
            instance: Some("e2e".into()),
        };
        tune(&mut config);
        default_account(&client).await.expect("the default MacieAccount");
        let accounts = Accounts::start(client.clone(), clients.clone());
        let controller = JobController::new(client, clients.clone(), accounts.tenancy.clone(), config);
        let poller = controller.poller();
        let tracked = controller.tracked();
        OperatorHandle {
            poller,
            tracked,
            clients,
            accounts,
            running: Running::spawn(|stop| controller.run(stop)),
        }
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.accounts.stop().await;
    }
}

/// A fresh namespace.
pub async fn namespace(client: &kube::Client, name: &str) -> Result<String> {
    testkit::create_namespace(client, name).await
}

/// A MacieDiscovery declaring (account id, status) pairs.
pub fn discovery_object(name: &str, accounts: &[(String, &str)]) -> Result<macie_operator::api::MacieDiscovery> {
    let accounts: Vec<Value> = accounts
        .iter()
        .map(|(a, s)| json!({"accountId": a, "status": s}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieDiscovery",
        "metadata": {"name": name}, "spec": {"accounts": accounts}
    }))?)
}

/// Creates a MacieJob from a spec.
pub async fn create_job(api: &Api<MacieJob>, name: &str, spec: Value) -> Result<MacieJob> {
    let obj: MacieJob = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1",
        "kind": "MacieJob",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// The Ready condition's (status, reason) when its observedGeneration is current.
pub fn ready(obj: &MacieJob) -> Option<(String, String)> {
    let status = obj.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    if c.observed_generation != obj.metadata.generation {
        return None;
    }
    Some((c.status.clone(), c.reason.clone()))
}

/// The MacieJob's condition of `type_` (Ready, Reconciling, Stalled); panics when absent.
pub fn condition(obj: &MacieJob, type_: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {obj:?}"))
        .clone()
}

/// Waits until the MacieJob's Ready reason is `reason` (for its current generation).
pub async fn wait_reason(api: &Api<MacieJob>, name: &str, reason: &str, deadline: Duration) -> Result<MacieJob> {
    wait_for(&format!("MacieJob {name} to report {reason}"), deadline, || async {
        let o = api.get(name).await?;
        Ok(match ready(&o) {
            Some((_, r)) if r == reason => Some(o),
            _ => None,
        })
    })
    .await
}

/// The MacieDiscovery controller's settings in the tests.
pub fn discovery_config(namespace: &str) -> macie_operator::discovery::Config {
    macie_operator::discovery::Config {
        default_region: REGION.into(),
        poll_interval: Duration::from_millis(500),
        batch_window: Duration::from_millis(300),
        plan: macie_operator::discovery::plan::Settings {
            step_timeout: Duration::from_secs(30),
            error_retry: Duration::from_secs(3600),
            batch_size: 50,
        },
        namespace: Some(namespace.to_string()),
        instance: Some("e2e".into()),
    }
}

/// The MacieDiscovery controller, in process, watching one namespace.
pub struct DiscoveryHandle {
    pub engines: Arc<macie_operator::discovery::Engines>,
    accounts: Accounts,
    running: Running,
}

pub async fn static_clients(endpoint: &str) -> Arc<MacieClients> {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "e2e"))
        .http_client(macie_operator::macie::http_client())
        .load()
        .await;
    Arc::new(MacieClients::new(sdk, Some(endpoint.to_string())).with_sts_endpoint(Some(endpoint.to_string())))
}

impl DiscoveryHandle {
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        endpoint: &str,
        tune: impl FnOnce(&mut macie_operator::discovery::Config),
    ) -> DiscoveryHandle {
        init_test_logging();
        let mut config = discovery_config(namespace);
        tune(&mut config);
        let clients = static_clients(endpoint).await;
        let accounts = Accounts::start(client.clone(), clients.clone());
        let controller =
            macie_operator::discovery::DiscoveryController::new(client, clients, accounts.tenancy.clone(), config);
        let engines = controller.engines();
        DiscoveryHandle {
            engines,
            accounts,
            running: Running::spawn(|stop| controller.run(stop)),
        }
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.accounts.stop().await;
    }
}

impl EmulatorHandle {
    /// Sets an account's status directly (as an out-of-band change would).
    pub fn put_account(&self, id: &str, status: &str, paused: bool) {
        let status = serde_json::from_value(json!(status)).expect("status");
        self.state
            .lock()
            .put_account(None, None, id, macie_emulator::state::Account { status, paused })
            .expect("account");
    }

    pub fn account(&self, id: &str) -> Option<String> {
        let mut e = self.state.lock();
        let snap = e.snapshot(None, None);
        snap["accounts"][id]["status"].as_str().map(str::to_string)
    }

    /// BatchUpdate calls from the log that Macie processed (injected failures excluded).
    pub fn batch_calls(&self) -> Vec<Value> {
        let e = self.state.lock();
        e.calls
            .iter()
            .filter(|c| c.operation == "BatchUpdateAutomatedDiscoveryAccounts" && !c.injected)
            .map(|c| serde_json::to_value(c).unwrap())
            .collect()
    }
}

/// Creates each spec as a `K` through the API server and checks that it is rejected with a
/// message naming `field`.
pub async fn assert_rejected<K>(client: &kube::Client, ns: &str, cases: &[(Value, &str)]) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = kube::api::ApiResource::erase::<K>(&());
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    for (i, (spec, field)) in cases.iter().enumerate() {
        let obj = serde_json::from_value(json!({
            "apiVersion": ar.api_version, "kind": ar.kind,
            "metadata": {"name": format!("bad-{i}")}, "spec": spec
        }))?;
        let err = dynamic
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{spec} must be rejected"));
        let msg = err.to_string();
        assert!(msg.contains(field), "{spec}: message does not name {field}: {msg}");
    }
    Ok(())
}

/// A `macie-operator run` process (the debug binary of this workspace) watching one namespace,
/// with its stderr in a log file under the temp directory.
pub struct OperatorProcess {
    pub name: String,
    /// Port of its metrics server (/metrics, plain HTTP unless `extra` has --metrics-secure).
    pub metrics_port: u16,
    /// Port of its health server (/livez, /readyz).
    pub health_port: u16,
    pub child: tokio::process::Child,
    pub log: std::path::PathBuf,
}

impl OperatorProcess {
    /// Starts `macie-operator run` with the test defaults plus `extra` flags.
    pub fn spawn(name: &str, kubeconfig: &std::path::Path, ns: &str, endpoint: &str, extra: &[&str]) -> Result<Self> {
        let (metrics_port, health_port) = (testkit::free_port()?, testkit::free_port()?);
        let log = std::env::temp_dir().join(format!("macie-op-{name}-{}.log", std::process::id()));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_macie-operator"))
            .args(["run", "--namespace", ns, "--region", REGION, "--poll-interval", "500ms"])
            .args([
                "--macie-endpoint",
                endpoint,
                "--identity",
                name,
                "--log",
                "info,kube=warn",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_STS", endpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("start macie-operator")?;
        Ok(OperatorProcess {
            name: name.to_string(),
            metrics_port,
            health_port,
            child,
            log,
        })
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// How long a set of MacieJobs may take to converge in the scenario suites.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(180);

/// Replaces the emulator's fault settings (PUT /__admin/faults).
pub fn set_faults(emu: &EmulatorHandle, faults: Value) -> Result<()> {
    emu.state
        .lock()
        .set_faults(serde_json::from_value(faults)?)
        .map_err(anyhow::Error::msg)
}

/// Checks every UpdateClassificationJob call Macie processed: each was accepted, valid and not
/// a repeat. Returns how many there were.
pub fn accepted_updates(emu: &EmulatorHandle) -> usize {
    let calls = emu.update_calls();
    for c in &calls {
        assert_eq!(c["outcome"], "OK", "a processed update was refused: {c}");
        assert_eq!(c["valid"], true, "invalid transition: {c}");
        assert_eq!(c["repeated"], false, "repeated update: {c}");
    }
    calls.len()
}

/// Waits until every MacieJob in `want` (name -> (job id, status)) reports Converged at that
/// status, and Macie shows it too.
pub async fn wait_converged(
    api: &Api<MacieJob>,
    emu: &EmulatorHandle,
    want: &BTreeMap<String, (String, String)>,
) -> Result<()> {
    wait_for(
        &format!("{} MacieJobs to converge", want.len()),
        CONVERGE_DEADLINE,
        || async {
            let list = api.list(&ListParams::default()).await?;
            let done = list
                .items
                .iter()
                .filter(|o| {
                    let name = o.metadata.name.as_deref().unwrap_or_default();
                    let Some((id, status)) = want.get(name) else {
                        return false;
                    };
                    let at = o
                        .status
                        .as_ref()
                        .and_then(|s| s.job.as_ref())
                        .map(|j| j.job_status.as_str());
                    ready(o).is_some_and(|(_, r)| r == "Converged")
                        && at == Some(status.as_str())
                        && emu.status(id).as_deref() == Some(status.as_str())
                })
                .count();
            Ok((done == want.len()).then_some(()))
        },
    )
    .await
}

/// Adds `n` ONE_TIME jobs in status `from` and a MacieJob `<prefix>-<i>` for each asking for
/// `to`. Returns name -> (job id, to).
pub async fn jobs(
    api: &Api<MacieJob>,
    emu: &EmulatorHandle,
    prefix: &str,
    n: usize,
    from: &str,
    to: &str,
) -> Result<BTreeMap<String, (String, String)>> {
    let mut want = BTreeMap::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let id = emu.put_job(json!({"name": name, "jobType": "ONE_TIME", "jobStatus": from}));
        create_job(api, &name, json!({"jobId": id, "jobStatus": to})).await?;
        want.insert(name, (id, to.to_string()));
    }
    Ok(want)
}

pub async fn set_desired(api: &Api<MacieJob>, name: &str, status: &str) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobStatus": status}})),
    )
    .await?;
    Ok(())
}
