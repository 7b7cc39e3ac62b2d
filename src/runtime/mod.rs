//! Process plumbing: logging, metrics, the health and metrics servers, leader election,
//! shutdown signals.

pub mod clock;
pub mod events;
#[cfg(test)]
pub mod fake_kube;
pub mod gate;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod metrics_auth;
pub mod regions;
pub mod serve;
#[cfg(test)]
pub mod sim;
pub mod status;
pub mod tls;

use crate::macie::MacieError;

/// Field manager of every status write and the Events' reporting controller.
pub const MANAGER: &str = "macie-operator";

/// The API of a kind in the watched scope: one namespace (`--namespace`) or all.
pub fn scoped_api<K>(client: kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    }
}

/// The API of the namespace an object lives in (for its status, finalizers and Events).
pub fn object_api<K>(client: kube::Client, obj: &K) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    kube::Api::namespaced(client, &obj.meta().namespace.clone().unwrap_or_default())
}

/// Why a reconcile failed (either controller).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Macie: {0}")]
    Macie(MacieError),
}

impl Error {
    /// Every [`category`](Self::category).
    pub fn categories() -> impl Iterator<Item = &'static str> {
        std::iter::once("kubernetes").chain(MacieError::CATEGORIES)
    }

    /// A fixed label for metrics (one of [`categories`](Self::categories)).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Macie(e) => e.category(),
        }
    }
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the tracing subscriber. `filter` uses the RUST_LOG syntax (e.g. `info,kube=warn`).
/// Text logs carry ANSI colours only when stderr is a terminal.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// The Kubernetes side of readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeState {
    /// Not checked yet, or the CRDs are not installed and Established yet.
    Starting(String),
    /// Both kinds could be listed in the watched scope at the last check.
    Ok,
    /// The last check could not list them (the API server is unreachable, the CRDs are gone,
    /// a permission was revoked): the controllers' watches are not being served either.
    Lost(String),
}

/// A region's job sweeper counts as stuck when it has not finished a sweep (successful or not)
/// for this many poll intervals.
pub const SWEEP_STALE_INTERVALS: u32 = 3;

/// How long a region's sweeper may go without finishing a sweep before /readyz reports not
/// ready: three poll intervals, but at least one interval plus one AWS operation timeout, so
/// that a single slow call still within its budget does not flip readiness when the poll
/// interval is short.
pub fn sweep_stale_after(poll_interval: Duration, aws_operation_timeout: Duration) -> Duration {
    (poll_interval * SWEEP_STALE_INTERVALS).max(poll_interval + aws_operation_timeout)
}

/// The /readyz judgement: ready when the watched scope can be listed and every running region
/// sweeper finished a sweep within `stale_after`. `sweep_ages` is, per region, the time since
/// its last finished sweep (or since it started).
pub fn readiness(kube: &KubeState, sweep_ages: &[(String, Duration)], stale_after: Duration) -> Result<(), String> {
    match kube {
        KubeState::Ok => {}
        KubeState::Starting(why) => return Err(format!("starting: {why}")),
        KubeState::Lost(why) => return Err(format!("cannot list the watched resources: {why}")),
    }
    let stuck: Vec<String> = sweep_ages
        .iter()
        .filter(|(_, age)| *age > stale_after)
        .map(|(region, age)| format!("{region} (last sweep finished {}s ago)", age.as_secs()))
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "job sweeper stuck in {} (limit {}s)",
            stuck.join(", "),
            stale_after.as_secs()
        ))
    }
}

/// Readiness shared between the Kubernetes check, the job sweepers (through `Metrics`) and the
/// health server.
#[derive(Clone)]
pub struct Health {
    kube: Arc<Mutex<KubeState>>,
    metrics: Arc<metrics::Metrics>,
    sweep_stale_after: Duration,
}

impl Health {
    /// Reads the sweepers' progress from `metrics` (`Metrics::sweep_finished`).
    pub fn new(metrics: Arc<metrics::Metrics>, sweep_stale_after: Duration) -> Health {
        Health {
            kube: Arc::new(Mutex::new(KubeState::Starting("not checked yet".into()))),
            metrics,
            sweep_stale_after,
        }
    }

    /// Records the outcome of a Kubernetes check; returns the previous state.
    pub fn set_kube(&self, state: KubeState) -> KubeState {
        std::mem::replace(&mut *self.kube.lock().unwrap_or_else(|p| p.into_inner()), state)
    }

    /// Ok, or why the process is not ready.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let kube = self.kube.lock().unwrap_or_else(|p| p.into_inner()).clone();
        readiness(&kube, &self.metrics.sweep_ages(now), self.sweep_stale_after)
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }
}

/// How often the Kubernetes side of readiness is checked once it passed (every 2 s before).
pub const KUBE_CHECK_PERIOD: Duration = Duration::from_secs(5);
/// How long one list of the Kubernetes check may take.
pub const KUBE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One call of the Kubernetes check, bounded by `KUBE_CHECK_TIMEOUT`.
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<(), String> {
    match tokio::time::timeout(KUBE_CHECK_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {KUBE_CHECK_TIMEOUT:?}")),
    }
}

