//! `make bench`: the release operator against a local control plane (kube-apiserver + etcd) and
//! an in-process macie-emulator. For each size it measures the steady-state Macie read cost per
//! sweep against the ideal, the convergence latency of a mass flip of desired statuses (clean,
//! then with 100 ms per call and 10% throttling), the operator's CPU and memory, and the
//! batching of automated-discovery changes, and how long creating N classification jobs from
//! `spec.definition` takes against the create quota (one every 1 / rate seconds at best), and
//! the read cost of an account whose jobs are nearly all COMPLETE or CANCELLED (the history run:
//! sweeps should follow the jobs that can change). Prints tables and writes JSON to `target/bench/`.
#![forbid(unsafe_code)]

mod report;
mod system;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use macie_emulator::{Background, Seed};
use macie_operator::api::{MacieDiscovery, MacieJob};
use serde::Serialize;
use serde_json::{Value, json};
use testkit::ControlPlane;

use report::{
    Capacity, ConfirmRun, CreateRun, DiscoveryRun, Flip, Footprint, HistoryRun, JobRun, Percentiles, ReadCost, Report,
};
use system::{Machine, ProcStats};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
/// Requests in flight from the driver when it creates or patches resources.
const DRIVER_CONCURRENCY: usize = 32;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Benchmarks the release macie-operator against a local control plane and macie-emulator")]
struct Args {
    /// MacieJob counts (each over as many jobs) for the read-cost, convergence and footprint runs.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000,10000")]
    jobs: Vec<usize>,
    /// Account counts for the discovery runs (spread over `--discovery-resources` resources).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,5000")]
    accounts: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    discovery_resources: usize,
    /// The operator binary to run.
    #[arg(long, default_value = "target/x86_64-unknown-linux-musl/release/macie-operator")]
    operator: PathBuf,
    /// Where the JSON results and the operator logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The operator's --poll-interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(with = "secs")]
    poll_interval: Duration,
    /// The operator's --page-size (ListClassificationJobs maxResults).
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// The operator's --discovery-batch-size.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Steady-state sweeps the read cost is averaged over.
    #[arg(long, default_value_t = 3)]
    sweeps: u64,
    /// MacieJobs with a ONE_TIME `spec.definition` applied at once for the create run (0: no
    /// create run).
    #[arg(long, default_value_t = 100)]
    creates: usize,
    /// CreateClassificationJob calls per second: the operator's --create-rate and the emulator's
    /// create quota (Macie publishes 0.1).
    #[arg(long, default_value_t = 0.1, value_parser = parse_rate)]
    create_rate: f64,
    /// Jobs in the account of the history run, all COMPLETE or CANCELLED but
    /// `--history-managed` (0: no history run).
    #[arg(long, default_value_t = 10_000)]
    history_jobs: usize,
    /// Of the history run's jobs, how many are RUNNING, each managed by a MacieJob (by id).
    #[arg(long, default_value_t = 100)]
    history_managed: usize,
    /// The operator's --concurrency (reconciles in flight per controller); unset: its default.
    #[arg(long)]
    concurrency: Option<u16>,
    /// MacieJob counts for the confirmation runs: each flipped once with the operator at its
    /// default poll interval (60 s), so that apply -> Ready shows the confirmation by reads of
    /// the job, not the next sweep.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "20,1000")]
    confirm_jobs: Vec<usize>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate from above 0 to 1000 per second")),
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // On Ctrl-C or SIGTERM the run is dropped, which stops the operator (kill on drop) and the
    // control plane (testkit's guards).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(args: Args) -> Result<()> {
    if !args.operator.is_file() {
        bail!(
            "{} not found: build it first (make bench does: cargo build --release --target x86_64-unknown-linux-musl --workspace --bins)",
            args.operator.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let machine = Machine::read();
    eprintln!("bench: {machine}");
    let mut report = Report::new(machine, serde_json::to_value(&args)?);
    for &n in &args.jobs {
        report
            .jobs
            .push(job_run(&args, n).await.with_context(|| format!("job run with {n}"))?);
        report.write(&args.out)?;
    }
    for &n in &args.accounts {
        report.discovery.push(
            discovery_run(&args, n)
                .await
                .with_context(|| format!("discovery run with {n}"))?,
        );
        report.write(&args.out)?;
    }
    for &n in &args.confirm_jobs {
        report.confirm.push(
            confirm_run(&args, n)
                .await
                .with_context(|| format!("confirmation run with {n}"))?,
        );
        report.write(&args.out)?;
    }
    if args.history_jobs > 0 {
        let (n, m) = (args.history_jobs, args.history_managed);
        report.history.push(
            history_run(&args, n, m)
                .await
                .with_context(|| format!("history run with {n} jobs, {m} managed"))?,
        );
        report.write(&args.out)?;
    }
    if args.creates > 0 {
        let n = args.creates;
        report.creates.push(
            create_run(&args, n)
                .await
                .with_context(|| format!("create run with {n}"))?,
        );
        report.write(&args.out)?;
    }
    report.finish();
    let path = report.write(&args.out)?;
    println!("{}", report.tables());
    println!("JSON: {}", path.display());
    let problems = report.problems();
    if !problems.is_empty() {
        bail!("the operator broke a promise:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// A fresh control plane with the CRDs, a namespace and an emulator.
struct Env {
    cp: ControlPlane,
    client: kube::Client,
    ns: String,
    emu: Background,
}

impl Env {
    async fn start() -> Result<Env> {
        let cp = ControlPlane::start().await?;
        testkit::install_crds(&cp, macie_operator::api::crds()).await?;
        let client = cp.client().await?;
        let ns = testkit::create_namespace(&client, "bench").await?;
        let emu = Background::start(Seed::default(), REGION, ACCOUNT).await?;
        default_account(&client).await?;
        Ok(Env { cp, client, ns, emu })
    }

    fn faults(&self, faults: Value) -> Result<()> {
        self.emu
            .state
            .lock()
            .set_faults(serde_json::from_value(faults)?)
            .map_err(anyhow::Error::msg)
    }

    fn requests(&self, op: &str) -> u64 {
        self.emu.state.lock().counters.get(op).map_or(0, |c| c.requests)
    }
}

/// The `default` MacieAccount as the chart creates it with cancelling and every discovery
/// account opted in (the operator's own credentials, every namespace, every job, cancel allowed,
/// every discovery account), and creating jobs (`jobs.allowCreate`) for the create run.
async fn default_account(client: &kube::Client) -> Result<()> {
    use kube::api::{Api, Patch, PatchParams};
    use macie_operator::api::MacieAccount;
    let obj: MacieAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieAccount",
        "metadata": {"name": "default"},
        "spec": {"regions": [REGION], "namespaceSelector": {},
                 "jobs": {"names": ["*"], "allowCancel": true, "allowCreate": true}, "discovery": {"accountIds": ["*"]}}
    }))?;
    Api::<MacieAccount>::all(client.clone())
        .patch(
            "default",
            &PatchParams::apply("macie-bench").force(),
            &Patch::Apply(&obj),
        )
        .await?;
    Ok(())
}

/// Creates one MacieJob `<prefix>-<i>` per job id, RUNNING, a few at a time.
async fn create_running(api: &Api<MacieJob>, prefix: &str, ids: &[String]) -> Result<()> {
    stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let api = api.clone();
            async move {
                let obj: MacieJob = serde_json::from_value(json!({
                    "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob",
                    "metadata": {"name": format!("{prefix}-{i}")},
                    "spec": {"jobId": id, "jobStatus": "RUNNING"},
                }))?;
                api.create(&PostParams::default(), &obj).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// The release operator as a child process.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
    /// Its metrics server (plain HTTP).
    metrics_port: u16,
    /// Its health server (/readyz).
    health_port: u16,
    log: PathBuf,
}

impl Operator {
    fn spawn(args: &Args, env: &Env, log: &Path) -> Result<Operator> {
        let (metrics_port, health_port) = (testkit::free_port()?, testkit::free_port()?);
        let child = tokio::process::Command::new(&args.operator)
            .args(["run", "--namespace", &env.ns, "--region", REGION, "--log", "warn"])
            .args(["--macie-endpoint", &env.emu.url])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .args([
                "--poll-interval",
                &humantime::format_duration(args.poll_interval).to_string(),
            ])
            .args(["--page-size", &args.page_size.to_string()])
            .args(["--discovery-batch-size", &args.batch_size.to_string()])
            .args(["--create-rate", &args.create_rate.to_string()])
            .args(args.concurrency.map(|c| format!("--concurrency={c}")))
            .env("KUBECONFIG", env.cp.kubeconfig())
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_STS", &env.emu.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", args.operator.display()))?;
        let pid = child.id().context("operator pid")?;
        Ok(Operator {
            child,
            pid,
            metrics_port,
            health_port,
            log: log.to_path_buf(),
        })
    }

    /// Fails if the operator has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the operator exited ({status}); its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid)
    }
}

