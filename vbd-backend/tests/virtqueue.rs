//! A guest's I/O without a guest: the test is the VMM (the vhost crate's front end, with
//! guest memory in a shared file) and the virtio driver (one split virtqueue it fills by
//! hand), so every request the backend serves and every status it returns is checked against
//! the disk images. Reads and writes land at the translated offsets; get-id is the VBD's
//! label; flush, discard and write-zeroes stay inside the extents; a read-only VBD refuses a
//! driver that ignores the flag; a deleted VBD fails its requests; a VMM resuming rings this
//! backend never started gets errors, never data, until its guest resets the device; a
//! disk that lost a write fails the guest's later writes to it and its flushes, also when
//! the write was a large one over two disks, which leaves the other disk writable.

mod common;
mod faulty_disk;
#[path = "common/hostile_driver.rs"]
mod hostile_driver;

use common::{hda, hdb, label, pattern, xvda, Backend, IMAGE_BYTES};
use faulty_disk::FaultyDisk;
use hostile_driver::{
    Driver, IOERR, OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_WRITE_ZEROES,
};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};

/// Domain 1's xvda, labelled `vd:4`: VBD sectors 0..8 are hdb 1000..1008, 8..12 hda 5000..5004.
fn guest_vbd(backend: &Backend, mode: Mode) {
    let extents = [
        Extent::new(hdb(), 1000, 8).unwrap(),
        Extent::new(hda(), 5000, 4).unwrap(),
    ];
    common::attach_xvda(backend, 1, mode, "vd:4", &extents);
}

/// The VBD's 12 sectors, read from the images in VBD order.
fn vbd_from_images(backend: &Backend) -> Vec<u8> {
    let mut bytes = backend.read_image("hdb", 1000 * 512, 8 * 512);
    bytes.extend(backend.read_image("hda", 5000 * 512, 4 * 512));
    bytes
}

/// Domain 1's xvda of four 128 KiB extents, alternately on hda and hdb: a write of the whole
/// 512 KiB is a large one whose runs take turns between the disks.
const STRIPES: [(&str, u64); 4] = [("hda", 8192), ("hdb", 8192), ("hda", 16384), ("hdb", 16384)];
const STRIPE_SECTORS: u64 = 256;

fn striped_vbd(backend: &Backend) {
    let extents: Vec<Extent> = STRIPES
        .iter()
        .map(|&(disk, start)| {
            let device = if disk == "hda" { hda() } else { hdb() };
            Extent::new(device, start, STRIPE_SECTORS).unwrap()
        })
        .collect();
    common::attach_xvda(backend, 1, Mode::READ | Mode::WRITE, "vd:5", &extents);
}

/// The striped VBD's bytes, read from the images in VBD order.
fn striped_from_images(backend: &Backend) -> Vec<u8> {
    STRIPES
        .iter()
        .flat_map(|&(disk, start)| {
            backend.read_image(disk, start * 512, (STRIPE_SECTORS * 512) as usize)
        })
        .collect()
}

#[test]
fn a_large_write_over_two_disks_lands_on_both_and_reads_back() {
    let backend = Backend::start(&[]);
    striped_vbd(&backend);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let data = pattern(512 << 10, 7);
    // The buffers split inside the first extent.
    assert_eq!(driver.write(0, &data, (100 << 10) + 512), OK);
    assert!(
        striped_from_images(&backend) == data,
        "the images hold the write"
    );
    assert_eq!(backend.read_image("hda", 8191 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hdb", 8448 * 512, 512), vec![0; 512]);
    let read = driver.read(0, data.len(), 300 << 10);
    assert!(read == (OK, data), "the write reads back");
}

#[test]
fn guest_writes_land_at_the_translated_offsets_and_read_back_with_the_label_as_serial() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let data = pattern(12 * 512, 3);
    // Buffers split inside a sector and not at the extent boundary.
    assert_eq!(driver.write(0, &data, 1000), OK);
    assert_eq!(vbd_from_images(&backend), data);
    assert_eq!(backend.read_image("hdb", 999 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hdb", 1008 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hda", 5004 * 512, 512), vec![0; 512]);
    assert_eq!(driver.read(0, 12 * 512, 4608 + 7), (OK, data.clone()));
    assert_eq!(
        driver.read(7, 2 * 512, 512),
        (OK, data[7 * 512..9 * 512].to_vec())
    );
    assert_eq!(driver.read(11, 2 * 512, 512).0, IOERR, "past the end");
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, OK);
    let (status, id) = driver.get_id();
    assert_eq!(status, OK);
    assert_eq!(&id[..4], b"vd:4");
    assert_eq!(id[4..], [0; 16]);
}

