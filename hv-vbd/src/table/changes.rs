//! Changes: create, grow, shrink, set-extents, delete and destroy-domain, each holding the
//! slots it changes until its fence is complete, moving runs inside seqlock writes, and
//! checking sharing with one sweep of the physical index.

use super::*;

/// Extents copied in from the caller per batch, before the writer mutex is taken.
const COPY_BATCH: usize = 64;

/// A change under way on one VBD slot: the slot held, every other change kept out.
struct Change<'t> {
    held: Held<'t>,
    _serial: TicketMutexGuard<'t, ()>,
    domain: usize,
    vbd: usize,
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    Writer<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// The disks of the extents at `positions` ([`disk_bit`]).
    fn disks_of(extents: &Extents<EXTENTS>, positions: core::ops::Range<usize>) -> u64 {
        positions.fold(0, |disks, position| {
            disks | disk_bit(disk_of(extents.key(position)))
        })
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
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
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
}
