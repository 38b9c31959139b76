//! Real Linux guests (Debian's cloud kernel under TCG, a busybox initramfs) doing their disk
//! I/O through vbd-backend's vhost-user-blk sockets, every byte checked against the disk
//! images from the host: reads in VBD order over scattered extents, writes at exactly the
//! translated offsets, read-only VBDs, the sharing level between a guest's VBD and dom0's,
//! live growth, a delete under a guest's writes, and a backend killed under a guest.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use host_tools::hypervisor::HypervisorError;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Error, Label, Mode, SharingLevel};
use vbd_integration::{guest_artefacts, noise, sha256_of, test_dir, TestBackend};
use vbd_machine::guest::{Guest, GuestConfig, GuestDisk, GuestReport, Initramfs};
use vbd_machine::process::output;
use vbd_machine::DiskSpec;

const SECTOR: u64 = 512;

/// An unpartitioned disk image of `mib` MiB.
fn disk(name: &str, mib: u64) -> DiskSpec {
    DiskSpec {
        name: name.to_owned(),
        size_bytes: mib << 20,
        partitions: String::new(),
    }
}

fn device(name: &str) -> DeviceNumber {
    DeviceNumber::from_name(name).unwrap()
}

fn refusal<T: std::fmt::Debug>(result: Result<T, HypervisorError>) -> Error {
    match result {
        Err(HypervisorError::Refused { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Fill every disk image with its own noise; returns the contents by disk name.
fn fill_images(test: &TestBackend) -> BTreeMap<String, Vec<u8>> {
    test.images
        .iter()
        .enumerate()
        .map(|(index, (disk, path))| {
            let contents = noise(disk.size_bytes as usize, 40 + index as u64);
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .write_all_at(&contents, 0)
                .unwrap();
            (disk.name.clone(), contents)
        })
        .collect()
}

/// Every image equals `expected`; a difference is reported at its first byte.
/// The images of `test`'s one disk, hda, as they are now.
fn fill_images_of(test: &TestBackend) -> BTreeMap<String, Vec<u8>> {
    let mut images = BTreeMap::new();
    images.insert("hda".to_owned(), fs::read(test.image("hda")).unwrap());
    images
}

fn assert_images(test: &TestBackend, expected: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, contents) in expected {
        let now = fs::read(test.image(name)).unwrap();
        assert_eq!(now.len(), contents.len(), "{name} changed size {when}");
        if let Some(at) = (0..now.len()).find(|&index| now[index] != contents[index]) {
            panic!(
                "{name}: byte {at} (sector {}) is not what it should be {when}",
                at as u64 / SECTOR
            );
        }
    }
}

/// A VBD's extents in VBD order: disk name, first sector, sectors.
struct Layout(Vec<(&'static str, u64, u64)>);

impl Layout {
    fn extents(&self) -> Vec<Extent> {
        self.0
            .iter()
            .map(|&(disk, start, count)| Extent::new(device(disk), start, count).unwrap())
            .collect()
    }

    fn sectors(&self) -> u64 {
        self.0.iter().map(|&(_, _, count)| count).sum()
    }

    /// Where each extent starts in the VBD.
    fn boundaries(&self) -> Vec<u64> {
        self.0
            .iter()
            .scan(0, |start, &(_, _, count)| {
                let this = *start;
                *start += count;
                Some(this)
            })
            .collect()
    }

    /// The VBD's bytes, taken from `images` in VBD order.
    fn gather(&self, images: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|&(disk, start, count)| {
                images[disk][(start * SECTOR) as usize..((start + count) * SECTOR) as usize]
                    .to_vec()
            })
            .collect()
    }

    /// `images` with the VBD's extents replaced by `vbd`, the VBD's bytes in VBD order.
    fn scatter(&self, images: &BTreeMap<String, Vec<u8>>, vbd: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut result = images.clone();
        let mut offset = 0;
        for &(disk, start, count) in &self.0 {
            let length = (count * SECTOR) as usize;
            let at = (start * SECTOR) as usize;
            result.get_mut(disk).unwrap()[at..at + length]
                .copy_from_slice(&vbd[offset..offset + length]);
            offset += length;
        }
        result
    }
}

/// Make VBD `vdevice` of `domain` from `layout` through control.sock, as `vdisk` cannot (its
/// VBDs are one VD or one device): labelled `label`, in `mode`.
fn make_vbd(
    test: &TestBackend,
    domain: u32,
    vdevice: &str,
    mode: Mode,
    label: &str,
    layout: &Layout,
) {
    let mut client = test.client();
    client
        .create(domain, device(vdevice), mode, Label::new(label).unwrap())
        .unwrap();
    client
        .set_extents(
            domain,
            device(vdevice),
            &layout.extents(),
            SharingLevel::ReadersOnly,
        )
        .unwrap();
}

/// The guest's `RESULT` of `key`, which must be there.
fn result<'a>(report: &'a GuestReport, key: &str) -> &'a str {
    report.get(key).unwrap_or_else(|error| panic!("{error}"))
}

/// Boot a guest in `dir` on `disks` (its vda, vdb, ... in order) whose initramfs runs
/// `body` with `files` added; with a control port for `wait_for_host`.
fn start_guest(
    dir: &Path,
    body: &str,
    files: &[(String, Vec<u8>)],
    disks: Vec<GuestDisk>,
) -> Guest {
    fs::create_dir_all(dir).unwrap();
    let artefacts = guest_artefacts();
    let mut initramfs = Initramfs::guest(artefacts, body);
    for (path, contents) in files {
        initramfs.file(path, contents.clone(), 0o644);
    }
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = GuestConfig::new(dir, artefacts, &initrd);
    config.control = true;
    config.disks = disks;
    Guest::start(&config).unwrap()
}

/// `qemu-img convert` dom0's VBD `vdevice` out through its NBD export into `file`.
fn read_export(test: &TestBackend, vdevice: &str, file: &Path) -> Vec<u8> {
    output(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(test.backend().nbd_url(vdevice))
            .arg(file),
    )
    .unwrap();
    fs::read(file).unwrap()
}

/// Out of order, over both disks, at odd sectors and of odd lengths, one a single sector.
const SCATTERED: [(&str, u64, u64); 6] = [
    ("hdb", 20_001, 777),
    ("hda", 3, 1500),
    ("hdb", 100, 2048),
    ("hda", 9000, 1),
    ("hda", 5000, 3000),
    ("hdb", 15_000, 4096),
];
/// A read-only VBD beside it, on sectors of hda no other VBD has.
const READ_ONLY: [(&str, u64, u64); 1] = [("hda", 12_000, 2048)];

#[test]
fn a_guest_reads_scattered_extents_in_vbd_order_writes_only_where_they_translate_and_cannot_write_a_read_only_vbd(
) {
    let dir = test_dir("backend-guest-data");
    let test = TestBackend::start(
        &dir,
        &[disk("hda", 16), disk("hdb", 16), disk("hdc", 16)],
        &[],
    );
    let scattered = Layout(SCATTERED.to_vec());
    let read_only = Layout(READ_ONLY.to_vec());
    make_vbd(
        &test,
        1,
        "xvda",
        Mode::READ | Mode::WRITE,
        "scattered",
        &scattered,
    );
    make_vbd(&test, 1, "xvdb", Mode::READ, "read-only", &read_only);
    // A VD on the third disk, attached by vdisk as a guest's disk is, for the sharing checks.
    test.vdisk_ok(&["format", "phy:hdc", "--extent-size", "1M"]);
    let id = test.vdisk_ok(&["create", "4M"]).trim().to_owned();
    let uname = format!("vd:{id}");
    test.vdisk_ok(&["attach", &uname, "xvdc", "1", "rw"]);
    let originals = fill_images(&test);

    // Writes of distinct noise: the first and last sectors, across every extent boundary
    // (one over the single-sector extent, so over three extents), and 1 MiB over two.
    let size = scattered.sectors();
    let mut writes: Vec<(u64, Vec<u8>)> = vec![(0, noise(4096, 1)), (size - 8, noise(4096, 2))];
    for (index, &boundary) in scattered.boundaries().iter().enumerate().skip(1) {
        writes.push((boundary - 4, noise(4096, 10 + index as u64)));
    }
    writes.push((2048, noise(1 << 20, 3)));
    let marker = noise(4096, 4);
    let mut files = vec![("etc/marker".to_owned(), marker.clone())];
    let mut body = r#"for disk in vda vdb vdc; do wait_for_block /dev/$disk; done
result vda.sectors "$(cat /sys/block/vda/size)"
result vda.serial "$(cat /sys/block/vda/serial)"
result vda.sha256 "$(sha256sum < /dev/vda | cut -d' ' -f1)"
"#
    .to_owned();
    for (index, (sector, bytes)) in writes.iter().enumerate() {
        files.push((format!("etc/write-{index}"), bytes.clone()));
        // 1 MiB writes go as one, at a 1 MiB offset; the others sector by sector.
        let (block, seek) = if bytes.len() == 1 << 20 {
            ("1M", sector / 2048)
        } else {
            ("512", *sector)
        };
        body.push_str(&format!(
            "dd if=/etc/write-{index} of=/dev/vda bs={block} seek={seek} oflag=direct conv=fsync 2>/dev/null\n"
        ));
    }
    body.push_str(
        r#"echo 3 > /proc/sys/vm/drop_caches
result vda.sha256.after "$(sha256sum < /dev/vda | cut -d' ' -f1)"
result vdb.ro "$(cat /sys/block/vdb/ro)"
result vdb.sha256 "$(sha256sum < /dev/vdb | cut -d' ' -f1)"
! dd if=/etc/write-0 of=/dev/vdb bs=512 count=8 oflag=direct 2>/tmp/refused || fail "vdb took a write"
result vdb.write "$(head -n1 /tmp/refused)"
blockdev --setrw /dev/vdb
! dd if=/etc/write-0 of=/dev/vdb bs=512 count=8 oflag=direct 2>/tmp/refused || fail "vdb took a write after --setrw"
result vdb.write.setrw "$(head -n1 /tmp/refused)"
dd if=/etc/marker of=/dev/vdc bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null
wait_for_host checked
result vdc.sha256 "$(dd if=/dev/vdc bs=4096 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
"#,
    );
    let backend = test.backend();
    let disks = ["xvda", "xvdb", "xvdc"]
        .map(|vdevice| GuestDisk::vhost_user(backend.vhost_user_socket(1, vdevice)));
    let mut guest = start_guest(&dir, &body, &files, disks.to_vec());

    // While the guest writes its VD: the sharing level holds between its VBD and dom0's.
    guest.wait_for_result("vdb.write.setrw").unwrap();
    check_sharing_beside_a_guest_writer(&test, &uname, &marker);
    guest.release("checked").unwrap();
    let report = guest.finish().unwrap_or_else(|error| panic!("{error}"));
    eprintln!("the guest ran {:.1} s", report.elapsed.as_secs_f64());

    let scratch = dir.join("scratch");
    let before = scattered.gather(&originals);
    assert_eq!(result(&report, "vda.sectors"), size.to_string());
    assert_eq!(result(&report, "vda.serial"), "scattered");
    assert_eq!(result(&report, "vda.sha256"), sha256_of(&before, &scratch));
    let mut after = before;
    for (sector, bytes) in &writes {
        let at = (sector * SECTOR) as usize;
        after[at..at + bytes.len()].copy_from_slice(bytes);
    }
    assert_eq!(
        result(&report, "vda.sha256.after"),
        sha256_of(&after, &scratch)
    );
    assert_eq!(result(&report, "vdb.ro"), "1");
    assert_eq!(
        result(&report, "vdb.sha256"),
        sha256_of(&read_only.gather(&originals), &scratch)
    );
    for key in ["vdb.write", "vdb.write.setrw"] {
        assert!(
            result(&report, key).contains("Operation not permitted"),
            "{key}: {}",
            result(&report, key)
        );
    }
    assert_eq!(result(&report, "vdc.sha256"), sha256_of(&marker, &scratch));
    // Byte for byte: the guest's writes are in the extents they translate to, and nothing
    // else on any disk changed (the read-only VBD's sectors included), but for the marker
    // at the start of the VD's first extent.
    let mut expected = scattered.scatter(&originals, &after);
    let (disk, vd_start, _) = vd_layout(&test, &id).0[0];
    assert_eq!(disk, "hdc");
    let at = (vd_start * SECTOR) as usize;
    expected.get_mut("hdc").unwrap()[at..at + marker.len()].copy_from_slice(&marker);
    assert_images(&test, &expected, "after the guest ran");
    test.stop();
}

/// With domain 1 writing `uname` as its xvdc: vdisk and the backend refuse dom0 a second
/// writer at levels 0 and 1 and a reader at level 0, and let a reader in at level 1, which
/// reads what the guest wrote; the backend lets anything in at level 2 only.
fn check_sharing_beside_a_guest_writer(test: &TestBackend, uname: &str, marker: &[u8]) {
    for (mode, safety) in [("r", "0"), ("rw", "0"), ("rw", "1")] {
        let refused = test.vdisk(&["attach", uname, "xvda", "0", mode, "--safety", safety]);
        assert_eq!(
            refused.status.code(),
            Some(1),
            "attach {mode} --safety {safety} beside a guest's writer: {refused:?}"
        );
    }
    test.vdisk_ok(&["attach", uname, "xvda", "0", "r", "--safety", "1"]);
    let read = read_export(test, "xvda", &test.dir.join("shared.img"));
    assert!(
        read[..marker.len()] == *marker,
        "dom0 does not read what the guest wrote"
    );
    test.vdisk_ok(&["detach", "xvda", "0"]);

    // The backend itself, asked without vdisk's check: the level of each request rules.
    let lookup = test.vdisk_ok(&["lookup", uname]);
    let extents: Vec<Extent> = lookup
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Extent::new(
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
            .unwrap()
        })
        .collect();
    let mut client = test.client();
    let (reader, writer) = (device("xvdd"), device("xvde"));
    client.create(0, reader, Mode::READ, Label::EMPTY).unwrap();
    client
        .create(0, writer, Mode::READ | Mode::WRITE, Label::EMPTY)
        .unwrap();
    assert_eq!(
        refusal(client.set_extents(0, reader, &extents, SharingLevel::ReadersOnly)),
        Error::Busy
    );
    client
        .set_extents(0, reader, &extents, SharingLevel::SingleWriter)
        .unwrap();
    for level in [SharingLevel::ReadersOnly, SharingLevel::SingleWriter] {
        assert_eq!(
            refusal(client.set_extents(0, writer, &extents, level)),
            Error::Busy
        );
    }
    client
        .set_extents(0, writer, &extents, SharingLevel::Unrestricted)
        .unwrap();
    client.delete(0, reader).unwrap();
    client.delete(0, writer).unwrap();
}

/// The extents of VD `id`, from `vdisk show --json`: disk name (by device), start, sectors.
fn vd_layout(test: &TestBackend, id: &str) -> Layout {
    let shown: serde_json::Value =
        serde_json::from_str(&test.vdisk_ok(&["show", id, "--json"])).unwrap();
    let names: BTreeMap<String, &'static str> = ["hda", "hdb", "hdc"]
        .into_iter()
        .map(|name| (device(name).to_string(), name))
        .collect();
    Layout(
        shown["extents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|extent| {
                (
                    names[extent["device"].as_str().unwrap()],
                    extent["start_sector"].as_u64().unwrap(),
                    extent["nr_sectors"].as_u64().unwrap(),
                )
            })
            .collect(),
    )
}

