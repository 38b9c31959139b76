//! The extent arena: every VBD's extents in one fixed set of arrays.
//!
//! Each VBD owns one contiguous *run* of positions, in virtual order. A position stores the
//! virtual sector just past its extent (`virtual_ends`, cumulative within the run) rather
//! than its length, so translation is a search over the run. The virtual ends, the only
//! thing the search reads, sit in their own dense array, eight to a cache line, apart from
//! the physical places that only the found extents need.
//!
//! What translation reads is atomics ([`Extents`]), read under the table's seqlock; what
//! only changes read ([`Layout`]: the index by physical place and the owner of each
//! position) is plain data under the writer mutex. Positions `[0, visible)` hold the runs
//! translation can see; `[visible, used)` hold *pending* runs, extent lists being built by
//! a multi-call set-extents, which nothing reads but the writer, so building them never
//! disturbs a reader.

use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use shared_abi::{wire::Extent, DeviceNumber, Error};

use crate::block::Segment;

/// Where a VBD's extents live in the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) first: u32,
    pub(crate) count: u32,
}

impl Run {
    pub(crate) const EMPTY: Run = Run { first: 0, count: 0 };

    pub(crate) fn range(self) -> Range<usize> {
        self.first as usize..self.first as usize + self.count as usize
    }

    pub(crate) fn end(self) -> usize {
        self.first as usize + self.count as usize
    }
}

/// Bytes the hypervisor spends per extent of capacity: its virtual end and physical place
/// (read by translation), its slot in the physical index and the index's merge buffer,
/// and its owner (read by changes).
pub const BYTES_PER_EXTENT: usize = 2 * core::mem::size_of::<u64>()
    + 2 * core::mem::size_of::<u32>()
    + core::mem::size_of::<Owner>();

/// Bits of a packed place that hold the first sector. A registered disk's size in bytes
/// fits a `u64`, so every sector on it is below 2^55.
const SECTOR_BITS: u32 = 55;
/// The most disks a packed place can name: the nine bits above the sector.
pub(crate) const MAX_DISKS: usize = 1 << (u64::BITS - SECTOR_BITS);

/// Where an extent lies, packed in one word: its disk's index in the registry above bit 55,
/// its first sector below. One load gives translation both halves, and the word itself is
/// the physical index's sort key (disk, then sector).
pub(crate) fn pack(disk: u16, start_sector: u64) -> u64 {
    (u64::from(disk) << SECTOR_BITS) | start_sector
}

/// The disk index of a packed place.
pub(crate) fn disk_of(place: u64) -> usize {
    (place >> SECTOR_BITS) as usize
}

/// The first sector of a packed place.
pub(crate) fn start_of(place: u64) -> u64 {
    place & ((1 << SECTOR_BITS) - 1)
}

/// The arrays translation reads. Written only by the writer inside a seqlock write, or at
/// positions no visible run covers.
pub(crate) struct Extents<const EXTENTS: usize> {
    virtual_ends: [AtomicU64; EXTENTS],
    /// Each extent's packed place ([`pack`]), at the same position as its virtual end.
    places: [AtomicU64; EXTENTS],
}

impl<const EXTENTS: usize> Extents<EXTENTS> {
    pub(crate) const fn new() -> Self {
        Extents {
            virtual_ends: [const { AtomicU64::new(0) }; EXTENTS],
            places: [const { AtomicU64::new(0) }; EXTENTS],
        }
    }

    /// The virtual size of a run. Under a racing write this may be any value; it never
    /// panics.
    pub(crate) fn run_sectors(&self, run: Run) -> u64 {
        match run.count {
            0 => 0,
            count => self
                .virtual_ends
                .get(run.first as usize + count as usize - 1)
                .map_or(0, |end| end.load(Relaxed)),
        }
    }

    /// Extent `index` of a consistent run (the writer's view). Every stored extent was
    /// validated when it was pushed, so this cannot fail; the check stays rather than a
    /// panic in a hypervisor.
    pub(crate) fn extent(
        &self,
        run: Run,
        index: usize,
        disks: &[AtomicU32],
    ) -> Result<Extent, Error> {
        let position = run.first as usize + index;
        self.extent_at(position, run.first as usize, disks)
    }

