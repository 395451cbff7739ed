//! The exec backend's answers: an operator executable's stdout (see fuzz_harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runscale_backends::fuzz_harness::exec_answer(data));
