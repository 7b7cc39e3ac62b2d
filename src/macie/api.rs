//! The Macie calls the MacieJob controller makes, as a trait: the AWS SDK implements it for
//! the operator ([`MacieClients`](super::MacieClients)), and [`FakeMacie`](super::fake::FakeMacie)
//! implements it in process for the reconcile-step tests.

use aws_sdk_macie2::Client;
use aws_sdk_macie2::types::{ListJobsSortAttributeName, ListJobsSortCriteria, OrderBy};
use futures::future::BoxFuture;

use super::jobs::observed;
use super::{MacieError, Place};
use crate::api::DesiredJobStatus;
use crate::api::job_definition::JobDefinition;
use crate::api::macie_job::ObservedJob;

/// One page of ListClassificationJobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsPage {
    pub jobs: Vec<ObservedJob>,
    /// The token of the next page; None on the last page.
    pub next_token: Option<String>,
}

/// Which jobs a ListClassificationJobs call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobsQuery<'a> {
    /// Every job that can still change: COMPLETE and CANCELLED excluded (jobs are never
    /// deleted, so terminal ones pile up; a terminal job never changes again).
    NotTerminal,
    /// Every job with exactly this name, terminal ones included.
    Named(&'a str),
    /// Every job (`macie-operator export --all`).
    All,
}

/// The statuses no job ever leaves.
pub const TERMINAL_STATUSES: [&str; 2] = ["COMPLETE", "CANCELLED"];

/// The Macie API as the job controller uses it, per place (MacieAccount and region).
pub trait MacieApi: Send + Sync {
    /// One page of ListClassificationJobs in a stable order (createdAt ascending).
    fn list_jobs_page<'a>(
        &'a self,
        place: &'a Place,
        query: JobsQuery<'a>,
        page_size: i32,
        token: Option<String>,
    ) -> BoxFuture<'a, Result<JobsPage, MacieError>>;

    /// DescribeClassificationJob: the job as a sweep would show it; None when there is no
    /// such job.
    fn describe_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedJob>, MacieError>>;

    /// UpdateClassificationJob, sent once: never retried by the client (a retry after a lost
    /// response could repeat a step that already took effect).
    fn update_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
        to: DesiredJobStatus,
    ) -> BoxFuture<'a, Result<(), MacieError>>;

    /// CreateClassificationJob of `definition` named `name` with the idempotency token
    /// `client_token`, sent once (never retried by the client): the job id.
    fn create_job<'a>(&'a self, place: &'a Place, create: &'a NewJob<'a>) -> BoxFuture<'a, Result<String, MacieError>>;

    /// The client token a job was created with (DescribeClassificationJob).
    fn job_client_token<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, MacieError>>;

    /// DescribeClassificationJob: the job's settings in spec.definition's shape (the fields
    /// [`crate::job::drift`] compares; see [`sdk_describe_settings`]); None when there is no
    /// such job.
    fn job_settings<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, MacieError>>;
}

/// A job to create.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub name: &'a str,
    pub definition: &'a JobDefinition,
    pub client_token: &'a str,
    /// Every tag of the job: the definition's and the operator's own.
    pub tags: &'a std::collections::BTreeMap<String, String>,
}

