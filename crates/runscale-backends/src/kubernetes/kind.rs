//! The `kubernetes` backend type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{BackendType, PoolContext, Problems};
use runscale_core::{Backend, PoolId};

use super::{Config, Kubernetes, PoolTemplate, validate_pool};

/// The `kubernetes` backend type.
pub struct KubernetesType;

impl BackendType for KubernetesType {
    type Config = Config;
    type Template = PoolTemplate;

    /// The pool's name becomes a label value and `runners_per_instance` containers' names.
    fn fit_pool(pool: PoolContext<'_>) -> Problems {
        validate_pool(pool.name, pool.runners_per_instance)
    }

    fn build(
        config: &Config,
        templates: Vec<(PoolId, PoolTemplate)>,
    ) -> runscale_core::Result<Arc<dyn Backend>> {
        let backend = Kubernetes::new(config.clone(), templates.into_iter().collect())?;
        Ok(Arc::new(backend))
    }
}
