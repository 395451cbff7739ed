//! The reconciler driving the exec backend through the local example script
//! (`deploy/exec/local-runners.sh`): machines are real background processes, two runner
//! slots each. Every job completes, capacity returns to zero, and no instance is terminated
//! while one of its runners is busy.
//!
//! - With runscale-core's in-memory CI world (its runners connect by themselves).
//! - With the GitHub emulator: each machine runs the emulator's fake runner agents (this test
//!   binary re-executed as [`fake_runner_process`]) from the JIT configurations runscale
//!   handed over in the create request; they take real jobs over loopback HTTP, and the
//!   emulator fails any job whose runner vanishes mid-job. The CI side is a small test
//!   provider ([`EmulatorCi`]): demand and runners from the emulator's snapshot, registration
//!   and removal through its REST API (`generate-jitconfig`, `DELETE` answering 422 while
//!   busy).

#![cfg(feature = "exec")]

#[path = "fixtures/exec/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runscale_backends::exec::{ExecBackend, PoolTemplate};
use runscale_core::reconciler::PoolBinding;
use runscale_core::testing::{self, MemoryProvider, World, WorldConfig};
use runscale_core::{
    Backend, Instance, InstanceId, LaunchRequest, PoolId, PoolSpec, Provider, Result, RunnerState,
    SystemClock,
};
use support::{
    Reaper, eventually, example_backend, example_template, idle_runner, recorded_groups, running,
};
use tokio_util::sync::CancellationToken;

const POOL: &str = "exec";

/// Forwards to the exec backend and checks, at every terminate, with the CI system that no
/// runner of the instance is busy.
struct Watched {
    inner: ExecBackend,
    ci: Arc<MemoryProvider>,
    /// Runner names per instance, from the latest listings and launches.
    names: Mutex<HashMap<InstanceId, Vec<String>>>,
    violations: Mutex<Vec<String>>,
    peak: Mutex<usize>,
}

#[async_trait]
impl Backend for Watched {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        let listed = self.inner.instances(pools).await?;
        let mut names = self.names.lock().expect("lock");
        for instance in listed.values().flatten() {
            names.insert(instance.id.clone(), instance.runner_names.clone());
        }
        let count = listed.values().map(Vec::len).sum();
        let mut peak = self.peak.lock().expect("lock");
        *peak = (*peak).max(count);
        Ok(listed)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        let instance = self.inner.launch(request).await?;
        self.names
            .lock()
            .expect("lock")
            .insert(instance.id.clone(), instance.runner_names.clone());
        Ok(instance)
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        let names = self
            .names
            .lock()
            .expect("lock")
            .get(instance)
            .cloned()
            .unwrap_or_default();
        let view = self.ci.observe(std::slice::from_ref(pool)).await;
        if let Some(Ok(view)) = view.get(pool) {
            for runner in &view.runners {
                if names.contains(&runner.name) && runner.state == RunnerState::Busy {
                    self.violations.lock().expect("lock").push(format!(
                        "{instance} terminated while {} is busy",
                        runner.name
                    ));
                }
            }
        }
        self.inner.terminate(pool, instance).await
    }

    async fn probe(&self) -> Result<String> {
        self.inner.probe().await
    }
}

/// The pool of both tests: at most 3 machines of 2 runner slots each, idle runners removed
/// after 2 s.
fn pool_spec(template: &PoolTemplate, ephemeral: bool) -> PoolSpec {
    let mut spec = PoolSpec::test(POOL)
        .max(3)
        .slots(2)
        .ephemeral(ephemeral)
        .idle_timeout(Duration::from_secs(2))
        .boot_timeout(Duration::from_secs(30));
    spec.template_hash = template.template_hash();
    spec
}

/// Runs the reconciler over one pool on the real clock, passes every 300 ms.
fn start(
    spec: PoolSpec,
    provider_name: &str,
    provider: Arc<dyn Provider>,
    backend: Arc<dyn Backend>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    testing::spawn_reconciler(
        vec![PoolBinding {
            spec,
            provider_name: provider_name.into(),
            provider,
            backend_name: "exec".into(),
            backend,
        }],
        Duration::from_millis(300),
        Duration::from_secs(2),
    )
}

