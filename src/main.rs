//! `macie-operator`: the operator binary (`run`) and the CRD generator (`crd`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use macie_operator::job::plan::Settings;
use macie_operator::macie::{AwsTimeouts, MacieClients};
use macie_operator::runtime::gate::WriteGate;
use macie_operator::runtime::leader::{self, LeaderElector, LeaseConfig};
use macie_operator::runtime::metrics::Metrics;
use macie_operator::runtime::serve::{self, MetricsAccess};
use macie_operator::runtime::{self, Health, LogFormat};
use macie_operator::{account, discovery, job};

/// mimalloc gives freed memory back to the system within milliseconds, so the operator's RSS
/// follows its live heap; musl's allocator (the release binary is static) kept about as much
/// again as the heap held (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "macie-operator",
    version,
    about = "Keeps Amazon Macie in the state your manifests declare"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (what crds/ holds).
    Crd,
    /// Print MacieJob manifests (YAML) that adopt an account's existing jobs as they are, by
    /// jobId, each declaring the status the job already satisfies: applying them changes
    /// nothing in Macie. Installed as `kubectl-macie`, it runs as `kubectl macie export`.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// AWS Region to read (default: the AWS SDK's region, e.g. AWS_REGION).
    #[arg(long, env = "MACIE_OPERATOR_REGION")]
    region: Option<String>,
    /// Macie endpoint URL override (e.g. a local macie-emulator); omit for AWS.
    #[arg(long, env = "MACIE_OPERATOR_MACIE_ENDPOINT", value_parser = parse_url)]
    macie_endpoint: Option<String>,
    /// IAM role to assume for the reads (default: the standard AWS credential chain as is).
    #[arg(long)]
    role_arn: Option<String>,
    /// ExternalId for --role-arn, when its trust policy requires one.
    #[arg(long, requires = "role_arn")]
    external_id: Option<String>,
    /// Namespace of the manifests.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// spec.accountRef of the manifests: the MacieAccount of this AWS account (default: none,
    /// the operator's default account).
    #[arg(long)]
    account_ref: Option<String>,
    /// Every job, COMPLETE and CANCELLED ones included (default: the jobs that can still change).
    #[arg(long)]
    all: bool,
    /// Only jobs Macie shows in these statuses (comma-separated, e.g. RUNNING,USER_PAUSED).
    #[arg(long, value_delimiter = ',')]
    status: Vec<String>,
    /// Only jobs whose name starts with this.
    #[arg(long)]
    name_prefix: Option<String>,
    /// managementPolicy Observe on every manifest: the operator reports, never writes.
    #[arg(long)]
    observe: bool,
    /// Also print MacieDiscovery manifests declaring each member account's current
    /// automated-discovery status.
    #[arg(long)]
    discovery: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// AWS Region for resources without spec.region (default: the AWS SDK's region, e.g. AWS_REGION).
    #[arg(long, env = "MACIE_OPERATOR_REGION")]
    region: Option<String>,
    /// Macie endpoint URL override (e.g. a local macie-emulator); omit for AWS.
    #[arg(long, env = "MACIE_OPERATOR_MACIE_ENDPOINT", value_parser = parse_url)]
    macie_endpoint: Option<String>,
    /// Time between ListClassificationJobs sweeps: seconds (`60`) or a duration (`1m30s`, `500ms`).
    #[arg(long, env = "MACIE_OPERATOR_POLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// The MacieAccount of resources without spec.accountRef. With no MacieAccount of this
    /// name (or one that does not select their namespace), such resources are refused
    /// (AccountNotFound) with a message saying how to fix it.
    #[arg(long, env = "MACIE_OPERATOR_DEFAULT_ACCOUNT", default_value = "default")]
    default_account: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "MACIE_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the metrics server (/metrics): plain HTTP, or HTTPS with --metrics-secure.
    #[arg(long, env = "MACIE_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Serve /metrics over HTTPS, to callers only whose bearer token the Kubernetes API server
    /// authenticates (TokenReview) and who may `get` the non-resource URL /metrics
    /// (SubjectAccessReview): 401 without a valid token, 403 without the permission, 503 when
    /// the API server cannot be asked. The operator needs `create` on tokenreviews and
    /// subjectaccessreviews. Decisions are remembered for 60 s (allowed) or 10 s (forbidden).
    #[arg(long, env = "MACIE_OPERATOR_METRICS_SECURE", default_value_t = false)]
    metrics_secure: bool,
    /// Directory holding the metrics server's certificate chain and key as tls.crt and tls.key
    /// (PEM), e.g. a mounted kubernetes.io/tls Secret that cert-manager renews; the files are
    /// reread when they change. Without it, --metrics-secure serves a self-signed certificate
    /// made at start-up.
    #[arg(long, env = "MACIE_OPERATOR_METRICS_CERT_DIR", requires = "metrics_secure")]
    metrics_cert_dir: Option<std::path::PathBuf>,
    /// Address of the health server: the probes /livez and /readyz, plain HTTP.
    #[arg(long, env = "MACIE_OPERATOR_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// Longest time one HTTP attempt of an AWS call may take (connect, send, wait for and read
    /// the answer); a timed-out attempt is retried within --aws-operation-timeout.
    #[arg(long, env = "MACIE_OPERATOR_AWS_ATTEMPT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    aws_attempt_timeout: Duration,
    /// Longest time one AWS call may take, retries and their backoff included. A call that
    /// runs out is reported as Uncertain (code Timeout): it may or may not have taken effect.
    #[arg(long, env = "MACIE_OPERATOR_AWS_OPERATION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    aws_operation_timeout: Duration,
    /// ListClassificationJobs page size (maxResults). Macie publishes no limit; pages of any size
    /// the service returns are followed.
    #[arg(long, env = "MACIE_OPERATOR_PAGE_SIZE", default_value_t = macie_operator::macie::jobs::DEFAULT_PAGE_SIZE,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    page_size: i32,
    /// Warn (Event and condition) when a USER_PAUSED job is this close to its expiry.
    #[arg(long, env = "MACIE_OPERATOR_EXPIRY_WARNING", default_value = "7d", value_parser = parse_duration)]
    expiry_warning: Duration,
    /// When an UpdateClassificationJob call's effect does not show, a sweep that started this
    /// long after the call and still shows the job unmoved ends the step (the call is taken as
    /// lost and may be made again). Wall-clock time alone never does.
    #[arg(long, env = "MACIE_OPERATOR_STEP_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    step_timeout: Duration,
    /// CreateClassificationJob calls per second per AWS account and region (spec.definition);
    /// creates beyond it wait their turn (WaitingForCreateQuota). Macie publishes 0.1.
    #[arg(long, env = "MACIE_OPERATOR_CREATE_RATE", default_value_t = 0.1, value_parser = parse_rate)]
    create_rate: f64,
    /// Reconciles running at once.
    #[arg(long, env = "MACIE_OPERATOR_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    concurrency: u16,
    /// Most accounts per BatchUpdateAutomatedDiscoveryAccounts call (the API publishes no limit).
    #[arg(long, env = "MACIE_OPERATOR_DISCOVERY_BATCH_SIZE", default_value_t = macie_operator::discovery::DEFAULT_BATCH_SIZE,
          value_parser = parse_batch_size)]
    discovery_batch_size: usize,
    /// How long automated-discovery changes are gathered before they are sent.
    #[arg(long, env = "MACIE_OPERATOR_DISCOVERY_BATCH_WINDOW", default_value = "2s", value_parser = parse_duration)]
    discovery_batch_window: Duration,
    /// How often accounts that failed (ACCOUNT_PAUSED, ACCOUNT_NOT_FOUND) are tried again.
    #[arg(long, env = "MACIE_OPERATOR_DISCOVERY_ERROR_RETRY", default_value = "15m", value_parser = parse_duration)]
    discovery_error_retry: Duration,
    /// Run only while holding a coordination.k8s.io Lease, so that one of several replicas acts.
    #[arg(long, env = "MACIE_OPERATOR_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "MACIE_OPERATOR_LEASE_NAME", default_value = "macie-operator")]
    lease_name: String,
    /// Namespace of the leader election Lease (in a cluster: the operator's own namespace).
    #[arg(long, env = "MACIE_OPERATOR_LEASE_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a leader's Lease lasts without renewal: a follower takes over once it has seen
    /// the Lease unchanged for this long (measured on its own clock, never by comparing the
    /// leader's renewTime with it). Replicas retry every 2/15 of it (2s for 15s).
    #[arg(long, env = "MACIE_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How long a leader keeps trying to renew its Lease before it gives up; it makes no Macie
    /// write past this deadline after its last successful renewal. Must be shorter than
    /// --lease-duration [default: two thirds of --lease-duration, 10s for 15s]
    #[arg(long, env = "MACIE_OPERATOR_LEASE_RENEW_DEADLINE", value_parser = parse_duration)]
    lease_renew_deadline: Option<Duration>,
    /// This replica's name in the Lease and in Events (default: the POD_NAME env var, else the
    /// host name and a random suffix).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "MACIE_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, RUST_LOG syntax (e.g. `info`, `macie_operator=debug,kube=warn`).
    #[arg(long, env = "MACIE_OPERATOR_LOG", default_value = "info")]
    log: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a positive duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use seconds or e.g. 30s, 5m, 7d)"))?,
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate from above 0 to 1000 per second")),
    }
}

