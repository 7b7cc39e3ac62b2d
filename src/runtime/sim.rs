//! What the perturbation harnesses of the controllers share (tests only): where a run injects
//! (`Perturb`), the seeded generator their random schedules come from (`Rng`), and how a test
//! runs many schedules and reports them (`every_point_of`, `random_schedules`).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// Where the harness injects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Perturb {
    /// Crash the process right after its n-th effect (1-based, counted over the run).
    pub crash_after: BTreeSet<u64>,
    /// At the n-th reconcile the cache holds the version before the one it held.
    pub stale: BTreeSet<u64>,
    /// The n-th watch delivery is dropped.
    pub dropped: BTreeSet<u64>,
}

impl Perturb {
    /// Every single injection point of a run that made `effects` effects, `steps` reconciles
    /// (or other steps a stale cache may meet) and `deliveries` watch deliveries: one crash,
    /// one stale copy or one dropped delivery each.
    pub fn every_point(effects: u64, steps: u64, deliveries: u64) -> Vec<Perturb> {
        let one = |k: u64| -> BTreeSet<u64> { [k].into() };
        let crashes = (1..=effects).map(|k| Perturb {
            crash_after: one(k),
            ..Perturb::default()
        });
        let stale = (1..=steps).map(|k| Perturb {
            stale: one(k),
            ..Perturb::default()
        });
        let dropped = (1..=deliveries).map(|k| Perturb {
            dropped: one(k),
            ..Perturb::default()
        });
        crashes.chain(stale).chain(dropped).collect()
    }

    /// Random perturbations: up to two crashes among the first `effects` effects, and each of
    /// the first `points` steps and deliveries stale or dropped with `percent` chance.
    pub fn random(rng: &mut Rng, effects: u64, points: u64, percent: u64) -> Perturb {
        let mut p = Perturb::default();
        for _ in 0..rng.below(3) {
            p.crash_after.insert(1 + rng.below(effects));
        }
        for k in 1..=points {
            if rng.chance(percent) {
                p.stale.insert(k);
            }
            if rng.chance(percent) {
                p.dropped.insert(k);
            }
        }
        p
    }
}

/// A seeded generator (xorshift64*): one seed, one schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }

    /// Inserts fewer than `most` operations picked from `extra` at random places of `ops`.
    pub fn insert_some<T: Clone>(&mut self, ops: &mut Vec<T>, extra: &[T], most: u64) {
        for _ in 0..self.below(most) {
            let at = self.below(ops.len() as u64 + 1) as usize;
            ops.insert(at, self.pick(extra));
        }
    }
}

/// The seeds a random-schedule test runs: `SIM_SEED=<seed>` replays that one; else seeds
/// `0..SIM_SCHEDULES` (10,000 unless set). Returns the range.
fn seeds_to_run() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match var("SIM_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..var("SIM_SCHEDULES").unwrap_or(10_000),
    }
}

/// Runs `check` on every seed of `seeds`, spread over the machine's cores; each `Some` is a
/// failure (its seed and schedule, to print). Failures in seed order.
fn run_seeds(seeds: std::ops::Range<u64>, check: impl Fn(u64) -> Option<String> + Sync) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get() as u64);
    let threads = threads.min(seeds.end - seeds.start).max(1);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (failures, check, start) = (&failures, &check, seeds.start);
            scope.spawn(move || {
                for seed in (start + t..seeds.end).step_by(threads as usize) {
                    if let Some(f) = check(seed) {
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push((seed, f));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|(seed, _)| *seed);
    failures.into_iter().map(|(_, f)| f).collect()
}

/// The injection-point test of a harness: every single injection point (`Perturb::every_point`)
/// of every scenario of `corpus`. `counts` runs a scenario unperturbed and says how many
/// effects, steps and deliveries it made; `violations` runs it under one perturbation.
pub fn every_point_of<S>(
    corpus: &[S],
    name: impl Fn(&S) -> &str,
    counts: impl Fn(&S) -> (u64, u64, u64),
    violations: impl Fn(&S, &Perturb) -> Vec<String>,
) {
    let t = std::time::Instant::now();
    let mut points = 0;
    let mut failures = Vec::new();
    for s in corpus {
        let (effects, steps, deliveries) = counts(s);
        for p in Perturb::every_point(effects, steps, deliveries) {
            points += 1;
            let v = violations(s, &p);
            if !v.is_empty() {
                failures.push(format!("scenario {} under {p:?}: {v:#?}", name(s)));
            }
        }
    }
    assert_kept(points, "injection points", &failures, t.elapsed());
}

/// The random-schedule test of a harness: `SIM_SEED=<seed>` replays that schedule (`describe`
/// says what it is), else `SIM_SCHEDULES` of them (10,000 unless set); `check` runs one.
pub fn random_schedules(describe: impl Fn(u64) -> String, check: impl Fn(u64) -> Option<String> + Sync) {
    let t = std::time::Instant::now();
    let seeds = seeds_to_run();
    if seeds.end - seeds.start == 1 {
        println!("sim: seed {}: {}", seeds.start, describe(seeds.start));
    }
    let n = seeds.end - seeds.start;
    let failures = run_seeds(seeds, check);
    assert_kept(n, "schedules", &failures, t.elapsed());
}

/// Prints a harness's `sim:` line (`sim: <n> <what>, <v> violations, <elapsed>`, which
/// `make harness` and `make sim` read) and the first failures, then fails the test if any.
fn assert_kept(n: u64, what: &str, failures: &[String], elapsed: Duration) {
    for f in failures.iter().take(20) {
        println!("{f}");
    }
    println!("sim: {n} {what}, {} violations, {elapsed:?}", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} failed; first: {}",
        failures.len(),
        failures[0]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_one_injection_each_and_a_seed_replays() {
        let points = Perturb::every_point(2, 3, 1);
        assert_eq!(points.len(), 6);
        assert!(
            points
                .iter()
                .all(|p| p.crash_after.len() + p.stale.len() + p.dropped.len() == 1)
        );
        assert_eq!(points[2].stale, [1].into());
        let draw = |seed| {
            let mut r = Rng::new(seed);
            Perturb::random(&mut r, 40, 60, 8)
        };
        assert_eq!(draw(5), draw(5));
        assert!((0..50).map(draw).any(|p| p != Perturb::default()));
        assert!(draw(5).crash_after.iter().all(|k| (1..=40).contains(k)));
    }

    #[test]
    fn every_seed_runs_once_and_failures_come_in_seed_order() {
        let ran = Mutex::new(Vec::new());
        let failures = run_seeds(3..40, |seed| {
            ran.lock().unwrap().push(seed);
            (seed % 7 == 0).then(|| format!("seed {seed}"))
        });
        let mut ran = ran.into_inner().unwrap();
        ran.sort_unstable();
        assert_eq!(ran, (3..40).collect::<Vec<_>>());
        assert_eq!(failures, ["seed 7", "seed 14", "seed 21", "seed 28", "seed 35"]);
    }
}
