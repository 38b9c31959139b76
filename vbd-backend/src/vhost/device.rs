//! The virtio-blk device behind one VBD's vhost-user socket: its features and config space,
//! and the queue threads that turn each chain into a [`Request`], translate it through
//! hv-vbd and move the data straight between guest memory and the disks while the
//! translation is held.
//!
//! Each queue has its own thread (`queues_per_thread` gives one queue per thread) with its
//! own I/O context, which alone pops, serves and completes that queue's requests. Nothing a
//! guest sends can stop a queue: every failure becomes a status byte, and `handle_event`
//! only fails on errors of the vhost-user plumbing itself.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hv_vbd::{Access, VbdRef};
use shared_abi::Error;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_OK,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{
    Address, Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::request::{
    GuestBuffer, Operation, Range, Request, RequestError, MAX_SEGMENTS, MAX_SEGMENT_SECTORS,
};
use super::ResumedRings;
use crate::block::BlockContext;
use crate::disks::{DiskIo, Release};
use crate::service::Shared;
use crate::sys;
use crate::vbd::{vbd_state, Translator};

/// Descriptors per queue, and so the longest chain.
pub const QUEUE_SIZE: u16 = 256;

type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

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
    memory: Memory,
    event_idx: AtomicBool,
    /// One translator per queue thread, claimed at its first request.
    translators: Vec<Mutex<Option<Translator>>>,
    /// Rings the VMM resumed where this backend did not start them; see [`super`].
    resumed: Arc<ResumedRings>,
}

impl BlockDevice {
    pub fn new(
        target: Arc<DeviceTarget>,
        memory: Memory,
        resumed: Arc<ResumedRings>,
    ) -> BlockDevice {
        let translators = (0..target.shared.queues)
            .map(|_| Mutex::new(None))
            .collect();
        BlockDevice {
            target,
            memory,
            event_idx: AtomicBool::new(false),
            translators,
            resumed,
        }
    }

