//! The emulator as the real `aws-sdk-macie2` client sees it: every operation, the full 6x6
//! transition matrix, filters, pagination, typed errors, fault injection, CreateClassificationJob's
//! input checks and its quota.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_macie2::Client;
use aws_sdk_macie2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_macie2::error::ProvideErrorMetadata;
use aws_sdk_macie2::types::{
    AutomatedDiscoveryAccountStatus, AutomatedDiscoveryAccountUpdate, AutomatedDiscoveryAccountUpdateErrorCode,
    CriteriaBlockForJob, CriteriaForJob, DailySchedule, DayOfWeek, JobComparator, JobScheduleFrequency, JobScopeTerm,
    JobScopingBlock, JobStatus as SdkStatus, JobType as SdkType, ListJobsFilterCriteria, ListJobsFilterKey,
    ListJobsFilterTerm, ListJobsSortAttributeName, ListJobsSortCriteria, ManagedDataIdentifierSelector,
    MonthlySchedule, OrderBy, S3BucketCriteriaForJob, S3BucketDefinitionForJob, S3JobDefinition, ScopeFilterKey,
    Scoping, SimpleCriterionForJob, SimpleCriterionKeyForJob, SimpleScopeTerm, WeeklySchedule,
};
use macie_emulator::model::{JobStatus, JobType};
use macie_emulator::seed::SeedJob;
use macie_emulator::{Emulator, Seed, Shared};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Env {
    addr: SocketAddr,
    state: Shared,
    client: Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn client_for(addr: SocketAddr, region: &str, retries: bool) -> Client {
    let creds = Credentials::new("AKIDEMULATOR", "secret", None, None, "test");
    client_with(addr, region, retries, creds)
}

fn http_client() -> aws_sdk_macie2::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// An STS client on the emulator, signing with `creds`.
fn sts_client(addr: SocketAddr, creds: Credentials) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(creds)
        .http_client(http_client())
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

fn client_with(addr: SocketAddr, region: &str, retries: bool, creds: Credentials) -> Client {
    let http = http_client();
    let retry = if retries {
        aws_sdk_macie2::config::retry::RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(1))
    } else {
        aws_sdk_macie2::config::retry::RetryConfig::disabled()
    };
    let conf = aws_sdk_macie2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(retry)
        .build();
    Client::from_conf(conf)
}

