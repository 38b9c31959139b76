//! Building what a machine needs: the hypervisor ELF, the `vdisk` binary and the
//! `vbd-backend` daemon.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;

/// The workspace root, found from this crate's manifest directory (`tests/machine`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/machine is two levels deep")
        .to_path_buf()
}

/// Build the test hypervisor (release, `x86_64-unknown-none`) and return the ELF's path.
/// Runs cargo from the hypervisor's directory so its own `.cargo/config.toml` applies.
pub fn build_hypervisor() -> Result<PathBuf, String> {
    let directory = workspace_root().join("tests/hypervisor");
    // Its own target directory, whatever CARGO_TARGET_DIR says: the bare-metal build shares
    // nothing with the host builds, and the ELF's path stays predictable.
    let target = directory.join("target");
    run(Command::new(env!("CARGO"))
        .current_dir(&directory)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
        ])
        .arg(&target))?;
    let elf = target.join("x86_64-unknown-none/release/vbd-hypervisor");
    if elf.is_file() {
        Ok(elf)
    } else {
        Err(format!(
            "the hypervisor build did not produce {}",
            elf.display()
        ))
    }
}

/// Build the `vdisk` command (`release` for the benchmarks, debug otherwise) and return its
/// path.
pub fn build_vdisk(release: bool) -> Result<PathBuf, String> {
    build_binary("host-tools", "vdisk", release)
}

/// Build the `vbd-backend` daemon (`release` for the benchmarks; debug for the walkthrough
/// and the tests, where under TCG the guest, not the backend, is what is slow) and return
/// its path.
pub fn build_backend(release: bool) -> Result<PathBuf, String> {
    build_binary("vbd-backend", "vbd-backend", release)
}

/// Build the guest-less benchmark client `blkio-runner` (release: it is a benchmark) and
/// return its path.
pub fn build_blkio_runner() -> Result<PathBuf, String> {
    build_binary("blkio-runner", "blkio-runner", true)
}

fn build_binary(package: &str, binary: &str, release: bool) -> Result<PathBuf, String> {
    let root = workspace_root();
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(&root)
        .args(["build", "--quiet", "--package", package, "--bin", binary]);
    if release {
        command.arg("--release");
    }
    run(&mut command)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_directory().join(profile).join(binary))
}

/// Where cargo puts the workspace's output: `CARGO_TARGET_DIR` (relative to the workspace
/// root, where every cargo command here runs), or the workspace's `target/`.
pub fn target_directory() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}
