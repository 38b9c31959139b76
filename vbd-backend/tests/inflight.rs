//! Inflight tracking over a real vhost-user connection: the test is the VMM (the vhost
//! crate's front end) and the guest (the hostile driver's rings), and keeps the inflight
//! region across connections as QEMU keeps it across a backend's restart. A crash is
//! simulated by writing, in the region, the record a backend that died leaves: chains
//! taken and not completed. The reconnected backend must replay exactly those, in the order
//! they were taken, and serve the ring on from the right entry; with a record of another
//! VBD it must fail them; and regions and ring sizes a VMM makes up end its connection
//! without harm to anyone else. An upgrade in place (`--takeover`) hands the VBDs and the
//! socket paths to a new process, which the VMM resumes on.

mod common;
#[path = "common/hostile_driver.rs"]
mod hostile_driver;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hda, pattern, wait_with_timeout, xvda, Backend};
use hostile_driver::{
    take_ownership, Driver, IOERR, MEMORY_BYTES, OK, QUEUE_SIZE, VIRTIO_BLK_T_OUT,
    VIRTIO_RING_F_EVENT_IDX, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use shared_abi::wire::Extent;
use shared_abi::SharingLevel;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Bytes of the region for one queue of [`QUEUE_SIZE`]: 16 + 16 * 16, to 64, and the stamp.
const REGION_BYTES: u64 = 320 + 64;
/// Where the region's stamp digest is.
const DIGEST_AT: u64 = 320 + 8;

/// domain 1's xvda (hdb 1000..1008, hda 5000..5004) and a bystander, domain 2's xvda
/// (hda 100..116), filled with a pattern.
fn tenants() -> (Backend, Vec<u8>) {
    let backend = Backend::start(&[]);
    common::attach_two_tenants(&backend);
    let bystander = pattern(16 * 512, 0x77);
    backend.write_image("hda", 100 * 512, &bystander);
    (backend, bystander)
}

/// The bystander's VMM reads its bytes, unchanged.
fn bystander_served(backend: &Backend, bystander: &[u8]) {
    let mut driver = Driver::connect(&backend.socket(2, "xvda"), 0);
    assert_eq!(driver.read(0, 16 * 512, 4096), (OK, bystander.to_vec()));
}

/// A VMM that takes up inflight tracking on `socket`, with `memory` (a new file when
/// `None`); its ring is not started.
fn connect(socket: &std::path::Path, memory: Option<GuestMemoryMmap<()>>) -> Driver {
    let (mut frontend, features) = take_ownership(socket);
    frontend
        .set_features(features & !VIRTIO_RING_F_EVENT_IDX)
        .unwrap();
    let offered = frontend.get_protocol_features().unwrap();
    assert!(offered.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    frontend
        .set_protocol_features(
            VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        )
        .unwrap();
    let memory = memory.unwrap_or_else(|| {
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEMORY_BYTES as u64).unwrap();
        GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEMORY_BYTES,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap()
    });
    let region = memory.iter().next().unwrap();
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()])
        .unwrap();
    Driver {
        frontend,
        memory,
        kick: EventFd::new(0).unwrap(),
        call: EventFd::new(0).unwrap(),
        next_avail: 0,
        used: 0,
    }
}

/// Ask the backend for a region, as QEMU does when the device starts.
fn new_region(driver: &mut Driver) -> (VhostUserInflight, File) {
    let asked = VhostUserInflight::new(0, 0, 1, QUEUE_SIZE);
    let (info, file) = driver.frontend.get_inflight_fd(&asked).unwrap();
    assert_eq!(info.mmap_size, REGION_BYTES);
    (info, file)
}

/// Chain `head` (descriptors head..head + 3): a write of 512 bytes of `byte` at `sector`,
/// with a header, data and status of its own.
fn write_chain(driver: &Driver, head: u16, sector: u64, byte: u8) {
    let header = 0x4000 + 0x100 * u64::from(head);
    let status = header + 0x10;
    let data = 0x20000 + 0x1000 * u64::from(head);
    driver.header_at((header, status), VIRTIO_BLK_T_OUT, sector);
    driver
        .memory
        .write_slice(&[byte; 512], GuestAddress(data))
        .unwrap();
    driver.descriptor(head, header, 16, VIRTQ_DESC_F_NEXT);
    driver.descriptor(head + 1, data, 512, VIRTQ_DESC_F_NEXT);
    driver.descriptor(head + 2, status, 1, VIRTQ_DESC_F_WRITE);
}

