//! The subcommands about the pool and physical names: format, pool, lookup, check.

use std::path::Path;

use clap::Args;
use devices::{DeviceSource, Sysfs};
use host_tools::allocate::merge_adjacent;
use host_tools::database::{AccessMode, Database, OpenMode};
use host_tools::error::{Error, Result};
use host_tools::mounts::read_mount_users;
use host_tools::size::{format_sectors, parse_size, DISK_SIZE};
use host_tools::uname::{Uname, VdId};
use host_tools::validator::{describe_extent, validate, User};
use serde::Serialize;
use shared_abi::wire::Extent;
use shared_abi::{SharingLevel, SECTOR_SIZE};

use super::output::{emit, emit_json, extents_json, pool_table, ExtentJson, PoolJson};
use super::Context;

const MOUNTS: &str = "/proc/mounts";

fn extent_size_argument(text: &str) -> std::result::Result<u64, String> {
    let bytes = parse_size(text, DISK_SIZE).map_err(|error| error.to_string())?;
    if !bytes.is_power_of_two() || bytes < 1 << 20 {
        return Err(format!(
            "extent size {text:?}: must be a power of two of at least 1M"
        ));
    }
    Ok(bytes / SECTOR_SIZE)
}

pub(super) fn uname_argument(text: &str) -> std::result::Result<Uname, String> {
    Uname::parse(text).map_err(|error| error.to_string())
}

fn phy_argument(text: &str) -> std::result::Result<String, String> {
    match Uname::parse(text).map_err(|error| error.to_string())? {
        Uname::Physical(name) => Ok(name),
        Uname::VirtualDisk(_) => Err(format!("{text:?}: expected phy:NAME")),
    }
}

pub(super) fn mode_argument(text: &str) -> std::result::Result<AccessMode, String> {
    AccessMode::parse(text).map_err(|error| error.to_string())
}

pub(super) fn safety_argument(text: &str) -> std::result::Result<SharingLevel, String> {
    text.parse()
        .map_err(|_| format!("safety level {text:?}: expected 0, 1 or 2"))
}

/// Add a disk or partition to the free pool, split into extents.
///
/// Refused when it overlaps a range already in the pool or a filesystem dom0 has mounted,
/// and, for a whole disk that carries a partition table, unless --force: the pool's first
/// create would zero the table. Extents are numbered by absolute sectors of the whole disk.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk --devices machine.toml format phy:hda2 --extent-size 64M\n  vdisk format phy:sdb --force"
)]
pub struct Format {
    /// The disk or partition: phy:NAME (hda2, sda1, nvme0n1p3).
    #[arg(value_parser = phy_argument)]
    name: String,
    /// Extent size: a power of two of at least 1M.
    #[arg(long, value_parser = extent_size_argument, default_value = "64M")]
    extent_size: u64,
    /// Format a whole disk even though it carries a partition table.
    #[arg(long)]
    force: bool,
}

impl Format {
    pub fn run(self, context: &Context) -> Result<()> {
        let devices = context.device_source()?;
        let region = context.resolve(devices.as_ref(), &self.name)?;
        if let (Some(table), false) = (region.partition_table, self.force) {
            return Err(Error::Refused(format!(
                "phy:{}: carries {table} partition table, which the pool's first create would zero; give --force if that is meant",
                self.name
            )));
        }
        let mounts = read_mount_users(Path::new(MOUNTS), &Sysfs::default(), devices.as_ref())?;
        let conflicts = validate(
            &[region.extent()?],
            true,
            &mounts,
            SharingLevel::ReadersOnly,
        );
        if let Some(conflict) = conflicts.first() {
            return Err(Error::Refused(format!(
                "phy:{}: in use: {}",
                self.name,
                conflict.explain(&mounts)
            )));
        }
        let mut database = context.database(OpenMode::CreateIfMissing)?;
        let partition = database.format(&region, self.extent_size)?;
        if context.json {
            return emit_json(&partition);
        }
        let count = partition.total_extents;
        emit(&format!(
            "phy:{}: {} sectors {}+{} added as {count} extent{} of {}\n",
            partition.name,
            partition.device,
            partition.start_sector,
            partition.nr_sectors,
            if count == 1 { "" } else { "s" },
            format_sectors(partition.extent_sectors)
        ))
    }
}

/// Show the pool: each partition with its extents, and what is free.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk pool --json")]
pub struct Pool {}

impl Pool {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::ReadOnly)?;
        let partitions = database.pool()?;
        if context.json {
            emit_json(&PoolJson::new(&partitions))
        } else {
            emit(&pool_table(&partitions))
        }
    }
}

/// The extents a vd:ID or phy:NAME stands for.
pub(super) fn extents_of(
    context: &Context,
    database: Option<&Database>,
    uname: &Uname,
) -> Result<Vec<Extent>> {
    match uname {
        Uname::VirtualDisk(id) => {
            let database =
                database.ok_or_else(|| Error::Usage("vd:ID needs the database".into()))?;
            Ok(merge_adjacent(&database.live_virtual_disk(*id)?.extents))
        }
        Uname::Physical(name) => Ok(vec![context
            .resolve(context.device_source()?.as_ref(), name)?
            .extent()?]),
    }
}

