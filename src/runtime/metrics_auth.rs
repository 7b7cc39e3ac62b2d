//! Who may read `/metrics` with `--metrics-secure`: the caller's bearer token is authenticated
//! by the API server (a TokenReview), and the user it names must be allowed to `get` the
//! non-resource URL `/metrics` (a SubjectAccessReview), as for the API server's own /metrics.
//! 401 without a token the API server accepts, 403 without the permission, 503 when a review
//! cannot be made. Decisions are cached briefly per token, so that a scrape every 15 s does not
//! cost two API calls each time, and a token the API server refused is refused again without
//! asking for a while, so that a flood of requests with a bogus token does not become a flood
//! of TokenReviews. Requests with a token whose review is under way wait for that review
//! instead of making their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use tokio::sync::watch;

/// The URL a scraper must be allowed to `get` (the only one the metrics server serves).
pub const METRICS_PATH: &str = "/metrics";
/// The verb checked on `METRICS_PATH`.
pub const METRICS_VERB: &str = "get";
/// How long an allowed token is let through without new reviews.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused (403) token is refused without new reviews: short, so that a new
/// binding takes effect by the next scrape or two.
pub const FORBIDDEN_TTL: Duration = Duration::from_secs(10);
/// How long a token the API server did not authenticate (401) is refused without a new
/// TokenReview: however many requests carry it, one review per token per this interval.
pub const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(10);
/// Most tokens of authenticated callers (allowed or forbidden) whose verdict is remembered.
pub const CACHE_CAPACITY: usize = 256;
/// Most unauthenticated tokens remembered, apart from the others so that a flood of bogus
/// tokens never pushes a scraper's verdict out; when full, the oldest is forgotten.
pub const UNAUTHENTICATED_CAPACITY: usize = 4096;
/// Longest time one review call may take; past it the scrape is answered 503.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request for `/metrics` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated as `user`, who may get /metrics.
    Allowed { user: String },
    /// No bearer token, or one the API server did not authenticate (why).
    Unauthenticated(String),
    /// Authenticated as `user`, who may not get /metrics (the authorizer's reason, if any).
    Forbidden { user: String, reason: String },
    /// A review could not be made: the API server is unreachable, timed out, or refused the
    /// review itself (e.g. the operator lacks `create` on tokenreviews).
    Unavailable(String),
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive);
/// None for no header, another scheme or an empty token.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The TokenReview asking who `token` is (for the API server's own audiences).
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: None,
        },
        ..Default::default()
    }
}

/// The user a TokenReview's status names, or why the token is not accepted.
pub fn authenticated(status: Option<&TokenReviewStatus>) -> Result<UserInfo, String> {
    let Some(status) = status else {
        return Err("the TokenReview has no status".into());
    };
    if status.authenticated != Some(true) {
        return Err(match status.error.as_deref() {
            Some(e) if !e.is_empty() => format!("token not authenticated: {e}"),
            _ => "token not authenticated".into(),
        });
    }
    match &status.user {
        Some(user) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => Ok(user.clone()),
        _ => Err("the TokenReview names no user".into()),
    }
}

/// The SubjectAccessReview asking whether `user` (name, uid, groups and extra as the
/// TokenReview returned them) may get `METRICS_PATH`.
pub fn access_review(user: &UserInfo) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(METRICS_PATH.into()),
                verb: Some(METRICS_VERB.into()),
            }),
            resource_attributes: None,
        },
        ..Default::default()
    }
}

/// The verdict of a SubjectAccessReview's status for `user`.
pub fn authorized(user: &UserInfo, status: Option<&SubjectAccessReviewStatus>) -> Verdict {
    let user = user.username.clone().unwrap_or_default();
    match status {
        Some(s) if s.allowed && s.denied != Some(true) => Verdict::Allowed { user },
        Some(s) => Verdict::Forbidden {
            user,
            reason: [s.reason.as_deref(), s.evaluation_error.as_deref()]
                .into_iter()
                .flatten()
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        },
        None => Verdict::Unavailable("the SubjectAccessReview has no status".into()),
    }
}

