//! `cargo xtask demo`: the HOWTO walkthrough, every command printed and checked, with a real
//! Linux guest booting from the VD on vbd-backend; `--bare-metal` runs it on the bare-metal
//! test hypervisor instead.

use std::path::Path;

use vbd_machine::walkthrough::{bare_metal, guest};
use vbd_machine::{build_backend, build_hypervisor, build_vdisk, workspace_root};

use crate::provision;

/// Which embedding of the block layer the walkthrough runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedding {
    /// vbd-backend and a Linux guest in QEMU.
    Backend,
    /// The bare-metal test hypervisor in QEMU.
    BareMetal,
}

pub fn run(embedding: Embedding) -> Result<(), String> {
    let artefacts = provision::ensure_all()?;
    let vdisk = build_vdisk(false)?;
    // Relative paths from the workspace root keep the printed commands short and replayable.
    let root = workspace_root();
    std::env::set_current_dir(&root).map_err(|error| format!("{}: {error}", root.display()))?;
    // Each walkthrough has a directory of its own, so running one never clears what the
    // other left (the README's own-guest recipe reuses the guest demo's loader).
    match embedding {
        Embedding::Backend => {
            let tools = guest::Tools {
                vdisk,
                backend: build_backend(false)?,
                artefacts,
            };
            guest::run(Path::new("target/demo"), &tools).map(drop)
        }
        Embedding::BareMetal => bare_metal::run(
            Path::new("target/demo-bare-metal"),
            build_hypervisor()?,
            vdisk,
        )
        .map(drop),
    }
}
