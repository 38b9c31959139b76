//! vbd-backend against a hostile guest: the test writes descriptor tables and avail rings
//! as a guest that wants to break the backend would, and checks the exact answer to each.
//! After every case the queue still answers a well-formed read with the disk's bytes, and
//! the other VBD served by the same backend keeps its bytes. A VMM's own messages are tried
//! too, against a read held in flight on a disk that answers only when the test says so:
//! stopping the ring while it is held.

mod common;
mod faulty_disk;
#[path = "common/hostile_driver.rs"]
mod hostile_driver;

use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{hda, pattern, xvda, Backend, IMAGE_BYTES};
use faulty_disk::FaultyDisk;
use hostile_driver::{
    Driver, DATA, HEADER, IOERR, MEMORY_BYTES, OK, QUEUE_SIZE, STATUS, USED, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use shared_abi::wire::Extent;
use shared_abi::Mode;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

const VIRTIO_BLK_S_UNSUPP: u8 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Where the tests put an indirect descriptor table.
const INDIRECT: u64 = 0x5000;

/// The hostile guest's VBD (domain 1's xvda, 12 sectors: hdb 1000..1008 then hda
/// 5000..5004) and a bystander (domain 2's xvda, hda 100..116), each filled with a pattern.
struct Tenants {
    backend: Backend,
    guest: Vec<u8>,
    bystander: Vec<u8>,
}

impl Tenants {
    fn start() -> Tenants {
        let backend = Backend::start(&[]);
        common::attach_two_tenants(&backend);
        let guest = pattern(12 * 512, 0x31);
        backend.write_image("hdb", 1000 * 512, &guest[..8 * 512]);
        backend.write_image("hda", 5000 * 512, &guest[8 * 512..]);
        let bystander = pattern(16 * 512, 0x77);
        backend.write_image("hda", 100 * 512, &bystander);
        Tenants {
            backend,
            guest,
            bystander,
        }
    }

    fn driver(&self) -> Driver {
        Driver::connect(&self.backend.socket(1, "xvda"), 0)
    }

    /// The queue still answers a well-formed read with the disk's bytes, and neither VBD's
    /// bytes changed.
    fn still_served(&self, driver: &mut Driver) {
        assert_eq!(driver.read(0, 12 * 512, 1536), (OK, self.guest.clone()));
        let mut guest = self.backend.read_image("hdb", 1000 * 512, 8 * 512);
        guest.extend(self.backend.read_image("hda", 5000 * 512, 4 * 512));
        assert!(guest == self.guest, "the guest's own VBD changed");
        let bystander = self.backend.read_image("hda", 100 * 512, 16 * 512);
        assert!(bystander == self.bystander, "another VBD's bytes changed");
    }
}

/// Chain `head`: a header of `kind` at `sector` (at `HEADER`), the data descriptors, and
/// the status byte, as descriptors `head`, `head + 1`, ...
fn chain(driver: &Driver, head: u16, kind: u32, sector: u64, data: &[(u64, u32, u16)]) {
    chain_at(driver, head, (HEADER, STATUS), kind, sector, data);
}

/// [`chain`] with its header and status at `(header, status)`, so that it can be in flight
/// beside another.
fn chain_at(
    driver: &Driver,
    head: u16,
    (header, status): (u64, u64),
    kind: u32,
    sector: u64,
    data: &[(u64, u32, u16)],
) {
    driver.header_at((header, status), kind, sector);
    driver.descriptor(head, header, 16, VIRTQ_DESC_F_NEXT);
    for (offset, &(address, length, flags)) in data.iter().enumerate() {
        driver.descriptor(
            head + 1 + offset as u16,
            address,
            length,
            flags | VIRTQ_DESC_F_NEXT,
        );
    }
    let last = head + 1 + data.len() as u16;
    driver.raw_descriptor(last, status, 1, VIRTQ_DESC_F_WRITE, 0);
}

/// Offer chain 0, kick, and return its status and used length.
fn answer_of_chain_zero(driver: &mut Driver) -> (u8, u32) {
    driver.offer(&[0]);
    driver.kick();
    let answers = driver.answered(1);
    assert_eq!(answers[0].0, 0);
    (driver.status(), answers[0].1)
}

const WRITABLE: u16 = VIRTQ_DESC_F_WRITE;

#[test]
fn heads_at_or_past_the_queue_size_are_skipped_among_valid_reads() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    chain(&driver, 0, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, WRITABLE)]);
    driver.offer(&[0xffff, 0, QUEUE_SIZE, 0]);
    driver.kick();
    let answers = driver.answered(2);
    assert_eq!(answers, [(0, 513), (0, 513)]);
    assert_eq!(driver.status(), OK);
    tenants.still_served(&mut driver);
}

