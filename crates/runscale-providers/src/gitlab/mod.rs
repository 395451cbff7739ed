//! GitLab CI runners (work in progress: see the crate README).
