//! What a provider or backend *type* tells the configuration: its settings, its pools'
//! selector or template, how they are validated, and how the adapter is built.
//!
//! An adapter's settings and selector types check themselves ([`Validate`], [`Selector`]); a
//! backend's template type implements [`Template`]. Each adapter implements [`ProviderType`] or
//! [`BackendType`] in its own module, naming those types; the `runscale`
//! binary registers it with one line (its `type` name, its cargo feature and this
//! implementation) and handles every type alike: it parses the YAML into these types (errors
//! name the field), prefixes the paths of the [`Problems`] returned here, generates the JSON
//! Schema, and builds one adapter per configured provider or backend for the pools bound to it.
//!
//! Validation is pure: it reads no file and reaches no network (secrets are read when the
//! adapter is built, the CI system is reached by `probe`).

use std::fmt::Debug;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::adapter::{Backend, Provider};
use crate::model::PoolId;

/// Problems found by a validation: `(field, message)`, the field relative to what was
/// validated (`"labels[0]"`, `"credentials"`, or `""` for the value itself).
pub type Problems = Result<(), Vec<(String, String)>>;

/// What a selector or template may depend on besides itself: the pool's own settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolContext<'a> {
    /// The pool's name.
    pub name: &'a str,
    /// The pool's `runners_per_instance`.
    pub runners_per_instance: u32,
    /// The pool's `ephemeral`.
    pub ephemeral: bool,
}

impl<'a> PoolContext<'a> {
    /// A pool of one runner per instance: what a backend built without the configuration's
    /// pools (a test, a tool) checks its templates against.
    pub fn single(name: &'a str) -> Self {
        Self {
            name,
            runners_per_instance: 1,
            ephemeral: true,
        }
    }
}

/// Bounds of a type's configuration values: parsed from YAML, described by a JSON Schema,
/// kept by the validated configuration.
pub trait Settings: DeserializeOwned + JsonSchema + Clone + Debug + Send + Sync + 'static {}

impl<T: DeserializeOwned + JsonSchema + Clone + Debug + Send + Sync + 'static> Settings for T {}

/// A value that checks itself: an adapter's settings or a pool's selector.
pub trait Validate {
    /// The value's problems (fields relative to it).
    fn validate(&self) -> Problems;
}

/// A pool's `selector`: which jobs it serves.
pub trait Selector: Settings + Validate {
    /// The labels the selector matches jobs by (the simulator routes trace jobs by them).
    fn labels(&self) -> Vec<String>;
}

/// A pool's `template`: how one instance is started.
pub trait Template: Settings {
    /// Checks the template (fields relative to it); it may depend on the pool's own settings.
    fn validate_for(&self, pool: PoolContext<'_>) -> Problems;

    /// The backend's hash of the template: what decides how an instance is started (an
    /// instance of another hash is replaced).
    fn hash(&self) -> String;

    /// Whether the instances name their runners themselves, so runners cannot be attributed
    /// to instances (the policy then plans from counts). `false` by default.
    fn runners_unattributed(&self) -> bool {
        false
    }
}

/// A CI system's adapter type (`providers[].type`).
pub trait ProviderType: 'static {
    /// The settings of one `providers` entry (besides `name` and `type`).
    type Config: Settings + Validate;
    /// A pool's `selector`: which jobs it serves.
    type Selector: Selector;

    /// Checks the pool's own fields against the selector and its provider (fields relative to
    /// the pool, e.g. `"runners_per_instance"`), and completes the selector from them. Nothing
    /// to check by default.
    fn fit_pool(
        config: &Self::Config,
        selector: &mut Self::Selector,
        pool: PoolContext<'_>,
    ) -> Problems {
        let _ = (config, selector, pool);
        Ok(())
    }

    /// Whether registering a runner creates nothing in the CI system, so runners the instances
    /// name themselves (a template whose runners cannot be attributed) can be served: nothing
    /// is ever registered or removed one by one. `false` by default.
    fn serves_unattributed_runners() -> bool {
        false
    }

    /// Builds the provider of one `providers` entry for the pools bound to it, in
    /// configuration order. Reads secrets; makes no network call.
    fn build(
        config: &Self::Config,
        pools: Vec<(PoolId, Self::Selector)>,
    ) -> crate::Result<Arc<dyn Provider>>;
}

/// A runner machines' adapter type (`backends[].type`).
pub trait BackendType: 'static {
    /// The settings of one `backends` entry (besides `name` and `type`).
    type Config: Settings + Validate;
    /// A pool's `template`: how one instance is started.
    type Template: Template;

    /// Checks the pool's own fields against this backend (fields relative to the pool, e.g.
    /// `"runners_per_instance"`). Nothing to check by default.
    fn fit_pool(pool: PoolContext<'_>) -> Problems {
        let _ = pool;
        Ok(())
    }

    /// Whether its instances can take fresh runners after theirs left ([`Backend::reuse`]), so
    /// pools may set `reuse`. `false` by default.
    fn reuses_instances() -> bool {
        false
    }

    /// Builds the backend of one `backends` entry for the pools bound to it. May touch the
    /// local world (a state directory); makes no network call (an SDK that must, connects on
    /// first use).
    fn build(
        config: &Self::Config,
        templates: Vec<(PoolId, Self::Template)>,
    ) -> crate::Result<Arc<dyn Backend>>;
}

/// The error for one backend's `runners_per_instance` when its instances host one runner
/// each: `Ok` when it is 1.
pub fn one_runner_per_instance(kind: &str, pool: PoolContext<'_>) -> Problems {
    if pool.runners_per_instance == 1 {
        return Ok(());
    }
    Err(vec![(
        "runners_per_instance".to_owned(),
        format!(
            "the {kind} backend runs one runner per instance; set 1, not {}",
            pool.runners_per_instance
        ),
    )])
}

/// The longest an adapter's duration setting (a timeout, a grace period, a refresh interval)
/// may be: a day. Longer is a mistake (`"18446744073709551615s"`), and some arithmetic on
/// instants would overflow.
pub const MAX_SETTING_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The problems of the `(field, value)` durations longer than [`MAX_SETTING_DURATION`].
pub fn at_most_a_day<'a>(
    fields: impl IntoIterator<Item = (&'a str, Option<std::time::Duration>)>,
) -> Vec<(String, String)> {
    fields
        .into_iter()
        .filter(|(_, value)| value.is_some_and(|v| v > MAX_SETTING_DURATION))
        .map(|(field, _)| (field.to_owned(), "must be at most 24h".to_owned()))
        .collect()
}
