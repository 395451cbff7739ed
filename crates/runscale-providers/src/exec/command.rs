//! Running one protocol command: argv without a shell, the configured environment and working
//! directory, optional stdin, output captured up to a cap, and a timeout that kills the
//! command's whole process group.
//!
//! This module knows nothing of JSON or of what the commands mean; it reports how a run ended.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Comma-separated names of the pools `observe` is asked about.
pub(crate) const ENV_POOLS: &str = "RUNSCALE_POOLS";
/// The pool of a `register`, `remove` or `drain`.
pub(crate) const ENV_POOL: &str = "RUNSCALE_POOL";
/// The name of the runner `register` creates.
pub(crate) const ENV_RUNNER_NAME: &str = "RUNSCALE_RUNNER_NAME";
/// The CI-side id of the runner `remove` or `drain` acts on.
pub(crate) const ENV_RUNNER_ID: &str = "RUNSCALE_RUNNER_ID";
/// The pool's labels, comma-separated, for `register`.
pub(crate) const ENV_LABELS: &str = "RUNSCALE_LABELS";

/// Most bytes read from a command's stdout (and, separately, stderr).
pub(crate) const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// How every command runs: the parts of the configuration shared by all of them.
#[derive(Clone, Debug)]
pub(crate) struct CommandRunner {
    /// Killed after this long.
    pub timeout: Duration,
    /// Added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// Working directory, if not runscale's own.
    pub working_dir: Option<PathBuf>,
    /// Cap on each output stream.
    pub max_output: usize,
}

/// A command that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// Everything it printed on stderr.
    pub stderr: Vec<u8>,
}

/// A command that did not run to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// It could not be started (missing program, permission, bad working directory).
    #[error("could not be started: {0}")]
    Spawn(#[source] io::Error),
    /// It ran longer than the timeout and was killed.
    #[error("timed out after {0:?} and was killed")]
    Timeout(Duration),
    /// It printed more than the cap on one stream and was killed.
    #[error("printed more than {} on {stream} and was killed", size(*.limit))]
    TooLarge {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The cap.
        limit: usize,
    },
    /// Reading its output or waiting for it failed.
    #[error("could not be read from: {0}")]
    Io(#[source] io::Error),
}

/// A byte count in words: `16 MiB` when it is a whole number of MiB.
fn size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Kills a process group when dropped, unless disarmed: a run that is cancelled (its future
/// dropped) or fails leaves nothing behind.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (the group is already empty) is the expected outcome more often than not.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, failing as soon as it exceeds `limit` bytes.
async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
    name: &'static str,
    limit: usize,
) -> Result<Vec<u8>, RunError> {
    let mut out = Vec::new();
    let Some(stream) = stream else {
        return Ok(out);
    };
    // One byte more than allowed tells "exactly at the cap" from "over it".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    stream
        .take(cap)
        .read_to_end(&mut out)
        .await
        .map_err(RunError::Io)?;
    if out.len() > limit {
        return Err(RunError::TooLarge {
            stream: name,
            limit,
        });
    }
    Ok(out)
}

impl CommandRunner {
    /// Runs `argv` with the protocol variables `vars` and, if given, `stdin` (else stdin is
    /// `/dev/null`). The command gets its own process group; on timeout, oversized output or
    /// cancellation the whole group is killed.
    pub(crate) async fn run(
        &self,
        argv: &[String],
        vars: &[(&'static str, String)],
        stdin: Option<Vec<u8>>,
    ) -> Result<Finished, RunError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(RunError::Spawn(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command",
            )));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(&self.env)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // Protocol variables the daemon itself might carry must not leak into other calls.
        for name in super::config::PROTOCOL_ENV {
            command.env_remove(name);
        }
        command.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }

        let started = Instant::now();
        let mut child = command.spawn().map_err(RunError::Spawn)?;
        let mut guard = GroupGuard {
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        };

        let stdin_pipe = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let write_stdin = async move {
            if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin) {
                // A command that does not read its input closes the pipe: not an error.
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            }
            Ok::<(), RunError>(())
        };
        let work = async {
            let ((), stdout, stderr) = tokio::try_join!(
                write_stdin,
                read_capped(stdout, "stdout", self.max_output),
                read_capped(stderr, "stderr", self.max_output),
            )?;
            let status = child.wait().await.map_err(RunError::Io)?;
            Ok::<_, RunError>(Finished {
                status,
                stdout,
                stderr,
            })
        };
        let outcome = match tokio::time::timeout(self.timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(RunError::Timeout(self.timeout)),
        };
        match outcome {
            Ok(finished) => {
                // The command ended and closed its output; what it left running in the
                // background (a daemon it started on purpose) is its own business.
                guard.disarm();
                tracing::debug!(
                    program = %program,
                    status = %finished.status,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "exec command finished"
                );
                Ok(finished)
            }
            Err(error) => {
                guard.kill();
                // Reap the direct child (already sent SIGKILL with its group).
                let _ = child.kill().await;
                Err(error)
            }
        }
    }
}

/// The first `max_chars` characters of a command's stderr, trimmed, as one line of text.
pub(crate) fn stderr_excerpt(stderr: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let trimmed = text.trim();
    let mut excerpt: String = trimmed
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if trimmed.chars().nth(max_chars).is_some() {
        excerpt.push('…');
    }
    excerpt
}

/// How a command exited, in words: `exit status 2` or `killed by signal 9`.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_bounded_and_on_one_line() {
        assert_eq!(stderr_excerpt(b"  boom\n", 300), "boom");
        assert_eq!(
            stderr_excerpt(b"line one\nline two", 300),
            "line one line two"
        );
        let long = "é".repeat(400);
        let excerpt = stderr_excerpt(long.as_bytes(), 300);
        assert_eq!(excerpt.chars().count(), 301);
        assert!(excerpt.ends_with('…'));
        assert_eq!(stderr_excerpt(&[0xff, b'x'], 300), "\u{fffd}x");
    }

    #[tokio::test]
    async fn read_capped_accepts_exactly_the_limit_and_refuses_more() {
        let data: &[u8] = b"12345";
        assert_eq!(
            read_capped(Some(data), "stdout", 5).await.expect("at cap"),
            b"12345"
        );
        let err = read_capped(Some(data), "stdout", 4)
            .await
            .expect_err("over cap");
        assert!(matches!(
            err,
            RunError::TooLarge {
                stream: "stdout",
                limit: 4
            }
        ));
        assert_eq!(
            err.to_string(),
            "printed more than 4 bytes on stdout and was killed"
        );
        let big = RunError::TooLarge {
            stream: "stderr",
            limit: MAX_OUTPUT,
        };
        assert_eq!(
            big.to_string(),
            "printed more than 16 MiB on stderr and was killed"
        );
    }
}
