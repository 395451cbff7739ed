//! The wire protocol between runscale and the executable: the request written to its stdin,
//! the answer read from its stdout, and what each exit code means. The JSON Schema files in
//! `deploy/exec/` are generated from these types (a test keeps them in step).
//!
//! Requests carry secrets (a `create`'s runner credentials): they are never formatted with
//! `Debug` or logged.

use std::collections::BTreeMap;

use runscale_core::{ErrorKind, InstanceState, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version runscale speaks, sent as `version` in every request.
pub(crate) const VERSION: u32 = 1;

/// Exit code: the thing does not exist. `delete` treats it as success (idempotent).
pub(crate) const EXIT_NOT_FOUND: i32 = 3;
/// Exit code: the cloud has no capacity or quota for a new machine.
pub(crate) const EXIT_NO_CAPACITY: i32 = 4;
/// Exit code (`EX_TEMPFAIL`): a temporary failure, try again later.
pub(crate) const EXIT_TEMPORARY: i32 = 75;
/// Exit code (`EX_CONFIG`): the configuration (params, cloud credentials) is wrong.
pub(crate) const EXIT_CONFIG: i32 = 78;

/// One request, written as one JSON object to the executable's stdin (then stdin is closed).
#[derive(Serialize, JsonSchema)]
#[schemars(title = "runscale exec backend request (protocol version 1)")]
pub(crate) struct Request {
    /// Protocol version, `1`. An executable should refuse versions it does not know (exit 78).
    pub version: u32,
    /// The pool the request is about.
    pub pool: String,
    /// The pool template's `params`, as configured.
    pub params: Map<String, Value>,
    /// What to do, with its own fields.
    #[serde(flatten)]
    pub action: Action,
}

/// The action of a [`Request`], in its `action` field.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "action", rename_all = "lowercase")]
pub(crate) enum Action {
    /// Create one machine hosting the given runners. Answer: [`CreateReply`].
    Create(Create),
    /// Delete a machine (idempotent: an unknown id is exit 3, which counts as done). Answer:
    /// [`DeleteReply`].
    Delete {
        /// The id `create` (or `list`) returned.
        instance_id: String,
    },
    /// List the pool's machines that are not yet gone. Answer: [`ListReply`].
    List,
    /// Start fresh runners on a running machine whose runners all finished and left (a pool
    /// with `reuse`), without rebooting it; record their names, `uses` and the time, and list
    /// them from now on. Exit 3 if the machine is gone. Answer: [`DeleteReply`] (`ok`).
    Reuse(Reuse),
    /// A read-only check that the pool's machines can be managed (credentials, quotas,
    /// images). Answer: [`ProbeReply`].
    Probe,
}

/// The fields of a `create` request.
#[derive(Serialize, JsonSchema)]
pub(crate) struct Create {
    /// A unique name for the machine (`rs-{pool}-{10 chars}`): use it as the machine's name
    /// so a retried `create` finds the first one instead of making a second.
    pub instance_name: String,
    /// The names of the runners the machine hosts, one per slot. `list` must return them.
    pub runner_names: Vec<String>,
    /// The template hash to record on the machine. `list` must return it.
    pub template_hash: String,
    /// One registration per runner: what it needs to join the CI system. `secrets` must
    /// reach the machine through a private channel and never be logged or put in argv.
    pub runners: Vec<RunnerRegistration>,
}

/// The fields of a `reuse` request.
#[derive(Serialize, JsonSchema)]
pub(crate) struct Reuse {
    /// The machine, as `create` or `list` gave its id.
    pub instance_id: String,
    /// The names of its runners from now on, one per slot. `list` must return them.
    pub runner_names: Vec<String>,
    /// Runner registrations the machine will have served, the first included (2 at the
    /// first reuse). `list` must return it, with `reused_at`.
    pub uses: u32,
    /// One registration per runner, as in `create`: `secrets` through a private channel only.
    pub runners: Vec<RunnerRegistration>,
}

/// What one runner needs to connect.
#[derive(Serialize, JsonSchema)]
pub(crate) struct RunnerRegistration {
    /// The runner's name.
    pub name: String,
    /// The CI-side id when registration created it up front (GitHub JIT), else null.
    pub runner_id: Option<String>,
    /// Non-secret settings (server URL, labels), by variable name.
    pub vars: BTreeMap<String, String>,
    /// Secret settings (JIT config, token), by variable name.
    pub secrets: BTreeMap<String, String>,
}

/// A machine's state as the executable reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Being created or booting; its runners may not have connected yet.
    Booting,
    /// Up.
    Running,
    /// Being shut down or deleted.
    Stopping,
}

