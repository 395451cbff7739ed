//! The GitHub provider against the GitHub emulator (`runscale-emulator`), over real HTTP on
//! loopback: demand across pagination, ETag reuse, JIT and token registration with the fake
//! runner agent, busy removal, App authentication, server errors and rate limits. Plus the
//! core's provider conformance suite.
//!
//! Every emulator listens on 127.0.0.1:0 and is shut down by the test that started it.
#![cfg(feature = "github")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use runscale_core::testing::conformance;
use runscale_core::{ErrorKind, PoolId, Provider, ProviderView, RunnerState, WebhookRequest};
use runscale_emulator::github::{
    AppConfig, Emulator, EmulatorConfig, EmulatorHandle, Faults, InstallationConfig, JitConfig,
    JobSpec, OwnerConfig, OwnerKind, RateLimitConfig, Registration as AgentRegistration,
    RunnerSource, run_agent,
};
use runscale_providers::github::{Config, GithubProvider, PoolSelector};
use secrecy::{ExposeSecret, SecretString};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ghp_emulator_token";
const HOOK_SECRET: &str = "hook-secret";
/// Generous bound for anything that waits on the emulator or an agent (2-core machine,
/// tests in parallel).
const PATIENCE: Duration = Duration::from_secs(30);

fn linux() -> PoolId {
    PoolId::new("linux")
}
fn gpu() -> PoolId {
    PoolId::new("gpu")
}

fn owner() -> OwnerConfig {
    OwnerConfig {
        login: "acme".into(),
        kind: OwnerKind::Organization,
        repos: vec!["app".into(), "lib".into(), "web".into()],
        runner_groups: Vec::new(),
    }
}

async fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let mut config = EmulatorConfig::new(vec![owner()], vec![SecretString::from(TOKEN)]);
    tweak(&mut config);
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

