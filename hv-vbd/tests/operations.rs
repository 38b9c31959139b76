//! One test per hypercall and one negative test per error each can return, through the
//! wire-level `dispatch` entry point as a guest or dom0 would call it.

mod common;

use common::*;
use hv_vbd::{Access, Segment};
use shared_abi::{
    wire::{CreateArgs, DomainArgs, LimitsArgs, ProbeArgs, SetExtentsArgs, PROBE_ALL},
    Error, Label, Op, SharingLevel, ABI_VERSION,
};

const READ: u32 = 1;
const READ_WRITE: u32 = 3;

fn segment(device: shared_abi::DeviceNumber, sector: u64, nr_sectors: u64) -> Segment {
    Segment {
        device,
        sector,
        nr_sectors,
    }
}

/// dom0 gives `GUEST` a read-write xvda of hda[100, 110) then hdb[0, 5).
fn guest_with_two_extents() -> Table {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(
        set_extents(
            &table,
            DOM0,
            GUEST,
            xvda(),
            &[extent(hda(), 100, 10), extent(hdb(), 0, 5)]
        ),
        0
    );
    table
}

#[test]
fn version_is_answered_to_everyone() {
    let table = table();
    for caller in [DOM0, GUEST] {
        assert_eq!(
            call(&table, caller, Op::Version, &mut Image::new(&0u64, &[])),
            i64::from(ABI_VERSION)
        );
    }
}

#[test]
fn unknown_operation_is_enosys() {
    let table = table();
    let mut image = Image::new(&0u64, &[]);
    for op in [0, 1, 2, 13, u32::MAX] {
        let outcome = table.dispatch(
            DOM0,
            op,
            hv_vbd::GuestAddress(0),
            &mut hv_vbd::SliceMemory::new(&mut image.0),
        );
        assert_eq!(outcome.result, errno(Error::NotImplemented));
    }
}

#[test]
fn create_makes_an_empty_vbd_and_reports_the_change() {
    let table = table();
    let args = CreateArgs {
        handle: handle(GUEST, xvda()),
        mode: READ,
        label: [0; 20],
    };
    let mut image = Image::new(&args, &[]);
    let outcome = table.dispatch(
        DOM0,
        Op::Create as u32,
        hv_vbd::GuestAddress(ARGS),
        &mut hv_vbd::SliceMemory::new(&mut image.0),
    );
    assert_eq!(outcome.result, 0);
    assert_eq!(outcome.changed.unwrap().domain, GUEST);
    let (result, after, entries) = probe(&table, GUEST, GUEST, 4);
    assert_eq!(result, 1);
    assert_eq!(after.count, 1);
    assert_eq!(entries[0].device, xvda().raw());
    assert_eq!(entries[0].capacity_sectors, 0);
    assert_eq!(entries[0].info, 0xC0, "read-only and virtual");
}

#[test]
fn create_errors() {
    let table = table();
    assert_eq!(
        create(&table, GUEST, GUEST, xvda(), READ),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        create(&table, DOM0, GUEST, xvda(), 0),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        create(&table, DOM0, GUEST, xvda(), 2),
        errno(Error::InvalidArgument),
        "write-only"
    );
    assert_eq!(
        create(&table, DOM0, GUEST, xvda(), 0x10 | READ),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        create(&table, DOM0, PROBE_ALL, xvda(), READ),
        errno(Error::InvalidArgument)
    );
    let mut label = [0u8; 20];
    label[0] = 0x07;
    let unprintable = CreateArgs {
        handle: handle(GUEST, xvda()),
        mode: READ,
        label,
    };
    assert_eq!(
        call(&table, DOM0, Op::Create, &mut Image::new(&unprintable, &[])),
        errno(Error::InvalidArgument)
    );
    let mut short = Image(vec![0u8; 8]);
    assert_eq!(
        call(&table, DOM0, Op::Create, &mut short),
        errno(Error::BadAddress)
    );

    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ), 0);
    assert_eq!(
        create(&table, DOM0, GUEST, xvda(), READ),
        errno(Error::AlreadyExists)
    );
    // Four VBDs per domain.
    for minor in 1..4 {
        let vdevice = shared_abi::DeviceNumber::new(202, minor * 16).unwrap();
        assert_eq!(create(&table, DOM0, GUEST, vdevice, READ), 0);
    }
    assert_eq!(
        create(&table, DOM0, GUEST, xvdb().clone_with_minor(80), READ),
        errno(Error::NoSpace)
    );
    // Four domains.
    for domain in 2..5 {
        assert_eq!(create(&table, DOM0, domain, xvda(), READ), 0);
    }
    assert_eq!(create(&table, DOM0, 5, xvda(), READ), errno(Error::NoSpace));
    assert_eq!(
        probe(&table, DOM0, 5, 4).0,
        0,
        "a refused domain leaves no slot behind"
    );
    table.check_invariants().unwrap();
}

