//! The one-shot commands: `once` (one pass over every pool, then a table of plans), `check`
//! (probe every provider and backend, then a table of results), `config schema` and
//! `version`. The daemon (`run`) is in [`crate::daemon`].
//!
//! Each writes its report to the writer it is given and returns an error when the command
//! failed, so the caller decides the exit code.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{PoolStatus, Reconciler};
use runscale_core::{Limit, Plan, SystemClock};

use crate::config::{self, Validated};
use crate::table;

/// How long `check` waits for one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Some pools failed their pass (`once`).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} pools failed their pass")]
pub struct PassesFailed {
    /// Pools that failed.
    pub failed: usize,
    /// Pools in all.
    pub total: usize,
}

/// Some provider or backend failed its probe (`check`).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} providers and backends failed their check")]
pub struct ChecksFailed {
    /// Adapters that failed.
    pub failed: usize,
    /// Adapters in all.
    pub total: usize,
}

/// A fresh metrics registry with runscale's metrics registered.
pub fn metrics() -> (Registry, Arc<Metrics>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    (registry, Arc::new(metrics))
}

/// One pass over every pool; prints a table of pools with what was observed and planned.
/// With `dry_run` the plans are only computed. Fails if any pool's pass failed.
pub async fn once(config: &Validated, dry_run: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    config::fetch_secrets(config).await;
    let runtime = config::build(config)?;
    let (_registry, metrics) = metrics();
    let mut options = runtime.options;
    options.dry_run = dry_run;
    let reconciler = Reconciler::new(runtime.pools, Arc::new(SystemClock), metrics, options);
    let reports = reconciler.once().await;
    let statuses = reconciler.handle().status();
    let mut rows = Vec::with_capacity(reports.len());
    let mut failed = 0;
    for report in &reports {
        let status = statuses.iter().find(|s| s.pool == report.pool);
        let (result, plan) = match &report.outcome {
            Ok(plan) => ("ok".to_owned(), summarize(plan)),
            Err(e) => {
                failed += 1;
                ("FAIL".to_owned(), e.to_string())
            }
        };
        let (waiting, running, instances) = observed(status);
        let desired = match &report.outcome {
            Ok(plan) => plan.desired_instances.to_string(),
            Err(_) => "-".to_owned(),
        };
        rows.push(vec![
            report.pool.to_string(),
            result,
            waiting,
            running,
            instances,
            desired,
            plan,
        ]);
    }
    let mut text = table::render(
        &[
            "POOL",
            "RESULT",
            "WAITING",
            "RUNNING",
            "INSTANCES",
            "DESIRED",
            "PLAN",
        ],
        &rows,
    );
    if dry_run {
        text.push_str("(dry run: nothing was done)\n");
    }
    out.write_all(text.as_bytes())
        .context("cannot write output")?;
    if failed > 0 {
        return Err(PassesFailed {
            failed,
            total: reports.len(),
        }
        .into());
    }
    Ok(())
}

/// Waiting jobs, running jobs and live instances from a pool's last observation.
fn observed(status: Option<&PoolStatus>) -> (String, String, String) {
    match status.and_then(|s| s.last_observation.as_ref()) {
        Some(o) => (
            o.waiting.to_string(),
            o.running.to_string(),
            (o.instances_booting + o.instances_running).to_string(),
        ),
        None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
    }
}

