//! What a VMM can do to the backend's resources through the life of its connections: guest
//! memory that vanishes under the backend (a memfd truncated while requests are posted)
//! ends that connection only, never the process; and connections that come and go leave no
//! descriptor behind.

mod common;
#[path = "common/hostile_driver.rs"]
mod hostile_driver;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{hda, label, pattern, xvda, Backend};
use hostile_driver::{
    take_ownership, Driver, DATA, HEADER, OK, STATUS, VIRTIO_BLK_T_IN, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::VhostBackend;

/// Each read: 64 KiB of sector 0.
const READ_BYTES: u32 = 64 << 10;
/// Reads posted at once: three descriptors each, in the driver's queue of 16.
const IN_FLIGHT: u16 = 5;

/// Make `IN_FLIGHT` reads of `READ_BYTES` from sector 0 available, each with a header,
/// data and status of its own, and kick once.
fn post_reads(driver: &mut Driver) {
    let heads: Vec<u16> = (0..IN_FLIGHT)
        .map(|read| {
            let first = 3 * read;
            let (header, status) = (HEADER + 16 * u64::from(read), STATUS + u64::from(read));
            driver.header_at((header, status), VIRTIO_BLK_T_IN, 0);
            driver.descriptor(first, header, 16, VIRTQ_DESC_F_NEXT);
            let data = DATA + u64::from(read) * u64::from(READ_BYTES);
            driver.descriptor(
                first + 1,
                data,
                READ_BYTES,
                VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            );
            driver.descriptor(first + 2, status, 1, VIRTQ_DESC_F_WRITE);
            first
        })
        .collect();
    driver.offer(&heads);
    driver.kick();
}

/// Read `READ_BYTES` from sector 0; the status and the data.
fn read(driver: &mut Driver) -> (u8, Vec<u8>) {
    driver.read(0, READ_BYTES as usize, 4096)
}

/// `xvda` of `domain`, writable, over `READ_BYTES` of hda from `start`.
fn guest_vbd(backend: &Backend, domain: u32, start: u64) {
    let mut hypervisor = backend.hypervisor();
    let sectors = u64::from(READ_BYTES) / 512;
    hypervisor
        .create(domain, xvda(), Mode::READ | Mode::WRITE, label("vd:1"))
        .unwrap();
    hypervisor
        .set_extents(
            domain,
            xvda(),
            &[Extent::new(hda(), start, sectors).unwrap()],
            SharingLevel::ReadersOnly,
        )
        .unwrap();
}

/// The backend's process, from the credentials of a connection to its control socket.
fn backend_process(backend: &Backend) -> u32 {
    let stream = UnixStream::connect(backend.control()).unwrap();
    let peer = rustix::net::sockopt::socket_peercred(&stream).unwrap();
    peer.pid.as_raw_nonzero().get() as u32
}

fn open_descriptors(process: u32) -> usize {
    std::fs::read_dir(format!("/proc/{process}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_vmm_that_truncates_guest_memory_ends_its_own_connection_and_nothing_else() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, 1, 0);
    guest_vbd(&backend, 2, 4096);
    let theirs = pattern(READ_BYTES as usize, 7);
    backend.write_image("hda", 4096 * 512, &theirs);
    let mut bystander = Driver::connect(&backend.socket(2, "xvda"), 0);
    let mut hostile = Driver::connect(&backend.socket(1, "xvda"), 0);
    assert_eq!(read(&mut hostile).0, OK);

    // Reads in flight, then the memory goes away under them, then a kick makes the queue
    // thread read the (now missing) avail ring.
    post_reads(&mut hostile);
    hostile.truncate_memory();
    hostile.kick();

    // The connection ends: the backend hangs up on the VMM.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hostile.frontend.get_features().is_ok() {
        assert!(
            Instant::now() < deadline,
            "the connection whose memory vanished was not ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Everything else is still served: control.sock, another VBD's open connection, and a
    // new connection to the same socket.
    let (vbds, _) = backend.hypervisor().probe(None).unwrap();
    assert_eq!(vbds.len(), 2, "{}", backend.log());
    assert_eq!(read(&mut bystander), (OK, theirs.clone()));
    drop(hostile);
    let mut again = Driver::connect(&backend.socket(1, "xvda"), 0);
    assert_eq!(read(&mut again), (OK, vec![0; READ_BYTES as usize]));
    assert!(
        backend
            .log()
            .contains("dom1/xvda.sock: the VMM's guest memory went away"),
        "{}",
        backend.log()
    );
}

#[test]
fn connections_that_come_and_go_leave_no_descriptor_behind() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, 1, 0);
    let socket = backend.socket(1, "xvda");
    let process = backend_process(&backend);
    // A first connection makes what the process keeps for good (thread stacks, handlers).
    drop(take_ownership(&socket));
    let settled = |limit: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = open_descriptors(process);
            if count <= limit || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Teardown of that connection may still be under way: wait until the count holds.
    let mut before = open_descriptors(process);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = open_descriptors(process);
        if now == before {
            break;
        }
        before = now;
    }
    let started = Instant::now();
    let mut cycles = 0;
    while cycles < 10_000 && started.elapsed() < Duration::from_secs(20) {
        drop(take_ownership(&socket));
        cycles += 1;
    }
    assert!(cycles >= 1_000, "only {cycles} connections in 20 s");
    assert_eq!(
        settled(before),
        before,
        "open descriptors after {cycles} connections"
    );
}
