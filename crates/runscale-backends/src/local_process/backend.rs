//! [`LocalProcess`]: the [`Backend`] implementation, and the tasks that reap children, enforce
//! the stop grace and watch adopted processes.
//!
//! Every change to the state directory happens under one lock, so a listing never races a
//! launch (a process is never seen without its state file by this daemon).

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use nix::sys::signal::Signal;
use runscale_core::adapter_type::{PoolContext, Template as _, Validate as _};
use runscale_core::{
    Backend, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, PoolId, Result,
    Timestamp,
};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::config::{Config, CredentialsDelivery, PoolTemplate};
use super::errors::{io_error, spawn_kind};
use super::procfs::{self, Signalled};
use super::spawn;
use super::state::{self, KEPT_LOGS_PER_POOL, Layout, RECORD_VERSION, Record};

/// How often processes this daemon did not start (adopted after a restart) are checked for
/// exit, once somebody [subscribed](Backend::subscribe).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs runners as local processes: one process (and its process group) per instance.
///
/// See the [module documentation](super) for the files it keeps and the environment it sets.
pub struct LocalProcess {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    stop_grace: Duration,
    templates: HashMap<PoolId, PoolTemplate>,
    /// Serialises every change to the state directory.
    dir: Arc<tokio::sync::Mutex<()>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PoolId>>>,
    tasks: Mutex<Tasks>,
}

/// Background tasks, aborted when the backend is dropped (the processes keep running).
#[derive(Default)]
struct Tasks {
    /// Per child instance: the task awaiting its exit.
    wait: HashMap<String, AbortHandle>,
    /// Per stopping instance: the task that SIGKILLs it after the grace.
    grace: HashMap<String, AbortHandle>,
    /// The poller of adopted processes.
    poller: Option<AbortHandle>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for LocalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pools: Vec<&str> = self.inner.templates.keys().map(PoolId::as_str).collect();
        pools.sort_unstable();
        f.debug_struct("LocalProcess")
            .field("state_dir", &self.inner.layout.root())
            .field("stop_grace", &self.inner.stop_grace)
            .field("pools", &pools)
            .finish()
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        let mut guard = locked(&self.inner.tasks);
        let tasks = &mut *guard;
        for handle in tasks
            .wait
            .drain()
            .chain(tasks.grace.drain())
            .map(|(_, h)| h)
            .chain(tasks.poller.take())
        {
            handle.abort();
        }
    }
}

