//! The call log of the write operations and the per-operation counters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Emulator, Scope};
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

/// One CreateClassificationJob, UpdateClassificationJob, BatchUpdateAutomatedDiscoveryAccounts
/// or AssumeRole call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub seq: u64,
    pub at: Timestamp,
    pub region: String,
    /// The AWS account of the credentials that signed the call.
    pub aws_account_id: String,
    pub operation: String,
    /// AssumeRole: the role asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// AssumeRole: the session name asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_session_name: Option<String>,
    /// UpdateClassificationJob: the job in the path; CreateClassificationJob: the job created
    /// (or, for a repeated clientToken, the job that token created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// CreateClassificationJob: the `name` sent (as sent, even when the call was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// CreateClassificationJob: the `clientToken` sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
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
    /// UpdateClassificationJob: the same status was already asked for, and accepted, with
    /// nothing changed since. CreateClassificationJob: the clientToken had already created a
    /// job, which is returned.
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

/// The Macie operations in the call log (the ones that change something).
const LOGGED_OPERATIONS: [&str; 3] = [
    "CreateClassificationJob",
    "UpdateClassificationJob",
    "BatchUpdateAutomatedDiscoveryAccounts",
];

impl Emulator {
    /// Records the outcome of a call in the counters (and, for the write operations, in the
    /// call log when the call never reached the handler; `job_id` is the job the path names).
    pub fn record(
        &mut self,
        op: &str,
        at: &Scope,
        job_id: Option<&str>,
        result: &Result<(), &ApiError>,
        injected: bool,
    ) {
        self.count(op, result.map_err(|e| e.code.as_str()), injected);
        if let (Err(e), true) = (result, injected || !self.macie_enabled)
            && LOGGED_OPERATIONS.contains(&op)
        {
            let mut rec = self.new_record(at, op, e.code.as_str(), Some(e.message.clone()), injected);
            rec.job_id = job_id.map(str::to_string);
            self.calls.push(rec);
        }
    }

    /// Counts a request as it arrives.
    pub fn count_request(&mut self, op: &str) {
        self.counters.entry(op.to_string()).or_default().requests += 1;
    }

    /// Counts the outcome of a request: `Ok` or the error code answered.
    pub fn count(&mut self, op: &str, outcome: Result<(), &str>, injected: bool) {
        let c = self.counters.entry(op.to_string()).or_default();
        match outcome {
            Ok(()) => c.ok += 1,
            Err(code) => *c.errors.entry(code.to_string()).or_default() += 1,
        }
        if injected {
            c.injected += 1;
        }
    }

    pub(crate) fn new_record(
        &mut self,
        at: &Scope,
        op: &str,
        outcome: &str,
        message: Option<String>,
        injected: bool,
    ) -> CallRecord {
        CallRecord {
            seq: self.calls.len() as u64 + 1,
            at: self.now(),
            region: at.region.clone(),
            aws_account_id: at.account.clone(),
            operation: op.to_string(),
            role_arn: None,
            role_session_name: None,
            job_id: None,
            name: None,
            client_token: None,
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