trait WithMinor {
    fn clone_with_minor(self, minor: u32) -> Self;
}

impl WithMinor for shared_abi::DeviceNumber {
    fn clone_with_minor(self, minor: u32) -> Self {
        shared_abi::DeviceNumber::new(self.major(), minor).unwrap()
    }
}

#[test]
fn grow_appends_an_extent() {
    let table = guest_with_two_extents();
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hda(), 500, 3)), 0);
    assert_eq!(
        translate(&table, GUEST, 15, 3, Access::Read),
        Ok(vec![segment(hda(), 500, 3)])
    );
    assert_eq!(probe(&table, GUEST, GUEST, 1).2[0].capacity_sectors, 18);
}

#[test]
fn grow_errors() {
    let table = guest_with_two_extents();
    let before = info(&table, DOM0, GUEST, xvda(), 8);
    assert_eq!(
        grow(&table, GUEST, GUEST, xvda(), extent(hda(), 500, 3)),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        grow(&table, DOM0, GUEST, xvdb(), extent(hda(), 500, 3)),
        errno(Error::NotFound)
    );
    assert_eq!(
        grow(&table, DOM0, OTHER_GUEST, xvda(), extent(hda(), 500, 3)),
        errno(Error::NotFound)
    );
    let hdc = shared_abi::DeviceNumber::from_name("hdc").unwrap();
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hdc, 0, 3)),
        errno(Error::NoDevice)
    );
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), 998, 3)),
        errno(Error::OutOfRange)
    );
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), u64::MAX, 3)),
        errno(Error::OutOfRange)
    );
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), 500, 0)),
        errno(Error::InvalidArgument)
    );
    let mut reserved = extent(hda(), 500, 1);
    reserved._reserved = 1;
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), reserved),
        errno(Error::InvalidArgument)
    );
    // Overlapping the VBD's own extent, including strictly containing it.
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), 105, 1)),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), 50, 200)),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        info(&table, DOM0, GUEST, xvda(), 8),
        before,
        "refused grows change nothing"
    );
    table.check_invariants().unwrap();
}

#[test]
fn grow_refuses_when_the_arena_is_full() {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ), 0);
    let extents: Vec<_> = (0..64).map(|index| extent(hda(), index * 2, 1)).collect();
    assert_eq!(set_extents(&table, DOM0, GUEST, xvda(), &extents), 0);
    assert_eq!(
        grow(&table, DOM0, GUEST, xvda(), extent(hda(), 500, 1)),
        errno(Error::NoSpace)
    );
    assert_eq!(table.extents_in_use(), 64);
    table.check_invariants().unwrap();
}

#[test]
fn shrink_removes_the_last_extent() {
    let table = guest_with_two_extents();
    assert_eq!(vbd_op(&table, DOM0, Op::Shrink, GUEST, xvda()), 0);
    assert_eq!(
        translate(&table, GUEST, 9, 1, Access::Read),
        Ok(vec![segment(hda(), 109, 1)])
    );
    assert_eq!(
        translate(&table, GUEST, 10, 1, Access::Read),
        Err(Error::OutOfRange)
    );
    assert_eq!(table.extents_in_use(), 1);
}

