//! Set-extents in pieces: a list too long for one call is built over several, invisible
//! until the last piece checks it and swaps it in at once, and info reads it back in
//! pieces. Every way a piece can be wrong is refused, and the VBD keeps its extents.

mod common;

use common::*;
use hv_vbd::Access;
use shared_abi::{wire::WireExtent, Error, Op};

const READ_WRITE: u32 = 3;

/// `count` one-sector extents at every other sector of hda, then hdb.
fn scattered(count: u64) -> Vec<WireExtent> {
    (0..count)
        .map(|index| {
            let (device, slot) = if index < 400 {
                (hda(), index)
            } else {
                (hdb(), index - 400)
            };
            extent(device, slot * 2, 1)
        })
        .collect()
}

/// Send `extents` in pieces of `size`; returns the last piece's result.
fn set_in_pieces(table: &Table, domain: u32, extents: &[WireExtent], size: usize) -> i64 {
    let target = handle(domain, xvda());
    let pieces: Vec<_> = extents.chunks(size).collect();
    let mut ticket = 0;
    for (number, chunk) in pieces.iter().enumerate() {
        let more = number + 1 < pieces.len();
        let (result, after) = set_piece(
            table,
            DOM0,
            target,
            chunk,
            piece((number * size) as u32, ticket, more),
        );
        if !more || result < 0 {
            return result;
        }
        assert_eq!(result, (number * size + chunk.len()) as i64);
        ticket = after.ticket;
    }
    unreachable!("at least one piece")
}

fn guest_with(extents: &[WireExtent]) -> Table {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(set_extents(&table, DOM0, GUEST, xvda(), extents), 0);
    table
}

#[test]
fn the_whole_capacity_is_set_and_read_back_in_pieces() {
    let table = table();
    assert_eq!(create(&table, DOM0, GUEST, xvda(), READ_WRITE), 0);
    let extents = scattered(64);
    assert_eq!(set_in_pieces(&table, GUEST, &extents, 10), 0);
    assert_eq!(table.extents_in_use(), 64);
    let mut read = Vec::new();
    let mut generation = None;
    while read.len() < 64 {
        let (result, after, piece) = info_from(&table, DOM0, GUEST, xvda(), read.len() as u32, 7);
        assert_eq!(result, piece.len() as i64);
        assert_eq!(after.nr_extents, 64);
        assert_eq!(
            *generation.get_or_insert(after.generation),
            after.generation
        );
        read.extend(piece);
    }
    assert_eq!(read, extents);
    assert_eq!(
        translate_with_room(&table, GUEST, xvda(), 60, 4, Access::Read, 8)
            .unwrap()
            .len(),
        4
    );
    table.check_invariants().unwrap();
}

#[test]
fn a_pending_list_is_invisible_until_its_last_piece() {
    let old = [extent(hda(), 900, 50)];
    let table = guest_with(&old);
    let (result, after) = set_piece(
        &table,
        DOM0,
        handle(GUEST, xvda()),
        &scattered(5),
        piece(0, 0, true),
    );
    assert_eq!(result, 5);
    assert_ne!(after.ticket, 0);
    assert_eq!(
        translate(&table, GUEST, 0, 1, Access::Read).unwrap()[0].sector,
        900,
        "still the old mapping"
    );
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 8).2, old.to_vec());
    // A pending list maps nothing yet: another VBD may take those sectors meanwhile.
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ_WRITE), 0);
    assert_eq!(
        grow(&table, DOM0, OTHER_GUEST, xvda(), extent(hda(), 0, 1)),
        0
    );
    // ...and then the commit finds the conflict, and the VBD keeps its old extents.
    let (result, _) = set_piece(
        &table,
        DOM0,
        handle(GUEST, xvda()),
        &[],
        piece(5, after.ticket, false),
    );
    assert_eq!(result, errno(Error::Busy));
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 8).2, old.to_vec());
    assert_eq!(table.extents_in_use(), 2, "the refused list is gone");
    table.check_invariants().unwrap();
}

#[test]
fn a_wrong_ticket_is_estale_and_leaves_the_list_alone() {
    let table = guest_with(&[]);
    let target = handle(GUEST, xvda());
    let (_, first) = set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true));
    for ticket in [0, first.ticket + 1] {
        assert_eq!(
            set_piece(&table, DOM0, target, &[], piece(3, ticket, false)).0,
            errno(Error::Stale)
        );
    }
    assert_eq!(table.extents_in_use(), 3);
    assert_eq!(
        set_piece(&table, DOM0, target, &[], piece(3, first.ticket, false)).0,
        0
    );
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 8).2, scattered(3));
}

