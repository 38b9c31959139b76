//! Provisioning: install what the demo and the tests need, or say exactly how to; then fetch
//! the guests' kernel and busybox under `target/guest/` (fio only when a benchmark asks).

use std::path::Path;
use std::process::Command;

use vbd_machine::guest::{apt_install, is_root, GuestArtefacts};
use vbd_machine::process::{output, run};

/// A program the tests run, and the Debian package that ships it.
struct Tool {
    program: &'static str,
    package: &'static str,
}

const TOOLS: [Tool; 15] = [
    Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Tool {
        program: "qemu-storage-daemon",
        package: "qemu-system-common",
    },
    // Debian 12's qemu-system-x86 removes a newer preinstalled qemu-utils, so it is installed
    // in a second round, after everything else.
    Tool {
        program: "qemu-img",
        package: QEMU_UTILS,
    },
    Tool {
        program: "sfdisk",
        package: "fdisk",
    },
    Tool {
        program: "mke2fs",
        package: "e2fsprogs",
    },
    Tool {
        program: "e2fsck",
        package: "e2fsprogs",
    },
    Tool {
        program: "debugfs",
        package: "e2fsprogs",
    },
    Tool {
        program: "setpriv",
        package: "util-linux",
    },
    // The NBD exports' clients: nbdinfo and nbdcopy, libnbd's Python binding (which ships
    // nbdsh), and fio, whose nbd engine links libnbd.
    Tool {
        program: "nbdinfo",
        package: "libnbd-bin",
    },
    Tool {
        program: "nbdsh",
        package: "python3-libnbd",
    },
    Tool {
        program: "fio",
        package: "fio",
    },
    // The `nbd` bench's floor: nbdkit's null plugin, a server that does nothing.
    Tool {
        program: "nbdkit",
        package: "nbdkit",
    },
    // Pools on etcd: the host tools' etcd client is built with protoc, and the tests start
    // etcd clusters of their own (etcdctl is the operator's look into them).
    Tool {
        program: "protoc",
        package: "protobuf-compiler",
    },
    Tool {
        program: "etcd",
        package: "etcd-server",
    },
    Tool {
        program: "etcdctl",
        package: "etcd-client",
    },
];

const QEMU_UTILS: &str = "qemu-utils";

const RUST_TARGET: &str = "x86_64-unknown-none";

/// Make sure the Rust target, the Debian packages and the guest artefacts are there,
/// installing them when we may (as root), otherwise failing with the command to run.
/// Returns the guest artefacts.
pub fn ensure_all() -> Result<GuestArtefacts, String> {
    report_free_space();
    ensure_rust_target()?;
    ensure_packages()?;
    GuestArtefacts::ensure()
}

/// What a run from a clean clone leaves under `target/` (builds, the guest artefacts, the
/// tests' images and databases; 2.9 GiB measured at `cargo xtask test`), with room to spare.
const NEEDED_GIB: u64 = 5;

/// Say how much room the workspace's disk has, and warn when a run from a clean clone may
/// fill it: a full disk fails tests far from the cause (a database that cannot grow, a
/// short write to an image). Only a warning, never a reason to stop.
fn report_free_space() {
    let root = vbd_machine::workspace_root();
    let free_kib = output(Command::new("df").args(["-Pk"]).arg(&root))
        .ok()
        .and_then(|df| available_kib(&String::from_utf8_lossy(&df.stdout)));
    match free_kib.map(|kib| kib >> 20) {
        Some(free_gib) if free_gib < NEEDED_GIB => eprintln!(
            "xtask: warning: only {free_gib} GiB free on {}'s disk; a run from a clean \
             clone needs about {NEEDED_GIB} GiB",
            root.display()
        ),
        Some(free_gib) => eprintln!("xtask: {free_gib} GiB free on {}'s disk", root.display()),
        None => eprintln!(
            "xtask: warning: df gave no free space for {}; a run from a clean clone needs \
             about {NEEDED_GIB} GiB",
            root.display()
        ),
    }
}

/// The `Available` column (KiB) of `df -Pk`'s one line for a file system.
fn available_kib(df: &str) -> Option<u64> {
    df.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

fn ensure_rust_target() -> Result<(), String> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == RUST_TARGET)
    {
        eprintln!("xtask: Rust target {RUST_TARGET} is installed");
        return Ok(());
    }
    eprintln!("xtask: installing the Rust target {RUST_TARGET}");
    run(Command::new("rustup").args(["target", "add", RUST_TARGET]))
}

/// Make sure `cargo SUBCOMMAND` works, installing `krate` from crates.io when it does not.
pub fn ensure_cargo_subcommand(subcommand: &str, krate: &str) -> Result<(), String> {
    let cargo = || Command::new(env!("CARGO"));
    let installed = cargo()
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if installed {
        eprintln!("xtask: {krate} is installed");
        return Ok(());
    }
    eprintln!("xtask: {krate} is missing; installing it from crates.io");
    run(cargo().args(["install", krate, "--locked"]))
}

/// Whether `program` is on PATH or in the sbin directories a non-login root shell may lack.
pub fn find_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(Into::into))
        .any(|directory| Path::new(&directory).join(program).is_file())
}

fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|tool| !find_program(tool.program))
        .map(|tool| tool.package)
        .collect();
    missing.dedup();
    missing
}

fn ensure_packages() -> Result<(), String> {
    let missing = missing_packages();
    if missing.is_empty() {
        let programs: Vec<&str> = TOOLS.iter().map(|tool| tool.program).collect();
        eprintln!("xtask: {} are installed", programs.join(", "));
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing packages {}; run as root: apt-get update && apt-get install -y {}",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    let first: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|&package| package != QEMU_UTILS)
        .collect();
    if !first.is_empty() {
        eprintln!(
            "xtask: installing {} from Debian's packages",
            first.join(", ")
        );
        apt_install(&first)?;
    }
    let second = missing_packages();
    if !second.is_empty() {
        eprintln!(
            "xtask: installing {} from Debian's packages",
            second.join(", ")
        );
        apt_install(&second)?;
    }
    match TOOLS.iter().find(|tool| !find_program(tool.program)) {
        Some(tool) => Err(format!(
            "{} is still missing after installing {}",
            tool.program, tool.package
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_available_column_of_df_is_read_and_anything_else_is_none() {
        let df = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                  /dev/vda         263174212 27262976  69206016      29% /\n";
        assert_eq!(available_kib(df), Some(69_206_016));
        assert_eq!(
            available_kib("Filesystem 1024-blocks Used Available\n"),
            None
        );
        assert_eq!(available_kib("header\n/dev/vda 1 2 many 3% /\n"), None);
    }
}
