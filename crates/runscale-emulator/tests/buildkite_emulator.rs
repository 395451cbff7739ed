//! The Buildkite emulator over loopback HTTP, with its fake agent: metrics per queue with the
//! poll-duration header, the REST agents listing and its filters, graceful and forced stops
//! (the latter a violation; stopping a gone agent is a 400), pausing agents and queues, job
//! commands whose output reaches the job log, authentication, the organisation's and the
//! user's REST rate limits, fault injection, webhooks in both authentication styles, and the
//! Stacks API's scheduled jobs and reservations.

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
        ping_interval: Some(Duration::from_millis(50)),
        build_path: None,
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
    assert_eq!(stop(&emu, &id, false).await, 400, "not connected any more");
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
async fn auth_rate_limits_and_faults() {
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.api_tokens.push(SecretString::from("other-user"));
    cfg.rest_requests_per_minute = 5;
    cfg.rest_requests_per_minute_per_user = 3;
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
    let h = r.headers();
    assert_eq!(
        (
            &h["ratelimit-scope"],
            &h["ratelimit-limit"],
            &h["ratelimit-remaining"]
        ),
        (
            &"rest".parse().unwrap(),
            &"5".parse().unwrap(),
            &"3".parse().unwrap()
        )
    );
    assert_eq!(
        (
            &h["ratelimit-user-scope"],
            &h["ratelimit-user-limit"],
            &h["ratelimit-user-remaining"]
        ),
        (
            &"rest_user".parse().unwrap(),
            &"3".parse().unwrap(),
            &"1".parse().unwrap()
        )
    );
    assert_eq!(rest(&emu, "/agents").await.status(), 200);
    let r = rest(&emu, "/agents").await;
    assert_eq!(r.status(), 429, "the user's 3 are used");
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(r.headers()["ratelimit-user-remaining"], "0");
    let reset: u64 = r.headers()["ratelimit-user-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset), "reset {reset}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["scope"].as_str(), body["limit"].as_u64()),
        (Some("rest_user"), Some(3))
    );
    let other = || {
        http()
            .get(format!("{}/v2/organizations/{ORG}/agents", emu.url()))
            .bearer_auth("other-user")
            .send()
    };
    let r = other().await.unwrap();
    assert_eq!(r.status(), 200, "another user has its own budget");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let r = other().await.unwrap();
    assert_eq!(r.status(), 429, "the organisation's 5 are used");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "rest");

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

#[tokio::test]
async fn a_jobs_command_runs_with_its_environment_and_its_output_reaches_the_log() {
    let emu = Emulator::start(EmulatorConfig::new(ORG, "agent-token", "api-token"))
        .await
        .unwrap();
    let id = emu
        .submit(vec![JobSpec::command(
            "linux",
            "echo '~~~ Running'; echo \"hello $BUILDKITE_JOB_ID on $BUILDKITE_AGENT_META_DATA_OS\"; \
             echo \"$GREETING\" >&2; exit 3",
        )
        .env("GREETING", "to stderr")])
        .remove(0);
    let report = joined(tokio::spawn(run_agent(
        agent(&emu, "a1", "linux", true),
        CancellationToken::new(),
    )))
    .await;
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::JobDone, 1));
    let s = emu.snapshot();
    assert_eq!(s.jobs[0].status, JobStatus::Failed);
    assert_eq!(s.jobs[0].exit_status, Some(3));
    let (log, headers) = emu.job_log(&id).unwrap();
    assert!(log.contains(&format!("hello {id} on linux")), "{log:?}");
    assert!(log.contains("to stderr"), "{log:?}");
    assert_eq!(headers, 1, "one header line");
    assert_eq!(s.jobs[0].log_bytes, log.len() as u64);
    assert_eq!(s.agents[0].connection_state, ConnectionState::Disconnected);
    assert!(s.agents[0].ignore_in_dispatches, "done after one job");
}

