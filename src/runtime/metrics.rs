//! Prometheus metrics (prometheus-client), served as text on `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;

use crate::macie::Place;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub operation: &'static str,
    /// `ok`, or the error category (`throttled`, `access_denied`, `rejected`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// The MacieAccount (its Kubernetes name).
    pub account: String,
    pub region: String,
}

impl RegionLabels {
    pub fn of(place: &Place) -> RegionLabels {
        RegionLabels {
            account: place.account.clone(),
            region: place.region.clone(),
        }
    }
}

/// The labels of `resources`: bounded by kinds (3) x namespaces x reasons (the shared
/// [`Reason`](crate::api::conditions::Reason)s, anything else counted as `Other`); the condition
/// follows from the reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub kind: &'static str,
    /// The resource's namespace, empty for the cluster-scoped MacieAccount (not `namespace`,
    /// which a Prometheus scrape sets to the operator's own).
    pub resource_namespace: String,
    /// The condition that is True: `Ready`, `Reconciling` or `Stalled`.
    pub condition: &'static str,
    pub reason: &'static str,
}

/// One MacieJob (the labels of `paused_job_expiry`: only USER_PAUSED jobs have one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub resource_namespace: String,
    pub resource_name: String,
}

/// What a resource's status shows, as the resource gauges count it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The condition that is True and its reason, when the status has conditions.
    pub condition: Option<(&'static str, &'static str)>,
    /// A MacieJob whose job Macie shows USER_PAUSED: when Macie cancels it (Unix seconds).
    pub paused_until: Option<i64>,
}