/// One line describing a plan: `launch 2 (demand), terminate 1 (idle_timeout)`.
pub fn summarize(plan: &Plan) -> String {
    let mut groups: Vec<(&'static str, &'static str, u32)> = Vec::new();
    for p in &plan.actions {
        let n = match p.action {
            runscale_core::Action::Launch { count } => count,
            _ => 1,
        };
        let (kind, reason) = (p.action.kind(), p.reason.as_str());
        match groups.iter_mut().find(|g| g.0 == kind && g.1 == reason) {
            Some(g) => g.2 += n,
            None => groups.push((kind, reason, n)),
        }
    }
    let mut text = if groups.is_empty() {
        "nothing to do".to_owned()
    } else {
        groups
            .iter()
            .map(|(kind, reason, n)| format!("{kind} {n} ({reason})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some((n, limit)) = plan.held_back {
        let limit = match limit {
            Limit::Max => "max",
            Limit::MaxBooting => "max_booting",
            Limit::LaunchRate => "launches_per_minute",
        };
        let _ = write!(text, "; {n} launch(es) held back by {limit}");
    }
    text
}

/// An error and its causes on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Builds every provider and backend and probes each, read-only; prints a table
/// `NAME ROLE TYPE STATUS DETAIL`. Fails unless every one is OK.
pub async fn check(config: &Validated, out: &mut dyn Write) -> anyhow::Result<()> {
    config::fetch_secrets(config).await;
    let adapters = config::build_adapters(config);
    let mut targets: Vec<(String, &'static str, &'static str, Probe)> = Vec::new();
    for b in adapters.providers {
        let probe = b
            .adapter
            .map(|p| async move { p.probe().await }.boxed())
            .map_err(|e| chain(&e));
        targets.push((b.name, "provider", b.kind, probe));
    }
    for b in adapters.backends {
        let probe = b
            .adapter
            .map(|be| async move { be.probe().await }.boxed())
            .map_err(|e| chain(&e));
        targets.push((b.name, "backend", b.kind, probe));
    }
    let total = targets.len();
    // Probes run concurrently; the table lists providers, then backends, in file order.
    let results = futures::future::join_all(targets.into_iter().map(
        |(name, role, kind, probe)| async move { (name, role, kind, run_probe(probe).await) },
    ))
    .await;
    let mut failed = 0;
    let mut rows = Vec::with_capacity(total);
    for (name, role, kind, result) in results {
        let (status, detail) = match result {
            Ok(detail) => ("OK", detail),
            Err(reason) => {
                failed += 1;
                ("FAIL", reason)
            }
        };
        rows.push(vec![
            name,
            role.to_owned(),
            kind.to_owned(),
            status.to_owned(),
            detail,
        ]);
    }
    let mut text = format!(
        "configuration is valid: {} pool(s), {} provider(s), {} backend(s)\n",
        config.pools.len(),
        config.providers.len(),
        config.backends.len()
    );
    text.push_str(&table::render(
        &["NAME", "ROLE", "TYPE", "STATUS", "DETAIL"],
        &rows,
    ));
    text.push('\n');
    text.push_str(&pools_table(config));
    out.write_all(text.as_bytes())
        .context("cannot write output")?;
    if failed > 0 {
        return Err(ChecksFailed { failed, total }.into());
    }
    Ok(())
}

/// The pools with their caps and timeouts: `POOL PROVIDER BACKEND MAX BOOT_TIMEOUT
/// IDLE_TIMEOUT` (so caps that come from defaults, as in the environment modes, are visible).
fn pools_table(config: &Validated) -> String {
    let name = |names: &[String], i: usize| names.get(i).cloned().unwrap_or_default();
    let providers: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
    let backends: Vec<String> = config.backends.iter().map(|b| b.name.clone()).collect();
    let rows: Vec<Vec<String>> = config
        .pools
        .iter()
        .map(|p| {
            vec![
                p.spec.name.to_string(),
                name(&providers, p.provider),
                name(&backends, p.backend),
                p.spec.max.to_string(),
                humantime::format_duration(p.spec.boot_timeout).to_string(),
                humantime::format_duration(p.spec.idle_timeout).to_string(),
            ]
        })
        .collect();
    table::render(
        &[
            "POOL",
            "PROVIDER",
            "BACKEND",
            "MAX",
            "BOOT_TIMEOUT",
            "IDLE_TIMEOUT",
        ],
        &rows,
    )
}

/// A probe ready to run, or why the adapter could not be built.
type Probe = Result<BoxFuture<'static, runscale_core::Result<String>>, String>;

async fn run_probe(probe: Probe) -> Result<String, String> {
    let probe = probe?;
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(detail)) => Ok(detail),
        Ok(Err(e)) => Err(chain(&e)),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    }
}

/// Prints the configuration's JSON Schema.
pub fn schema(out: &mut dyn Write) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&config::schema())?;
    writeln!(out, "{text}").context("cannot write output")
}

/// Prints the version and the provider and backend types compiled in.
pub fn version(out: &mut dyn Write) -> anyhow::Result<()> {
    let compiled = |types: &[config::TypeInfo]| {
        let names: Vec<&str> = types
            .iter()
            .filter(|t| t.compiled)
            .map(|t| t.name)
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    writeln!(
        out,
        "runscale {}\nproviders: {}\nbackends: {}",
        env!("CARGO_PKG_VERSION"),
        compiled(&config::provider_types()),
        compiled(&config::backend_types())
    )
    .context("cannot write output")
}
