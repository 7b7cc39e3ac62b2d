//! CreateClassificationJob input: checked as Macie checks it, field by field, every error a
//! ValidationException whose message starts with the path of the offending field (e.g.
//! `s3JobDefinition.bucketDefinitions[0].buckets[1]: ...`).
//!
//! The limits are those of the service model's documentation (`CreateClassificationJobRequest`,
//! `JobScheduleFrequency`, `MonthlySchedule`, `ManagedDataIdentifierSelector`, `TagMap`) and of
//! S3 bucket naming.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::model::{ApiError, JobType};

/// Longest job name (characters).
pub const MAX_NAME: usize = 500;
/// Longest job description (characters).
pub const MAX_DESCRIPTION: usize = 200;
/// Most tags on a job.
pub const MAX_TAGS: usize = 50;
/// Longest tag key and tag value (characters).
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;

const DAYS_OF_WEEK: [&str; 7] = [
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
    "SUNDAY",
];
const SELECTORS: [&str; 5] = ["ALL", "EXCLUDE", "INCLUDE", "NONE", "RECOMMENDED"];

/// A CreateClassificationJob request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefinition {
    pub name: String,
    pub client_token: String,
    pub job_type: JobType,
    pub description: Option<String>,
    /// As sent; Macie ignores it for a ONE_TIME job.
    pub initial_run: Option<bool>,
    pub sampling_percentage: Option<i64>,
    /// As sent (SCHEDULED jobs only).
    pub schedule_frequency: Option<Value>,
    /// As sent: exactly one of `bucketDefinitions` and `bucketCriteria`, maybe `scoping`.
    pub s3_job_definition: Value,
    pub managed_data_identifier_selector: Option<String>,
    pub managed_data_identifier_ids: Option<Vec<String>>,
    pub custom_data_identifier_ids: Option<Vec<String>>,
    pub allow_list_ids: Option<Vec<String>>,
    pub tags: BTreeMap<String, String>,
}

