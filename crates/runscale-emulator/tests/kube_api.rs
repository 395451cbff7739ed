//! The fake kube-apiserver driven by the real kube-rs client: CRUD, generateName, optimistic
//! concurrency, selectors, pagination, patches, status subresources, owner-reference garbage
//! collection, leases, namespaces and the Status errors.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod kube_support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_support::{api_code, api_reason, assert_status, eventually, gone, pod, relabel, start};
use runscale_emulator::kube::KubeConfig;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn create_get_list_replace_delete_with_server_metadata() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    let mut p = pod("", json!({"app": "web"}), "nginx:1.27", &["nginx"]);
    p.metadata.name = None;
    p.metadata.generate_name = Some("web-".into());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(created.metadata.uid.as_ref().map(String::len), Some(36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    // Defaults a real API server fills in.
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let got = pods.get(&name).await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= rv1);

    let mut changed = pods.get(&name).await.unwrap();
    changed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "front".into());
    let replaced = pods
        .replace(&name, &PostParams::default(), &changed)
        .await
        .unwrap();
    let rv2: u64 = replaced.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv2 > rv1);
    assert_eq!(replaced.metadata.labels.unwrap()["tier"], "front");
    // Labels are metadata: the generation stays.
    assert_eq!(replaced.metadata.generation, Some(1));

    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    gone(&pods, &name).await;
    let err = pods.get(&name).await.unwrap_err();
    assert_eq!(api_code(&err), 404);
    assert_eq!(api_reason(&err), "NotFound");
    assert_eq!(f.emu.pods_created_total(), 1);
    assert_eq!(f.emu.pods_deleted_total(), 1);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn stale_updates_and_duplicates_are_conflicts() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    pods.create(&PostParams::default(), &pod("a", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    let err = pods
        .create(&PostParams::default(), &pod("a", json!({}), "x:1", &["x"]))
        .await
        .unwrap_err();
    assert_status(&err, 409, "AlreadyExists");

    let stale = pods.get("a").await.unwrap();
    relabel(&pods, "a", json!({"v": "2"})).await;
    let err = pods
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_status(&err, 409, "Conflict");
    let kube::Error::Api(status) = &err else {
        unreachable!()
    };
    assert!(
        status.message.contains("the object has been modified"),
        "{}",
        status.message
    );
    // A patch carrying a stale resourceVersion is refused too.
    let err = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion":
                stale.metadata.resource_version, "labels": {"v": "3"}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);
    // Without a resourceVersion the update is unconditional.
    let mut fresh = pods.get("a").await.unwrap();
    fresh.metadata.resource_version = None;
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "4".into());
    pods.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    f.emu.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors_and_pages() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("ci");
    for (name, labels) in [
        ("r1", json!({"runscale/pool": "small", "tier": "a"})),
        ("r2", json!({"runscale/pool": "small", "tier": "b"})),
        ("r3", json!({"runscale/pool": "large"})),
        ("other", json!({})),
    ] {
        pods.create(&PostParams::default(), &pod(name, labels, "x:1", &["x"]))
            .await
            .unwrap();
    }
    let names = |selector: &str| {
        let pods = pods.clone();
        let lp = ListParams::default().labels(selector);
        async move {
            let mut names: Vec<String> = pods
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names("runscale/pool=small").await, ["r1", "r2"]);
    assert_eq!(names("runscale/pool==small,tier!=a").await, ["r2"]);
    assert_eq!(
        names("runscale/pool in (small,large)").await,
        ["r1", "r2", "r3"]
    );
    assert_eq!(names("runscale/pool notin (small)").await, ["other", "r3"]);
    assert_eq!(names("runscale/pool").await, ["r1", "r2", "r3"]);
    assert_eq!(names("!runscale/pool").await, ["other"]);
    assert_eq!(names("tier,!nope").await, ["r1", "r2"]);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=r3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let err = pods
        .list(&ListParams::default().labels("runscale/pool in (small"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 400);
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 400);

    // Pages of two, then the rest.
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 2);
    assert!(second.metadata.continue_.is_none_or(|c| c.is_empty()));
    let all: Vec<_> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(all, ["other", "r1", "r2", "r3"]);

    // Across namespaces.
    f.pods("elsewhere")
        .create(
            &PostParams::default(),
            &pod("r9", json!({"runscale/pool": "small"}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    let everywhere: Api<Pod> = Api::all(f.client.clone());
    let found = everywhere
        .list(&ListParams::default().labels("runscale/pool=small"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 3);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn delete_collection_removes_only_what_the_selector_matches() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    for (name, pool) in [("s1", "small"), ("s2", "small"), ("l1", "large")] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"runscale/pool": pool}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    }
    let deleted = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("runscale/pool=small"),
        )
        .await
        .unwrap();
    let names: Vec<String> = deleted
        .left()
        .expect("the deleted pods")
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    let left: Vec<String> = f
        .emu
        .pods("default")
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["l1"]);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn patches_merge_strategic_json_and_apply() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    pods.create(
        &PostParams::default(),
        &pod("p", json!({"a": "1", "b": "2"}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    let merged = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "c": "3"},
                "annotations": {"karpenter.sh/do-not-disrupt": "true"}}})),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.unwrap();
    assert_eq!(
        labels,
        BTreeMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("c".to_owned(), "3".to_owned())
        ])
    );
    let strategic = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"annotations": {
                "karpenter.sh/do-not-disrupt": null,
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
                "spec": {"containers": [{"name": "main", "image": "x:2"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        strategic.metadata.annotations.unwrap(),
        BTreeMap::from([(
            "cluster-autoscaler.kubernetes.io/safe-to-evict".to_owned(),
            "false".to_owned()
        )])
    );
    let spec = strategic.spec.unwrap();
    assert_eq!(spec.containers.len(), 1, "merged by name, not appended");
    assert_eq!(spec.containers[0].image.as_deref(), Some("x:2"));
    assert_eq!(
        strategic.metadata.generation,
        Some(2),
        "an image change is a spec change"
    );
    // A pod's command is immutable.
    let err = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "main", "command": ["y"]}]}}),
            ),
        )
        .await
        .unwrap_err();
    assert_status(&err, 422, "Invalid");

    // JSON patch over plain HTTP (kube's json-patch feature is not enabled here).
    let http = reqwest::Client::new();
    let response = http
        .patch(format!("{}/api/v1/namespaces/default/pods/p", f.emu.url()))
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "add", "path": "/metadata/labels/d", "value": "4"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        pods.get("p").await.unwrap().metadata.labels.unwrap()["d"],
        "4"
    );

    // Server-side apply creates, then merges.
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), "default");
    let apply = PatchParams::apply("runscale").force();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "applied"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
    let created = leases
        .patch("applied", &apply, &Patch::Apply(&lease))
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().holder_identity.as_deref(), Some("a"));
    let again = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "applied"}, "spec": {"holderIdentity": "b"}});
    let updated = leases
        .patch("applied", &apply, &Patch::Apply(&again))
        .await
        .unwrap();
    let spec = updated.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    f.emu.shutdown().await;
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_object() {
    let f = start(KubeConfig::default()).await;
    let jobs: Api<Job> = Api::namespaced(f.client.clone(), "default");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "j", "labels": {"app.elotl.co": "buildscaler"}},
        "spec": {"parallelism": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "runner:1"}]}}},
    }))
    .unwrap();
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.parallelism, Some(0));
    assert_eq!(
        spec.completions, None,
        "parallelism alone leaves completions unset"
    );
    assert_eq!(
        spec.template.metadata.unwrap().labels.unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );
    let status = jobs
        .patch_status(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"active": 2},
            "metadata": {"labels": {"ignored": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().active, Some(2));
    assert!(!status.metadata.labels.unwrap().contains_key("ignored"));
    // The main resource ignores status.
    let mut j = jobs.get("j").await.unwrap();
    j.status.as_mut().unwrap().active = Some(9);
    let replaced = jobs.replace("j", &PostParams::default(), &j).await.unwrap();
    assert_eq!(replaced.status.unwrap().active, Some(2));
    f.emu.shutdown().await;
}