/// The HTTP answer to a refused request (None: allowed, serve the metrics). The body names
/// the user but never why a token was refused (that is logged).
pub fn refusal(verdict: &Verdict) -> Option<(StatusCode, String)> {
    match verdict {
        Verdict::Allowed { .. } => None,
        Verdict::Unauthenticated(_) => Some((StatusCode::UNAUTHORIZED, "Unauthorized\n".into())),
        Verdict::Forbidden { user, .. } => Some((
            StatusCode::FORBIDDEN,
            format!("Forbidden: {user} may not {METRICS_VERB} {METRICS_PATH}\n"),
        )),
        Verdict::Unavailable(_) => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot check the request's token with the Kubernetes API server\n".into(),
        )),
    }
}

/// How long a verdict is remembered for its token (None: not at all; a review that failed is
/// made again on the next request).
pub fn cache_ttl(verdict: &Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Allowed { .. } => Some(ALLOWED_TTL),
        Verdict::Forbidden { .. } => Some(FORBIDDEN_TTL),
        Verdict::Unauthenticated(_) => Some(UNAUTHENTICATED_TTL),
        Verdict::Unavailable(_) => None,
    }
}

/// SHA-256 of a token: the cache keeps no token itself.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Verdicts by token hash, each until its expiry, at most `capacity` of them: when full,
/// expired entries go first, then the one closest to expiry (with one lifetime for all, the
/// oldest).
#[derive(Debug)]
struct Tier {
    entries: HashMap<TokenKey, (Verdict, Instant)>,
    capacity: usize,
}

impl Tier {
    fn new(capacity: usize) -> Tier {
        Tier {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, key: &TokenKey, now: Instant) -> Option<Verdict> {
        match self.entries.get(key) {
            Some((v, until)) if now < *until => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: TokenKey, verdict: &Verdict, until: Instant, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k)
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (verdict.clone(), until));
    }
}

/// Verdicts by token, each for `cache_ttl` of it: those of authenticated callers (allowed,
/// forbidden) and those of tokens the API server did not authenticate in two tiers of their
/// own capacity, so that bogus tokens only ever displace bogus tokens.
#[derive(Debug)]
pub struct DecisionCache {
    authenticated: Tier,
    unauthenticated: Tier,
}

impl DecisionCache {
    /// At most `capacity` verdicts of authenticated callers and `unauthenticated_capacity`
    /// unauthenticated tokens.
    pub fn new(capacity: usize, unauthenticated_capacity: usize) -> DecisionCache {
        DecisionCache {
            authenticated: Tier::new(capacity),
            unauthenticated: Tier::new(unauthenticated_capacity),
        }
    }

    /// The remembered verdict for the token of `key`, if it has not expired at `now`.
    pub fn get(&mut self, key: &TokenKey, now: Instant) -> Option<Verdict> {
        match self.authenticated.get(key, now) {
            Some(v) => Some(v),
            None => self.unauthenticated.get(key, now),
        }
    }

    /// Remembers `verdict` for the token of `key` from `now` for `cache_ttl(verdict)` (or not
    /// at all), replacing what was remembered for it.
    pub fn put(&mut self, key: &TokenKey, verdict: &Verdict, now: Instant) {
        let (tier, other) = match verdict {
            Verdict::Unauthenticated(_) => (&mut self.unauthenticated, &mut self.authenticated),
            _ => (&mut self.authenticated, &mut self.unauthenticated),
        };
        other.entries.remove(key);
        match cache_ttl(verdict) {
            Some(ttl) => tier.put(*key, verdict, now + ttl, now),
            None => {
                tier.entries.remove(key);
            }
        }
    }

