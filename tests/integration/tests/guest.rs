//! Real Linux guests (Debian's cloud kernel under TCG) on qemu-storage-daemon's vhost-user-blk
//! export and on QEMU's own virtio-blk: what the guest reads and writes is checked from the
//! host, byte for byte.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vbd_integration::{guest_artefacts, noise, sha256, test_dir};
use vbd_machine::guest::{
    fio_layer, run_guest, run_job, Aio, Cache, Engine, FioJob, FioReport, FioRun, Guest,
    GuestConfig, GuestDisk, Initramfs, RootFilesystem, StorageDaemon,
};
use vbd_machine::process::output;

/// Every byte of `image` equals `original`, except `pattern` at `offset`.
fn assert_written_exactly(image: &Path, original: &[u8], pattern: &[u8], offset: usize) {
    let now = fs::read(image).unwrap();
    assert_eq!(
        now.len(),
        original.len(),
        "{} changed size",
        image.display()
    );
    let end = offset + pattern.len();
    assert!(
        now[offset..end] == *pattern,
        "{}: the pattern is not at byte {offset}",
        image.display()
    );
    let first_other = (0..now.len())
        .filter(|index| !(offset..end).contains(index))
        .find(|&index| now[index] != original[index]);
    assert_eq!(
        first_other,
        None,
        "{}: a byte outside the pattern changed",
        image.display()
    );
}

#[test]
fn a_guest_reads_and_writes_a_qsd_disk_and_a_builtin_one_at_the_right_bytes() {
    let dir = test_dir("guest-disks");
    let artefacts = guest_artefacts();
    let (vda_image, vdb_image) = (dir.join("vda.img"), dir.join("vdb.img"));
    let (vda_original, vdb_original) = (noise(8 << 20, 1), noise(4 << 20, 2));
    fs::write(&vda_image, &vda_original).unwrap();
    fs::write(&vdb_image, &vdb_original).unwrap();
    let (vda_sum, vdb_sum) = (sha256(&vda_image), sha256(&vdb_image));
    let mut pattern = b"vbd-machine guest pattern\n".to_vec();
    pattern.extend(noise(4096 - pattern.len(), 3));
    // Sectors that are not 4 KiB aligned, so an off-by-a-block translation shows.
    let (vda_sector, vdb_sector) = (12_345, 777);
    // A block the host overwrites while the guest runs, which the guest reads after.
    let host_block = 1000;
    let host_bytes = noise(4096, 6);

    let daemon = StorageDaemon::start(&dir, &vda_image, 1).unwrap();
    let body = format!(
        r#"wait_for_block /dev/vda
wait_for_block /dev/vdb
for disk in vda vdb; do
    result $disk.sectors "$(cat /sys/block/$disk/size)"
    result $disk.sha256 "$(sha256sum < /dev/$disk | cut -d' ' -f1)"
done
dd if=/etc/pattern of=/dev/vda bs=512 seek={vda_sector} oflag=direct conv=fsync 2>/dev/null
dd if=/etc/pattern of=/dev/vdb bs=512 seek={vdb_sector} oflag=direct conv=fsync 2>/dev/null
result vda.readback "$(dd if=/dev/vda bs=512 skip={vda_sector} count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
wait_for_host overwritten
result vda.host_block "$(dd if=/dev/vda bs=4096 skip={host_block} count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
"#
    );
    let mut initramfs = Initramfs::guest(artefacts, &body);
    initramfs.file("etc/pattern", pattern.clone(), 0o644);
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = GuestConfig::new(&dir, artefacts, &initrd);
    config.disks = vec![
        GuestDisk::vhost_user(&daemon.vhost_user_socket),
        GuestDisk::Drive {
            image: vdb_image.clone(),
            cache: Cache::Writeback,
            aio: Aio::Threads,
            read_only: false,
            queues: 1,
        },
    ];
    config.control = true;
    let mut guest = Guest::start(&config).unwrap();
    guest.wait_for_result("vda.readback").unwrap();
    // The guest's O_DIRECT write is in the image while the guest still runs.
    let image = fs::read(&vda_image).unwrap();
    let at = vda_sector * 512;
    assert!(image[at..at + pattern.len()] == *pattern);
    let mut vda_expected = vda_original.clone();
    vda_expected[host_block * 4096..(host_block + 1) * 4096].copy_from_slice(&host_bytes);
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(&vda_image).unwrap();
        file.write_all_at(&host_bytes, (host_block * 4096) as u64)
            .unwrap();
        file.sync_all().unwrap();
    }
    guest.release("overwritten").unwrap();
    let report = guest.finish().unwrap_or_else(|error| panic!("{error}"));
    eprintln!("guest ran in {:.1} s", report.elapsed.as_secs_f64());
    daemon.stop().unwrap();

    let host_file = dir.join("host-block");
    fs::write(&host_file, &host_bytes).unwrap();
    assert_eq!(
        report.get("vda.host_block"),
        Ok(sha256(&host_file).as_str())
    );
    assert_eq!(report.get("vda.sectors"), Ok("16384"));
    assert_eq!(report.get("vdb.sectors"), Ok("8192"));
    assert_eq!(report.get("vda.sha256"), Ok(vda_sum.as_str()));
    assert_eq!(report.get("vdb.sha256"), Ok(vdb_sum.as_str()));
    let pattern_file = dir.join("pattern");
    fs::write(&pattern_file, &pattern).unwrap();
    assert_eq!(
        report.get("vda.readback"),
        Ok(sha256(&pattern_file).as_str())
    );
    assert_written_exactly(&vda_image, &vda_expected, &pattern, vda_sector * 512);
    assert_written_exactly(&vdb_image, &vdb_original, &pattern, vdb_sector * 512);
}