#[test]
fn a_new_start_replaces_a_pending_list() {
    let table = guest_with(&[]);
    let target = handle(GUEST, xvda());
    let (_, first) = set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true));
    let (_, second) = set_piece(&table, DOM0, target, &scattered(2), piece(0, 0, true));
    assert_ne!(first.ticket, second.ticket);
    assert_eq!(table.extents_in_use(), 2);
    assert_eq!(
        set_piece(&table, DOM0, target, &[], piece(3, first.ticket, false)).0,
        errno(Error::Stale),
        "the first caller learns its list is gone"
    );
    assert_eq!(
        set_piece(&table, DOM0, target, &[], piece(2, second.ticket, false)).0,
        0
    );
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 8).2, scattered(2));
}

#[test]
fn a_piece_out_of_place_is_einval_and_drops_the_list() {
    let table = guest_with(&[extent(hdb(), 0, 4)]);
    let target = handle(GUEST, xvda());
    let (_, first) = set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true));
    assert_eq!(
        set_piece(
            &table,
            DOM0,
            target,
            &scattered(1),
            piece(2, first.ticket, true)
        )
        .0,
        errno(Error::InvalidArgument)
    );
    assert_eq!(table.extents_in_use(), 1);
    assert_eq!(
        set_piece(&table, DOM0, target, &[], piece(3, first.ticket, false)).0,
        errno(Error::Stale)
    );
    assert_eq!(
        info(&table, DOM0, GUEST, xvda(), 8).2,
        vec![extent(hdb(), 0, 4)]
    );
}

#[test]
fn a_bad_extent_in_a_later_piece_drops_the_list() {
    let table = guest_with(&[]);
    let target = handle(GUEST, xvda());
    let (_, first) = set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true));
    let outside = [extent(hda(), 999, 2)];
    assert_eq!(
        set_piece(
            &table,
            DOM0,
            target,
            &outside,
            piece(3, first.ticket, false)
        )
        .0,
        errno(Error::OutOfRange)
    );
    assert_eq!(table.extents_in_use(), 0);
    table.check_invariants().unwrap();
}

#[test]
fn lists_of_two_vbds_built_in_turn_stay_apart() {
    let table = guest_with(&[extent(hdb(), 900, 10)]);
    assert_eq!(create(&table, DOM0, OTHER_GUEST, xvda(), READ_WRITE), 0);
    let (mine, theirs) = (handle(GUEST, xvda()), handle(OTHER_GUEST, xvda()));
    let all = scattered(20);
    let (_, a) = set_piece(&table, DOM0, mine, &all[0..5], piece(0, 0, true));
    let (_, b) = set_piece(&table, DOM0, theirs, &all[10..15], piece(0, 0, true));
    // My list is no longer the arena's last; continuing it moves it there.
    let (result, _) = set_piece(&table, DOM0, mine, &all[5..10], piece(5, a.ticket, true));
    assert_eq!(result, 10);
    table.check_invariants().unwrap();
    assert_eq!(
        set_piece(
            &table,
            DOM0,
            theirs,
            &all[15..20],
            piece(5, b.ticket, false)
        )
        .0,
        0
    );
    assert_eq!(
        set_piece(&table, DOM0, mine, &[], piece(10, a.ticket, false)).0,
        0
    );
    assert_eq!(info(&table, DOM0, GUEST, xvda(), 20).2, all[0..10].to_vec());
    assert_eq!(
        info(&table, DOM0, OTHER_GUEST, xvda(), 20).2,
        all[10..20].to_vec()
    );
    table.check_invariants().unwrap();
}

#[test]
fn other_changes_to_the_vbd_drop_its_pending_list() {
    let table = guest_with(&[extent(hdb(), 900, 10)]);
    let target = handle(GUEST, xvda());
    let (_, pending) = set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true));
    assert_eq!(grow(&table, DOM0, GUEST, xvda(), extent(hdb(), 800, 10)), 0);
    assert_eq!(table.extents_in_use(), 2);
    assert_eq!(
        set_piece(&table, DOM0, target, &[], piece(3, pending.ticket, false)).0,
        errno(Error::Stale)
    );
    assert_eq!(
        set_piece(&table, DOM0, target, &scattered(3), piece(0, 0, true)).0,
        3
    );
    assert_eq!(vbd_op(&table, DOM0, Op::Delete, GUEST, xvda()), 0);
    assert_eq!(
        table.extents_in_use(),
        0,
        "a deleted VBD's pending list goes with it"
    );
    table.check_invariants().unwrap();
}

#[test]
fn a_guest_cannot_send_pieces() {
    let table = guest_with(&[]);
    assert_eq!(
        set_piece(
            &table,
            GUEST,
            handle(GUEST, xvda()),
            &scattered(1),
            piece(0, 0, true)
        )
        .0,
        errno(Error::PermissionDenied)
    );
    assert_eq!(table.extents_in_use(), 0);
}
