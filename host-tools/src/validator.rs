//! The sharing validator: may a new VBD over some extents coexist with every existing user
//! of those extents (other VBDs, dom0's mounts) at a given sharing level? It sorts and
//! sweeps, `O((n + m) log(n + m) + k)` for `n` new extents, `m` existing ones and `k`
//! conflicts, and has no cap on list lengths (seed defect 9 stopped at 1024).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SharingLevel};

use crate::database::{vdevice_name, Owner, VdState};
use crate::uname::VdId;

/// Who uses some extents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserKind {
    /// A VBD, as the database recorded it or the hypervisor's probe reported it.
    Vbd { domain: u32, vdevice: DeviceNumber },
    /// A filesystem dom0 has mounted.
    Mount { source: String, mount_point: String },
    /// A virtual disk that holds the extents: live, being created, or with a claim on
    /// them (a wipe or a grow). Its tenant may write them, so it is a writer.
    VirtualDisk { id: VdId, state: VdState },
}

/// One existing user of extents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub kind: UserKind,
    pub writable: bool,
    pub extents: Vec<Extent>,
}

impl User {
    /// A VBD of `domain`.
    pub fn vbd(domain: u32, vdevice: DeviceNumber, writable: bool, extents: Vec<Extent>) -> User {
        User {
            kind: UserKind::Vbd { domain, vdevice },
            writable,
            extents,
        }
    }
}

impl User {
    /// A disk that holds extents, as a writer of them.
    pub fn owner(owner: Owner) -> User {
        User {
            kind: UserKind::VirtualDisk {
                id: owner.id,
                state: owner.state,
            },
            writable: true,
            extents: owner.extents,
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.writable { "rw" } else { "r" };
        match &self.kind {
            UserKind::Vbd { domain, vdevice } => {
                write!(
                    formatter,
                    "domain {domain} {} ({mode})",
                    vdevice_name(*vdevice)
                )
            }
            UserKind::Mount {
                source,
                mount_point,
            } => {
                write!(
                    formatter,
                    "dom0 mount of {source} on {mount_point} ({mode})"
                )
            }
            UserKind::VirtualDisk { id, state } => {
                write!(formatter, "{} disk {id} ({mode})", state.as_str())
            }
        }
    }
}

/// What a new extent collides with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Another extent of the same new list: the list overlaps itself.
    Itself,
    /// An existing user, by its index in the `users` slice given to [`validate`].
    User(usize),
}

/// One refused overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub new_extent: Extent,
    pub holder: Holder,
    pub other_extent: Extent,
}

/// `3:0 sectors 2048+4096`.
pub fn describe_extent(extent: &Extent) -> String {
    format!(
        "{} sectors {}+{}",
        extent.device(),
        extent.start_sector(),
        extent.nr_sectors()
    )
}

impl Conflict {
    /// One line explaining the conflict: which extent, which user, where they overlap.
    pub fn explain(&self, users: &[User]) -> String {
        let start = self
            .new_extent
            .start_sector()
            .max(self.other_extent.start_sector());
        let end = self
            .new_extent
            .end_sector()
            .min(self.other_extent.end_sector());
        let holder = match &self.holder {
            Holder::Itself => "another extent of the same disk".to_string(),
            Holder::User(index) => users[*index].to_string(),
        };
        format!(
            "{} overlaps {holder} at {} (shared: sectors {start}+{})",
            describe_extent(&self.new_extent),
            describe_extent(&self.other_extent),
            end - start
        )
    }
}

/// An interval in the sweep: which list it comes from and its index there.
#[derive(Clone, Copy)]
enum Source {
    New(usize),
    Existing { user: usize, extent: usize },
}

