//! The JSON the commands exchange with runscale: what `observe` gets on stdin, and how the
//! output of `observe` and `register` is parsed into core types.
//!
//! Parsing is strict (unknown fields are errors: a typo must not read as "no demand") and
//! every error says where the output went wrong. Errors about `register` output never quote
//! it, since it holds secrets.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use runscale_core::{
    Credentials, Demand, PoolId, ProviderView, Registration, Runner, RunnerId, RunnerState,
    Timestamp, WaitingJob, naming,
};
use secrecy::SecretString;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One pool as `observe` gets it on stdin.
#[derive(Debug, Serialize)]
pub(crate) struct PoolQuery<'a> {
    /// The pool's name.
    pub name: &'a str,
    /// The pool's labels.
    pub labels: &'a [String],
}

/// What `observe` gets on stdin: `{"pools":[{"name":..,"labels":[..]}]}`.
#[derive(Debug, Serialize)]
pub(crate) struct ObserveInput<'a> {
    /// The pools asked about, in the order asked.
    pub pools: Vec<PoolQuery<'a>>,
}

/// The top level of `observe`'s output; each pool is parsed on its own, so one malformed
/// pool fails only itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObserveOutput {
    pools: BTreeMap<String, Value>,
}

/// One pool of `observe`'s output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolOutput {
    waiting: Vec<JobOutput>,
    running: u32,
    runners: Vec<RunnerOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobOutput {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    queued_at: Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerOutput {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    name: String,
    state: RunnerState,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    last_busy: Option<Timestamp>,
}

/// Accepts `"42"` and `42` alike: CI systems number their runners and jobs.
fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct IdVisitor;
    impl Visitor<'_> for IdVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a whole number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(IdVisitor)
}

/// Why `observe`'s output as a whole could not be used (every pool of the batch fails).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchError(pub String);

/// One view, or one problem as text, per requested pool.
pub(crate) type PoolViews = Vec<(PoolId, Result<ProviderView, String>)>;

/// Parses `observe`'s output into one view (or one problem, as text) per requested pool.
/// Runners not named by runscale for the pool are dropped.
pub(crate) fn parse_observe(stdout: &[u8], requested: &[PoolId]) -> Result<PoolViews, BatchError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(BatchError(
            "printed nothing on stdout; expected a JSON object {\"pools\":{...}}".to_owned(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(stdout);
    let output: ObserveOutput = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| BatchError(format!("printed invalid JSON: {}", path_message(&e))))?;
    deserializer
        .end()
        .map_err(|e| BatchError(format!("printed invalid JSON: {e}")))?;
    let mut pools = output.pools;
    Ok(requested
        .iter()
        .map(|pool| {
            let view = match pools.remove(pool.as_str()) {
                None => Err(format!(
                    "the output has no entry for pool {:?} under \"pools\"",
                    pool.as_str()
                )),
                Some(value) => parse_pool(pool, value),
            };
            (pool.clone(), view)
        })
        .collect())
}

/// `path: message`, or just the message at the top level.
fn path_message(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." {
        e.inner().to_string()
    } else {
        format!("at {path}: {}", e.inner())
    }
}

fn parse_pool(pool: &PoolId, value: Value) -> Result<ProviderView, String> {
    let output: PoolOutput = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("pools.{}: {inner}", pool.as_str())
        } else {
            format!("pools.{}.{path}: {inner}", pool.as_str())
        }
    })?;
    let mut seen = HashSet::new();
    let mut runners = Vec::with_capacity(output.runners.len());
    for (i, r) in output.runners.into_iter().enumerate() {
        if r.id.is_empty() {
            return Err(format!(
                "pools.{}.runners[{i}].id: must not be empty",
                pool.as_str()
            ));
        }
        if !seen.insert(r.id.clone()) {
            return Err(format!(
                "pools.{}.runners[{i}].id: runner id {:?} appears twice",
                pool.as_str(),
                r.id
            ));
        }
        // runscale never touches runners it did not make.
        if !naming::owned_by(pool.as_str(), &r.name) {
            continue;
        }
        runners.push(Runner {
            id: RunnerId::new(r.id),
            name: r.name,
            state: r.state,
            draining: r.draining,
            last_busy: r.last_busy,
        });
    }
    Ok(ProviderView {
        demand: Demand {
            waiting: output
                .waiting
                .into_iter()
                .map(|j| WaitingJob {
                    id: j.id,
                    queued_at: j.queued_at,
                })
                .collect(),
            running: output.running,
        },
        runners,
        stale: false,
    })
}

