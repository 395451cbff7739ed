//! Backends: where runscale runners run.
