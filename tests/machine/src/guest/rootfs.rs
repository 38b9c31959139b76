//! An ext4 root filesystem for a guest booted with `root=/dev/vda`, made by `mke2fs -d` from
//! a staged tree: busybox, an `/init` running a caller's body under the result protocol, the
//! caller's files, and a `sha256sum` manifest of them all.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::artefacts::GuestArtefacts;
use super::script::{root_init, MANIFEST};
use crate::process::output;

/// The files of a root filesystem and the body of its `/init`.
#[derive(Clone, Debug)]
pub struct RootFilesystem {
    body: String,
    files: Vec<(String, Vec<u8>)>,
}

impl RootFilesystem {
    /// A filesystem whose `/init` runs `body` (see [`super::script`] for what it may call).
    pub fn new(body: &str) -> RootFilesystem {
        RootFilesystem {
            body: body.to_owned(),
            files: Vec::new(),
        }
    }

    /// Add a regular file (mode 0644), at a path relative to the root.
    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.files
            .push((path.trim_start_matches('/').to_owned(), contents.into()));
        self
    }

    /// Stage the tree in `staging` (emptied first) and make `image`, `size_bytes` long, from it.
    pub fn build(
        &self,
        artefacts: &GuestArtefacts,
        staging: &Path,
        image: &Path,
        size_bytes: u64,
    ) -> Result<(), String> {
        let failed = |path: &Path, error: std::io::Error| format!("{}: {error}", path.display());
        let _ = fs::remove_dir_all(staging);
        for directory in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            let path = staging.join(directory);
            fs::create_dir_all(&path).map_err(|error| failed(&path, error))?;
        }
        let busybox = staging.join("bin/busybox");
        fs::copy(&artefacts.busybox, &busybox).map_err(|error| failed(&busybox, error))?;
        let init = staging.join("init");
        fs::write(&init, root_init(&self.body)).map_err(|error| failed(&init, error))?;
        set_mode(&init, 0o755)?;
        let mut listed = vec!["bin/busybox".to_owned(), "init".to_owned()];
        for (path, contents) in &self.files {
            let file = staging.join(path);
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent).map_err(|error| failed(parent, error))?;
            }
            fs::write(&file, contents).map_err(|error| failed(&file, error))?;
            set_mode(&file, 0o644)?;
            listed.push(path.clone());
        }
        let sums = output(
            Command::new("sha256sum")
                .current_dir(staging)
                .arg("--")
                .args(&listed),
        )?;
        let manifest = staging.join(MANIFEST);
        fs::write(&manifest, &sums.stdout).map_err(|error| failed(&manifest, error))?;
        output(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-L", "vbd-guest-root", "-d"])
                .arg(staging)
                .arg(image)
                .arg(format!("{}k", size_bytes / 1024)),
        )
        .map(drop)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|error| format!("{}: {error}", path.display()))
}
