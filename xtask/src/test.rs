//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::process::Command;

use vbd_machine::{process::run as run_command, workspace_root};

use crate::provision;

pub fn run() -> Result<(), String> {
    provision::ensure_all()?;
    let root = workspace_root();
    let hypervisor = root.join("tests/hypervisor");
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&root);
        command
    };
    let hypervisor_cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&hypervisor);
        command
    };
    eprintln!("xtask: formatting");
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(hypervisor_cargo().args(["fmt", "--check"]))?;
    eprintln!("xtask: clippy, warnings denied");
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(hypervisor_cargo().args([
        "clippy",
        "--release",
        "--target",
        "x86_64-unknown-none",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: host tests");
    run_command(cargo().args(["test", "--workspace", "--exclude", "vbd-integration"]))?;
    eprintln!("xtask: hv-vbd and shared-abi build for x86_64-unknown-none (no_std, no alloc)");
    run_command(cargo().args([
        "build",
        "--package",
        "hv-vbd",
        "--package",
        "shared-abi",
        "--target",
        "x86_64-unknown-none",
    ]))?;
    eprintln!("xtask: QEMU integration suite");
    run_command(cargo().args([
        "test",
        "--package",
        "vbd-integration",
        "--",
        "--test-threads=2",
    ]))?;
    eprintln!("xtask: every check passed");
    Ok(())
}
