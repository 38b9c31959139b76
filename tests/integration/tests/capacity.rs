//! The table's limits through the real channel: a VBD of the table's whole extent capacity
//! is set and read back in pieces over the serial port, the sharing ceiling bounds what a
//! request may ask for, and domains come and go without using up the table.

use std::os::unix::fs::FileExt;

use host_tools::hypervisor::HypervisorError;
use shared_abi::{wire::Extent, DeviceNumber, Error, Label, Mode, SharingLevel};
use vbd_integration::TestMachine;

fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

fn refusal<T: std::fmt::Debug>(result: Result<T, HypervisorError>) -> Error {
    match result {
        Err(HypervisorError::Refused { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_vbd_of_the_whole_capacity_is_set_and_read_back_over_the_channel() {
    let test = TestMachine::boot("whole-capacity");
    let mut dom0 = test.client(0);
    let limits = dom0.limits().unwrap();
    assert_eq!(
        limits.extents, 65536,
        "the test hypervisor's DefaultVbdTable"
    );
    assert_eq!(limits.extents_free, limits.extents);
    assert!(
        (limits.max_call_bytes as usize) < limits.extents as usize * 24,
        "the whole list must not fit one call, or pieces are not tested"
    );
    // One-sector extents on every other sector of hda, listed backwards.
    let hda = DeviceNumber::from_name("hda").unwrap();
    let extents: Vec<Extent> = (0..u64::from(limits.extents))
        .rev()
        .map(|index| Extent::new(hda, index * 2, 1).unwrap())
        .collect();
    dom0.create(1, xvda(), Mode::READ, Label::new("whole").unwrap())
        .unwrap();
    dom0.set_extents(1, xvda(), &extents, SharingLevel::ReadersOnly)
        .unwrap();
    let details = dom0.info(1, xvda()).unwrap();
    assert_eq!(details.extents, extents);
    assert_eq!(details.label.as_str(), "whole");
    // The table is full: another VBD gets no extent, and the first is untouched.
    dom0.create(2, xvda(), Mode::READ, Label::EMPTY).unwrap();
    assert_eq!(
        refusal(dom0.set_extents(
            2,
            xvda(),
            &[Extent::new(hda, 1, 1).unwrap()],
            SharingLevel::ReadersOnly
        )),
        Error::NoSpace
    );
    // `vdisk vbds` reads the whole list too (a port serves one connection at a time).
    drop(dom0);
    let listing: serde_json::Value =
        serde_json::from_str(&test.vdisk_ok(&["--hv", &test.endpoint(0), "vbds", "1", "--json"]))
            .unwrap();
    assert_eq!(
        listing[0]["extents"].as_array().map(Vec::len),
        Some(extents.len()),
        "{listing}"
    );
    // Made behind vdisk's back: no record, but the hypervisor's label still names it.
    assert_eq!(listing[0]["source"], serde_json::Value::Null);
    assert_eq!(listing[0]["label"], "whole");
    let table = test.vdisk_ok(&["--hv", &test.endpoint(0), "vbds", "1"]);
    assert!(table.contains("(unrecorded) whole"), "{table}");
    assert!(
        table.contains("... and 65528 more (--json lists all)"),
        "{table}"
    );
    // The guest reads 16 virtual sectors: the last 16 extents' sectors, backwards.
    let mut guest = test.client(1);
    let data = guest.read(xvda(), 0, 16).unwrap();
    let image = std::fs::File::open(test.machine.image("hda").unwrap()).unwrap();
    for (index, sector) in data.chunks(512).enumerate() {
        let physical = (u64::from(limits.extents) - 1 - index as u64) * 2;
        let mut expected = vec![0u8; 512];
        image.read_exact_at(&mut expected, physical * 512).unwrap();
        assert_eq!(sector, &expected[..], "virtual sector {index}");
    }
    drop(guest);
    test.finish();
}

#[test]
fn the_ceiling_bounds_the_level_a_request_may_ask_for() {
    let test = TestMachine::boot_with_sharing("ceiling", 1);
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "rw"]);
    // Level 1 is the ceiling: a reader beside the writer is allowed at 1...
    test.vdisk_ok(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdb", "2", "r", "--safety", "1",
    ]);
    // ...and a second writer asking for 2 is refused by the hypervisor itself, which the
    // tools' own check at level 2 would have let through.
    let output = test.vdisk(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdc", "2", "rw", "--safety", "2",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("EPERM"), "{message}");
    let mut client = test.client(0);
    assert_eq!(
        client.limits().unwrap().sharing_ceiling,
        SharingLevel::SingleWriter
    );
    drop(client);
    test.finish();
}

/// The defect issue 8 names: `attach --safety 1` against a hypervisor booted at the
/// default was refused by the hypervisor, though `vdisk attach --help` gives that command.
#[test]
fn at_the_default_ceiling_the_callers_level_rules() {
    let test = TestMachine::boot("default-ceiling");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "rw"]);
    test.vdisk_ok(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdb", "2", "r", "--safety", "1",
    ]);
    test.vdisk_ok(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdc", "2", "rw", "--safety", "2",
    ]);
    let output = test.vdisk(&["--hv", &dom0, "attach", "phy:hda3", "xvdd", "2", "r"]);
    assert_eq!(output.status.code(), Some(1), "level 0 still refuses");
    test.finish();
}

#[test]
fn many_domains_are_created_and_emptied_in_turn() {
    let test = TestMachine::boot("domains-in-turn");
    let mut dom0 = test.client(0);
    let limits = dom0.limits().unwrap();
    let hda = DeviceNumber::from_name("hda").unwrap();
    let xvdb = DeviceNumber::from_name("xvdb").unwrap();
    // Twice as many domains as the table has slots, each with two VBDs, then emptied.
    for domain in 1..=2 * limits.domains {
        for vdevice in [xvda(), xvdb] {
            dom0.create(domain, vdevice, Mode::READ, Label::EMPTY)
                .unwrap();
            dom0.grow(
                domain,
                vdevice,
                Extent::new(hda, 0, 8).unwrap(),
                SharingLevel::ReadersOnly,
            )
            .unwrap();
        }
        dom0.delete(domain, xvda()).unwrap();
        dom0.delete(domain, xvdb).unwrap();
    }
    assert_eq!(dom0.probe(None).unwrap().0, vec![]);
    // A fresh connection asks the limits afresh: every extent is free again.
    drop(dom0);
    assert_eq!(
        test.client(0).limits().unwrap().extents_free,
        limits.extents
    );
    test.finish();
}
