//! The results: JSON for machines, tables for people.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::system::Machine;

/// p50, p99 and max of a sample, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles (sorts `v`).
    pub fn of(v: &mut [f64]) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}/{:.2}/{:.2}", self.p50, self.p99, self.max)
    }
}

/// Steady-state Macie reads per sweep.
#[derive(Debug, Clone, Serialize)]
pub struct ReadCost {
    pub resources: usize,
    pub jobs: usize,
    pub page_size: usize,
    pub sweeps: u64,
    pub list_calls: u64,
    pub per_sweep: f64,
    /// ceil(jobs / page size): the fewest ListClassificationJobs calls that see every job.
    pub ideal: u64,
    pub describe_calls: u64,
    pub update_calls: u64,
    /// One DescribeClassificationJob per resource per poll.
    pub peers_per_poll: u64,
    /// peers_per_poll / per_sweep.
    pub ratio: f64,
}

impl fmt::Display for ReadCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read cost at {}: {:.1} ListClassificationJobs per sweep (ideal {}), {} Describe, {} updates over {} sweeps",
            self.resources, self.per_sweep, self.ideal, self.describe_calls, self.update_calls, self.sweeps
        )
    }
}

/// CPU and memory of the operator over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub window_s: f64,
    pub cpu_s: f64,
    pub cpu_per_min_s: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// Every MacieJob's desired status changed at once.
#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub resources: usize,
    pub to: String,
    pub faults: Value,
    /// Time the driver took to apply every change.
    pub apply_s: f64,
    /// From the first apply to the last resource Ready.
    pub total_s: f64,
    /// Per resource, from its apply to Macie accepting the update.
    pub to_macie: Percentiles,
    /// Per resource, from its apply to the resource reporting Ready at the new status.
    pub to_ready: Percentiles,
    pub reached_macie: usize,
    pub update_calls: usize,
    pub accepted: usize,
    pub invalid: usize,
    pub repeated: usize,
    /// Injected ThrottlingException answers to UpdateClassificationJob (the SDK retries them).
    pub updates_throttled: usize,
    /// ListClassificationJobs requests during the flip (sweeps go on at their interval).
    pub list_calls: u64,
    /// The operator's CPU seconds from the first apply to the last Ready.
    pub cpu_s: f64,
    /// kube-apiserver's CPU seconds over the same time (the bottleneck on a small machine).
    pub apiserver_cpu_s: Option<f64>,
    /// Write requests the kube-apiserver counted (apiserver_request_total) from just before the
    /// first apply to the last Ready, per "VERB resource[/subresource]"; the driver's own spec
    /// patches (one PATCH maciejobs per resource) included. None if /metrics was not readable.
    pub apiserver_writes: Option<BTreeMap<String, u64>>,
    pub peak_rss_mib: f64,
}

impl Flip {
    /// The operator's kube-apiserver writes per resource: every write counted but the driver's
    /// spec patches (one `PATCH maciejobs` per resource) and the API server's own upkeep (its
    /// identity Lease and the `kubernetes` endpoints, every 10 s; the bench runs the operator
    /// without leader election, so no Lease write is the operator's).
    pub fn writes_per_resource(&self) -> Option<f64> {
        let w = self.apiserver_writes.as_ref()?;
        let upkeep = |k: &str| k.ends_with(" leases") || k.ends_with(" endpoints") || k.ends_with(" endpointslices");
        let total: u64 = w.iter().filter(|(k, _)| !upkeep(k)).map(|(_, v)| v).sum();
        Some(total.saturating_sub(self.resources as u64) as f64 / self.resources.max(1) as f64)
    }

    fn label(&self) -> &'static str {
        if self.faults.get("operations").is_some() {
            "100 ms + 10% throttling"
        } else {
            "none"
        }
    }
}

impl fmt::Display for Flip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flip of {} to {} (faults: {}): Macie p50/p99/max {} s, Ready {} s, total {:.1} s, {} updates ({} invalid, {} repeated), kube-apiserver writes {}",
            self.resources,
            self.to,
            self.label(),
            self.to_macie,
            self.to_ready,
            self.total_s,
            self.accepted,
            self.invalid,
            self.repeated,
            self.apiserver_writes
                .as_ref()
                .map_or("unknown".to_string(), |w| format!("{w:?}"))
        )
    }
}

