//! In-memory adapters and builders for tests, benchmarks and the simulator.
