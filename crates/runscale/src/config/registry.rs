//! The registry of provider and backend types: one line per type (its `type` name, the cargo
//! feature that compiles it in, and the adapter's [`ProviderType`](runscale_core::ProviderType)
//! or [`BackendType`](runscale_core::BackendType)), and the
//! code that handles every type alike: parsing and validating settings, selectors and
//! templates (errors name the field), building the adapters, and the JSON Schemas.
//!
//! Adding a type: implement the trait in the adapter's own module (`kind.rs` next to its
//! config), add its feature to this crate's `Cargo.toml`, and add its line to [`PROVIDERS`] or
//! [`BACKENDS`]. A configuration naming a type that was not compiled in gets an error naming
//! the cargo feature.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use runscale_core::adapter_type::PoolContext;
use runscale_core::{Backend, PoolId, Provider};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::FieldError;
use super::source::{join_index, join_key};

/// One line of [`PROVIDERS`]: `provider!(TYPE-NAME, CARGO-FEATURE, ProviderType)`.
macro_rules! provider {
    ($name:literal, $feature:literal, $adapter:path) => {{
        #[cfg(feature = $feature)]
        const ADAPTER: Option<&'static dyn AnyProviderType> = Some(&ProviderOf::<$adapter>::NEW);
        #[cfg(not(feature = $feature))]
        const ADAPTER: Option<&'static dyn AnyProviderType> = None;
        Registered {
            name: $name,
            feature: $feature,
            adapter: ADAPTER,
        }
    }};
}

/// One line of [`BACKENDS`]: `backend!(TYPE-NAME, CARGO-FEATURE, BackendType)`.
macro_rules! backend {
    ($name:literal, $feature:literal, $adapter:path) => {{
        #[cfg(feature = $feature)]
        const ADAPTER: Option<&'static dyn AnyBackendType> = Some(&BackendOf::<$adapter>::NEW);
        #[cfg(not(feature = $feature))]
        const ADAPTER: Option<&'static dyn AnyBackendType> = None;
        Registered {
            name: $name,
            feature: $feature,
            adapter: ADAPTER,
        }
    }};
}

/// Every provider type runscale knows, compiled in or not.
pub(crate) static PROVIDERS: &[Registered<dyn AnyProviderType>] = &[
    provider!("exec", "provider-exec", runscale_providers::exec::ExecType),
    provider!(
        "github",
        "provider-github",
        runscale_providers::github::GithubType
    ),
    provider!(
        "circleci",
        "provider-circleci",
        runscale_providers::circleci::CircleciType
    ),
    provider!(
        "gitlab",
        "provider-gitlab",
        runscale_providers::gitlab::GitlabType
    ),
    provider!(
        "buildkite",
        "provider-buildkite",
        runscale_providers::buildkite::BuildkiteType
    ),
];

/// Every backend type runscale knows, compiled in or not.
pub(crate) static BACKENDS: &[Registered<dyn AnyBackendType>] = &[
    backend!(
        "local-process",
        "backend-local-process",
        runscale_backends::local_process::LocalProcessType
    ),
    backend!("exec", "backend-exec", runscale_backends::exec::ExecType),
    backend!(
        "kubernetes",
        "backend-kubernetes",
        runscale_backends::kubernetes::KubernetesType
    ),
    backend!(
        "aws-asg",
        "backend-aws-asg",
        runscale_backends::aws_asg::AwsAsgType
    ),
    backend!(
        "aws-ec2",
        "backend-aws-ec2",
        runscale_backends::aws_ec2::AwsEc2Type
    ),
];

/// One registered type: `adapter` is `None` when its feature is not compiled in.
pub(crate) struct Registered<T: ?Sized + 'static> {
    name: &'static str,
    feature: &'static str,
    adapter: Option<&'static T>,
}

/// A type name and the cargo feature of this crate that compiles it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    /// The `type` value in the configuration.
    pub name: &'static str,
    /// The cargo feature of the `runscale` crate.
    pub feature: &'static str,
    /// Whether this build has it.
    pub compiled: bool,
}

impl<T: ?Sized> Registered<T> {
    fn info(&self) -> TypeInfo {
        TypeInfo {
            name: self.name,
            feature: self.feature,
            compiled: self.adapter.is_some(),
        }
    }
}

