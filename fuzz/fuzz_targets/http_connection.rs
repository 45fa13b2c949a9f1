//! See `dcache_node::fuzzing::http_connection` for what the input means and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dcache_node::fuzzing::http_connection(data));
