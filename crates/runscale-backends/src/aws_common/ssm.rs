//! Runner credentials in SSM Parameter Store, shared by the AWS backends: the narrow SSM client
//! (put, get, delete, list by path) and the format of the credentials parameter
//! `{ssm_prefix}/{pool}/{instance-id}` that the instance reads and deletes
//! (`deploy/aws/runner-user-data.sh`).

use aws_sdk_ssm::types::ParameterType;
use runscale_core::{Error, Registration, Result};

use super::ProbeReport;
use super::errors::{Failure, aws_error, secret_error};

/// IAM actions of the SSM calls, as named in errors, `probe` and `deploy/aws/iam-policy.json`.
pub(crate) mod action {
    pub(crate) const PUT_PARAMETER: &str = "ssm:PutParameter";
    pub(crate) const GET_PARAMETER: &str = "ssm:GetParameter";
    pub(crate) const DELETE_PARAMETER: &str = "ssm:DeleteParameter";
    pub(crate) const PARAMETERS_BY_PATH: &str = "ssm:GetParametersByPath";
    /// SecureString parameters are encrypted with a KMS key (`alias/aws/ssm` by default).
    pub(crate) const KMS_ENCRYPT: &str = "kms:Encrypt";

    /// Every action of this module.
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        PUT_PARAMETER,
        GET_PARAMETER,
        DELETE_PARAMETER,
        PARAMETERS_BY_PATH,
        KMS_ENCRYPT,
    ];
}

/// The SSM client.
#[derive(Clone, Debug)]
pub(crate) struct Ssm {
    client: aws_sdk_ssm::Client,
}

impl Ssm {
    /// A client from a loaded SDK configuration, with `max_attempts` per call.
    pub(crate) fn new(sdk: &aws_config::SdkConfig, max_attempts: u32) -> Self {
        let conf = aws_sdk_ssm::config::Builder::from(sdk)
            .retry_config(retry(max_attempts))
            .build();
        Self {
            client: aws_sdk_ssm::Client::from_conf(conf),
        }
    }

    /// Writes a parameter (overwriting). `secure` makes it a SecureString, whose value never
    /// appears in an error.
    pub(crate) async fn put_parameter(
        &self,
        op: &'static str,
        name: &str,
        value: String,
        secure: bool,
    ) -> Result<()> {
        self.client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(if secure {
                ParameterType::SecureString
            } else {
                ParameterType::String
            })
            .overwrite(true)
            .send()
            .await
            .map_err(|e| {
                let f = Failure::of(&e);
                let what = format!("writing parameter {name}");
                match (secure, f.is_access_denied()) {
                    // SecureString needs KMS too; say both.
                    (true, true) => Error::new(
                        op,
                        f.kind(),
                        format!(
                            "{what}: access denied: the IAM policy must allow {} and {} (see deploy/aws/iam-policy.json)",
                            action::PUT_PARAMETER,
                            action::KMS_ENCRYPT
                        ),
                    ),
                    (true, false) => secret_error(op, action::PUT_PARAMETER, what, &f),
                    (false, _) => aws_error(op, action::PUT_PARAMETER, what, &f),
                }
            })?;
        Ok(())
    }

