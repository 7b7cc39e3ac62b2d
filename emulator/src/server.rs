//! HTTP layer: the Macie rest-json routes, STS (query protocol, `POST /`) and the admin API under
//! `/__admin`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{ApiError, DiscoveryStatus, JobStatus};
use crate::seed::SeedJob;
use crate::state::{Account, Caller, Emulator, Faults, Injected, Quotas, STS_OPERATIONS, Scope, Session, StsError};

/// Shared handle to the emulator state.
#[derive(Clone)]
pub struct Shared(pub Arc<Mutex<Emulator>>);

impl Shared {
    pub fn new(e: Emulator) -> Shared {
        Shared(Arc::new(Mutex::new(e)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Emulator> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", post(sts))
        .route("/jobs", post(create_job))
        .route("/jobs/list", post(list_jobs))
        .route("/jobs/{job_id}", get(describe_job).patch(update_job))
        .route(
            "/automated-discovery/accounts",
            get(list_accounts).patch(batch_update_accounts),
        )
        .route("/automated-discovery/configuration", get(get_configuration))
        .route("/__admin/state", get(admin_state))
        .route("/__admin/jobs", post(admin_put_job))
        .route("/__admin/jobs/{job_id}", axum::routing::delete(admin_delete_job))
        .route("/__admin/jobs/{job_id}/status", put(admin_job_status))
        .route(
            "/__admin/accounts/{account_id}",
            put(admin_put_account).delete(admin_delete_account),
        )
        .route("/__admin/clock", get(admin_clock))
        .route("/__admin/clock/advance", post(admin_advance))
        .route(
            "/__admin/faults",
            put(admin_put_faults).get(admin_get_faults).delete(admin_clear_faults),
        )
        .route("/__admin/macie", put(admin_macie))
        .route("/__admin/quotas", put(admin_put_quotas).get(admin_get_quotas))
        .route("/__admin/counters", get(admin_counters))
        .route("/__admin/calls", get(admin_calls))
        .route("/__admin/reset", post(admin_reset))
        .route("/__admin/healthz", get(|| async { "ok" }))
        .fallback(unknown_operation)
        .with_state(state)
}

/// Part `n` of the SigV4 credential scope (`Credential=AKID/date/region/service/aws4_request`).
fn credential_part(headers: &HeaderMap, n: usize) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|cred| cred.split(['/', ',']).nth(n))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The region a request was signed for (SigV4 credential scope), or the emulator default.
fn region_of(headers: &HeaderMap, default: &str) -> String {
    credential_part(headers, 2).unwrap_or(default).to_string()
}

/// The access key id that signed a request (SigV4 credential scope); `None` when unsigned.
fn access_key_of(headers: &HeaderMap) -> Option<&str> {
    credential_part(headers, 0)
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("00000000-0000-4000-8000-{:012x}", N.fetch_add(1, Ordering::Relaxed))
}

fn json_response(status: u16, body: &Value, error_type: Option<&str>) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&request_id()) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(t) = error_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert("x-amzn-errortype", t);
    }
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &json!({ "message": e.message }), Some(e.code.as_str()))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::validation(format!("The request body is not valid JSON: {e}")))
}

