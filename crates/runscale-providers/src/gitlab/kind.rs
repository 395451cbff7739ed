//! The `gitlab` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{PoolContext, Problems, ProviderType};
use runscale_core::{PoolId, Provider};

use super::{Config, GitlabProvider, PoolSelector, validate_pool};

/// The `gitlab` provider type.
pub struct GitlabType;

impl ProviderType for GitlabType {
    type Config = Config;
    type Selector = PoolSelector;

    /// Each slot's `system_id` numbers it on two digits: the pool's `runners_per_instance`.
    fn fit_pool(config: &Config, selector: &mut PoolSelector, pool: PoolContext<'_>) -> Problems {
        validate_pool(config, selector, pool.runners_per_instance)
    }

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(GitlabProvider::new(config.clone(), pools)?))
    }
}
