//! The VBD table: every domain's VBDs, their extents, and the operations on them.
//!
//! One `spin::RwLock` guards the whole table. Translation takes it for reading; a change
//! takes it for writing, stages and checks the new extents, and commits them before it
//! lets go, so a reader sees a VBD's whole old mapping or its whole new one, never a mix.

use heapless::Vec;
use shared_abi::{
    wire::{Extent, ProbeEntry, PROBE_ALL},
    DeviceNumber, Error, Mode, ProbeInfo, DOM0,
};
use spin::RwLock;

use crate::arena::{Arena, Change, Run};
use crate::registry::{Disk, DiskRegistry};
use crate::sharing::SharingLevel;

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
    /// Whether every extent was passed to the sink.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug)]
struct Vbd {
    vdevice: DeviceNumber,
    mode: Mode,
    run: Run,
}

struct Domain<const VBDS: usize> {
    id: u32,
    generation: u64,
    vbds: Vec<Vbd, VBDS>,
}

struct State<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize> {
    disks: DiskRegistry<DISKS>,
    domains: Vec<Domain<VBDS>, DOMAINS>,
    /// The ids of `domains`, in the same order. A `Domain` holds all its VBD slots (about
    /// 280 bytes at 16 VBDs), so scanning `domains` for an id would read one cache line per
    /// domain on every translation; here 16 ids share a line.
    domain_ids: Vec<u32, DOMAINS>,
    arena: Arena<EXTENTS>,
    level: SharingLevel,
    /// Bumped by every change; a domain's generation is its value at the domain's last change.
    generation: u64,
}

/// The VBD table, sized by the embedding hypervisor: at most `DOMAINS` domains with VBDs,
/// `VBDS` VBDs per domain, `EXTENTS` extents in all (one arena shared by every VBD, so one
/// large VD does not make every VBD reserve room), and `DISKS` physical disks.
///
/// `size_of` is about `EXTENTS * BYTES_PER_EXTENT` (28 bytes) plus 24 bytes per VBD slot;
/// see [`crate::DefaultVbdTable`] for a typical configuration.
pub struct VbdTable<
    const DOMAINS: usize,
    const VBDS: usize,
    const EXTENTS: usize,
    const DISKS: usize,
> {
    state: RwLock<State<DOMAINS, VBDS, EXTENTS, DISKS>>,
}

