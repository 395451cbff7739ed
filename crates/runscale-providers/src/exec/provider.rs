//! [`ExecProvider`]: the [`Provider`] trait implemented by running the configured commands.

use std::collections::{HashMap, HashSet};
use std::fmt;

use async_trait::async_trait;
use runscale_core::{Error, ErrorKind, PoolId, Provider, ProviderView, Registration, RunnerId};

use super::command::{
    CommandRunner, ENV_LABELS, ENV_POOL, ENV_POOLS, ENV_RUNNER_ID, ENV_RUNNER_NAME, MAX_OUTPUT,
};
use super::config::{Config, PoolSelector};
use super::errors::{EXIT_BUSY, exit_error, protocol_error, run_error};
use super::protocol::{self, ObserveInput, PoolQuery};

const OP_OBSERVE: &str = "exec.observe";
const OP_REGISTER: &str = "exec.register";
const OP_REMOVE: &str = "exec.remove";
const OP_DRAIN: &str = "exec.drain";
const OP_PROBE: &str = "exec.probe";

/// A CI system driven through the commands of a [`Config`]; each pool bound to it has a
/// [`PoolSelector`].
pub struct ExecProvider {
    config: Config,
    pools: HashMap<PoolId, PoolSelector>,
    runner: CommandRunner,
}

impl fmt::Debug for ExecProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecProvider")
            .field("config", &self.config)
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl ExecProvider {
    /// A provider running `config`'s commands for `pools` (their selectors, by name). Runs
    /// nothing yet; the configuration should have passed [`Config::validate`].
    pub fn new(config: Config, pools: HashMap<PoolId, PoolSelector>) -> ExecProvider {
        let runner = CommandRunner {
            timeout: config.timeout,
            env: config.env.clone(),
            working_dir: config.working_dir.clone(),
            max_output: MAX_OUTPUT,
        };
        ExecProvider {
            config,
            pools,
            runner,
        }
    }

    fn selector(&self, op: &'static str, pool: &PoolId) -> Result<&PoolSelector, Error> {
        self.pools.get(pool).ok_or_else(|| {
            Error::new(
                op,
                ErrorKind::Misconfigured,
                format!(
                    "pool {:?} is not bound to this exec provider",
                    pool.as_str()
                ),
            )
        })
    }

    /// Runs `remove` or `drain` for one runner: exit 0 is `Ok`; for `remove`, exit 3 is
    /// `Busy`; any other ending is an error.
    async fn runner_command(
        &self,
        op: &'static str,
        what: &str,
        argv: &[String],
        pool: &PoolId,
        runner: &RunnerId,
    ) -> Result<(), Error> {
        self.selector(op, pool)?;
        let vars = [
            (ENV_POOL, pool.as_str().to_owned()),
            (ENV_RUNNER_ID, runner.as_str().to_owned()),
        ];
        let finished = self
            .runner
            .run(argv, &vars, None)
            .await
            .map_err(|e| run_error(op, what, e))?;
        if finished.status.success() {
            return Ok(());
        }
        if op == OP_REMOVE && finished.status.code() == Some(EXIT_BUSY) {
            return Err(Error::new(
                op,
                ErrorKind::Busy,
                format!(
                    "runner {:?} is running a job (the remove command exited {EXIT_BUSY})",
                    runner.as_str()
                ),
            ));
        }
        Err(exit_error(op, what, &finished))
    }
}

