//! Milliseconds to validate 10 000 new extents against 10 000 existing ones (ten VBDs of
//! 1000 extents each): the sort-and-sweep validator beside the naive all-pairs loop, on the
//! same data, in the same run. Both are checked to report the same conflicts first.
//!
//! The new extents sit between the existing ones on one disk, touching them, so nothing can
//! be skipped by device; a few are placed astride an existing extent, so the conflict path
//! runs too, as it would when a tool is refused.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use host_tools::validator::{validate, validate_all_pairs, Conflict, User};
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;
use shared_abi::SharingLevel;

const EXISTING_EXTENTS: u64 = 10_000;
const NEW_EXTENTS: u64 = 10_000;
const USERS: u64 = 10;
/// Every extent is this long and starts on a multiple of it, so neighbours touch.
const EXTENT_SECTORS: u64 = 16;
/// One new extent in this many is shifted onto an existing one.
const CONFLICT_EVERY: u64 = 1000;

fn extent(start_sector: u64) -> Extent {
    Extent::new(
        DeviceNumber::new(3, 0).expect("3:0 is a valid device number"),
        start_sector,
        EXTENT_SECTORS,
    )
    .expect("a valid extent")
}

/// Deterministic data: existing extents on even slots, dealt round-robin to writable VBDs;
/// new extents on odd slots, except every [`CONFLICT_EVERY`]th, shifted half a slot.
fn workload() -> (Vec<Extent>, Vec<User>) {
    let mut users: Vec<User> = (0..USERS)
        .map(|domain| {
            User::vbd(
                domain as u32 + 1,
                DeviceNumber::from_name("xvda").expect("xvda is a known device name"),
                true,
                Vec::new(),
            )
        })
        .collect();
    for index in 0..EXISTING_EXTENTS {
        users[(index % USERS) as usize]
            .extents
            .push(extent(2 * index * EXTENT_SECTORS));
    }
    let new = (0..NEW_EXTENTS)
        .map(|index| {
            let start = (2 * index + 1) * EXTENT_SECTORS;
            if index % CONFLICT_EVERY == 0 {
                extent(start - EXTENT_SECTORS / 2)
            } else {
                extent(start)
            }
        })
        .collect();
    (new, users)
}

fn validate_benchmarks(criterion: &mut Criterion) {
    let (new, users) = workload();
    let level = SharingLevel::SingleWriter;
    let key = |conflict: &Conflict| (conflict.new_extent, conflict.other_extent);
    let mut swept: Vec<_> = validate(&new, true, &users, level)
        .iter()
        .map(key)
        .collect();
    let mut naive: Vec<_> = validate_all_pairs(&new, true, &users, level)
        .iter()
        .map(key)
        .collect();
    swept.sort();
    naive.sort();
    assert_eq!(swept, naive, "the two validators disagree");
    // Each shifted extent overlaps the existing extent before it, and nothing else.
    assert_eq!(swept.len() as u64, NEW_EXTENTS / CONFLICT_EVERY);

    let mut group = criterion.benchmark_group("validate");
    // The all-pairs loop takes about 0.1 s a call: criterion's default linear sampling would
    // run it 5050 times for 100 samples; flat sampling runs it once per sample.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("sweep_10k", |bencher| {
        bencher.iter(|| validate(black_box(&new), true, black_box(&users), level))
    });
    group.bench_function("naive_10k", |bencher| {
        bencher.iter(|| validate_all_pairs(black_box(&new), true, black_box(&users), level))
    });
    group.finish();
}

criterion_group!(benches, validate_benchmarks);
criterion_main!(benches);
