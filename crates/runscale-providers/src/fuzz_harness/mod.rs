//! Entry points for fuzzing and corpus replay.
//!
//! Each function takes arbitrary bytes, runs one piece of production code on them and asserts
//! that it returns (an error is a fine answer; a panic is a bug) and that cheap invariants of
//! its answer hold. The `cargo fuzz` targets under `fuzz/` call these, and so does the
//! ordinary test `tests/fuzz_corpus.rs`, which replays every committed corpus and regression
//! input (see `docs/fuzzing.md`). Nothing here touches the network or the file system. Built
//! with every provider (the default features).
//!
//! Inputs are HTTP-like text, so that seeds are readable and mutations stay meaningful: a
//! first line (what to do), header lines `name: value`, an empty line, then the body:
//!
//! ```text
//! signed
//! x-github-event: workflow_job
//! x-github-delivery: 1
//!
//! {"action":"queued", ...}
//! ```
//!
//! Webhook inputs start with `signed` (the harness signs the body, or presents the token, as
//! the CI system would, so the parsing after verification is reached) or anything else (the
//! headers are presented as they are: verification itself is fuzzed). API inputs start with
//! the answer's kind and HTTP status, e.g. `runners 200`.
//!
//! Secrets are supplied through [`runscale_core::secret::preload`] (the store AWS Secrets
//! Manager values are kept in), so no file or environment variable is read. The providers
//! live for the whole process, as in the daemon: de-duplication memory carries over from
//! one input to the next, as it does between deliveries.

mod api;
mod webhooks;

pub use api::*;
pub use webhooks::*;

/// An input split into its first line, its headers (lower-case names) and its body.
struct Message<'a> {
    /// The first line, trimmed.
    command: String,
    /// `name: value` lines up to the first empty one; lines without a colon are skipped.
    headers: Vec<(String, String)>,
    /// Everything after the empty line (nothing without one).
    body: &'a [u8],
}

impl<'a> Message<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let (head, body): (&[u8], &[u8]) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &[]),
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.lines();
        let command = lines.next().unwrap_or_default().trim().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Message {
            command,
            headers,
            body,
        }
    }

    /// The word `n` (0-based) of the first line.
    fn word(&self, n: usize) -> Option<&str> {
        self.command.split_whitespace().nth(n)
    }
}
