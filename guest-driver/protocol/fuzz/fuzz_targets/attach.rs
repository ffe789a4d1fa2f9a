//! Arbitrary bytes as the region's header, node table and lock: attach
//! must refuse them or work.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vni_sim::hostile::attach_hostile(data);
});
