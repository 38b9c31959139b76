//! The subcommands about virtual disks: create, refresh, delete, undelete, list, show,
//! resize.

use clap::Args;
use host_tools::database::{OpenMode, VirtualDisk};
use host_tools::duration::{parse_expiry, Expiry};
use host_tools::error::Result;
use host_tools::lifecycle::{
    create_virtual_disk, delete_virtual_disk, resize_virtual_disk, CreateRequest, DeleteRequest,
    ResizeRequest,
};
use host_tools::size::parse_size_sectors;
use host_tools::uname::VdId;
use indicatif::ProgressBar;

use super::output::{disk_text, disks_table, emit, emit_json, DiskJson};
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

/// Progress reported to `bar`.
fn to_bar(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    |written, total| {
        bar.set_length(total);
        bar.set_position(written);
    }
}

/// Allocate a virtual disk from the pool and print its id.
///
/// SIZE is a number of MiB, or a number with K, M, G or T (binary units, fractions
/// allowed); the disk is rounded up to whole extents. Extents are chosen to make few, long
/// runs: if one run of adjacent free extents holds the whole disk, the smallest such run is
/// used (keeping long runs for large disks); otherwise the longest run is taken whole and
/// the rest chosen the same way. Extents that may hold a previous owner's data are always
/// zeroed first; --zero zeros every extent.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk create 512M --expiry 7d --zero")]
pub struct Create {
    /// Size: MiB, or a number with K, M, G or T.
    #[arg(value_parser = size_argument)]
    size: u64,
    /// When it expires: seconds, 0 or never, or 30s, 10m, 2h, 7d, 2w.
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
        let disk =
            create_virtual_disk(&mut database, devices.as_ref(), &request, &mut to_bar(&bar))?;
        bar.finish_and_clear();
        if context.json {
            emit_json(&DiskJson::new(&disk, true))
        } else {
            emit(&format!("{}\n", disk.id.get()))
        }
    }
}

/// Change the expiry of a live virtual disk (an expired one is refused: use undelete).
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk refresh 3 --expiry 2h\n  vdisk refresh 3 --expiry never"
)]
pub struct Refresh {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// The new expiry, from now: seconds, 0 or never, or 30s, 10m, 2h, 7d, 2w.
    #[arg(long, value_parser = expiry_argument)]
    expiry: Expiry,
}

impl Refresh {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let disk = database.refresh(self.id, self.expiry)?;
        print_disk(context, &disk)
    }
}

/// Expire a virtual disk now; its extents return to the pool.
///
/// Refused while a recorded attachment maps it, or (with --hv) any VBD the hypervisor
/// reports, unless --force; even then its extents stay out of the pool until the
/// attachment is removed. With --wipe its extents stay claimed while they are zeroed, so
/// nothing can take or bring them back until the wipe is done.
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
        let mut hypervisor = context.optional_hypervisor()?;
        let users = context
            .reconcile(Some(&database), hypervisor.as_mut(), None)?
            .users();
        let bar = context.progress_bar("wiping");
        let request = DeleteRequest {
            id: self.id,
            force: self.force,
            wipe: self.wipe,
            zeroing: context.zeroing,
            users: &users,
        };
        let disk = delete_virtual_disk(
            &mut database,
            Some(devices.as_ref()),
            request,
            &mut to_bar(&bar),
        )?;
        bar.finish_and_clear();
        print_disk(context, &disk)
    }
}

/// Bring back an expired virtual disk, when none of its extents has been reissued, is held
/// by another disk, or is mapped by a VBD of something else (recorded, or with --hv any the
/// hypervisor reports).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk undelete 3 --expiry never")]
pub struct Undelete {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// Its new expiry, from now: seconds, 0 or never, or 30s, 10m, 2h, 7d, 2w.
    #[arg(long, value_parser = expiry_argument, default_value = "never")]
    expiry: Expiry,
}

impl Undelete {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let mut hypervisor = context.optional_hypervisor()?;
        let users = context
            .reconcile(Some(&database), hypervisor.as_mut(), None)?
            .users_other_than(self.id);
        let disk = database.undelete(self.id, self.expiry, &users)?;
        print_disk(context, &disk)
    }
}

/// List the live virtual disks (with --all, every one, whatever its state).
///
/// States: live, expired, wiping (deleted, being zeroed), creating, abandoned (its create
/// died and it never became usable).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk list --all --json")]
pub struct List {
    /// Include disks that are not live.
    #[arg(long)]
    all: bool,
}

impl List {
    pub fn run(self, context: &Context) -> Result<()> {
        let database = context.database(OpenMode::ReadOnly)?;
        let disks = database.virtual_disks(self.all)?;
        if context.json {
            let array: Vec<DiskJson> = disks
                .iter()
                .map(|disk| DiskJson::new(disk, false))
                .collect();
            emit_json(&array)
        } else {
            emit(&disks_table(&disks))
        }
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
        let database = context.database(OpenMode::ReadOnly)?;
        let disk = database.virtual_disk(self.id)?;
        print_disk(context, &disk)
    }
}

/// Grow a virtual disk to SIZE, or with --shrink make it smaller.
///
/// Growing appends extents after the ones it has, whose order and place never change, so
/// the data in them stays where it is; extents that follow its last one on disk are taken
/// first. New extents are zeroed before they join the disk. With --hv every VBD that maps
/// the disk grows too, through the hypervisor, so a running guest can see its disk grow.
/// Shrinking keeps the fewest of its first extents that hold SIZE, is refused while a VBD
/// maps the disk, and zeroes what it releases. --json prints the disk as show --json does.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk resize 3 8G\n  vdisk --hv unix:/tmp/vm/dom0.sock resize 3 12G\n  vdisk resize 3 1G --shrink"
)]
pub struct Resize {
    /// The disk: N or vd:N.
    #[arg(value_parser = id_argument)]
    id: VdId,
    /// The new size: MiB, or a number with K, M, G or T.
    #[arg(value_parser = size_argument)]
    size: u64,
    /// Allow a size smaller than the disk's.
    #[arg(long)]
    shrink: bool,
}

impl Resize {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut database = context.database(OpenMode::Existing)?;
        let devices = context.device_source()?;
        let mut hypervisor = context.optional_hypervisor()?;
        let reconciliation = context.reconcile(Some(&database), hypervisor.as_mut(), None)?;
        let users = reconciliation.users();
        let bar = context.progress_bar("zeroing");
        let request = ResizeRequest {
            id: self.id,
            size_sectors: self.size,
            shrink: self.shrink,
            zeroing: context.zeroing,
            users: &users,
        };
        let resized =
            resize_virtual_disk(&mut database, devices.as_ref(), request, &mut to_bar(&bar))?;
        bar.finish_and_clear();
        if let (Some(hypervisor), false) = (hypervisor.as_mut(), resized.added.is_empty()) {
            // The disk owns its new extents now; each VBD made from it grows onto them.
            for reconciled in reconciliation.vbds_of(self.id) {
                super::vbd::grow_vbd(&mut database, hypervisor, reconciled, &resized.added)?;
            }
        }
        print_disk(context, &resized.disk)
    }
}

fn print_disk(context: &Context, disk: &VirtualDisk) -> Result<()> {
    if context.json {
        emit_json(&DiskJson::new(disk, true))
    } else {
        emit(&disk_text(disk))
    }
}