/// Whether the backend lists no machine in the pool.
async fn no_machines(backend: &dyn Backend) -> bool {
    testing::live_instances(backend, &[PoolId::new(POOL)])
        .await
        .is_ok_and(|n| n == 0)
}

/// No machine is recorded by the example any more, and no runner process it ever recorded
/// still runs.
fn assert_nothing_left(reaper: &Reaper) {
    assert!(
        recorded_groups(&reaper.state_dir).is_empty(),
        "no machine recorded"
    );
    let leftover: Vec<i32> = reaper
        .extra
        .lock()
        .expect("lock")
        .iter()
        .copied()
        .filter(|pid| running(*pid))
        .collect();
    assert!(leftover.is_empty(), "runner processes left: {leftover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_script_made_machines_and_the_fleet_returns_to_zero() {
    if !support::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let reaper = Reaper::new(state.clone());
    let runner = idle_runner();
    let template = example_template(&state, &runner, &BTreeMap::new());

    let mut cfg = WorldConfig {
        boot_delay: Duration::from_millis(200),
        auto_connect: true,
        instances_exit_when_runners_leave: false,
        ..WorldConfig::default()
    };
    cfg.ephemeral.insert(PoolId::new(POOL), false);
    let world = World::new(Arc::new(SystemClock), cfg);
    let backend = Arc::new(Watched {
        inner: example_backend(&[(POOL, template.clone())]),
        ci: world.provider(),
        names: Mutex::new(HashMap::new()),
        violations: Mutex::new(Vec::new()),
        peak: Mutex::new(0),
    });
    let spec = pool_spec(&template, false);
    world.set_cap(POOL, 3);
    let (stop, task) = start(spec, "memory", world.provider(), backend.clone());

    let started = Instant::now();
    world.enqueue(POOL, 8, Duration::from_millis(1500));
    eventually("eight jobs done", Duration::from_secs(60), async || {
        reaper.watch_recorded();
        world.snapshot().completed.len() == 8
    })
    .await;
    let done = started.elapsed();
    eventually("fleet back to zero", Duration::from_secs(60), async || {
        no_machines(backend.as_ref()).await
    })
    .await;
    let zero = started.elapsed();
    stop.cancel();
    task.await.expect("reconciler");

    let s = world.snapshot();
    assert_eq!(s.completed.len(), 8, "every job completed");
    assert_eq!(s.runners, 0, "every runner deregistered");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let violations = backend.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "{violations:?}");
    let peak = *backend.peak.lock().expect("lock");
    assert!((1..=3).contains(&peak), "max 3 machines, saw {peak}");
    let launches = s.calls.iter().filter(|c| c.starts_with("register")).count();
    assert_eq!(launches % 2, 0, "two runners per machine: {launches}");
    assert_nothing_left(&reaper);
    println!(
        "exec reconcile: 8 jobs done in {:.1}s, fleet at zero after {:.1}s, peak {peak} machines, \
         {} runners registered",
        done.as_secs_f64(),
        zero.as_secs_f64(),
        launches
    );
}

/// Set in the environment of [`fake_runner_process`] by the machines of the GitHub test.
const AGENT_MARKER: &str = "RUNSCALE_EXEC_TEST_AGENT";
const ORG: &str = "octo-org";
const GH_TOKEN: &str = "ghp_exec_test_token";
const LABELS: [&str; 2] = ["self-hosted", "linux"];

/// The runner program of the GitHub test's machines: this test binary, running only
/// [`fake_runner_process`].
fn agent_argv() -> Vec<String> {
    vec![
        std::env::current_exe()
            .expect("test binary")
            .to_string_lossy()
            .into_owned(),
        "fake_runner_process".to_owned(),
        "--exact".to_owned(),
        "--ignored".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
    ]
}

