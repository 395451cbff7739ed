//! The Buildkite emulator over loopback HTTP: metrics per queue with the poll-duration
//! header, the REST agents listing, graceful and forced stops (the latter a violation),
//! authentication, the REST rate limit, fault injection, webhooks in both authentication
//! styles, and the Stacks API's scheduled jobs and reservations.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use runscale_emulator::buildkite::{
    AgentConfig, AgentError, AgentExit, AgentReport, ConnectionState, Emulator, EmulatorConfig,
    EmulatorHandle, Faults, JobSpec, JobStatus, ViolationKind, WebhookAuth, WebhookConfig,
    run_agent, signature,
};
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ORG: &str = "acme";

fn agent(emu: &EmulatorHandle, name: &str, queue: &str, after_job: bool) -> AgentConfig {
    AgentConfig {
        endpoint: emu.agent_endpoint(),
        token: SecretString::from("agent-token"),
        name: name.to_owned(),
        tags: vec![format!("queue={queue}"), "os=linux".to_owned()],
        disconnect_after_job: after_job,
        disconnect_after_idle_timeout: None,
        acquire_job: None,
        ping_interval: Duration::from_millis(50),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The agent's report; it must exit within 20 s.
async fn joined(h: JoinHandle<Result<AgentReport, AgentError>>) -> AgentReport {
    tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .expect("agent exits in time")
        .expect("agent task")
        .expect("agent")
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn metrics(emu: &EmulatorHandle) -> (Value, reqwest::header::HeaderMap) {
    let r = http()
        .get(format!("{}/metrics", emu.agent_endpoint()))
        .header("authorization", "Token agent-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    (r.json().await.unwrap(), h)
}

async fn rest(emu: &EmulatorHandle, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}/v2/organizations/{ORG}{path}", emu.url()))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap()
}

async fn stop(emu: &EmulatorHandle, id: &str, force: bool) -> reqwest::StatusCode {
    http()
        .put(format!(
            "{}/v2/organizations/{ORG}/agents/{id}/stop",
            emu.url()
        ))
        .bearer_auth("api-token")
        .json(&serde_json::json!({ "force": force }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn metrics_count_jobs_and_agents_per_queue_and_an_agent_runs_its_queues_jobs() {
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.metrics_poll_duration = Some(Duration::from_secs(7));
    let emu = Emulator::start(cfg).await.unwrap();
    emu.submit(vec![JobSpec::new("linux", Duration::from_millis(200)); 2]);
    emu.submit(vec![JobSpec::new("arm", Duration::from_millis(200))]);
    emu.submit(vec![
        JobSpec::new("linux", Duration::from_millis(200)).rule("gpu=true"),
    ]);
    let (m, h) = metrics(&emu).await;
    assert_eq!(h["buildkite-agent-metrics-poll-duration"], "7");
    assert_eq!(m["organization"]["slug"], ORG);
    assert_eq!(m["jobs"]["scheduled"], 4);
    assert_eq!(m["jobs"]["queues"]["linux"]["scheduled"], 3);
    assert_eq!(m["jobs"]["queues"]["arm"]["scheduled"], 1);

    let shutdown = CancellationToken::new();
    let report = run_agent(agent(&emu, "a1", "linux", false), shutdown.clone());
    let handle = tokio::spawn(report);
    wait_for("two linux jobs done", || {
        emu.snapshot().count(JobStatus::Passed) == 2
    })
    .await;
    let listed: Vec<Value> = rest(&emu, "/agents").await.json().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "a1");
    assert_eq!(listed[0]["connection_state"], "connected");
    assert_eq!(listed[0]["meta_data"][0], "queue=linux");
    let (m, _) = metrics(&emu).await;
    assert_eq!(m["agents"]["queues"]["linux"]["idle"], 1);
    assert_eq!(
        m["jobs"]["queues"]["linux"]["scheduled"], 1,
        "the gpu job needs a gpu tag"
    );
    shutdown.cancel();
    let report = joined(handle).await;
    assert_eq!(
        (report.exit, report.jobs_finished),
        (AgentExit::Shutdown, 2)
    );
    let listed: Vec<Value> = rest(&emu, "/agents").await.json().await.unwrap();
    assert!(listed.is_empty(), "only connected agents are listed");
    assert!(emu.snapshot().violations.is_empty());
}

#[tokio::test]
async fn a_graceful_stop_lets_the_job_finish_and_a_forced_stop_is_a_violation() {
    let emu = Emulator::start(EmulatorConfig::new(ORG, "agent-token", "api-token"))
        .await
        .unwrap();
    emu.submit(vec![JobSpec::new("linux", Duration::from_millis(800))]);
    let gentle = tokio::spawn(run_agent(
        agent(&emu, "gentle", "linux", false),
        CancellationToken::new(),
    ));
    wait_for("job running", || {
        emu.snapshot().count(JobStatus::Running) == 1
    })
    .await;
    let id = emu.snapshot().agents[0].id.clone();
    assert_eq!(stop(&emu, &id, false).await, 204);
    let one: Value = rest(&emu, &format!("/agents/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["connection_state"], "stopping");
    assert!(one["job"]["id"].is_string(), "still running its job");
    let report = joined(gentle).await;
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::Stopped, 1));
    let s = emu.snapshot();
    assert_eq!(s.count(JobStatus::Passed), 1);
    assert_eq!(s.agents[0].connection_state, ConnectionState::Disconnected);
    assert!(s.violations.is_empty());
    assert_eq!(stop(&emu, &id, false).await, 422, "not connected any more");
    assert_eq!(stop(&emu, "nope", false).await, 404);

    emu.submit(vec![JobSpec::new("linux", Duration::from_secs(5))]);
    let forced = tokio::spawn(run_agent(
        agent(&emu, "forced", "linux", false),
        CancellationToken::new(),
    ));
    wait_for("job running", || {
        emu.snapshot().count(JobStatus::Running) == 1
    })
    .await;
    let id = emu.snapshot().agents[1].id.clone();
    assert_eq!(stop(&emu, &id, true).await, 204);
    let report = joined(forced).await;
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::Stopped, 0));
    let s = emu.snapshot();
    assert_eq!(s.count(JobStatus::Canceled), 1);
    assert_eq!(s.violations.len(), 1);
    assert_eq!(s.violations[0].kind, ViolationKind::StoppedWhileBusy);
    assert_eq!(s.violations[0].agent, "forced");
}

#[tokio::test]
async fn auth_rate_limit_and_faults() {
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.rest_requests_per_minute = 3;
    let emu = Emulator::start(cfg).await.unwrap();
    let r = http()
        .get(format!("{}/metrics", emu.agent_endpoint()))
        .header("authorization", "Token wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("{}/v2/organizations/{ORG}/agents", emu.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(rest(&emu, "/agents/none").await.status(), 404);
    let r = rest(&emu, "/agents").await;
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_eq!(r.headers()["ratelimit-remaining"], "1");
    assert_eq!(rest(&emu, "/agents").await.status(), 200);
    let r = rest(&emu, "/agents").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "retry-after {wait}");

    emu.set_faults(Faults {
        throttle_next: 1,
        fail_next: 1,
        ..Faults::default()
    });
    let get = || {
        http()
            .get(format!("{}/metrics", emu.agent_endpoint()))
            .header("authorization", "Token agent-token")
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 503);
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(get().await.unwrap().status(), 200);
}

type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver on loopback recording every delivery.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = got.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                got.lock().unwrap().push((headers, body.to_vec()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test]
async fn webhooks_carry_the_token_or_a_timestamped_signature() {
    let (url, got) = receiver().await;
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.webhooks = vec![
        WebhookConfig {
            url: url.clone(),
            token: SecretString::from("hook-token"),
            auth: WebhookAuth::Token,
        },
        WebhookConfig {
            url,
            token: SecretString::from("hook-token"),
            auth: WebhookAuth::Signature,
        },
    ];
    let emu = Emulator::start(cfg).await.unwrap();
    let ids = emu.submit(vec![JobSpec::new("linux", Duration::from_secs(1))]);
    wait_for("two deliveries", || got.lock().unwrap().len() == 2).await;
    let got = got.lock().unwrap().clone();
    for (headers, body) in &got {
        assert_eq!(headers["x-buildkite-event"], "job.scheduled");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "job.scheduled");
        assert_eq!(v["job"]["id"], ids[0].as_str());
        assert_eq!(v["job"]["agent_query_rules"][0], "queue=linux");
    }
    let (headers, body) = &got[0];
    let (token_style, signed) = if headers.contains_key("x-buildkite-token") {
        (headers, &got[1].0)
    } else {
        (&got[1].0, headers)
    };
    assert_eq!(token_style["x-buildkite-token"], "hook-token");
    let sig = signed["x-buildkite-signature"].to_str().unwrap();
    let ts: i64 = sig
        .strip_prefix("timestamp=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    assert_eq!(sig, signature(b"hook-token", ts, body));
}

async fn stacks(
    emu: &EmulatorHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = http()
        .request(method, format!("{}/stacks{path}", emu.agent_endpoint()))
        .header("authorization", "Token agent-token");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn scheduled(emu: &EmulatorHandle, key: &str, query: &str) -> Value {
    let (status, v) = stacks(
        emu,
        reqwest::Method::GET,
        &format!("/{key}/scheduled-jobs?queue_key=linux{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    v
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| {
            j.as_str()
                .map_or_else(|| j["id"].as_str().unwrap().to_owned(), str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn stacks_list_scheduled_jobs_and_reservations_keep_two_controllers_apart() {
    let emu = Emulator::start(EmulatorConfig::new(ORG, "agent-token", "api-token"))
        .await
        .unwrap();
    for key in ["k8s-a", "k8s-b"] {
        let (status, v) = stacks(
            &emu,
            reqwest::Method::POST,
            "/register",
            Some(serde_json::json!({ "key": key, "type": "custom", "queue_key": "linux" })),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            (v["key"].as_str(), v["state"].as_str()),
            (Some(key), Some("connected"))
        );
    }
    let jobs = emu.submit(vec![JobSpec::new("linux", Duration::from_millis(200)); 3]);
    emu.submit(vec![JobSpec::new("arm", Duration::from_millis(200))]);

    let page = scheduled(&emu, "k8s-a", "&limit=2").await;
    assert_eq!(ids(&page["jobs"]), jobs[..2]);
    assert_eq!(page["jobs"][0]["agent_query_rules"][0], "queue=linux");
    assert_eq!(page["page_info"]["has_next_page"], true);
    let after = page["page_info"]["end_cursor"].as_str().unwrap().to_owned();
    let rest = scheduled(&emu, "k8s-a", &format!("&after={after}")).await;
    assert_eq!(ids(&rest["jobs"]), jobs[2..]);
    assert_eq!(rest["page_info"]["has_next_page"], false);

    let reserve = |key: &'static str, which: Vec<String>, secs: u64| {
        let emu = &emu;
        async move {
            stacks(
                emu,
                reqwest::Method::PUT,
                &format!("/{key}/scheduled-jobs/batch-reserve"),
                Some(serde_json::json!({
                    "job_uuids": which,
                    "reservation_expiry_seconds": secs,
                })),
            )
            .await
        }
    };
    let (_, a) = reserve("k8s-a", jobs[..2].to_vec(), 1).await;
    assert_eq!(ids(&a["reserved"]), jobs[..2]);
    let (_, b) = reserve("k8s-b", jobs[1..].to_vec(), 1).await;
    assert_eq!(ids(&b["reserved"]), jobs[2..], "b gets only the free job");
    assert_eq!(
        ids(&b["not_reserved"]),
        jobs[1..2],
        "a holds the second job"
    );
    assert!(ids(&scheduled(&emu, "k8s-a", "").await["jobs"]).is_empty());
    let (status, _) = reserve("k8s-a", jobs.clone(), 7200).await;
    assert_eq!(status, 422);

    // A plain agent of the queue gets no reserved job; one acquiring a job takes it.
    let mut plain = agent(&emu, "plain", "linux", false);
    plain.disconnect_after_idle_timeout = Some(Duration::from_millis(300));
    let plain = tokio::spawn(run_agent(plain, CancellationToken::new()));
    let mut acquirer = agent(&emu, "acquirer", "linux", false);
    acquirer.acquire_job = Some(jobs[0].clone());
    let report = joined(tokio::spawn(run_agent(acquirer, CancellationToken::new()))).await;
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::JobDone, 1));
    let report = joined(plain).await;
    assert_eq!(
        (report.exit, report.jobs_finished),
        (AgentExit::IdleTimeout, 0)
    );

    // Expired reservations put the jobs back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ids(&scheduled(&emu, "k8s-b", "").await["jobs"]), jobs[1..]);
    let s = emu.snapshot();
    assert_eq!(s.jobs[0].status, JobStatus::Passed);
    assert_eq!(s.jobs[0].reserved_by.as_deref(), Some("k8s-a"));
    assert!(s.violations.is_empty());
    let (status, _) = stacks(&emu, reqwest::Method::GET, "/nope/scheduled-jobs", None).await;
    assert_eq!(status, 404);
    let (status, _) = stacks(&emu, reqwest::Method::POST, "/k8s-b/deregister", None).await;
    assert_eq!(status, 204);
}