/// What the guest's write loop leaves on a VBD of `blocks` 4 KiB blocks after its first
/// `written` writes succeeded: block `k` holds `write J\n`, zero-padded, for the last such
/// J with `J % blocks == k`, or zeros.
fn round_robin_contents(blocks: u64, written: u64) -> Vec<u8> {
    let mut contents = vec![0u8; (blocks * 4096) as usize];
    for write in written.saturating_sub(blocks)..written {
        let at = ((write % blocks) * 4096) as usize;
        let text = format!("write {write}\n");
        contents[at..at + 4096].fill(0);
        contents[at..at + text.len()].copy_from_slice(text.as_bytes());
    }
    contents
}

#[test]
fn a_guest_sees_its_disk_grow_live_and_a_vbd_deleted_under_its_writes_fails_them_and_stays_as_it_was(
) {
    let dir = test_dir("backend-guest-live");
    let test = TestBackend::start(&dir, &[disk("hda", 32)], &[]);
    test.vdisk_ok(&["format", "phy:hda", "--extent-size", "1M"]);
    let growing = test.vdisk_ok(&["create", "4M"]).trim().to_owned();
    let deleted = test.vdisk_ok(&["create", "4M"]).trim().to_owned();
    test.vdisk_ok(&["attach", &format!("vd:{growing}"), "xvda", "1", "rw"]);
    test.vdisk_ok(&["attach", &format!("vd:{deleted}"), "xvdb", "1", "rw"]);
    let tail = noise(4096, 7);
    let body = r#"wait_for_block /dev/vda
wait_for_block /dev/vdb
before=$(cat /sys/block/vda/size)
result vda.sectors.before "$before"
wait_for_host grown
tries=0
while [ "$(cat /sys/block/vda/size)" = "$before" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || fail "vda still has $before sectors 10 s after the grow"
    sleep 0.1
done
after=$(cat /sys/block/vda/size)
result vda.sectors.after "$after"
dd if=/etc/tail of=/dev/vda bs=4096 seek=$((after / 8 - 1)) oflag=direct conv=fsync 2>/dev/null
result vda.tail "$(dd if=/dev/vda bs=4096 skip=$((after / 8 - 1)) count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
blocks=$(( $(cat /sys/block/vdb/size) / 8 ))
result vdb.writing "$blocks blocks"
written=0
while [ "$written" -lt 1000000 ]; do
    printf 'write %d\n' "$written" | dd of=/dev/vdb bs=4096 seek=$((written % blocks)) oflag=direct conv=sync 2>/dev/null || break
    written=$((written + 1))
done
[ "$written" -lt 1000000 ] || fail "vdb never failed"
result vdb.written "$written"
late=0
while [ "$late" -lt 20 ]; do
    ! printf 'late %d\n' "$late" | dd of=/dev/vdb bs=4096 seek="$late" oflag=direct conv=sync 2>/dev/null || fail "write $late after the failure succeeded"
    late=$((late + 1))
done
result vdb.late_failures "$late"
! dd if=/dev/vdb of=/dev/null bs=4096 count=1 iflag=direct 2>/tmp/read || fail "vdb still reads"
result vdb.read "$(head -n1 /tmp/read)"
"#;
    let backend = test.backend();
    let disks = ["xvda", "xvdb"]
        .map(|vdevice| GuestDisk::vhost_user(backend.vhost_user_socket(1, vdevice)));
    let mut guest = start_guest(
        &dir,
        body,
        &[("etc/tail".to_owned(), tail.clone())],
        disks.to_vec(),
    );

    guest.wait_for_result("vda.sectors.before").unwrap();
    test.vdisk_ok(&["resize", &growing, "8M"]);
    guest.release("grown").unwrap();

    guest.wait_for_result("vdb.writing").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let deleted_layout = vd_layout(&test, &deleted);
    test.vdisk_ok(&["detach", "xvdb", "1"]);
    // Once the delete has returned, nothing may change on the disk.
    let frozen = fs::read(test.image("hda")).unwrap();
    let report = guest.finish().unwrap_or_else(|error| panic!("{error}"));
    eprintln!("the guest ran {:.1} s", report.elapsed.as_secs_f64());
    let scratch = dir.join("scratch");

    assert_eq!(result(&report, "vda.sectors.before"), "8192");
    assert_eq!(result(&report, "vda.sectors.after"), "16384");
    assert_eq!(result(&report, "vda.tail"), sha256_of(&tail, &scratch));
    // The tail is in the last sectors of the extent the grow appended.
    let grown = vd_layout(&test, &growing);
    assert_eq!(grown.sectors(), 16384);
    let &(_, start, count) = grown.0.last().unwrap();
    let at = ((start + count) * SECTOR) as usize - tail.len();
    assert!(
        frozen[at..at + tail.len()] == *tail,
        "the tail is not where the grown VBD maps it"
    );

    let written: u64 = result(&report, "vdb.written").parse().unwrap();
    assert!(written > 0, "no write went through before the delete");
    assert_eq!(result(&report, "vdb.late_failures"), "20");
    assert!(
        result(&report, "vdb.read").contains("Input/output error"),
        "{}",
        result(&report, "vdb.read")
    );
    let mut images = BTreeMap::new();
    images.insert("hda".to_owned(), frozen.clone());
    assert!(
        deleted_layout.gather(&images) == round_robin_contents(1024, written),
        "the deleted VBD does not hold exactly the {written} writes the guest saw succeed"
    );
    images.insert("hda".to_owned(), frozen);
    assert_images(&test, &images, "after the delete returned");
    test.stop();
}

#[test]
fn a_guest_resumed_onto_its_vd_label_with_other_extents_gets_errors_and_leaves_that_vd_as_it_was_and_restore_serves_a_fresh_guest_the_same_bytes(
) {
    let dir = test_dir("backend-guest-kill");
    let mut test = TestBackend::start(&dir, &[disk("hda", 32)], &[]);
    test.vdisk_ok(&["format", "phy:hda", "--extent-size", "1M"]);
    let id = test.vdisk_ok(&["create", "4M"]).trim().to_owned();
    test.vdisk_ok(&["attach", &format!("vd:{id}"), "xvda", "1", "rw"]);
    let layout = vd_layout(&test, &id);
    // Another VD, whose extents a mistaken restore puts under the guest's socket.
    let other = test.vdisk_ok(&["create", "4M"]).trim().to_owned();
    let other_layout = vd_layout(&test, &other);
    let pattern = noise(4 << 20, 8);
    let late = noise(4096, 9);
    let body = r#"wait_for_block /dev/vda
dd if=/etc/pattern of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null
result vda.sha256 "$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
wait_for_host killed
result vda.reading started
! dd if=/dev/vda of=/tmp/read bs=4096 count=1 skip=5 iflag=direct 2>/tmp/read-error || fail "a read after the kill gave $(sha256sum < /tmp/read)"
result vda.read "$(head -n1 /tmp/read-error)"
! dd if=/etc/late of=/dev/vda bs=4096 count=1 seek=5 oflag=direct 2>/tmp/write-error || fail "a write after the kill succeeded"
result vda.write "$(head -n1 /tmp/write-error)"
"#;
    let socket = test.backend().vhost_user_socket(1, "xvda");
    let files = [
        ("etc/pattern".to_owned(), pattern.clone()),
        ("etc/late".to_owned(), late),
    ];
    let reconnecting = GuestDisk::VhostUser {
        socket: socket.clone(),
        queues: 1,
        reconnect: true,
    };
    let mut first = start_guest(&dir.join("first"), body, &files, vec![reconnecting]);
    first.wait_for_result("vda.sha256").unwrap();

    test.kill();
    assert!(
        socket.exists(),
        "a killed backend cannot remove its sockets"
    );
    first.release("killed").unwrap();
    first.wait_for_result("vda.reading").unwrap();
    // With no backend, QEMU leaves the guest's read in the ring: it neither fails nor
    // succeeds.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !first.console().contains("RESULT vda.read="),
        "the read ended with no backend: {}",
        first.console()
    );

    test.restart();
    let images_before = fill_images_of(&test);
    // The VBD comes back under its name and label, but on the other VD's extents: the
    // inflight region QEMU kept records another VBD, so every request fails.
    let mut client = test.client();
    let label = Label::new(&format!("vd:{id}")).unwrap();
    client
        .create(1, device("xvda"), Mode::READ | Mode::WRITE, label)
        .unwrap();
    client
        .set_extents(
            1,
            device("xvda"),
            &other_layout.extents(),
            SharingLevel::Unrestricted,
        )
        .unwrap();
    let report = first.finish().unwrap_or_else(|error| panic!("{error}"));
    let scratch = dir.join("scratch");
    assert_eq!(result(&report, "vda.sha256"), sha256_of(&pattern, &scratch));
    for key in ["vda.read", "vda.write"] {
        assert!(
            result(&report, key).contains("Input/output error"),
            "{key}: {}",
            result(&report, key)
        );
    }
    let mut images = BTreeMap::new();
    images.insert("hda".to_owned(), fs::read(test.image("hda")).unwrap());
    assert!(
        layout.gather(&images) == pattern,
        "the VD does not hold what the guest wrote before the kill, and only that"
    );
    assert!(
        other_layout.gather(&images) == other_layout.gather(&images_before),
        "the other VD's bytes changed under the resumed guest"
    );
    let log = fs::read_to_string(dir.join("backend-2.log")).unwrap();
    assert!(log.contains("an inflight record of another VBD"), "{log}");
    client.delete(1, device("xvda")).unwrap();
    let listed = test.vdisk_ok(&["vbds", "all"]);
    assert!(listed.contains("restorable"), "{listed}");
    let restored = test.vdisk_ok(&["restore"]);
    assert!(restored.contains("restored"), "{restored}");
    assert!(socket.exists());

    // A fresh guest on the restored VBD reads those bytes.
    let body = r#"wait_for_block /dev/vda
result vda.serial "$(cat /sys/block/vda/serial)"
result vda.sha256 "$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
"#;
    let fresh = start_guest(
        &dir.join("fresh"),
        body,
        &[],
        vec![GuestDisk::vhost_user(&socket)],
    );
    let report = fresh.finish().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(result(&report, "vda.serial"), format!("vd:{id}"));
    assert_eq!(result(&report, "vda.sha256"), sha256_of(&pattern, &scratch));
    test.stop();
}