/// Every provider type runscale knows.
pub fn provider_types() -> Vec<TypeInfo> {
    PROVIDERS.iter().map(Registered::info).collect()
}

/// Every backend type runscale knows.
pub fn backend_types() -> Vec<TypeInfo> {
    BACKENDS.iter().map(Registered::info).collect()
}

/// A value of some adapter type's settings, selector or template.
trait Parsed: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> Parsed for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The parsed value as a `T`, if it is one. (Through `&dyn Parsed`: `Arc<dyn Parsed>` is itself
/// `Parsed`, and would answer for the `Arc`.)
fn downcast<T: Any>(value: &Arc<dyn Parsed>) -> Option<&T> {
    let value: &dyn Parsed = value.as_ref();
    value.as_any().downcast_ref()
}

/// A provider's settings, parsed into its type's configuration.
#[derive(Clone)]
pub struct ProviderSettings {
    kind: &'static str,
    adapter: &'static dyn AnyProviderType,
    value: Arc<dyn Parsed>,
}

/// A pool's selector, parsed into its provider type's selector.
#[derive(Clone, Debug)]
pub struct SelectorSettings {
    value: Arc<dyn Parsed>,
    labels: Vec<String>,
}

/// A backend's settings, parsed into its type's configuration.
#[derive(Clone)]
pub struct BackendSettings {
    kind: &'static str,
    adapter: &'static dyn AnyBackendType,
    value: Arc<dyn Parsed>,
}

/// A pool's template, parsed into its backend type's template.
#[derive(Clone, Debug)]
pub struct TemplateSettings {
    value: Arc<dyn Parsed>,
    hash: String,
    unattributed: bool,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(self.kind).field(&self.value).finish()
    }
}

impl fmt::Debug for BackendSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(self.kind).field(&self.value).finish()
    }
}

impl ProviderSettings {
    /// The type name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The settings as their type's configuration, if they are of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        downcast(&self.value)
    }

    /// Whether the provider can serve runners the instances name themselves.
    pub fn serves_unattributed_runners(&self) -> bool {
        self.adapter.serves_unattributed_runners()
    }
}

impl BackendSettings {
    /// The type name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether the backend's instances can take fresh runners after theirs left (`reuse`).
    pub fn reuses_instances(&self) -> bool {
        self.adapter.reuses_instances()
    }

    /// The settings as their type's configuration, if they are of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        downcast(&self.value)
    }
}

impl SelectorSettings {
    /// The labels the selector matches jobs by (for the simulator's routing).
    pub fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    /// The selector as its type's, if it is of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        downcast(&self.value)
    }
}

impl TemplateSettings {
    /// Whether the instances name their runners themselves, so runners cannot be attributed
    /// to instances (aws-asg's `runner_name: unknown`).
    pub fn runners_unattributed(&self) -> bool {
        self.unattributed
    }

    /// The backend's hash of the template (what decides how an instance is started).
    pub fn backend_hash(&self) -> String {
        self.hash.clone()
    }

    /// The template as its type's, if it is of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        downcast(&self.value)
    }
}

