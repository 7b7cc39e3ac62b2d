//! `macie-emulator`: serves the local Macie API. See emulator/README.md.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use macie_emulator::{Emulator, Seed};

/// A local Amazon Macie API (rest-json) and STS (AssumeRole, GetCallerIdentity) for testing
/// macie-operator.
///
/// Point any AWS client at it with an endpoint override, e.g.
/// `aws macie2 list-classification-jobs --endpoint-url http://127.0.0.1:4566`.
/// Admin endpoints for tests live under /__admin (see emulator/README.md).
#[derive(Parser, Debug)]
#[command(name = "macie-emulator", version)]
struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks a free port, printed on start).
    #[arg(long, env = "MACIE_EMULATOR_ADDR", default_value = "127.0.0.1:4566")]
    addr: String,
    /// Jobs and accounts to start with (YAML or JSON).
    #[arg(long, env = "MACIE_EMULATOR_SEED")]
    seed: Option<PathBuf>,
    /// Region used when a request carries no SigV4 scope, and for seed entries without one.
    #[arg(long, env = "MACIE_EMULATOR_REGION", default_value = "us-east-1")]
    region: String,
    /// AWS account of the caller's own credentials (any key AssumeRole did not issue), and of
    /// seed entries without awsAccountId.
    #[arg(long, env = "MACIE_EMULATOR_ACCOUNT_ID", default_value = "123456789012")]
    account_id: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "MACIE_EMULATOR_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("macie-emulator: --log {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let seed = match &args.seed {
        Some(path) => match Seed::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("macie-emulator: invalid seed {e}");
                return ExitCode::from(2);
            }
        },
        None => Seed::default(),
    };
    let (listener, addr) = match macie_emulator::bind(&args.addr).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("macie-emulator: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(2);
        }
    };
    let emulator = Emulator::new(seed, &args.region, &args.account_id);
    // Tests and scripts read this line to learn the port.
    println!("macie-emulator listening on http://{addr}");
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    match macie_emulator::serve(listener, macie_emulator::Shared::new(emulator), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("macie-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
