//! Scale benchmark: one full reconcile pass over 10,000 pools and 100,000 runners with
//! in-memory adapters, measuring CPU time of the pass and peak RSS of the process.
//!
//! Run: `cargo bench -p runscale-core --bench scale` (add `-- --pools N --runners-per-pool M
//! --passes P`; 5 passes by default). CPU time (user + system) and peak RSS come from
//! getrusage(2); the first pass also creates each pool's metric series and memory, so it is
//! reported apart from the median of the others.
//! The adapters answer from prebuilt maps in O(pools asked), so the numbers are the
//! reconciler's and the policy's own cost: batching, observation enrichment, planning,
//! metrics, status bookkeeping, and carrying out the planned launches and terminations.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::resource::{UsageWho, getrusage};
use prometheus_client::registry::Registry;
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::{
    Backend, Clock, Credentials, Demand, Instance, InstanceId, InstanceState, LaunchRequest,
    PoolId, PoolSpec, Provider, ProviderView, Registration, Result, Runner, RunnerId, RunnerState,
    SystemClock, WaitingJob,
};

struct Fixed {
    views: HashMap<PoolId, ProviderView>,
    instances: HashMap<PoolId, Vec<Instance>>,
    calls: AtomicU64,
}

#[async_trait]
impl Provider for Fixed {
    fn kind(&self) -> &'static str {
        "bench"
    }
    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        pools
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Ok(self.views.get(p).cloned().unwrap_or_default()),
                )
            })
            .collect()
    }
    async fn register(&self, _pool: &PoolId, runner_name: &str) -> Result<Registration> {
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: None,
            credentials: Credentials::default(),
        })
    }
    async fn remove(&self, _pool: &PoolId, _runner: &RunnerId) -> Result<()> {
        Ok(())
    }
    async fn probe(&self) -> Result<String> {
        Ok("bench".into())
    }
}

struct FixedBackend(Arc<Fixed>);

#[async_trait]
impl Backend for FixedBackend {
    fn kind(&self) -> &'static str {
        "bench"
    }
    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        Ok(pools
            .iter()
            .filter_map(|p| self.0.instances.get(p).map(|v| (p.clone(), v.clone())))
            .collect())
    }
    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        Ok(Instance {
            id: InstanceId::new(format!("i-{}", request.runners[0].runner_name)),
            state: InstanceState::Booting,
            launched_at: SystemClock.now(),
            template_hash: request.template_hash,
            runner_names: request.runners.into_iter().map(|r| r.runner_name).collect(),
            reused: None,
        })
    }
    async fn terminate(&self, _pool: &PoolId, _instance: &InstanceId) -> Result<()> {
        Ok(())
    }
    async fn probe(&self) -> Result<String> {
        Ok("bench".into())
    }
}

/// (user + system) CPU seconds of this process so far, and its peak resident set size in MiB,
/// from getrusage(2).
fn usage() -> (f64, f64) {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            // Linux reports ru_maxrss in KiB.
            (
                secs(u.user_time()) + secs(u.system_time()),
                u.max_rss() as f64 / 1024.0,
            )
        }
        Err(e) => {
            eprintln!("getrusage: {e}");
            (f64::NAN, f64::NAN)
        }
    }
}

fn cpu_seconds() -> f64 {
    usage().0
}

