//! managementPolicy Observe with spec.definition: which of the job's settings (as
//! DescribeClassificationJob shows them) differ from the definition. Pure, table-tested.
//!
//! Compared, for each one the definition sets: jobType, description, samplingPercentage,
//! scheduleFrequency, managedDataIdentifierSelector, managedDataIdentifierIds,
//! customDataIdentifierIds and allowListIds (as sets), s3JobDefinition.bucketDefinitions (as
//! sets of accounts and buckets), s3JobDefinition.bucketCriteria and scoping (as written), and
//! each of the definition's tags (the job may carry more). Not compared: initialRun (Macie does
//! not show it).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::api::job_definition::JobDefinition;

/// Most differences a status message names (then "and N more").
const NAMED_MAX: usize = 10;

/// The settings that differ, each as `field (job: <shown>, declared: <declared>)`, in the order
/// above.
pub fn definition_drift(definition: &JobDefinition, job: &Value) -> Vec<String> {
    let declared = serde_json::to_value(definition).unwrap_or_default();
    let mut out = Vec::new();
    let mut differs = |field: &str, shown: &Value, wanted: &Value| {
        out.push(format!("{field} (job: {}, declared: {})", brief(shown), brief(wanted)));
    };
    for field in [
        "jobType",
        "description",
        "samplingPercentage",
        "scheduleFrequency",
        "managedDataIdentifierSelector",
    ] {
        let wanted = &declared[field];
        if !wanted.is_null() && job[field] != *wanted {
            differs(field, &job[field], wanted);
        }
    }
    for field in ["managedDataIdentifierIds", "customDataIdentifierIds", "allowListIds"] {
        let wanted = &declared[field];
        if !wanted.is_null() && as_set(&job[field]) != as_set(wanted) {
            differs(field, &job[field], wanted);
        }
    }
    let wanted = &declared["s3JobDefinition"]["bucketDefinitions"];
    let shown = &job["s3JobDefinition"]["bucketDefinitions"];
    if !wanted.is_null() && buckets(shown) != buckets(wanted) {
        differs("s3JobDefinition.bucketDefinitions", shown, wanted);
    }
    for field in ["bucketCriteria", "scoping"] {
        let wanted = without_nulls(&declared["s3JobDefinition"][field]);
        let shown = without_nulls(&job["s3JobDefinition"][field]);
        if !wanted.is_null() && shown != wanted {
            differs(&format!("s3JobDefinition.{field}"), &shown, &wanted);
        }
    }
    for (key, value) in declared["tags"].as_object().into_iter().flatten() {
        let shown = &job["tags"][key];
        if shown != value {
            differs(&format!("tags.{key}"), shown, value);
        }
    }
    out
}

/// The status message of the differences: the first ten, then how many more.
pub fn describe(drift: &[String]) -> String {
    let mut named: Vec<&str> = drift.iter().take(NAMED_MAX).map(String::as_str).collect();
    let more = drift.len().saturating_sub(NAMED_MAX);
    let tail = format!("and {more} more");
    if more > 0 {
        named.push(&tail);
    }
    format!(
        "the job's settings differ from spec.definition (managementPolicy Observe: nothing is changed): {}",
        named.join("; ")
    )
}

/// `v` without null members (absent and null compare equal).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), without_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn as_set(v: &Value) -> BTreeSet<String> {
    (v.as_array().into_iter().flatten())
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

fn buckets(v: &Value) -> BTreeSet<(String, BTreeSet<String>)> {
    (v.as_array().into_iter().flatten())
        .map(|b| {
            (
                b["accountId"].as_str().unwrap_or_default().to_string(),
                as_set(&b["buckets"]),
            )
        })
        .collect()
}