impl LocalProcess {
    /// Builds the backend for these pools: validates the configuration and the templates,
    /// creates the state directory (mode 0700) if missing, and adopts processes a previous
    /// runscale started on this state directory but did not record. Does not start any task
    /// (see [`Backend::subscribe`]), so it may be called outside a Tokio runtime.
    pub fn new(config: Config, templates: HashMap<PoolId, PoolTemplate>) -> Result<Self> {
        const OP: &str = "local_process.new";
        let misconfigured = |msg: String| Error::new(OP, ErrorKind::Misconfigured, msg);
        if let Err(errors) = config.validate() {
            return Err(misconfigured(join_errors("", &errors)));
        }
        let mut pools: Vec<&PoolId> = templates.keys().collect();
        pools.sort();
        for pool in pools {
            if !state::is_safe_pool_name(pool.as_str()) {
                return Err(misconfigured(format!(
                    "pool name {pool:?} cannot name a directory: use ASCII letters, digits, \
                     '.', '_' and '-', not starting with '.'"
                )));
            }
            if let Err(errors) = templates[pool].validate_for(PoolContext::single(pool.as_str())) {
                return Err(misconfigured(join_errors(
                    &format!("pool {pool}: "),
                    &errors,
                )));
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| io_error(OP, config.state_dir.display(), e))?;
        let root = std::fs::canonicalize(&config.state_dir)
            .map_err(|e| io_error(OP, config.state_dir.display(), e))?;
        if let Ok(meta) = std::fs::metadata(&root)
            && meta.permissions().mode() & 0o077 != 0
        {
            warn!(
                state_dir = %root.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the state directory is readable by others; 0700 is recommended"
            );
        }
        let inner = Inner {
            layout: Layout::new(root),
            stop_grace: config.stop_grace,
            templates,
            dir: Arc::new(tokio::sync::Mutex::new(())),
            subscribers: Mutex::new(Vec::new()),
            tasks: Mutex::new(Tasks::default()),
        };
        inner.adopt_orphans();
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The canonical state directory.
    pub fn state_dir(&self) -> &Path {
        self.inner.layout.root()
    }
}

fn join_errors(prefix: &str, errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(field, msg)| format!("{prefix}{field}: {msg}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn grace_delta(grace: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(grace).unwrap_or(chrono::TimeDelta::MAX)
}

impl Inner {
    fn notify(&self, pool: &PoolId) {
        locked(&self.subscribers).retain(|tx| tx.send(pool.clone()).is_ok());
    }

    /// Records processes that carry our state directory in their environment but have no
    /// (readable) state file: runscale stopped between spawning them and recording them.
    /// Only process-group leaders are considered (their children inherit the environment).
    fn adopt_orphans(&self) -> Vec<String> {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut adopted_pools = Vec::new();
        for pid in procfs::pids() {
            if pid == me {
                continue;
            }
            let Some(stat) = procfs::read_stat(pid).filter(|s| s.pgrp == pid && s.running()) else {
                continue;
            };
            if !procfs::same_owner(pid) {
                continue;
            }
            let Some(env) = procfs::runscale_env(pid) else {
                continue;
            };
            if env
                .get(spawn::ENV_STATE_DIR)
                .is_none_or(|d| Path::new(d) != self.layout.root())
            {
                continue;
            }
            let text = |name: &str| env.get(name).and_then(|v| v.to_str()).map(str::to_owned);
            let (Some(pool), Some(id)) = (text(spawn::ENV_POOL), text(spawn::ENV_INSTANCE_ID))
            else {
                warn!(
                    pid,
                    "process names our state directory but no pool or instance id"
                );
                continue;
            };
            if !state::is_safe_pool_name(&pool) || !state::is_instance_id(&id) {
                warn!(
                    pid,
                    pool,
                    instance = id,
                    "process has a malformed pool or instance id"
                );
                continue;
            }
            match self.layout.read(&pool, &id) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
                Err(e) => {
                    warn!(pool, instance = id, error = %e, "cannot read state file");
                    continue;
                }
            }
            // The pid may have been reused between reading stat and environ.
            if procfs::live_instance(pid, stat.start_time).is_none() {
                continue;
            }
            let launched_at = text(spawn::ENV_LAUNCHED_AT)
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            let record = Record {
                version: RECORD_VERSION,
                pool: pool.clone(),
                instance_id: id.clone(),
                pid,
                start_time: stat.start_time,
                runner_names: text(spawn::ENV_RUNNER_NAMES)
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                template_hash: text(spawn::ENV_TEMPLATE_HASH).unwrap_or_default(),
                launched_at,
                stopping_since: None,
                adopted: true,
            };
            match self
                .layout
                .ensure_pool_dir(&pool)
                .and_then(|()| self.layout.write(&record))
            {
                Ok(()) => {
                    info!(
                        pool,
                        instance = id,
                        pid,
                        "adopted a process that had no state file"
                    );
                    adopted_pools.push(pool);
                }
                Err(e) => warn!(pool, instance = id, error = %e, "cannot record adopted process"),
            }
        }
        adopted_pools
    }

    /// Forgets a gone instance: SIGKILLs what it left in its process group, removes its state
    /// and credentials files (its log stays).
    fn forget(&self, record: &Record) -> io::Result<()> {
        let left = procfs::kill_stragglers(record.pid, &record.instance_id, self.layout.root());
        if left > 0 {
            warn!(
                pool = record.pool,
                instance = record.instance_id,
                processes = left,
                "killed processes left behind in the instance's process group"
            );
        }
        self.layout
            .remove_instance(&record.pool, &record.instance_id)?;
        info!(
            pool = record.pool,
            instance = record.instance_id,
            pid = record.pid,
            "instance process is gone; state removed"
        );
        Ok(())
    }

    /// Lists the live instances of `pool`, forgetting dead ones, SIGKILLing stopping ones past
    /// the grace, and removing credentials files no instance owns. Returns the instances and
    /// whether any had died.
    fn sweep(&self, pool: &str, now: Timestamp) -> io::Result<(Vec<Instance>, bool)> {
        let mut instances = Vec::new();
        let mut died = false;
        for id in self.layout.state_ids(pool)? {
            let record = match self.layout.read(pool, &id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // No live process claims it (it would have been adopted).
                    warn!(pool, instance = id, error = %e, "removing an unreadable state file");
                    self.layout.remove_instance(pool, &id)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if procfs::live_instance(record.pid, record.start_time).is_none() {
                self.forget(&record)?;
                died = true;
                continue;
            }
            if let Some(since) = record.stopping_since
                && now >= since + grace_delta(self.stop_grace)
            {
                self.kill_after_grace(&record);
            }
            instances.push(Instance {
                id: InstanceId::new(&record.instance_id),
                state: if record.stopping_since.is_some() {
                    InstanceState::Stopping
                } else {
                    InstanceState::Running
                },
                launched_at: record.launched_at,
                template_hash: record.template_hash,
                runner_names: record.runner_names,
                reused: None,
            });
        }
        for id in self.layout.credentials_ids(pool)? {
            if !self.layout.state_path(pool, &id).exists() {
                debug!(
                    pool,
                    instance = id,
                    "removing credentials of an instance that never started"
                );
                self.layout.remove_instance(pool, &id)?;
            }
        }
        if died {
            self.layout.cap_logs(pool, KEPT_LOGS_PER_POOL)?;
        }
        instances.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        Ok((instances, died))
    }

    fn kill_after_grace(&self, record: &Record) {
        match procfs::signal_instance(record.pid, record.start_time, Signal::SIGKILL) {
            Ok(Signalled::Sent) => warn!(
                pool = record.pool,
                instance = record.instance_id,
                pid = record.pid,
                grace = ?self.stop_grace,
                "instance did not exit within the stop grace; SIGKILL sent to its process group"
            ),
            Ok(Signalled::Gone) => {}
            Err(e) => warn!(
                pool = record.pool,
                instance = record.instance_id,
                error = %e,
                "cannot SIGKILL instance"
            ),
        }
    }

    /// Cleans up after a child that exited, if the state file still describes it.
    fn reaped(&self, pool: &str, id: &str, pid: i32, start_time: u64) {
        match self.layout.read(pool, id) {
            Ok(Some(r)) if r.pid == pid && r.start_time == start_time => {
                if let Err(e) = self.forget(&r) {
                    warn!(pool, instance = id, error = %e, "cannot remove state of exited instance");
                }
                if let Err(e) = self.layout.cap_logs(pool, KEPT_LOGS_PER_POOL) {
                    warn!(pool, error = %e, "cannot trim old logs");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(pool, instance = id, error = %e, "cannot read state file"),
        }
    }

    /// Sweeps every pool directory; returns the pools where an instance died.
    fn poll(&self) -> Vec<String> {
        let pools = match self.layout.pools() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list the state directory");
                return Vec::new();
            }
        };
        let now = Utc::now();
        pools
            .into_iter()
            .filter(|pool| match self.sweep(pool, now) {
                Ok((_, died)) => died,
                Err(e) => {
                    warn!(pool, error = %e, "cannot check instances");
                    false
                }
            })
            .collect()
    }

    /// Starts the task that SIGKILLs `record`'s process group once the grace has passed,
    /// unless one already runs. Called with the directory lock held.
    fn schedule_kill(self: &Arc<Self>, record: &Record, since: Timestamp) {
        let mut tasks = locked(&self.tasks);
        if tasks.grace.contains_key(&record.instance_id) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = since + grace_delta(self.stop_grace);
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let inner = Arc::clone(self);
        let (pool, id, pid, start) = (
            record.pool.clone(),
            record.instance_id.clone(),
            record.pid,
            record.start_time,
        );
        let key = id.clone();
        let handle = runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            let guard = Arc::clone(&inner.dir).lock_owned().await;
            let inner2 = Arc::clone(&inner);
            let id2 = id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _guard: OwnedMutexGuard<()> = guard;
                if let Ok(Some(r)) = inner2.layout.read(&pool, &id2)
                    && r.pid == pid
                    && r.start_time == start
                    && procfs::live_instance(pid, start).is_some()
                {
                    inner2.kill_after_grace(&r);
                }
            })
            .await;
            locked(&inner.tasks).grace.remove(&id);
        });
        tasks.grace.insert(key, handle.abort_handle());
    }

    fn start_poller(self: &Arc<Self>) {
        let mut tasks = locked(&self.tasks);
        if tasks.poller.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("no Tokio runtime: exits of adopted processes are noticed at the next listing");
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        let handle = runtime.spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let guard = Arc::clone(&inner.dir).lock_owned().await;
                let inner2 = Arc::clone(&inner);
                let died = tokio::task::spawn_blocking(move || {
                    let _guard: OwnedMutexGuard<()> = guard;
                    inner2.poll()
                })
                .await
                .unwrap_or_default();
                for pool in died {
                    inner.notify(&PoolId::new(pool));
                }
            }
        });
        tasks.poller = Some(handle.abort_handle());
    }
}