async fn start(seed: Seed) -> Env {
    let (listener, addr) = macie_emulator::bind("127.0.0.1:0").await.unwrap();
    let state = Shared::new(Emulator::new(seed, "us-east-1", "123456789012"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(macie_emulator::serve(listener, state.clone(), async {
        let _ = rx.await;
    }));
    Env {
        addr,
        state,
        client: client_for(addr, "us-east-1", false),
        _stop: tx,
    }
}

fn job(name: &str, ty: JobType, status: JobStatus) -> SeedJob {
    SeedJob {
        job_id: None,
        name: name.into(),
        job_type: ty,
        job_status: status,
        aws_account_id: None,
        region: None,
        created_at: None,
        paused_at: None,
        paused_while: None,
        last_run_error_status: Default::default(),
        bucket_definitions: None,
    }
}

impl Env {
    fn put(&self, j: SeedJob) -> String {
        let mut e = self.state.lock();
        let now = e.now();
        e.put_job(&j, now).unwrap()
    }

    /// A raw HTTP/1.1 call to the admin API.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status: u16 = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // axum answers with a fixed Content-Length here, so the body is the rest.
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn status_of(&self, id: &str) -> SdkStatus {
        let d = self
            .client
            .describe_classification_job()
            .job_id(id)
            .send()
            .await
            .unwrap();
        d.job_status().unwrap().clone()
    }
}

fn sdk(s: JobStatus) -> SdkStatus {
    SdkStatus::from(s.as_str())
}

fn base_seed() -> Seed {
    Seed::default()
}

#[tokio::test]
async fn every_cell_of_the_transition_matrix() {
    let env = start(base_seed()).await;
    let mut checked = 0;
    for from in JobStatus::ALL {
        for to in JobStatus::ALL {
            // IDLE exists only for scheduled jobs, COMPLETE only for one-time jobs.
            let ty = match from {
                JobStatus::Idle => JobType::Scheduled,
                _ => JobType::OneTime,
            };
            let id = env.put(job(&format!("m-{from}-{to}"), ty, from));
            let r = env
                .client
                .update_classification_job()
                .job_id(&id)
                .job_status(sdk(to))
                .send()
                .await;
            let after = env.status_of(&id).await;
            if from.can_update_to(to) {
                assert!(r.is_ok(), "{from} -> {to} should be accepted: {r:?}");
                // This matrix's USER_PAUSED jobs were paused while running, so a resume lands
                // on RUNNING (a scheduled job paused while idle is covered below).
                assert_eq!(after, sdk(to), "{from} -> {to}");
            } else {
                let err = r.expect_err(&format!("{from} -> {to} must be rejected"));
                assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
                let svc = err.into_service_error();
                assert!(svc.is_validation_exception(), "{from} -> {to}: {svc:?}");
                assert!(svc.message().is_some_and(|m| !m.is_empty()));
                if from == JobStatus::Cancelled {
                    assert_eq!(svc.message(), Some("cannot update cancelled job"));
                }
                if from == JobStatus::Complete {
                    assert_eq!(svc.message(), Some("cannot update completed job"));
                }
                assert_eq!(after, sdk(from), "a rejected call changes nothing");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
    let calls = env.admin("GET", "/__admin/calls", None).await.1;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 36);
    let valid = calls.iter().filter(|c| c["valid"] == json!(true)).count();
    assert_eq!(valid, 8, "exactly the 8 documented transitions are valid");
    assert!(
        calls
            .iter()
            .all(|c| (c["valid"] == json!(true)) == (c["outcome"] == "OK"))
    );
}

#[tokio::test]
async fn pause_details_resume_and_expiry() {
    let env = start(base_seed()).await;
    let one = env.put(job("one", JobType::OneTime, JobStatus::Running));
    let sched_idle = env.put(job("sched-idle", JobType::Scheduled, JobStatus::Idle));
    let sched_running = env.put(job("sched-running", JobType::Scheduled, JobStatus::Running));
    for id in [&one, &sched_idle, &sched_running] {
        env.client
            .update_classification_job()
            .job_id(id)
            .job_status(SdkStatus::UserPaused)
            .send()
            .await
            .unwrap();
    }
    let d = env
        .client
        .describe_classification_job()
        .job_id(&one)
        .send()
        .await
        .unwrap();
    let p = d.user_paused_details().expect("userPausedDetails set on pause");
    let paused_at = p.job_paused_at().unwrap().secs();
    let expires_at = p.job_expires_at().unwrap().secs();
    assert_eq!(expires_at - paused_at, 30 * 24 * 3600);
    assert!(p.job_imminent_expiration_health_event_arn().is_none());

    // Resuming: paused while idle -> IDLE; paused while running -> RUNNING.
    env.client
        .update_classification_job()
        .job_id(&sched_idle)
        .job_status(SdkStatus::Running)
        .send()
        .await
        .unwrap();
    assert_eq!(env.status_of(&sched_idle).await, SdkStatus::Idle);
    let d = env
        .client
        .describe_classification_job()
        .job_id(&sched_idle)
        .send()
        .await
        .unwrap();
    assert!(d.user_paused_details().is_none());

    // 23 days later the health event appears (both in Describe and in List).
    let (code, _) = env
        .admin(
            "POST",
            "/__admin/clock/advance",
            Some(json!({"seconds": 23.0 * 86400.0 + 1.0})),
        )
        .await;
    assert_eq!(code, 200);
    let d = env
        .client
        .describe_classification_job()
        .job_id(&one)
        .send()
        .await
        .unwrap();
    let arn = d
        .user_paused_details()
        .unwrap()
        .job_imminent_expiration_health_event_arn()
        .unwrap();
    assert!(arn.starts_with("arn:aws:health:"), "{arn}");
    let l = env.client.list_classification_jobs().send().await.unwrap();
    let item = l.items().iter().find(|j| j.job_id() == Some(one.as_str())).unwrap();
    assert!(
        item.user_paused_details()
            .unwrap()
            .job_imminent_expiration_health_event_arn()
            .is_some()
    );

    // At 30 days: the one-time job is cancelled, the scheduled job's paused run is cancelled.
    env.admin(
        "POST",
        "/__admin/clock/advance",
        Some(json!({"seconds": 7.0 * 86400.0})),
    )
    .await;
    assert_eq!(env.status_of(&one).await, SdkStatus::Cancelled);
    assert_eq!(env.status_of(&sched_running).await, SdkStatus::Idle);
    let d = env
        .client
        .describe_classification_job()
        .job_id(&one)
        .send()
        .await
        .unwrap();
    assert!(d.user_paused_details().is_none());
}

#[tokio::test]
async fn create_describe_and_idempotency() {
    let env = start(base_seed()).await;
    let def = S3JobDefinition::builder()
        .bucket_definitions(
            S3BucketDefinitionForJob::builder()
                .account_id("111122223333")
                .buckets("bucket-1")
                .build(),
        )
        .build();
    let create = |token: &'static str, ty: SdkType| {
        let mut b = env
            .client
            .create_classification_job()
            .client_token(token)
            .name("created")
            .job_type(ty.clone())
            .s3_job_definition(def.clone())
            .tags("team", "sec");
        if ty == SdkType::Scheduled {
            b = b.schedule_frequency(
                aws_sdk_macie2::types::JobScheduleFrequency::builder()
                    .weekly_schedule(
                        WeeklySchedule::builder()
                            .day_of_week(aws_sdk_macie2::types::DayOfWeek::Monday)
                            .build(),
                    )
                    .build(),
            );
        }
        b.send()
    };
    let a = create("tok-1", SdkType::OneTime).await.unwrap();
    let again = create("tok-1", SdkType::OneTime).await.unwrap();
    assert_eq!(a.job_id(), again.job_id(), "same clientToken, same job");
    assert!(
        a.job_arn()
            .unwrap()
            .starts_with("arn:aws:macie2:us-east-1:123456789012:classification-job/")
    );
    let s = create("tok-2", SdkType::Scheduled).await.unwrap();
    let d = env
        .client
        .describe_classification_job()
        .job_id(a.job_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(d.job_status(), Some(&SdkStatus::Running));
    assert_eq!(d.job_type(), Some(&SdkType::OneTime));
    assert_eq!(d.name(), Some("created"));
    assert_eq!(d.client_token(), Some("tok-1"));
    assert_eq!(d.tags().unwrap().get("team").map(String::as_str), Some("sec"));
    assert!(d.created_at().is_some());
    assert_eq!(
        d.s3_job_definition().unwrap().bucket_definitions()[0].buckets(),
        &["bucket-1".to_string()]
    );
    assert_eq!(
        env.status_of(s.job_id().unwrap()).await,
        SdkStatus::Idle,
        "scheduled without initialRun waits"
    );

    // Validation: a scheduled job without a schedule; a missing job.
    let err = env
        .client
        .create_classification_job()
        .client_token("tok-3")
        .name("x")
        .job_type(SdkType::Scheduled)
        .s3_job_definition(def.clone())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_validation_exception(), "{err:?}");
    let err = env
        .client
        .describe_classification_job()
        .job_id("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 404);
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = env
        .client
        .update_classification_job()
        .job_id("nope")
        .job_status(SdkStatus::Cancelled)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
}

fn term(key: ListJobsFilterKey, cmp: JobComparator, values: &[&str]) -> ListJobsFilterTerm {
    let mut b = ListJobsFilterTerm::builder().key(key).comparator(cmp);
    for v in values {
        b = b.values(*v);
    }
    b.build()
}

async fn names(env: &Env, includes: Vec<ListJobsFilterTerm>, excludes: Vec<ListJobsFilterTerm>) -> Vec<String> {
    let f = ListJobsFilterCriteria::builder()
        .set_includes(Some(includes))
        .set_excludes(Some(excludes))
        .build();
    let r = env
        .client
        .list_classification_jobs()
        .filter_criteria(f)
        .sort_criteria(
            ListJobsSortCriteria::builder()
                .attribute_name(ListJobsSortAttributeName::Name)
                .order_by(OrderBy::Asc)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.next_token().is_none());
    r.items().iter().map(|j| j.name().unwrap().to_string()).collect()
}

#[tokio::test]
async fn list_filters_every_key_and_comparator() {
    let env = start(base_seed()).await;
    let t0 = macie_emulator::model::Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let at = |days: u64| macie_emulator::model::Timestamp(t0.0 + Duration::from_secs(days * 86400));
    for (name, ty, st, day) in [
        ("alpha", JobType::OneTime, JobStatus::Running, 0),
        ("alpine", JobType::OneTime, JobStatus::Complete, 1),
        ("beta", JobType::Scheduled, JobStatus::Idle, 2),
        ("gamma", JobType::Scheduled, JobStatus::UserPaused, 3),
        ("delta-alpha", JobType::OneTime, JobStatus::Cancelled, 4),
    ] {
        let mut j = job(name, ty, st);
        j.created_at = Some(at(day));
        env.put(j);
    }
    use JobComparator as C;
    use ListJobsFilterKey as K;
    let day = |d: u64| at(d).to_string();
    let cases: Vec<(ListJobsFilterTerm, &[&str])> = vec![
        (term(K::Name, C::Eq, &["beta"]), &["beta"]),
        (term(K::Name, C::Eq, &["beta", "gamma"]), &["beta", "gamma"]),
        (
            term(K::Name, C::Ne, &["beta", "gamma"]),
            &["alpha", "alpine", "delta-alpha"],
        ),
        (
            term(K::Name, C::Contains, &["alp"]),
            &["alpha", "alpine", "delta-alpha"],
        ),
        (term(K::Name, C::StartsWith, &["alp"]), &["alpha", "alpine"]),
        (term(K::Name, C::Gt, &["beta"]), &["delta-alpha", "gamma"]),
        (term(K::Name, C::Gte, &["beta"]), &["beta", "delta-alpha", "gamma"]),
        (term(K::Name, C::Lt, &["beta"]), &["alpha", "alpine"]),
        (term(K::Name, C::Lte, &["beta"]), &["alpha", "alpine", "beta"]),
        (term(K::JobType, C::Eq, &["SCHEDULED"]), &["beta", "gamma"]),
        (
            term(K::JobType, C::Ne, &["SCHEDULED"]),
            &["alpha", "alpine", "delta-alpha"],
        ),
        (term(K::JobStatus, C::Eq, &["RUNNING", "IDLE"]), &["alpha", "beta"]),
        (
            term(K::JobStatus, C::Ne, &["CANCELLED", "COMPLETE"]),
            &["alpha", "beta", "gamma"],
        ),
        (term(K::JobStatus, C::StartsWith, &["USER"]), &["gamma"]),
        (term(K::JobStatus, C::Contains, &["PLE"]), &["alpine"]),
        (term(K::CreatedAt, C::Eq, &[&day(2)]), &["beta"]),
        (
            term(K::CreatedAt, C::Ne, &[&day(2)]),
            &["alpha", "alpine", "delta-alpha", "gamma"],
        ),
        (term(K::CreatedAt, C::Gt, &[&day(2)]), &["delta-alpha", "gamma"]),
        (
            term(K::CreatedAt, C::Gte, &[&day(2)]),
            &["beta", "delta-alpha", "gamma"],
        ),
        (term(K::CreatedAt, C::Lt, &[&day(1)]), &["alpha"]),
        (term(K::CreatedAt, C::Lte, &[&day(1)]), &["alpha", "alpine"]),
        (
            term(K::CreatedAt, C::Lte, &[&at(1).millis().to_string()]),
            &["alpha", "alpine"],
        ),
        (term(K::CreatedAt, C::StartsWith, &["2026-01-03"]), &["beta"]),
        (term(K::CreatedAt, C::Contains, &["-05T"]), &["delta-alpha"]),
    ];
    for (t, want) in cases {
        let desc = format!("{t:?}");
        assert_eq!(names(&env, vec![t], vec![]).await, want, "{desc}");
    }
    // includes are ANDed; excludes remove whatever matches any of them.
    assert_eq!(
        names(
            &env,
            vec![
                term(K::Name, C::Contains, &["alp"]),
                term(K::JobType, C::Eq, &["ONE_TIME"])
            ],
            vec![
                term(K::JobStatus, C::Eq, &["CANCELLED"]),
                term(K::Name, C::Eq, &["alpine"])
            ],
        )
        .await,
        ["alpha"]
    );
    // Bad filter values are ValidationException.
    let bad = ListJobsFilterCriteria::builder()
        .includes(term(K::CreatedAt, C::Gt, &["last tuesday"]))
        .build();
    let err = env
        .client
        .list_classification_jobs()
        .filter_criteria(bad)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    // Sort by createdAt DESC.
    let r = env
        .client
        .list_classification_jobs()
        .sort_criteria(
            ListJobsSortCriteria::builder()
                .attribute_name(ListJobsSortAttributeName::CreatedAt)
                .order_by(OrderBy::Desc)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let got: Vec<_> = r.items().iter().map(|j| j.name().unwrap()).collect();
    assert_eq!(got, ["delta-alpha", "gamma", "beta", "alpine", "alpha"]);
    let s = r.items().iter().find(|j| j.name() == Some("gamma")).unwrap();
    assert!(s.user_paused_details().is_some());
    assert_eq!(s.last_run_error_status().unwrap().code().unwrap().as_str(), "NONE");
    assert!(!s.bucket_definitions().is_empty());
}

#[tokio::test]
async fn list_pagination_with_opaque_tokens_and_page_caps() {
    let env = start(base_seed()).await;
    for i in 0..23 {
        env.put(job(&format!("job-{i:02}"), JobType::OneTime, JobStatus::Running));
    }
    // Manual paging: 7 per page -> 4 pages.
    let mut token = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = env
            .client
            .list_classification_jobs()
            .max_results(7)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(r.items().len() <= 7);
        seen.extend(r.items().iter().map(|j| j.job_id().unwrap().to_string()));
        token = r.next_token().map(str::to_string);
        if let Some(t) = &token {
            assert!(!t.contains('7') || t.len() > 10, "token looks opaque");
        } else {
            break;
        }
    }
    assert_eq!(pages, 4);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 23, "every job exactly once");
    // The SDK's own paginator works with the tokens.
    let all: Vec<_> = env
        .client
        .list_classification_jobs()
        .max_results(5)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 23);
    // Default page size is 100; the service may return fewer than asked (page cap).
    let r = env.client.list_classification_jobs().send().await.unwrap();
    assert_eq!(r.items().len(), 23);
    assert!(r.next_token().is_none());
    let (code, _) = env
        .admin("PUT", "/__admin/faults", Some(json!({"maxJobsPage": 10})))
        .await;
    assert_eq!(code, 204);
    let r = env
        .client
        .list_classification_jobs()
        .max_results(1000)
        .send()
        .await
        .unwrap();
    assert_eq!(r.items().len(), 10);
    assert!(r.next_token().is_some());
    // A token only fits the query it came from; garbage is rejected.
    let t = r.next_token().unwrap().to_string();
    let other = ListJobsFilterCriteria::builder()
        .includes(term(ListJobsFilterKey::JobType, JobComparator::Eq, &["ONE_TIME"]))
        .build();
    let err = env
        .client
        .list_classification_jobs()
        .filter_criteria(other)
        .next_token(t)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    let err = env
        .client
        .list_classification_jobs()
        .next_token("garbage")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    let err = env
        .client
        .list_classification_jobs()
        .max_results(0)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
}

fn accounts_seed(n: usize) -> Seed {
    let mut text = String::from("accounts:\n");
    for i in 0..n {
        let status = if i % 2 == 0 { "ENABLED" } else { "DISABLED" };
        let paused = i % 10 == 9;
        text.push_str(&format!(
            "- {{accountId: '{:012}', status: {status}, paused: {paused}}}\n",
            100_000 + i
        ));
    }
    Seed::parse(&text).unwrap()
}

#[tokio::test]
async fn discovery_accounts_list_batch_and_configuration() {
    let env = start(accounts_seed(60)).await;
    // All accounts, paginated at 25.
    let all: Vec<_> = env
        .client
        .list_automated_discovery_accounts()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 60);
    let first = env
        .client
        .list_automated_discovery_accounts()
        .max_results(25)
        .send()
        .await
        .unwrap();
    assert_eq!(first.items().len(), 25);
    assert!(first.next_token().is_some());
    // Only the asked-for accounts (unknown ones are simply absent).
    let r = env
        .client
        .list_automated_discovery_accounts()
        .account_ids("000000100001")
        .account_ids("000000100002")
        .account_ids("999999999999")
        .send()
        .await
        .unwrap();
    let got: Vec<_> = r
        .items()
        .iter()
        .map(|a| (a.account_id().unwrap(), a.status().unwrap().clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("000000100001", AutomatedDiscoveryAccountStatus::Disabled),
            ("000000100002", AutomatedDiscoveryAccountStatus::Enabled)
        ]
    );
    // Limits: 50 account ids, maxResults 1..=25.
    let ids: Vec<String> = (0..51).map(|i| format!("{:012}", 100_000 + i)).collect();
    let err = env
        .client
        .list_automated_discovery_accounts()
        .set_account_ids(Some(ids))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    for bad in [0, 26] {
        let err = env
            .client
            .list_automated_discovery_accounts()
            .max_results(bad)
            .send()
            .await
            .unwrap_err();
        assert!(err.into_service_error().is_validation_exception(), "maxResults {bad}");
    }

    // Batch update with per-account errors.
    let upd = |id: &str, st: AutomatedDiscoveryAccountStatus| {
        AutomatedDiscoveryAccountUpdate::builder()
            .account_id(id)
            .status(st)
            .build()
    };
    let r = env
        .client
        .batch_update_automated_discovery_accounts()
        .accounts(upd("000000100001", AutomatedDiscoveryAccountStatus::Enabled))
        .accounts(upd("000000100009", AutomatedDiscoveryAccountStatus::Enabled))
        .accounts(upd("999999999999", AutomatedDiscoveryAccountStatus::Disabled))
        .send()
        .await
        .unwrap();
    let mut errs: Vec<_> = r
        .errors()
        .iter()
        .map(|e| (e.account_id().unwrap(), e.error_code().unwrap().clone()))
        .collect();
    errs.sort_by_key(|e| e.0);
    assert_eq!(
        errs,
        [
            ("000000100009", AutomatedDiscoveryAccountUpdateErrorCode::AccountPaused),
            (
                "999999999999",
                AutomatedDiscoveryAccountUpdateErrorCode::AccountNotFound
            ),
        ]
    );
    let r = env
        .client
        .list_automated_discovery_accounts()
        .account_ids("000000100001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.items()[0].status(), Some(&AutomatedDiscoveryAccountStatus::Enabled));
    // All succeeded: no errors.
    let r = env
        .client
        .batch_update_automated_discovery_accounts()
        .accounts(upd("000000100003", AutomatedDiscoveryAccountStatus::Enabled))
        .send()
        .await
        .unwrap();
    assert!(r.errors().is_empty());
    let calls = env.admin("GET", "/__admin/calls", None).await.1;
    let c = &calls["calls"][0];
    assert_eq!(c["operation"], "BatchUpdateAutomatedDiscoveryAccounts");
    assert_eq!(c["accounts"][0]["previous"], "DISABLED");
    assert_eq!(c["accounts"][1]["outcome"], "ACCOUNT_PAUSED");

    let cfg = env.client.get_automated_discovery_configuration().send().await.unwrap();
    assert_eq!(cfg.status().map(|s| s.as_str()), Some("ENABLED"));
    assert!(cfg.first_enabled_at().is_some());
    assert_eq!(cfg.auto_enable_organization_members().map(|s| s.as_str()), Some("NONE"));
}

impl Env {
    /// ListAutomatedDiscoveryAccounts as the SDK sees it: (accountId, status), every page.
    async fn account_statuses(&self) -> Vec<(String, String)> {
        self.client
            .list_automated_discovery_accounts()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a.account_id().unwrap().to_string(),
                    a.status().unwrap().as_str().to_string(),
                )
            })
            .collect()
    }
}

