//! The VBD table: every domain's VBDs, their extents, and the operations on them.
//!
//! Three kinds of access, three mechanisms, a module each:
//! - [`translation`], the hot path, takes no lock. It reads the VBD slots and the extent
//!   arrays (atomics) under a seqlock, so any number of I/O threads translate at once
//!   without writing a shared cache line, and it registers the I/O with its VBD slot's grace
//!   period first, so changes can fence it ([`crate::inflight`]).
//! - [`changes`] (dom0's create, grow, shrink, set-extents, delete, destroy-domain) *hold*
//!   the slots of the VBDs they change until their fence is complete, so two changes to one
//!   VBD are serialised and a change never waits for another VBD's I/O. The work itself
//!   happens under the change lock and the writer mutex, and whatever moves a run
//!   translation can see happens inside a seqlock write, so a reader sees a VBD's whole old
//!   mapping or its whole new one, never a mix. A change that gives a VBD extents waits
//!   until no fence is draining anywhere, so released extents are reused only once their
//!   old owner's I/O is done.
//! - [`queries`] (probe, info, limits) take the writer mutex for short batches and hand the
//!   results out after releasing it, so a guest's memory is never touched under a lock
//!   translation or a change might wait on.
//!
//! The locks are ticket locks: first come, first served, so a stream of queries cannot
//! starve dom0's changes; translation never waits for either, and a writer never waits for
//! translation.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use heapless::Vec;
use shared_abi::{
    wire::{Extent, ProbeEntry, PROBE_ALL},
    DeviceNumber, Error, Label, Mode, ProbeInfo, SharingLevel, DOM0,
};
use spin::mutex::{TicketMutex, TicketMutexGuard};

use crate::arena::{disk_of, start_of, Extents, Layout, Owner, Run};
use crate::block::{Access, Request, Segment, Translation};
use crate::inflight::{Fence, Fencing, Grace, Held, InFlight, IoContext};
use crate::registry::{Disk, DiskRegistry};
use crate::seqlock::SeqLock;
use crate::sweep::{Source, Sweep};

mod changes;
#[cfg(feature = "invariants")]
mod invariants;
mod queries;
mod translation;

/// Names one VBD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdId {
    pub domain: u32,
    pub vdevice: DeviceNumber,
}

/// What a successful change touched, so the hypervisor can tell the domain to probe again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    pub domain: u32,
    /// The domain's new generation: the table-wide change counter at this change.
    pub generation: u64,
}

/// What a change that may have removed or moved extents returns: the change, and the
/// fence to wait on before telling anyone it is done.
#[derive(Debug)]
#[must_use = "the change is complete only when its fence is"]
pub struct Removal<'t> {
    pub changed: Changed,
    pub fence: Fence<'t>,
}

/// What [`VbdTable::probe`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSummary {
    /// VBDs that matched, whether or not they fitted.
    pub count: usize,
    /// The probed domain's generation, or the table's for a probe of all.
    pub generation: u64,
    /// Whether every entry was passed to the sink (`count` fitted in the capacity).
    pub complete: bool,
}

/// What [`VbdTable::info`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdInfo {
    pub mode: Mode,
    pub nr_extents: usize,
    pub size_sectors: u64,
    pub label: Label,
    /// Changes whenever the VBD does.
    pub generation: u64,
    /// Distinct for every VBD the table ever created; see [`VbdRef`].
    pub incarnation: u64,
    /// How many extents were passed to the sink.
    pub written: usize,
}

/// What one piece of a set-extents did.
#[derive(Debug)]
#[must_use = "a committed set-extents is complete only when its fence is"]
pub enum SetExtents<'t> {
    /// More pieces are expected: the pending list's ticket and length.
    Pending { ticket: u64, length: usize },
    /// The list replaced the VBD's extents.
    Committed(Removal<'t>),
}

/// The table's capacities and what it enforces, for [`shared_abi::Op::Limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub sharing_ceiling: SharingLevel,
    pub domains: usize,
    pub vbds_per_domain: usize,
    pub extents: usize,
    pub extents_free: usize,
    pub disks: usize,
}

/// A query that finds the table changed between its batches starts again, this many times
/// at most before it answers `EBUSY`: a hostile dom0 cannot keep a guest's probe spinning.
/// The same bound applies to a change or a translation whose VBD moved to another slot
/// while it waited for it.
const QUERY_RESTARTS: usize = 8;

/// The disk bit of a VBD's disk set for disk index `disk`: one bit each for the first 63
/// disks, and the last bit for all the others together.
fn disk_bit(disk: usize) -> u64 {
    1 << disk.min(63)
}

/// A free domain slot's id: [`PROBE_ALL`], which no domain can have.
const FREE_DOMAIN: u32 = PROBE_ALL;
const SLOT_PRESENT: u32 = 1;
const SLOT_WRITABLE: u32 = 2;