/// The conflicts a new VBD of `new_extents` (writable or not) would have with `users` at
/// `level`, in the order of the new extents. Empty means the VBD is safe to create.
pub fn validate(
    new_extents: &[Extent],
    writable: bool,
    users: &[User],
    level: SharingLevel,
) -> Vec<Conflict> {
    let mut intervals: Vec<(Extent, Source)> = new_extents
        .iter()
        .enumerate()
        .map(|(index, extent)| (*extent, Source::New(index)))
        .collect();
    for (user_index, user) in users.iter().enumerate() {
        // Users the level allows to share are left out before the sweep, so each overlap
        // the sweep finds is a conflict and the work stays proportional to the output.
        if level.allows(writable, user.writable) {
            continue;
        }
        intervals.extend(
            user.extents
                .iter()
                .enumerate()
                .map(|(extent_index, extent)| {
                    (
                        *extent,
                        Source::Existing {
                            user: user_index,
                            extent: extent_index,
                        },
                    )
                }),
        );
    }
    intervals.sort_by_key(|(extent, _)| (extent.device(), extent.start_sector()));

    let mut conflicts = Vec::new();
    // Intervals that started earlier and may still be open, keyed by end sector so that the
    // finished ones come off the top.
    let mut open_new: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut open_existing: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
    let mut current_device = None;
    for (extent, source) in intervals {
        if current_device != Some(extent.device()) {
            current_device = Some(extent.device());
            open_new.clear();
            open_existing.clear();
        }
        while open_new
            .peek()
            .is_some_and(|Reverse((end, _))| *end <= extent.start_sector())
        {
            open_new.pop();
        }
        while open_existing
            .peek()
            .is_some_and(|Reverse((end, _, _))| *end <= extent.start_sector())
        {
            open_existing.pop();
        }
        // Every interval still open started no later and ends after this one starts: it
        // overlaps, whether it contains this one or not (seed defect 4 missed containment).
        match source {
            Source::New(index) => {
                for Reverse((_, other)) in open_new.iter() {
                    conflicts.push(Conflict {
                        new_extent: new_extents[index],
                        holder: Holder::Itself,
                        other_extent: new_extents[*other],
                    });
                }
                for Reverse((_, user, user_extent)) in open_existing.iter() {
                    conflicts.push(Conflict {
                        new_extent: new_extents[index],
                        holder: Holder::User(*user),
                        other_extent: users[*user].extents[*user_extent],
                    });
                }
                open_new.push(Reverse((extent.end_sector(), index)));
            }
            Source::Existing {
                user,
                extent: user_extent,
            } => {
                for Reverse((_, index)) in open_new.iter() {
                    conflicts.push(Conflict {
                        new_extent: new_extents[*index],
                        holder: Holder::User(user),
                        other_extent: users[user].extents[user_extent],
                    });
                }
                open_existing.push(Reverse((extent.end_sector(), user, user_extent)));
            }
        }
    }
    conflicts.sort_by_key(|conflict| {
        let holder = match conflict.holder {
            Holder::Itself => (0, 0),
            Holder::User(index) => (1, index),
        };
        (conflict.new_extent, holder, conflict.other_extent)
    });
    conflicts
}