#[test]
fn shrink_errors() {
    let table = guest_with_two_extents();
    assert_eq!(
        vbd_op(&table, GUEST, Op::Shrink, GUEST, xvda()),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        vbd_op(&table, DOM0, Op::Shrink, GUEST, xvdb()),
        errno(Error::NotFound)
    );
    assert_eq!(vbd_op(&table, DOM0, Op::Shrink, GUEST, xvda()), 0);
    assert_eq!(vbd_op(&table, DOM0, Op::Shrink, GUEST, xvda()), 0);
    assert_eq!(
        vbd_op(&table, DOM0, Op::Shrink, GUEST, xvda()),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        call(&table, DOM0, Op::Shrink, &mut Image(vec![0; 4])),
        errno(Error::BadAddress)
    );
}

#[test]
fn set_extents_replaces_the_whole_list() {
    let table = guest_with_two_extents();
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &[extent(hdb(), 900, 100)]),
        0
    );
    assert_eq!(
        translate(&table, GUEST, 0, 100, Access::Write),
        Ok(vec![segment(hdb(), 900, 100)])
    );
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &[]),
        0,
        "an empty list empties the VBD"
    );
    assert_eq!(table.extents_in_use(), 0);
    table.check_invariants().unwrap();
}

#[test]
fn set_extents_errors_leave_the_old_mapping() {
    let table = guest_with_two_extents();
    let before = info(&table, DOM0, GUEST, xvda(), 8);
    let good = extent(hda(), 0, 10);
    assert_eq!(
        set_extents(&table, GUEST, GUEST, xvda(), &[good]),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvdb(), &[good]),
        errno(Error::NotFound)
    );
    // Overlap inside the new list, by containment and by partial overlap, in any order.
    assert_eq!(
        set_extents(
            &table,
            DOM0,
            GUEST,
            xvda(),
            &[extent(hda(), 20, 5), good, extent(hda(), 0, 30)]
        ),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &[good, extent(hda(), 9, 2)]),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &[good, extent(hda(), 10, 0)]),
        errno(Error::InvalidArgument)
    );
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &[good, extent(hdb(), 999, 2)]),
        errno(Error::OutOfRange)
    );
    let too_many: Vec<_> = (0..64).map(|index| extent(hda(), index * 2, 1)).collect();
    assert_eq!(
        set_extents(&table, DOM0, GUEST, xvda(), &too_many),
        errno(Error::NoSpace),
        "62 free slots"
    );
    // The list lies outside the caller's memory, or its address arithmetic wraps.
    for (address, count) in [
        (MEMORY_BYTES as u64, 1),
        (MEMORY_BYTES as u64 - 12, 1),
        (u64::MAX - 8, 1),
    ] {
        let args = SetExtentsArgs {
            handle: handle(GUEST, xvda()),
            extents_address: address,
            nr_extents: count,
            ..Default::default()
        };
        assert_eq!(
            call(&table, DOM0, Op::SetExtents, &mut Image::new(&args, &[])),
            errno(Error::BadAddress)
        );
    }
    for (flags, sharing) in [(2, 0), (0, 3)] {
        let malformed = SetExtentsArgs {
            handle: handle(GUEST, xvda()),
            extents_address: ARRAY,
            flags,
            sharing,
            ..Default::default()
        };
        assert_eq!(
            call(
                &table,
                DOM0,
                Op::SetExtents,
                &mut Image::new(&malformed, &[])
            ),
            errno(Error::InvalidArgument)
        );
    }
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 8), before);
    assert_eq!(table.extents_in_use(), 2);
    table.check_invariants().unwrap();
}

#[test]
fn a_vbd_may_reuse_its_own_old_extents() {
    let table = guest_with_two_extents();
    assert_eq!(
        set_extents(
            &table,
            DOM0,
            GUEST,
            xvda(),
            &[extent(hdb(), 0, 5), extent(hda(), 100, 20)]
        ),
        0
    );
    assert_eq!(
        translate(&table, GUEST, 4, 2, Access::Read),
        Ok(vec![segment(hdb(), 4, 1), segment(hda(), 100, 1)])
    );
}