/// Keeps the Kubernetes side of readiness up to date, for ever: first until both CRDs are
/// installed and Established (checked every 2 s), then every `KUBE_CHECK_PERIOD` by listing
/// one object of each kind in the watched scope (what the controllers' watches need to
/// (re)start). A failed or timed-out list reports not ready until a list succeeds again. This
/// does not look inside the controllers' watch streams (kube-runtime re-establishes them with
/// backoff once the API server answers again); it tells whether they can be served.
pub async fn check_kube(client: kube::Client, namespace: Option<String>, health: Health) {
    use crate::api::{MacieDiscovery, MacieJob};
    let jobs: kube::Api<MacieJob> = scoped_api(client.clone(), namespace.as_deref());
    let discoveries: kube::Api<MacieDiscovery> = scoped_api(client.clone(), namespace.as_deref());
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    let names: Vec<String> = crate::api::crds().into_iter().filter_map(|c| c.metadata.name).collect();
    let mut established = false;
    loop {
        let state = if established {
            let lp = kube::api::ListParams::default().limit(1);
            let listed = async {
                bounded("list MacieJobs", jobs.list_metadata(&lp)).await?;
                bounded("list MacieDiscoveries", discoveries.list_metadata(&lp)).await
            };
            match listed.await {
                Ok(()) => KubeState::Ok,
                Err(e) => KubeState::Lost(e),
            }
        } else {
            let mut missing = Vec::new();
            for n in &names {
                let ok = match tokio::time::timeout(KUBE_CHECK_TIMEOUT, api.get_opt(n)).await {
                    Ok(Ok(Some(crd))) => crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True"),
                    _ => false,
                };
                if !ok {
                    missing.push(n.clone());
                }
            }
            if missing.is_empty() {
                established = true;
                continue;
            }
            KubeState::Starting(format!("CRDs not installed or not Established: {}", missing.join(", ")))
        };
        let previous = health.set_kube(state.clone());
        if previous != state {
            match &state {
                KubeState::Ok => tracing::info!("the watched resources can be listed: ready"),
                KubeState::Starting(why) => tracing::warn!("waiting: {why}"),
                KubeState::Lost(why) => tracing::warn!("not ready: cannot list the watched resources: {why}"),
            }
        }
        let period = if state == KubeState::Ok {
            KUBE_CHECK_PERIOD
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(period).await;
    }
}

/// Jittered exponential backoff: 1 s, 2 s, 4 s ... capped at 5 minutes, times 0.5..1.0.
pub fn backoff(failures: u32) -> std::time::Duration {
    let base = std::time::Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(9));
    let capped = base.min(std::time::Duration::from_secs(300));
    capped.mul_f64(0.5 + clock::random() * 0.5)
}

/// The annotation `kubectl apply` (client-side) keeps: the whole last applied object again.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the controllers never read from a watched object before it is cached: managed
/// fields and the last-applied annotation (each can be as large as the object itself).
pub fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// How a reconcile ends: when to look at the resource again if no watch event or sweep does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Only a change (a watch event, a sweep, a trigger) brings the resource back.
    AwaitChange,
    /// Again after this long (whatever else happens).
    After(Duration),
}

