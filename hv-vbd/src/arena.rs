//! The extent arena: every VBD's extents in one fixed array, plus an index by physical place.
//!
//! Each VBD owns one contiguous *run* of the arena, in virtual order. An entry stores the
//! virtual sector just past it (`virtual_end`, cumulative within the run) rather than its
//! length, so translation is a binary search over the run. The index `by_physical` lists
//! every used position sorted by `(device, physical_start)`, so the sharing check is a merge
//! of two sorted lists instead of a comparison of every pair.
//!
//! The arena is a structure of arrays: the virtual ends, the only thing the search reads,
//! sit in their own dense array, eight to a cache line, apart from the physical places
//! that only the found extents need. A search of a large run then touches a third of the
//! lines it would in an array of whole entries, and its last three steps share one line.
//!
//! A change is staged first, in the free tail of the arena, checked there, and only then
//! committed by moving entries; a refused change leaves the arena exactly as it was.

use shared_abi::{wire::Extent, DeviceNumber, Error};

use crate::sharing::SharingLevel;
use crate::table::Segment;

/// Where one extent lies on its disk: 16 bytes, beside its 8-byte virtual end in
/// [`Arena::virtual_ends`]. Its length is its virtual end minus the previous entry's, or
/// minus zero for the first entry of a run ([`RUN_START`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) physical_start: u64,
    pub(crate) device: u32,
    pub(crate) flags: u32,
}

/// Flag: the owning VBD is writable (the sharing check reads it through the index).
pub(crate) const WRITABLE: u32 = 1;
/// Flag: first entry of a run, so its virtual start is zero.
pub(crate) const RUN_START: u32 = 2;

impl Place {
    const EMPTY: Place = Place {
        physical_start: 0,
        device: 0,
        flags: 0,
    };

    fn key(&self) -> (u32, u64) {
        (self.device, self.physical_start)
    }
}

/// Bytes the hypervisor spends per extent of capacity: its virtual end, its place and its
/// index slot.
pub const BYTES_PER_EXTENT: usize =
    core::mem::size_of::<u64>() + core::mem::size_of::<Place>() + core::mem::size_of::<u32>();

/// Where a VBD's extents live in the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) first: u32,
    pub(crate) count: u32,
}

impl Run {
    pub(crate) const EMPTY: Run = Run { first: 0, count: 0 };

    fn range(self) -> core::ops::Range<usize> {
        self.first as usize..self.first as usize + self.count as usize
    }
}

/// A change to one run, staged in the arena's tail: keep the first `keep` extents, then
/// append the `staged` extents that [`Arena::stage`] placed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Change {
    pub(crate) run: Run,
    pub(crate) keep: u32,
    pub(crate) staged: u32,
    pub(crate) writable: bool,
}

pub(crate) struct Arena<const EXTENTS: usize> {
    /// Each entry's virtual end, cumulative within its run: the search key, kept dense.
    virtual_ends: [u64; EXTENTS],
    /// Each entry's physical place, at the same position as its virtual end.
    places: [Place; EXTENTS],
    by_physical: [u32; EXTENTS],
    used: usize,
}

