//! Translation, the hot path: find a VBD (or take a pinned one), register the I/O with its
//! slot's grace period, and read its mapping under the seqlock, without a lock.

use super::*;

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    Shared<DOMAINS, VBDS, EXTENTS, DISKS>
{
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
}