/// Files holding the provider's secrets.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("write");
        std::fs::write(dir.path().join("hook"), HOOK_SECRET).expect("write");
        Self { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn selector(labels: &[&str], ephemeral: bool) -> PoolSelector {
    PoolSelector {
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        repository: None,
        runner_group_id: None,
        ephemeral,
    }
}

fn pools(ephemeral: bool) -> Vec<(PoolId, PoolSelector)> {
    vec![
        (linux(), selector(&["linux"], ephemeral)),
        (gpu(), selector(&["linux", "gpu"], ephemeral)),
    ]
}

fn config(emu: &EmulatorHandle, secrets: &Secrets, extra: serde_json::Value) -> Config {
    let mut v = serde_json::json!({
        "api_url": emu.base_url(),
        "org": "acme",
        "auth": {"token": {"file": secrets.path("token")}},
        "webhook_secret": {"file": secrets.path("hook")},
        "repositories": ["app", "lib"],
        "request_timeout": "10s",
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("config")
}

fn provider(emu: &EmulatorHandle, secrets: &Secrets) -> GithubProvider {
    GithubProvider::new(config(emu, secrets, serde_json::json!({})), pools(true)).expect("provider")
}

async fn view(p: &GithubProvider, pool: &PoolId) -> ProviderView {
    let mut seen = p.observe(&[linux(), gpu()]).await;
    seen.remove(pool)
        .expect("pool answered")
        .unwrap_or_else(|e| panic!("observe {pool}: {e}"))
}

/// Observes until `done` holds for the pool's view, or panics after [`PATIENCE`].
async fn observe_until(
    p: &GithubProvider,
    pool: &PoolId,
    what: &str,
    done: impl Fn(&ProviderView) -> bool,
) -> ProviderView {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = view(p, pool).await;
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last view {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn jobs(repo: &str, labels: &[&str], n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec::new(repo, labels, Duration::from_secs(3600)).named(format!("job-{i}")))
        .collect()
}

#[tokio::test]
async fn observe_counts_waiting_jobs_per_pool_across_pages() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);

    // One run of 250 jobs (three pages of jobs), 120 single-job runs (two pages of runs),
    // jobs for the second pool, and jobs nobody can run.
    emu.enqueue_run(jobs("acme/app", &["self-hosted", "Linux"], 250))
        .expect("enqueue");
    for _ in 0..120 {
        emu.enqueue(JobSpec::new(
            "acme/lib",
            &["linux"],
            Duration::from_secs(3600),
        ))
        .expect("enqueue");
    }
    emu.enqueue_run(jobs("acme/lib", &["linux", "GPU"], 30))
        .expect("enqueue");
    emu.enqueue_run(jobs("acme/app", &["windows"], 5))
        .expect("enqueue");
    // A repository that is not configured (and no webhook named) is not polled.
    emu.enqueue_run(jobs("acme/web", &["linux"], 7))
        .expect("enqueue");

    let seen = p.observe(&[linux(), gpu()]).await;
    let l = seen[&linux()].as_ref().expect("linux view");
    let g = seen[&gpu()].as_ref().expect("gpu view");
    assert_eq!(l.demand.waiting.len(), 370, "250 + 120 linux jobs");
    assert_eq!(g.demand.waiting.len(), 30);
    assert_eq!(l.demand.running + g.demand.running, 0);
    assert!(!l.stale && !g.stale);
    let mut ids: Vec<&str> = l
        .demand
        .waiting
        .iter()
        .chain(&g.demand.waiting)
        .map(|w| w.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 400, "every job counted once");
    let snap = emu.snapshot();
    for w in &l.demand.waiting {
        let job = snap
            .jobs
            .iter()
            .find(|j| j.id.to_string() == w.id)
            .expect("job exists");
        // GitHub reports created_at to the second.
        assert_eq!(
            job.queued_at.timestamp(),
            w.queued_at.timestamp(),
            "queued_at is the job's created_at"
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn unchanged_listings_are_served_from_the_etag_cache_for_free() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    emu.enqueue_run(jobs("acme/app", &["linux"], 150))
        .expect("enqueue");

    let first = view(&p, &linux()).await;
    let after_first = p.rate_limit_remaining().expect("budget known");
    let second = view(&p, &linux()).await;
    let after_second = p.rate_limit_remaining().expect("budget known");
    assert_eq!(first, second);
    assert_eq!(
        after_first, after_second,
        "a second observation of unchanged listings is all 304s, which cost nothing"
    );

    // A change is seen through the cache.
    emu.enqueue(JobSpec::new(
        "acme/lib",
        &["linux"],
        Duration::from_secs(60),
    ))
    .expect("enqueue");
    let third = view(&p, &linux()).await;
    assert_eq!(third.demand.waiting.len(), 151);
    assert!(p.rate_limit_remaining().expect("budget") < after_second);
    emu.shutdown().await;
}

#[tokio::test]
async fn jit_runner_connects_runs_a_job_and_is_busy_until_done() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);

    let name = "rs-linux-abcdefghij";
    let reg = p.register(&linux(), name).await.expect("register");
    assert_eq!(reg.runner_name, name);
    let runner_id = reg
        .runner_id
        .clone()
        .expect("JIT registration knows the id");
    assert_eq!(
        reg.credentials.vars.get("GITHUB_URL").map(String::as_str),
        Some(format!("{}/acme", emu.base_url()).as_str())
    );
    assert_eq!(
        reg.credentials.vars.get("RUNNER_NAME").map(String::as_str),
        Some(name)
    );
    let encoded = reg
        .credentials
        .secrets
        .get("GITHUB_JIT_CONFIG")
        .expect("JIT config")
        .expose_secret()
        .to_owned();
    assert!(
        !format!("{reg:?}").contains(&encoded),
        "the JIT config stays out of Debug"
    );
    let jit = JitConfig::decode(&encoded).expect("decodes");
    assert_eq!(jit.runner_id.to_string(), runner_id.as_str());
    assert!(jit.ephemeral);
    for l in ["self-hosted", "linux"] {
        assert!(jit.labels.iter().any(|x| x.eq_ignore_ascii_case(l)), "{l}");
    }

    // Registered, not yet connected: offline, under its pool only.
    let v = view(&p, &linux()).await;
    assert_eq!(v.runners.len(), 1);
    assert_eq!(v.runners[0].id, runner_id);
    assert_eq!(v.runners[0].state, RunnerState::Offline);
    assert!(view(&p, &gpu()).await.runners.is_empty());

    let stop = CancellationToken::new();
    let agent = tokio::spawn(run_agent(RunnerSource::Jit(jit), stop.clone()));
    observe_until(&p, &linux(), "the runner to come online idle", |v| {
        v.runners.iter().any(|r| r.state == RunnerState::Idle)
    })
    .await;

    // A job arrives; the runner takes it and is busy; removing it is refused.
    emu.enqueue(JobSpec::new("acme/app", &["linux"], Duration::from_secs(4)))
        .expect("enqueue");
    let busy = observe_until(&p, &linux(), "the runner to be busy", |v| {
        v.runners.iter().any(|r| r.state == RunnerState::Busy)
    })
    .await;
    assert_eq!(
        busy.demand.running, 1,
        "the running job counts for the pool"
    );
    assert!(busy.demand.waiting.is_empty());
    let e = p
        .remove(&linux(), &runner_id)
        .await
        .expect_err("busy runner refused");
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());

    // The ephemeral runner finishes its one job and GitHub removes it; removing it again is Ok.
    let report = tokio::time::timeout(PATIENCE, agent)
        .await
        .expect("agent ends")
        .expect("agent task")
        .expect("agent ok");
    assert_eq!(report.jobs_completed, 1);
    p.remove(&linux(), &runner_id)
        .await
        .expect("a gone runner is removed");
    observe_until(&p, &linux(), "the runner to be gone", |v| {
        v.runners.is_empty()
    })
    .await;
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    stop.cancel();
    emu.shutdown().await;
}

#[tokio::test]
async fn persistent_runners_use_a_cached_registration_token() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = GithubProvider::new(config(&emu, &secrets, serde_json::json!({})), pools(false))
        .expect("provider");

    let a = p
        .register(&gpu(), "rs-gpu-aaaaaaaaaa")
        .await
        .expect("register");
    let b = p
        .register(&gpu(), "rs-gpu-bbbbbbbbbb")
        .await
        .expect("register");
    assert!(a.runner_id.is_none());
    let token = |r: &runscale_core::Registration| {
        r.credentials
            .secrets
            .get("GITHUB_RUNNER_TOKEN")
            .expect("token")
            .expose_secret()
            .to_owned()
    };
    assert_eq!(
        token(&a),
        token(&b),
        "the token is reused until near expiry"
    );
    assert_eq!(
        a.credentials.vars.get("RUNNER_LABELS").map(String::as_str),
        Some("linux,gpu")
    );

    let stop = CancellationToken::new();
    let agent = tokio::spawn(run_agent(
        RunnerSource::Register(AgentRegistration {
            url: a.credentials.vars["GITHUB_URL"].clone(),
            token: SecretString::from(token(&a)),
            name: a.runner_name.clone(),
            labels: a.credentials.vars["RUNNER_LABELS"]
                .split(',')
                .map(str::to_owned)
                .collect(),
            ephemeral: false,
            replace: false,
        }),
        stop.clone(),
    ));
    let v = observe_until(&p, &gpu(), "the persistent runner to be idle", |v| {
        v.runners.iter().any(|r| r.state == RunnerState::Idle)
    })
    .await;
    assert!(view(&p, &linux()).await.runners.is_empty());
    let id = v.runners[0].id.clone();
    p.remove(&gpu(), &id).await.expect("idle runner removed");
    let report = tokio::time::timeout(PATIENCE, agent)
        .await
        .expect("agent ends")
        .expect("agent task")
        .expect("agent ok");
    assert_eq!(
        report.exit,
        runscale_emulator::github::AgentExit::RunnerRemoved
    );
    stop.cancel();
    emu.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_transient() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    emu.set_faults(Faults {
        error_rate_5xx: 1.0,
        ..Faults::none()
    })
    .expect("faults");
    let seen = p.observe(&[linux(), gpu()]).await;
    for pool in [linux(), gpu()] {
        let e = seen[&pool].as_ref().expect_err("5xx");
        assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
        assert!(!e.to_string().contains(TOKEN));
    }
    let e = p
        .register(&linux(), "rs-linux-cccccccccc")
        .await
        .expect_err("5xx");
    assert_eq!(e.kind(), ErrorKind::Transient);
    let e = p.probe().await.expect_err("5xx");
    assert_eq!(e.kind(), ErrorKind::Transient);
    let e = p
        .job_history(&[linux()], chrono::Utc::now() - chrono::Duration::days(14))
        .await
        .expect_err("5xx");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("job_history"), "{e}");
    assert!(!e.to_string().contains(TOKEN));

    emu.set_faults(Faults::none()).expect("faults");
    assert!(!view(&p, &linux()).await.stale);
    emu.shutdown().await;
}

