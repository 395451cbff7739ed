//! How the AWS backends' failures map to [`ErrorKind`]s, in one place (Auto Scaling, EC2 and
//! SSM alike).
//!
//! Every AWS call carries the IAM action it needs, so an `AccessDenied` (or EC2's
//! `UnauthorizedOperation`) names the missing permission. Errors about credential parameters
//! keep only the error code: the service's message could quote the request.

use std::fmt;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use runscale_core::{Error, ErrorKind};

/// Error codes AWS uses for throttling (Auto Scaling, SSM, STS and the generic ones).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "TooManyUpdates",
    "SlowDown",
];

/// Error codes meaning the caller lacks a permission.
const ACCESS_DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
];

/// Error codes meaning the credentials themselves are wrong.
const BAD_CREDENTIALS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "IncompleteSignature",
    "MissingAuthenticationToken",
];

/// Error codes meaning the thing asked for does not exist (any more).
const NOT_FOUND: &[&str] = &["ParameterNotFound", "InvalidInstanceID.NotFound"];

/// Error codes meaning AWS has no capacity for the request right now, or a quota is used up:
/// worth trying another capacity type (spot -> on-demand), instance type or zone.
pub(crate) const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "MaxSpotFleetRequestCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
];

/// EC2 error codes meaning the request itself is wrong (template, subnet, image, parameters).
const EC2_INVALID: &[&str] = &[
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateName.MalformedException",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.Malformed",
    "InvalidLaunchTemplateId.VersionNotFound",
    "InvalidLaunchTemplateVersion",
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidParameter",
    "InvalidParameterCombination",
    "InvalidFleetConfiguration",
    "MissingParameter",
    "UnsupportedOperation",
    "Unsupported",
];

/// What an SDK error is, reduced to what decides control flow and messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The service's error code, if it answered with one.
    pub(crate) code: Option<String>,
    /// The service's message, if any.
    pub(crate) message: Option<String>,
    /// The HTTP status, if a response arrived.
    pub(crate) status: Option<u16>,
    /// Transport-level failure (no usable response).
    pub(crate) transport: Option<String>,
}

impl Failure {
    /// Reduces an SDK error.
    pub(crate) fn of<E, R>(e: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug + HasStatus,
    {
        let status = e.raw_response().map(HasStatus::status);
        let transport = match e {
            SdkError::ServiceError(_) => None,
            SdkError::ConstructionFailure(_) => Some("request could not be built".to_owned()),
            SdkError::TimeoutError(_) => Some("timed out".to_owned()),
            SdkError::DispatchFailure(d) => Some(if d.is_io() {
                "connection failed".to_owned()
            } else if d.is_timeout() {
                "timed out".to_owned()
            } else {
                format!(
                    "request not sent: {}",
                    aws_smithy_error_chain(e as &dyn std::error::Error)
                )
            }),
            SdkError::ResponseError(_) => Some("unreadable response".to_owned()),
            _ => Some("request failed".to_owned()),
        };
        Self {
            code: e.code().map(str::to_owned),
            message: e.message().map(str::to_owned),
            status,
            transport,
        }
    }

    /// Whether the thing asked for does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| NOT_FOUND.contains(&c))
    }

    /// Whether AWS had no capacity (or quota) for the request.
    #[cfg(feature = "aws-ec2")]
    pub(crate) fn is_capacity(&self) -> bool {
        self.code.as_deref().is_some_and(|c| CAPACITY.contains(&c))
    }

    /// Whether the caller lacks a permission: an access-denied code, or an HTTP 403 whose
    /// body names no error code the SDK could read (moto, enforcing IAM, answers Auto Scaling
    /// and SSM in another protocol's error format; a 403 is an authorization refusal either
    /// way, and bad credentials come with their own codes).
    pub(crate) fn is_access_denied(&self) -> bool {
        match self.code.as_deref() {
            Some(c) => ACCESS_DENIED.contains(&c),
            None => self.status == Some(403),
        }
    }

    /// The kind.
    pub(crate) fn kind(&self) -> ErrorKind {
        if let Some(code) = self.code.as_deref() {
            if THROTTLING.contains(&code) {
                return ErrorKind::RateLimited { retry_after: None };
            }
            if ACCESS_DENIED.contains(&code) || BAD_CREDENTIALS.contains(&code) {
                return ErrorKind::Misconfigured;
            }
            if NOT_FOUND.contains(&code) {
                return ErrorKind::NotFound;
            }
            if CAPACITY.contains(&code) {
                return ErrorKind::InsufficientCapacity;
            }
            if EC2_INVALID.contains(&code) {
                return ErrorKind::Misconfigured;
            }
            match code {
                "ValidationError" | "ValidationException" | "InvalidParameterValue" => {
                    return ErrorKind::Misconfigured;
                }
                "LimitExceeded" | "ParameterLimitExceeded" => {
                    return ErrorKind::InsufficientCapacity;
                }
                "ResourceContention"
                | "ScalingActivityInProgress"
                | "InternalFailure"
                | "InternalServerError"
                | "ServiceUnavailable" => return ErrorKind::Transient,
                _ => {}
            }
        }
        match (self.status, &self.transport) {
            (Some(429), _) => ErrorKind::RateLimited { retry_after: None },
            (Some(s), _) if s >= 500 => ErrorKind::Transient,
            (Some(401 | 403), _) => ErrorKind::Misconfigured,
            (_, Some(t)) if t == "request could not be built" => ErrorKind::Misconfigured,
            (_, Some(_)) => ErrorKind::Transient,
            _ => ErrorKind::Protocol,
        }
    }

