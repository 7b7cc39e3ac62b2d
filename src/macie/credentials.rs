//! Credentials of a MacieAccount role: `sts:AssumeRole` with the operator's own credentials,
//! cached and refreshed before they expire, and `sts:GetCallerIdentity` to tell which account
//! and principal a set of credentials acts as.
//!
//! The operator's own credentials come from the SDK's standard chain (environment, IRSA web
//! identity, EKS Pod Identity, profile, instance metadata), loaded into the base
//! [`aws_config::SdkConfig`]. STS is reached through the SDK's standard endpoint configuration
//! (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`), or an explicit endpoint (tests: the emulator).
//!
//! # Using [`SessionCredentials`] in an AWS client
//!
//! It is a [`ProvideCredentials`] and does its own caching, so a client built on it should not
//! cache again: set it with `.credentials_provider(creds.clone())` and
//! `.identity_cache(IdentityCache::no_cache())`. Otherwise the client's own cache keeps
//! credentials that [`SessionCredentials::invalidate`] has dropped until they expire by the
//! local clock. When a call fails with [`MacieError::is_expired_credentials`] (AWS refused the
//! credentials as expired, e.g. because the local clock is behind), call `invalidate` and retry
//! after the usual backoff: the next call assumes the role again, once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_sts::config::{IdentityCache, Region};
use aws_smithy_async::time::SharedTimeSource;

use super::{AwsTimeouts, MacieError};

/// How every role session name starts: `macie-operator-<MacieAccount name>` (see
/// [`session_name`]).
pub const SESSION_PREFIX: &str = "macie-operator-";

/// The longest RoleSessionName STS accepts (`roleSessionNameType` in the STS model: length 2
/// to 64, pattern `[\w+=,.@-]*`).
const SESSION_NAME_MAX: usize = 64;

/// Hex digits of the hash that ends a session name made to fit (48 bits).
const SESSION_HASH_DIGITS: usize = 12;

/// Assumed credentials are used until this long before their expiration (or until half their
/// lifetime has passed, when that comes first).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Credentials are reused for at least this long after AssumeRole answered, even when the local
/// clock says they are about to expire (or already have: a clock ahead of AWS). AWS then refuses
/// them as expired and the caller invalidates them; without this floor a skewed clock would mean
/// one AssumeRole per call.
const MIN_REUSE: Duration = Duration::from_secs(60);

/// After a refresh fails for a transient reason (throttled, timeout, 5xx) while the previous
/// credentials are still valid, those are used for this long before the next attempt.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(30);

/// STS is used when the base configuration has no region: the region of its global endpoint.
const STS_FALLBACK_REGION: &str = "us-east-1";

/// The name the credentials carry as their provider (shown in SDK logs).
const PROVIDER_NAME: &str = "MacieAccountAssumeRole";

/// A role to assume: `spec.roleArn` and `spec.externalId` of a MacieAccount, and the session
/// name that names the MacieAccount.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleSpec {
    pub role_arn: String,
    /// Sent as `ExternalId` when set (the role's trust policy may require it).
    pub external_id: Option<String>,
    /// Sent as `RoleSessionName`: [`session_name`] of the MacieAccount's name.
    pub session_name: String,
}

/// Whether STS allows `c` in a RoleSessionName (`[\w+=,.@-]`: ASCII letters and digits, and
/// `_+=,.@-`).
fn session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// The AssumeRole session name for MacieAccount `account`: `macie-operator-<account>`. It is
/// part of the assumed-role ARN (`arn:aws:sts::<id>:assumed-role/<role>/<session name>`), so
/// the role account's CloudTrail shows which MacieAccount acted.
///
/// A name that would not be one STS accepts as it is (longer than 64 characters, or with a
/// character outside `[\w+=,.@-]`, or with `_`) keeps what fits of the account name, any other
/// character replaced by `-`, and ends with `_` and 12 hex digits of the SHA-256 of the whole
/// account name, 64 characters at most. A name used as it is has no `_`, and a name made to fit
/// always has one: the two kinds never meet, and two accounts share a made-to-fit name only if
/// 48 bits of their hashes agree. (A MacieAccount's name is a DNS subdomain: it has no `_` and
/// only allowed characters, so only a name longer than 49 characters is made to fit.)
pub fn session_name(account: &str) -> String {
    let plain = format!("{SESSION_PREFIX}{account}");
    if plain.len() <= SESSION_NAME_MAX && account.chars().all(|c| session_char(c) && c != '_') {
        return plain;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, account.as_bytes());
    let hash: String = digest.as_ref()[..SESSION_HASH_DIGITS / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let room = SESSION_NAME_MAX - SESSION_PREFIX.len() - 1 - SESSION_HASH_DIGITS;
    let kept: String = account
        .chars()
        .take(room)
        .map(|c| if session_char(c) { c } else { '-' })
        .collect();
    format!("{SESSION_PREFIX}{kept}_{hash}")
}

/// The AWS account and principal ARN of a set of credentials (sts:GetCallerIdentity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The 12-digit AWS account id.
    pub account: String,
    /// E.g. `arn:aws:sts::111122223333:assumed-role/macie-operator/macie-operator-security-prod`.
    pub arn: String,
}