#[tokio::test]
async fn paused_agents_and_paused_queues_get_no_job() {
    let emu = Emulator::start(EmulatorConfig::new(ORG, "agent-token", "api-token"))
        .await
        .unwrap();
    let put = |path: String| {
        http()
            .put(format!(
                "{}/v2/organizations/{ORG}/agents/{path}",
                emu.url()
            ))
            .bearer_auth("api-token")
            .json(&serde_json::json!({}))
            .send()
    };
    let handle = tokio::spawn(run_agent(
        agent(&emu, "a1", "linux", true),
        CancellationToken::new(),
    ));
    wait_for("agent connected", || emu.snapshot().connected() == 1).await;
    let id = emu.snapshot().agents[0].id.clone();
    assert_eq!(put(format!("{id}/pause")).await.unwrap().status(), 204);
    assert_eq!(put(format!("{id}/pause")).await.unwrap().status(), 422);
    assert_eq!(put("nope/pause".to_owned()).await.unwrap().status(), 404);
    emu.submit(vec![JobSpec::new("linux", Duration::from_millis(100))]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emu.snapshot().count(JobStatus::Scheduled),
        1,
        "paused agent"
    );
    emu.set_dispatch_paused("linux", true);
    assert_eq!(put(format!("{id}/resume")).await.unwrap().status(), 204);
    assert_eq!(put(format!("{id}/resume")).await.unwrap().status(), 422);
    let (status, _) = stacks(
        &emu,
        reqwest::Method::POST,
        "/register",
        Some(serde_json::json!({
            "key": "s", "type": "custom", "queue_key": "linux", "metadata": {},
        })),
    )
    .await;
    assert_eq!(status, 201);
    let page = scheduled(&emu, "s", "").await;
    assert_eq!(page["cluster_queue"]["dispatch_paused"], true);
    assert_eq!(
        ids(&page["jobs"]).len(),
        1,
        "a paused queue still lists its jobs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emu.snapshot().count(JobStatus::Scheduled),
        1,
        "paused queue"
    );
    emu.set_dispatch_paused("linux", false);
    assert_eq!(
        scheduled(&emu, "s", "").await["cluster_queue"]["dispatch_paused"],
        false
    );
    let report = joined(handle).await;
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::JobDone, 1));
    assert_eq!(emu.snapshot().count(JobStatus::Passed), 1);
}

#[tokio::test]
async fn the_agents_listing_filters_by_cluster_queue_and_pages_keep_the_filter() {
    let emu = Emulator::start(EmulatorConfig::new(ORG, "agent-token", "api-token"))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for (name, queue) in [
        ("l1", "linux"),
        ("l2", "linux"),
        ("l3", "linux"),
        ("m1", "mac"),
    ] {
        handles.push(tokio::spawn(run_agent(
            agent(&emu, name, queue, false),
            shutdown.clone(),
        )));
    }
    wait_for("four agents", || emu.snapshot().connected() == 4).await;
    let linux = runscale_emulator::buildkite::cluster_queue_id("linux");
    let r = rest(
        &emu,
        &format!("/agents?cluster_queue_id={linux}&per_page=2"),
    )
    .await;
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    let first: Vec<Value> = r.json().await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        link.contains(&format!("cluster_queue_id={linux}")),
        "{link}"
    );
    let next = link
        .split(';')
        .next()
        .unwrap()
        .trim_matches(|c| c == '<' || c == '>');
    let second: Vec<Value> = http()
        .get(next)
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["l1", "l2", "l3"]);
    shutdown.cancel();
    for h in handles {
        joined(h).await;
    }
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
            Some(serde_json::json!({
                "key": key, "type": "custom", "queue_key": "linux", "metadata": {},
            })),
        )
        .await;
        assert_eq!(status, 201);
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
    let (status, _) = stacks(
        &emu,
        reqwest::Method::GET,
        "/nope/scheduled-jobs?queue_key=linux",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = stacks(&emu, reqwest::Method::GET, "/k8s-b/scheduled-jobs", None).await;
    assert_eq!(status, 422, "queue_key is required");
    let (status, _) = stacks(
        &emu,
        reqwest::Method::POST,
        "/register",
        Some(serde_json::json!({
            "key": "linux.large", "type": "custom", "queue_key": "linux", "metadata": {},
        })),
    )
    .await;
    assert_eq!(status, 422, "a stack key is alphanumerics, _ and -");
    let (status, _) = stacks(&emu, reqwest::Method::POST, "/k8s-b/deregister", None).await;
    assert_eq!(status, 204);
}
