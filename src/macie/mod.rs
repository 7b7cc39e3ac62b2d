//! The AWS side: credentials per MacieAccount (the operator's own, or an assumed role's
//! session), one `aws-sdk-macie2` client per (account, region) with an optional endpoint
//! override, error classification, and the shared job sweep.

pub mod api;
pub mod credentials;
pub mod discovery;
pub mod fake;
pub mod fake_discovery;
pub mod jobs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_macie2::Client;
use aws_sdk_macie2::config::http::HttpResponse;
use aws_sdk_macie2::config::retry::RetryConfig;
use aws_sdk_macie2::config::timeout::TimeoutConfig;
use aws_sdk_macie2::config::{BehaviorVersion, Region};
use aws_sdk_macie2::error::{ProvideErrorMetadata, SdkError};

use crate::api::DesiredJobStatus;
use crate::api::macie_job::ObservedJob;
use crate::runtime::gate::WriteGate;
use crate::runtime::metrics::Metrics;
use api::{JobsPage, MacieApi};
use credentials::{RoleSpec, SessionCredentials};
use futures::future::BoxFuture;

/// Where Macie calls go: a MacieAccount (by its Kubernetes name: its credentials) and an AWS
/// Region. Sweeps, discovery engines and SDK clients are per place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub account: String,
    pub region: String,
}

impl Place {
    pub fn new(account: &str, region: &str) -> Place {
        Place {
            account: account.to_string(),
            region: region.to_string(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.account, self.region)
    }
}

/// Time budgets of every AWS call (`--aws-attempt-timeout`, `--aws-operation-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// One HTTP attempt (connect, send, wait for and read the response).
    pub attempt: Duration,
    /// The whole call, retries and their backoff included.
    pub operation: Duration,
}

impl AwsTimeouts {
    /// The AWS SDK's connect timeout (behavior version 2026-01-12 and later), kept when the
    /// loaded configuration sets none.
    pub const CONNECT: Duration = Duration::from_millis(3100);
}

impl AwsTimeouts {
    /// The SDK timeout configuration of a call with these budgets (the base configuration's
    /// connect timeout, else [`AwsTimeouts::CONNECT`]). An attempt that gets no answer (a
    /// connection accepted but never answered) ends as SdkError::TimeoutError, which
    /// `MacieError::from_sdk` sorts as Uncertain (code "Timeout").
    pub fn sdk_config(&self, base: &aws_config::SdkConfig) -> TimeoutConfig {
        let mut timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build();
        if let Some(base) = base.timeout_config() {
            timeouts.take_defaults_from(base);
        }
        if timeouts.connect_timeout().is_none() {
            timeouts = timeouts.to_builder().connect_timeout(AwsTimeouts::CONNECT).build();
        }
        timeouts
    }
}

/// The SDK's standard retry mode (jittered exponential backoff from 200 ms up to 5 s,
/// throttling and transient errors) with at most `max_attempts` attempts.
pub fn standard_retries(max_attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5))
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        AwsTimeouts {
            attempt: Duration::from_secs(10),
            operation: Duration::from_secs(30),
        }
    }
}

/// Builds and caches one Macie client per place: the credentials of each MacieAccount in use
/// (registered with `use_account`) and one client per region of it.
pub struct MacieClients {
    base: aws_config::SdkConfig,
    endpoint: Option<String>,
    /// STS endpoint override (tests); None: the SDK's standard endpoint configuration
    /// (AWS_ENDPOINT_URL_STS, or AWS).
    sts_endpoint: Option<String>,
    timeouts: AwsTimeouts,
    sessions: Mutex<HashMap<String, Session>>,
    metrics: Arc<Metrics>,
    gate: WriteGate,
    /// Answers the job calls instead of AWS (the in-process fake of the step tests).
    fake: Option<Arc<dyn MacieApi>>,
    /// Answers the automated-discovery calls instead of AWS (the in-process fake).
    fake_discovery: Option<Arc<dyn discovery::DiscoveryApi>>,
}

