//! How the kubernetes backend's failures map to [`ErrorKind`]s, in one place.
//!
//! Messages name objects (pods, Secrets, CronJobs), never credentials: an error about a
//! Secret keeps only the API status code and reason, not the server's message.

use runscale_core::{Error, ErrorKind};

/// The HTTP status code of an API error, if it is one.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the API answered 404 Not Found.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

/// The kind of a kube client error.
pub(crate) fn kind(e: &kube::Error) -> ErrorKind {
    match e {
        kube::Error::Api(status) => match status.code {
            404 => ErrorKind::NotFound,
            // A ResourceQuota or LimitRange said no.
            403 if status.message.contains("exceeded quota") => ErrorKind::InsufficientCapacity,
            401 | 403 => ErrorKind::Misconfigured,
            400 | 422 => ErrorKind::Misconfigured,
            429 => ErrorKind::RateLimited { retry_after: None },
            _ => ErrorKind::Transient,
        },
        kube::Error::SerdeError(_) | kube::Error::LinesCodecMaxLineLengthExceeded => {
            ErrorKind::Protocol
        }
        kube::Error::InferConfig(_)
        | kube::Error::InferKubeconfig(_)
        | kube::Error::Auth(_)
        | kube::Error::TlsRequired
        | kube::Error::ProxyProtocolUnsupported { .. }
        | kube::Error::ProxyProtocolDisabled { .. } => ErrorKind::Misconfigured,
        _ => ErrorKind::Transient,
    }
}

/// An error of operation `op` about `what` (`pod rs-a-x`), with the API's message.
pub(crate) fn api_error(op: &'static str, what: impl std::fmt::Display, e: kube::Error) -> Error {
    Error::new(op, kind(&e), format!("{what}: {}", describe(&e))).with_source(e)
}

/// An error about a Secret: status code and reason only (the server's message could quote
/// the object), and no source.
pub(crate) fn secret_error(
    op: &'static str,
    what: impl std::fmt::Display,
    e: &kube::Error,
) -> Error {
    let detail = match e {
        kube::Error::Api(status) => format!("API answered {} {}", status.code, status.reason),
        _ => "request failed (transport)".to_owned(),
    };
    Error::new(op, kind(e), format!("{what}: {detail}"))
}

/// A short description of a kube error.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        let mut status = kube::core::Status::failure(message, reason);
        status.code = code;
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn status_codes_map_to_kinds() {
        assert_eq!(kind(&api(404, "NotFound", "")), ErrorKind::NotFound);
        assert!(is_not_found(&api(404, "NotFound", "")));
        assert_eq!(kind(&api(403, "Forbidden", "no")), ErrorKind::Misconfigured);
        assert_eq!(
            kind(&api(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: exceeded quota: q, requested: cpu=2"
            )),
            ErrorKind::InsufficientCapacity
        );
        assert_eq!(kind(&api(422, "Invalid", "")), ErrorKind::Misconfigured);
        assert_eq!(
            kind(&api(429, "TooManyRequests", "")),
            ErrorKind::RateLimited { retry_after: None }
        );
        assert_eq!(kind(&api(500, "InternalError", "")), ErrorKind::Transient);
        assert_eq!(kind(&api(409, "AlreadyExists", "")), ErrorKind::Transient);
    }

    #[test]
    fn secret_errors_do_not_quote_the_server() {
        let e = secret_error(
            "op",
            "Secret s",
            &api(422, "Invalid", "data[TOKEN]: Invalid value: \"hunter2\""),
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("422 Invalid"), "{e}");
        assert!(std::error::Error::source(&e).is_none());
    }
}
