//! The `buildkite` provider type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{Problems, ProviderType};
use runscale_core::{PoolId, Provider};

use super::{BuildkiteProvider, Config, PoolSelector};

/// The `buildkite` provider type.
pub struct BuildkiteType;

impl ProviderType for BuildkiteType {
    type Config = Config;
    type Selector = PoolSelector;

    fn validate_config(config: &Config) -> Problems {
        config.validate()
    }

    fn validate_selector(selector: &PoolSelector) -> Problems {
        selector.validate()
    }

    /// `queue=NAME` and the agent tags as `key=value`.
    fn labels(selector: &PoolSelector) -> Vec<String> {
        std::iter::once(format!("queue={}", selector.queue))
            .chain(selector.tags.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
    }

    fn build(
        config: &Config,
        pools: Vec<(PoolId, PoolSelector)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        Ok(Arc::new(BuildkiteProvider::new(config.clone(), pools)?))
    }
}