impl JobDefinition {
    /// Checks a CreateClassificationJob body. Fields the model does not know are ignored, as the
    /// service does; a JSON `null` is the same as an absent field.
    pub fn parse(body: &Value) -> Result<JobDefinition, ApiError> {
        let Some(obj) = body.as_object() else {
            return Err(invalid("", "the request body must be a JSON object"));
        };
        let name = required_string(obj, "name")?;
        let len = name.chars().count();
        if len == 0 || len > MAX_NAME {
            return Err(invalid(
                "name",
                format!("must be 1 to {MAX_NAME} characters (got {len})"),
            ));
        }
        let client_token = required_string(obj, "clientToken")?;
        if client_token.is_empty() {
            return Err(invalid("clientToken", "must not be empty"));
        }
        let job_type = match required_string(obj, "jobType")?.as_str() {
            "ONE_TIME" => JobType::OneTime,
            "SCHEDULED" => JobType::Scheduled,
            other => {
                return Err(invalid(
                    "jobType",
                    format!("{other:?} is not one of ONE_TIME, SCHEDULED"),
                ));
            }
        };
        let description = optional_string(obj, "description")?;
        if let Some(d) = &description {
            let len = d.chars().count();
            if len > MAX_DESCRIPTION {
                return Err(invalid(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION} characters (got {len})"),
                ));
            }
        }
        let initial_run = match field(obj, "initialRun") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(invalid("initialRun", "must be a boolean")),
        };
        let sampling_percentage = match field(obj, "samplingPercentage") {
            None => None,
            Some(v) => {
                let p = v
                    .as_i64()
                    .ok_or_else(|| invalid("samplingPercentage", "must be an integer"))?;
                if !(1..=100).contains(&p) {
                    return Err(invalid("samplingPercentage", format!("{p} is not between 1 and 100")));
                }
                Some(p)
            }
        };
        let schedule_frequency = field(obj, "scheduleFrequency").cloned();
        match (job_type, &schedule_frequency) {
            (JobType::OneTime, Some(_)) => {
                return Err(invalid("scheduleFrequency", "must not be given for a ONE_TIME job"));
            }
            (JobType::Scheduled, None) => {
                return Err(invalid("scheduleFrequency", "is required for a SCHEDULED job"));
            }
            (JobType::Scheduled, Some(f)) => check_schedule(f)?,
            (JobType::OneTime, None) => {}
        }
        let s3_job_definition = field(obj, "s3JobDefinition")
            .cloned()
            .ok_or_else(|| invalid("s3JobDefinition", "is required"))?;
        check_s3_job_definition(&s3_job_definition)?;
        let managed_data_identifier_selector = optional_string(obj, "managedDataIdentifierSelector")?;
        if let Some(s) = &managed_data_identifier_selector
            && !SELECTORS.contains(&s.as_str())
        {
            return Err(invalid(
                "managedDataIdentifierSelector",
                format!("{s:?} is not one of {}", SELECTORS.join(", ")),
            ));
        }
        let managed_data_identifier_ids = string_list(obj, "managedDataIdentifierIds")?;
        let custom_data_identifier_ids = string_list(obj, "customDataIdentifierIds")?;
        let allow_list_ids = string_list(obj, "allowListIds")?;
        let selector = managed_data_identifier_selector.as_deref().unwrap_or("RECOMMENDED");
        let managed_ids = managed_data_identifier_ids.as_ref().map_or(0, Vec::len);
        match selector {
            "INCLUDE" | "EXCLUDE" if managed_ids == 0 => {
                return Err(invalid(
                    "managedDataIdentifierIds",
                    format!(
                        "list at least one managed data identifier when managedDataIdentifierSelector is {selector}"
                    ),
                ));
            }
            "ALL" | "NONE" | "RECOMMENDED" if managed_ids > 0 => {
                return Err(invalid(
                    "managedDataIdentifierIds",
                    format!("must not be given when managedDataIdentifierSelector is {selector}"),
                ));
            }
            "NONE" if custom_data_identifier_ids.as_ref().is_none_or(Vec::is_empty) => {
                return Err(invalid(
                    "customDataIdentifierIds",
                    "list at least one custom data identifier when managedDataIdentifierSelector is NONE",
                ));
            }
            _ => {}
        }
        let tags = check_tags(field(obj, "tags"))?;
        Ok(JobDefinition {
            name,
            client_token,
            job_type,
            description,
            initial_run,
            sampling_percentage,
            schedule_frequency,
            s3_job_definition,
            managed_data_identifier_selector,
            managed_data_identifier_ids,
            custom_data_identifier_ids,
            allow_list_ids,
            tags,
        })
    }

    /// The job's settings as DescribeClassificationJob returns them (the model's
    /// `DescribeClassificationJobResponse`); absent values are `null`, dropped on the way out.
    pub fn describe(&self) -> Value {
        let selector = self.managed_data_identifier_selector.as_deref();
        json!({
            "allowListIds": self.allow_list_ids,
            "clientToken": self.client_token,
            // "null if the job is configured to use only managed data identifiers"
            "customDataIdentifierIds": self.custom_data_identifier_ids.as_ref().filter(|ids| !ids.is_empty()),
            "description": self.description,
            // "This value is also false for a one-time job."
            "initialRun": self.job_type == JobType::Scheduled && self.initial_run.unwrap_or(false),
            // "null if the job's managed data identifier selection type is ALL, NONE, or RECOMMENDED"
            "managedDataIdentifierIds": self
                .managed_data_identifier_ids
                .as_ref()
                .filter(|_| matches!(selector, Some("INCLUDE" | "EXCLUDE"))),
            "managedDataIdentifierSelector": selector,
            "samplingPercentage": self.sampling_percentage.unwrap_or(100),
            "scheduleFrequency": self.schedule_frequency,
            "s3JobDefinition": self.s3_job_definition,
            "tags": self.tags,
        })
    }
}

fn invalid(path: &str, problem: impl std::fmt::Display) -> ApiError {
    if path.is_empty() {
        ApiError::validation(problem.to_string())
    } else {
        ApiError::validation(format!("{path}: {problem}"))
    }
}

