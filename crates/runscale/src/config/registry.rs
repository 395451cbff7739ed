//! The explicit registry of provider and backend types: which `type` names exist, which cargo
//! feature compiles each in, how their settings, selectors and templates are parsed and
//! validated, how the adapters are built, and their JSON Schemas.
//!
//! Adding a type touches this file only: a variant of the settings enums, one arm in each
//! function, and one line in [`PROVIDER_TYPES`] or [`BACKEND_TYPES`]. A configuration naming
//! a type that was not compiled in gets an error naming the cargo feature.

// A build without any provider type or without any backend type has empty enums here, so
// code handling their values is unreachable and some helpers unused: that is expected.
#![cfg_attr(
    not(all(
        any(feature = "provider-exec", feature = "provider-github"),
        feature = "backend-local-process"
    )),
    allow(unused, unreachable_code, unreachable_patterns)
)]
use std::collections::HashMap;
use std::sync::Arc;

#[cfg(feature = "backend-aws-asg")]
use runscale_backends::aws_asg;
#[cfg(feature = "backend-aws-ec2")]
use runscale_backends::aws_ec2;
#[cfg(feature = "backend-exec")]
use runscale_backends::exec as exec_backend;
#[cfg(feature = "backend-kubernetes")]
use runscale_backends::kubernetes;
#[cfg(feature = "backend-local-process")]
use runscale_backends::local_process;
use runscale_core::{Backend, PoolId, Provider};
#[cfg(feature = "provider-buildkite")]
use runscale_providers::buildkite;
#[cfg(feature = "provider-circleci")]
use runscale_providers::circleci;
#[cfg(feature = "provider-exec")]
use runscale_providers::exec;
#[cfg(feature = "provider-github")]
use runscale_providers::github;
#[cfg(feature = "provider-gitlab")]
use runscale_providers::gitlab;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::FieldError;
use super::source::{join_index, join_key};

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

/// Every provider type runscale knows.
pub const PROVIDER_TYPES: &[TypeInfo] = &[
    TypeInfo {
        name: "exec",
        feature: "provider-exec",
        compiled: cfg!(feature = "provider-exec"),
    },
    TypeInfo {
        name: "github",
        feature: "provider-github",
        compiled: cfg!(feature = "provider-github"),
    },
    TypeInfo {
        name: "circleci",
        feature: "provider-circleci",
        compiled: cfg!(feature = "provider-circleci"),
    },
    TypeInfo {
        name: "gitlab",
        feature: "provider-gitlab",
        compiled: cfg!(feature = "provider-gitlab"),
    },
    TypeInfo {
        name: "buildkite",
        feature: "provider-buildkite",
        compiled: cfg!(feature = "provider-buildkite"),
    },
];

/// Every backend type runscale knows.
pub const BACKEND_TYPES: &[TypeInfo] = &[
    TypeInfo {
        name: "local-process",
        feature: "backend-local-process",
        compiled: cfg!(feature = "backend-local-process"),
    },
    TypeInfo {
        name: "exec",
        feature: "backend-exec",
        compiled: cfg!(feature = "backend-exec"),
    },
    TypeInfo {
        name: "kubernetes",
        feature: "backend-kubernetes",
        compiled: cfg!(feature = "backend-kubernetes"),
    },
    TypeInfo {
        name: "aws-asg",
        feature: "backend-aws-asg",
        compiled: cfg!(feature = "backend-aws-asg"),
    },
    TypeInfo {
        name: "aws-ec2",
        feature: "backend-aws-ec2",
        compiled: cfg!(feature = "backend-aws-ec2"),
    },
];

/// A provider's settings, parsed into its type's configuration.
#[derive(Clone, Debug)]
pub enum ProviderSettings {
    /// `exec`.
    #[cfg(feature = "provider-exec")]
    Exec(exec::Config),
    /// `github`.
    #[cfg(feature = "provider-github")]
    Github(github::Config),
    /// `circleci`.
    #[cfg(feature = "provider-circleci")]
    Circleci(circleci::Config),
    /// `gitlab`.
    #[cfg(feature = "provider-gitlab")]
    Gitlab(gitlab::Config),
    /// `buildkite`.
    #[cfg(feature = "provider-buildkite")]
    Buildkite(buildkite::Config),
}

