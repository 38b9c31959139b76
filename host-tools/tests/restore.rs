//! Across a restart of the hypervisor: records of an earlier start whose VBD is gone are
//! restorable (kept, listed, still reserving their extents), `vdisk restore` makes them
//! again through the validator at the level each was attached at, and a database of schema
//! version 2 is migrated. The hypervisor is hv-vbd's table and frame server in the test
//! process ([`common::hypervisor`]); a restart is a new one over the same disk image.

mod common;

use common::hypervisor::Hypervisor;
use common::Machine;
use host_tools::hypervisor::Hypervisor as Client;
use serde_json::{json, Value};
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

fn xvd(name: &str) -> DeviceNumber {
    DeviceNumber::from_name(name).unwrap()
}

fn hda(start_sector: u64, nr_sectors: u64) -> Extent {
    Extent::new(DeviceNumber::new(3, 0).unwrap(), start_sector, nr_sectors).unwrap()
}

type Listed = (u64, String, Option<String>, String);

/// `(domain, vdevice, source, state)` of every VBD `vbds --json` lists, sorted.
fn listed(machine: &Machine, hypervisor: &Hypervisor) -> Vec<Listed> {
    let vbds = machine.json(&["--hv", &hypervisor.endpoint(0), "vbds"]);
    let mut listed: Vec<Listed> = vbds
        .as_array()
        .unwrap()
        .iter()
        .map(|vbd| {
            (
                vbd["domain"].as_u64().unwrap(),
                vbd["vdevice"].as_str().unwrap().to_owned(),
                vbd["source"].as_str().map(str::to_owned),
                vbd["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    listed
}

fn entry(domain: u64, vdevice: &str, source: &str, state: &str) -> Listed {
    (domain, vdevice.into(), Some(source.into()), state.into())
}

/// A VBD the database has no record of.
fn unrecorded(domain: u64, vdevice: &str) -> Listed {
    (domain, vdevice.into(), None, "attached".into())
}

/// Every record's domain, device and start id, in row order.
fn start_ids(machine: &Machine) -> Vec<(u32, u32, Option<i64>)> {
    machine
        .sqlite()
        .prepare("SELECT domain, vdevice, start_id FROM attachments ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Make a VBD behind vdisk's back, through the hypervisor alone.
fn make_by_hand(hypervisor: &Hypervisor, domain: u32, vdevice: &str, mode: Mode, extent: Extent) {
    let mut client = Client::connect(&hypervisor.endpoint(0)).unwrap();
    client
        .create(domain, xvd(vdevice), mode, Label::EMPTY)
        .unwrap();
    client
        .set_extents(domain, xvd(vdevice), &[extent], SharingLevel::ReadersOnly)
        .unwrap();
}

/// A machine whose vd:1 (2M) was attached rw to domain 1 as xvda under start 1, and its
/// hypervisor restarted as start 2.
fn attached_then_restarted() -> (Machine, Hypervisor) {
    let machine = Machine::new(32, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let first = machine.hypervisor(1);
    machine.ok(&[
        "--hv",
        &first.endpoint(0),
        "attach",
        "vd:1",
        "xvda",
        "1",
        "rw",
    ]);
    drop(first);
    let second = machine.hypervisor(2);
    (machine, second)
}

#[test]
fn restore_makes_every_attachment_of_an_earlier_start_again_in_attach_order_at_its_level() {
    let machine = Machine::new(48, &[8, 8, 8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let first = machine.hypervisor(1);
    let dom0 = first.endpoint(0);
    // Domain 2 writes vd:1 at level 0; domain 1 reads it beside the writer, which only
    // level 1 allows. In domain order, the reader would come first and the writer then
    // be refused at level 0: the restore must follow the attach order, and each level.
    machine.ok(&["--hv", &dom0, "attach", "vd:1", "xvda", "2", "rw"]);
    machine.ok(&[
        "--hv", &dom0, "attach", "vd:1", "xvda", "1", "r", "--safety", "1",
    ]);
    machine.ok(&["--hv", &dom0, "attach", "phy:hda3", "xvdb", "1", "r"]);
    let data: Vec<u8> = (0..4096 * 512)
        .map(|index| (index / 512 % 251) as u8)
        .collect();
    std::fs::write(machine.directory.path().join("data"), &data).unwrap();
    machine.ok(&[
        "--hv",
        &first.endpoint(2),
        "write",
        "xvda",
        "--from",
        machine.directory.path().join("data").to_str().unwrap(),
    ]);
    drop(first);

    let second = machine.hypervisor(2);
    let dom0 = second.endpoint(0);
    let all_three = |state: &str| {
        vec![
            entry(1, "xvda", "vd:1", state),
            entry(1, "xvdb", "phy:hda3", state),
            entry(2, "xvda", "vd:1", state),
        ]
    };
    assert_eq!(listed(&machine, &second), all_three("restorable"));
    assert_eq!(
        machine.ok(&["--hv", &dom0, "vbds"]),
        "DOMAIN  VDEV  MODE  SIZE  SOURCE    STATE       EXTENTS\n\
         1       xvda  r       2M  vd:1      restorable  3:0 2048+4096\n\
         1       xvdb  r       8M  phy:hda3  restorable  3:0 34816+16384\n\
         2       xvda  rw      2M  vd:1      restorable  3:0 2048+4096\n"
    );
    // Restorable records still reserve their extents: nothing else may take them.
    machine.fails(
        &["--hv", &dom0, "attach", "vd:1", "xvdc", "3", "rw"],
        1,
        "attach vd:1 as xvdc of domain 3 rw: unsafe at safety 0: 3:0 sectors 2048+4096 overlaps domain 1 xvda (r) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096); 3:0 sectors 2048+4096 overlaps domain 2 xvda (rw) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096)",
    );

    // A dry run says what would be done and changes nothing.
    let records = start_ids(&machine);
    assert_eq!(
        machine.ok(&["--hv", &dom0, "restore", "--dry-run"]),
        "would restore vd:1 as xvda of domain 2 rw at safety 0: 2M in 1 extent\n\
         would restore vd:1 as xvda of domain 1 r at safety 1: 2M in 1 extent\n\
         would restore phy:hda3 as xvdb of domain 1 r at safety 0: 8M in 1 extent\n"
    );
    let planned = machine.json(&["--hv", &dom0, "restore", "--dry-run"]);
    assert_eq!(planned[0]["outcome"], "would_restore");
    assert_eq!(planned[1]["safety"], 1);
    assert_eq!(start_ids(&machine), records);
    assert_eq!(listed(&machine, &second), all_three("restorable"));

    assert_eq!(
        machine.ok(&["--hv", &dom0, "restore"]),
        "restored vd:1 as xvda of domain 2 rw at safety 0: 2M in 1 extent\n\
         restored vd:1 as xvda of domain 1 r at safety 1: 2M in 1 extent\n\
         restored phy:hda3 as xvdb of domain 1 r at safety 0: 8M in 1 extent\n"
    );
    assert_eq!(listed(&machine, &second), all_three("attached"));
    // Every record is of this start now.
    let (xvda, xvdb) = (xvd("xvda").raw(), xvd("xvdb").raw());
    assert_eq!(
        start_ids(&machine),
        vec![(2, xvda, Some(2)), (1, xvda, Some(2)), (1, xvdb, Some(2))]
    );
    // Each VBD has its label, mode and extents again, and the guests read what was there.
    let mut client = Client::connect(&dom0).unwrap();
    let reader = client.info(1, xvd("xvda")).unwrap();
    assert_eq!(
        (reader.label, reader.mode, reader.extents),
        (
            Label::new("vd:1").unwrap(),
            Mode::READ,
            vec![hda(2048, 4096)]
        )
    );
    let writer = client.info(2, xvd("xvda")).unwrap();
    assert_eq!(writer.mode, Mode::READ | Mode::WRITE);
    let raw = client.info(1, xvd("xvdb")).unwrap();
    assert_eq!(
        (raw.label, raw.extents),
        (Label::new("phy:hda3").unwrap(), vec![hda(34816, 16384)])
    );
    drop(client);
    for domain in [1, 2] {
        let mut guest = Client::connect(&second.endpoint(domain)).unwrap();
        assert_eq!(guest.read(xvd("xvda"), 0, 2048).unwrap(), data[..1 << 20]);
        assert_eq!(
            guest.read(xvd("xvda"), 2048, 2048).unwrap(),
            data[1 << 20..]
        );
    }
    // Nothing is left to restore.
    assert_eq!(
        machine.ok(&["--hv", &dom0, "restore"]),
        "nothing to restore\n"
    );
    assert_eq!(machine.json(&["--hv", &dom0, "restore"]), json!([]));
}

#[test]
fn restore_refuses_a_deleted_disk_a_taken_place_and_unsafe_sharing_and_restores_the_rest() {
    let machine = Machine::new(48, &[8, 8, 8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    for _ in 0..3 {
        machine.ok(&["create", "2"]);
    }
    let first = machine.hypervisor(1);
    let dom0 = first.endpoint(0);
    machine.ok(&["--hv", &dom0, "attach", "vd:1", "xvda", "1", "rw"]);
    machine.ok(&["--hv", &dom0, "attach", "vd:2", "xvdb", "1", "rw"]);
    machine.ok(&["--hv", &dom0, "attach", "phy:hda2", "xvda", "2", "r"]);
    machine.ok(&["--hv", &dom0, "attach", "vd:3", "xvdb", "2", "rw"]);
    drop(first);

    let second = machine.hypervisor(2);
    let dom0 = second.endpoint(0);
    // Meanwhile vd:1 is deleted (its restorable record makes that need --force), domain 1's
    // xvdb is made again from something else, and domain 3 writes where phy:hda2 was read.
    machine.fails(
        &["delete", "1"],
        1,
        "vd:1: still mapped: 3:0 sectors 2048+4096 overlaps domain 1 xvda (rw) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096); detach it first or use --force",
    );
    assert_eq!(
        machine.json(&["delete", "1", "--force"])["state"],
        "expired"
    );
    make_by_hand(&second, 1, "xvdb", Mode::READ, hda(0, 8));
    make_by_hand(&second, 3, "xvda", Mode::READ | Mode::WRITE, hda(18432, 8));

    let run = machine.run(&["--hv", &dom0, "restore"]);
    assert_eq!(
        run.stdout,
        "refused vd:1 as xvda of domain 1 rw at safety 0: vd:1: has expired (its extents may be reissued; undelete checks whether it can come back)\n\
         refused vd:2 as xvdb of domain 1 rw at safety 0: domain 1 xvdb: taken by another VBD since the restart\n\
         refused phy:hda2 as xvda of domain 2 r at safety 0: unsafe: 3:0 sectors 18432+16384 overlaps domain 3 xvda (rw) at 3:0 sectors 18432+8 (shared: sectors 18432+8)\n\
         restored vd:3 as xvdb of domain 2 rw at safety 0: 2M in 1 extent\n"
    );
    assert_eq!(run.stderr, "vdisk: restore: 3 of 4 attachments refused\n");
    assert_eq!(run.code, 1);
    // The refused ones stay recorded under their start, and restorable; the rest is done.
    let (xvda, xvdb) = (xvd("xvda").raw(), xvd("xvdb").raw());
    assert_eq!(
        start_ids(&machine),
        vec![
            (1, xvda, Some(1)),
            (1, xvdb, Some(1)),
            (2, xvda, Some(1)),
            (2, xvdb, Some(2))
        ]
    );
    assert_eq!(
        listed(&machine, &second),
        vec![
            entry(1, "xvda", "vd:1", "restorable"),
            unrecorded(1, "xvdb"),
            entry(1, "xvdb", "vd:2", "restorable"),
            entry(2, "xvda", "phy:hda2", "restorable"),
            entry(2, "xvdb", "vd:3", "attached"),
            unrecorded(3, "xvda"),
        ]
    );
    // The same refusals as JSON, and the same exit.
    let run = machine.run(&["--hv", &dom0, "restore", "--json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "vdisk: restore: 3 of 3 attachments refused\n");
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        reports[1],
        json!({
            "outcome": "refused",
            "domain": 1,
            "vdevice": "xvdb",
            "uname": "vd:2",
            "mode": "rw",
            "safety": 0,
            "extents": [{"device": "3:0", "start_sector": 6144, "nr_sectors": 4096}],
            "reason": "domain 1 xvdb: taken by another VBD since the restart",
        })
    );
    assert_eq!(reports.as_array().unwrap().len(), 3);
    // A dry run finds the same, and says so in its own words.
    let run = machine.run(&["--hv", &dom0, "restore", "--dry-run"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "vdisk: restore --dry-run: 3 of 3 attachments would be refused\n"
    );
}

#[test]
fn a_refusal_by_the_hypervisor_itself_leaves_nothing_half_made() {
    let machine = Machine::new(32, &[8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let first = machine.hypervisor(1);
    let dom0 = first.endpoint(0);
    machine.ok(&[
        "--hv", &dom0, "attach", "vd:1", "xvda", "1", "r", "--safety", "1",
    ]);
    drop(first);
    // It comes back allowing level 0 only, below the level the attachment asks for.
    let second = machine.hypervisor_with_ceiling(2, SharingLevel::ReadersOnly);
    let run = machine.run(&["--hv", &second.endpoint(0), "restore"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            1,
            "refused vd:1 as xvda of domain 1 r at safety 1: hypervisor refused set-extents on xvda of domain 1: operation not permitted (EPERM)\n",
            "vdisk: restore: 1 of 1 attachments refused\n"
        )
    );
    assert_eq!(
        listed(&machine, &second),
        vec![entry(1, "xvda", "vd:1", "restorable")]
    );
    assert_eq!(start_ids(&machine), vec![(1, xvd("xvda").raw(), Some(1))]);
}

#[test]
fn a_vbd_made_again_under_the_new_start_is_found_again_and_then_dies_like_any_other() {
    let (machine, second) = attached_then_restarted();
    // Another tool made the same VBD again: the record is matched and stamped.
    make_by_hand(
        &second,
        1,
        "xvda",
        Mode::READ | Mode::WRITE,
        hda(2048, 4096),
    );
    assert_eq!(
        listed(&machine, &second),
        vec![entry(1, "xvda", "vd:1", "attached")]
    );
    assert_eq!(start_ids(&machine), vec![(1, xvd("xvda").raw(), Some(2))]);
    assert_eq!(
        machine.ok(&["--hv", &second.endpoint(0), "restore"]),
        "nothing to restore\n"
    );
    // A record of this start whose VBD goes (its domain died) is dead: removed when seen.
    assert_eq!(
        Client::connect(&second.endpoint(0))
            .unwrap()
            .destroy_domain(1)
            .unwrap(),
        1
    );
    assert_eq!(listed(&machine, &second), vec![]);
    assert_eq!(start_ids(&machine), vec![]);
}

#[test]
fn a_database_of_schema_version_2_is_migrated_and_its_records_are_restorable() {
    let (machine, second) = attached_then_restarted();
    // What issue 9's vdisk left: the same tables without a start id, a level or a host,
    // and one VBD per (domain, device).
    machine.tamper(
        "CREATE TABLE attachments_v2 (
             id INTEGER PRIMARY KEY,
             uname TEXT NOT NULL,
             virtual_disk_id INTEGER REFERENCES virtual_disks (id),
             domain INTEGER NOT NULL CHECK (domain BETWEEN 0 AND 4294967295),
             vdevice INTEGER NOT NULL CHECK (vdevice BETWEEN 0 AND 4294967295),
             mode TEXT NOT NULL CHECK (mode IN ('r', 'rw')),
             attached_at INTEGER NOT NULL,
             confirmed INTEGER NOT NULL DEFAULT 1 CHECK (confirmed IN (0, 1)),
             UNIQUE (domain, vdevice)
         ) STRICT;
         INSERT INTO attachments_v2 SELECT id, uname, virtual_disk_id, domain, vdevice, mode,
             attached_at, confirmed FROM attachments;
         DROP TABLE attachments;
         ALTER TABLE attachments_v2 RENAME TO attachments;
         PRAGMA user_version = 2;",
    );
    assert_eq!(
        listed(&machine, &second),
        vec![entry(1, "xvda", "vd:1", "restorable")]
    );
    assert_eq!(machine.count("PRAGMA user_version"), 4);
    assert_eq!(
        machine.count(
            "SELECT count(*) FROM attachments WHERE start_id IS NULL AND sharing_level = 0 AND host = ''"
        ),
        1
    );
    // The migration copied the attachments table: its extents still refer to the record.
    assert_eq!(
        machine.count(
            "SELECT count(*) FROM attachment_extents e JOIN attachments a ON a.id = e.attachment_id"
        ),
        1
    );
    assert_eq!(
        machine.ok(&["--hv", &second.endpoint(0), "restore"]),
        "restored vd:1 as xvda of domain 1 rw at safety 0: 2M in 1 extent\n"
    );
    assert_eq!(start_ids(&machine), vec![(1, xvd("xvda").raw(), Some(2))]);
}

#[test]
fn restore_refuses_bad_input_and_changes_nothing() {
    let (machine, hypervisor) = attached_then_restarted();
    let dom0 = hypervisor.endpoint(0);
    // No database: it is not made.
    let missing = machine.directory.path().join("missing.sqlite");
    machine.fails(
        &["--hv", &dom0, "--db", missing.to_str().unwrap(), "restore"],
        1,
        &format!(
            "database {}: does not exist (vdisk format creates it)",
            missing.display()
        ),
    );
    assert!(!missing.exists());
    let before = (machine.snapshot(), start_ids(&machine));
    machine.fails(
        &["restore"],
        2,
        "this command talks to the hypervisor: give --hv unix:PATH (or VDISK_HV)",
    );
    machine.fails(
        &["--hv", "unix:/nonexistent", "restore"],
        1,
        "hypervisor at unix:/nonexistent: No such file or directory (os error 2)",
    );
    let dom1 = hypervisor.endpoint(1);
    machine.fails(
        &["--hv", &dom1, "restore"],
        1,
        &format!("restore: {dom1} is domain 1's port; only dom0's may make VBDs"),
    );
    machine.fails(
        &["--hv", &dom0, "restore", "all"],
        2,
        "unexpected argument 'all' found",
    );
    assert_eq!((machine.snapshot(), start_ids(&machine)), before);
    assert_eq!(
        listed(&machine, &hypervisor),
        vec![entry(1, "xvda", "vd:1", "restorable")]
    );
}
