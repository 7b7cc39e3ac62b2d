//! Fault injection: the `PUT /__admin/faults` settings and how a call is admitted under them.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Emulator, OPERATIONS};
use crate::model::*;

/// Fault injection for one operation (or `*` for all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Fraction of calls (0..=1) answered ThrottlingException (429).
    #[serde(default)]
    pub throttle_rate: f64,
    /// Fraction of calls (0..=1) answered InternalServerException (500).
    #[serde(default)]
    pub error_rate: f64,
    /// Added latency per call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Per operation name (e.g. `UpdateClassificationJob`), or `*` for every operation.
    #[serde(default)]
    pub operations: BTreeMap<String, Fault>,
    /// Status changes made by UpdateClassificationJob become visible to reads only after this
    /// many milliseconds (of emulator clock): a list right after an update shows the old status.
    #[serde(default)]
    pub visibility_delay_ms: u64,
    /// Seed of the random draws for throttle and error rates (repeatable runs).
    #[serde(default)]
    pub seed: u64,
    /// Largest page ListClassificationJobs returns whatever maxResults asks (the service may
    /// return fewer items than asked).
    #[serde(default)]
    pub max_jobs_page: Option<usize>,
    /// Reads (list and describe) show this status text for these job ids instead of the real
    /// status: a value newer than the client knows. Updates still follow the real status.
    #[serde(default)]
    pub reported_status: BTreeMap<String, String>,
}

impl Emulator {
    fn fault_for(&self, op: &str) -> Fault {
        let mut f = self.faults.operations.get("*").cloned().unwrap_or_default();
        if let Some(o) = self.faults.operations.get(op) {
            f.throttle_rate = f.throttle_rate.max(o.throttle_rate);
            f.error_rate = f.error_rate.max(o.error_rate);
            f.latency_ms += o.latency_ms;
        }
        f
    }

    pub fn set_faults(&mut self, faults: Faults) -> Result<(), String> {
        for (op, f) in &faults.operations {
            if op != "*" && !OPERATIONS.contains(&op.as_str()) {
                return Err(format!(
                    "operations.{op}: not an operation the emulator serves ({OPERATIONS:?} or *)"
                ));
            }
            for (name, rate) in [("throttleRate", f.throttle_rate), ("errorRate", f.error_rate)] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("operations.{op}.{name}: {rate} is not between 0 and 1"));
                }
            }
        }
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
        Ok(())
    }

    /// Added latency for an operation (applied by the HTTP layer outside the lock).
    pub fn latency(&self, op: &str) -> Duration {
        Duration::from_millis(self.fault_for(op).latency_ms)
    }

    /// Counts the request and decides whether it is answered with an injected fault or with
    /// "Macie is not enabled".
    pub fn admit(&mut self, op: &str) -> Result<(), (ApiError, bool)> {
        self.counters.entry(op.to_string()).or_default().requests += 1;
        let f = self.fault_for(op);
        if f.throttle_rate > 0.0 && self.rng.random_bool(f.throttle_rate) {
            return Err((ApiError::new(ErrorCode::ThrottlingException, "Rate exceeded"), true));
        }
        if f.error_rate > 0.0 && self.rng.random_bool(f.error_rate) {
            return Err((
                ApiError::new(ErrorCode::InternalServerException, "Internal server error (injected)"),
                true,
            ));
        }
        if !self.macie_enabled {
            let mut e = ApiError::new(
                ErrorCode::AccessDeniedException,
                "Macie is not enabled for this AWS account. Enable Macie and try again.",
            );
            e.status = 401;
            return Err((e, false));
        }
        self.tick();
        Ok(())
    }
}