/// A flip at the default poll interval (60 s): how fast reads of the job confirm the calls.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmRun {
    pub resources: usize,
    pub poll_interval_s: f64,
    /// DescribeClassificationJob calls during the flip, per MacieJob flipped (the reads a
    /// step costs beyond the sweeps).
    pub reads_per_step: f64,
    pub flip: Flip,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRun {
    pub resources: usize,
    pub initial_sync_s: f64,
    pub read: ReadCost,
    pub idle: Footprint,
    pub flips: Vec<Flip>,
    /// The local kube-apiserver's capacity for the clean flip's writes, measured in the same run
    /// (None if its /metrics could not be read).
    pub capacity: Option<Capacity>,
}

/// What the local kube-apiserver can take of the writes a flip costs: with no operator running,
/// the driver sends the writes the operator sent in the clean flip (the same number of status
/// writes, Event creates and Event patches, counted from `apiserver_request_total`) as fast as
/// `concurrency` requests in flight allow, and times them.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The writes sent, per "VERB resource[/subresource]" as the kube-apiserver counted them.
    pub writes: BTreeMap<String, u64>,
    pub concurrency: usize,
    pub seconds: f64,
    pub writes_per_s: f64,
    /// The clean flip, in the same terms: MacieJobs flipped per second (from the first apply to
    /// the last Ready), against the MacieJobs per second the API server can take at the
    /// same writes per MacieJob (`resources / seconds`).
    pub flip_per_s: f64,
    pub capacity_per_s: f64,
    /// flip_per_s / capacity_per_s.
    pub ratio: f64,
}

impl Capacity {
    /// `flip` (the clean flip) against `writes` sent in `seconds`.
    pub fn of(flip: &Flip, writes: BTreeMap<String, u64>, concurrency: usize, seconds: f64) -> Capacity {
        let total: u64 = writes.values().sum();
        let seconds = seconds.max(1e-9);
        let flip_per_s = flip.resources as f64 / flip.total_s.max(1e-9);
        let capacity_per_s = flip.resources as f64 / seconds;
        Capacity {
            writes,
            concurrency,
            seconds,
            writes_per_s: total as f64 / seconds,
            flip_per_s,
            capacity_per_s,
            ratio: flip_per_s / capacity_per_s,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryRun {
    pub accounts: usize,
    pub resources: usize,
    pub batch_size: usize,
    pub initial_sync_s: f64,
    pub changes: usize,
    pub batch_calls: usize,
    /// ceil(changes / batch size).
    pub ideal_batch_calls: usize,
    pub accounts_sent: usize,
    pub sent_twice: usize,
    pub enabled_in_macie: usize,
    pub list_calls: u64,
    pub total_s: f64,
    /// Per resource, from the flip to Converged.
    pub per_resource: Percentiles,
    /// ListAutomatedDiscoveryAccounts calls of each full observation in the steady state (one
    /// per poll interval).
    pub steady_list_per_interval: Vec<u64>,
    /// ceil(accounts / 25): the calls a full observation needs (pages of 25 accounts).
    pub ideal_full_observation: u64,
    /// A fresh operator's first full observation.
    pub first_observation_calls: u64,
    /// ListAutomatedDiscoveryAccounts calls from changing one account to its resource being
    /// Converged (no full observation due in between).
    pub confirm_one_calls: u64,
    pub confirm_one_s: f64,
}

impl fmt::Display for DiscoveryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery flip of {} accounts over {} resources: {} BatchUpdate calls (ideal {}), {} sent twice, {:.1} s; List calls per steady-state interval {:?} (ideal {}), confirming one change {} in {:.1} s",
            self.accounts,
            self.resources,
            self.batch_calls,
            self.ideal_batch_calls,
            self.sent_twice,
            self.total_s,
            self.steady_list_per_interval,
            self.ideal_full_observation,
            self.confirm_one_calls,
            self.confirm_one_s
        )
    }
}

