//! The walkthrough on the bare-metal test hypervisor (`cargo xtask demo --bare-metal`).
//!
//! Put one partition of each disk in the free pool, create a VD that spans both disks,
//! attach it to dom0 as `xvda`, write an ext4 root filesystem into it, detach it, attach it
//! to dom1, let dom1 read it back, and check what dom1 read with `e2fsck` and `debugfs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{check_clean, check_files, root_tree, shell};
use crate::Vdisk;
use crate::{DiskSpec, Machine, MachineConfig};

/// Small disks and a small filesystem keep the walkthrough quick: every byte crosses an
/// emulated UART, at a few hundred KiB/s under TCG. The pool is the 2 MiB second partition
/// of each disk, in 1 MiB extents, so a 3 MiB VD must span both disks.
const DEMO_PARTITIONS: &str = "label: dos\n,8M\n,2M\n,\n";
const VD_SIZE: &str = "3M";

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
    check_clean(&readback)?;
    shell(
        Command::new("debugfs")
            .args(["-R", "ls -l /etc"])
            .arg(&readback),
    )?;
    check_files(&readback, &dir.join("dumped"))?;

    println!("\n# Power the hypervisor off");
    let summary = machine.shutdown()?;
    println!("{summary}");
    println!(
        "\nwalkthrough passed in {:.1} s: dom1 read back the filesystem dom0 wrote",
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}
