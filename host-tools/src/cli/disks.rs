//! The subcommands about virtual disks: create, refresh, delete, undelete, list, show.

use clap::Args;
use host_tools::database::{OpenMode, VdState};
use host_tools::duration::{parse_expiry, Expiry};
use host_tools::error::{Error, Result};
use host_tools::lifecycle::{
    create_virtual_disk, delete_virtual_disk, CreateRequest, DeleteRequest,
};
use host_tools::size::parse_size_sectors;
use host_tools::timestamp::now;
use host_tools::uname::VdId;

use super::output::{disk_json, disk_text, disks_table};
use super::Context;

fn size_argument(text: &str) -> std::result::Result<u64, String> {
    parse_size_sectors(text).map_err(|error| error.to_string())
}

fn expiry_argument(text: &str) -> std::result::Result<Expiry, String> {
    parse_expiry(text).map_err(|error| error.to_string())
}

fn id_argument(text: &str) -> std::result::Result<VdId, String> {
    VdId::parse(text).map_err(|error| error.to_string())
}

/// Allocate a virtual disk from the pool and print its id.
///
/// SIZE is a whole number of MiB, or a number with K, M, G or T (binary units); the disk is
/// rounded up to whole extents. Extents are chosen to make few, long runs: if one run of
/// adjacent free extents holds the whole disk, the smallest such run is used (keeping long
/// runs for large disks); otherwise the longest run is taken whole and the rest chosen the
/// same way. Extents that may hold a previous owner's data are always zeroed first;
/// --zero zeros every extent.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk create 512M --expiry 7d --zero")]
pub struct Create {
    /// Size: MiB, or a number with K, M, G or T.
    #[arg(value_parser = size_argument)]
    size: u64,
    /// When it expires: seconds, 0 or never, or 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = expiry_argument, default_value = "never")]
    expiry: Expiry,
    /// Write zeros over all its extents first, with a progress bar.
    #[arg(long)]
    zero: bool,
}

impl Create {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let devices = context.device_source()?;
        let bar = context.progress_bar("zeroing");
        let request = CreateRequest {
            size_sectors: self.size,
            expiry: self.expiry,
            zero_all: self.zero,
            zeroing: context.zeroing,
        };
        let disk = create_virtual_disk(
            &mut database,
            devices.as_ref(),
            &request,
            &mut |written, total| {
                bar.set_length(total);
                bar.set_position(written);
            },
        )?;
        bar.finish_and_clear();
        if context.json {
            println!("{}", disk_json(&disk, true));
        } else {
            println!("{}", disk.id.get());
        }
        Ok(())
    }
}

/// Change the expiry of a live virtual disk (an expired one is refused: use undelete).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk refresh 3 --expiry 2h")]
pub struct Refresh {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// The new expiry, from now: seconds, 0 or never, or 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = expiry_argument, default_value = "never")]
    expiry: Expiry,
}

impl Refresh {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let disk = database.refresh(self.id, self.expiry, now())?;
        print_disk(context, &disk);
        Ok(())
    }
}

/// Expire a virtual disk now; its extents return to the pool.
///
/// Refused while a recorded attachment maps it, or (with --hv) any VBD the hypervisor
/// reports, unless --force; even then its extents stay out of the pool until the
/// attachment is removed.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk delete 3 --wipe")]
pub struct Delete {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// Write zeros over its extents first.
    #[arg(long)]
    wipe: bool,
    /// Delete even though a VBD still maps it.
    #[arg(long)]
    force: bool,
}

impl Delete {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let devices = context.device_source()?;
        let bar = context.progress_bar("wiping");
        // With --hv, every VBD the hypervisor reports counts, not only recorded ones.
        let mut hypervisor = match context.hv {
            Some(_) => Some(super::vbd::hypervisor(context)?),
            None => None,
        };
        let request = DeleteRequest {
            id: self.id,
            force: self.force,
            wipe: self.wipe,
            zeroing: context.zeroing,
            mapped: hypervisor
                .as_mut()
                .map(|hypervisor| hypervisor as &mut dyn host_tools::lifecycle::MappedExtents),
        };
        let disk = delete_virtual_disk(
            &mut database,
            Some(devices.as_ref()),
            request,
            &mut |written, total| {
                bar.set_length(total);
                bar.set_position(written);
            },
        )?;
        bar.finish_and_clear();
        print_disk(context, &disk);
        Ok(())
    }
}

/// Bring back an expired virtual disk, when none of its extents has been reissued.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk undelete 3 --expiry never")]
pub struct Undelete {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// Its new expiry, from now: seconds, 0 or never, or 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = expiry_argument, default_value = "never")]
    expiry: Expiry,
}

impl Undelete {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let disk = database.undelete(self.id, self.expiry, now())?;
        print_disk(context, &disk);
        Ok(())
    }
}

/// List the live virtual disks (with --all, the expired ones too).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk list --all --json")]
pub struct List {
    /// Include expired disks.
    #[arg(long)]
    all: bool,
}

impl List {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::Existing)?;
        let disks = database.virtual_disks(self.all, now())?;
        if context.json {
            let array: Vec<_> = disks.iter().map(|disk| disk_json(disk, false)).collect();
            println!("{}", serde_json::Value::Array(array));
        } else {
            print!("{}", disks_table(&disks));
        }
        Ok(())
    }
}

/// Show one virtual disk: size, state, expiry and extents (in disk order, adjacent ones
/// merged).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk show 3 --json")]
pub struct Show {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
}

impl Show {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::Existing)?;
        let disk = database.virtual_disk(self.id, now())?;
        if disk.state == VdState::Creating {
            return Err(Error::Refused(format!(
                "{}: is still being created",
                disk.id
            )));
        }
        print_disk(context, &disk);
        Ok(())
    }
}

fn print_disk(context: &Context, disk: &host_tools::database::VirtualDisk) {
    if context.json {
        println!("{}", disk_json(disk, true));
    } else {
        print!("{}", disk_text(disk));
    }
}
