//! `Request::parse` over descriptor tables, indirect tables and available rings a hostile
//! driver wrote (see `vbd_fuzz_common::virtio`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vbd_fuzz_common::virtio::{drive, QueueInput};

fuzz_target!(|bytes: &[u8]| {
    if let Some(input) = vbd_fuzz_common::decode::<QueueInput>(bytes) {
        drive(&input);
    }
});
