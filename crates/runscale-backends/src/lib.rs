//! Backends: where runscale runners run.
//!
//! Each backend is one module implementing [`runscale_core::Backend`], behind a cargo feature:
//!
//! - [`local_process`] (feature `local`): one child process of this host per instance.
//! - [`exec`] (feature `exec`): machines an operator-supplied executable creates, deletes and
//!   lists through one JSON request on stdin (any cloud CLI or Terraform wrapper).
//! - [`kubernetes`] (feature `kubernetes`): one pod per runner.
//! - [`aws_asg`] (feature `aws-asg`): one instance of an AWS Auto Scaling group per runner.
//! - [`aws_ec2`] (feature `aws-ec2`): one EC2 instance per runner, launched from a launch
//!   template (spot first, on-demand when spot has no capacity).
//!
//! The AWS backends share their error mapping and SSM credential hand-over (`aws_common`).

#[cfg(feature = "aws-asg")]
pub mod aws_asg;
#[cfg(any(feature = "aws-asg", feature = "aws-ec2"))]
mod aws_common;
#[cfg(feature = "aws-ec2")]
pub mod aws_ec2;
#[cfg(feature = "exec")]
pub mod exec;
/// Entry points for fuzzing and corpus replay (`fuzz/`, `docs/fuzzing.md`).
#[cfg(feature = "exec")]
pub mod fuzz_harness;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "local")]
pub mod local_process;
