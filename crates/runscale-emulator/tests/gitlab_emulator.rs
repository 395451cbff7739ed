//! The GitLab emulator over loopback HTTP: job picking by tags / run_untagged / paused, the
//! long poll, job updates, managers and their job_execution_status, deletions that lose a
//! running job (violations), pagination headers, auth, faults and Job Hook delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use runscale_emulator::gitlab::{
    Emulator, EmulatorConfig, EmulatorHandle, Faults, JobSpec, JobStatus, ViolationKind,
    WebhookConfig,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const ADMIN: &str = "glpat-admin";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(emu: &EmulatorHandle) -> Self {
        Api {
            base: format!("{}/api/v4", emu.url()),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("PRIVATE-TOKEN", ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request")
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let r = self.send(method, path, body).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.expect("json")
    }

    async fn create_runner(&self, tags: &[&str], run_untagged: bool) -> (u64, String) {
        let v = self
            .json(
                reqwest::Method::POST,
                "/user/runners",
                Some(json!({ "runner_type": "instance_type", "tag_list": tags,
                             "run_untagged": run_untagged, "description": "t" })),
            )
            .await;
        (
            v["id"].as_u64().expect("id"),
            v["token"].as_str().expect("token").to_owned(),
        )
    }

    /// `POST /jobs/request` as manager `system_id`: (status, job).
    async fn request(&self, token: &str, system_id: &str) -> (u16, Option<Value>) {
        let r = self
            .http
            .post(format!("{}/jobs/request", self.base))
            .json(&json!({ "token": token, "system_id": system_id, "info": {} }))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let body = if status == 201 {
            Some(r.json().await.expect("job"))
        } else {
            None
        };
        (status, body)
    }

    async fn update(&self, job: &Value, state: &str) -> u16 {
        self.http
            .put(format!("{}/jobs/{}", self.base, job["id"]))
            .json(&json!({ "token": job["token"], "state": state }))
            .send()
            .await
            .expect("update")
            .status()
            .as_u16()
    }
}

async fn start(config: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(config).await.expect("emulator")
}

fn config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(ADMIN, &["app", "lib"]);
    c.long_poll = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn jobs_go_to_runners_by_tags_untagged_and_paused() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (_, linux) = api.create_runner(&["linux", "docker"], false).await;
    let (gpu_id, gpu) = api.create_runner(&["gpu"], true).await;
    let ids = emu.submit(vec![
        JobSpec::new(100, &["linux"], Duration::ZERO),
        JobSpec::new(100, &[], Duration::ZERO),
        JobSpec::new(101, &["gpu", "linux"], Duration::ZERO),
    ]);

    // The linux runner takes the tagged job only: not the untagged one, not gpu+linux.
    let (s, job) = api.request(&linux, "m1").await;
    assert_eq!(s, 201);
    assert_eq!(job.as_ref().expect("job")["id"], ids[0]);
    let started = std::time::Instant::now();
    assert_eq!(api.request(&linux, "m1").await.0, 204);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "long poll held the request"
    );

    // A paused runner gets nothing; unpaused it takes the untagged job (run_untagged).
    api.json(
        reqwest::Method::PUT,
        &format!("/runners/{gpu_id}"),
        Some(json!({"paused": true})),
    )
    .await;
    assert_eq!(api.request(&gpu, "g1").await.0, 204);
    api.json(
        reqwest::Method::PUT,
        &format!("/runners/{gpu_id}"),
        Some(json!({"paused": false})),
    )
    .await;
    let (s, job2) = api.request(&gpu, "g1").await;
    assert_eq!(s, 201);
    assert_eq!(job2.as_ref().expect("job")["id"], ids[1]);
    // gpu+linux needs both tags: nobody has them.
    assert_eq!(api.request(&gpu, "g1").await.0, 204);
    assert_eq!(api.request("glrt-bogus", "x").await.0, 403);

    // Updates: running keeps it, success finishes it; a finished job refuses updates.
    let job = job.expect("job");
    assert_eq!(api.update(&job, "running").await, 200);
    assert_eq!(api.update(&job, "success").await, 200);
    assert_eq!(api.update(&job, "running").await, 403);
    let s = emu.snapshot();
    assert_eq!(s.jobs[0].status, JobStatus::Success);
    assert_eq!(s.jobs[1].status, JobStatus::Running);
    assert_eq!(s.jobs[2].status, JobStatus::Pending);
    assert!(s.violations.is_empty());
}

