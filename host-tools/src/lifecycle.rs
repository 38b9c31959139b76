//! The operations that span more than one transaction because they write to disks in
//! between: `create` (claim, zero, finish) and `delete` (check, wipe, expire).

use std::time::{Duration, Instant};

use shared_abi::wire::Extent;

use crate::database::{Database, VirtualDisk, CREATE_LEASE_SECONDS};
use crate::devices::DeviceSource;
use crate::duration::Expiry;
use crate::error::{Error, Result};
use crate::timestamp::now;
use crate::uname::VdId;
use crate::validator::{validate, User};
use crate::zero::{total_bytes, ZeroTarget, Zeroing};
use shared_abi::SharingLevel;

/// A source of VBDs beyond the attachments the database recorded: the hypervisor, which
/// alone knows every VBD that exists. `delete` refuses a disk that any of them maps.
///
/// The hypervisor client (`--hv`) implements this by probing every domain and asking for
/// each VBD's extents. Without `--hv` no implementation is passed and only the database's
/// own records are checked; nothing pretends to have asked the hypervisor.
pub trait MappedExtents {
    /// Every VBD of every domain, as validator users.
    fn mapped_users(&mut self) -> Result<Vec<User>>;
}

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

/// Renew the create lease this often: a quarter of it, so a slow disk never loses it.
const LEASE_RENEWAL: Duration = Duration::from_secs(CREATE_LEASE_SECONDS as u64 / 4);

/// Create a virtual disk: claim its extents, zero those that may hold someone's data (all
/// of them with `zero_all`), then make it usable. Should this process die while zeroing,
/// the claim lapses after [`CREATE_LEASE_SECONDS`] and the extents, still marked dirty,
/// return to the pool; the half-created disk never becomes usable.
pub fn create_virtual_disk(
    database: &mut Database,
    devices: &dyn DeviceSource,
    request: &CreateRequest,
    progress: Progress<'_>,
) -> Result<VirtualDisk> {
    let pending = database.begin_create(request.size_sectors, request.zero_all, now())?;
    let zeroed = zero_with_lease(
        database,
        devices,
        pending.id,
        &pending.to_zero,
        request.zeroing,
        progress,
    );
    if let Err(error) = zeroed {
        // Best effort: if even this fails, the lease runs out on its own.
        let _ = database.abandon_create(pending.id, now());
        return Err(error);
    }
    database.finish_create(pending.id, request.expiry, now())
}

fn zero_with_lease(
    database: &mut Database,
    devices: &dyn DeviceSource,
    id: VdId,
    extents: &[Extent],
    zeroing: Zeroing,
    progress: Progress<'_>,
) -> Result<()> {
    if extents.is_empty() {
        return Ok(());
    }
    let target = ZeroTarget::open(extents, devices, zeroing)?;
    let total = total_bytes(extents);
    let mut last_renewal = Instant::now();
    target.zero(extents, &mut |written| {
        progress(written, total);
        if last_renewal.elapsed() >= LEASE_RENEWAL {
            database.renew_lease(id, now())?;
            last_renewal = Instant::now();
        }
        Ok(())
    })
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
    /// VBDs the hypervisor reports, when it was asked (`--hv`).
    pub mapped: Option<&'a mut dyn MappedExtents>,
}

/// Delete (expire now) a live virtual disk, refusing while a recorded attachment or a VBD
/// the hypervisor reports still maps it, unless forced. Every check runs before the wipe,
/// so a refused delete has written nothing.
pub fn delete_virtual_disk(
    database: &mut Database,
    devices: Option<&dyn DeviceSource>,
    request: DeleteRequest<'_>,
    progress: Progress<'_>,
) -> Result<VirtualDisk> {
    let id = request.id;
    let disk = database.deletable(id, request.force, now())?;
    if let (false, Some(mapped)) = (request.force, request.mapped) {
        let users = mapped.mapped_users()?;
        // At level 0 with a writer, every overlap at all is reported.
        let conflicts = validate(&disk.extents, true, &users, SharingLevel::ReadersOnly);
        if let Some(conflict) = conflicts.first() {
            return Err(Error::Refused(format!(
                "{id}: still mapped: {}; detach it first or use --force",
                conflict.explain(&users)
            )));
        }
    }
    if request.wipe {
        let devices = devices.ok_or_else(|| {
            Error::Usage(format!(
                "delete {id} --wipe: needs --devices or sysfs to find the disks"
            ))
        })?;
        let target = ZeroTarget::open(&disk.extents, devices, request.zeroing)?;
        let total = total_bytes(&disk.extents);
        target.zero(&disk.extents, &mut |written| {
            progress(written, total);
            Ok(())
        })?;
    }
    database.delete(id, request.force, request.wipe, now())
}
