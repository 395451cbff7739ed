//! The Buildkite provider against the Buildkite emulator over loopback HTTP: demand per queue
//! and the poll duration, runners from the agents listing (every page, or one cluster
//! queue's), registration whose credentials start a (fake) agent, a graceful stop that lets a
//! busy agent finish its job before removal succeeds, a refused stop (400) that never reads as
//! a misconfiguration, throttling and both REST budgets, webhooks in both authentication
//! styles, the Stacks API's reservations (paused queues, stack keys from any queue name, jobs
//! given back by dead instances); and core's provider conformance suite.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runscale_core::secret::SecretRef;
use runscale_core::testing::conformance;
use runscale_core::{ErrorKind, PoolId, Provider, ProviderView, RunnerState, WebhookRequest};
use runscale_emulator::buildkite::{
    AgentConfig, AgentExit, AgentReport, Emulator, EmulatorConfig, EmulatorHandle, Faults, JobSpec,
    JobStatus, WebhookAuth, WebhookConfig, cluster_queue_id, run_agent, signature,
};
use runscale_providers::buildkite::{BuildkiteProvider, Config, PoolSelector};
use secrecy::ExposeSecret;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ORG: &str = "acme";

fn linux() -> PoolId {
    PoolId::new("linux")
}

fn arm() -> PoolId {
    PoolId::new("arm")
}

struct Setup {
    emu: EmulatorHandle,
    dir: TempDir,
}

impl Setup {
    async fn with(cfg: EmulatorConfig) -> Self {
        let emu = Emulator::start(cfg).await.expect("emulator");
        let dir = TempDir::new().expect("tempdir");
        for (file, value) in [
            ("api", "api-token"),
            ("agent", "agent-token"),
            ("hook", "hook-token"),
        ] {
            std::fs::write(dir.path().join(file), value).expect("write secret");
        }
        Setup { emu, dir }
    }

    async fn new() -> Self {
        Self::with(EmulatorConfig::new(ORG, "agent-token", "api-token")).await
    }

