//! How results are printed: JSON shapes derived with serde, the human tables through
//! comfy-table, and every write to standard output checked, so a closed pipe ends the
//! command quietly instead of panicking.

use std::io::Write;

use comfy_table::{presets::NOTHING, CellAlignment, Table};
use host_tools::allocate::merge_adjacent;
use host_tools::database::{PoolPartition, VdState, VirtualDisk};
use host_tools::error::{Error, Result};
use host_tools::serialize_display;
use host_tools::size::format_sectors;
use host_tools::timestamp::rfc3339;
use serde::Serialize;
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;

/// Write `text` to standard output. A reader that has gone away (`vdisk list | head -1`)
/// is an error the caller ends on and `main` keeps quiet about.
pub fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| Error::io("standard output", error))
}

/// Write `value` as one line of JSON.
pub fn emit_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|error| Error::Refused(format!("JSON output: {error}")))?;
    emit(&format!("{text}\n"))
}

/// `{"device": "3:0", "start_sector", "nr_sectors"}`.
#[derive(Serialize)]
pub struct ExtentJson {
    #[serde(serialize_with = "serialize_display")]
    device: DeviceNumber,
    start_sector: u64,
    nr_sectors: u64,
}

impl From<&Extent> for ExtentJson {
    fn from(extent: &Extent) -> ExtentJson {
        ExtentJson {
            device: extent.device(),
            start_sector: extent.start_sector(),
            nr_sectors: extent.nr_sectors(),
        }
    }
}

/// Every extent of a list, as JSON.
pub fn extents_json(extents: &[Extent]) -> Vec<ExtentJson> {
    extents.iter().map(ExtentJson::from).collect()
}

/// `3M in 2 extents`: how much a list of extents maps, in how many.
pub fn extents_summary(extents: &[Extent]) -> String {
    let count = extents.len();
    format!(
        "{} in {count} extent{}",
        format_sectors(extents.iter().map(|extent| extent.nr_sectors()).sum()),
        if count == 1 { "" } else { "s" }
    )
}

/// The `show --json` object; `list --json` leaves out `extents`.
#[derive(Serialize)]
pub struct DiskJson {
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extents: Option<Vec<ExtentJson>>,
    id: i64,
    size_sectors: u64,
    state: VdState,
}

impl DiskJson {
    pub fn new(disk: &VirtualDisk, with_extents: bool) -> DiskJson {
        DiskJson {
            expires_at: disk.expires_at.map(rfc3339),
            extents: with_extents.then(|| extents_json(&merge_adjacent(&disk.extents))),
            id: disk.id.get(),
            size_sectors: disk.size_sectors,
            state: disk.state,
        }
    }
}

/// The `pool --json` object.
#[derive(Serialize)]
pub struct PoolJson<'a> {
    free_sectors: u64,
    partitions: &'a [PoolPartition],
    total_sectors: u64,
}

fn pool_totals(partitions: &[PoolPartition]) -> (u64, u64) {
    let sum = |count: fn(&PoolPartition) -> u64| -> u64 {
        partitions
            .iter()
            .map(|partition| count(partition) * partition.extent_sectors)
            .sum()
    };
    (
        sum(|partition| partition.free_extents),
        sum(|partition| partition.total_extents),
    )
}

impl PoolJson<'_> {
    pub fn new(partitions: &[PoolPartition]) -> PoolJson<'_> {
        let (free_sectors, total_sectors) = pool_totals(partitions);
        PoolJson {
            free_sectors,
            partitions,
            total_sectors,
        }
    }
}

/// A table with one header row, columns two spaces apart and as wide as what they hold,
/// the columns in `right` aligned right (numbers and sizes).
pub fn table(header: &[&str], right: &[usize], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index == last { 0 } else { 2 }));
        if right.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text: String = table
        .trim_fmt()
        .lines()
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
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
        disk.state.as_str(),
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
    let rows = disks
        .iter()
        .map(|disk| {
            vec![
                disk.id.to_string(),
                format_sectors(disk.size_sectors),
                disk.state.as_str().to_owned(),
                expiry_text(disk),
            ]
        })
        .collect();
    table(&["ID", "SIZE", "STATE", "EXPIRES"], &[1], rows)
}

/// The human table of `pool`, with what is free.
pub fn pool_table(partitions: &[PoolPartition]) -> String {
    let rows = partitions
        .iter()
        .map(|partition| {
            vec![
                partition.name.clone(),
                partition.device.to_string(),
                partition.start_sector.to_string(),
                format_sectors(partition.nr_sectors),
                format_sectors(partition.extent_sectors),
                partition.total_extents.to_string(),
                partition.free_extents.to_string(),
            ]
        })
        .collect();
    let (free, total) = pool_totals(partitions);
    format!(
        "{}free {} of {}\n",
        table(
            &["NAME", "DEVICE", "START", "SIZE", "EXTENT", "EXTENTS", "FREE"],
            &[2, 3, 4, 5, 6],
            rows
        ),
        format_sectors(free),
        format_sectors(total)
    )
}
