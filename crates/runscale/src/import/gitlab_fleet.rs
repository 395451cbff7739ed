//! `runscale import gitlab-runners-fleet`: the JSON configuration of gitlab-runners-fleet's
//! `scale` program (the keys of its `scale/app/config.go`) turned into a runscale
//! configuration: the `gitlab` provider reading every project the token's user is a member of
//! and enabling its project runner in each (as the seed did), one pool with the seed's limits
//! and timeouts, and a backend (`exec` with `deploy/exec/hcloud.sh`, or `local-process` with
//! `deploy/exec/gitlab-runner-slots.sh`).
//!
//! Pure: the seed's file comes in as text, the environment through a lookup (for `env:VAR`
//! values other than the token, which stays a reference to the variable), and the YAML text
//! and the warnings go out. Keys with no runscale equivalent become comment lines; keys whose
//! meaning changes give a warning; an unknown key or a bad value is an error naming it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// Largest seed configuration read, in bytes.
pub const MAX_INPUT: u64 = 1024 * 1024;

/// Where the imported configuration runs its instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// `exec` backend running `deploy/exec/hcloud.sh` (Hetzner Cloud, as the seed's first
    /// version); its settings come from `HCLOUD_*` variables at start-up.
    #[default]
    Exec,
    /// `local-process` backend: each instance is `deploy/exec/gitlab-runner-slots.sh` (or
    /// `--command`) on this host.
    LocalProcess,
}

/// Arguments of `runscale import gitlab-runners-fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The seed's JSON configuration (what `scale` reads on stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Where to write the runscale configuration (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The backend of the generated configuration.
    #[arg(long, value_enum, default_value_t = BackendKind::Exec)]
    pub backend: BackendKind,
    /// The executable (and its arguments) instead of the backend's default script:
    /// `deploy/exec/hcloud.sh` for `exec`, `deploy/exec/gitlab-runner-slots.sh` for
    /// `local-process`.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The outcome of an import.
#[derive(Debug)]
pub struct Imported {
    /// The runscale configuration (YAML, with comments).
    pub yaml: String,
    /// Keys whose meaning changes in runscale, one sentence each (for stderr).
    pub warnings: Vec<String>,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not a JSON object.
    #[error("not a gitlab-runners-fleet configuration: {0}")]
    Syntax(String),
    /// A key the seed does not have.
    #[error("unknown key {0:?}: gitlab-runners-fleet's keys are {keys}", keys = KNOWN.join(", "))]
    UnknownKey(String),
    /// A value of the wrong type or out of range.
    #[error("{key}: {message}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Every key of the seed's configuration.
const KNOWN: [&str; 14] = [
    "gitlab_host",
    "gitlab_token",
    "scale_state_file",
    "terraform_state_file",
    "runner_address",
    "runner_tag",
    "runner_max_jobs",
    "instance_count_max",
    "instance_count_min",
    "instance_grow_max",
    "instance_provision_time",
    "instance_max_age",
    "instance_max_idle_time",
    "debug",
];

/// The seed's settings, its defaults filled in.
struct Fleet {
    host: String,
    token: Token,
    tag: String,
    max_jobs: u32,
    count_max: u32,
    count_min: u32,
    grow_max: u32,
    provision_time: Duration,
    max_age: Duration,
    max_idle: Duration,
}

/// Where the API token comes from.
enum Token {
    /// `env:VAR`.
    Env(String),
    /// A literal (never copied into the output).
    Literal,
}

/// A seed value: `env:VAR` strings are looked up (the seed resolves them when it starts).
fn resolved(
    key: &str,
    v: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, ImportError> {
    match v.as_str().and_then(|s| s.strip_prefix("env:")) {
        Some(var) => lookup(var)
            .map(Value::String)
            .ok_or_else(|| ImportError::Value {
                key: key.to_owned(),
                message: format!("refers to the environment variable {var}, which is not set"),
            }),
        None => Ok(v.clone()),
    }
}

fn bad(key: &str, message: impl Into<String>) -> ImportError {
    ImportError::Value {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A whole number between `min` and `max` (a JSON number or a numeric string).
fn count(key: &str, v: &Value, min: u32, max: u32) -> Result<u32, ImportError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            bad(
                key,
                format!("{v} is not a whole number from {min} to {max}"),
            )
        })
}

/// A Go duration (`40m`, `1h30m`, `1.5h`, `300ms`) or a unitless number of seconds, as the
/// seed reads them; at most 30 days.
fn duration(key: &str, v: &Value) -> Result<Duration, ImportError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(bad(key, format!("{v} is not a duration"))),
    };
    let parsed = if let Ok(secs) = text.parse::<u64>() {
        Some(Duration::from_secs(secs))
    } else {
        go_duration(&text)
    };
    parsed
        .filter(|d| *d <= Duration::from_secs(30 * 24 * 3600))
        .ok_or_else(|| {
            bad(
                key,
                format!("{v} is not a duration (seconds, or like 40m, 1h30m) up to 30 days"),
            )
        })
}