fn status_of(driver: &Driver, head: u16) -> u8 {
    let status = 0x4000 + 0x100 * u64::from(head) + 0x10;
    driver.memory.read_obj(GuestAddress(status)).unwrap()
}

/// What a backend killed after taking chains 2, 5 and 9 (taken in the order 9, 2, 5: the
/// guest posted them in the other) and before completing any leaves: the chains in the
/// avail ring, none in the used ring, and the region's record of them. Written while no
/// backend serves the ring, as after a crash.
fn crash_with_three_writes_in_flight(driver: &mut Driver, region: &File) {
    for (head, byte) in [(2, b'B'), (5, b'C'), (9, b'A')] {
        write_chain(driver, head, 0, byte);
    }
    driver.offer(&[2, 5, 9]);
    for (head, counter) in [(9u64, 5u64), (2, 6), (5, 7)] {
        let at = 16 + 16 * head;
        region.write_all_at(&counter.to_le_bytes(), at + 8).unwrap();
        region.write_all_at(&[1], at).unwrap();
    }
}

/// Wait until the backend logs `text`.
fn wait_for_log(backend: &Backend, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !backend.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_requests_in_flight_at_a_crash_replay_in_the_order_taken_and_the_ring_goes_on_from_there() {
    let (backend, bystander) = tenants();
    let socket = backend.socket(1, "xvda");
    let mut first = connect(&socket, None);
    let (info, region) = new_region(&mut first);
    first
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    first.start_ring(0);
    // A request served normally leaves nothing in flight, and the used index recorded.
    assert_eq!(first.write(8, &[b'x'; 512], 256), OK);
    let mut record = [0u8; 320];
    region.read_exact_at(&mut record, 0).unwrap();
    assert_eq!(u16::from_le_bytes([record[8], record[9]]), 1, "version");
    assert_eq!(u16::from_le_bytes([record[14], record[15]]), 1, "used_idx");
    assert!(
        (0..16).all(|head| record[16 + 16 * head] == 0),
        "a completed request is still recorded in flight"
    );

    let Driver {
        frontend, memory, ..
    } = first;
    drop(frontend);
    // The VMM reconnects (once connected, the first connection has ended) and hands back
    // its region; after a crash QEMU sends the used index as the ring's base.
    let mut second = connect(&socket, Some(memory));
    second.next_avail = 1;
    second.used = 1;
    crash_with_three_writes_in_flight(&mut second, &region);
    second
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    second.resume_ring(1);
    assert_eq!(second.answered(3), vec![(9, 1), (2, 1), (5, 1)]);
    for head in [2, 5, 9] {
        assert_eq!(status_of(&second, head), OK, "chain {head}");
    }
    assert_eq!(
        backend.read_image("hdb", 1000 * 512, 512),
        vec![b'C'; 512],
        "the last write taken is the last done"
    );
    wait_for_log(&backend, "ring 0 replayed 3 requests that were in flight");
    // The next request is the one after those the crashed backend took.
    assert_eq!(second.write(1, &[b'y'; 512], 256), OK);
    assert_eq!(backend.read_image("hdb", 1001 * 512, 512), vec![b'y'; 512]);
    bystander_served(&backend, &bystander);
}

#[test]
fn a_record_of_another_vbd_fails_the_requests_it_names_until_the_guest_resets_the_device() {
    let (backend, bystander) = tenants();
    let socket = backend.socket(1, "xvda");
    let before = backend.read_image("hdb", 1000 * 512, 512);
    let mut first = connect(&socket, None);
    let (info, region) = new_region(&mut first);
    first
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    first.start_ring(0);
    // Once answered, every message before has been handled: the ring has started.
    first.frontend.get_features().unwrap();
    let Driver {
        frontend, memory, ..
    } = first;
    drop(frontend);
    let mut second = connect(&socket, Some(memory));
    crash_with_three_writes_in_flight(&mut second, &region);
    // The record says it served another VBD.
    region.write_all_at(&[0xee; 8], DIGEST_AT).unwrap();
    second
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    second.resume_ring(0);
    let answers = second.answered(3);
    assert_eq!(answers, vec![(9, 1), (2, 1), (5, 1)], "{}", backend.log());
    for head in [2, 5, 9] {
        assert_eq!(status_of(&second, head), IOERR, "chain {head}");
    }
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), before);
    assert!(backend.log().contains("an inflight record of another VBD"));
    assert_eq!(second.write(0, &[b'z'; 512], 256), IOERR);
    // A reset: QEMU gets a new region and starts the ring at 0.
    second.frontend.get_vring_base(0).unwrap();
    let (info, region) = new_region(&mut second);
    second
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    second.start_ring(0);
    assert_eq!(second.write(0, &[b'z'; 512], 256), OK);
    bystander_served(&backend, &bystander);
}

