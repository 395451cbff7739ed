//! The GitLab provider against the GitLab emulator over loopback HTTP: demand by tags
//! (untagged included) across projects and paginated group listings, runner slots from
//! managers with valid system ids that map back to their names (after a restart too), exited
//! slots gone after `contact_timeout` though GitLab still says online, removal only when idle,
//! per-instance runners that are paused and deleted, clean-up of runners nobody uses (a
//! missing `created_at` never reads as old), failures that never look like an empty fleet,
//! and webhooks.

use std::collections::HashMap;
use std::time::Duration;

use runscale_core::secret::SecretRef;
use runscale_core::{ErrorKind, PoolId, Provider, Registration, RunnerState, WebhookRequest};
use runscale_emulator::gitlab::{
    self as emu, Emulator, EmulatorConfig, EmulatorHandle, Faults, JobSpec,
};
use runscale_providers::gitlab::{
    AuthHeader, Config, GitlabProvider, PoolSelector, RunnerPer, RunnerType,
};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "glpat-admin";
const HOOK: &str = "hook-secret";

struct Setup {
    emu: EmulatorHandle,
    dir: tempfile::TempDir,
    provider: GitlabProvider,
    config: Config,
    pools: Vec<(PoolId, PoolSelector)>,
}

impl Setup {
    /// Another provider on the same GitLab and configuration: runscale after a restart.
    fn restarted(&self) -> GitlabProvider {
        GitlabProvider::new(self.config.clone(), self.pools.clone()).expect("provider")
    }
}

fn selector(tags: &[&str], run_untagged: bool, per: RunnerPer) -> PoolSelector {
    PoolSelector {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        run_untagged,
        runner_type: RunnerType::InstanceType,
        group_id: None,
        project_id: None,
        runner_per: per,
        max_use_count: None,
    }
}

async fn setup(pools: Vec<(&str, PoolSelector)>, tweak: impl FnOnce(&mut Config)) -> Setup {
    setup_with(Vec::new(), pools, tweak).await
}

/// [`setup`] with the emulator delivering Job Hooks to `hooks`.
async fn setup_with(
    hooks: Vec<emu::WebhookConfig>,
    pools: Vec<(&str, PoolSelector)>,
    tweak: impl FnOnce(&mut Config),
) -> Setup {
    let mut c = EmulatorConfig::new(ADMIN, &["app", "lib"]);
    // Every delivery is retried once (same Idempotency-Key).
    c.faults.duplicate_webhooks = !hooks.is_empty();
    c.webhooks = hooks;
    let emu = Emulator::start(c).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), ADMIN).expect("token");
    std::fs::write(dir.path().join("hook"), HOOK).expect("hook");
    let mut config = Config {
        url: emu.url(),
        token: SecretRef::File(dir.path().join("token")),
        auth: AuthHeader::PrivateToken,
        projects: vec!["acme/app".into()],
        groups: vec!["acme".into()],
        group_refresh: Duration::from_secs(60),
        membership: false,
        membership_refresh: Duration::from_secs(60),
        min_access_level: 40,
        max_projects: 100,
        webhook_token: Some(SecretRef::File(dir.path().join("hook"))),
        contact_timeout: Duration::from_secs(20),
        stale_runner_timeout: Duration::from_secs(600),
        max_pages: 50,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    };
    tweak(&mut config);
    let pools: Vec<(PoolId, PoolSelector)> = pools
        .into_iter()
        .map(|(p, s)| (PoolId::new(p), s))
        .collect();
    let provider = GitlabProvider::new(config.clone(), pools.clone()).expect("provider");
    Setup {
        emu,
        dir,
        provider,
        config,
        pools,
    }
}

/// One pool `linux` (tag `linux`) with `per`.
async fn linux(per: RunnerPer, tweak: impl FnOnce(&mut Config)) -> Setup {
    setup(vec![("linux", selector(&["linux"], false, per))], tweak).await
}

/// A fake runner worker (one slot) with a registration's credentials, as the instance gets them
/// (its slot directory under `slots`); it asks for a job every 100 ms.
fn start_worker(
    reg: &Registration,
    slots: &std::path::Path,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<emu::AgentReport, emu::AgentError>> {
    start_worker_with(reg, slots, stop, |_| {})
}

fn start_worker_with(
    reg: &Registration,
    slots: &std::path::Path,
    stop: &CancellationToken,
    tweak: impl FnOnce(&mut emu::AgentConfig),
) -> tokio::task::JoinHandle<Result<emu::AgentReport, emu::AgentError>> {
    let mut vars: HashMap<String, String> = reg.credentials.expose_all().into_iter().collect();
    vars.insert(
        emu::SLOTS_DIR_VAR.to_owned(),
        slots.to_string_lossy().into_owned(),
    );
    let mut config = emu::AgentConfig::from_vars(&|n| vars.get(n).cloned())
        .expect("vars")
        .expect("gitlab");
    config.check_interval = Duration::from_millis(100);
    config.unhealthy_interval = Duration::from_millis(500);
    tweak(&mut config);
    tokio::spawn(emu::run_agent(config, stop.clone()))
}

fn ids(names: &[&str]) -> Vec<PoolId> {
    names.iter().map(|n| PoolId::new(*n)).collect()
}

async fn views(p: &GitlabProvider, names: &[&str]) -> HashMap<PoolId, runscale_core::ProviderView> {
    p.observe(&ids(names))
        .await
        .into_iter()
        .map(|(k, v)| (k, v.expect("view")))
        .collect()
}

#[tokio::test]
async fn pending_jobs_go_to_the_first_pool_whose_tags_match_across_paginated_listings() {
    let s = setup(
        vec![
            (
                "linux",
                selector(&["linux", "docker"], false, RunnerPer::Pool),
            ),
            ("any", selector(&[], true, RunnerPer::Pool)),
            (
                "wide",
                selector(&["linux", "docker", "gpu"], false, RunnerPer::Pool),
            ),
        ],
        |_| {},
    )
    .await;
    // 130 linux jobs in acme/lib (only reachable through the group: two pages of 100).
    s.emu
        .submit(vec![JobSpec::new(101, &["linux"], Duration::ZERO); 130]);
    s.emu.submit(vec![
        JobSpec::new(100, &["linux", "docker"], Duration::ZERO),
        JobSpec::new(100, &[], Duration::ZERO),
        JobSpec::new(100, &[], Duration::ZERO),
        JobSpec::new(100, &["gpu"], Duration::ZERO),
        JobSpec::new(100, &["arm"], Duration::ZERO),
    ]);
    let v = views(&s.provider, &["linux", "any", "wide"]).await;
    let n = |p: &str| v[&PoolId::new(p)].demand.waiting.len();
    assert_eq!(
        n("linux"),
        131,
        "tags subset, counted once though acme/app is listed twice"
    );
    assert_eq!(
        n("any"),
        2,
        "untagged jobs go to the run_untagged pool only"
    );
    assert_eq!(
        n("wide"),
        1,
        "gpu: only the pool with that tag; linux jobs went to the first match"
    );
    let snap = s.emu.snapshot();
    let pages = snap
        .requests
        .get("GET /api/v4/projects/{id}/jobs")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        pages, 4,
        "acme/app by path and by id (from the group), acme/lib in 2 pages"
    );
}