/// ListClassificationJobs through the SDK (the client's standard retries apply: it is a read).
pub async fn sdk_list_jobs_page(
    client: &Client,
    query: JobsQuery<'_>,
    page_size: i32,
    token: Option<String>,
) -> Result<JobsPage, MacieError> {
    use aws_sdk_macie2::types::{JobComparator, ListJobsFilterCriteria, ListJobsFilterKey, ListJobsFilterTerm};
    let filter = match query {
        JobsQuery::All => None,
        JobsQuery::NotTerminal => Some(
            ListJobsFilterCriteria::builder()
                .excludes(
                    ListJobsFilterTerm::builder()
                        .key(ListJobsFilterKey::JobStatus)
                        .comparator(JobComparator::Eq)
                        .set_values(Some(TERMINAL_STATUSES.map(str::to_string).to_vec()))
                        .build(),
                )
                .build(),
        ),
        JobsQuery::Named(name) => Some(
            ListJobsFilterCriteria::builder()
                .includes(
                    ListJobsFilterTerm::builder()
                        .key(ListJobsFilterKey::Name)
                        .comparator(JobComparator::Eq)
                        .values(name)
                        .build(),
                )
                .build(),
        ),
    };
    let resp = client
        .list_classification_jobs()
        .set_filter_criteria(filter)
        .max_results(page_size)
        .sort_criteria(
            ListJobsSortCriteria::builder()
                .attribute_name(ListJobsSortAttributeName::CreatedAt)
                .order_by(OrderBy::Asc)
                .build(),
        )
        .set_next_token(token)
        .send()
        .await
        .map_err(MacieError::from_sdk)?;
    Ok(JobsPage {
        jobs: resp
            .items()
            .iter()
            .filter(|j| j.job_id().is_some())
            .map(observed)
            .collect(),
        next_token: resp.next_token().filter(|t| !t.is_empty()).map(str::to_string),
    })
}

/// UpdateClassificationJob through the SDK with its retries disabled. Throttling is retried by
/// the caller (the call was not processed); anything uncertain waits for the next sweep.
pub async fn sdk_update_job(client: &Client, job_id: &str, to: DesiredJobStatus) -> Result<(), MacieError> {
    use aws_sdk_macie2::config::retry::RetryConfig;
    client
        .update_classification_job()
        .job_id(job_id)
        .job_status(aws_sdk_macie2::types::JobStatus::from(to.as_str()))
        .customize()
        .config_override(aws_sdk_macie2::config::Config::builder().retry_config(RetryConfig::disabled()))
        .send()
        .await
        .map(|_| ())
        .map_err(MacieError::from_sdk)
}

/// CreateClassificationJob through the SDK, with its retries disabled (a retry is a repeated
/// create; throttling is retried by the caller's queue). The definition goes as declared.
pub async fn sdk_create_job(client: &Client, job: &NewJob<'_>) -> Result<String, MacieError> {
    use aws_sdk_macie2::config::retry::RetryConfig;
    let d = job.definition;
    let resp = client
        .create_classification_job()
        .name(job.name)
        .client_token(job.client_token)
        .job_type(aws_sdk_macie2::types::JobType::from(d.job_type.as_str()))
        .set_description(d.description.clone())
        .set_initial_run(d.initial_run)
        .set_sampling_percentage(d.sampling_percentage)
        .set_schedule_frequency(d.schedule_frequency.as_ref().map(sdk::schedule))
        .s3_job_definition(sdk::s3_job_definition(&d.s3_job_definition))
        .set_managed_data_identifier_selector(
            d.managed_data_identifier_selector
                .map(|m| aws_sdk_macie2::types::ManagedDataIdentifierSelector::from(m.as_str())),
        )
        .set_managed_data_identifier_ids(d.managed_data_identifier_ids.clone())
        .set_custom_data_identifier_ids(d.custom_data_identifier_ids.clone())
        .set_allow_list_ids(d.allow_list_ids.clone())
        .set_tags(Some(job.tags.clone().into_iter().collect()))
        .customize()
        .config_override(aws_sdk_macie2::config::Config::builder().retry_config(RetryConfig::disabled()))
        .send()
        .await
        .map_err(MacieError::from_sdk)?;
    resp.job_id().map(str::to_string).ok_or_else(|| MacieError::Uncertain {
        code: "ResponseError".into(),
        message: "CreateClassificationJob answered without a jobId".into(),
    })
}

/// DescribeClassificationJob through the SDK: the job's client token.
pub async fn sdk_job_client_token(client: &Client, job_id: &str) -> Result<Option<String>, MacieError> {
    let resp = client
        .describe_classification_job()
        .job_id(job_id)
        .send()
        .await
        .map_err(MacieError::from_sdk)?;
    Ok(resp.client_token().map(str::to_string))
}

/// The definition's types as the SDK's.
mod sdk {
    use aws_sdk_macie2::types as t;

    use crate::api::job_definition as d;