#[test]
fn a_made_up_region_or_ring_size_ends_that_connection_and_no_other() {
    let (backend, bystander) = tenants();
    let socket = backend.socket(1, "xvda");

    // A file the backend did not make: not sealed against shrinking.
    let mut driver = connect(&socket, None);
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(REGION_BYTES).unwrap();
    let info = VhostUserInflight::new(REGION_BYTES, 0, 1, QUEUE_SIZE);
    let _ = driver.frontend.set_inflight_fd(&info, plain.as_raw_fd());
    wait_for_log(&backend, "not sealed against shrinking");
    bystander_served(&backend, &bystander);

    // A sealed region shorter than it says.
    let mut driver = connect(&socket, None);
    let (_, region) = new_region(&mut driver);
    let longer = VhostUserInflight::new(REGION_BYTES, 4096, 1, QUEUE_SIZE);
    let _ = driver.frontend.set_inflight_fd(&longer, region.as_raw_fd());
    wait_for_log(&backend, "past the end of its file");
    bystander_served(&backend, &bystander);

    // More queues than the device has.
    let mut driver = connect(&socket, None);
    let (_, region) = new_region(&mut driver);
    let queues = VhostUserInflight::new(REGION_BYTES, 0, 2, QUEUE_SIZE);
    let _ = driver.frontend.set_inflight_fd(&queues, region.as_raw_fd());
    wait_for_log(&backend, "for 2 queues of 16 descriptors");
    bystander_served(&backend, &bystander);

    // A ring of another size than its record.
    let mut driver = connect(&socket, None);
    let (info, region) = new_region(&mut driver);
    driver
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    let _ = driver.frontend.set_vring_num(0, QUEUE_SIZE / 2);
    let _ = driver.frontend.set_vring_base(0, 0);
    wait_for_log(&backend, "ring 0 has 8 descriptors, its inflight record 16");
    bystander_served(&backend, &bystander);

    // The socket serves the next VMM as ever.
    let mut driver = Driver::connect(&socket, 0);
    assert_eq!(driver.write(0, &[b'w'; 512], 256), OK);
    assert!(!backend.log().contains("panicked"));
}

