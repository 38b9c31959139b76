//! The HOWTO walkthrough as a test: the same steps `cargo xtask demo` runs.

use vbd_integration::artifacts;
use vbd_machine::{walkthrough, workspace_root};

#[test]
fn the_walkthrough_holds_at_every_step() {
    let (hypervisor, vdisk) = artifacts();
    let dir = workspace_root().join("target/integration/walkthrough");
    let summary = walkthrough::run(&dir, hypervisor.clone(), vdisk.clone())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(summary.starts_with(vbd_machine::SUMMARY_PREFIX));
}
