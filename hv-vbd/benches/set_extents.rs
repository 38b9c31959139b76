//! Microseconds to set 1024 extents on a VBD while the table already holds 10 000 extents of
//! another, writable VBD: staging, the overlap and sharing check against every extent in the
//! table, and the commit. The new extents sit between the existing ones on the same disk,
//! touching them, so the sharing sweep compares neighbours rather than skipping a device.

mod common;

use std::hint::black_box;

use common::{hda, xvda, Random};
use criterion::{criterion_group, criterion_main, Criterion};
use hv_vbd::{Disk, SharingLevel, VbdId, VbdTable};
use shared_abi::{wire::Extent, Label, Mode, DOM0};

const EXISTING_EXTENTS: u64 = 10_000;
const NEW_EXTENTS: u64 = 1024;
/// Every extent is this long and starts on a multiple of it, so neighbours touch.
const EXTENT_SECTORS: u64 = 16;
/// The existing extents, the target's current ones, and the new ones staged beside them.
const CAPACITY: usize = (EXISTING_EXTENTS + 2 * NEW_EXTENTS) as usize;

/// About 340 KiB; a static, as a hypervisor would keep it.
static TABLE: VbdTable<2, 1, CAPACITY, 1> = VbdTable::new(SharingLevel::Unrestricted);

fn extent_at(slot: u64) -> Extent {
    Extent::new(hda(), slot * EXTENT_SECTORS, EXTENT_SECTORS).expect("a valid extent")
}

fn set_extents(criterion: &mut Criterion) {
    TABLE
        .register_disk(Disk {
            device: hda(),
            sectors: 2 * EXISTING_EXTENTS * EXTENT_SECTORS,
        })
        .expect("a fresh table has room for one disk");
    let existing = VbdId {
        domain: 1,
        vdevice: xvda(),
    };
    let target = VbdId {
        domain: 2,
        vdevice: xvda(),
    };
    let writable = Mode::READ | Mode::WRITE;
    TABLE
        .create(DOM0, existing, writable, Label::EMPTY)
        .expect("create");
    TABLE
        .create(DOM0, target, writable, Label::EMPTY)
        .expect("create");
    // The existing VBD holds the even slots; the new extents take odd slots spread over the
    // whole range, listed in a shuffled order as a fragmented pool would hand them out.
    let mut random = Random::new(0x5EED_0002);
    let mut old: Vec<Extent> = (0..EXISTING_EXTENTS)
        .map(|index| extent_at(2 * index))
        .collect();
    random.shuffle(&mut old);
    let stride = EXISTING_EXTENTS / NEW_EXTENTS;
    let mut new: Vec<Extent> = (0..NEW_EXTENTS)
        .map(|index| extent_at(2 * index * stride + 1))
        .collect();
    random.shuffle(&mut new);
    let set = |id, extents: &[Extent]| {
        TABLE
            .set_extents(
                DOM0,
                id,
                extents.iter().map(|extent| Ok(*extent)),
                SharingLevel::SingleWriter,
            )
            .expect("the extents share nothing")
            .fence
            .wait(std::hint::spin_loop)
    };
    set(existing, &old);
    // Once before timing, so every timed call replaces 1024 extents with 1024.
    set(target, &new);
    assert_eq!(TABLE.check_invariants(), Ok(()));

    let mut group = criterion.benchmark_group("set_extents");
    group.bench_function("1024_into_10000", |bencher| {
        bencher.iter(|| set(black_box(target), black_box(&new)))
    });
    group.finish();
}

criterion_group!(benches, set_extents);
criterion_main!(benches);