/// The sum of a metric's samples on the metrics server's /metrics.
async fn metric_at(port: u16, name: &str) -> Result<f64> {
    let (_, body) = testkit::http_get(port, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The kube-apiserver's own write counts (GET /metrics with the admin client); None, with a
/// line on stderr, if it cannot be read.
async fn apiserver_writes(client: &kube::Client) -> Option<BTreeMap<String, u64>> {
    let text = async {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        Ok::<_, anyhow::Error>(client.request_text(req).await?)
    }
    .await;
    match text {
        Ok(t) => Some(system::apiserver_writes(&t)),
        Err(e) => {
            eprintln!("bench: kube-apiserver /metrics: {e:#}");
            None
        }
    }
}

/// Waits until `check` holds, polling every 100 ms, failing after `deadline` or if the operator
/// exits.
async fn until<F, Fut>(what: &str, op: &mut Operator, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>>>,
{
    let start = Instant::now();
    let mut told = Instant::now();
    loop {
        op.alive()?;
        match check().await? {
            None => return Ok(()),
            Some(progress) if start.elapsed() > deadline => {
                bail!("timed out after {deadline:?} waiting for {what} ({progress})")
            }
            Some(progress) => {
                if told.elapsed() > Duration::from_secs(15) {
                    eprintln!(
                        "bench: waiting for {what}: {progress} after {:.0} s",
                        start.elapsed().as_secs_f64()
                    );
                    told = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
}

fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(180) + Duration::from_millis(100) * n as u32
}

/// Name -> (generation, job status, first seen Ready so).
type Seen = Arc<Mutex<HashMap<String, (i64, String, SystemTime)>>>;

/// Per MacieJob: the first time the driver saw it Ready at (generation, job status).
#[derive(Clone, Default)]
struct ReadyWatch {
    seen: Seen,
}

impl ReadyWatch {
    fn start(api: Api<MacieJob>) -> (ReadyWatch, tokio::task::JoinHandle<()>) {
        let w = ReadyWatch::default();
        let seen = w.seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = events.next().await {
                let Ok(o) = ev else { continue };
                let Some((generation, status)) = ready_state(&o) else {
                    continue;
                };
                let name = o.metadata.name.clone().unwrap_or_default();
                let mut m = seen.lock().unwrap_or_else(|p| p.into_inner());
                match m.get(&name) {
                    Some((g, s, _)) if *g == generation && *s == status => {}
                    _ => {
                        m.insert(name, (generation, status, SystemTime::now()));
                    }
                }
            }
        });
        (w, task)
    }

    /// How many of `want` (name -> (generation, status)) are Ready as wanted, with when.
    fn matching(&self, want: &HashMap<String, (i64, String)>) -> HashMap<String, SystemTime> {
        let m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        want.iter()
            .filter_map(|(name, (g, s))| match m.get(name) {
                Some((g2, s2, at)) if g2 == g && s2 == s => Some((name.clone(), *at)),
                _ => None,
            })
            .collect()
    }
}

/// (generation, job status) when the Ready condition is True for the current generation.
fn ready_state(o: &MacieJob) -> Option<(i64, String)> {
    let st = o.status.as_ref()?;
    let generation = o.metadata.generation?;
    let ready = st
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == Some(generation));
    ready.then(|| {
        (
            generation,
            st.job.as_ref().map(|j| j.job_status.clone()).unwrap_or_default(),
        )
    })
}

/// `n` RUNNING ONE_TIME jobs (`job-<i>`) put straight into the emulator; their ids.
fn put_running_jobs(env: &Env, n: usize) -> Result<Vec<String>> {
    let mut e = env.emu.state.lock();
    let now = e.now();
    (0..n)
        .map(|i| {
            let job = serde_json::from_value(
                json!({"name": format!("job-{i}"), "jobType": "ONE_TIME", "jobStatus": "RUNNING"}),
            )?;
            e.put_job(&job, now).map_err(anyhow::Error::msg)
        })
        .collect()
}

/// The default poll interval of `macie-operator run`.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// `n` MacieJobs over `n` RUNNING jobs, the operator at the default poll interval: one flip to
/// USER_PAUSED, with the DescribeClassificationJob calls it took per MacieJob.
async fn confirm_run(args: &Args, n: usize) -> Result<ConfirmRun> {
    eprintln!("bench: confirmation of {n} MacieJobs at the default poll interval: starting a control plane");
    let env = Env::start().await?;
    let ids = put_running_jobs(&env, n)?;
    let api: Api<MacieJob> = Api::namespaced(env.client.clone(), &env.ns);
    create_running(&api, "mj", &ids).await?;
    let names: Vec<String> = (0..n).map(|i| format!("mj-{i}")).collect();
    let job_of: HashMap<String, String> = names.iter().cloned().zip(ids.iter().cloned()).collect();
    let (watch, watch_task) = ReadyWatch::start(api.clone());
    let at_default = Args {
        poll_interval: DEFAULT_POLL_INTERVAL,
        ..args.clone()
    };
    let mut op = Operator::spawn(&at_default, &env, &args.out.join(format!("operator-confirm-{n}.log")))?;
    let want: HashMap<String, (i64, String)> = names.iter().map(|m| (m.clone(), (1, "RUNNING".to_string()))).collect();
    until("the first sync", &mut op, deadline_for(n), || async {
        let done = watch.matching(&want).len();
        Ok((done < n).then(|| format!("{done} of {n} Ready")))
    })
    .await?;
    let describes = env.requests("DescribeClassificationJob");
    let fleet = Fleet {
        api: &api,
        watch: &watch,
        names: &names,
        job_of: &job_of,
    };
    let flip = flip(&env, &mut op, &fleet, "USER_PAUSED", 2, json!({})).await?;
    let reads = env.requests("DescribeClassificationJob") - describes;
    eprintln!("bench: {flip}; {reads} DescribeClassificationJob");
    let _ = op.child.kill().await;
    let _ = op.child.wait().await;
    watch_task.abort();
    Ok(ConfirmRun {
        resources: n,
        poll_interval_s: DEFAULT_POLL_INTERVAL.as_secs_f64(),
        reads_per_step: reads as f64 / n.max(1) as f64,
        flip,
    })
}

async fn job_run(args: &Args, n: usize) -> Result<JobRun> {
    eprintln!("bench: {n} MacieJobs over {n} jobs: starting a control plane");
    let env = Env::start().await?;
    let ids = put_running_jobs(&env, n)?;
    let api: Api<MacieJob> = Api::namespaced(env.client.clone(), &env.ns);
    let t = Instant::now();
    create_running(&api, "mj", &ids).await?;
    eprintln!("bench: created {n} MacieJobs in {:.1} s", t.elapsed().as_secs_f64());
    let names: Vec<String> = (0..n).map(|i| format!("mj-{i}")).collect();
    let job_of: HashMap<String, String> = names.iter().cloned().zip(ids.iter().cloned()).collect();

    let (watch, watch_task) = ReadyWatch::start(api.clone());
    let mut op = Operator::spawn(args, &env, &args.out.join(format!("operator-jobs-{n}.log")))?;
    let t = Instant::now();
    let want: HashMap<String, (i64, String)> = names.iter().map(|m| (m.clone(), (1, "RUNNING".to_string()))).collect();
    until("the first sync", &mut op, deadline_for(n), || async {
        let done = watch.matching(&want).len();
        Ok((done < n).then(|| format!("{done} of {n} Ready")))
    })
    .await?;
    let initial_sync_s = t.elapsed().as_secs_f64();
    eprintln!("bench: first sync of {n} in {initial_sync_s:.1} s");

    let steady = steady_state(args, &env, &mut op, deadline_for(n)).await?;
    let (sweeps, list_calls) = (steady.sweeps, steady.list_calls);
    let read = ReadCost {
        resources: n,
        jobs: n,
        page_size: args.page_size,
        sweeps,
        list_calls,
        per_sweep: list_calls as f64 / sweeps as f64,
        ideal: n.div_ceil(args.page_size).max(1) as u64,
        describe_calls: steady.describe_calls,
        update_calls: steady.update_calls,
        peers_per_poll: n as u64,
        ratio: n as f64 / (list_calls as f64 / sweeps as f64),
    };
    let idle = steady.idle;
    eprintln!("bench: {read}");

    let mut flips = Vec::new();
    let mut generation = 1;
    for (to, faults) in [
        ("USER_PAUSED", json!({})),
        (
            "RUNNING",
            json!({"operations": {"*": {"latencyMs": 100, "throttleRate": 0.1}}, "seed": 7}),
        ),
    ] {
        generation += 1;
        env.faults(faults.clone())?;
        let fleet = Fleet {
            api: &api,
            watch: &watch,
            names: &names,
            job_of: &job_of,
        };
        let f = flip(&env, &mut op, &fleet, to, generation, faults).await?;
        eprintln!("bench: {f}");
        flips.push(f);
        env.faults(json!({}))?;
    }
    let _ = op.child.kill().await;
    let _ = op.child.wait().await;
    // The API server's capacity for the clean flip's writes, with no operator running (the
    // driver's watch stays, as during the flip).
    let capacity = match flips.first() {
        Some(clean) => apiserver_capacity(&env, &names, clean).await?,
        None => None,
    };
    if let Some(c) = &capacity {
        eprintln!(
            "bench: kube-apiserver capacity: {:?} in {:.1} s ({:.0} writes/s); the clean flip ran at {:.0}% of it",
            c.writes,
            c.seconds,
            c.writes_per_s,
            c.ratio * 100.0
        );
    }
    watch_task.abort();
    Ok(JobRun {
        resources: n,
        initial_sync_s,
        read,
        idle,
        flips,
        capacity,
    })
}

/// The writes the driver replays to measure the API server's capacity: the operator's writes in
/// a flip (status writes and Events, by verb), without the driver's own spec patches and the
/// leader's lease renewals.
#[derive(Debug, Default, PartialEq)]
struct Replay {
    /// Server-side applies of MacieJob status (what the operator sends).
    status_applies: u64,
    /// Merge patches of MacieJob status.
    status_patches: u64,
    event_creates: u64,
    /// Patches of existing Events (an Event series growing).
    event_patches: u64,
}

impl Replay {
    fn of(flip_writes: &BTreeMap<String, u64>) -> Replay {
        let get = |k: &str| flip_writes.get(k).copied().unwrap_or(0);
        Replay {
            status_applies: get("APPLY maciejobs/status"),
            status_patches: get("PATCH maciejobs/status"),
            event_creates: get("POST events"),
            event_patches: get("PATCH events"),
        }
    }

    /// The writes in the kube-apiserver's own terms, to compare with what it counts.
    fn writes(&self) -> BTreeMap<String, u64> {
        [
            ("APPLY maciejobs/status", self.status_applies),
            ("PATCH maciejobs/status", self.status_patches),
            ("POST events", self.event_creates),
            ("PATCH events", self.event_patches),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), n))
        .collect()
    }
}

/// One write of the replay, on the MacieJob or Event `i`.
#[derive(Clone, Copy, Debug)]
enum Write {
    StatusApply(usize),
    StatusPatch(usize),
    EventCreate(usize),
    EventPatch(usize),
}

fn micro_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Sends `clean`'s writes (see `Replay`) at DRIVER_CONCURRENCY with no operator running, and
/// times them. The Events to patch are created first, outside the timing, as the operator's
/// already existed.
async fn apiserver_capacity(env: &Env, names: &[String], clean: &Flip) -> Result<Option<Capacity>> {
    use k8s_openapi::api::events::v1::Event;
    let Some(flip_writes) = &clean.apiserver_writes else {
        return Ok(None);
    };
    let replay = Replay::of(flip_writes);
    let n = names.len().max(1);
    let jobs: Api<MacieJob> = Api::namespaced(env.client.clone(), &env.ns);
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let event = |i: usize, name: &str| -> Result<Event> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": format!("bench-capacity-{i}"), "namespace": env.ns},
            "eventTime": micro_time(SystemTime::now()),
            "reportingController": "macie.kubeops.dev/bench",
            "reportingInstance": "macie-bench",
            "action": "Measure",
            "reason": "Capacity",
            "type": "Normal",
            "note": "the benchmark measures the API server's write capacity",
            "regarding": {"apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob", "name": name, "namespace": env.ns},
        }))?)
    };
    // The Events the timed patches grow, one per MacieJob at most.
    let patched = (replay.event_patches as usize).min(n);
    stream::iter(0..patched)
        .map(|i| {
            let events = &events;
            let e = event(i, &names[i % n]);
            async move {
                events
                    .create(&PostParams::default(), &e?)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // Interleaved as the operator sends them: status, Event, status.
    let mut writes: Vec<Write> = Vec::new();
    let (mut sa, mut sp, mut ec, mut ep) = (0, 0, 0, 0);
    while sa < replay.status_applies
        || sp < replay.status_patches
        || ec < replay.event_creates
        || ep < replay.event_patches
    {
        if sa < replay.status_applies {
            writes.push(Write::StatusApply(sa as usize));
            sa += 1;
        } else if sp < replay.status_patches {
            writes.push(Write::StatusPatch(sp as usize));
            sp += 1;
        }
        if ec < replay.event_creates {
            writes.push(Write::EventCreate(patched + ec as usize));
            ec += 1;
        } else if ep < replay.event_patches {
            writes.push(Write::EventPatch(ep as usize));
            ep += 1;
        }
    }
    let before = apiserver_writes(&env.client).await;
    let t = Instant::now();
    stream::iter(writes)
        .map(|w| {
            let (jobs, events) = (&jobs, &events);
            let event = &event;
            async move {
                let ssa = PatchParams::apply("macie-bench-capacity").force();
                match w {
                    Write::StatusApply(i) => {
                        let body = json!({"apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob",
                            "status": {"observedGeneration": 1_000_000 + i}});
                        jobs.patch_status(&names[i % n], &ssa, &Patch::Apply(body)).await?;
                    }
                    Write::StatusPatch(i) => {
                        let body = json!({"status": {"observedGeneration": 2_000_000 + i}});
                        jobs.patch_status(&names[i % n], &PatchParams::default(), &Patch::Merge(body))
                            .await?;
                    }
                    Write::EventCreate(i) => {
                        events.create(&PostParams::default(), &event(i, &names[i % n])?).await?;
                    }
                    Write::EventPatch(i) => {
                        let body =
                            json!({"series": {"count": 2 + i / n, "lastObservedTime": micro_time(SystemTime::now())}});
                        events
                            .patch(
                                &format!("bench-capacity-{}", i % patched.max(1)),
                                &PatchParams::default(),
                                &Patch::Merge(body),
                            )
                            .await?;
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let seconds = t.elapsed().as_secs_f64();
    let after = apiserver_writes(&env.client).await;
    // What the API server counted (the same as the replay, unless something else wrote).
    let counted = before
        .zip(after)
        .map(|(a, b)| system::counts_between(&a, &b))
        .unwrap_or_else(|| replay.writes());
    Ok(Some(Capacity::of(clean, counted, DRIVER_CONCURRENCY, seconds)))
}

/// An account's history: `n` jobs, all but `m` COMPLETE or CANCELLED (they never change again),
/// the `m` others RUNNING and spread among them, each managed by a MacieJob by id. Sweeps list
/// only the jobs that can change, so the steady-state reads should follow `m`, not `n`: the
/// ideal is ceil(m / page size), the cost of listing everything ceil(n / page size).
async fn history_run(args: &Args, n: usize, m: usize) -> Result<HistoryRun> {
    if m > n {
        bail!("--history-managed {m} is more than --history-jobs {n}");
    }
    eprintln!("bench: history of {n} jobs, {m} RUNNING and managed: starting a control plane");
    let env = Env::start().await?;
    // The managed jobs at evenly spread positions, so every page of the full list holds some.
    let managed: HashSet<usize> = (0..m).map(|i| i * n / m.max(1)).collect();
    let ids: Vec<String> = {
        let mut e = env.emu.state.lock();
        let now = e.now();
        let mut ids = Vec::with_capacity(m);
        for i in 0..n {
            let status = match i {
                _ if managed.contains(&i) => "RUNNING",
                _ if i % 3 == 0 => "CANCELLED",
                _ => "COMPLETE",
            };
            let job = serde_json::from_value(
                json!({"name": format!("history-{i}"), "jobType": "ONE_TIME", "jobStatus": status}),
            )?;
            let id = e.put_job(&job, now).map_err(anyhow::Error::msg)?;
            if status == "RUNNING" {
                ids.push(id);
            }
        }
        ids
    };
    let api: Api<MacieJob> = Api::namespaced(env.client.clone(), &env.ns);
    create_running(&api, "mh", &ids).await?;
    let (watch, watch_task) = ReadyWatch::start(api.clone());
    let (list0, desc0) = (
        env.requests("ListClassificationJobs"),
        env.requests("DescribeClassificationJob"),
    );
    let mut op = Operator::spawn(args, &env, &args.out.join(format!("operator-history-{n}.log")))?;
    let t = Instant::now();
    let want: HashMap<String, (i64, String)> = (0..m)
        .map(|i| (format!("mh-{i}"), (1, "RUNNING".to_string())))
        .collect();
    until("the first sync", &mut op, deadline_for(m), || async {
        let done = watch.matching(&want).len();
        Ok((done < m).then(|| format!("{done} of {m} Ready")))
    })
    .await?;
    let initial_sync_s = t.elapsed().as_secs_f64();
    let (initial_list_calls, initial_describe_calls) = (
        env.requests("ListClassificationJobs") - list0,
        env.requests("DescribeClassificationJob") - desc0,
    );
    let steady = steady_state(args, &env, &mut op, deadline_for(m)).await?;
    watch_task.abort();
    let _ = op.child.kill().await;
    let sweeps = steady.sweeps.max(1) as f64;
    let run = HistoryRun {
        jobs: n,
        terminal: n - m,
        managed: m,
        page_size: args.page_size,
        initial_sync_s,
        initial_list_calls,
        initial_describe_calls,
        sweeps: steady.sweeps,
        list_calls: steady.list_calls,
        describe_calls: steady.describe_calls,
        update_calls: steady.update_calls,
        list_per_sweep: steady.list_calls as f64 / sweeps,
        reads_per_sweep: (steady.list_calls + steady.describe_calls) as f64 / sweeps,
        ideal: m.div_ceil(args.page_size).max(1) as u64,
        list_everything: n.div_ceil(args.page_size).max(1) as u64,
        idle: steady.idle,
    };
    eprintln!("bench: {run}");
    Ok(run)
}

/// Macie requests and the operator's footprint over `--sweeps` steady-state sweeps, from one
/// sweep boundary (the operator's sweep counter) to another.
struct Steady {
    sweeps: u64,
    list_calls: u64,
    describe_calls: u64,
    update_calls: u64,
    idle: Footprint,
}

async fn steady_state(args: &Args, env: &Env, op: &mut Operator, deadline: Duration) -> Result<Steady> {
    const SWEEPS: &str = "macie_operator_job_sweeps_total";
    let port = op.metrics_port;
    let sweeps0 = metric_at(port, SWEEPS).await?;
    until("a sweep boundary", op, deadline, || async {
        let s = metric_at(port, SWEEPS).await?;
        Ok((s <= sweeps0).then(|| format!("{s} sweeps")))
    })
    .await?;
    let s1 = metric_at(port, SWEEPS).await?;
    let counts = || {
        (
            env.requests("ListClassificationJobs"),
            env.requests("DescribeClassificationJob"),
            env.requests("UpdateClassificationJob"),
        )
    };
    let (list1, desc1, upd1) = counts();
    let (p1, t1) = (op.stats()?, Instant::now());
    until("steady-state sweeps", op, deadline, || async {
        let s = metric_at(port, SWEEPS).await?;
        Ok((s < s1 + args.sweeps as f64).then(|| format!("{} of {} sweeps", s - s1, args.sweeps)))
    })
    .await?;
    let s2 = metric_at(port, SWEEPS).await?;
    let (list2, desc2, upd2) = counts();
    let (p2, idle_s) = (op.stats()?, t1.elapsed().as_secs_f64());
    Ok(Steady {
        sweeps: (s2 - s1) as u64,
        list_calls: list2 - list1,
        describe_calls: desc2 - desc1,
        update_calls: upd2 - upd1,
        idle: Footprint {
            window_s: idle_s,
            cpu_s: p2.cpu_s - p1.cpu_s,
            cpu_per_min_s: (p2.cpu_s - p1.cpu_s) / idle_s * 60.0,
            rss_mib: p2.rss_mib,
            peak_rss_mib: p2.peak_rss_mib,
        },
    })
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

/// The MacieJobs a flip changes, and how the driver sees them.
struct Fleet<'a> {
    api: &'a Api<MacieJob>,
    watch: &'a ReadyWatch,
    names: &'a [String],
    /// MacieJob name -> job id.
    job_of: &'a HashMap<String, String>,
}

async fn flip(
    env: &Env,
    op: &mut Operator,
    fleet: &Fleet<'_>,
    to: &str,
    generation: i64,
    faults: Value,
) -> Result<Flip> {
    let Fleet {
        api,
        watch,
        names,
        job_of,
    } = *fleet;
    let n = names.len();
    let calls_before = env.emu.state.lock().calls.len();
    let lists_before = env.requests("ListClassificationJobs");
    let stats0 = op.stats()?;
    let apiserver = system::find_process("kube-apiserver", &env.cp.dir().display().to_string());
    let api0 = apiserver.and_then(|p| ProcStats::read(p).ok());
    let writes0 = apiserver_writes(&env.client).await;
    let t = Instant::now();
    let applied: HashMap<String, SystemTime> = stream::iter(names)
        .map(|name| async move {
            let at = SystemTime::now();
            let o = api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"jobStatus": to}})),
                )
                .await?;
            if o.metadata.generation != Some(generation) {
                bail!("{name}: generation {:?}, expected {generation}", o.metadata.generation);
            }
            Ok((name.clone(), at))
        })
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect()
        .await?;
    let apply_s = t.elapsed().as_secs_f64();
    let want: HashMap<String, (i64, String)> = names
        .iter()
        .map(|m| (m.clone(), (generation, to.to_string())))
        .collect();
    until(&format!("{n} MacieJobs Ready at {to}"), op, deadline_for(n), || async {
        let done = watch.matching(&want).len();
        Ok((done < n).then(|| format!("{done} of {n} Ready")))
    })
    .await?;
    let total_s = t.elapsed().as_secs_f64();
    let ready = watch.matching(&want);
    let stats1 = op.stats()?;
    let api1 = apiserver.and_then(|p| ProcStats::read(p).ok());
    let apiserver_cpu_s = api0.zip(api1).map(|(a, b)| b.cpu_s - a.cpu_s);
    let writes1 = apiserver_writes(&env.client).await;
    let apiserver_writes = writes0.zip(writes1).map(|(a, b)| system::counts_between(&a, &b));

    let calls = env.emu.state.lock().calls[calls_before..].to_vec();
    let updates: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == "UpdateClassificationJob" && !c.injected)
        .collect();
    let mut reached: HashMap<&str, SystemTime> = HashMap::new();
    for c in updates.iter().filter(|c| c.outcome == "OK") {
        if let Some(id) = &c.job_id {
            reached.entry(id.as_str()).or_insert(c.at.0);
        }
    }
    let mut to_macie = Vec::new();
    let mut to_ready = Vec::new();
    for name in names {
        let at = applied[name];
        if let Some(r) = reached.get(job_of[name].as_str()) {
            to_macie.push(secs_between(at, *r));
        }
        to_ready.push(secs_between(at, ready[name]));
    }
    let injected = |code: &str| {
        calls
            .iter()
            .filter(|c| c.operation == "UpdateClassificationJob" && c.injected && c.outcome == code)
            .count()
    };
    Ok(Flip {
        resources: n,
        to: to.to_string(),
        faults,
        apply_s,
        total_s,
        to_macie: Percentiles::of(&mut to_macie),
        to_ready: Percentiles::of(&mut to_ready),
        reached_macie: reached.len(),
        update_calls: updates.len(),
        accepted: updates.iter().filter(|c| c.outcome == "OK").count(),
        invalid: updates.iter().filter(|c| c.valid == Some(false)).count(),
        repeated: updates.iter().filter(|c| c.repeated == Some(true)).count(),
        updates_throttled: injected("ThrottlingException"),
        list_calls: env.requests("ListClassificationJobs") - lists_before,
        cpu_s: stats1.cpu_s - stats0.cpu_s,
        apiserver_cpu_s,
        apiserver_writes,
        peak_rss_mib: stats1.peak_rss_mib,
    })
}

fn account(i: usize) -> String {
    format!("{:012}", 300_000_000_000usize + i)
}

/// Applies `name` declaring every account of `accounts` at `status`; the new generation.
async fn apply_discovery(api: &Api<MacieDiscovery>, name: &str, accounts: &[String], status: &str) -> Result<i64> {
    apply_discovery_each(api, name, accounts, &vec![status; accounts.len()]).await
}

/// Applies `name` declaring `accounts[i]` at `statuses[i]`; the new generation.
async fn apply_discovery_each(
    api: &Api<MacieDiscovery>,
    name: &str,
    accounts: &[String],
    statuses: &[&str],
) -> Result<i64> {
    let accounts: Vec<Value> = accounts
        .iter()
        .zip(statuses)
        .map(|(a, s)| json!({"accountId": a, "status": s}))
        .collect();
    let obj: MacieDiscovery = serde_json::from_value(json!({
        "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieDiscovery",
        "metadata": {"name": name}, "spec": {"accounts": accounts}
    }))?;
    let o = api
        .patch(name, &PatchParams::apply("bench").force(), &Patch::Apply(&obj))
        .await?;
    o.metadata.generation.context("generation")
}

/// Names of the resources not yet Converged at their wanted generation.
async fn discovery_pending(api: &Api<MacieDiscovery>, want: &HashMap<String, i64>) -> Result<Vec<String>> {
    let list = api.list(&Default::default()).await?;
    let mut pending: Vec<String> = want.keys().cloned().collect();
    for o in list.items {
        let name = o.metadata.name.clone().unwrap_or_default();
        let st = o.status.unwrap_or_default();
        let ok = Some(want.get(&name).copied().unwrap_or(-1)) == st.observed_generation
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Converged");
        if ok {
            pending.retain(|p| *p != name);
        }
    }
    Ok(pending)
}

async fn discovery_run(args: &Args, n: usize) -> Result<DiscoveryRun> {
    let k = args.discovery_resources;
    eprintln!("bench: discovery, {n} accounts over {k} resources: starting a control plane");
    let env = Env::start().await?;
    let accounts: Vec<String> = (0..n).map(account).collect();
    {
        let mut e = env.emu.state.lock();
        for a in &accounts {
            let acct = serde_json::from_value(json!({"status": "DISABLED", "paused": false}))?;
            e.put_account(None, None, a, acct).map_err(anyhow::Error::msg)?;
        }
    }
    let api: Api<MacieDiscovery> = Api::namespaced(env.client.clone(), &env.ns);
    let parts: Vec<Vec<String>> = accounts.chunks(n.div_ceil(k)).map(<[String]>::to_vec).collect();
    let mut want = HashMap::new();
    for (i, part) in parts.iter().enumerate() {
        want.insert(
            format!("team-{i}"),
            apply_discovery(&api, &format!("team-{i}"), part, "DISABLED").await?,
        );
    }
    let mut op = Operator::spawn(args, &env, &args.out.join(format!("operator-discovery-{n}.log")))?;
    let t = Instant::now();
    until("the first sync", &mut op, deadline_for(n), || async {
        let p = discovery_pending(&api, &want).await?;
        Ok((!p.is_empty()).then(|| format!("{} pending", p.len())))
    })
    .await?;
    let initial_sync_s = t.elapsed().as_secs_f64();
    let list0 = env.requests("ListAutomatedDiscoveryAccounts");
    let calls_before = env.emu.state.lock().calls.len();

    // Flip every account of every resource to ENABLED at once.
    let t = Instant::now();
    let converged_at: Mutex<HashMap<String, f64>> = Mutex::new(HashMap::new());
    for (i, part) in parts.iter().enumerate() {
        want.insert(
            format!("team-{i}"),
            apply_discovery(&api, &format!("team-{i}"), part, "ENABLED").await?,
        );
    }
    until("every account ENABLED", &mut op, deadline_for(n), || async {
        let pending = discovery_pending(&api, &want).await?;
        let mut at = converged_at.lock().unwrap_or_else(|p| p.into_inner());
        for name in want.keys().filter(|n| !pending.contains(n)) {
            at.entry(name.clone()).or_insert(t.elapsed().as_secs_f64());
        }
        Ok((!pending.is_empty()).then(|| format!("{} resources pending", pending.len())))
    })
    .await?;
    let total_s = t.elapsed().as_secs_f64();
    let list_calls = env.requests("ListAutomatedDiscoveryAccounts") - list0;
    let (enabled, batch_calls, sent, sent_twice) = {
        let mut e = env.emu.state.lock();
        let enabled = e
            .snapshot(None, None)
            .get("accounts")
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter(|a| a["status"] == "ENABLED").count());
        let batches: Vec<_> = e.calls[calls_before..]
            .iter()
            .filter(|c| c.operation == "BatchUpdateAutomatedDiscoveryAccounts" && !c.injected)
            .collect();
        let sent: usize = batches.iter().map(|c| c.accounts.len()).sum();
        let mut per_account: HashMap<&str, usize> = HashMap::new();
        for c in &batches {
            for a in &c.accounts {
                *per_account.entry(a.account_id.as_str()).or_default() += 1;
            }
        }
        let twice = per_account.values().filter(|c| **c > 1).count();
        (enabled, batches.len(), sent, twice)
    };
    let mut per_resource: Vec<f64> = converged_at
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_values()
        .collect();
    // Steady state: every declared account observed once per interval.
    let quiet = Duration::from_millis(1000).min(args.poll_interval / 3);
    let steady = list_bursts(&env, &mut op, 3, quiet).await?;
    let _ = op.child.kill().await;
    let _ = op.child.wait().await;

    // Confirming one change: a fresh operator whose next full observation is far away, so the
    // List calls between the change and Converged are the confirmation's alone.
    let long = Args {
        poll_interval: Duration::from_secs(600),
        ..args.clone()
    };
    let mut op = Operator::spawn(
        &long,
        &env,
        &args.out.join(format!("operator-discovery-confirm-{n}.log")),
    )?;
    let first = list_bursts(&env, &mut op, 1, quiet).await?;
    let mut one = parts[0].iter().map(|_| "ENABLED").collect::<Vec<_>>();
    one[0] = "DISABLED";
    let list1 = env.requests("ListAutomatedDiscoveryAccounts");
    let t = Instant::now();
    let generation = apply_discovery_each(&api, "team-0", &parts[0], &one).await?;
    let want_one: HashMap<String, i64> = [("team-0".to_string(), generation)].into();
    until("one changed account confirmed", &mut op, deadline_for(n), || async {
        let pending = discovery_pending(&api, &want_one).await?;
        Ok((!pending.is_empty()).then(|| "team-0 pending".to_string()))
    })
    .await?;
    let confirm_one_s = t.elapsed().as_secs_f64();
    let confirm_one_calls = env.requests("ListAutomatedDiscoveryAccounts") - list1;
    let _ = op.child.kill().await;
    let run = DiscoveryRun {
        accounts: n,
        resources: k,
        batch_size: args.batch_size,
        initial_sync_s,
        changes: n,
        batch_calls,
        ideal_batch_calls: n.div_ceil(args.batch_size),
        accounts_sent: sent,
        sent_twice,
        enabled_in_macie: enabled,
        list_calls,
        total_s,
        per_resource: Percentiles::of(&mut per_resource),
        steady_list_per_interval: steady,
        first_observation_calls: first.first().copied().unwrap_or(0),
        confirm_one_calls,
        confirm_one_s,
        ideal_full_observation: n.div_ceil(25) as u64,
    };
    eprintln!("bench: {run}");
    Ok(run)
}

