//! The exec backend (work in progress).
