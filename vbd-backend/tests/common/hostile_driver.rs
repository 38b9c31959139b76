//! A hostile virtio driver and VMM for vbd-backend's vhost-user-blk sockets: the test
//! owns guest memory (a shared file), writes descriptor tables and avail rings itself, any
//! bytes anywhere, and sends the vhost-user messages with the vhost crate's front end. The
//! well-formed requests (`request`, `read`, `write`, ...) are built from the same raw
//! pieces (`descriptor`, `offer`, `kick`, `wait_used`) a hostile test uses directly.
#![allow(dead_code)] // Each test file uses part of this.

use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

/// Descriptors in the queue; one request is in flight at a time.
pub const QUEUE_SIZE: u16 = 16;
/// Guest memory and where the queue, the request header, the status and the data live.
pub const MEMORY_BYTES: usize = 1 << 20;
pub const DESCRIPTORS: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const HEADER: u64 = 0x3000;
pub const STATUS: u64 = 0x3100;
pub const DATA: u64 = 0x10000;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const OK: u8 = 0;
pub const IOERR: u8 = 1;
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A buffer of a request after its header: where in guest memory, how long, and whether
/// the device writes it.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub address: u64,
    pub length: u32,
    pub device_writes: bool,
}

/// The VMM and the driver of one vhost-user-blk device with one queue.
pub struct Driver {
    pub frontend: Frontend,
    pub memory: GuestMemoryMmap<()>,
    pub kick: EventFd,
    pub call: EventFd,
    /// The avail index the driver published last.
    pub next_avail: u16,
    /// The used index up to which the driver has read the device's answers.
    pub used: u16,
}