/// A value as a message shows it: short, absent as "none".
fn brief(v: &Value) -> String {
    let s = match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    crate::runtime::truncate(&s, 120)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(extra: Value) -> JobDefinition {
        let mut d = json!({
            "jobType": "SCHEDULED",
            "scheduleFrequency": {"weeklySchedule": {"dayOfWeek": "MONDAY"}},
            "samplingPercentage": 50,
            "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["a-bucket", "b-bucket"]}]},
            "customDataIdentifierIds": ["c1", "c2"],
            "tags": {"team": "payments"},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            d[k] = v.clone();
        }
        serde_json::from_value(d).unwrap()
    }

    /// The job as Describe shows the definition above (lists in another order, one tag more,
    /// fields the definition leaves out).
    fn shown() -> Value {
        json!({
            "jobType": "SCHEDULED",
            "description": "",
            "samplingPercentage": 50,
            "scheduleFrequency": {"weeklySchedule": {"dayOfWeek": "MONDAY"}},
            "managedDataIdentifierSelector": "RECOMMENDED",
            "managedDataIdentifierIds": [],
            "customDataIdentifierIds": ["c2", "c1"],
            "allowListIds": [],
            "s3JobDefinition": {"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["b-bucket", "a-bucket"]}]},
            "tags": {"team": "payments", "macie.kubeops.dev/uid": "u"},
        })
    }

    #[test]
    fn each_setting_the_definition_declares_is_compared() {
        assert_eq!(definition_drift(&definition(json!({})), &shown()), Vec::<String>::new());
        // (what changes in the job, the field named)
        let rows: [(&str, Value, &str); 7] = [
            (
                "samplingPercentage",
                json!(100),
                "samplingPercentage (job: 100, declared: 50)",
            ),
            (
                "jobType",
                json!("ONE_TIME"),
                "jobType (job: ONE_TIME, declared: SCHEDULED)",
            ),
            (
                "scheduleFrequency",
                json!({"dailySchedule": {}}),
                "scheduleFrequency (job: {\"dailySchedule\":{}}",
            ),
            (
                "customDataIdentifierIds",
                json!(["c1"]),
                "customDataIdentifierIds (job: [\"c1\"]",
            ),
            (
                "s3JobDefinition",
                json!({"bucketDefinitions": [{"accountId": "111122223333", "buckets": ["a-bucket"]}]}),
                "s3JobDefinition.bucketDefinitions",
            ),
            ("tags", json!({"team": "hr"}), "tags.team (job: hr, declared: payments)"),
            ("tags", json!({}), "tags.team (job: none, declared: payments)"),
        ];
        for (field, value, named) in rows {
            let mut job = shown();
            job[field] = value;
            let drift = definition_drift(&definition(json!({})), &job);
            assert_eq!(drift.len(), 1, "{field}: {drift:?}");
            assert!(drift[0].starts_with(named), "{field}: {drift:?}");
        }
        // Bucket criteria and scoping as written (absent and null alike).
        let criteria = json!({"includes": {"and": [{"simpleCriterion": {"comparator": "EQ", "key": "S3_BUCKET_NAME", "values": ["logs"]}}]}});
        let with_criteria = definition(json!({"s3JobDefinition": {"bucketCriteria": criteria}}));
        let mut job = shown();
        job["s3JobDefinition"] = json!({"bucketDefinitions": [], "bucketCriteria": {
            "includes": {"and": [{"simpleCriterion": {"comparator": "EQ", "key": "S3_BUCKET_NAME", "values": ["logs"]}, "tagCriterion": null}]},
            "excludes": null}});
        let drift = definition_drift(&with_criteria, &job);
        assert!(drift.is_empty(), "{drift:?}");
        job["s3JobDefinition"]["bucketCriteria"]["includes"]["and"][0]["simpleCriterion"]["values"] = json!(["other"]);
        let drift = definition_drift(&with_criteria, &job);
        assert!(
            drift.len() == 1 && drift[0].starts_with("s3JobDefinition.bucketCriteria"),
            "{drift:?}"
        );
        // A field the definition leaves out is not compared; one it sets is.
        let mut job = shown();
        job["description"] = json!("someone's notes");
        assert!(definition_drift(&definition(json!({})), &job).is_empty());
        let drift = definition_drift(&definition(json!({"description": "nightly"})), &job);
        assert_eq!(
            drift,
            vec!["description (job: someone's notes, declared: nightly)".to_string()]
        );
    }

    #[test]
    fn the_message_names_ten_and_counts_the_rest() {
        let drift: Vec<String> = (0..12).map(|i| format!("tags.k{i} (job: none, declared: v)")).collect();
        let m = describe(&drift);
        assert!(
            m.contains("tags.k9") && !m.contains("tags.k10 ") && m.ends_with("and 2 more"),
            "{m}"
        );
    }
}