/// A MacieAccount's credentials in this process, and its clients by region.
struct Session {
    role: Option<RoleSpec>,
    /// The assumed role's cached session; None: the operator's own credentials.
    credentials: Option<SessionCredentials>,
    clients: HashMap<String, Client>,
}

/// The HTTP client of every AWS call: hyper with rustls on ring, the TLS stack kube uses too.
pub fn http_client() -> aws_sdk_macie2::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

impl MacieClients {
    /// Loads credentials and settings the standard AWS way (environment, IRSA web identity,
    /// EKS Pod Identity, profile, instance metadata); every Macie call has the `timeouts`.
    pub async fn from_env(endpoint: Option<String>, timeouts: AwsTimeouts) -> MacieClients {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .load()
            .await;
        MacieClients::new(base, endpoint).with_timeouts(timeouts)
    }

    /// Clients on `base`, with the default `AwsTimeouts` (see `with_timeouts`).
    pub fn new(base: aws_config::SdkConfig, endpoint: Option<String>) -> MacieClients {
        MacieClients {
            base,
            endpoint,
            sts_endpoint: None,
            timeouts: AwsTimeouts::default(),
            sessions: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
            gate: WriteGate::open(),
            fake: None,
            fake_discovery: None,
        }
    }

    /// The job calls go to `api` instead of AWS (tests: an in-process fake).
    pub fn with_api(mut self, api: Arc<dyn MacieApi>) -> MacieClients {
        self.fake = Some(api);
        self
    }

    /// The Macie API of the job controller: AWS through the SDK, or the fake set by `with_api`.
    pub fn api(&self) -> &dyn MacieApi {
        match &self.fake {
            Some(f) => f.as_ref(),
            None => self,
        }
    }

    /// The automated-discovery calls go to `api` instead of AWS (tests: an in-process fake).
    pub fn with_discovery_api(mut self, api: Arc<dyn discovery::DiscoveryApi>) -> MacieClients {
        self.fake_discovery = Some(api);
        self
    }

    /// The automated-discovery calls: AWS through the SDK, or the fake set by
    /// `with_discovery_api`.
    pub fn discovery_api(&self) -> &dyn discovery::DiscoveryApi {
        match &self.fake_discovery {
            Some(f) => f.as_ref(),
            None => self,
        }
    }

    /// Sets the per-attempt and per-operation timeouts of every Macie call.
    pub fn with_timeouts(mut self, timeouts: AwsTimeouts) -> MacieClients {
        self.timeouts = timeouts;
        for s in self.sessions.get_mut().unwrap_or_else(|p| p.into_inner()).values_mut() {
            s.clients.clear();
        }
        self
    }

    /// Sends STS calls (AssumeRole, GetCallerIdentity) to `endpoint` instead of the SDK's
    /// standard endpoint configuration (tests: the emulator).
    pub fn with_sts_endpoint(mut self, endpoint: Option<String>) -> MacieClients {
        self.sts_endpoint = endpoint;
        self
    }

    pub fn timeouts(&self) -> AwsTimeouts {
        self.timeouts
    }

    /// Macie writes (UpdateClassificationJob, BatchUpdateAutomatedDiscoveryAccounts) pass this
    /// gate (leader election closes it when the lease is not renewed in time).
    pub fn with_gate(mut self, gate: WriteGate) -> MacieClients {
        self.gate = gate;
        self
    }

    /// Whether a Macie write may start now.
    pub fn gate(&self) -> &WriteGate {
        &self.gate
    }

    /// Uses `metrics` for the call counters (and everything else built on these clients).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> MacieClients {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The region the AWS configuration resolved (AWS_REGION, profile, ...), if any.
    pub fn default_region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the credentials of MacieAccount `account`: the operator's own (`role` None) or
    /// a session of the assumed role. Called with every decision that uses the account; a
    /// changed role replaces the session and its clients, the same one keeps them.
    pub fn use_account(&self, account: &str, role: Option<RoleSpec>) {
        let mut sessions = self.sessions();
        if sessions.get(account).is_some_and(|s| s.role == role) {
            return;
        }
        let credentials = role
            .clone()
            .map(|r| SessionCredentials::new(&self.base, r, self.sts_endpoint.clone()));
        sessions.insert(
            account.to_string(),
            Session {
                role,
                credentials,
                clients: HashMap::new(),
            },
        );
    }

