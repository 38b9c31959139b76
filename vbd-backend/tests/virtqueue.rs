//! A guest's I/O without a guest: the test is the VMM (the vhost crate's front end, with
//! guest memory in a shared file) and the virtio driver (one split virtqueue it fills by
//! hand), so every request the backend serves and every status it returns is checked against
//! the disk images. Reads and writes land at the translated offsets; get-id is the VBD's
//! label; flush, discard and write-zeroes stay inside the extents; a read-only VBD refuses a
//! driver that ignores the flag; a deleted VBD fails its requests; a VMM resuming rings this
//! backend never started gets errors, never data, until its guest resets the device; a
//! disk that lost a write fails the guest's later writes to it and its flushes.

mod common;
mod faulty_disk;

use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use common::{hda, hdb, label, pattern, xvda, Backend, IMAGE_BYTES};
use faulty_disk::FaultyDisk;
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Descriptors in the queue; one request is in flight at a time.
const QUEUE_SIZE: u16 = 16;
/// Guest memory and where the queue, the request header, the status and the data live.
const MEMORY_BYTES: usize = 1 << 20;
const DESCRIPTORS: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADER: u64 = 0x3000;
const STATUS: u64 = 0x3100;
const DATA: u64 = 0x10000;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
const OK: u8 = 0;
const IOERR: u8 = 1;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A buffer of a request after its header: where in guest memory, how long, and whether
/// the device writes it.
#[derive(Clone, Copy)]
struct Buffer {
    address: u64,
    length: u32,
    device_writes: bool,
}

/// The VMM and the driver of one vhost-user-blk device with one queue.
struct Driver {
    frontend: Frontend,
    memory: GuestMemoryMmap<()>,
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
}