/// A pool's selector, parsed into its provider type's selector.
#[derive(Clone, Debug)]
pub enum SelectorSettings {
    /// `exec`.
    #[cfg(feature = "provider-exec")]
    Exec(exec::PoolSelector),
    /// `github`.
    #[cfg(feature = "provider-github")]
    Github(github::PoolSelector),
    /// `circleci`.
    #[cfg(feature = "provider-circleci")]
    Circleci(circleci::PoolSelector),
    /// `gitlab`.
    #[cfg(feature = "provider-gitlab")]
    Gitlab(gitlab::PoolSelector),
    /// `buildkite`.
    #[cfg(feature = "provider-buildkite")]
    Buildkite(buildkite::PoolSelector),
}

impl SelectorSettings {
    /// The labels the selector matches jobs by (for the simulator's routing).
    pub fn labels(&self) -> Vec<String> {
        match *self {
            #[cfg(feature = "provider-exec")]
            SelectorSettings::Exec(ref s) => s.labels.clone(),
            #[cfg(feature = "provider-github")]
            SelectorSettings::Github(ref s) => s.labels.clone(),
            #[cfg(feature = "provider-circleci")]
            SelectorSettings::Circleci(ref s) => vec![s.resource_class.clone()],
            #[cfg(feature = "provider-gitlab")]
            SelectorSettings::Gitlab(ref s) => s.tags.clone(),
            #[cfg(feature = "provider-buildkite")]
            SelectorSettings::Buildkite(ref s) => std::iter::once(format!("queue={}", s.queue))
                .chain(s.tags.iter().map(|(k, v)| format!("{k}={v}")))
                .collect(),
        }
    }
}

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

/// A backend's settings, parsed into its type's configuration.
#[derive(Clone, Debug)]
pub enum BackendSettings {
    /// `local-process`.
    #[cfg(feature = "backend-local-process")]
    LocalProcess(local_process::Config),
    /// `exec`.
    #[cfg(feature = "backend-exec")]
    Exec(exec_backend::Config),
    /// `kubernetes`.
    #[cfg(feature = "backend-kubernetes")]
    Kubernetes(kubernetes::Config),
    /// `aws-asg`.
    #[cfg(feature = "backend-aws-asg")]
    AwsAsg(aws_asg::Config),
    /// `aws-ec2`.
    #[cfg(feature = "backend-aws-ec2")]
    AwsEc2(aws_ec2::Config),
}

/// A pool's template, parsed into its backend type's template.
#[derive(Clone, Debug)]
pub enum TemplateSettings {
    /// `local-process`.
    #[cfg(feature = "backend-local-process")]
    LocalProcess(local_process::PoolTemplate),
    /// `exec`.
    #[cfg(feature = "backend-exec")]
    Exec(exec_backend::PoolTemplate),
    /// `kubernetes` (boxed: a pod template is large).
    #[cfg(feature = "backend-kubernetes")]
    Kubernetes(Box<kubernetes::PoolTemplate>),
    /// `aws-asg`.
    #[cfg(feature = "backend-aws-asg")]
    AwsAsg(aws_asg::PoolTemplate),
    /// `aws-ec2` (boxed: a template with its overrides is large).
    #[cfg(feature = "backend-aws-ec2")]
    AwsEc2(Box<aws_ec2::PoolTemplate>),
}

impl ProviderSettings {
    /// The type name.
    pub fn kind(&self) -> &'static str {
        match *self {
            #[cfg(feature = "provider-exec")]
            ProviderSettings::Exec(_) => "exec",
            #[cfg(feature = "provider-github")]
            ProviderSettings::Github(_) => "github",
            #[cfg(feature = "provider-circleci")]
            ProviderSettings::Circleci(_) => "circleci",
            #[cfg(feature = "provider-gitlab")]
            ProviderSettings::Gitlab(_) => "gitlab",
            #[cfg(feature = "provider-buildkite")]
            ProviderSettings::Buildkite(_) => "buildkite",
        }
    }
}

