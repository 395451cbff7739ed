//! Where a secret comes from in configuration: `{env: NAME}`, `{file: PATH}` or
//! `{aws_secrets_manager: {name: NAME, key: KEY, region: REGION}}`.
//!
//! The value is read when the configuration is built (not when it is validated) and kept in a
//! [`SecretString`], whose `Debug` output is redacted. Error messages name the variable, the
//! file or the secret, never the value.
//!
//! Building is synchronous and makes no network call, so secrets held by a remote store (AWS
//! Secrets Manager) are fetched before it: the binary finds every such reference in the
//! configuration, fetches each once at start-up and records the value, or why it could not be
//! had, with [`preload`]. [`SecretRef::resolve`] then answers from that process-wide store; a
//! reference nobody fetched is an error ([`SecretError::NotFetched`]). This crate makes no AWS
//! call and has no AWS dependency. A value rotated in Secrets Manager is seen at the next
//! start of the process.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{LazyLock, PoisonError, RwLock};

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// A reference to a secret value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline removed).
    File(PathBuf),
    /// Fetched from AWS Secrets Manager when the process starts (boxed: it is rare and keeps
    /// every reference small).
    #[serde(rename = "aws_secrets_manager")]
    AwsSecretsManager(Box<AwsSecret>),
}

/// A secret in AWS Secrets Manager: its whole `SecretString`, or one field of it when the
/// string is a JSON object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSecret {
    /// The secret's name or ARN.
    pub name: String,
    /// The field of the secret's JSON object to use (a string). Default: the whole secret
    /// string.
    #[serde(default = "default_key")]
    pub key: Option<String>,
    /// The AWS region of the secret. Default: the region of the AWS environment
    /// (`AWS_REGION`, the profile, or the instance's metadata).
    #[serde(default = "default_region")]
    pub region: Option<String>,
}

/// The default [`AwsSecret::key`]: none, the whole secret string.
fn default_key() -> Option<String> {
    None
}

/// The default [`AwsSecret::region`]: none, the environment's region.
fn default_region() -> Option<String> {
    None
}

impl fmt::Display for AwsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AWS Secrets Manager secret {:?}", self.name)?;
        if let Some(key) = &self.key {
            write!(f, " (key {key:?})")?;
        }
        if let Some(region) = &self.region {
            write!(f, " in {region}")?;
        }
        Ok(())
    }
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
    /// A secret of a remote store that was not fetched before the configuration was built.
    #[error("{0} was not fetched at start-up")]
    NotFetched(String),
    /// A secret of a remote store could not be fetched.
    #[error("{secret}: {reason}")]
    Fetch {
        /// Which secret (its name, never its value).
        secret: String,
        /// Why, as recorded by [`preload`].
        reason: String,
    },
}

/// Values of remote secrets fetched at start-up, or why each could not be fetched.
type Store = HashMap<SecretRef, Result<SecretString, String>>;

static PRELOADED: LazyLock<RwLock<Store>> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// Records the outcome of fetching a remote secret (see the module documentation): its value,
/// or why it could not be had (which must not contain the value). Replaces an earlier outcome
/// for the same reference.
pub fn preload(reference: &SecretRef, outcome: Result<SecretString, String>) {
    PRELOADED
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(reference.clone(), outcome);
}

