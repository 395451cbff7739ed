//! Backends: where runscale runners run.
//!
//! Each backend is one module implementing [`runscale_core::Backend`], behind a cargo feature:
//!
//! - [`local_process`] (feature `local`): one child process of this host per instance.
//! - [`kubernetes`] (feature `kubernetes`): one pod per runner.

#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "local")]
pub mod local_process;