/// The ListAutomatedDiscoveryAccounts requests of each of the next `k` observations: runs of
/// requests with no `quiet` gap, the first one starting after a quiet gap.
async fn list_bursts(env: &Env, op: &mut Operator, k: usize, quiet: Duration) -> Result<Vec<u64>> {
    let samples: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::new());
    let t = Instant::now();
    let q = quiet.as_secs_f64();
    until(
        &format!("{k} discovery observations"),
        op,
        Duration::from_secs(600),
        || async {
            let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
            s.push((
                t.elapsed().as_secs_f64(),
                env.requests("ListAutomatedDiscoveryAccounts"),
            ));
            let done = bursts(&s, q).len();
            Ok((done < k).then(|| format!("{done} of {k} observations")))
        },
    )
    .await?;
    let s = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(bursts(&s, q).into_iter().take(k).collect())
}

/// Splits samples of a request counter, (seconds, count), into bursts: the requests of each run
/// of increases that follows a gap of at least `quiet` s with no increase and is followed by
/// one (a burst in progress, or one the samples did not see start, is left out).
fn bursts(samples: &[(f64, u64)], quiet: f64) -> Vec<u64> {
    let mut out = Vec::new();
    // (count when the burst started, time of its last increase)
    let mut current: Option<(u64, f64)> = None;
    let Some(&(mut last_t, mut last_c)) = samples.first() else {
        return out;
    };
    // Time of the last increase (or the first sample): a burst needs a quiet gap before it.
    let mut last_rise = last_t;
    let mut armed = false;
    for &(t, c) in &samples[1..] {
        if c > last_c {
            if current.is_none() && armed {
                current = Some((last_c, t));
            }
            if let Some((_, at)) = current.as_mut() {
                *at = t;
            }
            last_rise = t;
            armed = false;
        } else if t - last_rise >= quiet {
            if let Some((start, _)) = current.take() {
                out.push(last_c - start);
            }
            armed = true;
        }
        (last_t, last_c) = (t, c);
    }
    let _ = last_t;
    out
}

