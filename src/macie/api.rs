//! The Macie calls the MacieJob controller makes, as a trait: the AWS SDK implements it for
//! the operator ([`MacieClients`](super::MacieClients)), and [`FakeMacie`](super::fake::FakeMacie)
//! implements it in process for the reconcile-step tests.

use aws_sdk_macie2::Client;
use aws_sdk_macie2::types::{ListJobsSortAttributeName, ListJobsSortCriteria, OrderBy};
use futures::future::BoxFuture;

use super::jobs::observed;
use super::{MacieError, Place};
use crate::api::DesiredJobStatus;
use crate::api::macie_job::ObservedJob;

/// One page of ListClassificationJobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsPage {
    pub jobs: Vec<ObservedJob>,
    /// The token of the next page; None on the last page.
    pub next_token: Option<String>,
}

/// The Macie API as the job controller uses it, per place (MacieAccount and region).
pub trait MacieApi: Send + Sync {
    /// One page of ListClassificationJobs in a stable order (createdAt ascending).
    fn list_jobs_page<'a>(
        &'a self,
        place: &'a Place,
        page_size: i32,
        token: Option<String>,
    ) -> BoxFuture<'a, Result<JobsPage, MacieError>>;

    /// UpdateClassificationJob, sent once: never retried by the client (a retry after a lost
    /// response could repeat a step that already took effect).
    fn update_job<'a>(
        &'a self,
        place: &'a Place,
        job_id: &'a str,
        to: DesiredJobStatus,
    ) -> BoxFuture<'a, Result<(), MacieError>>;
}

/// ListClassificationJobs through the SDK (the client's standard retries apply: it is a read).
pub async fn sdk_list_jobs_page(
    client: &Client,
    page_size: i32,
    token: Option<String>,
) -> Result<JobsPage, MacieError> {
    let resp = client
        .list_classification_jobs()
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
