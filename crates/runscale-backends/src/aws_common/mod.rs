//! What the AWS backends (`aws_asg`, `aws_ec2`) share: the error mapping ([`errors`]), runner
//! credentials in SSM Parameter Store ([`ssm`]), the checks of their common settings and the
//! loading of the SDK configuration. Nothing backend-specific lives here.

mod deferred;
pub(crate) mod errors;
pub(crate) mod ssm;

pub(crate) use deferred::Deferred;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use runscale_core::{Error, ErrorKind, PoolId, Result};

/// Longest pool name: it is a segment of SSM parameter names (at most 1011 characters in all)
/// and of the runner name `rs-{pool}-{10 chars}`, which CI systems limit to 64 characters.
pub(crate) const MAX_POOL_NAME: usize = 64 - 14;

/// Problems with the settings every AWS backend has, as (field, problem) pairs.
pub(crate) fn common_problems(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    ssm_prefix: &str,
    max_attempts: u32,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if let Some(region) = region
        && (region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        errors.push((
            "region".to_owned(),
            format!("{region:?} is not a region name such as us-east-1"),
        ));
    }
    if let Some(url) = endpoint_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        errors.push((
            "endpoint_url".to_owned(),
            "must be an http:// or https:// URL".to_owned(),
        ));
    }
    if let Some(problem) = ssm::ssm_prefix_problem(ssm_prefix) {
        errors.push(("ssm_prefix".to_owned(), problem));
    }
    if !(1..=20).contains(&max_attempts) {
        errors.push((
            "max_attempts".to_owned(),
            "must be between 1 and 20".to_owned(),
        ));
    }
    errors
}

/// The problem with a pool name used in SSM parameter and runner names, if any.
pub(crate) fn pool_name_problem(pool: &str) -> Option<(String, String)> {
    let ok = !pool.is_empty()
        && pool.len() <= MAX_POOL_NAME
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (!ok).then(|| {
        (
            "pool".to_owned(),
            format!(
                "pool name {pool:?} must be 1 to {MAX_POOL_NAME} letters, digits, '-' or '_' (it names SSM parameters)"
            ),
        )
    })
}

/// A configuration error of operation `op` listing every (field, problem).
pub(crate) fn misconfigured(op: &'static str, errors: Vec<(String, String)>) -> Error {
    let text = errors
        .into_iter()
        .map(|(field, problem)| format!("{field}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ");
    Error::new(op, ErrorKind::Misconfigured, text)
}

/// The default SSM prefix of the AWS backends: `/runscale`.
pub(crate) fn default_ssm_prefix() -> String {
    "/runscale".to_owned()
}

/// The default attempts per AWS call: 5.
pub(crate) fn default_max_attempts() -> u32 {
    5
}

/// Locks a mutex, recovering from poisoning (the guarded data stays consistent per step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Validates a backend's settings (`config_errors`) and each pool's template (`build`, which
/// turns a valid template into the pool's state), and checks that the SDK configuration has a
/// region. Every problem is reported at once, template fields under `pools.{pool}.`.
pub(crate) fn build_pools<T, S>(
    op: &'static str,
    config_errors: Vec<(String, String)>,
    templates: HashMap<PoolId, T>,
    sdk: &aws_config::SdkConfig,
    build: impl Fn(&PoolId, T) -> std::result::Result<S, Vec<(String, String)>>,
) -> Result<HashMap<PoolId, S>> {
    let mut errors = config_errors;
    let mut pools = HashMap::new();
    for (pool, template) in templates {
        match build(&pool, template) {
            Ok(state) => {
                pools.insert(pool, state);
            }
            Err(e) => errors.extend(e.into_iter().map(|(f, p)| (format!("pools.{pool}.{f}"), p))),
        }
    }
    if !errors.is_empty() {
        return Err(misconfigured(op, errors));
    }
    if sdk.region().is_none() {
        return Err(no_region(op));
    }
    Ok(pools)
}

/// The error for a pool the backend has no template for.
pub(crate) fn unknown_pool(op: &'static str, kind: &str, pool: &PoolId) -> Error {
    Error::new(
        op,
        ErrorKind::Misconfigured,
        format!("pool {pool} has no {kind} template"),
    )
}

/// What `probe` found: missing permissions (each IAM action once) and other problems.
#[derive(Debug, Default)]
pub(crate) struct ProbeReport {
    missing: Vec<&'static str>,
    problems: Vec<String>,
}

impl ProbeReport {
    /// Notes the outcome of a call needing `action`: an access-denied error is a missing
    /// permission, any other error a problem.
    pub(crate) fn check<T>(&mut self, action: &'static str, result: Result<T>) {
        if let Err(e) = result {
            if e.kind() == ErrorKind::Misconfigured && e.message().contains("access denied") {
                self.denied(action);
            } else {
                self.problem(e.to_string());
            }
        }
    }

    /// Notes a missing permission.
    pub(crate) fn denied(&mut self, action: &'static str) {
        if !self.missing.contains(&action) {
            self.missing.push(action);
        }
    }

    /// Notes another problem (once).
    pub(crate) fn problem(&mut self, text: String) {
        if !self.problems.contains(&text) {
            self.problems.push(text);
        }
    }

    /// `Ok` if nothing was found; otherwise one configuration error listing the missing
    /// permissions first, then the problems.
    pub(crate) fn finish(mut self, op: &'static str) -> Result<()> {
        if !self.missing.is_empty() {
            self.problems.insert(
                0,
                format!("missing IAM permissions: {}", self.missing.join(", ")),
            );
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                op,
                ErrorKind::Misconfigured,
                self.problems.join("; "),
            ))
        }
    }
}

