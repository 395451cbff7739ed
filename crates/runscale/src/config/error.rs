//! Errors of loading, validating and building a configuration.
//!
//! Every problem with the file names where it is: the field path exactly as written
//! (`pools[1].max`, `providers[0].type`) and, when known, the line. Every one of them means
//! "bad configuration" (exit code 2). Building (constructing adapters) can also fail for other
//! reasons, told apart by [`BuildError::is_misconfiguration`].

use std::fmt;
use std::path::PathBuf;

use runscale_core::ErrorKind;

use super::interpolate::InterpolationError;
use super::source::{LineIndex, SyntaxError};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `pools[1].max` (empty for the whole file).
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
    /// 1-based line of the field (or of its nearest enclosing field), when known.
    pub line: Option<u64>,
}

impl FieldError {
    /// A problem with the field at `path`; the line is filled in later.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Fills in the line of every error from the file's index.
pub(crate) fn locate(mut errors: Vec<FieldError>, lines: &LineIndex) -> Vec<FieldError> {
    for e in &mut errors {
        if e.line.is_none() {
            e.line = lines.line_of(&e.path);
        }
    }
    errors
}

/// Why a configuration file could not be loaded. Every variant is a bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No configuration file was given and the environment selects no compatibility mode.
    #[error(
        "no configuration: pass -c FILE (or set RUNSCALE_CONFIG), or set the environment of a \
         system runscale replaces (SECRET_NAME, ... for CircleCI's simple-Lambda autoscaler; \
         APP_CIRCLE_TOKEN, ... for circleci-runner-autoscaler)"
    )]
    Missing,
    /// The file cannot be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `${VAR}` placeholders could not be replaced.
    #[error("configuration file {path}: {}", list(errors))]
    Interpolation {
        /// The file.
        path: PathBuf,
        /// Every problem, with its line.
        errors: Vec<InterpolationError>,
    },
    /// The file is not valid YAML.
    #[error("configuration file {path} is not valid YAML: {error}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and why.
        error: SyntaxError,
    },
    /// Fields have the wrong type or values that are not allowed.
    #[error("configuration file {path} is invalid: {}", list(errors))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, each naming its field.
        errors: Vec<FieldError>,
    },
}

impl ConfigError {
    /// The field errors, for [`ConfigError::Invalid`].
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.len() == 1 {
        return items[0].to_string();
    }
    let mut out = format!("{} problems", items.len());
    for item in items {
        out.push_str("\n  - ");
        out.push_str(&item.to_string());
    }
    out
}

/// Why an adapter could not be constructed from a valid configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {role} {name:?}")]
pub struct BuildError {
    /// `provider` or `backend`.
    pub role: &'static str,
    /// Its configured name.
    pub name: String,
    /// The adapter's error.
    #[source]
    pub source: runscale_core::Error,
}

impl BuildError {
    /// Whether the adapter blamed its configuration or credentials (a missing secret, an
    /// unusable directory), as opposed to a failure that may pass.
    pub fn is_misconfiguration(&self) -> bool {
        self.source.kind() == ErrorKind::Misconfigured
    }
}
