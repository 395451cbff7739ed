//! How one instance process is put together: its argv (placeholders expanded), its
//! environment (the `RUNSCALE_*` contract, the template's variables, credentials with `env`
//! delivery) and the content of its credentials file.
//!
//! The built [`Command`] holds secrets in its environment: it is never formatted with
//! `Debug` or logged.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runscale_core::Registration;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::config::{self, CredentialsDelivery, PoolTemplate, RESERVED_ENV_PREFIX, Values};

/// The pool of the instance.
pub(crate) const ENV_POOL: &str = "RUNSCALE_POOL";
/// The instance id.
pub(crate) const ENV_INSTANCE_ID: &str = "RUNSCALE_INSTANCE_ID";
/// The first runner's name.
pub(crate) const ENV_RUNNER_NAME: &str = "RUNSCALE_RUNNER_NAME";
/// All runner names, comma-separated.
pub(crate) const ENV_RUNNER_NAMES: &str = "RUNSCALE_RUNNER_NAMES";
/// The (canonical) state directory: how a restarted runscale recognises its processes.
pub(crate) const ENV_STATE_DIR: &str = "RUNSCALE_STATE_DIR";
/// The template hash the instance was launched from.
pub(crate) const ENV_TEMPLATE_HASH: &str = "RUNSCALE_TEMPLATE_HASH";
/// The launch time, RFC 3339.
pub(crate) const ENV_LAUNCHED_AT: &str = "RUNSCALE_LAUNCHED_AT";
/// The credentials file (with `file` delivery).
pub(crate) const ENV_CREDENTIALS_FILE: &str = "RUNSCALE_CREDENTIALS_FILE";

/// Variables of the daemon's own environment passed on to instances; nothing else is (the
/// daemon's environment may hold provider tokens).
pub(crate) const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// Everything about one launch that is not a secret.
pub(crate) struct Launch<'a> {
    /// The pool.
    pub pool: &'a str,
    /// The new instance's id.
    pub instance_id: &'a str,
    /// Its runners' names.
    pub runner_names: &'a [String],
    /// The canonical state directory.
    pub state_dir: &'a Path,
    /// The template hash recorded on the instance.
    pub template_hash: &'a str,
    /// Launch time, RFC 3339.
    pub launched_at: &'a str,
    /// The credentials file, with `file` delivery.
    pub credentials_file: Option<&'a Path>,
}

/// Checks that the registrations can be delivered the way the template says. Messages name
/// variables, never values.
pub(crate) fn check_delivery(
    delivery: CredentialsDelivery,
    runners: &[Registration],
) -> Result<(), String> {
    if runners.is_empty() {
        return Err("a launch needs at least one runner".to_owned());
    }
    if delivery == CredentialsDelivery::Env {
        if runners.len() != 1 {
            return Err(format!(
                "credentials delivery `env` supports exactly one runner per instance, got {}; \
                 use `file`",
                runners.len()
            ));
        }
        let creds = &runners[0].credentials;
        for name in creds.vars.keys().chain(creds.secrets.keys()) {
            if let Some(problem) = config::env_name_problem(name) {
                return Err(format!("credential {name:?}: {problem}"));
            }
            if name.starts_with(RESERVED_ENV_PREFIX) {
                return Err(format!(
                    "credential {name} cannot be exported: names starting with \
                     {RESERVED_ENV_PREFIX} are set by runscale"
                ));
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CredentialsFile<'a> {
    runners: Vec<RunnerCredentials<'a>>,
}

#[derive(Serialize)]
struct RunnerCredentials<'a> {
    name: &'a str,
    runner_id: Option<&'a str>,
    vars: std::collections::BTreeMap<&'a str, &'a str>,
    secrets: std::collections::BTreeMap<&'a str, &'a str>,
}

/// The content of the credentials file:
/// `{"runners":[{"name","runner_id","vars","secrets"}]}`, secrets exposed.
pub(crate) fn credentials_json(runners: &[Registration]) -> Vec<u8> {
    let file = CredentialsFile {
        runners: runners
            .iter()
            .map(|r| RunnerCredentials {
                name: &r.runner_name,
                runner_id: r.runner_id.as_ref().map(|id| id.as_str()),
                vars: r
                    .credentials
                    .vars
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                secrets: r
                    .credentials
                    .secrets
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose_secret()))
                    .collect(),
            })
            .collect(),
    };
    // Serializing maps of strings cannot fail.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// The program and arguments with placeholders expanded.
pub(crate) fn argv(template: &PoolTemplate, launch: &Launch<'_>) -> Result<Vec<String>, String> {
    let values = Values {
        pool: launch.pool,
        runner_name: launch.runner_names.first().map_or("", String::as_str),
        instance_id: launch.instance_id,
    };
    template
        .command
        .iter()
        .enumerate()
        .map(|(i, arg)| config::expand(arg, &values).map_err(|e| format!("command[{i}]: {e}")))
        .collect()
}

/// The environment of the process, in the order it is applied (later wins): inherited
/// variables, the template's, credentials (with `env` delivery), the `RUNSCALE_*` contract.
pub(crate) fn environment(
    template: &PoolTemplate,
    launch: &Launch<'_>,
    runners: &[Registration],
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = INHERITED_ENV
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), std::env::var_os(name)?)))
        .collect();
    env.extend(
        template
            .env
            .iter()
            .map(|(k, v)| (k.clone(), OsString::from(v))),
    );
    if template.credentials == CredentialsDelivery::Env
        && let [only] = runners
    {
        env.extend(
            only.credentials
                .expose_all()
                .into_iter()
                .map(|(k, v)| (k, OsString::from(v))),
        );
    }
    let contract = [
        (ENV_POOL, OsString::from(launch.pool)),
        (ENV_INSTANCE_ID, OsString::from(launch.instance_id)),
        (
            ENV_RUNNER_NAME,
            OsString::from(launch.runner_names.first().map_or("", String::as_str)),
        ),
        (
            ENV_RUNNER_NAMES,
            OsString::from(launch.runner_names.join(",")),
        ),
        (ENV_STATE_DIR, launch.state_dir.as_os_str().to_owned()),
        (ENV_TEMPLATE_HASH, OsString::from(launch.template_hash)),
        (ENV_LAUNCHED_AT, OsString::from(launch.launched_at)),
    ];
    env.extend(contract.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if let Some(path) = launch.credentials_file {
        env.push((ENV_CREDENTIALS_FILE.to_owned(), path.as_os_str().to_owned()));
    }
    env
}