/// A [`ProviderType`] with its types erased, so every type is handled alike.
pub(crate) trait AnyProviderType: Sync {
    fn parse(
        &'static self,
        kind: &'static str,
        value: Value,
        path: &str,
    ) -> Result<ProviderSettings, Vec<FieldError>>;
    fn parse_selector(
        &self,
        provider: &ProviderSettings,
        value: Value,
        path: &str,
        pool: PoolContext<'_>,
    ) -> Result<SelectorSettings, Vec<FieldError>>;
    fn build(
        &self,
        provider: &ProviderSettings,
        selectors: Vec<(PoolId, SelectorSettings)>,
    ) -> runscale_core::Result<Arc<dyn Provider>>;
    fn serves_unattributed_runners(&self) -> bool;
    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    fn selector_schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

/// A [`BackendType`] with its types erased.
pub(crate) trait AnyBackendType: Sync {
    fn parse(
        &'static self,
        kind: &'static str,
        value: Value,
        path: &str,
    ) -> Result<BackendSettings, Vec<FieldError>>;
    fn parse_template(
        &self,
        value: Value,
        path: &str,
        pool: PoolContext<'_>,
    ) -> Result<TemplateSettings, Vec<FieldError>>;
    fn build(
        &self,
        backend: &BackendSettings,
        templates: Vec<(PoolId, TemplateSettings)>,
    ) -> runscale_core::Result<Arc<dyn Backend>>;
    fn reuses_instances(&self) -> bool;
    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    fn template_schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

/// The registration of provider type `T` (`fn() -> T`: always `Sync`, holds no `T`).
#[cfg(feature = "any-provider")]
pub(crate) struct ProviderOf<T>(std::marker::PhantomData<fn() -> T>);

/// The registration of backend type `T`.
#[cfg(feature = "any-backend")]
pub(crate) struct BackendOf<T>(std::marker::PhantomData<fn() -> T>);

#[cfg(feature = "any-provider")]
impl<T> ProviderOf<T> {
    pub(crate) const NEW: Self = Self(std::marker::PhantomData);
}

#[cfg(feature = "any-backend")]
impl<T> BackendOf<T> {
    pub(crate) const NEW: Self = Self(std::marker::PhantomData);
}

#[cfg(feature = "any-provider")]
impl<T: runscale_core::ProviderType> AnyProviderType for ProviderOf<T> {
    fn parse(
        &'static self,
        kind: &'static str,
        value: Value,
        path: &str,
    ) -> Result<ProviderSettings, Vec<FieldError>> {
        let config: T::Config =
            typed(value, path, runscale_core::adapter_type::Validate::validate)?;
        Ok(ProviderSettings {
            kind,
            adapter: self,
            value: Arc::new(config),
        })
    }

    fn parse_selector(
        &self,
        provider: &ProviderSettings,
        value: Value,
        path: &str,
        pool: PoolContext<'_>,
    ) -> Result<SelectorSettings, Vec<FieldError>> {
        let config = provider
            .get::<T::Config>()
            .ok_or_else(|| vec![mismatch(path)])?;
        let mut selector: T::Selector =
            typed(value, path, runscale_core::adapter_type::Validate::validate)?;
        let pool_path = path.strip_suffix(".selector").unwrap_or(path);
        T::fit_pool(config, &mut selector, pool).map_err(|errors| prefixed(pool_path, errors))?;
        Ok(SelectorSettings {
            labels: runscale_core::adapter_type::Selector::labels(&selector),
            value: Arc::new(selector),
        })
    }

    fn build(
        &self,
        provider: &ProviderSettings,
        selectors: Vec<(PoolId, SelectorSettings)>,
    ) -> runscale_core::Result<Arc<dyn Provider>> {
        let config = provider
            .get::<T::Config>()
            .ok_or_else(|| build_mismatch("provider"))?;
        let pools = unpack(selectors.into_iter().map(|(p, s)| (p, s.value)), "selector")?;
        T::build(config, pools)
    }

    fn serves_unattributed_runners(&self) -> bool {
        T::serves_unattributed_runners()
    }

    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        <T::Config as schemars::JsonSchema>::json_schema(generator)
    }

    fn selector_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        <T::Selector as schemars::JsonSchema>::json_schema(generator)
    }
}

#[cfg(feature = "any-backend")]
impl<T: runscale_core::BackendType> AnyBackendType for BackendOf<T> {
    fn parse(
        &'static self,
        kind: &'static str,
        value: Value,
        path: &str,
    ) -> Result<BackendSettings, Vec<FieldError>> {
        let config: T::Config =
            typed(value, path, runscale_core::adapter_type::Validate::validate)?;
        Ok(BackendSettings {
            kind,
            adapter: self,
            value: Arc::new(config),
        })
    }

    fn parse_template(
        &self,
        value: Value,
        path: &str,
        pool: PoolContext<'_>,
    ) -> Result<TemplateSettings, Vec<FieldError>> {
        let template: T::Template = typed(value, path, |t| {
            runscale_core::adapter_type::Template::validate_for(t, pool)
        })?;
        let pool_path = path.strip_suffix(".template").unwrap_or(path);
        T::fit_pool(pool).map_err(|errors| prefixed(pool_path, errors))?;
        Ok(TemplateSettings {
            hash: runscale_core::adapter_type::Template::hash(&template),
            unattributed: runscale_core::adapter_type::Template::runners_unattributed(&template),
            value: Arc::new(template),
        })
    }

