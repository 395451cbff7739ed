//! Backends: where runscale runners run.
//!
//! Each backend is one module implementing [`runscale_core::Backend`], behind a cargo feature:
//!
//! - [`local_process`] (feature `local`): one child process of this host per instance.
//! - [`kubernetes`] (feature `kubernetes`): one pod per runner.
//! - [`aws_asg`] (feature `aws-asg`): one instance of an AWS Auto Scaling group per runner.

#[cfg(feature = "aws-asg")]
pub mod aws_asg;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "local")]
pub mod local_process;