#[tokio::test]
async fn secondary_rate_limits_pause_the_account_and_observe_goes_stale() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    emu.enqueue_run(jobs("acme/app", &["linux"], 3))
        .expect("enqueue");

    // Without a good view yet, a throttled observation is an error.
    emu.set_faults(Faults {
        burst_429: Some((1, 2)),
        ..Faults::none()
    })
    .expect("faults");
    let seen = p.observe(&[linux(), gpu()]).await;
    match seen[&linux()].as_ref().map_err(|e| e.kind()) {
        Err(ErrorKind::RateLimited {
            retry_after: Some(d),
        }) => assert!(d <= Duration::from_secs(2), "{d:?}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // While paused, nothing is sent: registration is refused at once too.
    let e = p
        .register(&linux(), "rs-linux-dddddddddd")
        .await
        .expect_err("paused");
    assert!(matches!(e.kind(), ErrorKind::RateLimited { .. }));

    // After the pause a good view is taken; the next throttle serves it, marked stale.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let good = view(&p, &linux()).await;
    assert!(!good.stale);
    assert_eq!(good.demand.waiting.len(), 3);
    emu.set_faults(Faults {
        burst_429: Some((1, 30)),
        ..Faults::none()
    })
    .expect("faults");
    emu.enqueue(JobSpec::new(
        "acme/app",
        &["linux"],
        Duration::from_secs(60),
    ))
    .expect("enqueue");
    let stale = view(&p, &linux()).await;
    assert!(
        stale.stale,
        "a throttled observation returns the last good view"
    );
    assert_eq!(stale.demand, good.demand);
    assert_eq!(stale.runners, good.runners);
    let again = view(&p, &linux()).await;
    assert!(again.stale, "still paused (retry-after 30 s)");
    emu.shutdown().await;
}

#[tokio::test]
async fn an_exhausted_primary_budget_pauses_until_reset() {
    let emu = emulator(|c| {
        c.rate_limit = RateLimitConfig {
            limit: 100,
            start_remaining: Some(2),
            window: Duration::from_secs(3600),
        };
    })
    .await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    let seen = p.observe(&[linux()]).await;
    match seen[&linux()].as_ref().map_err(|e| e.kind()) {
        Err(ErrorKind::RateLimited {
            retry_after: Some(d),
        }) => assert!(
            d > Duration::from_secs(60) && d <= Duration::from_secs(3602),
            "paused until the window resets, got {d:?}"
        ),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(p.rate_limit_remaining(), Some(0));
    emu.shutdown().await;
}

#[tokio::test]
async fn repositories_named_by_webhooks_are_polled() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = GithubProvider::new(
        config(&emu, &secrets, serde_json::json!({"repositories": []})),
        pools(true),
    )
    .expect("provider");
    let refs = emu
        .enqueue_run(jobs("acme/web", &["linux"], 4))
        .expect("enqueue");
    assert!(view(&p, &linux()).await.demand.waiting.is_empty());

    let body = serde_json::to_vec(&serde_json::json!({
        "action": "queued",
        "workflow_job": {"id": refs[0].job_id, "run_id": refs[0].run_id, "run_attempt": 1,
            "status": "queued", "labels": ["linux"], "created_at": "2024-01-01T00:00:00Z"},
        "repository": {"full_name": "acme/web"}
    }))
    .expect("json");
    let sig = runscale_emulator::github::signature(HOOK_SECRET.as_bytes(), &body);
    let woken = p
        .webhook(&WebhookRequest {
            headers: vec![
                ("x-github-event".into(), "workflow_job".into()),
                ("x-github-delivery".into(), "d-1".into()),
                ("x-hub-signature-256".into(), sig),
            ],
            body,
        })
        .expect("verified");
    assert_eq!(woken, [linux(), gpu()], "both pools can run a linux job");
    assert_eq!(view(&p, &linux()).await.demand.waiting.len(), 4);
    emu.shutdown().await;
}

#[tokio::test]
async fn github_app_authentication_finds_the_installation() {
    let (private_pem, public_pem) = rsa_key_pair();
    let emu = emulator(|c| app_only(c, &public_pem)).await;
    let secrets = Secrets::new();
    std::fs::write(secrets.path("app.pem"), &private_pem).expect("write");
    for issuer in [
        serde_json::json!({"client_id": "Iv1.runscale"}),
        serde_json::json!({"app_id": 42}),
    ] {
        let mut app = issuer.clone();
        app["private_key"] = serde_json::json!({"file": secrets.path("app.pem")});
        let p = GithubProvider::new(
            config(&emu, &secrets, serde_json::json!({"auth": {"app": app}})),
            pools(true),
        )
        .expect("provider");
        let probe = p.probe().await.expect("probe with an installation token");
        assert!(probe.starts_with("github org acme: 0 runners"), "{probe}");
        let reg = p
            .register(&linux(), "rs-linux-eeeeeeeeee")
            .await
            .expect("JIT with an installation token");
        let id = reg.runner_id.expect("id");
        p.remove(&linux(), &id).await.expect("remove");
    }

    // A wrong key is refused (and reported as a configuration problem).
    let (other_private, _) = rsa_key_pair();
    std::fs::write(secrets.path("other.pem"), &other_private).expect("write");
    let p = GithubProvider::new(
        config(
            &emu,
            &secrets,
            serde_json::json!({"auth": {"app": {"app_id": 42, "installation_id": 7,
                "private_key": {"file": secrets.path("other.pem")}}}}),
        ),
        pools(true),
    )
    .expect("provider");
    let e = p.probe().await.expect_err("bad key");
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    emu.shutdown().await;
}

#[tokio::test]
async fn probe_reports_runners_and_budget() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    p.register(&linux(), "rs-linux-ffffffffff")
        .await
        .expect("register");
    let line = p.probe().await.expect("probe");
    assert!(
        line.starts_with("github org acme: 1 runners, rate limit remaining "),
        "{line}"
    );
    assert!(!line.contains(TOKEN));
    emu.shutdown().await;
}