impl Next {
    /// Again at `at`: at least 1 s, at most a day from now.
    pub fn at(at: k8s_openapi::jiff::Timestamp) -> Next {
        let wait = clock::now().duration_until(at).unsigned_abs();
        Next::After(wait.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
    }

    /// The controller runtime's form.
    pub fn action(self) -> kube::runtime::controller::Action {
        match self {
            Next::AwaitChange => kube::runtime::controller::Action::await_change(),
            Next::After(d) => kube::runtime::controller::Action::requeue(d),
        }
    }
}

/// What a reconcile step gives: the next step's input (`Continue`), or the end of the
/// reconcile (`Break`).
pub type Flow<T> = Result<std::ops::ControlFlow<Next, T>, Error>;

/// The input a step handed on; else the step's end returned, from a step (as its `Flow`) or
/// from the reconcile (as its `Next`).
#[macro_export]
macro_rules! proceed {
    ($step:expr) => {
        match $step? {
            std::ops::ControlFlow::Continue(v) => v,
            std::ops::ControlFlow::Break(next) => return Ok($crate::runtime::Ends::end(next)),
        }
    };
}

/// What a step's end becomes where `proceed!` returns it.
pub trait Ends {
    fn end(next: Next) -> Self;
}

impl Ends for Next {
    fn end(next: Next) -> Self {
        next
    }
}

impl<T> Ends for std::ops::ControlFlow<Next, T> {
    fn end(next: Next) -> Self {
        std::ops::ControlFlow::Break(next)
    }
}

/// A step hands the next one its input.
pub fn go<T>(input: T) -> Flow<T> {
    Ok(std::ops::ControlFlow::Continue(input))
}

/// A step ends the reconcile.
pub fn stop<T>(next: Next) -> Flow<T> {
    Ok(std::ops::ControlFlow::Break(next))
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

    /// Objects with a failure count.
    pub fn len(&self) -> usize {
        self.counts().len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts().is_empty()
    }

    /// Keeps only the entries `keep` accepts (drops those of deleted objects).
    pub fn retain(&self, keep: impl Fn(&kube::runtime::reflector::ObjectRef<K>) -> bool) {
        self.counts().retain(|k, _| keep(k));
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
    recorder: &events::Recorder,
    obj: &K,
    type_: events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    if let Err(e) = recorder
        .publish(obj, type_, reason, action, truncate(&note, EVENT_NOTE_MAX))
        .await
    {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
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
    fn readiness_needs_the_watched_scope_and_sweepers_that_keep_finishing() {
        let s = Duration::from_secs;
        let ok = KubeState::Ok;
        let lost = KubeState::Lost("connection refused".into());
        let starting = KubeState::Starting("CRDs not installed".into());
        let limit = sweep_stale_after(s(60), s(30));
        let ages =
            |v: &[(&str, u64)]| -> Vec<(String, Duration)> { v.iter().map(|(r, a)| (r.to_string(), s(*a))).collect() };
        /// Case, Kubernetes state, per region the time since its last finished sweep, and a
        /// substring of the expected error (None: ready).
        type Row<'a> = (
            &'static str,
            &'a KubeState,
            Vec<(String, Duration)>,
            Option<&'static str>,
        );
        let table: Vec<Row> = vec![
            ("no sweeper yet (a follower, or no resources)", &ok, ages(&[]), None),
            (
                "sweeps finishing each interval",
                &ok,
                ages(&[("us-east-1", 59), ("eu-west-1", 1)]),
                None,
            ),
            ("exactly three intervals", &ok, ages(&[("us-east-1", 180)]), None),
            (
                "one region stuck past three intervals",
                &ok,
                ages(&[("us-east-1", 10), ("eu-west-1", 181)]),
                Some("eu-west-1 (last sweep finished 181s ago)"),
            ),
            (
                "watches lost, sweepers fine",
                &lost,
                ages(&[("us-east-1", 1)]),
                Some("connection refused"),
            ),
            (
                "CRDs not there yet",
                &starting,
                ages(&[]),
                Some("starting: CRDs not installed"),
            ),
        ];
        for (case, kube, ages, want) in table {
            let got = readiness(kube, &ages, limit);
            match want {
                None => assert_eq!(got, Ok(()), "{case}"),
                Some(needle) => {
                    let err = got.expect_err(case);
                    assert!(err.contains(needle), "{case}: {err}");
                }
            }
        }
    }

    #[test]
    fn sweep_staleness_is_three_poll_intervals_but_never_less_than_one_call_budget() {
        let s = Duration::from_secs;
        // (poll interval, AWS operation timeout, limit)
        for (poll, op, want) in [
            (s(60), s(30), s(180)),
            (s(10), s(30), s(40)),
            (Duration::from_millis(500), s(30), Duration::from_millis(30_500)),
            (s(300), s(30), s(900)),
        ] {
            assert_eq!(sweep_stale_after(poll, op), want, "poll {poll:?}, op {op:?}");
        }
    }

    #[test]
    fn health_reads_the_sweepers_from_metrics() {
        let m = Arc::new(metrics::Metrics::new());
        let h = Health::new(m.clone(), Duration::from_secs(180));
        assert!(h.check().unwrap_err().contains("not checked yet"));
        h.set_kube(KubeState::Ok);
        let place = crate::macie::Place::new("default", "us-east-1");
        m.sweep_finished(&place, false);
        let t = Instant::now();
        assert_eq!(h.check_at(t), Ok(()));
        let later = t + Duration::from_secs(181);
        assert!(h.check_at(later).unwrap_err().contains("us-east-1"));
        m.region_stopped(&place);
        assert_eq!(h.check_at(later), Ok(()));
    }

    #[test]
    fn slim_drops_managed_fields_and_the_last_applied_annotation_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut obj = k8s_openapi::api::core::v1::ConfigMap::default();
        obj.metadata.name = Some("x".into());
        obj.metadata.finalizers = Some(vec!["f".into()]);
        obj.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        obj.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{}".to_string()),
                ("keep".to_string(), "v".to_string()),
            ]
            .into(),
        );
        slim(&mut obj);
        assert!(obj.metadata.managed_fields.is_none());
        assert_eq!(obj.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert_eq!(obj.metadata.finalizers.as_deref(), Some(&["f".to_string()][..]));
        obj.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        slim(&mut obj);
        assert!(obj.metadata.annotations.is_none());
    }

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
