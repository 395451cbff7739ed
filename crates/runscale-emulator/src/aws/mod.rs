//! The AWS side of end-to-end tests of the `aws-asg` backend, on moto (`moto_server`, the
//! AWS emulator from PyPI): what AWS and the instances would do while runscale scales a
//! group.
//!
//! - [`MotoServer`]: a `moto_server` child on a free loopback port, ready when returned,
//!   killed by its PID when dropped. [`moto_server_from_env`] reads [`MOTO_SERVER_ENV`].
//! - [`MotoClient`]: Auto Scaling and SSM clients for it with dummy credentials, to create a
//!   group runscale can drive ([`MotoClient::create_group`]) and to inspect what is left
//!   ([`MotoClient::group`], [`MotoClient::parameters`]).
//! - [`InstanceAgent`]: the instances. moto launches no machines, so this task plays each
//!   one: it polls the group, and for every member that appears `InService` it does what
//!   `deploy/aws/runner-user-data.sh` does — waits for the SecureString
//!   `{ssm_prefix}/{pool}/{instance-id}`, reads and deletes it, starts the fake runner agent
//!   ([`crate::github::run_agent`]) from its `GITHUB_JIT_CONFIG` line, and once the runner
//!   exits waits to be terminated. Each instance's agent runs on its own runtime thread, so
//!   a termination stops all of it at once, as a power-off would. A member that leaves the
//!   group (or turns `Terminating`) while its runner is running a job — as the GitHub
//!   emulator's own snapshot says — is a [`Violation`]: runscale terminated a busy instance.
//!   [`InstanceAgent::snapshot`] reports every instance's life, the violations and the peaks
//!   of the group's desired capacity and `InService` members.
//!
//! What does not live here: runscale itself (the tests start the daemon), EC2 (moto's ASG
//! members are EC2 instances, but nothing here needs the heavy EC2 SDK), and anything moto
//! does not model (lifecycle hooks, boot time; see `docs/fidelity.md`).

mod instance;
mod moto;

pub use instance::{
    AgentOutcome, FleetSnapshot, InstanceAgent, InstanceAgentConfig, InstancePhase, InstanceRecord,
    Violation, ViolationKind,
};
pub use moto::{
    DUMMY_KEY, GroupState, MOTO_SERVER_ENV, Member, MotoClient, MotoServer, moto_server_from_env,
};

/// The AWS SDK crates the clients come from, for calls the helpers do not cover.
pub use aws_sdk_autoscaling;
/// See [`aws_sdk_autoscaling`].
pub use aws_sdk_ssm;

use std::time::Duration;

/// Why the AWS harness failed. Messages never include a parameter's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// `moto_server` could not be started.
    #[error("cannot start {bin}")]
    Spawn {
        /// The executable.
        bin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No free loopback port could be found.
    #[error("no free loopback port")]
    Port(#[source] std::io::Error),
    /// `moto_server` exited or did not listen in time.
    #[error("moto_server at {url} was not listening after {waited:?}")]
    NotReady {
        /// Where it should have listened.
        url: String,
        /// How long it was given.
        waited: Duration,
    },
    /// An AWS (or moto) call failed.
    #[error("{call}: {message}")]
    Call {
        /// The API action.
        call: &'static str,
        /// The error and its causes.
        message: String,
    },
}

impl AwsError {
    fn call(call: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Call {
            call,
            message: message.to_string(),
        }
    }

    fn sdk(call: &'static str, error: impl std::error::Error) -> Self {
        Self::call(
            call,
            aws_sdk_ssm::error::DisplayErrorContext(&error).to_string(),
        )
    }
}
