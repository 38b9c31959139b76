//! `vdisk resize` on partitioned images: growing appends after the extents a disk has,
//! preferring those that follow its last one; shrinking needs --shrink, is refused while a
//! VBD maps the disk, and zeroes what it releases.

mod common;

use common::{extents, partition_starts, Machine, PoolKind};
use shared_abi::DeviceNumber;

fn growing_appends_after_the_last_extent_and_keeps_the_data_in_place(pool: PoolKind) {
    let machine = Machine::on(pool, 64, &[16, 16]);
    let starts = partition_starts(&machine.image());
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["format", "phy:hda2", "--extent-size", "1M"]);
    for size in ["2", "2", "1", "1", "1"] {
        machine.ok(&["create", size]);
    }
    machine.ok(&["delete", "2"]);
    machine.ok(&["delete", "4"]);
    // vd:1 is the first 2M of hda1, vd:2's 2M after it are free, and so is vd:4's lone 1M.
    // A new 1M disk would take that lone extent (the smallest run that fits); growing vd:1
    // takes the one that follows it.
    machine.fill_image(starts[0], 4096, 0x5A);
    machine.fill_image(starts[0] + 4096, 2048, 0xEE);
    let grown = machine.json(&["resize", "1", "3"]);
    assert_eq!(grown["size_sectors"], 6144);
    assert_eq!(grown["state"], "live");
    assert_eq!(extents(&grown), vec![("3:0".to_string(), starts[0], 6144)]);
    assert!(machine
        .read_image(starts[0], 4096)
        .iter()
        .all(|&byte| byte == 0x5A));
    assert!(
        machine
            .read_image(starts[0] + 4096, 2048)
            .iter()
            .all(|&byte| byte == 0),
        "a new extent is zeroed before it joins"
    );
    // Then the last free extent after it, then (past vd:3 to vd:5) the long free run
    // from vd:5's end over the rest of hda1 and on into hda2, which follows it on the disk.
    assert_eq!(starts[1], starts[0] + 16 * 2048);
    let grown = machine.json(&["resize", "1", "20"]);
    assert_eq!(
        extents(&grown),
        vec![
            ("3:0".to_string(), starts[0], 4 * 2048),
            ("3:0".to_string(), starts[0] + 7 * 2048, 16 * 2048),
        ]
    );
    assert_eq!(machine.json(&["show", "1"]), grown);
    assert_eq!(
        machine.database().consistency_problems().unwrap(),
        Vec::<String>::new()
    );
    let before = machine.snapshot();
    machine.fails(
        &["resize", "1", "64"],
        1,
        "resize vd:1 to 64M: grow by 44M: no space (the pool has 10M free)",
    );
    assert_eq!(machine.snapshot(), before);
    assert_eq!(machine.count("SELECT count(*) FROM claims"), 0);
}

fn shrinking_needs_shrink_is_refused_while_mapped_and_zeroes_what_it_releases(pool: PoolKind) {
    let machine = Machine::on(pool, 32, &[16]);
    let starts = partition_starts(&machine.image());
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "4"]);
    machine.fill_image(starts[0], 4 * 2048, 0x77);
    let before = machine.snapshot();
    machine.fails(
        &["resize", "1", "2"],
        1,
        "resize vd:1 to 2M: smaller than its 4M; give --shrink to release the rest",
    );
    machine.record_vd_attachment("1");
    machine.fails(
        &["resize", "1", "2", "--shrink"],
        1,
        &format!("vd:1: still mapped: 3:0 sectors {0}+8192 overlaps domain 1 xvda (rw) at 3:0 sectors {0}+8192 (shared: sectors {0}+8192); detach it first before shrinking it", starts[0]),
    );
    let xvda = DeviceNumber::from_name("xvda").unwrap();
    machine.database().remove_attachment(1, xvda).unwrap();
    assert_eq!(machine.snapshot().1, before.1);
    let shrunk = machine.json(&["resize", "1", "1.5M", "--shrink"]);
    assert_eq!(shrunk["size_sectors"], 4096);
    assert_eq!(extents(&shrunk), vec![("3:0".to_string(), starts[0], 4096)]);
    assert!(machine
        .read_image(starts[0], 4096)
        .iter()
        .all(|&byte| byte == 0x77));
    assert!(
        machine
            .read_image(starts[0] + 4096, 4096)
            .iter()
            .all(|&byte| byte == 0),
        "what a shrink releases is zeroed"
    );
    // Released and zeroed: clean, free, and no claim left.
    assert_eq!(machine.count("SELECT count(*) FROM claims"), 0);
    assert_eq!(
        machine.count(&format!(
            "SELECT count(*) FROM extents WHERE dirty = 0 AND start_sector >= {}",
            starts[0] + 4096
        )),
        2
    );
    assert_eq!(machine.json(&["pool"])["free_sectors"], 14 * 2048);
    assert_eq!(
        machine.database().consistency_problems().unwrap(),
        Vec::<String>::new()
    );
    // The same size is no change.
    assert_eq!(machine.json(&["resize", "1", "2"]), shrunk);
    machine.fails(&["resize", "9", "2"], 1, "vd:9: no such virtual disk");
}

on_both_pools!(
    growing_appends_after_the_last_extent_and_keeps_the_data_in_place,
    shrinking_needs_shrink_is_refused_while_mapped_and_zeroes_what_it_releases,
);