#[tokio::test]
async fn managers_report_activity_and_deleting_a_busy_one_loses_its_job() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (id, token) = api.create_runner(&["linux"], false).await;
    let runner = api
        .json(reqwest::Method::GET, &format!("/runners/{id}"), None)
        .await;
    assert_eq!(runner["status"], "never_contacted");
    assert_eq!(runner["tag_list"], json!(["linux"]));
    emu.submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO); 2]);
    let (_, a) = api.request(&token, "sys-a").await;
    assert_eq!(api.request(&token, "sys-b").await.0, 201);
    api.update(a.as_ref().expect("job"), "success").await;

    let managers = api
        .json(
            reqwest::Method::GET,
            &format!("/runners/{id}/managers"),
            None,
        )
        .await;
    let by: std::collections::HashMap<&str, &str> = managers
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            (
                m["system_id"].as_str().expect("system_id"),
                m["job_execution_status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(by.get("sys-a"), Some(&"idle"));
    assert_eq!(by.get("sys-b"), Some(&"active"));
    let runner = api
        .json(reqwest::Method::GET, &format!("/runners/{id}"), None)
        .await;
    assert_eq!(
        (
            runner["status"].as_str(),
            runner["job_execution_status"].as_str()
        ),
        (Some("online"), Some("active"))
    );

    // Unregistering the idle manager is harmless; the busy one loses its job.
    let del = |sid: &'static str| {
        let http = api.http.clone();
        let url = format!("{}/runners/managers", api.base);
        let token = token.clone();
        async move {
            http.delete(url)
                .json(&json!({"token": token, "system_id": sid}))
                .send()
                .await
                .expect("delete")
                .status()
                .as_u16()
        }
    };
    assert_eq!(del("sys-a").await, 204);
    assert!(emu.snapshot().violations.is_empty());
    assert_eq!(del("sys-b").await, 204);
    let s = emu.snapshot();
    assert_eq!(s.violations.len(), 1);
    assert_eq!(s.violations[0].kind, ViolationKind::ManagerDeletedWhileBusy);
    assert_eq!(
        s.jobs[1].failure_reason.as_deref(),
        Some("runner_system_failure")
    );

    // Deleting a runner whose manager runs a job is a violation too.
    emu.submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO)]);
    assert_eq!(api.request(&token, "sys-c").await.0, 201);
    assert_eq!(
        api.send(reqwest::Method::DELETE, &format!("/runners/{id}"), None)
            .await
            .status(),
        204
    );
    let s = emu.snapshot();
    assert_eq!(
        s.violations.last().map(|v| v.kind.clone()),
        Some(ViolationKind::RunnerDeletedWhileBusy)
    );
    assert_eq!(
        api.request(&token, "sys-c").await.0,
        403,
        "a deleted runner's token is refused"
    );
}

#[tokio::test]
async fn a_silent_runner_loses_its_job_after_the_lease() {
    let mut c = config();
    c.job_lease = Duration::from_millis(300);
    let emu = start(c).await;
    let api = Api::new(&emu);
    let (_, token) = api.create_runner(&[], true).await;
    emu.submit(vec![JobSpec::new(100, &[], Duration::ZERO)]);
    assert_eq!(api.request(&token, "m").await.0, 201);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = emu.snapshot();
    assert_eq!(s.jobs[0].status, JobStatus::Failed);
    assert_eq!(s.violations.len(), 1);
    assert_eq!(s.violations[0].kind, ViolationKind::JobLost);
}

