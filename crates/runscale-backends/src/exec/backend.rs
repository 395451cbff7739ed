//! [`ExecBackend`]: the [`Backend`] implementation — one run of the executable per call, its
//! answer checked, its exit code mapped to an error kind, and a memory of what this process
//! created and deleted so a lagging `list` does not hide either.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use runscale_core::adapter_type::{PoolContext, Template as _, Validate as _};
use runscale_core::{
    Backend, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, PoolId,
    Registration, Result, ReuseRequest, Reused,
};
use secrecy::ExposeSecret;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::config::{Config, INHERITED_ENV, PoolTemplate};
use super::protocol::{
    self, Action, Create, CreateReply, DeleteReply, EXIT_NOT_FOUND, ListReply, ProbeReply, Request,
    Reuse, RunnerRegistration,
};
use super::run::{self, Exited, Spawn};

/// Set for every run: the request's action (`create`, `delete`, `list`, `probe`).
pub(crate) const ENV_ACTION: &str = "RUNSCALE_EXEC_ACTION";
/// Set for every run: the request's pool.
pub(crate) const ENV_POOL: &str = "RUNSCALE_POOL";

/// How many characters of stderr an error quotes.
const STDERR_CHARS: usize = 400;

/// Runs runners on machines an operator-supplied executable creates, deletes and lists.
///
/// See the [module documentation](super) and `deploy/exec/PROTOCOL.md` for the protocol.
pub struct ExecBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    templates: HashMap<PoolId, PoolTemplate>,
    memory: Mutex<Memory>,
}

/// What this process did that a lagging `list` may not show yet.
#[derive(Default)]
struct Memory {
    /// Created here and not yet listed, by (pool, id): the instance as created, and when.
    created: HashMap<(PoolId, String), (Instance, Instant)>,
    /// Deleted here (delete answered ok), by (pool, id): when.
    deleted: HashMap<(PoolId, String), Instant>,
    /// Reused here and not yet listed with its new runners, by (pool, id): its new runner
    /// names and reuse (the rest of the instance is the listing's), and when.
    reused: HashMap<(PoolId, String), (Vec<String>, Reused, Instant)>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for ExecBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pools: Vec<&str> = self.inner.templates.keys().map(PoolId::as_str).collect();
        pools.sort_unstable();
        f.debug_struct("ExecBackend")
            .field("command", &self.inner.config.command)
            .field("pools", &pools)
            .finish()
    }
}

/// How one run ended, from the caller's point of view.
pub(crate) enum Answer {
    /// Exit 0, with stdout.
    Done(Vec<u8>),
    /// Exit 3.
    NotFound,
}

impl ExecBackend {
    /// Builds the backend for these pools after validating the configuration and the
    /// templates. Runs nothing
    /// (see [`Backend::probe`]) and starts no task, so it may be called outside a Tokio runtime.
    pub fn new(config: Config, templates: HashMap<PoolId, PoolTemplate>) -> Result<Self> {
        let misconfigured = |prefix: &str, errors: Vec<(String, String)>| {
            let message = errors
                .iter()
                .map(|(field, msg)| format!("{prefix}{field}: {msg}"))
                .collect::<Vec<_>>()
                .join("; ");
            Error::new("exec.new", ErrorKind::Misconfigured, message)
        };
        config.validate().map_err(|e| misconfigured("", e))?;
        let mut pools: Vec<&PoolId> = templates.keys().collect();
        pools.sort();
        for pool in pools {
            templates[pool]
                .validate_for(PoolContext::single(pool.as_str()))
                .map_err(|e| misconfigured(&format!("pool {pool}: "), e))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                templates,
                memory: Mutex::new(Memory::default()),
            }),
        })
    }
}

impl Inner {
    fn template(&self, op: &'static str, pool: &PoolId) -> Result<&PoolTemplate> {
        self.templates.get(pool).ok_or_else(|| {
            Error::new(
                op,
                ErrorKind::Misconfigured,
                format!("pool {pool} is not served by this exec backend"),
            )
        })
    }