/// Per MacieJob of the create run: when the driver first saw it Converged, and whether it ever
/// showed WaitingForCreateQuota.
#[derive(Clone, Default)]
struct CreateWatch {
    converged: Arc<Mutex<HashMap<String, SystemTime>>>,
    waited: Arc<Mutex<HashSet<String>>>,
}

impl CreateWatch {
    fn start(api: Api<MacieJob>) -> (CreateWatch, tokio::task::JoinHandle<()>) {
        let w = CreateWatch::default();
        let (converged, waited) = (w.converged.clone(), w.waited.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = events.next().await {
                let Ok(o) = ev else { continue };
                let name = o.metadata.name.clone().unwrap_or_default();
                let ready = o.status.as_ref().and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == "Ready" && c.observed_generation == o.metadata.generation)
                });
                match ready {
                    Some(c) if c.status == "True" && c.reason == "Converged" => {
                        let mut m = converged.lock().unwrap_or_else(|p| p.into_inner());
                        m.entry(name).or_insert_with(SystemTime::now);
                    }
                    Some(c) if c.reason == "WaitingForCreateQuota" => {
                        waited.lock().unwrap_or_else(|p| p.into_inner()).insert(name);
                    }
                    _ => {}
                }
            }
        });
        (w, task)
    }

    fn converged(&self) -> HashMap<String, SystemTime> {
        self.converged.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn waited(&self) -> usize {
        self.waited.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A ONE_TIME definition (one bucket of its own) in the `default` MacieAccount.
fn create_spec(i: usize) -> Value {
    json!({"jobName": format!("bench-create-{i}"), "jobStatus": "RUNNING", "definition": {
        "jobType": "ONE_TIME",
        "description": "macie-bench create run",
        "s3JobDefinition": {"bucketDefinitions": [{"accountId": ACCOUNT, "buckets": [format!("bench-bucket-{i}")]}]}
    }})
}

/// `n` MacieJobs with ONE_TIME definitions applied at once, the operator's --create-rate and the
/// emulator's create quota both `--create-rate`: from the first apply to the last Converged,
/// against the fewest seconds the quota allows, (n - 1) / rate.
async fn create_run(args: &Args, n: usize) -> Result<CreateRun> {
    let rate = args.create_rate;
    eprintln!("bench: creating {n} jobs at {rate} per second: starting a control plane");
    let env = Env::start().await?;
    env.emu
        .state
        .lock()
        .set_quotas(serde_json::from_value(
            json!({"createClassificationJobPerSecond": rate}),
        )?)
        .map_err(anyhow::Error::msg)?;
    let api: Api<MacieJob> = Api::namespaced(env.client.clone(), &env.ns);
    let (watch, watch_task) = CreateWatch::start(api.clone());
    let mut op = Operator::spawn(args, &env, &args.out.join(format!("operator-creates-{n}.log")))?;
    let port = op.health_port;
    until("the operator ready", &mut op, Duration::from_secs(60), || async {
        Ok(match testkit::http_get(port, "/readyz").await {
            Ok((200, _)) => None,
            Ok((code, body)) => Some(format!("/readyz {code}: {}", body.trim())),
            Err(e) => Some(format!("/readyz: {e}")),
        })
    })
    .await?;
    let stats0 = op.stats()?;
    let t = Instant::now();
    let t0 = SystemTime::now();
    let applied: HashMap<String, SystemTime> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("mc-{i}");
                let obj: MacieJob = serde_json::from_value(json!({
                    "apiVersion": "macie.kubeops.dev/v1alpha1", "kind": "MacieJob",
                    "metadata": {"name": name}, "spec": create_spec(i),
                }))?;
                let at = SystemTime::now();
                api.create(&PostParams::default(), &obj).await?;
                Ok::<_, anyhow::Error>((name, at))
            }
        })
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect()
        .await?;
    let apply_s = t.elapsed().as_secs_f64();
    eprintln!("bench: applied {n} definitions in {apply_s:.1} s");
    let minimum_s = n.saturating_sub(1) as f64 / rate;
    let deadline = deadline_for(n) + Duration::from_secs_f64(2.0 * n as f64 / rate);
    until(&format!("{n} MacieJobs Converged"), &mut op, deadline, || async {
        let done = watch.converged().len();
        Ok((done < n).then(|| {
            format!(
                "{done} of {n} Converged, {} showed WaitingForCreateQuota (at best {:.0} s in all)",
                watch.waited(),
                minimum_s
            )
        }))
    })
    .await?;
    let converged = watch.converged();
    let waited = watch.waited();
    let stats1 = op.stats()?;
    watch_task.abort();
    let _ = op.child.kill().await;

    let (calls, names) = {
        let mut e = env.emu.state.lock();
        let calls = e.calls.clone();
        let snap = e.snapshot(None, None);
        let names: Vec<String> = snap["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter_map(|j| j["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (calls, names)
    };
    let creates: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == "CreateClassificationJob")
        .collect();
    let ok: Vec<_> = creates.iter().filter(|c| c.outcome == "OK").collect();
    let throttled = creates.iter().filter(|c| c.outcome == "ThrottlingException").count();
    let refused = creates.len() - ok.len() - throttled;
    let updates: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == "UpdateClassificationJob")
        .collect();
    let mut per_name: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        *per_name.entry(name.as_str()).or_default() += 1;
    }
    let jobs_once = (0..n)
        .filter(|i| per_name.get(format!("bench-create-{i}").as_str()) == Some(&1))
        .count();
    let created_at: HashMap<&str, SystemTime> = ok.iter().filter_map(|c| Some((c.name.as_deref()?, c.at.0))).collect();
    let (first, last) = (ok.iter().map(|c| c.at.0).min(), ok.iter().map(|c| c.at.0).max());
    let mut to_converged = Vec::new();
    let mut created_to_converged = Vec::new();
    for i in 0..n {
        let name = format!("mc-{i}");
        let done = converged[&name];
        to_converged.push(secs_between(applied[&name], done));
        if let Some(c) = created_at.get(format!("bench-create-{i}").as_str()) {
            created_to_converged.push(secs_between(*c, done));
        }
    }
    let total_s = converged.values().map(|at| secs_between(t0, *at)).fold(0.0, f64::max);
    let run = CreateRun {
        definitions: n,
        rate,
        apply_s,
        total_s,
        minimum_s,
        ratio: (minimum_s > 0.0).then(|| total_s / minimum_s),
        create_span_s: first.zip(last).map_or(0.0, |(a, b)| secs_between(a, b)),
        min_gap_s: creates
            .windows(2)
            .map(|w| secs_between(w[0].at.0, w[1].at.0))
            .min_by(f64::total_cmp),
        create_calls: creates.len(),
        created: ok.len(),
        throttled,
        refused,
        repeated: creates.iter().filter(|c| c.repeated == Some(true)).count()
            + updates.iter().filter(|c| c.repeated == Some(true)).count(),
        invalid: refused + updates.iter().filter(|c| c.valid == Some(false)).count(),
        update_calls: updates.len(),
        jobs_in_macie: names.len(),
        jobs_once,
        waited,
        to_converged: Percentiles::of(&mut to_converged),
        created_to_converged: Percentiles::of(&mut created_to_converged),
        cpu_s: stats1.cpu_s - stats0.cpu_s,
        peak_rss_mib: stats1.peak_rss_mib,
    };
    eprintln!("bench: {run}");
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_runs_of_requests_between_quiet_gaps() {
        let q = 1.0;
        // (seconds, counter) samples every 0.5 s.
        let s = |v: &[u64]| -> Vec<(f64, u64)> { v.iter().enumerate().map(|(i, c)| (i as f64 * 0.5, *c)).collect() };
        // Rising from the first sample: that burst's start was not seen; then quiet, a burst of
        // 200, quiet, a burst of 201 still in progress at the end.
        assert_eq!(
            bursts(&s(&[0, 50, 100, 100, 100, 100, 150, 300, 300, 300, 300, 400]), q),
            vec![200]
        );
        // Quiet first, two complete bursts.
        assert_eq!(bursts(&s(&[7, 7, 7, 8, 8, 8, 8, 10, 12, 12, 12]), q), vec![1, 4]);
        // A gap shorter than `quiet` does not split a burst.
        assert_eq!(bursts(&s(&[0, 0, 0, 5, 5, 9, 9, 9]), q), vec![9]);
        assert_eq!(bursts(&s(&[3, 3, 3]), q), Vec::<u64>::new());
        assert_eq!(bursts(&[], q), Vec::<u64>::new());
    }

    #[test]
    fn the_replay_is_the_operators_status_and_event_writes_only() {
        let flip: BTreeMap<String, u64> = [
            ("APPLY maciejobs/status", 200),
            ("PATCH maciejobs", 100), // the driver's spec patches
            ("PATCH events", 90),
            ("POST events", 10),
            ("PUT leases", 7), // the leader's renewals
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let r = Replay::of(&flip);
        assert_eq!(
            r,
            Replay {
                status_applies: 200,
                status_patches: 0,
                event_creates: 10,
                event_patches: 90
            }
        );
        let w = r.writes();
        assert_eq!(w.values().sum::<u64>(), 300);
        assert!(!w.contains_key("PATCH maciejobs") && !w.contains_key("PUT leases"));
        assert_eq!(Replay::of(&BTreeMap::new()).writes(), BTreeMap::new());
    }
}