/// What translation reads about one VBD slot.
struct VbdSlot {
    vdevice: AtomicU32,
    flags: AtomicU32,
    first: AtomicU32,
    count: AtomicU32,
    incarnation: AtomicU64,
    /// The disks the VBD's extents lie on ([`disk_bit`]), for flushes.
    disks: AtomicU64,
}

impl VbdSlot {
    const fn new() -> VbdSlot {
        VbdSlot {
            vdevice: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            first: AtomicU32::new(0),
            count: AtomicU32::new(0),
            incarnation: AtomicU64::new(0),
            disks: AtomicU64::new(0),
        }
    }

    /// Whether the slot holds a VBD named `vdevice`.
    #[inline]
    fn holds(&self, vdevice: DeviceNumber) -> bool {
        self.flags.load(Relaxed) & SLOT_PRESENT != 0 && self.vdevice.load(Relaxed) == vdevice.raw()
    }

    /// The run of the slot's VBD, for a request of `access`.
    #[inline]
    fn run_for(&self, access: Access) -> Result<Run, Error> {
        let flags = self.flags.load(Relaxed);
        if flags & SLOT_PRESENT == 0 {
            return Err(Error::NotFound);
        }
        if access == Access::Write && flags & SLOT_WRITABLE == 0 {
            return Err(Error::ReadOnly);
        }
        Ok(Run {
            first: self.first.load(Relaxed),
            count: self.count.load(Relaxed),
        })
    }
}

/// A VBD pinned by [`VbdTable::pin`]: where it lives in the table and which incarnation it
/// is. Translating through it skips the lookup, and fails with `ENOENT` once that VBD is
/// gone, even if another of the same name has been created since: a VMM connected to a
/// VBD's socket reaches that VBD and no later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdRef {
    id: VbdId,
    domain: u32,
    vbd: u32,
    incarnation: u64,
}

impl VbdRef {
    pub fn id(&self) -> VbdId {
        self.id
    }