/// Temporary credentials of one role, obtained with `sts:AssumeRole` and cached.
///
/// Clones share the cache. Credentials are reused until [`REFRESH_BEFORE_EXPIRY`] before their
/// expiration (or half their lifetime, if shorter), by the clock of the base configuration
/// (`SdkConfig::time_source`, the system clock by default). Callers that find them due for
/// refresh at the same time wait for one AssumeRole and share its outcome, success or failure.
/// A failed AssumeRole is not cached: the next call tries again.
#[derive(Clone, Debug)]
pub struct SessionCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    sts: aws_sdk_sts::Client,
    role: RoleSpec,
    clock: SharedTimeSource,
    state: Mutex<State>,
    /// Held while AssumeRole is in flight: one refresh at a time.
    refresh: tokio::sync::Mutex<()>,
    assume_role_calls: AtomicU64,
}

impl fmt::Debug for Inner {
    // Never the credentials themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("role", &self.role)
            .field("assume_role_calls", &self.assume_role_calls.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// Completed AssumeRole calls: a caller that waited for the refresh lock while one
    /// completed takes its outcome instead of calling again.
    generation: u64,
    /// The error of the last AssumeRole, when it failed.
    last_error: Option<MacieError>,
}

impl State {
    /// The cached credentials, if they are not due for refresh at `now`.
    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        self.cached
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.credentials.clone())
    }
}

struct Cached {
    credentials: Credentials,
    expires: SystemTime,
    refresh_at: SystemTime,
}

/// When credentials received at `now` and expiring at `expires` are due for refresh:
/// [`REFRESH_BEFORE_EXPIRY`] before expiry, or half their lifetime when that is shorter, but
/// never sooner than [`MIN_REUSE`] after `now`.
fn refresh_at(now: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(now).unwrap_or(Duration::ZERO);
    let margin = REFRESH_BEFORE_EXPIRY.min(lifetime / 2);
    (expires - margin).max(now + MIN_REUSE)
}

