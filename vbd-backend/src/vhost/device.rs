//! The virtio-blk device behind one VBD's vhost-user socket: its features and config space,
//! and the queue threads, each woken by its queue's kick to serve it ([`super::queue`]).
//!
//! Each queue has its own thread (`queues_per_thread` gives one queue per thread) with its
//! own I/O context and io_uring, which alone pops, serves and completes that queue's
//! requests, and looks for more for a moment after a busy round ([`crate::polling`]).
//! Nothing a guest sends can stop a queue: every failure becomes a status byte, and
//! `handle_event` only fails on errors of the vhost-user plumbing itself.
//!
//! A ring is stopped (`GET_VRING_BASE`, when the VMM stops the device or hands it over) only
//! once every request its queue thread popped has completed: vhost-user-backend marks the
//! ring not ready, so the thread pops nothing more, then asks [`BlockDevice::stop_vring`],
//! which waits for the thread's batch to finish. From then until the ring is started again,
//! the queue thread writes nothing to the guest's memory or its used ring, whatever it is
//! woken for: the VMM reads where the ring stopped and owns it.
//!
//! Every guest memory table is registered ([`crate::guest_memory`]) before a queue thread
//! touches it. A queue thread touches only the table it registered, its rings included: the
//! vring's own methods would reach for the newest table, which vhost-user-backend publishes
//! before this device can register it. A VMM that takes its memory away (truncates the file it shared) breaks its
//! own device: the queue threads stop serving and the connection is ended, and the process
//! and every other VBD go on.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hv_vbd::VbdRef;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::exit_events::ExitEvents;
use super::inflight::Inflight;
use super::memory_table::MemoryTable;
use super::queue::{QueueTarget, QueueWorker};
use super::request::{MAX_SEGMENTS, MAX_SEGMENT_SECTORS, MAX_TRANSFER_BYTES};
use super::ResumedRings;
use crate::guest_memory::GuestMappings;
use crate::polling;
use crate::shared::Shared;
use crate::vbd::vbd_state;

/// Descriptors per queue, and so the longest chain.
pub const QUEUE_SIZE: u16 = 256;

pub type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Data descriptors a request may have (`seg_max`): the queue, less header and status.
const SEGMENTS_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes one data descriptor may hold (`size_max`). Linux's virtio_blk sets no limit of its
/// own on a request's size, only on its segments' count and size, so these two are what
/// keeps a Linux guest's requests inside [`MAX_TRANSFER_BYTES`].
const SEGMENT_BYTES_MAX: u32 = 16 << 10;
const _: () = assert!(SEGMENTS_MAX as u64 * SEGMENT_BYTES_MAX as u64 <= MAX_TRANSFER_BYTES);

/// Guest memory regions one connection may hold. Each takes a slot of the registry of guest
/// mappings ([`crate::guest_memory`]) that every connection shares, and `CONFIGURE_MEM_SLOTS`
/// lets a VMM add up to 509 one at a time: a few VMMs would fill it, and another VBD's VMM
/// could not be served. QEMU maps a handful of regions, libblkio one per buffer area.
const MAX_REGIONS: usize = 32;

/// The virtio-blk config space up to the write-zeroes fields, little-endian and unaligned
/// like the device's registers, so it has no padding.
#[repr(C)]
#[derive(Debug, Default, IntoBytes, Immutable, KnownLayout)]
struct BlockConfig {
    capacity: U64,
    size_max: U32,
    seg_max: U32,
    cylinders: U16,
    heads: u8,
    sectors: u8,
    blk_size: U32,
    physical_block_exp: u8,
    alignment_offset: u8,
    min_io_size: U16,
    opt_io_size: U32,
    wce: u8,
    unused: u8,
    num_queues: U16,
    max_discard_sectors: U32,
    max_discard_seg: U32,
    discard_sector_alignment: U32,
    max_write_zeroes_sectors: U32,
    max_write_zeroes_seg: U32,
    write_zeroes_may_unmap: u8,
    unused1: [u8; 3],
}

