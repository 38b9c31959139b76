//! How a new virtual disk's extents are chosen from the free pool: few, long runs of
//! adjacent extents, so the VBD has few extents and the hypervisor's translation stays cheap.

use shared_abi::wire::Extent;

/// A free extent of the pool, with the database row that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeExtent {
    pub id: i64,
    pub extent: Extent,
    /// It may hold a previous owner's data, so it must be zeroed before it is handed out.
    pub dirty: bool,
}

/// A maximal run of physically adjacent free extents: `free[first..first + count]`.
#[derive(Clone, Copy, Debug)]
struct Run {
    first: usize,
    count: usize,
    sectors: u64,
}

fn runs(free: &[FreeExtent]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (index, candidate) in free.iter().enumerate() {
        match runs.last_mut() {
            Some(run)
                if {
                    let previous = &free[run.first + run.count - 1].extent;
                    previous.device() == candidate.extent.device()
                        && previous.end_sector() == candidate.extent.start_sector()
                } =>
            {
                run.count += 1;
                run.sectors += candidate.extent.nr_sectors();
            }
            _ => runs.push(Run {
                first: index,
                count: 1,
                sectors: candidate.extent.nr_sectors(),
            }),
        }
    }
    runs
}

/// Choose extents covering at least `size_sectors` from `free`, which must be sorted by
/// device and start sector. The rule, also shown by `vdisk create --help`:
///
/// 1. if one run of adjacent free extents can hold the rest of the disk, take the
///    *smallest* such run (from its start), which keeps the long runs for large disks;
/// 2. otherwise take the *longest* run whole and repeat.
///
/// Ties go to the lowest device and sector, so the choice is deterministic. The result is
/// in disk order, which is also the virtual disk's layout. `None` when the pool is short.
pub fn choose_extents(free: &[FreeExtent], size_sectors: u64) -> Option<Vec<FreeExtent>> {
    let total: u64 = free
        .iter()
        .map(|candidate| candidate.extent.nr_sectors())
        .sum();
    if total < size_sectors || size_sectors == 0 {
        return None;
    }
    let mut available = runs(free);
    let mut chosen = Vec::new();
    let mut remaining = size_sectors;
    while remaining > 0 {
        let fitting = available
            .iter()
            .enumerate()
            .filter(|(_, run)| run.sectors >= remaining)
            .min_by_key(|(_, run)| run.sectors)
            .map(|(index, _)| index);
        let index = match fitting {
            Some(index) => index,
            // max_by_key returns the last maximum; reverse to prefer the first.
            None => {
                available
                    .iter()
                    .enumerate()
                    .rev()
                    .max_by_key(|(_, run)| run.sectors)?
                    .0
            }
        };
        let run = available.remove(index);
        for candidate in &free[run.first..run.first + run.count] {
            if remaining == 0 {
                break;
            }
            chosen.push(*candidate);
            remaining = remaining.saturating_sub(candidate.extent.nr_sectors());
        }
    }
    chosen.sort_by_key(|candidate| (candidate.extent.device(), candidate.extent.start_sector()));
    Some(chosen)
}

/// Choose extents covering at least `size_sectors` to append to a disk whose last extent is
/// `last`: first the run of free extents that follows it on disk, so the disk stays in few
/// runs, then the rest as [`choose_extents`] would. The result is in the order to append.
pub fn choose_extents_after(
    free: &[FreeExtent],
    last: Option<&Extent>,
    size_sectors: u64,
) -> Option<Vec<FreeExtent>> {
    let mut adjacent = Vec::new();
    let mut remaining = size_sectors;
    if let Some(last) = last {
        let mut end = *last;
        for candidate in free.iter().skip_while(|candidate| {
            candidate.extent.device() != last.device()
                || candidate.extent.start_sector() != last.end_sector()
        }) {
            if remaining == 0
                || candidate.extent.device() != end.device()
                || candidate.extent.start_sector() != end.end_sector()
            {
                break;
            }
            adjacent.push(*candidate);
            remaining = remaining.saturating_sub(candidate.extent.nr_sectors());
            end = candidate.extent;
        }
    }
    if remaining == 0 {
        return Some(adjacent);
    }
    let rest: Vec<FreeExtent> = free
        .iter()
        .filter(|candidate| !adjacent.contains(candidate))
        .copied()
        .collect();
    adjacent.extend(choose_extents(&rest, remaining)?);
    Some(adjacent)
}