    fn build(
        &self,
        backend: &BackendSettings,
        templates: Vec<(PoolId, TemplateSettings)>,
    ) -> runscale_core::Result<Arc<dyn Backend>> {
        let config = backend
            .get::<T::Config>()
            .ok_or_else(|| build_mismatch("backend"))?;
        let templates = unpack(templates.into_iter().map(|(p, t)| (p, t.value)), "template")?;
        T::build(config, templates)
    }

    fn reuses_instances(&self) -> bool {
        T::reuses_instances()
    }

    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        <T::Config as schemars::JsonSchema>::json_schema(generator)
    }

    fn template_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        <T::Template as schemars::JsonSchema>::json_schema(generator)
    }
}

/// A selector parsed for another provider type than its provider's, which validation rules
/// out (the selector is parsed by its provider's type).
#[cfg(feature = "any-provider")]
fn mismatch(path: &str) -> FieldError {
    FieldError::new(path, "is not of its adapter's type")
}

/// The error for a selector or template of another type than its adapter's, which
/// validation rules out.
#[cfg(any(feature = "any-provider", feature = "any-backend"))]
fn build_mismatch(what: &str) -> runscale_core::Error {
    runscale_core::Error::new(
        "config.build",
        runscale_core::ErrorKind::Misconfigured,
        format!("the {what} is not of the adapter's type"),
    )
}

/// Deserializes `value` into `T`; an error names the exact field below `base`.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value, base: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = base.to_owned();
        for segment in e.path() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path = join_index(&path, *index),
                serde_path_to_error::Segment::Map { key } => path = join_key(&path, key),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.into_inner().to_string();
        explain(path, &message)
    })
}

/// Turns serde's messages into ones that name the field and say what would be valid.
fn explain(path: String, message: &str) -> FieldError {
    // "missing field `max`": the path is the parent's; name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return FieldError::new(join_key(&path, field), "is required but missing");
    }
    let mut message = message
        .replace(
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        )
        .replace("expected usize", "expected a non-negative whole number")
        .replace("expected a boolean", "expected true or false");
    if message.ends_with("expected a duration") {
        message.push_str(" such as \"90s\", \"10m\" or \"1h 30m\"");
    }
    if let Some(rest) = message.strip_prefix("invalid socket address syntax") {
        message =
            format!("invalid socket address{rest}, expected IP:PORT such as \"127.0.0.1:9090\"");
    }
    FieldError::new(path, message)
}

/// The pools' selectors or templates as their adapter type's `T`.
#[cfg(any(feature = "any-provider", feature = "any-backend"))]
fn unpack<T: Any + Clone>(
    items: impl Iterator<Item = (PoolId, Arc<dyn Parsed>)>,
    what: &str,
) -> runscale_core::Result<Vec<(PoolId, T)>> {
    items
        .map(|(pool, value)| Some((pool, downcast::<T>(&value)?.clone())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| build_mismatch(what))
}

/// Prefixes adapter validation errors (relative field paths) with `base`.
#[cfg(any(feature = "any-provider", feature = "any-backend"))]
fn prefixed(base: &str, errors: Vec<(String, String)>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|(field, message)| {
            let path = if field.is_empty() {
                base.to_owned()
            } else if field.starts_with('[') {
                format!("{base}{field}")
            } else {
                join_key(base, &field)
            };
            FieldError::new(path, message)
        })
        .collect()
}

/// Parses and checks one value with the adapter type's own `validate`.
#[cfg(any(feature = "any-provider", feature = "any-backend"))]
fn typed<T: DeserializeOwned>(
    value: Value,
    path: &str,
    validate: impl FnOnce(&T) -> Result<(), Vec<(String, String)>>,
) -> Result<T, Vec<FieldError>> {
    let parsed: T = from_value(value, path).map_err(|e| vec![e])?;
    validate(&parsed).map_err(|errors| prefixed(path, errors))?;
    Ok(parsed)
}

/// The error for a `type` this build does not have.
fn unknown_type(role: &str, types: &[TypeInfo], kind: &str, path: &str) -> FieldError {
    let available: Vec<&str> = types
        .iter()
        .filter(|t| t.compiled)
        .map(|t| t.name)
        .collect();
    let available = if available.is_empty() {
        "none".to_owned()
    } else {
        available.join(", ")
    };
    let message = match types.iter().find(|t| t.name == kind) {
        Some(t) => format!(
            "{role} type {kind:?} is not compiled into this build of runscale (rebuild with \
             the cargo feature {:?}); available here: {available}",
            t.feature
        ),
        None => {
            format!("unknown {role} type {kind:?}; available in this build: {available}")
        }
    };
    FieldError::new(path, message)
}

