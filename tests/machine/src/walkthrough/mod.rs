//! The HOWTO walkthrough, every command printed and every step checked, in its two
//! embeddings: [`guest`] boots a real Linux guest from a VD served by vbd-backend (`cargo
//! xtask demo`), [`bare_metal`] has dom1 of the bare-metal test hypervisor read the VD back
//! (`cargo xtask demo --bare-metal`). The integration suite runs both.

pub mod bare_metal;
pub mod guest;

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::process;

/// The files both walkthroughs put in the root filesystem: path and contents.
fn root_tree() -> Vec<(&'static str, Vec<u8>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..384 << 10)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    vec![
        ("etc/hostname", b"guest1\n".to_vec()),
        (
            "etc/motd",
            b"Welcome to a domain whose disk is a virtual disk.\n".to_vec(),
        ),
        ("bin/hello", b"#!/bin/sh\necho hello from xvda\n".to_vec()),
        ("var/lib/blob", noise),
    ]
}

/// Print a command, run it, print its standard output; a failure is an error with its
/// standard error. Returns the standard output.
fn shell(command: &mut Command) -> Result<String, String> {
    process::transcribe(&process::display(command), command)
}

/// `e2fsck -f -n` finds the image clean: it exits 0 (which `-n` does even for some faults it
/// declines to fix), offers no fix, and had no journal to skip.
fn check_clean(image: &Path) -> Result<(), String> {
    let printed = shell(Command::new("e2fsck").args(["-f", "-n"]).arg(image))?;
    match printed
        .lines()
        .find(|line| line.contains("Fix? no") || line.contains("skipping journal recovery"))
    {
        Some(line) => Err(format!("e2fsck: {} is not clean: {line}", image.display())),
        None => Ok(()),
    }
}

/// Every file of [`root_tree`], dumped from the ext4 image with `debugfs` (by way of the
/// file `scratch`), equals the original.
fn check_files(image: &Path, scratch: &Path) -> Result<(), String> {
    for (path, contents) in root_tree() {
        let request = format!("dump /{path} {}", scratch.display());
        let _ = fs::remove_file(scratch);
        process::output(Command::new("debugfs").args(["-R", &request]).arg(image))?;
        let read =
            fs::read(scratch).map_err(|error| format!("debugfs did not dump /{path}: {error}"))?;
        if read != contents {
            return Err(format!("/{path} differs after the round trip"));
        }
        println!("/{path}: {} bytes, identical", read.len());
    }
    Ok(())
}
