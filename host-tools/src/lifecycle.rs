//! The operations that span more than one transaction because they write to disks in
//! between: `create` (claim, zero, finish), `delete --wipe` and shrinking (release under a
//! claim, zero, mark clean) and growing (claim, zero, append). Every write of zeros happens
//! under a lease the database holds for it, so no other disk can be handed those extents
//! meanwhile, and no write ever reaches an extent another disk owns.

use std::time::{Duration, Instant};

use shared_abi::wire::Extent;

use crate::database::{Claim, Database, VirtualDisk, LEASE_SECONDS};
use crate::duration::Expiry;
use crate::error::{Error, Result};
use crate::size::format_sectors;
use crate::uname::VdId;
use crate::validator::User;
use crate::zero::{check_pool_disk, total_bytes, ZeroTarget, Zeroing};
use devices::DeviceSource;

/// What `create` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    pub size_sectors: u64,
    pub expiry: Expiry,
    /// Zero every extent, not only those that may hold a previous owner's data.
    pub zero_all: bool,
    pub zeroing: Zeroing,
}

/// Progress of zeroing: `(bytes written, bytes in all)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Renew a lease this often: a quarter of it, so a slow disk never loses it.
const LEASE_RENEWAL: Duration = Duration::from_secs(LEASE_SECONDS as u64 / 4);

/// Refuse, before anything is claimed, a devices namespace in which a number of the pool
/// now names another disk than the one `format` recorded.
fn check_pool_disks(database: &Database, devices: &dyn DeviceSource) -> Result<()> {
    let pool = database.pool_disks()?;
    for (device, _) in &pool {
        // A disk the namespace cannot find is refused when (if ever) it is written.
        if let Ok(disk) = devices.disk(*device) {
            check_pool_disk(&pool, *device, &disk)?;
        }
    }
    Ok(())
}

/// Zero `extents`, calling `renew` to extend the lease that holds them often enough that it
/// never lapses while the disks are busy.
fn zero_under_lease(
    database: &mut Database,
    devices: &dyn DeviceSource,
    extents: &[Extent],
    zeroing: Zeroing,
    progress: Progress<'_>,
    renew: &mut dyn FnMut(&mut Database) -> Result<()>,
) -> Result<()> {
    if extents.is_empty() {
        return Ok(());
    }
    let pool = database.pool_disks()?;
    let target = ZeroTarget::open(extents, devices, zeroing, &pool)?;
    let total = total_bytes(extents);
    let mut last_renewal = Instant::now();
    target.zero(extents, &mut |written| {
        progress(written, total);
        if last_renewal.elapsed() >= LEASE_RENEWAL {
            renew(database)?;
            last_renewal = Instant::now();
        }
        Ok(())
    })
}

/// Create a virtual disk: claim its extents, zero those that may hold someone's data (all
/// of them with `zero_all`), then make it usable. Should this process die while zeroing,
/// the claim lapses after [`LEASE_SECONDS`] and the extents, still marked dirty, return to
/// the pool; the half-created disk never becomes usable.
pub fn create_virtual_disk(
    database: &mut Database,
    devices: &dyn DeviceSource,
    request: &CreateRequest,
    progress: Progress<'_>,
) -> Result<VirtualDisk> {
    check_pool_disks(database, devices)?;
    let pending = database.begin_create(request.size_sectors, request.zero_all)?;
    let id = pending.id;
    let zeroed = zero_under_lease(
        database,
        devices,
        &pending.to_zero,
        request.zeroing,
        progress,
        &mut |database| database.renew_lease(id),
    );
    if let Err(error) = zeroed {
        // Best effort: if even this fails, the lease runs out on its own.
        let _ = database.abandon_create(id);
        return Err(error);
    }
    database.finish_create(id, request.expiry)
}

/// Zero what `claim` holds and end it: a wipe marks its extents clean, a grow appends them.
fn zero_claim(
    database: &mut Database,
    devices: &dyn DeviceSource,
    claim: &Claim,
    zeroing: Zeroing,
    progress: Progress<'_>,
    finish: fn(&mut Database, &Claim) -> Result<VirtualDisk>,
) -> Result<VirtualDisk> {
    let zeroed = zero_under_lease(
        database,
        devices,
        &claim.to_zero,
        zeroing,
        progress,
        &mut |database| database.renew_claim(claim),
    );
    if let Err(error) = zeroed {
        // The extents stay dirty; if even this fails, the claim runs out on its own.
        let _ = database.abandon_claim(claim);
        return Err(error);
    }
    let finished = finish(database, claim);
    if finished.is_err() {
        // A grow whose disk was deleted meanwhile, or a claim that lapsed: its extents,
        // still dirty, go back to the pool now rather than when the lease runs out.
        let _ = database.abandon_claim(claim);
    }
    finished
}

