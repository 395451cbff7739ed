//! The reconciler driving runscale's exec backend through its local example script
//! (`deploy/exec/local-runners.sh`, machines are background processes with two runner slots)
//! against the GitHub emulator: each machine runs this crate's `runscale-fake-runner` with
//! the JIT configurations runscale handed over in the create request (one agent per runner of
//! the credentials file); they take real jobs over loopback HTTP, and the emulator fails any
//! job whose runner vanishes mid-job. The CI side is a small test provider ([`EmulatorCi`]):
//! demand and runners from the emulator's snapshot, registration and removal through its REST
//! API (`generate-jitconfig`, `DELETE` answering 422 while busy). Every job completes, capacity
//! returns to zero, and no runner process is left.

#[path = "../../runscale-backends/tests/fixtures/exec/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runscale_core::{Backend, PoolId, Provider, Result, RunnerState};
use support::{
    POOL, Reaper, assert_nothing_left, eventually, example_backend, example_template, no_machines,
    pool_spec, start, tools_present,
};

const ORG: &str = "octo-org";
const GH_TOKEN: &str = "ghp_exec_test_token";
const LABELS: [&str; 2] = ["self-hosted", "linux"];

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
    if let Some(run) = run_jobs(None).await {
        println!(
            "exec + GitHub emulator: 8 jobs done in {:.1}s, fleet and runners at zero after \
             {:.1}s, peak {} machines",
            run.done.as_secs_f64(),
            run.zero.as_secs_f64(),
            run.peak
        );
    }
}

/// With `reuse`, machines outlive their ephemeral runners (`params.machine`): a machine whose
/// runners finished gets fresh JIT runners through the script's `reuse` while jobs wait, so
/// the eight jobs need fewer machines than the four a machine per two jobs would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_whose_runners_finished_are_reused_for_waiting_jobs() {
    let reuse = runscale_core::Reuse {
        max_uses: 4,
        max_age: Duration::from_secs(600),
    };
    if let Some(run) = run_jobs(Some(reuse)).await {
        assert!(run.most_uses >= 2, "no machine was reused");
        assert!(
            run.machines < 4,
            "{} machines for 8 jobs on 2 slots each",
            run.machines
        );
        println!(
            "exec + GitHub emulator with reuse: 8 jobs done in {:.1}s on {} machines (most \
             uses {}), fleet and runners at zero after {:.1}s",
            run.done.as_secs_f64(),
            run.machines,
            run.most_uses,
            run.zero.as_secs_f64()
        );
    }
}

/// What one run of [`run_jobs`] measured.
struct Run {
    done: Duration,
    zero: Duration,
    peak: usize,
    /// Distinct machines seen.
    machines: usize,
    /// The most uses a machine was listed with.
    most_uses: u32,
}

/// Eight jobs through runscale, the exec backend's local example and the GitHub emulator;
/// checks that every job succeeded on a runner runscale made, that no runner vanished
/// mid-job, that at most 3 machines ran at once and that nothing is left. `None` when the
/// example's tools are missing.
async fn run_jobs(reuse: Option<runscale_core::Reuse>) -> Option<Run> {
    use runscale_emulator::github::{
        Conclusion, Emulator, EmulatorConfig, JobSpec, JobStatus, OwnerConfig, OwnerKind,
    };
    if !tools_present() {
        return None;
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
    // Each machine runs the emulator's fake runner: one agent per runner of the credentials
    // file the example script writes.
    let runner = vec![
        env!("CARGO_BIN_EXE_runscale").to_owned(),
        "fake-runner".to_owned(),
    ];
    let mut template = example_template(&state, &runner, &BTreeMap::new());
    if reuse.is_some() {
        template
            .params
            .insert("machine".into(), serde_json::Value::Bool(true));
    }
    let ci = Arc::new(EmulatorCi {
        emulator: Arc::clone(&emulator),
        http: reqwest::Client::new(),
    });
    let mut spec = pool_spec(&template, true);
    spec.reuse = reuse;
    let backend = Arc::new(example_backend(&[(POOL, template)]));
    let (stop, task) = start(spec, "github-emulator", ci, backend.clone());

    let started = Instant::now();
    let jobs: Vec<JobSpec> = (0..8)
        .map(|_| JobSpec::new(format!("{ORG}/app"), &LABELS, Duration::from_millis(1500)))
        .collect();
    emulator.enqueue_run(jobs).expect("enqueue");
    let mut peak = 0;
    let mut machines = std::collections::HashSet::new();
    let mut most_uses = 1;
    eventually("eight jobs done", Duration::from_secs(90), async || {
        reaper.watch_recorded();
        if let Ok(listed) = backend.instances(&[PoolId::new(POOL)]).await {
            peak = peak.max(listed.values().map(Vec::len).sum::<usize>());
            for i in listed.values().flatten() {
                machines.insert(i.id.clone());
                most_uses = most_uses.max(i.uses());
            }
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
    Some(Run {
        done,
        zero,
        peak,
        machines: machines.len(),
        most_uses,
    })
}