impl BackendSettings {
    /// The type name.
    pub fn kind(&self) -> &'static str {
        match *self {
            #[cfg(feature = "backend-local-process")]
            BackendSettings::LocalProcess(_) => "local-process",
            #[cfg(feature = "backend-exec")]
            BackendSettings::Exec(_) => "exec",
            #[cfg(feature = "backend-kubernetes")]
            BackendSettings::Kubernetes(_) => "kubernetes",
            #[cfg(feature = "backend-aws-asg")]
            BackendSettings::AwsAsg(_) => "aws-asg",
            #[cfg(feature = "backend-aws-ec2")]
            BackendSettings::AwsEc2(_) => "aws-ec2",
        }
    }
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

/// Prefixes adapter validation errors (relative field paths) with `base`.
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

/// Parses and validates a provider's settings. `path` is the provider's (`providers[0]`).
pub(crate) fn parse_provider(
    kind: &str,
    settings: Map<String, Value>,
    path: &str,
) -> Result<ProviderSettings, Vec<FieldError>> {
    match kind {
        #[cfg(feature = "provider-exec")]
        "exec" => {
            typed(Value::Object(settings), path, exec::Config::validate).map(ProviderSettings::Exec)
        }
        #[cfg(feature = "provider-github")]
        "github" => typed(Value::Object(settings), path, github::Config::validate)
            .map(ProviderSettings::Github),
        #[cfg(feature = "provider-circleci")]
        "circleci" => typed(Value::Object(settings), path, circleci::Config::validate)
            .map(ProviderSettings::Circleci),
        #[cfg(feature = "provider-gitlab")]
        "gitlab" => typed(Value::Object(settings), path, gitlab::Config::validate)
            .map(ProviderSettings::Gitlab),
        #[cfg(feature = "provider-buildkite")]
        "buildkite" => typed(Value::Object(settings), path, buildkite::Config::validate)
            .map(ProviderSettings::Buildkite),
        _ => {
            let _ = settings;
            Err(vec![unknown_type(
                "provider",
                PROVIDER_TYPES,
                kind,
                &join_key(path, "type"),
            )])
        }
    }
}

/// Parses and validates a backend's settings. `path` is the backend's (`backends[0]`).
pub(crate) fn parse_backend(
    kind: &str,
    settings: Map<String, Value>,
    path: &str,
) -> Result<BackendSettings, Vec<FieldError>> {
    match kind {
        #[cfg(feature = "backend-local-process")]
        "local-process" => typed(
            Value::Object(settings),
            path,
            local_process::Config::validate,
        )
        .map(BackendSettings::LocalProcess),
        #[cfg(feature = "backend-exec")]
        "exec" => typed(
            Value::Object(settings),
            path,
            exec_backend::Config::validate,
        )
        .map(BackendSettings::Exec),
        #[cfg(feature = "backend-kubernetes")]
        "kubernetes" => typed(Value::Object(settings), path, kubernetes::Config::validate)
            .map(BackendSettings::Kubernetes),
        #[cfg(feature = "backend-aws-asg")]
        "aws-asg" => typed(Value::Object(settings), path, aws_asg::Config::validate)
            .map(BackendSettings::AwsAsg),
        #[cfg(feature = "backend-aws-ec2")]
        "aws-ec2" => typed(Value::Object(settings), path, aws_ec2::Config::validate)
            .map(BackendSettings::AwsEc2),
        _ => {
            let _ = settings;
            Err(vec![unknown_type(
                "backend",
                BACKEND_TYPES,
                kind,
                &join_key(path, "type"),
            )])
        }
    }
}