/// Entry point of a machine's runner process in the GitHub test (does nothing otherwise):
/// runs one fake GitHub runner agent per runner of `RUNSCALE_CREDENTIALS_FILE` until each is
/// done (its ephemeral job, or its runner removed); SIGTERM stops idle agents at once and
/// lets busy ones finish their job.
#[test]
#[ignore = "a machine's runner process in exec_reconcile, started by the local example script"]
fn fake_runner_process() {
    if std::env::var_os(AGENT_MARKER).is_none() {
        return;
    }
    let path = std::env::var_os("RUNSCALE_CREDENTIALS_FILE").expect("credentials file");
    let sources = runscale_emulator::github::read_credentials_file(std::path::Path::new(&path))
        .expect("credentials");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let on_term = stop.clone();
        tokio::spawn(async move {
            term.recv().await;
            on_term.cancel();
        });
        let agents: Vec<_> = sources
            .into_iter()
            .map(|source| tokio::spawn(runscale_emulator::github::run_agent(source, stop.clone())))
            .collect();
        for agent in agents {
            let report = agent.await.expect("agent task").expect("agent");
            println!(
                "agent {} done after {} job(s)",
                report.runner_name, report.jobs_completed
            );
        }
    });
}

/// The CI side of the GitHub test: demand and runners from the emulator's snapshot,
/// registration and removal through its REST API.
struct EmulatorCi {
    emulator: Arc<runscale_emulator::github::EmulatorHandle>,
    http: reqwest::Client,
}

impl EmulatorCi {
    fn runners_url(&self) -> String {
        format!("{}/orgs/{ORG}/actions/runners", self.emulator.base_url())
    }

    fn failed(
        op: &'static str,
        kind: runscale_core::ErrorKind,
        what: String,
    ) -> runscale_core::Error {
        runscale_core::Error::new(op, kind, what)
    }
}