    pub fn schedule(s: &d::ScheduleFrequency) -> t::JobScheduleFrequency {
        t::JobScheduleFrequency::builder()
            .set_daily_schedule(s.daily_schedule.as_ref().map(|_| t::DailySchedule::builder().build()))
            .set_weekly_schedule(s.weekly_schedule.as_ref().map(|w| {
                t::WeeklySchedule::builder()
                    .day_of_week(t::DayOfWeek::from(day(w.day_of_week)))
                    .build()
            }))
            .set_monthly_schedule(
                s.monthly_schedule
                    .as_ref()
                    .map(|m| t::MonthlySchedule::builder().day_of_month(m.day_of_month).build()),
            )
            .build()
    }

    fn day(d: d::DayOfWeek) -> &'static str {
        match d {
            d::DayOfWeek::Sunday => "SUNDAY",
            d::DayOfWeek::Monday => "MONDAY",
            d::DayOfWeek::Tuesday => "TUESDAY",
            d::DayOfWeek::Wednesday => "WEDNESDAY",
            d::DayOfWeek::Thursday => "THURSDAY",
            d::DayOfWeek::Friday => "FRIDAY",
            d::DayOfWeek::Saturday => "SATURDAY",
        }
    }

    fn comparator(c: d::Comparator) -> t::JobComparator {
        t::JobComparator::from(match c {
            d::Comparator::Eq => "EQ",
            d::Comparator::Gt => "GT",
            d::Comparator::Gte => "GTE",
            d::Comparator::Lt => "LT",
            d::Comparator::Lte => "LTE",
            d::Comparator::Ne => "NE",
            d::Comparator::Contains => "CONTAINS",
            d::Comparator::StartsWith => "STARTS_WITH",
        })
    }

    pub fn s3_job_definition(s: &d::S3JobDefinition) -> t::S3JobDefinition {
        t::S3JobDefinition::builder()
            .set_bucket_definitions(s.bucket_definitions.as_ref().map(|defs| {
                defs.iter()
                    .map(|b| {
                        t::S3BucketDefinitionForJob::builder()
                            .account_id(&b.account_id)
                            .set_buckets(Some(b.buckets.clone()))
                            .build()
                    })
                    .collect()
            }))
            .set_bucket_criteria(s.bucket_criteria.as_ref().map(|c| {
                t::S3BucketCriteriaForJob::builder()
                    .set_includes(c.includes.as_ref().map(criteria_block))
                    .set_excludes(c.excludes.as_ref().map(criteria_block))
                    .build()
            }))
            .set_scoping(s.scoping.as_ref().map(|sc| {
                t::Scoping::builder()
                    .set_includes(sc.includes.as_ref().map(scoping_block))
                    .set_excludes(sc.excludes.as_ref().map(scoping_block))
                    .build()
            }))
            .build()
    }

    fn criteria_block(b: &d::CriteriaBlock) -> t::CriteriaBlockForJob {
        t::CriteriaBlockForJob::builder()
            .set_and(Some(
                b.and
                    .iter()
                    .map(|c| {
                        t::CriteriaForJob::builder()
                            .set_simple_criterion(c.simple_criterion.as_ref().map(|s| {
                                t::SimpleCriterionForJob::builder()
                                    .comparator(comparator(s.comparator))
                                    .key(t::SimpleCriterionKeyForJob::from(match s.key {
                                        d::BucketCriterionKey::AccountId => "ACCOUNT_ID",
                                        d::BucketCriterionKey::S3BucketName => "S3_BUCKET_NAME",
                                        d::BucketCriterionKey::S3BucketEffectivePermission => {
                                            "S3_BUCKET_EFFECTIVE_PERMISSION"
                                        }
                                        d::BucketCriterionKey::S3BucketSharedAccess => "S3_BUCKET_SHARED_ACCESS",
                                    }))
                                    .set_values(Some(s.values.clone()))
                                    .build()
                            }))
                            .set_tag_criterion(c.tag_criterion.as_ref().map(|tc| {
                                t::TagCriterionForJob::builder()
                                    .comparator(comparator(tc.comparator))
                                    .set_tag_values(Some(
                                        tc.tag_values
                                            .iter()
                                            .map(|p| {
                                                t::TagCriterionPairForJob::builder()
                                                    .set_key(p.key.clone())
                                                    .set_value(p.value.clone())
                                                    .build()
                                            })
                                            .collect(),
                                    ))
                                    .build()
                            }))
                            .build()
                    })
                    .collect(),
            ))
            .build()
    }

    fn scoping_block(b: &d::ScopingBlock) -> t::JobScopingBlock {
        t::JobScopingBlock::builder()
            .set_and(Some(
                b.and
                    .iter()
                    .map(|term| {
                        t::JobScopeTerm::builder()
                            .set_simple_scope_term(term.simple_scope_term.as_ref().map(|s| {
                                t::SimpleScopeTerm::builder()
                                    .comparator(comparator(s.comparator))
                                    .key(t::ScopeFilterKey::from(match s.key {
                                        d::ScopeKey::ObjectExtension => "OBJECT_EXTENSION",
                                        d::ScopeKey::ObjectLastModifiedDate => "OBJECT_LAST_MODIFIED_DATE",
                                        d::ScopeKey::ObjectSize => "OBJECT_SIZE",
                                        d::ScopeKey::ObjectKey => "OBJECT_KEY",
                                    }))
                                    .set_values(Some(s.values.clone()))
                                    .build()
                            }))
                            .set_tag_scope_term(term.tag_scope_term.as_ref().map(|ts| {
                                t::TagScopeTerm::builder()
                                    .comparator(comparator(ts.comparator))
                                    .key(&ts.key)
                                    .set_tag_values(Some(
                                        ts.tag_values
                                            .iter()
                                            .map(|p| {
                                                t::TagValuePair::builder()
                                                    .set_key(p.key.clone())
                                                    .set_value(p.value.clone())
                                                    .build()
                                            })
                                            .collect(),
                                    ))
                                    .target(t::TagTarget::S3Object)
                                    .build()
                            }))
                            .build()
                    })
                    .collect(),
            ))
            .build()
    }
}

