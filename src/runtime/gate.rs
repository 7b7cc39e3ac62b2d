//! The write gate: whether this process may make Macie writes (CreateClassificationJob,
//! UpdateClassificationJob, BatchUpdateAutomatedDiscoveryAccounts) right now.
//!
//! Without leader election the gate is always open. With it, the gate is open only until the
//! deadline the last successful lease renewal earned (renew deadline, which is shorter than the
//! lease duration), so a leader whose renewals stop makes no Macie write past that deadline,
//! whether or not its controllers have noticed and drained yet.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WriteGate {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// No leader election: always open.
    Open,
    /// Open until this instant (None: closed).
    Until(Option<Instant>),
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate::open()
    }
}

impl WriteGate {
    /// A gate that is always open (no leader election).
    pub fn open() -> WriteGate {
        WriteGate {
            inner: Arc::new(Mutex::new(State::Open)),
        }
    }

    /// A gate that is closed until `extend` opens it (leader election).
    pub fn closed() -> WriteGate {
        WriteGate {
            inner: Arc::new(Mutex::new(State::Until(None))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A renewal that started at `renewed_at` succeeded: writes are allowed until
    /// `renewed_at + valid_for` (never shortened by a late, older renewal).
    pub fn extend(&self, renewed_at: Instant, valid_for: Duration) {
        let mut s = self.state();
        if let State::Until(until) = &mut *s {
            let end = renewed_at + valid_for;
            *until = Some(until.map_or(end, |u| u.max(end)));
        }
    }

    /// Leadership is lost or given up: no write from now on.
    pub fn close(&self) {
        let mut s = self.state();
        if let State::Until(until) = &mut *s {
            *until = None;
        }
    }

    /// Whether a Macie write may start now.
    pub fn allows_writes(&self) -> bool {
        self.allows_writes_at(Instant::now())
    }

    fn allows_writes_at(&self, now: Instant) -> bool {
        match *self.state() {
            State::Open => true,
            State::Until(until) => until.is_some_and(|u| now < u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_gate_always_allows_and_ignores_close() {
        let g = WriteGate::open();
        g.close();
        assert!(g.allows_writes());
    }

    #[test]
    fn leader_gate_opens_until_the_renew_deadline_and_closes_on_loss() {
        let g = WriteGate::closed();
        let t0 = Instant::now();
        assert!(!g.allows_writes_at(t0), "closed before the first renewal");
        g.extend(t0, Duration::from_secs(10));
        assert!(g.allows_writes_at(t0 + Duration::from_secs(9)));
        assert!(
            !g.allows_writes_at(t0 + Duration::from_secs(10)),
            "closed at the deadline"
        );
        // An older renewal finishing late never shortens the window.
        g.extend(t0 + Duration::from_secs(5), Duration::from_secs(10));
        g.extend(t0, Duration::from_secs(1));
        assert!(g.allows_writes_at(t0 + Duration::from_secs(14)));
        g.close();
        assert!(!g.allows_writes_at(t0 + Duration::from_secs(1)));
    }
}
