//! The walkthrough with a real Linux guest (`cargo xtask demo`).
//!
//! Two partitioned disk images; one partition of each in the free pool; a VD that spans both;
//! vbd-backend serving the disks; the VD attached to dom0 as `xvda` and an ext4 root
//! filesystem (busybox, an init script and a manifest of its files) written into it through
//! the VBD's NBD export with `qemu-img`; detached, and attached to domain 1; QEMU boots
//! Debian's cloud kernel under TCG with `root=/dev/vda` on the VBD's vhost-user-blk socket,
//! and the guest's init checks the files against the manifest, writes a file of its own,
//! syncs and powers off; back in dom0 the VD is read through NBD, `e2fsck -fn` finds it
//! clean, and the guest's file is there beside the originals.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{check_clean, check_files, root_tree, shell};
use crate::guest::{run_guest, GuestArtefacts, GuestConfig, GuestDisk, Initramfs, RootFilesystem};
use crate::{write_devices, Backend, DiskImages, DiskSpec, Vdisk};

/// Each disk: an 8 MiB partition, the 12 MiB one the pool gets, and the rest. A 16 MiB VD
/// in 4 MiB extents takes the whole of hda2 and one extent of hdb2.
const DISK_BYTES: u64 = 64 << 20;
const PARTITIONS: &str = "label: dos\n,8M\n,12M\n,\n";
const EXTENT_SIZE: &str = "4M";
const VD_SIZE: &str = "16M";
const VD_SECTORS: u64 = 16 << 11;

/// The file the guest writes, and what it holds (the kernel release and hostname are the
/// guest's own, so a file the host made could not pass).
const GUEST_FILE: &str = "var/written-by-domain-1";

/// The guest's `/init` body (run under the result protocol of [`crate::guest`], `set -e`): check
/// every file against the manifest, report what it booted from, write a file, sync. Root is
/// remounted read-only last, so ext4 checkpoints its journal and the filesystem is clean
/// when the guest powers off (`e2fsck -n` cannot replay a journal).
const GUEST_BODY: &str = r#"cd /
sha256sum -c etc/manifest.sha256 > /tmp/checked
result manifest "$(grep -c ': OK$' /tmp/checked) files OK"
result root "$(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
result serial "$(cat /sys/block/vda/serial)"
result sectors "$(cat /sys/block/vda/size)"
echo "written by domain 1, Linux $(uname -r), hostname $(cat /etc/hostname)" > /var/written-by-domain-1
sync
result wrote /var/written-by-domain-1
mount -o remount,ro /
"#;

/// What the walkthrough runs: the `vdisk` and `vbd-backend` binaries and the guest's kernel,
/// modules and busybox.
#[derive(Clone, Debug)]
pub struct Tools {
    pub vdisk: PathBuf,
    pub backend: PathBuf,
    pub artefacts: GuestArtefacts,
}