// The layout is the kernel's, field for field.
const _: () = {
    use core::mem::offset_of;
    use virtio_bindings::virtio_blk::virtio_blk_config as Kernel;
    assert!(offset_of!(BlockConfig, blk_size) == offset_of!(Kernel, blk_size));
    assert!(offset_of!(BlockConfig, num_queues) == offset_of!(Kernel, num_queues));
    assert!(
        offset_of!(BlockConfig, max_discard_sectors) == offset_of!(Kernel, max_discard_sectors)
    );
    assert!(
        offset_of!(BlockConfig, max_write_zeroes_seg) == offset_of!(Kernel, max_write_zeroes_seg)
    );
    assert!(
        offset_of!(BlockConfig, write_zeroes_may_unmap)
            == offset_of!(Kernel, write_zeroes_may_unmap)
    );
    assert!(size_of::<BlockConfig>() == offset_of!(Kernel, max_secure_erase_sectors));
};

/// What the device serves, shared with its export.
pub struct DeviceTarget {
    pub shared: Arc<Shared>,
    /// The VBD the socket was made for: once it is gone, requests fail.
    pub vbd: VbdRef,
    pub writable: bool,
    /// `VIRTIO_BLK_T_GET_ID`: the VBD's label (`vd:3`, `phy:hda3`), or its device name when
    /// it has none.
    pub serial: String,
    /// The socket, as log lines name it: `dom1/xvda.sock`.
    pub name: String,
}

/// One vhost-user-blk device, for one connection.
pub struct BlockDevice {
    target: Arc<DeviceTarget>,
    table: MemoryTable,
    event_idx: AtomicBool,
    /// One worker per queue thread, made at its first request.
    workers: Vec<Mutex<Option<QueueWorker>>>,
    /// Rings the VMM resumed where this backend did not start them; see [`super`].
    resumed: Arc<ResumedRings>,
    /// The rings' inflight records ([`super::inflight`]).
    inflight: Arc<Inflight>,
    /// The queue threads' exit events, closed with the device since the daemon leaks them.
    exit_events: ExitEvents,
    /// The guest memory this device has used, registered while it may be touched.
    mappings: GuestMappings,
    /// The VMM's connection, ended when it cannot be served any more.
    vmm: UnixStream,
    /// Whether the connection was ended, so that why is said once.
    ending: AtomicBool,
}

impl BlockDevice {
    pub fn new(
        target: Arc<DeviceTarget>,
        memory: Memory,
        resumed: Arc<ResumedRings>,
        inflight: Arc<Inflight>,
        vmm: UnixStream,
    ) -> BlockDevice {
        let workers = (0..target.shared.queues)
            .map(|_| Mutex::new(None))
            .collect();
        BlockDevice {
            target,
            table: MemoryTable::new(memory),
            event_idx: AtomicBool::new(false),
            workers,
            resumed,
            inflight,
            exit_events: ExitEvents::default(),
            mappings: GuestMappings::default(),
            vmm,
            ending: AtomicBool::new(false),
        }
    }

    fn config(&self) -> BlockConfig {
        // A VBD that left the table reads as empty; its requests fail anyway.
        let capacity = vbd_state(self.target.shared.table, &self.target.vbd)
            .map_or(0, |state| state.size_sectors);
        BlockConfig {
            capacity: capacity.into(),
            size_max: SEGMENT_BYTES_MAX.into(),
            seg_max: SEGMENTS_MAX.into(),
            blk_size: 512.into(),
            num_queues: self.target.shared.queues.into(),
            max_discard_sectors: MAX_SEGMENT_SECTORS.into(),
            max_discard_seg: MAX_SEGMENTS.into(),
            discard_sector_alignment: 1.into(),
            max_write_zeroes_sectors: MAX_SEGMENT_SECTORS.into(),
            max_write_zeroes_seg: MAX_SEGMENTS.into(),
            write_zeroes_may_unmap: 1,
            ..BlockConfig::default()
        }
    }

