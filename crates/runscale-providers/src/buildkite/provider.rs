//! [`BuildkiteProvider`]: the [`Provider`] implementation. Demand per queue from the agent
//! metrics API (or a queue's scheduled jobs from the Stacks API), runners from the REST agents
//! listing, registration with the agent token (and a reserved job), drain and removal by
//! graceful stop, and webhooks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use runscale_core::adapter_type::Validate as _;
use runscale_core::{
    Credentials, Demand, Error, ErrorKind, JobHistory, PoolId, Provider, ProviderView,
    Registration, Result, Runner, RunnerId, RunnerState, Timestamp, WaitingJob, WebhookRequest,
    naming,
};
use secrecy::{ExposeSecret, SecretString};

use super::client::{ApiAgent, Client, Metrics, RestBudgets, Scheduled, Stop};
use super::config::{Config, PoolSelector, stack_key};
use super::history;
use super::reservations::{Held, Reservations};
use super::webhook::{self, Proof, Recent};
use crate::http::{self, lock};

/// Agent variables runscale hands every agent (`buildkite-agent start` reads them).
pub(crate) const TOKEN_VAR: &str = "BUILDKITE_AGENT_TOKEN";
const NAME_VAR: &str = "BUILDKITE_AGENT_NAME";
const TAGS_VAR: &str = "BUILDKITE_AGENT_TAGS";
const ENDPOINT_VAR: &str = "BUILDKITE_AGENT_ENDPOINT";
const AFTER_JOB_VAR: &str = "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB";
const AFTER_IDLE_VAR: &str = "BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT";
const ACQUIRE_JOB_VAR: &str = "BUILDKITE_AGENT_ACQUIRE_JOB";
/// Jobs tried, one by one, when reserving a job for a new agent.
const RESERVE_TRIES: usize = 5;

/// Poll interval assumed after a 429 without `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// First pause while waiting for a stopped agent to disconnect (doubles each time).
const FIRST_STOP_CHECK: Duration = Duration::from_millis(250);

/// One pool as the provider keeps it.
struct Pool {
    id: PoolId,
    queue: String,
    tags: Vec<String>,
    disconnect_after_job: bool,
    idle_timeout: Option<Duration>,
    /// With `reserve_jobs`: the stack key of this pool.
    stack: Option<String>,
    /// The id of the queue's cluster queue: the agents listing is filtered by it.
    cluster_queue: Option<String>,
}

impl Pool {
    /// Whether this pool's demand counts a job with these agent query rules: the metrics API
    /// counts every job of the queue; with `reserve_jobs`, the jobs whose rules the pool's
    /// tags satisfy.
    fn counts(&self, rules: &[String]) -> bool {
        if self.stack.is_some() {
            webhook::rules_match(rules, &self.tags)
        } else {
            webhook::rules_queue(rules) == self.queue
        }
    }
}

/// The last metrics read, and when the next read is allowed.
#[derive(Default)]
struct MetricsCache {
    metrics: Option<Metrics>,
    /// Not before this (the poll duration Buildkite asked for).
    next_poll: Option<Instant>,
    /// Throttled until then.
    throttled_until: Option<Instant>,
}

/// The Buildkite provider of one organisation (or cluster).
///
/// Demand comes from the agent metrics API (scheduled and running jobs per queue), polled
/// no more often than Buildkite's `Buildkite-Agent-Metrics-Poll-Duration`; runners are the
/// connected agents runscale named for the pool, busy when they run a job. A runner is
/// removed by a graceful stop (`force: false`), and only confirmed removed once Buildkite
/// says the agent disconnected; while it runs a job the answer is [`ErrorKind::Busy`].
pub struct BuildkiteProvider {
    client: Client,
    org: String,
    agent_endpoint: String,
    agent_token: SecretString,
    pools: Vec<Pool>,
    webhook_token: Option<SecretString>,
    stop_wait: Duration,
    reservation_expiry: Duration,
    /// Stacks registered by this process.
    stacks: Mutex<HashSet<String>>,
    /// Jobs this process reserved for its agents, and those given back.
    reservations: Mutex<Reservations>,
    recent: Mutex<Recent>,
    metrics: Mutex<MetricsCache>,
    last_good: Mutex<HashMap<PoolId, ProviderView>>,
}

impl std::fmt::Debug for BuildkiteProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildkiteProvider")
            .field("org", &self.org)
            .field("client", &self.client)
            .field(
                "queues",
                &self.pools.iter().map(|p| &p.queue).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Construction errors: `Misconfigured` under `buildkite.config`.
const SETUP: http::Setup = http::Setup {
    op: "buildkite.config",
};

fn is_rate_limited(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::RateLimited { .. })
}