    fn environment(&self, action: &str, pool: &PoolId) -> Vec<(String, OsString)> {
        let mut env: Vec<(String, OsString)> = INHERITED_ENV
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), std::env::var_os(name)?)))
            .collect();
        env.extend(
            self.config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), OsString::from(v))),
        );
        env.push((ENV_ACTION.to_owned(), OsString::from(action)));
        env.push((ENV_POOL.to_owned(), OsString::from(pool.as_str())));
        env
    }

    /// Runs the executable for one request. `secrets` are values to cut out of any error
    /// message (the request's credentials).
    async fn call(
        &self,
        op: &'static str,
        pool: &PoolId,
        action: Action,
        secrets: &[String],
    ) -> Result<Answer> {
        let template = self.template(op, pool)?;
        let (name, timeout) = match &action {
            Action::Create(_) => ("create", self.config.timeouts.create),
            Action::Delete { .. } => ("delete", self.config.timeouts.delete),
            Action::List => ("list", self.config.timeouts.list),
            Action::Reuse(_) => ("reuse", self.config.timeouts.create),
            Action::Probe => ("probe", self.config.timeouts.probe),
        };
        let request = Request {
            version: protocol::VERSION,
            pool: pool.as_str().to_owned(),
            params: template.params.clone(),
            action,
        };
        let bytes = serde_json::to_vec(&request).map_err(|e| {
            Error::new(op, ErrorKind::Protocol, "cannot encode the request").with_source(e)
        })?;
        drop(request);
        let started = Instant::now();
        let spawned = run::run(
            Spawn {
                argv: &self.config.command,
                env: self.environment(name, pool),
                working_dir: self.config.working_dir.as_deref(),
                timeout,
                max_output: self.config.max_output,
            },
            bytes,
        )
        .await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Exited {
            status,
            stdout,
            stderr_tail,
        } = spawned.map_err(|e| {
            let kind = match &e {
                run::Failed::Start { source, .. } => match source.kind() {
                    std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::InvalidInput => ErrorKind::Misconfigured,
                    _ => ErrorKind::Transient,
                },
                run::Failed::TimedOut(_) | run::Failed::Io(_) => ErrorKind::Transient,
                run::Failed::TooMuchOutput(_) => ErrorKind::Protocol,
            };
            failure(op, name, pool, kind, e.to_string(), secrets)
        })?;
        debug!(
            %pool,
            action = name,
            status = %status,
            elapsed_ms,
            "exec backend executable finished"
        );
        exited(op, name, pool, status, stdout, &stderr_tail, secrets)
    }

    /// Runs `list` for one pool and merges what this process created and deleted.
    async fn list(&self, pool: &PoolId) -> Result<Vec<Instance>> {
        const OP: &str = "exec.list";
        let reply: ListReply = match self.call(OP, pool, Action::List, &[]).await? {
            Answer::Done(stdout) => parse(OP, "list", pool, &stdout, &[])?,
            Answer::NotFound => {
                return Err(Error::new(
                    OP,
                    ErrorKind::NotFound,
                    format!("list for pool {pool}: the executable answered exit 3 (not found)"),
                ));
            }
        };
        let instances = listed(OP, pool, reply)?;
        Ok(self.merge(pool, instances, Instant::now()))
    }

    /// Adds instances created here that the listing does not show yet (within the grace),
    /// marks instances deleted here as stopping, and forgets what the listing caught up with.
    fn merge(&self, pool: &PoolId, mut listed: Vec<Instance>, now: Instant) -> Vec<Instance> {
        let grace = self.config.listing_grace;
        let mut memory = locked(&self.memory);
        let memory = &mut *memory;
        for instance in &mut listed {
            let key = (pool.clone(), instance.id.as_str().to_owned());
            memory.created.remove(&key);
            if let Some((names, reused, at)) = memory.reused.get(&key) {
                if instance.runner_names == *names || now.duration_since(*at) >= grace {
                    memory.reused.remove(&key);
                } else {
                    // The listing still shows the runners that left.
                    instance.runner_names.clone_from(names);
                    instance.reused = Some(*reused);
                }
            }
            if let Some(at) = memory.deleted.get(&key) {
                if now.duration_since(*at) < grace {
                    instance.state = InstanceState::Stopping;
                } else {
                    warn!(
                        %pool,
                        instance = %instance.id,
                        "instance still listed long after it was deleted"
                    );
                    memory.deleted.remove(&key);
                }
            }
        }
        let listed_ids: Vec<String> = listed.iter().map(|i| i.id.as_str().to_owned()).collect();
        memory
            .deleted
            .retain(|(p, id), _| p != pool || listed_ids.contains(id));
        memory
            .reused
            .retain(|(p, id), _| p != pool || listed_ids.contains(id));
        memory.created.retain(|(p, id), (instance, at)| {
            if p != pool {
                return true;
            }
            if now.duration_since(*at) >= grace {
                warn!(
                    %pool,
                    instance = id.as_str(),
                    "instance created but never listed within the listing grace; forgetting it"
                );
                return false;
            }
            listed.push(instance.clone());
            true
        });
        listed.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        listed
    }
}

