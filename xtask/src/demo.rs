//! `cargo xtask demo`: the HOWTO walkthrough in QEMU, every command printed and checked.

use vbd_machine::{build_hypervisor, build_vdisk, walkthrough, workspace_root};

use crate::provision;

pub fn run() -> Result<(), String> {
    provision::ensure_all()?;
    let hypervisor = build_hypervisor()?;
    let vdisk = build_vdisk(false)?;
    walkthrough::run(&workspace_root().join("target/demo"), hypervisor, vdisk).map(drop)
}