    /// Reads a String parameter; `None` if it does not exist.
    pub(crate) async fn get_parameter(
        &self,
        op: &'static str,
        name: &str,
    ) -> Result<Option<String>> {
        match self.client.get_parameter().name(name).send().await {
            Ok(resp) => Ok(resp.parameter().and_then(|p| p.value()).map(str::to_owned)),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is_not_found() {
                    Ok(None)
                } else {
                    Err(aws_error(
                        op,
                        action::GET_PARAMETER,
                        format!("reading parameter {name}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// Deletes a parameter; `Ok` if it did not exist.
    pub(crate) async fn delete_parameter(&self, op: &'static str, name: &str) -> Result<()> {
        match self.client.delete_parameter().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is_not_found() {
                    Ok(())
                } else {
                    Err(aws_error(
                        op,
                        action::DELETE_PARAMETER,
                        format!("deleting parameter {name}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// The permission checks `probe` can make without side effects: listing `root`, reading
    /// and deleting `probe_param` (a parameter that never exists).
    pub(crate) async fn probe(
        &self,
        op: &'static str,
        root: &str,
        probe_param: &str,
        report: &mut ProbeReport,
    ) {
        report.check(
            action::PARAMETERS_BY_PATH,
            self.parameters_under(op, root).await,
        );
        report.check(
            action::GET_PARAMETER,
            self.get_parameter(op, probe_param).await,
        );
        report.check(
            action::DELETE_PARAMETER,
            self.delete_parameter(op, probe_param).await,
        );
    }

    /// Names of every parameter under `path` (recursively, all pages), with the values of
    /// String parameters (SecureString values are not decrypted and come back `None`).
    pub(crate) async fn parameters_under(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .client
                .get_parameters_by_path()
                .path(path)
                .recursive(true)
                .with_decryption(false)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        op,
                        action::PARAMETERS_BY_PATH,
                        format!("listing parameters under {path}"),
                        &Failure::of(&e),
                    )
                })?;
            for p in resp.parameters() {
                let Some(name) = p.name() else { continue };
                let value = match p.r#type() {
                    Some(ParameterType::String) => p.value().map(str::to_owned),
                    _ => None,
                };
                out.push((name.to_owned(), value));
            }
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

/// The SDK's standard retry mode (jittered exponential backoff; throttling is retried) with
/// `max_attempts` per call.
pub(crate) fn retry(max_attempts: u32) -> aws_sdk_ssm::config::retry::RetryConfig {
    aws_sdk_ssm::config::retry::RetryConfig::standard().with_max_attempts(max_attempts)
}

/// The credentials parameter of one instance: `{prefix}/{pool}/{instance-id}`.
pub(crate) fn credentials_name(prefix: &str, pool: &str, id: &str) -> String {
    format!("{prefix}/{pool}/{id}")
}

/// The credentials parameter's value for the runner `registration` on instance `id`: the
/// `RUNSCALE_*` identity lines, then the registration's variables and secrets. Errors name
/// only the offending variable, never a value.
pub(crate) fn credentials_value(
    pool: &str,
    id: &str,
    template_hash: &str,
    registration: &Registration,
) -> std::result::Result<String, String> {
    let mut pairs = vec![
        ("RUNSCALE_POOL".to_owned(), pool.to_owned()),
        ("RUNSCALE_INSTANCE_ID".to_owned(), id.to_owned()),
        (
            "RUNSCALE_RUNNER_NAME".to_owned(),
            registration.runner_name.clone(),
        ),
        (
            "RUNSCALE_TEMPLATE_HASH".to_owned(),
            template_hash.to_owned(),
        ),
    ];
    pairs.extend(registration.credentials.expose_all());
    credentials_file(&pairs)
}

/// One `NAME=value` line per variable, values without line breaks (the instance side splits at
/// the first `=` and never evaluates them).
fn credentials_file(pairs: &[(String, String)]) -> std::result::Result<String, String> {
    let mut out = String::new();
    for (k, v) in pairs {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "credential name {k:?} is not an environment variable name"
            ));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(format!("credential {k} contains a line break"));
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    Ok(out)
}

/// What is wrong with an SSM parameter prefix, if anything.
pub(crate) fn ssm_prefix_problem(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
        return Some("must start with '/' and not end with '/' (e.g. /runscale)".to_owned());
    }
    if prefix.len() > 200 {
        return Some("must be at most 200 characters".to_owned());
    }
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
    let reserved = prefix.split('/').any(|seg| {
        seg.to_ascii_lowercase().starts_with("aws") || seg.to_ascii_lowercase().starts_with("ssm")
    });
    if !ok || prefix.contains("//") {
        return Some("may hold only letters, digits, '_', '.', '-' and single '/'".to_owned());
    }
    if reserved {
        return Some("segments may not start with 'aws' or 'ssm' (reserved by SSM)".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_is_line_per_variable_and_rejects_line_breaks() {
        let ok = credentials_file(&[
            ("A".to_owned(), "x=y".to_owned()),
            ("B_2".to_owned(), String::new()),
        ]);
        assert_eq!(ok, Ok("A=x=y\nB_2=\n".to_owned()));
        assert!(credentials_file(&[("A".to_owned(), "x\ny".to_owned())]).is_err());
        assert!(credentials_file(&[("A B".to_owned(), "x".to_owned())]).is_err());
    }

    #[test]
    fn prefixes_are_checked() {
        for bad in ["/aws/x", "/a//b", "/a b", "/", "runscale/"] {
            assert!(ssm_prefix_problem(bad).is_some(), "{bad}");
        }
        assert!(ssm_prefix_problem("/ci/runscale").is_none());
    }
}