/// An error of `action` for `pool`, with secrets cut out.
fn failure(
    op: &'static str,
    action: &str,
    pool: &PoolId,
    kind: ErrorKind,
    message: String,
    secrets: &[String],
) -> Error {
    Error::new(
        op,
        kind,
        redact(&format!("{action} for pool {pool}: {message}"), secrets),
    )
}

/// What the executable's exit means for `action`: exit 0 is its answer on stdout, exit 3 "not
/// found", any other exit (or a signal) an error quoting the end of stderr (secrets cut out).
pub(crate) fn exited(
    op: &'static str,
    action: &str,
    pool: &PoolId,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr_tail: &[u8],
    secrets: &[String],
) -> Result<Answer> {
    match status.code() {
        Some(0) => Ok(Answer::Done(stdout)),
        Some(EXIT_NOT_FOUND) => Ok(Answer::NotFound),
        code => {
            let why = match code {
                Some(c) => format!("exited with status {c}"),
                None => format!("was killed ({status})"),
            };
            let excerpt = run::excerpt(stderr_tail, STDERR_CHARS);
            let message = if excerpt.is_empty() {
                format!("the executable {why} (nothing on stderr)")
            } else {
                format!("the executable {why}: {excerpt}")
            };
            Err(failure(
                op,
                action,
                pool,
                code.map_or(ErrorKind::Transient, protocol::exit_kind),
                message,
                secrets,
            ))
        }
    }
}

/// The instances of a `list` answer; an empty id is an error.
pub(crate) fn listed(op: &'static str, pool: &PoolId, reply: ListReply) -> Result<Vec<Instance>> {
    let mut instances = Vec::with_capacity(reply.instances.len());
    for (i, listed) in reply.instances.into_iter().enumerate() {
        if listed.id.is_empty() {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                format!("list for pool {pool}: answer field `instances[{i}].id` is empty"),
            ));
        }
        let reused = match (listed.uses, listed.reused_at) {
            (None | Some(1), None) => None,
            (Some(uses), Some(at)) if uses >= 2 => Some(Reused { uses, at }),
            _ => {
                return Err(Error::new(
                    op,
                    ErrorKind::Protocol,
                    format!(
                        "list for pool {pool}: answer fields `instances[{i}].uses` and \
                         `instances[{i}].reused_at` go together: uses 2 or more with the time \
                         of the last reuse, or neither"
                    ),
                ));
            }
        };
        instances.push(Instance {
            id: InstanceId::new(listed.id),
            state: listed.state.into(),
            launched_at: listed.created_at,
            template_hash: listed.template_hash,
            runner_names: listed.runner_names,
            reused,
        });
    }
    Ok(instances)
}

