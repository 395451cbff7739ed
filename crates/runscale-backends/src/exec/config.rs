//! Configuration of the exec backend: the backend-level [`Config`] (which executable, how
//! long each action may take) and the per-pool [`PoolTemplate`] (the parameters handed to the
//! executable), their pure validation, and the template hash.
//!
//! Nothing here runs a process or touches the file system.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runscale_core::adapter_type::{PoolContext, Problems, Template, Validate};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Environment variables whose names start with this are set by the backend.
pub(crate) const RESERVED_ENV_PREFIX: &str = "RUNSCALE_";

/// Variables of the daemon's own environment passed on to the executable; nothing else is
/// (the daemon's environment may hold provider tokens). `CREDENTIALS_DIRECTORY` is where
/// systemd's `LoadCredential=` puts the cloud API token.
pub(crate) const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "CREDENTIALS_DIRECTORY",
];

/// The smallest allowed [`Config::max_output`].
const MIN_OUTPUT: usize = 1024;

/// Backend-level settings of the exec backend: the executable that creates, deletes and lists
/// machines, and the bounds of each run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Argv of the executable that manages the machines (no shell is involved; a bare program
    /// name is searched in `PATH`). Each run reads one JSON request from stdin and prints one
    /// JSON object on stdout, as `deploy/exec/PROTOCOL.md` describes.
    pub command: Vec<String>,
    /// Variables added to the executable's environment, e.g. `HCLOUD_CONTEXT`. They sit in the
    /// configuration file, so nothing secret belongs here (cloud tokens: systemd
    /// `LoadCredential=` and `CREDENTIALS_DIRECTORY`). `RUNSCALE_*` names are taken. Of the
    /// daemon's own environment only these pass: `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`,
    /// `LANG`, `LC_ALL`, `LC_CTYPE`, `TZ`, `TMPDIR`, `CREDENTIALS_DIRECTORY`.
    #[serde(default = "default_env")]
    pub env: BTreeMap<String, String>,
    /// Directory the executable starts in (leave out for the daemon's current directory).
    #[serde(default = "default_working_dir")]
    pub working_dir: Option<PathBuf>,
    /// How long each action may run before its process group is killed.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Most bytes read from the executable's stdout; a longer answer is an error (its process
    /// group is killed).
    #[serde(default = "default_max_output")]
    pub max_output: usize,
    /// How long an instance this process created is listed (as `booting`) while `list` does
    /// not show it yet, and a deleted one is listed as `stopping` while `list` still shows it
    /// running: cloud listings lag behind their create and delete calls.
    #[serde(default = "default_listing_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub listing_grace: Duration,
}

/// No variables beyond the inherited ones, by default.
fn default_env() -> BTreeMap<String, String> {
    BTreeMap::default()
}

/// By default the executable starts where the daemon runs.
fn default_working_dir() -> Option<PathBuf> {
    Option::default()
}

/// The default [`Config::max_output`]: 1 MiB.
fn default_max_output() -> usize {
    1024 * 1024
}

/// The default [`Config::listing_grace`]: 5 minutes.
fn default_listing_grace() -> Duration {
    Duration::from_secs(300)
}

/// Per-action time limits (durations such as "90s" or "10m").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// `create`: a cloud may take minutes to boot a machine.
    #[serde(default = "default_create_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub create: Duration,
    /// `delete`.
    #[serde(default = "default_delete_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub delete: Duration,
    /// `list`: runs on every pass, so keep it short.
    #[serde(default = "default_list_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub list: Duration,
    /// `probe`.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub probe: Duration,
}

/// The default [`Timeouts::create`]: 10 minutes.
fn default_create_timeout() -> Duration {
    Duration::from_secs(600)
}

/// The default [`Timeouts::delete`]: 5 minutes.
fn default_delete_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The default [`Timeouts::list`]: 1 minute.
fn default_list_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The default [`Timeouts::probe`]: 1 minute.
fn default_probe_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            create: default_create_timeout(),
            delete: default_delete_timeout(),
            list: default_list_timeout(),
            probe: default_probe_timeout(),
        }
    }
}

