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
///
/// Deserialised by hand (see the `Deserialize` impl) so that a value written where a
/// reference belongs — `token: ghp_…` — is never quoted back in an error message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
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

/// What a secret reference must look like, for errors that cannot quote what was written.
const SECRET_FORMS: &str = "a secret must be a reference: `{env: NAME}`, `{file: PATH}` or \
     `{aws_secrets_manager: {name: NAME, key: KEY, region: REGION}}`";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

/// Reads `{env: …}`, `{file: …}` or `{aws_secrets_manager: {…}}`. Anything else is refused
/// without quoting it: it may be the secret itself, written inline by mistake.
struct SecretRefVisitor;

impl SecretRefVisitor {
    /// The error for a value that is not a one-key mapping (a string, a number, a list…).
    fn inline<E: serde::de::Error>(what: &str) -> E {
        E::custom(format_args!(
            "{SECRET_FORMS}, not {what} (secrets are never written in the configuration; the \
             value is not shown)"
        ))
    }
}

impl<'de> serde::de::Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_FORMS)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
        Err(Self::inline("an inline string"))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
        Err(Self::inline("a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretRef, E> {
        Err(Self::inline("inline bytes"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        Err(Self::inline("null"))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        Err(Self::inline("null"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(Self::inline("a list"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        use serde::de::Error as _;

        // Keys are read as owned strings and only ever named when they are one of the three
        // sources: an unknown key is not quoted either.
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format_args!(
                "{SECRET_FORMS}, not an empty mapping"
            )));
        };
        let reference = match key.as_str() {
            "env" => SecretRef::Env(map.next_value()?),
            "file" => SecretRef::File(map.next_value()?),
            "aws_secrets_manager" => SecretRef::AwsSecretsManager(map.next_value()?),
            _ => {
                return Err(A::Error::custom(format_args!(
                    "{SECRET_FORMS}; this mapping has another key (not shown)"
                )));
            }
        };
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(format_args!(
                "{SECRET_FORMS}: exactly one of them, not several keys"
            )));
        }
        Ok(reference)
    }
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
    /// The path is not a regular file (a device, a FIFO, a directory, a socket): reading it
    /// could block or never end.
    #[error("secret file {path} is not a regular file but {kind}")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is larger than [`MAX_SECRET_FILE`].
    #[error("secret file {path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
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

/// The largest secret file read, in bytes: a private key or a token is a few KiB; anything
/// larger is a wrong path (`/dev/zero` once grew a process to 24 GB).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret file as UTF-8: a regular file (after following symbolic links, as the
/// Kubernetes and systemd credential mounts use) of at most [`MAX_SECRET_FILE`] bytes. The
/// type is checked before opening, so a FIFO never blocks the read, and again on the opened
/// file; the read itself stops one byte past the limit whatever the file claims.
fn read_secret_file(path: &std::path::Path) -> Result<String, SecretError> {
    use std::io::Read as _;

    let io = |source| SecretError::File {
        path: path.to_path_buf(),
        source,
    };
    let regular = |meta: &std::fs::Metadata| -> Result<(), SecretError> {
        if meta.is_file() {
            return Ok(());
        }
        Err(SecretError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(meta),
        })
    };
    regular(&std::fs::metadata(path).map_err(io)?)?;
    let file = std::fs::File::open(path).map_err(io)?;
    regular(&file.metadata().map_err(io)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_SECRET_FILE,
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not valid UTF-8",
        ))
    })
}

/// What a path that is not a regular file is, for [`SecretError::NotRegular`].
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
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
                let v = read_secret_file(path)?;
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
    fn a_secret_written_inline_is_refused_without_quoting_it() {
        for inline in [
            json!("ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            json!(4711),
            json!(true),
            json!(["ghp_16C7e42F292c6912E7710c838347Ae178B4a"]),
            json!({"ghp_16C7e42F292c6912E7710c838347Ae178B4a": 1}),
            json!({"env": "A", "ghp_16C7e42F292c6912E7710c838347Ae178B4a": 1}),
        ] {
            let e = serde_json::from_value::<SecretRef>(inline.clone())
                .expect_err("an inline value is not a reference")
                .to_string();
            assert!(!e.contains("ghp_"), "{e}");
            assert!(!e.contains("4711"), "{e}");
            assert!(e.contains("{env: NAME}"), "{inline}: {e}");
        }
        assert_eq!(
            serde_json::from_value::<SecretRef>(json!({"env": "GITHUB_TOKEN"})).expect("env"),
            SecretRef::Env("GITHUB_TOKEN".into())
        );
        assert_eq!(
            serde_json::from_value::<SecretRef>(json!({"file": "/run/secrets/t"})).expect("file"),
            SecretRef::File("/run/secrets/t".into())
        );
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("runscale-secret-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn secret_files_are_regular_files_of_bounded_size() {
        let dir = Scratch::new("bounds");
        let ok = dir.0.join("token");
        std::fs::write(&ok, "s3cret\n").expect("write");
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&ok, &link).expect("symlink");
        for path in [&ok, &link] {
            let v = SecretRef::File(path.clone())
                .resolve()
                .expect("a regular file");
            assert_eq!(v.expose_secret(), "s3cret");
        }

        let big = dir.0.join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE as usize + 1]).expect("write");
        let e = SecretRef::File(big).resolve().expect_err("too large");
        assert!(matches!(e, SecretError::TooLarge { .. }), "{e}");
        let at_limit = dir.0.join("at-limit");
        std::fs::write(&at_limit, vec![b'a'; MAX_SECRET_FILE as usize]).expect("write");
        SecretRef::File(at_limit).resolve().expect("at the limit");

        // A device that never ends, a FIFO nobody writes to (opening it would block), a
        // directory: refused before any read, naming what they are.
        let fifo = dir.0.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
        let cases = [
            (std::path::PathBuf::from("/dev/zero"), "a character device"),
            (dir.0.clone(), "a directory"),
            (fifo, "a FIFO"),
        ];
        for (path, kind) in cases {
            let e = SecretRef::File(path.clone())
                .resolve()
                .expect_err("not regular");
            assert!(
                matches!(&e, SecretError::NotRegular { kind: k, .. } if *k == kind),
                "{}: {e}",
                path.display()
            );
        }

        let binary = dir.0.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        let e = SecretRef::File(binary).resolve().expect_err("not UTF-8");
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
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