/// Zero what a delete or shrink released under `claim`, if it released anything, and mark
/// it clean; `disk` is the disk as the release left it.
fn wipe_released(
    database: &mut Database,
    devices: &dyn DeviceSource,
    disk: VirtualDisk,
    claim: Option<Claim>,
    zeroing: Zeroing,
    progress: Progress<'_>,
) -> Result<VirtualDisk> {
    match claim {
        Some(claim) => zero_claim(
            database,
            devices,
            &claim,
            zeroing,
            progress,
            Database::finish_wipe,
        ),
        None => Ok(disk),
    }
}

/// What `delete` is asked for.
pub struct DeleteRequest<'a> {
    pub id: VdId,
    /// Expire it even though a VBD maps it. Its extents still stay out of the pool while a
    /// recorded attachment covers them.
    pub force: bool,
    /// Zero its extents first (needs `devices`).
    pub wipe: bool,
    pub zeroing: Zeroing,
    /// VBDs beyond the recorded ones that may map it: those the hypervisor reports (`--hv`).
    pub users: &'a [User],
}

fn wiping_devices(devices: Option<&dyn DeviceSource>, what: String) -> Result<&dyn DeviceSource> {
    devices.ok_or_else(|| {
        Error::Usage(format!(
            "{what}: needs --devices or sysfs to find the disks"
        ))
    })
}

/// Delete (expire now) a live virtual disk, refusing while a recorded attachment or one of
/// `users` still maps it, unless forced. With `wipe`, its extents stay claimed while they
/// are zeroed: no delete, undelete or create can touch them until the wipe is done.
pub fn delete_virtual_disk(
    database: &mut Database,
    devices: Option<&dyn DeviceSource>,
    request: DeleteRequest<'_>,
    progress: Progress<'_>,
) -> Result<VirtualDisk> {
    let id = request.id;
    let devices = match request.wipe {
        true => {
            let devices = wiping_devices(devices, format!("delete {id} --wipe"))?;
            check_pool_disks(database, devices)?;
            Some(devices)
        }
        false => None,
    };
    let (disk, claim) = database.delete(id, request.force, request.wipe, request.users)?;
    match devices {
        Some(devices) => wipe_released(database, devices, disk, claim, request.zeroing, progress),
        None => Ok(disk),
    }
}

/// What `resize` is asked for.
pub struct ResizeRequest<'a> {
    pub id: VdId,
    pub size_sectors: u64,
    /// Allow a smaller size.
    pub shrink: bool,
    pub zeroing: Zeroing,
    /// VBDs beyond the recorded ones that may map it (`--hv`); a shrink refuses them.
    pub users: &'a [User],
}

/// A resized disk and the extents a grow appended (empty for a shrink).
pub struct Resized {
    pub disk: VirtualDisk,
    pub added: Vec<Extent>,
}

/// Grow a live disk by appending zeroed extents after its last one, or (with `shrink`)
/// shrink it to the fewest of its first extents that hold the size, zeroing what it
/// releases. The extents it keeps never move, so the data in them stays where it is.
pub fn resize_virtual_disk(
    database: &mut Database,
    devices: &dyn DeviceSource,
    request: ResizeRequest<'_>,
    progress: Progress<'_>,
) -> Result<Resized> {
    let id = request.id;
    let disk = database.live_virtual_disk(id)?;
    check_pool_disks(database, devices)?;
    if request.size_sectors > disk.size_sectors {
        let claim = database.begin_grow(id, request.size_sectors)?;
        let disk = zero_claim(
            database,
            devices,
            &claim,
            request.zeroing,
            progress,
            Database::finish_grow,
        )?;
        return Ok(Resized {
            disk,
            added: claim.extents,
        });
    }
    if request.size_sectors < disk.size_sectors && !request.shrink {
        return Err(Error::Refused(format!(
            "resize {id} to {}: smaller than its {}; give --shrink to release the rest",
            format_sectors(request.size_sectors),
            format_sectors(disk.size_sectors)
        )));
    }
    let (disk, claim) = database.shrink(id, request.size_sectors, request.users)?;
    let disk = wipe_released(database, devices, disk, claim, request.zeroing, progress)?;
    Ok(Resized {
        disk,
        added: Vec::new(),
    })
}