impl BuildkiteProvider {
    /// Builds the provider: validates `config` and every selector (one pool per queue), reads
    /// the secrets (API token, agent token, webhook token) and builds the HTTP client. Makes
    /// no request. Errors are [`ErrorKind::Misconfigured`] and name the field.
    pub fn new(config: Config, pools: Vec<(PoolId, PoolSelector)>) -> Result<Self> {
        SETUP.checked("", config.validate())?;
        let mut queues = HashMap::new();
        let mut stacks: HashMap<String, String> = HashMap::new();
        let built = SETUP.pools(pools, PoolSelector::validate, |id, sel| {
            if let Some(other) = queues.insert(sel.queue.clone(), id.clone()) {
                return Err(SETUP.misconfigured(format!(
                    "pool {id}: queue: {} is already the queue of pool {other} (the metrics API \
                     counts jobs per queue, so both pools would launch for the same job)",
                    sel.queue
                )));
            }
            let stack = sel
                .reserve_jobs
                .then(|| stack_key(&config.stack_key, &sel.queue));
            if let Some(key) = &stack
                && let Some(other) = stacks.insert(key.clone(), sel.queue.clone())
            {
                return Err(SETUP.misconfigured(format!(
                    "pool {id}: queues {other:?} and {:?} would share the stack key {key}: \
                     rename one",
                    sel.queue
                )));
            }
            Ok(Pool {
                stack,
                tags: sel.agent_tags(),
                cluster_queue: sel.cluster_queue_id,
                id,
                queue: sel.queue,
                disconnect_after_job: sel.disconnect_after_job,
                idle_timeout: sel.disconnect_after_idle_timeout,
            })
        })?;
        let api_token = SETUP.secret("api_token", &config.api_token)?;
        let agent_token = SETUP.secret("agent_token", &config.agent_token)?;
        let webhook_token =
            SETUP.optional_secret("webhook_token", config.webhook_token.as_ref())?;
        let client = Client::new(
            &config.api_url,
            &config.agent_endpoint,
            api_token,
            agent_token.clone(),
            RestBudgets {
                org: config.rest_requests_per_minute,
                user: config.rest_requests_per_minute_per_user,
            },
            config.request_timeout,
            config.connect_timeout,
        )?;
        Ok(BuildkiteProvider {
            client,
            org: config.org,
            agent_endpoint: config.agent_endpoint.trim_end_matches('/').to_owned(),
            agent_token,
            pools: built,
            webhook_token,
            stop_wait: config.stop_wait,
            reservation_expiry: config.reservation_expiry,
            stacks: Mutex::new(HashSet::new()),
            reservations: Mutex::new(Reservations::default()),
            recent: Mutex::new(Recent::default()),
            metrics: Mutex::new(MetricsCache::default()),
            last_good: Mutex::new(HashMap::new()),
        })
    }

    fn pool(&self, op: &'static str, id: &PoolId) -> Result<&Pool> {
        http::bound_pool(self.pools.iter().find(|p| p.id == *id), op, id, "Buildkite")
    }

    /// The metrics to use now and whether they are stale: read again only once the poll
    /// duration has passed and no throttling is in force; throttled, the last good read is
    /// returned as stale.
    async fn current_metrics(&self, op: &'static str) -> Result<(Metrics, bool)> {
        let now = Instant::now();
        {
            let cache = lock(&self.metrics);
            if cache.throttled_until.is_some_and(|t| t > now) {
                return match &cache.metrics {
                    Some(m) => Ok((m.clone(), true)),
                    None => Err(Error::new(
                        op,
                        ErrorKind::RateLimited {
                            retry_after: cache.throttled_until.map(|t| t - now),
                        },
                        "agent metrics throttled",
                    )),
                };
            }
            if let (Some(m), Some(next)) = (&cache.metrics, cache.next_poll)
                && next > now
            {
                return Ok((m.clone(), false));
            }
        }
        match self.client.metrics(op, &self.org).await {
            Ok(m) => {
                let mut cache = lock(&self.metrics);
                cache.next_poll = m.poll_duration.map(|d| Instant::now() + d);
                cache.throttled_until = None;
                cache.metrics = Some(m.clone());
                Ok((m, false))
            }
            Err(e) => {
                let ErrorKind::RateLimited { retry_after } = e.kind() else {
                    return Err(e);
                };
                let mut cache = lock(&self.metrics);
                cache.throttled_until =
                    Some(Instant::now() + retry_after.unwrap_or(DEFAULT_BACKOFF));
                match &cache.metrics {
                    Some(m) => Ok((m.clone(), true)),
                    None => Err(e),
                }
            }
        }
    }

