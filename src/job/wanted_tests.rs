//! What a place's sweeps are asked to read besides the jobs that can change ([`wanted_by`]):
//! the ids and names its admitted MacieJobs name, and nothing for a refused one. Pure over a
//! cache, milliseconds.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector;
use kube::runtime::watcher;

use super::*;
use crate::account::testing::Fed;
use crate::api::macie_job::CreationOutcome;
use crate::api::{DeletionPolicy, MacieAccountSpec};

fn job(name: &str, job_id: Option<&str>, job_name: Option<&str>, region: Option<&str>) -> MacieJob {
    let mut o = MacieJob::new(
        name,
        MacieJobSpec {
            job_id: job_id.map(str::to_string),
            job_name: job_name.map(str::to_string),
            job_status: Some(DesiredJobStatus::Running),
            region: region.map(str::to_string),
            account_ref: None,
            definition: None,
            deletion_policy: DeletionPolicy::Orphan,
            management_policy: Default::default(),
        },
    );
    o.metadata.namespace = Some("ns".into());
    o
}

#[test]
fn a_place_reads_what_its_admitted_resources_name_and_nothing_for_a_refused_one() {
    let mut fed = Fed::new("default");
    fed.put_verified(
        "default",
        MacieAccountSpec {
            role_arn: None,
            external_id: None,
            regions: vec!["us-east-1".into()],
            namespace_selector: Default::default(),
            jobs: Default::default(),
            discovery: Default::default(),
        },
    );
    fed.put_namespace("ns", &[]);
    let (store, mut writer) = reflector::store::<MacieJob>();
    let mut created = job("created", None, Some("made-here"), None);
    created.status = Some(MacieJobStatus {
        creation: Some(CreationRecord {
            client_token: "macie-operator-uid".into(),
            requested_at: Time(Timestamp::from_second(1_800_000_000).unwrap()),
            outcome: CreationOutcome::Succeeded,
            job_id: Some("j9".into()),
            retry_at: None,
            error_code: None,
            message: None,
        }),
        ..Default::default()
    });
    for o in [
        job("by-id", Some("j1"), None, None),
        job("by-name", None, Some("nightly"), None),
        created,
        // The account does not list eu-west-1: refused, so read nowhere.
        job("refused", Some("j5"), None, Some("eu-west-1")),
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    let in_use = in_use_by(store.clone(), fed.tenancy.clone(), "us-east-1".into());
    assert!(
        in_use(&Place::new("default", "us-east-1")),
        "admitted resources use the place"
    );
    assert!(!in_use(&Place::new("default", "eu-west-1")), "a refused one uses none");
    let wanted = wanted_by(store, fed.tenancy.clone(), "us-east-1".into());
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert_eq!(
        wanted(&Place::new("default", "us-east-1")),
        (set(&["j1", "j9"]), set(&["nightly", "made-here"]))
    );
    assert_eq!(wanted(&Place::new("default", "eu-west-1")), (set(&[]), set(&[])));
}