impl From<State> for InstanceState {
    fn from(s: State) -> Self {
        match s {
            State::Booting => InstanceState::Booting,
            State::Running => InstanceState::Running,
            State::Stopping => InstanceState::Stopping,
        }
    }
}

/// The answer to `create` (exit 0).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runscale exec backend: answer to create")]
pub(crate) struct CreateReply {
    /// The machine's id in the cloud, as `delete` and `list` use it. Non-empty.
    pub id: String,
    /// Its state; default `booting`.
    #[serde(default = "default_state")]
    pub state: State,
}

/// The default state of a created machine: booting.
fn default_state() -> State {
    State::Booting
}

/// The answer to `list` (exit 0).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runscale exec backend: answer to list")]
pub(crate) struct ListReply {
    /// Every machine of the pool that is not yet gone, including ones runscale did not create
    /// (they are listed with no runners and removed by the policy).
    pub instances: Vec<ListedInstance>,
}

/// One machine in a [`ListReply`].
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListedInstance {
    /// The machine's id. Non-empty.
    pub id: String,
    /// The runner names given at `create` (empty for machines runscale did not create).
    pub runner_names: Vec<String>,
    /// Its state.
    pub state: State,
    /// When it was created, RFC 3339.
    pub created_at: Timestamp,
    /// The template hash given at `create` (empty if unknown: the machine is then replaced
    /// once idle).
    pub template_hash: String,
    /// The `uses` of its last `reuse`; leave out (or 1) for a machine never reused.
    #[serde(default)]
    pub uses: Option<u32>,
    /// When its last `reuse` started its current runners, RFC 3339; given with `uses` above 1.
    #[serde(default)]
    pub reused_at: Option<Timestamp>,
}

/// The answer to `delete` (exit 0; exit 3 needs no answer).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runscale exec backend: answer to delete")]
pub(crate) struct DeleteReply {
    /// Must be `true`: the machine is gone or going.
    pub ok: bool,
}

/// The answer to `probe` (exit 0).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runscale exec backend: answer to probe")]
pub(crate) struct ProbeReply {
    /// One line saying what was checked.
    pub message: String,
}

/// Why an answer could not be used. The message names the field (`instances[2].state`) and
/// what was expected. It quotes a key or value of the output only when it looks like one of
/// the protocol's own words (lowercase letters and `_`, at most 32): anything else may be a
/// secret the executable wrote in the wrong place, and is shown as `…`. Callers also redact
/// the secrets they know.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(stdout: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(stdout);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = shown_path(e.path());
        let inner = shown_quotes(&e.inner().to_string());
        if path.is_empty() {
            format!("answer is not the expected JSON object: {inner}")
        } else {
            format!("answer field `{path}`: {inner}")
        }
    })?;
    de.end()
        .map_err(|e| format!("answer has more than one JSON value: {e}"))?;
    Ok(value)
}