#[test]
fn a_descriptor_loop_is_cut_at_the_queue_size_and_refused() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    // 0 -> 1 -> 0 -> ...: the chain never ends.
    driver.header(VIRTIO_BLK_T_IN, 0);
    driver.raw_descriptor(0, HEADER, 16, VIRTQ_DESC_F_NEXT, 1);
    driver.raw_descriptor(1, DATA, 512, VIRTQ_DESC_F_NEXT | WRITABLE, 0);
    // The chain is cut after 16 descriptors, the last a data buffer: its last byte is the
    // status, and a readable header after a writable buffer is refused.
    assert_eq!(answer_of_chain_zero(&mut driver), (0xff, 1));
    let status: u8 = driver.memory.read_obj(GuestAddress(DATA + 511)).unwrap();
    assert_eq!(status, IOERR);
    tenants.still_served(&mut driver);
}

#[test]
fn indirect_tables_serve_and_nested_or_huge_ones_are_refused() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    let table_chain = |driver: &mut Driver, length: u32| {
        driver.raw_descriptor(0, INDIRECT, length, VIRTQ_DESC_F_INDIRECT, 0);
        answer_of_chain_zero(driver)
    };
    // A well-formed indirect read of the first sector.
    driver.header(VIRTIO_BLK_T_IN, 0);
    driver.raw_descriptor_at(INDIRECT, 0, HEADER, 16, VIRTQ_DESC_F_NEXT, 1);
    driver.raw_descriptor_at(INDIRECT, 1, DATA, 512, VIRTQ_DESC_F_NEXT | WRITABLE, 2);
    driver.raw_descriptor_at(INDIRECT, 2, STATUS, 1, WRITABLE, 0);
    assert_eq!(table_chain(&mut driver, 48), (OK, 513));
    let mut first = vec![0u8; 512];
    driver
        .memory
        .read_slice(&mut first, GuestAddress(DATA))
        .unwrap();
    assert!(first == tenants.guest[..512]);
    // An indirect descriptor inside the indirect table.
    driver.header(VIRTIO_BLK_T_IN, 0);
    driver.raw_descriptor_at(INDIRECT, 1, INDIRECT + 0x100, 48, VIRTQ_DESC_F_INDIRECT, 0);
    assert_eq!(table_chain(&mut driver, 48).1, 0);
    // A table far longer than guest memory.
    driver.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(table_chain(&mut driver, u32::MAX - 15).1, 0);
    tenants.still_served(&mut driver);
}

#[test]
fn zero_length_overlapping_and_status_overlapping_buffers_are_answered_exactly() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    // A zero-length buffer among the data: ignored, the read is whole.
    chain(
        &driver,
        0,
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA, 0, WRITABLE), (DATA, 512, WRITABLE)],
    );
    assert_eq!(answer_of_chain_zero(&mut driver), (OK, 513));
    // Two buffers over the same bytes: both are filled, in order; the last wins.
    chain(
        &driver,
        0,
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA, 512, WRITABLE), (DATA, 512, WRITABLE)],
    );
    assert_eq!(answer_of_chain_zero(&mut driver), (OK, 1025));
    let mut bytes = vec![0u8; 512];
    driver
        .memory
        .read_slice(&mut bytes, GuestAddress(DATA))
        .unwrap();
    assert!(bytes == tenants.guest[512..1024]);
    // Data over the status byte: the status is written after the data.
    chain(
        &driver,
        0,
        VIRTIO_BLK_T_IN,
        0,
        &[(STATUS - 511, 512, WRITABLE)],
    );
    assert_eq!(answer_of_chain_zero(&mut driver), (OK, 513));
    // Data over the used ring: the guest asked for it; the ring's own entries come after.
    chain(&driver, 0, VIRTIO_BLK_T_IN, 0, &[(USED, 512, WRITABLE)]);
    assert_eq!(answer_of_chain_zero(&mut driver), (OK, 513));
    tenants.still_served(&mut driver);
}

