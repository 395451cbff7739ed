//! Backends: where runscale runners run.
//!
//! Each backend is one module implementing [`runscale_core::Backend`], behind a cargo feature:
//!
//! - [`local_process`] (feature `local`): one child process of this host per instance.

#[cfg(feature = "local")]
pub mod local_process;
