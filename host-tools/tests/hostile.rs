//! Hostile devices files and disks: paths that are not disks, two names for one image, a
//! whole disk that carries a partition table, a GPT whose primary header is damaged, and
//! text that really reaches SQL.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::{extents, partition_starts, Machine};
use devices::{DiskIdentity, Region};
use host_tools::database::{AccessMode, AttachmentTarget};
use shared_abi::DeviceNumber;

#[test]
fn a_devices_file_path_that_is_not_a_file_or_block_device_is_refused() {
    let machine = Machine::new(16, &[8]);
    let directory = machine.directory.path().join("disks");
    fs::create_dir(&directory).unwrap();
    machine.write_devices("[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"disks\"\n");
    let message = format!(
        "phy:hda: {}: a directory, not a disk image or block device",
        directory.display()
    );
    machine.fails(&["lookup", "phy:hda"], 1, &message);
    machine.fails(&["format", "phy:hda", "--extent-size", "1M"], 1, &message);
    assert!(!machine.database_path().exists());
}

#[test]
fn two_names_for_one_image_are_refused_by_identity() {
    let machine = Machine::new(16, &[8]);
    let directory = machine.directory.path();
    std::os::unix::fs::symlink(machine.image(), directory.join("link.img")).unwrap();
    fs::hard_link(machine.image(), directory.join("hard.img")).unwrap();
    for other in ["link.img", "hard.img"] {
        machine.write_devices(&format!(
            "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n\
             [[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"{other}\"\n"
        ));
        machine.fails(
            &["lookup", "phy:hdb"],
            1,
            &format!(
                "devices file {}: disks hda and hdb are one disk ({} and {})",
                machine.devices_file().display(),
                directory.join("hda.img").display(),
                directory.join(other).display()
            ),
        );
    }
}

#[test]
fn a_disk_whose_device_number_changed_between_runs_is_refused() {
    let machine = Machine::new(32, &[8, 8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let before = machine.snapshot();
    // The same image under another number would put its bytes in the pool twice.
    machine.write_devices("[[disk]]\nname = \"hda\"\ndevice = \"3:1\"\npath = \"hda.img\"\n");
    machine.fails(
        &["format", "phy:hda2", "--extent-size", "1M"],
        1,
        &format!(
            "phy:hda2: {} is in the pool as device 3:0, not 3:1",
            machine.image().display()
        ),
    );
    // Another image under the pool's number would be zeroed in its place.
    let other = machine.directory.path().join("other.img");
    fs::copy(machine.image(), &other).unwrap();
    machine.write_devices("[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"other.img\"\n");
    let moved = format!(
        "device 3:0 is {} in the pool, not {}",
        machine.image().display(),
        other.display()
    );
    machine.fails(
        &["format", "phy:hda2", "--extent-size", "1M"],
        1,
        &format!("phy:hda2: {moved}"),
    );
    machine.fails(&["create", "1", "--zero"], 1, &moved);
    assert_eq!(machine.snapshot(), before);
}

#[test]
fn formatting_a_partitioned_whole_disk_needs_force() {
    for (label, kind) in [("dos", "an MBR"), ("gpt", "a GPT")] {
        let machine = Machine::with_label(label, 16, &[8]);
        machine.fails(
            &["format", "phy:hda", "--extent-size", "1M"],
            1,
            &format!("phy:hda: carries {kind} partition table, which the pool's first create would zero; give --force if that is meant"),
        );
        assert!(!machine.database_path().exists());
        let partition = machine.json(&["format", "phy:hda", "--extent-size", "1M", "--force"]);
        assert_eq!(partition["total_extents"], 16);
    }
    // A disk without a table needs no force.
    let machine = Machine::new(16, &[]);
    fs::write(machine.image(), vec![0u8; 16 << 20]).unwrap();
    assert_eq!(
        machine.json(&["format", "phy:hda", "--extent-size", "1M"])["total_extents"],
        16
    );
}

#[test]
fn a_gpt_with_a_damaged_primary_header_is_read_from_its_backup() {
    let machine = Machine::with_label("gpt", 32, &[8, 8]);
    let starts = partition_starts(&machine.image());
    let image = fs::OpenOptions::new()
        .write(true)
        .open(machine.image())
        .unwrap();
    // A byte of the primary header's disk GUID: its checksum no longer matches.
    image.write_all_at(&[0x42], 512 + 60).unwrap();
    drop(image);
    let run = machine.run(&["lookup", "phy:hda2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("3:0 {} 16384\n", starts[1]));
    assert_eq!(
        run.stderr,
        format!(
            "vdisk: {}: the primary GPT header is damaged (GPT header checksum mismatch); using the backup at sector {}\n",
            machine.image().display(),
            32 * 2048 - 1
        )
    );
    // Both copies damaged: refused, naming the primary's fault.
    let image = fs::OpenOptions::new()
        .write(true)
        .open(machine.image())
        .unwrap();
    image
        .write_all_at(&[0x42], (32 * 2048 - 1) * 512 + 60)
        .unwrap();
    drop(image);
    machine.fails(
        &["lookup", "phy:hda2"],
        1,
        &format!(
            "phy:hda2: {}: corrupt partition table: GPT header checksum mismatch; the backup: GPT header checksum mismatch",
            machine.image().display()
        ),
    );
}

#[test]
fn seed_defect_1_hostile_text_that_reaches_sql_is_bound() {
    let machine = Machine::new(32, &[8, 8]);
    // A path is the one text of a devices file that is not checked against an alphabet.
    let hostile = "it's'); DROP TABLE extents; --.img";
    fs::rename(machine.image(), machine.directory.path().join(hostile)).unwrap();
    machine.write_devices(&format!(
        "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"{hostile}\"\n"
    ));
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    let path: String = machine
        .sqlite()
        .query_row("SELECT path FROM pool_disks", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        path,
        machine.directory.path().join(hostile).display().to_string()
    );
    assert_eq!(machine.count("SELECT count(*) FROM extents"), 8);
    // Names and unames reach SQL through the library unchecked: bound, they are kept as
    // they are and harm nothing.
    let mut database = machine.database();
    let name = "x'); DELETE FROM extents; --";
    let region = Region {
        name: name.into(),
        disk_device: DeviceNumber::new(3, 64).unwrap(),
        start_sector: 0,
        nr_sectors: 2048,
        disk: DiskIdentity {
            path: "/dev/null/not-a-disk".into(),
            identity: "file 0:1".into(),
        },
        partition_table: None,
        warnings: Vec::new(),
        shared: false,
    };
    database.format(&region, 2048).unwrap();
    database
        .record_attachment(
            &AttachmentTarget::Physical {
                name: name.into(),
                extents: vec![region.extent().unwrap()],
            },
            1,
            DeviceNumber::from_name("xvda").unwrap(),
            AccessMode::ReadOnly,
            shared_abi::SharingLevel::ReadersOnly,
            1,
        )
        .unwrap();
    drop(database);
    assert_eq!(machine.count("SELECT count(*) FROM extents"), 9);
    let pool = machine.json(&["pool"]);
    assert_eq!(pool["partitions"][1]["name"], name);
    let attachments = machine.database().attachments().unwrap();
    assert_eq!(attachments[0].uname, format!("phy:{name}"));
    let disk = machine.json(&["create", "1"]);
    assert_eq!(extents(&disk).len(), 1);
}