    /// Entries held (expired ones included until they are read or pushed out).
    pub fn len(&self) -> usize {
        self.authenticated.entries.len() + self.unauthenticated.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The two review calls (the API server in production, a fake in tests). An error is why the
/// call itself failed, not a refusal.
pub trait Reviews: Send + Sync + 'static {
    fn token_review(&self, review: TokenReview) -> impl Future<Output = Result<TokenReview, String>> + Send;
    fn access_review(
        &self,
        review: SubjectAccessReview,
    ) -> impl Future<Output = Result<SubjectAccessReview, String>> + Send;
}

/// The reviews made with the operator's own Kubernetes client (it needs `create` on
/// tokenreviews and subjectaccessreviews), each bounded by `REVIEW_TIMEOUT`.
#[derive(Clone)]
pub struct KubeReviews(pub kube::Client);

async fn create<K>(client: &kube::Client, obj: &K) -> Result<K, String>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api: kube::Api<K> = kube::Api::all(client.clone());
    match tokio::time::timeout(REVIEW_TIMEOUT, api.create(&Default::default(), obj)).await {
        Ok(Ok(created)) => Ok(created),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REVIEW_TIMEOUT:?}")),
    }
}

impl Reviews for KubeReviews {
    async fn token_review(&self, review: TokenReview) -> Result<TokenReview, String> {
        create(&self.0, &review).await
    }

    async fn access_review(&self, review: SubjectAccessReview) -> Result<SubjectAccessReview, String> {
        create(&self.0, &review).await
    }
}

/// Decides requests: the cached verdict of their token, the verdict of the review of that
/// token already under way, or the two reviews.
pub struct Authorizer<R> {
    reviews: R,
    state: Mutex<State>,
}

struct State {
    cache: DecisionCache,
    /// Tokens being reviewed: the verdict is sent to the requests that wait for it.
    reviewing: HashMap<TokenKey, watch::Sender<Option<Verdict>>>,
}

/// Ends a review's entry in `reviewing` if the request making it goes away (its connection
/// closed) before the verdict: the requests waiting for it then review the token themselves.
struct Reviewing<'a> {
    state: &'a Mutex<State>,
    key: TokenKey,
    finished: bool,
}

