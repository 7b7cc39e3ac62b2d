//! The call log of the write operations and the per-operation counters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Emulator;
use crate::model::*;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpCounters {
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub injected: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountCall {
    pub account_id: String,
    pub status: DiscoveryStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<DiscoveryStatus>,
    /// `OK`, `ACCOUNT_NOT_FOUND` or `ACCOUNT_PAUSED`.
    pub outcome: String,
}

/// One UpdateClassificationJob or BatchUpdateAutomatedDiscoveryAccounts call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub seq: u64,
    pub at: Timestamp,
    pub region: String,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The job's real status when the call arrived (not what a delayed read showed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_status: Option<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_status: Option<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_status: Option<JobStatus>,
    /// Whether the transition is one the Macie documentation allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// The same status was already asked for, and accepted, with nothing changed since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountCall>,
    /// `OK` or the error code answered.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The answer was a fault injected before the call was processed.
    pub injected: bool,
}

impl Emulator {
    /// Records the outcome of a call in the counters (and, for the write operations, in the
    /// call log when the call never reached the handler; `job_id` is the job the path names).
    pub fn record(
        &mut self,
        op: &str,
        region: &str,
        job_id: Option<&str>,
        result: &Result<(), &ApiError>,
        injected: bool,
    ) {
        let c = self.counters.entry(op.to_string()).or_default();
        match result {
            Ok(()) => c.ok += 1,
            Err(e) => *c.errors.entry(e.code.as_str().to_string()).or_default() += 1,
        }
        if injected {
            c.injected += 1;
        }
        if let (Err(e), true) = (result, injected || !self.macie_enabled)
            && (op == "UpdateClassificationJob" || op == "BatchUpdateAutomatedDiscoveryAccounts")
        {
            let mut rec = self.new_record(region, op, e.code.as_str(), Some(e.message.clone()), injected);
            rec.job_id = job_id.map(str::to_string);
            self.calls.push(rec);
        }
    }

    pub(super) fn new_record(
        &mut self,
        region: &str,
        op: &str,
        outcome: &str,
        message: Option<String>,
        injected: bool,
    ) -> CallRecord {
        CallRecord {
            seq: self.calls.len() as u64 + 1,
            at: self.now(),
            region: region.to_string(),
            operation: op.to_string(),
            job_id: None,
            from_status: None,
            requested_status: None,
            to_status: None,
            valid: None,
            repeated: None,
            accounts: Vec::new(),
            outcome: outcome.to_string(),
            message,
            injected,
        }
    }
}
