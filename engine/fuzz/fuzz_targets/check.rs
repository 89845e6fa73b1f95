//! `pipe check`'s entry point on arbitrary text: it may reject, never panic.
//! Run: `cargo fuzz run check` from `engine/` (seed corpus: `fuzz/corpus/check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pipe::check_source("fuzz.kdl", text);
    }
});