/// Runs one API operation: counting, fault injection, "Macie not enabled", then the handler.
/// `job_id` is the job named by the path of the operations on one job.
async fn call(
    shared: &Shared,
    op: &'static str,
    headers: &HeaderMap,
    job_id: Option<&str>,
    handler: impl FnOnce(&mut Emulator, &Scope) -> Result<Value, ApiError>,
) -> Response {
    let (latency, region) = {
        let e = shared.lock();
        (e.latency(op), region_of(headers, &e.default_region))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut e = shared.lock();
    let caller = e.caller(access_key_of(headers));
    if let Caller::Expired(_) = caller {
        // Authentication comes first: no fault is drawn and nothing is processed.
        e.count_request(op);
        e.count(op, Err("ExpiredTokenException"), false);
        drop(e);
        return json_response(
            403,
            &json!({ "message": "The security token included in the request is expired" }),
            Some("ExpiredTokenException"),
        );
    }
    let at = e.scope_of(&caller, &region);
    let result = match e.admit(op, &at.region, job_id) {
        Err((err, injected)) => {
            e.record(op, &at, job_id, &Err(&err), injected);
            Err(err)
        }
        Ok(()) => {
            let r = handler(&mut e, &at);
            e.record(op, &at, job_id, &r.as_ref().map(|_| ()), false);
            if r.is_ok() && e.take_lost_response(op) {
                // Processed: only the answer is lost.
                Err(ApiError::new(
                    crate::model::ErrorCode::InternalServerException,
                    "the response was lost (injected after processing)",
                ))
            } else {
                r
            }
        }
    };
    drop(e);
    tracing::debug!(
        op,
        account = at.account,
        region = at.region,
        ok = result.is_ok(),
        "request"
    );
    match result {
        Ok(v) => json_response(200, &v, None),
        Err(err) => error_response(&err),
    }
}

async fn create_job(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    call(&s, "CreateClassificationJob", &headers, None, |e, r| {
        e.create_job(r, parse_body(&body))
    })
    .await
}

async fn list_jobs(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    call(&s, "ListClassificationJobs", &headers, None, |e, r| {
        e.list_jobs(r, parse_body(&body)?)
    })
    .await
}

async fn describe_job(State(s): State<Shared>, headers: HeaderMap, Path(job_id): Path<String>) -> Response {
    call(&s, "DescribeClassificationJob", &headers, Some(&job_id), |e, r| {
        e.describe_job(r, &job_id)
    })
    .await
}

async fn update_job(State(s): State<Shared>, headers: HeaderMap, Path(job_id): Path<String>, body: Bytes) -> Response {
    call(&s, "UpdateClassificationJob", &headers, Some(&job_id), |e, r| {
        e.update_job(r, &job_id, parse_body(&body)?)
    })
    .await
}

async fn batch_update_accounts(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    call(&s, "BatchUpdateAutomatedDiscoveryAccounts", &headers, None, |e, r| {
        e.batch_update_accounts(r, parse_body(&body)?)
    })
    .await
}

async fn list_accounts(State(s): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let params = parse_query(q.as_deref().unwrap_or(""));
    let ids: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "accountIds")
        .map(|(_, v)| v.clone())
        .collect();
    let one = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    call(&s, "ListAutomatedDiscoveryAccounts", &headers, None, |e, r| {
        e.list_accounts(r, &ids, one("maxResults"), one("nextToken"))
    })
    .await
}

async fn get_configuration(State(s): State<Shared>, headers: HeaderMap) -> Response {
    call(&s, "GetAutomatedDiscoveryConfiguration", &headers, None, |e, r| {
        e.get_discovery_configuration(r)
    })
    .await
}

async fn unknown_operation() -> Response {
    json_response(
        404,
        &json!({ "message": "The requested operation is not supported by macie-emulator" }),
        Some("UnknownOperationException"),
    )
}

// ---- STS (query protocol) ---------------------------------------------------------------

const STS_NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Escapes text for an XML element.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn xml_response(status: u16, body: String, request_id: &str) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// `<{op}Response><{op}Result>{result}</{op}Result><ResponseMetadata>...` as the model's
/// `resultWrapper` gives it.
fn sts_ok(op: &str, result: &str) -> Response {
    let id = request_id();
    let body = format!(
        "<{op}Response xmlns=\"{STS_NAMESPACE}\">\n  <{op}Result>\n{result}  </{op}Result>\n  \
         <ResponseMetadata>\n    <RequestId>{id}</RequestId>\n  </ResponseMetadata>\n</{op}Response>\n"
    );
    xml_response(200, body, &id)
}

fn sts_error(e: &StsError) -> Response {
    let id = request_id();
    let body = format!(
        "<ErrorResponse xmlns=\"{STS_NAMESPACE}\">\n  <Error>\n    <Type>{}</Type>\n    <Code>{}</Code>\n    \
         <Message>{}</Message>\n  </Error>\n  <RequestId>{id}</RequestId>\n</ErrorResponse>\n",
        e.fault_type(),
        e.code,
        xml_escape(&e.message)
    );
    xml_response(e.status, body, &id)
}

fn assume_role_result(s: &Session) -> String {
    format!(
        "    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      \
         <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n    \
         <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n",
        xml_escape(&s.access_key_id),
        xml_escape(&s.secret_access_key),
        xml_escape(&s.session_token),
        s.expiration,
        xml_escape(&s.assumed_role_id()),
        xml_escape(&s.assumed_role_arn()),
    )
}

