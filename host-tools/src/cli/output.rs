//! How results are printed: JSON in the shapes scripts rely on, and the human tables.

use host_tools::allocate::merge_adjacent;
use host_tools::database::{PoolPartition, VdState, VirtualDisk};
use host_tools::size::format_sectors;
use host_tools::timestamp::rfc3339;
use serde_json::{json, Value};
use shared_abi::wire::Extent;

/// `{"device": "3:0", "start_sector", "nr_sectors"}` per extent.
pub fn extents_json(extents: &[Extent]) -> Value {
    Value::Array(
        extents
            .iter()
            .map(|extent| {
                json!({
                    "device": extent.device().to_string(),
                    "start_sector": extent.start_sector(),
                    "nr_sectors": extent.nr_sectors(),
                })
            })
            .collect(),
    )
}

fn state_word(disk: &VirtualDisk) -> &'static str {
    // A disk whose create died is, to a script, simply expired.
    match disk.state {
        VdState::Live => "live",
        VdState::Creating => "creating",
        VdState::Expired | VdState::Abandoned => "expired",
    }
}

/// The `show --json` object; `list --json` leaves out `extents`.
pub fn disk_json(disk: &VirtualDisk, with_extents: bool) -> Value {
    let mut object = json!({
        "id": disk.id.get(),
        "size_sectors": disk.size_sectors,
        "state": state_word(disk),
        "expires_at": disk.expires_at.map(rfc3339),
    });
    if with_extents {
        object["extents"] = extents_json(&merge_adjacent(&disk.extents));
    }
    object
}

fn expiry_text(disk: &VirtualDisk) -> String {
    disk.expires_at
        .map(rfc3339)
        .unwrap_or_else(|| "never".into())
}

/// The human form of one disk with its extents.
pub fn disk_text(disk: &VirtualDisk) -> String {
    let mut text = format!(
        "{}\nsize     {} ({} sectors)\nstate    {}\nexpires  {}\nextents\n",
        disk.id,
        format_sectors(disk.size_sectors),
        disk.size_sectors,
        state_word(disk),
        expiry_text(disk)
    );
    for extent in merge_adjacent(&disk.extents) {
        text.push_str(&format!(
            "  {} {} {}\n",
            extent.device(),
            extent.start_sector(),
            extent.nr_sectors()
        ));
    }
    text
}

/// The human table of `list`.
pub fn disks_table(disks: &[VirtualDisk]) -> String {
    let mut text = format!("{:<8} {:>8} {:<8} {}\n", "ID", "SIZE", "STATE", "EXPIRES");
    for disk in disks {
        text.push_str(&format!(
            "{:<8} {:>8} {:<8} {}\n",
            disk.id.to_string(),
            format_sectors(disk.size_sectors),
            state_word(disk),
            expiry_text(disk)
        ));
    }
    text
}

/// `{"name", "device", "start_sector", "nr_sectors", "extent_sectors", "total_extents",
/// "free_extents"}`.
pub fn partition_json(partition: &PoolPartition) -> Value {
    json!({
        "name": partition.name,
        "device": partition.device.to_string(),
        "start_sector": partition.start_sector,
        "nr_sectors": partition.nr_sectors,
        "extent_sectors": partition.extent_sectors,
        "total_extents": partition.total_extents,
        "free_extents": partition.free_extents,
    })
}

/// The `pool --json` object.
pub fn pool_json(partitions: &[PoolPartition]) -> Value {
    let total: u64 = partitions
        .iter()
        .map(|p| p.total_extents * p.extent_sectors)
        .sum();
    let free: u64 = partitions
        .iter()
        .map(|p| p.free_extents * p.extent_sectors)
        .sum();
    json!({
        "total_sectors": total,
        "free_sectors": free,
        "partitions": partitions.iter().map(partition_json).collect::<Vec<_>>(),
    })
}

/// The human table of `pool`.
pub fn pool_table(partitions: &[PoolPartition]) -> String {
    let mut text = format!(
        "{:<12} {:<8} {:>12} {:>8} {:>8} {:>8} {:>8}\n",
        "NAME", "DEVICE", "START", "SIZE", "EXTENT", "EXTENTS", "FREE"
    );
    for partition in partitions {
        text.push_str(&format!(
            "{:<12} {:<8} {:>12} {:>8} {:>8} {:>8} {:>8}\n",
            partition.name,
            partition.device.to_string(),
            partition.start_sector,
            format_sectors(partition.nr_sectors),
            format_sectors(partition.extent_sectors),
            partition.total_extents,
            partition.free_extents
        ));
    }
    let free: u64 = partitions
        .iter()
        .map(|p| p.free_extents * p.extent_sectors)
        .sum();
    let total: u64 = partitions
        .iter()
        .map(|p| p.total_extents * p.extent_sectors)
        .sum();
    text.push_str(&format!(
        "free {} of {}\n",
        format_sectors(free),
        format_sectors(total)
    ));
    text
}
