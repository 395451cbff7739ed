//! [`CircleciProvider`]: the [`Provider`] implementation. Demand and runners per resource
//! class, registration with the pool's resource-class token, removal that never claims a
//! connected runner is gone, the plan's concurrency, and webhooks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runscale_core::adapter_type::Validate as _;
use runscale_core::{
    Credentials, Demand, Error, ErrorKind, PoolId, Provider, ProviderView, Registration, Result,
    Runner, RunnerId, RunnerState, WaitingJob, WebhookRequest, naming,
};
use secrecy::SecretString;

use super::client::{ApiRunner, Client};
use super::config::{AgentEnv, Config, PoolSelector, RunnerMode, RunnerNames};
use super::webhook::{self, Seen};
use crate::http::{self, lock};

/// One pool as the provider keeps it.
struct Pool {
    id: PoolId,
    resource_class: String,
    token: Option<SecretString>,
    names: RunnerNames,
    mode: RunnerMode,
    idle_timeout: Option<Duration>,
    projects: Vec<String>,
    env: AgentEnv,
}

/// What one resource class looked like at one poll.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    unclaimed: u32,
    running: u32,
}

/// The CircleCI provider of one organisation.
///
/// CircleCI does not say which runner is busy and has no call that removes a machine
/// runner. So: `running_runner_tasks` of a class marks that many of its runners busy (those
/// used most recently, connected first); [`Provider::remove`] succeeds only for a runner that is
/// no longer connected (gone from the listing, or silent for `disconnect_grace` while fewer
/// tasks run than runners are connected) and answers [`ErrorKind::Busy`] otherwise. runscale
/// therefore never terminates the instance of a connected runner: runners leave by
/// themselves (single-task exit, idle timeout) and their instances are reaped afterwards.
pub struct CircleciProvider {
    client: Client,
    api_url: String,
    pools: Vec<Pool>,
    max_concurrency: Option<u32>,
    disconnect_grace: Duration,
    webhook_secret: Option<SecretString>,
    seen: Mutex<Seen>,
    counts: Mutex<HashMap<PoolId, Counts>>,
    last_good: Mutex<HashMap<PoolId, ProviderView>>,
}