/// DescribeClassificationJob through the SDK: the settings a definition declares, in its JSON
/// shape (jobType, description, samplingPercentage, scheduleFrequency,
/// managedDataIdentifierSelector and the three id lists, s3JobDefinition's bucketDefinitions,
/// bucketCriteria and scoping, tags).
pub async fn sdk_describe_settings(client: &Client, job_id: &str) -> Result<Option<serde_json::Value>, MacieError> {
    use serde_json::{Map, Value, json};
    let d = match client.describe_classification_job().job_id(job_id).send().await {
        Ok(d) => d,
        Err(e) => {
            return match MacieError::from_sdk(e) {
                MacieError::NotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
    };
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    };
    let strings = |v: &[String]| json!(v);
    put("jobType", d.job_type().map(|t| json!(t.as_str())));
    put("description", d.description().map(|s| json!(s)));
    put("samplingPercentage", d.sampling_percentage().map(|p| json!(p)));
    put(
        "scheduleFrequency",
        d.schedule_frequency().map(|f| {
            if let Some(w) = f.weekly_schedule() {
                json!({"weeklySchedule": {"dayOfWeek": w.day_of_week().map(|d| d.as_str())}})
            } else if let Some(m) = f.monthly_schedule() {
                json!({"monthlySchedule": {"dayOfMonth": m.day_of_month()}})
            } else {
                json!({"dailySchedule": {}})
            }
        }),
    );
    put(
        "managedDataIdentifierSelector",
        d.managed_data_identifier_selector().map(|s| json!(s.as_str())),
    );
    put(
        "managedDataIdentifierIds",
        Some(strings(d.managed_data_identifier_ids())),
    );
    put("customDataIdentifierIds", Some(strings(d.custom_data_identifier_ids())));
    put("allowListIds", Some(strings(d.allow_list_ids())));
    let s3 = d.s3_job_definition();
    let buckets: Vec<Value> = (s3.map(|s| s.bucket_definitions()).unwrap_or_default())
        .iter()
        .map(|b| json!({"accountId": b.account_id(), "buckets": b.buckets()}))
        .collect();
    let mut s3_json = json!({ "bucketDefinitions": buckets });
    if let Some(c) = s3.and_then(|s| s.bucket_criteria()) {
        s3_json["bucketCriteria"] = json!({
            "includes": c.includes().map(settings::criteria_block),
            "excludes": c.excludes().map(settings::criteria_block),
        });
    }
    if let Some(sc) = s3.and_then(|s| s.scoping()) {
        s3_json["scoping"] = json!({
            "includes": sc.includes().map(settings::scoping_block),
            "excludes": sc.excludes().map(settings::scoping_block),
        });
    }
    put("s3JobDefinition", Some(s3_json));
    put("tags", d.tags().map(|t| json!(t)));
    Ok(Some(Value::Object(out)))
}

/// DescribeClassificationJob's bucket criteria and scoping in spec.definition's JSON shape
/// (absent values as null; the comparison drops nulls).
mod settings {
    use aws_sdk_macie2::types as t;
    use serde_json::{Value, json};

    fn pairs<'a>(kv: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>) -> Vec<Value> {
        kv.map(|(k, v)| json!({"key": k, "value": v})).collect()
    }

    pub fn criteria_block(b: &t::CriteriaBlockForJob) -> Value {
        let and: Vec<Value> = (b.and().iter())
            .map(|c| {
                json!({
                    "simpleCriterion": c.simple_criterion().map(|s| json!({
                        "comparator": s.comparator().map(|x| x.as_str()),
                        "key": s.key().map(|x| x.as_str()),
                        "values": s.values(),
                    })),
                    "tagCriterion": c.tag_criterion().map(|tc| json!({
                        "comparator": tc.comparator().map(|x| x.as_str()),
                        "tagValues": pairs(tc.tag_values().iter().map(|p| (p.key(), p.value()))),
                    })),
                })
            })
            .collect();
        json!({ "and": and })
    }

    pub fn scoping_block(b: &t::JobScopingBlock) -> Value {
        let and: Vec<Value> = (b.and().iter())
            .map(|term| {
                json!({
                    "simpleScopeTerm": term.simple_scope_term().map(|s| json!({
                        "comparator": s.comparator().map(|x| x.as_str()),
                        "key": s.key().map(|x| x.as_str()),
                        "values": s.values(),
                    })),
                    "tagScopeTerm": term.tag_scope_term().map(|ts| json!({
                        "comparator": ts.comparator().map(|x| x.as_str()),
                        "key": ts.key(),
                        "tagValues": pairs(ts.tag_values().iter().map(|p| (p.key(), p.value()))),
                        "target": ts.target().map(|x| x.as_str()),
                    })),
                })
            })
            .collect();
        json!({ "and": and })
    }
}

/// DescribeClassificationJob through the SDK, as a sweep would show the job.
pub async fn sdk_describe_job(client: &Client, job_id: &str) -> Result<Option<ObservedJob>, MacieError> {
    match client.describe_classification_job().job_id(job_id).send().await {
        Ok(d) => Ok(Some(ObservedJob {
            job_id: d.job_id().unwrap_or(job_id).to_string(),
            name: d.name().map(str::to_string),
            job_type: d.job_type().map(|t| t.as_str().to_string()),
            job_status: d.job_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            created_at: super::jobs::time(d.created_at()),
            last_run_error_status: d
                .last_run_error_status()
                .and_then(|s| s.code())
                .map(|c| c.as_str().to_string()),
            user_paused_details: d
                .user_paused_details()
                .map(|p| crate::api::macie_job::UserPausedDetails {
                    job_paused_at: super::jobs::time(p.job_paused_at()),
                    job_expires_at: super::jobs::time(p.job_expires_at()),
                    job_imminent_expiration_health_event_arn: p
                        .job_imminent_expiration_health_event_arn()
                        .map(str::to_string),
                }),
        })),
        Err(e) => match MacieError::from_sdk(e) {
            MacieError::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}
