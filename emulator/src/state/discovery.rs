//! Automated sensitive data discovery: member accounts, BatchUpdateAutomatedDiscoveryAccounts,
//! ListAutomatedDiscoveryAccounts and GetAutomatedDiscoveryConfiguration.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::calls::AccountCall;
use super::paging::{decode_token, encode_token, fingerprint};
use super::{ApiResult, Emulator, Region, Scope, decode};
use crate::model::*;
use crate::seed::is_account_id;

/// Page size of ListAutomatedDiscoveryAccounts when the request has no maxResults.
pub const DEFAULT_ACCOUNTS_PAGE: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub status: DiscoveryStatus,
    pub paused: bool,
}

/// An account status change not yet visible to reads (delayed-visibility fault): the status
/// shown until then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ShownAccount {
    status: DiscoveryStatus,
    pub(super) until: SystemTime,
}

impl Region {
    /// The status ListAutomatedDiscoveryAccounts shows (the previous one while a visibility
    /// delay runs).
    pub(super) fn visible_account_status(
        &self,
        account_id: &str,
        account: &Account,
        now: Timestamp,
    ) -> DiscoveryStatus {
        match self.shown_accounts.get(account_id) {
            Some(s) if now.0 < s.until => s.status,
            _ => account.status,
        }
    }
}

impl Emulator {
    pub fn put_account(
        &mut self,
        owner: Option<&str>,
        region: Option<&str>,
        account_id: &str,
        account: Account,
    ) -> Result<(), String> {
        if !is_account_id(account_id) {
            return Err(format!("accountId: {account_id:?} is not a 12-digit AWS account id"));
        }
        let at = self.scope(owner, region);
        let r = self.region_mut(&at);
        // An out-of-band change is visible at once.
        r.shown_accounts.remove(account_id);
        r.accounts.insert(account_id.to_string(), account);
        Ok(())
    }

    pub fn remove_account(&mut self, owner: Option<&str>, region: Option<&str>, account_id: &str) -> bool {
        let at = self.scope(owner, region);
        let r = self.region_mut(&at);
        r.shown_accounts.remove(account_id);
        r.accounts.remove(account_id).is_some()
    }

    pub fn batch_update_accounts(&mut self, at: &Scope, body: Value) -> ApiResult {
        let req: BatchUpdateRequest = decode(body)?;
        let accounts = req.accounts.unwrap_or_default();
        for (i, a) in accounts.iter().enumerate() {
            if !is_account_id(&a.account_id) {
                return Err(ApiError::validation(format!(
                    "accounts[{i}].accountId: {:?} is not a valid AWS account id",
                    a.account_id
                )));
            }
        }
        let now = self.now();
        let delay = Duration::from_millis(self.faults.discovery_visibility_delay_ms);
        let mut rec = self.new_record(at, "BatchUpdateAutomatedDiscoveryAccounts", "OK", None, false);
        let r = self.region_mut(at);
        let mut errors = Vec::new();
        for a in accounts {
            let (previous, outcome) = match r.accounts.get_mut(&a.account_id) {
                None => (None, "ACCOUNT_NOT_FOUND"),
                Some(acc) if acc.paused => (Some(acc.status), "ACCOUNT_PAUSED"),
                Some(acc) => {
                    let prev = acc.status;
                    acc.status = a.status;
                    // Reads keep showing the previous status for a while; a change made while
                    // one is still showing keeps showing that one until it runs out.
                    let showing = r.shown_accounts.get(&a.account_id).is_some_and(|s| now.0 < s.until);
                    if !delay.is_zero() && prev != a.status && !showing {
                        let shown = ShownAccount {
                            status: prev,
                            until: now.0 + delay,
                        };
                        r.shown_accounts.insert(a.account_id.clone(), shown);
                    }
                    (Some(prev), "OK")
                }
            };
            if outcome != "OK" {
                errors.push(json!({ "accountId": a.account_id, "errorCode": outcome }));
            }
            rec.accounts.push(AccountCall {
                account_id: a.account_id,
                status: a.status,
                previous,
                outcome: outcome.to_string(),
            });
        }
        self.calls.push(rec);
        if errors.is_empty() {
            Ok(json!({}))
        } else {
            Ok(json!({ "errors": errors }))
        }
    }

    pub fn list_accounts(
        &mut self,
        at: &Scope,
        account_ids: &[String],
        max_results: Option<&str>,
        next_token: Option<&str>,
    ) -> ApiResult {
        if account_ids.len() > 50 {
            return Err(ApiError::validation(format!(
                "accountIds: at most 50 account ids per request, got {}",
                account_ids.len()
            )));
        }
        let page = match max_results {
            None => DEFAULT_ACCOUNTS_PAGE,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=25).contains(&n) => n as usize,
                _ => {
                    return Err(ApiError::validation(format!(
                        "maxResults: {s:?} must be an integer from 1 to 25"
                    )));
                }
            },
        };
        let mut wanted: Vec<&String> = account_ids.iter().collect();
        wanted.sort();
        wanted.dedup();
        let fp = fingerprint(&wanted);
        let offset = match next_token {
            Some(t) => decode_token(t, fp)?,
            None => 0,
        };
        let now = self.now();
        let r = self.region_mut(at);
        let all: Vec<Value> = r
            .accounts
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.binary_search(id).is_ok())
            .map(|(id, a)| json!({ "accountId": id, "status": r.visible_account_status(id, a, now) }))
            .collect();
        let end = (offset + page).min(all.len());
        let items = all.get(offset.min(all.len())..end).unwrap_or_default().to_vec();
        let mut out = json!({ "items": items });
        if end < all.len() {
            out["nextToken"] = json!(encode_token(end, fp));
        }
        Ok(out)
    }

    pub fn get_discovery_configuration(&mut self, at: &Scope) -> ApiResult {
        let r = self.region_mut(at);
        let mut out = json!({
            "autoEnableOrganizationMembers": r.auto_enable,
            "classificationScopeId": "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4",
            "firstEnabledAt": r.discovery_first_enabled,
            "lastUpdatedAt": r.discovery_updated,
            "sensitivityInspectionTemplateId": "b1c2d3e4f5a6b1c2d3e4f5a6b1c2d3e4",
            "status": r.discovery_status,
        });
        if r.discovery_status == DiscoveryStatus::Disabled {
            out["disabledAt"] = json!(r.discovery_updated);
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountUpdate {
    account_id: String,
    status: DiscoveryStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchUpdateRequest {
    #[serde(default)]
    accounts: Option<Vec<AccountUpdate>>,
}