impl std::fmt::Debug for CircleciProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircleciProvider")
            .field("client", &self.client)
            .field(
                "resource_classes",
                &self
                    .pools
                    .iter()
                    .map(|p| &p.resource_class)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Construction errors: `Misconfigured` under `circleci.config`.
const SETUP: http::Setup = http::Setup {
    op: "circleci.config",
};

/// `5m`-style text of a duration, as the runner's configuration takes it.
fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl CircleciProvider {
    /// Builds the provider: validates `config` and every selector (one pool per resource
    /// class), reads the secrets (API token, webhook secret, resource-class tokens) and builds
    /// the HTTP client. Makes no request. Errors are [`ErrorKind::Misconfigured`] and name the
    /// field.
    pub fn new(config: Config, pools: Vec<(PoolId, PoolSelector)>) -> Result<Self> {
        SETUP.checked("", config.validate())?;
        let mut classes = HashMap::new();
        let built = SETUP.pools(pools, PoolSelector::validate, |id, sel| {
            if let Some(other) = classes.insert(sel.resource_class.clone(), id.clone()) {
                return Err(SETUP.misconfigured(format!(
                    "pool {id}: resource_class: {} is already the class of pool {other} (CircleCI \
                     counts tasks per class, so two pools would both launch for the same task)",
                    sel.resource_class
                )));
            }
            let token = SETUP.optional_secret(&format!("pool {id}: token"), sel.token.as_ref())?;
            Ok(Pool {
                id,
                resource_class: sel.resource_class,
                token,
                names: sel.runner_names,
                mode: sel.runner_mode,
                idle_timeout: sel.runner_idle_timeout,
                projects: sel
                    .projects
                    .iter()
                    .map(|p| webhook::canonical_slug(p).unwrap_or_else(|_| p.to_ascii_lowercase()))
                    .collect(),
                env: sel.agent_env,
            })
        })?;
        let token = SETUP.secret("token", &config.token)?;
        let webhook_secret =
            SETUP.optional_secret("webhook_secret", config.webhook_secret.as_ref())?;
        let client = Client::new(
            &config.api_url,
            config.api_version,
            token,
            config.request_timeout,
            config.connect_timeout,
        )?;
        Ok(CircleciProvider {
            client,
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            pools: built,
            max_concurrency: config.max_concurrency,
            disconnect_grace: config.disconnect_grace,
            webhook_secret,
            seen: Mutex::new(Seen::default()),
            counts: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
        })
    }

    fn pool(&self, op: &'static str, id: &PoolId) -> Result<&Pool> {
        http::bound_pool(self.pools.iter().find(|p| p.id == *id), op, id, "CircleCI")
    }

    /// Counts and the owned runners of one pool.
    async fn fetch(&self, op: &'static str, pool: &Pool) -> Result<(Counts, Vec<ApiRunner>)> {
        let class = pool.resource_class.as_str();
        let (unclaimed, running, runners) = tokio::join!(
            self.client.unclaimed(op, class),
            self.client.running(op, class),
            self.client.runners(op, class),
        );
        let runners = runners?
            .into_iter()
            .filter(|r| match pool.names {
                RunnerNames::Runscale => naming::owned_by(pool.id.as_str(), &r.name),
                RunnerNames::Any => true,
            })
            .collect();
        Ok((
            Counts {
                unclaimed: unclaimed?,
                running: running?,
            },
            runners,
        ))
    }

    fn connected(&self, r: &ApiRunner, now: DateTime<Utc>) -> bool {
        let grace =
            chrono::Duration::from_std(self.disconnect_grace).unwrap_or(chrono::Duration::MAX);
        r.last_connected.is_some_and(|t| t + grace > now)
    }

    /// Runner states without a busy flag: the `running` most recently used runners are busy
    /// (connected ones first, so a silent runner is taken for busy only when more tasks run
    /// than runners are connected); other connected runners are idle, the rest offline.
    fn runners_view(
        &self,
        mut listed: Vec<ApiRunner>,
        running: u32,
        now: DateTime<Utc>,
    ) -> Vec<Runner> {
        listed.sort_by(|a, b| {
            self.connected(b, now)
                .cmp(&self.connected(a, now))
                .then(b.last_used.cmp(&a.last_used))
                .then(b.last_connected.cmp(&a.last_connected))
                .then(a.name.cmp(&b.name))
        });
        listed
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let state = if (i as u64) < u64::from(running) {
                    RunnerState::Busy
                } else if self.connected(&r, now) {
                    RunnerState::Idle
                } else {
                    RunnerState::Offline
                };
                Runner {
                    id: RunnerId::new(&r.name),
                    name: r.name,
                    state,
                    draining: false,
                    last_busy: r.last_used,
                }
            })
            .collect()
    }

    /// How many waiting tasks each pool may count, within `max_concurrency`: the running
    /// tasks of every pool come first, then waiting tasks in configuration order. Pools not
    /// polled this time count with their last known numbers.
    fn capped_waiting(&self, fresh: &HashMap<PoolId, Counts>) -> HashMap<PoolId, u32> {
        let mut known = lock(&self.counts);
        for (p, c) in fresh {
            known.insert(p.clone(), *c);
        }
        let Some(limit) = self.max_concurrency else {
            return fresh
                .iter()
                .map(|(p, c)| (p.clone(), c.unclaimed))
                .collect();
        };
        let running: u32 = known.values().map(|c| c.running).sum();
        let mut budget = limit.saturating_sub(running);
        let mut out = HashMap::new();
        for pool in &self.pools {
            let Some(c) = known.get(&pool.id) else {
                continue;
            };
            let take = c.unclaimed.min(budget);
            budget -= take;
            if fresh.contains_key(&pool.id) {
                out.insert(pool.id.clone(), take);
            }
        }
        out
    }
}