fn statuses(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, s)| (a.to_string(), s.to_string())).collect()
}

#[tokio::test]
async fn discovery_visibility_delay_shows_the_previous_status_until_the_clock_passes_it() {
    let env = start(accounts_seed(3)).await;
    let before = statuses(&[
        ("000000100000", "ENABLED"),
        ("000000100001", "DISABLED"),
        ("000000100002", "ENABLED"),
    ]);
    assert_eq!(env.account_statuses().await, before);
    let (code, body) = env
        .admin(
            "PUT",
            "/__admin/faults",
            Some(json!({"discoveryVisibilityDelayMs": 600000})),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    let upd = |id: &str, st: AutomatedDiscoveryAccountStatus| {
        AutomatedDiscoveryAccountUpdate::builder()
            .account_id(id)
            .status(st)
            .build()
    };
    let r = env
        .client
        .batch_update_automated_discovery_accounts()
        .accounts(upd("000000100000", AutomatedDiscoveryAccountStatus::Disabled))
        .accounts(upd("000000100001", AutomatedDiscoveryAccountStatus::Enabled))
        .send()
        .await
        .unwrap();
    assert!(r.errors().is_empty());

    // Reads still show the previous statuses; the admin state shows both.
    assert_eq!(env.account_statuses().await, before);
    let state = env.admin("GET", "/__admin/state", None).await.1;
    let a1 = &state["accounts"]["000000100001"];
    assert_eq!(
        (&a1["status"], &a1["visibleStatus"]),
        (&json!("ENABLED"), &json!("DISABLED"))
    );
    let a2 = &state["accounts"]["000000100002"];
    assert_eq!(
        (&a2["status"], &a2["visibleStatus"]),
        (&json!("ENABLED"), &json!("ENABLED"))
    );
    // A second call judged by what it sees: the log's `previous` is the real status.
    env.client
        .batch_update_automated_discovery_accounts()
        .accounts(upd("000000100001", AutomatedDiscoveryAccountStatus::Enabled))
        .send()
        .await
        .unwrap();
    let calls = env.admin("GET", "/__admin/calls", None).await.1;
    let previous: Vec<_> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["accounts"].as_array().unwrap().clone())
        .map(|a| (a["accountId"].clone(), a["previous"].clone()))
        .collect();
    assert_eq!(
        previous,
        [
            (json!("000000100000"), json!("ENABLED")),
            (json!("000000100001"), json!("DISABLED")),
            (json!("000000100001"), json!("ENABLED")),
        ]
    );

    // Until the emulator clock passes the delay, then the new statuses.
    env.admin("POST", "/__admin/clock/advance", Some(json!({"seconds": 590})))
        .await;
    assert_eq!(env.account_statuses().await, before);
    env.admin("POST", "/__admin/clock/advance", Some(json!({"seconds": 11})))
        .await;
    assert_eq!(
        env.account_statuses().await,
        statuses(&[
            ("000000100000", "DISABLED"),
            ("000000100001", "ENABLED"),
            ("000000100002", "ENABLED"),
        ])
    );
    let state = env.admin("GET", "/__admin/state", None).await.1;
    assert_eq!(state["accounts"]["000000100000"]["visibleStatus"], "DISABLED");

    // An out-of-band (admin) change is visible at once.
    env.admin(
        "PUT",
        "/__admin/accounts/000000100002",
        Some(json!({"status": "DISABLED"})),
    )
    .await;
    assert_eq!(env.account_statuses().await[2].1, "DISABLED");
}