#[test]
fn delete_removes_the_vbd_and_frees_its_extents() {
    let table = guest_with_two_extents();
    assert_eq!(vbd_op(&table, DOM0, Op::Delete, GUEST, xvda()), 0);
    assert_eq!(table.extents_in_use(), 0);
    assert_eq!(probe(&table, DOM0, GUEST, 4).0, 0);
    assert_eq!(
        translate(&table, GUEST, 0, 1, Access::Read),
        Err(Error::NotFound)
    );
}

#[test]
fn delete_errors() {
    let table = guest_with_two_extents();
    assert_eq!(
        vbd_op(&table, GUEST, Op::Delete, GUEST, xvda()),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        vbd_op(&table, DOM0, Op::Delete, GUEST, xvdb()),
        errno(Error::NotFound)
    );
    assert_eq!(
        vbd_op(&table, DOM0, Op::Delete, OTHER_GUEST, xvda()),
        errno(Error::NotFound)
    );
    assert_eq!(table.extents_in_use(), 2);
}

#[test]
fn probe_lists_one_domain_or_all() {
    let table = guest_with_two_extents();
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvdb(), READ), 0);
    let (result, after, entries) = probe(&table, DOM0, PROBE_ALL, 4);
    assert_eq!(result, 2);
    assert_eq!(after.count, 2);
    assert_eq!(
        entries
            .iter()
            .map(|entry| (entry.domain, entry.device))
            .collect::<Vec<_>>(),
        vec![(GUEST, xvda().raw()), (OTHER_GUEST, xvdb().raw())]
    );
    assert_eq!(entries[0].capacity_sectors, 15);
    assert_eq!(entries[0].nr_extents, 2);
    assert_eq!(entries[0].info, 0x80, "writable VBDs are only virtual");
    // A guest sees exactly its own.
    let (result, _, entries) = probe(&table, GUEST, GUEST, 4);
    assert_eq!(result, 1);
    assert_eq!(entries[0].domain, GUEST);
}

#[test]
fn probe_errors() {
    let table = guest_with_two_extents();
    assert_eq!(create(&table, DOM0, GUEST, xvdb(), READ), 0);
    assert_eq!(
        probe(&table, GUEST, PROBE_ALL, 4).0,
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        probe(&table, GUEST, OTHER_GUEST, 4).0,
        errno(Error::PermissionDenied)
    );
    // Too small: nothing truncated, the count needed is written back.
    let (result, after, _) = probe(&table, GUEST, GUEST, 1);
    assert_eq!(result, errno(Error::TooBig));
    assert_eq!(after.count, 2);
    let args = ProbeArgs {
        domain: GUEST,
        capacity: 4,
        entries_address: u64::MAX - 4,
        ..Default::default()
    };
    assert_eq!(
        call(&table, GUEST, Op::Probe, &mut Image::new(&args, &[])),
        errno(Error::BadAddress)
    );
    let reserved = ProbeArgs {
        domain: GUEST,
        capacity: 4,
        entries_address: ARRAY,
        _reserved: 1,
        ..Default::default()
    };
    assert_eq!(
        call(&table, GUEST, Op::Probe, &mut Image::new(&reserved, &[])),
        errno(Error::InvalidArgument)
    );
}

#[test]
fn probe_reports_a_generation_that_changes_with_the_domain() {
    let table = guest_with_two_extents();
    let first = probe(&table, GUEST, GUEST, 4).1.generation;
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
    assert_eq!(
        probe(&table, GUEST, GUEST, 4).1.generation,
        first,
        "another domain's change"
    );
    assert_eq!(vbd_op(&table, DOM0, Op::Shrink, GUEST, xvda()), 0);
    let second = probe(&table, GUEST, GUEST, 4).1.generation;
    assert!(second > first);
    assert_eq!(table.generation(GUEST), second);
}

#[test]
fn info_returns_mode_size_and_extents() {
    let table = guest_with_two_extents();
    for caller in [DOM0, GUEST] {
        let (result, after, extents) = info(&table, caller, GUEST, xvda(), 8);
        assert_eq!(result, 2);
        assert_eq!(
            (after.mode, after.nr_extents, after.size_sectors),
            (READ_WRITE, 2, 15)
        );
        assert_eq!(extents, vec![extent(hda(), 100, 10), extent(hdb(), 0, 5)]);
    }
}

