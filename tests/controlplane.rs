//! The local control plane is real: apply a CRD, create and watch a custom resource through
//! `kube::Client` against kube-apiserver + etcd started by testkit.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use testkit::ControlPlane;

/// A throwaway kind for proving the control plane; the product's own CRDs have their own tests.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "testkit.macie.kubeops.dev", version = "v1", kind = "Probe", namespaced)]
struct ProbeSpec {
    message: String,
}

#[tokio::test]
async fn apply_crd_then_create_and_watch_a_custom_resource() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;

    let version = client.apiserver_version().await?;
    assert_eq!(
        version.git_version,
        testkit::KUBE_VERSION,
        "the pinned build reports its version"
    );

    testkit::install_crds(&cp, [Probe::crd()]).await?;

    let probes: Api<Probe> = Api::namespaced(client.clone(), "default");
    // Start watching before creating, so the watch must deliver the new object.
    let mut events = watcher(probes.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let created = probes
        .create(
            &PostParams::default(),
            &Probe::new("hello", ProbeSpec { message: "hi".into() }),
        )
        .await?;
    assert!(created.metadata.uid.is_some());

    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(p) = events.try_next().await? {
            if p.name_any() == "hello" {
                return Ok::<_, anyhow::Error>(p);
            }
        }
        anyhow::bail!("watch ended")
    })
    .await??;
    assert_eq!(seen.spec.message, "hi");

    // The schema is enforced by the API server: a wrong type is rejected.
    let bad = serde_json::json!({
        "apiVersion": "testkit.macie.kubeops.dev/v1", "kind": "Probe",
        "metadata": {"name": "bad"}, "spec": {"message": 42}
    });
    let dynamic: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &kube::api::ApiResource::erase::<Probe>(&()));
    let err = dynamic
        .create(&PostParams::default(), &serde_json::from_value(bad)?)
        .await
        .expect_err("schema must reject a number for a string field");
    assert!(err.to_string().contains("spec.message"), "{err}");
    Ok(())
}
