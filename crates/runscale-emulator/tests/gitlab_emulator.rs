//! The GitLab emulator over loopback HTTP: job picking by tags / run_untagged / paused,
//! Workhorse long polling, the runner API in gitlab-runner's formats (verify, job payload, job
//! updates, trace patches, manager unregistration), managers and their contact and
//! job_execution_status, GitLab's online window and runner entity, deletions that lose a
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
        let (status, job, _) = self.poll(token, system_id, None).await;
        (status, job)
    }

    /// `POST /jobs/request` with `last_update`: (status, job, `X-GitLab-Last-Update`).
    async fn poll(
        &self,
        token: &str,
        system_id: &str,
        last_update: Option<&str>,
    ) -> (u16, Option<Value>, Option<String>) {
        let mut body = json!({ "token": token, "system_id": system_id, "info": {} });
        if let Some(lu) = last_update {
            body["last_update"] = json!(lu);
        }
        let r = self
            .http
            .post(format!("{}/jobs/request", self.base))
            .header("RUNNER-TOKEN", token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let last = r
            .headers()
            .get("x-gitlab-last-update")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = if status == 201 {
            Some(r.json().await.expect("job"))
        } else {
            None
        };
        (status, body, last)
    }

    /// A manager of runner `id` by `system_id`, as `GET /runners/:id/managers` lists it.
    async fn manager(&self, id: u64, system_id: &str) -> Option<Value> {
        let all = self
            .json(
                reqwest::Method::GET,
                &format!("/runners/{id}/managers"),
                None,
            )
            .await;
        all.as_array()
            .and_then(|a| a.iter().find(|m| m["system_id"] == system_id).cloned())
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
    EmulatorConfig::new(ADMIN, &["app", "lib"])
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
    assert_eq!(api.request(&linux, "m1").await.0, 204);

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

#[tokio::test]
async fn workhorse_long_polling_holds_unchanged_queues_without_contacting_gitlab() {
    let mut c = config();
    c.long_poll = Duration::from_millis(400);
    let emu = start(c).await;
    let api = Api::new(&emu);
    let (id, token) = api.create_runner(&["linux"], false).await;
    // First request: no last_update, answered by GitLab with the queue value.
    let (s, _, last) = api.poll(&token, "s_abcdefghij01", None).await;
    assert_eq!(s, 204);
    let last = last.expect("X-GitLab-Last-Update");
    let contacted =
        api.manager(id, "s_abcdefghij01").await.expect("manager")["contacted_at"].clone();
    // Same value: Workhorse holds it for the whole poll and answers 204 itself, without a
    // header, and the manager's contact does not move.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let (s, _, header) = api.poll(&token, "s_abcdefghij01", Some(&last)).await;
    assert_eq!((s, header), (204, None));
    assert!(started.elapsed() >= Duration::from_millis(350), "held");
    assert_eq!(
        api.manager(id, "s_abcdefghij01").await.expect("manager")["contacted_at"],
        contacted,
        "Workhorse answered: GitLab saw no contact"
    );
    // A job queued for the runner ends the poll early (204, ask again); the next request
    // reaches GitLab and gets the job.
    let emu2 = &emu;
    let (held, _) = tokio::join!(
        async {
            let started = std::time::Instant::now();
            let r = api.poll(&token, "s_abcdefghij01", Some(&last)).await;
            (r.0, started.elapsed())
        },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            emu2.submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO)]);
        }
    );
    assert_eq!(held.0, 204);
    assert!(
        held.1 < Duration::from_millis(350),
        "woken by the queue change"
    );
    let (s, job, _) = api.poll(&token, "s_abcdefghij01", Some(&last)).await;
    assert_eq!(s, 201);
    assert!(job.is_some());
    assert_ne!(
        api.manager(id, "s_abcdefghij01").await.expect("manager")["contacted_at"],
        contacted
    );
}

#[tokio::test]
async fn without_long_polling_gitlab_answers_at_once_and_records_the_contact() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (id, token) = api.create_runner(&[], true).await;
    let (_, _, last) = api.poll(&token, "s_abcdefghij00", None).await;
    let first = api.manager(id, "s_abcdefghij00").await.expect("manager")["contacted_at"].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let (s, _, again) = api.poll(&token, "s_abcdefghij00", last.as_deref()).await;
    assert_eq!(s, 204);
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(again, last, "an unchanged queue echoes last_update");
    assert_ne!(
        api.manager(id, "s_abcdefghij00").await.expect("manager")["contacted_at"],
        first,
        "every request that reaches GitLab is a contact"
    );
}