/// The SDK configuration from the default credential chain (environment, profile, web
/// identity, container and instance metadata), with the configured region and endpoint.
pub(crate) async fn load_sdk(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url.to_owned());
    }
    loader.load().await
}

/// The error for an SDK configuration without a region.
pub(crate) fn no_region(op: &'static str) -> Error {
    Error::new(
        op,
        ErrorKind::Misconfigured,
        "region: no AWS region configured (set region, AWS_REGION or a profile's region)",
    )
}

#[cfg(test)]
mod tests {
    /// Actions of the binary's `{aws_secrets_manager: ...}` secrets, not of a backend.
    const SECRETS: &[&str] = &["secretsmanager:GetSecretValue", "kms:Decrypt"];

    /// The actions a policy document allows, sorted, without the configuration secrets' ones.
    fn allowed(text: &str) -> Vec<String> {
        let policy: serde_json::Value = serde_json::from_str(text).expect("policy is JSON");
        let mut allowed: Vec<String> = policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .filter(|a| !SECRETS.contains(&a.as_str()))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        allowed
    }

    /// The simple-Lambda mode's own policy (`deploy/aws/iam-policy-simple-lambda.json`):
    /// every Auto Scaling call of the aws-asg backend and its String binding parameters (no
    /// SecureString: the launch template starts the runner, so no kms:Encrypt), plus reading
    /// the mode's secret.
    #[cfg(feature = "aws-asg")]
    #[test]
    fn simple_lambda_policy_lists_exactly_the_calls_that_mode_makes() {
        let text = include_str!("../../../../deploy/aws/iam-policy-simple-lambda.json");
        let mut used: Vec<String> = super::ssm::action::ALL
            .iter()
            .chain(crate::aws_asg::IAM_ACTIONS)
            .filter(|a| **a != super::ssm::action::KMS_ENCRYPT)
            .map(|a| (*a).to_owned())
            .collect();
        used.sort_unstable();
        assert_eq!(allowed(text), used);
        for secret in SECRETS {
            assert!(text.contains(secret), "{secret} missing");
        }
    }

    /// The IAM policy the deployment ships (`deploy/aws/iam-policy.json`) allows exactly the
    /// actions the compiled-in backends need, and the binary's reads of configuration secrets
    /// (checked by the binary's own test).
    #[test]
    fn iam_policy_lists_exactly_the_calls_made() {
        let allowed = allowed(include_str!("../../../../deploy/aws/iam-policy.json"));
        let mut used: Vec<String> = super::ssm::action::ALL
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        #[cfg(feature = "aws-asg")]
        used.extend(crate::aws_asg::IAM_ACTIONS.iter().map(|a| (*a).to_owned()));
        #[cfg(feature = "aws-ec2")]
        used.extend(crate::aws_ec2::IAM_ACTIONS.iter().map(|a| (*a).to_owned()));
        used.sort_unstable();
        used.dedup();
        if cfg!(all(feature = "aws-asg", feature = "aws-ec2")) {
            assert_eq!(allowed, used, "policy vs calls");
        } else {
            let missing: Vec<&String> = used.iter().filter(|a| !allowed.contains(a)).collect();
            assert!(missing.is_empty(), "not in the policy: {missing:?}");
        }
    }
}
