#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::fuzz::prompt_ref(data));