/// Access a block request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One piece of a translated request: a physical range, in request order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub device: DeviceNumber,
    pub sector: u64,
    pub nr_sectors: u64,
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
    State<DOMAINS, VBDS, EXTENTS, DISKS>
{
    fn domain_index(&self, id: u32) -> Option<usize> {
        self.domain_ids
            .iter()
            .position(|&domain_id| domain_id == id)
    }

    fn domain(&self, id: u32) -> Option<&Domain<VBDS>> {
        self.domain_index(id).map(|index| &self.domains[index])
    }

    /// Add an empty domain and return its index; `ENOSPC` when `DOMAINS` are in use.
    fn add_domain(&mut self, id: u32) -> Result<usize, Error> {
        let domain = Domain {
            id,
            generation: 0,
            vbds: Vec::new(),
        };
        // Both have room for `DOMAINS` and equal lengths, so both pushes fail or neither.
        self.domains.push(domain).map_err(|_| Error::NoSpace)?;
        self.domain_ids.push(id).map_err(|_| Error::NoSpace)?;
        Ok(self.domains.len() - 1)
    }

    fn remove_domain(&mut self, index: usize) {
        self.domains.swap_remove(index);
        self.domain_ids.swap_remove(index);
    }

    fn vbd(&self, id: VbdId) -> Result<&Vbd, Error> {
        let domain = self.domain(id.domain).ok_or(Error::NotFound)?;
        domain
            .vbds
            .iter()
            .find(|vbd| vbd.vdevice == id.vdevice)
            .ok_or(Error::NotFound)
    }

    /// Mark a domain changed and return the notice for it.
    fn touch(&mut self, domain_id: u32) -> Changed {
        self.generation += 1;
        let generation = self.generation;
        if let Some(index) = self.domain_index(domain_id) {
            self.domains[index].generation = generation;
        }
        Changed {
            domain: domain_id,
            generation,
        }
    }

    /// Stage `extents` after the first `keep` extents of VBD `id`, check the result, and
    /// commit it. Nothing changes unless every step succeeds.
    fn replace_extents<I>(
        &mut self,
        id: VbdId,
        keep: Option<usize>,
        extents: I,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = Result<Extent, Error>>,
    {
        let vbd = *self.vbd(id)?;
        let keep = keep.unwrap_or(vbd.run.count as usize);
        let writable = vbd.mode.is_writable();
        let mut virtual_base = self.arena.kept_sectors(vbd.run, keep);
        let mut staged = 0usize;
        for extent in extents {
            let extent = extent?;
            self.disks.check(&extent)?;
            virtual_base = self.arena.stage(staged, &extent, virtual_base, writable)?;
            staged += 1;
        }
        let change = Change {
            run: vbd.run,
            keep: keep as u32,
            staged: staged as u32,
            writable,
        };
        self.arena.check(&change, self.level)?;
        let (new_run, move_other) = self.arena.commit(&change);
        for domain in self.domains.iter_mut() {
            for other in domain.vbds.iter_mut() {
                other.run = if domain.id == id.domain && other.vdevice == id.vdevice {
                    new_run
                } else {
                    move_other(other.run)
                };
            }
        }
        Ok(())
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// An empty table enforcing `level`. `const`, so a hypervisor can keep it in a `static`.
    pub const fn new(level: SharingLevel) -> Self {
        VbdTable {
            state: RwLock::new(State {
                disks: DiskRegistry::new(),
                domains: Vec::new(),
                domain_ids: Vec::new(),
                arena: Arena::new(),
                level,
                generation: 0,
            }),
        }
    }

    /// Change the sharing level, normally once at boot from the hypervisor's configuration.
    /// Refused with `EBUSY` while any VBD has extents, since existing sharing was checked
    /// against the old level and might not satisfy the new one.
    pub fn set_sharing_level(&self, level: SharingLevel) -> Result<(), Error> {
        let mut state = self.state.write();
        if state.arena.used() != 0 {
            return Err(Error::Busy);
        }
        state.level = level;
        Ok(())
    }

    /// The sharing level in force.
    pub fn sharing_level(&self) -> SharingLevel {
        self.state.read().level
    }

    /// Register a physical disk found at boot.
    pub fn register_disk(&self, disk: Disk) -> Result<(), Error> {
        self.state.write().disks.register(disk)
    }

    /// Create an empty VBD (dom0 only).
    pub fn create(&self, caller: u32, id: VbdId, mode: Mode) -> Result<Changed, Error> {
        require_dom0(caller)?;
        if id.domain == PROBE_ALL {
            return Err(Error::InvalidArgument);
        }
        let mut state = self.state.write();
        let state = &mut *state;
        let index = match state.domain_index(id.domain) {
            Some(index) => index,
            None => state.add_domain(id.domain)?,
        };
        let domain = &mut state.domains[index];
        if domain.vbds.iter().any(|vbd| vbd.vdevice == id.vdevice) {
            return Err(Error::AlreadyExists);
        }
        let vbd = Vbd {
            vdevice: id.vdevice,
            mode,
            run: Run::EMPTY,
        };
        if domain.vbds.push(vbd).is_err() {
            if domain.vbds.is_empty() {
                state.remove_domain(index);
            }
            return Err(Error::NoSpace);
        }
        Ok(state.touch(id.domain))
    }

    /// Append one extent (dom0 only).
    pub fn grow(&self, caller: u32, id: VbdId, extent: Extent) -> Result<Changed, Error> {
        require_dom0(caller)?;
        let mut state = self.state.write();
        state.replace_extents(id, None, [Ok(extent)])?;
        Ok(state.touch(id.domain))
    }

    /// Remove the last extent (dom0 only); `EINVAL` when there is none.
    pub fn shrink(&self, caller: u32, id: VbdId) -> Result<Changed, Error> {
        require_dom0(caller)?;
        let mut state = self.state.write();
        let count = state.vbd(id)?.run.count as usize;
        let keep = count.checked_sub(1).ok_or(Error::InvalidArgument)?;
        state.replace_extents(id, Some(keep), core::iter::empty())?;
        Ok(state.touch(id.domain))
    }

    /// Replace every extent at once (dom0 only). The extents are drawn from `extents` while
    /// the write lock is held, each exactly once; the first error refuses the whole change.
    /// The new list is staged beside the old one, so it needs that much free arena.
    pub fn set_extents<I>(&self, caller: u32, id: VbdId, extents: I) -> Result<Changed, Error>
    where
        I: IntoIterator<Item = Result<Extent, Error>>,
    {
        require_dom0(caller)?;
        let mut state = self.state.write();
        state.replace_extents(id, Some(0), extents)?;
        Ok(state.touch(id.domain))
    }

    /// Delete a VBD and release its extents (dom0 only).
    pub fn delete(&self, caller: u32, id: VbdId) -> Result<Changed, Error> {
        require_dom0(caller)?;
        let mut state = self.state.write();
        state.replace_extents(id, Some(0), core::iter::empty())?;
        let index = state.domain_index(id.domain).ok_or(Error::NotFound)?;
        state.domains[index]
            .vbds
            .retain(|vbd| vbd.vdevice != id.vdevice);
        Ok(state.touch(id.domain))
    }

    /// Release every VBD of a domain that died (dom0 only). Returns how many there were.
    /// Domain 0 cannot be destroyed (`EINVAL`).
    pub fn destroy_domain(&self, caller: u32, domain: u32) -> Result<(usize, Changed), Error> {
        require_dom0(caller)?;
        if domain == DOM0 || domain == PROBE_ALL {
            return Err(Error::InvalidArgument);
        }
        let mut state = self.state.write();
        let Some(index) = state.domain_index(domain) else {
            return Ok((0, state.touch(domain)));
        };
        let vdevices: Vec<DeviceNumber, VBDS> = state.domains[index]
            .vbds
            .iter()
            .map(|vbd| vbd.vdevice)
            .collect();
        for vdevice in &vdevices {
            state.replace_extents(
                VbdId {
                    domain,
                    vdevice: *vdevice,
                },
                Some(0),
                core::iter::empty(),
            )?;
        }
        state.remove_domain(index);
        Ok((vdevices.len(), state.touch(domain)))
    }

    /// List the VBDs of `domain`, or of every domain for [`PROBE_ALL`] (dom0 only). The sink
    /// is called for each entry only when all `count` of them fit in `capacity`.
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
        let state = self.state.read();
        let selected = || {
            state
                .domains
                .iter()
                .filter(|slot| domain == PROBE_ALL || slot.id == domain)
        };
        let count = selected().map(|slot| slot.vbds.len()).sum();
        let generation = if domain == PROBE_ALL {
            state.generation
        } else {
            state.domain(domain).map_or(0, |slot| slot.generation)
        };
        let complete = count <= capacity;
        if complete {
            let entries =
                selected().flat_map(|slot| slot.vbds.iter().map(move |vbd| (slot.id, vbd)));
            for (index, (domain_id, vbd)) in entries.enumerate() {
                sink(
                    index,
                    ProbeEntry {
                        device: vbd.vdevice.raw(),
                        info: ProbeInfo::for_mode(vbd.mode).bits(),
                        capacity_sectors: state.arena.run_sectors(vbd.run),
                        domain: domain_id,
                        nr_extents: vbd.run.count,
                    },
                )?;
            }
        }
        Ok(ProbeSummary {
            count,
            generation,
            complete,
        })
    }

    /// One VBD's mode, size and extents. The sink gets every extent, in virtual order, only
    /// when all of them fit in `capacity`.
    pub fn info(
        &self,
        caller: u32,
        id: VbdId,
        capacity: usize,
        mut sink: impl FnMut(usize, Extent) -> Result<(), Error>,
    ) -> Result<VbdInfo, Error> {
        require_visible(caller, id.domain)?;
        let state = self.state.read();
        let vbd = state.vbd(id)?;
        let nr_extents = vbd.run.count as usize;
        let complete = nr_extents <= capacity;
        if complete {
            for index in 0..nr_extents {
                sink(index, state.arena.extent(vbd.run, index))?;
            }
        }
        Ok(VbdInfo {
            mode: vbd.mode,
            nr_extents,
            size_sectors: state.arena.run_sectors(vbd.run),
            complete,
        })
    }

    /// The generation of a domain: changes whenever its VBDs do.
    pub fn generation(&self, domain: u32) -> u64 {
        self.state
            .read()
            .domain(domain)
            .map_or(0, |slot| slot.generation)
    }

    /// Translate a request of `domain` on its VBD `vdevice` into physical segments written
    /// to `out`, in order, split at every extent boundary. Returns how many were written.
    /// `O(log E)` to find the first extent, then one step per segment.
    ///
    /// Errors: `EINVAL` for an empty request, `ENOENT` for no such VBD, `EROFS` for a write
    /// to a read-only VBD, `ERANGE` past the end or on overflow, `E2BIG` when `out` cannot
    /// hold every segment (nothing is partial: the caller retries with room or splits).
    pub fn translate(
        &self,
        domain: u32,
        vdevice: DeviceNumber,
        sector: u64,
        nr_sectors: u64,
        access: Access,
        out: &mut [Segment],
    ) -> Result<usize, Error> {
        if nr_sectors == 0 {
            return Err(Error::InvalidArgument);
        }
        let state = self.state.read();
        let vbd = state.vbd(VbdId { domain, vdevice })?;
        if access == Access::Write && !vbd.mode.is_writable() {
            return Err(Error::ReadOnly);
        }
        let end = sector.checked_add(nr_sectors).ok_or(Error::OutOfRange)?;
        state.arena.translate(vbd.run, sector, end, out)
    }

    /// Check every invariant of the table: the domain ids match the domains, runs account
    /// for the arena exactly, virtual ends
    /// increase, the physical index is a sorted permutation, no VBD overlaps itself, every
    /// extent lies inside its disk, and sharing obeys the level. For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let state = self.state.read();
        if !state
            .domains
            .iter()
            .map(|domain| domain.id)
            .eq(state.domain_ids.iter().copied())
        {
            return Err("domain ids out of step with the domains");
        }
        let mut runs = state
            .domains
            .iter()
            .flat_map(|domain| domain.vbds.iter().map(|vbd| vbd.run));
        state.arena.check_invariants(&mut runs)?;
        let vbds = || state.domains.iter().flat_map(|domain| domain.vbds.iter());
        for vbd in vbds() {
            for index in 0..vbd.run.count as usize {
                let extent = state.arena.extent(vbd.run, index);
                if state.disks.check(&extent).is_err() {
                    return Err("extent outside its disk");
                }
                for (other_vbd, other_index) in vbds()
                    .flat_map(|other| (0..other.run.count as usize).map(move |at| (other, at)))
                {
                    let same = core::ptr::eq(other_vbd, vbd);
                    if same && other_index == index {
                        continue;
                    }
                    if !extent.overlaps(&state.arena.extent(other_vbd.run, other_index)) {
                        continue;
                    }
                    if same {
                        return Err("a VBD overlaps itself");
                    }
                    if !state
                        .level
                        .allows(vbd.mode.is_writable(), other_vbd.mode.is_writable())
                    {
                        return Err("sharing level violated");
                    }
                }
            }
        }
        Ok(())
    }

    /// Extents stored in the arena, for accounting checks.
    pub fn extents_in_use(&self) -> usize {
        self.state.read().arena.used()
    }
}