#[tokio::test]
async fn job_listing_is_paginated_and_filtered_by_scope() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    emu.submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO); 45]);
    emu.submit(vec![JobSpec::new(101, &[], Duration::ZERO)]);
    let (_, token) = api.create_runner(&["linux"], false).await;
    api.request(&token, "m").await;

    let r = api
        .send(
            reqwest::Method::GET,
            "/projects/acme%2Fapp/jobs?scope[]=pending&per_page=20&page=2",
            None,
        )
        .await;
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        (
            h("x-total"),
            h("x-total-pages"),
            h("x-page"),
            h("x-next-page")
        ),
        ("44".into(), "3".into(), "2".into(), "3".into())
    );
    let link = h("link");
    assert!(
        link.contains("scope[]=pending")
            && link.contains("page=3")
            && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let page: Vec<Value> = r.json().await.expect("json");
    assert_eq!(page.len(), 20);
    assert!(
        page.iter()
            .all(|j| j["status"] == "pending" && j["tag_list"] == json!(["linux"]))
    );
    let r = api
        .send(
            reqwest::Method::GET,
            "/projects/100/jobs?scope%5B%5D=pending&scope%5B%5D=running&page=3&per_page=20",
            None,
        )
        .await;
    assert_eq!(r.headers()["x-next-page"], "");
    assert_eq!(r.json::<Vec<Value>>().await.expect("json").len(), 5);
    let projects = api
        .json(
            reqwest::Method::GET,
            "/groups/acme/projects?include_subgroups=true",
            None,
        )
        .await;
    assert_eq!(projects.as_array().map(Vec::len), Some(2));
    assert_eq!(
        api.send(reqwest::Method::GET, "/projects/999/jobs", None)
            .await
            .status(),
        404
    );

    // Auth: Bearer works, a wrong token does not.
    let bearer = api
        .http
        .get(format!("{}/runners/all", api.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert_eq!(bearer.status(), 200);
    let bad = api
        .http
        .get(format!("{}/runners/all", api.base))
        .header("PRIVATE-TOKEN", "nope")
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 401);
}

#[tokio::test]
async fn faults_and_outages_hit_the_admin_api_only() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (_, token) = api.create_runner(&[], true).await;
    emu.set_faults(Faults {
        fail_next: 1,
        ..Faults::default()
    });
    assert_eq!(
        api.send(reqwest::Method::GET, "/runners/all", None)
            .await
            .status(),
        503
    );
    assert_eq!(
        api.send(reqwest::Method::GET, "/runners/all", None)
            .await
            .status(),
        200
    );
    emu.outage(Duration::from_millis(400));
    assert_eq!(
        api.send(reqwest::Method::GET, "/projects/100/jobs", None)
            .await
            .status(),
        503
    );
    emu.submit(vec![JobSpec::new(100, &[], Duration::ZERO)]);
    assert_eq!(
        api.request(&token, "m").await.0,
        201,
        "runners keep working in an outage"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.send(reqwest::Method::GET, "/projects/100/jobs", None)
            .await
            .status(),
        200
    );
    assert_eq!(emu.snapshot().faulted, 2);
}

#[tokio::test]
async fn job_hooks_carry_the_token_and_an_idempotency_key_but_no_tags() {
    let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, b: Bytes| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push((h, b));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut c = config();
    c.webhooks = vec![WebhookConfig {
        url,
        token: Some(SecretString::from("hook-secret")),
    }];
    c.faults.duplicate_webhooks = true;
    let emu = start(c).await;
    let ids = emu.submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().expect("lock").len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "one event, delivered twice");
    let h = |i: usize, n: &str| {
        got[i]
            .0
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(h(0, "x-gitlab-event"), "Job Hook");
    assert_eq!(h(0, "x-gitlab-token"), "hook-secret");
    assert!(!h(0, "idempotency-key").is_empty());
    assert_eq!(
        h(0, "idempotency-key"),
        h(1, "idempotency-key"),
        "a retry keeps its key"
    );
    let body: Value = serde_json::from_slice(&got[0].1).expect("json");
    assert_eq!(
        (body["object_kind"].as_str(), body["build_status"].as_str()),
        (Some("build"), Some("pending"))
    );
    assert_eq!(
        (body["build_id"].as_u64(), body["project_id"].as_u64()),
        (Some(ids[0]), Some(100))
    );
    assert!(
        body.get("tag_list").is_none() && body.get("tags").is_none(),
        "no job tags in the payload"
    );
    server.abort();
}