/// STS on `POST /`: `Action=AssumeRole` or `Action=GetCallerIdentity`, form-encoded.
async fn sts(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let params = parse_query(&String::from_utf8_lossy(&body));
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    let Some(op) = STS_OPERATIONS.into_iter().find(|op| Some(*op) == action) else {
        let message = match action {
            Some(a) => format!("Could not find operation {a} for version 2011-06-15"),
            None => "Missing Action parameter".to_string(),
        };
        return sts_error(&StsError::new("InvalidAction", 400, message));
    };
    let (latency, region) = {
        let e = s.lock();
        (e.latency(op), region_of(&headers, &e.default_region))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut e = s.lock();
    e.count_request(op);
    let caller = e.caller(access_key_of(&headers));
    let at = e.scope_of(&caller, &region);
    let (result, injected) = match e.draw_fault(op) {
        Some(Injected::Throttle) => (Err(StsError::new("Throttling", 400, "Rate exceeded")), true),
        Some(Injected::Error) => (
            Err(StsError::new("InternalFailure", 500, "Internal failure (injected)")),
            true,
        ),
        None if op == "AssumeRole" => (e.assume_role(&caller, &params).map(|s| assume_role_result(&s)), false),
        None => (
            e.caller_identity(&caller).map(|(user, account, arn)| {
                format!(
                    "    <UserId>{}</UserId>\n    <Account>{}</Account>\n    <Arn>{}</Arn>\n",
                    xml_escape(&user),
                    xml_escape(&account),
                    xml_escape(&arn)
                )
            }),
            false,
        ),
    };
    e.count(op, result.as_ref().map(|_| ()).map_err(|err| err.code), injected);
    if op == "AssumeRole" {
        let (outcome, message) = match &result {
            Ok(_) => ("OK", None),
            Err(err) => (err.code, Some(err.message.clone())),
        };
        let mut rec = e.new_record(&at, op, outcome, message, injected);
        let p = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        rec.role_arn = p("RoleArn");
        rec.role_session_name = p("RoleSessionName");
        e.calls.push(rec);
    }
    drop(e);
    tracing::debug!(
        op,
        account = at.account,
        region = at.region,
        ok = result.is_ok(),
        "request"
    );
    match result {
        Ok(xml) => sts_ok(op, &xml),
        Err(err) => sts_error(&err),
    }
}

/// Splits a query string into decoded pairs, keeping repeated keys.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- admin ---------------------------------------------------------------------------

/// `?account=` and `?region=` of the admin endpoints (defaults: `--account-id`, `--region`).
#[derive(Deserialize)]
struct RegionQuery {
    account: Option<String>,
    region: Option<String>,
}

impl RegionQuery {
    /// The `?account=` given, checked: a bad one is the error message.
    fn account(&self) -> Result<Option<&str>, String> {
        match self.account.as_deref() {
            Some(a) if !crate::seed::is_account_id(a) => {
                Err(format!("account: {a:?} is not a 12-digit AWS account id"))
            }
            a => Ok(a),
        }
    }
}

/// Answers a bad `?account=` with a 400 before anything else.
macro_rules! account_or_400 {
    ($q:expr) => {
        match $q.account() {
            Ok(a) => a,
            Err(message) => return admin_error(StatusCode::BAD_REQUEST, message),
        }
    };
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

/// A JSON admin request body; a bad one is answered 400 with serde's message naming the field.
struct AdminJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for AdminJson<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&body)
            .map(AdminJson)
            .map_err(|e| admin_error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
    }
}

async fn admin_state(State(s): State<Shared>, Query(q): Query<RegionQuery>) -> Response {
    let account = account_or_400!(q);
    axum::Json(s.lock().snapshot(account, q.region.as_deref())).into_response()
}