#[test]
fn info_errors() {
    let table = guest_with_two_extents();
    assert_eq!(
        info(&table, OTHER_GUEST, GUEST, xvda(), 8).0,
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        info(&table, DOM0, GUEST, xvdb(), 8).0,
        errno(Error::NotFound)
    );
    assert_eq!(
        info_from(&table, DOM0, GUEST, xvda(), 3, 8).0,
        errno(Error::OutOfRange),
        "past the last extent"
    );
    let mut image = Image::new(
        &shared_abi::wire::InfoArgs {
            handle: handle(GUEST, xvda()),
            capacity: 8,
            extents_address: MEMORY_BYTES as u64,
            ..Default::default()
        },
        &[],
    );
    assert_eq!(
        call(&table, DOM0, Op::Info, &mut image),
        errno(Error::BadAddress)
    );
}

#[test]
fn destroying_a_domain_releases_everything_it_had() {
    let table = guest_with_two_extents();
    assert_eq!(create(&table, DOM0, GUEST, xvdb(), READ), 0);
    assert_eq!(grow(&table, DOM0, GUEST, xvdb(), extent(hda(), 0, 50)), 0);
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
    assert_eq!(
        grow(&table, DOM0, OTHER_GUEST, xvda(), extent(hdb(), 500, 50)),
        0
    );
    let args = DomainArgs {
        domain: GUEST,
        _reserved: 0,
    };
    assert_eq!(
        call(&table, DOM0, Op::DestroyDomain, &mut Image::new(&args, &[])),
        2
    );
    assert_eq!(probe(&table, DOM0, GUEST, 4).0, 0);
    assert_eq!(table.extents_in_use(), 1);
    assert_eq!(
        info(&table, DOM0, OTHER_GUEST, xvda(), 4).2,
        vec![extent(hdb(), 500, 50)]
    );
    assert!(
        table.generation(GUEST) == 0,
        "the slot is gone; a fresh domain starts over"
    );
    table.check_invariants().unwrap();
}

#[test]
fn destroy_errors() {
    let table = guest_with_two_extents();
    let destroy = |caller, domain, reserved| {
        call(
            &table,
            caller,
            Op::DestroyDomain,
            &mut Image::new(
                &DomainArgs {
                    domain,
                    _reserved: reserved,
                },
                &[],
            ),
        )
    };
    assert_eq!(destroy(GUEST, GUEST, 0), errno(Error::PermissionDenied));
    assert_eq!(destroy(DOM0, DOM0, 0), errno(Error::InvalidArgument));
    assert_eq!(destroy(DOM0, GUEST, 1), errno(Error::InvalidArgument));
    assert_eq!(
        destroy(DOM0, OTHER_GUEST, 0),
        0,
        "a domain without VBDs has nothing to release"
    );
    assert_eq!(table.extents_in_use(), 2);
}

#[test]
fn translation_splits_at_extent_boundaries() {
    let table = guest_with_two_extents();
    assert_eq!(
        translate(&table, GUEST, 0, 15, Access::Read),
        Ok(vec![segment(hda(), 100, 10), segment(hdb(), 0, 5)])
    );
    assert_eq!(
        translate(&table, GUEST, 9, 2, Access::Write),
        Ok(vec![segment(hda(), 109, 1), segment(hdb(), 0, 1)])
    );
    assert_eq!(
        translate(&table, GUEST, 12, 3, Access::Read),
        Ok(vec![segment(hdb(), 2, 3)])
    );
}

#[test]
fn translation_errors() {
    let table = guest_with_two_extents();
    assert_eq!(
        translate(&table, GUEST, 0, 0, Access::Read),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        translate(&table, GUEST, 14, 2, Access::Read),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        translate(&table, GUEST, 15, 1, Access::Read),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        translate(&table, GUEST, u64::MAX, 2, Access::Read),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        translate(&table, OTHER_GUEST, 0, 1, Access::Read),
        Err(Error::NotFound),
        "only its own VBDs"
    );
    assert_eq!(
        translate_with_room(&table, GUEST, xvda(), 0, 15, Access::Read, 1),
        Err(Error::TooBig)
    );
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
    assert_eq!(
        grow(&table, DOM0, OTHER_GUEST, xvda(), extent(hda(), 0, 10)),
        0
    );
    assert_eq!(
        translate(&table, OTHER_GUEST, 0, 1, Access::Write),
        Err(Error::ReadOnly)
    );
    assert!(translate(&table, OTHER_GUEST, 0, 1, Access::Read).is_ok());
}