#[test]
fn addresses_outside_memory_and_a_read_only_status_are_refused() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    let outside = MEMORY_BYTES as u64;
    chain(&driver, 0, VIRTIO_BLK_T_IN, 0, &[(outside, 512, WRITABLE)]);
    assert_eq!(answer_of_chain_zero(&mut driver), (IOERR, 1));
    chain(
        &driver,
        0,
        VIRTIO_BLK_T_IN,
        0,
        &[(u64::MAX - 255, 512, WRITABLE)],
    );
    assert_eq!(answer_of_chain_zero(&mut driver), (IOERR, 1));
    // The status byte in a descriptor the device may not write.
    driver.header(VIRTIO_BLK_T_IN, 0);
    driver.descriptor(0, HEADER, 16, VIRTQ_DESC_F_NEXT);
    driver.descriptor(1, DATA, 512, VIRTQ_DESC_F_NEXT | WRITABLE);
    driver.raw_descriptor(2, STATUS, 1, 0, 0);
    assert_eq!(answer_of_chain_zero(&mut driver), (0xff, 0));
    tenants.still_served(&mut driver);
}

#[test]
fn ranges_past_the_end_or_overflowing_unknown_types_and_a_one_byte_id_are_answered() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    for sector in [12, 11, u64::MAX, u64::MAX / 512 + 1] {
        chain(
            &driver,
            0,
            VIRTIO_BLK_T_IN,
            sector,
            &[(DATA, 1024, WRITABLE)],
        );
        assert_eq!(
            answer_of_chain_zero(&mut driver),
            (IOERR, 1),
            "read at {sector}"
        );
        chain(&driver, 0, VIRTIO_BLK_T_OUT, sector, &[(DATA, 1024, 0)]);
        assert_eq!(
            answer_of_chain_zero(&mut driver),
            (IOERR, 1),
            "write at {sector}"
        );
    }
    chain(&driver, 0, 0x7777, 0, &[(DATA, 512, WRITABLE)]);
    assert_eq!(answer_of_chain_zero(&mut driver), (VIRTIO_BLK_S_UNSUPP, 1));
    driver
        .memory
        .write_obj(0u8, GuestAddress(DATA + 1))
        .unwrap();
    chain(&driver, 0, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 1, WRITABLE)]);
    assert_eq!(answer_of_chain_zero(&mut driver), (OK, 2));
    let id: [u8; 2] = driver.memory.read_obj(GuestAddress(DATA)).unwrap();
    assert_eq!(id, [b'v', 0], "one byte of the serial, nothing past it");
    tenants.still_served(&mut driver);
}

#[test]
fn a_used_ring_the_guest_overwrites_does_not_stop_the_queue() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    tenants.still_served(&mut driver);
    // The guest scribbles over the whole used ring, its index included, then puts the
    // index back where it was so that it can count the next answers.
    let used = driver.used_index();
    driver
        .memory
        .write_slice(&[0xa5; 4 + 8 * 16], GuestAddress(USED))
        .unwrap();
    driver
        .memory
        .write_obj(used, GuestAddress(USED + 2))
        .unwrap();
    tenants.still_served(&mut driver);
}

#[test]
fn a_call_eventfd_at_its_maximum_count_blocks_nothing() {
    let tenants = Tenants::start();
    let call = EventFd::new(0).unwrap();
    call.write(0xffff_ffff_ffff_fffe).unwrap();
    let mut driver = Driver::connect_with_call(&tenants.backend.socket(1, "xvda"), 0, call);
    for _ in 0..3 {
        tenants.still_served(&mut driver);
    }
    // The backend's control plane answers: the VBD is deleted.
    tenants.backend.hypervisor().delete(1, xvda()).unwrap();
    assert_eq!(driver.read(0, 512, 256).0, IOERR);
}