/// Go's `time.ParseDuration` for non-negative values.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A string value.
fn text(key: &str, v: &Value) -> Result<String, ImportError> {
    v.as_str()
        .map(str::to_owned)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad(key, format!("{v} is not a non-empty string")))
}

impl Fleet {
    /// Reads the seed's object; unused keys are noted in `comments`.
    fn read(
        obj: &Map<String, Value>,
        lookup: &dyn Fn(&str) -> Option<String>,
        comments: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Result<Fleet, ImportError> {
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ImportError::UnknownKey(k.clone()));
        }
        let get = |key: &str| -> Result<Option<Value>, ImportError> {
            obj.get(key).map(|v| resolved(key, v, lookup)).transpose()
        };
        let token = match obj.get("gitlab_token") {
            None => {
                return Err(bad(
                    "gitlab_token",
                    "missing: runscale needs a token with the api scope (the seed's anonymous \
                     mode cannot create or enable runners)",
                ));
            }
            Some(v) => match v.as_str() {
                Some(s) if s.starts_with("env:") => Token::Env(s["env:".len()..].to_owned()),
                Some(s) if !s.trim().is_empty() => Token::Literal,
                _ => return Err(bad("gitlab_token", "must be a token or env:VAR")),
            },
        };
        if matches!(token, Token::Literal) {
            warnings.push(
                "gitlab_token: a literal token is not copied into runscale's configuration \
                 (runscale reads secrets from the environment or files): the output reads it \
                 from the environment variable GITLAB_TOKEN"
                    .to_owned(),
            );
        }
        let host = match get("gitlab_host")? {
            Some(v) => text("gitlab_host", &v)?,
            None => "gitlab.com".to_owned(),
        };
        let tag = match get("runner_tag")? {
            Some(v) => text("runner_tag", &v)?,
            None => "gitlab_runner_fleet".to_owned(),
        };
        if tag.contains(',') || tag.trim() != tag {
            return Err(bad("runner_tag", format!("{tag:?} is not one GitLab tag")));
        }
        let num = |key: &str, default: u32, min: u32, max: u32| -> Result<u32, ImportError> {
            get(key)?.map_or(Ok(default), |v| count(key, &v, min, max))
        };
        let dur = |key: &str, default: u64| -> Result<Duration, ImportError> {
            get(key)?.map_or(Ok(Duration::from_secs(default)), |v| duration(key, &v))
        };
        let fleet = Fleet {
            host,
            token,
            tag,
            max_jobs: num("runner_max_jobs", 3, 1, 99)?,
            count_max: num("instance_count_max", 10, 1, 1000)?,
            count_min: num("instance_count_min", 0, 0, 1000)?,
            grow_max: num("instance_grow_max", 3, 1, 1000)?,
            provision_time: dur("instance_provision_time", 10 * 60)?,
            max_age: dur("instance_max_age", 24 * 3600)?,
            max_idle: dur("instance_max_idle_time", 40 * 60)?,
        };
        if fleet.count_min > fleet.count_max {
            return Err(bad(
                "instance_count_min",
                format!(
                    "{} is above instance_count_max ({})",
                    fleet.count_min, fleet.count_max
                ),
            ));
        }
        for (key, note) in [
            (
                "scale_state_file",
                "runscale keeps no state file: it lists its instances from the backend and its \
                 runners from GitLab",
            ),
            (
                "terraform_state_file",
                "no Terraform: the backend creates and deletes machines itself",
            ),
            (
                "runner_address",
                "no gateway: runscale reads each runner slot's state from GitLab's runner \
                 managers, not from the hosts",
            ),
            (
                "debug",
                "use --log-level debug (or RUNSCALE_LOG_LEVEL=debug)",
            ),
        ] {
            if let Some(v) = obj.get(key) {
                comments.push(format!("{key} = {v}: no equivalent; {note}"));
            }
        }
        if fleet.count_min > 0 {
            warnings.push(format!(
                "instance_count_min {}: runscale keeps idle runner slots warm rather than a count \
                 of instances: min_idle is {} slots (instances × runner_max_jobs), kept idle on \
                 top of the jobs that run",
                fleet.count_min,
                fleet.count_min * fleet.max_jobs
            ));
        }
        if obj.contains_key("instance_max_age") {
            warnings.push(
                "instance_max_age: an instance past this age is drained and removed once idle, \
                 never while a job runs (max_lifetime)"
                    .to_owned(),
            );
        }
        if obj.contains_key("instance_provision_time") {
            warnings.push(
                "instance_provision_time: an instance whose runner slots have not reached GitLab \
                 by then is terminated (boot_timeout); a failed read never terminates one"
                    .to_owned(),
            );
        }
        Ok(fleet)
    }
}

