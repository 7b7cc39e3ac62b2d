//! The operator's two HTTP servers: the health server (`--health-addr`: `/livez`, `/readyz`,
//! plain HTTP for the kubelet's probes) and the metrics server (`--metrics-addr`: `/metrics`,
//! plain HTTP, or with `--metrics-secure` HTTPS for authenticated and authorised callers only).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::routing::get;

use super::metrics::Metrics;
use super::metrics_auth::{self, Authorizer, KubeReviews, METRICS_PATH};
use super::{Health, tls};

/// Content type of the OpenMetrics text `Metrics::encode` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds one of the servers' addresses; `flag` names it in the error.
pub async fn bind(addr: SocketAddr, flag: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {flag} {addr}: {e}"))
}

/// `/livez` answers while the process (and its async runtime) runs; `/readyz` answers 503 with
/// the reason when `Health::check` fails.
pub fn health_router(health: Health) -> axum::Router {
    axum::Router::new().route("/livez", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let h = health.clone();
            async move {
                match h.check() {
                    Ok(()) => (StatusCode::OK, "ok".to_string()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                }
            }
        }),
    )
}

/// `/metrics`, for anyone who reaches it.
pub fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        METRICS_PATH,
        get(move || {
            let m = metrics.clone();
            async move { ([(header::CONTENT_TYPE, OPENMETRICS)], m.encode()) }
        }),
    )
}

/// Serves the health server until `shutdown` resolves.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, health_router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How the metrics server serves.
pub enum MetricsAccess {
    /// Plain HTTP, no authentication.
    Open,
    /// HTTPS with this configuration; each request reviewed by the API server.
    Secure {
        tls: Arc<rustls::ServerConfig>,
        authorizer: Arc<Authorizer<KubeReviews>>,
    },
}

impl MetricsAccess {
    /// `--metrics-secure`: the certificate from `cert_dir` (or a self-signed one), requests
    /// reviewed with `client`.
    pub fn secure(client: kube::Client, cert_dir: Option<std::path::PathBuf>) -> Result<MetricsAccess, String> {
        let source = match cert_dir {
            Some(dir) => tls::CertSource::Dir(dir),
            None => tls::CertSource::SelfSigned,
        };
        Ok(MetricsAccess::Secure {
            tls: tls::server_config(&source)?,
            authorizer: Arc::new(Authorizer::new(KubeReviews(client))),
        })
    }
}

/// Serves the metrics server until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    access: MetricsAccess,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = metrics_router(metrics);
    match access {
        MetricsAccess::Open => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        MetricsAccess::Secure { tls, authorizer } => {
            let app = app.layer(axum::middleware::from_fn_with_state(
                authorizer,
                metrics_auth::require::<KubeReviews>,
            ));
            axum::serve(tls::TlsListener::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
