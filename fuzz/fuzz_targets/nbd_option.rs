//! The NBD handshake's option reader and information-request parser over the byte stream
//! a hostile client sends (see `vbd_fuzz_common::nbd`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vbd_fuzz_common::nbd::{drive_options, OptionInput};

fuzz_target!(|bytes: &[u8]| {
    if let Some(input) = vbd_fuzz_common::decode::<OptionInput>(bytes) {
        drive_options(&input);
    }
});
