//! Entry points for fuzzing and corpus replay.
//!
//! Each function takes arbitrary bytes, runs one piece of production code on them and asserts
//! that it returns (an error is a fine answer; a panic is a bug) and that cheap invariants of
//! its answer hold. The `cargo fuzz` target `exec_answer` under `fuzz/` calls these, and so
//! does the ordinary test `tests/fuzz_corpus.rs`, which replays every committed corpus and
//! regression input (see `docs/fuzzing.md`). Nothing here runs a process or touches the file
//! system.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use runscale_core::{Error, PoolId};

use crate::exec::backend::{self, Answer};
use crate::exec::protocol::ListReply;

/// A secret of the fuzzed `create` (a runner's registration token): never in an error.
const SECRET: &str = "fuzz-s3cr3t-91c4";

/// Separates the executable's stdout from its stderr in an input.
const STDERR_MARK: &[u8] = b"\n--- stderr ---\n";

/// What one run of the exec backend's executable answered, as the backend reads it. The
/// input is `ACTION EXIT` (or `ACTION killed SIGNAL`) on the first line, then stdout, then
/// optionally `--- stderr ---` on a line of its own and the end of stderr:
///
/// ```text
/// list 0
/// {"instances": [...]}
/// ```
///
/// `ACTION` is `create`, `list`, `delete` or `probe`.
pub fn exec_answer(data: &[u8]) {
    let (first, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (stdout, stderr) = match rest
        .windows(STDERR_MARK.len())
        .position(|w| w == STDERR_MARK)
    {
        Some(i) => (&rest[..i], &rest[i + STDERR_MARK.len()..]),
        None => (rest, &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let words: Vec<&str> = first.split_whitespace().collect();
    let action = words.first().copied().unwrap_or_default();
    let status = match words.get(1..).unwrap_or_default() {
        ["killed", signal, ..] => ExitStatus::from_raw(signal.parse::<i32>().unwrap_or(9) & 0x7f),
        [code, ..] => ExitStatus::from_raw((code.parse::<i32>().unwrap_or(0) & 0xff) << 8),
        [] => ExitStatus::from_raw(0),
    };
    let op = "exec.fuzz";
    let pool = PoolId::new("fuzz");
    let secrets = [SECRET.to_owned()];
    let answer = backend::exited(op, action, &pool, status, stdout.to_vec(), stderr, &secrets);
    let stdout = match answer {
        Ok(Answer::Done(stdout)) => {
            assert_eq!(status.code(), Some(0), "only exit 0 carries an answer");
            stdout
        }
        Ok(Answer::NotFound) => {
            assert_eq!(status.code(), Some(3), "only exit 3 means not found");
            return;
        }
        Err(e) => return check(&e),
    };
    match action {
        "create" => match backend::created(op, &pool, &stdout, &secrets) {
            Ok(reply) => assert!(!reply.id.is_empty(), "a created instance has an id"),
            Err(e) => check(&e),
        },
        "list" => {
            let listed = backend::parse::<ListReply>(op, "list", &pool, &stdout, &[])
                .and_then(|reply| backend::listed(op, &pool, reply));
            match listed {
                Ok(instances) => {
                    for i in &instances {
                        assert!(!i.id.as_str().is_empty(), "a listed instance has an id");
                    }
                }
                Err(e) => check(&e),
            }
        }
        "delete" => {
            if let Err(e) = backend::deleted(op, &pool, &stdout) {
                check(&e);
            }
        }
        "probe" => match backend::probed(op, &pool, &stdout) {
            Ok(message) => assert!(!message.contains(['\n', '\r']), "one line"),
            Err(e) => check(&e),
        },
        _ => {}
    }
}

/// Errors never quote the secret.
fn check(e: &Error) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(SECRET), "an error quotes the secret: {text}");
}