fn parse_batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to 10000")),
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", macie_operator::api::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Export(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("macie-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(export(args)) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("macie-operator export: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            if let Err(e) = runtime::init_logging(args.log_format, &args.log) {
                eprintln!("macie-operator: {e}");
                return ExitCode::from(2);
            }
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("macie-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("macie-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `export`: reads the account's jobs with the standard AWS credential chain (and the role, if
/// given) and returns the manifests as YAML; what it leaves out is said on stderr.
async fn export(args: ExportArgs) -> Result<String, String> {
    use macie_operator::export::{self, Options};
    let clients = MacieClients::from_env(args.macie_endpoint.clone(), AwsTimeouts::default()).await;
    let region = args
        .region
        .clone()
        .or_else(|| clients.default_region())
        .ok_or("no AWS Region: pass --region or set AWS_REGION")?;
    let account = args.account_ref.clone().unwrap_or_else(|| "export".into());
    let role = args
        .role_arn
        .clone()
        .map(|role_arn| macie_operator::macie::credentials::RoleSpec {
            role_arn,
            external_id: args.external_id.clone(),
            session_name: macie_operator::macie::credentials::session_name(&account),
        });
    clients.use_account(&account, role);
    let options = Options {
        region: region.clone(),
        namespace: args.namespace,
        account_ref: args.account_ref,
        all: args.all,
        statuses: args.status.iter().map(|s| s.trim().to_ascii_uppercase()).collect(),
        name_prefix: args.name_prefix,
        observe: args.observe,
    };
    let place = macie_operator::macie::Place::new(&account, &region);
    let out = export::export(&clients, &place, &options, args.discovery)
        .await
        .map_err(|e| e.to_string())?;
    for (id, status) in &out.skipped {
        eprintln!("macie-operator export: job {id} left out: its status {status} is not one this operator knows");
    }
    eprintln!(
        "macie-operator export: {} manifest(s) from {region}",
        out.manifests.len()
    );
    Ok(export::to_yaml(&out.manifests))
}

async fn run(args: RunArgs) -> Result<(), String> {
    let identity = args.identity.clone().unwrap_or_else(leader::default_identity);
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: args.lease_duration,
        renew_deadline: args
            .lease_renew_deadline
            .unwrap_or_else(|| LeaseConfig::default_renew_deadline(args.lease_duration)),
        retry_period: LeaseConfig::default_retry_period(args.lease_duration),
    };
    if args.leader_elect {
        lease.validate()?;
    }
    let timeouts = AwsTimeouts {
        attempt: args.aws_attempt_timeout,
        operation: args.aws_operation_timeout,
    };
    let metrics_listener = serve::bind(args.metrics_addr, "--metrics-addr").await?;
    let health_listener = serve::bind(args.health_addr, "--health-addr").await?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes: {e}"))?;
    let metrics_access = if args.metrics_secure {
        MetricsAccess::secure(client.clone(), args.metrics_cert_dir.clone())?
    } else {
        MetricsAccess::Open
    };
    let metrics = Arc::new(Metrics::new());
    // With leader election, Macie writes wait for the first renewal and stop at each renewal's
    // deadline; without it, they are always allowed.
    let gate = if args.leader_elect {
        WriteGate::closed()
    } else {
        WriteGate::open()
    };
    let clients = Arc::new(
        MacieClients::from_env(args.macie_endpoint.clone(), timeouts)
            .await
            .with_metrics(metrics.clone())
            .with_gate(gate.clone()),
    );
    let region = args
        .region
        .clone()
        .or_else(|| clients.default_region())
        .ok_or("no AWS Region: set --region (MACIE_OPERATOR_REGION) or AWS_REGION")?;
    tracing::info!(
        %region,
        endpoint = args.macie_endpoint.as_deref().unwrap_or("AWS"),
        poll_interval = ?args.poll_interval,
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        leader_elect = args.leader_elect,
        default_account = %args.default_account,
        %identity,
        metrics_addr = %args.metrics_addr,
        metrics_secure = args.metrics_secure,
        health_addr = %args.health_addr,
        "starting macie-operator"
    );
    let discovery_config = discovery::Config {
        default_region: region.clone(),
        poll_interval: args.poll_interval,
        batch_window: args.discovery_batch_window,
        plan: discovery::plan::Settings {
            step_timeout: args.step_timeout,
            error_retry: args.discovery_error_retry,
            batch_size: args.discovery_batch_size,
        },
        namespace: args.namespace.clone(),
        instance: Some(identity.clone()),
    };
    let config = job::Config {
        default_region: region,
        poll_interval: args.poll_interval,
        page_size: args.page_size,
        plan: Settings {
            step_timeout: args.step_timeout,
            expiry_warning: args.expiry_warning,
        },
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        create_rate: args.create_rate,
        instance: Some(identity.clone()),
    };

    // Stop on SIGTERM/Ctrl-C, or when leadership is lost.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            runtime::shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let health = Health::new(
        metrics.clone(),
        runtime::sweep_stale_after(args.poll_interval, args.aws_operation_timeout),
    );
    let servers = {
        let health_server = serve::serve_health(health_listener, health.clone(), stopped(stop_rx.clone()));
        let metrics_server = serve::serve_metrics(
            metrics_listener,
            metrics.clone(),
            metrics_access,
            stopped(stop_rx.clone()),
        );
        tokio::spawn(async move {
            let (h, m) = tokio::join!(health_server, metrics_server);
            for (server, result) in [("health", h), ("metrics", m)] {
                if let Err(e) = result {
                    tracing::error!(error = %e, "the {server} server failed");
                }
            }
        })
    };
    // Ready while the CRDs are established and listable (followers too: they serve health and
    // metrics) and every region's sweeper keeps finishing sweeps.
    tokio::spawn(runtime::check_kube(
        client.clone(),
        args.namespace.clone(),
        health.clone(),
    ));

    let elector = args
        .leader_elect
        .then(|| LeaderElector::new(client.clone(), lease, gate));
    let mut lost = false;
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stopped(stop_rx.clone()) => {
                let _ = servers.await;
                return Ok(());
            }
        }
        metrics.leader.set(1);
    }
    let tenancy = account::Tenancy::start(client.clone(), &args.default_account);
    let accounts = account::AccountController::new(
        client.clone(),
        clients.clone(),
        tenancy.clone(),
        account::Config {
            instance: Some(identity.clone()),
            ..account::Config::default()
        },
    );
    let jobs = job::JobController::new(client.clone(), clients.clone(), tenancy.clone(), config);
    let discoveries = discovery::DiscoveryController::new(client, clients, tenancy, discovery_config);
    let controllers = async {
        tokio::join!(
            accounts.run(stopped(stop_rx.clone())),
            jobs.run(stopped(stop_rx.clone())),
            discoveries.run(stopped(stop_rx.clone()))
        );
    };
    match &elector {
        Some(elector) => {
            tokio::pin!(controllers);
            tokio::select! {
                _ = &mut controllers => {}
                _ = elector.hold() => {
                    lost = true;
                    metrics.leader.set(0);
                    let _ = stop_tx.send(true);
                    controllers.await;
                }
            }
            if !lost {
                elector.release().await;
                metrics.leader.set(0);
            }
        }
        None => {
            // Without leader election this replica acts: it is the leader.
            metrics.leader.set(1);
            controllers.await;
            metrics.leader.set(0);
        }
    }
    let _ = stop_tx.send(true);
    let _ = servers.await;
    if lost {
        return Err("lost the leader lease; exiting so that a new leader can take over".into());
    }
    Ok(())
}
