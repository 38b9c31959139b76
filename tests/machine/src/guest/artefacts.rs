//! What a guest is made of, from Debian's packages unpacked under `target/guest/` (never
//! installed): the cloud kernel with its virtio modules, busybox, and, only when a caller asks,
//! fio with every shared library `ldd` says it loads.
//!
//! fio's libraries: the fio package is always downloaded, together with the packages
//! `apt-get install fio` would add to this host (`apt-get --simulate`). Libraries the host
//! already has are copied from the host, since those are the very files apt would have
//! satisfied fio's dependencies with; `ldd`, run with the unpacked library directories on
//! `LD_LIBRARY_PATH`, is the authority on which file each library is.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::apt;
use crate::process::output;
use crate::target_directory;

/// The virtio modules a guest must `insmod`, in this order: the package has no modules.dep.
pub const VIRTIO_MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
];

/// Where the guest artefacts live: `target/guest/` (or under `CARGO_TARGET_DIR`).
pub fn guest_directory() -> PathBuf {
    target_directory().join("guest")
}

/// One fetch at a time, across threads and processes (nextest runs every test in a process
/// of its own), keeps two tests from unpacking the same package: an exclusive lock on
/// `target/guest/.fetching`, held until the returned file is dropped.
fn lock_fetching() -> Result<File, String> {
    let directory = guest_directory();
    fs::create_dir_all(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    let path = directory.join(".fetching");
    let lock = File::create(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    lock.lock()
        .map_err(|error| format!("locking {}: {error}", path.display()))?;
    Ok(lock)
}

/// The kernel, its virtio modules and busybox.
#[derive(Clone, Debug)]
pub struct GuestArtefacts {
    /// The kernel's ABI, e.g. `6.1.0-57-cloud-amd64`.
    pub abi: String,
    /// `boot/vmlinuz-ABI`, for QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// Module name and `.ko` file, in [`VIRTIO_MODULES`] order.
    pub modules: Vec<(String, PathBuf)>,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

impl GuestArtefacts {
    /// Find the artefacts, fetching whatever is missing and printing each step; a second call
    /// only says what is there.
    pub fn ensure() -> Result<GuestArtefacts, String> {
        let _fetching = lock_fetching()?;
        let directory = guest_directory();
        let abi = match unpacked_kernel_abi(&directory) {
            Some(abi) => {
                eprintln!("guest: kernel {abi} is unpacked in {}", directory.display());
                abi
            }
            None => {
                apt::update_once()?;
                let abi = apt::cloud_kernel_abi()?;
                let destination = directory.join(format!("linux-{abi}"));
                eprintln!(
                    "guest: fetching the kernel linux-image-{abi} into {}",
                    destination.display()
                );
                apt::download_and_unpack(&[format!("linux-image-{abi}")], &destination)?;
                abi
            }
        };
        let busybox_root = directory.join("busybox");
        if busybox_root.is_dir() {
            eprintln!("guest: busybox is unpacked in {}", busybox_root.display());
        } else {
            eprintln!(
                "guest: fetching busybox-static into {}",
                busybox_root.display()
            );
            apt::download_and_unpack(&["busybox-static".to_owned()], &busybox_root)?;
        }
        let kernel_root = directory.join(format!("linux-{abi}"));
        let modules = VIRTIO_MODULES
            .iter()
            .map(|name| {
                let path = find_module(&kernel_root.join("lib/modules").join(&abi), name)?;
                Ok((name.to_string(), path))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let artefacts = GuestArtefacts {
            kernel: kernel_root.join(format!("boot/vmlinuz-{abi}")),
            abi,
            modules,
            busybox: busybox_root.join("bin/busybox"),
        };
        for file in [&artefacts.kernel, &artefacts.busybox] {
            if !file.is_file() {
                return Err(format!(
                    "{} is missing: remove {} and run again",
                    file.display(),
                    directory.display()
                ));
            }
        }
        Ok(artefacts)
    }
}

/// The ABI of a kernel unpacked earlier (`target/guest/linux-ABI/boot/vmlinuz-ABI`).
fn unpacked_kernel_abi(directory: &Path) -> Option<String> {
    let mut abis: Vec<String> = fs::read_dir(directory)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let abi = name.strip_prefix("linux-")?.to_owned();
            entry
                .path()
                .join(format!("boot/vmlinuz-{abi}"))
                .is_file()
                .then_some(abi)
        })
        .collect();
    abis.sort();
    abis.pop()
}

/// The `.ko` file of module `name` somewhere under `modules` (`kernel/drivers/...`).
fn find_module(modules: &Path, name: &str) -> Result<PathBuf, String> {
    let wanted = format!("{name}.ko");
    let mut pending = vec![modules.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = fs::read_dir(&directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy() == wanted {
                return Ok(path);
            }
        }
    }
    Err(format!(
        "no {wanted} under {}: the kernel package changed its modules",
        modules.display()
    ))
}

/// fio and the files it needs at run time, for the guest's initramfs.
#[derive(Clone, Debug)]
pub struct Fio {
    /// The `fio` binary from Debian's package.
    pub binary: PathBuf,
    /// Where each library goes in the guest and which host file it is: the dynamic loader at
    /// its `PT_INTERP` path, every other library under `/lib/x86_64-linux-gnu/` by the name
    /// the binary asks for (one of the loader's default directories, so no `LD_LIBRARY_PATH`).
    pub libraries: Vec<(String, PathBuf)>,
}

impl Fio {
    /// Find fio, fetching it and the libraries the host lacks on first use.
    pub fn ensure() -> Result<Fio, String> {
        let _fetching = lock_fetching()?;
        let root = guest_directory().join("fio");
        if root.is_dir() {
            eprintln!("guest: fio is unpacked in {}", root.display());
        } else {
            apt::update_once()?;
            let mut packages = apt::missing_closure("fio")?;
            if !packages.iter().any(|package| package == "fio") {
                packages.push("fio".to_owned());
            }
            eprintln!(
                "guest: fetching {} into {}",
                packages.join(" "),
                root.display()
            );
            apt::download_and_unpack(&packages, &root)?;
        }
        let binary = root.join("usr/bin/fio");
        let mut command = Command::new("ldd");
        command
            .arg(&binary)
            .env("LD_LIBRARY_PATH", library_directories(&root)?.join(":"));
        let listed = output(&mut command)?;
        Ok(Fio {
            libraries: libraries_from_ldd(&String::from_utf8_lossy(&listed.stdout))?,
            binary,
        })
    }
}

/// Every directory under `root` that holds a shared library, joined for `LD_LIBRARY_PATH`.
fn library_directories(root: &Path) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = fs::read_dir(&directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        let mut has_library = false;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().contains(".so") {
                has_library = true;
            }
        }
        if has_library {
            found.push(directory.display().to_string());
        }
    }
    found.sort();
    Ok(found)
}

/// The guest path and host file of every library in `ldd`'s output; a library `ldd` could not
/// find is an error naming it.
fn libraries_from_ldd(listing: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut libraries = Vec::new();
    for line in listing
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        let without_address = line.rsplit_once(" (").map_or(line, |(left, _)| left);
        match without_address.split_once(" => ") {
            Some((name, "not found")) => {
                return Err(format!(
                    "ldd: fio needs {name}, which is nowhere to be found"
                ))
            }
            Some((name, path)) => {
                libraries.push((format!("lib/x86_64-linux-gnu/{name}"), PathBuf::from(path)))
            }
            // The loader is named by its absolute path; the vDSO by a bare name, and it is
            // the kernel's, not a file.
            None if without_address.starts_with('/') => libraries.push((
                without_address.trim_start_matches('/').to_owned(),
                PathBuf::from(without_address),
            )),
            None => {}
        }
    }
    if libraries
        .iter()
        .any(|(guest, _)| guest.contains("ld-linux"))
    {
        Ok(libraries)
    } else {
        Err(format!("ldd named no dynamic loader for fio: {listing}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_maps_to_guest_paths() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibnbd.so.0 => /t/guest/fio/usr/lib/x86_64-linux-gnu/libnbd.so.0 (0x00007f01)\n\
            \tlibceph-common.so.2 => /usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2 (0x1)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007fd7)\n";
        assert_eq!(
            libraries_from_ldd(listing).unwrap(),
            [
                (
                    "lib/x86_64-linux-gnu/libnbd.so.0".to_owned(),
                    PathBuf::from("/t/guest/fio/usr/lib/x86_64-linux-gnu/libnbd.so.0")
                ),
                (
                    "lib/x86_64-linux-gnu/libceph-common.so.2".to_owned(),
                    PathBuf::from("/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2")
                ),
                (
                    "lib64/ld-linux-x86-64.so.2".to_owned(),
                    PathBuf::from("/lib64/ld-linux-x86-64.so.2")
                ),
            ]
        );
        assert_eq!(
            libraries_from_ldd("\tlibpmemblk.so.1 => not found\n"),
            Err("ldd: fio needs libpmemblk.so.1, which is nowhere to be found".to_owned())
        );
        assert!(libraries_from_ldd("\tlibz.so.1 => /lib/libz.so.1 (0x1)\n").is_err());
    }
}