#[tokio::test]
async fn the_provider_meets_the_core_contract() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    conformance::provider_contract(&p, &linux(), &gpu())
        .await
        .expect("provider contract");
    emu.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_are_a_configuration_error() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    std::fs::write(secrets.path("token"), "ghp_wrong").expect("write");
    let p = provider(&emu, &secrets);
    let seen: HashMap<_, _> = p.observe(&[linux()]).await;
    let e = seen[&linux()].as_ref().expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(!e.to_string().contains("ghp_wrong"));
    emu.shutdown().await;
}

/// Accepts the App 42 (client id `Iv1.runscale`, installation 7 on acme) and no token.
fn app_only(c: &mut EmulatorConfig, public_pem: &str) {
    c.tokens.clear();
    c.app = Some(AppConfig {
        app_id: 42,
        client_id: Some("Iv1.runscale".into()),
        slug: "runscale".into(),
        public_key_pem: public_pem.to_owned(),
        installations: vec![InstallationConfig {
            id: 7,
            owner: "acme".into(),
        }],
    });
}

/// An emulator serving `n` repositories `acme/r0000`... (plus the usual three).
async fn many_repos_emulator(n: usize, tweak: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    emulator(|c| {
        c.owners[0].repos.extend((0..n).map(|i| format!("r{i:04}")));
        tweak(c);
    })
    .await
}

