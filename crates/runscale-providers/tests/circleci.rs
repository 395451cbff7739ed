//! The CircleCI provider against the CircleCI emulator over loopback HTTP: demand and runners
//! on the v3 and v2 paths, registration whose credentials start a real (fake) runner, removal
//! that never lets a connected runner go, the plan's concurrency, errors and throttling,
//! webhooks; and core's provider conformance suite.

use std::time::Duration;

use runscale_core::adapter_type::Validate as _;
use runscale_core::secret::SecretRef;
use runscale_core::testing::conformance;
use runscale_core::{
    ErrorKind, PoolId, Provider, ProviderView, RunnerState, WebhookRequest, naming,
};
use runscale_emulator::circleci::{
    AgentConfig, Emulator, EmulatorConfig, EmulatorHandle, Faults, RunnerMode as AgentMode,
    TaskSpec, TaskStatus, run_agent, signature,
};
use runscale_providers::circleci::{
    AgentEnv, ApiVersion, CircleciProvider, Config, PoolSelector, RunnerMode, RunnerNames,
};
use secrecy::ExposeSecret;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const LINUX: &str = "acme/linux";
const ARM: &str = "acme/arm";

struct Setup {
    emu: EmulatorHandle,
    dir: TempDir,
}

impl Setup {
    async fn new(plan: Option<u32>) -> Self {
        let mut cfg =
            EmulatorConfig::new("api-token", &[(LINUX, "linux-token"), (ARM, "arm-token")]);
        cfg.plan_concurrency = plan;
        let emu = Emulator::start(cfg).await.expect("emulator");
        let dir = TempDir::new().expect("tempdir");
        for (file, value) in [
            ("api", "api-token"),
            ("linux", "linux-token"),
            ("arm", "arm-token"),
            ("hook", "hook-secret"),
        ] {
            std::fs::write(dir.path().join(file), value).expect("write secret");
        }
        Setup { emu, dir }
    }

    fn secret(&self, name: &str) -> SecretRef {
        SecretRef::File(self.dir.path().join(name))
    }

