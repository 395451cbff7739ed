//! The CircleCI emulator over loopback HTTP: the runner API (v3 and v2 paths, auth, counts,
//! listing), the fake runner in both modes, the plan's concurrency, lost tasks, webhooks and
//! faults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use runscale_emulator::circleci::{
    AgentConfig, AgentExit, Emulator, EmulatorConfig, EmulatorHandle, Faults, RunnerMode, TaskSpec,
    TaskStatus, ViolationKind, WebhookConfig, run_agent, signature,
};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const RC: &str = "acme/linux";

fn config() -> EmulatorConfig {
    EmulatorConfig::new("api-token", &[(RC, "rc-token"), ("acme/arm", "arm-token")])
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .header("Circle-Token", token)
        .send()
        .await
        .expect("ok");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn agent(emu: &EmulatorHandle, name: &str, mode: RunnerMode, idle: Option<u64>) -> AgentConfig {
    AgentConfig {
        api_url: emu.url(),
        token: SecretString::from("rc-token"),
        name: name.to_owned(),
        hostname: format!("{name}.local"),
        mode,
        idle_timeout: idle.map(Duration::from_millis),
        poll_interval: Duration::from_millis(20),
        heartbeat_interval: Duration::from_millis(50),
    }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counts_and_listing_on_v3_and_v2_paths_with_token_auth() {
    let emu = Emulator::start(config()).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_secs(60)); 3]);
    let base = emu.url();
    for path in ["/api/v3/runner/tasks", "/api/v2/tasks"] {
        let (s, v) = get(&format!("{base}{path}?resource-class={RC}"), "api-token").await;
        assert_eq!(
            (s, v["unclaimed_task_count"].as_u64()),
            (200, Some(3)),
            "{path}"
        );
    }
    let (s, _) = get(
        &format!("{base}/api/v3/runner/tasks?resource-class={RC}"),
        "wrong",
    )
    .await;
    assert_eq!(s, 401);
    // Basic auth with the token as user name works too.
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/v3/runner/tasks/running?resource-class={RC}"
        ))
        .basic_auth("api-token", Some(""))
        .send()
        .await
        .expect("ok");
    assert_eq!(r.status(), 200);
    let (s, _) = get(&format!("{base}/api/v3/runner"), "api-token").await;
    assert_eq!(s, 400, "a filter is required");
    let (s, _) = get(
        &format!("{base}/api/v3/runner/tasks?resource-class=acme/none"),
        "api-token",
    )
    .await;
    assert_eq!(s, 404);

    // A continuous runner takes one task: it is listed, one task runs, two wait.
    let stop = CancellationToken::new();
    let a = tokio::spawn(run_agent(
        agent(&emu, "r1", RunnerMode::Continuous, None),
        stop.clone(),
    ));
    wait_for("a claim", || emu.snapshot().count(TaskStatus::Running) == 1).await;
    for (running, unclaimed, listing) in [
        (
            "/api/v3/runner/tasks/running",
            "/api/v3/runner/tasks",
            "/api/v3/runner",
        ),
        ("/api/v2/tasks/running", "/api/v2/tasks", "/api/v2/runner"),
    ] {
        let (_, v) = get(&format!("{base}{running}?resource-class={RC}"), "api-token").await;
        assert_eq!(v["running_runner_tasks"], 1);
        let (_, v) = get(
            &format!("{base}{unclaimed}?resource-class={RC}"),
            "api-token",
        )
        .await;
        assert_eq!(v["unclaimed_task_count"], 2);
        let (_, v) = get(&format!("{base}{listing}?resource-class={RC}"), "api-token").await;
        let items = v["items"].as_array().expect("ok");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["name"], "r1");
        assert_eq!(items[0]["hostname"], "r1.local");
        assert!(items[0]["last_connected"].is_string());
        assert!(items[0]["last_used"].is_string());
    }
    let (_, v) = get(&format!("{base}/api/v3/runner?namespace=acme"), "api-token").await;
    assert_eq!(v["items"].as_array().expect("ok").len(), 1);
    let (_, v) = get(
        &format!("{base}/api/v3/runner?resource-class=acme/arm"),
        "api-token",
    )
    .await;
    assert_eq!(
        v["items"].as_array().expect("ok").len(),
        0,
        "other classes' runners are not listed"
    );
    stop.cancel();
    a.abort();
}

