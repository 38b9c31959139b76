//! The VBD table: every domain's VBDs, their extents, and the operations on them.
//!
//! Three kinds of access, three mechanisms:
//! - Translation, the hot path, takes no lock. It reads the VBD slots and the extent arrays
//!   (atomics) under a seqlock, so any number of I/O threads translate at once without
//!   writing a shared cache line, and it registers the I/O with its [`IoContext`] first,
//!   so changes can fence it ([`crate::inflight`]).
//! - Changes (dom0's create, grow, shrink, set-extents, delete, destroy-domain) *hold* the
//!   slots of the VBDs they change ([`crate::inflight`]) until their fence is complete, so
//!   two changes to one VBD are serialised and changes to different VBDs are not. The work
//!   itself happens under the writer mutex, and whatever moves a run translation can see
//!   happens inside a seqlock write, so a reader sees a VBD's whole old mapping or its
//!   whole new one, never a mix. A change that gives a VBD extents waits until no fence is
//!   draining anywhere, so released extents are reused only once their old owner's I/O is
//!   done.
//! - Queries (probe, info, limits) take the writer mutex for short batches and hand the
//!   results out after releasing it, so a guest's memory is never touched under a lock
//!   translation or a change might wait on.
//!
//! Both mutexes are ticket locks: first come, first served, so a stream of queries cannot
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

#[cfg(feature = "invariants")]
mod invariants;

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

/// Extents copied in from the caller per batch, before the writer mutex is taken.
const COPY_BATCH: usize = 64;
/// Probe entries and info extents copied out per batch, after the writer mutex is released.
const OUT_BATCH: usize = 64;
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