#[test]
fn a_vmm_that_vanishes_mid_batch_leaves_the_socket_serving_the_next() {
    let tenants = Tenants::start();
    let mut driver = tenants.driver();
    for head in 0..8u16 {
        let data = DATA + 0x1000 * u64::from(head);
        driver.raw_descriptor(3 * head, HEADER, 16, VIRTQ_DESC_F_NEXT, 3 * head + 1);
        driver.raw_descriptor(
            3 * head + 1,
            data,
            4096,
            VIRTQ_DESC_F_NEXT | WRITABLE,
            3 * head + 2,
        );
        driver.raw_descriptor(3 * head + 2, STATUS + u64::from(head), 1, WRITABLE, 0);
    }
    driver.header(VIRTIO_BLK_T_IN, 0);
    driver.offer(&[0, 3, 6, 9, 12]);
    driver.kick();
    drop(driver);
    let mut next = tenants.driver();
    tenants.still_served(&mut next);
}

/// A backend whose hda is `disk`, serving domain 1's xvda over 64 sectors of it that nothing
/// has read or written yet, so that its reads reach the disk (not the page cache) and are
/// held there while the disk holds them.
fn backend_on_a_held_disk(disk: &FaultyDisk) -> Backend {
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    let extent = Extent::new(hda(), 20000, 64).unwrap();
    common::attach_xvda(&backend, 1, Mode::READ | Mode::WRITE, "vd:1", &[extent]);
    backend
}

/// All of the guest's memory, to see whether anything in it changes.
fn guest_bytes(driver: &Driver) -> Vec<u8> {
    let mut bytes = vec![0u8; MEMORY_BYTES];
    driver
        .memory
        .read_slice(&mut bytes, GuestAddress(0))
        .unwrap();
    bytes
}

/// How long the test gives the backend to do what it must not (answer early, write late).
const GRACE: Duration = Duration::from_millis(500);

#[test]
fn get_vring_base_waits_for_the_read_in_flight_and_nothing_is_written_after_it() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = backend_on_a_held_disk(&disk);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    driver
        .memory
        .write_slice(&[0xee; 4096], GuestAddress(DATA))
        .unwrap();
    disk.hold_reads();
    chain(&driver, 0, VIRTIO_BLK_T_IN, 0, &[(DATA, 4096, WRITABLE)]);
    driver.offer(&[0]);
    driver.kick();
    disk.wait_for_a_held_read();
    let frontend = &driver.frontend;
    let (early, base, at_stop) = thread::scope(|scope| {
        let (returned, stopped) = mpsc::channel();
        scope.spawn(move || {
            let base = frontend
                .get_vring_base(0)
                .map_err(|error| error.to_string());
            returned.send(base).unwrap();
        });
        let early = stopped.recv_timeout(GRACE).ok();
        disk.release_reads();
        let base = early.clone().unwrap_or_else(|| {
            stopped
                .recv_timeout(Duration::from_secs(20))
                .expect("GET_VRING_BASE never returned")
        });
        // What the guest's memory holds the moment the ring is stopped.
        (early.is_some(), base, guest_bytes(&driver))
    });
    assert!(
        !early,
        "GET_VRING_BASE returned while a read of its ring was in flight"
    );
    assert_eq!(base, Ok(1));
    assert_eq!(driver.used_index(), 1, "the read was answered before it");
    assert_eq!(driver.status(), OK);
    let mut data = vec![0xffu8; 4096];
    driver
        .memory
        .read_slice(&mut data, GuestAddress(DATA))
        .unwrap();
    assert!(data == [0; 4096], "the read brought the disk's zeros");
    thread::sleep(GRACE);
    assert!(
        guest_bytes(&driver) == at_stop,
        "the guest's memory changed after the ring stopped"
    );
    // The guest offers the read again and kicks: the stopped ring touches nothing.
    driver
        .memory
        .write_obj(0xffu8, GuestAddress(STATUS))
        .unwrap();
    driver.offer(&[0]);
    driver.kick();
    let offered = guest_bytes(&driver);
    thread::sleep(GRACE);
    assert_eq!(driver.used_index(), 1);
    assert!(
        guest_bytes(&driver) == offered,
        "a stopped ring wrote to the guest's memory"
    );
}

