//! The github client's answers: status, headers, decoding (see fuzz_harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runscale_providers::fuzz_harness::github_api(data));
