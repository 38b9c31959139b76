//! The free pool: partitions (or whole disks) split into extents, which disk each device
//! number stands for, and which extents are free.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shared_abi::DeviceNumber;

use super::{device_number, extent_from_row, Database};
use crate::allocate::FreeExtent;
use crate::error::{Error, Result};
use crate::size::format_sectors;
use devices::{DiskIdentity, Region};

/// A partition (or whole disk) in the pool, with its occupancy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolPartition {
    pub name: String,
    #[serde(serialize_with = "crate::serialize_display")]
    pub device: DeviceNumber,
    pub start_sector: u64,
    pub nr_sectors: u64,
    pub extent_sectors: u64,
    pub total_extents: u64,
    pub free_extents: u64,
}

/// An extent `e` is taken at `?1` (now) when a live disk or a disk being created owns it,
/// an unexpired claim holds it, or a recorded attachment overlaps it: a deleted disk that a
/// VBD still maps keeps its extents out of the pool (seed defect 8).
pub(super) const TAKEN: &str = "(e.id IN (SELECT m.extent_id FROM virtual_disk_extents m
                               JOIN virtual_disks v ON v.id = m.virtual_disk_id
                               WHERE v.expires_at IS NULL OR v.expires_at > ?1)
        OR e.id IN (SELECT c.extent_id FROM claim_extents c
                    JOIN claims ON claims.id = c.claim_id WHERE claims.expires_at > ?1)
        OR EXISTS (SELECT 1 FROM attachment_extents a
                   WHERE a.device = e.device
                     AND a.start_sector < e.start_sector + e.nr_sectors
                     AND e.start_sector < a.start_sector + a.nr_sectors))";