    /// The pool's scheduled, unreserved jobs its tags can run, and whether its queue's
    /// dispatch is paused (registering its stack on first use).
    async fn stack_jobs(&self, op: &'static str, pool: &Pool, stack: &str) -> Result<Scheduled> {
        if !lock(&self.stacks).contains(stack) {
            self.client.register_stack(op, stack, &pool.queue).await?;
            lock(&self.stacks).insert(stack.to_owned());
        }
        let mut scheduled = self.client.scheduled_jobs(op, stack, &pool.queue).await?;
        scheduled
            .jobs
            .retain(|j| webhook::rules_match(&j.agent_query_rules, &pool.tags));
        Ok(scheduled)
    }

    /// Scheduled jobs per pool with `reserve_jobs` (others are absent).
    async fn all_stack_jobs(
        &self,
        op: &'static str,
        pools: &[PoolId],
    ) -> HashMap<PoolId, Result<Scheduled>> {
        let fetches = self
            .pools
            .iter()
            .filter(|p| pools.contains(&p.id))
            .filter_map(|p| p.stack.as_deref().map(|s| (p, s)))
            .map(|(p, s)| async move { (p.id.clone(), self.stack_jobs(op, p, s).await) });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect()
    }

    /// The agents listings the asked pools need, by cluster queue: one per cluster queue when
    /// every pool names its own, else the whole organisation's (key `None`), which serves all.
    async fn listings(
        &self,
        op: &'static str,
        pools: &[PoolId],
    ) -> HashMap<Option<String>, Result<Vec<ApiAgent>>> {
        let asked: Vec<&Pool> = self
            .pools
            .iter()
            .filter(|p| pools.contains(&p.id))
            .collect();
        let keys: BTreeSet<Option<String>> = if asked.iter().any(|p| p.cluster_queue.is_none()) {
            BTreeSet::from([None])
        } else {
            asked.iter().map(|p| p.cluster_queue.clone()).collect()
        };
        let fetches = keys.into_iter().map(|k| async move {
            let listed = self.client.agents(op, &self.org, k.as_deref()).await;
            (k, listed)
        });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect()
    }

    /// Reserves a job for a new agent of the pool: none while the queue's dispatch is paused;
    /// a job given back by a dead instance's registration first (still reserved by the
    /// stack: reserving it again extends the reservation), then the queue's scheduled jobs.
    async fn reserve_one(&self, op: &'static str, pool: &Pool, stack: &str) -> Result<Held> {
        let scheduled = self.stack_jobs(op, pool, stack).await?;
        if scheduled.dispatch_paused {
            return Err(Error::new(
                op,
                ErrorKind::InsufficientCapacity,
                format!("the dispatch of queue {} is paused", pool.queue),
            ));
        }
        let returned = lock(&self.reservations).returned(stack, Instant::now());
        let candidates = returned
            .iter()
            .map(|j| (j.as_str(), true))
            .chain(scheduled.jobs.iter().map(|j| (j.id.as_str(), false)));
        let mut tried = 0;
        for (job, was_returned) in candidates {
            if tried == RESERVE_TRIES {
                break;
            }
            let until = Instant::now() + self.reservation_expiry;
            // Claimed before the request, so a concurrent registration skips it.
            if !lock(&self.reservations).claim(job, until, Instant::now()) {
                continue;
            }
            tried += 1;
            let ids = [job.to_owned()];
            match self
                .client
                .reserve(op, stack, &ids, self.reservation_expiry)
                .await
            {
                Ok(reserved) if reserved.iter().any(|r| r == job) => {
                    return Ok(Held {
                        stack: stack.to_owned(),
                        job: job.to_owned(),
                        until,
                    });
                }
                Ok(_) => {
                    let mut r = lock(&self.reservations);
                    r.unclaim(job);
                    if was_returned {
                        r.forget_returned(stack, job);
                    }
                }
                Err(e) => {
                    lock(&self.reservations).unclaim(job);
                    return Err(e);
                }
            }
        }
        Err(Error::new(
            op,
            ErrorKind::InsufficientCapacity,
            format!("no scheduled job of queue {} left to reserve", pool.queue),
        ))
    }