    /// The connection cannot be served any more: end it (which ends the daemon and its
    /// queue threads), saying why once.
    fn end_connection(&self, why: &str) {
        if !self.ending.swap(true, Ordering::AcqRel) {
            eprintln!(
                "vbd-backend: {}: {why}: the connection ends",
                self.target.name
            );
        }
        let _ = self.vmm.shutdown(Shutdown::Both);
    }

    /// Register `memory` before it is touched. When it cannot be, the connection ends:
    /// memory the fault handler does not know could take the process down with it.
    fn track(&self, memory: &GuestMemoryMmap<()>) -> io::Result<()> {
        let regions = memory.num_regions();
        let tracked = if regions > MAX_REGIONS {
            Err(io::Error::other(format!(
                "{regions} guest memory regions, more than a connection may hold ({MAX_REGIONS})"
            )))
        } else {
            self.mappings.track(memory)
        };
        if let Err(error) = &tracked {
            self.end_connection(&format!(
                "its guest memory cannot be served safely ({error})"
            ));
        }
        tracked
    }

    /// Wait until queue `index`'s thread has completed every request it popped. Its thread
    /// holds its worker while serving (queue `i` is thread `i`'s: `queues_per_thread`), so
    /// having the worker means that; the thread waits for nothing the caller holds: its
    /// ring's lock is free, and a call eventfd never blocks.
    fn wait_for_worker(&self, index: usize) {
        if let Some(slot) = self.workers.get(index) {
            drop(slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        }
    }

    /// Another process took over: once no queue thread pops any more (see
    /// [`crate::shared::Shared::handed_over`]), wait until every request popped has
    /// completed, so that nothing of this process touches the rings after the VMM moves on.
    pub fn quiesce(&self) {
        for index in 0..self.workers.len() {
            self.wait_for_worker(index);
        }
    }

    /// Serve `vring` until it has nothing more, or its guest memory broke.
    fn serve_queue(
        &self,
        device_event: u16,
        vring: &VringRwLock<Memory>,
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(slot) = self.workers.get(thread_id) else {
            return Ok(());
        };
        let mut worker = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let worker = worker.get_or_insert_with(|| QueueWorker::new(&self.target, device_event));
        // A stopped ring is the VMM's (see `stop_vring`), until it is started again.
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        let queue = QueueTarget {
            target: &self.target,
            resumed: &self.resumed,
            table: &self.table,
            inflight: &self.inflight,
            ring: device_event,
        };
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            let memory = self.table.newest();
            if self.track(&memory).is_err() {
                return Ok(());
            }
            // Once another process took over, what is left in the ring is its to take: more
            // passes would find the same entries and take none.
            if self.mappings.broken() || self.target.shared.handed_over() {
                return Ok(());
            }
            if event_idx {
                vring
                    .get_mut()
                    .get_queue_mut()
                    .disable_notification(&*memory)
                    .map_err(|error| io::Error::other(format!("{error:?}")))?;
            }
            let popped_from = vring.get_ref().get_queue().next_avail();
            worker.serve(&queue, vring, &memory)?;
            if !self.table.is_newest(&memory) {
                // The batch stopped popping at a newer table: what was posted since is
                // served under it.
                continue;
            }
            // Notifications are still off: a request the driver posts while the queue looks
            // costs it no kick.
            let busy = vring.get_ref().get_queue().next_avail() != popped_from;
            if busy && polling::look_for_more(|| available(vring, &memory)) {
                continue;
            }
            // With event-idx, requests that arrived while notifications were off are served
            // before sleeping again.
            let more = event_idx
                && vring
                    .get_mut()
                    .get_queue_mut()
                    .enable_notification(&*memory)
                    .map_err(|error| io::Error::other(format!("{error:?}")))?;
            if !more {
                return Ok(());
            }
        }
    }
}

/// Whether the driver has posted a chain the queue has not popped, while the ring is
/// started.
fn available(vring: &VringRwLock<Memory>, memory: &GuestMemoryMmap<()>) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(memory, Ordering::Acquire)
            .is_ok_and(|index| index.0 != queue.next_avail())
}

