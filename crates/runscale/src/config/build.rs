//! From a [`Validated`] configuration to running parts: one provider and one backend object per
//! configured name (shared by all of its pools, so observations can be batched per account),
//! and one [`PoolBinding`] per pool.
//!
//! This is where adapters read their secrets (`{env: NAME}`, `{file: PATH}`, and
//! `{aws_secrets_manager: ...}` from the values [`fetch_secrets`](super::fetch_secrets) preloaded
//! before) and may touch the world (create a state directory); nothing here makes a network call
//! to a CI system or a cloud, which `probe` does.

use std::net::SocketAddr;
use std::sync::Arc;

use runscale_core::reconciler::{Options, PoolBinding};
use runscale_core::{Backend, PoolId, Provider};

use super::error::BuildError;
use super::registry;
use super::validate::Validated;

/// One adapter, built or not.
pub struct Built<A: ?Sized> {
    /// Configured name.
    pub name: String,
    /// Its type.
    pub kind: &'static str,
    /// The adapter, or why it could not be built.
    pub adapter: Result<Arc<A>, BuildError>,
}

/// Every configured adapter, in file order.
pub struct Adapters {
    /// Providers.
    pub providers: Vec<Built<dyn Provider>>,
    /// Backends.
    pub backends: Vec<Built<dyn Backend>>,
}

/// Everything the daemon needs.
pub struct Runtime {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// Reconciler options.
    pub options: Options,
    /// Pools with their adapters.
    pub pools: Vec<PoolBinding>,
}

/// Builds every adapter, each with the selectors or templates of its pools, and reports each
/// outcome separately (for `runscale check`).
pub fn build_adapters(config: &Validated) -> Adapters {
    // Each adapter gets its pools' selectors or templates in configuration order.
    let mut selectors: Vec<Vec<(PoolId, registry::SelectorSettings)>> =
        config.providers.iter().map(|_| Vec::new()).collect();
    let mut templates: Vec<Vec<(PoolId, registry::TemplateSettings)>> =
        config.backends.iter().map(|_| Vec::new()).collect();
    for pool in &config.pools {
        selectors[pool.provider].push((pool.spec.name.clone(), pool.selector.clone()));
        templates[pool.backend].push((pool.spec.name.clone(), pool.template.clone()));
    }
    let providers = config
        .providers
        .iter()
        .zip(selectors)
        .map(|(p, selectors)| Built {
            name: p.name.clone(),
            kind: p.settings.kind(),
            adapter: registry::build_provider(&p.settings, selectors).map_err(|source| {
                BuildError {
                    role: "provider",
                    name: p.name.clone(),
                    source,
                }
            }),
        })
        .collect();
    let backends = config
        .backends
        .iter()
        .zip(templates)
        .map(|(b, templates)| Built {
            name: b.name.clone(),
            kind: b.settings.kind(),
            adapter: registry::build_backend(&b.settings, templates).map_err(|source| BuildError {
                role: "backend",
                name: b.name.clone(),
                source,
            }),
        })
        .collect();
    Adapters {
        providers,
        backends,
    }
}

/// Builds every adapter and binds the pools to them. Fails with the first adapter that cannot
/// be built.
pub fn build(config: &Validated) -> Result<Runtime, BuildError> {
    let adapters = build_adapters(config);
    let providers = adapters
        .providers
        .into_iter()
        .map(|b| b.adapter.map(|a| (b.name, a)))
        .collect::<Result<Vec<_>, _>>()?;
    let backends = adapters
        .backends
        .into_iter()
        .map(|b| b.adapter.map(|a| (b.name, a)))
        .collect::<Result<Vec<_>, _>>()?;
    let pools = config
        .pools
        .iter()
        .map(|pool| {
            let (provider_name, provider) = &providers[pool.provider];
            let (backend_name, backend) = &backends[pool.backend];
            PoolBinding {
                spec: pool.spec.clone(),
                provider_name: provider_name.clone(),
                provider: provider.clone(),
                backend_name: backend_name.clone(),
                backend: backend.clone(),
            }
        })
        .collect();
    Ok(Runtime {
        listen: config.listen,
        options: config.options.clone(),
        pools,
    })
}