#[test]
fn a_takeover_serves_the_vbds_on_the_same_paths_and_the_vmm_resumes_on_the_new_process() {
    let (mut backend, bystander) = tenants();
    let socket = backend.socket(1, "xvda");
    let start_id = backend.hypervisor().start_id();
    let mut first = connect(&socket, None);
    let (info, region) = new_region(&mut first);
    first
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    first.start_ring(0);
    assert_eq!(first.write(0, &[b'a'; 512], 256), OK);

    let log = backend.work.path().join("new.log");
    let mut new = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .arg("--devices")
        .arg(&backend.devices)
        .arg("--dir")
        .arg(&backend.dir)
        .arg("--takeover")
        .stdin(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The old process ends its VMM's connection and exits 0 once it has handed over.
    assert!(backend.wait(Duration::from_secs(30)).success());
    assert!(
        backend.log().ends_with("vbd-backend: handed over\n"),
        "{}",
        backend.log()
    );
    assert!(socket.exists() && backend.control().exists());
    let new_log = std::fs::read_to_string(&log).unwrap();
    assert!(new_log.contains("took over 2 VBDs"), "{new_log}");
    assert_eq!(
        backend.hypervisor().start_id(),
        start_id,
        "the start goes on"
    );

    // The VMM reconnects to the same path, now the new process's, and goes on.
    let Driver {
        frontend, memory, ..
    } = first;
    drop(frontend);
    let mut second = connect(&socket, Some(memory));
    second
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    second.next_avail = 1;
    second.used = 1;
    second.resume_ring(1);
    assert_eq!(second.write(1, &[b'b'; 512], 256), OK);
    assert_eq!(
        second.read(0, 1024, 512),
        (OK, [[b'a'; 512], [b'b'; 512]].concat())
    );
    bystander_served(&backend, &bystander);

    Command::new("kill")
        .arg("-TERM")
        .arg(new.id().to_string())
        .status()
        .unwrap();
    assert!(wait_with_timeout(&mut new, Duration::from_secs(30)).success());
}

#[test]
fn a_takeover_with_no_backend_to_take_over_is_one_line_and_exit_1() {
    let work = tempfile::tempdir().unwrap();
    let devices = work.path().join("devices.toml");
    File::create(work.path().join("hda.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::write(
        &devices,
        "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .arg("--devices")
        .arg(&devices)
        .arg("--dir")
        .arg(work.path().join("run"))
        .arg("--takeover")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.contains("takeover.sock: no backend to take over"),
        "{error}"
    );
}

#[test]
fn a_vbd_grown_under_its_vmm_is_recorded_anew_and_a_restart_resumes_onto_it() {
    let (backend, bystander) = tenants();
    let socket = backend.socket(1, "xvda");
    let mut first = connect(&socket, None);
    let (info, region) = new_region(&mut first);
    first
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    first.start_ring(0);
    assert_eq!(first.write(0, &[b'g'; 512], 256), OK);
    let mut stamp = [0u8; 32];
    region.read_exact_at(&mut stamp, DIGEST_AT - 8).unwrap();
    backend
        .hypervisor()
        .grow(
            1,
            xvda(),
            Extent::new(hda(), 6000, 4).unwrap(),
            SharingLevel::ReadersOnly,
        )
        .unwrap();
    let mut grown = [0u8; 32];
    region.read_exact_at(&mut grown, DIGEST_AT - 8).unwrap();
    assert_ne!(
        grown, stamp,
        "the record still names the VBD before it grew"
    );
    assert_eq!(u64::from_le_bytes(grown[16..24].try_into().unwrap()), 16);

    let Driver {
        frontend, memory, ..
    } = first;
    drop(frontend);
    let mut second = connect(&socket, Some(memory));
    second
        .frontend
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    second.next_avail = 1;
    second.used = 1;
    second.resume_ring(1);
    assert_eq!(second.write(15, &[b'h'; 512], 256), OK);
    assert_eq!(backend.read_image("hda", 6003 * 512, 512), vec![b'h'; 512]);
    assert!(!backend.log().contains("another VBD"), "{}", backend.log());
    bystander_served(&backend, &bystander);
}

#[test]
fn a_takeover_that_fails_before_it_has_taken_over_leaves_the_old_backend_serving() {
    let (backend, bystander) = tenants();
    let mut first = Driver::connect(&backend.socket(1, "xvda"), 0);
    assert_eq!(first.write(0, &[b'o'; 512], 256), OK);
    // A devices file without hdb: the new process cannot make domain 1's VBD.
    let devices = backend.work.path().join("hda-only.toml");
    std::fs::write(
        &devices,
        "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .arg("--devices")
        .arg(&devices)
        .arg("--dir")
        .arg(&backend.dir)
        .arg("--takeover")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("cannot give the VBD"), "{error}");
    wait_for_log(&backend, "the new backend went away before it took over");
    // The old backend goes on: its VMM, its control socket, the other tenants.
    assert_eq!(first.write(1, &[b'p'; 512], 256), OK);
    let (listed, _) = backend.hypervisor().probe(Some(1)).unwrap();
    assert_eq!(listed.len(), 1);
    bystander_served(&backend, &bystander);
}
