//! Debian's package tools, used without installing anything: `apt-get download` fetches a
//! package, `dpkg-deb -x` unpacks it into a directory, and `apt-get update` runs at most once
//! per process, before the first fetch or install that needs it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::{output, run};

/// Whether this process runs as root, read from `/proc/self/status` (`Uid:` real, effective, ...).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        })
        .unwrap_or(false)
}

/// Run `apt-get update` once per process, as root; later calls return the first outcome. As
/// another user it only says it cannot, since the lists may already be fresh enough.
pub fn update_once() -> Result<(), String> {
    static UPDATED: OnceLock<Result<(), String>> = OnceLock::new();
    UPDATED
        .get_or_init(|| {
            if !is_root() {
                eprintln!("guest: not root, so the package lists are used as they are");
                return Ok(());
            }
            eprintln!("guest: refreshing Debian's package lists");
            run(Command::new("apt-get").args(["update", "-q"]))
        })
        .clone()
}

/// Install Debian packages, non-interactively (root only).
pub fn install(packages: &[&str]) -> Result<(), String> {
    update_once()?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q"])
        .args(packages))
}

/// The ABI of the kernel that Debian's `linux-image-cloud-amd64` depends on now, e.g.
/// `6.1.0-57-cloud-amd64`.
pub fn cloud_kernel_abi() -> Result<String, String> {
    let depends = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    cloud_kernel_abi_from(&String::from_utf8_lossy(&depends.stdout))
}

fn cloud_kernel_abi_from(depends: &str) -> Result<String, String> {
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: linux-image-"))
        .find(|abi| abi.ends_with("-cloud-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("apt-cache depends linux-image-cloud-amd64 names no kernel: {depends}")
        })
}

/// The packages `apt-get install PACKAGE` would add to this machine, PACKAGE included unless it
/// is installed already: its dependency closure less what the host has.
pub fn missing_closure(package: &str) -> Result<Vec<String>, String> {
    let simulated = output(Command::new("apt-get").args(["--simulate", "install", package]))?;
    Ok(packages_to_install(&String::from_utf8_lossy(
        &simulated.stdout,
    )))
}

/// The package names of the `Inst NAME (VERSION ...)` lines of `apt-get --simulate install`.
fn packages_to_install(simulated: &str) -> Vec<String> {
    simulated
        .lines()
        .filter_map(|line| line.strip_prefix("Inst "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Download `packages` and unpack them all into `destination`, which must not exist yet.
/// The work happens in a sibling directory renamed into place at the end, so an interrupted
/// run leaves nothing that looks finished.
pub fn download_and_unpack(packages: &[String], destination: &Path) -> Result<(), String> {
    let name = destination
        .file_name()
        .ok_or_else(|| format!("{}: not a directory name", destination.display()))?
        .to_string_lossy();
    let partial = destination.with_file_name(format!(".partial-{name}"));
    let _ = fs::remove_dir_all(&partial);
    let debs = partial.join("debs");
    let root = partial.join("root");
    for directory in [&debs, &root] {
        fs::create_dir_all(directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    update_once()?;
    let mut download = Command::new("apt-get");
    download.current_dir(&debs).args(["download", "-q"]);
    if is_root() {
        // apt's download user cannot write into root's target directory; root downloads.
        download.args(["-o", "APT::Sandbox::User=root"]);
    }
    run(download.args(packages))?;
    let mut archives: Vec<_> = fs::read_dir(&debs)
        .map_err(|error| format!("{}: {error}", debs.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .collect();
    archives.sort();
    if archives.len() != packages.len() {
        return Err(format!(
            "apt-get download of {} left {} archives in {}",
            packages.join(" "),
            archives.len(),
            debs.display()
        ));
    }
    for archive in &archives {
        run(Command::new("dpkg-deb").arg("-x").arg(archive).arg(&root))?;
    }
    fs::rename(&root, destination).map_err(|error| {
        format!(
            "cannot move {} to {}: {error}",
            root.display(),
            destination.display()
        )
    })?;
    fs::remove_dir_all(&partial).map_err(|error| format!("{}: {error}", partial.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_kernel_abi_is_read_from_apt_cache_depends() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            cloud_kernel_abi_from(depends).as_deref(),
            Ok("6.1.0-57-cloud-amd64")
        );
        assert!(cloud_kernel_abi_from("linux-image-cloud-amd64\n").is_err());
        assert!(cloud_kernel_abi_from("  Depends: linux-image-6.1.0-57-amd64\n").is_err());
    }

    #[test]
    fn simulated_installs_name_the_missing_packages() {
        let simulated = "Reading package lists...\n\
            The following NEW packages will be installed:\n  fio libnbd0 libpmemblk1\n\
            Inst libnbd0 (1.14.2-1 Debian:12.11/stable [amd64])\n\
            Inst libpmemblk1 (1.12.1-2 Debian:12.11/stable [amd64])\n\
            Inst fio (3.33-3 Debian:12.11/stable [amd64])\n\
            Conf libnbd0 (1.14.2-1 Debian:12.11/stable [amd64])\n";
        assert_eq!(
            packages_to_install(simulated),
            ["libnbd0", "libpmemblk1", "fio"]
        );
        assert!(packages_to_install("fio is already the newest version (3.33-3).\n").is_empty());
    }
}
