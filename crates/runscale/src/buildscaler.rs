//! `runscale buildscaler`: a drop-in for Buildscaler (elotl buildscaler-eks). It takes
//! Buildscaler's options under their names, with their environment fallbacks, so the seed's
//! Deployment works with only its image and command changed; the Jobs, their labels and
//! annotations and the agent-token Secret stay as they are.
//!
//! It discovers the labelled Jobs ([`config::buildscaler`]), runs the daemon on the
//! configuration they make, and discovers again every `--sync-interval`: when the pools change
//! (a Job added, deleted, re-annotated or moved to another queue), the running daemon stops
//! gracefully (in-flight passes finish) and starts again on the new configuration. Runner pods
//! are found again by their labels, so nothing is lost; a discovery that fails keeps the
//! running pools. A Job recreated under the same name changes no pool: the backend notices the
//! new UID and retires the old pods once idle. Until a usable Job exists, only `/healthz`
//! (200) and `/readyz` (503) are served.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use runscale_core::secret::SecretRef;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::buildscaler::{self as discovery, Discovery, Settings};
use crate::config::{ConfigError, FieldError};

/// The access token's environment variable (Buildscaler's `--token` fallback).
pub const ACCESS_TOKEN_VAR: &str = "BUILDKITE_ACCESS_TOKEN";
/// The agent token's environment variable.
pub const AGENT_TOKEN_VAR: &str = "BUILDKITE_AGENT_TOKEN";

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// Buildscaler's options (same names, same environment fallbacks), and runscale's few more.
#[derive(Debug, Args)]
pub struct BuildscalerArgs {
    /// Buildkite API access token (REST: list and stop agents).
    #[arg(long, env = ACCESS_TOKEN_VAR, hide_env_values = true, value_parser = secret)]
    pub token: Option<SecretString>,
    /// The Buildkite organization slug.
    #[arg(long)]
    pub buildkite_org: String,
    /// Namespace to look for Jobs in; blank for all namespaces.
    #[arg(short = 'n', long, default_value = "")]
    pub namespace: String,
    /// Seconds between syncs: pools are reconciled at least this often, and Jobs discovered
    /// again.
    #[arg(long, default_value_t = 20)]
    pub sync_interval: u64,
    /// Idle seconds before an agent is shut down (it disconnects itself, and runscale stops
    /// idle agents after as long).
    #[arg(long)]
    pub disconnect_after_idle_timeout: Option<u64>,
    /// Seconds an agent has to register after its pod was created; then the pod is deleted.
    #[arg(long, default_value_t = 600)]
    pub agent_startup_timeout: u64,
    /// Seconds after which agents are retired once idle (never while busy); a Job's
    /// `buildscaler.elotl.co/max-agent-lifetime` annotation overrides it.
    #[arg(long)]
    pub max_agent_lifetime: Option<u64>,
    /// Path of a kubeconfig file. Default: `KUBECONFIG`, `~/.kube/config`, else the in-cluster
    /// service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address runscale's HTTP server (`/healthz`, `/readyz`, `/metrics`) listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub healthz_address: IpAddr,
    /// Port of runscale's HTTP server.
    #[arg(long, default_value_t = 8080)]
    pub healthz_port: u16,
    /// More logging output (`--log-level debug`).
    #[arg(short, long)]
    pub verbose: bool,
    /// Most pods per queue for Jobs without `buildscaler.elotl.co/max-active-builds`.
    #[arg(long, env = "RUNSCALE_POOL_MAX", default_value_t = discovery::DEFAULT_MAX)]
    pub default_max_active_builds: u32,
    /// Base URL of Buildkite's REST API (for a proxy or a test double).
    #[arg(long, env = "RUNSCALE_BUILDKITE_API_URL")]
    pub buildkite_api_url: Option<String>,
    /// Buildkite's agent API endpoint, with `/v3`.
    #[arg(long, env = "RUNSCALE_BUILDKITE_AGENT_ENDPOINT")]
    pub buildkite_agent_endpoint: Option<String>,
}

/// Keeps a token given on the command line in a private file (mode 0600) for as long as
/// runscale runs: the configuration names secrets by where they live, never by value.
pub struct TokenFile {
    _file: Option<tempfile::NamedTempFile>,
}

fn invalid(field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: PathBuf::from("(buildscaler command line)"),
        errors: vec![FieldError::new(field, message)],
    }
}

