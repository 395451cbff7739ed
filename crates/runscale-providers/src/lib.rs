//! Providers: the CI systems runscale reads demand from and registers runners with.

pub mod exec;
#[cfg(feature = "github")]
pub mod github;