    /// A one-line description; with `quote` the service's message is included.
    fn describe(&self, action: &str, quote: bool) -> String {
        if self.is_access_denied() {
            return format!(
                "access denied: the IAM policy must allow {action} (see deploy/aws/iam-policy.json)"
            );
        }
        let mut s = match (&self.code, &self.transport, self.status) {
            (Some(code), _, Some(status)) => format!("{code} (HTTP {status})"),
            (Some(code), _, None) => code.clone(),
            (None, Some(t), _) => t.clone(),
            (None, None, Some(status)) => format!("HTTP {status} without an AWS error"),
            (None, None, None) => "unknown failure".to_owned(),
        };
        if quote && let Some(m) = &self.message {
            s.push_str(": ");
            s.push_str(m);
        }
        s
    }
}

/// The HTTP status of a raw response.
pub(crate) trait HasStatus {
    /// The status code.
    fn status(&self) -> u16;
}

// One type for every SDK crate (aws-smithy-runtime-api's response).
impl HasStatus for aws_sdk_ssm::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

fn aws_smithy_error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// An error of operation `op` (needing IAM `action`) about `what`, with the service's message.
pub(crate) fn aws_error(
    op: &'static str,
    action: &'static str,
    what: impl fmt::Display,
    f: &Failure,
) -> Error {
    error(op, action, what, f, true)
}

/// An error about a credentials parameter: the error code only.
pub(crate) fn secret_error(
    op: &'static str,
    action: &'static str,
    what: impl fmt::Display,
    f: &Failure,
) -> Error {
    error(op, action, what, f, false)
}

fn error(
    op: &'static str,
    action: &str,
    what: impl fmt::Display,
    f: &Failure,
    quote: bool,
) -> Error {
    Error::new(
        op,
        f.kind(),
        format!("{what}: {}", f.describe(action, quote)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: &str, status: u16) -> Failure {
        Failure {
            code: Some(c.to_owned()),
            message: Some("the value 'hunter2' is bad".to_owned()),
            status: Some(status),
            transport: None,
        }
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            code("Throttling", 400).kind(),
            ErrorKind::RateLimited { retry_after: None }
        );
        assert_eq!(
            code("ThrottlingException", 400).kind(),
            ErrorKind::RateLimited { retry_after: None }
        );
        assert_eq!(code("AccessDenied", 403).kind(), ErrorKind::Misconfigured);
        assert_eq!(
            code("ValidationError", 400).kind(),
            ErrorKind::Misconfigured
        );
        assert_eq!(code("ParameterNotFound", 400).kind(), ErrorKind::NotFound);
        assert!(code("ParameterNotFound", 400).is_not_found());
        assert_eq!(code("ResourceContention", 500).kind(), ErrorKind::Transient);
        assert_eq!(code("Whatever", 503).kind(), ErrorKind::Transient);
        // EC2's codes.
        assert_eq!(
            code("RequestLimitExceeded", 503).kind(),
            ErrorKind::RateLimited { retry_after: None }
        );
        assert_eq!(
            code("UnauthorizedOperation", 403).kind(),
            ErrorKind::Misconfigured
        );
        for c in [
            "InsufficientInstanceCapacity",
            "MaxSpotInstanceCountExceeded",
            "UnfulfillableCapacity",
            "SpotMaxPriceTooLow",
        ] {
            assert_eq!(code(c, 500).kind(), ErrorKind::InsufficientCapacity, "{c}");
        }
        assert_eq!(
            code("InvalidLaunchTemplateName.NotFoundException", 400).kind(),
            ErrorKind::Misconfigured
        );
        assert!(code("InvalidInstanceID.NotFound", 400).is_not_found());
        let transport = Failure {
            code: None,
            message: None,
            status: None,
            transport: Some("connection failed".to_owned()),
        };
        assert_eq!(transport.kind(), ErrorKind::Transient);
    }

    #[test]
    fn a_403_without_a_readable_error_is_access_denied() {
        let f = Failure {
            code: None,
            message: None,
            status: Some(403),
            transport: Some("unreadable response".to_owned()),
        };
        assert!(f.is_access_denied());
        assert_eq!(f.kind(), ErrorKind::Misconfigured);
        let other = Failure {
            status: Some(404),
            ..f
        };
        assert!(!other.is_access_denied());
    }

    #[test]
    fn access_denied_names_the_action_and_secrets_are_not_quoted() {
        let e = aws_error(
            "aws_asg.launch",
            "autoscaling:SetDesiredCapacity",
            "group g",
            &code("AccessDenied", 403),
        );
        assert!(
            e.to_string()
                .contains("IAM policy must allow autoscaling:SetDesiredCapacity"),
            "{e}"
        );
        let e = secret_error(
            "aws_asg.launch",
            "ssm:PutParameter",
            "parameter /runscale/p/i-1",
            &code("ValidationException", 400),
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("ValidationException"), "{e}");
    }
}
