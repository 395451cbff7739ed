//! Where a secret comes from in configuration: `{env: NAME}` or `{file: PATH}`.
//!
//! The value is read when the configuration is built (not when it is validated) and kept in a
//! [`SecretString`], whose `Debug` output is redacted. Error messages name the variable or the
//! file, never the value.

use std::path::PathBuf;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// A reference to a secret value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline removed).
    File(PathBuf),
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set or not valid UTF-8.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The variable is empty.
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    /// The file cannot be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("secret file {0} is empty")]
    FileEmpty(PathBuf),
}

impl SecretRef {
    /// Reads the secret.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        match self {
            SecretRef::Env(name) => {
                let v = std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?;
                if v.is_empty() {
                    return Err(SecretError::EnvEmpty(name.clone()));
                }
                Ok(SecretString::from(v))
            }
            SecretRef::File(path) => {
                let v = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let v = v.trim_end_matches(['\n', '\r']);
                if v.is_empty() {
                    return Err(SecretError::FileEmpty(path.clone()));
                }
                Ok(SecretString::from(v.to_owned()))
            }
        }
    }
}