/// Parses and validates a pool's selector for its provider's type. `path` is the selector's.
pub(crate) fn parse_selector(
    provider: &ProviderSettings,
    value: Value,
    path: &str,
    pool: PoolContext<'_>,
) -> Result<SelectorSettings, Vec<FieldError>> {
    let _ = (&value, path, pool);
    match *provider {
        #[cfg(feature = "provider-exec")]
        ProviderSettings::Exec(_) => {
            typed(value, path, exec::PoolSelector::validate).map(SelectorSettings::Exec)
        }
        #[cfg(feature = "provider-github")]
        ProviderSettings::Github(_) => {
            let mut s = typed(value, path, github::PoolSelector::validate)?;
            // GitHub registers ephemeral runners with a JIT configuration: it needs the pool's
            // setting.
            s.ephemeral = pool.ephemeral;
            Ok(SelectorSettings::Github(s))
        }
        #[cfg(feature = "provider-circleci")]
        ProviderSettings::Circleci(_) => {
            typed(value, path, circleci::PoolSelector::validate).map(SelectorSettings::Circleci)
        }
        #[cfg(feature = "provider-gitlab")]
        ProviderSettings::Gitlab(ref config) => {
            let s = typed(value, path, gitlab::PoolSelector::validate)?;
            // Each slot's system_id numbers it on two digits: the pool's runners_per_instance.
            let pool_path = path.strip_suffix(".selector").unwrap_or(path);
            gitlab::validate_pool(config, &s, pool.runners_per_instance)
                .map_err(|errors| prefixed(pool_path, errors))?;
            Ok(SelectorSettings::Gitlab(s))
        }
        #[cfg(feature = "provider-buildkite")]
        ProviderSettings::Buildkite(_) => {
            typed(value, path, buildkite::PoolSelector::validate).map(SelectorSettings::Buildkite)
        }
    }
}

/// Parses and validates a pool's template for its backend's type. `path` is the template's;
/// `runners_per_instance` is the pool's.
pub(crate) fn parse_template(
    backend: &BackendSettings,
    value: Value,
    path: &str,
    pool: PoolContext<'_>,
) -> Result<TemplateSettings, Vec<FieldError>> {
    let _ = (&value, path, pool);
    let runners_per_instance = pool.runners_per_instance;
    match *backend {
        #[cfg(feature = "backend-local-process")]
        BackendSettings::LocalProcess(_) => {
            let t = typed(value, path, local_process::PoolTemplate::validate)?;
            if t.credentials == local_process::CredentialsDelivery::Env && runners_per_instance > 1
            {
                return Err(vec![FieldError::new(
                    join_key(path, "credentials"),
                    format!(
                        "\"env\" delivery hosts one runner per process, but the pool has \
                         runners_per_instance: {runners_per_instance}; use \"file\" or set \
                         runners_per_instance to 1"
                    ),
                )]);
            }
            Ok(TemplateSettings::LocalProcess(t))
        }
        #[cfg(feature = "backend-exec")]
        BackendSettings::Exec(_) => {
            typed(value, path, exec_backend::PoolTemplate::validate).map(TemplateSettings::Exec)
        }
        #[cfg(feature = "backend-kubernetes")]
        BackendSettings::Kubernetes(_) => {
            let t = typed(value, path, kubernetes::PoolTemplate::validate)?;
            // The pool's own fields: its name and runners_per_instance, next to `template`.
            let pool_path = path.strip_suffix(".template").unwrap_or(path);
            kubernetes::validate_pool(pool.name, runners_per_instance)
                .map_err(|errors| prefixed(pool_path, errors))?;
            Ok(TemplateSettings::Kubernetes(Box::new(t)))
        }
        #[cfg(feature = "backend-aws-asg")]
        BackendSettings::AwsAsg(_) => {
            let t = typed(value, path, |t: &aws_asg::PoolTemplate| {
                t.validate(pool.name)
            })?;
            one_runner_per_instance("aws-asg", path, runners_per_instance)?;
            Ok(TemplateSettings::AwsAsg(t))
        }
        #[cfg(feature = "backend-aws-ec2")]
        BackendSettings::AwsEc2(_) => {
            let t = typed(value, path, |t: &aws_ec2::PoolTemplate| {
                t.validate(pool.name)
            })?;
            one_runner_per_instance("aws-ec2", path, runners_per_instance)?;
            Ok(TemplateSettings::AwsEc2(Box::new(t)))
        }
    }
}

/// Backends that host one runner per instance: an error at the pool's `runners_per_instance`
/// (`path` is the pool's template) unless it is 1.
#[cfg(any(feature = "backend-aws-asg", feature = "backend-aws-ec2"))]
fn one_runner_per_instance(
    kind: &str,
    path: &str,
    runners_per_instance: u32,
) -> Result<(), Vec<FieldError>> {
    if runners_per_instance == 1 {
        return Ok(());
    }
    let pool_path = path.strip_suffix(".template").unwrap_or(path);
    Err(vec![FieldError::new(
        join_key(pool_path, "runners_per_instance"),
        format!(
            "the {kind} backend runs one runner per instance; set 1, not {runners_per_instance}"
        ),
    )])
}

