//! The HOWTO walkthrough, every command printed and every step checked: `cargo xtask demo`
//! runs it, and so does the integration suite.
//!
//! Put one partition of each disk in the free pool, create a VD that spans both disks,
//! attach it to dom0 as `xvda`, write an ext4 root filesystem into it, detach it, attach it
//! to dom1, let dom1 read it back, and check what dom1 read with `e2fsck` and `debugfs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{process, DiskSpec, Machine, MachineConfig};

/// Small disks and a small filesystem keep the walkthrough quick: every byte crosses an
/// emulated UART, at a few hundred KiB/s under TCG. The pool is the 2 MiB second partition
/// of each disk, in 1 MiB extents, so a 3 MiB VD must span both disks.
const DEMO_PARTITIONS: &str = "label: dos\n,8M\n,2M\n,\n";
const VD_SIZE: &str = "3M";

/// The files of the root filesystem: path and contents.
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

/// Runs `vdisk` with the demo's database and devices file, printing each command.
struct Vdisk {
    binary: PathBuf,
    database: PathBuf,
    devices: PathBuf,
}

impl Vdisk {
    fn run(&self, arguments: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.binary);
        command
            .args(arguments)
            .env("VDISK_DB", &self.database)
            .env("VDISK_DEVICES", &self.devices);
        println!("$ vdisk {}", arguments.join(" "));
        let output = command
            .output()
            .map_err(|error| format!("vdisk: {error}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        if !output.status.success() {
            return Err(format!(
                "`vdisk {}` failed: {}",
                arguments.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(stdout)
    }
}

fn shell(command: &mut Command) -> Result<String, String> {
    println!("$ {}", process::display(command));
    let output = command
        .output()
        .map_err(|error| format!("{}: {error}", process::display(command)))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{}` failed: {}",
            process::display(command),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Run the walkthrough in `dir` (emptied first) with the given hypervisor ELF and `vdisk`
/// binary. Returns the hypervisor's summary line.
pub fn run(dir: &Path, hypervisor: PathBuf, vdisk: PathBuf) -> Result<String, String> {
    let started = Instant::now();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let disk = |name: &str| DiskSpec {
        name: name.to_owned(),
        size_bytes: 32 << 20,
        partitions: DEMO_PARTITIONS.to_owned(),
    };
    let mut config = MachineConfig::new(dir, hypervisor);
    config.disks = vec![disk("hda"), disk("hdb")];
    config.timeout = std::time::Duration::from_secs(900);
    let vdisk = Vdisk {
        binary: vdisk,
        database: dir.join("vdisk.sqlite"),
        devices: dir.join("machine.toml"),
    };

    println!("\n# Boot the test hypervisor with two partitioned disks");
    let machine = Machine::start(&config)?;
    let (dom0, dom1) = (machine.endpoint(0), machine.endpoint(1));
    println!(
        "export VDISK_DB={} VDISK_DEVICES={}",
        vdisk.database.display(),
        vdisk.devices.display()
    );

    println!("\n# Put one partition of each disk in the free pool, in 1 MiB extents");
    vdisk.run(&["format", "phy:hda2", "--extent-size", "1M"])?;
    vdisk.run(&["format", "phy:hdb2", "--extent-size", "1M"])?;
    vdisk.run(&["pool"])?;

    println!("\n# Create a virtual disk larger than either partition, so it spans both disks");
    let id = vdisk.run(&["create", VD_SIZE])?.trim().to_owned();
    id.parse::<u64>()
        .map_err(|_| format!("`vdisk create` printed `{id}`, not an id"))?;
    let shown = vdisk.run(&["show", &id, "--json"])?;
    let devices_used: Vec<&str> = ["\"3:0\"", "\"3:64\""]
        .into_iter()
        .filter(|device| shown.contains(device))
        .collect();
    if devices_used.len() != 2 {
        return Err(format!("VD {id} does not span both disks: {shown}"));
    }
    let uname = format!("vd:{id}");

    println!("\n# Make an ext4 root filesystem from a directory tree");
    let tree = dir.join("rootfs");
    for (path, contents) in root_tree() {
        let file = tree.join(path);
        fs::create_dir_all(file.parent().expect("has a parent"))
            .map_err(|error| error.to_string())?;
        fs::write(&file, contents).map_err(|error| error.to_string())?;
    }
    let image = dir.join("rootfs.img");
    shell(
        Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "1024",
                "-O",
                "^has_journal",
                "-L",
                "demo-root",
                "-d",
            ])
            .arg(&tree)
            .arg(&image)
            .arg(VD_SIZE),
    )?;

    println!("\n# Attach the VD to dom0 as xvda, write the filesystem into it, detach it");
    vdisk.run(&["--hv", &dom0, "attach", &uname, "xvda", "0", "rw"])?;
    vdisk.run(&[
        "--hv",
        &dom0,
        "write",
        "xvda",
        "--sparse",
        "--from",
        &image.display().to_string(),
    ])?;
    vdisk.run(&["--hv", &dom0, "detach", "xvda", "0"])?;

    println!("\n# Attach it to dom1 as xvda; dom1 reads its disk back through its own port");
    vdisk.run(&["--hv", &dom0, "attach", &uname, "xvda", "1", "r"])?;
    let readback = dir.join("dom1-xvda.img");
    vdisk.run(&[
        "--hv",
        &dom1,
        "read",
        "xvda",
        "--to",
        &readback.display().to_string(),
    ])?;
    vdisk.run(&["--hv", &dom0, "vbds", "all"])?;

    println!("\n# Check what dom1 read: a clean filesystem with the same files");
    shell(Command::new("e2fsck").args(["-f", "-n"]).arg(&readback))?;
    shell(
        Command::new("debugfs")
            .args(["-R", "ls -l /etc"])
            .arg(&readback),
    )?;
    check_files(&readback, dir)?;

    println!("\n# Power the hypervisor off");
    let summary = machine.shutdown()?;
    println!("{summary}");
    println!(
        "\nwalkthrough passed in {:.1} s: dom1 read back the filesystem dom0 wrote",
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Every file of the tree, dumped from the image with `debugfs`, equals the original.
fn check_files(image: &Path, dir: &Path) -> Result<(), String> {
    for (path, contents) in root_tree() {
        let dumped = dir.join("dumped");
        let request = format!("dump /{path} {}", dumped.display());
        let _ = fs::remove_file(&dumped);
        let mut command = Command::new("debugfs");
        command.args(["-R", &request]).arg(image);
        process::output(&mut command)?;
        let read =
            fs::read(&dumped).map_err(|error| format!("debugfs did not dump /{path}: {error}"))?;
        if read != contents {
            return Err(format!("/{path} differs after the round trip through dom1"));
        }
        println!("/{path}: {} bytes, identical", read.len());
    }
    Ok(())
}
