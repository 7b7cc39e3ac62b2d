//! macie-emulator: a local Amazon Macie API (rest-json 1.1) and STS (query protocol) for testing
//! macie-operator.
//!
//! It serves the operations macie-operator uses, with the wire format of the official service
//! model and the documented job status rules, plus an admin API under `/__admin` for tests
//! (service-side status changes, clock, fault injection, counters and a call log).
#![forbid(unsafe_code)]

pub mod model;
pub mod seed;
pub mod server;
pub mod state;

use std::net::SocketAddr;

pub use seed::Seed;
pub use server::{Shared, router};
pub use state::Emulator;

/// Serves the emulator on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds `addr` and returns the listener with the address actually bound (for port 0).
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// An emulator serving on a loopback port inside this process (tests, the benchmark); it stops
/// when dropped.
pub struct Background {
    /// Endpoint URL for the SDK, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    pub state: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Background {
    /// Starts an emulator on `127.0.0.1:0` with `seed`, answering for `region` and `account_id`.
    pub async fn start(seed: Seed, region: &str, account_id: &str) -> std::io::Result<Background> {
        let (listener, addr) = bind("127.0.0.1:0").await?;
        let state = Shared::new(Emulator::new(seed, region, account_id));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Ok(Background {
            url: format!("http://{addr}"),
            state,
            _stop: tx,
        })
    }
}
