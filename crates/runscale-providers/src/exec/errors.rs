//! Every way a protocol command can fail, mapped to a core [`ErrorKind`] in one place.
//!
//! - could not start for want of the program, its permission or the working directory:
//!   `Misconfigured` (other start failures, such as too many processes, are `Transient`);
//! - timed out, failed to read, exited non-zero: `Transient`, quoting the first 300
//!   characters of stderr;
//! - printed more than the cap or something unparsable: `Protocol`;
//! - `remove` exiting 3: `Busy`.

use std::io;

use runscale_core::{Error, ErrorKind};

use super::command::{Finished, RunError, describe_status, stderr_excerpt};

/// How much of a failing command's stderr an error quotes.
pub(crate) const STDERR_EXCERPT_CHARS: usize = 300;

/// The exit status with which `remove` says "the runner is running a job".
pub(crate) const EXIT_BUSY: i32 = 3;

/// The error for a command that did not run to its end. `what` names the command
/// (`observe`, `register`, ...).
pub(crate) fn run_error(op: &'static str, what: &str, error: RunError) -> Error {
    let kind = match &error {
        RunError::Spawn(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
            ) =>
        {
            ErrorKind::Misconfigured
        }
        RunError::Spawn(_) | RunError::Timeout(_) | RunError::Io(_) => ErrorKind::Transient,
        RunError::TooLarge { .. } => ErrorKind::Protocol,
    };
    let message = format!("the {what} command {error}");
    Error::new(op, kind, message).with_source(error)
}

/// The error for a command that exited unsuccessfully.
pub(crate) fn exit_error(op: &'static str, what: &str, finished: &Finished) -> Error {
    let status = describe_status(&finished.status);
    let stderr = stderr_excerpt(&finished.stderr, STDERR_EXCERPT_CHARS);
    let message = if stderr.is_empty() {
        format!("the {what} command failed with {status} (nothing on stderr)")
    } else {
        format!("the {what} command failed with {status}: {stderr}")
    };
    Error::new(op, ErrorKind::Transient, message)
}

/// The error for output the protocol cannot accept.
pub(crate) fn protocol_error(op: &'static str, what: &str, problem: &str) -> Error {
    Error::new(
        op,
        ErrorKind::Protocol,
        format!("the {what} command {problem}"),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    use super::*;

    #[test]
    fn kinds_follow_the_failure() {
        let missing = RunError::Spawn(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            run_error("exec.observe", "observe", missing).kind(),
            ErrorKind::Misconfigured
        );
        let timeout = run_error(
            "exec.observe",
            "observe",
            RunError::Timeout(Duration::from_secs(1)),
        );
        assert_eq!(timeout.kind(), ErrorKind::Transient);
        assert!(
            timeout.message().contains("timed out after 1s"),
            "{timeout}"
        );
        let big = RunError::TooLarge {
            stream: "stdout",
            limit: 10,
        };
        assert_eq!(
            run_error("exec.observe", "observe", big).kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn exit_errors_quote_a_bounded_stderr() {
        let finished = Finished {
            status: ExitStatus::from_raw(2 << 8),
            stdout: Vec::new(),
            stderr: format!("boom {}", "x".repeat(1000)).into_bytes(),
        };
        let err = exit_error("exec.remove", "remove", &finished);
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.message().contains("exit status 2: boom"), "{err}");
        assert!(err.message().len() < 400, "{}", err.message().len());
        let killed = Finished {
            status: ExitStatus::from_raw(9),
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let err = exit_error("exec.remove", "remove", &killed);
        assert!(err.message().contains("killed by signal 9"), "{err}");
        assert!(err.message().contains("nothing on stderr"), "{err}");
    }
}
