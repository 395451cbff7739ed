//! Secrets from AWS Secrets Manager: `{aws_secrets_manager: {name: NAME, key: KEY, region:
//! REGION}}` wherever a secret is accepted.
//!
//! [`build`](super::build) is synchronous and makes no network call, so these secrets are
//! fetched before it, once per process start:
//!
//! 1. [`references`] (during validation, pure) finds every such reference in the adapter
//!    settings, selectors and templates as written, with its field path. Any mapping whose only
//!    key is `aws_secrets_manager` and whose value has the reference's shape counts; one that
//!    is not where a secret is accepted is fetched but never read. A build without the
//!    `secrets-aws` feature rejects them here.
//! 2. [`fetch`] (with the `secrets-aws` feature; `check`, `once` and `run` call it through
//!    [`fetch_secrets`](super::fetch_secrets)) reads each secret once with `GetSecretValue`,
//!    through the standard AWS credential chain and region (`AWS_REGION`, profiles, instance
//!    roles; `AWS_ENDPOINT_URL` is honoured), picks the JSON key when one is given, and records
//!    the value or why it could not be had with [`runscale_core::secret::preload`]. A secret
//!    stored as `SecretBinary` is read as text: base64-decoded when it is base64 (as CircleCI's
//!    simple-Lambda example reads it), else its own UTF-8 bytes.
//! 3. The adapters' `resolve()` while building reads the recorded outcome: a missing secret, a
//!    denied access or a missing key fails the adapter that uses it, with its field path and
//!    the secret's name (never its value), like an unset `{env: NAME}`.
//!
//! A secret rotated in Secrets Manager is seen when runscale starts again.

use runscale_core::secret::SecretRef;
use serde_json::Value;

use super::error::FieldError;
use super::model::Config;
use super::source::{join_index, join_key};

/// The key of a reference to AWS Secrets Manager.
const KEY: &str = "aws_secrets_manager";

/// One use of a remote secret in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSecret {
    /// The field path where it is used, e.g. `providers[0].auth.token`.
    pub path: String,
    /// The reference (a remote variant of [`SecretRef`]).
    pub reference: SecretRef,
}

/// Every reference to AWS Secrets Manager in the adapter settings, selectors and templates of
/// `config`, in file order; malformed ones (an empty name, key or region) are recorded in
/// `errors`, as are all of them when this build cannot fetch them.
pub(crate) fn references(config: &Config, errors: &mut Vec<FieldError>) -> Vec<RemoteSecret> {
    let mut found = Vec::new();
    for (i, p) in config.providers.iter().enumerate() {
        let path = join_index("providers", i);
        for (k, v) in &p.settings {
            walk(v, &join_key(&path, k), &mut found);
        }
    }
    for (i, b) in config.backends.iter().enumerate() {
        let path = join_index("backends", i);
        for (k, v) in &b.settings {
            walk(v, &join_key(&path, k), &mut found);
        }
    }
    for (i, pool) in config.pools.iter().enumerate() {
        let path = join_index("pools", i);
        walk(&pool.selector, &join_key(&path, "selector"), &mut found);
        walk(&pool.template, &join_key(&path, "template"), &mut found);
    }
    found.retain(|r| {
        let SecretRef::AwsSecretsManager(s) = &r.reference else {
            return true;
        };
        let field = join_key(&r.path, KEY);
        let mut ok = true;
        for (name, value) in [
            ("name", Some(&s.name)),
            ("key", s.key.as_ref()),
            ("region", s.region.as_ref()),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                errors.push(FieldError::new(
                    join_key(&field, name),
                    "must not be empty".to_owned(),
                ));
                ok = false;
            }
        }
        if !cfg!(feature = "secrets-aws") {
            errors.push(FieldError::new(
                field,
                "secrets from AWS Secrets Manager need the cargo feature secrets-aws, which \
                 this build of runscale does not have; use {env: NAME} or {file: PATH}",
            ));
            ok = false;
        }
        ok
    });
    found
}

