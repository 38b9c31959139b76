//! The inflight region's bytes: the vhost-user specification's split-ring layout, one record
//! per queue, followed by this backend's stamp of the VBD the rings serve, and the stores
//! that keep it recoverable at every instruction.
//!
//! Per queue, 64-byte aligned (`inflight_split_region` of the specification):
//!
//! ```text
//!   0  features         u64   unused (0)
//!   8  version          u16   1 once the ring started; 0: never started (or reset)
//!  10  desc_num         u16   the ring's size
//!  12  last_batch_head  u16   the head whose used element is being published
//!  14  used_idx         u16   the used ring's index after the last completed publication
//!  16  desc[desc_num]         16 bytes each: inflight u8, padding [u8; 5], next u16, counter u64
//! ```
//!
//! After the queues, 64 bytes of ours ([`Stamp`]): the VBD the region was made for.
//!
//! The region is a memfd this backend makes and seals against shrinking and growing, so a
//! VMM can neither truncate it under us (a fault on every access) nor hand back a file that
//! could be: one without those seals is refused.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// Bytes of a queue record's header.
const QUEUE_HEADER: usize = 16;
/// Bytes of one descriptor's state.
const DESC_BYTES: usize = 16;
/// Queue records start on this boundary.
const ALIGNMENT: usize = 64;
/// Bytes of this backend's stamp after the queues.
const STAMP_BYTES: usize = 64;
/// The first word of a stamp: "vbdinfl1", so a stamp is never mistaken for zeros.
const STAMP_MAGIC: u64 = u64::from_le_bytes(*b"vbdinfl1");
/// The record version the specification defines.
const VERSION: u16 = 1;

// Offsets in a queue record.
const VERSION_AT: usize = 8;
const DESC_NUM_AT: usize = 10;
const LAST_BATCH_HEAD_AT: usize = 12;
const USED_IDX_AT: usize = 14;
// Offsets in a descriptor's state.
const INFLIGHT_AT: usize = 0;
const COUNTER_AT: usize = 8;

/// The size and shape of a region, as `GET_INFLIGHT_FD` and `SET_INFLIGHT_FD` carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub queues: u16,
    pub queue_size: u16,
}

impl Layout {
    /// Bytes of one queue's record.
    pub fn queue_bytes(self) -> usize {
        (QUEUE_HEADER + DESC_BYTES * usize::from(self.queue_size)).next_multiple_of(ALIGNMENT)
    }

    /// Bytes of the whole region: the queues and the stamp.
    pub fn bytes(self) -> usize {
        self.queue_bytes() * usize::from(self.queues) + STAMP_BYTES
    }
}

/// What the region says about the VBD its rings served: a digest and two plain fields,
/// so that a log line can say what differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub digest: u64,
    pub size_sectors: u64,
    pub extents: u64,
}

/// A mapped inflight region.
pub struct Region {
    map: MmapRegion<()>,
    layout: Layout,
}

/// Why a region handed over by a VMM is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Layout(Layout),
    Size { declared: u64, expected: usize },
    Offset(u64),
    Unsealed,
    Short { file: u64, needed: u64 },
    Map(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Layout(layout) => write!(
                f,
                "an inflight region for {} queues of {} descriptors, which this device does not have",
                layout.queues, layout.queue_size
            ),
            Refused::Size { declared, expected } => write!(
                f,
                "an inflight region of {declared} bytes where its queues take {expected}"
            ),
            Refused::Offset(offset) => {
                write!(f, "an inflight region at offset {offset}, past any file")
            }
            Refused::Unsealed => write!(
                f,
                "an inflight region in a file that is not sealed against shrinking (not one this backend made)"
            ),
            Refused::Short { file, needed } => write!(
                f,
                "an inflight region past the end of its file ({file} bytes, {needed} needed)"
            ),
            Refused::Map(error) => write!(f, "an inflight region that cannot be mapped ({error})"),
        }
    }
}

impl Region {
    /// A new, zeroed region in a sealed memfd, and the descriptor to hand the VMM.
    pub fn create(layout: Layout) -> io::Result<(Region, OwnedFd)> {
        let fd = rustix::fs::memfd_create(
            "vbd-backend-inflight",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, layout.bytes() as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let region =
            Region::map(&fd, 0, layout).map_err(|refused| io::Error::other(refused.to_string()))?;
        Ok((region, fd))
    }

    /// Map the region a VMM hands back, once its file is checked: sealed, and long enough.
    pub fn open(
        fd: &OwnedFd,
        offset: u64,
        declared: u64,
        layout: Layout,
    ) -> Result<Region, Refused> {
        let expected = layout.bytes();
        if declared != expected as u64 {
            return Err(Refused::Size { declared, expected });
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| Refused::Unsealed)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Refused::Unsealed);
        }
        let file = rustix::fs::fstat(fd)
            .map_err(|error| Refused::Map(error.to_string()))?
            .st_size as u64;
        let needed = offset
            .checked_add(declared)
            .ok_or(Refused::Offset(offset))?;
        if needed > file {
            return Err(Refused::Short { file, needed });
        }
        Region::map(fd, offset, layout)
    }

    /// Map `layout`'s bytes at `offset` of `fd`; an offset that is not page-aligned is
    /// refused by mmap(2).
    fn map(fd: &OwnedFd, offset: u64, layout: Layout) -> Result<Region, Refused> {
        let file = File::from(
            fd.try_clone()
                .map_err(|error| Refused::Map(error.to_string()))?,
        );
        let map = MmapRegion::from_file(FileOffset::new(file, offset), layout.bytes())
            .map_err(|error| Refused::Map(error.to_string()))?;
        Ok(Region { map, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn bytes(&self) -> VolatileSlice<'_> {
        self.map.as_volatile_slice()
    }

    /// The record of queue `index`, if the region has one.
    pub fn queue(&self, index: u16) -> Option<QueueRecord<'_>> {
        if index >= self.layout.queues {
            return None;
        }
        let length = self.layout.queue_bytes();
        let slice = self
            .bytes()
            .subslice(usize::from(index) * length, length)
            .ok()?;
        Some(QueueRecord {
            slice,
            size: self.layout.queue_size,
        })
    }

    /// The stamp, if one was written.
    pub fn stamp(&self) -> Option<Stamp> {
        let at = self.layout.bytes() - STAMP_BYTES;
        let word = |offset: usize| {
            self.bytes()
                .load::<u64>(at + offset, Ordering::Acquire)
                .unwrap_or(0)
        };
        (u64::from_le(word(0)) == STAMP_MAGIC).then(|| Stamp {
            digest: u64::from_le(word(8)),
            size_sectors: u64::from_le(word(16)),
            extents: u64::from_le(word(24)),
        })
    }

    /// Record the VBD the rings serve.
    pub fn set_stamp(&self, stamp: Stamp) {
        let at = self.layout.bytes() - STAMP_BYTES;
        let words = [STAMP_MAGIC, stamp.digest, stamp.size_sectors, stamp.extents];
        for (index, word) in words.into_iter().enumerate() {
            let _ = self
                .bytes()
                .store(word.to_le(), at + 8 * index, Ordering::Release);
        }
    }
}

