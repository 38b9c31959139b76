//! VBDs through the real hypervisor: modes, bounds, the sharing validator, domain death,
//! change notices, and where a guest's bytes land in the disk images.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use host_tools::hypervisor::HypervisorError;
use shared_abi::{DeviceNumber, Error};
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

/// `(device, start_sector, nr_sectors)` of each extent in a `vdisk ... --json` extent list.
fn extents(json: &str) -> Vec<(String, u64, u64)> {
    let value: serde_json::Value = serde_json::from_str(json).expect("vdisk prints JSON");
    let list = value.get("extents").unwrap_or(&value);
    list.as_array()
        .expect("an extent list")
        .iter()
        .map(|extent| {
            (
                extent["device"].as_str().unwrap().to_owned(),
                extent["start_sector"].as_u64().unwrap(),
                extent["nr_sectors"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn image_of<'a>(test: &'a TestMachine, device: &str) -> &'a Path {
    let name = match device {
        "3:0" => "hda",
        "3:64" => "hdb",
        other => panic!("no image for {other}"),
    };
    test.machine.image(name).unwrap()
}

fn read_image(path: &Path, offset: u64, length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    bytes
}

/// A pattern that differs at every sector, so a misplaced sector is noticed.
fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index / 512) as u8 ^ (index as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Fill the partitions not given to the pool with a pattern; returns them for checking.
fn fill_outside_partitions(test: &TestMachine, names: &[&str]) -> Vec<(String, u64, Vec<u8>)> {
    names
        .iter()
        .map(|name| {
            let (device, start, sectors) =
                extents(&test.vdisk_ok(&["lookup", &format!("phy:{name}"), "--json"]))[0].clone();
            let contents = pattern(
                (sectors * 512) as usize,
                name.len() as u8 + name.as_bytes()[3],
            );
            fs::OpenOptions::new()
                .write(true)
                .open(image_of(test, &device))
                .unwrap()
                .write_all_at(&contents, start * 512)
                .unwrap();
            (device, start, contents)
        })
        .collect()
}

#[test]
fn guest_bytes_land_at_the_translated_offsets_and_nowhere_else() {
    let test = TestMachine::boot("translated-offsets");
    let untouched = fill_outside_partitions(&test, &["hda1", "hda3", "hdb1", "hdb3"]);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    test.vdisk_ok(&["format", "phy:hdb2", "--extent-size", "1M"]);
    // Fragment the pool so the VD gets several extents on both disks.
    for _ in 0..3 {
        test.vdisk_ok(&["create", "1M"]);
    }
    test.vdisk_ok(&["delete", "2"]);
    let id = test.vdisk_ok(&["create", "190M"]).trim().to_owned();
    let layout = extents(&test.vdisk_ok(&["show", &id, "--json"]));
    assert!(layout.len() >= 3, "a fragmented VD: {layout:?}");
    assert!(
        layout.iter().any(|extent| extent.0 == "3:0")
            && layout.iter().any(|extent| extent.0 == "3:64")
    );
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&[
        "--hv",
        &dom0,
        "attach",
        &format!("vd:{id}"),
        "xvda",
        "1",
        "rw",
    ]);

    // The guest writes across every extent boundary, through its own port.
    let mut guest = test.client(1);
    let mut boundary = 0u64;
    for (_, _, sectors) in &layout[..layout.len() - 1] {
        boundary += sectors;
        let data = pattern(8 * 512, boundary as u8);
        guest.write(xvda(), boundary - 4, &data).unwrap();
        assert_eq!(guest.read(xvda(), boundary - 4, 8).unwrap(), data);
        // Each byte is in the image exactly where the extent list says.
        let mut virtual_start = 0u64;
        for (device, start, sectors) in &layout {
            for (index, chunk) in data.chunks(512).enumerate() {
                let sector = boundary - 4 + index as u64;
                if (virtual_start..virtual_start + sectors).contains(&sector) {
                    let physical = start + (sector - virtual_start);
                    assert_eq!(
                        read_image(image_of(&test, device), physical * 512, 512),
                        chunk,
                        "virtual sector {sector} at {device}:{physical}"
                    );
                }
            }
            virtual_start += sectors;
        }
    }
    drop(guest);
    for (device, start, contents) in untouched {
        assert!(
            read_image(image_of(&test, &device), start * 512, contents.len()) == contents,
            "a partition outside the pool changed"
        );
    }
    test.finish();
}

#[test]
fn read_only_vbds_refuse_writes_and_bounds_are_enforced() {
    let test = TestMachine::boot("read-only");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    let (device, start, _) = extents(&test.vdisk_ok(&["lookup", "phy:hda3", "--json"]))[0].clone();
    let before = read_image(image_of(&test, &device), start * 512, 64 * 1024);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "r"]);
    let mut guest = test.client(1);
    assert_eq!(
        refusal(guest.write(xvda(), 0, &[0xAA; 512])),
        Error::ReadOnly
    );
    assert_eq!(
        read_image(image_of(&test, &device), start * 512, 64 * 1024),
        before,
        "the disk is unchanged"
    );
    // Reads work, up to the end and not a sector past it.
    let (vbds, _) = guest.probe(Some(1)).unwrap();
    let size = vbds[0].size_sectors;
    assert_eq!(guest.read(xvda(), size - 1, 1).unwrap().len(), 512);
    assert_eq!(refusal(guest.read(xvda(), size, 1)), Error::OutOfRange);
    assert_eq!(refusal(guest.read(xvda(), size - 1, 2)), Error::OutOfRange);
    assert_eq!(refusal(guest.read(xvda(), u64::MAX, 1)), Error::OutOfRange);
    assert_eq!(
        refusal(guest.read(DeviceNumber::from_name("xvdb").unwrap(), 0, 1)),
        Error::NotFound
    );
    // A port serves one connection at a time; the tool connects next.
    drop(guest);
    // The tool refuses the same before sending anything.
    let file = test.machine.dir().join("sector");
    fs::write(&file, [1u8; 512]).unwrap();
    let output = test.vdisk(&[
        "--hv",
        &test.endpoint(1),
        "write",
        "xvda",
        "--from",
        file.to_str().unwrap(),
        "--offset",
        &(size * 512).to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("past its end"));
    test.finish();
}

#[test]
fn the_validator_refuses_unsafe_sharing_and_allows_readers() {
    // The hypervisor's ceiling lets the tool's level decide.
    let test = TestMachine::boot("validator");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "rw"]);
    // `check` asks the hypervisor too: the whole disk strictly contains hda3.
    let output = test.vdisk(&["--hv", &dom0, "check", "phy:hda", "r"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("domain 1"));
    // The whole disk strictly contains hda3: refused at level 0 even read-only.
    let output = test.vdisk(&["--hv", &dom0, "attach", "phy:hda", "xvda", "2", "r"]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("unsafe at safety 0") && message.contains("domain 1"),
        "{message}"
    );
    // At level 1 one writer beside readers is fine, but not a second writer.
    test.vdisk_ok(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdb", "2", "r", "--safety", "1",
    ]);
    let output = test.vdisk(&[
        "--hv", &dom0, "attach", "phy:hda3", "xvdc", "2", "rw", "--safety", "1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    // Readers only share freely at level 0.
    test.vdisk_ok(&["--hv", &dom0, "detach", "xvda", "1"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "r"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda1", "xvdc", "2", "r"]);
    let all: serde_json::Value =
        serde_json::from_str(&test.vdisk_ok(&["--hv", &dom0, "vbds", "all", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    // A guest sees only its own.
    let own: serde_json::Value =
        serde_json::from_str(&test.vdisk_ok(&["--hv", &test.endpoint(2), "vbds", "--json"]))
            .unwrap();
    assert!(own.as_array().unwrap().iter().all(|vbd| vbd["domain"] == 2));
    assert_eq!(
        test.vdisk(&["--hv", &test.endpoint(2), "vbds", "all"])
            .status
            .code(),
        Some(1)
    );
    test.finish();
}

#[test]
fn the_hypervisor_enforces_its_sharing_level_itself() {
    let test = TestMachine::boot("hypervisor-sharing");
    let mut dom0 = test.client(0);
    let hda = DeviceNumber::from_name("hda").unwrap();
    let writable = shared_abi::Mode::READ | shared_abi::Mode::WRITE;
    dom0.create(1, xvda(), writable, shared_abi::Label::EMPTY)
        .unwrap();
    dom0.set_extents(
        1,
        xvda(),
        &[shared_abi::wire::Extent::new(hda, 1000, 100).unwrap()],
        shared_abi::SharingLevel::ReadersOnly,
    )
    .unwrap();
    // A tool that skipped the validator is still refused, atomically.
    dom0.create(2, xvda(), shared_abi::Mode::READ, shared_abi::Label::EMPTY)
        .unwrap();
    assert_eq!(
        refusal(dom0.set_extents(
            2,
            xvda(),
            &[shared_abi::wire::Extent::new(hda, 0, 5000).unwrap()],
            shared_abi::SharingLevel::ReadersOnly,
        )),
        Error::Busy
    );
    assert_eq!(dom0.info(2, xvda()).unwrap().extents, vec![]);
    drop(dom0);
    // VBDs made without vdisk have no record; detach works on the hypervisor alone and
    // creates no database.
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["--hv", &dom0, "detach", "xvda", "1"]);
    let left: serde_json::Value =
        serde_json::from_str(&test.vdisk_ok(&["--hv", &dom0, "vbds", "1", "--json"])).unwrap();
    assert_eq!(left, serde_json::json!([]));
    assert!(!test.database.exists());
    test.finish();
}

#[test]
fn destroying_a_domain_removes_its_vbds_and_a_fresh_one_starts_clean() {
    let test = TestMachine::boot("destroy-domain");
    let dom0 = test.endpoint(0);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "r"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda1", "xvdb", "1", "r"]);
    let mut guest = test.client(1);
    assert_eq!(guest.read(xvda(), 0, 1).unwrap().len(), 512);
    assert_eq!(test.client(0).destroy_domain(1).unwrap(), 2);
    assert_eq!(guest.probe(Some(1)).unwrap().0, vec![]);
    assert_eq!(refusal(guest.read(xvda(), 0, 1)), Error::NotFound);
    assert!(
        test.machine.console().contains("domain 1 destroyed"),
        "{}",
        test.machine.console()
    );
    // The same port now serves a fresh domain 1.
    test.vdisk_ok(&["--hv", &dom0, "detach", "xvda", "1"]);
    test.vdisk_ok(&["--hv", &dom0, "attach", "phy:hda3", "xvda", "1", "r"]);
    assert_eq!(guest.read(xvda(), 0, 1).unwrap().len(), 512);
    drop(guest);
    test.finish();
}

#[test]
fn a_guest_is_told_when_its_vbds_change() {
    let test = TestMachine::boot("change-notice");
    let mut guest = test.client(1);
    let (_, generation) = guest.probe(Some(1)).unwrap();
    test.vdisk_ok(&[
        "--hv",
        &test.endpoint(0),
        "attach",
        "phy:hda3",
        "xvda",
        "1",
        "r",
    ]);
    let notice = guest
        .channel()
        .wait_notice(Duration::from_secs(10))
        .unwrap()
        .expect("a change notice");
    assert_eq!(notice.domain, 1);
    assert!(notice.generation > generation);
    let (vbds, now) = guest.probe(Some(1)).unwrap();
    assert_eq!(vbds.len(), 1);
    assert!(now >= notice.generation);
    // Another domain's change is not announced here.
    test.vdisk_ok(&[
        "--hv",
        &test.endpoint(0),
        "attach",
        "phy:hda1",
        "xvda",
        "2",
        "r",
    ]);
    let mut last = notice;
    while let Some(notice) = guest.channel().wait_notice(Duration::from_secs(2)).unwrap() {
        last = notice;
        assert_eq!(notice.domain, 1);
    }
    assert_eq!(last.domain, 1);
    drop(guest);
    test.finish();
}
