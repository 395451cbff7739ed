//! What the Buildkite end-to-end tests share: an emulator whose REST budgets a fast
//! reconciler fits in, the provider's configuration against it, the local-process backend
//! with one template for every pool, and the reconciler over those pools.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runscale_backends::local_process::{Config as LocalConfig, LocalProcess, PoolTemplate};
use runscale_core::reconciler::PoolBinding;
use runscale_core::secret::SecretRef;
use runscale_core::{PoolId, PoolSpec, testing};
use runscale_emulator::buildkite::{Emulator, EmulatorConfig, EmulatorHandle};
use runscale_providers::buildkite::{BuildkiteProvider, Config, PoolSelector};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const AGENT_TOKEN: &str = "bk-agent-token";
pub const API_TOKEN: &str = "bk-api-token";
/// REST requests per minute for the organisation and the user: a reconciler passing every
/// 500 ms fits.
const REST_PER_MINUTE: u32 = 600;

/// An emulator for organisation `acme`, with `agent_lost_after`.
pub async fn emulator(agent_lost_after: Duration) -> EmulatorHandle {
    let mut config = EmulatorConfig::new("acme", AGENT_TOKEN, API_TOKEN);
    config.rest_requests_per_minute = REST_PER_MINUTE;
    config.rest_requests_per_minute_per_user = REST_PER_MINUTE;
    config.agent_lost_after = agent_lost_after;
    Emulator::start(config).await.expect("emulator")
}

/// The provider's configuration against `emu`, its secrets written to files in `dir`.
pub fn provider_config(emu: &EmulatorHandle, dir: &Path, reservation_expiry: Duration) -> Config {
    for (f, v) in [("api", API_TOKEN), ("agent", AGENT_TOKEN)] {
        std::fs::write(dir.join(f), v).expect("secret");
    }
    Config {
        org: "acme".to_owned(),
        api_url: emu.url(),
        agent_endpoint: emu.agent_endpoint(),
        api_token: SecretRef::File(dir.join("api")),
        agent_token: SecretRef::File(dir.join("agent")),
        webhook_token: None,
        rest_requests_per_minute: REST_PER_MINUTE,
        rest_requests_per_minute_per_user: REST_PER_MINUTE,
        stop_wait: Duration::from_secs(2),
        stack_key: "runscale".to_owned(),
        reservation_expiry,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    }
}

/// A selector of `queue` with the tag `os=linux`; agents leave after 60 s without a job.
pub fn selector(queue: &str, disconnect_after_job: bool, reserve_jobs: bool) -> PoolSelector {
    PoolSelector {
        queue: queue.to_owned(),
        tags: BTreeMap::from([("os".to_owned(), "linux".to_owned())]),
        disconnect_after_job,
        disconnect_after_idle_timeout: Some(Duration::from_secs(60)),
        reserve_jobs,
        cluster_queue_id: None,
    }
}

/// The local-process backend (state under `dir/state`) running `template` for each pool.
pub fn backend(dir: &Path, template: &serde_json::Value, pools: &[&str]) -> Arc<LocalProcess> {
    let config: LocalConfig = serde_json::from_value(serde_json::json!({
        "state_dir": dir.join("state"),
        "stop_grace": "5s",
    }))
    .expect("config");
    let template: PoolTemplate = serde_json::from_value(template.clone()).expect("template");
    let templates = pools
        .iter()
        .map(|p| (PoolId::new(p), template.clone()))
        .collect::<HashMap<_, _>>();
    Arc::new(LocalProcess::new(config, templates).expect("backend"))
}

/// A pool of at most `max` instances, ephemeral or not, leaving idle agents after `idle`.
pub fn spec(name: &str, max: u32, ephemeral: bool, idle: Duration, boot: Duration) -> PoolSpec {
    let mut s = PoolSpec::test(name)
        .max(max)
        .ephemeral(ephemeral)
        .idle_timeout(idle)
        .boot_timeout(boot);
    s.template_hash = "t1".into();
    s
}

/// The reconciler over `specs`, passing every 500 ms.
pub fn reconcile(
    provider: Arc<BuildkiteProvider>,
    backend: Arc<LocalProcess>,
    specs: Vec<PoolSpec>,
) -> (CancellationToken, JoinHandle<()>) {
    let bindings = specs
        .into_iter()
        .map(|spec| PoolBinding {
            spec,
            provider_name: "buildkite".into(),
            provider: provider.clone(),
            backend_name: "local".into(),
            backend: backend.clone(),
        })
        .collect();
    testing::spawn_reconciler(bindings, Duration::from_millis(500), Duration::from_secs(2))
}

/// Live instances of `pools`.
pub async fn live(backend: &LocalProcess, pools: &[&str]) -> usize {
    let pools: Vec<PoolId> = pools.iter().copied().map(PoolId::new).collect();
    testing::live_instances(backend, &pools)
        .await
        .expect("instances")
}