impl Config {
    /// A configuration running `command` with every other setting at its default.
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            env: default_env(),
            working_dir: default_working_dir(),
            timeouts: Timeouts::default(),
            max_output: default_max_output(),
            listing_grace: default_listing_grace(),
        }
    }
}

impl Validate for Config {
    /// Checks the settings without touching the file system. Errors name the field (relative
    /// to this struct, e.g. `command[0]`, `env.FOO`, `timeouts.list`) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("listing_grace", Some(self.listing_grace)),
            ("timeouts.create", Some(self.timeouts.create)),
            ("timeouts.delete", Some(self.timeouts.delete)),
            ("timeouts.list", Some(self.timeouts.list)),
            ("timeouts.probe", Some(self.timeouts.probe)),
        ]));
        let mut bad = |field: String, message: &str| errors.push((field, message.to_owned()));
        match self.command.first() {
            None => bad("command".into(), "must name a program (the list is empty)"),
            Some(program) if program.is_empty() => {
                bad("command[0]".into(), "the program must not be empty");
            }
            Some(_) => {}
        }
        for (i, arg) in self.command.iter().enumerate() {
            if arg.contains('\0') {
                bad(format!("command[{i}]"), "must not contain a NUL byte");
            }
        }
        for (name, value) in &self.env {
            let field = format!("env.{name}");
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                bad(field.clone(), "not a variable name (empty, '=' or NUL)");
            } else if name.starts_with(RESERVED_ENV_PREFIX) {
                bad(
                    field.clone(),
                    "names starting with RUNSCALE_ are set by runscale",
                );
            }
            if value.contains('\0') {
                bad(field, "the value must not contain a NUL byte");
            }
        }
        if self
            .working_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            bad(
                "working_dir".into(),
                "must not be empty (leave it out to use the daemon's)",
            );
        }
        for (name, timeout) in [
            ("create", self.timeouts.create),
            ("delete", self.timeouts.delete),
            ("list", self.timeouts.list),
            ("probe", self.timeouts.probe),
        ] {
            if timeout.is_zero() {
                bad(format!("timeouts.{name}"), "must be longer than zero");
            }
        }
        if self.max_output < MIN_OUTPUT {
            bad("max_output".into(), "must be at least 1024 bytes");
        }
        if self.listing_grace.is_zero() {
            bad("listing_grace".into(), "must be longer than zero");
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// One pool's machines: the parameters runscale hands the executable in every request about
/// the pool (server type, image, region, ...), as `params`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTemplate {
    /// Free-form JSON object passed as `params` in every request for this pool. Must not hold
    /// secrets (it is in the configuration file and in the template hash's input); runner
    /// credentials travel separately, in `create` requests only.
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// The largest `params` accepted, as JSON: they are sent with every request.
const MAX_PARAMS_BYTES: usize = 64 * 1024;

impl Template for PoolTemplate {
    /// Checks the template without running anything. Errors name the field (`params`).
    fn validate_for(&self, _: PoolContext<'_>) -> Problems {
        let size = serde_json::to_vec(&self.params).map_or(usize::MAX, |v| v.len());
        if size > MAX_PARAMS_BYTES {
            return Err(vec![(
                "params".to_owned(),
                format!("{size} bytes as JSON; at most {MAX_PARAMS_BYTES} are sent per request"),
            )]);
        }
        Ok(())
    }

    /// A short hash of the parameters (the executable itself is not part of it: changing the
    /// script does not retire running machines). Stable across runs and key order: SHA-256
    /// over a canonical encoding (object keys sorted), the first 16 hex digits.
    fn hash(&self) -> String {
        let mut canonical = String::from("runscale/exec/template/v1\n");
        write_canonical(&Value::Object(self.params.clone()), &mut canonical);
        let digest = Sha256::digest(canonical.as_bytes());
        hex::encode(&digest[..8])
    }
}

/// JSON with object keys sorted and no whitespace, whatever order the map keeps.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runscale_core::adapter_type::PoolContext;

    /// The fields `validate` complains about, sorted.
    fn bad_fields(c: &Config) -> Vec<String> {
        let mut out: Vec<String> = match c.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|(field, _)| field).collect(),
        };
        out.sort();
        out
    }

    #[test]
    fn config_parses_durations_and_defaults() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "command": ["/usr/local/bin/hcloud-runners"],
            "timeouts": {"create": "3m", "list": "20s"},
            "listing_grace": "90s",
        }))
        .expect("valid");
        assert_eq!(c.timeouts.create, Duration::from_secs(180));
        assert_eq!(c.timeouts.list, Duration::from_secs(20));
        assert_eq!(c.timeouts.delete, Duration::from_secs(300));
        assert_eq!(c.listing_grace, Duration::from_secs(90));
        assert_eq!(c.max_output, 1024 * 1024);
        assert!(c.validate().is_ok());
        let typo = serde_json::from_value::<Config>(serde_json::json!({
            "command": ["x"], "timeouts": {"craete": "1m"}
        }));
        assert!(typo.is_err(), "unknown fields are rejected");
    }

    #[test]
    fn validate_names_every_bad_field() {
        let mut c = Config::new(Vec::new());
        c.env.insert("RUNSCALE_POOL".into(), "x".into());
        c.env.insert("A=B".into(), "x".into());
        c.timeouts.list = Duration::ZERO;
        c.max_output = 10;
        c.listing_grace = Duration::ZERO;
        c.working_dir = Some(PathBuf::new());
        assert_eq!(
            bad_fields(&c),
            [
                "command",
                "env.A=B",
                "env.RUNSCALE_POOL",
                "listing_grace",
                "max_output",
                "timeouts.list",
                "working_dir"
            ]
        );
        assert_eq!(
            bad_fields(&Config::new(vec![String::new()])),
            ["command[0]"]
        );
        assert_eq!(
            bad_fields(&Config::new(vec!["run".into(), "a\0b".into()])),
            ["command[1]"]
        );
    }

    #[test]
    fn template_hash_is_stable_and_ignores_key_order() {
        let a: PoolTemplate = serde_json::from_str(
            r#"{"params": {"server_type": "cx22", "labels": {"b": 1, "a": [true, null]}}}"#,
        )
        .expect("valid");
        let b: PoolTemplate = serde_json::from_str(
            r#"{"params": {"labels": {"a": [true, null], "b": 1}, "server_type": "cx22"}}"#,
        )
        .expect("valid");
        assert_eq!(a.hash(), b.hash());
        // A literal: if it changes, every deployed machine is seen as outdated.
        assert_eq!(a.hash(), "a9e554b8cd9da974");
        let mut c = a.clone();
        c.params.insert("image".into(), Value::from("ubuntu-24.04"));
        assert_ne!(c.hash(), a.hash());
        assert_ne!(
            PoolTemplate::default().hash(),
            a.hash(),
            "no params differs from some params"
        );
    }

    #[test]
    fn template_validate_bounds_the_params() {
        let mut t = PoolTemplate::default();
        assert!(t.validate_for(PoolContext::single("p")).is_ok());
        t.params
            .insert("blob".into(), Value::from("x".repeat(70 * 1024)));
        let errors = t
            .validate_for(PoolContext::single("p"))
            .expect_err("too large");
        assert_eq!(errors[0].0, "params");
    }

    #[test]
    fn json_schema_describes_every_field() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema");
        assert_eq!(schema["required"], serde_json::json!(["command"]));
        for field in [
            "command",
            "env",
            "working_dir",
            "timeouts",
            "max_output",
            "listing_grace",
        ] {
            assert!(
                schema["properties"][field]["description"].is_string(),
                "{field} has no description"
            );
        }
        let schema = serde_json::to_value(schemars::schema_for!(PoolTemplate)).expect("schema");
        assert!(schema["properties"]["params"]["description"].is_string());
    }
}