    fn runner(&self, a: &ApiAgent) -> Runner {
        let busy = a.job.as_ref().is_some_and(|j| !j.is_null());
        let state = if busy {
            RunnerState::Busy
        } else if a.is_connected() {
            RunnerState::Idle
        } else {
            RunnerState::Offline
        };
        Runner {
            id: RunnerId::new(&a.id),
            name: a.name.clone(),
            state,
            draining: a.connection_state == "stopping",
            last_busy: a.last_job_finished_at,
        }
    }

    fn view(&self, pool: &Pool, metrics: &Metrics, agents: &[ApiAgent]) -> ProviderView {
        let counts = metrics.queues.get(&pool.queue).copied().unwrap_or_default();
        let now = Utc::now();
        ProviderView {
            demand: Demand {
                waiting: (0..counts.scheduled)
                    .map(|i| WaitingJob {
                        id: format!("{}#{i}", pool.queue),
                        queued_at: now,
                    })
                    .collect(),
                running: counts.running,
            },
            runners: agents
                .iter()
                .filter(|a| a.is_connected() && naming::owned_by(pool.id.as_str(), &a.name))
                .map(|a| self.runner(a))
                .collect(),
            stale: false,
        }
    }

    /// Waits up to `stop_wait` for a stopped agent to disconnect: `Ok` once gone, busy if it
    /// runs a job or is still connected.
    async fn wait_disconnected(&self, op: &'static str, id: &RunnerId) -> Result<()> {
        let deadline = Instant::now() + self.stop_wait;
        let mut pause = FIRST_STOP_CHECK;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    op,
                    ErrorKind::Busy,
                    format!("agent {id} was asked to stop and has not disconnected yet"),
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause *= 2;
            match self.client.agent(op, &self.org, id.as_str()).await? {
                None => return Ok(()),
                Some(a) if !a.is_connected() => return Ok(()),
                Some(a) if a.job.as_ref().is_some_and(|j| !j.is_null()) => {
                    return Err(busy(op, id));
                }
                Some(_) => {}
            }
        }
    }

    /// A stop request was refused (Buildkite answers 400 `Can only stop connected agents`):
    /// what the agent's state says now decides. Gone or not connected: removed. Running a job
    /// or still connected: busy, so the instance stays and the next pass asks again; never an
    /// error that backs the pool off.
    async fn after_refused_stop(
        &self,
        op: &'static str,
        runner: &RunnerId,
        status: reqwest::StatusCode,
    ) -> Result<()> {
        match self.client.agent(op, &self.org, runner.as_str()).await? {
            None => Ok(()),
            Some(a) if !a.is_connected() => Ok(()),
            Some(a) if a.job.as_ref().is_some_and(|j| !j.is_null()) => Err(busy(op, runner)),
            Some(a) if a.connection_state == "stopping" => self.wait_disconnected(op, runner).await,
            Some(_) => Err(Error::new(
                op,
                ErrorKind::Busy,
                format!(
                    "Buildkite refused to stop agent {runner} (HTTP {status}) yet lists it \
                     connected; it stays until the next pass"
                ),
            )),
        }
    }
}

fn busy(op: &'static str, id: &RunnerId) -> Error {
    Error::new(
        op,
        ErrorKind::Busy,
        format!("agent {id} is running a job; it stays until the job is done"),
    )
}