    fn config(&self) -> Config {
        let secret = |f: &str| SecretRef::File(self.dir.path().join(f));
        Config {
            org: ORG.to_owned(),
            api_url: self.emu.url(),
            agent_endpoint: self.emu.agent_endpoint(),
            api_token: secret("api"),
            agent_token: secret("agent"),
            webhook_token: Some(secret("hook")),
            rest_requests_per_minute: 200,
            rest_requests_per_minute_per_user: 50,
            stop_wait: Duration::from_secs(3),
            stack_key: "runscale".to_owned(),
            reservation_expiry: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn provider_with(&self, config: Config) -> BuildkiteProvider {
        let sel = |queue: &str| PoolSelector {
            queue: queue.to_owned(),
            tags: BTreeMap::from([("os".to_owned(), "linux".to_owned())]),
            disconnect_after_job: false,
            disconnect_after_idle_timeout: None,
            reserve_jobs: false,
            cluster_queue_id: None,
        };
        BuildkiteProvider::new(config, vec![(linux(), sel("linux")), (arm(), sel("arm"))])
            .expect("provider")
    }

    fn provider(&self) -> BuildkiteProvider {
        self.provider_with(self.config())
    }

    /// Registers a runner of `pool` and starts a fake agent from its credentials only.
    async fn start_agent(
        &self,
        provider: &BuildkiteProvider,
        pool: &PoolId,
    ) -> (String, JoinHandle<AgentReport>) {
        let name = runscale_core::naming::generate(pool.as_str(), 1, &mut rand::rng()).1[0].clone();
        let reg = provider.register(pool, &name).await.expect("register");
        let creds = reg.credentials.clone();
        let lookup = move |n: &str| {
            creds
                .secrets
                .get(n)
                .map(|s| s.expose_secret().to_owned())
                .or_else(|| creds.vars.get(n).cloned())
        };
        let mut cfg = AgentConfig::from_vars(&lookup)
            .expect("agent config")
            .expect("a buildkite agent");
        cfg.ping_interval = Some(Duration::from_millis(50));
        let handle = tokio::spawn(async move {
            run_agent(cfg, CancellationToken::new())
                .await
                .expect("agent")
        });
        (name, handle)
    }
}

async fn view(p: &BuildkiteProvider, pool: &PoolId) -> ProviderView {
    p.observe(std::slice::from_ref(pool))
        .await
        .remove(pool)
        .expect("asked pool")
        .expect("view")
}

/// The error an observation of `pool` fails with.
async fn observe_error(p: &BuildkiteProvider, pool: &PoolId) -> runscale_core::Error {
    p.observe(std::slice::from_ref(pool))
        .await
        .remove(pool)
        .expect("asked pool")
        .expect_err("the observation fails")
}

async fn wait_view(
    p: &BuildkiteProvider,
    pool: &PoolId,
    what: &str,
    cond: impl Fn(&ProviderView) -> bool,
) -> ProviderView {
    for _ in 0..100 {
        let v = view(p, pool).await;
        if cond(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn demand_per_queue_and_runners_owned_by_each_pool() {
    let s = Setup::new().await;
    let p = s.provider();
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_millis(600)); 3]);
    s.emu
        .submit(vec![JobSpec::new("arm", Duration::from_millis(600))]);
    s.emu
        .submit(vec![JobSpec::new("other", Duration::from_millis(600))]);
    let seen = p.observe(&[linux(), arm()]).await;
    let l = seen[&linux()].as_ref().expect("linux");
    let a = seen[&arm()].as_ref().expect("arm");
    assert_eq!((l.demand.waiting.len(), l.demand.running), (3, 0));
    assert_eq!((a.demand.waiting.len(), a.demand.running), (1, 0));
    assert!(!l.stale && l.runners.is_empty());

    let (name, agent) = s.start_agent(&p, &linux()).await;
    let v = wait_view(&p, &linux(), "busy runner", |v| {
        v.runners.len() == 1 && v.runners[0].state == RunnerState::Busy
    })
    .await;
    assert_eq!(v.runners[0].name, name);
    assert_eq!(v.demand.running, 1);
    assert_eq!(v.demand.waiting.len(), 2);
    assert!(view(&p, &arm()).await.runners.is_empty(), "not arm's agent");
    let v = wait_view(&p, &linux(), "all linux jobs done, agent idle", |v| {
        v.demand.waiting.is_empty()
            && v.demand.running == 0
            && v.runners
                .first()
                .is_some_and(|r| r.state == RunnerState::Idle)
    })
    .await;
    assert!(v.runners[0].last_busy.is_some());
    let started = Instant::now();
    p.remove(&linux(), &v.runners[0].id)
        .await
        .expect("an idle agent is stopped and confirmed gone");
    let report = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent exits in time")
        .expect("agent");
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::Stopped, 3));
    println!(
        "idle agent stopped and gone in {} ms",
        started.elapsed().as_millis()
    );
    assert!(view(&p, &linux()).await.runners.is_empty());
    p.remove(&linux(), &v.runners[0].id)
        .await
        .expect("removing a gone agent is Ok");
    let snap = s.emu.snapshot();
    assert_eq!(snap.count(JobStatus::Passed), 3);
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
}

/// The issue's "Done when": a stop request on a busy agent lets its job finish before the
/// instance may go (remove answers busy until the agent has disconnected).
#[tokio::test]
async fn a_stop_request_on_a_busy_agent_lets_its_job_finish_before_remove_succeeds() {
    let s = Setup::new().await;
    let p = s.provider();
    let job = s
        .emu
        .submit(vec![JobSpec::new("linux", Duration::from_millis(1500))])
        .remove(0);
    let (_, agent) = s.start_agent(&p, &linux()).await;
    let v = wait_view(&p, &linux(), "busy", |v| {
        v.runners
            .first()
            .is_some_and(|r| r.state == RunnerState::Busy)
    })
    .await;
    let id = v.runners[0].id.clone();
    p.drain(&linux(), &id).await.expect("drain");
    let v = view(&p, &linux()).await;
    assert!(v.runners[0].draining, "stopping shows as draining");
    assert_eq!(v.runners[0].state, RunnerState::Busy);
    let mut busy_answers = 0;
    let removed_at = loop {
        match p.remove(&linux(), &id).await {
            Ok(()) => break chrono::Utc::now(),
            Err(e) if e.kind() == ErrorKind::Busy => busy_answers += 1,
            Err(e) => panic!("remove: {e}"),
        }
        assert!(busy_answers < 100, "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let snap = s.emu.snapshot();
    let j = snap.jobs.iter().find(|j| j.id == job).expect("job");
    assert_eq!(j.status, JobStatus::Passed, "the job finished");
    let finished = j.finished_at.expect("finished");
    assert!(finished <= removed_at, "job finished before removal");
    assert!(busy_answers >= 1, "remove answered busy while the job ran");
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    let report = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent exits in time")
        .expect("agent");
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::Stopped, 1));
    println!(
        "busy agent: {busy_answers} busy answers, removal {} ms after the job finished",
        (removed_at - finished).num_milliseconds()
    );
}