/// dom0 gives GUEST hda[100, 110) in `first` mode, then OTHER_GUEST `second` in `mode`,
/// both asking for `level`.
fn share(level: SharingLevel, first: u32, second: shared_abi::wire::WireExtent, mode: u32) -> i64 {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), first), 0);
    assert_eq!(
        grow_at(&table, DOM0, GUEST, xvda(), extent(hda(), 100, 10), level),
        0
    );
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), mode), 0);
    let result = set_extents_at(
        &table,
        DOM0,
        OTHER_GUEST,
        xvda(),
        &[extent(hdb(), 0, 1), second],
        level,
    );
    table.check_invariants().unwrap();
    result
}

#[test]
fn sharing_level_zero_allows_only_readers() {
    let overlap = extent(hda(), 105, 10);
    let containing = extent(hda(), 50, 100);
    let contained = extent(hda(), 101, 2);
    let level = SharingLevel::ReadersOnly;
    assert_eq!(share(level, READ, overlap, READ), 0);
    assert_eq!(share(level, READ, containing, READ), 0);
    for second in [overlap, containing, contained] {
        assert_eq!(share(level, READ_WRITE, second, READ), errno(Error::Busy));
        assert_eq!(share(level, READ, second, READ_WRITE), errno(Error::Busy));
        assert_eq!(
            share(level, READ_WRITE, second, READ_WRITE),
            errno(Error::Busy)
        );
    }
    assert_eq!(
        share(level, READ_WRITE, extent(hda(), 110, 10), READ_WRITE),
        0,
        "adjacent is not shared"
    );
    assert_eq!(
        share(level, READ_WRITE, extent(hdb(), 100, 10), READ_WRITE),
        0,
        "another disk"
    );
}

#[test]
fn sharing_level_one_allows_one_writer() {
    let containing = extent(hda(), 50, 100);
    let level = SharingLevel::SingleWriter;
    assert_eq!(share(level, READ_WRITE, containing, READ), 0);
    assert_eq!(share(level, READ, containing, READ_WRITE), 0);
    assert_eq!(
        share(level, READ_WRITE, containing, READ_WRITE),
        errno(Error::Busy)
    );
}

#[test]
fn sharing_level_two_allows_anything() {
    assert_eq!(
        share(
            SharingLevel::Unrestricted,
            READ_WRITE,
            extent(hda(), 50, 100),
            READ_WRITE
        ),
        0
    );
}

#[test]
fn a_refused_share_is_refused_by_grow_too() {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hda(), 100, 10)), 0);
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
    assert_eq!(
        grow(&table, DOM0, OTHER_GUEST, xvda(), extent(hda(), 0, 500)),
        errno(Error::Busy)
    );
    assert_eq!(table.extents_in_use(), 1);
}

#[test]
fn the_ceiling_changes_only_while_no_extent_is_mapped() {
    let table = table();
    assert_eq!(table.sharing_ceiling(), SharingLevel::Unrestricted);
    assert_eq!(
        table.set_sharing_ceiling(SharingLevel::SingleWriter),
        Ok(())
    );
    assert_eq!(table.sharing_ceiling(), SharingLevel::SingleWriter);
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(
        table.set_sharing_ceiling(SharingLevel::Unrestricted),
        Ok(()),
        "an empty VBD maps nothing"
    );
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hda(), 0, 10)), 0);
    assert_eq!(
        table.set_sharing_ceiling(SharingLevel::ReadersOnly),
        Err(Error::Busy)
    );
    assert_eq!(table.sharing_ceiling(), SharingLevel::Unrestricted);
}

