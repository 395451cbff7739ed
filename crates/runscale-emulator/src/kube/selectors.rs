//! Label selectors (equality-based `a=b`, `a==b`, `a!=b`; set-based `a in (x,y)`,
//! `a notin (x)`, `a`, `!a`; and `a>1`, `a<1`) and field selectors (`metadata.name=x`, `!=`,
//! on the fields each resource type supports), parsed from query strings and matched against
//! stored JSON objects.

use std::collections::BTreeSet;

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key in (values)` / `key=value` / `key==value`.
    In(String, BTreeSet<String>),
    /// `key notin (values)` / `key!=value`: also true when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n`.
    Gt(String, i64),
    /// `key<n`.
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

fn parse_error(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found {selector:?}: {why}"
    ))
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(super::validation::is_dns_subdomain)
        && super::validation::is_qualified_name_part(name)
}

fn valid_value(value: &str) -> bool {
    value.is_empty() || super::validation::is_qualified_name_part(value)
}

fn value_set(inner: &str) -> Result<BTreeSet<String>, &'static str> {
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err("invalid label value");
        }
        set.insert(v.to_owned());
    }
    Ok(set)
}

fn parse_requirement(part: &str) -> Result<Requirement, &'static str> {
    let part = part.trim();
    if part.is_empty() {
        return Err("empty requirement");
    }
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(Requirement::DoesNotExist(key.to_owned()))
        } else {
            Err("invalid label key")
        };
    }
    // Set-based: `key in (...)`, `key notin (...)`.
    if let Some(open) = part.find('(') {
        let head = part[..open].trim_end();
        let inner = part[open + 1..]
            .strip_suffix(')')
            .ok_or("expected ')' at the end")?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or("expected 'in' or 'notin'")?;
        let key = key.trim();
        if !valid_key(key) {
            return Err("invalid label key");
        }
        let values = value_set(inner)?;
        return match op {
            "in" => Ok(Requirement::In(key.to_owned(), values)),
            "notin" => Ok(Requirement::NotIn(key.to_owned(), values)),
            _ => Err("expected 'in' or 'notin'"),
        };
    }
    for (op, len) in [("==", 2), ("!=", 2), ("=", 1), (">", 1), ("<", 1)] {
        if let Some(at) = part.find(op) {
            let key = part[..at].trim();
            let value = part[at + len..].trim();
            if !valid_key(key) {
                return Err("invalid label key");
            }
            return match op {
                ">" | "<" => {
                    let n: i64 = value.parse().map_err(|_| "expected an integer")?;
                    Ok(if op == ">" {
                        Requirement::Gt(key.to_owned(), n)
                    } else {
                        Requirement::Lt(key.to_owned(), n)
                    })
                }
                _ => {
                    if !valid_value(value) {
                        return Err("invalid label value");
                    }
                    let set = BTreeSet::from([value.to_owned()]);
                    Ok(if op == "!=" {
                        Requirement::NotIn(key.to_owned(), set)
                    } else {
                        Requirement::In(key.to_owned(), set)
                    })
                }
            };
        }
    }
    if valid_key(part) {
        Ok(Requirement::Exists(part.to_owned()))
    } else {
        Err("invalid label key")
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        if selector.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let parts = split_top_level(selector).map_err(|why| parse_error(selector, why))?;
        parts
            .into_iter()
            .map(|p| parse_requirement(p).map_err(|why| parse_error(p.trim(), why)))
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSelector)
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// The fields a field selector may name, per resource type.
fn supported_fields(rt: &ResourceType) -> &'static [&'static str] {
    match rt.plural {
        "pods" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "secrets" => &["metadata.name", "metadata.namespace", "type"],
        "jobs" => &["metadata.name", "metadata.namespace", "status.successful"],
        "namespaces" => &["metadata.name", "status.phase"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// A parsed field selector: `(field, value, equal?)` terms, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parses a `fieldSelector` query value for `rt`; unsupported fields are a 400, like
    /// `field label not supported: spec.foo`.
    pub fn parse(rt: &ResourceType, selector: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if selector.trim().is_empty() {
            return Ok(FieldSelector(terms));
        }
        for part in selector.split(',') {
            let part = part.trim();
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(rt).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_owned(), value.trim().to_owned(), equal));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether every term holds for the object. Absent fields compare as `""`.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, value, equal)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// A label and a field selector together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether both match.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_set_based_requirements() {
        let p = pod(json!({"app": "runner", "tier": "ci", "n": "5"}));
        let cases = [
            ("app=runner", true),
            ("app==runner", true),
            ("app!=runner", false),
            ("app=web", false),
            ("missing!=x", true),
            ("app in (web, runner)", true),
            ("app notin (runner)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=runner,tier=ci", true),
            ("app=runner,tier in (prod)", false),
            ("n>4", true),
            ("n<5", false),
            ("", true),
        ];
        for (selector, want) in cases {
            let s = LabelSelector::parse(selector).expect("ok");
            assert_eq!(s.matches(&p), want, "{selector}");
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for bad in ["app in (x", "a b c", "=x", "app in x)", "n>x", "bad key!=1"] {
            let err = LabelSelector::parse(bad).expect_err("an error");
            assert_eq!(err.code, 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_on_supported_fields_only() {
        let p = pod(json!({}));
        let s =
            FieldSelector::parse(&super::super::resources::PODS, "metadata.name=p").expect("ok");
        assert!(s.matches(&p));
        let s = FieldSelector::parse(&super::super::resources::PODS, "status.phase!=Running")
            .expect("ok");
        assert!(!s.matches(&p));
        let err = FieldSelector::parse(&super::super::resources::SECRETS, "spec.x=1")
            .expect_err("an error");
        assert_eq!(err.message, "field label not supported: spec.x");
    }
}
