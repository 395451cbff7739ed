//! CSV traces, read with the `csv` crate.
//!
//! The first record is the header. Columns (by name, any order, case-insensitive):
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `queued_at` | yes | RFC 3339 time, or seconds since the Unix epoch |
//! | `duration_s` | yes | run time in seconds (`312`, `312.5`, or `5m12s`) |
//! | `labels` | no | labels separated by `;`, `,` (quote the field), `|` or spaces |
//! | `pool` | no | pool name; overrides label routing |
//! | `run` | no | workflow run / pipeline id |
//!
//! Other columns are ignored. Fields may be quoted with `"` (`""` inside is a quote, and a
//! quoted field may span lines); fields are trimmed. Blank lines and lines starting with `#`
//! are skipped. An error names the line and the column: the field's position in the record
//! (1-based), and the column's name where it is known.

use std::sync::Arc;

use super::{TraceError, TraceJob, parse_secs, parse_time, split_labels};

/// Parses CSV text; `name` is used in errors.
pub fn parse(text: &str, name: &str) -> Result<Vec<TraceJob>, TraceError> {
    let err = |line: u64, column: usize, message: String| TraceError::Parse {
        path: name.to_owned(),
        line: usize::try_from(line).unwrap_or(usize::MAX),
        column,
        message,
    };
    // A malformed record: the csv crate's error, at its line.
    let malformed = |e: csv::Error| {
        let line = e.position().map_or(0, csv::Position::line);
        err(line, 1, e.to_string())
    };
    // Comments are skipped here rather than by the reader, whose line numbers would then miss
    // the comment lines; the record lengths are checked here for the same reason.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records().filter(|r| {
        r.as_ref()
            .map_or(true, |r| !r.get(0).is_some_and(|f| f.starts_with('#')))
    });
    let Some(header) = records.next() else {
        return Ok(Vec::new());
    };
    let header = header.map_err(malformed)?;
    let hline = header.position().map_or(1, csv::Position::line);
    let find = |n: &str| header.iter().position(|f| f.eq_ignore_ascii_case(n));
    let queued = find("queued_at")
        .ok_or_else(|| err(hline, 1, "header has no `queued_at` column".to_owned()))?;
    let duration = find("duration_s")
        .ok_or_else(|| err(hline, 1, "header has no `duration_s` column".to_owned()))?;
    let (labels, pool, run) = (find("labels"), find("pool"), find("run"));

    let mut jobs = Vec::new();
    for record in records {
        let record = record.map_err(malformed)?;
        let n = record.position().map_or(0, csv::Position::line);
        if record.len() != header.len() {
            let message = format!("{} fields, the header has {}", record.len(), header.len());
            return Err(err(n, record.len().min(header.len()) + 1, message));
        }
        // The header fixes the record length, so every column index is present.
        let f = |i: usize| record.get(i).unwrap_or_default();
        let queued_at =
            parse_time(f(queued)).map_err(|m| err(n, queued + 1, format!("queued_at: {m}")))?;
        let dur = parse_secs(f(duration))
            .map_err(|m| err(n, duration + 1, format!("duration_s: {m}")))?;
        let opt = |i: Option<usize>| i.map(|i| f(i).to_owned()).filter(|s| !s.is_empty());
        jobs.push(TraceJob {
            queued_at,
            duration: dur,
            labels: labels.map_or_else(|| Arc::from(Vec::new()), |i| split_labels(f(i))),
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
    fn comments_blank_lines_and_quoted_line_breaks_keep_the_line_numbers() {
        let text = "# c\nqueued_at,duration_s,labels\n\n# x\n1741000000,5,\"a\nb\"\n\n1741000001,6,c\n1,x,d\n";
        let e = parse(text, "t.csv").expect_err("the last duration");
        assert!(
            e.to_string()
                .starts_with("t.csv: line 9, column 2: duration_s"),
            "{e}"
        );
        let jobs = parse(text.trim_end_matches("1,x,d\n"), "t.csv").expect("parses");
        assert_eq!(jobs.len(), 2);
        assert_eq!(&*jobs[0].labels, &["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let text =
            "queued_at,duration_s,labels\n2025-03-03T09:00:00Z,300,a\n2025-03-03T09:00:01Z,ten,b\n";
        let e = parse(text, "t.csv").expect_err("bad duration");
        assert_eq!(
            e.to_string(),
            "t.csv: line 3, column 2: duration_s: `ten` is not a duration in seconds"
        );
        let e = parse("queued_at,duration_s\nyesterday,5\n", "t.csv").expect_err("bad time");
        assert!(
            e.to_string()
                .starts_with("t.csv: line 2, column 1: queued_at"),
            "{e}"
        );
        let e = parse("queued_at,duration_s\n1,5,7\n", "t.csv").expect_err("width");
        assert_eq!(
            e.to_string(),
            "t.csv: line 2, column 3: 3 fields, the header has 2"
        );
        let e = parse("# a comment\nwhen,duration_s\n", "t.csv").expect_err("header");
        assert!(
            e.to_string()
                .contains("line 2, column 1: header has no `queued_at`"),
            "{e}"
        );
    }
}