#[test]
fn a_request_above_the_ceiling_is_eperm_and_changes_nothing() {
    let table = table();
    table
        .set_sharing_ceiling(SharingLevel::SingleWriter)
        .unwrap();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    let unrestricted = SharingLevel::Unrestricted;
    assert_eq!(
        grow_at(
            &table,
            DOM0,
            GUEST,
            xvda(),
            extent(hda(), 0, 10),
            unrestricted
        ),
        errno(Error::PermissionDenied)
    );
    assert_eq!(
        set_extents_at(
            &table,
            DOM0,
            GUEST,
            xvda(),
            &[extent(hda(), 0, 10)],
            unrestricted
        ),
        errno(Error::PermissionDenied)
    );
    assert_eq!(table.extents_in_use(), 0);
    // At the ceiling itself, and below it, requests pass.
    for level in [SharingLevel::SingleWriter, SharingLevel::ReadersOnly] {
        assert_eq!(
            set_extents_at(&table, DOM0, GUEST, xvda(), &[extent(hda(), 0, 10)], level),
            0
        );
    }
}

/// The defect issue 8 names: `attach --safety 1` against a hypervisor booted at the
/// default was refused. Now the request's level rules, up to the ceiling (default 2).
#[test]
fn the_callers_level_is_what_is_enforced() {
    for level in SharingLevel::ALL {
        let table = table();
        assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
        assert_eq!(
            grow_at(&table, DOM0, GUEST, xvda(), extent(hda(), 0, 10), level),
            0
        );
        assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
        let result = grow_at(
            &table,
            DOM0,
            OTHER_GUEST,
            xvda(),
            extent(hda(), 5, 10),
            level,
        );
        let expected = if level >= SharingLevel::SingleWriter {
            0
        } else {
            errno(Error::Busy)
        };
        assert_eq!(result, expected, "a reader over a writer at level {level}");
        table.check_invariants().unwrap();
    }
}

#[test]
fn a_later_request_at_a_looser_level_may_share_with_an_earlier_writer() {
    // The level is a property of each request, checked when it is made: a writer mapped
    // at level 0 was alone then, and a reader asking for level 1 may join it later.
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(
        grow_at(
            &table,
            DOM0,
            GUEST,
            xvda(),
            extent(hda(), 0, 10),
            SharingLevel::ReadersOnly
        ),
        0
    );
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ), 0);
    assert_eq!(
        grow_at(
            &table,
            DOM0,
            OTHER_GUEST,
            xvda(),
            extent(hda(), 5, 10),
            SharingLevel::ReadersOnly
        ),
        errno(Error::Busy)
    );
    assert_eq!(
        grow_at(
            &table,
            DOM0,
            OTHER_GUEST,
            xvda(),
            extent(hda(), 5, 10),
            SharingLevel::SingleWriter
        ),
        0
    );
    table.check_invariants().unwrap();
}

#[test]
fn limits_report_the_ceiling_and_the_capacities() {
    let table = table();
    table
        .set_sharing_ceiling(SharingLevel::SingleWriter)
        .unwrap();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hda(), 0, 10)), 0);
    for caller in [DOM0, GUEST] {
        let mut image = Image::new(&LimitsArgs::default(), &[]);
        assert_eq!(call(&table, caller, Op::Limits, &mut image), 0);
        let limits: LimitsArgs = image.args();
        assert_eq!(
            limits,
            LimitsArgs {
                abi_version: ABI_VERSION,
                sharing_ceiling: 1,
                domains: 4,
                vbds_per_domain: 4,
                extents: 64,
                extents_free: 63,
                disks: 4,
                _reserved: 0,
                max_call_bytes: u64::MAX,
            }
        );
    }
    assert_eq!(
        call(&table, DOM0, Op::Limits, &mut Image(vec![0; 16])),
        errno(Error::BadAddress)
    );
}

#[test]
fn labels_are_kept_and_reported() {
    let table = table();
    assert_eq!(
        create_labelled(&table, DOM0, GUEST, xvda(), READ, "vd:42"),
        0
    );
    let (result, after, _) = info(&table, GUEST, GUEST, xvda(), 0);
    assert_eq!(result, 0);
    assert_eq!(Label::from_wire(after.label).unwrap().as_str(), "vd:42");
}