    /// Drops what is kept for a MacieAccount that is gone.
    pub fn forget_account(&self, account: &str) {
        self.sessions().remove(account);
    }

    /// The session credentials of `account` (None: the operator's own, or not registered).
    pub fn session(&self, account: &str) -> Option<SessionCredentials> {
        self.sessions().get(account).and_then(|s| s.credentials.clone())
    }

    /// Who the credentials of `account` are (sts:GetCallerIdentity in `region`); a role that
    /// cannot be assumed is its STS error.
    pub async fn verify(&self, account: &str, region: &str) -> Result<credentials::Identity, MacieError> {
        let session = self.session(account);
        credentials::caller_identity(&self.base, session, self.sts_endpoint.clone(), region).await
    }

    /// Reacts to a failed call at `place`: credentials that AWS says expired (a clock skew
    /// between here and AWS) are dropped, so that the retry assumes the role again.
    pub fn after_error(&self, place: &Place, e: &MacieError) {
        if e.is_expired_credentials()
            && let Some(c) = self.session(&place.account)
        {
            tracing::info!(%place, code = e.code(), "AWS says the session credentials expired; assuming the role again");
            c.invalidate();
        }
    }

    /// Runs `call` with the client of `place`, and reacts to its failure (`after_error`).
    pub async fn with_client<T, F, Fut>(&self, place: &Place, call: F) -> Result<T, MacieError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, MacieError>>,
    {
        let r = match self.client(place) {
            Ok(c) => call(c).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.after_error(place, e);
        }
        r
    }

    /// The Macie client of `place`; an error when its MacieAccount is not registered (a
    /// decision that admitted the resource registers it first).
    pub fn client(&self, place: &Place) -> Result<Client, MacieError> {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(&place.account) else {
            return Err(MacieError::AccessDenied {
                code: "AccountNotReady".into(),
                message: format!("no credentials for MacieAccount {:?} in this process", place.account),
            });
        };
        let credentials = session.credentials.clone();
        Ok(session
            .clients
            .entry(place.region.clone())
            .or_insert_with(|| self.build_client(&place.region, credentials))
            .clone())
    }

    fn build_client(&self, region: &str, credentials: Option<SessionCredentials>) -> Client {
        let mut conf = aws_sdk_macie2::config::Builder::from(&self.base)
            .region(Region::new(region.to_string()))
            // Reads are retried by the SDK. Updates are not: see `update_job`.
            .retry_config(standard_retries(4))
            .timeout_config(self.timeouts.sdk_config(&self.base));
        if let Some(c) = credentials {
            // The session caches itself (refreshed before expiry, dropped on ExpiredToken):
            // no second cache in front of it.
            conf = conf
                .credentials_provider(c)
                .identity_cache(aws_sdk_macie2::config::IdentityCache::no_cache());
        }
        if let Some(e) = &self.endpoint {
            conf = conf.endpoint_url(e);
        }
        Client::from_conf(conf.build())
    }
}

impl MacieApi for MacieClients {
    fn list_jobs_page<'a>(
        &'a self,
        place: &'a Place,
        query: api::JobsQuery<'a>,
        page_size: i32,
        token: Option<String>,
    ) -> BoxFuture<'a, Result<JobsPage, MacieError>> {
        Box::pin(self.with_client(place, move |c| async move {
            api::sdk_list_jobs_page(&c, query, page_size, token).await
        }))
    }

    fn describe_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedJob>, MacieError>> {
        Box::pin(self.with_client(place, move |c| async move { api::sdk_describe_job(&c, job_id).await }))
    }

    fn update_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
        to: DesiredJobStatus,
    ) -> BoxFuture<'a, Result<(), MacieError>> {
        Box::pin(self.with_client(place, move |c| async move { api::sdk_update_job(&c, job_id, to).await }))
    }

    fn create_job<'a>(
        &'a self,
        place: &'a Place,
        job: &'a api::NewJob<'a>,
    ) -> BoxFuture<'a, Result<String, MacieError>> {
        Box::pin(self.with_client(place, move |c| async move { api::sdk_create_job(&c, job).await }))
    }

    fn job_client_token<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, MacieError>> {
        Box::pin(self.with_client(
            place,
            move |c| async move { api::sdk_job_client_token(&c, job_id).await },
        ))
    }

    fn job_settings<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, MacieError>> {
        Box::pin(self.with_client(
            place,
            move |c| async move { api::sdk_describe_settings(&c, job_id).await },
        ))
    }
}