#[tokio::test]
async fn single_task_runners_take_one_task_each_and_leave_the_listing() {
    let emu = Emulator::start(config()).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_millis(300)); 2]);
    let stop = CancellationToken::new();
    let agents: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            tokio::spawn(run_agent(
                agent(&emu, n, RunnerMode::SingleTask, None),
                stop.clone(),
            ))
        })
        .collect();
    wait_for("both listed and running", || {
        let s = emu.snapshot();
        s.runners.len() == 2 && s.count(TaskStatus::Running) == 2
    })
    .await;
    for a in agents {
        let report = a.await.expect("ok").expect("ok");
        assert_eq!(
            (report.exit, report.tasks_completed),
            (AgentExit::TaskDone, 1)
        );
    }
    let s = emu.snapshot();
    assert_eq!(s.count(TaskStatus::Succeeded), 2);
    assert!(
        s.runners.is_empty(),
        "runners leave the listing when they exit: {:?}",
        s.runners
    );
    assert!(s.violations.is_empty());
    assert_eq!(s.runners_seen, 2);
}

#[tokio::test]
async fn continuous_runner_takes_tasks_until_its_idle_timeout() {
    let emu = Emulator::start(config()).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_millis(50)); 3]);
    let started = tokio::time::Instant::now();
    let report = run_agent(
        agent(&emu, "c", RunnerMode::Continuous, Some(300)),
        CancellationToken::new(),
    )
    .await
    .expect("ok");
    assert_eq!(
        (report.exit, report.tasks_completed),
        (AgentExit::IdleTimeout, 3)
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(emu.snapshot().runners.is_empty());
}

#[tokio::test]
async fn plan_concurrency_caps_running_tasks_over_all_classes() {
    let mut cfg = config();
    cfg.plan_concurrency = Some(2);
    let emu = Emulator::start(cfg).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_millis(200)); 5]);
    let stop = CancellationToken::new();
    let agents: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(run_agent(
                agent(&emu, &format!("r{i}"), RunnerMode::Continuous, Some(1500)),
                stop.clone(),
            ))
        })
        .collect();
    wait_for("all done", || {
        emu.snapshot().count(TaskStatus::Succeeded) == 5
    })
    .await;
    stop.cancel();
    for a in agents {
        a.await.expect("ok").expect("ok");
    }
    let s = emu.snapshot();
    assert_eq!(s.peak_running, 2, "never more than the plan allows");
    assert!(s.violations.is_empty());
}

#[tokio::test]
async fn a_runner_killed_while_holding_a_task_loses_it_and_is_a_violation() {
    let mut cfg = config();
    cfg.task_lease = Duration::from_millis(300);
    cfg.runner_expiry = Duration::from_millis(600);
    let emu = Emulator::start(cfg).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_secs(30))]);
    let a = tokio::spawn(run_agent(
        agent(&emu, "doomed", RunnerMode::SingleTask, None),
        CancellationToken::new(),
    ));
    wait_for("a claim", || emu.snapshot().count(TaskStatus::Running) == 1).await;
    a.abort(); // SIGKILL: no heartbeat, no disconnect
    wait_for("the task is lost", || {
        emu.snapshot().count(TaskStatus::Lost) == 1
    })
    .await;
    let s = emu.snapshot();
    assert_eq!(s.violations.len(), 1);
    assert_eq!(s.violations[0].kind, ViolationKind::TaskLost);
    assert_eq!(s.violations[0].runner, "doomed");
    assert_eq!(
        s.runners.len(),
        1,
        "a killed runner stays listed until it expires"
    );
    wait_for("the silent runner expires", || {
        emu.snapshot().runners.is_empty()
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_a_running_task_first() {
    let emu = Emulator::start(config()).await.expect("ok");
    emu.submit(vec![TaskSpec::new(RC, Duration::from_millis(400))]);
    let stop = CancellationToken::new();
    let a = tokio::spawn(run_agent(
        agent(&emu, "d", RunnerMode::Continuous, None),
        stop.clone(),
    ));
    wait_for("a claim", || emu.snapshot().count(TaskStatus::Running) == 1).await;
    stop.cancel();
    let report = a.await.expect("ok").expect("ok");
    assert_eq!(
        (report.exit, report.tasks_completed),
        (AgentExit::Shutdown, 1)
    );
    assert_eq!(emu.snapshot().count(TaskStatus::Succeeded), 1);
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("ok").push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("ok");
    let url = format!("http://{}/hook", listener.local_addr().expect("ok"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("ok") });
    (url, got)
}

#[tokio::test]
async fn job_and_workflow_completed_webhooks_are_signed_v1() {
    let (url, got) = receiver().await;
    let mut cfg = config();
    cfg.webhooks = vec![WebhookConfig {
        url,
        secret: Some(SecretString::from("hook-secret")),
        project: None,
    }];
    cfg.faults.duplicate_webhooks = true;
    let emu = Emulator::start(cfg).await.expect("ok");
    let mut failing = TaskSpec::new(RC, Duration::from_millis(20));
    failing.fail = true;
    emu.submit(vec![TaskSpec::new(RC, Duration::from_millis(20)), failing]);
    run_agent(
        agent(&emu, "w", RunnerMode::Continuous, Some(300)),
        CancellationToken::new(),
    )
    .await
    .expect("ok");
    wait_for("6 deliveries", || got.lock().expect("ok").len() == 6).await;
    let got = got.lock().expect("ok");
    let mut kinds = Vec::new();
    for (headers, body) in got.iter() {
        let sig = headers["circleci-signature"].to_str().expect("ok");
        assert_eq!(sig, signature(b"hook-secret", body));
        assert!(sig.starts_with("v1=") && sig.len() == 67);
        assert_eq!(headers["user-agent"], "CircleCI-Webhook/1.0");
        let v: Value = serde_json::from_slice(body).expect("ok");
        assert_eq!(
            headers["circleci-event-type"].to_str().expect("ok"),
            v["type"]
        );
        assert_eq!(v["project"]["slug"], "github/org/app");
        kinds.push((
            v["type"].as_str().expect("ok").to_owned(),
            v["id"].as_str().expect("ok").to_owned(),
        ));
        if v["type"] == "workflow-completed" {
            assert_eq!(v["workflow"]["status"], "failed");
        }
    }
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "job-completed").count(),
        4
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|(k, _)| k == "workflow-completed")
            .count(),
        2
    );
    let ids: std::collections::HashSet<_> = kinds.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 3, "duplicates carry the same id");
}