#[async_trait]
impl Provider for CircleciProvider {
    fn kind(&self) -> &'static str {
        "circleci"
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let op = "circleci.observe";
        let now = Utc::now();
        let fetches = pools.iter().map(|id| async move {
            let result = match self.pool(op, id) {
                Ok(pool) => self.fetch(op, pool).await,
                Err(e) => Err(e),
            };
            (id.clone(), result)
        });
        let results = futures::future::join_all(fetches).await;
        let fresh: HashMap<PoolId, Counts> = results
            .iter()
            .filter_map(|(id, r)| r.as_ref().ok().map(|(c, _)| (id.clone(), *c)))
            .collect();
        let waiting = self.capped_waiting(&fresh);
        let mut out = HashMap::with_capacity(results.len());
        for (id, result) in results {
            let view = match result {
                Ok((counts, listed)) => {
                    let class = self
                        .pools
                        .iter()
                        .find(|p| p.id == id)
                        .map(|p| p.resource_class.as_str())
                        .unwrap_or_default();
                    let n = waiting.get(&id).copied().unwrap_or(0);
                    let view = ProviderView {
                        demand: Demand {
                            waiting: (0..n)
                                .map(|i| WaitingJob {
                                    id: format!("{class}#{i}"),
                                    queued_at: now,
                                })
                                .collect(),
                            running: counts.running,
                        },
                        runners: self.runners_view(listed, counts.running, now),
                        stale: false,
                    };
                    lock(&self.last_good).insert(id.clone(), view.clone());
                    Ok(view)
                }
                Err(e) if matches!(e.kind(), ErrorKind::RateLimited { .. }) => {
                    match lock(&self.last_good).get(&id) {
                        Some(v) => Ok(ProviderView {
                            stale: true,
                            ..v.clone()
                        }),
                        None => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            out.insert(id, view);
        }
        out
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let pool = self.pool("circleci.register", pool)?;
        let [token, name, url, mode, idle] = pool.env.names();
        let mut credentials = Credentials::default();
        credentials.vars.insert(name.into(), runner_name.to_owned());
        credentials.vars.insert(url.into(), self.api_url.clone());
        credentials
            .vars
            .insert(mode.into(), pool.mode.as_str().into());
        if let Some(d) = pool.idle_timeout {
            credentials.vars.insert(idle.into(), duration_text(d));
        }
        if let Some(t) = &pool.token {
            credentials.secrets.insert(token.into(), t.clone());
        }
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: None,
            credentials,
        })
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "circleci.remove";
        let pool = self.pool(op, pool)?;
        let class = pool.resource_class.as_str();
        let listed = self.client.runners(op, class).await?;
        let Some(me) = listed.iter().find(|r| r.name == runner.as_str()) else {
            return Ok(());
        };
        let now = Utc::now();
        if self.connected(me, now) {
            return Err(Error::new(
                op,
                ErrorKind::Busy,
                format!(
                    "runner {runner} is connected; CircleCI cannot say whether it runs a task, \
                     so it stays until it exits by itself"
                ),
            ));
        }
        let connected = listed.iter().filter(|r| self.connected(r, now)).count() as u64;
        let running = u64::from(self.client.running(op, class).await?);
        if running > connected {
            return Err(Error::new(
                op,
                ErrorKind::Busy,
                format!(
                    "runner {runner} is silent, but {running} tasks run on {connected} connected \
                     runners of {class}: it may hold one"
                ),
            ));
        }
        Ok(())
    }

    /// Unclaimed tasks first, then running ones, one after the other: a task claimed between
    /// the two reads shows as running in the second, so no claim slips through.
    async fn confirm_quiet(&self, pool: &PoolId) -> Result<()> {
        let op = "circleci.confirm_quiet";
        let pool = self.pool(op, pool)?;
        let class = pool.resource_class.as_str();
        let unclaimed = self.client.unclaimed(op, class).await?;
        let running = self.client.running(op, class).await?;
        if unclaimed > 0 || running > 0 {
            return Err(Error::new(
                op,
                ErrorKind::Busy,
                format!(
                    "{class} has {unclaimed} unclaimed and {running} running tasks; any of its \
                     runners may hold or take one"
                ),
            ));
        }
        Ok(())
    }

    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let op = "circleci.webhook";
        let Some(secret) = &self.webhook_secret else {
            return Err(SETUP
                .misconfigured("webhook_secret is not set: webhooks are not accepted".to_owned()));
        };
        if request.body.len() > webhook::MAX_BODY {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                "body larger than 1 MiB",
            ));
        }
        webhook::verify(
            secrecy::ExposeSecret::expose_secret(secret).as_bytes(),
            &request.body,
            request.header("circleci-signature"),
        )
        .map_err(|m| Error::new(op, ErrorKind::Misconfigured, m))?;
        let event: webhook::Event = serde_json::from_slice(&request.body).map_err(|e| {
            Error::new(
                op,
                ErrorKind::Protocol,
                format!("not a CircleCI event ({:?} error)", e.classify()),
            )
        })?;
        if !lock(&self.seen).first_time(&event.id) {
            return Ok(Vec::new());
        }
        if event.kind != "job-completed" && event.kind != "workflow-completed" {
            return Ok(Vec::new());
        }
        // Compared in one spelling: the webhook's `github/…` matches a configured `gh/…`.
        let slug = event
            .project
            .and_then(|p| p.slug)
            .map(|s| webhook::canonical_slug(&s).unwrap_or_else(|_| s.to_ascii_lowercase()));
        Ok(self
            .pools
            .iter()
            .filter(|p| {
                p.projects.is_empty()
                    || slug
                        .as_deref()
                        .is_some_and(|s| p.projects.iter().any(|q| q == s))
            })
            .map(|p| p.id.clone())
            .collect())
    }

    async fn probe(&self) -> Result<String> {
        let op = "circleci.probe";
        for pool in &self.pools {
            self.client.unclaimed(op, &pool.resource_class).await?;
            self.client.runners(op, &pool.resource_class).await?;
        }
        Ok(format!(
            "read unclaimed tasks and runners of {} resource class(es) at {}",
            self.pools.len(),
            self.api_url
        ))
    }
}
