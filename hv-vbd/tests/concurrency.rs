//! Translation racing with changes, on real threads.
//!
//! A reader must see a VBD's whole old mapping or its whole new one, never a mixture; and a
//! change that removes extents must not complete while an I/O translated under the old
//! mapping is still in flight, so that once dom0 reuses the extents the old owner's write
//! can never land in the new owner's disk.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hv_vbd::{Access, Request, Segment, VbdId};
use shared_abi::{wire::Extent, Error, Label, Mode, SharingLevel};

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

fn set(table: &Table, id: VbdId, extents: &[Extent]) {
    table
        .set_extents(DOM0, id, extents.iter().map(|extent| Ok(*extent)), LEVEL)
        .unwrap()
        .fence
        .wait(std::thread::yield_now);
}

#[test]
fn readers_see_the_whole_old_or_the_whole_new_mapping() {
    let table = table();
    let id = id(GUEST, xvda());
    table.create(DOM0, id, Mode::READ, Label::EMPTY).unwrap();
    let [old, new] = mappings();
    let translate_all =
        || translate_with_room(&table, GUEST, xvda(), 0, 120, Access::Read, 16).unwrap();
    set(&table, id, &old);
    let expected_old = translate_all();
    set(&table, id, &new);
    let expected_new = translate_all();
    assert_ne!(expected_old, expected_new);

    let done = AtomicBool::new(false);
    let (mut seen_old, mut seen_new) = (0usize, 0usize);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..4000 {
                set(&table, id, if round % 2 == 0 { &old } else { &new });
            }
            done.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            let segments = translate_all();
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

/// The extents every incarnation of the two VBDs is built on.
fn shared_extents() -> Vec<Extent> {
    (0..8)
        .map(|index| Extent::new(hda(), 100 + index * 16, 16).unwrap())
        .collect()
}

/// Who may write the shared extents (all on hda) right now: the domain whose VBD maps
/// them, from before it is created until after their release has completed. 0 while
/// nobody may.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// One guest's I/O thread: write continuously through its own context; every write that
/// lands must land while its domain still owns the extents.
fn guest_writer(table: &Table, domain: u32, stop: &AtomicBool, landed: &AtomicU64) {
    let context = table.io_context();
    let mut segments = [Segment::default(); 16];
    let mut sector = 0;
    while !stop.load(Ordering::Relaxed) {
        sector = (sector + 37) % 120;
        let request = Request::new(Access::Write, sector, 8).unwrap();
        match table.translate(&context, id(domain, xvda()), &request, &mut segments) {
            Ok(translation) => {
                assert!(!translation.segments().is_empty());
                // The disk takes its time: long enough for a change to overtake the I/O,
                // were it not fenced.
                for _ in 0..2000 {
                    std::hint::spin_loop();
                }
                if translation
                    .segments()
                    .iter()
                    .any(|segment| segment.device == hda())
                {
                    assert_eq!(
                        OWNER.load(Ordering::SeqCst),
                        domain,
                        "a write of domain {domain} landed after the extents' release completed"
                    );
                }
                landed.fetch_add(1, Ordering::Relaxed);
                drop(translation);
            }
            Err(Error::NotFound | Error::OutOfRange) => std::thread::yield_now(),
            Err(error) => panic!("unexpected {error:?}"),
        }
    }
}

#[test]
fn no_write_translated_before_a_removal_lands_after_it_completes() {
    let table = table();
    let extents = shared_extents();
    let stop = AtomicBool::new(false);
    let landed = [AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|scope| {
        for (domain, landed) in [GUEST, OTHER_GUEST].into_iter().zip(&landed) {
            let (table, stop) = (&table, &stop);
            scope.spawn(move || guest_writer(table, domain, stop, landed));
        }
        let writable = Mode::READ | Mode::WRITE;
        // At least 600 hand-overs, and more on a loaded machine, until each guest's writer
        // has been scheduled to write: the race must run with both (bounded, so a writer
        // that never writes still fails the check below).
        let deadline = Instant::now() + Duration::from_secs(60);
        let both_wrote = || {
            landed
                .iter()
                .all(|landed| landed.load(Ordering::Relaxed) > 0)
        };
        let mut round = 0u32;
        while round < 600 || (!both_wrote() && Instant::now() < deadline) {
            // The two guests take turns owning the same extents; each hand-over goes
            // through a different kind of removal.
            let domain = [GUEST, OTHER_GUEST][round as usize % 2];
            let vbd = id(domain, xvda());
            OWNER.store(domain, Ordering::SeqCst);
            table.create(DOM0, vbd, writable, Label::EMPTY).unwrap();
            set(&table, vbd, &extents);
            std::thread::yield_now();
            match round % 3 {
                0 => table
                    .delete(DOM0, vbd)
                    .unwrap()
                    .fence
                    .wait(std::thread::yield_now),
                1 => {
                    // Moving the VBD elsewhere releases the shared extents too.
                    set(&table, vbd, &[Extent::new(hdb(), 0, 120).unwrap()]);
                    OWNER.store(0, Ordering::SeqCst);
                    table
                        .delete(DOM0, vbd)
                        .unwrap()
                        .fence
                        .wait(std::thread::yield_now);
                }
                _ => {
                    let (released, removal) = table.destroy_domain(DOM0, domain).unwrap();
                    assert_eq!(released, 1);
                    removal.fence.wait(std::thread::yield_now);
                }
            }
            OWNER.store(0, Ordering::SeqCst);
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    table.check_invariants().unwrap();
    for (domain, landed) in [GUEST, OTHER_GUEST].iter().zip(&landed) {
        assert!(
            landed.load(Ordering::Relaxed) > 0,
            "domain {domain} never wrote: the race was not run"
        );
    }
    assert_eq!(table.extents_in_use(), 0);
}

#[test]
fn a_write_in_flight_holds_up_the_removal_until_it_is_done() {
    let table = table();
    let vbd = id(GUEST, xvda());
    table
        .create(DOM0, vbd, Mode::READ | Mode::WRITE, Label::EMPTY)
        .unwrap();
    set(&table, vbd, &shared_extents());
    let context = table.io_context();
    let mut segments = [Segment::default(); 4];
    let request = Request::new(Access::Write, 0, 8).unwrap();
    let translation = table
        .translate(&context, vbd, &request, &mut segments)
        .unwrap();
    let removal = table.delete(DOM0, vbd).unwrap();
    assert!(!removal.fence.is_complete(), "the write is still in flight");
    // Translation goes on meanwhile, and sees the VBD gone.
    let mut more = [Segment::default(); 4];
    assert_eq!(
        table.translate(&context, vbd, &request, &mut more).err(),
        Some(Error::NotFound)
    );
    drop(translation);
    assert!(removal.fence.is_complete());
    // A context of another table is refused rather than counted in the wrong place.
    let other = super_table();
    let foreign = other.io_context();
    assert_eq!(
        table.translate(&foreign, vbd, &request, &mut more).err(),
        Some(Error::InvalidArgument)
    );
}

fn super_table() -> Table {
    Table::new(SharingLevel::ReadersOnly)
}

/// Guest memory that, on every access, checks from another thread that the table's writer
/// mutex is free: the issue found set-extents reading guest memory under the write lock
/// and probe and info writing it under the read lock.
struct WatchfulMemory {
    bytes: Vec<u8>,
    accesses: std::cell::Cell<usize>,
}

/// The table [`WatchfulMemory`] watches: a static, so the watching thread needs no scope
/// and a test that finds the lock held fails instead of waiting for it forever.
static WATCHED: Table = Table::new(SharingLevel::Unrestricted);

impl WatchfulMemory {
    fn check_unlocked(&self) {
        self.accesses.set(self.accesses.get() + 1);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Takes the writer mutex; blocks while the caller holds it.
            let _ = WATCHED.limits();
            let _ = sender.send(());
        });
        assert!(
            receiver
                .recv_timeout(std::time::Duration::from_secs(2))
                .is_ok(),
            "guest memory was touched under the table's lock"
        );
    }
}

impl hv_vbd::GuestMemory for WatchfulMemory {
    fn read(&self, address: hv_vbd::GuestAddress, out: &mut [u8]) -> Result<(), Error> {
        self.check_unlocked();
        let start = address.0 as usize;
        out.copy_from_slice(
            self.bytes
                .get(start..start + out.len())
                .ok_or(Error::BadAddress)?,
        );
        Ok(())
    }

    fn write(&mut self, address: hv_vbd::GuestAddress, data: &[u8]) -> Result<(), Error> {
        self.check_unlocked();
        let start = address.0 as usize;
        self.bytes
            .get_mut(start..start + data.len())
            .ok_or(Error::BadAddress)?
            .copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn guest_memory_is_never_touched_under_the_tables_lock() {
    use shared_abi::{wire, Op};
    use zerocopy::IntoBytes;
    let table = &WATCHED;
    for device in [hda(), hdb()] {
        table
            .register_disk(hv_vbd::Disk {
                device,
                sectors: DISK_SECTORS,
            })
            .unwrap();
    }
    table
        .create(DOM0, id(GUEST, xvda()), Mode::READ, Label::EMPTY)
        .unwrap();
    let extents: Vec<wire::WireExtent> = (0..50).map(|index| extent(hda(), index * 2, 1)).collect();
    // Each call with the least number of accesses it must make: args in, each element, args out.
    let calls: Vec<(Op, usize, Vec<u8>)> = vec![
        (
            Op::SetExtents,
            51,
            wire::SetExtentsArgs {
                handle: handle(GUEST, xvda()),
                extents_address: ARRAY,
                nr_extents: 50,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            Op::Info,
            52,
            wire::InfoArgs {
                handle: handle(GUEST, xvda()),
                extents_address: ARRAY,
                capacity: 50,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            Op::Probe,
            3,
            wire::ProbeArgs {
                domain: GUEST,
                capacity: 4,
                entries_address: ARRAY,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
    ];
    for (op, least, args) in calls {
        let mut bytes = vec![0u8; ARRAY as usize + extents.as_bytes().len()];
        bytes[..args.len()].copy_from_slice(&args);
        bytes[ARRAY as usize..].copy_from_slice(extents.as_bytes());
        let mut memory = WatchfulMemory {
            bytes,
            accesses: std::cell::Cell::new(0),
        };
        let outcome = table.dispatch(DOM0, op as u32, hv_vbd::GuestAddress(ARGS), &mut memory);
        assert!(outcome.result >= 0, "{op:?}: {}", outcome.result);
        drop(outcome);
        assert!(
            memory.accesses.get() >= least,
            "{op:?} touched the memory {} times",
            memory.accesses.get()
        );
    }
    assert_eq!(info(table, DOM0, GUEST, xvda(), 50).2, extents);
}

/// A VBD of `domain` over `extents`, writable.
fn writable(table: &Table, domain: u32, extents: &[Extent]) -> VbdId {
    let vbd = id(domain, xvda());
    table
        .create(DOM0, vbd, Mode::READ | Mode::WRITE, Label::EMPTY)
        .unwrap();
    set(table, vbd, extents);
    vbd
}

#[test]
fn a_change_waits_for_the_io_of_the_vbd_it_changes_and_of_no_other() {
    let table = table();
    let busy = writable(&table, GUEST, &[Extent::new(hda(), 0, 8).unwrap()]);
    let quiet = writable(&table, OTHER_GUEST, &[Extent::new(hdb(), 0, 16).unwrap()]);
    let context = table.io_context();
    let mut segments = [Segment::default(); 4];
    let request = Request::new(Access::Write, 0, 8).unwrap();
    let in_flight = table
        .translate(&context, busy, &request, &mut segments)
        .unwrap();

    let shrunk = table.shrink(DOM0, quiet).unwrap();
    assert!(
        shrunk.fence.is_complete(),
        "a shrink of another VBD waited for this VBD's write"
    );
    drop(shrunk);
    set(&table, quiet, &[Extent::new(hdb(), 100, 16).unwrap()]);
    let deleted = table.delete(DOM0, quiet).unwrap();
    assert!(
        deleted.fence.is_complete(),
        "a delete of another VBD waited for this VBD's write"
    );
    drop(deleted);

    let removal = table.delete(DOM0, busy).unwrap();
    assert!(!removal.fence.is_complete(), "the write is still in flight");
    drop(in_flight);
    assert!(removal.fence.is_complete());
}

#[test]
fn released_extents_go_to_another_vbd_only_once_the_io_on_them_is_done() {
    let table = table();
    let extents = [Extent::new(hda(), 0, 8).unwrap()];
    let old_owner = writable(&table, GUEST, &extents);
    let bystander = writable(&table, 3, &[Extent::new(hdb(), 0, 8).unwrap()]);
    let new_owner = id(OTHER_GUEST, xvda());
    table
        .create(DOM0, new_owner, Mode::READ | Mode::WRITE, Label::EMPTY)
        .unwrap();
    let context = table.io_context();
    let mut segments = [Segment::default(); 4];
    let request = Request::new(Access::Write, 0, 8).unwrap();
    let in_flight = table
        .translate(&context, old_owner, &request, &mut segments)
        .unwrap();
    let removal = table.delete(DOM0, old_owner).unwrap();
    let given = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            set(&table, new_owner, &extents);
            given.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !given.load(Ordering::SeqCst),
            "the extents went to another VBD while the old owner's write was in flight"
        );
        // Meanwhile a change that gives nothing goes on: it waits for no other VBD.
        table
            .delete(DOM0, bystander)
            .unwrap()
            .fence
            .wait(std::thread::yield_now);
        drop(in_flight);
    });
    assert!(given.load(Ordering::SeqCst));
    assert!(removal.fence.is_complete());
}

#[test]
fn a_vbds_disks_are_kept_beside_its_mapping() {
    let table = table();
    let vbd = writable(
        &table,
        GUEST,
        &[
            Extent::new(hdb(), 0, 8).unwrap(),
            Extent::new(hda(), 0, 8).unwrap(),
            Extent::new(hda(), 100, 8).unwrap(),
        ],
    );
    let pinned = table.pin(DOM0, vbd).unwrap();
    let disks = || {
        let mut devices = Vec::new();
        table
            .vbd_disks(&pinned, |device| devices.push(device))
            .map(|()| devices)
    };
    assert_eq!(
        disks(),
        Ok(vec![hda(), hdb()]),
        "registration order, each once"
    );
    table
        .shrink(DOM0, vbd)
        .unwrap()
        .fence
        .wait(std::thread::yield_now);
    table
        .shrink(DOM0, vbd)
        .unwrap()
        .fence
        .wait(std::thread::yield_now);
    assert_eq!(disks(), Ok(vec![hdb()]));
    table
        .grow(DOM0, vbd, Extent::new(hda(), 200, 8).unwrap(), LEVEL)
        .unwrap();
    assert_eq!(disks(), Ok(vec![hda(), hdb()]));
    set(&table, vbd, &[]);
    assert_eq!(disks(), Ok(vec![]));
    table
        .delete(DOM0, vbd)
        .unwrap()
        .fence
        .wait(std::thread::yield_now);
    assert_eq!(disks(), Err(Error::NotFound));
}