#[tokio::test]
async fn the_poll_duration_and_throttling_keep_the_last_view() {
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.metrics_poll_duration = Some(Duration::from_secs(60));
    let s = Setup::with(cfg).await;
    let p = s.provider();
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_secs(1)); 2]);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 2);
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_secs(1))]);
    let v = view(&p, &linux()).await;
    assert_eq!(v.demand.waiting.len(), 2, "metrics not read again yet");
    assert!(!v.stale);
    assert_eq!(s.emu.snapshot().requests["GET /v3/metrics"], 1);
    // A job.scheduled webhook shows the read is out of date: the woken pass reads again.
    let body =
        br#"{"event":"job.scheduled","job":{"id":"j9","agent_query_rules":["queue=linux"]}}"#;
    let hook = WebhookRequest {
        headers: vec![("x-buildkite-token".to_owned(), "hook-token".to_owned())],
        body: body.to_vec(),
    };
    assert_eq!(p.webhook(&hook).expect("webhook"), vec![linux()]);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 3);
    assert_eq!(s.emu.snapshot().requests["GET /v3/metrics"], 2);

    // Throttled on the first read: an error, as there is no last view.
    let s = Setup::new().await;
    let p = s.provider();
    s.emu.set_faults(Faults {
        throttle_next: 1,
        metrics_only: true,
        ..Faults::default()
    });
    let e = observe_error(&p, &linux()).await;
    assert!(matches!(e.kind(), ErrorKind::RateLimited { .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_secs(1))]);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 1);
    // Throttled later: the last good view, stale, until Retry-After has passed.
    s.emu.set_faults(Faults {
        throttle_next: 1,
        metrics_only: true,
        ..Faults::default()
    });
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_secs(1))]);
    let v = view(&p, &linux()).await;
    assert!(v.stale);
    assert_eq!(v.demand.waiting.len(), 1);
    let before = s.emu.snapshot().requests["GET /v3/metrics"];
    assert!(view(&p, &linux()).await.stale);
    assert_eq!(
        s.emu.snapshot().requests["GET /v3/metrics"],
        before,
        "no request while throttled"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = view(&p, &linux()).await;
    assert!(!v.stale);
    assert_eq!(v.demand.waiting.len(), 2);
    assert!(p.rate_limit_remaining().is_some_and(|r| r < 200));

    // 5xx on every attempt of both reads (the first and four retries each): an error for
    // every pool asked.
    s.emu.set_faults(Faults {
        fail_next: 10,
        ..Faults::default()
    });
    let seen = p.observe(&[linux(), arm()]).await;
    assert!(
        seen.values()
            .all(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Transient)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn rest_calls_stay_within_the_budget() {
    let s = Setup::new().await;
    let mut config = s.config();
    config.rest_requests_per_minute = 2;
    let p = s.provider_with(config);
    assert!(!view(&p, &linux()).await.stale);
    assert!(!view(&p, &linux()).await.stale);
    let v = view(&p, &linux()).await;
    assert!(v.stale, "third listing over budget: last view, stale");
    let e = p
        .remove(&linux(), &runscale_core::RunnerId::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::RateLimited {
            retry_after: Some(_)
        }
    ));
    assert_eq!(
        s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"],
        2,
        "calls over budget are not sent"
    );
}

fn request(headers: &[(&str, String)], body: &[u8]) -> WebhookRequest {
    WebhookRequest {
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        body: body.to_vec(),
    }
}

/// Deliveries the emulator sends, as the daemon would hand them to the provider.
async fn receiver() -> (String, Arc<Mutex<Vec<WebhookRequest>>>) {
    let got: Arc<Mutex<Vec<WebhookRequest>>> = Arc::default();
    let app = axum::Router::new().route(
        "/webhooks/buildkite",
        axum::routing::post({
            let got = got.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                got.lock().unwrap().push(WebhookRequest {
                    headers,
                    body: body.to_vec(),
                });
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/buildkite",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test]
async fn webhooks_with_a_token_or_a_signature_wake_the_jobs_pool_once() {
    let (url, got) = receiver().await;
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    for auth in [WebhookAuth::Token, WebhookAuth::Signature] {
        cfg.webhooks.push(WebhookConfig {
            url: url.clone(),
            token: secrecy::SecretString::from("hook-token"),
            auth,
        });
    }
    let s = Setup::with(cfg).await;
    let p = s.provider();
    let started = Instant::now();
    s.emu.submit(vec![
        JobSpec::new("arm", Duration::from_secs(1)).rule("os=linux"),
    ]);
    for _ in 0..100 {
        if got.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = got.lock().unwrap().clone();
    assert_eq!(delivered.len(), 2);
    println!(
        "job.scheduled delivered in {} ms",
        started.elapsed().as_millis()
    );
    let (token_style, signed): (Vec<_>, Vec<_>) = delivered
        .into_iter()
        .partition(|r| r.header("x-buildkite-token").is_some());
    let (token_style, signed) = (&token_style[0], &signed[0]);

    assert_eq!(p.webhook(signed).expect("signed"), vec![arm()]);
    assert_eq!(
        p.webhook(signed).expect("replayed signature"),
        vec![],
        "a replay wakes nothing"
    );
    assert_eq!(
        p.webhook(token_style).expect("token"),
        vec![],
        "the same job's event again wakes nothing"
    );

    let body =
        br#"{"event":"job.scheduled","job":{"id":"j2","agent_query_rules":["queue=linux"]}}"#;
    let now = chrono::Utc::now().timestamp();
    let token = |t: &str| vec![("x-buildkite-token", t.to_owned())];
    let sig = |ts: i64, key: &[u8]| vec![("x-buildkite-signature", signature(key, ts, body))];
    for (why, headers) in [
        ("wrong token", token("hook-tokem")),
        ("old timestamp", sig(now - 301, b"hook-token")),
        ("future timestamp", sig(now + 301, b"hook-token")),
        ("wrong key", sig(now, b"other")),
        ("nothing", vec![]),
    ] {
        let e = p.webhook(&request(&headers, body)).expect_err(why);
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{why}");
    }
    let mut tampered = sig(now, b"hook-token");
    tampered[0].1 = tampered[0].1.replace(
        &format!("timestamp={now}"),
        &format!("timestamp={}", now - 1),
    );
    assert!(
        p.webhook(&request(&tampered, body)).is_err(),
        "timestamp is signed"
    );
    let big = vec![b' '; (1 << 20) + 1];
    assert!(p.webhook(&request(&token("hook-token"), &big)).is_err());
    assert_eq!(
        p.webhook(&request(&token("hook-token"), body))
            .expect("token"),
        vec![linux()]
    );
    let gpu = br#"{"event":"job.scheduled","job":{"id":"j3","agent_query_rules":["queue=linux","gpu=true"]}}"#;
    assert_eq!(
        p.webhook(&request(&token("hook-token"), gpu)).expect("gpu"),
        vec![],
        "no pool has the gpu tag"
    );
    let ping = br#"{"event":"ping"}"#;
    assert_eq!(
        p.webhook(&request(
            &[("x-buildkite-signature", signature(b"hook-token", now, ping))],
            ping
        ))
        .expect("ping"),
        vec![]
    );
}

#[tokio::test]
async fn registration_credentials_and_the_provider_contract() {
    let s = Setup::new().await;
    let p = s.provider();
    let reg = p.register(&linux(), "linux-abc").await.expect("register");
    let c = &reg.credentials;
    assert_eq!(c.vars["BUILDKITE_AGENT_NAME"], "linux-abc");
    assert_eq!(c.vars["BUILDKITE_AGENT_TAGS"], "queue=linux,os=linux");
    assert_eq!(c.vars["BUILDKITE_AGENT_ENDPOINT"], s.emu.agent_endpoint());
    assert_eq!(
        c.secrets["BUILDKITE_AGENT_TOKEN"].expose_secret(),
        "agent-token"
    );
    assert!(!format!("{reg:?} {p:?}").contains("agent-token"));
    let sel: PoolSelector = serde_json::from_value(serde_json::json!({
        "queue": "q",
        "disconnect_after_job": true,
        "disconnect_after_idle_timeout": "10m",
    }))
    .expect("selector");
    let p2 = BuildkiteProvider::new(s.config(), vec![(linux(), sel)]).expect("provider");
    let c = p2
        .register(&linux(), "linux-x")
        .await
        .expect("register")
        .credentials;
    assert_eq!(c.vars["BUILDKITE_AGENT_DISCONNECT_AFTER_JOB"], "true");
    assert_eq!(
        c.vars["BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT"],
        "600"
    );
    assert_eq!(c.vars["BUILDKITE_AGENT_TAGS"], "queue=q");
    assert!(p.probe().await.expect("probe").contains("acme"));
    conformance::provider_contract(&p, &linux(), &arm())
        .await
        .expect("provider contract");

    let mut bad = s.config();
    bad.org = "other".into();
    let e = s.provider_with(bad).probe().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    let dup = PoolSelector {
        queue: "linux".into(),
        tags: BTreeMap::new(),
        disconnect_after_job: false,
        disconnect_after_idle_timeout: None,
        reserve_jobs: false,
        cluster_queue_id: None,
    };
    let e =
        BuildkiteProvider::new(s.config(), vec![(linux(), dup.clone()), (arm(), dup)]).unwrap_err();
    assert!(e.to_string().contains("queue"), "{e}");
}

#[tokio::test]
async fn one_agent_per_job_reserves_its_job_through_the_stacks_api() {
    let s = Setup::new().await;
    let sel = PoolSelector {
        queue: "linux".into(),
        tags: BTreeMap::from([("os".to_owned(), "linux".to_owned())]),
        disconnect_after_job: false,
        disconnect_after_idle_timeout: None,
        reserve_jobs: true,
        cluster_queue_id: None,
    };
    let p = BuildkiteProvider::new(s.config(), vec![(linux(), sel)]).expect("provider");
    let job = s
        .emu
        .submit(vec![
            JobSpec::new("linux", Duration::from_millis(300)).rule("os=linux"),
        ])
        .remove(0);
    s.emu.submit(vec![
        JobSpec::new("linux", Duration::from_millis(300)).rule("gpu=true"),
    ]);
    let v = view(&p, &linux()).await;
    let waiting: Vec<_> = v.demand.waiting.iter().map(|w| w.id.clone()).collect();
    assert_eq!(
        waiting,
        std::slice::from_ref(&job),
        "only the job the pool's tags can run"
    );

    let (name, agent) = s.start_agent(&p, &linux()).await;
    assert!(
        view(&p, &linux()).await.demand.waiting.is_empty(),
        "reserved"
    );
    let e = p.register(&linux(), "rs-linux-second").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity);
    let report = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent exits in time")
        .expect("agent");
    assert_eq!((report.exit, report.jobs_finished), (AgentExit::JobDone, 1));
    let snap = s.emu.snapshot();
    let j = snap.jobs.iter().find(|j| j.id == job).expect("job");
    assert_eq!(j.status, JobStatus::Passed);
    assert_eq!(j.agent.as_deref(), Some(name.as_str()));
    assert_eq!(j.reserved_by.as_deref(), Some("runscale-linux"));
    assert_eq!(j.reservations, 1);
    assert!(snap.violations.is_empty());

    // Concurrent registrations never hand out the same job.
    s.emu.submit(vec![
        JobSpec::new("linux", Duration::from_millis(300))
            .rule("os=linux");
        2
    ]);
    let pool = linux();
    let (a, b) = tokio::join!(
        p.register(&pool, "rs-linux-a"),
        p.register(&pool, "rs-linux-b")
    );
    let job_of =
        |r: runscale_core::Registration| r.credentials.vars["BUILDKITE_AGENT_ACQUIRE_JOB"].clone();
    let (a, b) = (job_of(a.expect("a")), job_of(b.expect("b")));
    assert_ne!(a, b);
}

fn reserving(queue: &str) -> PoolSelector {
    PoolSelector {
        queue: queue.into(),
        tags: BTreeMap::new(),
        disconnect_after_job: true,
        disconnect_after_idle_timeout: None,
        reserve_jobs: true,
        cluster_queue_id: None,
    }
}

/// An instance that died before its agent started gives its job back: the job stays reserved
/// by the pool's stack (Buildkite documents no way to drop or shorten a reservation), counts
/// as waiting, and the next agent gets it at once, its reservation extended.
#[tokio::test]
async fn the_job_of_an_agent_that_never_started_goes_to_the_next_agent() {
    let s = Setup::new().await;
    let mut config = s.config();
    config.reservation_expiry = Duration::from_secs(30);
    let p = BuildkiteProvider::new(config, vec![(linux(), reserving("linux"))]).expect("provider");
    let job = s
        .emu
        .submit(vec![JobSpec::new("linux", Duration::from_millis(300))])
        .remove(0);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 1);
    let first = p
        .register(&linux(), "rs-linux-died")
        .await
        .expect("register");
    assert_eq!(first.credentials.vars["BUILDKITE_AGENT_ACQUIRE_JOB"], job);
    assert!(view(&p, &linux()).await.demand.waiting.is_empty(), "held");
    let e = p.register(&linux(), "rs-linux-next").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "the job is held");
    // The pod died before its agent started: runscale releases its registration.
    p.release(&linux(), "rs-linux-died").await.expect("release");
    p.release(&linux(), "rs-linux-died")
        .await
        .expect("idempotent");
    p.release(&linux(), "rs-linux-unknown")
        .await
        .expect("nothing held");
    let waiting = view(&p, &linux()).await.demand.waiting;
    assert_eq!(waiting.len(), 1, "given back: waiting again");
    assert_eq!(waiting[0].id, job);
    let next = p
        .register(&linux(), "rs-linux-next")
        .await
        .expect("the next agent gets it at once");
    assert_eq!(next.credentials.vars["BUILDKITE_AGENT_ACQUIRE_JOB"], job);
    assert!(view(&p, &linux()).await.demand.waiting.is_empty());
    let snap = s.emu.snapshot();
    assert_eq!(snap.jobs[0].reservations, 2, "reserved again: extended");
    assert_eq!(
        snap.requests["PUT /v3/stacks/{key}/scheduled-jobs/batch-reserve"], 2,
        "release itself sends nothing"
    );
    assert!(snap.violations.is_empty());
}

/// The queue's `dispatch_paused` (the Stacks API's field): no demand, no reservation.
#[tokio::test]
async fn a_paused_queue_gets_no_reservation_and_no_launch() {
    let s = Setup::new().await;
    let p =
        BuildkiteProvider::new(s.config(), vec![(linux(), reserving("linux"))]).expect("provider");
    s.emu
        .submit(vec![JobSpec::new("linux", Duration::from_millis(300))]);
    s.emu.set_dispatch_paused("linux", true);
    let v = view(&p, &linux()).await;
    assert!(v.demand.waiting.is_empty(), "nothing to launch for");
    let e = p.register(&linux(), "rs-linux-a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}");
    assert_eq!(s.emu.snapshot().jobs[0].reservations, 0);
    s.emu.set_dispatch_paused("linux", false);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 1);
    p.register(&linux(), "rs-linux-a").await.expect("resumed");
    assert_eq!(s.emu.snapshot().jobs[0].reservations, 1);
}

/// A queue name a stack key cannot hold still gets a stack, with a key Buildkite accepts.
#[tokio::test]
async fn queues_with_any_name_get_a_valid_stack_key() {
    let s = Setup::new().await;
    let p = BuildkiteProvider::new(
        s.config(),
        vec![
            (linux(), reserving("linux.large")),
            (arm(), reserving("linux:large")),
        ],
    )
    .expect("provider");
    s.emu.submit(vec![JobSpec::new(
        "linux.large",
        Duration::from_millis(100),
    )]);
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 1);
    assert!(view(&p, &arm()).await.demand.waiting.is_empty());
    p.register(&linux(), "rs-linux-a").await.expect("register");
    let key = s.emu.snapshot().jobs[0]
        .reserved_by
        .clone()
        .expect("reserved");
    assert!(key.starts_with("runscale-linux_large-"), "{key}");
    assert!(key.len() <= 80);
}

/// 400 `Can only stop connected agents` means the agent is not connected: a drain has
/// nothing to do and a removal is done; never a misconfiguration (maximum backoff).
#[tokio::test]
async fn stopping_an_agent_that_is_no_longer_connected_is_not_an_error() {
    let s = Setup::new().await;
    let p = s.provider();
    let (_, agent) = s.start_agent(&p, &linux()).await;
    let v = wait_view(&p, &linux(), "agent listed", |v| v.runners.len() == 1).await;
    let id = v.runners[0].id.clone();
    p.drain(&linux(), &id).await.expect("drain");
    let report = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent exits in time")
        .expect("agent");
    assert_eq!(report.exit, AgentExit::Stopped);
    p.drain(&linux(), &id)
        .await
        .expect("a drained agent that left needs nothing more");
    p.remove(&linux(), &id).await.expect("gone");
    let stops = s.emu.snapshot().requests["PUT /v2/organizations/{org}/agents/{id}/stop"];
    assert_eq!(stops, 2, "the second stop was refused with 400");
}

/// Buildkite's per-user budget (`RateLimit-User-*`) is respected as well as the
/// organisation's: once either says nothing is left, no call is sent until its reset.
#[tokio::test]
async fn both_rest_budgets_are_respected() {
    let mut cfg = EmulatorConfig::new(ORG, "agent-token", "api-token");
    cfg.rest_requests_per_minute_per_user = 3;
    let s = Setup::with(cfg).await;
    let p = s.provider();
    for _ in 0..3 {
        assert!(!view(&p, &linux()).await.stale);
    }
    assert_eq!(
        p.rate_limit_remaining(),
        Some(0),
        "the user's budget is used"
    );
    let v = view(&p, &linux()).await;
    assert!(v.stale, "throttled: the last view, stale");
    let e = p
        .remove(&linux(), &runscale_core::RunnerId::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::RateLimited { retry_after: Some(d) } if d > Duration::from_secs(30)),
        "{e}"
    );
    assert_eq!(
        s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"],
        3,
        "no request after the user's budget said 0, so never a 429"
    );

    // runscale's own per-user budget.
    let s = Setup::new().await;
    let mut config = s.config();
    config.rest_requests_per_minute_per_user = 2;
    let p = s.provider_with(config);
    view(&p, &linux()).await;
    view(&p, &linux()).await;
    assert!(view(&p, &linux()).await.stale);
    assert_eq!(
        s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"],
        2
    );
}