#[async_trait]
impl Provider for BuildkiteProvider {
    fn kind(&self) -> &'static str {
        "buildkite"
    }

    /// The organisation's builds of the last `since` (see `history`), each command job
    /// counted for the first pool whose demand counts it.
    async fn job_history(
        &self,
        pools: &[PoolId],
        since: Timestamp,
    ) -> Result<Option<HashMap<PoolId, JobHistory>>> {
        let op = "buildkite.job_history";
        let read = history::read(&self.client, op, &self.org, since).await?;
        let mut out = JobHistory::for_pools(pools, read.complete_from);
        for job in read.builds.iter().flat_map(|b| &b.jobs) {
            let Some(past) = history::past_job(job).filter(|j| j.queued_at >= since) else {
                continue;
            };
            let pool = self.pools.iter().find(|p| p.counts(&job.agent_query_rules));
            if let Some(h) = pool.and_then(|p| out.get_mut(&p.id)) {
                h.jobs.push(past);
            }
        }
        Ok(Some(out))
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let op = "buildkite.observe";
        let (metrics, listings, mut jobs) = tokio::join!(
            self.current_metrics(op),
            self.listings(op, pools),
            self.all_stack_jobs(op, pools),
        );
        let mut out = HashMap::with_capacity(pools.len());
        for id in pools {
            let result = self.pool(op, id).and_then(|pool| {
                let (m, metrics_stale) = metrics.as_ref().map_err(Clone::clone)?;
                let listed = listings
                    .get(&pool.cluster_queue)
                    .or_else(|| listings.get(&None))
                    .ok_or_else(|| Error::new(op, ErrorKind::Protocol, "no agents listing"))?;
                match listed {
                    Ok(agents) => {
                        let mut view = self.view(pool, m, agents);
                        if *metrics_stale {
                            view.stale = true;
                        } else {
                            lock(&self.last_good).insert(id.clone(), view.clone());
                        }
                        Ok(view)
                    }
                    // Throttled: the last runners seen, with the demand just read.
                    Err(e) if is_rate_limited(e) => match lock(&self.last_good).get(id) {
                        Some(last) => {
                            let fresh = self.view(pool, m, &[]);
                            Ok(ProviderView {
                                demand: fresh.demand,
                                runners: last.runners.clone(),
                                stale: true,
                            })
                        }
                        None => Err(e.clone()),
                    },
                    // Anything else fails the observation: an unread agent must not look gone.
                    Err(e) => Err(e.clone()),
                }
            });
            // One agent per job: the jobs themselves are the demand (none while the queue's
            // dispatch is paused), with the jobs given back by dead instances, still ours.
            let result = match (result, jobs.remove(id)) {
                (Ok(mut view), Some(Ok(scheduled))) => {
                    let now = Utc::now();
                    view.demand.waiting = if scheduled.dispatch_paused {
                        Vec::new()
                    } else {
                        let returned = self
                            .pool(op, id)
                            .ok()
                            .and_then(|p| p.stack.as_deref())
                            .map(|stack| lock(&self.reservations).returned(stack, Instant::now()))
                            .unwrap_or_default();
                        let listed: HashSet<&str> =
                            scheduled.jobs.iter().map(|j| j.id.as_str()).collect();
                        let extra: Vec<String> = returned
                            .into_iter()
                            .filter(|j| !listed.contains(j.as_str()))
                            .collect();
                        scheduled
                            .jobs
                            .into_iter()
                            .map(|j| j.id)
                            .chain(extra)
                            .map(|id| WaitingJob { id, queued_at: now })
                            .collect()
                    };
                    Ok(view)
                }
                (Ok(_), Some(Err(e))) => Err(e),
                (result, _) => result,
            };
            out.insert(id.clone(), result);
        }
        out
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let pool = self.pool("buildkite.register", pool)?;
        let mut credentials = Credentials::default();
        let vars = &mut credentials.vars;
        vars.insert(NAME_VAR.into(), runner_name.to_owned());
        vars.insert(TAGS_VAR.into(), pool.tags.join(","));
        vars.insert(ENDPOINT_VAR.into(), self.agent_endpoint.clone());
        if pool.disconnect_after_job {
            vars.insert(AFTER_JOB_VAR.into(), "true".into());
        }
        if let Some(d) = pool.idle_timeout {
            vars.insert(AFTER_IDLE_VAR.into(), d.as_secs().to_string());
        }
        if let Some(stack) = &pool.stack {
            let held = self.reserve_one("buildkite.register", pool, stack).await?;
            let job = held.job.clone();
            lock(&self.reservations).hold(runner_name, held, Instant::now());
            credentials.vars.insert(ACQUIRE_JOB_VAR.into(), job);
        }
        credentials
            .secrets
            .insert(TOKEN_VAR.into(), self.agent_token.clone());
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: None,
            credentials,
        })
    }

    /// The agent's machine or pod died before the agent started: its reserved job is given
    /// back to the pool. Buildkite has no call to drop a reservation (and shortening one is
    /// not documented), so the job stays reserved by the pool's stack until it expires;
    /// meanwhile it counts as waiting and the pool's next agent gets it, its reservation
    /// extended. Makes no request.
    async fn release(&self, _pool: &PoolId, runner_name: &str) -> Result<()> {
        lock(&self.reservations).release(runner_name, Instant::now());
        Ok(())
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "buildkite.remove";
        let pool = self.pool(op, pool)?;
        let Some(agent) = self.client.agent(op, &self.org, runner.as_str()).await? else {
            return Ok(());
        };
        if !naming::owned_by(pool.id.as_str(), &agent.name) {
            return Err(Error::new(
                op,
                ErrorKind::Misconfigured,
                format!(
                    "agent {runner} ({}) was not started by runscale for pool {}",
                    agent.name, pool.id
                ),
            ));
        }
        if !agent.is_connected() {
            return Ok(());
        }
        if agent.job.as_ref().is_some_and(|j| !j.is_null()) {
            return Err(busy(op, runner));
        }
        if agent.connection_state != "stopping" {
            match self.client.stop(op, &self.org, runner.as_str()).await? {
                Stop::Accepted => {}
                Stop::Unknown => return Ok(()),
                Stop::Refused(status) => return self.after_refused_stop(op, runner, status).await,
            }
        }
        self.wait_disconnected(op, runner).await
    }

    async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "buildkite.drain";
        self.pool(op, pool)?;
        match self.client.stop(op, &self.org, runner.as_str()).await? {
            Stop::Accepted | Stop::Unknown => Ok(()),
            // Not connected: it takes no job, there is nothing to drain.
            Stop::Refused(status) => match self.client.agent(op, &self.org, runner.as_str()).await?
            {
                Some(a) if a.is_connected() => Err(Error::new(
                    op,
                    ErrorKind::Transient,
                    format!(
                        "Buildkite refused to stop the connected agent {runner} (HTTP {status})"
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let op = "buildkite.webhook";
        let Some(token) = &self.webhook_token else {
            return Err(SETUP
                .misconfigured("webhook_token is not set: webhooks are not accepted".to_owned()));
        };
        if request.body.len() > webhook::MAX_BODY {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                "body larger than 1 MiB",
            ));
        }
        let proof = webhook::verify(
            token.expose_secret().as_bytes(),
            &request.body,
            request.header("x-buildkite-token"),
            request.header("x-buildkite-signature"),
            Utc::now().timestamp(),
        )
        .map_err(|m| Error::new(op, ErrorKind::Misconfigured, m))?;
        let event: webhook::Event = serde_json::from_slice(&request.body).map_err(|e| {
            Error::new(
                op,
                ErrorKind::Protocol,
                format!("not a Buildkite event ({:?} error)", e.classify()),
            )
        })?;
        let (subject, rules) = match (event.event.as_str(), &event.job, &event.agent) {
            ("job.scheduled", Some(job), _) => (&job.id, &job.agent_query_rules),
            ("agent.disconnected" | "agent.lost" | "agent.stopped", _, Some(agent)) => {
                (&agent.id, &agent.meta_data)
            }
            _ => return Ok(Vec::new()),
        };
        let mut keys = vec![format!("{}:{subject}", event.event)];
        if let Proof::Signature(sig) = proof {
            keys.push(format!("sig:{sig}"));
        }
        if !lock(&self.recent).first_time(&keys, Instant::now()) {
            return Ok(Vec::new());
        }
        let woken: Vec<PoolId> = self
            .pools
            .iter()
            .filter(|p| webhook::rules_match(rules, &p.tags))
            .map(|p| p.id.clone())
            .collect();
        if !woken.is_empty() {
            // The cached metrics predate this event: the woken pass reads them again
            // (throttling still applies).
            lock(&self.metrics).next_poll = None;
        }
        Ok(woken)
    }

    async fn probe(&self) -> Result<String> {
        let op = "buildkite.probe";
        let metrics = self.client.metrics(op, &self.org).await?;
        let all: Vec<PoolId> = self.pools.iter().map(|p| p.id.clone()).collect();
        let mut listed = 0;
        for (queue_id, agents) in self.listings(op, &all).await {
            let agents = agents?;
            listed += agents.len();
            // A pool's cluster_queue_id must be its queue's: one listing another queue's
            // agents would hide the pool's own (they would look gone).
            if let Some(id) = &queue_id
                && let Some(pool) = self
                    .pools
                    .iter()
                    .find(|p| p.cluster_queue.as_ref() == Some(id))
                && let Some(stray) = agents
                    .iter()
                    .find(|a| !a.meta_data.contains(&format!("queue={}", pool.queue)))
            {
                return Err(Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    format!(
                        "pool {}: cluster_queue_id {id} lists agent {} of another queue: it is \
                         not the cluster queue of {}",
                        pool.id, stray.name, pool.queue
                    ),
                ));
            }
        }
        Ok(format!(
            "read agent metrics ({} queues) and {listed} connected agents of {}",
            metrics.queues.len(),
            self.org
        ))
    }

    fn rate_limit_remaining(&self) -> Option<u64> {
        self.client.remaining()
    }
}