impl<const EXTENTS: usize> Arena<EXTENTS> {
    pub(crate) const fn new() -> Self {
        Arena {
            virtual_ends: [0; EXTENTS],
            places: [Place::EMPTY; EXTENTS],
            by_physical: [0; EXTENTS],
            used: 0,
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// The virtual ends of a run's extents, in virtual order.
    fn virtual_ends_of(&self, run: Run) -> &[u64] {
        &self.virtual_ends[run.range()]
    }

    /// The virtual size of a run in sectors.
    pub(crate) fn run_sectors(&self, run: Run) -> u64 {
        self.virtual_ends_of(run).last().map_or(0, |&last| last)
    }

    /// The virtual size of the first `keep` extents of a run.
    pub(crate) fn kept_sectors(&self, run: Run, keep: usize) -> u64 {
        self.virtual_ends_of(run)[..keep]
            .last()
            .map_or(0, |&last| last)
    }

    /// Extent `index` of a run as a typed extent.
    pub(crate) fn extent(&self, run: Run, index: usize) -> Extent {
        let ends = self.virtual_ends_of(run);
        let virtual_start = if index == 0 { 0 } else { ends[index - 1] };
        let place = self.places[run.range()][index];
        Extent {
            device: DeviceNumber::from_raw(place.device),
            start_sector: place.physical_start,
            nr_sectors: ends[index] - virtual_start,
        }
    }

    /// Write the physical segments of the virtual range `[sector, end)` of a run to `out`,
    /// split at every extent boundary, and return how many there are. The caller has
    /// checked that `sector < end`. `ERANGE` when `end` is past the run's end, `E2BIG` when
    /// `out` is too small.
    pub(crate) fn translate(
        &self,
        run: Run,
        sector: u64,
        end: u64,
        out: &mut [Segment],
    ) -> Result<usize, Error> {
        let range = run.range();
        let ends = &self.virtual_ends[range.clone()];
        // Checked here, on the slice the search uses, so the run is bounds-checked once.
        if end > ends.last().map_or(0, |&size| size) {
            return Err(Error::OutOfRange);
        }
        let places = &self.places[range];
        let mut index = first_ending_after(ends, sector);
        let mut virtual_start = if index == 0 { 0 } else { ends[index - 1] };
        let mut position = sector;
        let mut written = 0;
        // Bounded: each step covers at least one sector and moves to the next extent, and
        // `end` is inside the run.
        while position < end {
            let virtual_end = ends[index];
            let place = places[index];
            let length = virtual_end.min(end) - position;
            let slot = out.get_mut(written).ok_or(Error::TooBig)?;
            *slot = Segment {
                device: DeviceNumber::from_raw(place.device),
                sector: place.physical_start + (position - virtual_start),
                nr_sectors: length,
            };
            written += 1;
            position += length;
            virtual_start = virtual_end;
            index += 1;
        }
        Ok(written)
    }

    /// Place staged extent number `index` of a change whose kept extents end at virtual
    /// sector `virtual_base`. Returns the virtual end of the staged extent. `ENOSPC` when the
    /// arena's free tail has no room for it; `ERANGE` when the VBD's size would overflow.
    pub(crate) fn stage(
        &mut self,
        index: usize,
        extent: &Extent,
        virtual_base: u64,
        writable: bool,
    ) -> Result<u64, Error> {
        let position = self
            .used
            .checked_add(index)
            .filter(|&position| position < EXTENTS)
            .ok_or(Error::NoSpace)?;
        let virtual_start = if index == 0 {
            virtual_base
        } else {
            self.virtual_ends[position - 1]
        };
        let virtual_end = virtual_start
            .checked_add(extent.nr_sectors)
            .ok_or(Error::OutOfRange)?;
        self.virtual_ends[position] = virtual_end;
        self.places[position] = Place {
            physical_start: extent.start_sector,
            device: extent.device.raw(),
            flags: if writable { WRITABLE } else { 0 },
        };
        Ok(virtual_end)
    }

    /// Physical length of the entry at `position`, whether committed or staged.
    fn length_at(&self, position: usize, change: &Change) -> u64 {
        let virtual_start = if position >= self.used {
            if position == self.used {
                // The first staged entry continues after the kept extents.
                self.kept_sectors(change.run, change.keep as usize)
            } else {
                self.virtual_ends[position - 1]
            }
        } else if self.places[position].flags & RUN_START != 0 {
            0
        } else {
            self.virtual_ends[position - 1]
        };
        self.virtual_ends[position] - virtual_start
    }

    /// Check a staged change: no two extents of the VBD overlap (`EINVAL`) and no overlap
    /// with another VBD is forbidden by `level` (`EBUSY`). `O((n + m) log(n + m))`: the
    /// staged extents are sorted in the index's free tail, then merged with the index.
    pub(crate) fn check(&mut self, change: &Change, level: SharingLevel) -> Result<(), Error> {
        let used = self.used;
        let staged = change.staged as usize;
        let staged_index = &mut self.by_physical[used..used + staged];
        for (slot, position) in staged_index.iter_mut().zip(used..) {
            *slot = position as u32;
        }
        let places = &self.places;
        staged_index.sort_unstable_by_key(|&position| places[position as usize].key());
        let existing = &self.by_physical[..used];
        let staged_index = &self.by_physical[used..used + staged];

        let kept = change.run.first as usize..change.run.first as usize + change.keep as usize;
        let dropped = kept.end..change.run.range().end;
        let mut sweep = Sweep::new(level, change.writable);
        let (mut next_existing, mut next_staged) = (0, 0);
        loop {
            let take_existing = match (existing.get(next_existing), staged_index.get(next_staged)) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                // On equal keys the existing extent goes first, so the staged one sees it.
                (Some(&old), Some(&new)) => {
                    self.places[old as usize].key() <= self.places[new as usize].key()
                }
            };
            let position = if take_existing {
                next_existing += 1;
                existing[next_existing - 1] as usize
            } else {
                next_staged += 1;
                staged_index[next_staged - 1] as usize
            };
            if dropped.contains(&position) {
                continue;
            }
            let entry = &self.places[position];
            let start = entry.physical_start;
            let end = start + self.length_at(position, change);
            let source = if !take_existing {
                Source::Staged
            } else if kept.contains(&position) {
                Source::SameVbd
            } else {
                Source::Other {
                    writable: entry.flags & WRITABLE != 0,
                }
            };
            sweep.visit(entry.device, start, end, source)?;
        }
    }

    /// Apply a checked change. Returns the new run and a function mapping any other run's
    /// old first position to its new one.
    pub(crate) fn commit(&mut self, change: &Change) -> (Run, impl Fn(Run) -> Run) {
        let first = change.run.first as usize;
        let old_end = first + change.run.count as usize;
        let keep = change.keep as usize;
        let staged = change.staged as usize;
        let removed = change.run.count as usize - keep;
        let used = self.used;

        // Drop the removed extents, then rotate the staged ones (now at the end) to follow
        // the kept ones. Every other run keeps its order.
        let moved = used - old_end + staged;
        self.virtual_ends
            .copy_within(old_end..used + staged, first + keep);
        self.virtual_ends[first + keep..first + keep + moved].rotate_right(staged);
        self.places
            .copy_within(old_end..used + staged, first + keep);
        self.places[first + keep..first + keep + moved].rotate_right(staged);
        let new_count = keep + staged;
        if new_count > 0 {
            self.places[first].flags |= RUN_START;
        }

        let remap = move |position: usize| -> Option<usize> {
            if position < first + keep {
                Some(position)
            } else if position < old_end {
                None
            } else if position < used {
                Some(position - removed + staged)
            } else {
                Some(first + keep + (position - used))
            }
        };
        let mut write = 0;
        for read in 0..used + staged {
            if let Some(position) = remap(self.by_physical[read] as usize) {
                self.by_physical[write] = position as u32;
                write += 1;
            }
        }
        self.used = used - removed + staged;
        debug_assert_eq!(write, self.used);
        let places = &self.places;
        self.by_physical[..write].sort_unstable_by_key(|&position| places[position as usize].key());

        let new_run = if new_count == 0 {
            Run::EMPTY
        } else {
            Run {
                first: first as u32,
                count: new_count as u32,
            }
        };
        let move_other = move |other: Run| {
            if other.count == 0 {
                Run::EMPTY
            } else {
                // Other runs lie wholly before or wholly after the changed one.
                let first = remap(other.first as usize).unwrap_or(other.first as usize);
                Run {
                    first: first as u32,
                    count: other.count,
                }
            }
        };
        (new_run, move_other)
    }

    /// Check the arena's own invariants, for tests and debug builds of embedders.
    pub(crate) fn check_invariants(
        &self,
        runs: &mut dyn Iterator<Item = Run>,
    ) -> Result<(), &'static str> {
        let mut total = 0usize;
        let mut starts_seen = 0usize;
        for run in runs {
            if run.count == 0 {
                continue;
            }
            let range = run.range();
            if range.end > self.used {
                return Err("run past the used part of the arena");
            }
            total += run.count as usize;
            if self.places[range.start].flags & RUN_START == 0 {
                return Err("first extent of a run lacks RUN_START");
            }
            starts_seen += 1;
            let mut previous_end = 0;
            for &virtual_end in &self.virtual_ends[range] {
                if virtual_end <= previous_end {
                    return Err("virtual ends not strictly increasing");
                }
                previous_end = virtual_end;
            }
        }
        if total != self.used {
            return Err("runs do not account for the used arena exactly");
        }
        let run_starts = self.places[..self.used]
            .iter()
            .filter(|entry| entry.flags & RUN_START != 0)
            .count();
        if run_starts != starts_seen {
            return Err("RUN_START set inside a run");
        }
        let index = &self.by_physical[..self.used];
        if index.iter().any(|&position| position as usize >= self.used) {
            return Err("physical index points past the used arena");
        }
        // Sorted by key, so a repeated position can only hide among entries of equal key.
        let mut group_start = 0;
        for end in 1..=index.len() {
            let key = |at: usize| self.places[index[at] as usize].key();
            if end < index.len() && key(end) == key(group_start) {
                continue;
            }
            if end < index.len() && key(end) < key(group_start) {
                return Err("physical index not sorted");
            }
            let group = &index[group_start..end];
            if group
                .iter()
                .enumerate()
                .any(|(at, position)| group[at + 1..].contains(position))
            {
                return Err("physical index repeats a position");
            }
            group_start = end;
        }
        Ok(())
    }
}