#[test]
fn an_unlabelled_vbd_serves_its_device_name_as_serial() {
    let backend = Backend::start(&[]);
    let mut hypervisor = backend.hypervisor();
    hypervisor.create(1, xvda(), Mode::READ, label("")).unwrap();
    hypervisor
        .set_extents(
            1,
            xvda(),
            &[Extent::new(hda(), 0, 8).unwrap()],
            SharingLevel::ReadersOnly,
        )
        .unwrap();
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let (status, id) = driver.get_id();
    assert_eq!(status, OK);
    assert_eq!(&id[..5], b"xvda\0");
}

#[test]
fn discard_and_write_zeroes_stay_inside_the_extents() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let data = pattern(12 * 512, 9);
    assert_eq!(driver.write(0, &data, 512), OK);
    // Neighbours of the extents, which no request of this VBD may touch.
    let marker = vec![0x5a; 512];
    for (image, sector) in [("hdb", 999), ("hdb", 1008), ("hda", 4999), ("hda", 5004)] {
        backend.write_image(image, sector * 512, &marker);
    }
    // Zero VBD sectors 6..10, across the boundary between the extents.
    assert_eq!(driver.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(6, 4, 0)]), OK);
    let mut expected = data.clone();
    expected[6 * 512..10 * 512].fill(0);
    assert_eq!(vbd_from_images(&backend), expected);
    // A discard may drop the data or keep it, never touch anything else.
    assert_eq!(driver.segments(VIRTIO_BLK_T_DISCARD, &[(0, 2, 0)]), OK);
    let after = vbd_from_images(&backend);
    assert_eq!(after[2 * 512..], expected[2 * 512..]);
    // Past the end: refused, and nothing changes, not even the part inside.
    assert_eq!(
        driver.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(10, 4, 0)]),
        IOERR
    );
    assert_eq!(vbd_from_images(&backend), after);
    for (image, sector) in [("hdb", 999), ("hdb", 1008), ("hda", 4999), ("hda", 5004)] {
        assert_eq!(backend.read_image(image, sector * 512, 512), marker);
    }
}

#[test]
fn a_read_only_vbd_refuses_a_driver_that_ignores_the_flag() {
    let backend = Backend::start(&[]);
    let data = pattern(12 * 512, 5);
    backend.write_image("hdb", 1000 * 512, &data[..8 * 512]);
    backend.write_image("hda", 5000 * 512, &data[8 * 512..]);
    guest_vbd(&backend, Mode::READ);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    assert_eq!(driver.write(0, &pattern(12 * 512, 6), 512), IOERR);
    assert_eq!(
        driver.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 12, 0)]),
        IOERR
    );
    assert_eq!(driver.segments(VIRTIO_BLK_T_DISCARD, &[(0, 12, 0)]), IOERR);
    assert_eq!(vbd_from_images(&backend), data);
    assert_eq!(driver.read(0, 12 * 512, 512), (OK, data));
}

#[test]
fn a_deleted_vbd_fails_the_guests_requests_even_once_its_name_is_reused() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    assert_eq!(driver.write(0, &pattern(512, 1), 512), OK);
    backend.hypervisor().delete(1, xvda()).unwrap();
    assert_eq!(driver.write(0, &pattern(512, 2), 512), IOERR);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    assert_eq!(driver.read(0, 512, 512).0, IOERR);
    assert_eq!(driver.get_id().0, IOERR);
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, IOERR);
    assert_eq!(
        backend.read_image("hdb", 1000 * 512, 512),
        pattern(512, 1),
        "the refused write changed nothing"
    );
}

