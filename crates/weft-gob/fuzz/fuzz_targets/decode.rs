#![no_main]

use libfuzzer_sys::fuzz_target;

mod harness {
    include!("../harness.rs");
}

fuzz_target!(|data: &[u8]| {
    harness::decode(data);
});
