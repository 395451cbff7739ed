//! CSV traces.
//!
//! The first non-comment line is the header. Columns (by name, any order, case-insensitive):
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `queued_at` | yes | RFC 3339 time, or seconds since the Unix epoch |
//! | `duration_s` | yes | run time in seconds (`312`, `312.5`, or `5m12s`) |
//! | `labels` | no | labels separated by `;`, `,` (quote the field), `|` or spaces |
//! | `pool` | no | pool name; overrides label routing |
//! | `run` | no | workflow run / pipeline id |
//!
//! Other columns are ignored. Fields may be quoted with `"` (`""` inside is a quote); a
//! quoted field cannot span lines. Blank lines and lines starting with `#` are skipped.

use std::sync::Arc;

use super::{TraceError, TraceJob, parse_secs, parse_time, split_labels};

/// A field and the 1-based character column it starts at.
struct Field {
    text: String,
    column: usize,
}

fn split_line(line: &str) -> Result<Vec<Field>, (usize, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let column = i + 1;
        let mut text = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err((column, "unterminated quoted field".to_owned())),
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        text.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        text.push(*c);
                        i += 1;
                    }
                }
            }
            match chars.get(i) {
                None | Some(',') => {}
                Some(_) => {
                    return Err((i + 1, "expected `,` after a quoted field".to_owned()));
                }
            }
        } else {
            while i < chars.len() && chars[i] != ',' {
                text.push(chars[i]);
                i += 1;
            }
        }
        fields.push(Field { text, column });
        if i >= chars.len() {
            return Ok(fields);
        }
        i += 1; // the comma
    }
}

/// Parses CSV text; `name` is used in errors.
pub fn parse(text: &str, name: &str) -> Result<Vec<TraceJob>, TraceError> {
    let err = |line: usize, column: usize, message: String| TraceError::Parse {
        path: name.to_owned(),
        line,
        column,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((hline, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let header = split_line(header).map_err(|(c, m)| err(hline, c, m))?;
    let find = |n: &str| {
        header
            .iter()
            .position(|f| f.text.trim().eq_ignore_ascii_case(n))
    };
    let queued = find("queued_at")
        .ok_or_else(|| err(hline, 1, "header has no `queued_at` column".to_owned()))?;
    let duration = find("duration_s")
        .ok_or_else(|| err(hline, 1, "header has no `duration_s` column".to_owned()))?;
    let (labels, pool, run) = (find("labels"), find("pool"), find("run"));

    let mut jobs = Vec::new();
    for (n, line) in lines {
        let fields = split_line(line).map_err(|(c, m)| err(n, c, m))?;
        if fields.len() != header.len() {
            let column = fields.last().map_or(1, |f| f.column);
            return Err(err(
                n,
                column,
                format!("{} fields, the header has {}", fields.len(), header.len()),
            ));
        }
        let f = |i: usize| &fields[i];
        let queued_at = parse_time(&f(queued).text)
            .map_err(|m| err(n, f(queued).column, format!("queued_at: {m}")))?;
        let dur = parse_secs(&f(duration).text)
            .map_err(|m| err(n, f(duration).column, format!("duration_s: {m}")))?;
        let opt = |i: Option<usize>| {
            i.map(|i| f(i).text.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        jobs.push(TraceJob {
            queued_at,
            duration: dur,
            labels: labels.map_or_else(|| Arc::from(Vec::new()), |i| split_labels(&f(i).text)),
            pool: opt(pool),
            run: opt(run),
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_columns_in_any_order_with_quotes() {
        let text = "# exported\nlabels,duration_s,queued_at,pool\n\"linux,x64\",300,2025-03-03T09:00:00Z,\n gpu ,1.5,1741000000,big\n";
        let jobs = parse(text, "t.csv").expect("parses");
        assert_eq!(jobs.len(), 2);
        assert_eq!(&*jobs[0].labels, &["linux".to_owned(), "x64".to_owned()]);
        assert_eq!(jobs[0].duration.as_secs(), 300);
        assert_eq!(jobs[0].pool, None);
        assert_eq!(jobs[1].pool.as_deref(), Some("big"));
        assert_eq!(jobs[1].duration.as_millis(), 1500);
        assert_eq!(jobs[1].queued_at.timestamp(), 1_741_000_000);
    }

    #[test]
    fn errors_name_line_and_column() {
        let text =
            "queued_at,duration_s,labels\n2025-03-03T09:00:00Z,300,a\n2025-03-03T09:00:01Z,ten,b\n";
        let e = parse(text, "t.csv").expect_err("bad duration");
        assert_eq!(
            e.to_string(),
            "t.csv: line 3, column 22: duration_s: `ten` is not a duration in seconds"
        );
        let e = parse("queued_at,duration_s\nyesterday,5\n", "t.csv").expect_err("bad time");
        assert!(
            e.to_string()
                .starts_with("t.csv: line 2, column 1: queued_at"),
            "{e}"
        );
        let e = parse("queued_at,duration_s\n1,\"5\n", "t.csv").expect_err("quote");
        assert!(
            e.to_string()
                .starts_with("t.csv: line 2, column 3: unterminated"),
            "{e}"
        );
        let e = parse("queued_at,duration_s\n1,5,7\n", "t.csv").expect_err("width");
        assert!(e.to_string().starts_with("t.csv: line 2, column 5:"), "{e}");
        let e = parse("when,duration_s\n", "t.csv").expect_err("header");
        assert!(
            e.to_string()
                .contains("line 1, column 1: header has no `queued_at`"),
            "{e}"
        );
    }
}