impl BuildscalerArgs {
    /// The settings, with where each token is read from; `env` looks variables up.
    pub fn settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Settings, TokenFile), anyhow::Error> {
        let token = self.token.as_ref().ok_or_else(|| {
            invalid(
                "--token",
                format!("the Buildkite access token is required: --token or {ACCESS_TOKEN_VAR}"),
            )
        })?;
        let (access_token, file) =
            if env(ACCESS_TOKEN_VAR).as_deref() == Some(token.expose_secret()) {
                (
                    SecretRef::Env(ACCESS_TOKEN_VAR.to_owned()),
                    TokenFile { _file: None },
                )
            } else {
                let mut file = tempfile::NamedTempFile::new()
                    .context("cannot create a private file for the --token value")?;
                std::io::Write::write_all(&mut file, token.expose_secret().as_bytes())
                    .context("cannot write the --token value to a private file")?;
                (
                    SecretRef::File(file.path().to_owned()),
                    TokenFile { _file: Some(file) },
                )
            };
        if env(AGENT_TOKEN_VAR).is_none_or(|t| t.trim().is_empty()) {
            return Err(invalid(
                AGENT_TOKEN_VAR,
                "must be set: runscale reads each queue's waiting jobs from Buildkite's agent \
                 metrics API with the agent token, and hands it to the agents (give the \
                 Deployment the agent-token Secret, e.g. envFrom: secretRef: \
                 buildkite-agent-token)"
                    .to_owned(),
            )
            .into());
        }
        let org = self.buildkite_org.trim();
        if org.is_empty() {
            return Err(invalid("--buildkite-org", "must not be empty".to_owned()).into());
        }
        if self.sync_interval == 0 || self.sync_interval > 3600 {
            return Err(invalid(
                "--sync-interval",
                format!("{} is not from 1 to 3600 seconds", self.sync_interval),
            )
            .into());
        }
        let startup = Duration::from_secs(self.agent_startup_timeout);
        if !(10..=86_400).contains(&self.agent_startup_timeout) {
            return Err(invalid(
                "--agent-startup-timeout",
                format!(
                    "{} is not from 10 to 86400 seconds",
                    self.agent_startup_timeout
                ),
            )
            .into());
        }
        let idle = match self.disconnect_after_idle_timeout {
            Some(s) if !(1..=86_400).contains(&s) => {
                return Err(invalid(
                    "--disconnect-after-idle-timeout",
                    format!("{s} is not from 1 to 86400 seconds"),
                )
                .into());
            }
            other => other.map(Duration::from_secs),
        };
        let lifetime = match self.max_agent_lifetime {
            Some(s) if s <= self.agent_startup_timeout || s > 30 * 86_400 => {
                return Err(invalid(
                    "--max-agent-lifetime",
                    format!(
                        "{s} must be longer than --agent-startup-timeout ({}) and at most 30 \
                         days",
                        self.agent_startup_timeout
                    ),
                )
                .into());
            }
            other => other.map(Duration::from_secs),
        };
        let namespace = Some(self.namespace.trim().to_owned()).filter(|n| !n.is_empty());
        Ok((
            Settings {
                org: org.to_owned(),
                access_token,
                agent_token: SecretRef::Env(AGENT_TOKEN_VAR.to_owned()),
                namespace,
                sync_interval: Duration::from_secs(self.sync_interval),
                idle_timeout: idle,
                agent_startup_timeout: startup,
                max_agent_lifetime: lifetime,
                kubeconfig: self.kubeconfig.clone(),
                listen: SocketAddr::new(self.healthz_address, self.healthz_port),
                api_url: self.buildkite_api_url.clone(),
                agent_endpoint: self.buildkite_agent_endpoint.clone(),
                default_max: self.default_max_active_builds,
            },
            file,
        ))
    }
}

/// Logs what a discovery found: each pool, and each skipped Job as an error.
fn report(d: &Discovery) {
    for (queue, pool, job) in &d.pools {
        info!(queue, pool, job, "Buildscaler Job discovered");
    }
    for (queue, pool, namespace) in &d.retiring {
        info!(
            queue,
            pool, namespace, "the Job of these pods is gone: retiring them once idle"
        );
    }
    for message in &d.skipped {
        error!(message, "Buildscaler Job skipped");
    }
    if d.pools.is_empty() && d.retiring.is_empty() {
        warn!("no usable Buildscaler Job found; waiting for one");
    }
}

/// Runs until the first SIGTERM/SIGINT (graceful) or a failure.
pub async fn run(args: &BuildscalerArgs) -> anyhow::Result<()> {
    let (settings, _token_file) = args.settings(|name| std::env::var(name).ok())?;
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(stop.clone()));
    let result = serve(&settings, stop).await;
    signals.abort();
    result
}

/// Discovers, serves, and restarts the daemon when discovery changes, until `stop`.
pub async fn serve(settings: &Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let mut current = discovery::load(settings).await?;
    report(&current);
    let (tx, mut changes) = mpsc::channel(1);
    let watcher = tokio::spawn(rediscover(
        settings.clone(),
        current.value.clone(),
        current.skipped.clone(),
        tx,
    ));
    let result = loop {
        let next = {
            let term = stop.child_token();
            let serving = serve_term(&current, settings.listen, term.clone());
            tokio::pin!(serving);
            let next = tokio::select! {
                r = &mut serving => break r,
                next = changes.recv() => next,
            };
            let Some(next) = next else {
                // The watcher ended (it does not, short of a panic): serve what we have.
                break serving.await;
            };
            info!("Buildscaler Jobs changed: restarting on the new pools");
            term.cancel();
            if let Err(e) = serving.await {
                break Err(e);
            }
            next
        };
        report(&next);
        current = next;
        if stop.is_cancelled() {
            break Ok(());
        }
    };
    watcher.abort();
    result
}