/// A resource, as the resource gauges know it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStatusLabels {
    pub account: String,
    pub region: String,
    pub status: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub macie_calls: Family<CallLabels, Counter>,
    pub sweep_duration: Family<RegionLabels, Histogram>,
    pub sweep_pages: Family<RegionLabels, Counter>,
    pub sweeps: Family<RegionLabels, Counter>,
    pub sweep_failures: Family<RegionLabels, Counter>,
    pub jobs: Family<JobStatusLabels, Gauge>,
    pub leader: Gauge,
    pub resources: Family<ResourceLabels, Gauge>,
    pub paused_job_expiry: Family<ObjectLabels, Gauge>,
    /// What each resource's last status showed, so that a change or a deletion moves the
    /// counts (and no series outlives its last resource).
    shown: Mutex<HashMap<ObjectKey, Shown>>,
    /// Statuses last exported per region, so vanished ones go back to 0.
    job_statuses: Mutex<Vec<JobStatusLabels>>,
    /// Per region with a running sweeper: when it last finished a sweep (or started), for
    /// /readyz.
    sweepers: Mutex<HashMap<Place, Instant>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("macie_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error category",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by kind",
            reconcile_duration.clone(),
        );
        let macie_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "macie_api_calls",
            "Macie API calls, by operation and outcome (ok, throttled, access_denied, ...)",
            macie_calls.clone(),
        );
        let sweep_duration = Family::<RegionLabels, Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "job_sweep_duration_seconds",
            "Time one ListClassificationJobs sweep (all pages) took",
            sweep_duration.clone(),
        );
        let sweep_pages = Family::<RegionLabels, Counter>::default();
        registry.register(
            "job_sweep_pages",
            "ListClassificationJobs pages read by sweeps",
            sweep_pages.clone(),
        );
        let sweeps = Family::<RegionLabels, Counter>::default();
        registry.register("job_sweeps", "ListClassificationJobs sweeps completed", sweeps.clone());
        let sweep_failures = Family::<RegionLabels, Counter>::default();
        registry.register(
            "job_sweep_failures",
            "ListClassificationJobs sweeps that failed",
            sweep_failures.clone(),
        );
        let jobs = Family::<JobStatusLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Macie classification jobs by observed status (last sweep)",
            jobs.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica acts (holds the leader lease, or runs without leader election), else 0",
            leader.clone(),
        );
        let resources = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resources",
            "Resources by kind, namespace, the condition that is True (Ready, Reconciling, Stalled) and its reason, as their status was last written",
            resources.clone(),
        );
        let paused_job_expiry = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "paused_job_expiry_timestamp_seconds",
            "When Macie cancels a MacieJob's USER_PAUSED job (Unix seconds); only MacieJobs whose job is USER_PAUSED",
            paused_job_expiry.clone(),
        );
        Metrics {
            registry,
            resources,
            paused_job_expiry,
            shown: Mutex::new(HashMap::new()),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            macie_calls,
            sweep_duration,
            sweep_pages,
            sweeps,
            sweep_failures,
            jobs,
            leader,
            job_statuses: Mutex::new(Vec::new()),
            sweepers: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one Macie API call.
    pub fn call(&self, operation: &'static str, outcome: &'static str) {
        self.macie_calls.get_or_create(&CallLabels { operation, outcome }).inc();
    }

    /// Counts a reconcile of `kind`, failed with the error category `error` or not. A kind's
    /// error counters exist from its first reconcile, at 0 for the categories that did not
    /// happen (so that a rate sees the first error).
    pub fn reconciled(&self, kind: &'static str, took: Duration, error: Option<&'static str>) {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        for category in crate::runtime::Error::categories() {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { kind, category })
                .inc_by(0);
        }
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
        if let Some(category) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { kind, category })
                .inc();
        }
    }

    pub fn swept(&self, place: &Place, took: Duration, pages: u32) {
        let r = RegionLabels::of(place);
        self.sweeps.get_or_create(&r).inc();
        self.sweep_pages.get_or_create(&r).inc_by(u64::from(pages));
        self.sweep_duration.get_or_create(&r).observe(took.as_secs_f64());
    }

    fn sweepers(&self) -> std::sync::MutexGuard<'_, HashMap<Place, Instant>> {
        self.sweepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A region's sweeper started: /readyz expects its first sweep to finish in time too.
    /// (Optional: `sweep_finished` also registers the region.)
    /// Its sweep counters start at 0 (so that an increase sees the first sweep or failure).
    pub fn region_started(&self, place: &Place) {
        let r = RegionLabels::of(place);
        self.sweeps.get_or_create(&r).inc_by(0);
        self.sweep_failures.get_or_create(&r).inc_by(0);
        self.sweep_pages.get_or_create(&r).inc_by(0);
        self.sweepers().entry(place.clone()).or_insert_with(Instant::now);
    }

    /// A region's sweeper finished a sweep, successful or not (call it after every sweep,
    /// besides `swept` for the successful ones). /readyz reports not ready while a running
    /// sweeper has not finished one for too long (see `runtime::readiness`).
    pub fn sweep_finished(&self, place: &Place, ok: bool) {
        self.sweepers().insert(place.clone(), Instant::now());
        if !ok {
            self.sweep_failures.get_or_create(&RegionLabels::of(place)).inc();
        }
    }

    /// A region's sweeper stopped on purpose (no resource uses the region any more): /readyz
    /// no longer waits for its sweeps.
    pub fn region_stopped(&self, place: &Place) {
        self.sweepers().remove(place);
    }

    /// For each region with a running sweeper, how long ago it last finished a sweep (or
    /// started), as of `now`.
    pub fn sweep_ages(&self, now: Instant) -> Vec<(String, Duration)> {
        let mut ages: Vec<(String, Duration)> = self
            .sweepers()
            .iter()
            .map(|(r, t)| (r.to_string(), now.saturating_duration_since(*t)))
            .collect();
        ages.sort();
        ages
    }

    /// Sets the job gauges of a region from a sweep's counts by status.
    pub fn set_jobs(&self, place: &Place, counts: &[(String, i64)]) {
        let mut known = self.job_statuses.lock().unwrap_or_else(|p| p.into_inner());
        for l in known
            .iter()
            .filter(|l| l.region == place.region && l.account == place.account)
        {
            self.jobs.get_or_create(l).set(0);
        }
        for (status, n) in counts {
            let l = JobStatusLabels {
                account: place.account.clone(),
                region: place.region.clone(),
                status: status.clone(),
            };
            self.jobs.get_or_create(&l).set(*n);
            if !known.contains(&l) {
                known.push(l);
            }
        }
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Shown>> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A resource's status now shows `shown` (called where the status is written, also when it
    /// was already stored as is).
    pub fn resource_shown(&self, key: ObjectKey, shown: Shown) {
        let mut all = self.shown();
        if all.get(&key) == Some(&shown) {
            return;
        }
        self.unshow(&key, all.get(&key));
        if let Some((condition, reason)) = shown.condition {
            self.resources
                .get_or_create(&resource_labels(&key, condition, reason))
                .inc();
        }
        if let Some(t) = shown.paused_until {
            self.paused_job_expiry.get_or_create(&object_labels(&key)).set(t);
        }
        all.insert(key, shown);
    }

    /// The resource is gone: it leaves the gauges.
    pub fn resource_gone(&self, key: &ObjectKey) {
        let mut all = self.shown();
        self.unshow(key, all.get(key));
        all.remove(key);
    }

    /// Keeps the resources of `kind` for which `live` holds, dropping the others (after a
    /// watch's list, for deletions it did not see).
    pub fn resources_retain(&self, kind: &str, live: impl Fn(&ObjectKey) -> bool) {
        let mut all = self.shown();
        let gone: Vec<ObjectKey> = all.keys().filter(|k| k.kind == kind && !live(k)).cloned().collect();
        for key in gone {
            self.unshow(&key, all.get(&key));
            all.remove(&key);
        }
    }

    /// Takes what `key` showed out of the gauges; a count that reaches zero loses its series.
    fn unshow(&self, key: &ObjectKey, shown: Option<&Shown>) {
        let Some(shown) = shown else { return };
        if let Some((condition, reason)) = shown.condition {
            let labels = resource_labels(key, condition, reason);
            if self.resources.get_or_create(&labels).dec() <= 1 {
                self.resources.remove(&labels);
            }
        }
        if shown.paused_until.is_some() {
            self.paused_job_expiry.remove(&object_labels(key));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn resource_labels(key: &ObjectKey, condition: &'static str, reason: &'static str) -> ResourceLabels {
    ResourceLabels {
        kind: key.kind,
        resource_namespace: key.namespace.clone(),
        condition,
        reason,
    }
}

fn object_labels(key: &ObjectKey) -> ObjectLabels {
    ObjectLabels {
        resource_namespace: key.namespace.clone(),
        resource_name: key.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(region: &str) -> Place {
        Place::new("default", region)
    }

    #[test]
    fn exposition_has_the_metrics() {
        let m = Metrics::new();
        m.call("ListClassificationJobs", "ok");
        m.call("UpdateClassificationJob", "throttled");
        m.reconciled("MacieJob", Duration::from_millis(3), Some("kubernetes"));
        m.swept(&p("us-east-1"), Duration::from_millis(20), 3);
        m.sweep_finished(&p("us-east-1"), true);
        m.sweep_finished(&p("eu-west-1"), false);
        m.set_jobs(&p("us-east-1"), &[("RUNNING".into(), 2)]);
        m.set_jobs(&p("us-east-1"), &[("IDLE".into(), 1)]);
        m.leader.set(1);
        m.region_started(&p("ap-southeast-4"));
        let text = m.encode();
        for line in [
            // Counters that exist at 0 before their first event.
            r#"macie_operator_reconcile_errors_total{kind="MacieJob",category="throttled"} 0"#,
            r#"macie_operator_job_sweep_failures_total{account="default",region="ap-southeast-4"} 0"#,
            r#"macie_operator_job_sweeps_total{account="default",region="ap-southeast-4"} 0"#,
            r#"macie_operator_macie_api_calls_total{operation="UpdateClassificationJob",outcome="throttled"} 1"#,
            r#"macie_operator_reconcile_errors_total{kind="MacieJob",category="kubernetes"} 1"#,
            r#"macie_operator_job_sweep_pages_total{account="default",region="us-east-1"} 3"#,
            r#"macie_operator_job_sweep_failures_total{account="default",region="eu-west-1"} 1"#,
            r#"macie_operator_jobs{account="default",region="us-east-1",status="RUNNING"} 0"#,
            r#"macie_operator_jobs{account="default",region="us-east-1",status="IDLE"} 1"#,
            "macie_operator_leader 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn sweep_progress_is_tracked_per_running_region() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.region_started(&p("us-east-1"));
        m.sweep_finished(&p("eu-west-1"), false);
        m.region_started(&p("eu-west-1")); // already known: keeps its last sweep
        let later = t0 + Duration::from_secs(3600);
        let ages = m.sweep_ages(later);
        assert_eq!(
            ages.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["default/eu-west-1", "default/us-east-1"]
        );
        assert!(ages.iter().all(|(_, a)| *a <= Duration::from_secs(3600)));
        m.region_stopped(&p("us-east-1"));
        assert_eq!(m.sweep_ages(later).len(), 1);
    }

    fn key(kind: &'static str, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn shows(condition: &'static str, reason: &'static str, paused_until: Option<i64>) -> Shown {
        Shown {
            condition: Some((condition, reason)),
            paused_until,
        }
    }

    /// The exposition's lines of `family` (no HELP/TYPE), sorted.
    fn series(m: &Metrics, family: &str) -> Vec<String> {
        let mut lines: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// One row: what happens to resources, and the series the resource gauges show after it.
    struct Row {
        name: &'static str,
        steps: fn(&Metrics),
        resources: &'static [&'static str],
        expiry: &'static [&'static str],
    }

    const ROWS: &[Row] = &[
        Row {
            name: "two resources with the same reason count 2",
            steps: |m| {
                m.resource_shown(key("MacieJob", "a", "x"), shows("Ready", "Converged", None));
                m.resource_shown(key("MacieJob", "a", "y"), shows("Ready", "Converged", None));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Ready",reason="Converged"} 2"#,
            ],
            expiry: &[],
        },
        Row {
            name: "the same status twice counts once",
            steps: |m| {
                m.resource_shown(key("MacieJob", "a", "x"), shows("Ready", "Converged", None));
                m.resource_shown(key("MacieJob", "a", "x"), shows("Ready", "Converged", None));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Ready",reason="Converged"} 1"#,
            ],
            expiry: &[],
        },
        Row {
            name: "a new reason moves the resource; the emptied series goes",
            steps: |m| {
                m.resource_shown(key("MacieJob", "a", "x"), shows("Ready", "Converged", None));
                m.resource_shown(key("MacieJob", "a", "x"), shows("Stalled", "AccessDenied", None));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Stalled",reason="AccessDenied"} 1"#,
            ],
            expiry: &[],
        },
        Row {
            name: "kinds and namespaces are apart; a cluster-scoped kind has an empty namespace",
            steps: |m| {
                m.resource_shown(key("MacieJob", "a", "x"), shows("Stalled", "NotPermitted", None));
                m.resource_shown(key("MacieDiscovery", "a", "x"), shows("Stalled", "NotPermitted", None));
                m.resource_shown(key("MacieJob", "b", "x"), shows("Stalled", "NotPermitted", None));
                m.resource_shown(key("MacieAccount", "", "prod"), shows("Ready", "Verified", None));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieAccount",resource_namespace="",condition="Ready",reason="Verified"} 1"#,
                r#"macie_operator_resources{kind="MacieDiscovery",resource_namespace="a",condition="Stalled",reason="NotPermitted"} 1"#,
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Stalled",reason="NotPermitted"} 1"#,
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="b",condition="Stalled",reason="NotPermitted"} 1"#,
            ],
            expiry: &[],
        },
        Row {
            name: "a paused job has its expiry; resumed, it has none",
            steps: |m| {
                m.resource_shown(
                    key("MacieJob", "a", "x"),
                    shows("Ready", "Converged", Some(1_800_000_000)),
                );
                m.resource_shown(
                    key("MacieJob", "a", "y"),
                    shows("Ready", "ExpiringSoon", Some(1_700_000_000)),
                );
                m.resource_shown(key("MacieJob", "a", "y"), shows("Reconciling", "Transitioning", None));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Ready",reason="Converged"} 1"#,
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Reconciling",reason="Transitioning"} 1"#,
            ],
            expiry: &[
                r#"macie_operator_paused_job_expiry_timestamp_seconds{resource_namespace="a",resource_name="x"} 1800000000"#,
            ],
        },
        Row {
            name: "a deleted resource leaves both gauges",
            steps: |m| {
                m.resource_shown(
                    key("MacieJob", "a", "x"),
                    shows("Ready", "Converged", Some(1_800_000_000)),
                );
                m.resource_shown(key("MacieJob", "a", "y"), shows("Ready", "Converged", None));
                m.resource_gone(&key("MacieJob", "a", "x"));
                m.resource_gone(&key("MacieJob", "a", "never-seen"));
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Ready",reason="Converged"} 1"#,
            ],
            expiry: &[],
        },
        Row {
            name: "after a list, only the listed resources of that kind stay",
            steps: |m| {
                m.resource_shown(
                    key("MacieJob", "a", "x"),
                    shows("Ready", "Converged", Some(1_800_000_000)),
                );
                m.resource_shown(key("MacieJob", "a", "y"), shows("Ready", "Converged", None));
                m.resource_shown(key("MacieDiscovery", "a", "x"), shows("Ready", "Converged", None));
                m.resources_retain("MacieJob", |k| k.name == "y");
            },
            resources: &[
                r#"macie_operator_resources{kind="MacieDiscovery",resource_namespace="a",condition="Ready",reason="Converged"} 1"#,
                r#"macie_operator_resources{kind="MacieJob",resource_namespace="a",condition="Ready",reason="Converged"} 1"#,
            ],
            expiry: &[],
        },
        Row {
            name: "a status without conditions counts nowhere",
            steps: |m| {
                m.resource_shown(key("MacieJob", "a", "x"), shows("Ready", "Converged", None));
                m.resource_shown(
                    key("MacieJob", "a", "x"),
                    Shown {
                        condition: None,
                        paused_until: None,
                    },
                );
            },
            resources: &[],
            expiry: &[],
        },
    ];

    #[test]
    fn resource_gauges() {
        for row in ROWS {
            let m = Metrics::new();
            (row.steps)(&m);
            assert_eq!(series(&m, "macie_operator_resources"), row.resources, "{}", row.name);
            assert_eq!(
                series(&m, "macie_operator_paused_job_expiry_timestamp_seconds"),
                row.expiry,
                "{}",
                row.name
            );
        }
    }
}