#[async_trait]
impl Provider for EmulatorCi {
    fn kind(&self) -> &'static str {
        "github-emulator"
    }

    async fn observe(
        &self,
        pools: &[PoolId],
    ) -> HashMap<PoolId, Result<runscale_core::ProviderView>> {
        use runscale_emulator::github::{JobStatus, RunnerStatus};
        let snapshot = self.emulator.snapshot();
        let mut view = runscale_core::ProviderView::default();
        for job in &snapshot.jobs {
            match job.status {
                JobStatus::Queued => view.demand.waiting.push(runscale_core::WaitingJob {
                    id: job.id.to_string(),
                    queued_at: job.queued_at,
                }),
                JobStatus::InProgress => view.demand.running += 1,
                JobStatus::Completed => {}
            }
        }
        for pool in pools {
            view.runners = snapshot
                .runners
                .iter()
                .filter(|r| runscale_core::naming::owned_by(pool.as_str(), &r.name))
                .map(|r| runscale_core::Runner {
                    id: runscale_core::RunnerId::new(r.id.to_string()),
                    name: r.name.clone(),
                    state: match (r.busy, r.status) {
                        (true, _) => RunnerState::Busy,
                        (false, RunnerStatus::Online) => RunnerState::Idle,
                        (false, RunnerStatus::Offline) => RunnerState::Offline,
                    },
                    draining: false,
                    last_busy: None,
                })
                .collect();
        }
        pools
            .iter()
            .map(|p| (p.clone(), Ok(view.clone())))
            .collect()
    }

    async fn register(
        &self,
        _pool: &PoolId,
        runner_name: &str,
    ) -> Result<runscale_core::Registration> {
        use runscale_core::ErrorKind;
        let response = self
            .http
            .post(format!("{}/generate-jitconfig", self.runners_url()))
            .bearer_auth(GH_TOKEN)
            .json(&serde_json::json!({
                "name": runner_name, "runner_group_id": 1, "labels": LABELS,
            }))
            .send()
            .await
            .map_err(|e| Self::failed("register", ErrorKind::Transient, e.to_string()))?;
        if !response.status().is_success() {
            return Err(Self::failed(
                "register",
                ErrorKind::Transient,
                format!("generate-jitconfig answered {}", response.status()),
            ));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| Self::failed("register", ErrorKind::Protocol, e.to_string()))?;
        let mut credentials = runscale_core::Credentials::default();
        credentials.secrets.insert(
            runscale_emulator::github::JIT_CONFIG_SECRET.to_owned(),
            secrecy::SecretString::from(
                body["encoded_jit_config"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        );
        Ok(runscale_core::Registration {
            runner_name: runner_name.to_owned(),
            runner_id: body["runner"]["id"]
                .as_u64()
                .map(|id| runscale_core::RunnerId::new(id.to_string())),
            credentials,
        })
    }

    async fn remove(&self, _pool: &PoolId, runner: &runscale_core::RunnerId) -> Result<()> {
        use runscale_core::ErrorKind;
        let response = self
            .http
            .delete(format!("{}/{runner}", self.runners_url()))
            .bearer_auth(GH_TOKEN)
            .send()
            .await
            .map_err(|e| Self::failed("remove", ErrorKind::Transient, e.to_string()))?;
        match response.status().as_u16() {
            204 | 404 => Ok(()),
            422 => Err(Self::failed(
                "remove",
                ErrorKind::Busy,
                format!("runner {runner} is running a job"),
            )),
            other => Err(Self::failed(
                "remove",
                ErrorKind::Transient,
                format!("DELETE runner answered {other}"),
            )),
        }
    }

    async fn probe(&self) -> Result<String> {
        Ok("GitHub emulator".to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_jobs_run_on_fake_runners_of_script_made_machines() {
    use runscale_emulator::github::{
        Conclusion, Emulator, EmulatorConfig, JobSpec, JobStatus, OwnerConfig, OwnerKind,
    };
    if !support::tools_present() {
        return;
    }
    let emulator = Arc::new(
        Emulator::start(
            EmulatorConfig::new(
                vec![OwnerConfig {
                    login: ORG.into(),
                    kind: OwnerKind::Organization,
                    repos: vec!["app".into()],
                    runner_groups: Vec::new(),
                }],
                vec![secrecy::SecretString::from(GH_TOKEN)],
            ),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("emulator"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let reaper = Reaper::new(state.clone());
    let env = BTreeMap::from([(AGENT_MARKER.to_owned(), "1".to_owned())]);
    let template = example_template(&state, &agent_argv(), &env);
    let ci = Arc::new(EmulatorCi {
        emulator: Arc::clone(&emulator),
        http: reqwest::Client::new(),
    });
    let spec = pool_spec(&template, true);
    let backend = Arc::new(example_backend(&[(POOL, template)]));
    let (stop, task) = start(spec, "github-emulator", ci, backend.clone());

    let started = Instant::now();
    let jobs: Vec<JobSpec> = (0..8)
        .map(|_| JobSpec::new(format!("{ORG}/app"), &LABELS, Duration::from_millis(1500)))
        .collect();
    emulator.enqueue_run(jobs).expect("enqueue");
    let mut peak = 0;
    eventually("eight jobs done", Duration::from_secs(90), async || {
        reaper.watch_recorded();
        if let Ok(listed) = backend.instances(&[PoolId::new(POOL)]).await {
            peak = peak.max(listed.values().map(Vec::len).sum::<usize>());
        }
        let s = emulator.snapshot();
        s.jobs.len() == 8 && s.jobs.iter().all(|j| j.status == JobStatus::Completed)
    })
    .await;
    let done = started.elapsed();
    eventually(
        "fleet and runners back to zero",
        Duration::from_secs(60),
        async || no_machines(backend.as_ref()).await && emulator.snapshot().runners.is_empty(),
    )
    .await;
    let zero = started.elapsed();
    stop.cancel();
    task.await.expect("reconciler");

    let s = emulator.snapshot();
    let failed: Vec<_> = s
        .jobs
        .iter()
        .filter(|j| j.conclusion != Some(Conclusion::Success))
        .collect();
    assert!(failed.is_empty(), "every job succeeded: {failed:?}");
    assert!(
        s.violations.is_empty(),
        "no runner vanished mid-job: {:?}",
        s.violations
    );
    let on_ours = s
        .jobs
        .iter()
        .filter(|j| {
            j.runner_name
                .as_deref()
                .is_some_and(|n| runscale_core::naming::owned_by(POOL, n))
        })
        .count();
    assert_eq!(on_ours, 8, "every job ran on a runner runscale made");
    assert!((1..=3).contains(&peak), "max 3 machines, saw {peak}");
    assert_nothing_left(&reaper);
    println!(
        "exec + GitHub emulator: 8 jobs done in {:.1}s, fleet and runners at zero after {:.1}s, \
         peak {peak} machines",
        done.as_secs_f64(),
        zero.as_secs_f64()
    );
}
