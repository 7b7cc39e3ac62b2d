//! Issue 19, items 5 and 10, from the admitted side: MacieJob definitions at every bound of the
//! schema are accepted by the real kube-apiserver (within the CEL cost budget at run time too),
//! and a tag key with the operator's prefix anywhere but at its start is a user's tag like any
//! other. One past each bound is refused: tests/invalid/definition-11 and 14 to 21.

mod support;

use anyhow::Result;
use kube::api::Api;
use macie_operator::api::MacieJob;
use macie_operator::api::job_definition::USER_TAGS_MAX;
use serde_json::{Value, json};
use support::*;

/// `n` distinct strings of exactly `len` characters made of `a` and digits (valid bucket names
/// when `len` is 3 to 63).
fn names(n: usize, len: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:a>len$}")).collect()
}

/// `n` tag pairs with keys and values of their longest lengths.
fn tag_pairs(n: usize) -> Vec<Value> {
    names(n, 128)
        .into_iter()
        .map(|k| json!({"key": k, "value": "v".repeat(256)}))
        .collect()
}

/// A block of `n` scoping conditions, alternately of each kind, every list at its longest.
fn scoping_block(n: usize) -> Value {
    let terms: Vec<Value> = (0..n)
        .map(|i| match i % 2 {
            0 => json!({"simpleScopeTerm": {"comparator": "STARTS_WITH", "key": "OBJECT_KEY", "values": names(10, 256)}}),
            _ => json!({"tagScopeTerm": {"comparator": "EQ", "key": "TAG", "target": "S3_OBJECT", "tagValues": tag_pairs(5)}}),
        })
        .collect();
    json!({"and": terms})
}

/// A block of `n` bucket criteria, alternately of each kind, every list at its longest.
fn criteria_block(n: usize) -> Value {
    let criteria: Vec<Value> = (0..n)
        .map(|i| match i % 2 {
            0 => json!({"simpleCriterion": {"comparator": "EQ", "key": "S3_BUCKET_NAME", "values": names(40, 63)}}),
            _ => json!({"tagCriterion": {"comparator": "EQ", "tagValues": tag_pairs(5)}}),
        })
        .collect();
    json!({"and": criteria})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_at_every_bound_are_admitted() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = namespace(&client, "bounds").await?;
    let api: Api<MacieJob> = Api::namespaced(client, &ns);

    let mut tags: serde_json::Map<String, Value> = names(USER_TAGS_MAX - 1, 128)
        .into_iter()
        .map(|k| (k, json!("v".repeat(256))))
        .collect();
    // The reserved prefix is reserved at the start of a key only.
    tags.insert("team/macie.kubeops.dev/owner".into(), json!("finance"));
    assert_eq!(tags.len(), USER_TAGS_MAX);
    let common = json!({
        "jobType": "ONE_TIME",
        "description": "d".repeat(200),
        "managedDataIdentifierSelector": "INCLUDE",
        "managedDataIdentifierIds": names(200, 64),
        "customDataIdentifierIds": names(30, 128),
        "allowListIds": names(10, 128),
        "tags": tags,
    });
    let with = |s3: Value| {
        let mut d = common.clone();
        d["s3JobDefinition"] = s3;
        json!({"jobName": "n".repeat(500), "jobStatus": "RUNNING", "definition": d})
    };

    let bucket_definitions: Vec<Value> = (0..10)
        .map(|i| json!({"accountId": format!("{:012}", 111_122_223_330u64 + i), "buckets": names(100, 63)}))
        .collect();
    let scoping = json!({"includes": scoping_block(10), "excludes": scoping_block(10)});
    create_job(
        &api,
        "bucket-definitions",
        with(json!({"bucketDefinitions": bucket_definitions, "scoping": scoping})),
    )
    .await?;
    create_job(
        &api,
        "bucket-criteria",
        with(json!({
            "bucketCriteria": {"includes": criteria_block(10), "excludes": criteria_block(10)},
            "scoping": scoping,
        })),
    )
    .await?;
    Ok(())
}