fn repo_pool(name: &str, repo: &str) -> (PoolId, PoolSelector) {
    let mut sel = selector(&["linux"], true);
    sel.repository = Some(repo.to_owned());
    (PoolId::new(name), sel)
}

/// Delivers a signed `workflow_job` webhook for a queued job.
fn queued_webhook(p: &GithubProvider, delivery: &str, job: u64, run: u64, repo: &str) {
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "queued",
        "workflow_job": {"id": job, "run_id": run, "run_attempt": 1,
            "status": "queued", "labels": ["linux"], "created_at": "2024-01-01T00:00:00Z"},
        "repository": {"full_name": repo}
    }))
    .expect("json");
    let sig = runscale_emulator::github::signature(HOOK_SECRET.as_bytes(), &body);
    p.webhook(&WebhookRequest {
        headers: vec![
            ("x-github-event".into(), "workflow_job".into()),
            ("x-github-delivery".into(), delivery.into()),
            ("x-hub-signature-256".into(), sig),
        ],
        body,
    })
    .expect("verified");
}

/// 2,000 repositories with repository-level runners under one token, one pool per repository
/// (what `runscale import github-action-autoscaler` writes for 2,000 resources): every pass
/// stays within `max_repositories_per_pass` job polls and as many first runner listings, a
/// webhook gets its repository polled on the next pass, a quiet repository's jobs are found by
/// the round-robin within ceil(2000 / 50) = 40 passes, runners register at their pool's
/// repository, and a pool whose repository's runner listing fails is stale (removes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_repositories_share_one_budget_with_bounded_passes() {
    const REPOS: usize = 2_000;
    const CAP: usize = 50;
    // GitHub's primary limit is 5,000 requests an hour for a token (up to 12,500 for an App
    // installation): the first sweep of 2,000 repositories alone costs about 6,000 here, so
    // the emulator's bucket is raised and the use is measured instead.
    let emu = many_repos_emulator(REPOS, |c| c.rate_limit.limit = 50_000).await;
    let secrets = Secrets::new();
    let mut repositories: Vec<String> = (0..REPOS).map(|i| format!("acme/r{i:04}")).collect();
    repositories.push("acme/ghost".to_owned());
    let pools: Vec<(PoolId, PoolSelector)> = repositories
        .iter()
        .map(|r| repo_pool(&r.replace("acme/", "p-"), r))
        .collect();
    let ids: Vec<PoolId> = pools.iter().map(|(p, _)| p.clone()).collect();
    let pool = |r: &str| PoolId::new(format!("p-{r}"));
    let mut cfg = config(
        &emu,
        &secrets,
        serde_json::json!({"repositories": repositories, "max_repositories_per_pass": CAP}),
    );
    cfg.org = None;
    let p = GithubProvider::new(cfg, pools).expect("provider");

    emu.enqueue_run(jobs("acme/r0999", &["linux"], 2))
        .expect("enqueue");
    let hooked = emu
        .enqueue_run(jobs("acme/r1999", &["linux"], 3))
        .expect("enqueue");
    emu.enqueue_run(jobs("acme/web", &["linux"], 4))
        .expect("a repository no pool serves");
    queued_webhook(&p, "d-1", hooked[0].job_id, hooked[0].run_id, "acme/r1999");

    let mut per_pass: Vec<u64> = Vec::new();
    let mut budget: Vec<u64> = Vec::new();
    let mut found_quiet_at = None;
    let start = emu.rest_requests();
    for pass in 1..=45 {
        let before = emu.rest_requests();
        let remaining = p.rate_limit_remaining();
        let mut seen = p.observe(&ids).await;
        per_pass.push(emu.rest_requests() - before);
        if let (Some(a), Some(b)) = (remaining, p.rate_limit_remaining()) {
            budget.push(a - b);
        }
        let mut view = |r: &str| {
            seen.remove(&pool(r))
                .expect("answered")
                .unwrap_or_else(|e| panic!("pass {pass}: {r}: {e}"))
        };
        assert_eq!(
            view("r1999").demand.waiting.len(),
            3,
            "pass {pass}: the webhook's repository is polled at once"
        );
        assert!(
            view("ghost").stale,
            "a failed runner listing removes nothing"
        );
        if found_quiet_at.is_none() && view("r0999").demand.waiting.len() == 2 {
            found_quiet_at = Some(pass);
        }
        assert!(view("r0000").demand.waiting.is_empty());
    }
    let max_pass = per_pass.iter().copied().max().unwrap_or_default();
    eprintln!(
        "{REPOS} repositories, cap {CAP}: requests per pass {per_pass:?} (max {max_pass}, \
         total {}); budget used per pass {budget:?}; quiet repository's jobs found at pass \
         {found_quiet_at:?}",
        emu.rest_requests() - start
    );
    // Per pass: CAP repositories × 2 run listings, the jobs of their active runs (one run
    // each in two repositories), and at most CAP first runner listings (plus acme/ghost's).
    assert!(
        max_pass <= (3 * CAP + 4) as u64,
        "a pass made {max_pass} requests"
    );
    // Once every pool repository was listed, passes cost the polls only.
    assert!(per_pass[44] <= (2 * CAP + 4) as u64, "{per_pass:?}");
    let found = found_quiet_at.expect("the quiet repository's jobs are found");
    assert!(found <= REPOS.div_ceil(CAP) + 1, "found at pass {found}");

    // Runners register at their pool's repository and are listed and removed there.
    let reg = p
        .register(&pool("r0999"), "rs-p-r0999-aaaaaaaaaa")
        .await
        .expect("JIT at the repository");
    assert_eq!(
        reg.credentials.vars["GITHUB_URL"],
        format!("{}/acme/r0999", emu.base_url())
    );
    let id = reg.runner_id.expect("id");
    assert!(id.as_str().starts_with("acme/r0999:"), "{id:?}");
    let snap = emu.snapshot();
    let runner = snap
        .runners
        .iter()
        .find(|r| r.name == "rs-p-r0999-aaaaaaaaaa")
        .expect("registered");
    assert_eq!(runner.scope, "acme/r0999");
    let before = emu.rest_requests();
    let mut seen = p.observe(&ids).await;
    eprintln!(
        "a pass with one repository holding a runner: {} requests",
        emu.rest_requests() - before
    );
    let view = seen
        .remove(&pool("r0999"))
        .expect("answered")
        .expect("view");
    assert!(!view.stale);
    assert_eq!(view.runners.len(), 1);
    assert_eq!(view.runners[0].id, id);
    p.remove(&pool("r0999"), &id).await.expect("removed");
    assert!(
        !emu.snapshot()
            .runners
            .iter()
            .any(|r| r.name == "rs-p-r0999-aaaaaaaaaa")
    );
    emu.shutdown().await;
}

