//! Reading one virtual disk: its state at a given moment and its layout, and the refusal
//! that names why a disk that is not live cannot be used.

use rusqlite::{params, Connection, OptionalExtension};

use super::extent_from_row;
use crate::error::{Error, Result};
use crate::uname::VdId;
use shared_abi::wire::Extent;

/// The state of a virtual disk at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VdState {
    /// Usable: its extents are its own.
    Live,
    /// Deleted or past its expiry; its extents are back in the pool.
    Expired,
    /// Deleted, and its extents are being zeroed; they return to the pool when that is done.
    Wiping,
    /// Its extents are being zeroed by `create`; not yet usable.
    Creating,
    /// Its `create` died before finishing; it never became usable.
    Abandoned,
}

impl VdState {
    /// The one word for the state, in every output and message.
    pub fn as_str(self) -> &'static str {
        match self {
            VdState::Live => "live",
            VdState::Expired => "expired",
            VdState::Wiping => "wiping",
            VdState::Creating => "creating",
            VdState::Abandoned => "abandoned",
        }
    }
}

/// A virtual disk and its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualDisk {
    pub id: VdId,
    pub size_sectors: u64,
    pub state: VdState,
    pub created_at: i64,
    /// Unix seconds, or `None` for a disk that never expires.
    pub expires_at: Option<i64>,
    /// In layout order: the virtual disk's sector 0 is the first extent's first sector.
    pub extents: Vec<Extent>,
}

pub(super) fn require_live(disk: &VirtualDisk) -> Result<()> {
    let id = disk.id;
    match disk.state {
        VdState::Live => Ok(()),
        VdState::Expired => Err(Error::Refused(format!(
            "{id}: has expired (its extents may be reissued; undelete checks whether it can come back)"
        ))),
        VdState::Wiping => Err(Error::Refused(format!("{id}: is being wiped"))),
        VdState::Creating => Err(Error::Refused(format!("{id}: is still being created"))),
        VdState::Abandoned => Err(Error::Refused(format!(
            "{id}: is abandoned (its create never finished)"
        ))),
    }
}

pub(super) fn read_virtual_disk(
    connection: &Connection,
    id: VdId,
    now: i64,
) -> Result<VirtualDisk> {
    let row: Option<(String, u64, i64, Option<i64>, bool)> = connection
        .query_row(
            "SELECT state, size_sectors, created_at, expires_at,
                    EXISTS (SELECT 1 FROM claims c WHERE c.virtual_disk_id = v.id
                            AND c.kind = 'wipe' AND c.expires_at > ?2)
             FROM virtual_disks v WHERE id = ?1",
            params![id.get(), now],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .optional()?;
    let (state, size_sectors, created_at, expires_at, wiping) =
        row.ok_or_else(|| Error::NotFound(format!("{id}: no such virtual disk")))?;
    let alive = expires_at.is_none_or(|expires_at| expires_at > now);
    let state = match (state.as_str(), alive, wiping) {
        ("ready", true, _) => VdState::Live,
        ("ready", false, true) => VdState::Wiping,
        ("ready", false, false) => VdState::Expired,
        (_, true, _) => VdState::Creating,
        (_, false, _) => VdState::Abandoned,
    };
    // The layout is the order of `position`, never the order rows happen to come back in
    // (seed defect 5).
    let mut statement = connection.prepare_cached(
        "SELECT e.device, e.start_sector, e.nr_sectors FROM virtual_disk_extents m
         JOIN extents e ON e.id = m.extent_id
         WHERE m.virtual_disk_id = ?1 ORDER BY m.position",
    )?;
    let extents = statement
        .query_map(params![id.get()], |row| extent_from_row(row, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(VirtualDisk {
        id,
        size_sectors,
        state,
        created_at,
        expires_at,
        extents,
    })
}

pub(super) fn read_live(connection: &Connection, id: VdId, now: i64) -> Result<VirtualDisk> {
    let disk = read_virtual_disk(connection, id, now)?;
    require_live(&disk)?;
    Ok(disk)
}