#[tokio::test]
async fn slots_are_managers_busy_ones_are_never_removed() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let pool = PoolId::new("linux");
    let a = s
        .provider
        .register(&pool, "rs-linux-aaaaaaaaaa-1")
        .await
        .expect("register");
    let b = s
        .provider
        .register(&pool, "rs-linux-aaaaaaaaaa-2")
        .await
        .expect("register");
    assert_eq!(
        s.emu.snapshot().runners_created,
        1,
        "one runner shared by the pool"
    );
    assert_eq!(
        a.credentials.secrets.keys().collect::<Vec<_>>(),
        vec!["CI_SERVER_TOKEN"]
    );
    assert!(
        !format!("{a:?}").contains("glrt-"),
        "the token is not in Debug output"
    );
    // A system id gitlab-runner accepts in `.runner_system_id`, and the slot's name.
    assert_eq!(
        a.credentials.vars["RUNSCALE_GITLAB_SYSTEM_ID"],
        "s_aaaaaaaaaa01"
    );
    assert_eq!(a.credentials.vars["RUNNER_NAME"], "rs-linux-aaaaaaaaaa-1");
    assert!(emu::valid_system_id(
        &b.credentials.vars["RUNSCALE_GITLAB_SYSTEM_ID"]
    ));
    assert!(
        !a.credentials
            .vars
            .contains_key("RUNSCALE_GITLAB_MAX_BUILDS")
    );

    // Two workers (slots) of one instance; a 1.5 s job arrives.
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for reg in [&a, &b] {
        workers.push(start_worker(reg, s.dir.path(), &stop));
    }
    s.emu.submit(vec![JobSpec::new(
        100,
        &["linux"],
        Duration::from_millis(1500),
    )]);
    let mut busy = None;
    for _ in 0..50 {
        let v = views(&s.provider, &["linux"]).await;
        let runners = &v[&pool].runners;
        if runners.len() == 2 && runners.iter().any(|r| r.state == RunnerState::Busy) {
            busy = Some(runners.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runners = busy.expect("one slot busy");
    let mut names: Vec<&str> = runners.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["rs-linux-aaaaaaaaaa-1", "rs-linux-aaaaaaaaaa-2"],
        "managers map back to the slots' names"
    );
    let busy_one = runners
        .iter()
        .find(|r| r.state == RunnerState::Busy)
        .expect("busy");
    let idle_one = runners
        .iter()
        .find(|r| r.state == RunnerState::Idle)
        .expect("idle");
    let err = s
        .provider
        .remove(&pool, &busy_one.id)
        .await
        .expect_err("busy");
    assert_eq!(err.kind(), ErrorKind::Busy);
    s.provider
        .remove(&pool, &idle_one.id)
        .await
        .expect("idle slot removed");
    stop.cancel();
    for w in workers {
        w.await.expect("join").expect("worker");
    }
    let snap = s.emu.snapshot();
    assert_eq!(
        snap.count(emu::JobStatus::Success),
        1,
        "the busy slot finished its job on shutdown"
    );
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    // A manager unregistered while its process still polls comes back (as in GitLab): only
    // the instance's stop ends it. Once both processes are gone, both slots are removed.
    for slot in [busy_one, idle_one] {
        s.provider.remove(&pool, &slot.id).await.expect("idle now");
    }
    assert_eq!(s.emu.snapshot().managers(), 0);
}

#[tokio::test]
async fn per_instance_runners_are_paused_by_drain_and_deleted_by_remove() {
    let s = linux(RunnerPer::Instance, |_| {}).await;
    let pool = PoolId::new("linux");
    let a = s
        .provider
        .register(&pool, "rs-linux-aaaaaaaaaa")
        .await
        .expect("register");
    s.provider
        .register(&pool, "rs-linux-bbbbbbbbbb")
        .await
        .expect("register");
    assert_eq!(
        s.emu.snapshot().runners_created,
        2,
        "one runner per instance"
    );
    let stop = CancellationToken::new();
    let worker = start_worker(&a, s.dir.path(), &stop);
    let mut slot = None;
    for _ in 0..50 {
        let v = views(&s.provider, &["linux"]).await;
        if let Some(r) = v[&pool].runners.first() {
            slot = Some(r.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slot = slot.expect("the worker shows up as a slot");
    s.provider.drain(&pool, &slot.id).await.expect("drain");
    let v = views(&s.provider, &["linux"]).await;
    assert!(
        v[&pool].runners[0].draining,
        "paused runner → draining slot"
    );
    s.emu
        .submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.emu.snapshot().count(emu::JobStatus::Pending),
        1,
        "a paused runner takes nothing"
    );
    s.provider.remove(&pool, &slot.id).await.expect("remove");
    assert_eq!(
        s.emu.snapshot().runners.len(),
        1,
        "only the other instance's runner is left"
    );
    // Like gitlab-runner, the process keeps running (its requests are refused) until its
    // instance is stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!worker.is_finished());
    stop.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.exit, emu::AgentExit::Shutdown);
}

#[tokio::test]
async fn runners_that_never_came_up_are_reported_offline_and_removed_after_the_timeout() {
    let s = linux(RunnerPer::Pool, |c| {
        c.stale_runner_timeout = Duration::from_secs(1);
    })
    .await;
    let pool = PoolId::new("linux");
    s.provider
        .register(&pool, "rs-linux-aaaaaaaaaa")
        .await
        .expect("register");
    let v = views(&s.provider, &["linux"]).await;
    assert!(v[&pool].runners.is_empty(), "not reported while young");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = views(&s.provider, &["linux"]).await;
    assert_eq!(
        s.emu.snapshot().runners.len(),
        1,
        "observing deletes nothing"
    );
    let [stale] = v[&pool].runners.as_slice() else {
        panic!("one stale runner: {:?}", v[&pool].runners);
    };
    assert_eq!(stale.state, RunnerState::Offline);
    assert_eq!(
        stale.name, "runscale pool linux",
        "hosted by no instance: deregistered"
    );
    s.provider.remove(&pool, &stale.id).await.expect("remove");
    assert_eq!(s.emu.snapshot().runners.len(), 0, "deleted by remove");
    // The token went with it: the next registration creates a new runner.
    s.provider
        .register(&pool, "rs-linux-bbbbbbbbbb")
        .await
        .expect("register");
    assert_eq!(s.emu.snapshot().runners_created, 2);
}

#[tokio::test]
async fn a_failed_call_is_an_error_never_an_empty_fleet_and_429_is_stale() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let pool = PoolId::new("linux");
    let reg = s
        .provider
        .register(&pool, "rs-linux-aaaaaaaaaa")
        .await
        .expect("register");
    let stop = CancellationToken::new();
    let worker = start_worker(&reg, s.dir.path(), &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(views(&s.provider, &["linux"]).await[&pool].runners.len(), 1);

    // Longer than a read's retries (at most 3 s): the read fails.
    s.emu.outage(Duration::from_secs(4));
    let r = s
        .provider
        .observe(std::slice::from_ref(&pool))
        .await
        .remove(&pool)
        .expect("entry");
    assert_eq!(r.expect_err("outage").kind(), ErrorKind::Transient);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Throttled (429) instead: the last good view, marked stale, so launches go on.
    s.emu.set_faults(Faults {
        throttle_next: 5,
        ..Faults::default()
    });
    let v = s
        .provider
        .observe(std::slice::from_ref(&pool))
        .await
        .remove(&pool)
        .expect("entry")
        .expect("stale view");
    assert!(v.stale, "throttled: the last good view, marked stale");
    assert_eq!(v.runners.len(), 1);
    stop.cancel();
    worker.await.expect("join").expect("worker");
}

/// The seed (gitlab-runners-fleet) took a host whose metrics call failed for an errored one
/// and destroyed it, busy or not. Here one failing managers call among successful ones fails
/// the pool's observation: no view without that runner's slots.
#[tokio::test]
async fn regression_one_failed_managers_call_is_not_a_fleet_without_runners() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let pool = PoolId::new("linux");
    let reg = s
        .provider
        .register(&pool, "rs-linux-aaaaaaaaaa")
        .await
        .expect("register");
    let stop = CancellationToken::new();
    let worker = start_worker(&reg, s.dir.path(), &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(views(&s.provider, &["linux"]).await[&pool].runners.len(), 1);
    s.emu.set_faults(Faults {
        failing_routes: vec!["/api/v4/runners/{id}/managers".into()],
        ..Faults::default()
    });
    let r = s
        .provider
        .observe(std::slice::from_ref(&pool))
        .await
        .remove(&pool)
        .expect("entry");
    assert_eq!(r.expect_err("managers failed").kind(), ErrorKind::Transient);
    let snap = s.emu.snapshot();
    assert!(
        snap.requests
            .get("GET /api/v4/projects/{id}/jobs")
            .copied()
            .unwrap_or(0)
            > 0,
        "the other calls succeeded"
    );
    s.emu.set_faults(Faults::default());
    assert_eq!(views(&s.provider, &["linux"]).await[&pool].runners.len(), 1);
    stop.cancel();
    worker.await.expect("join").expect("worker");
}

#[tokio::test]
async fn the_rate_budget_is_reported_and_running_out_of_it_is_a_stale_view() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let pool = PoolId::new("linux");
    assert_eq!(
        s.provider.rate_limit_remaining(),
        None,
        "unknown before any call"
    );
    s.emu.set_rate_limit(Some(100));
    views(&s.provider, &["linux"]).await;
    let left = s.provider.rate_limit_remaining().expect("reported");
    assert!((90..100).contains(&left), "a few calls spent: {left} left");
    s.emu.set_rate_limit(Some(0));
    let r = s
        .provider
        .observe(std::slice::from_ref(&pool))
        .await
        .remove(&pool)
        .expect("entry");
    assert!(
        r.expect("stale view").stale,
        "429: the last good view, marked stale"
    );
    assert_eq!(s.provider.rate_limit_remaining(), Some(0));
}

/// Job Hooks as the emulator delivers them (headers and body), fed to the provider.
#[tokio::test]
async fn delivered_job_hooks_wake_the_pool_once_per_event() {
    type Got = std::sync::Arc<std::sync::Mutex<Vec<WebhookRequest>>>;
    let got: Got = Default::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: axum::http::HeaderMap, b: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let headers = h
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                store.lock().expect("lock").push(WebhookRequest {
                    headers,
                    body: b.to_vec(),
                });
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
    let hook = |token: &str| emu::WebhookConfig {
        url: url.clone(),
        token: Some(token.to_owned().into()),
    };
    let s = setup_with(
        vec![hook(HOOK), hook("not-the-secret")],
        vec![("linux", selector(&["linux"], false, RunnerPer::Pool))],
        |_| {},
    )
    .await;
    s.emu
        .submit(vec![JobSpec::new(100, &["linux"], Duration::ZERO)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().expect("lock").len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = got.lock().expect("lock").clone();
    assert_eq!(
        deliveries.len(),
        4,
        "one event, two hooks, each delivered twice"
    );
    let (mut woken, mut duplicates, mut refused) = (0, 0, 0);
    for d in &deliveries {
        match s.provider.webhook(d) {
            Ok(pools) if pools == ids(&["linux"]) => woken += 1,
            Ok(pools) if pools.is_empty() => duplicates += 1,
            Ok(pools) => panic!("unexpected pools {pools:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Misconfigured);
                refused += 1;
            }
        }
    }
    assert_eq!((woken, duplicates, refused), (1, 1, 2));
    server.abort();
}

#[tokio::test]
async fn webhooks_need_the_token_are_deduplicated_and_wake_the_right_pools() {
    let mut pt = selector(&["linux"], false, RunnerPer::Pool);
    pt.runner_type = RunnerType::ProjectType;
    pt.project_id = Some(101);
    let s = setup(
        vec![
            ("linux", selector(&["linux"], false, RunnerPer::Pool)),
            ("lib", pt),
        ],
        |_| {},
    )
    .await;
    let req = |token: Option<&str>, key: &str, body: String| WebhookRequest {
        headers: [
            Some(("x-gitlab-event".to_owned(), "Job Hook".to_owned())),
            token.map(|t| ("x-gitlab-token".to_owned(), t.to_owned())),
            Some(("idempotency-key".to_owned(), key.to_owned())),
        ]
        .into_iter()
        .flatten()
        .collect(),
        body: body.into_bytes(),
    };
    let event = |job: u64, project: u64| {
        format!(
            r#"{{"object_kind":"build","build_id":{job},"build_status":"pending","project_id":{project},"runner":null}}"#
        )
    };
    let err = s
        .provider
        .webhook(&req(Some("wrong"), "k0", event(1, 100)))
        .expect_err("bad token");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(
        s.provider.webhook(&req(None, "k0", event(1, 100))).is_err(),
        "no token"
    );
    assert!(
        s.provider
            .webhook(&req(Some(HOOK), "k1", "x".repeat(2 << 20)))
            .is_err(),
        "over 1 MiB"
    );
    assert!(
        s.provider
            .webhook(&req(Some(HOOK), "k1", "{not json".into()))
            .is_err()
    );

    // Unknown job of project 100: only pools that may run jobs of project 100.
    let woke = s
        .provider
        .webhook(&req(Some(HOOK), "k2", event(1, 100)))
        .expect("ok");
    assert_eq!(woke, ids(&["linux"]));
    assert_eq!(
        s.provider
            .webhook(&req(Some(HOOK), "k2", event(1, 100)))
            .expect("ok"),
        Vec::<PoolId>::new(),
        "duplicate"
    );
    let mut woke = s
        .provider
        .webhook(&req(Some(HOOK), "k3", event(2, 101)))
        .expect("ok");
    woke.sort();
    assert_eq!(woke, ids(&["lib", "linux"]));

    // Once observed, a job wakes exactly its pool.
    let job = s
        .emu
        .submit(vec![JobSpec::new(101, &["linux"], Duration::ZERO)])[0];
    views(&s.provider, &["linux", "lib"]).await;
    let woke = s
        .provider
        .webhook(&req(Some(HOOK), "k4", event(job, 101)))
        .expect("ok");
    assert_eq!(
        woke,
        ids(&["linux"]),
        "the first matching pool in configuration order"
    );
}

/// Issue 14: gitlab-runner exits after `--max-builds` jobs without unregistering, and GitLab
/// keeps calling its manager `online` for 2 hours. The provider stops listing it once its
/// contact is older than `contact_timeout`, so the reconciler counts it departed; much later it
/// is listed offline, so it is unregistered.
#[tokio::test]
async fn an_exited_slot_is_gone_after_contact_timeout_though_gitlab_says_online() {
    let s = linux(RunnerPer::Pool, |c| {
        c.contact_timeout = Duration::from_secs(5);
        c.stale_runner_timeout = Duration::from_secs(2);
    })
    .await;
    let pool = PoolId::new("linux");
    let stop = CancellationToken::new();
    let mut regs = Vec::new();
    for name in ["rs-linux-bbbbbbbbbb-1", "rs-linux-bbbbbbbbbb-2"] {
        regs.push(s.provider.register(&pool, name).await.expect("register"));
    }
    let one_job = start_worker_with(&regs[0], s.dir.path(), &stop, |c| c.max_builds = 1);
    let stays = start_worker(&regs[1], s.dir.path(), &stop);
    s.emu.submit(vec![JobSpec::new(
        100,
        &["linux"],
        Duration::from_millis(200),
    )]);
    let report = tokio::time::timeout(Duration::from_secs(10), one_job)
        .await
        .expect("the slot exits after its job")
        .expect("join")
        .expect("worker");
    let exited = std::time::Instant::now();
    assert_eq!(report.exit, emu::AgentExit::MaxBuilds);
    assert_eq!(report.system_id, "s_bbbbbbbbbb01");
    let listed = |v: &HashMap<PoolId, runscale_core::ProviderView>, name: &str| {
        v[&pool]
            .runners
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.state)
    };
    // Listed idle at first, then gone: departed.
    let mut gone_after = None;
    while exited.elapsed() < Duration::from_secs(15) {
        let v = views(&s.provider, &["linux"]).await;
        assert_eq!(
            listed(&v, "rs-linux-bbbbbbbbbb-2"),
            Some(RunnerState::Idle),
            "the slot that polls stays idle"
        );
        match listed(&v, "rs-linux-bbbbbbbbbb-1") {
            Some(RunnerState::Idle) => {}
            None => {
                gone_after = Some(exited.elapsed());
                break;
            }
            other => panic!("exited slot listed as {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = gone_after.expect("the exited slot is no longer listed");
    assert!(
        gone_after >= Duration::from_secs(4) && gone_after < Duration::from_secs(7),
        "gone about contact_timeout (5 s) after its last contact: {gone_after:?}"
    );
    let managers = s.emu.snapshot();
    assert_eq!(managers.managers(), 2, "GitLab still has both managers");
    // GitLab's own view: still online (2 h window).
    let runner_id = managers.runners[0].id;
    let http = reqwest::Client::new();
    let listed_by_gitlab: serde_json::Value = http
        .get(format!(
            "{}/api/v4/runners/{runner_id}/managers",
            s.emu.url()
        ))
        .header("PRIVATE-TOKEN", ADMIN)
        .send()
        .await
        .expect("managers")
        .json()
        .await
        .expect("json");
    assert!(
        listed_by_gitlab
            .as_array()
            .expect("array")
            .iter()
            .all(|m| m["status"] == "online"),
        "{listed_by_gitlab}"
    );
    // contact_timeout + stale_runner_timeout later: offline, and removing it unregisters it.
    let mut offline = None;
    while exited.elapsed() < Duration::from_secs(20) {
        let v = views(&s.provider, &["linux"]).await;
        if let Some(r) = v[&pool]
            .runners
            .iter()
            .find(|r| r.name == "rs-linux-bbbbbbbbbb-1")
        {
            assert_eq!(r.state, RunnerState::Offline);
            offline = Some(r.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offline = offline.expect("listed offline for deregistration");
    assert!(exited.elapsed() >= Duration::from_secs(6));
    s.provider
        .remove(&pool, &offline.id)
        .await
        .expect("unregistered");
    assert_eq!(s.emu.snapshot().managers(), 1);
    stop.cancel();
    stays.await.expect("join").expect("worker");
    println!(
        "gitlab exited slot: not listed {:.1}s after it exited (contact_timeout 5s), \
         unregistered after {:.1}s",
        gone_after.as_secs_f64(),
        exited.elapsed().as_secs_f64()
    );
}

/// A manager whose system_id is not one of ours (a runner that made up its own id) is no slot:
/// never listed, so never a reason to act on anything; a restarted provider maps our managers
/// back to their slot names with no memory.
#[tokio::test]
async fn foreign_system_ids_are_ignored_and_slots_are_found_again_after_a_restart() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let pool = PoolId::new("linux");
    let ours = s
        .provider
        .register(&pool, "rs-linux-cccccccccc")
        .await
        .expect("register");
    assert_eq!(
        ours.credentials.vars["RUNSCALE_GITLAB_SYSTEM_ID"],
        "s_cccccccccc00"
    );
    let mut theirs = s
        .provider
        .register(&pool, "rs-linux-dddddddddd")
        .await
        .expect("register");
    // The old scheme: the runner name as system id, which gitlab-runner rejects.
    theirs.credentials.vars.insert(
        "RUNSCALE_GITLAB_SYSTEM_ID".to_owned(),
        "rs-linux-dddddddddd".to_owned(),
    );
    let stop = CancellationToken::new();
    let a = start_worker(&ours, s.dir.path(), &stop);
    let b = start_worker(&theirs, s.dir.path(), &stop);
    let mut managers = 0;
    for _ in 0..50 {
        managers = s.emu.snapshot().managers();
        if managers == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(managers, 2);
    let restarted = s.restarted();
    stop.cancel();
    a.await.expect("join").expect("worker");
    let made_up = b.await.expect("join").expect("worker").system_id;
    assert_ne!(made_up, "rs-linux-dddddddddd");
    assert!(emu::valid_system_id(&made_up));
    for p in [&s.provider, &restarted] {
        let v = views(p, &["linux"]).await;
        let names: Vec<&str> = v[&pool].runners.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"rs-linux-cccccccccc"), "{names:?}");
        assert!(
            !names.contains(&"rs-linux-dddddddddd"),
            "the runner that made up its id is not the slot it was meant to be: {names:?}"
        );
        // gitlab-runner's machine-derived id (`s_` + 12 hex) may decode to a name; no instance
        // hosts it, so at most its idle manager is unregistered. Anything else is no slot.
        let foreign: Vec<&&str> = names
            .iter()
            .filter(|n| **n != "rs-linux-cccccccccc")
            .collect();
        assert!(
            foreign.is_empty() || (made_up.starts_with("s_") && foreign.len() == 1),
            "{names:?} ({made_up})"
        );
    }
}

#[tokio::test]
async fn a_slot_number_above_99_is_refused() {
    let s = linux(RunnerPer::Pool, |_| {}).await;
    let err = s
        .provider
        .register(&PoolId::new("linux"), "rs-linux-aaaaaaaaaa-100")
        .await
        .expect_err("slot 100");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.to_string().contains("99"), "{err}");
    let sel = &s.pools[0].1;
    assert!(runscale_providers::gitlab::validate_pool(&s.config, sel, 99).is_ok());
    assert!(runscale_providers::gitlab::validate_pool(&s.config, sel, 100).is_err());
}

/// GitLab's runner list entity has no `created_at` (older versions): a runner a previous
/// runscale created is kept until this process has known it for `stale_runner_timeout`; a
/// paused runner nobody uses is cleaned up like an offline one.
#[tokio::test]
async fn a_missing_created_at_is_not_old_and_unused_paused_runners_are_cleaned_up() {
    let s = linux(RunnerPer::Instance, |c| {
        c.contact_timeout = Duration::from_secs(5);
        c.stale_runner_timeout = Duration::from_secs(1);
    })
    .await;
    let pool = PoolId::new("linux");
    let reg = s
        .provider
        .register(&pool, "rs-linux-eeeeeeeeee")
        .await
        .expect("register");
    // The instance's slot comes up once, then its process goes; the runner gets paused.
    let stop = CancellationToken::new();
    let w = start_worker(&reg, s.dir.path(), &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    w.await.expect("join").expect("worker");
    let left = std::time::Instant::now();
    let slot = views(&s.provider, &["linux"]).await[&pool].runners[0].clone();
    s.provider.drain(&pool, &slot.id).await.expect("pause");
    // The runner itself, reported for deregistration (its id names no manager).
    let unused = |v: &HashMap<PoolId, runscale_core::ProviderView>| {
        v[&pool]
            .runners
            .iter()
            .filter(|r| r.id.as_str().ends_with('/'))
            .cloned()
            .collect::<Vec<_>>()
    };
    // Its manager is quiet once out of contact for contact_timeout + stale_runner_timeout
    // (6 s; GitLab's clock has whole seconds).
    tokio::time::sleep(Duration::from_millis(7500).saturating_sub(left.elapsed())).await;
    assert_eq!(
        unused(&views(&s.provider, &["linux"]).await).len(),
        1,
        "the process that made it reports it"
    );
    // A new process (restart) has never seen this runner: its age is unknown, so it is kept.
    let restarted = s.restarted();
    let v = views(&restarted, &["linux"]).await;
    assert!(
        unused(&v).is_empty(),
        "not reported while its age is unknown: {:?}",
        v[&pool].runners
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = views(&restarted, &["linux"]).await;
    let [unused] = unused(&v).try_into().unwrap_or_else(|_| {
        panic!(
            "the paused, unused runner is reported: {:?}",
            v[&pool].runners
        )
    });
    assert_eq!(unused.state, RunnerState::Offline);
    assert_eq!(unused.name, "rs-linux-eeeeeeeeee");
    assert!(unused.draining, "paused");
    restarted.remove(&pool, &unused.id).await.expect("deleted");
    assert!(s.emu.snapshot().runners.is_empty());
}

#[tokio::test]
async fn conforms_to_the_provider_contract() {
    let s = setup(
        vec![
            ("linux", selector(&["linux"], false, RunnerPer::Pool)),
            ("any", selector(&[], true, RunnerPer::Instance)),
        ],
        |_| {},
    )
    .await;
    runscale_core::testing::conformance::provider_contract(
        &s.provider,
        &PoolId::new("linux"),
        &PoolId::new("any"),
    )
    .await
    .expect("contract");
}

const DEV: &str = "glpat-dev";

/// GitLab with projects 100 (acme/app), 101 (acme/lib), 102 (acme/web) and 105 more (200…),
/// and the user `dev`, Maintainer of 100, 102 and the 105, Developer of 101; a provider with
/// `dev`'s token reading its member projects (listed again every 5 s), one pool whose project
/// runner (no `project_id`) is enabled in each.
async fn members() -> (EmulatorHandle, tempfile::TempDir, Config, GitlabProvider) {
    let mut c = EmulatorConfig::new(ADMIN, &["app", "lib", "web"]);
    c.projects.extend((200..305).map(|id| emu::ProjectConfig {
        id,
        path: format!("acme/p{id}"),
        group: Some(10),
    }));
    let mut memberships: Vec<emu::MembershipConfig> = [100, 102]
        .into_iter()
        .chain(200..305)
        .map(|project| emu::MembershipConfig {
            project,
            access_level: 40,
        })
        .collect();
    memberships.push(emu::MembershipConfig {
        project: 101,
        access_level: 30,
    });
    c.users.push(emu::UserConfig {
        username: "dev".into(),
        token: DEV.to_owned().into(),
        memberships,
    });
    let emu = Emulator::start(c).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), DEV).expect("token");
    let config = Config {
        url: emu.url(),
        token: SecretRef::File(dir.path().join("token")),
        auth: AuthHeader::PrivateToken,
        projects: Vec::new(),
        groups: Vec::new(),
        group_refresh: Duration::from_secs(60),
        membership: true,
        membership_refresh: Duration::from_secs(5),
        min_access_level: 40,
        max_projects: 200,
        webhook_token: None,
        contact_timeout: Duration::from_secs(20),
        stale_runner_timeout: Duration::from_secs(600),
        max_pages: 50,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    };
    let provider = GitlabProvider::new(config.clone(), fleet_pool()).expect("provider");
    (emu, dir, config, provider)
}

fn fleet_pool() -> Vec<(PoolId, PoolSelector)> {
    vec![(
        PoolId::new("fleet"),
        PoolSelector {
            runner_type: RunnerType::ProjectType,
            ..selector(&["fleet"], false, RunnerPer::Pool)
        },
    )]
}

/// The GitLab runner id of a registration (`<runner>/<system_id>`).
fn runner_of(reg: &Registration) -> u64 {
    reg.runner_id
        .as_ref()
        .and_then(|id| id.as_str().split('/').next()?.parse().ok())
        .expect("runner id")
}

/// The projects runner `id` is enabled in, as GitLab lists them.
async fn enabled_in(emu: &EmulatorHandle, id: u64) -> Vec<u64> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v4/runners/{id}", emu.url()))
        .header("PRIVATE-TOKEN", ADMIN)
        .send()
        .await
        .expect("runner")
        .json()
        .await
        .expect("json");
    let mut ids: Vec<u64> = v["projects"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn member_projects_are_demand_and_the_project_runner_is_enabled_in_each() {
    let (emu, dir, config, p) = members().await;
    emu.submit(vec![
        JobSpec::new(100, &["fleet"], Duration::from_millis(100)),
        JobSpec::new(101, &["fleet"], Duration::from_millis(100)),
        JobSpec::new(102, &["fleet"], Duration::from_millis(100)),
        JobSpec::new(250, &["other"], Duration::from_millis(100)),
    ]);
    let v = views(&p, &["fleet"]).await;
    let waiting = &v[&PoolId::new("fleet")].demand.waiting;
    assert_eq!(
        waiting.len(),
        2,
        "projects 100 and 102 (Maintainer); 101 is below min_access_level: {waiting:?}"
    );
    let snap = emu.snapshot();
    assert_eq!(
        snap.requests.get("GET /api/v4/projects").copied(),
        Some(2),
        "107 member projects: two pages of 100"
    );
    assert_eq!(
        snap.requests.get("GET /api/v4/projects/{id}/jobs").copied(),
        Some(107),
        "one jobs listing per member project"
    );

    // The runner is created unlocked in the lowest member project and enabled in the others,
    // at most 20 per pass.
    let reg = p
        .register(&PoolId::new("fleet"), "rs-fleet-abcdefghij")
        .await
        .expect("register");
    let runner = runner_of(&reg);
    let first = enabled_in(&emu, runner).await;
    assert_eq!(first.len(), 21, "owner + 20: {first:?}");
    assert_eq!(&first[..3], [100, 102, 200]);
    for pass in 0..6 {
        let n = enabled_in(&emu, runner).await.len();
        if n == 107 {
            break;
        }
        assert!(pass < 5, "enabled in {n} of 107 after {pass} passes");
        views(&p, &["fleet"]).await;
    }
    assert_eq!(enabled_in(&emu, runner).await.len(), 107);
    let enables = emu
        .snapshot()
        .requests
        .get("POST /api/v4/projects/{id}/runners")
        .copied();
    assert_eq!(enables, Some(106), "each project once, none twice");
    views(&p, &["fleet"]).await;
    assert_eq!(
        emu.snapshot()
            .requests
            .get("POST /api/v4/projects/{id}/runners")
            .copied(),
        Some(106),
        "nothing more to enable"
    );

    // A slot takes the jobs of 100 and 102, not 101's (not enabled there).
    let stop = CancellationToken::new();
    let worker = start_worker(&reg, &dir.path().join("slots"), &stop);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = |s: &emu::Snapshot, project: u64| {
        s.jobs
            .iter()
            .any(|j| j.project_id == project && j.status.is_finished())
    };
    while !(done(&emu.snapshot(), 100) && done(&emu.snapshot(), 102)) {
        assert!(
            std::time::Instant::now() < deadline,
            "jobs of 100 and 102 not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !done(&emu.snapshot(), 101),
        "101 is not a member project yet"
    );

    // The user becomes Maintainer of 101: its job counts and runs after the next listing.
    assert!(emu.add_member("dev", 101, 40));
    let joined = std::time::Instant::now();
    loop {
        let v = views(&p, &["fleet"]).await;
        let demand = &v[&PoolId::new("fleet")].demand;
        // The pass that lists 101's job also enables the runner there, and the slot may take
        // the job before the listing: waiting or running, it is the pool's demand.
        if demand.waiting.len() + demand.running as usize == 1 || done(&emu.snapshot(), 101) {
            break;
        }
        assert!(
            // The refresh is 5 s; the rest is slack for a loaded machine.
            joined.elapsed() < Duration::from_secs(30),
            "101 not picked up: {demand:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    views(&p, &["fleet"]).await;
    assert!(enabled_in(&emu, runner).await.contains(&101));
    while !done(&emu.snapshot(), 101) {
        assert!(
            joined.elapsed() < Duration::from_secs(40),
            "job of 101 not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "member projects: 107 listed in 2 pages; runner enabled in 106 projects over at most {} passes \
         (20 per pass); a project joined later ran its job {:.1}s after joining",
        6,
        joined.elapsed().as_secs_f64()
    );

    // A failed listing keeps the previous list; with no previous list the view is an error,
    // never an empty one.
    emu.set_faults(Faults {
        failing_routes: vec!["/api/v4/projects".into()],
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(5100)).await;
    emu.submit(vec![JobSpec::new(102, &["fleet"], Duration::from_secs(30))]);
    let v = p.observe(&ids(&["fleet"])).await;
    let view = v[&PoolId::new("fleet")]
        .as_ref()
        .expect("previous list in use");
    assert!(view.demand.waiting.len() + view.demand.running as usize >= 1);
    let fresh = GitlabProvider::new(config, fleet_pool()).expect("provider");
    let v = fresh.observe(&ids(&["fleet"])).await;
    assert!(v[&PoolId::new("fleet")].is_err(), "no list yet: an error");
    stop.cancel();
    let _ = worker.await;
}

#[tokio::test]
async fn enabling_a_runner_follows_gitlabs_rules() {
    let (emu, _dir, _config, p) = members().await;
    let reg = p
        .register(&PoolId::new("fleet"), "rs-fleet-abcdefghij")
        .await
        .expect("register");
    let runner = runner_of(&reg);
    let http = reqwest::Client::new();
    let enable = |token: &'static str, project: u64, runner: u64| {
        http.post(format!("{}/api/v4/projects/{project}/runners", emu.url()))
            .header("PRIVATE-TOKEN", token)
            .json(&serde_json::json!({ "runner_id": runner }))
            .send()
    };
    // Enabled already: 400 "has already been taken".
    let r = enable(DEV, 102, runner).await.expect("post");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("already been taken"));
    // Not Maintainer of 101 (Developer): 403.
    assert_eq!(enable(DEV, 101, runner).await.expect("post").status(), 403);
    // A locked runner cannot be enabled elsewhere by a user.
    let locked: serde_json::Value = http
        .post(format!("{}/api/v4/user/runners", emu.url()))
        .header("PRIVATE-TOKEN", DEV)
        .json(&serde_json::json!({ "runner_type": "project_type", "project_id": 100, "locked": true }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let locked = locked["id"].as_u64().expect("id");
    let r = enable(DEV, 102, locked).await.expect("post");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("locked"));
    // A user may not create an instance runner, nor list every runner.
    let r = http
        .post(format!("{}/api/v4/user/runners", emu.url()))
        .header("PRIVATE-TOKEN", DEV)
        .json(&serde_json::json!({ "runner_type": "instance_type" }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{}/api/v4/runners/all", emu.url()))
        .header("PRIVATE-TOKEN", DEV)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 403);
    // The user's runners: the project runners of projects it maintains.
    let v = views(&p, &["fleet"]).await;
    assert!(v[&PoolId::new("fleet")].runners.is_empty(), "no slot yet");
    let mine: Vec<serde_json::Value> = http
        .get(format!("{}/api/v4/runners?type=project_type", emu.url()))
        .header("PRIVATE-TOKEN", DEV)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(mine.len(), 2, "{mine:?}");
}

/// Records `n` finished jobs of `project` with `tags`, one an hour up to `back` ago (oldest
/// first, as GitLab's ids grow), each started 45 s after it was created.
fn past_jobs(s: &Setup, project: u64, tags: &[&str], n: usize, back: chrono::Duration) {
    let newest = chrono::Utc::now() - back;
    for i in (0..n).rev() {
        let created = newest - chrono::Duration::hours(i64::try_from(i).expect("small"));
        let job = JobSpec::new(project, tags, Duration::from_secs(60));
        s.emu
            .record_past(vec![job], created, Duration::from_secs(45));
    }
}

#[tokio::test]
async fn job_history_reads_every_projects_jobs_since_a_time_for_the_pools_their_tags_pick() {
    let s = setup(
        vec![
            (
                "linux",
                selector(&["linux", "docker"], false, RunnerPer::Pool),
            ),
            ("any", selector(&[], true, RunnerPer::Pool)),
        ],
        |_| {},
    )
    .await;
    let day = chrono::Duration::days(1);
    // Oldest first, as GitLab's ids grow: 3 jobs before the window, then 250 over ten days
    // (three pages), 10 in acme/app, 5 untagged, 4 no pool takes; then 2 pending now.
    past_jobs(&s, 101, &["linux"], 3, day * 15);
    past_jobs(&s, 101, &["linux"], 250, chrono::Duration::hours(1));
    past_jobs(
        &s,
        100,
        &["linux", "docker"],
        10,
        chrono::Duration::hours(1),
    );
    past_jobs(&s, 100, &[], 5, chrono::Duration::hours(1));
    past_jobs(&s, 100, &["arm"], 4, chrono::Duration::hours(1));
    s.emu
        .submit(vec![JobSpec::new(101, &["linux"], Duration::ZERO); 2]);
    let since = chrono::Utc::now() - day * 14;
    let mut read = s
        .provider
        .job_history(&ids(&["linux", "any"]), since)
        .await
        .expect("history read")
        .expect("GitLab keeps a history");
    let linux = read.remove(&PoolId::new("linux")).expect("linux");
    assert_eq!(
        linux.jobs.len(),
        262,
        "acme/app read twice (path, id) counted once"
    );
    assert_eq!(linux.complete_from, None);
    let pending = linux.jobs.iter().filter(|j| j.started_at.is_none()).count();
    assert_eq!(pending, 2, "pending jobs are arrivals without a start");
    for j in linux.jobs.iter().filter(|j| j.started_at.is_some()) {
        let waited = j.started_at.expect("started") - j.queued_at;
        assert_eq!(waited.num_seconds(), 45, "{j:?}");
        assert!(j.queued_at >= since);
    }
    assert_eq!(read[&PoolId::new("any")].jobs.len(), 5);
}

#[tokio::test]
async fn job_history_stops_at_max_pages_and_fails_plainly() {
    let s = linux(RunnerPer::Pool, |c| c.max_pages = 2).await;
    past_jobs(&s, 101, &["linux"], 250, chrono::Duration::hours(1));
    let pool = PoolId::new("linux");
    let since = chrono::Utc::now() - chrono::Duration::days(14);
    let read = s
        .provider
        .job_history(std::slice::from_ref(&pool), since)
        .await
        .expect("history read")
        .expect("GitLab keeps a history");
    let h = &read[&pool];
    assert_eq!(h.jobs.len(), 200, "two pages of the newest jobs");
    let oldest = h.jobs.iter().map(|j| j.queued_at).min().expect("jobs");
    assert_eq!(h.complete_from, Some(oldest));
    s.emu.set_faults(Faults {
        error_rate_5xx: 1.0,
        ..Faults::default()
    });
    let e = s
        .provider
        .job_history(std::slice::from_ref(&pool), since)
        .await
        .expect_err("5xx");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("job history of project"), "{e}");
    assert!(!e.to_string().contains(ADMIN));
}