/// The registered type named `kind` of a role (`"provider"`, `"backend"`), if this build has
/// it; else the error at `path`'s `type` naming what is available (and the feature to enable).
fn compiled<T: ?Sized>(
    role: &str,
    registry: &'static [Registered<T>],
    kind: &str,
    path: &str,
) -> Result<(&'static str, &'static T), Vec<FieldError>> {
    match registry.iter().find(|r| r.name == kind) {
        Some(Registered {
            name,
            adapter: Some(adapter),
            ..
        }) => Ok((name, *adapter)),
        _ => {
            let types: Vec<TypeInfo> = registry.iter().map(Registered::info).collect();
            Err(vec![unknown_type(
                role,
                &types,
                kind,
                &join_key(path, "type"),
            )])
        }
    }
}

/// Parses and validates a provider's settings. `path` is the provider's (`providers[0]`).
pub(crate) fn parse_provider(
    kind: &str,
    settings: Map<String, Value>,
    path: &str,
) -> Result<ProviderSettings, Vec<FieldError>> {
    let (name, adapter) = compiled("provider", PROVIDERS, kind, path)?;
    adapter.parse(name, Value::Object(settings), path)
}

/// Parses and validates a backend's settings. `path` is the backend's (`backends[0]`).
pub(crate) fn parse_backend(
    kind: &str,
    settings: Map<String, Value>,
    path: &str,
) -> Result<BackendSettings, Vec<FieldError>> {
    let (name, adapter) = compiled("backend", BACKENDS, kind, path)?;
    adapter.parse(name, Value::Object(settings), path)
}

/// Parses and validates a pool's selector for its provider's type. `path` is the selector's.
pub(crate) fn parse_selector(
    provider: &ProviderSettings,
    value: Value,
    path: &str,
    pool: PoolContext<'_>,
) -> Result<SelectorSettings, Vec<FieldError>> {
    provider.adapter.parse_selector(provider, value, path, pool)
}

/// Parses and validates a pool's template for its backend's type. `path` is the template's.
pub(crate) fn parse_template(
    backend: &BackendSettings,
    value: Value,
    path: &str,
    pool: PoolContext<'_>,
) -> Result<TemplateSettings, Vec<FieldError>> {
    backend.adapter.parse_template(value, path, pool)
}

/// Builds a provider for the pools bound to it (in configuration order).
pub(crate) fn build_provider(
    settings: &ProviderSettings,
    selectors: Vec<(PoolId, SelectorSettings)>,
) -> runscale_core::Result<Arc<dyn Provider>> {
    settings.adapter.build(settings, selectors)
}

/// Builds a backend for the pools bound to it.
pub(crate) fn build_backend(
    settings: &BackendSettings,
    templates: Vec<(PoolId, TemplateSettings)>,
) -> runscale_core::Result<Arc<dyn Backend>> {
    settings.adapter.build(settings, templates)
}

/// The schema of one `providers`/`backends` entry of type `name` with settings of `schema`:
/// the settings' own schema plus the `name` and `type` keys.
fn entry_schema(mut schema: Schema, role: &str, name: &str) -> Schema {
    let name_schema = json_schema!({
        "type": "string",
        "description": format!("Unique name of this {role}; pools refer to it."),
    });
    let type_schema = json_schema!({
        "const": name,
        "description": format!("The {role} type."),
    });
    if let Some(obj) = schema.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(props) = props.as_object_mut() {
            props.insert("name".to_owned(), name_schema.to_value());
            props.insert("type".to_owned(), type_schema.to_value());
        }
        let required = obj
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(required) = required.as_array_mut() {
            required.insert(0, Value::from("type"));
            required.insert(0, Value::from("name"));
        }
    }
    schema
}

/// Exactly one of `variants` (they are told apart by their `type`).
fn one_of(description: &str, variants: Vec<Schema>) -> Schema {
    let variants: Vec<Value> = variants.into_iter().map(Schema::to_value).collect();
    json_schema!({ "description": description, "oneOf": variants })
}

/// Any of `variants`: which one applies depends on the adapter a pool refers to, which a JSON
/// Schema cannot follow, and a value may fit several.
fn any_of(description: &str, variants: Vec<Schema>) -> Schema {
    let variants: Vec<Value> = variants.into_iter().map(Schema::to_value).collect();
    json_schema!({ "description": description, "anyOf": variants })
}