/// The JSON type of a value, in words (never the value itself).
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses `register`'s output `{"runner_id":..,"vars":{..},"secrets":{..}}` (every field
/// optional). Errors name the field and the JSON type found, never a value: the output holds
/// secrets.
pub(crate) fn parse_register(stdout: &[u8], runner_name: &str) -> Result<Registration, String> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        // serde_json's syntax errors describe the position, not the text; still, keep only
        // the category and the position.
        let what = match e.classify() {
            serde_json::error::Category::Eof => "the JSON ends early",
            serde_json::error::Category::Syntax => "the output is not valid JSON",
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                "the output could not be read as JSON"
            }
        };
        if stdout.iter().all(u8::is_ascii_whitespace) {
            "printed nothing on stdout; expected a JSON object (at least {})".to_owned()
        } else {
            format!("{what} (line {}, column {})", e.line(), e.column())
        }
    })?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "printed {}, expected a JSON object",
            type_name(&value)
        ));
    };
    let mut runner_id = None;
    let mut credentials = Credentials::default();
    for (key, value) in fields {
        match key.as_str() {
            "runner_id" => {
                runner_id = match value {
                    Value::Null => None,
                    Value::String(s) if !s.is_empty() => Some(RunnerId::new(s)),
                    Value::String(_) => {
                        return Err("runner_id: must not be empty (leave it out or null)".into());
                    }
                    Value::Number(n) if n.is_u64() || n.is_i64() => {
                        Some(RunnerId::new(n.to_string()))
                    }
                    other => {
                        return Err(format!(
                            "runner_id: expected a string or a whole number, got {}",
                            type_name(&other)
                        ));
                    }
                }
            }
            "vars" => credentials.vars = string_map("vars", value)?,
            "secrets" => {
                credentials.secrets = string_map("secrets", value)?
                    .into_iter()
                    .map(|(k, v)| (k, SecretString::from(v)))
                    .collect()
            }
            other => {
                return Err(format!(
                    "unknown field {other:?}; expected runner_id, vars or secrets"
                ));
            }
        }
    }
    if let Some(name) = credentials
        .vars
        .keys()
        .find(|k| credentials.secrets.contains_key(*k))
    {
        return Err(format!("{name:?} is both in vars and in secrets"));
    }
    Ok(Registration {
        runner_name: runner_name.to_owned(),
        runner_id,
        credentials,
    })
}