    /// The extent at `position` of the run starting at `run_first` (the writer's view).
    pub(crate) fn extent_at(
        &self,
        position: usize,
        run_first: usize,
        disks: &[AtomicU32],
    ) -> Result<Extent, Error> {
        let place = self.key(position);
        let device = disks.get(disk_of(place)).ok_or(Error::NoDevice)?;
        Extent::new(
            DeviceNumber::from_raw(device.load(Relaxed)),
            start_of(place),
            self.length(position, run_first),
        )
    }

    /// The virtual end of the extent at `position` (the writer's view).
    pub(crate) fn virtual_end(&self, position: usize) -> u64 {
        self.virtual_ends[position].load(Relaxed)
    }

    /// The length of the extent at `position` of a run whose first position is
    /// `run_first` (the writer's view).
    pub(crate) fn length(&self, position: usize, run_first: usize) -> u64 {
        let start = if position == run_first {
            0
        } else {
            self.virtual_end(position - 1)
        };
        self.virtual_end(position) - start
    }

    /// The physical key the index sorts by: the packed place.
    pub(crate) fn key(&self, position: usize) -> u64 {
        self.places[position].load(Relaxed)
    }

    /// Write the physical segments of the virtual range `[sector, end)` of `run` to `out`,
    /// split at every extent boundary, and return how many there are. The caller checked
    /// `sector < end`. `ERANGE` past the run's end, `E2BIG` when `out` is too small.
    ///
    /// Runs inside a seqlock read, so every value may be torn: every index is checked and
    /// every loop is bounded by `out`, and a torn read returns some error that the seqlock
    /// then discards. On consistent data the loop is the familiar one: each step covers at
    /// least one sector and moves to the next extent.
    #[inline(always)]
    pub(crate) fn translate(
        &self,
        run: Run,
        sector: u64,
        end: u64,
        disks: &[AtomicU32],
        out: &mut [Segment],
    ) -> Result<usize, Error> {
        let range = run.range();
        let (Some(ends), Some(places)) =
            (self.virtual_ends.get(range.clone()), self.places.get(range))
        else {
            return Err(Error::OutOfRange);
        };
        match ends.last() {
            Some(size) if end <= size.load(Relaxed) => {}
            _ => return Err(Error::OutOfRange),
        }
        let mut index = first_ending_after(ends, sector);
        let mut virtual_start = match index.checked_sub(1).and_then(|previous| ends.get(previous)) {
            Some(previous) => previous.load(Relaxed),
            None => 0,
        };
        let mut position = sector;
        let mut written = 0;
        // Each turn writes one segment and moves to the next extent, so the loop ends within
        // `ends.len()` and `out.len()` turns whatever the values read.
        loop {
            let Some(slot) = out.get_mut(written) else {
                return Err(Error::TooBig);
            };
            let (Some(virtual_end), Some(place)) = (ends.get(index), places.get(index)) else {
                return Err(Error::OutOfRange);
            };
            let (virtual_end, place) = (virtual_end.load(Relaxed), place.load(Relaxed));
            if virtual_end <= position || position < virtual_start {
                return Err(Error::OutOfRange);
            }
            let device = disks.get(disk_of(place)).ok_or(Error::OutOfRange)?;
            let stop = virtual_end.min(end);
            *slot = Segment {
                device: DeviceNumber::from_raw(device.load(Relaxed)),
                sector: start_of(place).wrapping_add(position - virtual_start),
                nr_sectors: stop - position,
            };
            written += 1;
            if stop >= end {
                return Ok(written);
            }
            position = stop;
            virtual_start = virtual_end;
            index += 1;
        }
    }

    /// Set the virtual end of the extent at `position`, when it joins a run. Call inside a
    /// seqlock write.
    pub(crate) fn set_virtual_end(&self, position: usize, virtual_end: u64) {
        self.virtual_ends[position].store(virtual_end, Relaxed);
    }

    fn copy(&self, from: usize, to: usize) {
        self.virtual_ends[to].store(self.virtual_ends[from].load(Relaxed), Relaxed);
        self.places[to].store(self.places[from].load(Relaxed), Relaxed);
    }

    fn swap(&self, first: usize, second: usize) {
        swap_atomic(&self.virtual_ends, first, second);
        swap_atomic(&self.places, first, second);
    }
}

fn swap_atomic(array: &[AtomicU64], first: usize, second: usize) {
    let value = array[first].load(Relaxed);
    array[first].store(array[second].load(Relaxed), Relaxed);
    array[second].store(value, Relaxed);
}