/// MacieJobs with a ONE_TIME definition applied at once, created against the create quota
/// (the operator's --create-rate and the emulator's quota the same `rate`).
#[derive(Debug, Clone, Serialize)]
pub struct CreateRun {
    pub definitions: usize,
    /// CreateClassificationJob calls per second per account and region.
    pub rate: f64,
    /// Time the driver took to apply every MacieJob.
    pub apply_s: f64,
    /// From the first apply to the last MacieJob Converged.
    pub total_s: f64,
    /// (definitions - 1) / rate: the fewest seconds the quota allows from the first create to
    /// the last.
    pub minimum_s: f64,
    /// total_s / minimum_s (none for a single definition).
    pub ratio: Option<f64>,
    /// From the first accepted create to the last, as the emulator logged them.
    pub create_span_s: f64,
    /// The shortest time between two CreateClassificationJob calls as the emulator received
    /// them (the quota wants at least 1 / rate).
    pub min_gap_s: Option<f64>,
    /// CreateClassificationJob calls in the emulator's call log.
    pub create_calls: usize,
    /// Of those, accepted (OK).
    pub created: usize,
    /// Of those, throttled by the emulator's create quota (not processed; sent again).
    pub throttled: usize,
    /// Of those, refused otherwise (input errors and the like).
    pub refused: usize,
    /// Creates that repeated a client token already used, plus repeated updates.
    pub repeated: usize,
    /// Refused creates plus updates Macie does not allow.
    pub invalid: usize,
    /// UpdateClassificationJob calls (none needed: the jobs are created RUNNING).
    pub update_calls: usize,
    /// Jobs in the emulator at the end.
    pub jobs_in_macie: usize,
    /// Definitions whose job name exists exactly once in the emulator.
    pub jobs_once: usize,
    /// MacieJobs that showed WaitingForCreateQuota while they waited.
    pub waited: usize,
    /// Per resource, from its apply to Converged.
    pub to_converged: Percentiles,
    /// Per resource, from Macie accepting its create to Converged (a sweep confirms it).
    pub created_to_converged: Percentiles,
    /// The operator's CPU seconds from the first apply to the last Converged.
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

impl fmt::Display for CreateRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} creates at {}/s: {:.1} s (minimum {:.1} s, ratio {}), {} calls ({} OK, {} throttled, {} invalid, {} repeated), {} of {} jobs exist once, {} showed WaitingForCreateQuota",
            self.definitions,
            self.rate,
            self.total_s,
            self.minimum_s,
            self.ratio.map_or("-".to_string(), |r| format!("{r:.3}")),
            self.create_calls,
            self.created,
            self.throttled,
            self.invalid,
            self.repeated,
            self.jobs_once,
            self.definitions,
            self.waited
        )
    }
}

/// An account's history: `jobs` jobs, all COMPLETE or CANCELLED but `managed` RUNNING ones, each
/// managed by a MacieJob; steady-state Macie reads per sweep against ceil(managed / page size).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRun {
    pub jobs: usize,
    /// COMPLETE or CANCELLED jobs (they never change again).
    pub terminal: usize,
    /// RUNNING jobs, each managed by a MacieJob by id.
    pub managed: usize,
    pub page_size: usize,
    /// From the operator's start to every MacieJob Ready.
    pub initial_sync_s: f64,
    /// ListClassificationJobs and DescribeClassificationJob requests from the operator's start
    /// to every MacieJob Ready.
    pub initial_list_calls: u64,
    pub initial_describe_calls: u64,
    pub sweeps: u64,
    pub list_calls: u64,
    pub describe_calls: u64,
    pub update_calls: u64,
    pub list_per_sweep: f64,
    /// (ListClassificationJobs + DescribeClassificationJob) per steady-state sweep.
    pub reads_per_sweep: f64,
    /// ceil(managed / page size): the fewest calls that see every job that can change.
    pub ideal: u64,
    /// ceil(jobs / page size): a sweep that lists every job, terminal ones too.
    pub list_everything: u64,
    pub idle: Footprint,
}

impl HistoryRun {
    /// The run fails above this many reads per sweep.
    pub fn ceiling(&self) -> f64 {
        2.0 * self.ideal as f64
    }
}

impl fmt::Display for HistoryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history of {} jobs ({} terminal, {} managed): {:.1} reads per sweep ({:.1} List, {} Describe over {} sweeps; ideal {}, listing everything {}), first sync {:.1} s with {} List and {} Describe",
            self.jobs,
            self.terminal,
            self.managed,
            self.reads_per_sweep,
            self.list_per_sweep,
            self.describe_calls,
            self.sweeps,
            self.ideal,
            self.list_everything,
            self.initial_sync_s,
            self.initial_list_calls,
            self.initial_describe_calls
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Value,
    pub started_at: String,
    pub finished: bool,
    pub jobs: Vec<JobRun>,
    pub discovery: Vec<DiscoveryRun>,
    pub creates: Vec<CreateRun>,
    pub history: Vec<HistoryRun>,
    pub confirm: Vec<ConfirmRun>,
    /// The goals of issue 13, each beside its limit and the figure before that issue (filled by
    /// `finish`).
    pub goals: Vec<Goal>,
}

/// One goal: the figure this run measured, its limit, and the figure before issue 13.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub limit: String,
    pub before: String,
    /// None when this run did not measure it.
    pub met: Option<bool>,
}

impl Goal {
    fn new(goal: &str, limit: &str, before: &str, measured: Option<(String, bool)>) -> Goal {
        Goal {
            goal: goal.to_string(),
            measured: measured.as_ref().map_or("not run".to_string(), |(m, _)| m.clone()),
            limit: limit.to_string(),
            before: before.to_string(),
            met: measured.map(|(_, ok)| ok),
        }
    }
}