    fn config(&self) -> Config {
        Config {
            api_url: self.emu.url(),
            api_version: ApiVersion::V3,
            token: self.secret("api"),
            webhook_secret: Some(self.secret("hook")),
            max_concurrency: None,
            disconnect_grace: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn selector(&self, class: &str, token: &str) -> PoolSelector {
        PoolSelector {
            resource_class: class.to_owned(),
            token: Some(self.secret(token)),
            runner_names: RunnerNames::Runscale,
            runner_mode: RunnerMode::SingleTask,
            runner_idle_timeout: Some(Duration::from_secs(60)),
            projects: Vec::new(),
            agent_env: AgentEnv::CircleciRunner,
        }
    }

    fn provider_with(&self, config: Config) -> CircleciProvider {
        CircleciProvider::new(
            config,
            vec![
                (linux(), self.selector(LINUX, "linux")),
                (arm(), self.selector(ARM, "arm")),
            ],
        )
        .expect("provider")
    }

    fn provider(&self) -> CircleciProvider {
        self.provider_with(self.config())
    }
}

fn linux() -> PoolId {
    PoolId::new("linux")
}

fn arm() -> PoolId {
    PoolId::new("arm")
}

fn name(pool: &PoolId) -> String {
    naming::generate(pool.as_str(), 1, &mut rand::rng())
        .1
        .remove(0)
}

async fn observe_one(p: &CircleciProvider, pool: &PoolId) -> runscale_core::Result<ProviderView> {
    p.observe(std::slice::from_ref(pool))
        .await
        .remove(pool)
        .expect("pool answered")
}

async fn view(p: &CircleciProvider, pool: &PoolId) -> ProviderView {
    observe_one(p, pool).await.expect("observe ok")
}

/// Observes `pool` with the next API calls failing as `faults` say; returns the error.
async fn observe_failing(s: &Setup, p: &CircleciProvider, faults: Faults) -> runscale_core::Error {
    s.emu.set_faults(faults);
    observe_one(p, &linux()).await.expect_err("a fault")
}

/// Starts a fake runner from what `register` returned, as a backend would.
async fn start_registered(
    p: &CircleciProvider,
    pool: &PoolId,
    runner: &str,
    mode: AgentMode,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<
    Result<runscale_emulator::circleci::AgentReport, runscale_emulator::circleci::AgentError>,
> {
    let reg = p.register(pool, runner).await.expect("register");
    let vars: std::collections::HashMap<String, String> =
        reg.credentials.expose_all().into_iter().collect();
    let mut cfg = AgentConfig::from_vars(&|n| vars.get(n).cloned())
        .expect("valid variables")
        .expect("a CircleCI runner");
    cfg.mode = mode;
    cfg.poll_interval = Duration::from_millis(20);
    cfg.heartbeat_interval = Duration::from_millis(50);
    tokio::spawn(run_agent(cfg, stop.clone()))
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
async fn conforms_to_the_provider_contract() {
    let s = Setup::new(None).await;
    conformance::provider_contract(&s.provider(), &linux(), &arm())
        .await
        .expect("contract");
}

#[tokio::test]
async fn demand_and_runners_per_resource_class_on_v3_and_v2() {
    for version in [ApiVersion::V3, ApiVersion::V2] {
        let s = Setup::new(None).await;
        let mut cfg = s.config();
        cfg.api_version = version;
        let p = s.provider_with(cfg);
        s.emu
            .submit(vec![TaskSpec::new(LINUX, Duration::from_secs(30)); 3]);
        s.emu
            .submit(vec![TaskSpec::new(ARM, Duration::from_secs(30))]);
        let stop = CancellationToken::new();
        let runner = name(&linux());
        let agent = start_registered(&p, &linux(), &runner, AgentMode::SingleTask, &stop).await;
        // A runner runscale did not make, on the same class, is nobody's.
        let mut foreign = AgentConfig::from_vars(&|n| match n {
            "CIRCLECI_RUNNER_API_AUTH_TOKEN" => Some("linux-token".into()),
            "CIRCLECI_RUNNER_NAME" => Some("hand-made".into()),
            "CIRCLECI_RUNNER_API_URL" => Some(s.emu.url()),
            _ => None,
        })
        .expect("vars")
        .expect("runner");
        foreign.poll_interval = Duration::from_millis(20);
        let foreign = tokio::spawn(run_agent(foreign, stop.clone()));
        wait_for("two claims", || {
            s.emu.snapshot().count(TaskStatus::Running) == 2
        })
        .await;

        let views = p.observe(&[linux(), arm()]).await;
        let lv = views[&linux()].as_ref().expect("linux");
        assert_eq!(lv.demand.waiting.len(), 1, "{version:?}");
        assert_eq!(lv.demand.running, 2);
        assert_eq!(
            lv.runners.len(),
            1,
            "only runscale's runner: {:?}",
            lv.runners
        );
        assert_eq!(lv.runners[0].name, runner);
        assert_eq!(lv.runners[0].state, RunnerState::Busy);
        assert!(
            lv.runners[0].last_busy.is_some(),
            "last_used is the last busy time"
        );
        let av = views[&arm()].as_ref().expect("arm");
        assert_eq!((av.demand.waiting.len(), av.demand.running), (1, 0));
        assert!(av.runners.is_empty());

        let requests = s.emu.snapshot().requests;
        let (tasks, running, runners) = match version {
            ApiVersion::V3 => (
                "GET /api/v3/runner/tasks",
                "GET /api/v3/runner/tasks/running",
                "GET /api/v3/runner",
            ),
            ApiVersion::V2 => (
                "GET /api/v2/tasks",
                "GET /api/v2/tasks/running",
                "GET /api/v2/runner",
            ),
        };
        for route in [tasks, running, runners] {
            assert_eq!(requests.get(route), Some(&2), "{route}: {requests:?}");
        }
        agent.abort();
        foreign.abort();
    }
}

#[tokio::test]
async fn registration_hands_the_resource_class_token_to_the_runner_as_a_secret() {
    let s = Setup::new(None).await;
    let mut sel = s.selector(LINUX, "linux");
    sel.runner_mode = RunnerMode::Continuous;
    sel.runner_idle_timeout = Some(Duration::from_secs(90));
    let p = CircleciProvider::new(s.config(), vec![(linux(), sel.clone())]).expect("provider");
    let reg = p
        .register(&linux(), "rs-linux-abcdefghij")
        .await
        .expect("register");
    assert_eq!(
        reg.runner_id, None,
        "CircleCI has no per-runner registration"
    );
    let c = &reg.credentials;
    assert_eq!(
        c.secrets["CIRCLECI_RUNNER_API_AUTH_TOKEN"].expose_secret(),
        "linux-token"
    );
    assert_eq!(c.vars["CIRCLECI_RUNNER_NAME"], "rs-linux-abcdefghij");
    assert_eq!(c.vars["CIRCLECI_RUNNER_API_URL"], s.emu.url());
    assert_eq!(c.vars["CIRCLECI_RUNNER_MODE"], "continuous");
    assert_eq!(c.vars["CIRCLECI_RUNNER_IDLE_TIMEOUT"], "90s");
    assert!(!c.vars.values().any(|v| v.contains("linux-token")));
    assert!(!format!("{reg:?}").contains("linux-token"));

    sel.agent_env = AgentEnv::LaunchAgent;
    let p = CircleciProvider::new(s.config(), vec![(linux(), sel)]).expect("provider");
    let reg = p
        .register(&linux(), "rs-linux-abcdefghij")
        .await
        .expect("register");
    assert!(
        reg.credentials
            .secrets
            .contains_key("LAUNCH_AGENT_API_AUTH_TOKEN")
    );
    assert_eq!(
        reg.credentials.vars["LAUNCH_AGENT_RUNNER_MODE"],
        "continuous"
    );
}

#[tokio::test]
async fn a_connected_runner_is_never_removed_and_a_gone_one_is() {
    let s = Setup::new(None).await;
    let p = s.provider();
    s.emu
        .submit(vec![TaskSpec::new(LINUX, Duration::from_millis(600))]);
    let stop = CancellationToken::new();
    let busy = name(&linux());
    let idle = name(&linux());
    let a = start_registered(&p, &linux(), &busy, AgentMode::SingleTask, &stop).await;
    wait_for("a claim", || {
        s.emu.snapshot().count(TaskStatus::Running) == 1
    })
    .await;
    let b = start_registered(&p, &linux(), &idle, AgentMode::Continuous, &stop).await;
    wait_for("both listed", || s.emu.snapshot().runners.len() == 2).await;
    let v = view(&p, &linux()).await;
    let state = |n: &str| v.runners.iter().find(|r| r.name == n).map(|r| r.state);
    assert_eq!(state(&busy), Some(RunnerState::Busy));
    assert_eq!(state(&idle), Some(RunnerState::Idle));
    for n in [&busy, &idle] {
        let e = p
            .remove(&linux(), &runscale_core::RunnerId::new(n))
            .await
            .expect_err("a connected runner stays");
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    }
    // The single-task runner finishes and exits: it leaves the listing, removal is done.
    a.await.expect("join").expect("agent");
    p.remove(&linux(), &runscale_core::RunnerId::new(&busy))
        .await
        .expect("a runner that left is gone");
    // The idle runner is killed (no goodbye): after disconnect_grace it is offline and may go.
    b.abort();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let v = view(&p, &linux()).await;
    assert_eq!(v.runners.len(), 1);
    assert_eq!(v.runners[0].state, RunnerState::Offline);
    p.remove(&linux(), &v.runners[0].id)
        .await
        .expect("silent and no task running");
    assert!(s.emu.snapshot().violations.is_empty());
}

#[tokio::test]
async fn a_silent_runner_is_kept_while_more_tasks_run_than_runners_are_connected() {
    let s = Setup::new(None).await;
    let p = s.provider();
    s.emu
        .submit(vec![TaskSpec::new(LINUX, Duration::from_secs(60))]);
    let stop = CancellationToken::new();
    let runner = name(&linux());
    let a = start_registered(&p, &linux(), &runner, AgentMode::SingleTask, &stop).await;
    wait_for("a claim", || {
        s.emu.snapshot().count(TaskStatus::Running) == 1
    })
    .await;
    a.abort(); // silent while CircleCI still counts its task as running (lease 30 s)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let v = view(&p, &linux()).await;
    assert_eq!(v.demand.running, 1);
    assert_eq!(
        v.runners[0].state,
        RunnerState::Busy,
        "it may hold the running task"
    );
    let e = p
        .remove(&linux(), &v.runners[0].id)
        .await
        .expect_err("may be busy");
    assert_eq!(e.kind(), ErrorKind::Busy);
}

/// For runners the instances name themselves: quiet only with no unclaimed and no running
/// task of the class (another class's tasks do not count); a failed read is no proof.
#[tokio::test]
async fn quiet_is_confirmed_only_with_nothing_unclaimed_or_running_in_the_class() {
    let s = Setup::new(None).await;
    let p = s.provider();
    p.confirm_quiet(&linux()).await.expect("nothing at all");
    s.emu
        .submit(vec![TaskSpec::new(ARM, Duration::from_secs(60))]);
    p.confirm_quiet(&linux())
        .await
        .expect("another class's task");
    s.emu
        .submit(vec![TaskSpec::new(LINUX, Duration::from_millis(300))]);
    let e = p.confirm_quiet(&linux()).await.expect_err("unclaimed");
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("1 unclaimed and 0 running"), "{e}");
    let stop = CancellationToken::new();
    let a = start_registered(&p, &linux(), "lambda-1", AgentMode::SingleTask, &stop).await;
    wait_for("a claim", || {
        s.emu.snapshot().count(TaskStatus::Running) == 1
    })
    .await;
    let e = p.confirm_quiet(&linux()).await.expect_err("running");
    assert!(e.to_string().contains("0 unclaimed and 1 running"), "{e}");
    a.await.expect("join").expect("runner");
    p.confirm_quiet(&linux()).await.expect("done");
    // Every attempt of its reads fails (each GET is tried five times).
    s.emu.set_faults(Faults {
        fail_next: 15,
        ..Faults::default()
    });
    let e = p.confirm_quiet(&linux()).await.expect_err("a failed read");
    assert_ne!(e.kind(), ErrorKind::Busy);
}

type Views = std::collections::HashMap<PoolId, runscale_core::Result<ProviderView>>;

fn waiting(views: &Views, pool: &PoolId) -> usize {
    views[pool].as_ref().expect("ok").demand.waiting.len()
}

#[tokio::test]
async fn max_concurrency_caps_waiting_tasks_over_every_pool() {
    let s = Setup::new(None).await;
    let mut cfg = s.config();
    cfg.max_concurrency = Some(5);
    let p = s.provider_with(cfg);
    s.emu
        .submit(vec![TaskSpec::new(LINUX, Duration::from_secs(30)); 4]);
    s.emu
        .submit(vec![TaskSpec::new(ARM, Duration::from_secs(30)); 3]);
    let views = p.observe(&[linux(), arm()]).await;
    assert_eq!((waiting(&views, &linux()), waiting(&views, &arm())), (4, 1));

    // One task runs: it takes one unit of the plan, in every pool's budget.
    let stop = CancellationToken::new();
    let a = start_registered(&p, &linux(), &name(&linux()), AgentMode::SingleTask, &stop).await;
    wait_for("a claim", || {
        s.emu.snapshot().count(TaskStatus::Running) == 1
    })
    .await;
    // Observing one pool alone still counts the other's last known numbers.
    let v = view(&p, &arm()).await;
    assert_eq!(v.demand.waiting.len(), 1);
    let views = p.observe(&[linux(), arm()]).await;
    assert_eq!((waiting(&views, &linux()), waiting(&views, &arm())), (3, 1));
    let total: usize = [linux(), arm()]
        .iter()
        .map(|pool| {
            let v = views[pool].as_ref().expect("ok");
            v.demand.waiting.len() + v.demand.running as usize
        })
        .sum();
    assert!(
        total <= 5,
        "waiting + running never exceed the plan: {total}"
    );
    a.abort();
}

#[tokio::test]
async fn errors_are_classified_and_throttling_serves_the_last_view_stale() {
    let s = Setup::new(None).await;
    let p = s.provider();
    s.emu
        .submit(vec![TaskSpec::new(LINUX, Duration::from_secs(30)); 2]);
    let throttled = Faults {
        throttle_next: 3,
        ..Faults::default()
    };
    let e = observe_failing(&s, &p, throttled.clone()).await;
    assert!(
        matches!(e.kind(), ErrorKind::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(1)),
        "{e}"
    );
    let fresh = view(&p, &linux()).await;
    assert!(!fresh.stale);
    s.emu.set_faults(throttled);
    let stale = view(&p, &linux()).await;
    assert!(stale.stale, "last good view, marked stale");
    assert_eq!(stale.demand, fresh.demand);

    // Three reads, each tried five times: every attempt fails.
    let failing = Faults {
        fail_next: 15,
        ..Faults::default()
    };
    let e = observe_failing(&s, &p, failing).await;
    assert_eq!(e.kind(), ErrorKind::Transient);

    let mut cfg = s.config();
    std::fs::write(s.dir.path().join("bad"), "wrong-token").expect("write");
    cfg.token = s.secret("bad");
    let e = s.provider_with(cfg).probe().await.expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(!e.to_string().contains("wrong-token"));

    let p = CircleciProvider::new(
        s.config(),
        vec![(linux(), s.selector("acme/none", "linux"))],
    )
    .expect("provider");
    let e = observe_one(&p, &linux()).await.expect_err("404");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(p.probe().await.is_err());
    assert!(
        s.provider()
            .probe()
            .await
            .expect("probe")
            .contains("2 resource class")
    );
}

#[tokio::test]
async fn configuration_errors_name_the_field() {
    let s = Setup::new(None).await;
    let bad = |sel: PoolSelector, pools2: Option<PoolSelector>| {
        let mut pools = vec![(linux(), sel)];
        if let Some(p) = pools2 {
            pools.push((arm(), p));
        }
        CircleciProvider::new(s.config(), pools)
            .expect_err("invalid")
            .to_string()
    };
    let mut sel = s.selector("no-slash", "linux");
    assert!(bad(sel.clone(), None).contains("resource_class"));
    sel = s.selector(LINUX, "linux");
    sel.runner_mode = RunnerMode::Continuous;
    sel.runner_idle_timeout = None;
    assert!(bad(sel, None).contains("runner_idle_timeout"));
    let e = bad(s.selector(LINUX, "linux"), Some(s.selector(LINUX, "arm")));
    assert!(e.contains("already the class of pool linux"), "{e}");
    let e = bad(s.selector(LINUX, "missing"), None);
    assert!(e.contains("token"), "{e}");
    let mut sel = s.selector(LINUX, "linux");
    sel.projects = vec!["github/org/app".into(), "gitlab/org/app".into()];
    let e = bad(sel, None);
    assert!(
        e.contains("projects[1]") && e.contains("gitlab/org/app"),
        "{e}"
    );
    let mut cfg = s.config();
    cfg.max_concurrency = Some(0);
    cfg.api_url = "ftp://x".into();
    let errs = cfg.validate().expect_err("invalid");
    let fields: Vec<_> = errs.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["api_url", "max_concurrency"]);
    let yaml = r#"{"resource_class": "acme/linux", "token": {"env": "X"}, "runner_mode": "single-task", "colour": 1}"#;
    assert!(
        serde_json::from_str::<PoolSelector>(yaml).is_err(),
        "unknown fields are refused"
    );
}

/// A GitHub App organisation's project, as `circleci/<org-id>/<project-id>`.
const ORG_ID: &str = "6f4e9b1c-2a3d-4e5f-8a9b-0c1d2e3f4a5b";
const PROJECT_ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

fn delivery(body: &[u8], sig: Option<String>) -> WebhookRequest {
    let mut headers = vec![("circleci-event-type".to_owned(), "job-completed".to_owned())];
    if let Some(sig) = sig {
        headers.push(("circleci-signature".to_owned(), sig));
    }
    WebhookRequest {
        headers,
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn webhooks_are_verified_deduplicated_and_wake_the_projects_pools() {
    let s = Setup::new(None).await;
    let mut only_app = s.selector(LINUX, "linux");
    // The short form in the configuration, the long one in webhooks (as CircleCI sends it).
    only_app.projects = vec!["gh/org/app".into()];
    let mut only_other = s.selector(ARM, "arm");
    only_other.projects = vec![
        "bb/org/other".into(),
        format!("circleci/{ORG_ID}/{PROJECT_ID}"),
    ];
    let p = CircleciProvider::new(s.config(), vec![(linux(), only_app), (arm(), only_other)])
        .expect("provider");
    let body_of = |id: &str, kind: &str, slug: &str| {
        format!(r#"{{"id":"{id}","type":"{kind}","happened_at":"2026-11-30T00:00:00Z","project":{{"id":"p","name":"app","slug":"{slug}"}}}}"#).into_bytes()
    };
    let body = |id: &str, kind: &str| body_of(id, kind, "github/org/app");
    let sign = |b: &[u8]| Some(signature(b"hook-secret", b));
    let b1 = body("e1", "job-completed");
    assert_eq!(
        p.webhook(&delivery(&b1, sign(&b1))).expect("valid"),
        vec![linux()]
    );
    assert!(
        p.webhook(&delivery(&b1, sign(&b1)))
            .expect("duplicate")
            .is_empty(),
        "same id twice"
    );
    let b2 = body("e2", "workflow-completed");
    assert_eq!(
        p.webhook(&delivery(&b2, sign(&b2))).expect("valid"),
        vec![linux()]
    );
    let b3 = body("e3", "ping");
    assert!(
        p.webhook(&delivery(&b3, sign(&b3)))
            .expect("other events are acknowledged")
            .is_empty()
    );

    let b4 = body("e4", "job-completed");
    let e = p
        .webhook(&delivery(&b4, Some(signature(b"wrong", &b4))))
        .expect_err("bad signature");
    assert!(e.to_string().contains("does not match"));
    assert!(p.webhook(&delivery(&b4, None)).is_err());
    // A forged delivery does not consume the id: the genuine one still wakes.
    assert_eq!(
        p.webhook(&delivery(&b4, sign(&b4))).expect("valid"),
        vec![linux()]
    );
    let big = vec![b' '; (1 << 20) + 1];
    let e = p.webhook(&delivery(&big, sign(&big))).expect_err("too big");
    assert!(e.to_string().contains("1 MiB"));
    let junk = b"not json".to_vec();
    assert_eq!(
        p.webhook(&delivery(&junk, sign(&junk)))
            .expect_err("junk")
            .kind(),
        ErrorKind::Protocol
    );

    // Every documented slug form reaches its pool; another project wakes nobody.
    for (id, slug, woken) in [
        ("s1", "gh/org/app", vec![linux()]),
        ("s2", "GitHub/Org/App", vec![linux()]),
        ("s3", "bitbucket/org/other", vec![arm()]),
        (
            "s4",
            &format!("circleci/{ORG_ID}/{PROJECT_ID}"),
            vec![arm()],
        ),
        ("s5", "github/org/other", vec![]),
        ("s6", "circleci/not-a-uuid/x", vec![]),
    ] {
        let b = body_of(id, "job-completed", slug);
        assert_eq!(
            p.webhook(&delivery(&b, sign(&b))).expect(slug),
            woken,
            "{slug}"
        );
    }

    // Pools without projects wake on every project's events; no secret, no webhooks.
    let b5 = body("e5", "job-completed");
    assert_eq!(
        s.provider()
            .webhook(&delivery(&b5, sign(&b5)))
            .expect("valid"),
        vec![linux(), arm()]
    );
    let mut cfg = s.config();
    cfg.webhook_secret = None;
    assert!(
        s.provider_with(cfg)
            .webhook(&delivery(&b5, sign(&b5)))
            .is_err()
    );
}
