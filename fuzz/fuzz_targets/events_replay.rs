#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::fuzz::events_replay(data));
