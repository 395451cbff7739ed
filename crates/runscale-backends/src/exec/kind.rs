//! The `exec` backend type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::BackendType;
use runscale_core::{Backend, PoolId};

use super::{Config, ExecBackend, PoolTemplate};

/// The `exec` backend type.
pub struct ExecType;

impl BackendType for ExecType {
    type Config = Config;
    type Template = PoolTemplate;

    /// The protocol's `reuse` action hands a machine fresh runners.
    fn reuses_instances() -> bool {
        true
    }

    fn build(
        config: &Config,
        templates: Vec<(PoolId, PoolTemplate)>,
    ) -> runscale_core::Result<Arc<dyn Backend>> {
        let backend = ExecBackend::new(config.clone(), templates.into_iter().collect())?;
        Ok(Arc::new(backend))
    }
}