/// What replaces an IAM or STS principal ARN in an AWS error message.
pub const REDACTED_PRINCIPAL: &str = "<the operator's AWS principal>";

/// `message` with every IAM and STS ARN (`arn:<partition>:iam::...`, `arn:<partition>:sts::...`)
/// replaced by [`REDACTED_PRINCIPAL`]: AWS error messages name the calling principal (the
/// operator's role), and tenants read these messages in conditions and Events.
pub fn redact_principals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("arn:") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ')' | ']'))
            .unwrap_or(tail.len());
        let arn = &tail[..end];
        // arn:<partition>:<service>:...
        let service = arn.split(':').nth(2).unwrap_or_default();
        if service == "iam" || service == "sts" {
            out.push_str(REDACTED_PRINCIPAL);
        } else {
            out.push_str(arn);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A failed Macie call, sorted by what the operator should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacieError {
    /// ThrottlingException: the call was not processed; retry after a backoff. Also expired
    /// credentials (ExpiredToken, ExpiredTokenException, RequestExpired; see
    /// [`MacieError::is_expired_credentials`]).
    #[error("{code}: {message}")]
    Throttled { code: String, message: String },
    /// AccessDeniedException (also "Macie is not enabled", which arrives as HTTP 401), and STS
    /// AccessDenied (a role that cannot be assumed) and RegionDisabledException.
    #[error("{code}: {message}")]
    AccessDenied { code: String, message: String },
    /// ResourceNotFoundException.
    #[error("{code}: {message}")]
    NotFound { code: String, message: String },
    /// ValidationException (STS: ValidationError): the service refused the request as it stands.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// 5xx, a timeout or a broken connection: the call may or may not have taken effect.
    #[error("{code}: {message}")]
    Uncertain { code: String, message: String },
    /// Anything else Macie answered (ConflictException, ServiceQuotaExceededException, ...).
    #[error("{code}: {message}")]
    Other { code: String, message: String },
}

impl MacieError {
    /// The AWS error code (or a name for a transport failure), for conditions and Events.
    pub fn code(&self) -> &str {
        match self {
            MacieError::Throttled { code, .. }
            | MacieError::AccessDenied { code, .. }
            | MacieError::NotFound { code, .. }
            | MacieError::Rejected { code, .. }
            | MacieError::Uncertain { code, .. }
            | MacieError::Other { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            MacieError::Throttled { message, .. }
            | MacieError::AccessDenied { message, .. }
            | MacieError::NotFound { message, .. }
            | MacieError::Rejected { message, .. }
            | MacieError::Uncertain { message, .. }
            | MacieError::Other { message, .. } => message,
        }
    }

    /// The metric outcome of a call's result.
    pub fn outcome<T>(r: &Result<T, MacieError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.category(),
        }
    }

    /// Whether AWS refused the credentials that signed the call as expired (ExpiredToken,
    /// ExpiredTokenException, RequestExpired). The holder of cached temporary credentials should
    /// drop them (`credentials::SessionCredentials::invalidate`) before the retry.
    pub fn is_expired_credentials(&self) -> bool {
        matches!(self, MacieError::Throttled { code, .. } if is_expired_code(code))
    }

    /// Every [`category`](Self::category).
    pub const CATEGORIES: [&'static str; 6] = [
        "throttled",
        "access_denied",
        "not_found",
        "rejected",
        "uncertain",
        "other",
    ];

    /// A fixed label for metrics (one of [`CATEGORIES`](Self::CATEGORIES)).
    pub fn category(&self) -> &'static str {
        match self {
            MacieError::Throttled { .. } => "throttled",
            MacieError::AccessDenied { .. } => "access_denied",
            MacieError::NotFound { .. } => "not_found",
            MacieError::Rejected { .. } => "rejected",
            MacieError::Uncertain { .. } => "uncertain",
            MacieError::Other { .. } => "other",
        }
    }

    /// Sorts an SDK error of any AWS client (Macie, STS). Matches on the error code, never the
    /// HTTP status alone ("Macie is not enabled" is an AccessDeniedException with status 401).
    pub fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> MacieError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = match &err {
            SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
            _ => None,
        };
        match &err {
            SdkError::ServiceError(se) => {
                let e = se.err();
                let code = e.code().unwrap_or("Unknown").to_string();
                // Conditions and Events show this message to tenants: never the operator's
                // role (AWS names the calling principal in AccessDenied messages).
                let message = redact_principals(e.message().unwrap_or(""));
                match code.as_str() {
                    "ThrottlingException" | "TooManyRequestsException" | "Throttling" => {
                        MacieError::Throttled { code, message }
                    }
                    // Expired credentials (temporary credentials past their expiration, or a
                    // request signed too long ago, e.g. with a skewed clock): AWS refused the
                    // signature before doing anything, so nothing was processed and the call is
                    // safe to retry, after a backoff and with fresh credentials (the caller
                    // checks `is_expired_credentials` and invalidates its cached ones).
                    c if is_expired_code(c) => MacieError::Throttled { code, message },
                    "AccessDeniedException" | "UnauthorizedException" | "AccessDenied" | "RegionDisabledException" => {
                        MacieError::AccessDenied { code, message }
                    }
                    "ResourceNotFoundException" => MacieError::NotFound { code, message },
                    "ValidationException" | "ValidationError" => MacieError::Rejected { code, message },
                    "InternalServerException" | "ServiceUnavailableException" => {
                        MacieError::Uncertain { code, message }
                    }
                    _ if status.is_some_and(|s| s >= 500) => MacieError::Uncertain { code, message },
                    _ => MacieError::Other { code, message },
                }
            }
            SdkError::TimeoutError(_) => MacieError::Uncertain {
                code: "Timeout".into(),
                message: "the call timed out".into(),
            },
            SdkError::DispatchFailure(e) => MacieError::Uncertain {
                code: "DispatchFailure".into(),
                message: format!("{:?}", e.as_connector_error()),
            },
            SdkError::ResponseError(_) => MacieError::Uncertain {
                code: "ResponseError".into(),
                message: format!("{}", aws_sdk_macie2::error::DisplayErrorContext(&err)),
            },
            _ => MacieError::Other {
                code: "ClientError".into(),
                message: format!("{}", aws_sdk_macie2::error::DisplayErrorContext(&err)),
            },
        }
    }
}

