//! Fault injection: the `PUT /__admin/faults` settings and how a call is admitted under them.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Emulator, OPERATIONS, STS_OPERATIONS};
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

/// The operations that concern one job, named by the job id in their path: an [`ErrorRule`]'s
/// `jobIds` narrows these.
pub const JOB_OPERATIONS: [&str; 2] = ["DescribeClassificationJob", "UpdateClassificationJob"];

/// Calls to these operations (for the job operations, to these jobs) are answered with this
/// error instead of being processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRule {
    /// Operation names, as in `operations`.
    pub operations: Vec<String>,
    /// Only calls for these job ids, for the operations in [`JOB_OPERATIONS`]; other operations
    /// of the rule fail whatever the job. Omitted: every job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ids: Option<Vec<String>>,
    /// Only calls signed for these regions (e.g. a region the service does not run in).
    /// Omitted: every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// A Macie error code (`AccessDeniedException`, ...), answered with the HTTP status the
    /// service model gives it.
    pub code: String,
    /// The error message; a generic one naming the operation when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ErrorRule {
    /// Whether a call to `op` (about `job_id` for a job operation) is answered by this rule.
    fn applies(&self, op: &str, region: &str, job_id: Option<&str>) -> bool {
        if !self.operations.iter().any(|o| o == op) {
            return false;
        }
        if self.regions.as_ref().is_some_and(|rs| !rs.iter().any(|r| r == region)) {
            return false;
        }
        match (&self.job_ids, job_id) {
            (Some(ids), Some(id)) if JOB_OPERATIONS.contains(&op) => ids.iter().any(|j| j == id),
            _ => true,
        }
    }

    fn check(&self, i: usize) -> Result<(), String> {
        if self.operations.is_empty() {
            return Err(format!("errors[{i}].operations: name at least one operation"));
        }
        for op in &self.operations {
            if !OPERATIONS.contains(&op.as_str()) {
                return Err(format!(
                    "errors[{i}].operations: {op:?} is not an operation the emulator serves ({OPERATIONS:?})"
                ));
            }
        }
        if let Some(ids) = &self.job_ids {
            if ids.is_empty() {
                return Err(format!("errors[{i}].jobIds: empty; omit jobIds to match every job"));
            }
            if !self.operations.iter().any(|o| JOB_OPERATIONS.contains(&o.as_str())) {
                return Err(format!(
                    "errors[{i}].jobIds: only {JOB_OPERATIONS:?} concern one job, and the rule names neither"
                ));
            }
        }
        self.code
            .parse::<ErrorCode>()
            .map(|_| ())
            .map_err(|e| format!("errors[{i}].code: {e}"))
    }
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
    /// Status changes made by BatchUpdateAutomatedDiscoveryAccounts become visible to
    /// ListAutomatedDiscoveryAccounts only after this many milliseconds (of emulator clock).
    #[serde(default)]
    pub discovery_visibility_delay_ms: u64,
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
    /// Calls answered with a given error code instead of being processed (the first rule that
    /// applies wins).
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    /// Per operation: the next N calls are processed, then answered InternalServerException
    /// (500) as if the response were lost on its way back (the change stands). Each such call
    /// uses one up.
    #[serde(default)]
    pub lost_responses: BTreeMap<String, u32>,
}

/// A fault drawn for a call from the `operations` rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Throttle,
    Error,
}

impl Emulator {
    /// Whether this processed call of `op` loses its response (uses one of `lostResponses`).
    pub fn take_lost_response(&mut self, op: &str) -> bool {
        match self.faults.lost_responses.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

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
            if op != "*" && !OPERATIONS.contains(&op.as_str()) && !STS_OPERATIONS.contains(&op.as_str()) {
                return Err(format!(
                    "operations.{op}: not an operation the emulator serves ({OPERATIONS:?}, {STS_OPERATIONS:?} or *)"
                ));
            }
            for (name, rate) in [("throttleRate", f.throttle_rate), ("errorRate", f.error_rate)] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("operations.{op}.{name}: {rate} is not between 0 and 1"));
                }
            }
        }
        for (i, rule) in faults.errors.iter().enumerate() {
            rule.check(i)?;
        }
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
        Ok(())
    }

    /// Added latency for an operation (applied by the HTTP layer outside the lock).
    pub fn latency(&self, op: &str) -> Duration {
        Duration::from_millis(self.fault_for(op).latency_ms)
    }

    /// Draws the throttle and error rates of `operations` for one call to `op`.
    pub fn draw_fault(&mut self, op: &str) -> Option<Injected> {
        let f = self.fault_for(op);
        if f.throttle_rate > 0.0 && self.rng.random_bool(f.throttle_rate) {
            return Some(Injected::Throttle);
        }
        if f.error_rate > 0.0 && self.rng.random_bool(f.error_rate) {
            return Some(Injected::Error);
        }
        None
    }

    /// Counts the request and decides whether it is answered with an injected fault or with
    /// "Macie is not enabled". `job_id` is the job a job operation's path names: the `errors`
    /// rules are checked against it here, before the handler can change anything.
    pub fn admit(&mut self, op: &str, region: &str, job_id: Option<&str>) -> Result<(), (ApiError, bool)> {
        self.count_request(op);
        match self.draw_fault(op) {
            Some(Injected::Throttle) => {
                return Err((ApiError::new(ErrorCode::ThrottlingException, "Rate exceeded"), true));
            }
            Some(Injected::Error) => {
                return Err((
                    ApiError::new(ErrorCode::InternalServerException, "Internal server error (injected)"),
                    true,
                ));
            }
            None => {}
        }
        if let Some(rule) = self.faults.errors.iter().find(|r| r.applies(op, region, job_id))
            && let Ok(code) = rule.code.parse::<ErrorCode>()
        {
            let message = rule
                .message
                .clone()
                .unwrap_or_else(|| format!("{} for {op} (injected)", code.as_str()));
            return Err((ApiError::new(code, message), true));
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