#[tokio::test]
async fn the_runner_api_speaks_gitlab_runners_formats() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (id, token) = api.create_runner(&["linux"], false).await;
    // verify: JSON with the runner's id; makes the manager.
    let r = api
        .http
        .post(format!("{}/runners/verify", api.base))
        .json(&json!({ "token": token, "system_id": "s_abcdefghij01", "info": {} }))
        .send()
        .await
        .expect("verify");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["id"], id);
    assert!(api.manager(id, "s_abcdefghij01").await.is_some());
    let bad = api
        .http
        .post(format!("{}/runners/verify", api.base))
        .json(&json!({ "token": "glrt-nope", "system_id": "s_abcdefghij01" }))
        .send()
        .await
        .expect("verify");
    assert_eq!(bad.status(), 403);

    // The job payload has what gitlab-runner's shell executor needs.
    emu.submit(vec![
        JobSpec::new(100, &["linux"], Duration::ZERO).with_script(&["echo hello $CI_JOB_ID"]),
    ]);
    let (s, job) = api.request(&token, "s_abcdefghij01").await;
    assert_eq!(s, 201);
    let job = job.expect("job");
    for field in [
        "id",
        "token",
        "allow_git_fetch",
        "job_info",
        "git_info",
        "runner_info",
        "variables",
        "steps",
        "image",
        "services",
        "artifacts",
        "cache",
        "credentials",
        "dependencies",
        "features",
    ] {
        assert!(job.get(field).is_some(), "payload has {field}: {job}");
    }
    assert_eq!(job["steps"][0]["name"], "script");
    assert_eq!(job["steps"][0]["script"], json!(["echo hello $CI_JOB_ID"]));
    assert_eq!(job["job_info"]["project_id"], 100);
    assert!(
        job["git_info"]["repo_url"].as_str().is_some_and(|u| u
            .starts_with("http://gitlab-ci-token:")
            && u.ends_with("/acme/app.git"))
    );
    let var = |k: &str| {
        job["variables"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["key"] == k))
            .map(|v| v["value"].clone())
    };
    assert_eq!(var("GIT_STRATEGY"), Some(json!("none")));
    assert_eq!(var("CI_JOB_ID"), Some(json!(job["id"].to_string())));
    let jid = job["id"].as_u64().expect("id");
    let jtoken = job["token"].as_str().expect("token").to_owned();

    // Trace patches: Content-Range from the current end, JOB-TOKEN.
    let patch = |range: Option<&str>, body: &'static str, token: &str| {
        let mut req = api
            .http
            .patch(format!("{}/jobs/{jid}/trace?debug_trace=false", api.base))
            .header("JOB-TOKEN", token)
            .body(body);
        if let Some(r) = range {
            req = req.header("Content-Range", r);
        }
        req.send()
    };
    let r = patch(Some("0-5"), "hello\n", &jtoken).await.expect("patch");
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-6");
    assert_eq!(r.headers()["job-status"], "running");
    assert_eq!(r.headers()["x-gitlab-trace-update-interval"], "60");
    let r = patch(Some("0-5"), "again\n", &jtoken).await.expect("patch");
    assert_eq!(r.status(), 416, "not from the trace's end");
    assert_eq!(r.headers()["range"], "0-6");
    assert_eq!(
        patch(None, "x", &jtoken).await.expect("patch").status(),
        400
    );
    assert_eq!(
        patch(Some("6-7"), "x\n", "glcbt-wrong")
            .await
            .expect("patch")
            .status(),
        403
    );
    assert_eq!(
        patch(Some("6-8"), "end\n", &jtoken)
            .await
            .expect("patch")
            .status(),
        202
    );

    // Job updates with JOB-TOKEN: running, then an unknown state, then success.
    let put = |state: &'static str| {
        api.http
            .put(format!("{}/jobs/{jid}", api.base))
            .header("JOB-TOKEN", &jtoken)
            .json(&json!({ "token": jtoken, "state": state, "output": {"bytesize": 10} }))
            .send()
    };
    assert_eq!(put("running").await.expect("put").status(), 200);
    assert_eq!(put("bogus").await.expect("put").status(), 400);
    assert_eq!(put("success").await.expect("put").status(), 200);
    let r = put("running").await.expect("put");
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["job-status"], "success");
    let s = emu.snapshot();
    assert_eq!(s.jobs[0].status, JobStatus::Success);
    assert_eq!(s.jobs[0].trace, "hello\nend\n");

    // Unregistering a manager: 204, then 404.
    let del = || {
        api.http
            .delete(format!("{}/runners/managers", api.base))
            .json(&json!({ "token": token, "system_id": "s_abcdefghij01" }))
            .send()
    };
    assert_eq!(del().await.expect("delete").status(), 204);
    assert_eq!(del().await.expect("delete").status(), 404);
}

#[tokio::test]
async fn runners_are_online_for_two_hours_listed_without_created_at_and_paused_as_gitlab_does() {
    let emu = start(config()).await;
    let api = Api::new(&emu);
    let (id, token) = api.create_runner(&["linux"], false).await;
    assert_eq!(api.request(&token, "s_abcdefghij01").await.0, 204);
    let listed = api.json(reqwest::Method::GET, "/runners/all", None).await;
    let item = &listed[0];
    assert_eq!(item["id"], id);
    assert!(
        item.get("created_at").is_none(),
        "the list entity has no created_at"
    );
    assert_eq!(
        (item["status"].as_str(), item["online"].as_bool()),
        (Some("online"), Some(true))
    );
    // The default online window is GitLab's 2 hours.
    assert_eq!(
        EmulatorConfig::new(ADMIN, &[]).online_window,
        Duration::from_secs(7200)
    );
    api.json(
        reqwest::Method::PUT,
        &format!("/runners/{id}"),
        Some(json!({"paused": true})),
    )
    .await;
    let listed = api
        .json(reqwest::Method::GET, "/runners/all?status=paused", None)
        .await;
    assert_eq!(listed[0]["status"], "paused");
    assert_eq!(listed[0]["paused"], true);
    let m = api.manager(id, "s_abcdefghij01").await.expect("manager");
    assert_eq!(m["status"], "online", "managers have no paused status");

    let mut c = config();
    c.runner_created_at = true;
    let newer = start(c).await;
    let api = Api::new(&newer);
    api.create_runner(&[], true).await;
    let listed = api.json(reqwest::Method::GET, "/runners/all", None).await;
    assert!(
        listed[0]["created_at"].is_string(),
        "newer GitLab lists created_at"
    );
}
