//! `vdisk`'s one reconciliation and `resize --hv` through the real hypervisor: a VBD the
//! database does not know is marked, a record whose VBD died with its domain is removed
//! when seen, and every VBD of a disk grows with it.

use host_tools::database::{Database, OpenMode};
use serde_json::Value;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Mode};
use vbd_integration::TestMachine;

fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("vdisk prints JSON")
}

fn records(test: &TestMachine) -> usize {
    Database::open(&test.database, OpenMode::ReadOnly)
        .unwrap()
        .attachments()
        .unwrap()
        .len()
}

#[test]
fn vbds_marks_unrecorded_vbds_and_removes_records_whose_vbd_is_gone() {
    let test = TestMachine::boot("reconcile");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    test.vdisk_ok(&["create", "2M"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "vd:1", "xvda", "1", "rw"]);
    // A VBD made behind vdisk's back, over the first sectors of hda.
    let mut client = test.client(0);
    let hda = DeviceNumber::from_name("hda").unwrap();
    client
        .create(2, xvda(), Mode::READ, shared_abi::Label::EMPTY)
        .unwrap();
    client
        .set_extents(
            2,
            xvda(),
            &[Extent::new(hda, 0, 8).unwrap()],
            shared_abi::SharingLevel::ReadersOnly,
        )
        .unwrap();
    drop(client);
    let all = json(&test.vdisk_ok(&["--hv", &dom0, "vbds", "all", "--json"]));
    let sources: Vec<(u64, Value)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|vbd| (vbd["domain"].as_u64().unwrap(), vbd["source"].clone()))
        .collect();
    assert_eq!(
        sources,
        vec![(1, Value::from("vd:1")), (2, Value::Null)],
        "{all}"
    );
    let table = test.vdisk_ok(&["--hv", &dom0, "vbds", "all"]);
    let dom2 = table.lines().find(|line| line.starts_with('2')).unwrap();
    assert!(dom2.contains("(unrecorded)"), "{table}");
    // Domain 1 dies: its VBD goes with it, and the record is removed when next seen.
    assert_eq!(records(&test), 1);
    assert_eq!(test.client(0).destroy_domain(1).unwrap(), 1);
    let all = json(&test.vdisk_ok(&["--hv", &dom0, "vbds", "all", "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(records(&test), 0);
    // Nothing maps vd:1 any more, so it may go.
    assert_eq!(
        json(&test.vdisk_ok(&["--hv", &dom0, "delete", "1", "--json"]))["state"],
        "expired"
    );
    test.finish();
}

#[test]
fn resize_grows_every_vbd_of_the_disk_through_the_hypervisor() {
    let test = TestMachine::boot("resize");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    test.vdisk_ok(&["create", "2M"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "vd:1", "xvda", "1", "rw"]);
    let grown = json(&test.vdisk_ok(&["--hv", &dom0, "resize", "1", "3M", "--json"]));
    assert_eq!(grown["size_sectors"], 6144);
    // The guest sees its disk grow, and can write its new last sector.
    let mut guest = test.client(1);
    let (vbds, _) = guest.probe(Some(1)).unwrap();
    assert_eq!(vbds[0].size_sectors, 6144);
    guest.write(xvda(), 6143, &[0x5A; 512]).unwrap();
    assert_eq!(guest.read(xvda(), 6143, 1).unwrap(), vec![0x5A; 512]);
    drop(guest);
    // The record says what the VBD maps now.
    let database = Database::open(&test.database, OpenMode::ReadOnly).unwrap();
    let mapped: u64 = database.attachments().unwrap()[0]
        .extents
        .iter()
        .map(|extent| extent.nr_sectors())
        .sum();
    assert_eq!(mapped, 6144);
    drop(database);
    // A shrink would take sectors from under the guest: refused.
    let output = test.vdisk(&["--hv", &dom0, "resize", "1", "1M", "--shrink"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("still mapped"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    test.finish();
}