    /// Distinct for every VBD the table ever created.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

/// Everything translation reads, written only by the writer inside seqlock writes.
struct Shared<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize> {
    sequence: SeqLock,
    domain_ids: [AtomicU32; DOMAINS],
    slots: [[VbdSlot; VBDS]; DOMAINS],
    extents: Extents<EXTENTS>,
    /// The device number of each registered disk, by the index extents store.
    disk_devices: [AtomicU32; DISKS],
}

/// A multi-call set-extents in progress.
#[derive(Clone, Copy, Debug)]
struct Pending {
    run: Run,
    ticket: u64,
}

/// The writer's record of one VBD slot; [`Shared::slots`] mirrors part of it.
#[derive(Clone, Copy, Debug)]
struct VbdRecord {
    present: bool,
    vdevice: DeviceNumber,
    mode: Mode,
    label: Label,
    /// The table generation at this VBD's last change.
    version: u64,
    /// The table generation at this VBD's creation: distinct for every VBD ever made.
    incarnation: u64,
    run: Run,
    /// The disks of `run` ([`disk_bit`]).
    disks: u64,
    pending: Option<Pending>,
}

impl VbdRecord {
    const FREE: VbdRecord = VbdRecord {
        present: false,
        vdevice: DeviceNumber::from_raw(0),
        mode: Mode::READ,
        label: Label::EMPTY,
        version: 0,
        incarnation: 0,
        run: Run::EMPTY,
        disks: 0,
        pending: None,
    };
}

#[derive(Clone, Copy, Debug)]
struct DomainRecord {
    id: u32,
    generation: u64,
    vbds: usize,
}

impl DomainRecord {
    const FREE: DomainRecord = DomainRecord {
        id: FREE_DOMAIN,
        generation: 0,
        vbds: 0,
    };
}

/// Everything only the writer mutex's holder reads or writes.
struct Writer<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize> {
    disks: DiskRegistry<DISKS>,
    layout: Layout<EXTENTS>,
    domains: [DomainRecord; DOMAINS],
    vbds: [[VbdRecord; VBDS]; DOMAINS],
    ceiling: SharingLevel,
    /// Bumped by every change; a domain's generation is its value at the domain's last change.
    generation: u64,
    next_ticket: u64,
}

/// The VBD table, sized by the embedding hypervisor: at most `DOMAINS` domains with VBDs,
/// `VBDS` VBDs per domain, `EXTENTS` extents in all (one arena shared by every VBD, so one
/// large VD does not make every VBD reserve room), and `DISKS` physical disks. Any number
/// of threads may translate at once.
///
/// `size_of` is about `EXTENTS * BYTES_PER_EXTENT` (26 bytes) plus about 250 bytes per VBD
/// slot (128 of them its grace period's cache lines); see [`crate::DefaultVbdTable`] for a
/// typical configuration.
pub struct VbdTable<
    const DOMAINS: usize,
    const VBDS: usize,
    const EXTENTS: usize,
    const DISKS: usize,
> {
    shared: Shared<DOMAINS, VBDS, EXTENTS, DISKS>,
    writer: TicketMutex<Writer<DOMAINS, VBDS, EXTENTS, DISKS>>,
    fencing: Fencing<DOMAINS, VBDS>,
    /// Held by a change from its start until it returns (not until its fence completes):
    /// changes that move extents in the arena one batch at a time see no other's moves.
    changes: TicketMutex<()>,
}

fn require_dom0(caller: u32) -> Result<(), Error> {
    if caller == DOM0 {
        Ok(())
    } else {
        Err(Error::PermissionDenied)
    }
}

/// A caller may look at its own domain; dom0 at every domain.
fn require_visible(caller: u32, domain: u32) -> Result<(), Error> {
    if caller == DOM0 || caller == domain {
        Ok(())
    } else {
        Err(Error::PermissionDenied)
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    Writer<DOMAINS, VBDS, EXTENTS, DISKS>
{
    fn domain_index(&self, id: u32) -> Option<usize> {
        self.domains.iter().position(|domain| domain.id == id)
    }

    /// The `(domain index, VBD index)` of a VBD, or `ENOENT`.
    fn find(&self, id: VbdId) -> Result<(usize, usize), Error> {
        let domain = self.domain_index(id.domain).ok_or(Error::NotFound)?;
        let vbd = self.vbds[domain]
            .iter()
            .position(|vbd| vbd.present && vbd.vdevice == id.vdevice)
            .ok_or(Error::NotFound)?;
        Ok((domain, vbd))
    }

    fn owner(domain: usize, vbd: usize) -> Owner {
        (domain * VBDS + vbd) as Owner
    }

    fn record(&self, owner: Owner) -> &VbdRecord {
        let owner = owner as usize;
        &self.vbds[owner / VBDS][owner % VBDS]
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// An empty table whose requests may ask for sharing up to `ceiling`. `const`, so a
    /// hypervisor can keep it in a `static`.
    pub const fn new(ceiling: SharingLevel) -> Self {
        assert!(
            DOMAINS * VBDS <= Owner::MAX as usize + 1,
            "a table has at most 65 536 VBD slots"
        );
        VbdTable {
            shared: Shared {
                sequence: SeqLock::new(),
                domain_ids: [const { AtomicU32::new(FREE_DOMAIN) }; DOMAINS],
                slots: [const { [const { VbdSlot::new() }; VBDS] }; DOMAINS],
                extents: Extents::new(),
                disk_devices: [const { AtomicU32::new(0) }; DISKS],
            },
            writer: TicketMutex::new(Writer {
                disks: DiskRegistry::new(),
                layout: Layout::new(),
                domains: [DomainRecord::FREE; DOMAINS],
                vbds: [[VbdRecord::FREE; VBDS]; DOMAINS],
                ceiling,
                generation: 0,
                next_ticket: 1,
            }),
            fencing: Fencing::new(),
            changes: TicketMutex::new(()),
        }
    }

    /// Set the sharing ceiling, normally once at boot from the hypervisor's configuration.
    /// Refused with `EBUSY` while any extent is mapped or pending, since those were checked
    /// against the old ceiling.
    pub fn set_sharing_ceiling(&self, ceiling: SharingLevel) -> Result<(), Error> {
        let mut writer = self.writer.lock();
        if writer.layout.used() != 0 {
            return Err(Error::Busy);
        }
        writer.ceiling = ceiling;
        Ok(())
    }

    /// The most permissive sharing level a request may ask for.
    pub fn sharing_ceiling(&self) -> SharingLevel {
        self.writer.lock().ceiling
    }

    /// Register a physical disk found at boot.
    pub fn register_disk(&self, disk: Disk) -> Result<(), Error> {
        self.writer
            .lock()
            .disks
            .register(disk, &self.shared.disk_devices)
    }

    /// A context for a thread that translates: any number may exist at once.
    pub fn io_context(&self) -> IoContext<'_> {
        self.fencing.context()
    }

    /// `EPERM` for a level above the ceiling.
    fn check_level(
        writer: &Writer<DOMAINS, VBDS, EXTENTS, DISKS>,
        level: SharingLevel,
    ) -> Result<(), Error> {
        if level > writer.ceiling {
            Err(Error::PermissionDenied)
        } else {
            Ok(())
        }
    }
}

/// A validated piece of a multi-call set-extents; see [`VbdTable::set_extents_piece`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPiece {
    pub first_index: u32,
    /// The ticket of the list a later piece continues; ignored at index 0.
    pub ticket: u64,
    /// Whether more pieces follow.
    pub more: bool,
    pub level: SharingLevel,
}
