//! Configuration of the exec provider: the account-level [`Config`] (the commands and how they
//! run) and the per-pool [`PoolSelector`], with their pure validation.
//!
//! Nothing here runs a command; that happens in [`ExecProvider`](super::ExecProvider).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use runscale_core::adapter_type::{Problems, Selector, Validate};
use schemars::JsonSchema;
use serde::Deserialize;

/// Environment variables the protocol sets itself; `env` may not name them.
pub(crate) const PROTOCOL_ENV: &[&str] = &[
    super::command::ENV_POOLS,
    super::command::ENV_POOL,
    super::command::ENV_RUNNER_NAME,
    super::command::ENV_RUNNER_ID,
    super::command::ENV_LABELS,
];

/// A CI system runscale does not speak natively, driven through commands the operator
/// supplies: `observe` reports demand and runners, `register`, `remove` and `drain` act on one
/// runner. See the module documentation for the exact protocol.
///
/// Commands are argv lists, run directly (no shell): use `["sh", "-c", "..."]` for shell
/// syntax.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Reports the demand and the runners of a batch of pools: gets the pools as JSON on stdin
    /// (and their names in `RUNSCALE_POOLS`), prints
    /// `{"pools":{"NAME":{"waiting":[..],"running":N,"runners":[..]}}}`. Must be read-only.
    pub observe: Vec<String>,
    /// Registers one runner (`RUNSCALE_POOL`, `RUNSCALE_RUNNER_NAME`, `RUNSCALE_LABELS`) and
    /// prints what it needs to connect: `{"runner_id":..,"vars":{..},"secrets":{..}}`.
    pub register: Vec<String>,
    /// Removes one runner (`RUNSCALE_POOL`, `RUNSCALE_RUNNER_ID`): exit 0 when it is gone or was
    /// already gone, exit 3 when it is running a job (it then stays), anything else on failure.
    pub remove: Vec<String>,
    /// Asks the CI system to give one runner (`RUNSCALE_POOL`, `RUNSCALE_RUNNER_ID`) no new job;
    /// exit 0 on success. Without it, draining does nothing and runners are removed directly.
    #[serde(default = "default_drain")]
    pub drain: Option<Vec<String>>,
    /// Longest time one command may run (e.g. "30s"); it is then killed, with everything it
    /// started in its process group, and the call fails as transient.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Environment variables added to every command, on top of runscale's own environment.
    /// Not for secrets (they are plain configuration): commands inherit runscale's
    /// environment, so pass secrets there. The protocol's variables (`RUNSCALE_POOLS`,
    /// `RUNSCALE_POOL`, `RUNSCALE_RUNNER_NAME`, `RUNSCALE_RUNNER_ID`, `RUNSCALE_LABELS`) cannot
    /// be set here.
    #[serde(default = "default_env")]
    pub env: BTreeMap<String, String>,
    /// Working directory of every command. Default: runscale's own. Relative command paths
    /// (`./ci.sh`) are resolved in it.
    #[serde(default = "default_working_dir")]
    pub working_dir: Option<PathBuf>,
}

fn default_drain() -> Option<Vec<String>> {
    None
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn default_working_dir() -> Option<PathBuf> {
    None
}

fn default_labels() -> Vec<String> {
    Vec::new()
}

/// Values of `env` are shown as their length only: an operator may put a token there despite
/// the advice.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, String> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), format!("<{} bytes>", v.len())))
            .collect();
        f.debug_struct("Config")
            .field("observe", &self.observe)
            .field("register", &self.register)
            .field("remove", &self.remove)
            .field("drain", &self.drain)
            .field("timeout", &self.timeout)
            .field("env", &env)
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

/// Problems of one argv, each as (field path, message).
fn argv_problems(field: &str, argv: &[String], errors: &mut Vec<(String, String)>) {
    match argv.first() {
        None => errors.push((
            field.to_owned(),
            "must name a command: a non-empty list such as [\"/usr/local/bin/ci\", \"observe\"]"
                .to_owned(),
        )),
        Some(program) if program.is_empty() => errors.push((
            format!("{field}[0]"),
            "the program must not be an empty string".to_owned(),
        )),
        Some(_) => {}
    }
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            errors.push((
                format!("{field}[{i}]"),
                "must not contain a NUL character".to_owned(),
            ));
        }
    }
}