/// Registers `n` agents named for `pool` straight through the agent API (no agent process).
async fn connect_agents(s: &Setup, pool: &PoolId, queue: &str, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let name = runscale_core::naming::generate(pool.as_str(), 1, &mut rand::rng()).1[0].clone();
        let r: serde_json::Value = http
            .post(format!("{}/register", s.emu.agent_endpoint()))
            .header("authorization", "Token agent-token")
            .json(&serde_json::json!({ "name": name, "meta_data": [format!("queue={queue}")] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["access_token"].as_str().unwrap();
        let c = http
            .post(format!("{}/connect", s.emu.agent_endpoint()))
            .header("authorization", format!("Token {token}"))
            .send()
            .await
            .unwrap();
        assert!(c.status().is_success());
    }
}

/// The agents listing is read to its last page, or the observation fails: never a partial
/// list in which the agents of unread pages look gone.
#[tokio::test]
async fn the_agents_listing_is_read_to_its_last_page_or_not_at_all() {
    let s = Setup::new().await;
    connect_agents(&s, &linux(), "linux", 150).await;
    connect_agents(&s, &arm(), "arm", 5).await;
    let p = s.provider();
    let v = view(&p, &linux()).await;
    assert_eq!(v.runners.len(), 150, "both pages");
    assert_eq!(
        s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"],
        2
    );

    // The second page cannot be read: an error, not the first page alone.
    let mut config = s.config();
    config.rest_requests_per_minute = 1;
    let p = s.provider_with(config);
    let e = observe_error(&p, &linux()).await;
    assert!(matches!(e.kind(), ErrorKind::RateLimited { .. }), "{e}");

    // With the cluster queues named, each pool reads its own queue's agents only.
    let sel = |queue: &str| PoolSelector {
        queue: queue.into(),
        tags: BTreeMap::new(),
        disconnect_after_job: false,
        disconnect_after_idle_timeout: None,
        reserve_jobs: false,
        cluster_queue_id: Some(cluster_queue_id(queue)),
    };
    let p = BuildkiteProvider::new(
        s.config(),
        vec![(linux(), sel("linux")), (arm(), sel("arm"))],
    )
    .expect("provider");
    let before = s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"];
    let seen = p.observe(&[linux(), arm()]).await;
    assert_eq!(seen[&linux()].as_ref().expect("linux").runners.len(), 150);
    assert_eq!(seen[&arm()].as_ref().expect("arm").runners.len(), 5);
    assert_eq!(
        s.emu.snapshot().requests["GET /v2/organizations/{org}/agents"] - before,
        3,
        "two pages of linux, one of arm"
    );
    assert!(
        p.probe()
            .await
            .expect("probe")
            .contains("155 connected agents")
    );
    let wrong = BuildkiteProvider::new(
        s.config(),
        vec![(
            linux(),
            PoolSelector {
                cluster_queue_id: Some(cluster_queue_id("arm")),
                ..sel("linux")
            },
        )],
    )
    .expect("provider");
    let e = wrong.probe().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
}

/// Records `n` past jobs of `queue`, one every `every` going back from `newest`, each
/// started 30 s after it became runnable.
fn past_jobs(
    s: &Setup,
    queue: &str,
    n: usize,
    newest: chrono::DateTime<chrono::Utc>,
    every: chrono::Duration,
) {
    for i in 0..n {
        let at = newest - every * i32::try_from(i).unwrap();
        let job = JobSpec::new(queue, Duration::from_secs(1));
        s.emu.record_past(vec![job], at, Duration::from_secs(30));
    }
}

#[tokio::test]
async fn job_history_reads_the_builds_since_a_time_for_the_pools_that_count_their_jobs() {
    let s = Setup::new().await;
    let p = s.provider();
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let since = now - chrono::Duration::days(14);
    let hour = chrono::Duration::hours(1);
    past_jobs(&s, "linux", 150, now - hour, hour);
    past_jobs(&s, "arm", 20, now - hour, hour);
    past_jobs(&s, "windows", 5, now - hour, hour);
    past_jobs(&s, "linux", 3, since - hour, hour);
    let mut read = p
        .job_history(&[linux(), arm()], since)
        .await
        .unwrap()
        .expect("Buildkite keeps a history");
    let h = read.remove(&linux()).unwrap();
    assert_eq!(
        h.jobs.len(),
        150,
        "none before the window, none of other queues"
    );
    assert_eq!(h.complete_from, None);
    for j in &h.jobs {
        assert_eq!((j.started_at.unwrap() - j.queued_at).num_seconds(), 30);
    }
    assert_eq!(read[&arm()].jobs.len(), 20);
    let pages = s.emu.snapshot().requests["GET /v2/organizations/{org}/builds"];
    assert_eq!(pages, 2, "178 builds in two pages of 100");
}

#[tokio::test]
async fn job_history_stops_after_ten_pages_and_fails_plainly() {
    let s = Setup::new().await;
    let p = s.provider();
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let minute = chrono::Duration::minutes(1);
    past_jobs(&s, "linux", 1050, now - minute, minute);
    let since = now - chrono::Duration::days(14);
    let read = p
        .job_history(&[linux()], since)
        .await
        .unwrap()
        .expect("Buildkite keeps a history");
    let h = &read[&linux()];
    assert_eq!(h.jobs.len(), 1000, "ten pages of the newest builds");
    assert_eq!(h.complete_from, Some(now - minute * 1000));
    s.emu.set_faults(Faults {
        error_rate_5xx: 1.0,
        ..Faults::default()
    });
    let e = p.job_history(&[linux()], since).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("build history"), "{e}");
    assert!(!format!("{e:?}").contains("api-token"));
}
