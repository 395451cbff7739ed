//! JSON Lines traces: one object per line with the same fields as the CSV columns:
//! `queued_at` (RFC 3339 string or Unix seconds), `duration_s` (number or `"5m12s"`),
//! `labels` (array of strings, or one string split like the CSV column), optional `pool`,
//! optional `run` (string or number). Other fields are ignored; blank lines are skipped.

use std::sync::Arc;

use serde_json::Value;

use super::{TraceError, TraceJob, parse_secs, parse_time, split_labels};

/// Parses JSON Lines text; `name` is used in errors.
pub fn parse(text: &str, name: &str) -> Result<Vec<TraceJob>, TraceError> {
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |column: usize, message: String| TraceError::Parse {
            path: name.to_owned(),
            line: n,
            column,
            message,
        };
        // The column where a key's value starts, for errors about that field.
        let col_of = |key: &str| {
            line.find(&format!("\"{key}\""))
                .map_or(1, |b| line[..b].chars().count() + 1)
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| err(e.column().max(1), e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(err(1, "expected a JSON object".to_owned()));
        };
        let queued_at = match obj.get("queued_at") {
            Some(Value::String(s)) => parse_time(s),
            Some(Value::Number(x)) => parse_time(&x.to_string()),
            Some(_) => Err("must be a string or a number".to_owned()),
            None => return Err(err(1, "missing field `queued_at`".to_owned())),
        }
        .map_err(|m| err(col_of("queued_at"), format!("queued_at: {m}")))?;
        let duration = match obj.get("duration_s") {
            Some(Value::Number(x)) => parse_secs(&x.to_string()),
            Some(Value::String(s)) => parse_secs(s),
            Some(_) => Err("must be a number".to_owned()),
            None => return Err(err(1, "missing field `duration_s`".to_owned())),
        }
        .map_err(|m| err(col_of("duration_s"), format!("duration_s: {m}")))?;
        let labels: Arc<[String]> = match obj.get("labels") {
            None | Some(Value::Null) => Arc::from(Vec::new()),
            Some(Value::String(s)) => split_labels(s),
            Some(Value::Array(a)) => a
                .iter()
                .map(|l| l.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(col_of("labels"), "labels: must be strings".to_owned()))?
                .into(),
            Some(_) => {
                return Err(err(
                    col_of("labels"),
                    "labels: must be an array of strings".to_owned(),
                ));
            }
        };
        let text_field = |key: &str| -> Result<Option<String>, TraceError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(x)) => Ok(Some(x.to_string())),
                Some(_) => Err(err(col_of(key), format!("{key}: must be a string"))),
            }
        };
        jobs.push(TraceJob {
            queued_at,
            duration,
            labels,
            pool: text_field("pool")?,
            run: text_field("run")?,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_label_forms() {
        let text = r#"{"queued_at":"2025-03-03T09:00:00Z","duration_s":60,"labels":["linux","x64"],"run":7}

{"queued_at":1741000000.5,"duration_s":"2m","labels":"gpu;linux","pool":"big","extra":true}"#;
        let jobs = parse(text, "t.jsonl").expect("parses");
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].run.as_deref(), Some("7"));
        assert_eq!(&*jobs[1].labels, &["gpu".to_owned(), "linux".to_owned()]);
        assert_eq!(jobs[1].duration.as_secs(), 120);
        assert_eq!(jobs[1].queued_at.timestamp_millis(), 1_741_000_000_500);
    }

    #[test]
    fn errors_name_line_and_column() {
        let text = "{\"queued_at\":\"2025-03-03T09:00:00Z\",\"duration_s\":60}\n{\"queued_at\":\"2025-03-03T09:00:00Z\", \"duration_s\":-4}\n";
        let e = parse(text, "t.jsonl").expect_err("negative");
        assert!(
            e.to_string()
                .starts_with("t.jsonl: line 2, column 38: duration_s"),
            "{e}"
        );
        let e = parse("{\"queued_at\": 1,\n", "t.jsonl").expect_err("syntax");
        assert!(e.to_string().starts_with("t.jsonl: line 1, column "), "{e}");
        let e = parse("{\"duration_s\": 1}\n", "t.jsonl").expect_err("missing");
        assert!(e.to_string().contains("missing field `queued_at`"), "{e}");
    }
}
