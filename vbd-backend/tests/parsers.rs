//! The fuzz targets' cases as bounded property tests, so every test run drives the parsers
//! of guest and client input with the same hostile driver, client and checks as
//! `cargo xtask fuzz` (`fuzz/common`): the seed cases first, then inputs made from random
//! bytes. A failed check panics inside the driver and proptest shrinks the bytes.

use proptest::prelude::*;
use vbd_fuzz_common::{from_any_bytes, nbd, virtio};

#[test]
fn the_seed_cases_hold() {
    for (_, input) in virtio::seeds() {
        virtio::drive(&input);
    }
    for (_, input) in nbd::option_seeds() {
        nbd::drive_options(&input);
    }
    for (_, input) in nbd::request_seeds() {
        nbd::drive_requests(&input);
    }
}

proptest! {
    // Each case takes well under a millisecond; these counts keep the three under 5 s in
    // a debug build.
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Any descriptor tables, indirect tables and available ring: parse never panics nor
    /// hangs, accepts only what is safe to execute, and takes a valid chain as meant.
    #[test]
    fn virtio_requests_from_hostile_rings(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Some(input) = from_any_bytes::<virtio::QueueInput>(&bytes) {
            virtio::drive(&input);
        }
    }

    /// Any option messages, in any pieces: read exactly as sent while in step, bounded
    /// always.
    #[test]
    fn nbd_options_from_hostile_clients(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(input) = from_any_bytes::<nbd::OptionInput>(&bytes) {
            nbd::drive_options(&input);
        }
    }

    /// Any request headers, in any pieces: decoded exactly, and accepted only when the
    /// export may run them.
    #[test]
    fn nbd_requests_from_hostile_clients(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(input) = from_any_bytes::<nbd::RequestInput>(&bytes) {
            nbd::drive_requests(&input);
        }
    }
}
