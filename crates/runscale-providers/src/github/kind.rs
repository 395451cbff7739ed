//! The `github` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{PoolContext, Problems, ProviderType};
use runscale_core::{PoolId, Provider};

use super::{Config, GithubProvider, PoolSelector};

/// The `github` provider type.
pub struct GithubType;

impl ProviderType for GithubType {
    type Config = Config;
    type Selector = PoolSelector;

    /// GitHub registers ephemeral runners with a JIT configuration: the selector carries the
    /// pool's `ephemeral`.
    fn fit_pool(_: &Config, selector: &mut PoolSelector, pool: PoolContext<'_>) -> Problems {
        selector.ephemeral = pool.ephemeral;
        Ok(())
    }

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(GithubProvider::new(config.clone(), pools)?))
    }
}