#[derive(Serialize)]
struct LookupJson {
    uname: String,
    size_sectors: u64,
    extents: Vec<ExtentJson>,
}

/// Print the extents that vd:ID or phy:NAME stands for, one `device start sectors` a line.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk lookup vd:3\n  vdisk --devices machine.toml lookup phy:hda2 --json"
)]
pub struct Lookup {
    /// vd:ID or phy:NAME.
    #[arg(value_parser = uname_argument)]
    uname: Uname,
}

impl Lookup {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = match self.uname {
            Uname::VirtualDisk(_) => Some(context.database(OpenMode::ReadOnly)?),
            Uname::Physical(_) => None,
        };
        let extents = extents_of(context, database.as_ref(), &self.uname)?;
        if context.json {
            return emit_json(&LookupJson {
                uname: self.uname.to_string(),
                size_sectors: extents.iter().map(|extent| extent.nr_sectors()).sum(),
                extents: extents_json(&extents),
            });
        }
        let lines: String = extents
            .iter()
            .map(|extent| {
                format!(
                    "{} {} {}\n",
                    extent.device(),
                    extent.start_sector(),
                    extent.nr_sectors()
                )
            })
            .collect();
        emit(&lines)
    }
}

#[derive(Serialize)]
struct ConflictJson {
    extent: ExtentJson,
    other_extent: ExtentJson,
    explanation: String,
}

#[derive(Serialize)]
struct CheckJson {
    uname: String,
    mode: AccessMode,
    safety: u32,
    safe: bool,
    conflicts: Vec<ConflictJson>,
}

/// Check whether a VBD of vd:ID or phy:NAME in mode r or rw would be safe, against every
/// user of the extents: the recorded attachments (with --hv, every VBD the hypervisor
/// reports instead), the virtual disks that hold extents, and dom0's mounts.
///
/// Safety levels: 0 allows sharing an extent only when everyone reads it only; 1 also
/// allows one writer with readers; 2 allows anything. A virtual disk's tenant counts as a
/// writer. Exits 1 when unsafe, after naming each conflict.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk check vd:3 rw --safety 1")]
pub struct Check {
    /// vd:ID or phy:NAME.
    #[arg(value_parser = uname_argument)]
    uname: Uname,
    /// r or rw.
    #[arg(value_parser = mode_argument)]
    mode: AccessMode,
    /// The sharing level: 0, 1 or 2.
    #[arg(long, value_parser = safety_argument, default_value = "0")]
    safety: SharingLevel,
}

impl Check {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::ReadOnly)?;
        let extents = extents_of(context, Some(&database), &self.uname)?;
        let mut hypervisor = context.optional_hypervisor()?;
        let users = users_of(context, &database, hypervisor.as_mut(), &self.uname)?;
        let conflicts = validate(&extents, self.mode.is_writable(), &users, self.safety);
        let explanations: Vec<String> = conflicts
            .iter()
            .map(|conflict| conflict.explain(&users))
            .collect();
        let what = format!(
            "{} {} at safety {}",
            self.uname,
            self.mode.as_str(),
            self.safety.number()
        );
        if context.json {
            emit_json(&CheckJson {
                uname: self.uname.to_string(),
                mode: self.mode,
                safety: self.safety.number(),
                safe: conflicts.is_empty(),
                conflicts: conflicts
                    .iter()
                    .zip(&explanations)
                    .map(|(conflict, explanation)| ConflictJson {
                        extent: (&conflict.new_extent).into(),
                        other_extent: (&conflict.other_extent).into(),
                        explanation: explanation.clone(),
                    })
                    .collect(),
            })?;
        } else if conflicts.is_empty() {
            emit(&format!(
                "{what}: safe ({} checked)\n",
                extents
                    .iter()
                    .map(describe_extent)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "{what}: unsafe: {}",
                explanations.join("; ")
            )))
        }
    }
}

/// Every user a new VBD of `uname` must be checked against: what the one reconciliation
/// says maps extents, every disk that holds extents but the one `uname` names, and dom0's
/// mounts.
pub(super) fn users_of(
    context: &Context,
    database: &Database,
    hypervisor: Option<&mut host_tools::hypervisor::Hypervisor>,
    uname: &Uname,
) -> Result<Vec<User>> {
    let itself: Option<VdId> = match uname {
        Uname::VirtualDisk(id) => Some(*id),
        Uname::Physical(_) => None,
    };
    let mut users = context.reconcile(Some(database), hypervisor, None)?.users();
    users.extend(database.owners(itself)?.into_iter().map(User::owner));
    users.extend(mount_users(context)?);
    Ok(users)
}

/// dom0's mounted filesystems, as users of the extents they sit on.
pub(super) fn mount_users(context: &Context) -> Result<Vec<User>> {
    let devices: Box<dyn DeviceSource> = context.device_source()?;
    read_mount_users(Path::new(MOUNTS), &Sysfs::default(), devices.as_ref())
}
