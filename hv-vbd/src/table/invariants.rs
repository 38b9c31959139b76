//! The table's self-check, for tests and fuzzing (feature `invariants`): every structure
//! agrees with every other, and what the table promises holds. Linear in the table plus
//! the number of overlapping pairs, but it takes the writer mutex for the whole check and
//! allocates, so it is for hosts only.

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use super::*;

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    Writer<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// The virtual start of the extent at `position`, from its run's layout.
    fn virtual_start(&self, extents: &Extents<EXTENTS>, position: usize) -> u64 {
        let record = self.record(self.layout.owner(position));
        let run_first = if position < self.layout.visible() {
            record.run.first
        } else {
            record.pending.map_or(0, |pending| pending.run.first)
        };
        extents.virtual_end(position) - extents.length(position, run_first as usize)
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// Check every invariant of the table: the shared directory and slots mirror the
    /// writer's records, visible runs tile `[0, visible)` and pending runs `[visible, used)`
    /// exactly, owners match runs, virtual ends increase, the physical index is a sorted
    /// permutation, every extent lies inside its disk, no VBD overlaps itself, and every
    /// overlap between VBDs is allowed at the ceiling.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let writer = self.writer.lock();
        let shared = &self.shared;
        let arena = &shared.extents;
        let layout = &writer.layout;
        let mut visible_runs: Vec<(Run, Owner)> = Vec::new();
        let mut pending_runs: Vec<(Run, Owner)> = Vec::new();
        for (domain, record) in writer.domains.iter().enumerate() {
            if shared.domain_ids[domain].load(Relaxed) != record.id && record.vbds != 0 {
                return Err("shared domain directory out of step");
            }
            let present = writer.vbds[domain].iter().filter(|vbd| vbd.present).count();
            if present != record.vbds {
                return Err("domain VBD count out of step");
            }
            if (record.id == FREE_DOMAIN) != (present == 0) {
                return Err("a free domain slot with VBDs, or a used one without");
            }
            for (vbd, vbd_record) in writer.vbds[domain].iter().enumerate() {
                let slot = &shared.slots[domain][vbd];
                let flags = slot.flags.load(Relaxed);
                if !vbd_record.present {
                    if flags != 0 || vbd_record.pending.is_some() {
                        return Err("a free VBD slot in use");
                    }
                    continue;
                }
                if slot.vdevice.load(Relaxed) != vbd_record.vdevice.raw()
                    || (flags & SLOT_WRITABLE != 0) != vbd_record.mode.is_writable()
                    || flags & SLOT_PRESENT == 0
                    || slot.first.load(Relaxed) != vbd_record.run.first
                    || slot.count.load(Relaxed) != vbd_record.run.count
                {
                    return Err("shared VBD slot out of step with its record");
                }
                let owner = Writer::<DOMAINS, VBDS, EXTENTS, DISKS>::owner(domain, vbd);
                if vbd_record.run.count != 0 {
                    visible_runs.push((vbd_record.run, owner));
                }
                if let Some(pending) = vbd_record.pending.filter(|pending| pending.run.count != 0) {
                    pending_runs.push((pending.run, owner));
                }
            }
        }
        for (runs, start, end) in [
            (&mut visible_runs, 0, layout.visible()),
            (&mut pending_runs, layout.visible(), layout.used()),
        ] {
            runs.sort_unstable_by_key(|(run, _)| run.first);
            let mut next = start;
            for (run, owner) in runs.iter() {
                if run.first as usize != next {
                    return Err("runs do not tile their part of the arena");
                }
                let mut previous_end = 0;
                for position in run.range() {
                    if layout.owner(position) != *owner {
                        return Err("a position's owner is not its run's VBD");
                    }
                    let virtual_end = arena.run_sectors(Run {
                        first: position as u32,
                        count: 1,
                    });
                    if virtual_end <= previous_end {
                        return Err("virtual ends not strictly increasing");
                    }
                    previous_end = virtual_end;
                }
                next = run.end();
            }
            if next != end {
                return Err("runs do not tile their part of the arena");
            }
        }
        let index = layout.by_physical();
        if index.len() != layout.used() {
            return Err("positions missing from the physical index");
        }
        let mut seen = alloc::vec![false; EXTENTS];
        for pair in index.windows(2) {
            if arena.key(pair[0] as usize) > arena.key(pair[1] as usize) {
                return Err("physical index not sorted");
            }
        }
        for &position in index {
            let position = position as usize;
            if position >= layout.used() || core::mem::replace(&mut seen[position], true) {
                return Err("physical index is not a permutation of the used arena");
            }
        }
        let extent_at = |position: usize| -> Result<Extent, &'static str> {
            let place = arena.key(position);
            let device = shared
                .disk_devices
                .get(disk_of(place))
                .ok_or("an extent on no disk")?;
            let length = arena.virtual_end(position) - writer.virtual_start(arena, position);
            Extent::new(
                DeviceNumber::from_raw(device.load(Relaxed)),
                start_of(place),
                length,
            )
            .map_err(|_| "a malformed extent")
        };
        for position in 0..layout.used() {
            if writer.disks.check(&extent_at(position)?).is_err() {
                return Err("extent outside its disk");
            }
        }
        // Visible extents only: pending lists are not mappings yet.
        let visible: Vec<usize> = index
            .iter()
            .map(|&position| position as usize)
            .filter(|&position| position < layout.visible())
            .collect();
        for (at, &position) in visible.iter().enumerate() {
            let extent = extent_at(position)?;
            let owner = writer.record(layout.owner(position));
            for &other_position in &visible[at + 1..] {
                let other = extent_at(other_position)?;
                if !extent.overlaps(&other) {
                    break;
                }
                if layout.owner(other_position) == layout.owner(position) {
                    return Err("a VBD overlaps itself");
                }
                // Each overlap passed the level its later request asked for, which the
                // ceiling bounds.
                let other_owner = writer.record(layout.owner(other_position));
                if !writer
                    .ceiling
                    .allows(owner.mode.is_writable(), other_owner.mode.is_writable())
                {
                    return Err("sharing beyond the ceiling");
                }
            }
        }
        Ok(())
    }
}