/// One queue's record in the region. Every field is a naturally aligned atomic in shared
/// memory; the order of the stores is what a restarted backend relies on.
pub struct QueueRecord<'a> {
    slice: VolatileSlice<'a>,
    size: u16,
}

impl QueueRecord<'_> {
    fn load16(&self, at: usize) -> u16 {
        u16::from_le(self.slice.load(at, Ordering::Acquire).unwrap_or(0))
    }

    fn store16(&self, at: usize, value: u16) {
        let _ = self.slice.store(value.to_le(), at, Ordering::Release);
    }

    fn desc(&self, head: u16) -> Option<usize> {
        (head < self.size).then(|| QUEUE_HEADER + DESC_BYTES * usize::from(head))
    }

    /// Whether the ring has started since the region was made (or the device reset).
    pub fn started(&self) -> bool {
        self.load16(VERSION_AT) != 0
    }

    /// The ring size the record was started with.
    pub fn desc_num(&self) -> u16 {
        self.load16(DESC_NUM_AT)
    }

    /// A ring of `size` descriptors starts afresh at 0: nothing is in flight.
    pub fn start(&self, size: u16) {
        for head in 0..self.size {
            if let Some(at) = self.desc(head) {
                let _ = self.slice.store(0u8, at + INFLIGHT_AT, Ordering::Relaxed);
            }
        }
        self.store16(LAST_BATCH_HEAD_AT, 0);
        self.store16(USED_IDX_AT, 0);
        self.store16(DESC_NUM_AT, size);
        self.store16(VERSION_AT, VERSION);
    }

    /// Chain `head` was taken from the avail ring as the `counter`th: record it before
    /// anything is done for it. The counter first, so a set flag always has its counter.
    pub fn take(&self, head: u16, counter: u64) {
        let Some(at) = self.desc(head) else {
            return;
        };
        let _ = self
            .slice
            .store(counter.to_le(), at + COUNTER_AT, Ordering::Relaxed);
        let _ = self.slice.store(1u8, at + INFLIGHT_AT, Ordering::Release);
    }

    /// Chain `head`'s used element is about to be published.
    pub fn publishing(&self, head: u16) {
        self.store16(LAST_BATCH_HEAD_AT, head);
    }

    /// Chain `head`'s used element is published and the used index is now `used_idx`. Until
    /// `used_idx` is stored here, a restart tells from the ring's own index that `head` was
    /// published ([`QueueRecord::recover`]).
    pub fn published(&self, head: u16, used_idx: u16) {
        let Some(at) = self.desc(head) else {
            return;
        };
        let _ = self.slice.store(0u8, at + INFLIGHT_AT, Ordering::Release);
        fence(Ordering::SeqCst);
        self.store16(USED_IDX_AT, used_idx);
    }

    /// After a restart: reconcile the record with the used ring's index `ring_used_idx`, and
    /// return the heads still in flight in the order they were taken, with the next counter.
    pub fn recover(&self, ring_used_idx: u16) -> (Vec<u16>, u64) {
        if self.load16(USED_IDX_AT) != ring_used_idx {
            // The backend died between publishing `last_batch_head` and clearing it.
            if let Some(at) = self.desc(self.load16(LAST_BATCH_HEAD_AT)) {
                let _ = self.slice.store(0u8, at + INFLIGHT_AT, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            self.store16(USED_IDX_AT, ring_used_idx);
        }
        let mut taken: Vec<(u64, u16)> = (0..self.size)
            .filter_map(|head| {
                let at = self.desc(head)?;
                let flag: u8 = self.slice.load(at + INFLIGHT_AT, Ordering::Acquire).ok()?;
                let counter: u64 = self.slice.load(at + COUNTER_AT, Ordering::Acquire).ok()?;
                (flag != 0).then_some((u64::from_le(counter), head))
            })
            .collect();
        taken.sort_unstable();
        let next = taken
            .last()
            .map_or(0, |(counter, _)| counter.wrapping_add(1));
        (taken.into_iter().map(|(_, head)| head).collect(), next)
    }
}