impl SessionCredentials {
    /// Credentials of `role`, assumed with the credentials of `base` (the standard chain).
    ///
    /// The STS client is built from `base`: its region (`us-east-1` when it has none), its
    /// endpoint configuration (`AWS_ENDPOINT_URL_STS`), overridden by `sts_endpoint` when set.
    /// Nothing is called until the credentials are first asked for.
    pub fn new(base: &aws_config::SdkConfig, role: RoleSpec, sts_endpoint: Option<String>) -> SessionCredentials {
        let region = base
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| STS_FALLBACK_REGION.to_string());
        let sts = sts_client(base, &region, sts_endpoint.as_deref(), None);
        SessionCredentials {
            inner: Arc::new(Inner {
                sts,
                role,
                clock: base.time_source().unwrap_or_default(),
                state: Mutex::new(State::default()),
                refresh: tokio::sync::Mutex::new(()),
                assume_role_calls: AtomicU64::new(0),
            }),
        }
    }

    /// The role these credentials are for.
    pub fn role(&self) -> &RoleSpec {
        &self.inner.role
    }

    /// The role's credentials: the cached ones while they are fresh, else from a new AssumeRole.
    ///
    /// AssumeRole errors are sorted by [`MacieError::from_sdk`] with the STS code kept, e.g. a
    /// role that does not exist or does not trust the operator (or a wrong external id) is
    /// `MacieError::AccessDenied { code: "AccessDenied", .. }`. When a refresh fails for a
    /// transient reason (`Throttled`, `Uncertain`) while the previous credentials have not
    /// expired yet, those are returned and the refresh is tried again 30 seconds later.
    pub async fn credentials(&self) -> Result<Credentials, MacieError> {
        let seen = {
            let state = self.state();
            if let Some(c) = state.fresh(self.now()) {
                return Ok(c);
            }
            state.generation
        };
        let _refreshing = self.inner.refresh.lock().await;
        {
            let state = self.state();
            if let Some(c) = state.fresh(self.now()) {
                return Ok(c);
            }
            if state.generation != seen
                && let Some(e) = &state.last_error
            {
                // The AssumeRole we waited for failed: its error is ours too.
                return Err(e.clone());
            }
        }
        self.inner.assume_role_calls.fetch_add(1, Ordering::Relaxed);
        let result = self.assume_role().await;
        let now = self.now();
        let mut guard = self.state();
        let state = &mut *guard;
        state.generation += 1;
        match result {
            Ok((credentials, expires)) => {
                tracing::debug!(role = %self.inner.role.role_arn, ?expires, "assumed role");
                state.cached = Some(Cached {
                    credentials: credentials.clone(),
                    expires,
                    refresh_at: refresh_at(now, expires),
                });
                state.last_error = None;
                Ok(credentials)
            }
            Err(e) => {
                let transient = matches!(e, MacieError::Throttled { .. } | MacieError::Uncertain { .. });
                if transient && let Some(c) = state.cached.as_mut().filter(|c| now < c.expires) {
                    tracing::warn!(
                        role = %self.inner.role.role_arn, error = %e,
                        "could not refresh the role's credentials; using the current ones until they expire"
                    );
                    c.refresh_at = (now + RETRY_REFRESH_AFTER).min(c.expires);
                    state.last_error = None;
                    return Ok(c.credentials.clone());
                }
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drops the cached credentials: the next [`credentials`](Self::credentials) assumes the
    /// role again. For when AWS refuses them as expired ([`MacieError::is_expired_credentials`])
    /// although the local clock says they are not.
    pub fn invalidate(&self) {
        self.state().cached = None;
    }

    /// How many AssumeRole calls these credentials (and their clones) have made, failed ones
    /// included (the SDK's retries within one call are not counted apart).
    pub fn assume_role_calls(&self) -> u64 {
        self.inner.assume_role_calls.load(Ordering::Relaxed)
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sts:AssumeRole: the credentials and their expiration.
    async fn assume_role(&self) -> Result<(Credentials, SystemTime), MacieError> {
        let role = &self.inner.role;
        let out = self
            .inner
            .sts
            .assume_role()
            .role_arn(&role.role_arn)
            .role_session_name(&role.session_name)
            .set_external_id(role.external_id.clone())
            .send()
            .await
            .map_err(MacieError::from_sdk)?;
        let c = out.credentials().ok_or_else(|| MacieError::Other {
            code: "IncompleteResponse".into(),
            message: "AssumeRole answered without credentials".into(),
        })?;
        let expires = SystemTime::try_from(*c.expiration()).map_err(|e| MacieError::Other {
            code: "IncompleteResponse".into(),
            message: format!("AssumeRole answered an expiration out of range: {e}"),
        })?;
        let credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            Some(expires),
            PROVIDER_NAME,
        );
        Ok((credentials, expires))
    }
}

impl ProvideCredentials for SessionCredentials {
    /// [`SessionCredentials::credentials`], its `MacieError` as the provider error's source.
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(
            async move { self.credentials().await.map_err(CredentialsError::provider_error) },
        )
    }
}

/// sts:GetCallerIdentity in `region`, signed with `credentials` (the base configuration's own
/// when `None`), through `sts_endpoint` when set (else the SDK's endpoint configuration).
///
/// When the credentials cannot be obtained, that error is returned as it is: a role that
/// cannot be assumed is `MacieError::AccessDenied` with the STS code.
pub async fn caller_identity(
    config: &aws_config::SdkConfig,
    credentials: Option<SessionCredentials>,
    sts_endpoint: Option<String>,
    region: &str,
) -> Result<Identity, MacieError> {
    let credentials = match credentials {
        Some(c) => Some(c.credentials().await?),
        None => None,
    };
    let out = sts_client(config, region, sts_endpoint.as_deref(), credentials)
        .get_caller_identity()
        .send()
        .await
        .map_err(MacieError::from_sdk)?;
    match (out.account(), out.arn()) {
        (Some(account), Some(arn)) => Ok(Identity {
            account: account.to_string(),
            arn: arn.to_string(),
        }),
        _ => Err(MacieError::Other {
            code: "IncompleteResponse".into(),
            message: "GetCallerIdentity answered without the account or the ARN".into(),
        }),
    }
}

/// An STS client on `base` (credentials, endpoint configuration, clock) in `region`, with the
/// operator's HTTP client, timeouts and retries; signing with `credentials` when given.
fn sts_client(
    base: &aws_config::SdkConfig,
    region: &str,
    endpoint: Option<&str>,
    credentials: Option<Credentials>,
) -> aws_sdk_sts::Client {
    let mut conf = aws_sdk_sts::config::Builder::from(base)
        .region(Region::new(region.to_string()))
        .http_client(super::http_client())
        .retry_config(super::standard_retries(3))
        .timeout_config(AwsTimeouts::default().sdk_config(base));
    if let Some(e) = endpoint {
        conf = conf.endpoint_url(e);
    }
    if let Some(c) = credentials {
        // Already cached by SessionCredentials: a cache here would only keep one more copy
        // per call in the (shared) identity cache of the base configuration.
        conf = conf.credentials_provider(c).identity_cache(IdentityCache::no_cache());
    }
    aws_sdk_sts::Client::from_conf(conf.build())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_macie2::config::BehaviorVersion;
    use aws_smithy_async::time::TimeSource;
    use macie_emulator::state::Faults;
    use macie_emulator::{Background, Seed};

    use super::*;

    const OWN_ACCOUNT: &str = "123456789012";
    const ROLE: &str = "arn:aws:iam::111122223333:role/macie-operator";
    const EXTERNAL_ID: &str = "ext-123";

    /// The SDK's clock, moved forward by the tests (the emulator has its own).
    #[derive(Debug, Clone, Default)]
    struct TestClock(Arc<Mutex<Duration>>);

    impl TestClock {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl TimeSource for TestClock {
        fn now(&self) -> SystemTime {
            SystemTime::now() + *self.0.lock().unwrap()
        }
    }

    async fn emulator() -> Background {
        let seed = Seed::parse(&format!(
            "roles:\n- {{arn: '{ROLE}', externalId: {EXTERNAL_ID}}}\n\
             jobs:\n- {{jobId: home1, name: home, jobType: ONE_TIME, jobStatus: RUNNING}}\n\
             - {{jobId: prod1, name: prod, jobType: SCHEDULED, jobStatus: IDLE, awsAccountId: '111122223333'}}\n"
        ))
        .unwrap();
        Background::start(seed, "us-east-1", OWN_ACCOUNT).await.unwrap()
    }

    /// A base configuration as `aws_config` loads it, with static own credentials and `clock`.
    fn base(clock: &TestClock) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
                Credentials::new("AKIDOPERATOR", "secret", None, None, "test"),
            ))
            .time_source(clock.clone())
            .build()
    }

    fn role(external_id: Option<&str>) -> RoleSpec {
        RoleSpec {
            role_arn: ROLE.to_string(),
            external_id: external_id.map(str::to_string),
            session_name: session_name("team-a"),
        }
    }

    /// The emulator's count of `op` requests.
    fn requests(emu: &Background, op: &str) -> u64 {
        emu.state.lock().counters.get(op).map_or(0, |c| c.requests)
    }

    fn set_faults(emu: &Background, faults: serde_json::Value) {
        let faults: Faults = serde_json::from_value(faults).unwrap();
        emu.state.lock().set_faults(faults).unwrap();
    }

    /// A Macie client on `creds`, wired as the module documentation says.
    fn macie(base: &aws_config::SdkConfig, creds: &SessionCredentials, url: &str) -> aws_sdk_macie2::Client {
        let conf = aws_sdk_macie2::config::Builder::from(base)
            .credentials_provider(creds.clone())
            .identity_cache(aws_sdk_macie2::config::IdentityCache::no_cache())
            .endpoint_url(url)
            .http_client(crate::macie::http_client())
            .build();
        aws_sdk_macie2::Client::from_conf(conf)
    }

    async fn job_ids(client: &aws_sdk_macie2::Client) -> Result<Vec<String>, MacieError> {
        let out = client
            .list_classification_jobs()
            .send()
            .await
            .map_err(MacieError::from_sdk)?;
        Ok(out
            .items()
            .iter()
            .filter_map(|j| j.job_id().map(str::to_string))
            .collect())
    }

    /// What the STS model requires of a RoleSessionName: length 2 to 64, `[\w+=,.@-]*`.
    fn sts_accepts(name: &str) -> bool {
        (2..=64).contains(&name.len()) && name.chars().all(session_char)
    }

    #[test]
    fn session_names_name_the_account_and_fit_sts() {
        let at_limit = "a".repeat(64 - SESSION_PREFIX.len());
        let over = "a".repeat(64 - SESSION_PREFIX.len() + 1);
        let long = |tail: &str| format!("{}{tail}", "finance-eu-west-1-production-account-".repeat(2));
        let cut = |kept: &str, account: &str| {
            let sha = ring::digest::digest(&ring::digest::SHA256, account.as_bytes());
            let hex: String = sha.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
            format!("macie-operator-{kept}_{hex}")
        };
        // (MacieAccount name, session name)
        let rows: Vec<(String, String)> = vec![
            ("default".into(), "macie-operator-default".into()),
            ("security-prod".into(), "macie-operator-security-prod".into()),
            ("t1.team-a".into(), "macie-operator-t1.team-a".into()),
            // Exactly 64 characters: as it is; one more: cut, with the hash.
            (at_limit.clone(), format!("macie-operator-{at_limit}")),
            (over.clone(), cut(&"a".repeat(36), &over)),
            (long("a"), cut("finance-eu-west-1-production-account", &long("a"))),
            (long("b"), cut("finance-eu-west-1-production-account", &long("b"))),
            // Characters STS does not allow (not in a Kubernetes name, but never sent): `-`,
            // and the hash; `_` is allowed but marks a name made to fit.
            ("a/b".into(), cut("a-b", "a/b")),
            ("a:b".into(), cut("a-b", "a:b")),
            ("a b".into(), cut("a-b", "a b")),
            ("café".into(), cut("caf-", "café")),
            ("a_b".into(), cut("a_b", "a_b")),
            ("ok+=,.@-".into(), "macie-operator-ok+=,.@-".into()),
        ];
        for (account, expected) in &rows {
            let got = session_name(account);
            assert_eq!(&got, expected, "{account}");
            assert!(sts_accepts(&got), "{account}: {got}");
        }
        assert_eq!(session_name(&at_limit).len(), 64);
        assert_eq!(session_name(&over).len(), 64);
        // No two accounts share a session name: long names with a common prefix, names that
        // differ only in characters STS does not allow, and a plain name beside them.
        let names: std::collections::BTreeSet<String> = rows.iter().map(|(a, _)| session_name(a)).collect();
        assert_eq!(names.len(), rows.len());
        assert_ne!(session_name("a-b"), session_name("a/b"));
    }

    #[test]
    fn credentials_are_refreshed_five_minutes_before_expiry_or_at_half_their_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(refresh_at(t0, t0 + min(60)), t0 + min(55));
        assert_eq!(refresh_at(t0, t0 + min(15)), t0 + min(10));
        assert_eq!(refresh_at(t0, t0 + min(8)), t0 + min(4));
        // A clock ahead of AWS (credentials expired on arrival) still reuses them a while.
        assert_eq!(refresh_at(t0, t0 + Duration::from_secs(30)), t0 + MIN_REUSE);
        assert_eq!(refresh_at(t0 + min(10), t0), t0 + min(10) + MIN_REUSE);
    }

    #[tokio::test]
    async fn assumed_credentials_act_in_the_role_account_as_the_operator_session() {
        let emu = emulator().await;
        let base = base(&TestClock::default());
        let creds = SessionCredentials::new(&base, role(Some(EXTERNAL_ID)), Some(emu.url.clone()));
        assert_eq!(creds.assume_role_calls(), 0, "nothing is called before it is needed");

        let who = caller_identity(&base, Some(creds.clone()), Some(emu.url.clone()), "us-east-1")
            .await
            .unwrap();
        assert_eq!(
            who,
            Identity {
                account: "111122223333".into(),
                arn: "arn:aws:sts::111122223333:assumed-role/macie-operator/macie-operator-team-a".into(),
            }
        );
        let me = caller_identity(&base, None, Some(emu.url.clone()), "eu-west-1")
            .await
            .unwrap();
        assert_eq!(me.account, OWN_ACCOUNT);
        assert_eq!(me.arn, format!("arn:aws:iam::{OWN_ACCOUNT}:root"));

        // Macie calls signed with them act in the role's account.
        assert_eq!(job_ids(&macie(&base, &creds, &emu.url)).await.unwrap(), vec!["prod1"]);

        let c = creds.credentials().await.unwrap();
        assert!(c.access_key_id().starts_with("ASIA"), "{c:?}");
        assert!(c.session_token().is_some());
        assert!(c.expiry().is_some());
        let calls = emu.state.lock().calls.clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].operation, "AssumeRole");
        assert_eq!(calls[0].aws_account_id, OWN_ACCOUNT);
        assert_eq!(calls[0].role_arn.as_deref(), Some(ROLE));
        assert_eq!(calls[0].role_session_name.as_deref(), Some("macie-operator-team-a"));
        assert_eq!(calls[0].outcome, "OK");
        assert_eq!(creds.assume_role_calls(), 1);
    }

    #[tokio::test]
    async fn many_and_concurrent_callers_share_one_assume_role() {
        let emu = emulator().await;
        // Slow enough that every caller below arrives while the AssumeRole is in flight.
        set_faults(
            &emu,
            serde_json::json!({"operations": {"AssumeRole": {"latencyMs": 300}}}),
        );
        let base = base(&TestClock::default());
        let creds = SessionCredentials::new(&base, role(Some(EXTERNAL_ID)), Some(emu.url.clone()));

        let concurrent = futures::future::join_all((0..32).map(|i| {
            let creds = creds.clone();
            async move {
                if i % 2 == 0 {
                    creds.credentials().await.unwrap()
                } else {
                    creds.provide_credentials().await.unwrap()
                }
            }
        }))
        .await;
        let key = concurrent[0].access_key_id().to_string();
        assert!(concurrent.iter().all(|c| c.access_key_id() == key));
        for _ in 0..20 {
            assert_eq!(creds.credentials().await.unwrap().access_key_id(), key);
        }
        let client = macie(&base, &creds, &emu.url);
        for _ in 0..5 {
            job_ids(&client).await.unwrap();
        }
        assert_eq!(creds.assume_role_calls(), 1);
        assert_eq!(requests(&emu, "AssumeRole"), 1);
    }

    #[tokio::test]
    async fn roles_that_cannot_be_assumed_are_access_denied_with_the_sts_code() {
        let emu = emulator().await;
        let base = base(&TestClock::default());
        let unknown = RoleSpec {
            role_arn: "arn:aws:iam::111122223333:role/nobody".into(),
            external_id: None,
            session_name: session_name("nobody"),
        };
        for role in [unknown, role(Some("wrong-id")), role(None)] {
            let creds = SessionCredentials::new(&base, role.clone(), Some(emu.url.clone()));
            let err = creds.credentials().await.unwrap_err();
            assert!(
                // The message names no principal (it may reach tenants' conditions).
                matches!(&err, MacieError::AccessDenied { code, message }
                    if code == "AccessDenied" && message.contains("sts:AssumeRole") && !message.contains("arn:")),
                "{role:?}: {err:?}"
            );
            let err = caller_identity(&base, Some(creds.clone()), Some(emu.url.clone()), "us-east-1")
                .await
                .unwrap_err();
            assert_eq!(err.code(), "AccessDenied", "{err:?}");
            // A failure is not cached: each call asks again.
            assert_eq!(creds.assume_role_calls(), 2);
            let client = macie(&base, &creds, &emu.url);
            assert!(client.list_classification_jobs().send().await.is_err());
        }
        assert_eq!(requests(&emu, "GetCallerIdentity"), 0);
        assert_eq!(requests(&emu, "ListClassificationJobs"), 0);

        // Callers waiting for a failing AssumeRole share its error.
        set_faults(
            &emu,
            serde_json::json!({"operations": {"AssumeRole": {"latencyMs": 300}}}),
        );
        let creds = SessionCredentials::new(&base, role(Some("wrong-id")), Some(emu.url.clone()));
        let errors = futures::future::join_all((0..8).map(|_| creds.credentials())).await;
        assert!(errors.iter().all(|r| r.as_ref().unwrap_err().code() == "AccessDenied"));
        assert_eq!(creds.assume_role_calls(), 1);
    }

    #[tokio::test]
    async fn expired_credentials_are_refused_until_invalidated_then_assumed_once_more() {
        let emu = emulator().await;
        let base = base(&TestClock::default());
        let creds = SessionCredentials::new(&base, role(Some(EXTERNAL_ID)), Some(emu.url.clone()));
        let client = macie(&base, &creds, &emu.url);
        let sts = Some(emu.url.clone());
        caller_identity(&base, Some(creds.clone()), sts.clone(), "us-east-1")
            .await
            .unwrap();
        assert_eq!(job_ids(&client).await.unwrap(), vec!["prod1"]);

        // AWS's clock passes the expiration; the local one does not (skew).
        emu.state.lock().advance_clock(Duration::from_secs(3601));
        let err = caller_identity(&base, Some(creds.clone()), sts.clone(), "us-east-1")
            .await
            .unwrap_err();
        assert_eq!(err.code(), "ExpiredTokenException", "{err:?}");
        assert!(matches!(err, MacieError::Throttled { .. }) && err.is_expired_credentials());
        let err = job_ids(&client).await.unwrap_err();
        assert_eq!(err.code(), "ExpiredTokenException", "{err:?}");
        assert!(err.is_expired_credentials());
        assert_eq!(creds.assume_role_calls(), 1, "the local clock says they are fresh");

        creds.invalidate();
        let (who, jobs) = tokio::join!(
            caller_identity(&base, Some(creds.clone()), sts.clone(), "us-east-1"),
            job_ids(&client)
        );
        assert_eq!(who.unwrap().account, "111122223333");
        assert_eq!(jobs.unwrap(), vec!["prod1"]);
        assert_eq!(job_ids(&client).await.unwrap(), vec!["prod1"]);
        assert_eq!(creds.assume_role_calls(), 2);
        assert_eq!(requests(&emu, "AssumeRole"), 2);
    }

    #[tokio::test]
    async fn credentials_near_expiry_by_the_sdk_clock_are_refreshed_before_use() {
        let emu = emulator().await;
        let clock = TestClock::default();
        // Both clocks move together here: AWS and the SDK agree on the time.
        let advance = |by: Duration| {
            clock.advance(by);
            emu.state.lock().advance_clock(by);
        };
        let base = base(&clock);
        let creds = SessionCredentials::new(&base, role(Some(EXTERNAL_ID)), Some(emu.url.clone()));
        let first = creds.credentials().await.unwrap();

        advance(Duration::from_secs(54 * 60));
        assert_eq!(
            creds.credentials().await.unwrap().access_key_id(),
            first.access_key_id()
        );
        assert_eq!(creds.assume_role_calls(), 1);

        // Less than 5 minutes left (1 hour sessions): a new AssumeRole, once.
        advance(Duration::from_secs(61));
        let second = creds.credentials().await.unwrap();
        assert_ne!(second.access_key_id(), first.access_key_id());
        assert_eq!(
            creds.credentials().await.unwrap().access_key_id(),
            second.access_key_id()
        );
        assert_eq!(creds.assume_role_calls(), 2);
        assert_eq!(requests(&emu, "AssumeRole"), 2);

        // STS failing while the current credentials are due but not expired (4 minutes left):
        // they are kept, and the refresh is tried again 30 seconds later, not on every call.
        advance(Duration::from_secs(56 * 60));
        set_faults(
            &emu,
            serde_json::json!({"operations": {"AssumeRole": {"errorRate": 1.0}}}),
        );
        for _ in 0..3 {
            assert_eq!(
                creds.credentials().await.unwrap().access_key_id(),
                second.access_key_id()
            );
        }
        assert_eq!(creds.assume_role_calls(), 3);
        advance(RETRY_REFRESH_AFTER);
        assert_eq!(
            creds.credentials().await.unwrap().access_key_id(),
            second.access_key_id()
        );
        assert_eq!(creds.assume_role_calls(), 4);
        // Past their expiration, the error.
        advance(Duration::from_secs(5 * 60));
        let err = creds.credentials().await.unwrap_err();
        assert!(matches!(err, MacieError::Uncertain { .. }), "{err:?}");
        assert_eq!(creds.assume_role_calls(), 5);

        set_faults(&emu, serde_json::json!({}));
        let third = creds.credentials().await.unwrap();
        assert_ne!(third.access_key_id(), second.access_key_id());
        assert_eq!(creds.assume_role_calls(), 6);
    }
}