impl Validate for Config {
    /// Checks the configuration without running anything. Errors name the field (relative to
    /// the provider, e.g. `observe`, `env.FOO`) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([(
            "timeout",
            Some(self.timeout),
        )]));
        argv_problems("observe", &self.observe, &mut errors);
        argv_problems("register", &self.register, &mut errors);
        argv_problems("remove", &self.remove, &mut errors);
        if let Some(drain) = &self.drain {
            argv_problems("drain", drain, &mut errors);
        }
        if self.timeout.is_zero() {
            errors.push((
                "timeout".to_owned(),
                "must be longer than zero, e.g. \"30s\"".to_owned(),
            ));
        }
        for (name, value) in &self.env {
            let field = format!("env.{name}");
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                errors.push((
                    field,
                    "is not a valid environment variable name (empty, or contains '=' or NUL)"
                        .to_owned(),
                ));
            } else if PROTOCOL_ENV.contains(&name.as_str()) {
                errors.push((
                    field,
                    "is set by runscale for every command (part of the exec protocol)".to_owned(),
                ));
            } else if value.contains('\0') {
                errors.push((field, "must not contain a NUL character".to_owned()));
            }
        }
        if let Some(dir) = &self.working_dir
            && dir.as_os_str().is_empty()
        {
            errors.push((
                "working_dir".to_owned(),
                "must not be empty; leave it out to use runscale's own".to_owned(),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// What a pool asks of the CI system: its runner labels (tags), handed to the commands.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    /// Labels of this pool's runners. `observe` gets them on stdin, `register` in
    /// `RUNSCALE_LABELS` (comma-separated); what they mean is up to the commands.
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
}

impl Selector for PoolSelector {
    fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }
}

impl Validate for PoolSelector {
    /// Checks the selector. Errors name the field (e.g. `labels[1]`).
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        for (i, label) in self.labels.iter().enumerate() {
            let field = format!("labels[{i}]");
            if label.trim().is_empty() {
                errors.push((field, "must not be empty".to_owned()));
            } else if label.contains(',') {
                errors.push((
                    field,
                    "must not contain ',' (labels are passed comma-separated)".to_owned(),
                ));
            } else if label.chars().any(char::is_control) {
                errors.push((field, "must not contain control characters".to_owned()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Config, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "observe": ["ci", "observe"],
            "register": ["ci", "register"],
            "remove": ["ci", "remove"],
        })
    }

    fn fields(result: Result<(), Vec<(String, String)>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn defaults_apply_and_minimal_config_is_valid() {
        let config = parse(minimal()).expect("parses");
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert!(config.env.is_empty());
        assert_eq!(config.drain, None);
        assert_eq!(config.working_dir, None);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn timeout_is_a_humantime_string() {
        let mut json = minimal();
        json["timeout"] = "1m 30s".into();
        assert_eq!(
            parse(json).expect("parses").timeout,
            Duration::from_secs(90)
        );
        let mut json = minimal();
        json["timeout"] = 30.into();
        assert!(parse(json).is_err(), "a bare number is not a duration");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut json = minimal();
        json["obsrve"] = serde_json::json!(["x"]);
        let err = parse(json).expect_err("unknown field").to_string();
        assert!(err.contains("obsrve"), "{err}");
        let err = serde_json::from_value::<PoolSelector>(serde_json::json!({"label": ["a"]}))
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("label"), "{err}");
    }

    #[test]
    fn empty_commands_and_zero_timeout_name_their_fields() {
        let mut json = minimal();
        json["observe"] = serde_json::json!([]);
        json["remove"] = serde_json::json!([""]);
        json["drain"] = serde_json::json!([]);
        json["timeout"] = "0s".into();
        let config = parse(json).expect("parses");
        assert_eq!(
            fields(config.validate()),
            ["observe", "remove[0]", "drain", "timeout"]
        );
    }

    #[test]
    fn env_may_not_override_the_protocol() {
        let mut json = minimal();
        json["env"] = serde_json::json!({
            "RUNSCALE_POOL": "x",
            "RUNSCALE_CI_DIR": "/tmp/ci",
            "A=B": "x",
        });
        let config = parse(json).expect("parses");
        let errors = config.validate().expect_err("invalid");
        let named: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(named, ["env.A=B", "env.RUNSCALE_POOL"]);
        assert!(errors[1].1.contains("set by runscale"), "{errors:?}");
    }

    #[test]
    fn debug_hides_env_values() {
        let mut json = minimal();
        json["env"] = serde_json::json!({"TOKEN": "hunter2-value"});
        let config = parse(json).expect("parses");
        let debug = format!("{config:?}");
        assert!(debug.contains("TOKEN"), "{debug}");
        assert!(!debug.contains("hunter2-value"), "{debug}");
    }

    #[test]
    fn json_schema_describes_every_field() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema");
        let properties = schema["properties"].as_object().expect("properties");
        for field in [
            "observe",
            "register",
            "remove",
            "drain",
            "timeout",
            "env",
            "working_dir",
        ] {
            let description = properties[field]["description"].as_str().unwrap_or("");
            assert!(!description.is_empty(), "{field} has no description");
        }
        assert_eq!(properties["timeout"]["type"], "string");
        assert_eq!(
            schema["required"],
            serde_json::json!(["observe", "register", "remove"])
        );
    }

    #[test]
    fn selector_labels_are_checked() {
        let selector = PoolSelector {
            labels: vec!["linux".into(), "".into(), "a,b".into()],
        };
        assert_eq!(fields(selector.validate()), ["labels[1]", "labels[2]"]);
        let default: PoolSelector = serde_json::from_value(serde_json::json!({})).expect("parses");
        assert!(default.labels.is_empty());
        assert_eq!(default.validate(), Ok(()));
    }
}
