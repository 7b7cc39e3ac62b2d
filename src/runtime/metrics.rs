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
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );
        Metrics {
            registry,
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

    pub fn reconciled(&self, kind: &'static str, took: Duration, error: Option<&'static str>) {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
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
    pub fn region_started(&self, place: &Place) {
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
        let text = m.encode();
        for line in [
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
}
