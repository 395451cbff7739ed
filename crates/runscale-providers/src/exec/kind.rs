//! The `exec` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{Problems, ProviderType};
use runscale_core::{PoolId, Provider};

use super::{Config, ExecProvider, PoolSelector};

/// The `exec` provider type.
pub struct ExecType;

impl ProviderType for ExecType {
    type Config = Config;
    type Selector = PoolSelector;

    fn validate_config(config: &Config) -> Problems {
        config.validate()
    }

    fn validate_selector(selector: &PoolSelector) -> Problems {
        selector.validate()
    }

    fn labels(selector: &PoolSelector) -> Vec<String> {
        selector.labels.clone()
    }

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
