//! Providers: the CI systems runscale reads demand from and registers runners with.

#[cfg(feature = "github")]
pub mod github;
