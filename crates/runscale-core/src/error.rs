//! Errors of adapters and the reconciler, and the small set of kinds that drive control flow.
//!
//! Every adapter maps its own failures (HTTP status, SDK error codes) into an [`ErrorKind`] in
//! one place; the reconciler picks its backoff from the kind alone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What kind of failure this is; decides retry and backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing does not exist (any more).
    NotFound,
    /// The backend has no capacity for the request (quota, no spot, node full).
    InsufficientCapacity,
    /// The remote side throttled us; come back after `retry_after` if it said.
    RateLimited {
        /// Server-provided delay, if any.
        retry_after: Option<Duration>,
    },
    /// A failure that may pass (5xx, timeout, connection reset).
    Transient,
    /// Configuration or credentials are wrong; retrying will not help until they change.
    Misconfigured,
    /// The runner is running a job and cannot be removed now.
    Busy,
    /// The remote side answered something we cannot understand.
    Protocol,
}

impl ErrorKind {
    /// Stable name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::InsufficientCapacity => "insufficient_capacity",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::Transient => "transient",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::Busy => "busy",
            ErrorKind::Protocol => "protocol",
        }
    }
}

/// An adapter or reconciler error: the operation that failed, its kind, and the cause.
///
/// Cheap to clone (the cause is shared), so one account-level failure can be reported for
/// every pool of a batch. Messages never contain secrets: adapters must not put tokens or
/// credentials into them.
#[derive(Clone)]
pub struct Error {
    op: &'static str,
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error for operation `op` (e.g. `"github.list_runners"`).
    pub fn new(op: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            op,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The message without the operation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            self.op,
            self.kind.as_str(),
            self.message
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("op", &self.op)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
