//! Configuration of the local-process backend: the backend-level [`Config`] and the per-pool
//! [`PoolTemplate`], their pure validation, the template hash, and argv placeholders.
//!
//! Nothing here touches the file system or spawns anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runscale_core::adapter_type::{PoolContext, Problems, Template, Validate};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Environment variables whose names start with this are set by the backend and cannot be set
/// by a template or by credentials.
pub(crate) const RESERVED_ENV_PREFIX: &str = "RUNSCALE_";

/// Backend-level settings of the local-process backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding one state file, one credentials file and one log per instance, in one
    /// sub-directory per pool. Created with mode 0700 if missing. Must be private to runscale
    /// and used by one runscale daemon only.
    pub state_dir: PathBuf,
    /// How long a terminated process may take to exit after SIGTERM before its process group
    /// is sent SIGKILL (a duration such as "30s" or "2m").
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stop_grace: Duration,
}

/// The default [`Config::stop_grace`]: 30 seconds.
fn default_stop_grace() -> Duration {
    Duration::from_secs(30)
}

impl Validate for Config {
    /// Checks the settings without touching the file system. Errors name the field (relative
    /// to this struct) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([(
            "stop_grace",
            Some(self.stop_grace),
        )]));
        if self.state_dir.as_os_str().is_empty() {
            errors.push(("state_dir".to_owned(), "must not be empty".to_owned()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// How a runner's registration credentials reach the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsDelivery {
    /// A 0600 JSON file named by `RUNSCALE_CREDENTIALS_FILE`:
    /// `{"runners":[{"name","runner_id","vars","secrets"}]}`. Works with any number of runners.
    #[default]
    File,
    /// Every credential variable and secret as an environment variable of the process. Only
    /// for instances hosting exactly one runner.
    Env,
}

/// How one pool's instances are started: one process per instance.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTemplate {
    /// The command line: the program, then its arguments. Elements may contain the
    /// placeholders `{pool}`, `{runner_name}` (the first runner) and `{instance_id}`; write
    /// `{{` and `}}` for literal braces. The program itself may only use `{pool}`. A program
    /// without a `/` is looked up in `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables of the process. Names starting with `RUNSCALE_` are
    /// reserved. The daemon's own environment is not passed on, except `PATH`, `HOME`, `USER`,
    /// `LOGNAME`, `SHELL`, `LANG`, `LC_ALL`, `LC_CTYPE`, `TZ` and `TMPDIR`.
    #[serde(default = "default_env")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the process; default: the daemon's.
    #[serde(default = "default_working_dir")]
    pub working_dir: Option<PathBuf>,
    /// How registration credentials reach the process: `file` (default) or `env`.
    #[serde(default = "default_credentials")]
    pub credentials: CredentialsDelivery,
}

/// The default [`PoolTemplate::env`]: none.
fn default_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The default [`PoolTemplate::working_dir`]: the daemon's own.
fn default_working_dir() -> Option<PathBuf> {
    None
}

/// The default [`PoolTemplate::credentials`]: a file.
fn default_credentials() -> CredentialsDelivery {
    CredentialsDelivery::File
}

impl Template for PoolTemplate {
    /// Checks the template without touching the file system. Errors name the field (relative
    /// to this struct, e.g. `command[1]` or `env.FOO`) and say what is wrong. Besides the
    /// template's own rules: `env` delivery hosts one runner per process.
    fn validate_for(&self, pool: PoolContext<'_>) -> Problems {
        let mut errors = Vec::new();
        if self.command.is_empty() {
            errors.push((
                "command".to_owned(),
                "must name a program (the list is empty)".to_owned(),
            ));
        }
        for (i, arg) in self.command.iter().enumerate() {
            let field = format!("command[{i}]");
            if arg.contains('\0') {
                errors.push((field.clone(), "must not contain a NUL byte".to_owned()));
            }
            match parse(arg) {
                Err(message) => errors.push((field, message)),
                Ok(pieces) => {
                    if i == 0 {
                        if arg.is_empty() {
                            errors.push((field.clone(), "the program must not be empty".into()));
                        }
                        if pieces.iter().any(|p| {
                            matches!(
                                p,
                                Piece::Var(Placeholder::RunnerName | Placeholder::InstanceId)
                            )
                        }) {
                            errors.push((
                                field,
                                "the program may only use the {pool} placeholder".to_owned(),
                            ));
                        }
                    }
                }
            }
        }
        for (name, value) in &self.env {
            let field = format!("env.{name}");
            if let Some(message) = env_name_problem(name) {
                errors.push((field.clone(), message));
            } else if name.starts_with(RESERVED_ENV_PREFIX) {
                errors.push((
                    field.clone(),
                    format!("names starting with {RESERVED_ENV_PREFIX} are set by runscale"),
                ));
            }
            if value.contains('\0') {
                errors.push((field, "the value must not contain a NUL byte".to_owned()));
            }
        }
        if let Some(dir) = &self.working_dir
            && dir.as_os_str().is_empty()
        {
            errors.push((
                "working_dir".to_owned(),
                "must not be empty (leave it out to use the daemon's)".to_owned(),
            ));
        }
        let per_instance = pool.runners_per_instance;
        if self.credentials == CredentialsDelivery::Env && per_instance > 1 {
            errors.push((
                "credentials".to_owned(),
                format!(
                    "\"env\" delivery hosts one runner per process, but the pool has \
                     runners_per_instance: {per_instance}; use \"file\" or set \
                     runners_per_instance to 1"
                ),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A short hash of everything that decides how an instance is started (command, env,
    /// working directory, credentials delivery). Stable across runs, platforms and Rust
    /// versions: SHA-256 over a length-prefixed encoding of the fields, the first 16 hex
    /// digits.
    fn hash(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |tag: &[u8], bytes: &[u8]| {
            h.update((tag.len() as u64).to_be_bytes());
            h.update(tag);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        put(b"format", b"runscale/local-process/template/v1");
        put(b"command.len", &(self.command.len() as u64).to_be_bytes());
        for arg in &self.command {
            put(b"command", arg.as_bytes());
        }
        put(b"env.len", &(self.env.len() as u64).to_be_bytes());
        for (k, v) in &self.env {
            put(b"env.name", k.as_bytes());
            put(b"env.value", v.as_bytes());
        }
        match &self.working_dir {
            None => put(b"working_dir.none", b""),
            Some(dir) => {
                use std::os::unix::ffi::OsStrExt;
                put(b"working_dir", dir.as_os_str().as_bytes());
            }
        }
        let delivery: &[u8] = match self.credentials {
            CredentialsDelivery::File => b"file",
            CredentialsDelivery::Env => b"env",
        };
        put(b"credentials", delivery);
        let digest = h.finalize();
        let mut out = String::with_capacity(16);
        for b in digest.iter().take(8) {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Why `name` cannot be an environment variable name, if it cannot.
pub(crate) fn env_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("the variable name must not be empty".to_owned())
    } else if name.contains('=') || name.contains('\0') {
        Some("the variable name must not contain '=' or a NUL byte".to_owned())
    } else {
        None
    }
}

/// A placeholder allowed in [`PoolTemplate::command`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placeholder {
    /// `{pool}`
    Pool,
    /// `{runner_name}`
    RunnerName,
    /// `{instance_id}`
    InstanceId,
}

/// One piece of a parsed argv element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text taken as is (escapes already resolved).
    Literal(String),
    /// A placeholder.
    Var(Placeholder),
}

/// Splits an argv element into literal text and placeholders. `{{` and `}}` are literal braces.
pub(crate) fn parse(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err("unmatched '}' (write '}}' for a literal brace)".to_owned()),
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err("unclosed '{' (write '{{' for a literal brace)".to_owned());
                        }
                    }
                }
                let var = match name.as_str() {
                    "pool" => Placeholder::Pool,
                    "runner_name" => Placeholder::RunnerName,
                    "instance_id" => Placeholder::InstanceId,
                    other => {
                        return Err(format!(
                            "unknown placeholder {{{other}}}; known: {{pool}}, {{runner_name}}, \
                             {{instance_id}} (write '{{{{' and '}}}}' for literal braces)"
                        ));
                    }
                };
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var(var));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// The values placeholders expand to for one instance.
pub(crate) struct Values<'a> {
    /// The pool name.
    pub pool: &'a str,
    /// The first runner's name.
    pub runner_name: &'a str,
    /// The instance id.
    pub instance_id: &'a str,
}

/// Expands the placeholders of one argv element.
pub(crate) fn expand(arg: &str, values: &Values<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    for piece in parse(arg)? {
        match piece {
            Piece::Literal(s) => out.push_str(&s),
            Piece::Var(Placeholder::Pool) => out.push_str(values.pool),
            Piece::Var(Placeholder::RunnerName) => out.push_str(values.runner_name),
            Piece::Var(Placeholder::InstanceId) => out.push_str(values.instance_id),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runscale_core::adapter_type::PoolContext;

    fn template(command: &[&str]) -> PoolTemplate {
        PoolTemplate {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            credentials: CredentialsDelivery::File,
        }
    }

    fn fields(r: Result<(), Vec<(String, String)>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn hash_of_a_fixed_template_never_changes() {
        let mut t = template(&["/usr/bin/runner", "--name", "{runner_name}"]);
        t.env.insert("A".into(), "1".into());
        t.working_dir = Some(PathBuf::from("/srv/runner"));
        // A literal (also computed independently): if it changes, every deployed instance is
        // seen as outdated.
        assert_eq!(t.hash(), "c8f5aa756ae62031");
        assert_eq!(t.hash().len(), 16);
    }

    #[test]
    fn hash_tells_every_field_apart() {
        let base = template(&["a", "b"]);
        let mut others = vec![template(&["ab"]), template(&["a", "b", ""])];
        let mut t = base.clone();
        t.env.insert("X".into(), String::new());
        others.push(t);
        let mut t = base.clone();
        t.working_dir = Some(PathBuf::from("/"));
        others.push(t);
        let mut t = base.clone();
        t.credentials = CredentialsDelivery::Env;
        others.push(t);
        for o in &others {
            assert_ne!(o.hash(), base.hash(), "{o:?}");
        }
        assert_eq!(base.hash(), base.clone().hash());
    }

    #[test]
    fn validate_rejects_empty_command_and_bad_placeholders() {
        assert_eq!(
            fields(template(&[]).validate_for(PoolContext::single("p"))),
            ["command"]
        );
        assert_eq!(
            fields(template(&[""]).validate_for(PoolContext::single("p"))),
            ["command[0]"]
        );
        assert_eq!(
            fields(template(&["run", "{runner}"]).validate_for(PoolContext::single("p"))),
            ["command[1]"]
        );
        assert_eq!(
            fields(template(&["run", "{pool"]).validate_for(PoolContext::single("p"))),
            ["command[1]"]
        );
        assert_eq!(
            fields(template(&["run", "a}b"]).validate_for(PoolContext::single("p"))),
            ["command[1]"]
        );
        assert_eq!(
            fields(template(&["/opt/{instance_id}/run"]).validate_for(PoolContext::single("p"))),
            ["command[0]"]
        );
        assert!(
            template(&[
                "/opt/{pool}/run",
                "{runner_name}",
                "{instance_id}",
                "${{X}}"
            ])
            .validate_for(PoolContext::single("p"))
            .is_ok()
        );
    }

    #[test]
    fn validate_rejects_reserved_and_malformed_env() {
        let mut t = template(&["run"]);
        t.env.insert("RUNSCALE_POOL".into(), "x".into());
        t.env.insert("A=B".into(), "x".into());
        t.env.insert("OK".into(), "x\0y".into());
        let mut f = fields(t.validate_for(PoolContext::single("p")));
        f.sort();
        assert_eq!(f, ["env.A=B", "env.OK", "env.RUNSCALE_POOL"]);
    }

    #[test]
    fn config_validate_names_the_field() {
        let c = Config {
            state_dir: PathBuf::new(),
            stop_grace: default_stop_grace(),
        };
        assert_eq!(fields(c.validate()), ["state_dir"]);
    }

    #[test]
    fn config_parses_humantime_and_defaults() {
        let c: Config = serde_json::from_str(r#"{"state_dir": "/var/lib/rs", "stop_grace": "2m"}"#)
            .expect("valid");
        assert_eq!(c.stop_grace, Duration::from_secs(120));
        let c: Config = serde_json::from_str(r#"{"state_dir": "/x"}"#).expect("valid");
        assert_eq!(c.stop_grace, Duration::from_secs(30));
        assert!(serde_json::from_str::<Config>(r#"{"state_dir": "/x", "other": 1}"#).is_err());
        let t: PoolTemplate =
            serde_json::from_str(r#"{"command": ["run"], "credentials": "env"}"#).expect("valid");
        assert_eq!(t.credentials, CredentialsDelivery::Env);
        assert!(t.env.is_empty() && t.working_dir.is_none());
    }

    #[test]
    fn json_schema_describes_every_field() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema");
        assert_eq!(schema["properties"]["stop_grace"]["type"], "string");
        assert_eq!(schema["required"], serde_json::json!(["state_dir"]));
        let schema = serde_json::to_value(schemars::schema_for!(PoolTemplate)).expect("schema");
        for field in ["command", "env", "working_dir", "credentials"] {
            assert!(
                schema["properties"][field]["description"].is_string(),
                "{field} has no description"
            );
        }
    }

    #[test]
    fn expand_substitutes_and_unescapes() {
        let v = Values {
            pool: "p",
            runner_name: "rs-p-1",
            instance_id: "lp-x",
        };
        assert_eq!(
            expand("{pool}/{runner_name}:{instance_id} ${{HOME}}", &v).expect("valid"),
            "p/rs-p-1:lp-x ${HOME}"
        );
    }
}