/// A `create` answer (exit 0); an empty id is an error.
pub(crate) fn created(
    op: &'static str,
    pool: &PoolId,
    stdout: &[u8],
    secrets: &[String],
) -> Result<CreateReply> {
    let reply: CreateReply = parse(op, "create", pool, stdout, secrets)?;
    if reply.id.is_empty() {
        return Err(Error::new(
            op,
            ErrorKind::Protocol,
            format!("create for pool {pool}: answer field `id` is empty"),
        ));
    }
    Ok(reply)
}

/// A `delete` answer (exit 0): `ok` must be true.
pub(crate) fn deleted(op: &'static str, pool: &PoolId, stdout: &[u8]) -> Result<()> {
    let reply: DeleteReply = parse(op, "delete", pool, stdout, &[])?;
    if !reply.ok {
        return Err(Error::new(
            op,
            ErrorKind::Protocol,
            format!(
                "delete for pool {pool}: answer field `ok` is false with exit 0 \
                 (exit non-zero to report a failure)"
            ),
        ));
    }
    Ok(())
}

/// A `probe` answer (exit 0): its message on one line.
pub(crate) fn probed(op: &'static str, pool: &PoolId, stdout: &[u8]) -> Result<String> {
    Ok(parse::<ProbeReply>(op, "probe", pool, stdout, &[])?
        .message
        .replace(['\n', '\r'], " "))
}

/// Parses an answer; errors name the field, with secrets cut out.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    op: &'static str,
    action: &str,
    pool: &PoolId,
    stdout: &[u8],
    secrets: &[String],
) -> Result<T> {
    protocol::parse(stdout).map_err(|message| {
        Error::new(
            op,
            ErrorKind::Protocol,
            redact(&format!("{action} for pool {pool}: {message}"), secrets),
        )
    })
}

/// `text` with every secret value replaced by `[redacted]`.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

/// Registrations as the protocol sends them: the runner names, the registrations (secrets
/// exposed: they go to the executable's stdin only) and the secret values (to cut out of
/// errors).
fn on_the_wire(runners: &[Registration]) -> (Vec<String>, Vec<RunnerRegistration>, Vec<String>) {
    let names = runners.iter().map(|r| r.runner_name.clone()).collect();
    let secrets = runners
        .iter()
        .flat_map(|r| r.credentials.secrets.values())
        .map(|s| s.expose_secret().to_owned())
        .collect();
    let registrations = runners
        .iter()
        .map(|r| RunnerRegistration {
            name: r.runner_name.clone(),
            runner_id: r.runner_id.as_ref().map(|id| id.as_str().to_owned()),
            vars: r.credentials.vars.clone(),
            secrets: r
                .credentials
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                .collect(),
        })
        .collect();
    (names, registrations, secrets)
}

/// The name of the machine for these runners: the base name they share (`rs-{pool}-{suffix}`,
/// slots add `-{n}`).
fn instance_name(runner_names: &[String]) -> String {
    match runner_names {
        [] => String::new(),
        [only] => only.clone(),
        [first, ..] => first
            .strip_suffix("-1")
            .map_or_else(|| first.clone(), str::to_owned),
    }
}