impl Report {
    pub fn new(machine: Machine, settings: Value) -> Report {
        Report {
            machine,
            settings,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            finished: false,
            jobs: Vec::new(),
            discovery: Vec::new(),
            creates: Vec::new(),
            history: Vec::new(),
            confirm: Vec::new(),
            goals: Vec::new(),
        }
    }

    pub fn finish(&mut self) {
        self.goals = self.goals();
        self.finished = true;
    }

    /// Issue 13's goals against this run (the 10,000 MacieJob run, the history run, the 5,000
    /// account discovery run; a goal whose run did not run is "not run").
    pub fn goals(&self) -> Vec<Goal> {
        let big = self.jobs.iter().find(|j| j.resources == 10_000);
        let clean = big.and_then(|j| j.flips.first());
        let peak = big.map(|j| {
            j.flips
                .iter()
                .map(|f| f.peak_rss_mib)
                .fold(j.idle.peak_rss_mib, f64::max)
        });
        let history = self.history.iter().find(|h| h.jobs == 10_000 && h.managed == 100);
        let disco = self.discovery.iter().find(|d| d.accounts == 5_000);
        let flips = self.jobs.iter().flat_map(|j| &j.flips);
        let bad: usize = flips.clone().map(|f| f.invalid + f.repeated).sum();
        let writes = self
            .jobs
            .iter()
            .flat_map(|j| &j.flips)
            .filter(|f| f.faults.get("operations").is_none())
            .filter_map(|f| Some((f.resources, f.writes_per_resource()?)))
            .collect::<Vec<_>>();
        let worst_writes = writes
            .iter()
            .map(|(_, w)| *w)
            .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))));
        vec![
            Goal::new(
                "history (10,000 jobs, 100 that can change): ListClassificationJobs per steady-state sweep",
                "1",
                "100",
                history.map(|h| (format!("{:.1}", h.list_per_sweep), h.list_per_sweep <= 1.0)),
            ),
            Goal::new(
                "idle RSS at 10,000 MacieJobs, MiB",
                "< 64",
                "151",
                big.map(|j| (format!("{:.1}", j.idle.rss_mib), j.idle.rss_mib < 64.0)),
            ),
            Goal::new(
                "peak RSS at 10,000 MacieJobs (first sync and flips), MiB",
                "< 128",
                "217",
                peak.map(|p| (format!("{p:.1}"), p < 128.0)),
            ),
            Goal::new(
                "API-server writes per flipped MacieJob (clean flips, worst size)",
                "<= 3.0",
                "5.7",
                worst_writes.map(|w| (format!("{w:.4}"), w <= 3.0)),
            ),
            Goal::new(
                "clean flip of 10,000: throughput / the API server's capacity for its writes",
                ">= 80%",
                "not measured",
                clean
                    .and(big.and_then(|j| j.capacity.as_ref()))
                    .map(|c| (format!("{:.0}%", c.ratio * 100.0), c.ratio >= 0.8)),
            ),
            Goal::new(
                "discovery, 5,000 accounts: List calls to confirm one changed account",
                "1",
                "up to 200",
                disco.map(|d| (d.confirm_one_calls.to_string(), d.confirm_one_calls == 1)),
            ),
            Goal::new(
                "discovery, 5,000 accounts: List calls per steady-state interval",
                "200 (ceil(5,000 / 25))",
                "200",
                disco.map(|d| {
                    let ok = !d.steady_list_per_interval.is_empty()
                        && d.steady_list_per_interval
                            .iter()
                            .all(|c| *c <= d.ideal_full_observation);
                    (format!("{:?}", d.steady_list_per_interval), ok)
                }),
            ),
            Goal::new(
                "invalid or repeated UpdateClassificationJob, every flip",
                "0",
                "0",
                (!self.jobs.is_empty()).then(|| (bad.to_string(), bad == 0)),
            ),
            Goal::new(
                "20 MacieJobs flipped at the default poll interval: apply -> Ready p50 / max, s",
                "3 / 10",
                "60 / 120",
                self.confirm.iter().find(|c| c.resources == 20).map(|c| {
                    let r = &c.flip.to_ready;
                    (format!("{:.2} / {:.2}", r.p50, r.max), r.p50 <= 3.0 && r.max <= 10.0)
                }),
            ),
            Goal::new(
                "reads per step beyond the sweeps (DescribeClassificationJob), worst confirmation run",
                "<= 2",
                "0",
                (!self.confirm.is_empty()).then(|| {
                    let worst = self.confirm.iter().map(|c| c.reads_per_step).fold(0.0, f64::max);
                    (format!("{worst:.2}"), worst <= 2.0)
                }),
            ),
        ]
    }

    /// Writes `bench.json` (the latest run, also while it runs) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("bench.json");
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        Ok(path)
    }

    /// Results that break the operator's promises (these fail the run): an invalid or repeated
    /// update, a job or account that did not reach its status, an account sent twice, an
    /// invalid or repeated create, a definition not created exactly once, a history sweep that
    /// reads more than twice the ideal (or a steady state without a sweep or with an update).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for f in self.jobs.iter().flat_map(|j| &j.flips) {
            let what = format!("flip of {} to {} ({})", f.resources, f.to, f.label());
            if f.invalid + f.repeated > 0 {
                p.push(format!(
                    "{what}: {} invalid and {} repeated updates",
                    f.invalid, f.repeated
                ));
            }
            if f.accepted != f.resources || f.reached_macie != f.resources {
                p.push(format!(
                    "{what}: {} updates accepted for {} resources",
                    f.accepted, f.resources
                ));
            }
        }
        for d in &self.discovery {
            if d.sent_twice > 0 || d.enabled_in_macie != d.accounts {
                p.push(format!(
                    "discovery of {}: {} accounts sent twice, {} of {} enabled",
                    d.accounts, d.sent_twice, d.enabled_in_macie, d.accounts
                ));
            }
            // Goals of issue 13: a full observation lists every declared account once (pages
            // of 25), and confirming one change lists that account alone.
            if d.steady_list_per_interval.iter().any(|c| *c > d.ideal_full_observation) {
                p.push(format!(
                    "discovery of {}: {:?} List calls per interval, more than ceil(accounts / 25) = {}",
                    d.accounts, d.steady_list_per_interval, d.ideal_full_observation
                ));
            }
            if d.confirm_one_calls != 1 {
                p.push(format!(
                    "discovery of {}: confirming one changed account took {} List calls, not 1",
                    d.accounts, d.confirm_one_calls
                ));
            }
        }
        for c in &self.confirm {
            let f = &c.flip;
            let what = format!("confirmation of {} at the default poll interval", c.resources);
            if f.invalid + f.repeated > 0 || f.accepted != f.resources {
                p.push(format!(
                    "{what}: {} invalid and {} repeated updates, {} accepted for {} resources",
                    f.invalid, f.repeated, f.accepted, f.resources
                ));
            }
        }
        for c in &self.creates {
            let what = format!("{} creates at {}/s", c.definitions, c.rate);
            if c.invalid + c.repeated > 0 {
                p.push(format!(
                    "{what}: {} invalid and {} repeated calls",
                    c.invalid, c.repeated
                ));
            }
            if c.created != c.definitions || c.jobs_once != c.definitions || c.jobs_in_macie != c.definitions {
                p.push(format!(
                    "{what}: {} creates accepted, {} jobs in Macie, {} of {} exist exactly once",
                    c.created, c.jobs_in_macie, c.jobs_once, c.definitions
                ));
            }
        }
        for h in &self.history {
            let what = format!("history of {} jobs, {} managed", h.jobs, h.managed);
            if h.sweeps == 0 || h.reads_per_sweep > h.ceiling() {
                p.push(format!(
                    "{what}: {:.1} reads per sweep over {} sweeps, more than {:.0} (twice the ideal {})",
                    h.reads_per_sweep,
                    h.sweeps,
                    h.ceiling(),
                    h.ideal
                ));
            }
            if h.update_calls > 0 {
                p.push(format!("{what}: {} updates in the steady state", h.update_calls));
            }
        }
        p
    }

    /// The tables of the runs that ran.
    pub fn tables(&self) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(format!("Machine: {}", self.machine));
        line(format!("Settings: {}", self.settings));
        line(String::new());
        line("Goals (issue 13)".into());
        line(format!(
            "| {:<90} | {:>22} | {:>22} | {:>12} | {:>4} |",
            "goal", "measured", "limit", "before", "met"
        ));
        for g in self.goals() {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            line(format!(
                "| {:<90} | {:>22} | {:>22} | {:>12} | {:>4} |",
                g.goal, g.measured, g.limit, g.before, met
            ));
        }
        if !self.jobs.is_empty() {
            line(String::new());
            line("Read cost (steady state, per sweep)".into());
            line(format!(
                "| {:>9} | {:>6} | {:>10} | {:>5} | {:>8} | {:>9} | {:>6} |",
                "MacieJobs", "jobs", "List/sweep", "ideal", "Describe", "peers (N)", "ratio"
            ));
            for r in self.jobs.iter().map(|j| &j.read) {
                line(format!(
                    "| {:>9} | {:>6} | {:>10.1} | {:>5} | {:>8} | {:>9} | {:>5.0}x |",
                    r.resources, r.jobs, r.per_sweep, r.ideal, r.describe_calls, r.peers_per_poll, r.ratio
                ));
            }
            line(String::new());
            line("Convergence (every desired status flipped at once; seconds p50/p99/max)".into());
            line(format!(
                "| {:>9} | {:>23} | {:>19} | {:>19} | {:>7} | {:>7} | {:>7} | {:>8} | {:>14} | {:>19} | {:>23} |",
                "MacieJobs",
                "faults",
                "apply -> Macie",
                "apply -> Ready",
                "total",
                "updates",
                "invalid",
                "repeated",
                "operator CPU s",
                "kube-apiserver CPU s",
                "API writes per MacieJob"
            ));
            for f in self.jobs.iter().flat_map(|j| &j.flips) {
                line(format!(
                    "| {:>9} | {:>23} | {:>19} | {:>19} | {:>7.1} | {:>7} | {:>7} | {:>8} | {:>14.1} | {:>20} | {:>23} |",
                    f.resources,
                    f.label(),
                    f.to_macie.to_string(),
                    f.to_ready.to_string(),
                    f.total_s,
                    f.accepted,
                    f.invalid,
                    f.repeated,
                    f.cpu_s,
                    f.apiserver_cpu_s.map_or("-".to_string(), |c| format!("{c:.1}")),
                    f.writes_per_resource().map_or("-".to_string(), |w| format!("{w:.2}"))
                ));
            }
            line(String::new());
            line("API-server capacity for the clean flip's writes (the driver alone, same run)".into());
            line(format!(
                "| {:>9} | {:>6} | {:>9} | {:>8} | {:>14} | {:>16} | {:>5} |",
                "MacieJobs", "writes", "seconds", "writes/s", "capacity MJ/s", "clean flip MJ/s", "ratio"
            ));
            for (j, c) in self.jobs.iter().filter_map(|j| Some((j, j.capacity.as_ref()?))) {
                line(format!(
                    "| {:>9} | {:>6} | {:>9.1} | {:>8.0} | {:>14.1} | {:>16.1} | {:>4.0}% |",
                    j.resources,
                    c.writes.values().sum::<u64>(),
                    c.seconds,
                    c.writes_per_s,
                    c.capacity_per_s,
                    c.flip_per_s,
                    c.ratio * 100.0
                ));
            }
            line(String::new());
            line("Footprint of the operator".into());
            line(format!(
                "| {:>9} | {:>12} | {:>14} | {:>16} | {:>16} | {:>13} |",
                "MacieJobs", "idle RSS MiB", "idle CPU s/min", "flip CPU s clean", "flip CPU s fault", "peak RSS MiB"
            ));
            for j in &self.jobs {
                let cpu = |i: usize| j.flips.get(i).map_or(0.0, |f| f.cpu_s);
                let peak = j
                    .flips
                    .iter()
                    .map(|f| f.peak_rss_mib)
                    .fold(j.idle.peak_rss_mib, f64::max);
                line(format!(
                    "| {:>9} | {:>12.1} | {:>14.2} | {:>16.1} | {:>16.1} | {:>13.1} |",
                    j.resources,
                    j.idle.rss_mib,
                    j.idle.cpu_per_min_s,
                    cpu(0),
                    cpu(1),
                    peak
                ));
            }
        }
        if !self.discovery.is_empty() {
            line(String::new());
            line("Discovery (every account flipped at once)".into());
            line(format!(
                "| {:>8} | {:>9} | {:>11} | {:>5} | {:>10} | {:>9} | {:>19} | {:>18} | {:>5} | {:>11} |",
                "accounts",
                "resources",
                "BatchUpdate",
                "ideal",
                "sent twice",
                "total s",
                "per resource s",
                "List per interval",
                "ideal",
                "confirm one"
            ));
            for d in &self.discovery {
                let steady = d
                    .steady_list_per_interval
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>();
                line(format!(
                    "| {:>8} | {:>9} | {:>11} | {:>5} | {:>10} | {:>9.1} | {:>19} | {:>18} | {:>5} | {:>11} |",
                    d.accounts,
                    d.resources,
                    d.batch_calls,
                    d.ideal_batch_calls,
                    d.sent_twice,
                    d.total_s,
                    d.per_resource.to_string(),
                    steady.join(", "),
                    d.ideal_full_observation,
                    d.confirm_one_calls
                ));
            }
        }
        if !self.history.is_empty() {
            line(String::new());
            line("History (all jobs COMPLETE or CANCELLED but the managed ones; steady state, per sweep)".into());
            line(format!(
                "| {:>6} | {:>8} | {:>7} | {:>10} | {:>14} | {:>10} | {:>5} | {:>15} | {:>12} | {:>19} |",
                "jobs",
                "terminal",
                "managed",
                "List/sweep",
                "Describe/sweep",
                "reads/sweep",
                "ideal",
                "list everything",
                "first sync s",
                "first sync List/Desc"
            ));
            for h in &self.history {
                let sweeps = h.sweeps.max(1) as f64;
                line(format!(
                    "| {:>6} | {:>8} | {:>7} | {:>10.1} | {:>14.1} | {:>11.1} | {:>5} | {:>15} | {:>12.1} | {:>20} |",
                    h.jobs,
                    h.terminal,
                    h.managed,
                    h.list_per_sweep,
                    h.describe_calls as f64 / sweeps,
                    h.reads_per_sweep,
                    h.ideal,
                    h.list_everything,
                    h.initial_sync_s,
                    format!("{} / {}", h.initial_list_calls, h.initial_describe_calls)
                ));
            }
        }
        if !self.confirm.is_empty() {
            line(String::new());
            line("Confirmation (one flip, the operator at its default 60 s poll interval; seconds p50/p99/max)".into());
            line(format!(
                "| {:>9} | {:>20} | {:>20} | {:>7} | {:>15} | {:>10} | {:>7} | {:>8} |",
                "MacieJobs",
                "apply -> Macie",
                "apply -> Ready",
                "total",
                "Describe/step",
                "List calls",
                "invalid",
                "repeated"
            ));
            for c in &self.confirm {
                let f = &c.flip;
                line(format!(
                    "| {:>9} | {:>20} | {:>20} | {:>7.1} | {:>15.2} | {:>10} | {:>7} | {:>8} |",
                    c.resources,
                    f.to_macie.to_string(),
                    f.to_ready.to_string(),
                    f.total_s,
                    c.reads_per_step,
                    f.list_calls,
                    f.invalid,
                    f.repeated
                ));
            }
        }
        if !self.creates.is_empty() {
            line(String::new());
            line(
                "Creates (ONE_TIME definitions applied at once; --create-rate and the emulator's quota the same)"
                    .into(),
            );
            line(format!(
                "| {:>11} | {:>6} | {:>7} | {:>9} | {:>6} | {:>11} | {:>5} | {:>9} | {:>9} | {:>7} | {:>8} | {:>19} | {:>19} |",
                "definitions",
                "rate/s",
                "total s",
                "minimum s",
                "ratio",
                "create span",
                "OK",
                "throttled",
                "jobs once",
                "invalid",
                "repeated",
                "apply -> Converged",
                "create -> Converged"
            ));
            for c in &self.creates {
                line(format!(
                    "| {:>11} | {:>6} | {:>7.1} | {:>9.1} | {:>6} | {:>11.1} | {:>5} | {:>9} | {:>9} | {:>7} | {:>8} | {:>19} | {:>19} |",
                    c.definitions,
                    c.rate,
                    c.total_s,
                    c.minimum_s,
                    c.ratio.map_or("-".to_string(), |r| format!("{r:.3}")),
                    c.create_span_s,
                    c.created,
                    c.throttled,
                    c.jobs_once,
                    c.invalid,
                    c.repeated,
                    c.to_converged.to_string(),
                    c.created_to_converged.to_string()
                ));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.n, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
        let p = Percentiles::of(&mut [3.0]);
        assert_eq!((p.p50, p.p99, p.max), (3.0, 3.0, 3.0));
        assert_eq!(Percentiles::of(&mut []).n, 0);
    }

    fn create_run() -> CreateRun {
        CreateRun {
            definitions: 4,
            rate: 5.0,
            apply_s: 0.1,
            total_s: 1.2,
            minimum_s: 0.6,
            ratio: Some(2.0),
            create_span_s: 0.8,
            min_gap_s: Some(0.2),
            create_calls: 5,
            created: 4,
            throttled: 1,
            refused: 0,
            repeated: 0,
            invalid: 0,
            update_calls: 0,
            jobs_in_macie: 4,
            jobs_once: 4,
            waited: 3,
            to_converged: Percentiles::default(),
            created_to_converged: Percentiles::default(),
            cpu_s: 0.1,
            peak_rss_mib: 20.0,
        }
    }

    fn flip() -> Flip {
        Flip {
            resources: 100,
            to: "USER_PAUSED".into(),
            faults: Value::Null,
            apply_s: 0.2,
            total_s: 5.0,
            to_macie: Percentiles::of(&mut [0.2]),
            to_ready: Percentiles::of(&mut [5.0]),
            reached_macie: 100,
            update_calls: 100,
            accepted: 100,
            invalid: 0,
            repeated: 0,
            updates_throttled: 0,
            list_calls: 1,
            cpu_s: 0.2,
            apiserver_cpu_s: Some(1.4),
            apiserver_writes: None,
            peak_rss_mib: 23.0,
        }
    }

    fn history_run() -> HistoryRun {
        HistoryRun {
            jobs: 300,
            terminal: 290,
            managed: 10,
            page_size: 100,
            initial_sync_s: 1.0,
            initial_list_calls: 2,
            initial_describe_calls: 0,
            sweeps: 2,
            list_calls: 2,
            describe_calls: 0,
            update_calls: 0,
            list_per_sweep: 1.0,
            reads_per_sweep: 1.0,
            ideal: 1,
            list_everything: 3,
            idle: Footprint {
                window_s: 2.0,
                cpu_s: 0.01,
                cpu_per_min_s: 0.3,
                rss_mib: 20.0,
                peak_rss_mib: 20.0,
            },
        }
    }

    #[test]
    fn writes_per_resource_are_the_operators_alone() {
        let writes = |pairs: &[(&str, u64)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect());
        let mut f = flip();
        f.apiserver_writes = writes(&[
            ("APPLY maciejobs/status", 200),
            ("POST events", 100),
            ("PATCH maciejobs", 100),
            ("POST endpoints", 3),
            ("PUT leases", 3),
        ]);
        assert_eq!(f.writes_per_resource(), Some(3.0));
        f.apiserver_writes = writes(&[
            ("APPLY maciejobs/status", 250),
            ("PATCH events", 100),
            ("PATCH maciejobs", 100),
        ]);
        assert_eq!(f.writes_per_resource(), Some(3.5));
        f.apiserver_writes = None;
        assert_eq!(f.writes_per_resource(), None);
    }

    #[test]
    fn goals_are_judged_on_the_sizes_they_name_and_not_run_otherwise() {
        let mut r = Report::new(Machine::read(), Value::Null);
        let g = r.goals();
        assert!(g.iter().all(|g| g.met.is_none() && g.measured == "not run"), "{g:?}");
        // A small history run is not the goal's size.
        r.history.push(history_run());
        assert!(r.goals()[0].met.is_none());
        let mut h = history_run();
        (h.jobs, h.terminal, h.managed) = (10_000, 9_900, 100);
        r.history.push(h.clone());
        assert_eq!(r.goals()[0].met, Some(true));
        assert_eq!(r.goals()[0].measured, "1.0");
        h.list_per_sweep = 1.5;
        r.history = vec![h];
        assert_eq!(r.goals()[0].met, Some(false));
    }

    #[test]
    fn history_reads_up_to_twice_the_ideal_pass_more_fail() {
        let machine = Machine {
            cpu: "test".into(),
            cores: 2,
            memory_gib: 1.0,
            kernel: "test".into(),
        };
        let mut r = Report::new(machine, Value::Null);
        r.history.push(history_run());
        r.history[0].reads_per_sweep = 2.0;
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let tables = r.tables();
        assert!(tables.contains("History ("), "{tables}");
        assert!(!tables.contains("Creates ("), "only the runs that ran: {tables}");
        r.history[0].reads_per_sweep = 2.5;
        let p = r.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("2.5 reads per sweep") && p[0].contains("twice the ideal 1"),
            "{p:?}"
        );
        r.history[0].reads_per_sweep = 1.0;
        r.history[0].sweeps = 0;
        assert_eq!(r.problems().len(), 1);
    }

    #[test]
    fn a_throttled_create_is_no_problem_a_repeated_one_or_a_missing_job_is() {
        let machine = Machine {
            cpu: "test".into(),
            cores: 2,
            memory_gib: 1.0,
            kernel: "test".into(),
        };
        let mut r = Report::new(machine, Value::Null);
        r.creates.push(create_run());
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let tables = r.tables();
        assert!(tables.contains("Creates ("), "{tables}");
        assert!(!tables.contains("Read cost"), "only the runs that ran: {tables}");
        r.creates[0].repeated = 1;
        r.creates[0].jobs_once = 3;
        let p = r.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("1 repeated") && p[1].contains("3 of 4 exist exactly once"),
            "{p:?}"
        );
    }
}