/// Collects the references in `value` (at `path`).
fn walk(value: &Value, path: &str, found: &mut Vec<RemoteSecret>) {
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key(KEY) => {
            // Not of the reference's shape: not a secret, or one the adapter's own parsing
            // rejects with a precise message.
            if let Ok(reference) = serde_json::from_value::<SecretRef>(value.clone()) {
                found.push(RemoteSecret {
                    path: path.to_owned(),
                    reference,
                });
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, &join_key(path, k), found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &join_index(path, i), found);
            }
        }
        _ => {}
    }
}

#[cfg(feature = "secrets-aws")]
pub(crate) use fetching::fetch;

/// Fetching with the AWS SDK.
#[cfg(feature = "secrets-aws")]
mod fetching {
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata as _};
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    use runscale_core::secret::{AwsSecret, SecretRef, preload};
    use secrecy::{ExposeSecret as _, SecretString};
    use serde_json::Value;
    use tracing::{info, warn};

    use super::RemoteSecret;

    /// How long one secret may take to fetch, retries included.
    const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

    /// A secret as stored: its `SecretString`, or why it could not be read.
    type Fetched = Result<SecretString, String>;

    /// Fetches every secret `secrets` refer to, each `(region, name)` once and concurrently,
    /// and records the outcome of each reference for `resolve()`. Never fails: a failure is
    /// recorded and fails the adapters that use the secret when they are built.
    pub(crate) async fn fetch(secrets: &[RemoteSecret]) {
        let mut wanted: Vec<(&SecretRef, &AwsSecret)> = Vec::new();
        for r in secrets {
            if let SecretRef::AwsSecretsManager(s) = &r.reference
                && !wanted.iter().any(|(w, _)| **w == r.reference)
            {
                wanted.push((&r.reference, s));
            }
        }
        if wanted.is_empty() {
            return;
        }
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        // One request per secret in a region, whichever keys are picked from it.
        let names: BTreeSet<(Option<&str>, &str)> = wanted
            .iter()
            .map(|(_, s)| (s.region.as_deref(), s.name.as_str()))
            .collect();
        let mut clients = HashMap::new();
        let requests: Vec<_> = names
            .into_iter()
            .map(|(region, name)| {
                let client = clients
                    .entry(region)
                    .or_insert_with(|| client(&sdk, region))
                    .clone();
                async move { ((region, name), get(&client, name).await) }
            })
            .collect();
        let fetched: HashMap<(Option<&str>, &str), Fetched> = futures::future::join_all(requests)
            .await
            .into_iter()
            .collect();
        let mut failed = 0;
        for &(reference, s) in &wanted {
            let outcome = match fetched.get(&(s.region.as_deref(), s.name.as_str())) {
                Some(Ok(text)) => pick(text, s.key.as_deref()),
                Some(Err(reason)) => Err(reason.clone()),
                None => Err("was not requested".to_owned()),
            };
            if let Err(reason) = &outcome {
                failed += 1;
                let paths: Vec<&str> = secrets
                    .iter()
                    .filter(|r| r.reference == *reference)
                    .map(|r| r.path.as_str())
                    .collect();
                warn!(
                    secret = %s,
                    paths = %paths.join(", "),
                    error = %reason,
                    "cannot read a secret from AWS Secrets Manager"
                );
            }
            preload(reference, outcome);
        }
        info!(
            secrets = wanted.len(),
            failed, "secrets read from AWS Secrets Manager"
        );
    }

    /// A client for `region`, or for the environment's region.
    fn client(sdk: &SdkConfig, region: Option<&str>) -> aws_sdk_secretsmanager::Client {
        let mut config = aws_sdk_secretsmanager::config::Builder::from(sdk);
        if let Some(region) = region {
            config = config.region(Region::new(region.to_owned()));
        }
        aws_sdk_secretsmanager::Client::from_conf(config.build())
    }

    /// The secret string of `name`, or why it cannot be had.
    async fn get(client: &aws_sdk_secretsmanager::Client, name: &str) -> Fetched {
        if client.config().region().is_none() {
            return Err(
                "no AWS region is configured: set `region` on the reference, or \
                        AWS_REGION"
                    .to_owned(),
            );
        }
        let call = client.get_secret_value().secret_id(name).send();
        let out = match tokio::time::timeout(FETCH_TIMEOUT, call).await {
            Err(_) => {
                return Err(format!(
                    "GetSecretValue did not answer within {}",
                    humantime::format_duration(FETCH_TIMEOUT)
                ));
            }
            Ok(Err(e)) => return Err(explain(e)),
            Ok(Ok(out)) => out,
        };
        match (out.secret_string(), out.secret_binary()) {
            (Some(text), _) => Ok(SecretString::from(text)),
            (None, Some(blob)) => binary_text(blob.as_ref()),
            (None, None) => Err("has neither a SecretString nor a SecretBinary".to_owned()),
        }
    }

    /// The text of a `SecretBinary`: base64-decoded when it is base64 text (as CircleCI's
    /// simple-Lambda example decodes it, following AWS's sample code), else its own bytes; it
    /// must be UTF-8. Messages never quote it.
    pub(super) fn binary_text(bytes: &[u8]) -> Fetched {
        use base64::Engine as _;
        let trimmed = bytes.trim_ascii();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        match decoded {
            Some(text) => Ok(SecretString::from(text)),
            None => String::from_utf8(bytes.to_vec())
                .map(SecretString::from)
                .map_err(|_| "has a SecretBinary that is neither base64 nor UTF-8 text".to_owned()),
        }
    }

    /// Why `GetSecretValue` failed, in words an operator can act on.
    fn explain(e: aws_sdk_secretsmanager::error::SdkError<GetSecretValueError>) -> String {
        let Some(service) = e.as_service_error() else {
            return format!("GetSecretValue failed: {}", DisplayErrorContext(&e));
        };
        match (service, service.code()) {
            (GetSecretValueError::ResourceNotFoundException(_), _) => {
                "does not exist (or is deleted) in this account and region".to_owned()
            }
            (_, Some("AccessDeniedException")) => {
                "access denied: runscale's AWS identity needs secretsmanager:GetSecretValue on \
                 it (and kms:Decrypt on its key when a customer managed key encrypts it)"
                    .to_owned()
            }
            (GetSecretValueError::DecryptionFailure(_), _) => {
                "cannot be decrypted: runscale's AWS identity needs kms:Decrypt on its key"
                    .to_owned()
            }
            _ => format!("GetSecretValue failed: {}", DisplayErrorContext(&e)),
        }
    }

    /// The whole secret string, or the string under `key` of its JSON object. Messages never
    /// quote the secret (serde's would).
    fn pick(text: &SecretString, key: Option<&str>) -> Fetched {
        let value = match key {
            None => text.expose_secret().to_owned(),
            Some(key) => {
                let json: Value = serde_json::from_str(text.expose_secret()).map_err(|e| {
                    format!(
                        "is not JSON (error at line {}, column {}), so key {key:?} cannot be \
                         picked; drop `key` to use the whole secret",
                        e.line(),
                        e.column()
                    )
                })?;
                let Value::Object(map) = json else {
                    return Err(format!(
                        "is JSON but not an object, so key {key:?} cannot be picked"
                    ));
                };
                match map.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err(format!("key {key:?} is not a string")),
                    None => {
                        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                        return Err(format!(
                            "has no key {key:?} (its keys: {})",
                            if keys.is_empty() {
                                "none".to_owned()
                            } else {
                                keys.join(", ")
                            }
                        ));
                    }
                }
            }
        };
        if value.is_empty() {
            return Err("is empty".to_owned());
        }
        Ok(SecretString::from(value))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const JSON: &str = r#"{"token": "hunter2", "port": 5432, "empty": ""}"#;

        fn pick_str(text: &str, key: Option<&str>) -> Result<String, String> {
            pick(&SecretString::from(text), key).map(|v| v.expose_secret().to_owned())
        }

        #[test]
        fn binary_secrets_are_read_as_base64_text_or_as_their_own_text() {
            let text = |b: &[u8]| binary_text(b).map(|v| v.expose_secret().to_owned());
            // base64 of {"resource_class": "acme/l", "circle_token": "x"}, as the Lambda reads it.
            let encoded = b"eyJyZXNvdXJjZV9jbGFzcyI6ICJhY21lL2wiLCAiY2lyY2xlX3Rva2VuIjogIngifQ==\n";
            assert_eq!(
                text(encoded).as_deref(),
                Ok(r#"{"resource_class": "acme/l", "circle_token": "x"}"#)
            );
            assert_eq!(text(JSON.as_bytes()).as_deref(), Ok(JSON));
            let e = text(&[0xff, 0xfe, b's', b'e', b'k']).expect_err("not text");
            assert!(
                e.contains("neither base64 nor UTF-8") && !e.contains("sek"),
                "{e}"
            );
        }

        #[test]
        fn the_whole_string_or_one_string_key_is_picked() {
            assert_eq!(pick_str(JSON, None).as_deref(), Ok(JSON));
            assert_eq!(pick_str(JSON, Some("token")).as_deref(), Ok("hunter2"));
        }

        #[test]
        fn picking_errors_name_the_key_but_never_the_value() {
            for (text, key, expected) in [
                (
                    JSON,
                    "user",
                    "has no key \"user\" (its keys: empty, port, token)",
                ),
                (JSON, "port", "key \"port\" is not a string"),
                (JSON, "empty", "is empty"),
                (
                    "hunter2",
                    "token",
                    "is not JSON (error at line 1, column 1)",
                ),
                ("\"hunter2\"", "token", "is JSON but not an object"),
            ] {
                let e = pick_str(text, Some(key)).expect_err(key);
                assert!(e.starts_with(expected), "{e}");
                assert!(!e.contains("hunter2"), "{e}");
            }
            assert_eq!(pick_str("", None), Err("is empty".to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use runscale_core::secret::AwsSecret;

    use super::*;

    fn parse(text: &str) -> Config {
        super::super::parse_str(text, Path::new("test.yaml"), |_| None)
            .expect("parse")
            .0
    }

    const CONFIG: &str = r#"
providers:
  - name: gh
    type: github
    org: acme
    auth: {token: {aws_secrets_manager: {name: ci/github, key: token}}}
    webhook_secret: {aws_secrets_manager: {name: ci/hook, region: eu-west-1}}
backends:
  - name: local
    type: local-process
    state_dir: /tmp/x
    labels: {aws_secrets_manager: "not a reference"}
pools:
  - name: linux
    provider: gh
    backend: local
    selector: {labels: [linux]}
    template: {command: [{aws_secrets_manager: {name: in-a-list}}]}
    max: 1
"#;

    fn aws(name: &str, key: Option<&str>, region: Option<&str>) -> SecretRef {
        SecretRef::AwsSecretsManager(Box::new(AwsSecret {
            name: name.to_owned(),
            key: key.map(str::to_owned),
            region: region.map(str::to_owned),
        }))
    }

    #[test]
    fn every_reference_is_found_with_its_path() {
        let mut errors = Vec::new();
        let found = references(&parse(CONFIG), &mut errors);
        let expected = [
            (
                "providers[0].auth.token",
                aws("ci/github", Some("token"), None),
            ),
            (
                "providers[0].webhook_secret",
                aws("ci/hook", None, Some("eu-west-1")),
            ),
            ("pools[0].template.command[0]", aws("in-a-list", None, None)),
        ];
        let found: Vec<(&str, &SecretRef)> = found
            .iter()
            .map(|r| (r.path.as_str(), &r.reference))
            .collect();
        let expected: Vec<(&str, &SecretRef)> = expected.iter().map(|(p, r)| (*p, r)).collect();
        if cfg!(feature = "secrets-aws") {
            assert_eq!(found, expected);
            assert!(errors.is_empty(), "{errors:?}");
        } else {
            assert!(found.is_empty());
            assert_eq!(errors.len(), 3, "{errors:?}");
        }
    }

    #[test]
    fn empty_names_keys_and_regions_are_errors() {
        let text = CONFIG
            .replace("name: ci/github, key: token", "name: ' ', key: ''")
            .replace("region: eu-west-1", "region: ''");
        let mut errors = Vec::new();
        let found = references(&parse(&text), &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for path in [
            "providers[0].auth.token.aws_secrets_manager.name",
            "providers[0].auth.token.aws_secrets_manager.key",
            "providers[0].webhook_secret.aws_secrets_manager.region",
        ] {
            assert!(paths.contains(&path), "{path}: {errors:?}");
        }
        assert!(found.iter().all(|r| r.path.starts_with("pools[0]")));
    }
}