/// The same answer as [`validate`], the way a first implementation would find it: every new
/// extent against every other new extent and every extent of every user, `O(n * (n + m))`.
/// Kept as the reference the tests check the sweep against and the baseline the benchmark
/// times it beside.
pub fn validate_all_pairs(
    new_extents: &[Extent],
    writable: bool,
    users: &[User],
    level: SharingLevel,
) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    for (index, new_extent) in new_extents.iter().enumerate() {
        for other in &new_extents[..index] {
            if new_extent.overlaps(other) {
                conflicts.push(Conflict {
                    new_extent: *new_extent,
                    holder: Holder::Itself,
                    other_extent: *other,
                });
            }
        }
        for (user_index, user) in users.iter().enumerate() {
            if level.allows(writable, user.writable) {
                continue;
            }
            for user_extent in &user.extents {
                if new_extent.overlaps(user_extent) {
                    conflicts.push(Conflict {
                        new_extent: *new_extent,
                        holder: Holder::User(user_index),
                        other_extent: *user_extent,
                    });
                }
            }
        }
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn extent(start: u64, count: u64) -> Extent {
        Extent::new(DeviceNumber::new(3, 0).unwrap(), start, count).unwrap()
    }

    fn vbd(domain: u32, writable: bool, extents: Vec<Extent>) -> User {
        User::vbd(
            domain,
            DeviceNumber::from_name("xvda").unwrap(),
            writable,
            extents,
        )
    }

    #[test]
    fn a_new_extent_that_strictly_contains_an_old_one_conflicts() {
        // Seed defect 4: the old check looked only at the new extent's ends.
        let users = vec![vbd(1, true, vec![extent(100, 10)])];
        let conflicts = validate(&[extent(0, 1000)], false, &users, SharingLevel::ReadersOnly);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            conflicts[0].explain(&users),
            "3:0 sectors 0+1000 overlaps domain 1 xvda (rw) at 3:0 sectors 100+10 (shared: sectors 100+10)"
        );
        let contained = validate(&[extent(105, 1)], false, &users, SharingLevel::ReadersOnly);
        assert_eq!(contained.len(), 1);
    }

    #[test]
    fn levels_decide_which_modes_may_share() {
        let readers = vec![vbd(1, false, vec![extent(0, 10)])];
        let writers = vec![vbd(1, true, vec![extent(0, 10)])];
        let new = [extent(5, 10)];
        assert!(validate(&new, false, &readers, SharingLevel::ReadersOnly).is_empty());
        assert_eq!(
            validate(&new, true, &readers, SharingLevel::ReadersOnly).len(),
            1
        );
        assert_eq!(
            validate(&new, false, &writers, SharingLevel::ReadersOnly).len(),
            1
        );
        assert!(validate(&new, true, &readers, SharingLevel::SingleWriter).is_empty());
        assert!(validate(&new, false, &writers, SharingLevel::SingleWriter).is_empty());
        assert_eq!(
            validate(&new, true, &writers, SharingLevel::SingleWriter).len(),
            1
        );
        assert!(validate(&new, true, &writers, SharingLevel::Unrestricted).is_empty());
    }

    #[test]
    fn touching_extents_and_other_devices_do_not_conflict() {
        let users = vec![vbd(1, true, vec![extent(10, 10)])];
        assert!(validate(
            &[extent(0, 10), extent(20, 5)],
            true,
            &users,
            SharingLevel::ReadersOnly
        )
        .is_empty());
        let other_disk = Extent::new(DeviceNumber::new(3, 64).unwrap(), 10, 10).unwrap();
        assert!(validate(&[other_disk], true, &users, SharingLevel::ReadersOnly).is_empty());
    }

    #[test]
    fn a_list_that_overlaps_itself_is_reported() {
        let conflicts = validate(
            &[extent(0, 10), extent(5, 10)],
            false,
            &[],
            SharingLevel::Unrestricted,
        );
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].holder, Holder::Itself);
    }

    #[test]
    fn long_extent_lists_are_not_truncated() {
        // Seed defect 9: lists stopped at 1024 entries, hiding an overlap further on.
        let existing: Vec<Extent> = (0..5000).map(|index| extent(index * 20, 10)).collect();
        let users = vec![vbd(2, true, existing)];
        let new: Vec<Extent> = (0..3000)
            .map(|index| extent(index * 20 + 10, 10))
            .chain([extent(4900 * 20 + 5, 1)])
            .collect();
        let conflicts = validate(&new, false, &users, SharingLevel::ReadersOnly);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].other_extent, extent(4900 * 20, 10));
    }

    fn key(conflict: &Conflict) -> (Extent, Extent, Option<usize>) {
        let holder = match conflict.holder {
            Holder::Itself => None,
            Holder::User(index) => Some(index),
        };
        // For self-overlaps the pair is unordered.
        let (first, second) = if holder.is_none() {
            (
                conflict.new_extent.min(conflict.other_extent),
                conflict.new_extent.max(conflict.other_extent),
            )
        } else {
            (conflict.new_extent, conflict.other_extent)
        };
        (first, second, holder)
    }

    fn arbitrary_extent() -> impl Strategy<Value = Extent> {
        (0u32..2, 0u64..200, 1u64..40).prop_map(|(minor, start, count)| {
            Extent::new(DeviceNumber::new(3, minor * 64).unwrap(), start, count).unwrap()
        })
    }

    proptest! {
        #[test]
        fn sweep_agrees_with_all_pairs(
            new_extents in prop::collection::vec(arbitrary_extent(), 0..8),
            writable in any::<bool>(),
            users in prop::collection::vec((any::<bool>(), prop::collection::vec(arbitrary_extent(), 0..6)), 0..5),
            level in 0u8..3,
        ) {
            let users: Vec<User> = users.into_iter().enumerate().map(|(domain, (user_writable, extents))| vbd(domain as u32, user_writable, extents)).collect();
            let level = SharingLevel::try_from(u32::from(level)).unwrap();
            let mut swept: Vec<_> = validate(&new_extents, writable, &users, level).iter().map(key).collect();
            let mut expected: Vec<_> = validate_all_pairs(&new_extents, writable, &users, level).iter().map(key).collect();
            swept.sort();
            expected.sort();
            prop_assert_eq!(swept, expected);
        }
    }
}