#[async_trait]
impl Provider for ExecProvider {
    fn kind(&self) -> &'static str {
        "exec"
    }

    async fn observe(
        &self,
        pools: &[PoolId],
    ) -> HashMap<PoolId, runscale_core::Result<ProviderView>> {
        let mut results = HashMap::with_capacity(pools.len());
        let mut seen = HashSet::with_capacity(pools.len());
        let mut asked: Vec<PoolId> = Vec::with_capacity(pools.len());
        let mut queries = Vec::with_capacity(pools.len());
        for pool in pools {
            if !seen.insert(pool) {
                continue;
            }
            match self.selector(OP_OBSERVE, pool) {
                Ok(selector) => {
                    asked.push(pool.clone());
                    queries.push(PoolQuery {
                        name: pool.as_str(),
                        labels: &selector.labels,
                    });
                }
                Err(e) => {
                    results.insert(pool.clone(), Err(e));
                }
            }
        }
        if asked.is_empty() {
            return results;
        }
        let batch = self.observe_batch(&asked, queries).await;
        match batch {
            Ok(views) => results.extend(views),
            Err(e) => results.extend(asked.into_iter().map(|p| (p, Err(e.clone())))),
        }
        results
    }

    async fn register(
        &self,
        pool: &PoolId,
        runner_name: &str,
    ) -> runscale_core::Result<Registration> {
        let selector = self.selector(OP_REGISTER, pool)?;
        let vars = [
            (ENV_POOL, pool.as_str().to_owned()),
            (ENV_RUNNER_NAME, runner_name.to_owned()),
            (ENV_LABELS, selector.labels.join(",")),
        ];
        let finished = self
            .runner
            .run(&self.config.register, &vars, None)
            .await
            .map_err(|e| run_error(OP_REGISTER, "register", e))?;
        if !finished.status.success() {
            return Err(exit_error(OP_REGISTER, "register", &finished));
        }
        protocol::parse_register(&finished.stdout, runner_name).map_err(|problem| {
            protocol_error(
                OP_REGISTER,
                "register",
                &format!("printed unusable output: {problem}"),
            )
        })
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> runscale_core::Result<()> {
        self.runner_command(OP_REMOVE, "remove", &self.config.remove, pool, runner)
            .await
    }

    async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> runscale_core::Result<()> {
        match &self.config.drain {
            Some(argv) => {
                self.runner_command(OP_DRAIN, "drain", argv, pool, runner)
                    .await
            }
            None => Ok(()),
        }
    }

    async fn probe(&self) -> runscale_core::Result<String> {
        let mut pools: Vec<PoolId> = self.pools.keys().cloned().collect();
        pools.sort();
        let mut results = self.observe(&pools).await;
        for pool in &pools {
            if let Some(Err(e)) = results.remove(pool) {
                return Err(Error::new(
                    OP_PROBE,
                    e.kind(),
                    format!("pool {:?}: {}", pool.as_str(), e.message()),
                )
                .with_source(e));
            }
        }
        Ok(format!(
            "ran {:?} and observed {} pools",
            self.config
                .observe
                .first()
                .map(String::as_str)
                .unwrap_or(""),
            pools.len()
        ))
    }
}

impl ExecProvider {
    /// One run of `observe` for the (configured, de-duplicated) pools `asked`.
    async fn observe_batch(
        &self,
        asked: &[PoolId],
        queries: Vec<PoolQuery<'_>>,
    ) -> Result<Vec<(PoolId, runscale_core::Result<ProviderView>)>, Error> {
        let stdin = serde_json::to_vec(&ObserveInput { pools: queries }).map_err(|e| {
            Error::new(
                OP_OBSERVE,
                ErrorKind::Misconfigured,
                "could not encode the observe input",
            )
            .with_source(e)
        })?;
        let names = asked
            .iter()
            .map(PoolId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let finished = self
            .runner
            .run(&self.config.observe, &[(ENV_POOLS, names)], Some(stdin))
            .await
            .map_err(|e| run_error(OP_OBSERVE, "observe", e))?;
        if !finished.status.success() {
            return Err(exit_error(OP_OBSERVE, "observe", &finished));
        }
        let parsed = protocol::parse_observe(&finished.stdout, asked)
            .map_err(|e| protocol_error(OP_OBSERVE, "observe", &e.0))?;
        Ok(parsed
            .into_iter()
            .map(|(pool, view)| {
                let view = view.map_err(|problem| {
                    protocol_error(
                        OP_OBSERVE,
                        "observe",
                        &format!("printed unusable output: {problem}"),
                    )
                });
                (pool, view)
            })
            .collect())
    }
}
