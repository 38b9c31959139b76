//! Inflight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): what lets a guest's
//! requests survive the backend. The backend records every request it takes from a ring in
//! a shared region that the VMM keeps across the backend's death; a backend that the VMM
//! reconnects to (QEMU's `reconnect=N`) finds there which requests were taken and not
//! completed, does them again in the order they were taken, and serves the ring from there.
//!
//! The region ([`region`]) is made here, on `GET_INFLIGHT_FD`, in a sealed memfd, laid out as
//! the vhost-user specification says for split rings, and handed back by the VMM on
//! `SET_INFLIGHT_FD` before every start of the device, the first one included; the relay
//! ([`super::bridge`]) answers both itself, since vhost-user-backend 0.24 does not.
//!
//! The order of the stores is what makes a kill at any instruction recoverable:
//! - a chain is recorded as taken (its counter, then its flag) before anything is done for
//!   it; one popped and not yet recorded was not counted, and is popped again;
//! - its completion names it as `last_batch_head`, publishes the used element and the used
//!   index (virtio-queue's `add_used`), clears its flag, then records the used index. A
//!   restart that finds the ring's used index ahead of the recorded one knows that
//!   `last_batch_head` was published, and clears it ([`region::QueueRecord::recover`]).
//!
//! So after a restart the chains still flagged are exactly those taken and not published:
//! the ring's next available entry is its used index plus their number, whatever base the
//! VMM sends (QEMU sends the used index after a crash, which would pop completed chains
//! again). They are replayed one at a time, oldest first, through the same parsing,
//! admission and translation as any request, so a change to the VBD fences them too.
//!
//! The region also carries, after the queues, a stamp of the VBD it was made for (a digest
//! of its label, mode, size and extents, [`stamp_of`]), refreshed whenever the VBD changes
//! under a connection whose rings are all trusted (`vhost::Export::changed`).
//! A ring whose record carries another VBD's stamp (a restore onto other extents, another
//! mode, another VD under the same name) is replayed too, but every request fails with
//! `VIRTIO_BLK_S_IOERR` until the guest resets the device ([`super::ResumedRings`]): errors,
//! never another VD's data. A ring resumed without any record is treated the same way.

mod chain;
mod region;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use hv_vbd::VbdRef;
use virtio_queue::{Queue, QueueT};

pub use self::chain::descriptors;
use self::region::{Layout, Region};
pub use self::region::{Refused, Stamp};
use super::device::QUEUE_SIZE;
use crate::vbd::{vbd_state, Table};

/// Bytes of the payload of `GET_INFLIGHT_FD` and `SET_INFLIGHT_FD`: mmap size and offset
/// (u64 each), queues and queue size (u16 each), padding.
pub const PAYLOAD_BYTES: usize = 24;

/// The inflight state of one VMM connection: its region and each ring's tracker.
pub struct Inflight {
    queues: u16,
    region: Mutex<Option<Arc<Region>>>,
    /// Each ring's size as the VMM last set it, for the check against its record.
    sizes: Mutex<Vec<u16>>,
    rings: Vec<Mutex<RingTracker>>,
}

/// How a ring starts, as the record says.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// No record of this ring (no region, or none for this ring): the caller decides.
    Unrecorded,
    /// A fresh record: the driver started the ring.
    Fresh,
    /// A record of the VBD this socket serves: its requests in flight are replayed.
    Resumed,
    /// A record of another VBD (this says how it differs): replayed, and failed.
    Foreign(String),
}

impl Inflight {
    pub fn new(queues: u16) -> Inflight {
        Inflight {
            queues,
            region: Mutex::new(None),
            sizes: Mutex::new(vec![QUEUE_SIZE; usize::from(queues)]),
            rings: (0..queues).map(|_| Mutex::default()).collect(),
        }
    }