/// The URL of `gitlab_host` (a host name, or a URL already).
fn url_of(host: &str) -> String {
    if host.contains("://") {
        host.trim_end_matches('/').to_owned()
    } else {
        format!("https://{}", host.trim_end_matches('/'))
    }
}

/// A YAML scalar for `s` (a JSON string: valid YAML, and `${...}` stays for interpolation).
fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A YAML flow sequence of strings.
fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(", "))
}

fn human(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(d).to_string().replace(' ', "")
    }
}

/// Converts the seed's configuration text. `lookup` resolves `env:VAR` values (other than the
/// token's).
pub fn convert(
    text: &str,
    source: &str,
    backend: BackendKind,
    command: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Imported, ImportError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ImportError::Syntax(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ImportError::Syntax(
            "the file must be a JSON object".to_owned(),
        ));
    };
    let mut comments = Vec::new();
    let mut warnings = Vec::new();
    let f = Fleet::read(&obj, lookup, &mut comments, &mut warnings)?;
    let url = url_of(&f.host);
    let token_var = match &f.token {
        Token::Env(v) => v.clone(),
        Token::Literal => "GITLAB_TOKEN".to_owned(),
    };
    let gitlab_com = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .is_some_and(|h| h.eq_ignore_ascii_case("gitlab.com"));

    let mut y = String::new();
    let source_line = source.replace('\n', " ");
    let _ = writeln!(
        y,
        "# runscale configuration imported from the gitlab-runners-fleet configuration \
         {source_line}\n# by `runscale import gitlab-runners-fleet`. Check it with `runscale \
         check -c <this file>`."
    );
    for c in &comments {
        let _ = writeln!(y, "# {c}");
    }
    let _ = writeln!(
        y,
        "\nlisten: \"${{RUNSCALE_LISTEN:-127.0.0.1:9090}}\"\n# The seed ran every minute \
         (SCALE_DELAY); runscale also acts on its own events.\ninterval: \
         \"${{RUNSCALE_INTERVAL:-30s}}\""
    );
    let _ = writeln!(y, "\nproviders:\n  - name: gitlab\n    type: gitlab");
    let _ = writeln!(y, "    url: {}  # gitlab_host", quoted(&url));
    let _ = writeln!(
        y,
        "    token: {{env: {}}}  # gitlab_token (a personal access token with the api scope)",
        quoted(&token_var)
    );
    let _ = writeln!(
        y,
        "    # As the seed: pending jobs of every project the user is a member of (Maintainer,\n    \
         # to enable the runner there), listed again every 5 minutes; the pool's project runner\n    \
         # is enabled in each."
    );
    let _ = writeln!(
        y,
        "    membership: true\n    membership_refresh: \"${{RUNSCALE_MEMBERSHIP_REFRESH:-5m}}\""
    );
    if gitlab_com {
        let _ = writeln!(
            y,
            "    # gitlab.com answers idle runners from Workhorse (long polling): their contact\n    \
             # can be an hour old while they wait for jobs.\n    contact_timeout: 65m"
        );
    }
    let _ = writeln!(y, "\nbackends:");
    let slots =
        "${RUNSCALE_DEPLOY_DIR:-/usr/local/share/runscale/deploy}/exec/gitlab-runner-slots.sh";
    let (backend_yaml, template) = match backend {
        BackendKind::Exec => {
            let cmd = if command.is_empty() {
                vec![
                    "${RUNSCALE_DEPLOY_DIR:-/usr/local/share/runscale/deploy}/exec/hcloud.sh"
                        .to_owned(),
                ]
            } else {
                command.to_vec()
            };
            (
                format!(
                    "  - name: fleet\n    type: exec\n    # One machine per instance; its user data \
                     installs gitlab-runner and runs\n    # deploy/exec/gitlab-runner-slots.sh \
                     (one run-single per slot).\n    command: {}\n",
                    list(&cmd)
                ),
                "    template:\n      params:\n        server_type: \
                 \"${HCLOUD_SERVER_TYPE:-cx22}\"\n        image: \
                 \"${HCLOUD_IMAGE:-ubuntu-24.04}\"\n        ssh_key: \
                 \"${HCLOUD_SSH_KEY:-runscale}\"\n        ssh_private_key: \
                 \"${HCLOUD_SSH_PRIVATE_KEY:-/etc/runscale/hcloud-ssh-key}\"\n        user_data: \
                 \"${HCLOUD_USER_DATA:-/etc/runscale/gitlab-runner-cloud-init.yml}\"\n"
                    .to_owned(),
            )
        }
        BackendKind::LocalProcess => {
            let cmd = if command.is_empty() {
                vec![slots.to_owned()]
            } else {
                command.to_vec()
            };
            (
                "  - name: fleet\n    type: local-process\n    state_dir: \
                 \"${RUNSCALE_STATE_DIR:-/var/lib/runscale}\"\n    stop_grace: 30s\n"
                    .to_owned(),
                format!(
                    "    template:\n      # One process per instance, one runner slot per \
                     runner_max_jobs.\n      command: {}\n      credentials: file\n      env:\n        \
                     PATH: \"${{PATH:-/usr/local/bin:/usr/bin:/bin}}\"\n        \
                     GITLAB_RUNNER_SLOTS_DIR: \
                     \"${{GITLAB_RUNNER_SLOTS_DIR:-/var/lib/gitlab-runner-slots}}\"\n",
                    list(&cmd)
                ),
            )
        }
    };
    y.push_str(&backend_yaml);
    let _ = writeln!(
        y,
        "\npools:\n  - name: fleet\n    provider: gitlab\n    backend: fleet"
    );
    let _ = writeln!(
        y,
        "    selector:\n      tags: {}  # runner_tag\n      # A project runner, created in the \
         member project with the lowest id and enabled in\n      # every member project.\n      \
         runner_type: project_type",
        list(std::slice::from_ref(&f.tag))
    );
    y.push_str(&template);
    let _ = writeln!(
        y,
        "    ephemeral: false  # the seed's runners take job after job\n    \
         runners_per_instance: {}  # runner_max_jobs\n    max: {}  # instance_count_max\n    \
         min_idle: {}  # instance_count_min × runner_max_jobs (idle slots kept warm)\n    \
         max_booting: {}  # instance_grow_max\n    boot_timeout: {}  # instance_provision_time\n    \
         max_lifetime: {}  # instance_max_age (drained, removed once idle)\n    \
         idle_timeout: {}  # instance_max_idle_time",
        f.max_jobs,
        f.count_max,
        f.count_min * f.max_jobs,
        f.grow_max,
        human(f.provision_time),
        human(f.max_age),
        human(f.max_idle),
    );
    Ok(Imported { yaml: y, warnings })
}