/// The index of the first of `ends` (strictly increasing) that is greater than `sector`:
/// the extent holding it. `ends.len()` when there is none.
///
/// A branchless search that splits the range in eight per step rather than two: the seven
/// keys of a step do not depend on each other, so their cache misses overlap, and a run of
/// 65 536 extents waits for six rounds of misses instead of sixteen. The comparisons only
/// move the base (no data-dependent branch), so random requests do not mispredict.
fn first_ending_after(ends: &[u64], sector: u64) -> usize {
    let mut base = 0;
    let mut len = ends.len();
    // The answer stays in `base..=base + len`, and `base + len <= ends.len()`.
    while len > 8 {
        let eighth = len / 8;
        let below = (1..8)
            .map(|part| usize::from(ends[base + part * eighth - 1] <= sector))
            .sum::<usize>();
        base += eighth * below;
        len -= 7 * eighth;
    }
    // At most eight keys are left, usually in one cache line: halve the rest rather than
    // count them, which LLVM would vectorize with a set-up that costs more than it saves.
    while len > 1 {
        let half = len / 2;
        if ends[base + half - 1] <= sector {
            base += half;
        }
        len -= half;
    }
    base + usize::from(len == 1 && ends[base] <= sector)
}

/// Where an extent in the sharing sweep comes from.
#[derive(Clone, Copy)]
enum Source {
    /// Part of the change.
    Staged,
    /// Kept from the same VBD: any overlap with a staged extent is a malformed VBD.
    SameVbd,
    /// Another VBD, of either mode.
    Other { writable: bool },
}

