//! Wire types of the Macie API subset the emulator serves, named and shaped as in the
//! official service model (botocore `macie2/2020-01-01/service-2.json`).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// `JobStatus` in the service model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Running,
    Paused,
    Cancelled,
    Complete,
    Idle,
    UserPaused,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Cancelled,
        JobStatus::Complete,
        JobStatus::Idle,
        JobStatus::UserPaused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Paused => "PAUSED",
            JobStatus::Cancelled => "CANCELLED",
            JobStatus::Complete => "COMPLETE",
            JobStatus::Idle => "IDLE",
            JobStatus::UserPaused => "USER_PAUSED",
        }
    }

    /// The transitions `UpdateClassificationJob` accepts (Macie API reference):
    /// CANCELLED from IDLE, PAUSED, RUNNING, USER_PAUSED; RUNNING from USER_PAUSED;
    /// USER_PAUSED from IDLE, PAUSED, RUNNING. Everything else is rejected.
    pub fn can_update_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Idle | Paused | Running | UserPaused, Cancelled)
                | (UserPaused, Running)
                | (Idle | Paused | Running, UserPaused)
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

/// `JobType` in the service model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobType {
    OneTime,
    Scheduled,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::OneTime => "ONE_TIME",
            JobType::Scheduled => "SCHEDULED",
        }
    }
}

/// `AutomatedDiscoveryAccountStatus` (and `AutomatedDiscoveryStatus`) in the service model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryStatus {
    Enabled,
    Disabled,
}

/// `LastRunErrorStatusCode` in the service model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LastRunErrorCode {
    #[default]
    None,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3BucketDefinitionForJob {
    pub account_id: String,
    pub buckets: Vec<String>,
}

/// A timestamp in the `iso8601` format the service model uses for `__timestampIso8601`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn millis(self) -> u128 {
        self.0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    }

    /// Parses RFC 3339 / ISO 8601 (`2026-01-02T03:04:05Z`, fractional seconds allowed) or epoch
    /// milliseconds, the two forms Macie accepts in `createdAt` filter values.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let ms: u64 = s.parse().map_err(|_| format!("invalid timestamp {s:?}"))?;
            return Ok(Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)));
        }
        humantime::parse_rfc3339(s)
            .or_else(|_| humantime::parse_rfc3339_weak(s))
            .map(Timestamp)
            .map_err(|_| format!("invalid timestamp {s:?}: expected ISO 8601 (UTC) or epoch milliseconds"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPausedDetails {
    pub job_expires_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_imminent_expiration_health_event_arn: Option<String>,
    pub job_paused_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastRunErrorStatus {
    pub code: LastRunErrorCode,
}

/// `JobSummary`, as returned by ListClassificationJobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_criteria: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_definitions: Option<Vec<S3BucketDefinitionForJob>>,
    pub created_at: Timestamp,
    pub job_id: String,
    pub job_status: JobStatus,
    pub job_type: JobType,
    pub last_run_error_status: LastRunErrorStatus,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_paused_details: Option<UserPausedDetails>,
}

/// Error types of the service model, with their HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    ValidationException,
    ServiceQuotaExceededException,
    AccessDeniedException,
    ResourceNotFoundException,
    ConflictException,
    ThrottlingException,
    InternalServerException,
    UnprocessableEntityException,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::ValidationException,
        ErrorCode::ServiceQuotaExceededException,
        ErrorCode::AccessDeniedException,
        ErrorCode::ResourceNotFoundException,
        ErrorCode::ConflictException,
        ErrorCode::ThrottlingException,
        ErrorCode::InternalServerException,
        ErrorCode::UnprocessableEntityException,
    ];

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationException => 400,
            ErrorCode::ServiceQuotaExceededException => 402,
            ErrorCode::AccessDeniedException => 403,
            ErrorCode::ResourceNotFoundException => 404,
            ErrorCode::ConflictException => 409,
            ErrorCode::UnprocessableEntityException => 422,
            ErrorCode::ThrottlingException => 429,
            ErrorCode::InternalServerException => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationException => "ValidationException",
            ErrorCode::ServiceQuotaExceededException => "ServiceQuotaExceededException",
            ErrorCode::AccessDeniedException => "AccessDeniedException",
            ErrorCode::ResourceNotFoundException => "ResourceNotFoundException",
            ErrorCode::ConflictException => "ConflictException",
            ErrorCode::ThrottlingException => "ThrottlingException",
            ErrorCode::InternalServerException => "InternalServerException",
            ErrorCode::UnprocessableEntityException => "UnprocessableEntityException",
        }
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
            format!("{s:?} is not a Macie error code (one of {})", known.join(", "))
        })
    }
}

/// An error answered to an API call: the type travels in `x-amzn-errortype`, the body has only
/// `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// HTTP status; usually `code.http_status()`, but "Macie is not enabled" is a 401.
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: code.http_status(),
            message: message.into(),
        }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::ValidationException, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_iso8601_and_accept_epoch_millis() {
        let t = Timestamp::parse("2026-01-02T03:04:05.678Z").unwrap();
        assert_eq!(t.to_string(), "2026-01-02T03:04:05.678Z");
        assert_eq!(Timestamp::parse(&t.millis().to_string()).unwrap(), t);
        assert_eq!(
            Timestamp::parse("2026-01-02T03:04:05Z").unwrap().to_string(),
            "2026-01-02T03:04:05.000Z"
        );
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn error_codes_parse_from_their_names_with_the_model_status() {
        for c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(c));
        }
        assert_eq!(
            "AccessDeniedException".parse::<ErrorCode>().map(ErrorCode::http_status),
            Ok(403)
        );
        let err = "AccessDenied".parse::<ErrorCode>().unwrap_err();
        assert!(err.contains("\"AccessDenied\" is not a Macie error code"), "{err}");
    }

    #[test]
    fn transition_table_has_exactly_the_documented_cells() {
        let valid: Vec<(JobStatus, JobStatus)> = JobStatus::ALL
            .into_iter()
            .flat_map(|from| JobStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.can_update_to(*to))
            .collect();
        use JobStatus::*;
        assert_eq!(
            valid,
            vec![
                (Running, Cancelled),
                (Running, UserPaused),
                (Paused, Cancelled),
                (Paused, UserPaused),
                (Idle, Cancelled),
                (Idle, UserPaused),
                (UserPaused, Running),
                (UserPaused, Cancelled),
            ]
        );
    }
}
