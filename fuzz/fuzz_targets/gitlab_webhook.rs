//! The gitlab webhook handler: verification, then parsing (see fuzz_harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runscale_providers::fuzz_harness::gitlab_webhook(data));