/// `repositories: installation`: the App installation's repositories (three pages of 100) are
/// polled in turn under the organisation's one budget.
#[tokio::test]
async fn the_installations_repositories_are_polled_in_turn() {
    let (private_pem, public_pem) = rsa_key_pair();
    let emu = many_repos_emulator(297, |c| app_only(c, &public_pem)).await;
    let secrets = Secrets::new();
    std::fs::write(secrets.path("app.pem"), &private_pem).expect("write");
    let p = GithubProvider::new(
        config(
            &emu,
            &secrets,
            serde_json::json!({
                "repositories": "installation",
                "max_repositories_per_pass": 100,
                "auth": {"app": {"app_id": 42, "private_key": {"file": secrets.path("app.pem")}}},
            }),
        ),
        pools(true),
    )
    .expect("provider");
    emu.enqueue_run(jobs("acme/r0296", &["linux"], 5))
        .expect("enqueue");
    let mut found = None;
    for pass in 1..=4 {
        if view(&p, &linux()).await.demand.waiting.len() == 5 {
            found = Some(pass);
            break;
        }
    }
    // 300 repositories at 100 per pass: the last is polled by the third pass.
    assert!(found.is_some_and(|p| p <= 3), "found at {found:?}");
    emu.shutdown().await;
}

/// A fresh 2048-bit RSA key pair: (private PKCS#8 PEM, public SPKI PEM).
fn rsa_key_pair() -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let pair =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).expect("ascii"));
            s.push('\n');
        }
        s.push_str(&format!("-----END {label}-----\n"));
        s
    };
    let private = pair.as_der().expect("pkcs8");
    let public = pair.public_key().as_der().expect("spki");
    (
        pem("PRIVATE KEY", private.as_ref()),
        pem("PUBLIC KEY", public.as_ref()),
    )
}

