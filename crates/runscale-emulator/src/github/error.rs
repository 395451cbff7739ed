//! Errors: [`EmulatorError`] for callers of the library, and the internal `ApiError` that
//! becomes a GitHub-shaped JSON error response (`{"message", "documentation_url"}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::config::ConfigError;

/// Why an emulator operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The configuration is invalid.
    #[error("invalid emulator configuration: {0}")]
    Config(#[from] ConfigError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A job names a repository the emulator does not serve, or is otherwise invalid.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The job does not exist or is not in a state allowing the operation.
    #[error("job {job_id}: {message}")]
    Job {
        /// The job.
        job_id: u64,
        /// What is wrong.
        message: String,
    },
}

/// The documentation URL GitHub puts in generic errors.
pub(crate) const DOC_REST: &str = "https://docs.github.com/rest";
/// Self-hosted runner endpoints.
pub(crate) const DOC_RUNNERS: &str = "https://docs.github.com/rest/actions/self-hosted-runners";
/// Workflow runs and jobs.
pub(crate) const DOC_RUNS: &str = "https://docs.github.com/rest/actions/workflow-runs";
/// Rate limits.
pub(crate) const DOC_RATE: &str =
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
/// App authentication.
pub(crate) const DOC_APPS: &str = "https://docs.github.com/rest/apps/apps";
/// Documentation of the App installation endpoints.
pub(crate) const DOC_INSTALLATIONS: &str = "https://docs.github.com/rest/apps/installations";

/// A REST error answered in GitHub's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `message`.
    pub message: String,
    /// `documentation_url`.
    pub doc: &'static str,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, message: impl Into<String>, doc: &'static str) -> Self {
        ApiError {
            status,
            message: message.into(),
            doc,
        }
    }

    /// 404 `Not Found`, what GitHub answers for anything missing or not visible.
    pub fn not_found(doc: &'static str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found", doc)
    }

    /// 422 with an `Invalid request.` message.
    pub fn invalid(detail: impl AsRef<str>, doc: &'static str) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Invalid request.\n\n{}", detail.as_ref()),
            doc,
        )
    }

    /// 401 `Bad credentials`.
    pub fn bad_credentials() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "Bad credentials", DOC_REST)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "message": self.message,
            "documentation_url": self.doc,
            "status": self.status.as_u16().to_string(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
