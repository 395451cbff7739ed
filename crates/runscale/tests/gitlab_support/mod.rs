//! Helpers shared by the GitLab end-to-end tests: the GitLab emulator and one runscale process
//! (the GitLab provider, the local-process backend starting the instance command, the
//! reconciler) that can be restarted with other settings, and bounded waits on the fleet.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runscale_backends::local_process::{Config as LocalConfig, LocalProcess, PoolTemplate};
use runscale_core::reconciler::PoolBinding;
use runscale_core::secret::SecretRef;
use runscale_core::{Backend, InstanceState, PoolId, PoolSpec, testing};
use runscale_emulator::gitlab::{Emulator, EmulatorConfig, EmulatorHandle, Snapshot};
use runscale_providers::gitlab::{
    AuthHeader, Config, GitlabProvider, PoolSelector, RunnerPer, RunnerType,
};
use tokio_util::sync::CancellationToken;

pub const POOL: &str = "linux";
pub const ADMIN: &str = "glpat-admin";

/// How one runscale process is set up.
#[derive(Clone, Debug)]
pub struct Run {
    /// The instance command, and its extra environment.
    pub command: Vec<String>,
    pub env: serde_json::Value,
    pub runner_per: RunnerPer,
    pub max_use_count: Option<u32>,
    pub template_hash: &'static str,
    pub max: u32,
    pub min_idle: u32,
    pub idle_timeout: Duration,
    pub boot_timeout: Duration,
    pub contact_timeout: Duration,
    pub stale_runner_timeout: Duration,
    /// Time between passes.
    pub interval: Duration,
}

pub struct Harness {
    pub emu: EmulatorHandle,
    pub dir: tempfile::TempDir,
    pub backend: Arc<LocalProcess>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Runner names of every instance listed so far (by a task watching the backend).
    hosted: Arc<Mutex<HashSet<String>>>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Lists `backend`'s instances every 50 ms, adding their runner names to `hosted`.
fn watch(
    backend: Arc<LocalProcess>,
    hosted: Arc<Mutex<HashSet<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(mut all) = backend.instances(&[PoolId::new(POOL)]).await {
                let list = all.remove(&PoolId::new(POOL)).unwrap_or_default();
                hosted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(list.into_iter().flat_map(|i| i.runner_names));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

impl Harness {
    /// The emulator with `c`, and a runscale process set up by `run(dir)` (`dir` is the
    /// harness's temporary directory).
    pub async fn start(c: EmulatorConfig, run: impl FnOnce(&Path) -> Run) -> Self {
        let emu = Emulator::start(c).await.expect("emulator");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), ADMIN).expect("secret");
        let (backend, stop, task) = runscale(&emu, dir.path(), &run(dir.path()));
        let hosted = Arc::default();
        let watcher = watch(backend.clone(), Arc::clone(&hosted));
        Harness {
            emu,
            dir,
            backend,
            stop,
            task,
            hosted,
            watcher,
        }
    }

    /// Stops this runscale and starts another (new provider and backend objects on the same
    /// state directory), as after a restart.
    pub async fn restart(&mut self, run: &Run) {
        self.stop.cancel();
        (&mut self.task).await.expect("reconciler");
        let (backend, stop, task) = runscale(&self.emu, self.dir.path(), run);
        self.watcher.abort();
        self.watcher = watch(backend.clone(), Arc::clone(&self.hosted));
        self.backend = backend;
        self.stop = stop;
        self.task = task;
    }

    /// Instances listed, `stopping` ones included.
    pub async fn live(&self) -> usize {
        testing::live_instances(self.backend.as_ref(), &[PoolId::new(POOL)])
            .await
            .expect("instances")
    }

    /// Instances not stopping: id → runner names.
    pub async fn instances(&self) -> HashMap<String, Vec<String>> {
        self.backend
            .instances(&[PoolId::new(POOL)])
            .await
            .expect("instances")
            .remove(&PoolId::new(POOL))
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.state != InstanceState::Stopping)
            .map(|i| (i.id.to_string(), i.runner_names))
            .collect()
    }