/// Records `n` finished one-job runs in `repo` with `labels`, one every `every` going back from
/// `newest`, each started 45 s after it was queued.
fn past_runs(
    emu: &EmulatorHandle,
    repo: &str,
    labels: &[&str],
    n: usize,
    newest: chrono::DateTime<chrono::Utc>,
    every: chrono::Duration,
) {
    for i in 0..n {
        let created = newest - every * i32::try_from(i).expect("small");
        let job = JobSpec::new(repo, labels, Duration::from_secs(60));
        emu.record_past_run(vec![job], created, Some(Duration::from_secs(45)))
            .expect("past run");
    }
}

#[tokio::test]
async fn job_history_reads_past_runs_across_pages_for_the_pools_their_labels_pick() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let since = now - chrono::Duration::days(14);
    let hour = chrono::Duration::hours(1);
    // 150 runs over six days (two pages), 20 GPU runs, 5 no pool takes, 3 before `since`.
    past_runs(&emu, "acme/app", &["linux"], 150, now - hour, hour);
    past_runs(&emu, "acme/lib", &["linux", "gpu"], 20, now - hour, hour);
    past_runs(&emu, "acme/lib", &["windows"], 5, now - hour, hour);
    past_runs(&emu, "acme/app", &["linux"], 3, since - hour, hour);
    // A job cancelled before any runner took it: an arrival without a start.
    let cancelled = JobSpec::new("acme/app", &["linux"], Duration::from_secs(60));
    emu.record_past_run(vec![cancelled], now - hour * 200, None)
        .expect("past run");
    let mut read = p
        .job_history(&[linux(), gpu()], since)
        .await
        .expect("history read")
        .expect("GitHub keeps a history");
    let linux_jobs = read.remove(&linux()).expect("linux answered");
    assert_eq!(linux_jobs.jobs.len(), 151, "150 runs + the cancelled one");
    assert_eq!(linux_jobs.complete_from, None, "nothing cut");
    let started: Vec<_> = linux_jobs
        .jobs
        .iter()
        .filter(|j| j.started_at.is_some())
        .collect();
    assert_eq!(started.len(), 150);
    for j in started {
        let waited = j.started_at.expect("started") - j.queued_at;
        assert_eq!(waited.num_seconds(), 45, "{j:?}");
    }
    assert!(linux_jobs.jobs.iter().all(|j| j.queued_at >= since));
    assert_eq!(read.remove(&gpu()).expect("gpu answered").jobs.len(), 20);
    emu.shutdown().await;
}

