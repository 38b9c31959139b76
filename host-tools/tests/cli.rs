//! The `vdisk` binary driven as scripts drive it, on sparse images partitioned with sfdisk:
//! every command, every seed defect, the create race, crash safety and bad input.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{extents, partition_starts, Machine, PoolKind};
use host_tools::database::{AccessMode, AttachmentTarget, Database, OpenMode, VdState};
use host_tools::timestamp::now;
use host_tools::uname::VdId;
use serde_json::Value;
use shared_abi::DeviceNumber;

fn every_command_works_and_prints_the_agreed_shapes(pool: PoolKind) {
    let machine = Machine::on(pool, 64, &[16, 16, 16]);
    let partition = machine.json(&["format", "phy:hda2", "--extent-size", "1M"]);
    let starts = partition_starts(&machine.image());
    assert_eq!(partition["name"], "hda2");
    assert_eq!(partition["device"], "3:0");
    assert_eq!(partition["start_sector"], starts[1]);
    assert_eq!(partition["extent_sectors"], 2048);
    assert_eq!(partition["total_extents"], 16);

    let created = machine.json(&["create", "4M", "--expiry", "2h"]);
    assert_eq!(created["id"], 1);
    assert_eq!(created["size_sectors"], 8192);
    assert_eq!(created["state"], "live");
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        extents(&created),
        vec![("3:0".to_string(), starts[1], 8192)]
    );
    assert_eq!(machine.ok(&["create", "3"]), "2\n");

    let shown = machine.json(&["show", "2"]);
    let keys: Vec<&String> = shown.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["expires_at", "extents", "id", "size_sectors", "state"]
    );
    assert_eq!(shown["expires_at"], Value::Null);
    assert_eq!(
        extents(&shown),
        vec![("3:0".to_string(), starts[1] + 8192, 6144)]
    );

    let listed = machine.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0].get("extents"), None);

    let pool = machine.json(&["pool"]);
    assert_eq!(pool["total_sectors"], 16 * 2048);
    assert_eq!(pool["free_sectors"], 9 * 2048);
    assert_eq!(pool["partitions"][0]["free_extents"], 9);

    assert_eq!(
        machine.ok(&["lookup", "vd:1"]),
        format!("3:0 {} 8192\n", starts[1])
    );
    assert_eq!(
        machine.ok(&["lookup", "phy:hda3"]),
        format!("3:0 {} 32768\n", starts[2])
    );
    assert_eq!(machine.json(&["lookup", "vd:2"])["size_sectors"], 6144);
    assert!(machine
        .ok(&["check", "vd:1", "rw"])
        .starts_with("vd:1 rw at safety 0: safe"));

    let refreshed = machine.json(&["refresh", "1", "--expiry", "never"]);
    assert_eq!(refreshed["expires_at"], Value::Null);
    let deleted = machine.json(&["delete", "vd:1"]);
    assert_eq!(deleted["state"], "expired");
    assert_eq!(machine.json(&["list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        machine.json(&["list", "--all"]).as_array().unwrap().len(),
        2
    );
    assert_eq!(machine.json(&["undelete", "1"])["state"], "live");
    assert!(machine.ok(&["list"]).contains("vd:1"));
    assert!(machine.ok(&["pool"]).contains("hda2"));
    machine.json(&["delete", "1", "--wipe"]);
}

#[test]
fn every_subcommand_has_an_example_in_its_help() {
    let machine = Machine::new(8, &[4]);
    for command in [
        "format",
        "create",
        "refresh",
        "delete",
        "undelete",
        "list",
        "show",
        "pool",
        "lookup",
        "check",
        "attach",
        "detach",
        "vbds",
        "write",
        "read",
        "resize",
        "completions",
        "man",
    ] {
        let help = machine.ok(&[command, "--help"]);
        assert!(help.contains("Example"), "{command} --help has no example");
    }
    assert!(machine
        .ok(&["create", "--help"])
        .contains("smallest such run"));
}

#[test]
fn global_options_are_accepted_anywhere() {
    let machine = Machine::new(16, &[8]);
    let devices = machine.directory.path().join("devices.toml");
    let database = machine.database_path();
    let output = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["format", "--json", "phy:hda1", "--devices"])
        .arg(&devices)
        .arg("--extent-size=1M")
        .arg("--db")
        .arg(&database)
        .env_remove("VDISK_DB")
        .env_remove("VDISK_DEVICES")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(database.exists());
}