#[async_trait]
impl Backend for LocalProcess {
    fn kind(&self) -> &'static str {
        "local-process"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        const OP: &str = "local_process.instances";
        let guard = Arc::clone(&self.inner.dir).lock_owned().await;
        let inner = Arc::clone(&self.inner);
        let pools = pools.to_vec();
        tokio::task::spawn_blocking(move || {
            let _guard: OwnedMutexGuard<()> = guard;
            inner.adopt_orphans();
            let now = Utc::now();
            let mut out = HashMap::with_capacity(pools.len());
            for pool in pools {
                let listed = if state::is_safe_pool_name(pool.as_str()) {
                    inner
                        .sweep(pool.as_str(), now)
                        .map_err(|e| io_error(OP, format!("state of pool {pool}"), e))?
                        .0
                } else {
                    Vec::new()
                };
                out.insert(pool, listed);
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::new(OP, ErrorKind::Transient, "listing task failed").with_source(e))?
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        const OP: &str = "local_process.launch";
        let inner = &self.inner;
        let pool = request.pool.as_str();
        let template = inner.templates.get(&request.pool).ok_or_else(|| {
            Error::new(
                OP,
                ErrorKind::Misconfigured,
                format!("pool {pool} has no local-process template"),
            )
        })?;
        spawn::check_delivery(template.credentials, &request.runners).map_err(|msg| {
            Error::new(OP, ErrorKind::Misconfigured, format!("pool {pool}: {msg}"))
        })?;
        let runner_names: Vec<String> = request
            .runners
            .iter()
            .map(|r| r.runner_name.clone())
            .collect();
        let id = state::new_instance_id();
        let layout = &inner.layout;

        let _guard = inner.dir.lock().await;
        // From here on nothing awaits: a cancelled launch cannot leave a half-made instance.
        layout
            .ensure_pool_dir(pool)
            .map_err(|e| io_error(OP, format!("directory of pool {pool}"), e))?;
        let now = Utc::now();
        let launched_at = now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let credentials_path = layout.credentials_path(pool, &id);
        let credentials_file = match template.credentials {
            CredentialsDelivery::File => {
                state::write_private_atomic(
                    &credentials_path,
                    &spawn::credentials_json(&request.runners),
                )
                .map_err(|e| io_error(OP, credentials_path.display(), e))?;
                Some(credentials_path.as_path())
            }
            CredentialsDelivery::Env => None,
        };
        let cleanup_files = || {
            let _ = layout.remove_instance(pool, &id);
        };
        let launch = spawn::Launch {
            pool,
            instance_id: &id,
            runner_names: &runner_names,
            state_dir: layout.root(),
            template_hash: &request.template_hash,
            launched_at: &launched_at,
            credentials_file,
        };
        let argv = spawn::argv(template, &launch).map_err(|msg| {
            cleanup_files();
            Error::new(OP, ErrorKind::Misconfigured, format!("pool {pool}: {msg}"))
        })?;
        let log_path = layout.log_path(pool, &id);
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| {
                cleanup_files();
                io_error(OP, log_path.display(), e)
            })?;
        let env = spawn::environment(template, &launch, &request.runners);
        let program = argv.first().cloned().unwrap_or_default();
        let mut command = spawn::command(&argv, env, template.working_dir.as_ref(), log)
            .map(tokio::process::Command::from)
            .map_err(|e| {
                cleanup_files();
                io_error(OP, log_path.display(), e)
            })?;
        command.kill_on_drop(false);
        let mut child = command.spawn().map_err(|e| {
            cleanup_files();
            Error::new(
                OP,
                spawn_kind(&e),
                format!("pool {pool}: cannot start {program:?}: {e}"),
            )
            .with_source(e)
        })?;
        let stat = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(|pid| Some((pid, procfs::read_stat(pid)?)));
        let Some((pid, stat)) = stat else {
            // Cannot happen for an unreaped child; do not leave it unrecorded.
            let _ = child.start_kill();
            cleanup_files();
            return Err(Error::new(
                OP,
                ErrorKind::Transient,
                format!("pool {pool}: the started process cannot be inspected"),
            ));
        };
        let record = Record {
            version: RECORD_VERSION,
            pool: pool.to_owned(),
            instance_id: id.clone(),
            pid,
            start_time: stat.start_time,
            runner_names: runner_names.clone(),
            template_hash: request.template_hash.clone(),
            launched_at: now,
            stopping_since: None,
            adopted: false,
        };
        if let Err(e) = layout.write(&record) {
            // Our unreaped child: its pid cannot have been reused.
            let _ = procfs::signal_instance(pid, stat.start_time, Signal::SIGKILL);
            cleanup_files();
            return Err(io_error(OP, layout.state_path(pool, &id).display(), e));
        }
        info!(
            pool,
            instance = id,
            pid,
            runners = runner_names.len(),
            "instance process started"
        );

        let waiter = Arc::clone(inner);
        let (wpool, wid) = (request.pool.clone(), id.clone());
        let handle = tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    info!(pool = %wpool, instance = wid, %status, "instance process exited")
                }
                Err(e) => {
                    warn!(pool = %wpool, instance = wid, error = %e, "cannot wait for instance process")
                }
            }
            let guard = Arc::clone(&waiter.dir).lock_owned().await;
            let inner2 = Arc::clone(&waiter);
            let (p, i) = (wpool.to_string(), wid.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let _guard: OwnedMutexGuard<()> = guard;
                inner2.reaped(&p, &i, pid, stat.start_time);
            })
            .await;
            locked(&waiter.tasks).wait.remove(&wid);
            waiter.notify(&wpool);
        });
        locked(&inner.tasks)
            .wait
            .insert(id.clone(), handle.abort_handle());

        Ok(Instance {
            id: InstanceId::new(id),
            state: InstanceState::Running,
            launched_at: now,
            template_hash: request.template_hash,
            runner_names,
            reused: None,
        })
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        const OP: &str = "local_process.terminate";
        let (pool, id) = (pool.as_str(), instance.as_str());
        if !state::is_safe_pool_name(pool) || !state::is_instance_id(id) {
            // Not an id this backend makes: nothing of ours to terminate.
            return Ok(());
        }
        let inner = &self.inner;
        let _guard = inner.dir.lock().await;
        let mut record = match inner.layout.read(pool, id) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                warn!(pool, instance = id, error = %e, "unreadable state file; a live process is re-adopted at the next listing");
                return Ok(());
            }
            Err(e) => return Err(io_error(OP, inner.layout.state_path(pool, id).display(), e)),
        };
        if procfs::live_instance(record.pid, record.start_time).is_none() {
            return inner
                .forget(&record)
                .map_err(|e| io_error(OP, inner.layout.state_path(pool, id).display(), e));
        }
        let since = match record.stopping_since {
            Some(since) => since,
            None => {
                let now = Utc::now();
                record.stopping_since = Some(now);
                inner
                    .layout
                    .write(&record)
                    .map_err(|e| io_error(OP, inner.layout.state_path(pool, id).display(), e))?;
                match procfs::signal_instance(record.pid, record.start_time, Signal::SIGTERM) {
                    Ok(Signalled::Sent) => {
                        info!(
                            pool,
                            instance = id,
                            pid = record.pid,
                            "SIGTERM sent to instance"
                        );
                    }
                    Ok(Signalled::Gone) => {}
                    Err(e) => {
                        return Err(Error::new(
                            OP,
                            ErrorKind::Misconfigured,
                            format!("cannot signal process {} of instance {id}: {e}", record.pid),
                        )
                        .with_source(e));
                    }
                }
                now
            }
        };
        if Utc::now() >= since + grace_delta(inner.stop_grace) {
            inner.kill_after_grace(&record);
        } else {
            inner.schedule_kill(&record, since);
        }
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        const OP: &str = "local_process.probe";
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let root = inner.layout.root();
            let probe = root.join(format!(".probe-{}", state::new_instance_id()));
            state::write_private_atomic(&probe, b"probe")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| {
                    io_error(
                        OP,
                        format!("state dir {} is not writable", root.display()),
                        e,
                    )
                })?;
            let mut pools: Vec<&PoolId> = inner.templates.keys().collect();
            pools.sort();
            for pool in &pools {
                check_template(pool.as_str(), &inner.templates[*pool]).map_err(|msg| {
                    Error::new(OP, ErrorKind::Misconfigured, format!("pool {pool}: {msg}"))
                })?;
            }
            Ok(format!(
                "state dir {} is writable; the programs of {} pool template(s) are executable",
                root.display(),
                pools.len()
            ))
        })
        .await
        .map_err(|e| Error::new(OP, ErrorKind::Transient, "probe task failed").with_source(e))?
    }

    fn subscribe(&self, events: mpsc::UnboundedSender<PoolId>) {
        locked(&self.inner.subscribers).push(events);
        self.inner.start_poller();
    }
}

/// Checks that a template's program can be executed and its working directory exists.
fn check_template(pool: &str, template: &PoolTemplate) -> std::result::Result<(), String> {
    if let Some(dir) = &template.working_dir
        && !dir.is_dir()
    {
        return Err(format!("working_dir {} is not a directory", dir.display()));
    }
    let program = template
        .command
        .first()
        .ok_or_else(|| "command is empty".to_owned())
        .and_then(|p| {
            super::config::expand(
                p,
                &super::config::Values {
                    pool,
                    runner_name: "",
                    instance_id: "",
                },
            )
        })?;
    if program.contains('/') {
        let path = PathBuf::from(&program);
        let path = match (&template.working_dir, path.is_relative()) {
            (Some(dir), true) => dir.join(path),
            _ => path,
        };
        if is_executable(&path) {
            Ok(())
        } else {
            Err(format!(
                "program {} is not an executable file",
                path.display()
            ))
        }
    } else {
        let search = template
            .env
            .get("PATH")
            .map(std::ffi::OsString::from)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        if std::env::split_paths(&search).any(|dir| is_executable(&dir.join(&program))) {
            Ok(())
        } else {
            Err(format!("program {program:?} is not found in PATH"))
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
