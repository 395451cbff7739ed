//! `${VAR}` interpolation of the raw configuration text, before it is parsed as YAML.
//!
//! - `${NAME}` is replaced by the variable's value; an unset variable is an error naming it and
//!   the line. A variable set to the empty string is used as is.
//! - `${NAME:-default}` uses `default` when the variable is unset or empty (the default is
//!   taken literally and cannot contain `}`).
//! - `$${` is a literal `${`; any other `$` is left alone.
//! - Names are `[A-Za-z_][A-Za-z0-9_]*`.
//! - Lines whose first non-blank character is `#` (YAML comments) are left as they are, so a
//!   commented-out setting never fails for an unset variable. This also applies to such lines
//!   inside block scalars.
//!
//! Values are inserted verbatim: a value containing YAML syntax (`: `, `#`, a newline) should
//! be placed inside a quoted string. A value containing newlines shifts the line numbers
//! reported for later parts of the file.
//!
//! The environment is passed in as a function, so this module is pure.

use std::fmt;

/// One problem found while interpolating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpolationError {
    /// 1-based line of the placeholder.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Replaces every placeholder of `text`, looking variables up with `lookup`. Returns every
/// problem found, not just the first.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<InterpolationError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        interpolate_line(line, index + 1, &lookup, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn interpolate_line(
    line: &str,
    number: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<InterpolationError>,
) {
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            // `$${` → literal `${`.
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                errors.push(InterpolationError {
                    line: number,
                    message: "unterminated \"${\" (write \"$${\" for a literal \"${\")".to_owned(),
                });
                out.push_str(&rest[pos..]);
                return;
            };
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_valid_name(name) {
                errors.push(InterpolationError {
                    line: number,
                    message: format!(
                        "invalid variable name {name:?} in \"${{{inner}}}\": names are letters, \
                         digits and '_', not starting with a digit (write \"$${{\" for a \
                         literal \"${{\")"
                    ),
                });
            } else {
                match (lookup(name), default) {
                    (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => errors.push(InterpolationError {
                        line: number,
                        message: format!(
                            "environment variable {name} is not set (set it, or give a \
                             default: \"${{{name}:-value}}\")"
                        ),
                    }),
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/ci".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let text = "a: ${HOME_DIR}/x\nb: ${UNSET:-fallback}\nc: ${HOME_DIR:-no}\nd: ${EMPTY}|\n";
        assert_eq!(
            interpolate(text, env).expect("valid"),
            "a: /home/ci/x\nb: fallback\nc: /home/ci\nd: |\n"
        );
    }

    #[test]
    fn empty_value_takes_the_default() {
        assert_eq!(interpolate("${EMPTY:-d}", env).expect("valid"), "d");
        assert_eq!(interpolate("${UNSET:-}", env).expect("valid"), "");
    }

    #[test]
    fn escapes_and_lone_dollars_stay() {
        assert_eq!(
            interpolate("cost: 5$ and $${HOME_DIR} and $x $", env).expect("valid"),
            "cost: 5$ and ${HOME_DIR} and $x $"
        );
    }

    #[test]
    fn every_unset_variable_is_named_with_its_line() {
        let errors = interpolate("a: 1\nb: ${NOPE}\nc: ${ALSO_NOT} ${HOME_DIR}\n", env)
            .expect_err("unset variables");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("NOPE"), "{}", errors[0]);
        assert_eq!(errors[1].line, 3);
        assert!(errors[1].message.contains("ALSO_NOT"), "{}", errors[1]);
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        let errors = interpolate("x: ${1BAD}\ny: ${OPEN\n", env).expect_err("malformed");
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].line, errors[1].line), (1, 2));
        assert!(errors[0].message.contains("1BAD"));
        assert!(errors[1].message.contains("unterminated"));
    }

    #[test]
    fn comment_lines_are_left_alone() {
        let text = "  # old: ${NOT_SET}\nkey: value # ${HOME_DIR}\n";
        assert_eq!(
            interpolate(text, env).expect("valid"),
            "  # old: ${NOT_SET}\nkey: value # /home/ci\n"
        );
    }
}
