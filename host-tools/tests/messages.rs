//! What `vdisk` says and how it ends: closed pipes, live disks as users of their extents,
//! required expiries, one state word, one-line errors that name the database, aligned
//! tables, and read-only commands that only read.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::Machine;
use host_tools::database::{AccessMode, AttachmentTarget};
use serde_json::Value;
use shared_abi::DeviceNumber;

/// A standard output whose reader has already gone.
fn closed_stdout() -> Stdio {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_closed_pipe_ends_a_command_quietly_and_a_create_still_counts() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    for arguments in [
        &["lookup", "vd:1"][..],
        &["list"][..],
        &["list", "--json"][..],
        &["pool"][..],
        &["create", "1"][..],
        &["--help"][..],
    ] {
        let output = machine
            .command(arguments)
            .stdout(closed_stdout())
            .output()
            .unwrap();
        assert_eq!(
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).as_ref()
            ),
            (Some(0), ""),
            "vdisk {arguments:?}"
        );
    }
    assert_eq!(machine.json(&["show", "2"])["state"], "live");
}

#[test]
fn live_disks_are_users_of_their_extents() {
    let machine = Machine::new(16, &[4]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    machine.fails(
        &["check", "phy:hda1", "rw"],
        1,
        "phy:hda1 rw at safety 0: unsafe: 3:0 sectors 2048+8192 overlaps live disk vd:1 (rw) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096)",
    );
    // A disk is no user of itself.
    assert!(machine
        .ok(&["check", "vd:1", "rw"])
        .starts_with("vd:1 rw at safety 0: safe"));
}

#[test]
fn undelete_refuses_while_a_recorded_attachment_of_something_else_maps_the_extents() {
    let machine = Machine::new(16, &[4]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    machine.ok(&["delete", "1"]);
    machine
        .database()
        .record_attachment(
            &AttachmentTarget::Physical {
                name: "hda1".into(),
                extents: vec![shared_abi::wire::Extent::new(
                    DeviceNumber::new(3, 0).unwrap(),
                    2048,
                    8192,
                )
                .unwrap()],
            },
            1,
            DeviceNumber::from_name("xvdb").unwrap(),
            AccessMode::ReadWrite,
            shared_abi::SharingLevel::ReadersOnly,
            1,
        )
        .unwrap();
    let before = machine.snapshot();
    machine.fails(
        &["undelete", "1"],
        1,
        "vd:1: cannot come back: 3:0 sectors 2048+4096 overlaps domain 1 xvdb (rw) at 3:0 sectors 2048+8192 (shared: sectors 2048+4096); detach it first",
    );
    assert_eq!(machine.snapshot(), before);
}

#[test]
fn refresh_needs_an_expiry() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1", "--expiry", "1h"]);
    let before = machine.snapshot();
    machine.fails(
        &["refresh", "1"],
        2,
        "the following required arguments were not provided: --expiry <EXPIRY>",
    );
    assert_eq!(machine.snapshot(), before);
    // `0` means never, however many zeros it is written with.
    assert_eq!(
        machine.json(&["refresh", "1", "--expiry", "00"])["expires_at"],
        Value::Null
    );
}

#[test]
fn an_abandoned_create_has_one_state_word_everywhere() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    // A create whose process died long ago: its lease ran out at second 21.
    machine.tamper(
        "INSERT INTO virtual_disks (id, state, size_sectors, created_at, expires_at)
           VALUES (2, 'creating', 2048, 1, 21);
         INSERT INTO virtual_disk_extents (virtual_disk_id, position, extent_id)
           SELECT 2, 0, max(id) FROM extents;",
    );
    assert_eq!(machine.json(&["show", "2"])["state"], "abandoned");
    let listed = machine.json(&["list", "--all"]);
    let states: Vec<(u64, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|disk| {
            (
                disk["id"].as_u64().unwrap(),
                disk["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, vec![(1, "live"), (2, "abandoned")]);
    machine.fails(
        &["undelete", "2"],
        1,
        "vd:2: is abandoned (its create never finished), so it cannot come back",
    );
}

#[test]
fn a_schema_that_does_not_match_its_version_is_named_in_one_line() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let database = machine.database_path();
    machine.tamper("PRAGMA user_version = 0");
    let bytes = fs::read(&database).unwrap();
    machine.fails(
        &["pool"],
        1,
        &format!(
            "database {}: schema version 0 does not match its tables (it has table attachment_extents, which version 0 has not)",
            database.display()
        ),
    );
    machine.fails(
        &["create", "1"],
        1,
        &format!(
            "database {}: schema version 0 does not match its tables (it has table attachment_extents, which version 0 has not)",
            database.display()
        ),
    );
    assert_eq!(fs::read(&database).unwrap(), bytes);
}

#[test]
fn tables_fit_long_names_and_sizes_show_in_bytes() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    machine.tamper(
        "UPDATE virtual_disk_extents SET virtual_disk_id = 1234567;
         UPDATE virtual_disks SET id = 1234567;",
    );
    assert_eq!(
        machine.ok(&["list"]),
        "ID          SIZE  STATE  EXPIRES\nvd:1234567    1M  live   never\n"
    );
    machine.ok(&["create", "7"]);
    machine.fails(
        &["create", "1"],
        1,
        "create 1M: no space (the pool has 0B free)",
    );
    assert_eq!(
        machine.ok(&["pool"]),
        "NAME  DEVICE  START  SIZE  EXTENT  EXTENTS  FREE\nhda1  3:0      2048    8M      1M        8     0\nfree 0B of 8M\n"
    );
}

#[test]
fn device_numbers_are_digits_only() {
    let machine = Machine::new(16, &[8]);
    machine.write_devices("[[disk]]\nname = \"hda\"\ndevice = \"+3:+0\"\npath = \"hda.img\"\n");
    machine.fails(
        &["lookup", "phy:hda"],
        1,
        &format!(
            "devices file {}: disk hda: device \"+3:+0\" is not major:minor or a device name",
            machine.devices_file().display()
        ),
    );
    machine.fails(
        &["attach", "vd:1", "+202:+0", "1"],
        2,
        "invalid value '+202:+0' for '<VDEVICE>': \"+202:+0\": not a device name like xvda or hdb, nor major:minor",
    );
}

/// Run `vdisk` as someone who may read the database but not write it: as root, the user
/// nobody; otherwise ourselves, with the write bits taken away.
fn as_reader(machine: &Machine, arguments: &[&str]) -> std::process::Output {
    let mut command = machine.command(arguments);
    if rustix::process::geteuid().is_root() {
        command.uid(65534).gid(65534);
    }
    command.output().unwrap()
}

fn set_mode(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_commands_open_the_database_read_only() {
    let machine = Machine::new(16, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "1"]);
    let root = rustix::process::geteuid().is_root();
    let (directory_mode, file_mode) = if root { (0o755, 0o644) } else { (0o555, 0o444) };
    let state = machine.database_path().parent().unwrap().to_path_buf();
    set_mode(machine.directory.path(), 0o755);
    set_mode(&state, directory_mode);
    set_mode(&machine.database_path(), file_mode);
    set_mode(&machine.devices_file(), 0o644);
    for arguments in [
        &["list"][..],
        &["list", "--all", "--json"][..],
        &["show", "1"][..],
        &["pool"][..],
        &["lookup", "vd:1"][..],
        &["check", "vd:1", "r"][..],
    ] {
        let output = as_reader(&machine, arguments);
        assert_eq!(
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).as_ref()
            ),
            (Some(0), ""),
            "vdisk {arguments:?}"
        );
    }
    let output = as_reader(&machine, &["list"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ID    SIZE  STATE  EXPIRES\nvd:1    1M  live   never\n"
    );
    if root {
        // A reader who may write the directory leaves nothing there for the owner to trip on.
        set_mode(&state, 0o777);
        assert_eq!(as_reader(&machine, &["list"]).status.code(), Some(0));
        let mut left: Vec<String> = fs::read_dir(&state)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["vdisk.sqlite"]);
        machine.ok(&["create", "1"]);
    }
}