#[test]
fn a_vmm_resuming_rings_this_backend_did_not_start_gets_errors_not_data() {
    let backend = Backend::start(&[]);
    let data = pattern(12 * 512, 8);
    backend.write_image("hdb", 1000 * 512, &data[..8 * 512]);
    backend.write_image("hda", 5000 * 512, &data[8 * 512..]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    let socket = backend.socket(1, "xvda");
    // What QEMU does after the backend it served was killed and another started.
    let mut resumed = Driver::connect(&socket, 7);
    let (status, read) = resumed.read(0, 512, 256);
    assert_eq!(status, IOERR);
    assert_ne!(read, data[..512], "no data reached the guest");
    assert_eq!(resumed.write(0, &[0xee; 512], 512), IOERR);
    assert_eq!(vbd_from_images(&backend), data);
    assert!(
        backend.log().contains("resumes ring 0 at 7"),
        "{}",
        backend.log()
    );
    // Once the guest resets the device, it reads the disk afresh: it is served again.
    resumed.reset();
    assert_eq!(resumed.read(0, 512, 256), (OK, data[..512].to_vec()));
    drop(resumed);
    // A VMM that started its rings here may resume them: it has seen this VBD only.
    drop(Driver::connect(&socket, 0));
    let mut again = Driver::connect(&socket, 9);
    assert_eq!(again.read(0, 512, 256), (OK, data[..512].to_vec()));
}

#[test]
fn a_disk_that_failed_a_guest_write_fails_its_later_writes_and_the_flush() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let data = pattern(12 * 512, 5);
    assert_eq!(driver.write(0, &data, 4096), OK);
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, OK);

    // VBD sectors 8..12 are on hda.
    disk.fail_writes(true);
    assert_eq!(driver.write(8, &[1; 1024], 512), IOERR);
    disk.fail_writes(false);
    // What hda held may be lost; what it will hold cannot be vouched for.
    assert_eq!(driver.write(8, &[1; 1024], 512), IOERR);
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, IOERR);
    assert_eq!(
        driver.read(0, 12 * 512, 512),
        (OK, data.clone()),
        "reads go on"
    );
    // hdb is not concerned: the part of the VBD on it is written, though not flushed.
    assert_eq!(driver.write(0, &[2; 512], 512), OK);
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), vec![2; 512]);
    assert_hda_failure_said_once(&backend, &disk);
}

#[test]
fn a_large_write_over_two_disks_that_fails_on_one_marks_that_disk_only() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    striped_vbd(&backend);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    let data = pattern(512 << 10, 9);
    assert_eq!(driver.write(0, &data, 256 << 10), OK);
    // hda is the faulty disk's image, which the backend reads back.
    let read = driver.read(0, data.len(), 256 << 10);
    assert!(read == (OK, data.clone()), "the write reads back");

    disk.fail_writes(true);
    assert_eq!(driver.write(0, &pattern(512 << 10, 10), 256 << 10), IOERR);
    disk.fail_writes(false);
    assert_eq!(
        driver.write(0, &data, 256 << 10),
        IOERR,
        "hda lost writes: a write with a part on it fails"
    );
    // VBD sectors 256..512 are hdb's: it is not concerned.
    assert_eq!(driver.write(256, &[4; 1024], 512), OK);
    assert_eq!(backend.read_image("hdb", 8192 * 512, 1024), vec![4; 1024]);
    assert_hda_failure_said_once(&backend, &disk);
}

/// The log names hda, the faulty disk, as having failed a write, once.
fn assert_hda_failure_said_once(backend: &Backend, disk: &FaultyDisk) {
    let log = backend.log();
    let said = format!("disk hda ({}): a write failed", disk.path().display());
    assert_eq!(log.matches(&said).count(), 1, "said once: {log}");
}