fn formatting_refuses_overlaps_and_unknown_devices(pool: PoolKind) {
    let machine = Machine::on(pool, 32, &[8, 8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let starts = partition_starts(&machine.image());
    machine.fails(
        &["format", "phy:hda", "--extent-size", "1M", "--force"],
        1,
        &format!("phy:hda: sectors 0+65536 of 3:0 overlap phy:hda1 (sectors {}+16384), already in the pool", starts[0]),
    );
    let devices = machine.directory.path().join("devices.toml");
    machine.fails(
        &["format", "phy:hdz1"],
        1,
        &format!(
            "phy:hdz1: no such disk or partition in devices file {}",
            devices.display()
        ),
    );
    machine.fails(
        &["format", "phy:hda7"],
        1,
        &format!(
            "phy:hda7: no such disk or partition in devices file {}",
            devices.display()
        ),
    );
    machine.fails(
        &["format", "phy:hda2", "--extent-size", "3M"],
        2,
        "invalid value '3M' for '--extent-size <EXTENT_SIZE>': extent size \"3M\": must be a power of two of at least 1M",
    );
    machine.fails(
        &["format", "phy:hda2", "--extent-size", "16M"],
        1,
        "phy:hda2: its 8M are smaller than one extent of 16M",
    );
}

fn seed_defect_1_ids_are_bound_never_spliced_into_sql(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let before = machine.snapshot();
    machine.fails(
        &["lookup", "vd:1 OR 1=1"],
        2,
        "invalid value 'vd:1 OR 1=1' for '<UNAME>': virtual disk id \"vd:1 OR 1=1\": not a positive integer",
    );
    machine.fails(
        &["delete", "1 OR 1=1"],
        2,
        "invalid value '1 OR 1=1' for '<ID>': virtual disk id \"1 OR 1=1\": not a positive integer",
    );
    machine.fails(
        &["format", "phy:hda1'; DROP TABLE extents; --"],
        2,
        "invalid value 'phy:hda1'; DROP TABLE extents; --' for '<NAME>': \"phy:hda1'; DROP TABLE extents; --\": not a device name (letters and digits, like hda2 or nvme0n1p3)",
    );
    assert_eq!(machine.snapshot(), before);
    assert_eq!(machine.json(&["lookup", "vd:1"])["size_sectors"], 4096);
}

fn seed_defect_2_partition_extents_count_from_the_start_of_the_disk(pool: PoolKind) {
    let machine = Machine::on(pool, 48, &[8, 8, 8]);
    let starts = partition_starts(&machine.image());
    // hda1 and hda2 hold data and stay out of the pool; a disk made from hda3 and zeroed
    // must not touch them (the seed numbered hda3's extents from sector 0 of the disk).
    machine.fill_image(starts[0], 2 * 16384, 0x5A);
    machine.fill_image(starts[2], 16384, 0xA5);
    let outside_before = machine.read_image(0, starts[2]);
    machine.ok(&["format", "phy:hda3", "--extent-size", "1M"]);
    let disk = machine.json(&["create", "8", "--zero"]);
    assert_eq!(extents(&disk), vec![("3:0".to_string(), starts[2], 16384)]);
    assert!(machine
        .read_image(starts[2], 16384)
        .iter()
        .all(|&byte| byte == 0));
    assert_eq!(machine.read_image(0, starts[2]), outside_before);
    // Two partitions of one disk live side by side in the pool without colliding.
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let pool = machine.json(&["pool"]);
    assert_eq!(pool["partitions"][0]["start_sector"], starts[0]);
    assert_eq!(pool["partitions"][1]["start_sector"], starts[2]);
    let second = machine.json(&["create", "8"]);
    assert_eq!(
        extents(&second),
        vec![("3:0".to_string(), starts[0], 16384)]
    );
    assert_eq!(
        machine.database().consistency_problems().unwrap(),
        Vec::<String>::new()
    );
}

fn seed_defect_3_refresh_does_not_revive_a_reissued_disk(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[4]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "4", "--expiry", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    machine.ok(&["create", "4"]);
    machine.fails(
        &["refresh", "1", "--expiry", "1h"],
        1,
        "vd:1: has expired (its extents may be reissued; undelete checks whether it can come back)",
    );
    let first = machine.json(&["show", "1"]);
    let second = machine.json(&["show", "2"]);
    machine.fails(
        &["undelete", "1"],
        1,
        &format!(
            "vd:1: its extent at 3:0:{} was reissued to vd:2",
            extents(&first)[0].1
        ),
    );
    assert_eq!(extents(&first), extents(&second));
    assert_eq!(first["state"], "expired");
    assert_eq!(second["state"], "live");
}

fn seed_defect_5_layout_follows_recorded_positions_in_disk_order(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    for _ in 0..8 {
        machine.ok(&["create", "1"]);
    }
    for id in ["2", "5", "7"] {
        machine.ok(&["delete", id]);
    }
    let disk = machine.json(&["create", "3"]);
    let layout = extents(&disk);
    let mut sorted = layout.clone();
    sorted.sort_by_key(|extent| extent.1);
    assert_eq!(layout, sorted);
    assert_eq!(layout.len(), 3);
    // The same order every time it is read, whatever SQLite's row order.
    let lookup: Vec<String> = machine
        .ok(&["lookup", "vd:9"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lookup,
        layout
            .iter()
            .map(|(device, start, count)| format!("{device} {start} {count}"))
            .collect::<Vec<_>>()
    );
}

fn seed_defect_6_eight_racing_creates_on_room_for_four_succeed_four_times(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "2M"]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            machine
                .command(&["create", "2", "--zero"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let succeeded = outputs
        .iter()
        .filter(|output| output.status.success())
        .count();
    assert_eq!(
        succeeded,
        4,
        "{:?}",
        outputs
            .iter()
            .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    for output in outputs.iter().filter(|output| !output.status.success()) {
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "vdisk: create 2M: no space (the pool has 0B free)\n"
        );
    }
    let mut all: Vec<_> = (1..=4)
        .flat_map(|id| extents(&machine.json(&["show", &id.to_string()])))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4);
    assert_eq!(
        machine.database().consistency_problems().unwrap(),
        Vec::<String>::new()
    );
}

fn seed_defect_7_a_new_disk_never_reads_the_previous_owners_data(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let first = machine.json(&["create", "8"]);
    let (_, start, count) = extents(&first)[0].clone();
    machine.fill_image(start, count, 0xEE);
    machine.ok(&["delete", "1"]);
    let second = machine.json(&["create", "8"]);
    assert_eq!(extents(&second), extents(&first));
    assert!(machine
        .read_image(start, count)
        .iter()
        .all(|&byte| byte == 0));
    // A wiped disk's extents are zeroed on delete, and stay zero for the next owner.
    machine.fill_image(start, count, 0x11);
    machine.ok(&["delete", "2", "--wipe"]);
    assert!(machine
        .read_image(start, count)
        .iter()
        .all(|&byte| byte == 0));
    machine.ok(&["create", "8"]);
    assert!(machine
        .read_image(start, count)
        .iter()
        .all(|&byte| byte == 0));
}

fn seed_defect_8_extents_still_mapped_are_not_reissued(pool: PoolKind) {
    let machine = Machine::on(pool, 16, &[4]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "4"]);
    machine.record_vd_attachment("1");
    let before = machine.snapshot();
    machine.fails(
        &["delete", "1"],
        1,
        "vd:1: still mapped: 3:0 sectors 2048+8192 overlaps domain 1 xvda (rw) at 3:0 sectors 2048+8192 (shared: sectors 2048+8192); detach it first or use --force",
    );
    assert_eq!(machine.snapshot(), before);
    machine.ok(&["delete", "1", "--force"]);
    machine.fails(
        &["create", "1"],
        1,
        "create 1M: no space (the pool has 0B free)",
    );
    assert_eq!(machine.json(&["pool"])["free_sectors"], 0);
    machine.fails(&["check", "phy:hda1", "r"], 1, "phy:hda1 r at safety 0: unsafe: 3:0 sectors 2048+8192 overlaps domain 1 xvda (rw) at 3:0 sectors 2048+8192 (shared: sectors 2048+8192)");
    let xvda = DeviceNumber::from_name("xvda").unwrap();
    let removed = machine.database().remove_attachment(1, xvda).unwrap();
    assert_eq!(removed.uname, "vd:1");
    assert_eq!(
        machine
            .database()
            .attachments_of(VdId::parse("1").unwrap())
            .unwrap(),
        vec![]
    );
    machine.ok(&["create", "1"]);
}

fn seed_defect_9_long_extent_lists_are_kept_whole(pool: PoolKind) {
    let machine = Machine::on(pool, 1200, &[1100]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let mut database = machine.database();
    // Claim every extent, then free every other one: 550 free extents, none adjacent.
    let mut ids = Vec::new();
    for _ in 0..1100 {
        let pending = database.begin_create(2048, false).unwrap();
        database
            .finish_create(pending.id, host_tools::duration::Expiry::Never)
            .unwrap();
        ids.push(pending.id);
    }
    for id in ids.iter().step_by(2) {
        database.delete(*id, false, false, &[]).unwrap();
    }
    let pending = database.begin_create(1100 * 1024, false).unwrap();
    let disk = database
        .finish_create(pending.id, host_tools::duration::Expiry::Never)
        .unwrap();
    assert_eq!(disk.extents.len(), 550);
    drop(database);
    // Add 550 more disjoint extents to the same disk by re-creating a longer list: record
    // an attachment of 1100 extents (all of hda1) and check the last one is seen.
    let shown = machine.json(&["show", &disk.id.get().to_string()]);
    assert_eq!(extents(&shown).len(), 550);
    let mut database = machine.database();
    let all: Vec<_> = (0..1100u64)
        .map(|index| {
            shared_abi::wire::Extent::new(
                DeviceNumber::new(3, 0).unwrap(),
                2048 + index * 2048,
                1024,
            )
            .unwrap()
        })
        .collect();
    database
        .record_attachment(
            &AttachmentTarget::Physical {
                name: "hda1".into(),
                extents: all,
            },
            2,
            DeviceNumber::from_name("xvdb").unwrap(),
            AccessMode::ReadWrite,
            shared_abi::SharingLevel::ReadersOnly,
            1,
        )
        .unwrap();
    assert_eq!(database.attachments().unwrap()[0].extents.len(), 1100);
    drop(database);
    let check = machine.run(&["check", &disk.id.to_string(), "r", "--json"]);
    assert_eq!(check.code, 1);
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    // Every one of the 550 extents overlaps one of the 1100 recorded ones, the last included.
    assert_eq!(report["conflicts"].as_array().unwrap().len(), 550);
    assert_eq!(report["safe"], false);
}

#[test]
fn zeroing_a_fresh_pool_zeros_in_place_and_keeps_the_image_sparse() {
    let machine = Machine::new(1100, &[1024]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.fill_image(4096, 2048, 0xEE);
    let allocated = || fs::metadata(machine.image()).unwrap().blocks() * 512;
    let before = allocated();
    let disk = machine.json(&["create", "1000"]);
    assert_eq!(extents(&disk)[0].1, 2048);
    assert!(machine.read_image(4096, 2048).iter().all(|&byte| byte == 0));
    // Had the 1000 MiB been written, the image would hold 1000 MiB of blocks.
    assert!(
        allocated() <= before,
        "{} bytes allocated after zeroing, {before} before",
        allocated()
    );
}

#[test]
fn killing_a_large_zeroing_create_leaves_a_consistent_database() {
    let machine = Machine::new(1100, &[1024]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    // Zeroing in place would finish before the kill; writing 1000 MiB leaves a window.
    let mut child = machine
        .command(&["create", "1000", "--zero"])
        .env("VDISK_ZERO_WITH_WRITES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the create never started zeroing"
        );
        let state = Database::open(&machine.database_path(), OpenMode::Existing)
            .ok()
            .and_then(|database| database.virtual_disk(VdId::parse("1").unwrap()).ok())
            .map(|disk| disk.state);
        if state == Some(VdState::Creating) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        None,
        "the create finished before it could be killed"
    );
    let mut database = machine.database();
    assert_eq!(
        database.consistency_problems().unwrap(),
        Vec::<String>::new()
    );
    // The half-made disk is not usable, holds its extents until its lease lapses, and the
    // rest of the pool still works.
    assert_eq!(machine.json(&["list"]), serde_json::json!([]));
    assert_eq!(machine.json(&["list", "--all"])[0]["state"], "creating");
    assert_eq!(machine.json(&["show", "1"])["state"], "creating");
    machine.fails(&["lookup", "vd:1"], 1, "vd:1: is still being created");
    assert_eq!(machine.json(&["pool"])["free_sectors"], 24 * 2048);
    machine.ok(&["create", "8"]);
    // After the lease, every extent is back and, being dirty, will be zeroed again.
    let lapse = now() + host_tools::database::LEASE_SECONDS + 1;
    database.set_clock(move || lapse);
    let pool = database.pool().unwrap();
    assert_eq!(pool[0].free_extents, 1024 - 8);
    assert_eq!(
        database
            .virtual_disk(VdId::parse("1").unwrap())
            .unwrap()
            .state,
        VdState::Abandoned
    );
}

#[test]
fn bad_sizes_and_durations_are_usage_errors_that_change_nothing() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1", "--expiry", "1h"]);
    let before = machine.snapshot();
    let size_error = |text: &str, reason: &str| {
        format!("invalid value '{text}' for '<SIZE>': size \"{text}\": {reason}")
    };
    machine.fails(
        &["create", "0"],
        2,
        &size_error("0", "must be greater than zero"),
    );
    machine.fails(
        &["create", "0K"],
        2,
        &size_error("0K", "must be greater than zero"),
    );
    machine.fails(
        &["create", "1.3K"],
        2,
        &size_error("1.3K", "not a whole number of 512-byte sectors"),
    );
    machine.fails(
        &["create", "12X"],
        2,
        &size_error("12X", "unknown unit (use K, M, G or T)"),
    );
    machine.fails(
        &["create", "abc"],
        2,
        &size_error(
            "abc",
            "not a size (expected a number of MiB, or a number with K, M, G or T)",
        ),
    );
    machine.fails(
        &["create", "99999999999999999999"],
        2,
        &size_error("99999999999999999999", "too large"),
    );
    machine.fails(
        &["create", "--", "-5"],
        2,
        &size_error(
            "-5",
            "not a size (expected a number of MiB, or a number with K, M, G or T)",
        ),
    );
    machine.fails(
        &["create", "1T"],
        1,
        "create 1T: no space (the pool has 7M free)",
    );
    let expiry_error = |text: &str, reason: &str| {
        format!("invalid value '{text}' for '--expiry <EXPIRY>': expiry \"{text}\": {reason}")
    };
    machine.fails(
        &["create", "1", "--expiry", "0s"],
        2,
        &expiry_error(
            "0s",
            "must be greater than zero (use 0 or never for no expiry)",
        ),
    );
    machine.fails(
        &["create", "1", "--expiry=-1"],
        2,
        &expiry_error(
            "-1",
            "not a duration (expected seconds, 0 or never, or a number with s, m, h, d or w)",
        ),
    );
    machine.fails(
        &["refresh", "1", "--expiry", "5x"],
        2,
        &expiry_error("5x", "unknown unit (use s, m, h, d or w)"),
    );
    machine.fails(
        &["refresh", "1", "--expiry", "36600d"],
        2,
        &expiry_error("36600d", "too long (at most 100 years)"),
    );
    machine.fails(&["show", "99"], 1, "vd:99: no such virtual disk");
    machine.fails(&["delete", "99"], 1, "vd:99: no such virtual disk");
    machine.fails(
        &["refresh", "0", "--expiry", "1h"],
        2,
        "invalid value '0' for '<ID>': virtual disk id \"0\": not a positive integer",
    );
    machine.fails(
        &["show", "x"],
        2,
        "invalid value 'x' for '<ID>': virtual disk id \"x\": not a positive integer",
    );
    machine.fails(
        &["check", "vd:1", "rwx"],
        2,
        "invalid value 'rwx' for '<MODE>': mode \"rwx\": expected r or rw",
    );
    machine.fails(
        &["check", "vd:1", "r", "--safety", "3"],
        2,
        "invalid value '3' for '--safety <SAFETY>': safety level \"3\": expected 0, 1 or 2",
    );
    machine.fails(&["undelete", "1"], 1, "vd:1: is live, nothing to undelete");
    assert_eq!(machine.snapshot(), before);
    assert_eq!(machine.run(&["frobnicate"]).code, 2);
}

#[test]
fn delete_with_an_unreachable_hypervisor_is_refused_and_changes_nothing() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    machine.fails(
        &["delete", "1", "--hv", "unix:/nonexistent"],
        1,
        "hypervisor at unix:/nonexistent: No such file or directory (os error 2)",
    );
    machine.fails(
        &["delete", "1", "--hv", "tcp:localhost:1"],
        2,
        "hypervisor endpoint `tcp:localhost:1`: expected unix:PATH",
    );
    assert_eq!(machine.json(&["show", "1"])["state"], "live");
}

#[test]
fn corrupt_foreign_and_missing_databases_are_refused_and_left_untouched() {
    let machine = Machine::new(16, &[8]);
    let database = machine.database_path();
    machine.fails(
        &["list"],
        1,
        &format!(
            "database {}: does not exist (vdisk format creates it)",
            database.display()
        ),
    );
    assert!(!database.exists());
    fs::create_dir_all(database.parent().unwrap()).unwrap();

    let garbage: Vec<u8> = (0..8192u32).map(|index| (index * 7 + 3) as u8).collect();
    fs::write(&database, &garbage).unwrap();
    for arguments in [
        &["list"][..],
        &["format", "phy:hda1"][..],
        &["create", "1"][..],
    ] {
        machine.fails(
            arguments,
            1,
            &format!("database {}: not an SQLite database", database.display()),
        );
        assert_eq!(fs::read(&database).unwrap(), garbage);
    }

    // A healthy SQLite file, but another program's.
    fs::remove_file(&database).unwrap();
    let foreign = rusqlite::Connection::open(&database).unwrap();
    foreign
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    drop(foreign);
    let bytes = fs::read(&database).unwrap();
    machine.fails(
        &["format", "phy:hda1"],
        1,
        &format!(
            "database {}: not a vdisk database (another program's SQLite file)",
            database.display()
        ),
    );
    machine.fails(
        &["pool"],
        1,
        &format!(
            "database {}: not a vdisk database (another program's SQLite file)",
            database.display()
        ),
    );
    assert_eq!(fs::read(&database).unwrap(), bytes);

    // A vdisk database whose pages were damaged after the header.
    fs::remove_file(&database).unwrap();
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let mut damaged = fs::read(&database).unwrap();
    let length = damaged.len();
    for byte in &mut damaged[4096..length] {
        *byte = 0xFF;
    }
    fs::write(&database, &damaged).unwrap();
    machine.fails(
        &["create", "1"],
        1,
        &format!(
            "database {}: corrupt (not a healthy SQLite file)",
            database.display()
        ),
    );
    assert_eq!(fs::read(&database).unwrap(), damaged);
}

#[test]
fn hypervisor_commands_refuse_bad_input_before_connecting() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    let before = machine.snapshot();
    machine.fails(
        &["attach", "vd:1", "xvda", "1", "rw"],
        2,
        "this command talks to the hypervisor: give --hv unix:PATH (or VDISK_HV)",
    );
    machine.fails(
        &["attach", "vd:1", "xvq", "1"],
        2,
        "invalid value 'xvq' for '<VDEVICE>': \"xvq\": not a device name like xvda or hdb, nor major:minor",
    );
    machine.fails(
        &["attach", "vd:1", "xvda", "-1"],
        2,
        "unexpected argument '-1' found",
    );
    machine.fails(
        &["detach", "xvda", "4294967295"],
        2,
        "invalid value '4294967295' for '<DOMAIN>': \"4294967295\": a domain is a number from 0 to 4294967294",
    );
    machine.fails(
        &["write", "xvda", "--from", "x", "--offset", "1.5X"],
        2,
        "invalid value '1.5X' for '--offset <OFFSET>': byte count \"1.5X\": unknown unit (use K, M, G or T)",
    );
    machine.fails(
        &["vbds", "--hv", "tcp:1.2.3.4:5"],
        2,
        "hypervisor endpoint `tcp:1.2.3.4:5`: expected unix:PATH",
    );
    machine.fails(
        &["read", "xvda", "--to", "out", "--hv", "unix:/nonexistent"],
        1,
        "hypervisor at unix:/nonexistent: No such file or directory (os error 2)",
    );
    assert_eq!(machine.snapshot(), before);
}

#[test]
fn completions_and_the_manual_come_from_the_command_definitions() {
    let machine = Machine::new(8, &[4]);
    let bash = machine.ok(&["completions", "bash"]);
    assert!(bash.contains("complete -F _vdisk"), "{bash}");
    for subcommand in ["format", "resize", "attach", "completions"] {
        assert!(bash.contains(subcommand), "bash completes {subcommand}");
    }
    assert!(machine
        .ok(&["completions", "zsh"])
        .starts_with("#compdef vdisk"));
    let page = machine.ok(&["man"]);
    assert!(page.contains(".TH vdisk 1"), "{page}");
    assert!(page.contains("resize"));
    machine.fails(
        &["completions", "tcsh"],
        2,
        "invalid value 'tcsh' for '<SHELL>' [possible values: bash, elvish, fish, powershell, zsh]",
    );
}

on_both_pools!(
    every_command_works_and_prints_the_agreed_shapes,
    formatting_refuses_overlaps_and_unknown_devices,
    seed_defect_1_ids_are_bound_never_spliced_into_sql,
    seed_defect_2_partition_extents_count_from_the_start_of_the_disk,
    seed_defect_3_refresh_does_not_revive_a_reissued_disk,
    seed_defect_5_layout_follows_recorded_positions_in_disk_order,
    seed_defect_6_eight_racing_creates_on_room_for_four_succeed_four_times,
    seed_defect_7_a_new_disk_never_reads_the_previous_owners_data,
    seed_defect_8_extents_still_mapped_are_not_reissued,
    seed_defect_9_long_extent_lists_are_kept_whole,
);

#[test]
fn a_pool_url_names_the_store_and_sqlite_is_what_db_was() {
    let machine = Machine::new(16, &[8]);
    let database = machine.database_path();
    let url = format!("sqlite:{}", database.display());
    machine.ok(&["--pool", &url, "format", "phy:hda1", "--extent-size", "1M"]);
    // --db names the same file; --pool wins over it.
    assert!(machine
        .ok(&["--db", database.to_str().unwrap(), "pool"])
        .contains("hda1"));
    let elsewhere = machine.directory.path().join("elsewhere.sqlite");
    assert!(machine
        .ok(&["--db", elsewhere.to_str().unwrap(), "--pool", &url, "pool"])
        .contains("hda1"));
    for (pool, why) in [
        (
            "mysql://x",
            "expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]",
        ),
        ("etcd://a", "member \"a\": expected HOST:PORT"),
        ("sqlite:", "sqlite: needs a path"),
    ] {
        machine.fails(
            &["--pool", pool, "pool"],
            2,
            &format!("invalid value '{pool}' for '--pool <POOL>': pool \"{pool}\": {why}"),
        );
    }
    // A pool of one host lists no hosts, and says so.
    machine.fails(
        &["hosts"],
        1,
        &format!("pool {url}: a pool of one host has no hosts to list (vdisk hosts is for a pool on etcd)"),
    );
    assert!(!elsewhere.exists());
}