/// Whether a word of the output may be quoted in an error: one of the protocol's own shape.
fn quotable(word: &str) -> bool {
    (1..=32).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn shown(word: &str) -> &str {
    if quotable(word) { word } else { "…" }
}

/// A field path (`instances[0].state`) with its keys [`shown`].
fn shown_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(shown(key));
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// A serde message with every span between backticks or double quotes [`shown`].
fn shown_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest[start..].chars().next().unwrap_or('`');
        let after = &rest[start + 1..];
        let Some(len) = after.find(quote) else {
            // An unclosed quote: what follows is not shown.
            out.push_str(&rest[..=start]);
            out.push('…');
            return out;
        };
        out.push_str(&rest[..=start]);
        out.push_str(shown(&after[..len]));
        out.push(quote);
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

/// The error kind of a non-zero exit code (3, "not found", is handled by the caller first).
pub(crate) fn exit_kind(code: i32) -> ErrorKind {
    match code {
        EXIT_NOT_FOUND => ErrorKind::NotFound,
        EXIT_NO_CAPACITY => ErrorKind::InsufficientCapacity,
        EXIT_TEMPORARY => ErrorKind::Transient,
        EXIT_CONFIG => ErrorKind::Misconfigured,
        _ => ErrorKind::Protocol,
    }
}

/// The JSON Schemas of the protocol, by the file name they are committed under in
/// `deploy/exec/`.
#[cfg(test)]
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let to_value = |s: schemars::Schema| s.to_value();
    vec![
        (
            "request.schema.json",
            to_value(schemars::schema_for!(Request)),
        ),
        (
            "create-reply.schema.json",
            to_value(schemars::schema_for!(CreateReply)),
        ),
        (
            "list-reply.schema.json",
            to_value(schemars::schema_for!(ListReply)),
        ),
        (
            "delete-reply.schema.json",
            to_value(schemars::schema_for!(DeleteReply)),
        ),
        (
            "probe-reply.schema.json",
            to_value(schemars::schema_for!(ProbeReply)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn deploy_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/exec")
    }

    /// The committed schemas are what the types generate. `RUNSCALE_WRITE_SCHEMAS=1` rewrites
    /// them.
    #[test]
    fn committed_json_schemas_match_the_types() {
        let write = std::env::var_os("RUNSCALE_WRITE_SCHEMAS").is_some();
        for (name, schema) in schemas() {
            let path = deploy_dir().join(name);
            let text = serde_json::to_string_pretty(&schema).expect("schema") + "\n";
            if write {
                std::fs::write(&path, &text).expect("write schema");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is out of date: run RUNSCALE_WRITE_SCHEMAS=1 cargo test -p runscale-backends \
                 --features exec --lib exec::protocol",
                path.display()
            );
        }
    }

    #[test]
    fn requests_have_the_documented_shape() {
        let create = Request {
            version: VERSION,
            pool: "linux".into(),
            params: Map::from_iter([("server_type".to_owned(), Value::from("cx22"))]),
            action: Action::Create(Create {
                instance_name: "rs-linux-abcdefghij".into(),
                runner_names: vec!["rs-linux-abcdefghij".into()],
                template_hash: "h1".into(),
                runners: vec![RunnerRegistration {
                    name: "rs-linux-abcdefghij".into(),
                    runner_id: Some("7".into()),
                    vars: BTreeMap::from([("URL".into(), "https://ci".into())]),
                    secrets: BTreeMap::from([("TOKEN".into(), "t0k".into())]),
                }],
            }),
        };
        assert_eq!(
            serde_json::to_value(&create).expect("json"),
            serde_json::json!({
                "version": 1, "action": "create", "pool": "linux",
                "params": {"server_type": "cx22"},
                "instance_name": "rs-linux-abcdefghij",
                "runner_names": ["rs-linux-abcdefghij"],
                "template_hash": "h1",
                "runners": [{"name": "rs-linux-abcdefghij", "runner_id": "7",
                             "vars": {"URL": "https://ci"}, "secrets": {"TOKEN": "t0k"}}]
            })
        );
        let list = Request {
            version: VERSION,
            pool: "p".into(),
            params: Map::new(),
            action: Action::List,
        };
        assert_eq!(
            serde_json::to_value(&list).expect("json"),
            serde_json::json!({"version": 1, "action": "list", "pool": "p", "params": {}})
        );
        let delete = Request {
            version: VERSION,
            pool: "p".into(),
            params: Map::new(),
            action: Action::Delete {
                instance_id: "42".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&delete).expect("json")["instance_id"],
            "42"
        );
    }

    #[test]
    fn parse_names_the_field_and_rejects_trailing_output() {
        let ok: ListReply = parse(
            br#"{"instances":[{"id":"1","runner_names":["a"],"state":"running",
                 "created_at":"2026-11-30T08:00:00Z","template_hash":"h"}]}"#,
        )
        .expect("valid");
        assert_eq!(ok.instances[0].state, State::Running);
        let e = parse::<ListReply>(
            br#"{"instances":[{"id":"1","runner_names":["a"],"state":"up",
                 "created_at":"2026-11-30T08:00:00Z","template_hash":"h"}]}"#,
        )
        .expect_err("bad state");
        assert!(e.contains("instances[0].state"), "{e}");
        let e = parse::<ListReply>(br#"{"instances":[{"id":1}]}"#).expect_err("bad id");
        assert!(e.contains("instances[0].id"), "{e}");
        let e = parse::<CreateReply>(br#"{"id":"a"} {"id":"b"}"#).expect_err("two values");
        assert!(e.contains("more than one"), "{e}");
        let e = parse::<CreateReply>(b"created!").expect_err("not json");
        assert!(e.contains("not the expected JSON"), "{e}");
        let e = parse::<CreateReply>(br#"{"id":"a","sate":"running"}"#).expect_err("typo");
        assert!(e.contains("sate"), "{e}");
        let e = parse::<ListReply>(br#"{"instances":[{"id":"1","state":"Up"}]}"#)
            .expect_err("bad state");
        assert!(
            e.contains("instances[0].state") && e.contains("expected one of"),
            "{e}"
        );
        assert!(e.contains("`…`") && !e.contains("Up"), "{e}");
        let c: CreateReply = parse(br#"{"id":"a"}"#).expect("state defaults");
        assert_eq!(c.state, State::Booting);
    }

    /// Found by fuzzing (`fuzz/regressions/exec_answer/`): an executable that wrote a secret
    /// as a key or a value had it quoted in the error, which is logged.
    #[test]
    fn errors_quote_no_word_of_the_output_that_could_be_a_secret() {
        for answer in [
            r#"{"instances":[{"ghp_S3cr3tT0ken":"x"}]}"#,
            r#"{"instances":[{"id":"1","state":"ghp_S3cr3tT0ken"}]}"#,
            r#"{"instances":[{"id":["ghp_S3cr3tT0ken"]}]}"#,
            r#"{"instances":[{"id":"1","runner_names":"ghp_S3cr3tT0ken"}]}"#,
            r#"{"id":"a","ghp_S3cr3tT0ken`x":1}"#,
            r#"{"id":"a","created-s3cr3t":1}"#,
        ] {
            let list = parse::<ListReply>(answer.as_bytes()).map(|_| ());
            let create = parse::<CreateReply>(answer.as_bytes()).map(|_| ());
            for e in [list, create].into_iter().filter_map(Result::err) {
                assert!(
                    !e.contains("S3cr3t") && !e.contains("s3cr3t"),
                    "{answer}: {e}"
                );
            }
        }
    }

    #[test]
    fn exit_codes_map_to_error_kinds() {
        assert_eq!(exit_kind(3), ErrorKind::NotFound);
        assert_eq!(exit_kind(4), ErrorKind::InsufficientCapacity);
        assert_eq!(exit_kind(75), ErrorKind::Transient);
        assert_eq!(exit_kind(78), ErrorKind::Misconfigured);
        assert_eq!(exit_kind(1), ErrorKind::Protocol);
    }
}