/// The index of the first of `ends` (strictly increasing) that is greater than `sector`:
/// the extent holding it. `ends.len()` when there is none; on torn data, some index up to
/// `ends.len()`.
///
/// A branchless search that splits the range in eight per step rather than two: the seven
/// keys of a step do not depend on each other, so their cache misses overlap, and a run of
/// 65 536 extents waits for six rounds of misses instead of sixteen. The comparisons only
/// move the base (no data-dependent branch), so random requests do not mispredict.
#[inline(always)]
fn first_ending_after(ends: &[AtomicU64], sector: u64) -> usize {
    let mut base = 0;
    let mut len = ends.len();
    // The answer stays in `base..=base + len`, and `base + len <= ends.len()`.
    while len > 8 {
        let eighth = len / 8;
        let below = (1..8)
            .map(|part| usize::from(ends[base + part * eighth - 1].load(Relaxed) <= sector))
            .sum::<usize>();
        base += eighth * below;
        len -= 7 * eighth;
    }
    // At most eight keys are left, usually in one cache line: halve the rest rather than
    // count them, which LLVM would vectorize with a set-up that costs more than it saves.
    while len > 1 {
        let half = len / 2;
        if ends[base + half - 1].load(Relaxed) <= sector {
            base += half;
        }
        len -= half;
    }
    base + usize::from(len == 1 && ends[base].load(Relaxed) <= sector)
}

/// A position's owner: the VBD slot (`domain_index * VBDS + vbd_index`) whose run, visible
/// or pending, holds it. Two bytes, so a table has at most 65 536 VBD slots.
pub(crate) type Owner = u16;

/// What changes alone read: the physical index and each position's owner, and where the
/// visible and pending parts of the arena end.
pub(crate) struct Layout<const EXTENTS: usize> {
    /// Every used position, sorted by `(device, physical_start)`, so the sharing check is
    /// one sweep instead of a comparison of every pair: `indexes[current]`. The other array
    /// receives the next merge, and then they swap.
    indexes: [[u32; EXTENTS]; 2],
    current: usize,
    owners: [Owner; EXTENTS],
    visible: usize,
    /// Positions `[0, indexed)` are in the index; `[indexed, used)` were pushed since and
    /// wait for [`Layout::index_pushed`], so a long list is sorted and merged once, not once
    /// per batch.
    indexed: usize,
    used: usize,
}