/// A change under way on one VBD slot: the slot held, every other change kept out.
struct Change<'t> {
    held: Held<'t>,
    _serial: TicketMutexGuard<'t, ()>,
    domain: usize,
    vbd: usize,
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

    /// The disks of the extents at `positions` ([`disk_bit`]).
    fn disks_of(extents: &Extents<EXTENTS>, positions: core::ops::Range<usize>) -> u64 {
        positions.fold(0, |disks, position| {
            disks | disk_bit(disk_of(extents.key(position)))
        })
    }

    fn owner(domain: usize, vbd: usize) -> Owner {
        (domain * VBDS + vbd) as Owner
    }

    fn record(&self, owner: Owner) -> &VbdRecord {
        let owner = owner as usize;
        &self.vbds[owner / VBDS][owner % VBDS]
    }

    /// Mark a domain changed and return the notice for it.
    fn touch(&mut self, domain: usize, domain_id: u32) -> Changed {
        self.generation += 1;
        self.domains[domain].generation = self.generation;
        Changed {
            domain: domain_id,
            generation: self.generation,
        }
    }

    /// Apply a position map from an arena move to every run, visible and pending.
    fn remap_runs(&mut self, map: impl Fn(usize) -> usize) {
        for record in self.vbds.iter_mut().flatten() {
            if record.run.count != 0 {
                record.run.first = map(record.run.first as usize) as u32;
            }
            if let Some(pending) = record.pending.as_mut() {
                if pending.run.count != 0 {
                    pending.run.first = map(pending.run.first as usize) as u32;
                }
            }
        }
    }

    /// Check the new extents `new` of VBD `owner` against every other visible VBD at
    /// `level`, and against the VBD's own extents unless they are being replaced: one sweep
    /// of the physical index. Pending lists of other VBDs are not mappings yet and are
    /// skipped.
    fn check(
        &self,
        extents: &Extents<EXTENTS>,
        owner: Owner,
        new: Run,
        replacing: bool,
        level: SharingLevel,
    ) -> Result<(), Error> {
        let writable = self.record(owner).mode.is_writable();
        let mut sweep = Sweep::new(level, writable);
        let visible = self.layout.visible();
        let new_positions = new.range();
        for &position in self.layout.by_physical() {
            let position = position as usize;
            let (source, run_first) = if new_positions.contains(&position) {
                (Source::New, new.first)
            } else if position >= visible {
                continue;
            } else {
                let position_owner = self.layout.owner(position);
                let record = self.record(position_owner);
                if position_owner != owner {
                    let writable = record.mode.is_writable();
                    (Source::Other { writable }, record.run.first)
                } else if replacing {
                    continue;
                } else {
                    (Source::Kept, record.run.first)
                }
            };
            let place = extents.key(position);
            let (disk, start) = (disk_of(place) as u32, start_of(place));
            let length = extents.length(position, run_first as usize);
            sweep.visit(disk, start, start + length, source)?;
        }
        Ok(())
    }

    /// Drop a VBD's pending list, if any. Pending runs are invisible, so this needs no
    /// seqlock write.
    fn discard_pending(&mut self, extents: &Extents<EXTENTS>, domain: usize, vbd: usize) {
        if let Some(pending) = self.vbds[domain][vbd].pending.take() {
            let map = self.layout.remove(extents, pending.run.range());
            self.remap_runs(map);
        }
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    Shared<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// Mirror a record into its slot. Call inside a seqlock write.
    fn publish(&self, domain: usize, vbd: usize, record: &VbdRecord) {
        let slot = &self.slots[domain][vbd];
        let flags = match (record.present, record.mode.is_writable()) {
            (false, _) => 0,
            (true, false) => SLOT_PRESENT,
            (true, true) => SLOT_PRESENT | SLOT_WRITABLE,
        };
        slot.vdevice.store(record.vdevice.raw(), Relaxed);
        slot.flags.store(flags, Relaxed);
        slot.first.store(record.run.first, Relaxed);
        slot.count.store(record.run.count, Relaxed);
        slot.incarnation.store(record.incarnation, Relaxed);
        slot.disks.store(record.disks, Relaxed);
    }

    /// Where VBD `id` lives: its domain slot and VBD slot. Inside a seqlock read.
    #[inline]
    fn locate(&self, id: VbdId) -> Result<(usize, usize), Error> {
        let domain = self
            .domain_ids
            .iter()
            .position(|domain_id| domain_id.load(Relaxed) == id.domain)
            .ok_or(Error::NotFound)?;
        let vbd = self.slots[domain]
            .iter()
            .position(|slot| slot.holds(id.vdevice))
            .ok_or(Error::NotFound)?;
        Ok((domain, vbd))
    }

    /// One translation attempt of VBD `id` in the slot [`Shared::locate`] found, inside a
    /// seqlock read: every value may be torn, and nothing here may panic or loop
    /// unboundedly. `None` when the slot no longer holds `id`.
    #[inline]
    fn translate(
        &self,
        id: VbdId,
        (domain, vbd): (usize, usize),
        request: &Request,
        out: &mut [Segment],
    ) -> Result<Option<usize>, Error> {
        let slot = &self.slots[domain][vbd];
        if self.domain_ids[domain].load(Relaxed) != id.domain || !slot.holds(id.vdevice) {
            return Ok(None);
        }
        let run = slot.run_for(request.access())?;
        self.translate_run(run, request, out).map(Some)
    }

    #[inline]
    fn translate_run(
        &self,
        run: Run,
        request: &Request,
        out: &mut [Segment],
    ) -> Result<usize, Error> {
        let (sector, end) = (request.sector(), request.end_sector());
        self.extents
            .translate(run, sector, end, &self.disk_devices, out)
    }

    /// The slot of a pinned VBD, if it still holds that incarnation.
    #[inline]
    fn pinned_slot(&self, vbd: &VbdRef) -> Result<&VbdSlot, Error> {
        self.slots
            .get(vbd.domain as usize)
            .and_then(|slots| slots.get(vbd.vbd as usize))
            .filter(|slot| slot.incarnation.load(Relaxed) == vbd.incarnation)
            .ok_or(Error::NotFound)
    }

    /// One translation attempt through a pinned VBD: its slot directly, if it still holds
    /// that incarnation.
    #[inline]
    fn translate_pinned(
        &self,
        vbd: &VbdRef,
        request: &Request,
        out: &mut [Segment],
    ) -> Result<usize, Error> {
        let run = self.pinned_slot(vbd)?.run_for(request.access())?;
        self.translate_run(run, request, out)
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

    /// The table's capacities and what it enforces.
    pub fn limits(&self) -> Limits {
        let writer = self.writer.lock();
        Limits {
            sharing_ceiling: writer.ceiling,
            domains: DOMAINS,
            vbds_per_domain: VBDS,
            extents: EXTENTS,
            extents_free: EXTENTS - writer.layout.used(),
            disks: DISKS,
        }
    }

    /// A context for a thread that translates: any number may exist at once.
    pub fn io_context(&self) -> IoContext<'_> {
        self.fencing.context()
    }

    /// Begin a change to VBD `id`: hold its slot, waiting (spinning) for the fence of an
    /// earlier change to the same VBD, never for another VBD's; then keep every other
    /// change out until this one returns. A change that gives the VBD extents
    /// (`gives_extents`) also waits until no fence is draining anywhere, so no extent another
    /// VBD released is reused while that VBD's I/O may still reach it: releases happen only
    /// under the change lock, so the table stays quiet until this change returns.
    fn begin_change(&self, id: VbdId, gives_extents: bool) -> Result<Change<'_>, Error> {
        for _ in 0..QUERY_RESTARTS {
            let (domain, vbd, incarnation) = {
                let writer = self.writer.lock();
                let (domain, vbd) = writer.find(id)?;
                (domain, vbd, writer.vbds[domain][vbd].incarnation)
            };
            // Neither lock is held while waiting: an earlier change's fence may take as
            // long as that VBD's I/O, and no other change may wait for that.
            let held = self.fencing.hold(domain, vbd..vbd + 1);
            let serial = self.serialised(gives_extents);
            let writer = self.writer.lock();
            if writer.find(id) == Ok((domain, vbd))
                && writer.vbds[domain][vbd].incarnation == incarnation
            {
                return Ok(Change {
                    held,
                    _serial: serial,
                    domain,
                    vbd,
                });
            }
        }
        Err(Error::Busy)
    }

    /// The change lock, once no fence is draining if `quiet` is asked for.
    fn serialised(&self, quiet: bool) -> TicketMutexGuard<'_, ()> {
        loop {
            let serial = self.changes.lock();
            if !quiet || self.fencing.quiet() {
                return serial;
            }
            drop(serial);
            core::hint::spin_loop();
        }
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

    /// Create an empty VBD (dom0 only): `EINVAL` for [`PROBE_ALL`] as a domain or a mode
    /// without read access, `EEXIST` when it exists, `ENOSPC` when the domain has `VBDS`
    /// VBDs or `DOMAINS` domains have some.
    pub fn create(
        &self,
        caller: u32,
        id: VbdId,
        mode: Mode,
        label: Label,
    ) -> Result<Changed, Error> {
        require_dom0(caller)?;
        let mode = Mode::from_wire(mode.bits())?;
        if id.domain == PROBE_ALL {
            return Err(Error::InvalidArgument);
        }
        let mut writer = self.writer.lock();
        let domain = match writer.domain_index(id.domain) {
            Some(domain) => domain,
            None => writer.domain_index(FREE_DOMAIN).ok_or(Error::NoSpace)?,
        };
        if writer.find(id).is_ok() {
            return Err(Error::AlreadyExists);
        }
        // A slot whose last VBD's fence is still draining would make this VBD's first
        // change wait for it: take another if there is one.
        let free = |index: &usize| !writer.vbds[domain][*index].present;
        let vbd = (0..VBDS)
            .filter(free)
            .find(|&index| {
                self.fencing
                    .grace(domain, index)
                    .is_some_and(|grace| !grace.is_held())
            })
            .or_else(|| (0..VBDS).find(free))
            .ok_or(Error::NoSpace)?;
        let version = writer.generation + 1;
        let record = VbdRecord {
            present: true,
            vdevice: id.vdevice,
            mode,
            label,
            version,
            incarnation: version,
            run: Run::EMPTY,
            disks: 0,
            pending: None,
        };
        writer.vbds[domain][vbd] = record;
        writer.domains[domain].id = id.domain;
        writer.domains[domain].vbds += 1;
        {
            let _section = self.shared.sequence.write();
            self.shared.domain_ids[domain].store(id.domain, Relaxed);
            self.shared.publish(domain, vbd, &record);
        }
        Ok(writer.touch(domain, id.domain))
    }

    /// Append one extent (dom0 only), sharing at most at `level`. Drops any pending
    /// set-extents list of the VBD. Adds and removes nothing else, so it needs no fence.
    pub fn grow(
        &self,
        caller: u32,
        id: VbdId,
        extent: Extent,
        level: SharingLevel,
    ) -> Result<Changed, Error> {
        require_dom0(caller)?;
        Self::check_level(&self.writer.lock(), level)?;
        let change = self.begin_change(id, true)?;
        let (domain, vbd) = (change.domain, change.vbd);
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        let disk = writer.disks.check(&extent)?;
        let extents = &self.shared.extents;
        writer.discard_pending(extents, domain, vbd);
        let owner = Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::owner(domain, vbd);
        let run = writer.vbds[domain][vbd].run;
        let position = writer.layout.used();
        // The new extent is a one-entry pending run until it passes; like every pending
        // run it starts at virtual sector 0, and learns its place in the VBD on joining.
        let length = writer.layout.push(extents, &extent, disk, owner, 0)?;
        writer.layout.index_pushed(extents);
        let new = Run {
            first: position as u32,
            count: 1,
        };
        writer.vbds[domain][vbd].pending = Some(Pending {
            run: new,
            ticket: 0,
        });
        let size = extents.run_sectors(run);
        let grown = size
            .checked_add(length)
            .ok_or(Error::OutOfRange)
            .and_then(|grown| {
                writer.check(extents, owner, new, false, level)?;
                Ok(grown)
            });
        let grown = match grown {
            Ok(grown) => grown,
            Err(error) => {
                writer.discard_pending(extents, domain, vbd);
                return Err(error);
            }
        };
        let destination = if run.count == 0 {
            writer.layout.visible()
        } else {
            run.end()
        };
        {
            let _section = self.shared.sequence.write();
            writer.vbds[domain][vbd].pending = None;
            let map = writer.layout.insert_after(extents, new, destination);
            writer.layout.reveal(1);
            writer.remap_runs(map);
            extents.set_virtual_end(destination, grown);
            let record = &mut writer.vbds[domain][vbd];
            record.run = Run {
                first: if run.count == 0 {
                    destination as u32
                } else {
                    record.run.first
                },
                count: run.count + 1,
            };
            record.disks |= disk_bit(usize::from(disk));
            self.publish_all(writer);
        }
        let changed = writer.touch(domain, id.domain);
        writer.vbds[domain][vbd].version = changed.generation;
        Ok(changed)
    }

    /// Mirror every slot into the shared side. Call inside a seqlock write, after a move
    /// that may have shifted any run.
    fn publish_all(&self, writer: &Writer<DOMAINS, VBDS, EXTENTS, DISKS>) {
        for (domain, records) in writer.vbds.iter().enumerate() {
            for (vbd, record) in records.iter().enumerate() {
                if record.present {
                    self.shared.publish(domain, vbd, record);
                }
            }
        }
    }

    /// Remove the last extent (dom0 only); `EINVAL` when there is none.
    pub fn shrink(&self, caller: u32, id: VbdId) -> Result<Removal<'_>, Error> {
        require_dom0(caller)?;
        let change = self.begin_change(id, false)?;
        let (domain, vbd) = (change.domain, change.vbd);
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        let run = writer.vbds[domain][vbd].run;
        if run.count == 0 {
            return Err(Error::InvalidArgument);
        }
        let extents = &self.shared.extents;
        writer.discard_pending(extents, domain, vbd);
        {
            let _section = self.shared.sequence.write();
            let map = writer.layout.remove(extents, run.end() - 1..run.end());
            writer.remap_runs(map);
            writer.vbds[domain][vbd].run.count -= 1;
            let run = writer.vbds[domain][vbd].run;
            writer.vbds[domain][vbd].disks =
                Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::disks_of(extents, run.range());
            self.publish_all(writer);
        }
        let changed = writer.touch(domain, id.domain);
        writer.vbds[domain][vbd].version = changed.generation;
        drop(guard);
        Ok(Removal {
            changed,
            fence: change.held.fence(),
        })
    }

    /// Replace every extent at once (dom0 only), sharing at most at `level`: one piece at
    /// index 0 with nothing pending after it. See [`VbdTable::set_extents_piece`].
    pub fn set_extents<I>(
        &self,
        caller: u32,
        id: VbdId,
        extents: I,
        level: SharingLevel,
    ) -> Result<Removal<'_>, Error>
    where
        I: IntoIterator<Item = Result<Extent, Error>>,
    {
        let piece = ListPiece {
            first_index: 0,
            ticket: 0,
            more: false,
            level,
        };
        match self.set_extents_piece(caller, id, piece, extents)? {
            SetExtents::Committed(removal) => Ok(removal),
            // A piece without `more` always commits or fails.
            SetExtents::Pending { .. } => Err(Error::InvalidArgument),
        }
    }

    /// One piece of a VBD's new extent list (dom0 only); the protocol is
    /// [`shared_abi::wire::SetExtentsArgs`]'s. The extents are drawn from `extents` in
    /// batches, each batch before the writer mutex is taken, each extent exactly once.
    ///
    /// Errors: `EPERM` for a level above the ceiling; `ESTALE` for a ticket that is not the
    /// pending list's (nothing changes: the list is someone else's); `EINVAL` for a piece
    /// that does not continue the list, `ENODEV` or `ERANGE` for an extent outside the
    /// disks, `ENOSPC` when the arena is full, and at the commit `EINVAL` for a list that
    /// overlaps itself and `EBUSY` for sharing the level forbids. Each of these but the
    /// first two discards the pending list; the VBD always keeps its extents.
    pub fn set_extents_piece<I>(
        &self,
        caller: u32,
        id: VbdId,
        piece: ListPiece,
        extents: I,
    ) -> Result<SetExtents<'_>, Error>
    where
        I: IntoIterator<Item = Result<Extent, Error>>,
    {
        require_dom0(caller)?;
        Self::check_level(&self.writer.lock(), piece.level)?;
        let change = self.begin_change(id, !piece.more)?;
        let (domain, vbd) = (change.domain, change.vbd);
        let ticket = self.open_pending(domain, vbd, &piece)?;
        let arena = &self.shared.extents;
        let mut source = extents.into_iter();
        loop {
            // Copy a batch in from the caller before taking the writer mutex.
            let mut batch: Vec<Result<Extent, Error>, COPY_BATCH> = Vec::new();
            for extent in source.by_ref() {
                // Cannot fail: the loop stops as soon as the batch is full.
                let _ = batch.push(extent);
                if batch.is_full() {
                    break;
                }
            }
            let last_batch = !batch.is_full();
            let mut guard = self.writer.lock();
            let writer = &mut *guard;
            if let Err(error) = Self::stage_batch(writer, arena, domain, vbd, &batch) {
                writer.discard_pending(arena, domain, vbd);
                return Err(error);
            }
            if last_batch {
                break;
            }
        }
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        writer.layout.index_pushed(arena);
        let pending = writer.vbds[domain][vbd].pending.ok_or(Error::Stale)?;
        if piece.more {
            return Ok(SetExtents::Pending {
                ticket,
                length: pending.run.count as usize,
            });
        }
        let owner = Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::owner(domain, vbd);
        if let Err(error) = writer.check(arena, owner, pending.run, true, piece.level) {
            writer.discard_pending(arena, domain, vbd);
            return Err(error);
        }
        // Bring the list to the edge of the visible runs (a move of pending runs only),
        // then, in one seqlock write, let it join them and drop the old extents.
        if pending.run.count != 0 {
            let map = writer.layout.move_to_visible_edge(arena, pending.run);
            writer.remap_runs(map);
        }
        {
            let _section = self.shared.sequence.write();
            let new_count = pending.run.count as usize;
            writer.layout.reveal(new_count);
            let old = writer.vbds[domain][vbd].run;
            let map = writer.layout.remove(arena, old.range());
            writer.remap_runs(map);
            let record = &mut writer.vbds[domain][vbd];
            let new = record
                .pending
                .take()
                .map_or(Run::EMPTY, |pending| pending.run);
            record.run = if new.count == 0 { Run::EMPTY } else { new };
            let run = record.run;
            writer.vbds[domain][vbd].disks =
                Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::disks_of(arena, run.range());
            self.publish_all(writer);
        }
        let changed = writer.touch(domain, id.domain);
        writer.vbds[domain][vbd].version = changed.generation;
        drop(guard);
        Ok(SetExtents::Committed(Removal {
            changed,
            fence: change.held.fence(),
        }))
    }

    /// Start or continue a VBD's pending list for `piece`, leaving it the last run of the
    /// arena so that pushes extend it. Returns the list's ticket.
    fn open_pending(&self, domain: usize, vbd: usize, piece: &ListPiece) -> Result<u64, Error> {
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        let arena = &self.shared.extents;
        let used = writer.layout.used() as u32;
        if piece.first_index == 0 {
            writer.discard_pending(arena, domain, vbd);
            let ticket = writer.next_ticket;
            writer.next_ticket += 1;
            let used = writer.layout.used() as u32;
            writer.vbds[domain][vbd].pending = Some(Pending {
                run: Run {
                    first: used,
                    count: 0,
                },
                ticket,
            });
            return Ok(ticket);
        }
        let pending = writer.vbds[domain][vbd]
            .pending
            .filter(|pending| pending.ticket == piece.ticket && piece.ticket != 0)
            .ok_or(Error::Stale)?;
        if pending.run.count != piece.first_index {
            writer.discard_pending(arena, domain, vbd);
            return Err(Error::InvalidArgument);
        }
        if pending.run.count != 0 && pending.run.end() != used as usize {
            let map = writer.layout.move_to_end(arena, pending.run);
            writer.remap_runs(map);
        }
        Ok(pending.ticket)
    }

    /// Append a batch of copied-in extents to the VBD's pending list, which ends the arena.
    /// The index catches up once the whole piece is staged.
    fn stage_batch(
        writer: &mut Writer<DOMAINS, VBDS, EXTENTS, DISKS>,
        arena: &Extents<EXTENTS>,
        domain: usize,
        vbd: usize,
        batch: &[Result<Extent, Error>],
    ) -> Result<(), Error> {
        let owner = Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::owner(domain, vbd);
        let mut pending = writer.vbds[domain][vbd].pending.ok_or(Error::Stale)?;
        let start = writer.layout.used();
        if pending.run.count == 0 {
            pending.run.first = start as u32;
        }
        let mut virtual_end = arena.run_sectors(pending.run);
        let mut pushed = || -> Result<(), Error> {
            for extent in batch {
                let extent = (*extent)?;
                let disk = writer.disks.check(&extent)?;
                virtual_end = writer
                    .layout
                    .push(arena, &extent, disk, owner, virtual_end)?;
            }
            Ok(())
        };
        let result = pushed();
        pending.run.count = (writer.layout.used() - pending.run.first as usize) as u32;
        writer.vbds[domain][vbd].pending = Some(pending);
        result
    }

    /// Delete a VBD and release its extents (dom0 only).
    pub fn delete(&self, caller: u32, id: VbdId) -> Result<Removal<'_>, Error> {
        require_dom0(caller)?;
        let change = self.begin_change(id, false)?;
        let (domain, vbd) = (change.domain, change.vbd);
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        {
            let _section = self.shared.sequence.write();
            self.release_vbd(writer, domain, vbd);
            self.publish_all(writer);
        }
        let changed = writer.touch(domain, id.domain);
        if writer.domains[domain].vbds == 0 {
            writer.domains[domain] = DomainRecord::FREE;
        }
        drop(guard);
        Ok(Removal {
            changed,
            fence: change.held.fence(),
        })
    }

    /// Drop a VBD, its extents and its pending list, and free its domain's slot in the
    /// shared directory when it was the domain's last. Call inside a seqlock write.
    fn release_vbd(
        &self,
        writer: &mut Writer<DOMAINS, VBDS, EXTENTS, DISKS>,
        domain: usize,
        vbd: usize,
    ) {
        let arena = &self.shared.extents;
        writer.discard_pending(arena, domain, vbd);
        let run = writer.vbds[domain][vbd].run;
        let map = writer.layout.remove(arena, run.range());
        writer.remap_runs(map);
        writer.vbds[domain][vbd] = VbdRecord::FREE;
        self.shared.publish(domain, vbd, &VbdRecord::FREE);
        writer.domains[domain].vbds -= 1;
        if writer.domains[domain].vbds == 0 {
            self.shared.domain_ids[domain].store(FREE_DOMAIN, Relaxed);
        }
    }

    /// Release every VBD of a domain that died (dom0 only). Returns how many there were.
    /// Domain 0 cannot be destroyed (`EINVAL`).
    pub fn destroy_domain(
        &self,
        caller: u32,
        domain_id: u32,
    ) -> Result<(usize, Removal<'_>), Error> {
        require_dom0(caller)?;
        if domain_id == DOM0 || domain_id == PROBE_ALL {
            return Err(Error::InvalidArgument);
        }
        for _ in 0..QUERY_RESTARTS {
            let Some(domain) = self.writer.lock().domain_index(domain_id) else {
                let mut writer = self.writer.lock();
                writer.generation += 1;
                let changed = Changed {
                    domain: domain_id,
                    generation: writer.generation,
                };
                return Ok((
                    0,
                    Removal {
                        changed,
                        fence: Fence::complete(),
                    },
                ));
            };
            // Every slot of the domain, in order, outside both locks (see `begin_change`).
            let held = self.fencing.hold(domain, 0..VBDS);
            let _serial = self.serialised(false);
            let mut guard = self.writer.lock();
            let writer = &mut *guard;
            if writer.domain_index(domain_id) != Some(domain) {
                continue;
            }
            writer.generation += 1;
            let changed = Changed {
                domain: domain_id,
                generation: writer.generation,
            };
            let released = writer.domains[domain].vbds;
            {
                let _section = self.shared.sequence.write();
                for vbd in 0..VBDS {
                    if writer.vbds[domain][vbd].present {
                        self.release_vbd(writer, domain, vbd);
                    }
                }
                self.publish_all(writer);
            }
            writer.domains[domain] = DomainRecord::FREE;
            drop(guard);
            let fence = held.fence();
            return Ok((released, Removal { changed, fence }));
        }
        Err(Error::Busy)
    }

    /// List the VBDs of `domain`, or of every domain for [`PROBE_ALL`] (dom0 only). The sink
    /// is called for each entry only when all `count` of them fit in `capacity`, in batches
    /// after the writer mutex is released; `EBUSY` when the table kept changing between
    /// batches.
    pub fn probe(
        &self,
        caller: u32,
        domain: u32,
        capacity: usize,
        mut sink: impl FnMut(usize, ProbeEntry) -> Result<(), Error>,
    ) -> Result<ProbeSummary, Error> {
        if domain == PROBE_ALL {
            require_dom0(caller)?;
        } else {
            require_visible(caller, domain)?;
        }
        'restart: for _ in 0..QUERY_RESTARTS {
            let mut delivered = 0;
            let mut summary = None;
            loop {
                let mut batch: Vec<ProbeEntry, OUT_BATCH> = Vec::new();
                {
                    let writer = self.writer.lock();
                    let generation = if domain == PROBE_ALL {
                        writer.generation
                    } else {
                        writer
                            .domain_index(domain)
                            .map_or(0, |index| writer.domains[index].generation)
                    };
                    let selected =
                        writer
                            .domains
                            .iter()
                            .zip(writer.vbds.iter())
                            .filter(|(slot, _)| {
                                slot.id != FREE_DOMAIN && (domain == PROBE_ALL || slot.id == domain)
                            });
                    let count = selected.clone().map(|(slot, _)| slot.vbds).sum();
                    let now = ProbeSummary {
                        count,
                        generation,
                        complete: count <= capacity,
                    };
                    match summary {
                        None => summary = Some(now),
                        Some(before) if before != now => continue 'restart,
                        Some(_) => {}
                    }
                    if !now.complete {
                        return Ok(now);
                    }
                    let entries = selected.flat_map(|(slot, records)| {
                        records
                            .iter()
                            .filter(|record| record.present)
                            .map(move |record| (slot.id, record))
                    });
                    for (domain_id, record) in entries.skip(delivered).take(OUT_BATCH) {
                        // Cannot fail: `take` stops at the batch's capacity.
                        let _ = batch.push(ProbeEntry {
                            device: record.vdevice.raw(),
                            info: ProbeInfo::for_mode(record.mode).bits(),
                            capacity_sectors: self.shared.extents.run_sectors(record.run),
                            domain: domain_id,
                            nr_extents: record.run.count,
                        });
                    }
                }
                for entry in &batch {
                    sink(delivered, *entry)?;
                    delivered += 1;
                }
                if !batch.is_full() {
                    return summary.ok_or(Error::Busy);
                }
            }
        }
        Err(Error::Busy)
    }

    /// One VBD's mode, size and label, and up to `capacity` of its extents from
    /// `first_index` on, passed to the sink in virtual order, in batches after the writer
    /// mutex is released. `ERANGE` when `first_index` is past the last extent (it may
    /// equal the count), `EBUSY` when the VBD kept changing between batches.
    pub fn info(
        &self,
        caller: u32,
        id: VbdId,
        first_index: usize,
        capacity: usize,
        mut sink: impl FnMut(usize, Extent) -> Result<(), Error>,
    ) -> Result<VbdInfo, Error> {
        require_visible(caller, id.domain)?;
        'restart: for _ in 0..QUERY_RESTARTS {
            let mut delivered = 0;
            let mut info: Option<VbdInfo> = None;
            loop {
                let mut batch: Vec<Extent, OUT_BATCH> = Vec::new();
                {
                    let writer = self.writer.lock();
                    let (domain, vbd) = writer.find(id)?;
                    let record = &writer.vbds[domain][vbd];
                    let nr_extents = record.run.count as usize;
                    if first_index > nr_extents {
                        return Err(Error::OutOfRange);
                    }
                    let written = capacity.min(nr_extents - first_index);
                    let now = VbdInfo {
                        mode: record.mode,
                        nr_extents,
                        size_sectors: self.shared.extents.run_sectors(record.run),
                        label: record.label,
                        generation: record.version,
                        incarnation: record.incarnation,
                        written,
                    };
                    match info {
                        None => info = Some(now),
                        Some(before) if before != now => continue 'restart,
                        Some(_) => {}
                    }
                    let from = first_index + delivered;
                    let until = (first_index + written).min(from + OUT_BATCH);
                    for index in from..until {
                        let extent = self.shared.extents.extent(
                            record.run,
                            index,
                            &self.shared.disk_devices,
                        )?;
                        // Cannot fail: at most `OUT_BATCH` indices.
                        let _ = batch.push(extent);
                    }
                }
                for extent in &batch {
                    sink(first_index + delivered, *extent)?;
                    delivered += 1;
                }
                if let Some(info) = info.filter(|info| delivered >= info.written) {
                    return Ok(info);
                }
            }
        }
        Err(Error::Busy)
    }

    /// The generation of a domain: changes whenever its VBDs do.
    pub fn generation(&self, domain: u32) -> u64 {
        let writer = self.writer.lock();
        writer
            .domain_index(domain)
            .map_or(0, |index| writer.domains[index].generation)
    }

    /// Translate `request` of `domain` on its VBD `vdevice` into physical segments written
    /// to `out`, in order, split at every extent boundary, and register it as in flight
    /// with `context` until the returned [`Translation`] is dropped. Takes no lock:
    /// `O(log E)` to find the first extent, then one step per segment.
    ///
    /// Errors: `EINVAL` for a context of another table, `ENOENT` for no such VBD, `EROFS`
    /// for a write to a read-only VBD, `ERANGE` past the end, `E2BIG` when `out` cannot
    /// hold every segment (nothing is partial: the caller retries with room or splits),
    /// `EBUSY` when the VBD kept moving to other slots while this looked for it.
    pub fn translate<'s, 't>(
        &'t self,
        context: &IoContext<'t>,
        id: VbdId,
        request: &Request,
        out: &'s mut [Segment],
    ) -> Result<Translation<'s, 't>, Error> {
        if !self.fencing.owns(context) {
            return Err(Error::InvalidArgument);
        }
        let (sequence, relax) = (&self.shared.sequence, context.relax());
        for _ in 0..QUERY_RESTARTS {
            let slot = sequence.read(relax, || self.shared.locate(id))?;
            // Registered with the slot's grace period before the translation reads the
            // mapping; the translation then checks the slot still holds this VBD.
            let in_flight = self.enter(slot)?;
            let translated = sequence.read(relax, || {
                self.shared.translate(id, slot, request, &mut *out)
            })?;
            if let Some(count) = translated {
                return Ok(Translation::new(&out[..count], in_flight));
            }
        }
        Err(Error::Busy)
    }

    /// Register an I/O with the grace period of VBD slot `(domain, vbd)`.
    #[inline]
    fn enter(&self, (domain, vbd): (usize, usize)) -> Result<InFlight<'_>, Error> {
        self.fencing
            .grace(domain, vbd)
            .map(Grace::enter)
            .ok_or(Error::NotFound)
    }

    /// Pin VBD `id` for repeated translation ([`VbdTable::translate_pinned`]): a caller may
    /// pin its own domain's VBDs, dom0 any. `ENOENT` when there is no such VBD.
    pub fn pin(&self, caller: u32, id: VbdId) -> Result<VbdRef, Error> {
        require_visible(caller, id.domain)?;
        let writer = self.writer.lock();
        let (domain, vbd) = writer.find(id)?;
        Ok(VbdRef {
            id,
            domain: domain as u32,
            vbd: vbd as u32,
            incarnation: writer.vbds[domain][vbd].incarnation,
        })
    }

    /// [`VbdTable::translate`] through a pinned VBD: no lookup, and `ENOENT` once that VBD
    /// is gone, whatever has been created under its name since.
    pub fn translate_pinned<'s, 't>(
        &'t self,
        context: &IoContext<'t>,
        vbd: &VbdRef,
        request: &Request,
        out: &'s mut [Segment],
    ) -> Result<Translation<'s, 't>, Error> {
        if !self.fencing.owns(context) {
            return Err(Error::InvalidArgument);
        }
        let in_flight = self.enter((vbd.domain as usize, vbd.vbd as usize))?;
        let count = self.shared.sequence.read(context.relax(), || {
            self.shared.translate_pinned(vbd, request, &mut *out)
        })?;
        Ok(Translation::new(&out[..count], in_flight))
    }

    /// Call `each` with the device number of every disk the pinned VBD's extents lie on,
    /// each once, in the order the disks were registered: what a flush of the VBD must
    /// reach. Takes no lock (the set is kept beside the VBD's mapping); `ENOENT` once the
    /// VBD is gone.
    pub fn vbd_disks(&self, vbd: &VbdRef, mut each: impl FnMut(DeviceNumber)) -> Result<(), Error> {
        let disks = self.shared.sequence.read(core::hint::spin_loop, || {
            self.shared
                .pinned_slot(vbd)
                .map(|slot| slot.disks.load(Relaxed))
        })?;
        let registered = if disks & disk_bit(63) != 0 {
            self.writer.lock().disks.count()
        } else {
            DISKS.min(63)
        };
        for (index, device) in self.shared.disk_devices[..registered].iter().enumerate() {
            if disks & disk_bit(index) != 0 {
                each(DeviceNumber::from_raw(device.load(Relaxed)));
            }
        }
        Ok(())
    }

    /// Extents stored in the arena, pending lists included, for accounting checks.
    pub fn extents_in_use(&self) -> usize {
        self.writer.lock().layout.used()
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
