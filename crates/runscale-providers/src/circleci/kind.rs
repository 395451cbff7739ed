//! The `circleci` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::ProviderType;
use runscale_core::{PoolId, Provider};

use super::{CircleciProvider, Config, PoolSelector};

/// The `circleci` provider type.
pub struct CircleciType;

impl ProviderType for CircleciType {
    type Config = Config;
    type Selector = PoolSelector;

    /// A runner registers with the resource class's token: nothing is created per runner.
    fn serves_unattributed_runners() -> bool {
        true
    }

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(CircleciProvider::new(config.clone(), pools)?))
    }
}