#[test]
fn a_read_posted_after_a_new_memory_table_is_acknowledged_is_served_with_it() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = backend_on_a_held_disk(&disk);
    let mut driver = Driver::connect(&backend.socket(1, "xvda"), 0);
    // VBD sectors 8..16, which the read in the new memory will fetch.
    let sectors = pattern(8 * 512, 0x4d);
    std::fs::OpenOptions::new()
        .write(true)
        .open(disk.path())
        .unwrap()
        .write_all_at(&sectors, 20008 * 512)
        .unwrap();
    disk.hold_reads();
    // A read the disk holds, and a flush after it, which keeps the queue thread in its
    // batch (it waits for the read) until the read is let go.
    chain_at(
        &driver,
        0,
        (HEADER, STATUS),
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA, 4096, WRITABLE)],
    );
    chain_at(
        &driver,
        3,
        (HEADER + 0x20, STATUS + 1),
        VIRTIO_BLK_T_FLUSH,
        0,
        &[],
    );
    driver.offer(&[0, 3]);
    driver.kick();
    disk.wait_for_a_held_read();
    // Memory past the old table's end, acknowledged before the guest uses it.
    let plugged = MEMORY_BYTES as u64;
    driver.plug_memory(plugged, 1 << 20);
    chain_at(
        &driver,
        5,
        (HEADER + 0x40, STATUS + 2),
        VIRTIO_BLK_T_IN,
        8,
        &[(plugged + 0x1000, 4096, WRITABLE)],
    );
    driver.offer(&[5]);
    driver.kick();
    disk.release_reads();
    assert_eq!(driver.answered(3), [(0, 4097), (3, 1), (5, 4097)]);
    let statuses: [u8; 3] = driver.memory.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(statuses, [OK; 3]);
    let mut data = vec![0u8; 4096];
    driver
        .memory
        .read_slice(&mut data, GuestAddress(plugged + 0x1000))
        .unwrap();
    assert!(
        data == sectors,
        "the read filled the new memory with its sectors"
    );
}

#[test]
fn a_memory_region_larger_than_its_file_ends_the_connection_and_the_backend_serves_on() {
    let tenants = Tenants::start();
    let driver = tenants.driver();
    // The file holds `MEMORY_BYTES`; the table announces twice that.
    let region = driver.memory.iter().next().unwrap();
    let mut announced = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
    announced.memory_size *= 2;
    driver.frontend.set_mem_table(&[announced]).unwrap();
    let why = format!(
        "dom1/xvda.sock: connection ended: guest memory region 0 ends at byte {} of a {}-byte file",
        2 * MEMORY_BYTES,
        MEMORY_BYTES
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tenants.backend.log().contains(&why) {
        assert!(
            Instant::now() < deadline,
            "the log never said why: {}",
            tenants.backend.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let answer = driver.frontend.get_features();
    assert_eq!(
        answer.map_err(|error| error.to_string()),
        Err("vhost-user: socket is broken: Broken pipe (os error 32)".to_string()),
        "the connection ended"
    );
    drop(driver);
    let mut next = tenants.driver();
    tenants.still_served(&mut next);
    let mut bystander = Driver::connect(&tenants.backend.socket(2, "xvda"), 0);
    assert_eq!(
        bystander.read(0, 16 * 512, 512),
        (OK, tenants.bystander.clone())
    );
}

#[test]
fn with_event_idx_reads_are_served_and_the_device_says_where_to_kick() {
    let tenants = Tenants::start();
    let mut driver = Driver::connect_with_event_idx(&tenants.backend.socket(1, "xvda"), 0);
    for _ in 0..3 {
        tenants.still_served(&mut driver);
    }
    // `avail_event`, after the used ring's entries: the next request, please. The device
    // writes it as it goes back to sleep, once its look for more work after the last
    // request (up to 50 us) has found none, which may be after the driver saw the answer.
    let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QUEUE_SIZE));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut wanted: u16 = driver.memory.read_obj(avail_event).unwrap();
    while wanted != 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
        wanted = driver.memory.read_obj(avail_event).unwrap();
    }
    assert_eq!(wanted, 3);
}