impl SecretRef {
    /// Whether the value lives in a remote store and must be [`preload`]ed before
    /// [`resolve`](Self::resolve) can return it.
    pub fn is_remote(&self) -> bool {
        matches!(self, SecretRef::AwsSecretsManager(_))
    }

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
            SecretRef::AwsSecretsManager(secret) => {
                let store = PRELOADED.read().unwrap_or_else(PoisonError::into_inner);
                match store.get(self) {
                    Some(Ok(value)) => Ok(value.clone()),
                    Some(Err(reason)) => Err(SecretError::Fetch {
                        secret: secret.to_string(),
                        reason: reason.clone(),
                    }),
                    None => Err(SecretError::NotFetched(secret.to_string())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;
    use serde_json::json;

    use super::*;

    fn aws(name: &str, key: Option<&str>) -> SecretRef {
        SecretRef::AwsSecretsManager(Box::new(AwsSecret {
            name: name.to_owned(),
            key: key.map(str::to_owned),
            region: None,
        }))
    }

    #[test]
    fn aws_secrets_manager_parses_with_optional_key_and_region() {
        let r: SecretRef =
            serde_json::from_value(json!({"aws_secrets_manager": {"name": "ci/github"}}))
                .expect("parse");
        assert_eq!(r, aws("ci/github", None));
        assert!(r.is_remote());
        let r: SecretRef = serde_json::from_value(json!({"aws_secrets_manager": {
            "name": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci-AbCdEf",
            "key": "token",
            "region": "eu-west-1",
        }}))
        .expect("parse");
        let SecretRef::AwsSecretsManager(s) = &r else {
            panic!("{r:?}");
        };
        assert_eq!(s.key.as_deref(), Some("token"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert!(!SecretRef::Env("X".into()).is_remote());
    }

    #[test]
    fn aws_secrets_manager_rejects_unknown_and_missing_fields() {
        let unknown = serde_json::from_value::<SecretRef>(
            json!({"aws_secrets_manager": {"name": "a", "field": "b"}}),
        )
        .expect_err("unknown field");
        assert!(
            unknown.to_string().contains("unknown field `field`"),
            "{unknown}"
        );
        let missing =
            serde_json::from_value::<SecretRef>(json!({"aws_secrets_manager": {"key": "b"}}))
                .expect_err("missing name");
        assert!(
            missing.to_string().contains("missing field `name`"),
            "{missing}"
        );
        let other = serde_json::from_value::<SecretRef>(json!({"vault": {"name": "a"}}))
            .expect_err("unknown variant");
        assert!(other.to_string().contains("aws_secrets_manager"), "{other}");
    }

    #[test]
    fn an_unfetched_aws_secret_is_an_error_naming_it() {
        let e = aws("core-test/never-fetched", Some("token"))
            .resolve()
            .expect_err("not fetched");
        assert!(matches!(e, SecretError::NotFetched(_)));
        assert_eq!(
            e.to_string(),
            "AWS Secrets Manager secret \"core-test/never-fetched\" (key \"token\") was not \
             fetched at start-up"
        );
    }

    #[test]
    fn preloaded_values_and_failures_are_returned_per_reference() {
        let token = aws("core-test/preloaded", Some("token"));
        let user = aws("core-test/preloaded", Some("user"));
        let whole = aws("core-test/preloaded", None);
        preload(&token, Ok(SecretString::from("s3cr3t-value")));
        preload(
            &user,
            Err("the secret's JSON has no key \"user\"".to_owned()),
        );
        assert_eq!(
            token.resolve().expect("value").expose_secret(),
            "s3cr3t-value"
        );
        let e = user.resolve().expect_err("failure");
        assert_eq!(
            e.to_string(),
            "AWS Secrets Manager secret \"core-test/preloaded\" (key \"user\"): the secret's \
             JSON has no key \"user\""
        );
        assert!(matches!(whole.resolve(), Err(SecretError::NotFetched(_))));
        // The same name in another region is another secret.
        let elsewhere = SecretRef::AwsSecretsManager(Box::new(AwsSecret {
            name: "core-test/preloaded".to_owned(),
            key: Some("token".to_owned()),
            region: Some("eu-west-1".to_owned()),
        }));
        assert!(elsewhere.resolve().is_err());
        // A later fetch replaces the outcome.
        preload(&token, Ok(SecretString::from("rotated")));
        assert_eq!(token.resolve().expect("value").expose_secret(), "rotated");
        assert!(!format!("{token:?}{e:?}").contains("rotated"));
    }
}
