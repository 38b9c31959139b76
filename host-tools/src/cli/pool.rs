//! The subcommands about the pool and physical names: format, pool, lookup, check.

use std::path::Path;

use clap::Args;
use host_tools::allocate::merge_adjacent;
use host_tools::database::{AccessMode, Database, OpenMode};
use host_tools::devices::{DeviceSource, Sysfs};
use host_tools::error::{Error, Result};
use host_tools::lifecycle::MappedExtents;
use host_tools::mounts::read_mount_users;
use host_tools::size::{format_sectors, parse_size};
use host_tools::timestamp::now;
use host_tools::uname::Uname;
use host_tools::validator::{describe_extent, validate, User};
use serde_json::json;
use shared_abi::wire::Extent;
use shared_abi::{SharingLevel, SECTOR_SIZE};

use super::output::{extents_json, partition_json, pool_json, pool_table};
use super::Context;

const MOUNTS: &str = "/proc/mounts";

fn extent_size_argument(text: &str) -> std::result::Result<u64, String> {
    let bytes = parse_size(text).map_err(|error| error.to_string())?;
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
/// Refused when it overlaps a range already in the pool or a filesystem dom0 has mounted.
/// Extents are numbered by absolute sectors of the whole disk.
#[derive(Args)]
#[command(
    after_help = "Example:\n  vdisk --devices machine.toml format phy:hda2 --extent-size 64M"
)]
pub struct Format {
    /// The disk or partition: phy:NAME (hda2, sda1, nvme0n1p3).
    #[arg(value_parser = phy_argument)]
    name: String,
    /// Extent size: a power of two of at least 1M.
    #[arg(long, value_parser = extent_size_argument, default_value = "64M")]
    extent_size: u64,
}

impl Format {
    pub fn run(self, context: &Context) -> Result<()> {
        let devices = context.device_source()?;
        let region = devices.resolve(&self.name)?;
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
        let partition = database.format(&region, self.extent_size, now())?;
        if context.json {
            println!("{}", partition_json(&partition));
        } else {
            println!(
                "phy:{}: {} sectors {}+{} added as {} extents of {}",
                partition.name,
                partition.device,
                partition.start_sector,
                partition.nr_sectors,
                partition.total_extents,
                format_sectors(partition.extent_sectors)
            );
        }
        Ok(())
    }
}

/// Show the pool: each partition with its extents, and what is free.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk pool --json")]
pub struct Pool {}

impl Pool {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::Existing)?;
        let partitions = database.pool(now())?;
        if context.json {
            println!("{}", pool_json(&partitions));
        } else {
            print!("{}", pool_table(&partitions));
        }
        Ok(())
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
            Ok(merge_adjacent(
                &database.live_virtual_disk(*id, now())?.extents,
            ))
        }
        Uname::Physical(name) => Ok(vec![context.device_source()?.resolve(name)?.extent()?]),
    }
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
            Uname::VirtualDisk(_) => Some(context.database(OpenMode::Existing)?),
            Uname::Physical(_) => None,
        };
        let extents = extents_of(context, database.as_ref(), &self.uname)?;
        if context.json {
            let size: u64 = extents.iter().map(|extent| extent.nr_sectors()).sum();
            println!(
                "{}",
                json!({"uname": self.uname.to_string(), "size_sectors": size, "extents": extents_json(&extents)})
            );
        } else {
            for extent in extents {
                println!(
                    "{} {} {}",
                    extent.device(),
                    extent.start_sector(),
                    extent.nr_sectors()
                );
            }
        }
        Ok(())
    }
}

/// Check whether a VBD of vd:ID or phy:NAME in mode r or rw would be safe, against the
/// recorded attachments (with --hv, every VBD the hypervisor reports instead) and dom0's
/// mounts.
///
/// Safety levels: 0 allows sharing an extent only when everyone reads it only; 1 also
/// allows one writer with readers; 2 allows anything. Exits 1 when unsafe, after naming
/// each conflict.
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
        let database = context.database(OpenMode::Existing)?;
        let extents = extents_of(context, Some(&database), &self.uname)?;
        // The hypervisor knows every VBD; the database only those vdisk attached.
        let mut users: Vec<User> = match context.hv {
            Some(_) => super::vbd::hypervisor(context)?.mapped_users()?,
            None => database
                .attachments()?
                .into_iter()
                .map(|attachment| {
                    User::vbd(
                        attachment.domain,
                        attachment.vdevice,
                        attachment.mode.is_writable(),
                        attachment.extents,
                    )
                })
                .collect(),
        };
        users.extend(dom0_mount_users(context)?);
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
            let conflicts_json: Vec<_> = conflicts
                .iter()
                .zip(&explanations)
                .map(|(conflict, explanation)| {
                    json!({
                        "extent": extents_json(&[conflict.new_extent])[0],
                        "other_extent": extents_json(&[conflict.other_extent])[0],
                        "explanation": explanation,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({"uname": self.uname.to_string(), "mode": self.mode.as_str(), "safety": self.safety.number(), "safe": conflicts.is_empty(), "conflicts": conflicts_json})
            );
        } else if conflicts.is_empty() {
            println!(
                "{what}: safe ({} checked)",
                extents
                    .iter()
                    .map(describe_extent)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
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

/// What dom0 has mounted, as validator users.
pub(super) fn dom0_mount_users(context: &Context) -> Result<Vec<User>> {
    let devices: Box<dyn DeviceSource> = context.device_source()?;
    read_mount_users(Path::new(MOUNTS), &Sysfs::default(), devices.as_ref())
}
