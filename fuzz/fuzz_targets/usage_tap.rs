#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::fuzz::usage_tap(data));
