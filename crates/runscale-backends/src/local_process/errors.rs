//! How the local-process backend's failures map to [`ErrorKind`]s, in one place.
//!
//! Messages name files and programs, never credentials.

use std::io;

use runscale_core::{Error, ErrorKind};

/// The kind of a file-system failure (state, credentials, log files).
pub(crate) fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::Misconfigured
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::OutOfMemory => {
            ErrorKind::InsufficientCapacity
        }
        _ => ErrorKind::Transient,
    }
}

/// The kind of a failure to start the process.
pub(crate) fn spawn_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        // The program or the working directory does not exist, or is not executable.
        io::ErrorKind::NotFound
        | io::ErrorKind::PermissionDenied
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::InvalidInput => ErrorKind::Misconfigured,
        // fork() hit the process limit or memory ran out.
        io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory => ErrorKind::InsufficientCapacity,
        _ => match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ENOEXEC as i32 => ErrorKind::Misconfigured,
            Some(code) if code == nix::errno::Errno::EAGAIN as i32 => {
                ErrorKind::InsufficientCapacity
            }
            _ => ErrorKind::Transient,
        },
    }
}

/// A file-system error of operation `op`, about `what`.
pub(crate) fn io_error(op: &'static str, what: impl std::fmt::Display, e: io::Error) -> Error {
    Error::new(op, io_kind(&e), format!("{what}: {e}")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_is_a_configuration_error_and_fork_limits_are_capacity() {
        assert_eq!(
            spawn_kind(&io::Error::from(io::ErrorKind::NotFound)),
            ErrorKind::Misconfigured
        );
        assert_eq!(
            spawn_kind(&io::Error::from_raw_os_error(
                nix::errno::Errno::EAGAIN as i32
            )),
            ErrorKind::InsufficientCapacity
        );
        assert_eq!(
            io_kind(&io::Error::from(io::ErrorKind::StorageFull)),
            ErrorKind::InsufficientCapacity
        );
        assert_eq!(
            io_kind(&io::Error::from(io::ErrorKind::Interrupted)),
            ErrorKind::Transient
        );
    }
}
