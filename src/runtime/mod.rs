//! Process plumbing: logging, metrics, the admin server (/livez, /readyz, /metrics), leader
//! election, shutdown signals.

pub mod gate;
pub mod leader;
pub mod metrics;
pub mod status;

use crate::macie::MacieError;

/// Field manager of every status write and the Events' reporting controller.
pub const MANAGER: &str = "macie-operator";

/// Why a reconcile failed (either controller).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Macie: {0}")]
    Macie(MacieError),
}

impl Error {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Macie(e) => e.category(),
        }
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the tracing subscriber. `filter` uses the RUST_LOG syntax (e.g. `info,kube=warn`).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Readiness shared between the controllers and the admin server.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/livez`, `/readyz` and `/metrics` until `shutdown` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    health: Health,
    metrics: std::sync::Arc<metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Marks the process ready once both CRDs are installed and Established and both kinds can be
/// listed in the watched scope (what the controllers' watches need); checked every 2 s.
pub async fn wait_for_crds(client: kube::Client, namespace: Option<String>, health: Health) {
    use crate::api::{MacieDiscovery, MacieJob};
    let jobs: kube::Api<MacieJob> = match &namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let discoveries: kube::Api<MacieDiscovery> = match &namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    let names: Vec<String> = crate::api::crds().into_iter().filter_map(|c| c.metadata.name).collect();
    loop {
        let mut missing = Vec::new();
        for n in &names {
            let established = match api.get_opt(n).await {
                Ok(Some(crd)) => crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True"),
                _ => false,
            };
            if !established {
                missing.push(n.clone());
            }
        }
        if missing.is_empty() {
            let lp = kube::api::ListParams::default().limit(1);
            match (jobs.list_metadata(&lp).await, discoveries.list_metadata(&lp).await) {
                (Ok(_), Ok(_)) => {
                    health.set_ready(true);
                    return;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot list the operator's resources yet");
                }
            }
        }
        if !missing.is_empty() {
            tracing::warn!(?missing, "waiting for CRDs to be installed and established");
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Jittered exponential backoff: 1 s, 2 s, 4 s ... capped at 5 minutes, times 0.5..1.0.
pub fn backoff(failures: u32) -> std::time::Duration {
    let base = std::time::Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(9));
    let capped = base.min(std::time::Duration::from_secs(300));
    capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Consecutive reconcile failures per object, for the controllers' error policies.
pub struct Failures<K: kube::Resource<DynamicType = ()>> {
    counts: std::sync::Mutex<std::collections::HashMap<kube::runtime::reflector::ObjectRef<K>, u32>>,
}

impl<K: kube::Resource<DynamicType = ()>> Default for Failures<K> {
    fn default() -> Self {
        Failures {
            counts: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> Failures<K> {
    fn counts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<kube::runtime::reflector::ObjectRef<K>, u32>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more failure of `obj` and returns how long to wait before retrying it.
    pub fn record(&self, obj: &K) -> std::time::Duration {
        let mut counts = self.counts();
        let n = counts
            .entry(kube::runtime::reflector::ObjectRef::from_obj(obj))
            .or_insert(0);
        *n += 1;
        backoff(*n)
    }

    /// The controllers' error policy: counts the failure, logs it, and retries after the backoff.
    pub fn retry(&self, obj: &K, err: &dyn std::fmt::Display) -> kube::runtime::controller::Action {
        use kube::ResourceExt as _;
        let delay = self.record(obj);
        tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), error = %err, retry_in = ?delay, "reconcile failed");
        kube::runtime::controller::Action::requeue(delay)
    }

    /// `obj` reconciled successfully (or is gone): its next failure starts from the shortest wait.
    pub fn clear(&self, obj: &K) {
        self.counts()
            .remove(&kube::runtime::reflector::ObjectRef::from_obj(obj));
    }
}

/// Drives a controller's result stream to its end (graceful shutdown); failures were already
/// logged by the error policy, so they are only traced here.
pub async fn drive<T, E: std::fmt::Display>(results: impl futures::Stream<Item = Result<T, E>>) {
    use futures::StreamExt as _;
    results
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Longest Event note the Events API accepts (events.k8s.io/v1: 1 KiB).
pub const EVENT_NOTE_MAX: usize = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary, ending in an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &s[..end])
}

/// Publishes a Kubernetes Event about `obj`; a failure is logged, never fatal. `action` is
/// what the operator did or tried (e.g. `UpdateClassificationJob`, `Observe`); the note is cut
/// to the API's 1 KiB so that a long message never loses the whole Event.
pub async fn publish_event<K: kube::Resource<DynamicType = ()>>(
    recorder: &kube::runtime::events::Recorder,
    obj: &K,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = kube::runtime::events::Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate(&note, EVENT_NOTE_MAX)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
}

/// Binds the admin address, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {addr}: {e}"))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(600); // 1200 bytes, 2 bytes per char
        let cut = truncate(&long, EVENT_NOTE_MAX);
        assert!(cut.len() <= EVENT_NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
        let exact = "a".repeat(EVENT_NOTE_MAX);
        assert_eq!(truncate(&exact, EVENT_NOTE_MAX), exact);
    }
}
