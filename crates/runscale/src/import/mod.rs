//! `runscale import <seed>`: converts the configuration artefacts of a system runscale
//! replaces into a runscale configuration file. One module per seed; each is pure (text in,
//! text and warnings out); the generated file is checked like any other (`runscale check`).
//!
//! - [`github_action_autoscaler`]: devjoes' `ScaledActionRunner` custom resources.
//! - [`gitlab_fleet`]: gitlab-runners-fleet's JSON configuration.

pub mod github_action_autoscaler;
pub mod gitlab_fleet;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// The seeds `import` knows.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// devjoes/github-runner-autoscaler: `ScaledActionRunner` custom resources (as
    /// `kubectl get scaledactionrunners -A -o yaml` prints them, or `---`-separated) → one
    /// GitHub provider serving their repositories, one kubernetes backend per namespace, one
    /// pool per resource.
    GithubActionAutoscaler(GithubActionAutoscalerArgs),
    /// gitlab-runners-fleet's JSON configuration (the `scale` program's keys: `gitlab_host`,
    /// `gitlab_token`, `runner_tag`, `runner_max_jobs`, `instance_*`).
    GitlabRunnersFleet(gitlab_fleet::Args),
}

/// Arguments of `import github-action-autoscaler`.
#[derive(Debug, Args)]
pub struct GithubActionAutoscalerArgs {
    /// The resources (YAML); `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Where to write the configuration; default stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Namespace of resources whose metadata has none (files applied with `kubectl -n`).
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// GitHub API URL (GitHub Enterprise Server: `https://HOST/api/v3`); default github.com.
    #[arg(long)]
    pub api_url: Option<String>,
    /// Environment variable holding the GitHub token (it must be allowed to register runners).
    #[arg(long, default_value = "GITHUB_TOKEN", conflicts_with = "token_file")]
    pub token_env: String,
    /// File holding the GitHub token, instead of `--token-env`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the webhook secret (`workflow_job` webhooks to
    /// `/webhooks/github`); without it (and `--webhook-secret-file`), demand is polled only.
    #[arg(long, conflicts_with = "webhook_secret_file")]
    pub webhook_secret_env: Option<String>,
    /// File holding the webhook secret.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Kubeconfig of the kubernetes backends; default: in-cluster (or `KUBECONFIG`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the kubernetes backends.
    #[arg(long)]
    pub context: Option<String>,
}

/// A secret reference: `{env: NAME}` or `{file: PATH}`.
fn secret_ref(env: Option<&str>, file: Option<&PathBuf>) -> Option<serde_json::Value> {
    match (file, env) {
        (Some(f), _) => Some(serde_json::json!({"file": f.display().to_string()})),
        (None, Some(e)) => Some(serde_json::json!({"env": e})),
        (None, None) => None,
    }
}

/// Runs `import`: reads the input, writes the configuration, prints warnings to `warn`.
pub fn run(
    command: &ImportCommand,
    stdout: &mut dyn Write,
    warn: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        ImportCommand::GitlabRunnersFleet(args) => gitlab_fleet::run(args, stdout),
        ImportCommand::GithubActionAutoscaler(args) => {
            let text = read_input(&args.file)?;
            let options = github_action_autoscaler::Options {
                namespace: args.namespace.clone(),
                api_url: args.api_url.clone(),
                token: secret_ref(Some(&args.token_env), args.token_file.as_ref())
                    .unwrap_or_default(),
                webhook_secret: secret_ref(
                    args.webhook_secret_env.as_deref(),
                    args.webhook_secret_file.as_ref(),
                ),
                kubeconfig: args.kubeconfig.as_ref().map(|p| p.display().to_string()),
                context: args.context.clone(),
            };
            let out = github_action_autoscaler::import(&text, &options)?;
            for w in &out.warnings {
                writeln!(warn, "warning: {w}").context("cannot write warnings")?;
            }
            write_output(args.output.as_ref(), &out.text, stdout)?;
            writeln!(
                warn,
                "imported {} ScaledActionRunner resource(s); check the result with `runscale check -c <file>`",
                out.resources
            )
            .context("cannot write to stderr")?;
            Ok(())
        }
    }
}

/// The input file (or stdin for `-`), at most 16 MiB.
fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    use std::io::Read as _;
    let limit = github_action_autoscaler::MAX_INPUT as u64 + 1;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_string(&mut text))
            .map_err(|source| crate::config::ConfigError::Read {
                path: path.clone(),
                source,
            })?;
    }
    Ok(text)
}

/// Writes `text` to `path`, or to `stdout`.
fn write_output(path: Option<&PathBuf>, text: &str, stdout: &mut dyn Write) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => stdout
            .write_all(text.as_bytes())
            .context("cannot write output"),
    }
}