    fn config(&self) -> BlockConfig {
        // A VBD that left the table reads as empty; its requests fail anyway.
        let capacity = vbd_state(self.target.shared.table, &self.target.vbd)
            .map_or(0, |state| state.size_sectors);
        BlockConfig {
            capacity: capacity.into(),
            seg_max: u32::from(QUEUE_SIZE - 2).into(),
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

    /// Pop, serve and complete every available request of `vring`.
    fn serve_queue(
        &self,
        vring: &VringRwLock<Memory>,
        mut translator: Option<&mut Translator>,
    ) -> io::Result<()> {
        let memory = self.memory.memory();
        let mut completed = false;
        loop {
            let Some(chain) = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(memory.clone())
            else {
                break;
            };
            let head = chain.head_index();
            let used = self.serve_chain(chain, &*memory, translator.as_deref_mut());
            vring.add_used(head, used).map_err(|error| {
                io::Error::other(format!("cannot complete a request: {error:?}"))
            })?;
            completed = true;
        }
        let notify = vring
            .needs_notification()
            .map_err(|error| io::Error::other(format!("{error:?}")))?;
        if completed && notify {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Serve one chain and return the bytes written to the guest (the used length).
    fn serve_chain<I, M>(&self, chain: I, memory: &M, translator: Option<&mut Translator>) -> u32
    where
        I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
        M: GuestMemoryBackend,
    {
        let (status, result) = match Request::parse(chain, memory, usize::from(QUEUE_SIZE)) {
            Ok(request) => (
                request.status,
                self.execute(&request.operation, memory, translator),
            ),
            Err(rejected) => match rejected.status {
                Some(status) => (status, Err(rejected.error)),
                // Nowhere to say what went wrong: complete it empty.
                None => return 0,
            },
        };
        let (code, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(error) => (error.status(), 0),
        };
        // The status address was checked in parsing; if the guest unmapped it since, there is
        // nothing more to tell it.
        let _ = memory.write_obj(code, status);
        written.saturating_add(1)
    }

    /// Carry out a validated request; returns the data bytes written to the guest.
    fn execute<M: GuestMemoryBackend>(
        &self,
        operation: &Operation,
        memory: &M,
        translator: Option<&mut Translator>,
    ) -> Result<u32, RequestError> {
        if self.target.shared.stopping() {
            return Err(RequestError::Stopping);
        }
        if self.resumed.any() {
            return Err(RequestError::Resumed);
        }
        let translator = translator.ok_or(RequestError::Refused(Error::NoSpace))?;
        let vbd = &self.target.vbd;
        match operation {
            Operation::Read { sector, buffers } => {
                self.transfer(Access::Read, *sector, buffers, memory, translator)
            }
            Operation::Write { sector, buffers } => {
                self.transfer(Access::Write, *sector, buffers, memory, translator)
            }
            Operation::Flush => {
                self.block(translator).flush(vbd)?;
                Ok(0)
            }
            Operation::GetId { buffers } => {
                vbd_state(self.target.shared.table, vbd)?;
                Ok(self.write_id(buffers, memory))
            }
            Operation::Discard { ranges } => self.release(ranges, translator, |_| Release::Discard),
            Operation::WriteZeroes { ranges } => {
                self.release(ranges, translator, |range| Release::WriteZeroes {
                    may_unmap: range.unmap,
                })
            }
        }
    }

    /// Move a read's or write's data straight between the guest's buffers and the disks,
    /// each piece at its translated offset, while the translation is held. Returns the
    /// bytes written to the guest.
    fn transfer<M: GuestMemoryBackend>(
        &self,
        access: Access,
        sector: u64,
        buffers: &[GuestBuffer],
        memory: &M,
        translator: &mut Translator,
    ) -> Result<u32, RequestError> {
        let total: u64 = buffers.iter().map(|buffer| u64::from(buffer.length)).sum();
        let request = hv_vbd::Request::from_bytes(access, sector, total)?;
        let disks = &self.target.shared.disks;
        translator.with(&self.target.vbd, &request, |translation| {
            let lengths = buffers.iter().map(|buffer| buffer.length as usize);
            translation.transfers(lengths).try_for_each(|transfer| {
                let transfer = transfer?;
                // Inside a buffer that parsing checked against guest memory.
                let address = buffers
                    .get(transfer.buffer)
                    .and_then(|buffer| buffer.address.checked_add(transfer.buffer_offset as u64))
                    .ok_or(RequestError::BadGuestAddress)?;
                let disk = disks
                    .find(transfer.device)
                    .map_err(|error| self.failed(error))?;
                let mut offset = transfer.disk_offset;
                for slice in memory.get_slices(address, transfer.length) {
                    let slice = slice.map_err(|_| RequestError::BadGuestAddress)?;
                    match access {
                        Access::Read => sys::read_exact_at(disk.file(), offset, &slice),
                        Access::Write => sys::write_all_at(disk.file(), offset, &slice),
                    }
                    .map_err(|error| self.failed(error))?;
                    offset += slice.len() as u64;
                }
                Ok::<(), RequestError>(())
            })
        })??;
        Ok(match access {
            // At most `u32::MAX - 1`: parsing bounds a request's data.
            Access::Read => total as u32,
            Access::Write => 0,
        })
    }

    /// The operations without guest data, on this thread's translator.
    fn block<'a>(&'a self, translator: &'a mut Translator) -> BlockContext<'a> {
        BlockContext {
            translator,
            io: DiskIo {
                disks: &self.target.shared.disks,
                channel: &self.target.name,
            },
        }
    }

    /// Write the serial, NUL-padded to `VIRTIO_BLK_ID_BYTES` and cut to the buffers.
    fn write_id<M: GuestMemoryBackend>(&self, buffers: &[GuestBuffer], memory: &M) -> u32 {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let serial = self.target.serial.as_bytes();
        let count = serial.len().min(id.len());
        id[..count].copy_from_slice(&serial[..count]);
        let mut written = 0usize;
        for buffer in buffers {
            let count = (buffer.length as usize).min(id.len() - written);
            if count == 0
                || memory
                    .write_slice(&id[written..written + count], buffer.address)
                    .is_err()
            {
                break;
            }
            written += count;
        }
        written as u32
    }

    fn release(
        &self,
        ranges: &[Range],
        translator: &mut Translator,
        how: impl Fn(&Range) -> Release,
    ) -> Result<u32, RequestError> {
        let mut block = self.block(translator);
        for range in ranges {
            block.release(
                &self.target.vbd,
                range.sector,
                u64::from(range.nr_sectors),
                how(range),
            )?;
        }
        Ok(0)
    }

    /// A disk failed: log it, since the guest learns no more than `VIRTIO_BLK_S_IOERR`.
    fn failed(&self, failure: io::Error) -> RequestError {
        eprintln!(
            "vbd-backend: {}: disk I/O failed: {failure}",
            self.target.name
        );
        RequestError::Io
    }
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
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
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

    fn update_memory(&self, _memory: Memory) -> io::Result<()> {
        // `memory` is the atomic handle this device already holds, now pointing at the new map.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|queue| 1u64 << queue).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // The worker keeps the notifier; dropping the daemon notifies it and joins the thread.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
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
        let Some(slot) = self.translators.get(thread_id) else {
            return Ok(());
        };
        let mut translator = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if translator.is_none() {
            match Translator::new(self.target.shared.table) {
                Ok(claimed) => *translator = Some(claimed),
                Err(error) => eprintln!(
                    "vbd-backend: {}: queue {device_event} has no I/O context ({error}): its requests fail",
                    self.target.name
                ),
            }
        }
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(|error| io::Error::other(format!("{error:?}")))?;
            }
            self.serve_queue(vring, translator.as_mut())?;
            // With event-idx, requests that arrived while notifications were off are served
            // before sleeping again.
            let more = event_idx
                && vring
                    .enable_notification()
                    .map_err(|error| io::Error::other(format!("{error:?}")))?;
            if !more {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::tests::two_disks;
    use crate::vbd::tests::{create, empty_table, xvda};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::GuestAddress;

    #[test]
    fn requests_without_a_context_or_once_stopping_fail_and_touch_nothing() {
        let (_directory, disks) = two_disks();
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
        let shared = Arc::new(Shared::new(table, disks, 1, 1));
        let target = Arc::new(DeviceTarget {
            shared: shared.clone(),
            vbd,
            writable: true,
            serial: "vd:1".into(),
            name: "dom1/xvda.sock".into(),
        });
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let device = BlockDevice::new(
            target,
            GuestMemoryAtomic::new(memory.clone()),
            Arc::new(ResumedRings::default()),
        );
        let mut header = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 12]);
        memory.write_slice(&header, GuestAddress(0x100)).unwrap();
        let chain = || {
            vec![
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x1000, 512, 0, 0),
                Descriptor::new(0x80, 1, VRING_DESC_F_WRITE as u16, 0),
            ]
        };
        let status = || memory.read_obj::<u8>(GuestAddress(0x80)).unwrap();
        let on_disk = || {
            let mut sector = [0u8; 512];
            shared
                .disks
                .iter()
                .next()
                .unwrap()
                .read_exact_at(&mut sector, 0)
                .unwrap();
            sector[0]
        };
        let mut translator = Translator::new(table).unwrap();
        memory
            .write_slice(&[0xab; 512], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            device.serve_chain(chain(), &memory, Some(&mut translator)),
            1
        );
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_OK as u8, 0xab));

        memory
            .write_slice(&[0xcd; 512], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(device.serve_chain(chain(), &memory, None), 1);
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_IOERR as u8, 0xab));

        shared.stop();
        memory.write_obj(0xffu8, GuestAddress(0x80)).unwrap();
        assert_eq!(
            device.serve_chain(chain(), &memory, Some(&mut translator)),
            1
        );
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_IOERR as u8, 0xab));
    }
}
