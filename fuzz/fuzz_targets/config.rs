//! A configuration file: interpolation, parsing, deserialization and validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runscale::fuzz_harness::config(data));
