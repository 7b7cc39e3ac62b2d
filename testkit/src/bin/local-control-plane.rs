//! Runs the local control plane (etcd + kube-apiserver from `make tools`) until SIGINT, SIGTERM
//! or end of standard input, for `make demo` and manual experiments.
//!
//!     local-control-plane KUBECONFIG_OUT
//!
//! Writes an admin kubeconfig to KUBECONFIG_OUT once the API server is ready, then prints
//! `ready`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: local-control-plane KUBECONFIG_OUT");
        return ExitCode::from(2);
    };
    let mut cp = match testkit::ControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("local-control-plane: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::copy(cp.kubeconfig(), &out) {
        eprintln!("local-control-plane: cannot write {out}: {e}");
        return ExitCode::FAILURE;
    }
    println!("ready {}", cp.server());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("local-control-plane: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A plain thread, not spawn_blocking: the runtime must not wait for it on exit.
    let (closed_tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    cp.stop();
    ExitCode::SUCCESS
}