/// A member of an object; `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn required_string(obj: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    optional_string(obj, name)?.ok_or_else(|| invalid(name, "is required"))
}

fn optional_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

fn string_list(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(&format!("{name}[{i}]"), "must be a string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid(name, "must be a list of strings")),
    }
}

fn check_schedule(f: &Value) -> Result<(), ApiError> {
    const P: &str = "scheduleFrequency";
    let obj = f.as_object().ok_or_else(|| invalid(P, "must be an object"))?;
    let given: Vec<&str> = ["dailySchedule", "weeklySchedule", "monthlySchedule"]
        .into_iter()
        .filter(|k| field(obj, k).is_some())
        .collect();
    if given.len() != 1 {
        return Err(invalid(
            P,
            format!(
                "specify exactly one of dailySchedule, weeklySchedule and monthlySchedule (got {})",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            ),
        ));
    }
    let (key, value) = (given[0], &obj[given[0]]);
    let schedule = value
        .as_object()
        .ok_or_else(|| invalid(&format!("{P}.{key}"), "must be an object"))?;
    match key {
        "weeklySchedule" => {
            let path = format!("{P}.weeklySchedule.dayOfWeek");
            match field(schedule, "dayOfWeek") {
                None => return Err(invalid(&path, "is required")),
                Some(Value::String(d)) if DAYS_OF_WEEK.contains(&d.as_str()) => {}
                Some(other) => {
                    return Err(invalid(
                        &path,
                        format!("{other} is not one of {}", DAYS_OF_WEEK.join(", ")),
                    ));
                }
            }
        }
        "monthlySchedule" => {
            let path = format!("{P}.monthlySchedule.dayOfMonth");
            match field(schedule, "dayOfMonth") {
                None => return Err(invalid(&path, "is required")),
                Some(v) => match v.as_i64() {
                    Some(d) if (1..=31).contains(&d) => {}
                    _ => return Err(invalid(&path, format!("{v} is not an integer between 1 and 31"))),
                },
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_s3_job_definition(d: &Value) -> Result<(), ApiError> {
    const P: &str = "s3JobDefinition";
    let obj = d.as_object().ok_or_else(|| invalid(P, "must be an object"))?;
    let defs = field(obj, "bucketDefinitions");
    let criteria = field(obj, "bucketCriteria");
    match (defs, criteria) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                P,
                "specify exactly one of bucketDefinitions and bucketCriteria, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                P,
                "specify exactly one of bucketDefinitions and bucketCriteria (got neither)",
            ));
        }
        (Some(defs), None) => check_bucket_definitions(defs)?,
        (None, Some(c)) if !c.is_object() => {
            return Err(invalid(&format!("{P}.bucketCriteria"), "must be an object"));
        }
        (None, Some(_)) => {}
    }
    if let Some(s) = field(obj, "scoping")
        && !s.is_object()
    {
        return Err(invalid(&format!("{P}.scoping"), "must be an object"));
    }
    Ok(())
}