/// Connect to `socket`, take ownership and read the device's features, retrying while the
/// backend still counts a VMM that has just left.
pub fn take_ownership(socket: &Path) -> (Frontend, u64) {
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
    /// Connect to `socket` and start queue 0 with its rings at `base`: 0 for a driver that
    /// has just started, anything else for a VMM resuming a guest that ran before. A VMM
    /// that has just left may still be counted as connected for a moment; retry then.
    pub fn connect(socket: &Path, base: u16) -> Driver {
        Driver::connect_with_call(socket, base, EventFd::new(0).unwrap())
    }

    /// [`Driver::connect`], signalled through `call` (a VMM may hand over any eventfd).
    pub fn connect_with_call(socket: &Path, base: u16, call: EventFd) -> Driver {
        Driver::open(socket, base, call, MEMORY_BYTES, false)
    }

    /// [`Driver::connect_with_call`] with `memory_bytes` of guest memory, for buffers past
    /// [`MEMORY_BYTES`] (a queue full of the largest requests).
    pub fn connect_with_memory(
        socket: &Path,
        base: u16,
        call: EventFd,
        memory_bytes: usize,
    ) -> Driver {
        Driver::open(socket, base, call, memory_bytes, false)
    }

    /// [`Driver::connect`] with event-idx negotiated, as a Linux guest does: the device then
    /// says in the used ring at which avail index it wants the next kick.
    pub fn connect_with_event_idx(socket: &Path, base: u16) -> Driver {
        Driver::open(socket, base, EventFd::new(0).unwrap(), MEMORY_BYTES, true)
    }

    fn open(
        socket: &Path,
        base: u16,
        call: EventFd,
        memory_bytes: usize,
        event_idx: bool,
    ) -> Driver {
        let (mut frontend, features) = take_ownership(socket);
        // The driver kicks every request and polls the used ring, whatever was negotiated.
        let features = if event_idx {
            features
        } else {
            features & !VIRTIO_RING_F_EVENT_IDX
        };
        frontend.set_features(features).unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(memory_bytes as u64).unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            memory_bytes,
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
            call,
            next_avail: base,
            used: base,
        };
        driver.start_ring(base);
        driver
    }

    /// Start queue 0 with its rings at `base`.
    pub fn start_ring(&mut self, base: u16) {
        self.memory
            .write_obj(base, GuestAddress(AVAIL + 2))
            .unwrap();
        self.memory.write_obj(base, GuestAddress(USED + 2)).unwrap();
        self.next_avail = base;
        self.used = base;
        self.resume_ring(base);
    }

    /// Start queue 0 on its rings as they are in guest memory, telling the backend `base`
    /// as the next request, as a VMM that reconnects does.
    pub fn resume_ring(&mut self, base: u16) {
        // Ring addresses are the VMM's own, as QEMU sends them.
        let mapped = self.memory.iter().next().unwrap().as_ptr() as u64;
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
    pub fn reset(&mut self) {
        self.frontend.get_vring_base(0).unwrap();
        self.start_ring(0);
    }

    /// Write descriptor `index` as a guest may: any address, length, flags and next.
    pub fn raw_descriptor(&self, index: u16, address: u64, length: u32, flags: u16, next: u16) {
        self.raw_descriptor_at(DESCRIPTORS, index, address, length, flags, next);
    }

    /// Write descriptor `index` of the table at `table` (the ring's, or an indirect one).
    pub fn raw_descriptor_at(
        &self,
        table: u64,
        index: u16,
        address: u64,
        length: u32,
        flags: u16,
        next: u16,
    ) {
        let at = table + 16 * u64::from(index);
        let mut bytes = address.to_le_bytes().to_vec();
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
        self.memory.write_slice(&bytes, GuestAddress(at)).unwrap();
    }

    /// Descriptor `index`, chained to the next one when `flags` say so.
    pub fn descriptor(&self, index: u16, address: u64, length: u32, flags: u16) {
        self.raw_descriptor(index, address, length, flags, index + 1);
    }

    /// The request header `kind` at `sector`, at `HEADER`, and a status byte the device has
    /// not written (0xff) at `STATUS`.
    pub fn header(&self, kind: u32, sector: u64) {
        self.header_at((HEADER, STATUS), kind, sector);
    }

    /// [`Driver::header`] at other addresses, for a request in flight beside another.
    pub fn header_at(&self, (header_address, status): (u64, u64), kind: u32, sector: u64) {
        let mut header = kind.to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        self.memory
            .write_slice(&header, GuestAddress(header_address))
            .unwrap();
        self.memory.write_obj(0xffu8, GuestAddress(status)).unwrap();
    }

    /// Plug `bytes` of guest memory at guest address `address`, in a file of its own, and
    /// send the whole new memory table as a VMM does. Returns once the backend has answered
    /// a later message, which it handles only after this one: the table is acknowledged.
    pub fn plug_memory(&mut self, address: u64, bytes: usize) {
        let file = tempfile::tempfile().unwrap();
        file.set_len(bytes as u64).unwrap();
        let mapping = MmapRegion::from_file(FileOffset::new(file, 0), bytes).unwrap();
        let region = GuestRegionMmap::new(mapping, GuestAddress(address)).unwrap();
        self.memory = self.memory.insert_region(Arc::new(region)).unwrap();
        let regions: Vec<_> = self
            .memory
            .iter()
            .map(|region| VhostUserMemoryRegionInfo::from_guest_region(region).unwrap())
            .collect();
        self.frontend.set_mem_table(&regions).unwrap();
        self.frontend.get_features().unwrap();
    }

    /// Put `heads` in the avail ring, whatever they are, and publish them.
    pub fn offer(&mut self, heads: &[u16]) {
        for &head in heads {
            let slot = u64::from(self.next_avail % QUEUE_SIZE);
            self.memory
                .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        fence(Ordering::SeqCst);
        self.memory
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Truncate the file of the first memory region to nothing, as a hostile VMM may.
    pub fn truncate_memory(&self) {
        let region = self.memory.iter().next().unwrap();
        region.file_offset().unwrap().file().set_len(0).unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// The used index the device has published.
    pub fn used_index(&self) -> u16 {
        self.memory.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Wait until the device has answered `count` more chains; each one's head and used
    /// length, in order.
    pub fn answered(&mut self, count: u16) -> Vec<(u32, u32)> {
        let target = self.used.wrapping_add(count);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.used_index().wrapping_sub(self.used) < count {
            assert!(Instant::now() < deadline, "the device did not answer");
            std::thread::sleep(Duration::from_millis(1));
        }
        fence(Ordering::SeqCst);
        let mut answers = Vec::new();
        while self.used != target {
            let slot = u64::from(self.used % QUEUE_SIZE);
            let at = USED + 4 + 8 * slot;
            let head: u32 = self.memory.read_obj(GuestAddress(at)).unwrap();
            let length: u32 = self.memory.read_obj(GuestAddress(at + 4)).unwrap();
            answers.push((head, length));
            self.used = self.used.wrapping_add(1);
        }
        answers
    }

    pub fn status(&self) -> u8 {
        self.memory.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Submit the request `kind` at `sector` with `buffers` as chain 0 and wait for it;
    /// returns its status byte and the used length.
    pub fn request(&mut self, kind: u32, sector: u64, buffers: &[Buffer]) -> (u8, u32) {
        self.header(kind, sector);
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
        self.offer(&[0]);
        self.kick();
        let answers = self.answered(1);
        assert_eq!(answers[0].0, 0, "the device answered chain 0");
        (self.status(), answers[0].1)
    }

    /// Read `bytes` at `sector` into two buffers split at `split`; the status and the data.
    pub fn read(&mut self, sector: u64, bytes: usize, split: usize) -> (u8, Vec<u8>) {
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
    pub fn write(&mut self, sector: u64, data: &[u8], split: usize) -> u8 {
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
    pub fn segments(&mut self, kind: u32, segments: &[(u64, u32, u32)]) -> u8 {
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

    pub fn get_id(&mut self) -> (u8, Vec<u8>) {
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