/// One term: the daemon on the discovered configuration, or a health endpoint while there is
/// none.
async fn serve_term(
    current: &Discovery,
    listen: SocketAddr,
    term: CancellationToken,
) -> anyhow::Result<()> {
    match &current.config {
        // This command re-discovers on its own (every `--sync-interval`), restarting the term.
        Some(config) => crate::daemon::serve(config, false, term, None).await,
        None => {
            let app = axum::Router::new()
                .route("/healthz", axum::routing::get(|| async { "ok" }))
                .route(
                    "/readyz",
                    axum::routing::get(|| async {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "no Buildscaler Job found",
                        )
                    }),
                );
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            crate::server::serve(
                listener,
                app,
                crate::server::ServerLimits::default(),
                crate::server::ServerMetrics::default(),
                term,
            )
            .await
            .context("HTTP server failed")
        }
    }
}

/// Discovers again every sync interval; sends a discovery whose configuration differs from
/// the last one sent. Failures keep the running pools (logged); new skip messages are logged.
async fn rediscover(
    settings: Settings,
    mut value: serde_json::Value,
    mut skipped: Vec<String>,
    tx: mpsc::Sender<Discovery>,
) {
    loop {
        tokio::time::sleep(settings.sync_interval).await;
        match discovery::load(&settings).await {
            Err(e) => warn!(error = %e, "Job discovery failed; keeping the current pools"),
            Ok(d) if d.value != value => {
                value = d.value.clone();
                skipped = d.skipped.clone();
                if tx.send(d).await.is_err() {
                    return;
                }
            }
            Ok(d) => {
                if d.skipped != skipped {
                    for message in d.skipped.iter().filter(|m| !skipped.contains(m)) {
                        error!(message, "Buildscaler Job skipped");
                    }
                    skipped = d.skipped;
                }
            }
        }
    }
}

/// Cancels `stop` on the first SIGTERM/SIGINT; exits at once on the second.
async fn stop_on_signal(stop: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        warn!("cannot watch SIGTERM");
        return;
    };
    for count in 1.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        if count > 1 {
            warn!("second signal: exiting now");
            std::process::exit(1);
        }
        info!("stopping: finishing in-flight passes (signal again to exit now)");
        stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BuildscalerArgs,
    }

    fn parse(argv: &[&str]) -> BuildscalerArgs {
        Cli::try_parse_from(std::iter::once("buildscaler").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_seed_deployment_arguments_parse_unchanged() {
        let args = parse(&[
            "--buildkite-org=acme",
            "--namespace=default",
            "--sync-interval=20",
            "-v",
            "--token",
            "tok-1",
        ]);
        let (s, file) = args
            .settings(env(&[(AGENT_TOKEN_VAR, "agent")]))
            .expect("valid");
        assert_eq!(s.org, "acme");
        assert_eq!(s.namespace.as_deref(), Some("default"));
        assert_eq!(s.sync_interval, Duration::from_secs(20));
        assert_eq!(s.agent_startup_timeout, Duration::from_secs(600));
        assert_eq!(s.listen.port(), 8080);
        assert!(args.verbose);
        // A token given on the command line is kept in a private file, never in the config.
        let SecretRef::File(path) = &s.access_token else {
            panic!("{:?}", s.access_token);
        };
        assert_eq!(std::fs::read_to_string(path).expect("file"), "tok-1");
        assert!(!format!("{args:?} {s:?}").contains("tok-1"));
        drop(file);
        assert!(!path.exists(), "removed when runscale stops");
    }

    #[test]
    fn blank_namespace_is_all_and_the_env_token_stays_in_the_env() {
        let args = parse(&["--buildkite-org", "acme", "-n", "", "--token", "t"]);
        let (s, _f) = args
            .settings(env(&[(ACCESS_TOKEN_VAR, "t"), (AGENT_TOKEN_VAR, "a")]))
            .expect("valid");
        assert_eq!(s.namespace, None);
        assert_eq!(s.access_token, SecretRef::Env(ACCESS_TOKEN_VAR.into()));
    }

    #[test]
    fn missing_tokens_and_bad_numbers_are_named() {
        let e = parse(&["--buildkite-org", "acme"])
            .settings(env(&[(AGENT_TOKEN_VAR, "a")]))
            .err()
            .expect("no token")
            .to_string();
        assert!(e.contains(ACCESS_TOKEN_VAR), "{e}");
        let e = parse(&["--buildkite-org", "acme", "--token", "t"])
            .settings(env(&[]))
            .err()
            .expect("no agent token");
        assert!(
            format!("{e:#}").contains(AGENT_TOKEN_VAR)
                && crate::cli::exit_code(&e) == crate::cli::EXIT_INVALID_CONFIG
        );
        let e = parse(&[
            "--buildkite-org",
            "acme",
            "--token",
            "t",
            "--max-agent-lifetime",
            "60",
        ])
        .settings(env(&[(AGENT_TOKEN_VAR, "a")]))
        .err()
        .expect("shorter than the startup timeout");
        assert!(format!("{e:#}").contains("--max-agent-lifetime"), "{e:#}");
    }
}