#[tokio::test]
async fn macie_not_enabled_is_access_denied_with_401() {
    let env = start(Seed::parse("macieEnabled: false").unwrap()).await;
    let err = env.client.list_classification_jobs().send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 401);
    let svc = err.into_service_error();
    assert!(svc.is_access_denied_exception(), "{svc:?}");
    assert_eq!(svc.code(), Some("AccessDeniedException"));
    let err = env
        .client
        .get_automated_discovery_configuration()
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_access_denied_exception());
    let (code, _) = env.admin("PUT", "/__admin/macie", Some(json!({"enabled": true}))).await;
    assert_eq!(code, 204);
    env.client.list_classification_jobs().send().await.unwrap();
}

#[tokio::test]
async fn regions_are_separate() {
    let env =
        start(Seed::parse("jobs:\n- {name: eu, jobType: ONE_TIME, jobStatus: RUNNING, region: eu-west-1}\n").unwrap())
            .await;
    let eu = client_for(env.addr, "eu-west-1", false);
    assert_eq!(eu.list_classification_jobs().send().await.unwrap().items().len(), 1);
    assert_eq!(
        env.client
            .list_classification_jobs()
            .send()
            .await
            .unwrap()
            .items()
            .len(),
        0
    );
}

#[tokio::test]
async fn fault_injection_throttling_errors_latency_and_delayed_visibility() {
    let env = start(base_seed()).await;
    let id = env.put(job("f", JobType::OneTime, JobStatus::Running));

    // Throttling on one operation only, typed as ThrottlingException (429).
    let (code, body) = env
        .admin(
            "PUT",
            "/__admin/faults",
            Some(json!({"operations": {"ListClassificationJobs": {"throttleRate": 1.0}}})),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    let err = env.client.list_classification_jobs().send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 429);
    assert!(err.into_service_error().is_throttling_exception());
    env.client
        .describe_classification_job()
        .job_id(&id)
        .send()
        .await
        .unwrap();

    // 500s on every operation.
    env.admin(
        "PUT",
        "/__admin/faults",
        Some(json!({"operations": {"*": {"errorRate": 1.0}}})),
    )
    .await;
    let err = env
        .client
        .update_classification_job()
        .job_id(&id)
        .job_status(SdkStatus::UserPaused)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
    assert!(err.into_service_error().is_internal_server_exception());
    assert_eq!(
        env.status_of_raw(&id),
        JobStatus::Running,
        "an injected failure changes nothing"
    );

    // Bad fault settings are refused with the field named.
    let (code, body) = env
        .admin("PUT", "/__admin/faults", Some(json!({"operations": {"Nope": {}}})))
        .await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("operations.Nope"));
    let (code, _) = env
        .admin(
            "PUT",
            "/__admin/faults",
            Some(json!({"operations": {"*": {"throttleRate": 2}}})),
        )
        .await;
    assert_eq!(code, 400);

    // A rate is a rate: 30% throttling over 200 calls, seeded and so repeatable.
    env.admin(
        "PUT",
        "/__admin/faults",
        Some(json!({"operations": {"*": {"throttleRate": 0.3}}, "seed": 42})),
    )
    .await;
    let mut throttled = 0;
    for _ in 0..200 {
        if env.client.list_classification_jobs().send().await.is_err() {
            throttled += 1;
        }
    }
    assert!((30..=90).contains(&throttled), "{throttled} of 200 throttled at 30%");
    // The SDK's standard retries get through it.
    let retrying = client_for(env.addr, "us-east-1", true);
    for _ in 0..20 {
        retrying.list_classification_jobs().send().await.unwrap();
    }

    // Added latency: a call takes at least that long.
    env.admin(
        "PUT",
        "/__admin/faults",
        Some(json!({"operations": {"DescribeClassificationJob": {"latencyMs": 300}}})),
    )
    .await;
    let t = Instant::now();
    env.client
        .describe_classification_job()
        .job_id(&id)
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Delayed visibility: right after an update, reads still show the old status.
    env.admin("PUT", "/__admin/faults", Some(json!({"visibilityDelayMs": 600000})))
        .await;
    env.client
        .update_classification_job()
        .job_id(&id)
        .job_status(SdkStatus::Cancelled)
        .send()
        .await
        .unwrap();
    assert_eq!(env.status_of(&id).await, SdkStatus::Running);
    let l = env.client.list_classification_jobs().send().await.unwrap();
    assert_eq!(l.items()[0].job_status(), Some(&SdkStatus::Running));
    // A second identical call is invalid against the real state, and logged as such.
    let err = env
        .client
        .update_classification_job()
        .job_id(&id)
        .job_status(SdkStatus::Cancelled)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    env.admin("POST", "/__admin/clock/advance", Some(json!({"seconds": 601})))
        .await;
    assert_eq!(env.status_of(&id).await, SdkStatus::Cancelled);

    // Counters and the call log.
    let counters = env.admin("GET", "/__admin/counters", None).await.1;
    assert!(counters["ListClassificationJobs"]["requests"].as_u64().unwrap() >= 221);
    assert!(
        counters["ListClassificationJobs"]["errors"]["ThrottlingException"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(counters["UpdateClassificationJob"]["injected"], 1);
    let calls = env.admin("GET", "/__admin/calls", None).await.1;
    let calls = calls["calls"].as_array().unwrap();
    let outcomes: Vec<_> = calls
        .iter()
        .map(|c| (c["outcome"].as_str().unwrap(), c["injected"] == json!(true)))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("InternalServerException", true),
            ("OK", false),
            ("ValidationException", false)
        ]
    );
    assert_eq!(calls[2]["repeated"], true);
    assert_eq!(calls[2]["valid"], false);

    // A status newer than the SDK: reads carry the text, the SDK keeps it in `Unknown`.
    env.admin(
        "PUT",
        "/__admin/faults",
        Some(json!({"reportedStatus": {&id: "ARCHIVED"}})),
    )
    .await;
    let shown = env.status_of(&id).await;
    assert_eq!(shown.as_str(), "ARCHIVED");
    assert!(!SdkStatus::values().contains(&shown.as_str()));
    let l = env.client.list_classification_jobs().send().await.unwrap();
    assert_eq!(l.items()[0].job_status().map(|s| s.as_str()), Some("ARCHIVED"));

    // Reset returns to the seed: no jobs, no counters.
    let (code, _) = env.admin("POST", "/__admin/reset", None).await;
    assert_eq!(code, 204);
    assert!(
        env.client
            .list_classification_jobs()
            .send()
            .await
            .unwrap()
            .items()
            .is_empty()
    );
    let counters = env.admin("GET", "/__admin/counters", None).await.1;
    assert_eq!(counters["ListClassificationJobs"]["requests"], 1);
}

