#![no_main]
// The harness is library code (drl::fuzzing), shared with tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| drl::fuzzing::control::rpc(data));
