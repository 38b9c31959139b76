//! What a VMM can do to the backend's resources through the life of its connections: guest
//! memory that vanishes under the backend (a memfd truncated while requests are posted)
//! ends that connection only, never the process; and connections that come and go leave no
//! descriptor behind.

mod common;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use common::{hda, label, pattern, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Descriptors in the queue: room for a few reads of three descriptors each.
const QUEUE_SIZE: u16 = 64;
/// Guest memory and where the queue, the request headers, the statuses and the data live.
const MEMORY_BYTES: usize = 4 << 20;
const DESCRIPTORS: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADERS: u64 = 0x3000;
const STATUSES: u64 = 0x3800;
const DATA: u64 = 0x10000;
/// Each read's data, at `DATA + index * READ_BYTES`.
const READ_BYTES: u32 = 64 << 10;

const VIRTIO_BLK_T_IN: u32 = 0;
const OK: u8 = 0;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A VMM and its guest's driver for one vhost-user-blk device with one queue, whose guest
/// memory is a memfd the test may truncate.
struct Driver {
    frontend: Frontend,
    /// The guest memory's file, kept to truncate it.
    file: File,
    memory: GuestMemoryMmap<()>,
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
}

/// Open a vhost-user connection to `socket` and take ownership, retrying while the backend
/// still counts a VMM that has just left.
fn connect(socket: &Path) -> (Frontend, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let frontend = Frontend::connect(socket, 1).unwrap();
        match frontend.set_owner().and_then(|()| frontend.get_features()) {
            Ok(features) => return (frontend, features),
            Err(error) => assert!(Instant::now() < deadline, "refused: {error}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Driver {
    fn connect(socket: &Path) -> Driver {
        let (mut frontend, features) = connect(socket);
        // No event-idx: the driver kicks every request and polls the used ring.
        frontend
            .set_features(features & !VIRTIO_RING_F_EVENT_IDX)
            .unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        let file =
            File::from(rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap());
        file.set_len(MEMORY_BYTES as u64).unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEMORY_BYTES,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let region = memory.iter().next().unwrap();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()])
            .unwrap();
        // Ring addresses are the VMM's own, as QEMU sends them.
        let mapped = region.as_ptr() as u64;
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
        frontend.set_vring_base(0, 0).unwrap();
        let mut driver = Driver {
            frontend,
            file,
            memory,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
            next_avail: 0,
        };
        driver.frontend.set_vring_call(0, &driver.call).unwrap();
        driver.frontend.set_vring_kick(0, &driver.kick).unwrap();
        driver.frontend.set_vring_enable(0, true).unwrap();
        driver
    }

    fn descriptor(&self, index: u16, address: u64, length: u32, flags: u16) {
        let at = DESCRIPTORS + 16 * u64::from(index);
        let mut bytes = address.to_le_bytes().to_vec();
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&(index + 1).to_le_bytes());
        self.memory.write_slice(&bytes, GuestAddress(at)).unwrap();
    }

    /// Make `count` reads of `READ_BYTES` from sector 0 available and kick once.
    fn post_reads(&mut self, count: u16) {
        for read in 0..count {
            let first = 3 * read;
            let header = HEADERS + 16 * u64::from(read);
            let status = STATUSES + u64::from(read);
            let mut bytes = VIRTIO_BLK_T_IN.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0; 12]);
            self.memory
                .write_slice(&bytes, GuestAddress(header))
                .unwrap();
            // A status the device did not write reads as 0xff.
            self.memory.write_obj(0xffu8, GuestAddress(status)).unwrap();
            self.descriptor(first, header, 16, VIRTQ_DESC_F_NEXT);
            let data = DATA + u64::from(read) * u64::from(READ_BYTES);
            self.descriptor(
                first + 1,
                data,
                READ_BYTES,
                VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            );
            self.descriptor(first + 2, status, 1, VIRTQ_DESC_F_WRITE);
            let slot = u64::from(self.next_avail % QUEUE_SIZE);
            self.memory
                .write_obj(first, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        fence(Ordering::SeqCst);
        self.memory
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
        self.kick.write(1).unwrap();
    }

    /// Wait for every posted request to be used.
    fn wait_used(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.memory.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != self.next_avail {
            assert!(Instant::now() < deadline, "the requests were not completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        fence(Ordering::SeqCst);
    }

    /// Read `READ_BYTES` from sector 0; the status and the data.
    fn read(&mut self) -> (u8, Vec<u8>) {
        self.post_reads(1);
        self.wait_used();
        let mut data = vec![0u8; READ_BYTES as usize];
        self.memory
            .read_slice(&mut data, GuestAddress(DATA))
            .unwrap();
        (self.memory.read_obj(GuestAddress(STATUSES)).unwrap(), data)
    }
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
    let mut bystander = Driver::connect(&backend.socket(2, "xvda"));
    let mut hostile = Driver::connect(&backend.socket(1, "xvda"));
    assert_eq!(hostile.read().0, OK);

    // Reads in flight, then the memory goes away under them, then a kick makes the queue
    // thread read the (now missing) avail ring.
    hostile.post_reads(8);
    hostile.file.set_len(0).unwrap();
    hostile.kick.write(1).unwrap();

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
    assert_eq!(bystander.read(), (OK, theirs.clone()));
    drop(hostile);
    let mut again = Driver::connect(&backend.socket(1, "xvda"));
    assert_eq!(again.read(), (OK, vec![0; READ_BYTES as usize]));
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
    drop(connect(&socket));
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
        drop(connect(&socket));
        cycles += 1;
    }
    assert!(cycles >= 1_000, "only {cycles} connections in 20 s");
    assert_eq!(
        settled(before),
        before,
        "open descriptors after {cycles} connections"
    );
}
