//! The NBD transmission phase's header reader and request check over the byte stream a
//! hostile client sends (see `vbd_fuzz_common::nbd`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vbd_fuzz_common::nbd::{drive_requests, RequestInput};

fuzz_target!(|bytes: &[u8]| {
    if let Some(input) = vbd_fuzz_common::decode::<RequestInput>(bytes) {
        drive_requests(&input);
    }
});
