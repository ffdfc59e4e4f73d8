#![no_main]
//! See `ml_connector::fuzzing::plugin_output`: the same body replays this target's corpus on stable.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ml_connector::fuzzing::plugin_output(data));