    fn layout(&self, payload: &[u8]) -> Result<Layout, Refused> {
        let layout = Layout {
            queues: u16::from_le_bytes([payload[16], payload[17]]),
            queue_size: u16::from_le_bytes([payload[18], payload[19]]),
        };
        if layout.queues == 0
            || layout.queues > self.queues
            || layout.queue_size == 0
            || layout.queue_size > QUEUE_SIZE
        {
            return Err(Refused::Layout(layout));
        }
        Ok(layout)
    }

    /// Answer `GET_INFLIGHT_FD`: a new region for the queues the payload asks for, stamped
    /// with `stamp`. Returns the reply's payload and the region's descriptor.
    pub fn get(
        &self,
        payload: &[u8; PAYLOAD_BYTES],
        stamp: Stamp,
    ) -> io::Result<([u8; PAYLOAD_BYTES], OwnedFd)> {
        let layout = self
            .layout(payload)
            .map_err(|refused| io::Error::new(io::ErrorKind::InvalidData, refused.to_string()))?;
        let (region, fd) = Region::create(layout)?;
        region.set_stamp(stamp);
        let mut reply = *payload;
        reply[..8].copy_from_slice(&(layout.bytes() as u64).to_le_bytes());
        reply[8..16].copy_from_slice(&0u64.to_le_bytes());
        Ok((reply, fd))
    }

    /// Take the region of `SET_INFLIGHT_FD` for the rings that start from now on.
    pub fn set(&self, payload: &[u8; PAYLOAD_BYTES], fd: Option<&OwnedFd>) -> Result<(), Refused> {
        let word = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().unwrap_or([0; 8]));
        let layout = self.layout(payload)?;
        let fd = fd.ok_or(Refused::Map("no descriptor".into()))?;
        let region = Region::open(fd, word(8), word(0), layout)?;
        *lock(&self.region) = Some(Arc::new(region));
        Ok(())
    }

    /// The VMM set ring `index`'s size.
    pub fn ring_size(&self, index: u32, size: u32) {
        if let Some(slot) = lock(&self.sizes).get_mut(index as usize) {
            *slot = u16::try_from(size).unwrap_or(u16::MAX);
        }
    }

    /// Ring `index` starts at `base`: decide from its record how, and set up its tracker.
    /// `current` is the stamp of the VBD the socket serves now. An error ends the connection.
    pub fn ring_starts(
        &self,
        index: u32,
        base: u32,
        current: impl FnOnce() -> Option<Stamp>,
    ) -> Result<Start, String> {
        let Some(ring) = self.rings.get(index as usize) else {
            return Ok(Start::Unrecorded);
        };
        let mut tracker = lock(ring);
        *tracker = RingTracker::default();
        let region = lock(&self.region).clone();
        let Some((region, record_index)) = region.and_then(|region| {
            let record_index = u16::try_from(index).ok()?;
            region.queue(record_index)?;
            Some((region, record_index))
        }) else {
            return Ok(Start::Unrecorded);
        };
        let size = lock(&self.sizes)
            .get(index as usize)
            .copied()
            .unwrap_or(QUEUE_SIZE);
        let Some(record) = region.queue(record_index) else {
            return Ok(Start::Unrecorded);
        };
        let layout = region.layout();
        if size != layout.queue_size {
            return Err(format!(
                "ring {index} has {size} descriptors, its inflight record {}",
                layout.queue_size
            ));
        }
        let start = if !record.started() {
            if base != 0 {
                return Ok(Start::Unrecorded);
            }
            record.start(size);
            Start::Fresh
        } else if record.desc_num() != size {
            return Err(format!(
                "ring {index} has {size} descriptors, its inflight record was started with {}",
                record.desc_num()
            ));
        } else {
            tracker.replay = true;
            match (region.stamp(), current()) {
                (Some(recorded), Some(now)) if recorded == now => Start::Resumed,
                (recorded, now) => Start::Foreign(format!(
                    "its record is of {}, the socket's VBD is {}",
                    describe(recorded),
                    describe(now)
                )),
            }
        };
        tracker.record = Some((region, record_index));
        Ok(start)
    }

    /// Whether ring `index` has requests to replay once it runs.
    pub fn replay_pending(&self, index: u32) -> bool {
        self.rings
            .get(index as usize)
            .is_some_and(|ring| lock(ring).replay)
    }

    /// Ring `index`'s tracker, held by its queue thread while it serves.
    pub fn ring(&self, index: u16) -> Option<MutexGuard<'_, RingTracker>> {
        self.rings.get(usize::from(index)).map(lock)
    }

    /// The VBD changed under the connection (resized): stamp its region anew.
    pub fn restamp(&self, stamp: Stamp) {
        if let Some(region) = lock(&self.region).as_ref() {
            region.set_stamp(stamp);
        }
    }
}

