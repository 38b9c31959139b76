//! The HOWTO walkthrough as tests: the same steps `cargo xtask demo` runs with a real Linux
//! guest on vbd-backend, and `cargo xtask demo --bare-metal` on the test hypervisor.

use vbd_integration::{backend_binary, guest_artefacts, hypervisor_elf, test_dir, vdisk_binary};
use vbd_machine::walkthrough::{bare_metal, guest};

#[test]
fn the_walkthrough_holds_at_every_step_with_a_linux_guest_on_vbd_backend() {
    let tools = guest::Tools {
        vdisk: vdisk_binary().to_path_buf(),
        backend: backend_binary().to_path_buf(),
        artefacts: guest_artefacts().clone(),
    };
    let summary = guest::run(&test_dir("walkthrough-guest"), &tools)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(summary.starts_with("walkthrough passed in "), "{summary}");
}

#[test]
fn the_walkthrough_holds_at_every_step_on_the_bare_metal_hypervisor() {
    let summary = bare_metal::run(
        &test_dir("walkthrough"),
        hypervisor_elf().to_path_buf(),
        vdisk_binary().to_path_buf(),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(summary.starts_with(vbd_machine::SUMMARY_PREFIX));
}