/// The command for one instance: its own process group, stdin from `/dev/null`, stdout and
/// stderr appended to `log`, a clean environment, and not killed when runscale exits.
pub(crate) fn command(
    argv: &[String],
    env: Vec<(String, OsString)>,
    working_dir: Option<&PathBuf>,
    log: File,
) -> std::io::Result<Command> {
    use std::os::unix::process::CommandExt;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if let Some(dir) = working_dir {
        cmd.current_dir(dir);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use runscale_core::{Credentials, RunnerId};
    use secrecy::SecretString;

    use super::*;

    fn registration(name: &str, secret: &str) -> Registration {
        let mut credentials = Credentials::default();
        credentials.vars.insert("URL".into(), "https://ci".into());
        credentials
            .secrets
            .insert("TOKEN".into(), SecretString::from(secret.to_owned()));
        Registration {
            runner_name: name.to_owned(),
            runner_id: Some(RunnerId::new("42")),
            credentials,
        }
    }

    #[test]
    fn credentials_file_has_the_documented_shape() {
        let json: serde_json::Value =
            serde_json::from_slice(&credentials_json(&[registration("rs-a-1", "s3cret")]))
                .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"runners": [{
                "name": "rs-a-1", "runner_id": "42",
                "vars": {"URL": "https://ci"}, "secrets": {"TOKEN": "s3cret"}
            }]})
        );
    }

    #[test]
    fn env_delivery_needs_exactly_one_runner_and_plain_names() {
        let one = [registration("a", "x")];
        let two = [registration("a", "x"), registration("b", "y")];
        assert!(check_delivery(CredentialsDelivery::Env, &one).is_ok());
        assert!(check_delivery(CredentialsDelivery::Env, &two).is_err());
        assert!(check_delivery(CredentialsDelivery::File, &two).is_ok());
        assert!(check_delivery(CredentialsDelivery::File, &[]).is_err());
        let mut reserved = registration("a", "s3cret-value");
        reserved.credentials.secrets.insert(
            "RUNSCALE_POOL".into(),
            SecretString::from("v4lue".to_owned()),
        );
        let err = check_delivery(CredentialsDelivery::Env, &[reserved]).expect_err("reserved");
        assert!(err.contains("RUNSCALE_POOL"), "{err}");
        assert!(
            !err.contains("v4lue") && !err.contains("s3cret"),
            "no value in {err}"
        );
    }

    #[test]
    fn environment_puts_the_contract_last_and_secrets_only_with_env_delivery() {
        let mut template = PoolTemplate {
            command: vec!["run".into(), "{runner_name}@{pool}".into()],
            env: BTreeMap::from([("EXTRA".into(), "1".into())]),
            working_dir: None,
            credentials: CredentialsDelivery::File,
        };
        let names = vec!["rs-a-1".to_owned(), "rs-a-2".to_owned()];
        let launch = Launch {
            pool: "a",
            instance_id: "lp-abc",
            runner_names: &names,
            state_dir: Path::new("/state"),
            template_hash: "h",
            launched_at: "2024-01-01T00:00:00Z",
            credentials_file: Some(Path::new("/state/a/lp-abc.credentials.json")),
        };
        assert_eq!(argv(&template, &launch).expect("argv"), ["run", "rs-a-1@a"]);
        let runners = [registration("rs-a-1", "s3cret")];
        let env = environment(&template, &launch, &runners);
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(ENV_RUNNER_NAMES), Some("rs-a-1,rs-a-2".into()));
        assert_eq!(get(ENV_RUNNER_NAME), Some("rs-a-1".into()));
        assert_eq!(get("EXTRA"), Some("1".into()));
        assert_eq!(get("TOKEN"), None);
        template.credentials = CredentialsDelivery::Env;
        let env = environment(&template, &launch, &runners);
        assert!(env.iter().any(|(k, v)| k == "TOKEN" && v == "s3cret"));
    }
}
