//! The `buildkite` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::ProviderType;
use runscale_core::{PoolId, Provider};

use super::{BuildkiteProvider, Config, PoolSelector};

/// The `buildkite` provider type.
pub struct BuildkiteType;

impl ProviderType for BuildkiteType {
    type Config = Config;
    type Selector = PoolSelector;

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(BuildkiteProvider::new(config.clone(), pools)?))
    }
}