/// Run the walkthrough in `dir` (emptied first). Returns its last line, the summary.
pub fn run(dir: &Path, tools: &Tools) -> Result<String, String> {
    let started = Instant::now();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;

    println!("\n# Make two disk images, each with three partitions");
    let disk = |name: &str| DiskSpec {
        name: name.to_owned(),
        size_bytes: DISK_BYTES,
        partitions: PARTITIONS.to_owned(),
    };
    let images = DiskImages::create(dir, &[disk("hda"), disk("hdb")])?;
    let devices = dir.join("devices.toml");
    write_devices(&devices, images.devices())?;
    shell(Command::new("cat").arg(&devices))?;
    let vdisk = Vdisk {
        binary: tools.vdisk.clone(),
        database: dir.join("vdisk.sqlite"),
        devices: devices.clone(),
    };
    println!(
        "$ export VDISK_DB={} VDISK_DEVICES={}",
        vdisk.database.display(),
        vdisk.devices.display()
    );

    println!("\n# Put one partition of each disk in the free pool, in {EXTENT_SIZE} extents");
    vdisk.run(&["format", "phy:hda2", "--extent-size", EXTENT_SIZE])?;
    vdisk.run(&["format", "phy:hdb2", "--extent-size", EXTENT_SIZE])?;
    vdisk.run(&["pool"])?;

    println!("\n# Create a virtual disk larger than either partition, so it spans both disks");
    let id = vdisk.run(&["create", VD_SIZE])?.trim().to_owned();
    id.parse::<u64>()
        .map_err(|_| format!("`vdisk create` printed `{id}`, not an id"))?;
    let shown = vdisk.run(&["show", &id])?;
    for device in ["3:0", "3:64"] {
        if !shown.contains(device) {
            return Err(format!("VD {id} has no extent on {device}: {shown}"));
        }
    }
    let uname = format!("vd:{id}");

    println!(
        "\n# Start vbd-backend on the disks: dom0's hypercalls on control.sock, a socket per VBD"
    );
    let run_dir = dir.join("run");
    let backend = Backend::start(
        &tools.backend,
        &devices,
        &run_dir,
        &[],
        &dir.join("vbd-backend.log"),
    )?;
    let hv = backend.endpoint();

    println!("\n# Attach the VD to dom0 read-write as xvda: it appears as an NBD export");
    vdisk.run(&["--hv", &hv, "attach", &uname, "xvda", "0", "rw"])?;
    expect_socket(&backend.nbd_socket("xvda"), true)?;
    let export = backend.nbd_url("xvda");
    shell(Command::new("qemu-img").args(["info", "-f", "raw", &export]))?;

    println!("\n# Make an ext4 root filesystem (busybox, an init script, a manifest) and write it");
    println!("# into xvda through the export");
    let mut root = RootFilesystem::new(GUEST_BODY);
    for (path, contents) in root_tree() {
        root.file(path, contents);
    }
    let image = dir.join("rootfs.img");
    root.build(
        &tools.artefacts,
        &dir.join("rootfs"),
        &image,
        VD_SECTORS * 512,
    )?;
    shell(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&image)
            .arg(&export),
    )?;
    shell(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&image)
            .arg(&export),
    )?;

    println!("\n# Detach it from dom0 and attach it to domain 1 read-write as xvda:");
    println!("# a vhost-user-blk socket appears");
    vdisk.run(&["--hv", &hv, "detach", "xvda", "0"])?;
    expect_socket(&backend.nbd_socket("xvda"), false)?;
    vdisk.run(&["--hv", &hv, "attach", &uname, "xvda", "1", "rw"])?;
    let socket = backend.vhost_user_socket(1, "xvda");
    expect_socket(&socket, true)?;
    vdisk.run(&["--hv", &hv, "vbds", "all"])?;

    println!(
        "\n# Boot domain 1: Debian's cloud kernel in QEMU (TCG), root=/dev/vda on the socket."
    );
    println!("# Its initramfs only loads the virtio modules and mounts root=; then the root");
    println!("# filesystem's /init checks the manifest, writes a file, syncs and powers off");
    let guest_dir = dir.join("domain1");
    fs::create_dir_all(&guest_dir).map_err(|error| format!("{}: {error}", guest_dir.display()))?;
    let loader = guest_dir.join("loader.cpio.gz");
    Initramfs::root_loader(&tools.artefacts).write(&loader)?;
    let mut config = GuestConfig::new(&guest_dir, &tools.artefacts, &loader);
    config.append.push_str(" root=/dev/vda");
    config.disks = vec![GuestDisk::vhost_user(&socket)];
    config.timeout = Duration::from_secs(120);
    let report = run_guest(&config)?;
    for (key, value) in &report.results {
        println!("domain 1 reports {key}: {value}");
    }
    println!(
        "domain 1 powered off after {:.1} s (console: {})",
        report.elapsed.as_secs_f64(),
        guest_dir.join("console.log").display()
    );
    let files = root_tree().len() + 2;
    let expected = [
        ("manifest", format!("{files} files OK")),
        ("root", "/dev/vda / ext4".to_owned()),
        ("serial", uname.clone()),
        ("sectors", VD_SECTORS.to_string()),
    ];
    for (key, value) in expected {
        if report.get(key)? != value {
            return Err(format!(
                "domain 1 reported {key} `{}`, expected `{value}`",
                report.get(key)?
            ));
        }
    }

    println!("\n# Back in dom0: detach it from domain 1, attach it to dom0 read-only, and read it");
    println!("# through NBD");
    vdisk.run(&["--hv", &hv, "detach", "xvda", "1"])?;
    expect_socket(&socket, false)?;
    vdisk.run(&["--hv", &hv, "attach", &uname, "xvda", "0", "r"])?;
    let readback = dir.join("readback.img");
    shell(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&export)
            .arg(&readback),
    )?;

    println!("\n# Check it: a clean filesystem, the guest's file, and every original file");
    check_clean(&readback)?;
    let request = format!("cat /{GUEST_FILE}");
    let note = shell(
        Command::new("debugfs")
            .args(["-R", &request])
            .arg(&readback),
    )?;
    let expected_note = format!(
        "written by domain 1, Linux {}, hostname guest1\n",
        tools.artefacts.abi
    );
    if note != expected_note {
        return Err(format!(
            "/{GUEST_FILE} holds {note:?}, expected {expected_note:?}"
        ));
    }
    check_files(&readback, &dir.join("dumped"))?;
    vdisk.run(&["--hv", &hv, "detach", "xvda", "0"])?;

    println!("\n# Stop vbd-backend: requests finished, disks flushed, sockets removed, exit 0");
    print!("{}", backend.stop()?);
    let summary = format!(
        "walkthrough passed in {:.1} s: domain 1 booted Linux from {uname}, a VD on both disks, \
         checked {files} files and left one of its own",
        started.elapsed().as_secs_f64()
    );
    println!("\n{summary}");
    Ok(summary)
}

/// The socket exists (`true`) or is gone (`false`) once the command that makes or removes
/// it has returned.
fn expect_socket(path: &Path, exists: bool) -> Result<(), String> {
    match (path.exists(), exists) {
        (true, true) => {
            println!("{} is there", path.display());
            Ok(())
        }
        (false, false) => {
            println!("{} is gone", path.display());
            Ok(())
        }
        (false, true) => Err(format!("{} does not exist", path.display())),
        (true, false) => Err(format!("{} is still there", path.display())),
    }
}
