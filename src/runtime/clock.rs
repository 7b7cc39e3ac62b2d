//! The time and the randomness every decision reads: the wall clock and the thread's RNG in
//! the operator, a virtual clock and a seeded generator on a thread that installs them (the
//! perturbation harness runs whole schedules on one thread, deterministically, in virtual
//! time).

use std::cell::RefCell;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// What a thread that runs in virtual time holds.
struct Virtual {
    now: Timestamp,
    /// The wall instant the virtual clock started at, and its virtual time then.
    base: (std::time::Instant, Timestamp),
    /// xorshift64* state (never 0).
    rng: u64,
}

thread_local! {
    static VIRTUAL: RefCell<Option<Virtual>> = const { RefCell::new(None) };
}

/// The time now: virtual on a thread that installed a [`VirtualClock`], else the wall clock.
pub fn now() -> Timestamp {
    VIRTUAL
        .with(|v| v.borrow().as_ref().map(|v| v.now))
        .unwrap_or_else(Timestamp::now)
}

/// A monotonic instant (queues and rates): moves with virtual time on a thread in virtual time.
pub fn instant() -> std::time::Instant {
    VIRTUAL
        .with(|v| {
            v.borrow().as_ref().map(|v| {
                let elapsed = v.base.1.duration_until(v.now).unsigned_abs();
                v.base.0 + elapsed
            })
        })
        .unwrap_or_else(std::time::Instant::now)
}

/// A uniform random number in [0, 1): seeded on a thread in virtual time.
pub fn random() -> f64 {
    let seeded = VIRTUAL.with(|v| {
        v.borrow_mut().as_mut().map(|v| {
            v.rng ^= v.rng >> 12;
            v.rng ^= v.rng << 25;
            v.rng ^= v.rng >> 27;
            (v.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        })
    });
    seeded.unwrap_or_else(rand::random::<f64>)
}

/// Virtual time for the current thread while it lives (tests and the harness only).
pub struct VirtualClock(());

impl VirtualClock {
    /// Installs virtual time at `start` with the generator seeded by `seed`.
    pub fn install(start: Timestamp, seed: u64) -> VirtualClock {
        VIRTUAL.with(|v| {
            *v.borrow_mut() = Some(Virtual {
                now: start,
                base: (std::time::Instant::now(), start),
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            })
        });
        VirtualClock(())
    }

    /// Moves virtual time forward.
    pub fn advance(&self, d: Duration) {
        VIRTUAL.with(|v| {
            if let Some(v) = v.borrow_mut().as_mut() {
                v.now = v.now.checked_add(d).unwrap_or(Timestamp::MAX);
            }
        });
    }
}

impl Drop for VirtualClock {
    fn drop(&mut self) {
        VIRTUAL.with(|v| *v.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_moves_only_when_told_and_the_generator_replays() {
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let draws = |seed| {
            let _c = VirtualClock::install(start, seed);
            (0..5).map(|_| random()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7), "one seed, one sequence");
        assert_ne!(draws(7), draws(8));
        assert!(draws(9).iter().all(|r| (0.0..1.0).contains(r)));
        let c = VirtualClock::install(start, 1);
        assert_eq!(now(), start);
        c.advance(Duration::from_secs(90));
        assert_eq!(now(), start.checked_add(Duration::from_secs(90)).unwrap());
        drop(c);
        let wall = Timestamp::now();
        assert!(now() >= wall, "the wall clock again once the virtual clock is dropped");
    }
}
