//! One run of the executable: argv without a shell, a clean environment, the request on a
//! stdin pipe, stdout read up to a cap, the tail of stderr kept for error messages, and a time
//! limit after which the whole process group is killed.
//!
//! Nothing here knows what the request means. The request bytes may hold secrets: they are
//! written to the pipe and dropped, never logged.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How many bytes of stderr are kept (the last ones: where scripts print their error).
const STDERR_TAIL: usize = 4096;

/// How the executable is run, for every action.
pub(crate) struct Spawn<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// The complete environment (nothing else is inherited).
    pub env: Vec<(String, OsString)>,
    /// Working directory, if not the daemon's.
    pub working_dir: Option<&'a Path>,
    /// Killed with its process group after this long.
    pub timeout: Duration,
    /// Most stdout bytes accepted.
    pub max_output: usize,
}

/// A run that ended by itself.
pub(crate) struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// All of stdout.
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of stderr.
    pub stderr_tail: Vec<u8>,
}

/// A run that did not end by itself (its process group was killed), or never started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It ran past its time limit.
    #[error("timed out after {0:?}; its process group was killed")]
    TimedOut(Duration),
    /// It wrote more than the cap to stdout.
    #[error("wrote more than {0} bytes to stdout; its process group was killed")]
    TooMuchOutput(usize),
    /// Talking to it failed.
    #[error("cannot read its output: {0}")]
    Io(#[source] io::Error),
}

/// SIGKILLs a process group when dropped unless released: a run that times out, fails or is
/// cancelled (its future dropped) leaves no process of its group behind.
struct GroupKiller(Option<Pid>);

impl GroupKiller {
    fn release(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            // ESRCH (nobody left in the group) is fine.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// Reads all of stdout, failing as soon as it passes `max`.
async fn read_stdout(mut out: impl AsyncRead + Unpin, max: usize) -> Result<Vec<u8>, Failed> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut out)
        .take(limit)
        .read_to_end(&mut buf)
        .await
        .map_err(Failed::Io)?;
    if buf.len() > max {
        return Err(Failed::TooMuchOutput(max));
    }
    Ok(buf)
}

/// Reads stderr to its end, keeping only the last [`STDERR_TAIL`] bytes.
async fn read_stderr_tail(mut err: impl AsyncRead + Unpin) -> Result<Vec<u8>, Failed> {
    let mut tail = Vec::with_capacity(STDERR_TAIL);
    let mut chunk = [0u8; 4096];
    loop {
        let n = err.read(&mut chunk).await.map_err(Failed::Io)?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
}

/// Runs the executable once with `request` on its stdin, in its own process group.
///
/// It ends when the process exited and closed stdout and stderr. Processes it leaves running
/// in the background are its business, as long as they closed those two streams (else the
/// run times out).
pub(crate) async fn run(spawn: Spawn<'_>, request: Vec<u8>) -> Result<Exited, Failed> {
    let (program, args) = spawn.argv.split_first().ok_or_else(|| Failed::Start {
        program: String::new(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spawn.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = spawn.working_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| Failed::Start {
        program: program.clone(),
        source,
    })?;
    let mut killer = GroupKiller(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Failed::Io(io::Error::other("child pipes missing")));
    };
    let max = spawn.max_output;
    let talk = async {
        let feed = async move {
            // An executable that exits without reading its request closes the pipe (EPIPE):
            // its exit status tells what happened.
            let _ = stdin.write_all(&request).await;
            drop(request);
            let _ = stdin.shutdown().await;
            Ok::<(), Failed>(())
        };
        let ((), stdout, stderr_tail) =
            tokio::try_join!(feed, read_stdout(stdout, max), read_stderr_tail(stderr))?;
        let status = child.wait().await.map_err(Failed::Io)?;
        Ok(Exited {
            status,
            stdout,
            stderr_tail,
        })
    };
    let outcome = tokio::time::timeout(spawn.timeout, talk)
        .await
        .unwrap_or(Err(Failed::TimedOut(spawn.timeout)));
    if outcome.is_ok() {
        killer.release();
    }
    outcome
}

/// The end of stderr as one line of text: control characters become spaces, at most
/// `max_chars` characters (the last ones, since scripts print their error last).
pub(crate) fn excerpt(stderr_tail: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(stderr_tail);
    let cleaned: Vec<char> = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let skip = cleaned.len().saturating_sub(max_chars);
    let mut out = String::new();
    if skip > 0 {
        out.push('…');
    }
    out.extend(&cleaned[skip..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_the_end_on_one_line() {
        assert_eq!(excerpt(b"  error:\nboom\n", 100), "error: boom");
        assert_eq!(excerpt(b"0123456789", 4), "…6789");
        assert_eq!(excerpt(b"", 4), "");
    }
}
