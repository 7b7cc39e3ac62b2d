//! Who may read `/metrics` with `--metrics-secure`: the caller's bearer token is authenticated
//! by the API server (a TokenReview), and the user it names must be allowed to `get` the
//! non-resource URL `/metrics` (a SubjectAccessReview), as for the API server's own /metrics.
//! 401 without a token the API server accepts, 403 without the permission, 503 when a review
//! cannot be made. Decisions are cached briefly per token, so that a scrape every 15 s does not
//! cost two API calls each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};

/// The URL a scraper must be allowed to `get` (the only one the metrics server serves).
pub const METRICS_PATH: &str = "/metrics";
/// The verb checked on `METRICS_PATH`.
pub const METRICS_VERB: &str = "get";
/// How long an allowed token is let through without new reviews.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused (403) token is refused without new reviews: short, so that a new
/// binding takes effect by the next scrape or two.
pub const FORBIDDEN_TTL: Duration = Duration::from_secs(10);
/// Most tokens whose decision is remembered.
pub const CACHE_CAPACITY: usize = 256;
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

/// How long a verdict is remembered for its token (None: not at all; a token the API server
/// did not accept, or a review that failed, is asked about again on the next request).
pub fn cache_ttl(verdict: &Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Allowed { .. } => Some(ALLOWED_TTL),
        Verdict::Forbidden { .. } => Some(FORBIDDEN_TTL),
        Verdict::Unauthenticated(_) | Verdict::Unavailable(_) => None,
    }
}

/// SHA-256 of a token: the cache keeps no token itself.
type TokenKey = [u8; 32];

fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Verdicts by token, each until its expiry, at most `capacity` of them: when full, expired
/// entries go first, then the one closest to expiry.
#[derive(Debug)]
pub struct DecisionCache {
    entries: HashMap<TokenKey, (Verdict, Instant)>,
    capacity: usize,
}

impl DecisionCache {
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The remembered verdict for `token`, if it has not expired at `now`.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Verdict> {
        let key = token_key(token);
        match self.entries.get(&key) {
            Some((v, until)) if now < *until => Some(v.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers `verdict` for `token` from `now` for `cache_ttl(verdict)` (or not at all).
    pub fn put(&mut self, token: &str, verdict: &Verdict, now: Instant) {
        let Some(ttl) = cache_ttl(verdict) else {
            return;
        };
        let key = token_key(token);
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
        self.entries.insert(key, (verdict.clone(), now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

/// Decides requests: the cached verdict of their token, or the two reviews.
pub struct Authorizer<R> {
    reviews: R,
    cache: Mutex<DecisionCache>,
}

impl<R: Reviews> Authorizer<R> {
    pub fn new(reviews: R) -> Authorizer<R> {
        Authorizer {
            reviews,
            cache: Mutex::new(DecisionCache::new(CACHE_CAPACITY)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict on a request with this `Authorization` header, at `now`.
    pub async fn verdict(&self, authorization: Option<&str>, now: Instant) -> Verdict {
        let Some(token) = bearer_token(authorization) else {
            return Verdict::Unauthenticated("no bearer token".into());
        };
        if let Some(v) = self.cache().get(token, now) {
            return v;
        }
        let verdict = self.review(token).await;
        self.cache().put(token, &verdict, now);
        verdict
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
                None,
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
        let allowed = Verdict::Allowed { user: "a".into() };
        let forbidden = Verdict::Forbidden {
            user: "b".into(),
            reason: String::new(),
        };
        let mut c = DecisionCache::new(2);
        c.put("t1", &allowed, t);
        c.put("t2", &forbidden, t);
        c.put("t3", &Verdict::Unauthenticated("x".into()), t);
        c.put("t4", &Verdict::Unavailable("x".into()), t);
        assert_eq!(c.len(), 2, "401 and 503 are not remembered");
        assert_eq!(c.get("t1", t + s(59)), Some(allowed.clone()));
        assert_eq!(c.get("t2", t + s(9)), Some(forbidden.clone()));
        assert_eq!(c.get("t2", t + s(10)), None, "forbidden expires after 10 s");
        assert_eq!(c.len(), 1, "an expired entry is dropped when read");
        assert_eq!(c.get("t1", t + s(60)), None, "allowed expires after 60 s");

        // Full: an expired entry makes room first, then the one closest to expiry.
        let mut c = DecisionCache::new(2);
        c.put("old", &forbidden, t); // until t+10
        c.put("long", &allowed, t); // until t+60
        c.put("new", &allowed, t + s(11)); // "old" has expired: it goes
        assert_eq!(
            (c.get("long", t + s(11)), c.get("new", t + s(11))),
            (Some(allowed.clone()), Some(allowed.clone()))
        );
        c.put("newest", &allowed, t + s(12)); // none expired: "long" (until t+60) goes
        assert_eq!(c.get("long", t + s(12)), None);
        assert_eq!(c.get("new", t + s(12)), Some(allowed.clone()));
        assert_eq!(c.get("newest", t + s(12)), Some(allowed.clone()));
        // Replacing a token's verdict never evicts another.
        c.put("new", &forbidden, t + s(13));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("new", t + s(13)), Some(forbidden));
    }

    /// Answers reviews from a table of token -> (user, allowed), counting the calls; a token
    /// `down` fails the TokenReview call as an unreachable API server would.
    #[derive(Default)]
    struct FakeReviews {
        users: HashMap<String, (String, bool)>,
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
    }

    impl Reviews for Arc<FakeReviews> {
        async fn token_review(&self, review: TokenReview) -> Result<TokenReview, String> {
            self.token_reviews.fetch_add(1, Ordering::SeqCst);
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
