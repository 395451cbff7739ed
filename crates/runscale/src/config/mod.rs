//! The configuration: one YAML file, read in stages, each with its own errors.
//!
//! 1. **Read** the file ([`ConfigError::Read`]).
//! 2. **Interpolate** `${VAR}` and `${VAR:-default}` in the raw text ([`interpolate`];
//!    [`ConfigError::Interpolation`] names each unset variable and its line).
//! 3. **Parse** the YAML ([`source`]; [`ConfigError::Syntax`] with line and column), keeping
//!    the line of every field path.
//! 4. **Deserialize** into [`Config`]: wrong types and unknown keys become
//!    [`ConfigError::Invalid`] naming the field path (`pools[0].max`) and its line. serde stops
//!    at the first such error, so these are reported one at a time.
//! 5. **Validate** ([`Config::validate`], pure): every semantic rule, every error collected, each
//!    naming its path and line. Adapter settings, selectors and templates are parsed into their
//!    types here, since only now is it known which adapter each belongs to.
//! 6. **Fetch** ([`fetch_secrets`], async): secrets held by AWS Secrets Manager are read once
//!    ([`secrets_aws`]).
//! 7. **Build** ([`build()`]): secrets are read and adapters constructed.
//!
//! Lines are looked up from the parsed document by field path (serde-saphyr's [`Spanned`]
//! locations, recorded for every key and sequence item), so semantic errors point at the line
//! of the field, or of its nearest enclosing field when the field itself is missing.
//!
//! [`Spanned`]: serde_saphyr::Spanned

mod build;
#[cfg(all(feature = "backend-kubernetes", feature = "provider-buildkite"))]
pub mod buildscaler;
pub mod environment;
mod error;
pub mod interpolate;
mod model;
mod registry;
pub mod secrets_aws;
pub mod source;
mod validate;

use std::path::Path;

pub use build::{Adapters, Built, Runtime, build, build_adapters};
pub use error::{BuildError, ConfigError, FieldError};
pub use model::{
    BackendConfig, Config, LeaderElectionConfig, PoolConfig, ProviderConfig, ScheduleConfig,
};
pub use registry::{
    BackendSettings, ProviderSettings, SelectorSettings, TemplateSettings, TypeInfo, backend_types,
    provider_types,
};
pub use validate::{
    BackendEntry, MAX_ADAPTER_NAME, MAX_POOL_NAME, ProviderEntry, ValidPool, Validated,
    combined_template_hash, name_problem,
};

/// Reads, interpolates (from the process environment), parses and validates a configuration
/// file.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    load_with(path, |_| {})
}

/// Like [`load`], with `adjust` applied to the parsed configuration before it is validated
/// (command-line flags that override settings of the file), so the overridden values are
/// checked by the same rules.
pub fn load_with(path: &Path, adjust: impl FnOnce(&mut Config)) -> Result<Validated, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str_with(&text, path, |name| std::env::var(name).ok(), adjust)
}

/// Interpolates, parses and validates configuration text; `path` is only used in messages and
/// `lookup` supplies environment variables.
pub fn load_str(
    text: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Validated, ConfigError> {
    load_str_with(text, path, lookup, |_| {})
}

fn load_str_with(
    text: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
    adjust: impl FnOnce(&mut Config),
) -> Result<Validated, ConfigError> {
    let (mut config, lines) = parse_str(text, path, lookup)?;
    adjust(&mut config);
    config.validate().map_err(|errors| ConfigError::Invalid {
        path: path.to_owned(),
        errors: error::locate(errors, &lines),
    })
}

/// Stages 4 and 5 for a configuration built in memory (the environment-only modes of
/// [`environment`]): errors name field paths, and `origin` stands for the file.
pub fn load_value(value: serde_json::Value, origin: &Path) -> Result<Validated, ConfigError> {
    load_value_with(value, origin, &|_| {})
}

/// Like [`load_value`], with `adjust` applied before validation (as [`load_with`]).
pub fn load_value_with(
    value: serde_json::Value,
    origin: &Path,
    adjust: &dyn Fn(&mut Config),
) -> Result<Validated, ConfigError> {
    let no_lines = source::LineIndex::default();
    let mut config: Config = registry::from_value(value, "").map_err(|e| ConfigError::Invalid {
        path: origin.to_owned(),
        errors: vec![e],
    })?;
    adjust(&mut config);
    config.validate().map_err(|errors| ConfigError::Invalid {
        path: origin.to_owned(),
        errors: error::locate(errors, &no_lines),
    })
}

/// Stages 2 to 4: the configuration as written, not yet validated, with the line index.
pub fn parse_str(
    text: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(Config, source::LineIndex), ConfigError> {
    let text =
        interpolate::interpolate(text, lookup).map_err(|errors| ConfigError::Interpolation {
            path: path.to_owned(),
            errors,
        })?;
    let doc = source::parse(&text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        error,
    })?;
    if !doc.value.is_object() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            errors: vec![FieldError {
                path: String::new(),
                message: "the file must be a mapping with the keys listen, interval, \
                          max_concurrent_passes, shutdown_timeout, leader_election, providers, \
                          backends and pools"
                    .to_owned(),
                line: Some(1),
            }],
        });
    }
    let config: Config = registry::from_value(doc.value, "").map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        errors: error::locate(vec![e], &doc.lines),
    })?;
    Ok((config, doc.lines))
}

/// Fetches the secrets the configuration keeps in remote stores (AWS Secrets Manager), once,
/// so that [`build()`] can read them; failures are recorded and fail the adapters that use
/// those secrets when they are built. Nothing to do without such references.
pub async fn fetch_secrets(config: &Validated) {
    #[cfg(feature = "secrets-aws")]
    secrets_aws::fetch(&config.remote_secrets).await;
    // Without the feature, validation rejected every reference.
    #[cfg(not(feature = "secrets-aws"))]
    let _ = config;
}

/// The JSON Schema of the configuration file, generated from the types.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}