impl Drop for Reviewing<'_> {
    fn drop(&mut self) {
        if !self.finished {
            lock(self.state).reviewing.remove(&self.key);
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl<R: Reviews> Authorizer<R> {
    pub fn new(reviews: R) -> Authorizer<R> {
        Authorizer {
            reviews,
            state: Mutex::new(State {
                cache: DecisionCache::new(CACHE_CAPACITY, UNAUTHENTICATED_CAPACITY),
                reviewing: HashMap::new(),
            }),
        }
    }

    /// The verdict on a request with this `Authorization` header, at `now`.
    pub async fn verdict(&self, authorization: Option<&str>, now: Instant) -> Verdict {
        let Some(token) = bearer_token(authorization) else {
            return Verdict::Unauthenticated("no bearer token".into());
        };
        let key = token_key(token);
        loop {
            // What to do, decided under the lock (released before any await).
            let waiting = {
                let mut state = lock(&self.state);
                if let Some(v) = state.cache.get(&key, now) {
                    return v;
                }
                let waiting = state.reviewing.get(&key).map(|review| review.subscribe());
                if waiting.is_none() {
                    state.reviewing.insert(key, watch::Sender::new(None));
                }
                waiting
            };
            let Some(mut waiting) = waiting else {
                return self.review_once(token, key, now).await;
            };
            if let Ok(v) = waiting.wait_for(Option::is_some).await
                && let Some(v) = v.as_ref()
            {
                return v.clone();
            }
            // The request that was reviewing the token went away first: start over.
        }
    }

    /// Reviews `token` for the requests waiting in `reviewing`, remembers the verdict and
    /// hands it to them.
    async fn review_once(&self, token: &str, key: TokenKey, now: Instant) -> Verdict {
        let mut entry = Reviewing {
            state: &self.state,
            key,
            finished: false,
        };
        let verdict = self.review(token).await;
        let mut state = lock(&self.state);
        state.cache.put(&key, &verdict, now);
        if let Some(waiting) = state.reviewing.remove(&key) {
            waiting.send_replace(Some(verdict.clone()));
        }
        entry.finished = true;
        verdict
    }

    /// How many requests wait for the review of `token` under way (None: none is).
    #[cfg(test)]
    fn waiting_for(&self, token: &str) -> Option<usize> {
        lock(&self.state)
            .reviewing
            .get(&token_key(token))
            .map(|r| r.receiver_count())
    }

    async fn review(&self, token: &str) -> Verdict {
        let tr = match self.reviews.token_review(token_review(token)).await {
            Ok(tr) => tr,
            Err(e) => return Verdict::Unavailable(format!("TokenReview: {e}")),
        };
        let user = match authenticated(tr.status.as_ref()) {
            Ok(user) => user,
            Err(why) => return Verdict::Unauthenticated(why),
        };
        match self.reviews.access_review(access_review(&user)).await {
            Ok(sar) => authorized(&user, sar.status.as_ref()),
            Err(e) => Verdict::Unavailable(format!("SubjectAccessReview: {e}")),
        }
    }
}

/// The axum middleware in front of /metrics: passes allowed requests on, answers the others.
pub async fn require<R: Reviews>(
    axum::extract::State(authorizer): axum::extract::State<std::sync::Arc<Authorizer<R>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let verdict = authorizer.verdict(header, Instant::now()).await;
    let Some((status, body)) = refusal(&verdict) else {
        return next.run(request).await;
    };
    match &verdict {
        Verdict::Unavailable(why) => tracing::warn!(error = %why, "metrics request refused: cannot review its token"),
        Verdict::Forbidden { user, reason } => tracing::info!(%user, %reason, "metrics request forbidden"),
        Verdict::Unauthenticated(why) => tracing::debug!(%why, "metrics request unauthenticated"),
        Verdict::Allowed { .. } => {}
    }
    let mut response = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn bearer_token_table() {
        // (case, header, token)
        let table: [(&str, Option<&str>, Option<&str>); 8] = [
            ("no header", None, None),
            ("bearer", Some("Bearer abc.def"), Some("abc.def")),
            ("scheme in any case", Some("bearer abc"), Some("abc")),
            ("surrounding blanks", Some("  Bearer   abc  "), Some("abc")),
            ("another scheme", Some("Basic dXNlcjpwYXNz"), None),
            ("empty token", Some("Bearer "), None),
            ("scheme only", Some("Bearer"), None),
            ("empty header", Some(""), None),
        ];
        for (case, header, want) in table {
            assert_eq!(bearer_token(header), want, "{case}");
        }
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            uid: Some("uid-1".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            extra: Some(
                [(
                    "authentication.kubernetes.io/pod-name".to_string(),
                    vec!["p".to_string()],
                )]
                .into(),
            ),
        }
    }

    #[test]
    fn authenticated_table() {
        let status = |authenticated: Option<bool>, error: Option<&str>, user: Option<UserInfo>| TokenReviewStatus {
            authenticated,
            error: error.map(String::from),
            user,
            audiences: None,
        };
        // (case, status, Ok(user name) or a substring of the error)
        let table: Vec<(&str, Option<TokenReviewStatus>, Result<&str, &str>)> = vec![
            (
                "authenticated",
                Some(status(Some(true), None, Some(user("system:serviceaccount:m:p")))),
                Ok("system:serviceaccount:m:p"),
            ),
            (
                "not authenticated, with the API server's reason",
                Some(status(Some(false), Some("token has expired"), None)),
                Err("token not authenticated: token has expired"),
            ),
            (
                "authenticated unset",
                Some(status(None, None, Some(user("u")))),
                Err("token not authenticated"),
            ),
            (
                "authenticated without a user",
                Some(status(Some(true), None, None)),
                Err("names no user"),
            ),
            (
                "authenticated with an empty user name",
                Some(status(Some(true), None, Some(user("")))),
                Err("names no user"),
            ),
            ("no status", None, Err("no status")),
        ];
        for (case, status, want) in table {
            let got = authenticated(status.as_ref());
            match want {
                Ok(name) => assert_eq!(got.map(|u| u.username.unwrap()), Ok(name.to_string()), "{case}"),
                Err(needle) => {
                    let err = got.expect_err(case);
                    assert!(err.contains(needle), "{case}: {err}");
                }
            }
        }
    }

    #[test]
    fn access_review_asks_for_get_on_metrics_as_the_whole_user() {
        let u = user("system:serviceaccount:monitoring:prometheus");
        let spec = access_review(&u).spec;
        assert_eq!(spec.user, u.username);
        assert_eq!(spec.uid, u.uid);
        assert_eq!(spec.groups, u.groups);
        assert_eq!(spec.extra, u.extra);
        assert_eq!(
            spec.non_resource_attributes,
            Some(NonResourceAttributes {
                path: Some("/metrics".into()),
                verb: Some("get".into())
            })
        );
        assert_eq!(spec.resource_attributes, None);
    }

    #[test]
    fn authorized_table() {
        let u = user("alice");
        let status =
            |allowed: bool, denied: Option<bool>, reason: Option<&str>, err: Option<&str>| SubjectAccessReviewStatus {
                allowed,
                denied,
                reason: reason.map(String::from),
                evaluation_error: err.map(String::from),
            };
        let forbidden = |reason: &str| Verdict::Forbidden {
            user: "alice".into(),
            reason: reason.into(),
        };
        // (case, status, verdict)
        let table: Vec<(&str, Option<SubjectAccessReviewStatus>, Verdict)> = vec![
            (
                "allowed",
                Some(status(true, None, Some("RBAC: allowed by ClusterRoleBinding"), None)),
                Verdict::Allowed { user: "alice".into() },
            ),
            ("no opinion", Some(status(false, None, None, None)), forbidden("")),
            (
                "denied, with a reason and an evaluation error",
                Some(status(false, Some(true), Some("no rule"), Some("webhook down"))),
                forbidden("no rule; webhook down"),
            ),
            (
                "allowed and denied at once counts as denied",
                Some(status(true, Some(true), None, None)),
                forbidden(""),
            ),
            (
                "no status",
                None,
                Verdict::Unavailable("the SubjectAccessReview has no status".into()),
            ),
        ];
        for (case, status, want) in table {
            assert_eq!(authorized(&u, status.as_ref()), want, "{case}");
        }
    }

    #[test]
    fn refusal_and_cache_ttl_table() {
        // (verdict, HTTP status (None: served), remembered for)
        let table: [(Verdict, Option<StatusCode>, Option<Duration>); 4] = [
            (Verdict::Allowed { user: "a".into() }, None, Some(ALLOWED_TTL)),
            (
                Verdict::Unauthenticated("expired".into()),
                Some(StatusCode::UNAUTHORIZED),
                Some(UNAUTHENTICATED_TTL),
            ),
            (
                Verdict::Forbidden {
                    user: "a".into(),
                    reason: String::new(),
                },
                Some(StatusCode::FORBIDDEN),
                Some(FORBIDDEN_TTL),
            ),
            (
                Verdict::Unavailable("connection refused".into()),
                Some(StatusCode::SERVICE_UNAVAILABLE),
                None,
            ),
        ];
        for (verdict, status, ttl) in table {
            assert_eq!(refusal(&verdict).map(|(s, _)| s), status, "{verdict:?}");
            assert_eq!(cache_ttl(&verdict), ttl, "{verdict:?}");
        }
        // The 401 body does not say why (a token's fate is for the log).
        let (_, body) = refusal(&Verdict::Unauthenticated("token has expired".into())).unwrap();
        assert!(!body.contains("expired"), "{body}");
    }

    #[test]
    fn the_cache_keeps_verdicts_until_their_expiry_and_within_its_capacity() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let k = token_key;
        let allowed = Verdict::Allowed { user: "a".into() };
        let forbidden = Verdict::Forbidden {
            user: "b".into(),
            reason: String::new(),
        };
        let refused = Verdict::Unauthenticated("token not authenticated".into());
        let mut c = DecisionCache::new(2, 2);
        c.put(&k("t1"), &allowed, t);
        c.put(&k("t2"), &forbidden, t);
        c.put(&k("t3"), &refused, t);
        c.put(&k("t4"), &Verdict::Unavailable("x".into()), t);
        assert_eq!(c.len(), 3, "503 is not remembered");
        assert_eq!(c.get(&k("t4"), t), None);
        assert_eq!(c.get(&k("t1"), t + s(59)), Some(allowed.clone()));
        assert_eq!(c.get(&k("t2"), t + s(9)), Some(forbidden.clone()));
        assert_eq!(c.get(&k("t3"), t + s(9)), Some(refused.clone()));
        assert_eq!(c.get(&k("t2"), t + s(10)), None, "forbidden expires after 10 s");
        assert_eq!(c.get(&k("t3"), t + s(10)), None, "unauthenticated expires after 10 s");
        assert_eq!(c.len(), 1, "an expired entry is dropped when read");
        assert_eq!(c.get(&k("t1"), t + s(60)), None, "allowed expires after 60 s");

        // Full: an expired entry makes room first, then the one closest to expiry.
        let mut c = DecisionCache::new(2, 2);
        c.put(&k("old"), &forbidden, t); // until t+10
        c.put(&k("long"), &allowed, t); // until t+60
        c.put(&k("new"), &allowed, t + s(11)); // "old" has expired: it goes
        assert_eq!(
            (c.get(&k("long"), t + s(11)), c.get(&k("new"), t + s(11))),
            (Some(allowed.clone()), Some(allowed.clone()))
        );
        c.put(&k("newest"), &allowed, t + s(12)); // none expired: "long" (until t+60) goes
        assert_eq!(c.get(&k("long"), t + s(12)), None);
        assert_eq!(c.get(&k("new"), t + s(12)), Some(allowed.clone()));
        assert_eq!(c.get(&k("newest"), t + s(12)), Some(allowed.clone()));
        // Replacing a token's verdict never evicts another.
        c.put(&k("new"), &forbidden, t + s(13));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&k("new"), t + s(13)), Some(forbidden));
    }

    #[test]
    fn unauthenticated_tokens_are_remembered_apart_and_the_oldest_is_forgotten() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let k = token_key;
        let allowed = Verdict::Allowed { user: "a".into() };
        let refused = Verdict::Unauthenticated("token not authenticated".into());
        let mut c = DecisionCache::new(1, 3);
        c.put(&k("scraper"), &allowed, t);
        // A flood of bogus tokens, each newer than the last.
        for i in 0..10u64 {
            c.put(&k(&format!("bogus-{i}")), &refused, t + ms(i));
        }
        assert_eq!(c.len(), 4, "one allowed and the three newest bogus tokens");
        assert_eq!(
            c.get(&k("scraper"), t + ms(20)),
            Some(allowed.clone()),
            "bogus tokens never push out an authenticated caller's verdict"
        );
        for i in 0..7 {
            assert_eq!(
                c.get(&k(&format!("bogus-{i}")), t + ms(20)),
                None,
                "bogus-{i} is forgotten"
            );
        }
        for i in 7..10 {
            assert_eq!(
                c.get(&k(&format!("bogus-{i}")), t + ms(20)),
                Some(refused.clone()),
                "bogus-{i} is remembered"
            );
        }
        // A token refused, then authenticated (a verdict replaces the other tier's), and back.
        c.put(&k("bogus-9"), &allowed, t + ms(30));
        assert_eq!(c.get(&k("bogus-9"), t + ms(30)), Some(allowed.clone()));
        assert_eq!(c.len(), 3, "one entry per token");
        c.put(&k("bogus-9"), &refused, t + ms(40));
        assert_eq!(c.get(&k("bogus-9"), t + ms(40)), Some(refused));
        assert_eq!(
            c.get(&k("scraper"), t + ms(40)),
            None,
            "the authenticated tier held one"
        );
    }

    /// Answers reviews from a table of token -> (user, allowed), counting the calls; a token
    /// `down` fails the TokenReview call as an unreachable API server would; the review of a
    /// token starting with `held-` answers only once `release` is notified.
    #[derive(Default)]
    struct FakeReviews {
        users: HashMap<String, (String, bool)>,
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
        release: tokio::sync::Notify,
    }

    impl Reviews for Arc<FakeReviews> {
        async fn token_review(&self, review: TokenReview) -> Result<TokenReview, String> {
            self.token_reviews.fetch_add(1, Ordering::SeqCst);
            if review.spec.token.starts_with("held-") {
                self.release.notified().await;
            }
            if review.spec.token == "down" {
                return Err("connection refused".into());
            }
            let known = self.users.get(&review.spec.token);
            Ok(TokenReview {
                status: Some(TokenReviewStatus {
                    authenticated: Some(known.is_some()),
                    user: known.map(|(name, _)| user(name)),
                    ..Default::default()
                }),
                ..review
            })
        }

        async fn access_review(&self, review: SubjectAccessReview) -> Result<SubjectAccessReview, String> {
            self.access_reviews.fetch_add(1, Ordering::SeqCst);
            let name = review.spec.user.clone().unwrap_or_default();
            let ok = review.spec.non_resource_attributes
                == Some(NonResourceAttributes {
                    path: Some(METRICS_PATH.into()),
                    verb: Some(METRICS_VERB.into()),
                });
            let allowed = ok && self.users.values().any(|(n, a)| *n == name && *a);
            Ok(SubjectAccessReview {
                status: Some(SubjectAccessReviewStatus {
                    allowed,
                    ..Default::default()
                }),
                ..review
            })
        }
    }

    fn fake() -> Arc<FakeReviews> {
        Arc::new(FakeReviews {
            users: [
                ("reader-token".to_string(), ("prometheus".to_string(), true)),
                ("other-token".to_string(), ("stranger".to_string(), false)),
            ]
            .into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn the_authorizer_reviews_once_per_token_until_the_verdict_expires() {
        let reviews = fake();
        let a = Authorizer::new(reviews.clone());
        let t = Instant::now();
        let calls = || {
            (
                reviews.token_reviews.load(Ordering::SeqCst),
                reviews.access_reviews.load(Ordering::SeqCst),
            )
        };
        let allowed = Verdict::Allowed {
            user: "prometheus".into(),
        };
        assert_eq!(a.verdict(Some("Bearer reader-token"), t).await, allowed);
        assert_eq!(calls(), (1, 1));
        // Scrapes within a minute: no new review.
        for secs in [15, 30, 59] {
            assert_eq!(
                a.verdict(Some("Bearer reader-token"), t + Duration::from_secs(secs))
                    .await,
                allowed
            );
        }
        assert_eq!(calls(), (1, 1));
        // After a minute the token is reviewed again.
        assert_eq!(
            a.verdict(Some("Bearer reader-token"), t + Duration::from_secs(60))
                .await,
            allowed
        );
        assert_eq!(calls(), (2, 2));
    }

    #[tokio::test]
    async fn a_bogus_token_costs_one_token_review_per_interval() {
        let reviews = fake();
        let a = Authorizer::new(reviews.clone());
        let t = Instant::now();
        let token_reviews = || reviews.token_reviews.load(Ordering::SeqCst);
        let ms = Duration::from_millis;
        // 50 requests over 5 s: one review, every one refused.
        for i in 0..50 {
            let v = a.verdict(Some("Bearer forged"), t + ms(i * 100)).await;
            assert!(matches!(v, Verdict::Unauthenticated(_)), "request {i}: {v:?}");
        }
        assert_eq!(token_reviews(), 1);
        // Once the interval is over, the token is reviewed again (it might have become valid).
        let v = a.verdict(Some("Bearer forged"), t + UNAUTHENTICATED_TTL).await;
        assert!(matches!(v, Verdict::Unauthenticated(_)), "{v:?}");
        assert_eq!(token_reviews(), 2);
        // Another bogus token is reviewed on its own.
        a.verdict(Some("Bearer forged-too"), t + UNAUTHENTICATED_TTL).await;
        assert_eq!(token_reviews(), 3);
        // A review that could not be made is not remembered: the next request tries again.
        a.verdict(Some("Bearer down"), t).await;
        a.verdict(Some("Bearer down"), t).await;
        assert_eq!(token_reviews(), 5);
        assert_eq!(reviews.access_reviews.load(Ordering::SeqCst), 0);
    }

    /// Waits, yielding to the spawned requests, until `cond` holds; fails after 10,000 yields.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_token_wait_for_its_one_review() {
        let reviews = fake();
        let a = Arc::new(Authorizer::new(reviews.clone()));
        let t = Instant::now();
        let requests: Vec<_> = (0..10)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.verdict(Some("Bearer held-forged"), t).await })
            })
            .collect();
        // One request reviews the token; the nine others wait for its verdict.
        until("nine requests waiting", || a.waiting_for("held-forged") == Some(9)).await;
        assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 1);
        reviews.release.notify_one();
        for r in requests {
            let v = r.await.unwrap();
            assert!(matches!(v, Verdict::Unauthenticated(_)), "{v:?}");
        }
        assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 1);
        assert_eq!(a.waiting_for("held-forged"), None, "nothing left under review");
    }

    #[tokio::test]
    async fn when_the_reviewing_request_goes_away_a_waiting_one_reviews_the_token() {
        let reviews = fake();
        let a = Arc::new(Authorizer::new(reviews.clone()));
        let t = Instant::now();
        let request = || {
            let a = a.clone();
            tokio::spawn(async move { a.verdict(Some("Bearer held-x"), t).await })
        };
        let first = request();
        until("the first request reviewing", || a.waiting_for("held-x") == Some(0)).await;
        let second = request();
        until("the second request waiting", || a.waiting_for("held-x") == Some(1)).await;
        // The first request's connection closes mid-review.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // The second starts over and reviews the token itself.
        until("a second review", || reviews.token_reviews.load(Ordering::SeqCst) == 2).await;
        reviews.release.notify_one();
        let v = second.await.unwrap();
        assert!(matches!(v, Verdict::Unauthenticated(_)), "{v:?}");
        assert_eq!(a.waiting_for("held-x"), None);
    }

    #[tokio::test]
    async fn the_authorizer_table() {
        // (case, header, verdict kind, TokenReview calls, SubjectAccessReview calls)
        let table: [(&str, Option<&str>, StatusCode, usize, usize); 5] = [
            ("no header: no review", None, StatusCode::UNAUTHORIZED, 0, 0),
            (
                "not a bearer token: no review",
                Some("Basic eDp5"),
                StatusCode::UNAUTHORIZED,
                0,
                0,
            ),
            ("unknown token", Some("Bearer forged"), StatusCode::UNAUTHORIZED, 1, 0),
            (
                "known, without the permission",
                Some("Bearer other-token"),
                StatusCode::FORBIDDEN,
                1,
                1,
            ),
            (
                "API server down",
                Some("Bearer down"),
                StatusCode::SERVICE_UNAVAILABLE,
                1,
                0,
            ),
        ];
        for (case, header, status, trs, sars) in table {
            let reviews = fake();
            let a = Authorizer::new(reviews.clone());
            let v = a.verdict(header, Instant::now()).await;
            assert_eq!(refusal(&v).map(|(s, _)| s), Some(status), "{case}: {v:?}");
            assert_eq!(
                (
                    reviews.token_reviews.load(Ordering::SeqCst),
                    reviews.access_reviews.load(Ordering::SeqCst)
                ),
                (trs, sars),
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn the_middleware_serves_the_allowed_and_answers_the_others() {
        use tower::ServiceExt as _;
        let a = Arc::new(Authorizer::new(fake()));
        let app = axum::Router::new()
            .route(METRICS_PATH, axum::routing::get(|| async { "the metrics" }))
            .layer(axum::middleware::from_fn_with_state(a, require::<Arc<FakeReviews>>));
        // (header, status, body substring)
        let table: [(Option<&str>, StatusCode, &str); 4] = [
            (None, StatusCode::UNAUTHORIZED, "Unauthorized"),
            (
                Some("Bearer other-token"),
                StatusCode::FORBIDDEN,
                "stranger may not get /metrics",
            ),
            (Some("Bearer down"), StatusCode::SERVICE_UNAVAILABLE, "cannot check"),
            (Some("Bearer reader-token"), StatusCode::OK, "the metrics"),
        ];
        for (header, status, needle) in table {
            let mut req = axum::http::Request::get(METRICS_PATH);
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let resp = app
                .clone()
                .oneshot(req.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{header:?}");
            let challenge = resp.headers().get("www-authenticate").cloned();
            assert_eq!(challenge.is_some(), status == StatusCode::UNAUTHORIZED, "{header:?}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains(needle), "{header:?}: {body}");
        }
    }
}