#[tokio::test]
async fn faults_fail_throttle_and_delay_api_calls() {
    let emu = Emulator::start(config()).await.expect("ok");
    let url = format!("{}/api/v3/runner/tasks?resource-class={RC}", emu.url());
    emu.set_faults(Faults {
        fail_next: 1,
        throttle_next: 1,
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let started = tokio::time::Instant::now();
    assert_eq!(get(&url, "api-token").await.0, 503);
    let r = reqwest::Client::new()
        .get(&url)
        .header("Circle-Token", "api-token")
        .send()
        .await
        .expect("ok");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(get(&url, "api-token").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(450));
    emu.set_faults(Faults {
        error_rate_5xx: 1.0,
        ..Faults::default()
    });
    assert!(get(&url, "api-token").await.0 >= 500);
    assert_eq!(emu.snapshot().requests["GET /api/v3/runner/tasks"], 4);
}

#[test]
fn agent_reads_the_real_runners_variables() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let c = AgentConfig::from_vars(&vars(&[
        ("CIRCLECI_RUNNER_API_AUTH_TOKEN", "t"),
        ("CIRCLECI_RUNNER_NAME", "rs-p-abc"),
        ("CIRCLECI_RUNNER_API_URL", "http://127.0.0.1:1/"),
        ("CIRCLECI_RUNNER_MODE", "single-task"),
        ("CIRCLECI_RUNNER_IDLE_TIMEOUT", "1m"),
    ]))
    .expect("ok")
    .expect("ok");
    assert_eq!(
        (c.name.as_str(), c.api_url.as_str()),
        ("rs-p-abc", "http://127.0.0.1:1")
    );
    assert_eq!(
        (c.mode, c.idle_timeout),
        (RunnerMode::SingleTask, Some(Duration::from_secs(60)))
    );
    let c = AgentConfig::from_vars(&vars(&[
        ("LAUNCH_AGENT_API_AUTH_TOKEN", "t"),
        ("LAUNCH_AGENT_RUNNER_NAME", "n"),
        ("LAUNCH_AGENT_API_URL", "http://x"),
    ]))
    .expect("ok")
    .expect("ok");
    assert_eq!((c.mode, c.idle_timeout), (RunnerMode::Continuous, None));
    assert!(AgentConfig::from_vars(&vars(&[])).expect("ok").is_none());
    let err = AgentConfig::from_vars(&vars(&[("CIRCLECI_RUNNER_API_AUTH_TOKEN", "t")]))
        .expect_err("must fail");
    assert!(err.to_string().contains("CIRCLECI_RUNNER_NAME"));
    assert!(!format!("{c:?}").contains("\"t\""), "the token is redacted");
}