/// The error codes of credentials AWS refuses as expired: STS and most query-protocol services
/// answer ExpiredToken, JSON services (Macie among them) ExpiredTokenException, and a signature
/// older than AWS accepts is RequestExpired.
fn is_expired_code(code: &str) -> bool {
    matches!(code, "ExpiredToken" | "ExpiredTokenException" | "RequestExpired")
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn principal_arns_are_redacted_and_other_text_kept() {
        let rows = [
            (
                "User: arn:aws:sts::111122223333:assumed-role/macie-operator/macie-operator is not authorized to perform: macie2:UpdateClassificationJob",
                "User: <the operator's AWS principal> is not authorized to perform: macie2:UpdateClassificationJob",
            ),
            (
                "User: arn:aws-us-gov:iam::123456789012:root is not authorized on arn:aws:iam::1:role/x.",
                "User: <the operator's AWS principal> is not authorized on <the operator's AWS principal>",
            ),
            (
                "bucket arn:aws:s3:::my-bucket is fine",
                "bucket arn:aws:s3:::my-bucket is fine",
            ),
            ("no arn here", "no arn here"),
            ("", ""),
            ("ends with arn:", "ends with arn:"),
        ];
        for (input, want) in rows {
            assert_eq!(redact_principals(input), want, "{input}");
        }
    }
}