fn peak_rss_mib() -> f64 {
    usage().1
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let pools = arg("--pools", 10_000);
    let per_pool = arg("--runners-per-pool", 10);
    let passes = arg("--passes", 5).max(1);
    let now = SystemClock.now();
    let mut views = HashMap::with_capacity(pools);
    let mut instances = HashMap::with_capacity(pools);
    let mut specs = Vec::with_capacity(pools);
    for p in 0..pools {
        let name = PoolId::new(format!("pool-{p:05}"));
        let spec = PoolSpec {
            name: name.clone(),
            min_idle: 0,
            max: per_pool as u32 + 5,
            max_booting: per_pool as u32 + 5,
            launches_per_minute: 0,
            boot_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: None,
            scale_down_delay: Duration::ZERO,
            schedules: Vec::new(),
            runners_per_instance: 1,
            ephemeral: true,
            template_hash: "t1".to_owned(),
            runners_unattributed: false,
            // The configuration's default: the reconciler keeps each pool's demand history.
            warm: Some(runscale_core::Warm::AUTO),
            reuse: None,
        };
        let mut view = ProviderView::default();
        let mut insts = Vec::with_capacity(per_pool);
        for r in 0..per_pool {
            let runner = format!("rs-{name}-{r:010}");
            // Mostly busy; every tenth idle for long (a scale-in candidate).
            let (state, last_busy) = if r % 10 == 9 {
                (RunnerState::Idle, Some(now - chrono::Duration::hours(2)))
            } else {
                (RunnerState::Busy, Some(now))
            };
            view.runners.push(Runner {
                id: RunnerId::new(format!("{p}-{r}")),
                name: runner.clone(),
                state,
                draining: false,
                last_busy,
            });
            insts.push(Instance {
                id: InstanceId::new(format!("i-{p}-{r}")),
                state: InstanceState::Running,
                launched_at: now - chrono::Duration::hours(3),
                template_hash: spec.template_hash.clone(),
                runner_names: vec![runner],
                reused: None,
            });
        }
        // Every other pool has two jobs waiting (launches), the rest none (scale-in).
        view.demand = Demand {
            waiting: (0..if p % 2 == 0 { 2 } else { 0 })
                .map(|j| WaitingJob {
                    id: format!("{p}-{j}"),
                    queued_at: now,
                })
                .collect(),
            running: (per_pool - per_pool / 10) as u32,
        };
        views.insert(name.clone(), view);
        instances.insert(name.clone(), insts);
        specs.push(spec);
    }
    let fixed = Arc::new(Fixed {
        views,
        instances,
        calls: AtomicU64::new(0),
    });
    let backend: Arc<dyn Backend> = Arc::new(FixedBackend(fixed.clone()));
    let bindings: Vec<PoolBinding> = specs
        .into_iter()
        .map(|spec| PoolBinding {
            spec,
            provider_name: "account".into(),
            provider: fixed.clone(),
            backend_name: "backend".into(),
            backend: backend.clone(),
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let options = Options {
            max_concurrent_passes: 256,
            ..Options::default()
        };
        let r = Reconciler::new(bindings, Arc::new(SystemClock), metrics, options);
        let rss_before = peak_rss_mib();
        let mut cpus = Vec::with_capacity(passes);
        for round in 1..=passes {
            let cpu0 = cpu_seconds();
            let wall0 = Instant::now();
            let reports = r.once().await;
            let wall = wall0.elapsed();
            let cpu = cpu_seconds() - cpu0;
            cpus.push(cpu);
            let failed = reports.iter().filter(|r| r.outcome.is_err()).count();
            let launches: u32 = reports
                .iter()
                .filter_map(|r| r.outcome.as_ref().ok())
                .map(|p| p.launches())
                .sum();
            drop(reports);
            println!(
                "pass {round}: pools={pools} runners={} cpu={:.1}ms wall={:.1}ms peak_rss={:.0}MiB launches={launches} failed={failed} observe_calls={}",
                pools * per_pool,
                cpu * 1e3,
                wall.as_secs_f64() * 1e3,
                peak_rss_mib(),
                fixed.calls.load(Ordering::Relaxed),
            );
        }
        let first = cpus[0];
        let mut rest = cpus[1..].to_vec();
        rest.sort_by(f64::total_cmp);
        let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
        println!(
            "cpu per pass: first {:.1}ms, then median {:.1}ms (min {:.1}ms, max {:.1}ms) over {} passes",
            first * 1e3,
            median * 1e3,
            rest.first().copied().unwrap_or(first) * 1e3,
            rest.last().copied().unwrap_or(first) * 1e3,
            rest.len(),
        );
        println!(
            "peak_rss={:.0}MiB (after building the {} pools: {rss_before:.0}MiB)",
            peak_rss_mib(),
            pools
        );
    });
}