    /// Whether some instance listed so far hosted the runner `name`.
    pub fn hosted(&self, name: &str) -> bool {
        self.hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    /// Waits until `n` jobs exist and are finished; returns the peak of live instances.
    /// `show` describes the state in the failure message.
    pub async fn wait_done(
        &self,
        n: usize,
        started: Instant,
        limit: Duration,
        show: fn(&Snapshot) -> String,
    ) -> usize {
        let mut peak = 0;
        loop {
            peak = peak.max(self.live().await);
            let s = self.emu.snapshot();
            if s.jobs.len() == n && s.all_finished() {
                return peak;
            }
            assert!(
                started.elapsed() < limit,
                "jobs not done after {limit:?}: {}",
                show(&s)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no instance and no runner manager is left (a slot that exited on its own is
    /// unregistered `contact_timeout` + `stale_runner_timeout` after its last contact).
    pub async fn wait_zero(
        &self,
        started: Instant,
        limit: Duration,
        show: fn(&Snapshot) -> String,
    ) -> Snapshot {
        loop {
            let s = self.emu.snapshot();
            if self.live().await == 0 && s.managers() == 0 {
                return s;
            }
            assert!(
                started.elapsed() < limit,
                "fleet not back to zero after {limit:?}: {} instances, {} managers: {}",
                self.live().await,
                s.managers(),
                show(&s)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.watcher.abort();
        self.stop.cancel();
        self.task.await.expect("reconciler");
    }
}

/// The runner name a slot's system id stands for (`s_<10><2>` → `rs-linux-<10>[-<n>]`), as
/// the provider decodes it.
pub fn slot_name(system_id: &str) -> Option<String> {
    let rest = system_id.strip_prefix("s_")?;
    let (suffix, slot) = rest.split_at_checked(10)?;
    let slot: u32 = slot.parse().ok()?;
    Some(if slot == 0 {
        format!("rs-{POOL}-{suffix}")
    } else {
        format!("rs-{POOL}-{suffix}-{slot}")
    })
}

impl Harness {
    /// Asserts that every job ran on a slot of an instance runscale launched: its manager's
    /// system id is the one runscale handed that slot (a made-up one is not).
    pub fn check_slots(&self, s: &Snapshot) {
        for j in &s.jobs {
            if let Some((_, system_id)) = &j.runner {
                assert!(
                    slot_name(system_id).is_some_and(|name| self.hosted(&name)),
                    "job {} ran on {system_id}, which is no slot of an instance runscale launched",
                    j.id
                );
            }
        }
    }
}

/// One runscale process: provider, backend and reconciler.
fn runscale(
    emu: &EmulatorHandle,
    dir: &Path,
    run: &Run,
) -> (
    Arc<LocalProcess>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let provider = GitlabProvider::new(
        Config {
            url: emu.url(),
            token: SecretRef::File(dir.join("token")),
            auth: AuthHeader::PrivateToken,
            projects: vec!["acme/app".into()],
            groups: vec!["acme".into()],
            group_refresh: Duration::from_secs(60),
            membership: false,
            membership_refresh: Duration::from_secs(60),
            min_access_level: 40,
            max_projects: 100,
            webhook_token: None,
            contact_timeout: run.contact_timeout,
            stale_runner_timeout: run.stale_runner_timeout,
            max_pages: 10,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        },
        vec![(
            PoolId::new(POOL),
            PoolSelector {
                tags: vec!["linux".into(), "docker".into()],
                run_untagged: true,
                runner_type: RunnerType::InstanceType,
                group_id: None,
                project_id: None,
                runner_per: run.runner_per,
                max_use_count: run.max_use_count,
            },
        )],
    )
    .expect("provider");
    let config: LocalConfig = serde_json::from_value(serde_json::json!({
        "state_dir": dir.join("state"),
        "stop_grace": "10s",
    }))
    .expect("config");
    let template: PoolTemplate = serde_json::from_value(serde_json::json!({
        "command": run.command,
        "env": run.env,
    }))
    .expect("template");
    let backend = Arc::new(
        LocalProcess::new(config, HashMap::from([(PoolId::new(POOL), template)])).expect("backend"),
    );
    let mut spec = PoolSpec::test(POOL)
        .max(run.max)
        .min_idle(run.min_idle)
        .slots(2)
        .idle_timeout(run.idle_timeout)
        .boot_timeout(run.boot_timeout);
    spec.template_hash = run.template_hash.into();
    let (stop, task) = testing::spawn_reconciler(
        vec![PoolBinding {
            spec,
            provider_name: "gitlab".into(),
            provider: Arc::new(provider),
            backend_name: "local".into(),
            backend: backend.clone(),
        }],
        run.interval,
        Duration::from_secs(1),
    );
    (backend, stop, task)
}
