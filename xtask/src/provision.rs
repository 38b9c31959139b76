//! Provisioning: install what the demo and the tests need, or say exactly how to.

use std::path::Path;
use std::process::Command;

use vbd_machine::process::{output, run};

/// A program the tests run, and the Debian package that ships it.
struct Tool {
    program: &'static str,
    package: &'static str,
}

const TOOLS: [Tool; 6] = [
    Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
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
];

const RUST_TARGET: &str = "x86_64-unknown-none";

/// Make sure the Rust target and the Debian packages are there, installing them when we
/// may (as root), otherwise failing with the command to run.
pub fn ensure_all() -> Result<(), String> {
    ensure_rust_target()?;
    ensure_packages()
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

/// Whether `program` is on PATH or in the sbin directories a non-login root shell may lack.
pub fn find_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(Into::into))
        .any(|directory| Path::new(&directory).join(program).is_file())
}

fn ensure_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|tool| !find_program(tool.program))
        .map(|tool| tool.package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        eprintln!("xtask: qemu-system-x86_64, sfdisk and e2fsprogs are installed");
        return Ok(());
    }
    let install = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return Err(format!(
            "missing packages {}; run as root: {install}",
            missing.join(", ")
        ));
    }
    eprintln!(
        "xtask: installing {} from Debian's packages",
        missing.join(", ")
    );
    // Debian's qemu-system-x86 replaces a newer preinstalled qemu-utils; put it back after.
    let had_qemu_img = find_program("qemu-img");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q"])
        .args(&missing))?;
    if had_qemu_img && !find_program("qemu-img") {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "qemu-utils"]))?;
    }
    match TOOLS.iter().find(|tool| !find_program(tool.program)) {
        Some(tool) => Err(format!(
            "{} is still missing after installing {}",
            tool.program, tool.package
        )),
        None => Ok(()),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}