/// Sweep-line state over one device at a time: the furthest end seen so far of each kind
/// of extent, so each visit is O(1).
struct Sweep {
    level: SharingLevel,
    staged_writable: bool,
    device: Option<u32>,
    staged_end: u64,
    same_vbd_end: u64,
    other_reader_end: u64,
    other_writer_end: u64,
}

impl Sweep {
    fn new(level: SharingLevel, staged_writable: bool) -> Sweep {
        Sweep {
            level,
            staged_writable,
            device: None,
            staged_end: 0,
            same_vbd_end: 0,
            other_reader_end: 0,
            other_writer_end: 0,
        }
    }

    /// Visit extents in `(device, start)` order.
    fn visit(&mut self, device: u32, start: u64, end: u64, source: Source) -> Result<(), Error> {
        if self.device != Some(device) {
            *self = Sweep::new(self.level, self.staged_writable);
            self.device = Some(device);
        }
        match source {
            Source::Staged => {
                if self.staged_end > start || self.same_vbd_end > start {
                    return Err(Error::InvalidArgument);
                }
                if (self.other_writer_end > start && !self.level.allows(self.staged_writable, true))
                    || (self.other_reader_end > start
                        && !self.level.allows(self.staged_writable, false))
                {
                    return Err(Error::Busy);
                }
                self.staged_end = self.staged_end.max(end);
            }
            Source::SameVbd => {
                if self.staged_end > start {
                    return Err(Error::InvalidArgument);
                }
                self.same_vbd_end = self.same_vbd_end.max(end);
            }
            Source::Other { writable } => {
                if self.staged_end > start && !self.level.allows(self.staged_writable, writable) {
                    return Err(Error::Busy);
                }
                if writable {
                    self.other_writer_end = self.other_writer_end.max(end);
                } else {
                    self.other_reader_end = self.other_reader_end.max(end);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-way search against the standard library's, for every length up to a few
    /// full steps and every sector around every key.
    #[test]
    fn search_agrees_with_partition_point() {
        for len in 0..200u64 {
            let ends: std::vec::Vec<u64> = (1..=len).map(|index| index * 3).collect();
            for sector in 0..=len * 3 + 1 {
                assert_eq!(
                    first_ending_after(&ends, sector),
                    ends.partition_point(|&end| end <= sector),
                    "{len} extents, sector {sector}"
                );
            }
        }
    }
}
