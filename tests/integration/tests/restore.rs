//! A restart of the real hypervisor loses every VBD; `vdisk` keeps the attachments it
//! recorded under the earlier start as restorable, and `vdisk restore` makes them again so
//! that each guest reads, through its own port, the bytes it had before.

use serde_json::Value;
use shared_abi::DeviceNumber;
use vbd_integration::TestMachine;

fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

/// A pattern that differs at every sector and from one guest to the other.
fn pattern(sectors: usize, seed: u8) -> Vec<u8> {
    (0..sectors * 512)
        .map(|index| (index / 512) as u8 ^ (index as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// `(domain, source, state)` of every VBD `vdisk vbds all --json` lists.
fn listed(test: &TestMachine) -> Vec<(u64, String, String)> {
    let text = test.vdisk_ok(&["--hv", &test.endpoint(0), "vbds", "all", "--json"]);
    let vbds: Value = serde_json::from_str(&text).expect("vdisk prints JSON");
    let mut listed: Vec<_> = vbds
        .as_array()
        .expect("a list of VBDs")
        .iter()
        .map(|vbd| {
            (
                vbd["domain"].as_u64().unwrap(),
                vbd["source"].as_str().unwrap().to_owned(),
                vbd["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    listed
}

#[test]
fn attachments_recorded_before_a_restart_are_restored_and_read_the_same_bytes() {
    let test = TestMachine::boot("restore");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    test.vdisk_ok(&["format", "phy:hdb2", "--extent-size", "1M"]);
    test.vdisk_ok(&["create", "2M"]);
    test.vdisk_ok(&["create", "1M"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "vd:1", "xvda", "1", "rw"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "vd:2", "xvda", "2", "rw"]);
    // Each guest writes through its own port: the first sectors, and the last ones.
    let written = [(1, 4096, pattern(64, 0x11)), (2, 2048, pattern(64, 0x22))];
    for (domain, sectors, data) in &written {
        let mut guest = test.client(*domain);
        guest.write(xvda(), 0, data).unwrap();
        guest.write(xvda(), sectors - 64, data).unwrap();
    }
    let start_before = test.client(0).start_id();

    let test = test.restart();
    let dom0 = test.endpoint(0);
    assert_ne!(test.client(0).start_id(), start_before);
    assert_eq!(
        listed(&test),
        vec![
            (1, "vd:1".to_owned(), "restorable".to_owned()),
            (2, "vd:2".to_owned(), "restorable".to_owned()),
        ]
    );
    // The guests have no disks until the restore.
    let (vbds, _) = test.client(1).probe(Some(1)).unwrap();
    assert_eq!(vbds, vec![]);
    assert_eq!(
        test.vdisk_ok(&["--hv", &dom0, "restore"]),
        "restored vd:1 as xvda of domain 1 rw at safety 0: 2M in 1 extent\n\
         restored vd:2 as xvda of domain 2 rw at safety 0: 1M in 1 extent\n"
    );
    assert_eq!(
        listed(&test),
        vec![
            (1, "vd:1".to_owned(), "attached".to_owned()),
            (2, "vd:2".to_owned(), "attached".to_owned()),
        ]
    );
    for (domain, sectors, data) in &written {
        let mut guest = test.client(*domain);
        assert_eq!(&guest.read(xvda(), 0, 64).unwrap(), data);
        assert_eq!(&guest.read(xvda(), sectors - 64, 64).unwrap(), data);
    }
    assert_eq!(
        test.vdisk_ok(&["--hv", &dom0, "restore"]),
        "nothing to restore\n"
    );
    test.finish();
}
