//! The `exec` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::ProviderType;
use runscale_core::{PoolId, Provider};

use super::{Config, ExecProvider, PoolSelector};

/// The `exec` provider type.
pub struct ExecType;

impl ProviderType for ExecType {
    type Config = Config;
    type Selector = PoolSelector;

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(ExecProvider::new(
            config.clone(),
            pools.into_iter().collect(),
        )))
    }
}
