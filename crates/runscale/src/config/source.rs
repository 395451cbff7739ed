//! YAML text → a JSON value plus the line of every field path, so that errors found after
//! parsing (type errors, validation) can point at the line they are about.
//!
//! The document is read once with serde-saphyr into a tree whose every node and key carries
//! its [`Spanned`] location; the tree is then split into a plain [`serde_json::Value`] (what
//! the typed configuration is deserialized from) and a [`LineIndex`] from field paths such as
//! `pools[1].max` to 1-based lines. Anchors, aliases and merge keys are resolved by the
//! parser; an aliased value reports the line where it is used.
//!
//! YAML 1.2 booleans only (`true`/`false`): `yes`, `on` and friends stay strings. Mapping keys
//! must be scalars; duplicate keys are an error.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A YAML syntax error (or a document that is not a mapping of scalar keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line, when the parser knows it.
    pub line: Option<u64>,
    /// 1-based column, when the parser knows it.
    pub column: Option<u64>,
    /// The parser's explanation.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l} column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Field paths (`pools[1].max`, `providers[0].type`) to the 1-based line where they appear.
/// For a mapping entry the line is the key's; for a sequence item, the item's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineIndex(HashMap<String, u64>);

impl LineIndex {
    /// The line of `path`, or of its nearest enclosing path that appears in the file (a
    /// missing field is reported at its parent).
    pub fn line_of(&self, path: &str) -> Option<u64> {
        let mut p = path;
        loop {
            if let Some(&line) = self.0.get(p) {
                return Some(line);
            }
            p = parent(p)?;
        }
    }
}

/// The enclosing path: `a.b[2].c` → `a.b[2]` → `a.b` → `a` → none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

/// Joins a path and a key: `("", "a")` → `a`, `("a", "b")` → `a.b`.
pub fn join_key(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// Joins a path and an index: `("a", 1)` → `a[1]`.
pub fn join_index(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// A parsed document.
#[derive(Clone, Debug)]
pub struct Document {
    /// The content.
    pub value: Value,
    /// Where each field path is.
    pub lines: LineIndex,
}

/// Parses YAML text. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Document, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    let root: Option<Spanned<Node>> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let location = e.location();
            SyntaxError {
                line: location.map(|l| l.line()).filter(|&l| l > 0),
                column: location.map(|l| l.column()).filter(|&c| c > 0),
                message: message(&e),
            }
        })?;
    let mut lines = LineIndex::default();
    let value = match root {
        Some(root) => flatten(root.value, "", &mut lines),
        None => Value::Object(Map::new()),
    };
    Ok(Document { value, lines })
}

/// The parser's error in runscale's words where its own would name library internals (a
/// duplicate key suggests an option of the library; a breached budget prints a Rust value).
fn message(e: &serde_saphyr::Error) -> String {
    match e {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("the key {key:?} appears twice in one mapping; keep one of them")
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            "a key appears twice in one mapping; keep one of them".to_owned()
        }
        serde_saphyr::Error::Budget { .. } => "the document is too large or too deeply nested \
             for a configuration file (too many nodes, levels, anchors or aliases); a \
             runscale configuration needs far less"
            .to_owned(),
        other => strip_location(&other.to_string()),
    }
}

/// serde-saphyr appends " at line L, column C" to its messages; the location is reported
/// separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn flatten(node: Node, path: &str, lines: &mut LineIndex) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Number(n) => Value::Number(n),
        Node::String(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let p = join_index(path, i);
                    lines.0.insert(p.clone(), item.referenced.line());
                    flatten(item.value, &p, lines)
                })
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let p = join_key(path, &key.value);
                lines.0.insert(p.clone(), key.referenced.line());
                let v = flatten(value.value, &p, lines);
                map.insert(key.value, v);
            }
            Value::Object(map)
        }
    }
}

/// A YAML node with the location of every child.
enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        match i64::try_from(v) {
            Ok(v) => Ok(Node::Number(v.into())),
            Err(_) => u64::try_from(v)
                .map(|v| Node::Number(v.into()))
                .map_err(|_| E::custom(format!("integer {v} is too large"))),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(|v| Node::Number(v.into()))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        // Infinity and NaN have no JSON form; keep them as text so a numeric field rejects
        // them with a type error.
        Ok(match Number::from_f64(v) {
            Some(n) => Node::Number(n),
            None => Node::String(v.to_string()),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_lines_of_nested_paths() {
        let doc = parse(
            "listen: 127.0.0.1:1\npools:\n  - name: a\n    max: 3\n  - name: b\n    schedules:\n      - cron: \"* * * * *\"\n        max: -1\n",
        )
        .expect("valid");
        assert_eq!(
            doc.value,
            json!({
                "listen": "127.0.0.1:1",
                "pools": [
                    {"name": "a", "max": 3},
                    {"name": "b", "schedules": [{"cron": "* * * * *", "max": -1}]},
                ]
            })
        );
        assert_eq!(doc.lines.line_of("listen"), Some(1));
        assert_eq!(doc.lines.line_of("pools"), Some(2));
        assert_eq!(doc.lines.line_of("pools[0]"), Some(3));
        assert_eq!(doc.lines.line_of("pools[0].max"), Some(4));
        assert_eq!(doc.lines.line_of("pools[1].schedules[0].max"), Some(8));
        // A missing field is reported at its parent.
        assert_eq!(doc.lines.line_of("pools[1].min_idle"), Some(5));
        assert_eq!(doc.lines.line_of("pools[1].schedules[0].timezone"), Some(7));
        assert_eq!(doc.lines.line_of("nothing"), None);
    }

    #[test]
    fn yaml_11_booleans_stay_strings() {
        let doc = parse("a: yes\nb: true\nc: on\nd: ~\ne: 1.5\n").expect("valid");
        assert_eq!(
            doc.value,
            json!({"a": "yes", "b": true, "c": "on", "d": null, "e": 1.5})
        );
    }

    #[test]
    fn aliases_resolve() {
        let doc = parse("base: &b\n  x: 1\nother: *b\n").expect("valid");
        assert_eq!(doc.value["other"], json!({"x": 1}));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").expect_err("unclosed flow sequence");
        assert!(e.line.is_some(), "{e:?}");
        let e = parse("a: 1\na: 2\n").expect_err("duplicate key");
        assert_eq!(e.line, Some(2), "{e:?}");
        assert_eq!(
            e.message,
            "the key \"a\" appears twice in one mapping; keep one of them"
        );
    }

    #[test]
    fn a_document_beyond_the_parser_budget_is_refused_in_our_words() {
        let text = "[".repeat(5000) + &"]".repeat(5000);
        let e = parse(&text).expect_err("too deep");
        assert_eq!(e.message, "recursion limit exceeded");
        let mut many = String::new();
        for i in 0..130_000 {
            many.push_str(&format!("k{i}: 1\n"));
        }
        let e = parse(&many).expect_err("too many nodes");
        assert!(!e.message.contains("Nodes {"), "{e:?}");
        assert!(e.message.contains("too large"), "{e:?}");
    }

    #[test]
    fn empty_document_is_an_empty_mapping() {
        assert_eq!(parse("").expect("valid").value, json!({}));
        assert_eq!(parse("# only a comment\n").expect("valid").value, json!({}));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), None);
    }
}