/// Merge extents that follow each other on disk, keeping the list's order: the form in
/// which a virtual disk is shown and handed to the hypervisor.
pub fn merge_adjacent(extents: &[Extent]) -> Vec<Extent> {
    let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
    for extent in extents {
        match merged
            .last_mut()
            .and_then(|last| Some((last.joined(extent)?, last)))
        {
            Some((joined, last)) => *last = joined,
            None => merged.push(*extent),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::DeviceNumber;

    fn pool(layout: &[(u32, u64)]) -> Vec<FreeExtent> {
        layout
            .iter()
            .enumerate()
            .map(|(index, &(minor, start))| FreeExtent {
                id: index as i64 + 1,
                extent: Extent::new(DeviceNumber::new(3, minor).unwrap(), start, 10).unwrap(),
                dirty: false,
            })
            .collect()
    }

    fn ids(chosen: Option<Vec<FreeExtent>>) -> Vec<i64> {
        chosen
            .unwrap()
            .iter()
            .map(|candidate| candidate.id)
            .collect()
    }

    #[test]
    fn the_smallest_run_that_fits_is_taken() {
        // Runs: ids 1-3 (30 sectors), ids 4-5 (20 sectors), id 6 alone.
        let free = pool(&[(0, 0), (0, 10), (0, 20), (0, 100), (0, 110), (0, 200)]);
        assert_eq!(ids(choose_extents(&free, 20)), vec![4, 5]);
        assert_eq!(ids(choose_extents(&free, 5)), vec![6]);
        assert_eq!(ids(choose_extents(&free, 25)), vec![1, 2, 3]);
    }

    #[test]
    fn the_longest_runs_are_taken_when_none_fits() {
        let free = pool(&[(0, 0), (0, 10), (0, 20), (0, 100), (0, 110), (0, 200)]);
        // 30 from the longest run, then the smallest run holding the other 10.
        assert_eq!(ids(choose_extents(&free, 40)), vec![1, 2, 3, 6]);
        assert_eq!(ids(choose_extents(&free, 60)), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(choose_extents(&free, 61), None);
    }

    #[test]
    fn runs_do_not_cross_devices() {
        let free = pool(&[(0, 0), (64, 10)]);
        assert_eq!(ids(choose_extents(&free, 20)), vec![1, 2]);
        assert_eq!(runs(&free).len(), 2);
    }

    #[test]
    fn growing_prefers_the_run_after_the_last_extent() {
        // The disk ends at sector 10 (id 1's extent); ids 2-3 follow it, id 4 is elsewhere.
        let free = pool(&[(0, 10), (0, 20), (0, 100), (0, 200), (0, 210), (0, 220)]);
        let last = Extent::new(DeviceNumber::new(3, 0).unwrap(), 0, 10).unwrap();
        assert_eq!(
            ids(choose_extents_after(&free, Some(&last), 20)),
            vec![1, 2]
        );
        // More than the run holds: the run, then the smallest run that holds the rest.
        assert_eq!(
            ids(choose_extents_after(&free, Some(&last), 30)),
            vec![1, 2, 3]
        );
        assert_eq!(
            ids(choose_extents_after(&free, Some(&last), 50)),
            vec![1, 2, 4, 5, 6]
        );
        assert_eq!(choose_extents_after(&free, Some(&last), 61), None);
        assert_eq!(ids(choose_extents_after(&free, None, 10)), vec![3]);
    }

    #[test]
    fn adjacent_extents_merge() {
        let extents: Vec<Extent> = pool(&[(0, 0), (0, 10), (0, 30), (64, 40)])
            .iter()
            .map(|candidate| candidate.extent)
            .collect();
        let merged = merge_adjacent(&extents);
        assert_eq!(merged.len(), 3);
        assert_eq!((merged[0].start_sector(), merged[0].nr_sectors()), (0, 20));
    }
}
