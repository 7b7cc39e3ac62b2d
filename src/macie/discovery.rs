//! Automated-discovery calls: ListAutomatedDiscoveryAccounts (only the declared accounts, 50 ids
//! per request, 25 per page) and BatchUpdateAutomatedDiscoveryAccounts, behind
//! [`DiscoveryApi`]: the AWS SDK implements it for the operator
//! ([`MacieClients`](super::MacieClients)), and
//! [`FakeDiscovery`](super::fake_discovery::FakeDiscovery) in process for the tests.

use std::collections::HashMap;

use aws_sdk_macie2::Client;
use aws_sdk_macie2::types::{AutomatedDiscoveryAccountStatus, AutomatedDiscoveryAccountUpdate};
use futures::future::BoxFuture;

use super::{MacieClients, MacieError, Place};
use crate::api::DiscoveryStatus;
use crate::runtime::metrics::Metrics;

/// At most this many accountIds per ListAutomatedDiscoveryAccounts request (API limit).
pub const IDS_PER_REQUEST: usize = 50;
/// At most this many items per page (API limit for maxResults).
pub const PAGE_SIZE: i32 = 25;

fn from_sdk(s: &AutomatedDiscoveryAccountStatus) -> Option<DiscoveryStatus> {
    match s {
        AutomatedDiscoveryAccountStatus::Enabled => Some(DiscoveryStatus::Enabled),
        AutomatedDiscoveryAccountStatus::Disabled => Some(DiscoveryStatus::Disabled),
        _ => None,
    }
}

/// The status of each of `ids` that Macie lists (accounts it does not list are absent), and the
/// number of calls made.
pub async fn list_accounts(
    client: &Client,
    ids: &[String],
    metrics: &Metrics,
) -> Result<(HashMap<String, DiscoveryStatus>, u32), MacieError> {
    let mut out = HashMap::new();
    let mut calls = 0;
    for chunk in ids.chunks(IDS_PER_REQUEST) {
        let mut token: Option<String> = None;
        loop {
            let resp = client
                .list_automated_discovery_accounts()
                .set_account_ids(Some(chunk.to_vec()))
                .max_results(PAGE_SIZE)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(MacieError::from_sdk);
            metrics.call("ListAutomatedDiscoveryAccounts", MacieError::outcome(&resp));
            let resp = resp?;
            calls += 1;
            for item in resp.items() {
                if let (Some(id), Some(status)) = (item.account_id(), item.status().and_then(from_sdk)) {
                    out.insert(id.to_string(), status);
                }
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok((out, calls))
}

/// One BatchUpdateAutomatedDiscoveryAccounts call, without SDK retries (the caller retries
/// throttling and waits for an observation after anything uncertain). Returns the per-account
/// errors: (accountId, error code).
pub async fn batch_update(
    client: &Client,
    updates: &[(String, DiscoveryStatus)],
    metrics: &Metrics,
) -> Result<Vec<(String, String)>, MacieError> {
    use aws_sdk_macie2::config::retry::RetryConfig;
    let accounts: Vec<AutomatedDiscoveryAccountUpdate> = updates
        .iter()
        .map(|(id, s)| {
            AutomatedDiscoveryAccountUpdate::builder()
                .account_id(id)
                .status(AutomatedDiscoveryAccountStatus::from(s.as_str()))
                .build()
        })
        .collect();
    let resp = client
        .batch_update_automated_discovery_accounts()
        .set_accounts(Some(accounts))
        .customize()
        .config_override(aws_sdk_macie2::config::Config::builder().retry_config(RetryConfig::disabled()))
        .send()
        .await
        .map_err(MacieError::from_sdk);
    metrics.call("BatchUpdateAutomatedDiscoveryAccounts", MacieError::outcome(&resp));
    Ok(resp?
        .errors()
        .iter()
        .map(|e| {
            (
                e.account_id().unwrap_or_default().to_string(),
                e.error_code()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| "Unknown".into()),
            )
        })
        .collect())
}

/// The automated-discovery calls the MacieDiscovery engines make, per place (MacieAccount and
/// region).
pub trait DiscoveryApi: Send + Sync {
    /// ListAutomatedDiscoveryAccounts of `ids` (every page): the status of each account Macie
    /// lists; an account it does not list is absent.
    fn list_accounts<'a>(
        &'a self,
        place: &'a Place,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, DiscoveryStatus>, MacieError>>;

    /// One BatchUpdateAutomatedDiscoveryAccounts, sent once (never retried by the client): the
    /// per-account errors, (accountId, error code).
    fn batch_update<'a>(
        &'a self,
        place: &'a Place,
        updates: &'a [(String, DiscoveryStatus)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MacieError>>;
}

impl MacieClients {
    /// Every member account ListAutomatedDiscoveryAccounts lists (no ids: every page), with
    /// its automated-discovery status (`macie-operator export --discovery`).
    pub async fn every_discovery_account(
        &self,
        place: &Place,
    ) -> Result<std::collections::BTreeMap<String, DiscoveryStatus>, MacieError> {
        self.with_client(place, |c| async move {
            let mut out = std::collections::BTreeMap::new();
            let mut token: Option<String> = None;
            loop {
                let resp = c
                    .list_automated_discovery_accounts()
                    .max_results(PAGE_SIZE)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(MacieError::from_sdk);
                self.metrics()
                    .call("ListAutomatedDiscoveryAccounts", MacieError::outcome(&resp));
                let resp = resp?;
                for item in resp.items() {
                    if let (Some(id), Some(status)) = (item.account_id(), item.status().and_then(from_sdk)) {
                        out.insert(id.to_string(), status);
                    }
                }
                match resp.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => return Ok(out),
                }
            }
        })
        .await
    }
}

impl DiscoveryApi for MacieClients {
    fn list_accounts<'a>(
        &'a self,
        place: &'a Place,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, DiscoveryStatus>, MacieError>> {
        Box::pin(async move {
            let listed = self
                .with_client(place, |c| async move { list_accounts(&c, ids, self.metrics()).await })
                .await;
            listed.map(|(found, _calls)| found)
        })
    }

    fn batch_update<'a>(
        &'a self,
        place: &'a Place,
        updates: &'a [(String, DiscoveryStatus)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MacieError>> {
        Box::pin(self.with_client(place, move |c| async move {
            batch_update(&c, updates, self.metrics()).await
        }))
    }
}