#[tokio::test]
async fn owned_secrets_go_with_their_pod_unless_orphaned() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), "default");
    for name in ["p1", "p2"] {
        let p = pods
            .create(&PostParams::default(), &pod(name, json!({}), "x:1", &["x"]))
            .await
            .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-creds"), "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": name,
                "uid": p.metadata.uid.unwrap(), "controller": true}]},
            "stringData": {"token": "s3cr3t"},
        }))
        .unwrap();
        let s = secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert!(s.string_data.is_none(), "stringData is folded into data");
        assert_eq!(s.data.unwrap()["token"].0, b"s3cr3t");
    }
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    gone(&secrets, "p1-creds").await;
    pods.delete("p2", &DeleteParams::orphan()).await.unwrap();
    gone(&pods, "p2").await;
    let kept = secrets.get("p2-creds").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(f.emu.secrets_deleted_total(), 1);

    // A dependent created for an owner that no longer exists is collected too.
    let dangling: Secret = serde_json::from_value(json!({
        "metadata": {"name": "dangling", "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": "ghost",
            "uid": "00000000-0000-4000-8000-000000000000"}]},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &dangling)
        .await
        .unwrap();
    gone(&secrets, "dangling").await;

    // Foreground: the owner waits for its dependents.
    let owner = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let dependent: Secret = serde_json::from_value(json!({
        "metadata": {"name": "dependent", "ownerReferences": [{
            "apiVersion": "v1", "kind": "Secret", "name": "owner",
            "uid": owner.metadata.uid.unwrap()}]},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    secrets
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(WAIT, "owner and dependent to be gone", || async {
        let owner = secrets.get_opt("owner").await.unwrap();
        let dep = secrets.get_opt("dependent").await.unwrap();
        (owner.is_none() && dep.is_none()).then_some(())
    })
    .await;
    f.emu.shutdown().await;
}

#[tokio::test]
async fn generic_ephemeral_volumes_get_a_claim_owned_by_the_pod() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "default");
    let mut p = pod("runner", json!({"app": "ci"}), "x:1", &["x"]);
    p.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(json!({
            "name": "scratch",
            "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"labels": {"app": "ci"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                         "resources": {"requests": {"storage": "10Gi"}}}
            }}
        }))
        .unwrap(),
    ]);
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    // The controller names the claim {pod}-{volume} and makes the pod its controller.
    let claim = claims.get("runner-scratch").await.unwrap();
    let owner = &claim.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Pod", created.metadata.uid.as_deref().unwrap(), Some(true))
    );
    assert_eq!(claim.metadata.labels.as_ref().unwrap()["app"], "ci");
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "10Gi"
    );
    let listed = claims
        .list(&ListParams::default().labels("app=ci"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    pods.delete("runner", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    gone(&claims, "runner-scratch").await;
    f.emu.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let f = start(KubeConfig::default()).await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "held",
                "finalizers": ["example.com/hold"]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let answer = secrets
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let pending = answer.left().expect("the object, still there");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(secrets.get_opt("held").await.unwrap().is_some());
    secrets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(secrets.get_opt("held").await.unwrap().is_none());
    f.emu.shutdown().await;
}

#[tokio::test]
async fn lease_takeover_races_are_decided_by_resource_version() {
    let f = start(KubeConfig::default()).await;
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), "runscale");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "runscale-leader"},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert_status(&err, 409, "AlreadyExists");

    // Two replicas read the same version and both try to take over.
    let seen_by_b = leases.get("runscale-leader").await.unwrap();
    let seen_by_c = seen_by_b.clone();
    let mut b = seen_by_b;
    b.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    b.spec.as_mut().unwrap().lease_transitions = Some(1);
    leases
        .replace("runscale-leader", &PostParams::default(), &b)
        .await
        .unwrap();
    let mut c = seen_by_c;
    c.spec.as_mut().unwrap().holder_identity = Some("replica-c".into());
    let err = leases
        .replace("runscale-leader", &PostParams::default(), &c)
        .await
        .unwrap_err();
    assert_status(&err, 409, "Conflict");
    let now = leases.get("runscale-leader").await.unwrap();
    assert_eq!(
        now.spec.unwrap().holder_identity.as_deref(),
        Some("replica-b")
    );
    assert_eq!(f.emu.leases("runscale").len(), 1);

    let bad: Lease = serde_json::from_value(json!({"metadata": {"name": "bad"},
        "spec": {"leaseDurationSeconds": 0}}))
    .unwrap();
    let err = leases
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 422);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn invalid_objects_and_bad_requests_are_status_errors() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    let no_containers: Pod = serde_json::from_value(json!({
        "metadata": {"name": "empty"}, "spec": {"containers": []}}))
    .unwrap();
    let err = pods
        .create(&PostParams::default(), &no_containers)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Pod \"empty\" is invalid: spec.containers: Required value"
    );
    let bad_name = pod("Not_A_Name", json!({}), "x:1", &["x"]);
    assert_eq!(
        api_code(
            &pods
                .create(&PostParams::default(), &bad_name)
                .await
                .unwrap_err()
        ),
        422
    );
    let bad_label = pod("ok", json!({"k": "has spaces"}), "x:1", &["x"]);
    assert_eq!(
        api_code(
            &pods
                .create(&PostParams::default(), &bad_label)
                .await
                .unwrap_err()
        ),
        422
    );
    let cronjobs: Api<CronJob> = Api::namespaced(f.client.clone(), "default");
    let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "cj"},
        "spec": {"schedule": "not a schedule", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}}}}))
    .unwrap();
    let err = cronjobs
        .create(&PostParams::default(), &cj)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.schedule"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("restartPolicy"),
        "{}",
        status.message
    );

    // Over plain HTTP: a wrong token is refused, unknown fields are warned about or refused.
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/namespaces/default/pods", f.emu.url());
    let response = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        200,
        "anonymous"
    );
    let with_unknown = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "u"},
        "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}});
    let response = http
        .post(format!("{url}?fieldValidation=Strict"))
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .json(&with_unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .post(&url)
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .json(&with_unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let warning = response.headers()["warning"].to_str().unwrap().to_owned();
    assert_eq!(
        warning,
        r#"299 - "unknown field \"spec.containers[0].colour\"""#
    );
    let response = http
        .post(&url)
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .get(format!(
            "{}/apis/apps/v1/namespaces/default/deployments",
            f.emu.url()
        ))
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn namespaces_are_created_on_demand_and_terminate_with_their_contents() {
    let f = start(KubeConfig::default()).await;
    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    f.pods("team")
        .create(&PostParams::default(), &pod("p", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    let team = namespaces.get("team").await.unwrap();
    assert_eq!(team.status.unwrap().phase.as_deref(), Some("Active"));
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    gone(&namespaces, "team").await;
    assert!(f.emu.pods("team").is_empty());

    let strict = start(KubeConfig {
        create_namespaces_on_demand: false,
        ..KubeConfig::default()
    })
    .await;
    let err = strict
        .pods("missing")
        .create(&PostParams::default(), &pod("p", json!({}), "x:1", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 404);
    f.emu.shutdown().await;
    strict.emu.shutdown().await;
}

#[tokio::test]
async fn faults_fail_requests_without_side_effects() {
    let f = start(KubeConfig::default()).await;
    let pods = f.pods("default");
    f.emu.set_faults(runscale_emulator::kube::KubeFaults {
        error_rate: 1.0,
        ..Default::default()
    });
    let err = pods
        .create(&PostParams::default(), &pod("p", json!({}), "x:1", &["x"]))
        .await
        .unwrap_err();
    assert!(matches!(api_code(&err), 500 | 503), "{err:?}");
    f.emu.set_faults(runscale_emulator::kube::KubeFaults {
        conflict_rate: 1.0,
        ..Default::default()
    });
    pods.create(&PostParams::default(), &pod("p", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    let err = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);
    f.emu.set_faults(Default::default());
    assert!(
        pods.get("p")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(f.emu.pods_created_total(), 1);
    assert!(f.emu.stats().faults >= 2);
    f.emu.shutdown().await;
}

/// Collects what [`serve`] prints.
struct Lines(tokio::sync::mpsc::UnboundedSender<String>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn serve_prints_the_url_writes_a_kubeconfig_and_stops_on_request() {
    use runscale_emulator::kube::serve;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = kubeconfig.clone();
    let server = tokio::spawn(async move {
        let mut out = Lines(tx);
        serve(
            KubeConfig {
                anonymous: false,
                ..KubeConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
            Some(&path),
            &mut out,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let url = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let url = url.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let written = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(written.contains(&format!("server: \"{url}\"")), "{written}");
    assert!(
        written.contains("current-context: runscale-fake"),
        "{written}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Without anonymous access, a request needs the token.
    let http = reqwest::Client::new();
    let pods = format!("{url}/api/v1/namespaces/default/pods");
    assert_eq!(http.get(&pods).send().await.unwrap().status(), 401);
    let ok = http
        .get(&pods)
        .bearer_auth(runscale_emulator::kube::DEFAULT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        http.get(format!("{url}/version"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(http.get(&pods).send().await.is_err(), "the server is gone");
}
