//! A rogue node scribbles over a live region (writes aimed at every
//! section) while honest nodes send, receive and attach.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vni_protocol::BufferConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let config = if selector & 1 == 0 {
        BufferConfig::SharedPool
    } else {
        BufferConfig::PerPair
    };
    vni_sim::hostile::run_hostile(config, rest);
});