#[test]
fn a_guest_boots_from_an_ext4_root_on_qsd_checks_its_manifest_and_leaves_a_file() {
    let dir = test_dir("guest-root");
    let artefacts = guest_artefacts();
    let body = r#"cd /
sha256sum -c etc/manifest.sha256 > /tmp/checked
result verified "$(grep -c ': OK$' /tmp/checked)"
result root "$(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
echo "written by the guest on $(cat /etc/hostname)" > /var/guest-note
sync
"#;
    let mut root = RootFilesystem::new(body);
    root.file("etc/hostname", "guest1\n")
        .file("var/lib/blob", noise(300 << 10, 4));
    let image = dir.join("root.img");
    root.build(artefacts, &dir.join("rootfs"), &image, 16 << 20)
        .unwrap();
    let daemon = StorageDaemon::start(&dir, &image, 1).unwrap();
    let initrd = dir.join("loader.cpio.gz");
    Initramfs::root_loader(artefacts).write(&initrd).unwrap();
    let mut config = GuestConfig::new(&dir, artefacts, &initrd);
    config.append.push_str(" root=/dev/vda");
    config.disks = vec![GuestDisk::vhost_user(&daemon.vhost_user_socket)];
    let report = run_guest(&config).unwrap_or_else(|error| panic!("{error}"));
    eprintln!("guest ran in {:.1} s", report.elapsed.as_secs_f64());
    daemon.stop().unwrap();

    // busybox, /init and the two files.
    assert_eq!(report.get("verified"), Ok("4"));
    assert_eq!(report.get("root"), Ok("/dev/vda / ext4"));
    output(Command::new("e2fsck").args(["-f", "-n"]).arg(&image)).unwrap();
    let note = output(
        Command::new("debugfs")
            .args(["-R", "cat /var/guest-note"])
            .arg(&image),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&note.stdout),
        "written by the guest on guest1\n"
    );
}

#[test]
fn a_failing_command_in_the_guest_fails_the_run_and_still_powers_off() {
    let dir = test_dir("guest-failure");
    let artefacts = guest_artefacts();
    let initrd = dir.join("initramfs.cpio.gz");
    Initramfs::guest(artefacts, "result before 1\nfalse\nresult after 1")
        .write(&initrd)
        .unwrap();
    let error = run_guest(&GuestConfig::new(&dir, artefacts, &initrd)).unwrap_err();
    assert_eq!(
        error,
        "the guest failed: the script stopped at a failing command (status 1)"
    );
    let console = fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(!console.contains("RESULT after"), "{console}");
}

#[test]
fn fio_runs_in_the_guest_on_qsd_and_its_reports_add_up() {
    let dir = test_dir("guest-fio");
    let artefacts = guest_artefacts();
    let layer = fio_layer().unwrap();
    let image = dir.join("disk.img");
    fs::write(&image, noise(32 << 20, 5)).unwrap();
    let daemon = StorageDaemon::start(&dir, &image, 1).unwrap();
    let runtime = Duration::from_secs(2);
    let mut random = FioJob::random_read("randread_qd32", 32, runtime);
    random.engine = Engine::IoUring;
    let jobs = [
        FioJob::sequential_read("seq_read", runtime),
        FioJob::sequential_write("seq_write", runtime),
        random,
    ];
    let mut body = "wait_for_block /dev/vda\nresult fio.version \"$(fio --version)\"\n".to_owned();
    for job in &jobs {
        body.push_str(&job.guest_command("/dev/vda"));
    }
    let mut initramfs = Initramfs::guest(artefacts, &body);
    initramfs.layer(&layer);
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = GuestConfig::new(&dir, artefacts, &initrd);
    config.timeout = Duration::from_secs(180);
    config.control = true;
    config.disks = vec![GuestDisk::vhost_user(&daemon.vhost_user_socket)];
    let mut guest = Guest::start(&config).unwrap();
    let runs: Vec<FioRun> = jobs
        .iter()
        .map(|job| run_job(&mut guest, job, Some(daemon.pid())).unwrap())
        .collect();
    let report = guest.finish().unwrap_or_else(|error| panic!("{error}"));
    daemon.stop().unwrap();

    assert_eq!(report.get("fio.version"), Ok("fio-3.33"));
    for (job, run) in jobs.iter().zip(&runs) {
        let (done, idle) = if job.name == "seq_write" {
            (run.report.write, run.report.read)
        } else {
            (run.report.read, run.report.write)
        };
        assert!(done.total_ios > 0, "{}: no I/O", job.name);
        assert_eq!(
            done.io_bytes,
            done.total_ios * u64::from(job.block_size),
            "{}",
            job.name
        );
        assert_eq!(idle.total_ios, 0, "{}", job.name);
        // The report the host parsed is the one the guest printed.
        assert_eq!(
            FioReport::parse(report.get(&job.key()).unwrap()),
            Ok(run.report)
        );
        let server_cpu = run.server_cpu.unwrap();
        assert!(server_cpu > Duration::ZERO, "{}: qsd used no CPU", job.name);
        eprintln!(
            "{}: {:.1} MiB/s, {:.0} IOPS, qemu-storage-daemon {:.1} us of CPU per I/O (TCG guest)",
            job.name,
            done.mib_per_second(),
            done.iops,
            server_cpu.as_secs_f64() * 1e6 / done.total_ios as f64
        );
    }
    eprintln!("guest ran {:.1} s", report.elapsed.as_secs_f64());
}