impl Database {
    /// Add `region` to the free pool, split into extents of `extent_sectors` (a tail shorter
    /// than one extent is left out). Refused when it overlaps anything already in the pool,
    /// or when its disk is in the pool under another number or its number names another
    /// disk there.
    pub fn format(&mut self, region: &Region, extent_sectors: u64) -> Result<PoolPartition> {
        let end = region
            .start_sector
            .checked_add(region.nr_sectors)
            .ok_or_else(|| {
                Error::Refused(format!("phy:{}: sector range overflows", region.name))
            })?;
        if self.store.shared() && !region.shared {
            // Another host would find another disk, or nothing, under this number.
            return Err(Error::Refused(format!(
                "phy:{}: not a shared disk (shared = true in the devices file), and pool {} is shared by many hosts",
                region.name,
                self.url()
            )));
        }
        self.immediate(|transaction, now| {
            record_disk(transaction, region)?;
            let overlapping: Option<(String, u64, u64)> = transaction
                .query_row(
                    "SELECT name, start_sector, nr_sectors FROM pool_partitions
                     WHERE device = ?1 AND start_sector < ?3 AND ?2 < start_sector + nr_sectors
                     ORDER BY start_sector LIMIT 1",
                    params![region.disk_device.raw(), region.start_sector, end],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            if let Some((name, start, count)) = overlapping {
                return Err(Error::Refused(format!(
                    "phy:{}: sectors {}+{} of {} overlap phy:{name} (sectors {start}+{count}), already in the pool",
                    region.name, region.start_sector, region.nr_sectors, region.disk_device
                )));
            }
            if region.nr_sectors < extent_sectors {
                return Err(Error::Refused(format!(
                    "phy:{}: its {} are smaller than one extent of {}",
                    region.name,
                    format_sectors(region.nr_sectors),
                    format_sectors(extent_sectors)
                )));
            }
            transaction.execute(
                "INSERT INTO pool_partitions (name, device, start_sector, nr_sectors, extent_sectors, formatted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![region.name, region.disk_device.raw(), region.start_sector, region.nr_sectors, extent_sectors, now],
            )?;
            let partition_id = transaction.last_insert_rowid();
            let mut insert = transaction.prepare(
                "INSERT INTO extents (partition_id, device, start_sector, nr_sectors, dirty) VALUES (?1, ?2, ?3, ?4, 1)",
            )?;
            let count = region.nr_sectors / extent_sectors;
            for index in 0..count {
                insert.execute(params![
                    partition_id,
                    region.disk_device.raw(),
                    region.start_sector + index * extent_sectors,
                    extent_sectors
                ])?;
            }
            Ok(PoolPartition {
                name: region.name.clone(),
                device: region.disk_device,
                start_sector: region.start_sector,
                nr_sectors: region.nr_sectors,
                extent_sectors,
                total_extents: count,
                free_extents: count,
            })
        })
    }

    /// Every partition of the pool with its free extents, in disk order.
    pub fn pool(&self) -> Result<Vec<PoolPartition>> {
        self.read(|connection, now| {
            let mut statement = connection.prepare(&format!(
                "SELECT p.name, p.device, p.start_sector, p.nr_sectors, p.extent_sectors,
                        (SELECT count(*) FROM extents e WHERE e.partition_id = p.id),
                        (SELECT count(*) FROM extents e WHERE e.partition_id = p.id AND NOT {TAKEN})
                 FROM pool_partitions p ORDER BY p.device, p.start_sector"
            ))?;
            let partitions = statement
                .query_map(params![now], |row| {
                    Ok(PoolPartition {
                        name: row.get(0)?,
                        device: device_number(row.get(1)?)?,
                        start_sector: row.get(2)?,
                        nr_sectors: row.get(3)?,
                        extent_sectors: row.get(4)?,
                        total_extents: row.get(5)?,
                        free_extents: row.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(partitions)
        })
    }

    /// The disk each device number of the pool stands for, as `format` recorded it.
    pub fn pool_disks(&self) -> Result<Vec<(DeviceNumber, DiskIdentity)>> {
        self.read(|connection, _| pool_disks(connection))
    }
}

fn pool_disks(connection: &Connection) -> Result<Vec<(DeviceNumber, DiskIdentity)>> {
    let mut statement =
        connection.prepare("SELECT device, identity, path FROM pool_disks ORDER BY device")?;
    let disks = statement
        .query_map([], |row| {
            Ok((
                device_number(row.get(0)?)?,
                DiskIdentity {
                    identity: row.get(1)?,
                    path: row.get::<_, String>(2)?.into(),
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(disks)
}

/// Refuse a disk whose number the pool knows as another disk, or which the pool knows
/// under another number; otherwise remember which disk the number stands for.
fn record_disk(transaction: &Transaction<'_>, region: &Region) -> Result<()> {
    let disk = &region.disk;
    for (device, known) in pool_disks(transaction)? {
        if device == region.disk_device && known.identity != disk.identity {
            return Err(Error::Refused(format!(
                "phy:{}: {}",
                region.name,
                moved(device, &known, disk)
            )));
        }
        if device != region.disk_device && known.identity == disk.identity {
            return Err(Error::Refused(format!(
                "phy:{}: {} is in the pool as device {device}, not {}",
                region.name,
                disk.path.display(),
                region.disk_device
            )));
        }
    }
    transaction.execute(
        "INSERT OR IGNORE INTO pool_disks (device, identity, path) VALUES (?1, ?2, ?3)",
        params![
            region.disk_device.raw(),
            disk.identity,
            disk.path.display().to_string()
        ],
    )?;
    Ok(())
}

/// The message for a device number that now names another disk than the pool's.
pub fn moved(device: DeviceNumber, known: &DiskIdentity, now: &DiskIdentity) -> String {
    format!(
        "device {device} is {} in the pool, not {}",
        known.path.display(),
        now.path.display()
    )
}

/// The free extents at `now`, in disk order.
pub(super) fn free_extents(transaction: &Transaction<'_>, now: i64) -> Result<Vec<FreeExtent>> {
    let mut statement = transaction.prepare(&format!(
        "SELECT e.id, e.device, e.start_sector, e.nr_sectors, e.dirty FROM extents e WHERE NOT {TAKEN}"
    ))?;
    let mut free = statement
        .query_map(params![now], |row| {
            Ok(FreeExtent {
                id: row.get(0)?,
                extent: extent_from_row(row, 1)?,
                dirty: row.get::<_, i64>(4)? != 0,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Sorted here rather than by ORDER BY: walking the (device, start_sector) index costs a
    // second B-tree lookup per extent to fetch its row, sorting costs far less.
    free.sort_unstable_by_key(|candidate| {
        (candidate.extent.device(), candidate.extent.start_sector())
    });
    Ok(free)
}