fn list_of(item: Schema) -> Schema {
    json_schema!({ "type": "array", "items": item.to_value() })
}

/// One schema per type of `registry` that this build has, made by `schema(name, adapter)`.
fn compiled_schemas<T: ?Sized>(
    registry: &'static [Registered<T>],
    mut schema: impl FnMut(&'static str, &'static T) -> Schema,
) -> Vec<Schema> {
    registry
        .iter()
        .filter_map(|r| Some(schema(r.name, r.adapter?)))
        .collect()
}

/// JSON Schema of `providers`.
pub(crate) fn providers_schema(generator: &mut SchemaGenerator) -> Schema {
    let variants = compiled_schemas(PROVIDERS, |name, adapter| {
        entry_schema(adapter.settings_schema(generator), "provider", name)
    });
    list_of(one_of(
        "A provider: `name`, `type` and that type's settings.",
        variants,
    ))
}

/// JSON Schema of `backends`.
pub(crate) fn backends_schema(generator: &mut SchemaGenerator) -> Schema {
    let variants = compiled_schemas(BACKENDS, |name, adapter| {
        entry_schema(adapter.settings_schema(generator), "backend", name)
    });
    list_of(one_of(
        "A backend: `name`, `type` and that type's settings.",
        variants,
    ))
}

/// JSON Schema of a pool's `selector`.
pub(crate) fn selector_schema(generator: &mut SchemaGenerator) -> Schema {
    let variants = compiled_schemas(PROVIDERS, |_, adapter| adapter.selector_schema(generator));
    any_of(
        "Which jobs the pool serves; the shape is that of the pool's provider type.",
        variants,
    )
}

/// JSON Schema of a pool's `template`.
pub(crate) fn template_schema(generator: &mut SchemaGenerator) -> Schema {
    let variants = compiled_schemas(BACKENDS, |_, adapter| adapter.template_schema(generator));
    any_of(
        "How one instance is started; the shape is that of the pool's backend type.",
        variants,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_uncompiled_types_are_told_apart() {
        let types = [
            TypeInfo {
                name: "here",
                feature: "f-here",
                compiled: true,
            },
            TypeInfo {
                name: "elsewhere",
                feature: "f-elsewhere",
                compiled: false,
            },
        ];
        let e = unknown_type("backend", &types, "elsewhere", "backends[0].type");
        assert_eq!(e.path, "backends[0].type");
        assert!(e.message.contains("not compiled"), "{}", e.message);
        assert!(e.message.contains("f-elsewhere"), "{}", e.message);
        assert!(e.message.contains("available here: here"), "{}", e.message);
        let e = unknown_type("backend", &types, "nope", "backends[0].type");
        assert!(
            e.message.contains("unknown backend type \"nope\""),
            "{}",
            e.message
        );
        assert!(e.message.contains("here"), "{}", e.message);
    }

    #[test]
    fn serde_messages_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            max: u32,
            #[serde(default, with = "humantime_serde")]
            wait: Option<std::time::Duration>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            items: Vec<Inner>,
        }
        let e = from_value::<Outer>(serde_json::json!({"items": [{"max": 1}, {"max": -1}]}), "x")
            .expect_err("negative");
        assert_eq!(e.path, "x.items[1].max");
        assert!(e.message.contains("-1"), "{}", e.message);
        assert!(e.message.contains("whole number"), "{}", e.message);
        let e = from_value::<Outer>(serde_json::json!({"items": [{}]}), "").expect_err("missing");
        assert_eq!(e.path, "items[0].max");
        assert!(e.message.contains("required"), "{}", e.message);
        let e = from_value::<Outer>(serde_json::json!({"items": [{"max": 1, "mux": 2}]}), "")
            .expect_err("unknown");
        assert_eq!(e.path, "items[0].mux");
        assert!(e.message.contains("unknown field `mux`"), "{}", e.message);
        assert!(e.message.contains("`max`"), "{}", e.message);
        let e = from_value::<Outer>(
            serde_json::json!({"items": [{"max": 1, "wait": "soon"}]}),
            "",
        )
        .expect_err("bad duration");
        assert_eq!(e.path, "items[0].wait");
    }
}