/// An object of strings, keyed by non-empty names.
fn string_map(field: &str, value: Value) -> Result<BTreeMap<String, String>, String> {
    let object = match value {
        Value::Object(o) => o,
        Value::Null => return Ok(BTreeMap::new()),
        other => {
            return Err(format!(
                "{field}: expected an object of strings, got {}",
                type_name(&other)
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (key, value) in object {
        if key.is_empty() {
            return Err(format!("{field}: a variable name is empty"));
        }
        match value {
            Value::String(s) => {
                out.insert(key, s);
            }
            other => {
                return Err(format!(
                    "{field}.{key}: expected a string, got {}",
                    type_name(&other)
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const A1: &str = "rs-a-0123456789";
    const A2: &str = "rs-a-abcdefghij-2";

    fn pools(names: &[&str]) -> Vec<PoolId> {
        names.iter().copied().map(PoolId::new).collect()
    }

    fn observe(json: &str, names: &[&str]) -> PoolViews {
        parse_observe(json.as_bytes(), &pools(names)).expect("batch parses")
    }

    #[test]
    fn observe_output_becomes_views() {
        let json = format!(
            r#"{{"pools":{{"a":{{
                "waiting":[{{"id":"j1","queued_at":"2024-05-01T10:00:00Z"}},{{"id":7,"queued_at":"2024-05-01T12:00:00+02:00"}}],
                "running":2,
                "runners":[
                  {{"id":"r1","name":"{A1}","state":"idle","draining":true,"last_busy":"2024-05-01T09:00:00Z"}},
                  {{"id":42,"name":"{A2}","state":"busy"}}
                ]}}}}}}"#
        );
        let out = observe(&json, &["a"]);
        assert_eq!(out.len(), 1);
        let view = out[0].1.as_ref().expect("pool a parses");
        assert_eq!(view.demand.running, 2);
        assert_eq!(view.demand.waiting.len(), 2);
        assert_eq!(view.demand.waiting[1].id, "7");
        assert_eq!(
            view.demand.waiting[1].queued_at,
            "2024-05-01T10:00:00Z".parse::<Timestamp>().expect("time")
        );
        assert_eq!(view.runners.len(), 2);
        assert_eq!(view.runners[0].id.as_str(), "r1");
        assert_eq!(view.runners[0].state, RunnerState::Idle);
        assert!(view.runners[0].draining);
        assert!(view.runners[0].last_busy.is_some());
        assert_eq!(view.runners[1].id.as_str(), "42");
        assert_eq!(view.runners[1].state, RunnerState::Busy);
        assert!(!view.runners[1].draining);
        assert!(view.runners[1].last_busy.is_none());
        assert!(!view.stale);
    }

    #[test]
    fn runners_not_named_for_the_pool_are_dropped() {
        let json = format!(
            r#"{{"pools":{{"a":{{"waiting":[],"running":0,"runners":[
                {{"id":"1","name":"{A1}","state":"idle"}},
                {{"id":"2","name":"hand-made","state":"idle"}},
                {{"id":"3","name":"rs-ab-0123456789","state":"idle"}},
                {{"id":"4","name":"rs-a-short","state":"offline"}}
            ]}}}}}}"#
        );
        let out = observe(&json, &["a"]);
        let view = out[0].1.as_ref().expect("parses");
        let names: Vec<&str> = view.runners.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [A1]);
    }

    #[test]
    fn a_missing_pool_fails_only_that_pool_and_extra_pools_are_ignored() {
        let json = r#"{"pools":{"a":{"waiting":[],"running":0,"runners":[]},
                                "other":{"waiting":[],"running":0,"runners":[]}}}"#;
        let out = observe(json, &["a", "b"]);
        assert!(out[0].1.is_ok());
        let err = out[1].1.as_ref().expect_err("b is missing");
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn a_malformed_pool_names_the_path_and_fails_only_itself() {
        let json = format!(
            r#"{{"pools":{{
                "a":{{"waiting":[],"running":0,"runners":[{{"id":"1","name":"{A1}","state":"idel"}}]}},
                "b":{{"waiting":[],"running":0,"runners":[]}},
                "c":{{"waiting":[],"runners":[]}},
                "d":{{"waiting":[],"running":-1,"runners":[]}},
                "e":{{"waiting":[],"running":0,"runners":[],"runing":1}}
            }}}}"#
        );
        let out = observe(&json, &["a", "b", "c", "d", "e"]);
        let err = |i: usize| out[i].1.as_ref().expect_err("malformed").clone();
        let a = err(0);
        assert!(a.contains("pools.a.runners[0].state"), "{a}");
        assert!(a.contains("idel"), "{a}");
        assert!(out[1].1.is_ok());
        assert!(err(2).contains("missing field `running`"), "{}", err(2));
        assert!(err(3).contains("pools.d.running"), "{}", err(3));
        assert!(err(4).contains("runing"), "{}", err(4));
    }

    #[test]
    fn duplicate_and_empty_runner_ids_are_refused() {
        let json = format!(
            r#"{{"pools":{{"a":{{"waiting":[],"running":0,"runners":[
                {{"id":"1","name":"{A1}","state":"idle"}},{{"id":"1","name":"{A2}","state":"idle"}}]}},
              "b":{{"waiting":[],"running":0,"runners":[{{"id":"","name":"x","state":"idle"}}]}}}}}}"#
        );
        let out = observe(&json, &["a", "b"]);
        assert!(
            out[0]
                .1
                .as_ref()
                .expect_err("dup")
                .contains("appears twice")
        );
        assert!(
            out[1]
                .1
                .as_ref()
                .expect_err("empty")
                .contains("runners[0].id")
        );
    }

    #[test]
    fn invalid_json_is_a_batch_error_with_position() {
        let err = parse_observe(b"{\"pools\": {\n", &pools(&["a"])).expect_err("bad");
        assert!(err.0.contains("line 2"), "{}", err.0);
        let err = parse_observe(b"{\"pool\": {}}", &pools(&["a"])).expect_err("bad");
        assert!(err.0.contains("unknown field `pool`"), "{}", err.0);
        let err = parse_observe(b"{\"pools\": []}", &pools(&["a"])).expect_err("bad");
        assert!(err.0.contains("pools"), "{}", err.0);
        let err = parse_observe(b"{\"pools\": {}} trailing", &pools(&["a"])).expect_err("bad");
        assert!(err.0.contains("trailing"), "{}", err.0);
        let err = parse_observe(b"  \n", &pools(&["a"])).expect_err("empty");
        assert!(err.0.contains("nothing"), "{}", err.0);
    }

    #[test]
    fn observe_input_is_the_documented_shape() {
        let labels = vec!["linux".to_owned()];
        let input = ObserveInput {
            pools: vec![PoolQuery {
                name: "p",
                labels: &labels,
            }],
        };
        assert_eq!(
            serde_json::to_string(&input).expect("serializes"),
            r#"{"pools":[{"name":"p","labels":["linux"]}]}"#
        );
    }

    #[test]
    fn register_output_becomes_a_registration() {
        let reg = parse_register(
            br#"{"runner_id":"r-1","vars":{"URL":"http://ci"},"secrets":{"TOKEN":"s3cret-value"}}"#,
            "rs-a-0123456789",
        )
        .expect("parses");
        assert_eq!(reg.runner_name, "rs-a-0123456789");
        assert_eq!(reg.runner_id, Some(RunnerId::new("r-1")));
        assert_eq!(reg.credentials.vars["URL"], "http://ci");
        assert_eq!(
            reg.credentials.secrets["TOKEN"].expose_secret(),
            "s3cret-value"
        );
        assert!(!format!("{reg:?}").contains("s3cret-value"));

        let reg = parse_register(b"{}", "n").expect("all optional");
        assert_eq!(reg.runner_id, None);
        assert!(reg.credentials.vars.is_empty() && reg.credentials.secrets.is_empty());
        let reg = parse_register(br#"{"runner_id":17,"vars":null}"#, "n").expect("number id");
        assert_eq!(reg.runner_id, Some(RunnerId::new("17")));
    }

    #[test]
    fn register_errors_never_quote_the_output() {
        const SECRET: &str = "s3cret-value";
        let cases: &[&[u8]] = &[
            br#"{"secrets":{"TOKEN":"s3cret-value"},"bogus":1}"#,
            br#"{"secrets":{"TOKEN":"s3cret-value"}"#,
            br#"{"secrets":{"TOKEN":["s3cret-value"]}}"#,
            br#"{"secrets":"s3cret-value"}"#,
            br#"{"runner_id":"s3cret-value","secrets":{"A":"s3cret-value"},"vars":{"A":"x"}}"#,
            br#"{"runner_id":{"x":"s3cret-value"}}"#,
            br#""s3cret-value""#,
            br#"s3cret-value"#,
            b"{\"secrets\":{\"TOKEN\":\"s3cret-value\x01\"}}",
        ];
        for case in cases {
            let err = parse_register(case, "n").expect_err("invalid");
            assert!(!err.contains(SECRET), "{err}");
            assert!(!err.is_empty());
        }
        let err = parse_register(br#"{"secrets":{"TOKEN":5}}"#, "n").expect_err("invalid");
        assert!(err.contains("secrets.TOKEN"), "{err}");
        assert!(err.contains("a number"), "{err}");
        let err = parse_register(br#"{"secrets":{"TOKEN":"x"}"#, "n").expect_err("invalid");
        assert!(err.contains("line 1"), "{err}");
    }
}