#[async_trait]
impl Backend for ExecBackend {
    fn kind(&self) -> &'static str {
        "exec"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        let mut out = HashMap::with_capacity(pools.len());
        let mut tasks = JoinSet::new();
        for pool in pools {
            if !self.inner.templates.contains_key(pool) {
                // Nothing of ours can be there.
                out.insert(pool.clone(), Vec::new());
                continue;
            }
            let inner = Arc::clone(&self.inner);
            let pool = pool.clone();
            tasks.spawn(async move {
                let listed = inner.list(&pool).await;
                (pool, listed)
            });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((pool, Ok(instances))) => {
                    out.insert(pool, instances);
                }
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(
                        Error::new("exec.list", ErrorKind::Transient, "list task failed")
                            .with_source(e),
                    );
                }
            }
        }
        match first_error {
            // A pool whose listing failed cannot be reported as empty (that would read as "no
            // machines" and launch more), so the batch fails.
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        const OP: &str = "exec.create";
        let LaunchRequest {
            pool,
            runners,
            template_hash,
        } = request;
        if runners.is_empty() {
            return Err(Error::new(
                OP,
                ErrorKind::Misconfigured,
                "a launch needs at least one runner",
            ));
        }
        let (runner_names, registrations, secrets) = on_the_wire(&runners);
        let name = instance_name(&runner_names);
        let action = Action::Create(Create {
            instance_name: name.clone(),
            runner_names: runner_names.clone(),
            template_hash: template_hash.clone(),
            runners: registrations,
        });
        let stdout = match self.inner.call(OP, &pool, action, &secrets).await? {
            Answer::Done(stdout) => stdout,
            Answer::NotFound => {
                return Err(Error::new(
                    OP,
                    ErrorKind::Misconfigured,
                    format!(
                        "create for pool {pool}: the executable answered exit 3 (not found): \
                         an image, type or network named in params is missing?"
                    ),
                ));
            }
        };
        let reply = created(OP, &pool, &stdout, &secrets)?;
        let instance = Instance {
            id: InstanceId::new(reply.id),
            state: reply.state.into(),
            launched_at: Utc::now(),
            template_hash,
            runner_names,
            reused: None,
        };
        info!(%pool, instance = %instance.id, name, "exec backend created an instance");
        locked(&self.inner.memory).created.insert(
            (pool, instance.id.as_str().to_owned()),
            (instance.clone(), Instant::now()),
        );
        Ok(instance)
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        const OP: &str = "exec.delete";
        let action = Action::Delete {
            instance_id: instance.as_str().to_owned(),
        };
        let key = (pool.clone(), instance.as_str().to_owned());
        match self.inner.call(OP, pool, action, &[]).await? {
            Answer::NotFound => {
                debug!(%pool, %instance, "delete: already gone");
                let mut memory = locked(&self.inner.memory);
                memory.created.remove(&key);
                memory.deleted.remove(&key);
            }
            Answer::Done(stdout) => {
                deleted(OP, pool, &stdout)?;
                info!(%pool, %instance, "exec backend deleted an instance");
                let mut memory = locked(&self.inner.memory);
                memory.created.remove(&key);
                memory.deleted.insert(key, Instant::now());
            }
        }
        Ok(())
    }

    async fn reuse(&self, request: ReuseRequest) -> Result<()> {
        const OP: &str = "exec.reuse";
        let ReuseRequest {
            pool,
            instance,
            runners,
            uses,
        } = request;
        let (runner_names, registrations, secrets) = on_the_wire(&runners);
        if runner_names.is_empty() {
            return Err(Error::new(
                OP,
                ErrorKind::Misconfigured,
                "a reuse needs at least one runner",
            ));
        }
        let action = Action::Reuse(Reuse {
            instance_id: instance.as_str().to_owned(),
            runner_names: runner_names.clone(),
            uses,
            runners: registrations,
        });
        let key = (pool.clone(), instance.as_str().to_owned());
        let stdout = match self.inner.call(OP, &pool, action, &secrets).await? {
            Answer::Done(stdout) => stdout,
            Answer::NotFound => {
                return Err(Error::new(
                    OP,
                    ErrorKind::NotFound,
                    format!("reuse for pool {pool}: instance {instance} is gone (exit 3)"),
                ));
            }
        };
        let reply: DeleteReply = parse(OP, "reuse", &pool, &stdout, &secrets)?;
        if !reply.ok {
            return Err(Error::new(
                OP,
                ErrorKind::Protocol,
                format!(
                    "reuse for pool {pool}: answer field `ok` is false with exit 0 (exit \
                     non-zero to report a failure)"
                ),
            ));
        }
        // Listed with its new runners from now on, even while the listing lags.
        let reused = Reused {
            uses,
            at: Utc::now(),
        };
        info!(%pool, %instance, uses, "exec backend reused an instance");
        locked(&self.inner.memory)
            .reused
            .insert(key, (runner_names, reused, Instant::now()));
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        const OP: &str = "exec.probe";
        let mut pools: Vec<&PoolId> = self.inner.templates.keys().collect();
        pools.sort();
        let mut lines = Vec::with_capacity(pools.len());
        for pool in pools {
            let message = match self.inner.call(OP, pool, Action::Probe, &[]).await? {
                Answer::Done(stdout) => probed(OP, pool, &stdout)?,
                Answer::NotFound => {
                    return Err(Error::new(
                        OP,
                        ErrorKind::Misconfigured,
                        format!("probe for pool {pool}: exit 3 (not found)"),
                    ));
                }
            };
            lines.push(format!("pool {pool}: {message}"));
        }
        Ok(format!(
            "exec {}: {}",
            self.inner.config.command.first().map_or("", String::as_str),
            if lines.is_empty() {
                "no pools".to_owned()
            } else {
                lines.join("; ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn backend(grace: Duration) -> Inner {
        let mut config = Config::new(vec!["true".into()]);
        config.listing_grace = grace;
        Inner {
            config,
            templates: HashMap::from([(PoolId::new("a"), PoolTemplate::default())]),
            memory: Mutex::new(Memory::default()),
        }
    }

    fn instance(id: &str, state: InstanceState) -> Instance {
        Instance {
            id: InstanceId::new(id),
            state,
            launched_at: Utc::now(),
            template_hash: "h".into(),
            runner_names: vec![format!("rs-a-{id}")],
            reused: None,
        }
    }

    #[test]
    fn created_instances_are_listed_until_the_listing_shows_them_or_the_grace_ends() {
        let inner = backend(Duration::from_secs(60));
        let pool = PoolId::new("a");
        let t0 = Instant::now();
        locked(&inner.memory).created.insert(
            (pool.clone(), "1".into()),
            (instance("1", InstanceState::Booting), t0),
        );
        let merged = inner.merge(&pool, Vec::new(), t0);
        assert_eq!(merged.len(), 1, "lagging listing: still there");
        assert_eq!(merged[0].state, InstanceState::Booting);
        // Other pools' listings do not touch it.
        assert!(inner.merge(&PoolId::new("b"), Vec::new(), t0).is_empty());
        let merged = inner.merge(&pool, vec![instance("1", InstanceState::Running)], t0);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].state, InstanceState::Running, "the listing wins");
        assert!(locked(&inner.memory).created.is_empty(), "caught up");

        locked(&inner.memory).created.insert(
            (pool.clone(), "2".into()),
            (instance("2", InstanceState::Booting), t0),
        );
        let later = t0 + Duration::from_secs(61);
        assert!(
            inner.merge(&pool, Vec::new(), later).is_empty(),
            "past the grace"
        );
    }

    #[test]
    fn deleted_instances_still_listed_are_stopping() {
        let inner = backend(Duration::from_secs(60));
        let pool = PoolId::new("a");
        let t0 = Instant::now();
        locked(&inner.memory)
            .deleted
            .insert((pool.clone(), "1".into()), t0);
        let merged = inner.merge(&pool, vec![instance("1", InstanceState::Running)], t0);
        assert_eq!(merged[0].state, InstanceState::Stopping);
        assert!(inner.merge(&pool, Vec::new(), t0).is_empty());
        assert!(locked(&inner.memory).deleted.is_empty(), "gone: forgotten");
    }

    #[test]
    fn instance_name_is_the_shared_base_of_the_runner_names() {
        assert_eq!(instance_name(&["rs-a-x".into()]), "rs-a-x");
        assert_eq!(
            instance_name(&["rs-a-x-1".into(), "rs-a-x-2".into()]),
            "rs-a-x"
        );
    }

    #[test]
    fn redact_cuts_every_secret() {
        assert_eq!(
            redact(
                "token=abc123 again abc123",
                &["abc123".into(), String::new()]
            ),
            "token=[redacted] again [redacted]"
        );
    }
}