fn describe(stamp: Option<Stamp>) -> String {
    stamp.map_or_else(
        || "no VBD".to_string(),
        |stamp| {
            format!(
                "{} sectors in {} extents (digest {:#018x})",
                stamp.size_sectors, stamp.extents, stamp.digest
            )
        },
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One ring's view of its record, kept by the queue thread that serves the ring.
#[derive(Default)]
pub struct RingTracker {
    /// The region and the index of this ring's record in it.
    record: Option<(Arc<Region>, u16)>,
    /// The counter the next chain taken gets.
    counter: u64,
    /// Whether the chains in flight when the ring stopped are still to be replayed.
    replay: bool,
}

impl RingTracker {
    fn with_record(&self, each: impl FnOnce(region::QueueRecord<'_>)) {
        if let Some(record) = self
            .record
            .as_ref()
            .and_then(|(region, index)| region.queue(*index))
        {
            each(record);
        }
    }

    /// Chain `head` was popped: record it before anything is done for it.
    pub fn take(&mut self, head: u16) {
        let counter = self.counter;
        self.with_record(|record| record.take(head, counter));
        self.counter = counter.wrapping_add(1);
    }

    /// Chain `head`'s used element is about to be published.
    pub fn publishing(&self, head: u16) {
        self.with_record(|record| record.publishing(head));
    }

    /// Chain `head`'s used element is published; the ring's used index is now `used_idx`.
    pub fn published(&self, head: u16, used_idx: u16) {
        self.with_record(|record| record.published(head, used_idx));
    }

    /// If the ring was resumed from a record, the heads to replay, oldest first; the ring's
    /// next available and used entries are set from the record and the used ring's index
    /// in `memory`.
    pub fn take_replay<M: vm_memory::GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        memory: &M,
    ) -> Option<Vec<u16>> {
        if !std::mem::take(&mut self.replay) {
            return None;
        }
        let used = queue
            .used_idx(memory, std::sync::atomic::Ordering::Acquire)
            .ok()?
            .0;
        let mut replay = None;
        self.with_record(|record| replay = Some(record.recover(used)));
        let (heads, counter) = replay?;
        self.counter = counter;
        queue.set_next_used(used);
        queue.set_next_avail(used.wrapping_add(heads.len() as u16));
        Some(heads)
    }
}

/// The stamp of the VBD `vbd` is pinned to: its label, mode, size and extents, digested;
/// `None` once it is gone. FNV-1a: stable across builds (an upgraded binary must compute
/// the same digest), and enough to tell a VBD from another that an operator restored by
/// mistake; the region is the VMM's, which may reach this VBD anyway.
pub fn stamp_of(table: &Table, vbd: &VbdRef) -> Option<Stamp> {
    let state = vbd_state(table, vbd).ok()?;
    let mut digest = Fnv::default();
    digest.write(state.label.as_str().as_bytes());
    digest.write(&[u8::from(state.writable)]);
    digest.write(&state.size_sectors.to_le_bytes());
    let mut extents = 0u64;
    table
        .info(shared_abi::DOM0, vbd.id(), 0, usize::MAX, |_, extent| {
            digest.write(&extent.device().raw().to_le_bytes());
            digest.write(&extent.start_sector().to_le_bytes());
            digest.write(&extent.nr_sectors().to_le_bytes());
            extents += 1;
            Ok(())
        })
        .ok()?;
    Some(Stamp {
        digest: digest.0,
        size_sectors: state.size_sectors,
        extents,
    })
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