/// Runs the command: reads `args.file`, writes the configuration, prints the warnings.
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let mut text = String::new();
    file.take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if text.len() as u64 > MAX_INPUT {
        anyhow::bail!("{} is larger than {MAX_INPUT} bytes", args.file.display());
    }
    let imported = convert(
        &text,
        &args.file.display().to_string(),
        args.backend,
        &args.command,
        &|name| std::env::var(name).ok(),
    )
    .map_err(|e| {
        let (field, message) = match &e {
            ImportError::Value { key, message } => (key.clone(), message.clone()),
            ImportError::UnknownKey(key) => (key.clone(), e.to_string()),
            ImportError::Syntax(_) => (String::new(), e.to_string()),
        };
        // Exit code 2, like any invalid configuration.
        crate::config::ConfigError::Invalid {
            path: args.file.clone(),
            errors: vec![crate::config::FieldError {
                path: field,
                message,
                line: None,
            }],
        }
    })?;
    for w in &imported.warnings {
        tracing::warn!("{w}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, &imported.yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => out.write_all(imported.yaml.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "MAX" => Some("7".to_owned()),
            _ => None,
        }
    }

    fn import(json: &str) -> Result<Imported, ImportError> {
        convert(json, "fleet.json", BackendKind::Exec, &[], &env)
    }

    #[test]
    fn go_durations_and_seconds_read_as_the_seed_reads_them() {
        let d = |v: Value| duration("k", &v).ok();
        assert_eq!(d(Value::from(600)), Some(Duration::from_secs(600)));
        assert_eq!(d(Value::from("600")), Some(Duration::from_secs(600)));
        assert_eq!(d(Value::from("40m")), Some(Duration::from_secs(2400)));
        assert_eq!(d(Value::from("1h30m")), Some(Duration::from_secs(5400)));
        assert_eq!(d(Value::from("1.5h")), Some(Duration::from_secs(5400)));
        assert_eq!(d(Value::from("300ms")), Some(Duration::from_millis(300)));
        assert_eq!(d(Value::from("0")), Some(Duration::ZERO));
        for bad in ["", "10x", "-5m", "m", "h1", "999h"] {
            assert_eq!(d(Value::from(bad)), None, "{bad}");
        }
    }

    #[test]
    fn every_key_maps_or_is_commented_and_changed_meanings_warn() {
        let out = import(
            r#"{
                "gitlab_host": "gitlab.example.org",
                "gitlab_token": "env:GITLAB_API_TOKEN",
                "scale_state_file": "scale.state",
                "terraform_state_file": "terraform.tfstate",
                "runner_address": "10.0.0.1",
                "runner_tag": "fleet",
                "runner_max_jobs": 2,
                "instance_count_max": "env:MAX",
                "instance_count_min": 1,
                "instance_grow_max": 2,
                "instance_provision_time": 300,
                "instance_max_age": "12h",
                "instance_max_idle_time": "30m",
                "debug": true
            }"#,
        )
        .expect("imports");
        let y = &out.yaml;
        for line in [
            "url: \"https://gitlab.example.org\"",
            "token: {env: \"GITLAB_API_TOKEN\"}",
            "membership: true",
            "tags: [\"fleet\"]",
            "runner_type: project_type",
            "runners_per_instance: 2",
            "max: 7",
            "min_idle: 2",
            "max_booting: 2",
            "boot_timeout: 5m",
            "max_lifetime: 12h",
            "idle_timeout: 30m",
            "# scale_state_file = \"scale.state\": no equivalent",
            "# terraform_state_file = \"terraform.tfstate\": no equivalent",
            "# runner_address = \"10.0.0.1\": no equivalent",
            "# debug = true: no equivalent",
        ] {
            assert!(y.contains(line), "missing {line:?} in\n{y}");
        }
        assert!(!y.contains("contact_timeout"), "not gitlab.com:\n{y}");
        let warned: Vec<&str> = out
            .warnings
            .iter()
            .map(|w| w.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            warned,
            [
                "instance_count_min 1",
                "instance_max_age",
                "instance_provision_time"
            ]
        );
    }

    #[test]
    fn defaults_are_the_seeds_and_a_literal_token_is_never_copied() {
        let out = import(r#"{"gitlab_token": "glpat-secret-value"}"#).expect("imports");
        let y = &out.yaml;
        assert!(!y.contains("glpat-secret-value"));
        for line in [
            "url: \"https://gitlab.com\"",
            "token: {env: \"GITLAB_TOKEN\"}",
            "contact_timeout: 65m",
            "tags: [\"gitlab_runner_fleet\"]",
            "runners_per_instance: 3",
            "max: 10",
            "min_idle: 0",
            "max_booting: 3",
            "boot_timeout: 10m",
            "max_lifetime: 1day",
            "idle_timeout: 40m",
        ] {
            assert!(y.contains(line), "missing {line:?} in\n{y}");
        }
        assert!(
            out.warnings[0].starts_with("gitlab_token"),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn the_output_is_a_valid_runscale_configuration_for_either_backend() {
        let seed = r#"{"gitlab_token": "env:GITLAB_API_TOKEN", "instance_count_min": 1}"#;
        for backend in [BackendKind::Exec, BackendKind::LocalProcess] {
            let out = convert(seed, "fleet.json", backend, &[], &env).expect("imports");
            let valid =
                crate::config::load_str(&out.yaml, std::path::Path::new("runscale.yaml"), |_| None)
                    .unwrap_or_else(|e| panic!("{backend:?}: {e}\n{}", out.yaml));
            assert_eq!(valid.pools.len(), 1);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = |json: &str| import(json).expect_err("refused").to_string();
        assert!(
            err(r#"{"gitlab_token": "t", "runner_tags": "x"}"#)
                .starts_with("unknown key \"runner_tags\"")
        );
        assert!(
            err(r#"{"gitlab_token": "t", "runner_max_jobs": 0}"#).starts_with("runner_max_jobs:")
        );
        assert!(
            err(r#"{"gitlab_token": "t", "instance_max_age": "soon"}"#)
                .starts_with("instance_max_age:")
        );
        assert!(err(r#"{"gitlab_token": "t", "instance_count_max": "env:NOPE"}"#).contains("NOPE"));
        assert!(
            err(r#"{"gitlab_token": "t", "instance_count_min": 5, "instance_count_max": 2}"#)
                .starts_with("instance_count_min:")
        );
        assert!(err(r#"{"runner_tag": "x"}"#).starts_with("gitlab_token:"));
        assert!(err("[1]").contains("JSON object"));
        assert!(err("{").starts_with("not a gitlab-runners-fleet configuration"));
    }
}