impl VhostUserBackend for BlockDevice {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        usize::from(self.target.shared.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        let mut features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_MQ,
        ]
        .iter()
        .fold(0u64, |features, bit| features | 1 << bit);
        if self.target.writable {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        } else {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // libblkio (nbdkit's blkio plugin, QEMU's blkio driver, fio's libblkio engine) refuses
        // a back-end without REPLY_ACK, CONFIG and CONFIGURE_MEM_SLOTS: it maps its buffers
        // one region at a time (ADD_MEM_REG, REM_MEM_REG), and each new table reaches
        // `update_memory` like a SET_MEM_TABLE's. vhost answers REPLY_ACK itself; it is named
        // here so that what a client may rely on is said in one place.
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The vhost-user config space is at most 256 bytes; past our fields it reads as zero.
        let mut space = [0u8; 256];
        let config = self.config();
        space[..size_of::<BlockConfig>()].copy_from_slice(config.as_bytes());
        let start = offset as usize;
        start
            .checked_add(size as usize)
            .and_then(|end| space.get(start..end))
            .map_or_else(Vec::new, <[u8]>::to_vec)
    }

    fn update_memory(&self, memory: Memory) -> io::Result<()> {
        // `memory` is the atomic handle this device already holds, now pointing at the new
        // map; a queue thread that got there first has registered it already.
        let tracked = self.track(&memory.memory());
        // vhost-user-backend acknowledges the table when this returns: by then no queue
        // thread may pop under the old one.
        self.table.published();
        tracked
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The ring is no longer ready, so its queue thread pops nothing more.
        self.wait_for_worker(queue_index as usize);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|queue| 1u64 << queue).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // The worker keeps the notifier; dropping the daemon notifies it and joins the thread.
        self.exit_events.create()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Ok(());
        };
        let served = self.serve_queue(device_event, vring, thread_id);
        if self.mappings.broken() {
            // Whatever the queue made of the zeros it read instead is moot.
            self.end_connection("the VMM's guest memory went away (was its file truncated?)");
        } else if let Err(error) = served {
            // Its rings left its memory, or its call eventfd failed: the VMM's doing, and
            // nothing more can be served to it. An error returned here would end this
            // queue's thread and leave the connection up with a dead queue.
            self.end_connection(&format!("queue {device_event} cannot be served ({error})"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    use crate::disks::tests::two_disks;
    use crate::vbd::tests::{create, empty_table, xvda};

    #[test]
    fn the_config_space_advertises_the_request_limits_a_request_is_held_to() {
        let (_directory, disks) = two_disks();
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
        let target = DeviceTarget {
            shared: Arc::new(Shared::new(table, disks, 1, 1, None)),
            vbd,
            writable: true,
            serial: "vd:1".into(),
            name: "dom1/xvda.sock".into(),
        };
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let (vmm, _peer) = UnixStream::pair().unwrap();
        let device = BlockDevice::new(
            Arc::new(target),
            memory,
            Arc::default(),
            Arc::new(Inflight::new(1)),
            vmm,
        );
        for feature in [
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_DISCARD,
        ] {
            assert_eq!(device.features() >> feature & 1, 1, "feature {feature}");
        }
        let space = device.get_config(0, size_of::<BlockConfig>() as u32);
        let word =
            |offset: usize| u32::from_le_bytes(space[offset..offset + 4].try_into().unwrap());
        assert_eq!(word(offset_of!(BlockConfig, size_max)), 16 << 10);
        assert_eq!(word(offset_of!(BlockConfig, seg_max)), 254);
        assert_eq!(word(offset_of!(BlockConfig, max_discard_sectors)), 1 << 17);
        assert_eq!(word(offset_of!(BlockConfig, max_discard_seg)), 16);
        assert_eq!(
            word(offset_of!(BlockConfig, max_write_zeroes_sectors)),
            1 << 17
        );
        assert_eq!(word(offset_of!(BlockConfig, max_write_zeroes_seg)), 16);
    }
}