async fn admin_put_job(State(s): State<Shared>, body: Bytes) -> Response {
    let parsed = std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(crate::seed::from_yaml);
    let job: SeedJob = match parsed {
        Ok(j) => j,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    let seed = crate::seed::Seed {
        jobs: vec![job.clone()],
        ..Default::default()
    };
    if let Err(e) = seed.validate() {
        return admin_error(StatusCode::BAD_REQUEST, e);
    }
    let mut e = s.lock();
    let now = e.now();
    match e.put_job(&job, now) {
        Ok(id) => axum::Json(json!({ "jobId": id })).into_response(),
        Err(err) => admin_error(StatusCode::BAD_REQUEST, err),
    }
}

async fn admin_delete_job(
    State(s): State<Shared>,
    Path(job_id): Path<String>,
    Query(q): Query<RegionQuery>,
) -> Response {
    let account = account_or_400!(q);
    if s.lock().remove_job(account, q.region.as_deref(), &job_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, format!("no job {job_id:?}"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatusBody {
    job_status: JobStatus,
}

async fn admin_job_status(
    State(s): State<Shared>,
    Path(job_id): Path<String>,
    Query(q): Query<RegionQuery>,
    AdminJson(b): AdminJson<StatusBody>,
) -> Response {
    let account = account_or_400!(q);
    match s
        .lock()
        .set_status_service_side(account, q.region.as_deref(), &job_id, b.job_status)
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.starts_with("no job") => admin_error(StatusCode::NOT_FOUND, e),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccountBody {
    status: DiscoveryStatus,
    #[serde(default)]
    paused: bool,
}

async fn admin_put_account(
    State(s): State<Shared>,
    Path(account_id): Path<String>,
    Query(q): Query<RegionQuery>,
    AdminJson(b): AdminJson<AccountBody>,
) -> Response {
    let account = Account {
        status: b.status,
        paused: b.paused,
    };
    let owner = account_or_400!(q);
    match s.lock().put_account(owner, q.region.as_deref(), &account_id, account) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn admin_delete_account(
    State(s): State<Shared>,
    Path(account_id): Path<String>,
    Query(q): Query<RegionQuery>,
) -> Response {
    let owner = account_or_400!(q);
    if s.lock().remove_account(owner, q.region.as_deref(), &account_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, format!("no account {account_id:?}"))
    }
}

fn clock_json(e: &Emulator) -> Value {
    json!({ "now": e.now(), "offsetSeconds": e.clock_offset().as_secs_f64() })
}

async fn admin_clock(State(s): State<Shared>) -> Response {
    axum::Json(clock_json(&s.lock())).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceBody {
    seconds: f64,
}

async fn admin_advance(State(s): State<Shared>, AdminJson(b): AdminJson<AdvanceBody>) -> Response {
    if !(b.seconds.is_finite() && b.seconds >= 0.0) {
        return admin_error(StatusCode::BAD_REQUEST, "seconds: must be a non-negative number");
    }
    let mut e = s.lock();
    e.advance_clock(Duration::from_secs_f64(b.seconds));
    axum::Json(clock_json(&e)).into_response()
}

async fn admin_put_faults(State(s): State<Shared>, AdminJson(f): AdminJson<Faults>) -> Response {
    match s.lock().set_faults(f) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn admin_get_faults(State(s): State<Shared>) -> Response {
    axum::Json(s.lock().faults.clone()).into_response()
}

async fn admin_clear_faults(State(s): State<Shared>) -> Response {
    let _ = s.lock().set_faults(Faults::default());
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MacieBody {
    enabled: bool,
}

async fn admin_macie(State(s): State<Shared>, AdminJson(b): AdminJson<MacieBody>) -> Response {
    s.lock().macie_enabled = b.enabled;
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_put_quotas(State(s): State<Shared>, AdminJson(q): AdminJson<Quotas>) -> Response {
    match s.lock().set_quotas(q) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn admin_get_quotas(State(s): State<Shared>) -> Response {
    axum::Json(s.lock().quotas().clone()).into_response()
}

async fn admin_counters(State(s): State<Shared>) -> Response {
    axum::Json(s.lock().counters.clone()).into_response()
}

/// The call log; `?account=` and `?region=` keep only the calls of that account or region.
async fn admin_calls(State(s): State<Shared>, Query(q): Query<RegionQuery>) -> Response {
    let account = account_or_400!(q);
    let e = s.lock();
    let calls: Vec<_> = e
        .calls
        .iter()
        .filter(|c| account.is_none_or(|a| c.aws_account_id == a))
        .filter(|c| q.region.as_deref().is_none_or(|r| c.region == r))
        .collect();
    axum::Json(json!({ "calls": calls })).into_response()
}

async fn admin_reset(State(s): State<Shared>) -> Response {
    s.lock().reset();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_keys_and_decodes() {
        let q = parse_query("accountIds=111122223333&accountIds=444455556666&nextToken=a%2Bb%3D&x");
        assert_eq!(
            q,
            vec![
                ("accountIds".into(), "111122223333".into()),
                ("accountIds".into(), "444455556666".into()),
                ("nextToken".into(), "a+b=".into()),
                ("x".into(), "".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn region_comes_from_the_sigv4_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20261122/eu-west-1/macie2/aws4_request, SignedHeaders=host, Signature=abc",
            ),
        );
        assert_eq!(region_of(&h, "us-east-1"), "eu-west-1");
        assert_eq!(region_of(&HeaderMap::new(), "us-east-1"), "us-east-1");
    }
}