#[tokio::test]
async fn error_fault_answers_a_chosen_code_for_chosen_jobs_only() {
    let env = start(base_seed()).await;
    let denied = env.put(job("denied", JobType::OneTime, JobStatus::Running));
    let other = env.put(job("other", JobType::OneTime, JobStatus::Running));
    let (code, body) = env
        .admin(
            "PUT",
            "/__admin/faults",
            Some(json!({"errors": [
                {"operations": ["UpdateClassificationJob"], "jobIds": [&denied], "code": "AccessDeniedException"},
                {"operations": ["DescribeClassificationJob"], "jobIds": [&other], "code": "ConflictException",
                 "message": "busy"},
            ]})),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    let (_, faults) = env.admin("GET", "/__admin/faults", None).await;
    assert_eq!(faults["errors"][0]["jobIds"][0], json!(denied));

    // UpdateClassificationJob on the named job: AccessDeniedException with its model status.
    let err = env
        .client
        .update_classification_job()
        .job_id(&denied)
        .job_status(SdkStatus::Cancelled)
        .send()
        .await
        .unwrap_err();
    let raw = err.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 403);
    assert_eq!(raw.headers().get("x-amzn-errortype"), Some("AccessDeniedException"));
    let svc = err.into_service_error();
    assert!(svc.is_access_denied_exception(), "{svc:?}");
    assert_eq!(svc.code(), Some("AccessDeniedException"));
    assert_eq!(env.status_of_raw(&denied), JobStatus::Running, "nothing changed");
    // Other operations on that job, and the same operation on another job, are served.
    assert_eq!(env.status_of(&denied).await, SdkStatus::Running);
    env.client
        .update_classification_job()
        .job_id(&other)
        .job_status(SdkStatus::Cancelled)
        .send()
        .await
        .unwrap();
    assert_eq!(env.status_of_raw(&other), JobStatus::Cancelled);
    // A rule's own message, and the status of its code (ConflictException 409).
    let err = env
        .client
        .describe_classification_job()
        .job_id(&other)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 409);
    let svc = err.into_service_error();
    assert_eq!(svc.code(), Some("ConflictException"));
    assert_eq!(svc.message(), Some("busy"));

    // Counted as injected; the write is in the call log with its job id.
    let counters = env.admin("GET", "/__admin/counters", None).await.1;
    let update = &counters["UpdateClassificationJob"];
    assert_eq!(
        (&update["requests"], &update["ok"], &update["injected"]),
        (&json!(2), &json!(1), &json!(1))
    );
    assert_eq!(update["errors"]["AccessDeniedException"], 1);
    assert_eq!(counters["DescribeClassificationJob"]["injected"], 1);
    let calls = env.admin("GET", "/__admin/calls", None).await.1;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["operation"], "UpdateClassificationJob");
    assert_eq!(calls[0]["jobId"], json!(denied));
    assert_eq!(calls[0]["outcome"], "AccessDeniedException");
    assert_eq!(calls[0]["injected"], true);
    assert_eq!(calls[1]["jobId"], json!(other));
    assert_eq!(calls[1]["outcome"], "OK");
    assert_eq!(calls[1]["injected"], false);

    // Unknown codes and operations are refused with the field named; the rules in force stay.
    for (rule, field) in [
        (
            json!({"operations": ["UpdateClassificationJob"], "code": "AccessDenied"}),
            "errors[0].code",
        ),
        (
            json!({"operations": ["UpdateJob"], "code": "ValidationException"}),
            "errors[0].operations",
        ),
        (
            json!({"operations": [], "code": "ValidationException"}),
            "errors[0].operations",
        ),
        (
            json!({"operations": ["ListClassificationJobs"], "jobIds": ["x"], "code": "ValidationException"}),
            "errors[0].jobIds",
        ),
    ] {
        let (code, body) = env
            .admin("PUT", "/__admin/faults", Some(json!({ "errors": [rule] })))
            .await;
        assert_eq!(code, 400, "{rule}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(field), "{rule}: {message}");
    }
    let (_, faults) = env.admin("GET", "/__admin/faults", None).await;
    assert_eq!(faults["errors"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn admin_service_side_changes() {
    let env = start(base_seed()).await;
    let one = env.put(job("one", JobType::OneTime, JobStatus::Running));
    let sched = env.put(job("sched", JobType::Scheduled, JobStatus::Running));
    for (id, st, code) in [
        (&one, "COMPLETE", 204),
        (&one, "IDLE", 400),
        (&sched, "IDLE", 204),
        (&sched, "COMPLETE", 400),
        (&sched, "PAUSED", 204),
    ] {
        let (c, b) = env
            .admin(
                "PUT",
                &format!("/__admin/jobs/{id}/status"),
                Some(json!({"jobStatus": st})),
            )
            .await;
        assert_eq!(c, code, "{st}: {b}");
    }
    assert_eq!(env.status_of(&one).await, SdkStatus::Complete);
    assert_eq!(env.status_of(&sched).await, SdkStatus::Paused);
    let (c, b) = env
        .admin(
            "POST",
            "/__admin/jobs",
            Some(json!({"name": "late", "jobType": "ONE_TIME", "jobStatus": "RUNNING", "jobId": "late1"})),
        )
        .await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(env.status_of("late1").await, SdkStatus::Running);
    let (c, b) = env
        .admin(
            "POST",
            "/__admin/jobs",
            Some(json!({"name": "bad", "jobType": "ONE_TIME", "jobStatus": "IDLE"})),
        )
        .await;
    assert_eq!(c, 400);
    assert!(b["message"].as_str().unwrap().contains("jobStatus"), "{b}");
    let (c, _) = env.admin("DELETE", "/__admin/jobs/late1", None).await;
    assert_eq!(c, 204);
    let err = env
        .client
        .describe_classification_job()
        .job_id("late1")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let (c, _) = env
        .admin(
            "PUT",
            "/__admin/accounts/111122223333",
            Some(json!({"status": "DISABLED", "paused": true})),
        )
        .await;
    assert_eq!(c, 204);
    let (c, _) = env
        .admin("PUT", "/__admin/accounts/1234", Some(json!({"status": "DISABLED"})))
        .await;
    assert_eq!(c, 400);
    let state = env.admin("GET", "/__admin/state", None).await.1;
    assert_eq!(state["accounts"]["111122223333"]["paused"], true);
}

impl Env {
    fn status_of_raw(&self, id: &str) -> JobStatus {
        let mut e = self.state.lock();
        let snap = e.snapshot(None, None);
        let j = snap["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["jobId"] == id)
            .unwrap()
            .clone();
        serde_json::from_value(j["jobStatus"].clone()).unwrap()
    }
}

const ROLE: &str = "arn:aws:iam::111122223333:role/macie-operator";

fn own_credentials() -> Credentials {
    Credentials::new("AKIDEMULATOR", "secret", None, None, "test")
}

/// Jobs in two AWS accounts and a role in the second one.
fn two_accounts_seed() -> Seed {
    Seed::parse(&format!(
        "roles:\n- {{arn: '{ROLE}', externalId: ext-123}}\n- {{arn: 'arn:aws:iam::444455556666:role/open'}}\n\
         jobs:\n- {{jobId: home1, name: home, jobType: ONE_TIME, jobStatus: RUNNING}}\n\
         - {{jobId: prod1, name: prod, jobType: SCHEDULED, jobStatus: IDLE, awsAccountId: '111122223333'}}\n\
         accounts:\n- {{accountId: '999988887777', status: ENABLED, awsAccountId: '111122223333'}}\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn sts_assume_role_credentials_act_in_the_role_account_until_they_expire() {
    let env = start(two_accounts_seed()).await;
    let sts = sts_client(env.addr, own_credentials());

    let me = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.account(), Some("123456789012"));
    assert_eq!(me.arn(), Some("arn:aws:iam::123456789012:root"));

    let out = sts
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("op-session")
        .external_id("ext-123")
        .send()
        .await
        .unwrap();
    let user = out.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::111122223333:assumed-role/macie-operator/op-session"
    );
    assert!(user.assumed_role_id().ends_with(":op-session"), "{user:?}");
    let c = out.credentials().unwrap();
    let now = std::time::SystemTime::now();
    let expires = std::time::SystemTime::try_from(*c.expiration()).unwrap();
    let lifetime = expires.duration_since(now).unwrap();
    assert!(
        lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3600),
        "{lifetime:?}"
    );
    let role_creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        Some(expires),
        "assumed",
    );

    // Macie with the role's credentials sees the role account's jobs only; the operator's own
    // credentials still see the default account's.
    let prod = client_with(env.addr, "us-east-1", false, role_creds.clone());
    let ids = |r: aws_sdk_macie2::operation::list_classification_jobs::ListClassificationJobsOutput| {
        r.items()
            .iter()
            .filter_map(|j| j.job_id().map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(prod.list_classification_jobs().send().await.unwrap()),
        vec!["prod1"]
    );
    assert_eq!(
        ids(env.client.list_classification_jobs().send().await.unwrap()),
        vec!["home1"]
    );
    let created = prod
        .create_classification_job()
        .client_token("t1")
        .job_type(SdkType::OneTime)
        .name("made-in-prod")
        .s3_job_definition(
            S3JobDefinition::builder()
                .bucket_definitions(
                    S3BucketDefinitionForJob::builder()
                        .account_id("111122223333")
                        .buckets("prod-bucket")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        created
            .job_arn()
            .unwrap()
            .starts_with("arn:aws:macie2:us-east-1:111122223333:classification-job/"),
        "{created:?}"
    );
    prod.update_classification_job()
        .job_id("prod1")
        .job_status(SdkStatus::UserPaused)
        .send()
        .await
        .unwrap();
    let err = env
        .client
        .describe_classification_job()
        .job_id("prod1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    let accounts = prod.list_automated_discovery_accounts().send().await.unwrap();
    assert_eq!(accounts.items().len(), 1);

    let role_sts = sts_client(env.addr, role_creds.clone());
    let who = role_sts.get_caller_identity().send().await.unwrap();
    assert_eq!(who.account(), Some("111122223333"));
    assert_eq!(
        who.arn(),
        Some("arn:aws:sts::111122223333:assumed-role/macie-operator/op-session")
    );

    // The admin API and the call log name the account.
    let (c, state) = env.admin("GET", "/__admin/state?account=111122223333", None).await;
    assert_eq!(c, 200);
    assert_eq!(state["awsAccountId"], "111122223333");
    assert_eq!(state["jobs"].as_array().unwrap().len(), 2, "{state}");
    assert!(state["accounts"]["999988887777"].is_object(), "{state}");
    let (_, home) = env.admin("GET", "/__admin/state", None).await;
    assert_eq!(home["jobs"].as_array().unwrap().len(), 1, "{home}");
    let (c, _) = env.admin("GET", "/__admin/state?account=12", None).await;
    assert_eq!(c, 400);
    let (c, _) = env
        .admin(
            "PUT",
            "/__admin/jobs/prod1/status?account=111122223333",
            Some(json!({"jobStatus": "CANCELLED"})),
        )
        .await;
    assert_eq!(c, 204);
    let (_, calls) = env.admin("GET", "/__admin/calls", None).await;
    let calls = calls["calls"].as_array().unwrap().clone();
    assert_eq!(calls[0]["operation"], "AssumeRole");
    assert_eq!(calls[0]["awsAccountId"], "123456789012");
    assert_eq!(calls[0]["roleArn"], ROLE);
    assert_eq!(calls[0]["roleSessionName"], "op-session");
    assert_eq!(calls[0]["outcome"], "OK");
    assert_eq!(calls[1]["operation"], "CreateClassificationJob");
    assert_eq!(calls[1]["awsAccountId"], "111122223333");
    assert_eq!(calls[1]["name"], "made-in-prod");
    assert_eq!(calls[2]["operation"], "UpdateClassificationJob");
    assert_eq!(calls[2]["awsAccountId"], "111122223333");
    let (_, mine) = env.admin("GET", "/__admin/calls?account=111122223333", None).await;
    assert_eq!(mine["calls"].as_array().unwrap().len(), 2, "{mine}");
    let (_, counters) = env.admin("GET", "/__admin/counters", None).await;
    assert_eq!(counters["AssumeRole"]["ok"], 1);
    assert_eq!(counters["GetCallerIdentity"]["requests"], 2);

    // Past the expiry, both services refuse the credentials.
    env.admin("POST", "/__admin/clock/advance", Some(json!({"seconds": 3601})))
        .await;
    let err = prod.list_classification_jobs().send().await.unwrap_err();
    assert_eq!(err.code(), Some("ExpiredTokenException"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    let err = role_sts.get_caller_identity().send().await.unwrap_err();
    assert_eq!(err.code(), Some("ExpiredTokenException"), "{err:?}");
    assert!(env.client.list_classification_jobs().send().await.is_ok());
}

#[tokio::test]
async fn sts_refuses_unknown_roles_wrong_external_ids_and_bad_parameters() {
    let env = start(two_accounts_seed()).await;
    let sts = sts_client(env.addr, own_credentials());
    let attempt = |arn: &str, ext: Option<&str>, secs: Option<i32>| {
        sts.assume_role()
            .role_arn(arn)
            .role_session_name("s1")
            .set_external_id(ext.map(str::to_string))
            .set_duration_seconds(secs)
            .send()
    };
    for (arn, ext) in [
        ("arn:aws:iam::111122223333:role/nobody", None),
        (ROLE, None),
        (ROLE, Some("wrong-id")),
    ] {
        let err = attempt(arn, ext, None).await.unwrap_err();
        assert_eq!(err.code(), Some("AccessDenied"), "{arn} {ext:?}: {err:?}");
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
        assert!(err.message().unwrap().contains(arn), "{err:?}");
    }
    // A role without an external id takes any; DurationSeconds is honoured within 900..43200.
    let out = attempt("arn:aws:iam::444455556666:role/open", Some("anything"), Some(900))
        .await
        .unwrap();
    let expires = std::time::SystemTime::try_from(*out.credentials().unwrap().expiration()).unwrap();
    assert!(expires.duration_since(std::time::SystemTime::now()).unwrap() <= Duration::from_secs(900));
    for secs in [899, 43201] {
        let err = attempt(ROLE, Some("ext-123"), Some(secs)).await.unwrap_err();
        assert_eq!(err.code(), Some("ValidationError"), "{secs}: {err:?}");
    }
    let (_, counters) = env.admin("GET", "/__admin/counters", None).await;
    assert_eq!(counters["AssumeRole"]["errors"]["AccessDenied"], 3);
    assert_eq!(counters["AssumeRole"]["errors"]["ValidationError"], 2);

    // Fault injection takes the STS operation names.
    let (c, b) = env
        .admin(
            "PUT",
            "/__admin/faults",
            Some(json!({"operations": {"GetCallerIdentity": {"throttleRate": 1.0}}})),
        )
        .await;
    assert_eq!(c, 204, "{b}");
    let err = sts.get_caller_identity().send().await.unwrap_err();
    assert_eq!(err.code(), Some("Throttling"), "{err:?}");
    let (_, counters) = env.admin("GET", "/__admin/counters", None).await;
    assert_eq!(counters["GetCallerIdentity"]["injected"], 1);
}

// ---- CreateClassificationJob: input checks, the definition as Describe returns it, quota ----

type CreateBuilder =
    aws_sdk_macie2::operation::create_classification_job::builders::CreateClassificationJobFluentBuilder;

fn bucket_def(account: &str, buckets: &[&str]) -> S3BucketDefinitionForJob {
    S3BucketDefinitionForJob::builder()
        .account_id(account)
        .set_buckets(Some(buckets.iter().map(|b| b.to_string()).collect()))
        .build()
}

fn buckets_job(defs: Vec<S3BucketDefinitionForJob>) -> S3JobDefinition {
    S3JobDefinition::builder().set_bucket_definitions(Some(defs)).build()
}

/// A CreateClassificationJob call Macie accepts: a one-time job over one bucket.
fn valid_create(client: &Client, token: &str) -> CreateBuilder {
    client
        .create_classification_job()
        .client_token(token)
        .name("valid-job")
        .job_type(SdkType::OneTime)
        .s3_job_definition(buckets_job(vec![bucket_def("111122223333", &["my-bucket"])]))
}

fn daily() -> JobScheduleFrequency {
    JobScheduleFrequency::builder()
        .daily_schedule(DailySchedule::builder().build())
        .build()
}

fn scheduled(b: CreateBuilder) -> CreateBuilder {
    b.job_type(SdkType::Scheduled)
}

type Mutation = Box<dyn Fn(CreateBuilder) -> CreateBuilder>;

fn row(field: &'static str, f: impl Fn(CreateBuilder) -> CreateBuilder + 'static) -> (&'static str, Mutation) {
    (field, Box::new(f))
}

#[tokio::test]
async fn create_refuses_bad_input_with_a_validation_exception_naming_the_field() {
    let env = start(base_seed()).await;
    let rows: Vec<(&str, Mutation)> = vec![
        row("name", |b| b.set_name(None)),
        row("name", |b| b.name("")),
        row("name", |b| b.name("n".repeat(501))),
        row("jobType", |b| b.set_job_type(None)),
        row("jobType", |b| b.job_type(SdkType::from("DAILY"))),
        row("s3JobDefinition", |b| b.set_s3_job_definition(None)),
        row("s3JobDefinition", |b| {
            b.s3_job_definition(S3JobDefinition::builder().build())
        }),
        row("s3JobDefinition", |b| {
            b.s3_job_definition(
                S3JobDefinition::builder()
                    .bucket_definitions(bucket_def("111122223333", &["my-bucket"]))
                    .bucket_criteria(S3BucketCriteriaForJob::builder().build())
                    .build(),
            )
        }),
        row("s3JobDefinition.bucketDefinitions[0].accountId", |b| {
            b.s3_job_definition(buckets_job(vec![bucket_def("12345", &["my-bucket"])]))
        }),
        row("s3JobDefinition.bucketDefinitions[1].buckets", |b| {
            b.s3_job_definition(buckets_job(vec![
                bucket_def("111122223333", &["my-bucket"]),
                bucket_def("444455556666", &[]),
            ]))
        }),
        row("s3JobDefinition.bucketDefinitions[0].buckets[1]", |b| {
            b.s3_job_definition(buckets_job(vec![bucket_def(
                "111122223333",
                &["my-bucket", "Bad_Bucket"],
            )]))
        }),
        row("s3JobDefinition.bucketDefinitions[0].buckets[0]", |b| {
            b.s3_job_definition(buckets_job(vec![bucket_def("111122223333", &["ab"])]))
        }),
        row("s3JobDefinition.bucketDefinitions[0].buckets[0]", |b| {
            b.s3_job_definition(buckets_job(vec![bucket_def("111122223333", &["-starts-with-hyphen"])]))
        }),
        row("scheduleFrequency", |b| b.schedule_frequency(daily())),
        row("scheduleFrequency", scheduled),
        row("scheduleFrequency", |b| {
            scheduled(b).schedule_frequency(
                JobScheduleFrequency::builder()
                    .daily_schedule(DailySchedule::builder().build())
                    .weekly_schedule(WeeklySchedule::builder().day_of_week(DayOfWeek::Monday).build())
                    .build(),
            )
        }),
        row("scheduleFrequency", |b| {
            scheduled(b).schedule_frequency(JobScheduleFrequency::builder().build())
        }),
        row("scheduleFrequency.weeklySchedule.dayOfWeek", |b| {
            scheduled(b).schedule_frequency(
                JobScheduleFrequency::builder()
                    .weekly_schedule(WeeklySchedule::builder().day_of_week(DayOfWeek::from("FUNDAY")).build())
                    .build(),
            )
        }),
        row("scheduleFrequency.monthlySchedule.dayOfMonth", |b| {
            scheduled(b).schedule_frequency(
                JobScheduleFrequency::builder()
                    .monthly_schedule(MonthlySchedule::builder().day_of_month(0).build())
                    .build(),
            )
        }),
        row("scheduleFrequency.monthlySchedule.dayOfMonth", |b| {
            scheduled(b).schedule_frequency(
                JobScheduleFrequency::builder()
                    .monthly_schedule(MonthlySchedule::builder().day_of_month(32).build())
                    .build(),
            )
        }),
        row("samplingPercentage", |b| b.sampling_percentage(0)),
        row("samplingPercentage", |b| b.sampling_percentage(101)),
        row("managedDataIdentifierSelector", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::from("SOME"))
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::Include)
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::Exclude)
                .set_managed_data_identifier_ids(Some(vec![]))
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::All)
                .managed_data_identifier_ids("CREDIT_CARD_NUMBER")
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::Recommended)
                .managed_data_identifier_ids("CREDIT_CARD_NUMBER")
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::None)
                .custom_data_identifier_ids("cdi-1")
                .managed_data_identifier_ids("CREDIT_CARD_NUMBER")
        }),
        row("managedDataIdentifierIds", |b| {
            b.managed_data_identifier_ids("CREDIT_CARD_NUMBER")
        }),
        row("customDataIdentifierIds", |b| {
            b.managed_data_identifier_selector(ManagedDataIdentifierSelector::None)
        }),
        row("tags", |b| (0..51).fold(b, |b, i| b.tags(format!("key-{i}"), "v"))),
        row("tags", |b| b.tags("k".repeat(129), "v")),
        row("tags.owner", |b| b.tags("owner", "v".repeat(257))),
        row("description", |b| b.description("d".repeat(201))),
    ];
    let n = rows.len();
    for (i, (field, mutate)) in rows.into_iter().enumerate() {
        let err = mutate(valid_create(&env.client, &format!("bad-{i}")))
            .send()
            .await
            .expect_err(&format!("row {i} ({field}) must be refused"));
        assert_eq!(err.raw_response().unwrap().status().as_u16(), 400, "row {i}");
        let svc = err.into_service_error();
        assert!(svc.is_validation_exception(), "row {i} ({field}): {svc:?}");
        let message = svc.message().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "row {i}: {message:?} does not name {field}"
        );
    }
    // The SDK always fills clientToken in; a raw request without one is refused too.
    let (status, body) = env
        .admin(
            "POST",
            "/jobs",
            Some(json!({"name": "x", "jobType": "ONE_TIME",
                "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["my-bucket"]}]}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("clientToken: "), "{body}");

    // Nothing was created, and every call is in the call log and the counters.
    let (_, state) = env.admin("GET", "/__admin/state", None).await;
    assert_eq!(state["jobs"], json!([]), "{state}");
    let (_, calls) = env.admin("GET", "/__admin/calls", None).await;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), n + 1);
    assert!(calls.iter().all(|c| c["operation"] == "CreateClassificationJob"
        && c["outcome"] == "ValidationException"
        && c.get("jobId").is_none()));
    assert_eq!(calls[0]["clientToken"], "bad-0");
    assert_eq!(calls[1]["name"], "");
    let (_, counters) = env.admin("GET", "/__admin/counters", None).await;
    assert_eq!(
        counters["CreateClassificationJob"]["errors"]["ValidationException"],
        json!(n + 1)
    );

    // The limits themselves are accepted; initialRun on a one-time job is allowed (and ignored).
    let ok = valid_create(&env.client, "at-the-limits")
        .name("n".repeat(500))
        .description("d".repeat(200))
        .sampling_percentage(1)
        .initial_run(true)
        .set_tags(Some((0..50).map(|i| (format!("{i:0>128}"), "v".repeat(256))).collect()))
        .s3_job_definition(buckets_job(vec![bucket_def(
            "111122223333",
            &["abc", "my.bucket-1", &"a".repeat(63)],
        )]))
        .send()
        .await
        .unwrap();
    let d = env
        .client
        .describe_classification_job()
        .job_id(ok.job_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(d.initial_run(), Some(false), "the model: false for a one-time job");
    assert_eq!(d.tags().unwrap().len(), 50);
    for day in 1..=31 {
        scheduled(valid_create(&env.client, &format!("monthly-{day}")))
            .schedule_frequency(
                JobScheduleFrequency::builder()
                    .monthly_schedule(MonthlySchedule::builder().day_of_month(day).build())
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("dayOfMonth {day}: {e:?}"));
    }
}

#[tokio::test]
async fn describe_returns_the_definition_as_created() {
    let env = start(base_seed()).await;
    let s3 = S3JobDefinition::builder()
        .bucket_definitions(bucket_def("111122223333", &["finance-raw", "finance.archive"]))
        .bucket_definitions(bucket_def("444455556666", &["hr-docs"]))
        .scoping(
            Scoping::builder()
                .excludes(
                    JobScopingBlock::builder()
                        .and(
                            JobScopeTerm::builder()
                                .simple_scope_term(
                                    SimpleScopeTerm::builder()
                                        .comparator(JobComparator::Eq)
                                        .key(ScopeFilterKey::ObjectExtension)
                                        .values("tmp")
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build();
    let monthly = JobScheduleFrequency::builder()
        .monthly_schedule(MonthlySchedule::builder().day_of_month(15).build())
        .build();
    let created = env
        .client
        .create_classification_job()
        .client_token("full-1")
        .name("finance-monthly")
        .description("finance and HR buckets, monthly")
        .job_type(SdkType::Scheduled)
        .initial_run(true)
        .sampling_percentage(50)
        .schedule_frequency(monthly.clone())
        .s3_job_definition(s3.clone())
        .managed_data_identifier_selector(ManagedDataIdentifierSelector::Exclude)
        .managed_data_identifier_ids("CREDIT_CARD_NUMBER")
        .custom_data_identifier_ids("cdi-1")
        .allow_list_ids("al-1")
        .tags("team", "finance")
        .tags("cost-center", "42")
        .send()
        .await
        .unwrap();
    let id = created.job_id().unwrap();
    let d = env
        .client
        .describe_classification_job()
        .job_id(id)
        .send()
        .await
        .unwrap();
    assert_eq!(d.job_id(), Some(id));
    assert_eq!(d.job_arn(), created.job_arn());
    assert_eq!(d.client_token(), Some("full-1"));
    assert_eq!(d.name(), Some("finance-monthly"));
    assert_eq!(d.description(), Some("finance and HR buckets, monthly"));
    assert_eq!(d.job_type(), Some(&SdkType::Scheduled));
    assert_eq!(d.job_status(), Some(&SdkStatus::Running), "initialRun starts a run");
    assert_eq!(d.initial_run(), Some(true));
    assert_eq!(d.sampling_percentage(), Some(50));
    assert_eq!(d.schedule_frequency(), Some(&monthly));
    assert_eq!(d.s3_job_definition(), Some(&s3));
    assert_eq!(
        d.managed_data_identifier_selector(),
        Some(&ManagedDataIdentifierSelector::Exclude)
    );
    assert_eq!(d.managed_data_identifier_ids(), ["CREDIT_CARD_NUMBER"]);
    assert_eq!(d.custom_data_identifier_ids(), ["cdi-1"]);
    assert_eq!(d.allow_list_ids(), ["al-1"]);
    let tags = d.tags().unwrap();
    assert_eq!(tags.len(), 2);
    assert_eq!(tags.get("team").map(String::as_str), Some("finance"));
    assert_eq!(tags.get("cost-center").map(String::as_str), Some("42"));
    assert!(d.created_at().is_some());

    // A one-time job over bucket criteria, with the defaults: no schedule, 100 %, the
    // recommended identifiers (no selector), initialRun false.
    let criteria = S3BucketCriteriaForJob::builder()
        .includes(
            CriteriaBlockForJob::builder()
                .and(
                    CriteriaForJob::builder()
                        .simple_criterion(
                            SimpleCriterionForJob::builder()
                                .comparator(JobComparator::Eq)
                                .key(SimpleCriterionKeyForJob::AccountId)
                                .values("111122223333")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build();
    let by_criteria = env
        .client
        .create_classification_job()
        .client_token("criteria-1")
        .name("by-criteria")
        .job_type(SdkType::OneTime)
        .s3_job_definition(S3JobDefinition::builder().bucket_criteria(criteria.clone()).build())
        .send()
        .await
        .unwrap();
    let d = env
        .client
        .describe_classification_job()
        .job_id(by_criteria.job_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(d.client_token(), Some("criteria-1"));
    assert_eq!(d.s3_job_definition().unwrap().bucket_criteria(), Some(&criteria));
    assert!(d.s3_job_definition().unwrap().bucket_definitions().is_empty());
    assert_eq!(d.schedule_frequency(), None);
    assert_eq!(d.sampling_percentage(), Some(100));
    assert_eq!(d.initial_run(), Some(false));
    assert_eq!(d.managed_data_identifier_selector(), None);
    assert!(d.managed_data_identifier_ids().is_empty());
    assert_eq!(d.tags().map(|t| t.len()), Some(0));
    let listed = env.client.list_classification_jobs().send().await.unwrap();
    let item = listed
        .items()
        .iter()
        .find(|j| j.job_id() == by_criteria.job_id())
        .unwrap();
    assert_eq!(item.bucket_criteria(), Some(&criteria));

    // The call log has both creates.
    let (_, calls) = env.admin("GET", "/__admin/calls", None).await;
    let c = &calls["calls"][0];
    assert_eq!(c["operation"], "CreateClassificationJob");
    assert_eq!(c["jobId"], id);
    assert_eq!(c["name"], "finance-monthly");
    assert_eq!(c["clientToken"], "full-1");
    assert_eq!(c["outcome"], "OK");
    assert_eq!(c["repeated"], false);
}

#[tokio::test]
async fn a_repeated_client_token_returns_the_first_job_and_creates_nothing() {
    let env = start(base_seed()).await;
    let first = valid_create(&env.client, "same-token").send().await.unwrap();
    // Another name, type and schedule: the token alone decides.
    let again = scheduled(valid_create(&env.client, "same-token"))
        .name("another-name")
        .schedule_frequency(daily())
        .send()
        .await
        .unwrap();
    assert_eq!(again.job_id(), first.job_id());
    assert_eq!(again.job_arn(), first.job_arn());
    let (_, state) = env.admin("GET", "/__admin/state", None).await;
    assert_eq!(state["jobs"].as_array().unwrap().len(), 1, "{state}");
    let d = env
        .client
        .describe_classification_job()
        .job_id(first.job_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(d.name(), Some("valid-job"));
    assert_eq!(d.job_type(), Some(&SdkType::OneTime));
    let (_, calls) = env.admin("GET", "/__admin/calls", None).await;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["repeated"], true);
    assert_eq!(calls[1]["jobId"], json!(first.job_id()));
    assert_eq!(calls[1]["name"], "another-name", "the log has what was sent");
    assert_eq!(calls[1]["outcome"], "OK");
    // Another token is another job; a token is per account and region.
    let other = valid_create(&env.client, "other-token").send().await.unwrap();
    assert_ne!(other.job_id(), first.job_id());
    let west = client_for(env.addr, "eu-west-1", false);
    let in_west = valid_create(&west, "same-token").send().await.unwrap();
    assert_ne!(in_west.job_id(), first.job_id());
}

#[tokio::test]
async fn create_quota_throttles_back_to_back_creates_and_admits_spaced_ones() {
    let env = start(Seed {
        create_quota_per_second: Some(2.0),
        ..Seed::default()
    })
    .await;
    let (c, q) = env.admin("GET", "/__admin/quotas", None).await;
    assert_eq!((c, q), (200, json!({"createClassificationJobPerSecond": 2.0})));

    use aws_sdk_macie2::operation::create_classification_job::CreateClassificationJobError;
    let throttled = |err: aws_sdk_macie2::error::SdkError<
        CreateClassificationJobError,
        aws_sdk_macie2::config::http::HttpResponse,
    >| {
        assert_eq!(err.raw_response().unwrap().status().as_u16(), 429);
        let svc = err.into_service_error();
        assert!(svc.is_throttling_exception(), "{svc:?}");
    };
    let jobs = |state: Value| state["jobs"].as_array().unwrap().len();
    let first = valid_create(&env.client, "q-1").send().await.unwrap();
    throttled(valid_create(&env.client, "q-2").send().await.unwrap_err());
    throttled(valid_create(&env.client, "q-3").send().await.unwrap_err());
    assert_eq!(jobs(env.admin("GET", "/__admin/state", None).await.1), 1);
    // Another region has its own bucket.
    let west = client_for(env.addr, "eu-west-1", false);
    valid_create(&west, "west-1").send().await.unwrap();
    // Spaced by 1/rate, every create is admitted.
    for token in ["q-2", "q-3", "q-4"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        valid_create(&env.client, token).send().await.unwrap();
    }
    assert_eq!(jobs(env.admin("GET", "/__admin/state", None).await.1), 4);
    let (_, calls) = env.admin("GET", "/__admin/calls?region=us-east-1", None).await;
    let calls = calls["calls"].as_array().unwrap();
    let outcomes: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c["clientToken"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("q-1", "OK"),
            ("q-2", "ThrottlingException"),
            ("q-3", "ThrottlingException"),
            ("q-2", "OK"),
            ("q-3", "OK"),
            ("q-4", "OK")
        ]
    );
    assert_eq!(calls[0]["jobId"], json!(first.job_id()));
    assert!(calls[1].get("jobId").is_none(), "{}", calls[1]);
    assert_eq!(calls[1]["name"], "valid-job");
    assert_eq!(calls[1]["injected"], false);
    let (_, counters) = env.admin("GET", "/__admin/counters", None).await;
    let c = &counters["CreateClassificationJob"];
    assert_eq!(c["requests"], 7);
    assert_eq!(c["ok"], 5);
    assert_eq!(c["errors"]["ThrottlingException"], 2);
    assert_eq!(c["injected"], 0);

    // The admin API changes the quota: null is unlimited, 0 admits nothing; reset restores
    // the seed's.
    let (c, _) = env
        .admin(
            "PUT",
            "/__admin/quotas",
            Some(json!({"createClassificationJobPerSecond": null})),
        )
        .await;
    assert_eq!(c, 204);
    assert_eq!(
        env.admin("GET", "/__admin/quotas", None).await.1,
        json!({"createClassificationJobPerSecond": null})
    );
    for i in 0..3 {
        valid_create(&env.client, &format!("free-{i}")).send().await.unwrap();
    }
    let (c, _) = env
        .admin(
            "PUT",
            "/__admin/quotas",
            Some(json!({"createClassificationJobPerSecond": 0})),
        )
        .await;
    assert_eq!(c, 204);
    throttled(valid_create(&env.client, "never").send().await.unwrap_err());
    for bad in [
        json!({"createClassificationJobPerSecond": -1}),
        json!({"createJobs": 1}),
    ] {
        let (c, body) = env.admin("PUT", "/__admin/quotas", Some(bad.clone())).await;
        assert_eq!(c, 400, "{bad}: {body}");
    }
    let (c, _) = env.admin("POST", "/__admin/reset", None).await;
    assert_eq!(c, 204);
    assert_eq!(
        env.admin("GET", "/__admin/quotas", None).await.1,
        json!({"createClassificationJobPerSecond": 2.0})
    );
    valid_create(&env.client, "after-reset-1").send().await.unwrap();
    throttled(valid_create(&env.client, "after-reset-2").send().await.unwrap_err());
}