/// Issue 8's defect: a domain's slot was freed only by destroy-domain, so after create and
/// delete on two domains of a two-domain table a third domain got ENOSPC.
#[test]
fn a_domain_slot_is_freed_with_its_last_vbd() {
    let table = table();
    for round in 0..3 {
        for domain in 1..=4 {
            let domain = domain + round * 4;
            assert_eq!(
                create(&table, DOM0, domain, xvda(), READ),
                0,
                "domain {domain}"
            );
            assert_eq!(create(&table, DOM0, domain, xvdb(), READ), 0);
        }
        for domain in 1..=4 {
            let domain = domain + round * 4;
            assert_eq!(vbd_op(&table, DOM0, Op::Delete, domain, xvda()), 0);
            assert_eq!(vbd_op(&table, DOM0, Op::Delete, domain, xvdb()), 0);
        }
        table.check_invariants().unwrap();
    }
    assert_eq!(create(&table, DOM0, 99, xvda(), READ), 0);
    assert_eq!(table.generation(1), 0, "a freed domain starts over");
}

#[test]
fn info_reads_in_pieces() {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ), 0);
    let extents: Vec<_> = (0..10).map(|index| extent(hda(), index * 10, 5)).collect();
    assert_eq!(set_extents(&table, DOM0, GUEST, xvda(), &extents), 0);
    let (result, first, piece) = info_from(&table, DOM0, GUEST, xvda(), 0, 4);
    assert_eq!((result, first.nr_extents), (4, 10));
    assert_eq!(piece, extents[..4]);
    let (result, second, piece) = info_from(&table, DOM0, GUEST, xvda(), 4, 100);
    assert_eq!(result, 6);
    assert_eq!(piece, extents[4..]);
    assert_eq!(
        first.generation, second.generation,
        "nothing changed in between"
    );
    let (result, end, _) = info_from(&table, DOM0, GUEST, xvda(), 10, 4);
    assert_eq!(
        (result, end.nr_extents),
        (0, 10),
        "the count may be asked at the end"
    );
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hdb(), 0, 1)), 0);
    assert_ne!(
        info(&table, DOM0, GUEST, xvda(), 0).1.generation,
        first.generation
    );
}

#[test]
fn a_pinned_vbd_reaches_that_vbd_and_no_later_one_of_its_name() {
    let table = guest_with_two_extents();
    assert_eq!(
        table.pin(OTHER_GUEST, id(GUEST, xvda())),
        Err(Error::PermissionDenied)
    );
    assert_eq!(table.pin(GUEST, id(GUEST, xvdb())), Err(Error::NotFound));
    let pinned = table.pin(GUEST, id(GUEST, xvda())).unwrap();
    let context = table.io_context();
    let request = hv_vbd::Request::new(Access::Write, 9, 2).unwrap();
    let mut out = [Segment::default(); 4];
    let segments = table
        .translate_pinned(&context, &pinned, &request, &mut out)
        .unwrap()
        .segments()
        .to_vec();
    assert_eq!(segments, vec![segment(hda(), 109, 1), segment(hdb(), 0, 1)]);
    // Deleted and made again under the same name: the pin does not follow.
    assert_eq!(vbd_op(&table, DOM0, Op::Delete, GUEST, xvda()), 0);
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ), 0);
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hda(), 100, 10)), 0);
    assert_eq!(
        table
            .translate_pinned(&context, &pinned, &request, &mut out)
            .err(),
        Some(Error::NotFound)
    );
    let again = table.pin(GUEST, id(GUEST, xvda())).unwrap();
    assert_ne!(again.incarnation(), pinned.incarnation());
    assert_eq!(
        table
            .translate_pinned(&context, &again, &request, &mut out)
            .err(),
        Some(Error::ReadOnly),
        "the new VBD is read-only"
    );
    let read = hv_vbd::Request::new(Access::Read, 9, 1).unwrap();
    assert!(table
        .translate_pinned(&context, &again, &read, &mut out)
        .is_ok());
}
