//! What the perturbation harnesses of the controllers share (tests only): where a run injects
//! (`Perturb`), and the seeded generator their random schedules come from (`Rng`).

use std::collections::BTreeSet;

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
}