impl Driver {
    /// Connect to `socket` and start queue 0 with its rings at `base`: 0 for a driver that
    /// has just started, anything else for a VMM resuming a guest that ran before. A VMM
    /// that has just left may still be counted as connected for a moment; retry then.
    fn connect(socket: &Path, base: u16) -> Driver {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut frontend, features) = loop {
            let frontend = Frontend::connect(socket, 1).unwrap();
            match frontend.set_owner().and_then(|()| frontend.get_features()) {
                Ok(features) => break (frontend, features),
                Err(error) => assert!(Instant::now() < deadline, "refused: {error}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // No event-idx: the driver kicks every request and polls the used ring.
        frontend
            .set_features(features & !VIRTIO_RING_F_EVENT_IDX)
            .unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEMORY_BYTES as u64).unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEMORY_BYTES,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let region = memory.iter().next().unwrap();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()])
            .unwrap();
        let mut driver = Driver {
            frontend,
            memory,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
            next_avail: base,
        };
        driver.start_ring(base);
        driver
    }

    /// Start queue 0 with its rings at `base`.
    fn start_ring(&mut self, base: u16) {
        // Ring addresses are the VMM's own, as QEMU sends them.
        let mapped = self.memory.iter().next().unwrap().as_ptr() as u64;
        self.memory
            .write_obj(base, GuestAddress(AVAIL + 2))
            .unwrap();
        self.memory.write_obj(base, GuestAddress(USED + 2)).unwrap();
        self.next_avail = base;
        let frontend = &mut self.frontend;
        frontend.set_vring_num(0, QUEUE_SIZE).unwrap();
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: 256,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: mapped + DESCRIPTORS,
                    used_ring_addr: mapped + USED,
                    avail_ring_addr: mapped + AVAIL,
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(0, base).unwrap();
        frontend.set_vring_call(0, &self.call).unwrap();
        frontend.set_vring_kick(0, &self.kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
    }

    /// What QEMU does when the guest resets the device: stop the ring, then start it at 0.
    fn reset(&mut self) {
        self.frontend.get_vring_base(0).unwrap();
        self.start_ring(0);
    }

    fn descriptor(&self, index: u16, address: u64, length: u32, flags: u16) {
        let at = DESCRIPTORS + 16 * u64::from(index);
        let mut bytes = address.to_le_bytes().to_vec();
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&(index + 1).to_le_bytes());
        self.memory.write_slice(&bytes, GuestAddress(at)).unwrap();
    }

    /// Submit the request `kind` at `sector` with `buffers` and wait for it; returns its
    /// status byte and the used length.
    fn request(&mut self, kind: u32, sector: u64, buffers: &[Buffer]) -> (u8, u32) {
        let mut header = kind.to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        self.memory
            .write_slice(&header, GuestAddress(HEADER))
            .unwrap();
        // A status the device did not write reads as 0xff.
        self.memory.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.descriptor(0, HEADER, 16, VIRTQ_DESC_F_NEXT);
        for (index, buffer) in buffers.iter().enumerate() {
            let write = if buffer.device_writes {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            };
            self.descriptor(
                index as u16 + 1,
                buffer.address,
                buffer.length,
                VIRTQ_DESC_F_NEXT | write,
            );
        }
        self.descriptor(buffers.len() as u16 + 1, STATUS, 1, VIRTQ_DESC_F_WRITE);
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        self.memory
            .write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.memory
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.memory.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != self.next_avail {
            assert!(Instant::now() < deadline, "the request was not completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        fence(Ordering::SeqCst);
        let length: u32 = self
            .memory
            .read_obj(GuestAddress(USED + 4 + 8 * slot + 4))
            .unwrap();
        let status = self.memory.read_obj(GuestAddress(STATUS)).unwrap();
        (status, length)
    }

    /// Read `bytes` at `sector` into two buffers split at `split`; the status and the data.
    fn read(&mut self, sector: u64, bytes: usize, split: usize) -> (u8, Vec<u8>) {
        let buffers = [
            Buffer {
                address: DATA,
                length: split as u32,
                device_writes: true,
            },
            // A gap between the buffers: they are separate guest pages, not one run.
            Buffer {
                address: DATA + split as u64 + 4096,
                length: (bytes - split) as u32,
                device_writes: true,
            },
        ];
        let (status, used) = self.request(VIRTIO_BLK_T_IN, sector, &buffers);
        let mut data = vec![0u8; bytes];
        self.memory
            .read_slice(&mut data[..split], GuestAddress(DATA))
            .unwrap();
        self.memory
            .read_slice(&mut data[split..], GuestAddress(buffers[1].address))
            .unwrap();
        if status == OK {
            assert_eq!(
                used,
                bytes as u32 + 1,
                "the used length counts data and status"
            );
        }
        (status, data)
    }

    /// Write `data` at `sector` from two buffers split at `split`; the status.
    fn write(&mut self, sector: u64, data: &[u8], split: usize) -> u8 {
        let second = DATA + split as u64 + 4096;
        self.memory
            .write_slice(&data[..split], GuestAddress(DATA))
            .unwrap();
        self.memory
            .write_slice(&data[split..], GuestAddress(second))
            .unwrap();
        let buffers = [
            Buffer {
                address: DATA,
                length: split as u32,
                device_writes: false,
            },
            Buffer {
                address: second,
                length: (data.len() - split) as u32,
                device_writes: false,
            },
        ];
        self.request(VIRTIO_BLK_T_OUT, sector, &buffers).0
    }

    /// A discard or write-zeroes of `(sector, count, flags)` segments; the status.
    fn segments(&mut self, kind: u32, segments: &[(u64, u32, u32)]) -> u8 {
        let bytes: Vec<u8> = segments
            .iter()
            .flat_map(|&(sector, count, flags)| {
                sector
                    .to_le_bytes()
                    .into_iter()
                    .chain(count.to_le_bytes())
                    .chain(flags.to_le_bytes())
            })
            .collect();
        self.memory.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        let buffer = Buffer {
            address: DATA,
            length: bytes.len() as u32,
            device_writes: false,
        };
        self.request(kind, 0, &[buffer]).0
    }

    fn get_id(&mut self) -> (u8, Vec<u8>) {
        let buffer = Buffer {
            address: DATA,
            length: 20,
            device_writes: true,
        };
        let (status, _) = self.request(VIRTIO_BLK_T_GET_ID, 0, &[buffer]);
        let mut id = vec![0u8; 20];
        self.memory.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        (status, id)
    }
}

/// Domain 1's xvda, labelled `vd:4`: VBD sectors 0..8 are hdb 1000..1008, 8..12 hda 5000..5004.
fn guest_vbd(backend: &Backend, mode: Mode) {
    let mut hypervisor = backend.hypervisor();
    hypervisor.create(1, xvda(), mode, label("vd:4")).unwrap();
    let extents = [
        Extent::new(hdb(), 1000, 8).unwrap(),
        Extent::new(hda(), 5000, 4).unwrap(),
    ];
    hypervisor
        .set_extents(1, xvda(), &extents, SharingLevel::ReadersOnly)
        .unwrap();
}

/// The VBD's 12 sectors, read from the images in VBD order.
fn vbd_from_images(backend: &Backend) -> Vec<u8> {
    let mut bytes = backend.read_image("hdb", 1000 * 512, 8 * 512);
    bytes.extend(backend.read_image("hda", 5000 * 512, 4 * 512));
    bytes
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
    let log = backend.log();
    let said = format!("disk hda ({}): a write failed", disk.path().display());
    assert_eq!(log.matches(&said).count(), 1, "said once: {log}");
}
