//! The `local-process` backend type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{BackendType, PoolContext, Problems};
use runscale_core::{Backend, PoolId};

use super::{Config, CredentialsDelivery, LocalProcess, PoolTemplate};

/// The `local-process` backend type.
pub struct LocalProcessType;

impl BackendType for LocalProcessType {
    type Config = Config;
    type Template = PoolTemplate;

    fn validate_config(config: &Config) -> Problems {
        config.validate()
    }

    /// Besides the template's own rules: `env` delivery hosts one runner per process.
    fn validate_template(template: &PoolTemplate, pool: PoolContext<'_>) -> Problems {
        template.validate()?;
        let per_instance = pool.runners_per_instance;
        if template.credentials == CredentialsDelivery::Env && per_instance > 1 {
            return Err(vec![(
                "credentials".to_owned(),
                format!(
                    "\"env\" delivery hosts one runner per process, but the pool has \
                     runners_per_instance: {per_instance}; use \"file\" or set \
                     runners_per_instance to 1"
                ),
            )]);
        }
        Ok(())
    }

    fn template_hash(template: &PoolTemplate) -> String {
        template.template_hash()
    }

    fn build(
        config: &Config,
        templates: Vec<(PoolId, PoolTemplate)>,
    ) -> runscale_core::Result<Arc<dyn Backend>> {
        let backend = LocalProcess::new(config.clone(), templates.into_iter().collect())?;
        Ok(Arc::new(backend))
    }
}