#[tokio::test]
async fn job_history_stops_at_its_request_bound_and_says_from_when_it_is_complete() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    let p = provider(&emu, &secrets);
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let minute = chrono::Duration::minutes(1);
    let newest = now - minute;
    past_runs(&emu, "acme/app", &["linux"], 450, newest, minute);
    let before = emu.rest_requests();
    let read = p
        .job_history(&[linux()], now - chrono::Duration::days(14))
        .await
        .expect("history read")
        .expect("GitHub keeps a history");
    let sent = emu.rest_requests() - before;
    // Two repositories share 400 requests: 200 for acme/app, 5 of them for the run pages.
    assert!(sent <= 400, "{sent} requests");
    let h = &read[&linux()];
    assert_eq!(h.jobs.len(), 195, "the newest 195 runs' jobs");
    let oldest_read = newest - minute * 194;
    assert_eq!(h.complete_from, Some(oldest_read));
    assert!(h.jobs.iter().all(|j| j.queued_at >= oldest_read));
    emu.shutdown().await;
}

/// Forecast launches of a first pass: a warm pool of this GitHub account (one repository,
/// acme/app), its history seeded first, launching into the in-memory backend.
async fn first_pass_forecast_launches(emu: &EmulatorHandle, secrets: &Secrets) -> u32 {
    use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
    let clock: std::sync::Arc<dyn runscale_core::Clock> =
        std::sync::Arc::new(runscale_core::SystemClock);
    let config = config(emu, secrets, serde_json::json!({"repositories": ["app"]}));
    let provider =
        GithubProvider::new(config, vec![(linux(), selector(&["linux"], true))]).expect("provider");
    let world = runscale_core::testing::World::new(clock.clone(), Default::default());
    let pool = runscale_core::PoolSpec::test("linux")
        .max(20)
        .warm(Some(runscale_core::Warm::AUTO));
    let binding = PoolBinding {
        spec: pool,
        provider_name: "github".into(),
        provider: std::sync::Arc::new(provider),
        backend_name: "memory".into(),
        backend: world.backend(),
    };
    let registry = &mut prometheus_client::registry::Registry::default();
    let metrics = std::sync::Arc::new(runscale_core::metrics::Metrics::register(registry));
    let r = Reconciler::new(vec![binding], clock, metrics, Options::default());
    r.seed_history().await;
    runscale_core::testing::forecast_launches(&r.once().await)
}

#[tokio::test]
async fn a_restarted_reconciler_keeps_spares_for_the_quarter_hour_its_github_history_shows() {
    let emu = emulator(|_| {}).await;
    let secrets = Secrets::new();
    assert_eq!(
        first_pass_forecast_launches(&emu, &secrets).await,
        0,
        "no history: no forecast on the first pass"
    );
    // Each of the last 10 days (300 runs: within the read's 400 requests), from 15 minutes
    // before this time of day to 15 minutes after it: a run of three jobs every minute, each
    // job started 45 s after it was queued.
    let now = chrono::Utc::now();
    for day in 1..=10 {
        for minute in -15..15 {
            let created = now - chrono::Duration::days(day) + chrono::Duration::minutes(minute);
            let run = jobs("acme/app", &["linux"], 3);
            emu.record_past_run(run, created, Some(Duration::from_secs(45)))
                .expect("past run");
        }
    }
    let spares = first_pass_forecast_launches(&emu, &secrets).await;
    // 0.05 jobs/s in runs of three over the 35 s a job cannot wait (warm: auto).
    assert!(spares >= 2, "{spares} spares launched for the forecast");
    emu.shutdown().await;
}
