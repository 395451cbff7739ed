//! The `aws-asg` backend type, as the configuration sees it.

use std::sync::Arc;

use runscale_core::adapter_type::{BackendType, PoolContext, Problems, one_runner_per_instance};
use runscale_core::{Backend, PoolId};

use super::{AwsAsg, Config, PoolTemplate};
use crate::aws_common::Deferred;

/// The `aws-asg` backend type.
pub struct AwsAsgType;

impl BackendType for AwsAsgType {
    type Config = Config;
    type Template = PoolTemplate;

    fn fit_pool(pool: PoolContext<'_>) -> Problems {
        one_runner_per_instance("aws-asg", pool)
    }

    /// The SDK loads its credential chain and region asynchronously: connected on first use.
    fn build(
        config: &Config,
        templates: Vec<(PoolId, PoolTemplate)>,
    ) -> runscale_core::Result<Arc<dyn Backend>> {
        let (config, templates) = (config.clone(), templates.into_iter().collect());
        Ok(Arc::new(Deferred::new("aws-asg", move || {
            let (config, templates) = (config.clone(), Clone::clone(&templates));
            async move {
                let backend = AwsAsg::connect(config, templates).await?;
                Ok(Arc::new(backend) as Arc<dyn Backend>)
            }
        })))
    }
}