fn check_bucket_definitions(defs: &Value) -> Result<(), ApiError> {
    const P: &str = "s3JobDefinition.bucketDefinitions";
    let defs = defs.as_array().ok_or_else(|| invalid(P, "must be a list"))?;
    if defs.is_empty() {
        return Err(invalid(P, "list at least one account and its buckets"));
    }
    for (i, d) in defs.iter().enumerate() {
        let path = format!("{P}[{i}]");
        let obj = d.as_object().ok_or_else(|| invalid(&path, "must be an object"))?;
        let account = match field(obj, "accountId") {
            None => return Err(invalid(&format!("{path}.accountId"), "is required")),
            Some(v) => v.as_str().unwrap_or_default(),
        };
        if !crate::seed::is_account_id(account) {
            return Err(invalid(
                &format!("{path}.accountId"),
                format!("{} is not a 12-digit AWS account id", obj["accountId"]),
            ));
        }
        let buckets = match field(obj, "buckets") {
            None => return Err(invalid(&format!("{path}.buckets"), "is required")),
            Some(Value::Array(b)) => b,
            Some(_) => return Err(invalid(&format!("{path}.buckets"), "must be a list of bucket names")),
        };
        if buckets.is_empty() {
            return Err(invalid(&format!("{path}.buckets"), "list at least one bucket"));
        }
        for (j, b) in buckets.iter().enumerate() {
            if !b.as_str().is_some_and(is_bucket_name) {
                return Err(invalid(
                    &format!("{path}.buckets[{j}]"),
                    format!(
                        "{b} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and \
                         hyphens, beginning and ending with a letter or digit)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// 3-63 characters of lowercase letters, digits, `.` and `-`, beginning and ending with a letter
/// or a digit.
pub fn is_bucket_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && b.iter().all(|&c| edge(c) || c == b'.' || c == b'-')
        && edge(b[0])
        && edge(b[b.len() - 1])
}

fn check_tags(tags: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(tags) = tags else {
        return Ok(BTreeMap::new());
    };
    let obj = tags
        .as_object()
        .ok_or_else(|| invalid("tags", "must be a map of strings"))?;
    if obj.len() > MAX_TAGS {
        return Err(invalid("tags", format!("at most {MAX_TAGS} tags (got {})", obj.len())));
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let len = k.chars().count();
        if len == 0 || len > MAX_TAG_KEY {
            return Err(invalid(
                "tags",
                format!("a tag key must be 1 to {MAX_TAG_KEY} characters (got {len})"),
            ));
        }
        let v = v
            .as_str()
            .ok_or_else(|| invalid(&format!("tags.{k}"), "must be a string"))?;
        let len = v.chars().count();
        if len > MAX_TAG_VALUE {
            return Err(invalid(
                &format!("tags.{k}"),
                format!("a tag value must be at most {MAX_TAG_VALUE} characters (got {len})"),
            ));
        }
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "name": "n",
            "clientToken": "t",
            "jobType": "ONE_TIME",
            "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["my-bucket"]}]},
        })
    }

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.logs", "0abc9", &"a".repeat(63)] {
            assert!(is_bucket_name(ok), "{ok}");
        }
        for bad in ["ab", "My-Bucket", "-abc", "abc-", "abc.", "a_b_c", "", &"a".repeat(64)] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_minimal_request_passes_and_describes_with_the_defaults() {
        let d = JobDefinition::parse(&valid()).unwrap();
        let v = d.describe();
        assert_eq!(v["samplingPercentage"], json!(100));
        assert_eq!(v["initialRun"], json!(false));
        assert_eq!(v["tags"], json!({}));
        assert!(v["managedDataIdentifierSelector"].is_null());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(&str, Value)> = vec![
            ("name", json!({"name": null})),
            ("name", json!({"name": ""})),
            ("name", json!({"name": "x".repeat(501)})),
            ("clientToken", json!({"clientToken": null})),
            ("jobType", json!({"jobType": "DAILY"})),
            ("description", json!({"description": "d".repeat(201)})),
            ("samplingPercentage", json!({"samplingPercentage": 0})),
            ("samplingPercentage", json!({"samplingPercentage": 101})),
            ("scheduleFrequency", json!({"scheduleFrequency": {"dailySchedule": {}}})),
            ("scheduleFrequency", json!({"jobType": "SCHEDULED"})),
            (
                "scheduleFrequency",
                json!({"jobType": "SCHEDULED", "scheduleFrequency": {"dailySchedule": {}, "weeklySchedule": {"dayOfWeek": "MONDAY"}}}),
            ),
            (
                "scheduleFrequency",
                json!({"jobType": "SCHEDULED", "scheduleFrequency": {}}),
            ),
            (
                "scheduleFrequency.weeklySchedule.dayOfWeek",
                json!({"jobType": "SCHEDULED", "scheduleFrequency": {"weeklySchedule": {"dayOfWeek": "FUNDAY"}}}),
            ),
            (
                "scheduleFrequency.monthlySchedule.dayOfMonth",
                json!({"jobType": "SCHEDULED", "scheduleFrequency": {"monthlySchedule": {"dayOfMonth": 32}}}),
            ),
            ("s3JobDefinition", json!({"s3JobDefinition": null})),
            ("s3JobDefinition", json!({"s3JobDefinition": {}})),
            (
                "s3JobDefinition",
                json!({"s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b-1"]}], "bucketCriteria": {}}}),
            ),
            (
                "s3JobDefinition.bucketDefinitions[0].accountId",
                json!({"s3JobDefinition": {"bucketDefinitions": [{"accountId": "1234", "buckets": ["b-1"]}]}}),
            ),
            (
                "s3JobDefinition.bucketDefinitions[0].buckets",
                json!({"s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": []}]}}),
            ),
            (
                "s3JobDefinition.bucketDefinitions[0].buckets[1]",
                json!({"s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["ok-1", "Bad_Name"]}]}}),
            ),
            (
                "managedDataIdentifierSelector",
                json!({"managedDataIdentifierSelector": "SOME"}),
            ),
            (
                "managedDataIdentifierIds",
                json!({"managedDataIdentifierSelector": "INCLUDE"}),
            ),
            (
                "managedDataIdentifierIds",
                json!({"managedDataIdentifierSelector": "EXCLUDE", "managedDataIdentifierIds": []}),
            ),
            (
                "managedDataIdentifierIds",
                json!({"managedDataIdentifierSelector": "ALL", "managedDataIdentifierIds": ["SSN"]}),
            ),
            ("managedDataIdentifierIds", json!({"managedDataIdentifierIds": ["SSN"]})),
            (
                "customDataIdentifierIds",
                json!({"managedDataIdentifierSelector": "NONE"}),
            ),
            (
                "tags",
                json!({"tags": (0..51).map(|i| (format!("k{i}"), json!("v"))).collect::<Map<_, _>>()}),
            ),
            ("tags", json!({"tags": {"k".repeat(129): "v"}})),
            ("tags.k", json!({"tags": {"k": "v".repeat(257)}})),
        ];
        for (path, patch) in cases {
            let mut body = valid();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let err = JobDefinition::parse(&body).expect_err(&patch.to_string());
            assert_eq!(err.status, 400);
            assert!(
                err.message.starts_with(&format!("{path}: ")),
                "{patch}: {:?} does not name {path}",
                err.message
            );
        }
    }

    #[test]
    fn limits_are_inclusive_and_one_time_ignores_initial_run() {
        let mut body = valid();
        body["name"] = json!("n".repeat(500));
        body["description"] = json!("d".repeat(200));
        body["initialRun"] = json!(true);
        body["samplingPercentage"] = json!(1);
        body["tags"] = (0..50)
            .map(|i| (format!("{i:0>128}"), json!("v".repeat(256))))
            .collect();
        body["managedDataIdentifierSelector"] = json!("NONE");
        body["customDataIdentifierIds"] = json!(["cdi-1"]);
        let d = JobDefinition::parse(&body).unwrap();
        assert_eq!(d.initial_run, Some(true));
        assert_eq!(d.describe()["initialRun"], json!(false));
        assert!(d.describe()["managedDataIdentifierIds"].is_null());
        let mut body = valid();
        body["jobType"] = json!("SCHEDULED");
        body["initialRun"] = json!(true);
        body["scheduleFrequency"] = json!({"monthlySchedule": {"dayOfMonth": 31}});
        body["managedDataIdentifierSelector"] = json!("INCLUDE");
        body["managedDataIdentifierIds"] = json!(["SSN"]);
        let v = JobDefinition::parse(&body).unwrap().describe();
        assert_eq!(v["initialRun"], json!(true));
        assert_eq!(v["managedDataIdentifierIds"], json!(["SSN"]));
        assert_eq!(v["scheduleFrequency"], json!({"monthlySchedule": {"dayOfMonth": 31}}));
    }
}
