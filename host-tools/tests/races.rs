//! Races that could lose or disclose data: a wipe against deletes, creates and undeletes of
//! the same extents, and a create queued behind a long-held lock. Each races real `vdisk`
//! processes and then reads the SQLite database directly.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{extents, signal, wait_until, Machine};
use rustix::process::Signal;

/// Start `delete 1 --wipe` writing zeros (slow enough to catch), wait until it has zeroed
/// the first sector of `start`, and stop it there.
fn stopped_wipe(machine: &Machine, start: u64) -> Child {
    let wipe = machine
        .command(&["delete", "1", "--wipe"])
        .env("VDISK_ZERO_WITH_WRITES", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the wipe zeroes its first sector", || {
        machine.read_image(start, 1).iter().all(|&byte| byte == 0)
    });
    signal(&wipe, Signal::STOP);
    wipe
}

/// A pool of one 512 MiB disk, vd:1, holding all of it and full of data, whose wipe has
/// started and is stopped.
fn machine_with_a_stopped_wipe() -> (Machine, Child) {
    let machine = Machine::new(600, &[512]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let disk = machine.json(&["create", "512"]);
    let (_, start, count) = extents(&disk)[0].clone();
    machine.fill_image(start, count, 0xEE);
    let wipe = stopped_wipe(&machine, start);
    (machine, wipe)
}

fn finish(wipe: Child) -> String {
    signal(&wipe, Signal::CONT);
    let output = wipe.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn a_wipe_holds_its_extents_so_no_delete_or_create_can_take_them() {
    let (machine, wipe) = machine_with_a_stopped_wipe();
    // While the wipe runs, the disk is neither live nor free.
    machine.fails(&["delete", "1"], 1, "vd:1: is being wiped");
    machine.fails(
        &["create", "1"],
        1,
        "create 1M: no space (the pool has 0B free)",
    );
    assert_eq!(machine.json(&["show", "1"])["state"], "wiping");
    assert_eq!(finish(wipe), "");
    assert!(machine
        .read_image(2048, 512 * 2048)
        .iter()
        .all(|&byte| byte == 0));
    // The database: one disk, expired; every extent clean and free; no claim left.
    assert_eq!(machine.count("SELECT count(*) FROM virtual_disks"), 1);
    assert_eq!(
        machine.count("SELECT count(*) FROM extents WHERE dirty = 1"),
        0
    );
    assert_eq!(machine.count("SELECT count(*) FROM claims"), 0);
    assert_eq!(machine.json(&["show", "1"])["state"], "expired");
    assert_eq!(machine.json(&["pool"])["free_sectors"], 512 * 2048);
}

#[test]
fn a_disk_being_wiped_cannot_be_undeleted_and_its_extents_stay_dirty_until_done() {
    let (machine, wipe) = machine_with_a_stopped_wipe();
    machine.fails(
        &["undelete", "1"],
        1,
        "vd:1: is being wiped, so it cannot come back",
    );
    assert_eq!(
        machine.count("SELECT count(*) FROM extents WHERE dirty = 0"),
        0,
        "nothing is clean before the wipe is done"
    );
    assert_eq!(finish(wipe), "");
    assert_eq!(
        machine.count("SELECT count(*) FROM extents WHERE dirty = 1"),
        0
    );
    // Only now may it come back, and then it is dirty again: its tenant may write.
    assert_eq!(machine.json(&["undelete", "1"])["state"], "live");
    assert_eq!(
        machine.count("SELECT count(*) FROM extents WHERE dirty = 1"),
        512
    );
}

#[test]
fn a_create_queued_behind_a_lock_takes_its_lease_after_the_wait_and_a_locked_database_names_its_path(
) {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let database = machine.database_path();
    let mut lock = rusqlite::Connection::open(&database).unwrap();
    let transaction = lock
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let locked_at = Instant::now();
    // One create gives up after the 30 s wait; one queued 11 s later waits 21 s, longer
    // than a create's 20 s lease, and still succeeds: its lease starts once it holds the lock.
    let gives_up = machine
        .command(&["create", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(11));
    let waits = machine
        .command(&["create", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(32).saturating_sub(locked_at.elapsed()));
    transaction.rollback().unwrap();
    drop(lock);
    let gave_up = gives_up.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&gave_up.stderr),
        format!(
            "vdisk: database {}: locked by another process; gave up after 30 s\n",
            database.display()
        )
    );
    assert_eq!(gave_up.status.code(), Some(1));
    let waited = waits.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&waited.stderr),
        "",
        "the queued create"
    );
    assert_eq!(String::from_utf8_lossy(&waited.stdout), "1\n");
    assert_eq!(
        machine.count("SELECT count(*) FROM virtual_disks WHERE state = 'ready'"),
        1
    );
}