impl TemplateSettings {
    /// Whether the instances name their runners themselves, so runners cannot be attributed
    /// to instances (aws-asg's `runner_name: unknown`).
    pub fn runners_unattributed(&self) -> bool {
        match *self {
            #[cfg(feature = "backend-aws-asg")]
            TemplateSettings::AwsAsg(ref t) => t.runners_unattributed(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The backend's hash of the template (what decides how an instance is started).
    pub fn backend_hash(&self) -> String {
        match *self {
            #[cfg(feature = "backend-local-process")]
            TemplateSettings::LocalProcess(ref t) => t.template_hash(),
            #[cfg(feature = "backend-exec")]
            TemplateSettings::Exec(ref t) => t.template_hash(),
            #[cfg(feature = "backend-kubernetes")]
            TemplateSettings::Kubernetes(ref t) => t.template_hash(),
            #[cfg(feature = "backend-aws-asg")]
            TemplateSettings::AwsAsg(ref t) => t.hash(),
            #[cfg(feature = "backend-aws-ec2")]
            TemplateSettings::AwsEc2(ref t) => t.hash(),
        }
    }
}

/// The error for a selector or template of another type than its adapter's, which
/// [`Config::validate`](super::Config::validate) rules out.
#[allow(dead_code)]
fn mismatch(pool: &PoolId, what: &str) -> runscale_core::Error {
    runscale_core::Error::new(
        "config.build",
        runscale_core::ErrorKind::Misconfigured,
        format!("pool {pool}: the {what} is not of the adapter's type"),
    )
}

/// Builds a provider for the pools bound to it (in configuration order).
pub(crate) fn build_provider(
    settings: &ProviderSettings,
    selectors: Vec<(PoolId, SelectorSettings)>,
) -> runscale_core::Result<Arc<dyn Provider>> {
    let _ = &selectors;
    match *settings {
        #[cfg(feature = "provider-exec")]
        ProviderSettings::Exec(ref config) => {
            let pools = selectors
                .into_iter()
                .map(|(pool, s)| match s {
                    SelectorSettings::Exec(s) => Ok((pool, s)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "selector")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            Ok(Arc::new(exec::ExecProvider::new(config.clone(), pools)))
        }
        #[cfg(feature = "provider-github")]
        ProviderSettings::Github(ref config) => {
            let pools = selectors
                .into_iter()
                .map(|(pool, s)| match s {
                    SelectorSettings::Github(s) => Ok((pool, s)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "selector")),
                })
                .collect::<runscale_core::Result<Vec<_>>>()?;
            Ok(Arc::new(github::GithubProvider::new(
                config.clone(),
                pools,
            )?))
        }
        #[cfg(feature = "provider-circleci")]
        ProviderSettings::Circleci(ref config) => {
            let pools = selectors
                .into_iter()
                .map(|(pool, s)| match s {
                    SelectorSettings::Circleci(s) => Ok((pool, s)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "selector")),
                })
                .collect::<runscale_core::Result<Vec<_>>>()?;
            Ok(Arc::new(circleci::CircleciProvider::new(
                config.clone(),
                pools,
            )?))
        }
        #[cfg(feature = "provider-gitlab")]
        ProviderSettings::Gitlab(ref config) => {
            let pools = selectors
                .into_iter()
                .map(|(pool, s)| match s {
                    SelectorSettings::Gitlab(s) => Ok((pool, s)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "selector")),
                })
                .collect::<runscale_core::Result<Vec<_>>>()?;
            Ok(Arc::new(gitlab::GitlabProvider::new(
                config.clone(),
                pools,
            )?))
        }
        #[cfg(feature = "provider-buildkite")]
        ProviderSettings::Buildkite(ref config) => {
            let pools = selectors
                .into_iter()
                .map(|(pool, s)| match s {
                    SelectorSettings::Buildkite(s) => Ok((pool, s)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "selector")),
                })
                .collect::<runscale_core::Result<Vec<_>>>()?;
            Ok(Arc::new(buildkite::BuildkiteProvider::new(
                config.clone(),
                pools,
            )?))
        }
    }
}

/// Builds a backend for the pools bound to it.
pub(crate) fn build_backend(
    settings: &BackendSettings,
    templates: Vec<(PoolId, TemplateSettings)>,
) -> runscale_core::Result<Arc<dyn Backend>> {
    let _ = &templates;
    match *settings {
        #[cfg(feature = "backend-local-process")]
        BackendSettings::LocalProcess(ref config) => {
            let templates = templates
                .into_iter()
                .map(|(pool, t)| match t {
                    TemplateSettings::LocalProcess(t) => Ok((pool, t)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "template")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            let backend = local_process::LocalProcess::new(config.clone(), templates)?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-exec")]
        BackendSettings::Exec(ref config) => {
            let templates = templates
                .into_iter()
                .map(|(pool, t)| match t {
                    TemplateSettings::Exec(t) => Ok((pool, t)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "template")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            let backend = exec_backend::ExecBackend::new(config.clone(), templates)?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-kubernetes")]
        BackendSettings::Kubernetes(ref config) => {
            let templates = templates
                .into_iter()
                .map(|(pool, t)| match t {
                    TemplateSettings::Kubernetes(t) => Ok((pool, *t)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "template")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            let backend = kubernetes::Kubernetes::new(config.clone(), templates)?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "backend-aws-asg")]
        BackendSettings::AwsAsg(ref config) => {
            let templates = templates
                .into_iter()
                .map(|(pool, t)| match t {
                    TemplateSettings::AwsAsg(t) => Ok((pool, t)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "template")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            // The SDK loads its credential chain and region asynchronously: built on first use.
            let config = config.clone();
            Ok(Arc::new(super::deferred::Deferred::new(
                "aws-asg",
                move || {
                    let (config, templates) = (config.clone(), templates.clone());
                    async move {
                        let backend = aws_asg::AwsAsg::connect(config, templates).await?;
                        Ok(Arc::new(backend) as Arc<dyn Backend>)
                    }
                },
            )))
        }
        #[cfg(feature = "backend-aws-ec2")]
        BackendSettings::AwsEc2(ref config) => {
            let templates = templates
                .into_iter()
                .map(|(pool, t)| match t {
                    TemplateSettings::AwsEc2(t) => Ok((pool, *t)),
                    #[allow(unreachable_patterns)]
                    _ => Err(mismatch(&pool, "template")),
                })
                .collect::<runscale_core::Result<HashMap<_, _>>>()?;
            // The SDK loads its credential chain and region asynchronously: built on first use.
            let config = config.clone();
            Ok(Arc::new(super::deferred::Deferred::new(
                "aws-ec2",
                move || {
                    let (config, templates) = (config.clone(), templates.clone());
                    async move {
                        let backend = aws_ec2::AwsEc2::connect(config, templates).await?;
                        Ok(Arc::new(backend) as Arc<dyn Backend>)
                    }
                },
            )))
        }
    }
}

/// The schema of one `providers`/`backends` entry of type `name` with settings `T`: the
/// settings' own schema plus the `name` and `type` keys.
fn entry_schema<T: schemars::JsonSchema>(
    generator: &mut SchemaGenerator,
    role: &str,
    name: &str,
) -> Schema {
    let mut schema = T::json_schema(generator);
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

/// JSON Schema of `providers`.
#[allow(clippy::vec_init_then_push)]
pub(crate) fn providers_schema(generator: &mut SchemaGenerator) -> Schema {
    // One push per type compiled in (so possibly none).
    #[allow(unused_mut)]
    let mut variants: Vec<Schema> = Vec::new();
    #[cfg(feature = "provider-exec")]
    variants.push(entry_schema::<exec::Config>(generator, "provider", "exec"));
    #[cfg(feature = "provider-github")]
    variants.push(entry_schema::<github::Config>(
        generator, "provider", "github",
    ));
    #[cfg(feature = "provider-circleci")]
    variants.push(entry_schema::<circleci::Config>(
        generator, "provider", "circleci",
    ));
    #[cfg(feature = "provider-gitlab")]
    variants.push(entry_schema::<gitlab::Config>(
        generator, "provider", "gitlab",
    ));
    #[cfg(feature = "provider-buildkite")]
    variants.push(entry_schema::<buildkite::Config>(
        generator,
        "provider",
        "buildkite",
    ));
    let _ = &generator;
    list_of(one_of(
        "A provider: `name`, `type` and that type's settings.",
        variants,
    ))
}

/// JSON Schema of `backends`.
#[allow(clippy::vec_init_then_push)]
pub(crate) fn backends_schema(generator: &mut SchemaGenerator) -> Schema {
    // One push per type compiled in (so possibly none).
    #[allow(unused_mut)]
    let mut variants: Vec<Schema> = Vec::new();
    #[cfg(feature = "backend-local-process")]
    variants.push(entry_schema::<local_process::Config>(
        generator,
        "backend",
        "local-process",
    ));
    #[cfg(feature = "backend-exec")]
    variants.push(entry_schema::<exec_backend::Config>(
        generator, "backend", "exec",
    ));
    #[cfg(feature = "backend-kubernetes")]
    variants.push(entry_schema::<kubernetes::Config>(
        generator,
        "backend",
        "kubernetes",
    ));
    #[cfg(feature = "backend-aws-asg")]
    variants.push(entry_schema::<aws_asg::Config>(
        generator, "backend", "aws-asg",
    ));
    #[cfg(feature = "backend-aws-ec2")]
    variants.push(entry_schema::<aws_ec2::Config>(
        generator, "backend", "aws-ec2",
    ));
    let _ = &generator;
    list_of(one_of(
        "A backend: `name`, `type` and that type's settings.",
        variants,
    ))
}

/// JSON Schema of a pool's `selector`.
#[allow(clippy::vec_init_then_push)]
pub(crate) fn selector_schema(generator: &mut SchemaGenerator) -> Schema {
    // One push per type compiled in (so possibly none).
    #[allow(unused_mut)]
    let mut variants: Vec<Schema> = Vec::new();
    #[cfg(feature = "provider-exec")]
    variants.push(<exec::PoolSelector as schemars::JsonSchema>::json_schema(
        generator,
    ));
    #[cfg(feature = "provider-github")]
    variants.push(<github::PoolSelector as schemars::JsonSchema>::json_schema(
        generator,
    ));
    #[cfg(feature = "provider-circleci")]
    variants.push(<circleci::PoolSelector as schemars::JsonSchema>::json_schema(generator));
    #[cfg(feature = "provider-gitlab")]
    variants.push(<gitlab::PoolSelector as schemars::JsonSchema>::json_schema(
        generator,
    ));
    #[cfg(feature = "provider-buildkite")]
    variants.push(<buildkite::PoolSelector as schemars::JsonSchema>::json_schema(generator));
    let _ = &generator;
    any_of(
        "Which jobs the pool serves; the shape is that of the pool's provider type.",
        variants,
    )
}

/// JSON Schema of a pool's `template`.
#[allow(clippy::vec_init_then_push)]
pub(crate) fn template_schema(generator: &mut SchemaGenerator) -> Schema {
    // One push per type compiled in (so possibly none).
    #[allow(unused_mut)]
    let mut variants: Vec<Schema> = Vec::new();
    #[cfg(feature = "backend-local-process")]
    variants.push(<local_process::PoolTemplate as schemars::JsonSchema>::json_schema(generator));
    #[cfg(feature = "backend-exec")]
    variants.push(<exec_backend::PoolTemplate as schemars::JsonSchema>::json_schema(generator));
    #[cfg(feature = "backend-kubernetes")]
    variants.push(<kubernetes::PoolTemplate as schemars::JsonSchema>::json_schema(generator));
    #[cfg(feature = "backend-aws-asg")]
    variants.push(<aws_asg::PoolTemplate as schemars::JsonSchema>::json_schema(generator));
    #[cfg(feature = "backend-aws-ec2")]
    variants.push(<aws_ec2::PoolTemplate as schemars::JsonSchema>::json_schema(generator));
    let _ = &generator;
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