impl<const EXTENTS: usize> Layout<EXTENTS> {
    pub(crate) const fn new() -> Self {
        // Positions are stored as `u32`; a larger arena could not be indexed.
        assert!(EXTENTS <= u32::MAX as usize, "EXTENTS must fit in a u32");
        Layout {
            indexes: [[0; EXTENTS]; 2],
            current: 0,
            owners: [0; EXTENTS],
            visible: 0,
            indexed: 0,
            used: 0,
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn visible(&self) -> usize {
        self.visible
    }

    pub(crate) fn owner(&self, position: usize) -> Owner {
        self.owners[position]
    }

    /// The index, in physical order.
    /// The index, in physical order. Complete only after [`Layout::index_pushed`].
    pub(crate) fn by_physical(&self) -> &[u32] {
        &self.indexes[self.current][..self.indexed]
    }

    /// Append `extent` at the end of the arena as the next extent of a pending run of
    /// `owner` whose extents so far end at virtual sector `virtual_base`; returns its
    /// virtual end. Not yet indexed: see [`Layout::index_pushed`]. `ENOSPC` when the arena
    /// is full, `ERANGE` when the run's size would overflow.
    pub(crate) fn push(
        &mut self,
        extents: &Extents<EXTENTS>,
        extent: &Extent,
        disk: u16,
        owner: Owner,
        virtual_base: u64,
    ) -> Result<u64, Error> {
        let position = self.used;
        if position >= EXTENTS {
            return Err(Error::NoSpace);
        }
        let virtual_end = virtual_base
            .checked_add(extent.nr_sectors())
            .ok_or(Error::OutOfRange)?;
        // Past every run translation can see, so no seqlock write is needed.
        extents.virtual_ends[position].store(virtual_end, Relaxed);
        extents.places[position].store(pack(disk, extent.start_sector()), Relaxed);
        self.owners[position] = owner;
        self.used += 1;
        Ok(virtual_end)
    }

    /// Put the positions pushed since the index last covered the arena into it: sort them
    /// in the index's free tail, then merge both parts into the other array and make it
    /// current. `O(used + n log n)`.
    pub(crate) fn index_pushed(&mut self, extents: &Extents<EXTENTS>) {
        let (from, used) = (self.indexed, self.used);
        if used == from {
            return;
        }
        let [first, second] = &mut self.indexes;
        let (source, target) = if self.current == 0 {
            (first, second)
        } else {
            (second, first)
        };
        for (slot, position) in source[from..used].iter_mut().zip(from..) {
            *slot = position as u32;
        }
        source[from..used].sort_unstable_by_key(|&position| extents.key(position as usize));
        let (old, new) = source[..used].split_at(from);
        let key = |position: u32| extents.key(position as usize);
        let (mut next_old, mut next_new) = (0, 0);
        let mut old_key = old.first().map(|&position| key(position));
        let mut new_key = new.first().map(|&position| key(position));
        for slot in &mut target[..used] {
            // On equal keys the existing extent goes first, as it was indexed first.
            let take_old = match (old_key, new_key) {
                (Some(a), Some(b)) => a <= b,
                (Some(_), None) => true,
                _ => false,
            };
            if take_old {
                *slot = old[next_old];
                next_old += 1;
                old_key = old.get(next_old).map(|&position| key(position));
            } else {
                *slot = new[next_new];
                next_new += 1;
                new_key = new.get(next_new).map(|&position| key(position));
            }
        }
        self.current = 1 - self.current;
        self.indexed = used;
    }

    /// Make the pending run `run` (in `[visible, used)`) the first pending run, so that it
    /// ends where the visible runs will end once it joins them. Moves pending runs only,
    /// which no reader looks at. Returns the position map for every other run.
    pub(crate) fn move_to_visible_edge(
        &mut self,
        extents: &Extents<EXTENTS>,
        run: Run,
    ) -> impl Fn(usize) -> usize {
        self.rotate(extents, self.visible..run.end(), run.count as usize)
    }

    /// Make the pending run `run` the last run of the arena, so pushes extend it. Moves
    /// pending runs only. Returns the position map for every other run.
    pub(crate) fn move_to_end(
        &mut self,
        extents: &Extents<EXTENTS>,
        run: Run,
    ) -> impl Fn(usize) -> usize {
        let used = self.used;
        self.rotate(extents, run.first as usize..used, used - run.end())
    }

    /// Let the first `count` pending positions join the visible runs.
    pub(crate) fn reveal(&mut self, count: usize) {
        self.visible += count;
    }

    /// Move the block `source` (a pending run) to `destination`, the end of a visible run,
    /// shifting everything in between up. Moves visible positions: call inside a seqlock
    /// write. Returns the position map.
    pub(crate) fn insert_after(
        &mut self,
        extents: &Extents<EXTENTS>,
        source: Run,
        destination: usize,
    ) -> impl Fn(usize) -> usize {
        self.rotate(extents, destination..source.end(), source.count as usize)
    }

    /// Rotate `range` up by `shift`: `[a, b - shift)` moves to `[a + shift, b)` and
    /// `[b - shift, b)` to `[a, a + shift)`, in the arrays, the owners and the index, which
    /// is first brought up to date.
    fn rotate(
        &mut self,
        extents: &Extents<EXTENTS>,
        range: Range<usize>,
        shift: usize,
    ) -> impl Fn(usize) -> usize {
        self.index_pushed(extents);
        let (start, end) = (range.start, range.end);
        let map = move |position: usize| {
            if position < start || position >= end {
                position
            } else if position < end - shift {
                position + shift
            } else {
                position - (end - shift) + start
            }
        };
        if shift != 0 && shift != end - start {
            // Three reversals: in place, no buffer, each position moved about twice.
            self.reverse(extents, start, end - shift);
            self.reverse(extents, end - shift, end);
            self.reverse(extents, start, end);
            for slot in &mut self.indexes[self.current][..self.indexed] {
                *slot = map(*slot as usize) as u32;
            }
        }
        map
    }

    fn reverse(&mut self, extents: &Extents<EXTENTS>, start: usize, end: usize) {
        let (mut low, mut high) = (start, end);
        while low + 1 < high {
            high -= 1;
            extents.swap(low, high);
            self.owners.swap(low, high);
            low += 1;
        }
    }

    /// Drop the positions `removed`, moving everything above down. When `removed` lies
    /// below `visible` this moves visible positions: call inside a seqlock write. Returns
    /// the position map for the positions that remain.
    pub(crate) fn remove(
        &mut self,
        extents: &Extents<EXTENTS>,
        removed: Range<usize>,
    ) -> impl Fn(usize) -> usize {
        let (start, end) = (removed.start, removed.end);
        let count = end - start;
        let map = move |position: usize| {
            if position >= end {
                position - count
            } else {
                position
            }
        };
        if count == 0 {
            return map;
        }
        for position in end..self.used {
            extents.copy(position, position - count);
            self.owners[position - count] = self.owners[position];
        }
        // Indexed positions are `[0, indexed)`: the removed ones leave the index, the rest
        // are renumbered, and the boundary moves down by the indexed part of the removal.
        let index = &mut self.indexes[self.current];
        let mut write = 0;
        for read in 0..self.indexed {
            let position = index[read] as usize;
            if !(start..end).contains(&position) {
                index[write] = map(position) as u32;
                write += 1;
            }
        }
        self.indexed = write;
        if start < self.visible {
            self.visible -= count.min(self.visible - start);
        }
        self.used -= count;
        map
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
            let ends: std::vec::Vec<AtomicU64> =
                (1..=len).map(|index| AtomicU64::new(index * 3)).collect();
            let plain: std::vec::Vec<u64> = (1..=len).map(|index| index * 3).collect();
            for sector in 0..=len * 3 + 1 {
                assert_eq!(
                    first_ending_after(&ends, sector),
                    plain.partition_point(|&end| end <= sector),
                    "{len} extents, sector {sector}"
                );
            }
        }
    }

    fn disk() -> DeviceNumber {
        DeviceNumber::from_name("hda").unwrap()
    }

    /// Push `lengths` as one pending run of `owner` at `starts`, and index them.
    fn push_run(
        layout: &mut Layout<32>,
        extents: &Extents<32>,
        owner: Owner,
        starts: &[u64],
    ) -> Run {
        let first = layout.used();
        let mut virtual_end = 0;
        for &start in starts {
            let extent = Extent::new(disk(), start, 2).unwrap();
            virtual_end = layout
                .push(extents, &extent, 0, owner, virtual_end)
                .unwrap();
            virtual_end += 2;
        }
        layout.index_pushed(extents);
        Run {
            first: first as u32,
            count: starts.len() as u32,
        }
    }

    fn index_is_sorted_permutation(layout: &Layout<32>, extents: &Extents<32>) {
        let index = layout.by_physical();
        let mut seen = index.to_vec();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..layout.used() as u32).collect::<std::vec::Vec<_>>()
        );
        assert!(index
            .windows(2)
            .all(|pair| extents.key(pair[0] as usize) <= extents.key(pair[1] as usize)));
    }

    #[test]
    fn index_merges_moves_and_removals_keep_it_a_sorted_permutation() {
        let extents = Extents::<32>::new();
        let mut layout = Layout::<32>::new();
        let first = push_run(&mut layout, &extents, 1, &[40, 10, 30]);
        layout.reveal(first.count as usize);
        let second = push_run(&mut layout, &extents, 2, &[20, 0, 50, 35]);
        index_is_sorted_permutation(&layout, &extents);
        let third = push_run(&mut layout, &extents, 3, &[60]);
        // Join the third run to the first: the second shifts up by one.
        let map = layout.insert_after(&extents, third, first.end());
        assert_eq!(map(second.first as usize), second.first as usize + 1);
        assert_eq!(map(third.first as usize), first.end());
        assert_eq!(extents.key(first.end()), pack(0, 60));
        assert_eq!(layout.owner(first.end()), 3);
        index_is_sorted_permutation(&layout, &extents);
        let map = layout.remove(&extents, 0..2);
        assert_eq!(map(5), 3);
        assert_eq!(layout.used(), 6);
        assert_eq!(layout.visible(), 1);
        index_is_sorted_permutation(&layout, &extents);
    }

    #[test]
    fn push_refuses_a_full_arena_and_an_overflowing_run() {
        let extents = Extents::<32>::new();
        let mut layout = Layout::<32>::new();
        let extent = Extent::new(disk(), 0, 2).unwrap();
        assert_eq!(
            layout.push(&extents, &extent, 0, 0, u64::MAX - 1),
            Err(Error::OutOfRange)
        );
        for _ in 0..32 {
            layout.push(&extents, &extent, 0, 0, 0).unwrap();
        }
        assert_eq!(layout.push(&extents, &extent, 0, 0, 0), Err(Error::NoSpace));
    }
}
