//! Translation racing with changes: a reader must see a VBD's whole old mapping or its
//! whole new one, never a mixture, and never a torn extent.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use hv_vbd::{Access, Segment, SharingLevel, VbdId};
use shared_abi::{wire::Extent, Mode};

/// Two mappings of the same 120-sector VBD: twelve 10-sector extents on hda, or five
/// 24-sector extents on hdb in reverse order.
fn mappings() -> [Vec<Extent>; 2] {
    let old = (0..12)
        .map(|index| Extent::new(hda(), index * 20, 10).unwrap())
        .collect();
    let new = (0..5)
        .rev()
        .map(|index| Extent::new(hdb(), 500 + index * 30, 24).unwrap())
        .collect();
    [old, new]
}

fn translate_all(table: &Table) -> Vec<Segment> {
    let mut out = [Segment::default(); 16];
    let written = table
        .translate(GUEST, xvda(), 0, 120, Access::Read, &mut out)
        .unwrap();
    out[..written].to_vec()
}

#[test]
fn readers_see_the_whole_old_or_the_whole_new_mapping() {
    let table = table(SharingLevel::ReadersOnly);
    let id = VbdId {
        domain: GUEST,
        vdevice: xvda(),
    };
    table.create(DOM0, id, Mode::READ).unwrap();
    let [old, new] = mappings();
    table
        .set_extents(DOM0, id, old.iter().map(|extent| Ok(*extent)))
        .unwrap();
    let expected_old = translate_all(&table);
    table
        .set_extents(DOM0, id, new.iter().map(|extent| Ok(*extent)))
        .unwrap();
    let expected_new = translate_all(&table);
    assert_ne!(expected_old, expected_new);

    let done = AtomicBool::new(false);
    let (mut seen_old, mut seen_new) = (0usize, 0usize);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..4000 {
                let mapping = if round % 2 == 0 { &old } else { &new };
                table
                    .set_extents(DOM0, id, mapping.iter().map(|extent| Ok(*extent)))
                    .unwrap();
            }
            done.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            let segments = translate_all(&table);
            if segments == expected_old {
                seen_old += 1;
            } else if segments == expected_new {
                seen_new += 1;
            } else {
                panic!("a torn mapping: {segments:?}");
            }
        }
    });
    table.check_invariants().unwrap();
    assert!(seen_old + seen_new > 0, "the reader ran");
}
