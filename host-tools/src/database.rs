//! The VD database: the free pool, virtual disks and recorded attachments in SQLite. Every
//! public operation is one `BEGIN IMMEDIATE` transaction with bound parameters, so it is
//! all-or-nothing and serialised against every other process.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;

use crate::allocate::{choose_extents, merge_adjacent, FreeExtent};
use crate::devices::Region;
use crate::duration::Expiry;
use crate::error::{Error, Result};
use crate::schema::{self, APPLICATION_ID, LATEST_VERSION};
use crate::size::format_sectors;
use crate::uname::VdId;

/// How long a process may hold a lock before another gives up waiting: long enough for
/// eight processes to queue behind one another, short enough that a wedged one is noticed.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A disk being created holds its extents for this long; the creating process renews the
/// lease while it zeros. When the process dies, the lease runs out and the extents (still
/// marked dirty) return to the pool.
pub const CREATE_LEASE_SECONDS: i64 = 20;

/// Whether opening may create a new database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The database must exist already (every command but `format`).
    Existing,
    /// Create the file and its parent directory when missing (`format`).
    CreateIfMissing,
}

/// The state of a virtual disk at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VdState {
    /// Usable: its extents are its own.
    Live,
    /// Deleted or past its expiry; its extents are back in the pool.
    Expired,
    /// Its extents are being zeroed by `create`; not yet usable.
    Creating,
    /// Its `create` died before finishing; it never became usable.
    Abandoned,
}

impl VdState {
    /// The word used in output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            VdState::Live => "live",
            VdState::Expired => "expired",
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

/// A partition (or whole disk) in the pool, with its occupancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPartition {
    pub name: String,
    pub device: DeviceNumber,
    pub start_sector: u64,
    pub nr_sectors: u64,
    pub extent_sectors: u64,
    pub total_extents: u64,
    pub free_extents: u64,
}

/// A create that has claimed its extents but not yet zeroed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCreate {
    pub id: VdId,
    pub extents: Vec<Extent>,
    /// The extents to zero before the disk may be used: the dirty ones, or all of them.
    pub to_zero: Vec<Extent>,
}

/// How a VBD uses what it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    ReadOnly,
    ReadWrite,
}

impl AccessMode {
    /// `r` or `rw`, as typed on the command line and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadOnly => "r",
            AccessMode::ReadWrite => "rw",
        }
    }

    /// Parse `r` or `rw`.
    pub fn parse(text: &str) -> Result<AccessMode> {
        match text {
            "r" => Ok(AccessMode::ReadOnly),
            "rw" => Ok(AccessMode::ReadWrite),
            _ => Err(Error::Usage(format!("mode {text:?}: expected r or rw"))),
        }
    }

    pub fn is_writable(self) -> bool {
        self == AccessMode::ReadWrite
    }
}

/// What an attachment maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentTarget {
    /// A virtual disk; the database supplies its extents.
    VirtualDisk(VdId),
    /// A disk or partition by name, with the extents it resolved to.
    Physical { name: String, extents: Vec<Extent> },
}

/// A VBD that dom0's tools created and recorded, so that `delete` and allocation know the
/// extents are still mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `vd:ID` or `phy:NAME`.
    pub uname: String,
    pub virtual_disk: Option<VdId>,
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: AccessMode,
    pub extents: Vec<Extent>,
}

/// An open vdisk database.
pub struct Database {
    connection: Connection,
    path: PathBuf,
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

fn device_number(raw: i64) -> rusqlite::Result<DeviceNumber> {
    u32::try_from(raw)
        .map(DeviceNumber::from_raw)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, raw))
}

fn extent_from_row(row: &rusqlite::Row<'_>, first_column: usize) -> rusqlite::Result<Extent> {
    let device = device_number(row.get(first_column)?)?;
    // The schema's checks keep rows sane; a row that is not an extent anyway (a database
    // edited by hand) is an error, never an unchecked extent.
    Extent::new(
        device,
        row.get(first_column + 1)?,
        row.get(first_column + 2)?,
    )
    .map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            first_column + 2,
            rusqlite::types::Type::Integer,
            Box::new(error),
        )
    })
}

impl Database {
    /// Open the database at `path`, refusing (and leaving untouched) a file that is not a
    /// vdisk database, is corrupt, or was written by a newer vdisk.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Database> {
        let bad = |reason: String| Error::BadDatabase {
            path: path.to_path_buf(),
            reason,
        };
        match fs::File::open(path) {
            Ok(mut file) => {
                let mut header = [0u8; 16];
                let length = file
                    .read(&mut header)
                    .map_err(|error| Error::io(path, error))?;
                // An empty file is what SQLite itself leaves before its first write.
                if length > 0 && (length < 16 || &header != SQLITE_MAGIC) {
                    return Err(bad("not an SQLite database".into()));
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if mode == OpenMode::Existing {
                    return Err(Error::NotFound(format!(
                        "database {}: does not exist (vdisk format creates it)",
                        path.display()
                    )));
                }
                if let Some(parent) = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                {
                    fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
                }
            }
            Err(error) => return Err(Error::io(path, error)),
        }
        let flags = match mode {
            OpenMode::Existing => OpenFlags::SQLITE_OPEN_READ_WRITE,
            OpenMode::CreateIfMissing => {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            }
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut connection =
            Connection::open_with_flags(path, flags).map_err(|error| bad(error.to_string()))?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        let describe = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                bad("corrupt (not a healthy SQLite file)".into())
            }
            _ => bad(error.to_string()),
        };
        let read_header = |connection: &Connection| -> rusqlite::Result<(i32, i64, i64)> {
            Ok((
                connection.query_row("PRAGMA application_id", [], |row| row.get(0))?,
                connection.query_row("PRAGMA user_version", [], |row| row.get(0))?,
                connection.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?,
            ))
        };
        let (application_id, version, objects) = read_header(&connection).map_err(describe)?;
        let fresh = application_id == 0 && version == 0 && objects == 0;
        if fresh && mode == OpenMode::Existing {
            return Err(bad(
                "empty, not a vdisk database (vdisk format initialises one)".into(),
            ));
        }
        if !fresh && application_id != APPLICATION_ID {
            return Err(bad(
                "not a vdisk database (another program's SQLite file)".into()
            ));
        }
        if version > LATEST_VERSION {
            return Err(bad(format!(
                "schema version {version} is newer than this vdisk understands ({LATEST_VERSION})"
            )));
        }
        // Only now that the file is known to be ours may anything be written to it.
        connection
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(describe)?;
        connection.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
        if version < LATEST_VERSION {
            schema::migrate(&mut connection)?;
        }
        Ok(Database {
            connection,
            path: path.to_path_buf(),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `operation` as one immediate transaction: committed when it succeeds, rolled
    /// back when it fails.
    fn immediate<T>(&mut self, operation: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = operation(&transaction)?;
        transaction.commit()?;
        Ok(result)
    }

    /// Add `region` to the free pool, split into extents of `extent_sectors` (a tail shorter
    /// than one extent is left out). Refused when it overlaps anything already in the pool.
    pub fn format(
        &mut self,
        region: &Region,
        extent_sectors: u64,
        now: i64,
    ) -> Result<PoolPartition> {
        let end = region
            .start_sector
            .checked_add(region.nr_sectors)
            .ok_or_else(|| {
                Error::Refused(format!("phy:{}: sector range overflows", region.name))
            })?;
        self.immediate(|transaction| {
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

    /// Every partition of the pool with its free extents at `now`, in disk order.
    pub fn pool(&self, now: i64) -> Result<Vec<PoolPartition>> {
        let mut statement = self.connection.prepare(
            "SELECT p.name, p.device, p.start_sector, p.nr_sectors, p.extent_sectors,
                    (SELECT count(*) FROM extents e WHERE e.partition_id = p.id),
                    (SELECT count(*) FROM extents e WHERE e.partition_id = p.id
                       AND NOT EXISTS (SELECT 1 FROM virtual_disk_extents m
                                       JOIN virtual_disks v ON v.id = m.virtual_disk_id
                                       WHERE m.extent_id = e.id AND (v.expires_at IS NULL OR v.expires_at > ?1))
                       AND NOT EXISTS (SELECT 1 FROM attachment_extents a
                                       WHERE a.device = e.device
                                         AND a.start_sector < e.start_sector + e.nr_sectors
                                         AND e.start_sector < a.start_sector + a.nr_sectors))
             FROM pool_partitions p ORDER BY p.device, p.start_sector",
        )?;
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
    }

    /// The free extents at `now`, in disk order. An extent is free when no live disk owns it
    /// and no recorded attachment overlaps it: a deleted disk that a VBD still maps keeps
    /// its extents out of the pool (seed defect 8).
    fn free_extents(transaction: &Transaction<'_>, now: i64) -> Result<Vec<FreeExtent>> {
        let mut statement = transaction.prepare(
            "SELECT e.id, e.device, e.start_sector, e.nr_sectors, e.dirty FROM extents e
             WHERE e.id NOT IN (SELECT m.extent_id FROM virtual_disk_extents m
                                JOIN virtual_disks v ON v.id = m.virtual_disk_id
                                WHERE v.expires_at IS NULL OR v.expires_at > ?1)
               AND NOT EXISTS (SELECT 1 FROM attachment_extents a
                               WHERE a.device = e.device
                                 AND a.start_sector < e.start_sector + e.nr_sectors
                                 AND e.start_sector < a.start_sector + a.nr_sectors)",
        )?;
        let mut free = statement
            .query_map(params![now], |row| {
                Ok(FreeExtent {
                    id: row.get(0)?,
                    extent: extent_from_row(row, 1)?,
                    dirty: row.get::<_, i64>(4)? != 0,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Sorted here rather than by ORDER BY: walking the (device, start_sector) index
        // costs a second B-tree lookup per extent to fetch its row, sorting costs far less.
        free.sort_unstable_by_key(|candidate| {
            (candidate.extent.device(), candidate.extent.start_sector())
        });
        Ok(free)
    }

    /// Claim extents for a new disk of at least `size_sectors`. The disk is recorded as
    /// being created, holding its extents under a lease; [`Database::finish_create`] makes it
    /// usable once the caller has zeroed `to_zero`. Selecting and claiming happen in one
    /// immediate transaction, so concurrent creates never share an extent (seed defect 6).
    pub fn begin_create(
        &mut self,
        size_sectors: u64,
        zero_all: bool,
        now: i64,
    ) -> Result<PendingCreate> {
        self.immediate(|transaction| {
            let free = Self::free_extents(transaction, now)?;
            let chosen = choose_extents(&free, size_sectors).ok_or_else(|| {
                let free_sectors: u64 = free.iter().map(|candidate| candidate.extent.nr_sectors()).sum();
                Error::Refused(format!(
                    "create {}: no space (the pool has {} free)",
                    format_sectors(size_sectors),
                    format_sectors(free_sectors)
                ))
            })?;
            let allocated: u64 = chosen.iter().map(|candidate| candidate.extent.nr_sectors()).sum();
            transaction.execute(
                "INSERT INTO virtual_disks (state, size_sectors, created_at, expires_at) VALUES ('creating', ?1, ?2, ?3)",
                params![allocated, now, now + CREATE_LEASE_SECONDS],
            )?;
            let id = transaction.last_insert_rowid();
            // Two set-based statements, not two per extent: a 64 GiB disk of 4 MiB extents
            // is 16 384 of them. The ids go in as one bound JSON array, whose indices are the
            // layout positions.
            let extent_ids: Vec<String> = chosen.iter().map(|candidate| candidate.id.to_string()).collect();
            let extent_ids = format!("[{}]", extent_ids.join(","));
            let inserted = transaction.execute(
                "INSERT INTO virtual_disk_extents (virtual_disk_id, position, extent_id)
                 SELECT ?1, key, value FROM json_each(?2)",
                params![id, extent_ids],
            )?;
            if inserted != chosen.len() {
                // Rolled back: a disk shorter than its size must never be recorded.
                return Err(Error::Refused(format!(
                    "create: recorded {inserted} of {} extents",
                    chosen.len()
                )));
            }
            // The new owner may write from now on; should it die mid-zeroing, the next owner
            // must zero again.
            transaction.execute(
                "UPDATE extents SET dirty = 1
                 WHERE id IN (SELECT extent_id FROM virtual_disk_extents WHERE virtual_disk_id = ?1)",
                params![id],
            )?;
            Ok(PendingCreate {
                id: VdId::from_database(id),
                extents: chosen.iter().map(|candidate| candidate.extent).collect(),
                to_zero: chosen
                    .iter()
                    .filter(|candidate| zero_all || candidate.dirty)
                    .map(|candidate| candidate.extent)
                    .collect(),
            })
        })
    }

    /// Extend the lease of a disk being created.
    pub fn renew_lease(&mut self, id: VdId, now: i64) -> Result<()> {
        self.immediate(|transaction| {
            let changed = transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2
                 WHERE id = ?1 AND state = 'creating' AND expires_at > ?3",
                params![id.get(), now + CREATE_LEASE_SECONDS, now],
            )?;
            if changed == 0 {
                return Err(Error::Refused(format!(
                    "{id}: lost its claim on its extents while being created"
                )));
            }
            Ok(())
        })
    }

    /// Make a created disk usable, expiring as `expiry` says from `now`.
    pub fn finish_create(&mut self, id: VdId, expiry: Expiry, now: i64) -> Result<VirtualDisk> {
        self.immediate(|transaction| {
            let changed = transaction.execute(
                "UPDATE virtual_disks SET state = 'ready', expires_at = ?2
                 WHERE id = ?1 AND state = 'creating' AND expires_at > ?3",
                params![id.get(), expiry.expires_at(now), now],
            )?;
            if changed == 0 {
                return Err(Error::Refused(format!(
                    "{id}: lost its claim on its extents while being created"
                )));
            }
            Self::read_virtual_disk(transaction, id, now)
        })
    }

    /// Give up a create whose zeroing failed: the disk expires now and its extents, still
    /// dirty, return to the pool.
    pub fn abandon_create(&mut self, id: VdId, now: i64) -> Result<()> {
        self.immediate(|transaction| {
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1 AND state = 'creating'",
                params![id.get(), now],
            )?;
            Ok(())
        })
    }

    fn read_virtual_disk(connection: &Connection, id: VdId, now: i64) -> Result<VirtualDisk> {
        let row: Option<(String, u64, i64, Option<i64>)> = connection
            .query_row(
                "SELECT state, size_sectors, created_at, expires_at FROM virtual_disks WHERE id = ?1",
                params![id.get()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        let (state, size_sectors, created_at, expires_at) =
            row.ok_or_else(|| Error::NotFound(format!("{id}: no such virtual disk")))?;
        let alive = expires_at.is_none_or(|expires_at| expires_at > now);
        let state = match (state.as_str(), alive) {
            ("ready", true) => VdState::Live,
            ("ready", false) => VdState::Expired,
            (_, true) => VdState::Creating,
            (_, false) => VdState::Abandoned,
        };
        // The layout is the order of `position`, never the order rows happen to come back
        // in (seed defect 5).
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

    /// One virtual disk, whatever its state.
    pub fn virtual_disk(&self, id: VdId, now: i64) -> Result<VirtualDisk> {
        Self::read_virtual_disk(&self.connection, id, now)
    }

    /// A live virtual disk, or an error naming why it cannot be used.
    pub fn live_virtual_disk(&self, id: VdId, now: i64) -> Result<VirtualDisk> {
        let disk = self.virtual_disk(id, now)?;
        require_live(&disk)?;
        Ok(disk)
    }

    /// The virtual disks in id order: the live ones, and with `include_expired` the expired
    /// ones too. Disks still being created (or whose create died) are not listed.
    pub fn virtual_disks(&self, include_expired: bool, now: i64) -> Result<Vec<VirtualDisk>> {
        let ids: Vec<i64> = self
            .connection
            .prepare("SELECT id FROM virtual_disks WHERE state = 'ready' ORDER BY id")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut disks = Vec::new();
        for id in ids {
            let disk = Self::read_virtual_disk(&self.connection, VdId::from_database(id), now)?;
            if include_expired || disk.state == VdState::Live {
                disks.push(disk);
            }
        }
        Ok(disks)
    }

    /// Change the expiry of a live disk. An expired disk is refused: its extents may belong
    /// to another disk by now (seed defect 3); `undelete` is the checked way back.
    pub fn refresh(&mut self, id: VdId, expiry: Expiry, now: i64) -> Result<VirtualDisk> {
        self.immediate(|transaction| {
            let disk = Self::read_virtual_disk(transaction, id, now)?;
            require_live(&disk)?;
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), expiry.expires_at(now)],
            )?;
            Self::read_virtual_disk(transaction, id, now)
        })
    }

    /// Expire a live disk now. Unless `force`, refused while an attachment is recorded for
    /// it. With `wiped`, the caller has zeroed its extents, which are marked clean.
    pub fn delete(&mut self, id: VdId, force: bool, wiped: bool, now: i64) -> Result<VirtualDisk> {
        self.immediate(|transaction| {
            Self::check_deletable(transaction, id, force, now)?;
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), now],
            )?;
            if wiped {
                transaction.execute(
                    "UPDATE extents SET dirty = 0
                     WHERE id IN (SELECT extent_id FROM virtual_disk_extents WHERE virtual_disk_id = ?1)",
                    params![id.get()],
                )?;
            }
            Self::read_virtual_disk(transaction, id, now)
        })
    }

    /// The disk `id`, when `delete` may expire it: live, and unless `force` with no
    /// recorded attachment.
    pub fn deletable(&self, id: VdId, force: bool, now: i64) -> Result<VirtualDisk> {
        Self::check_deletable(&self.connection, id, force, now)
    }

    fn check_deletable(
        connection: &Connection,
        id: VdId,
        force: bool,
        now: i64,
    ) -> Result<VirtualDisk> {
        let disk = Self::read_virtual_disk(connection, id, now)?;
        require_live(&disk)?;
        if !force {
            if let Some(attachment) = Self::attachments_where(connection, Some(id))?.first() {
                return Err(Error::Refused(format!(
                    "{id}: still attached to domain {} as {} ({}); detach it first or use --force",
                    attachment.domain,
                    vdevice_name(attachment.vdevice),
                    attachment.mode.as_str()
                )));
            }
        }
        Ok(disk)
    }

    /// Bring back an expired disk, never expiring, when none of its extents was given to a
    /// later disk (a reissued extent may hold someone else's data now) or is mapped by a
    /// recorded attachment of another disk.
    pub fn undelete(&mut self, id: VdId, expiry: Expiry, now: i64) -> Result<VirtualDisk> {
        self.immediate(|transaction| {
            let disk = Self::read_virtual_disk(transaction, id, now)?;
            match disk.state {
                VdState::Expired => {}
                VdState::Live => return Err(Error::Refused(format!("{id}: is live, nothing to undelete"))),
                VdState::Creating | VdState::Abandoned => {
                    return Err(Error::Refused(format!("{id}: its create never finished; it cannot be undeleted")))
                }
            }
            // Ids only grow (AUTOINCREMENT), and an extent can only be reissued after this
            // disk expired, so any later disk holding one of its extents reissued it.
            let reissued: Option<(i64, i64, i64)> = transaction
                .query_row(
                    "SELECT later.virtual_disk_id, e.device, e.start_sector
                     FROM virtual_disk_extents mine
                     JOIN virtual_disk_extents later ON later.extent_id = mine.extent_id
                     JOIN extents e ON e.id = mine.extent_id
                     WHERE mine.virtual_disk_id = ?1 AND later.virtual_disk_id > ?1
                     ORDER BY mine.position LIMIT 1",
                    params![id.get()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            if let Some((later, device, start)) = reissued {
                return Err(Error::Refused(format!(
                    "{id}: its extent at {}:{start} was reissued to vd:{later}",
                    device_number(device)?,
                )));
            }
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), expiry.expires_at(now)],
            )?;
            transaction.execute(
                "UPDATE extents SET dirty = 1
                 WHERE id IN (SELECT extent_id FROM virtual_disk_extents WHERE virtual_disk_id = ?1)",
                params![id.get()],
            )?;
            Self::read_virtual_disk(transaction, id, now)
        })
    }

    /// Record a VBD that maps `target`, so that the extents stay out of the pool and
    /// `delete` refuses the disk until [`Database::remove_attachment`]. A virtual disk must
    /// be live; its extents are taken from the database.
    pub fn record_attachment(
        &mut self,
        target: &AttachmentTarget,
        domain: u32,
        vdevice: DeviceNumber,
        mode: AccessMode,
        now: i64,
    ) -> Result<Attachment> {
        self.immediate(|transaction| {
            let (uname, virtual_disk, extents) = match target {
                AttachmentTarget::VirtualDisk(id) => {
                    let disk = Self::read_virtual_disk(transaction, *id, now)?;
                    require_live(&disk)?;
                    (id.to_string(), Some(*id), merge_adjacent(&disk.extents))
                }
                AttachmentTarget::Physical { name, extents } => (format!("phy:{name}"), None, extents.clone()),
            };
            let existing: Option<String> = transaction
                .query_row(
                    "SELECT uname FROM attachments WHERE domain = ?1 AND vdevice = ?2",
                    params![domain, vdevice.raw()],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(existing) = existing {
                return Err(Error::Refused(format!(
                    "domain {domain} {}: already records {existing}",
                    vdevice_name(vdevice)
                )));
            }
            transaction.execute(
                "INSERT INTO attachments (uname, virtual_disk_id, domain, vdevice, mode, attached_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![uname, virtual_disk.map(VdId::get), domain, vdevice.raw(), mode.as_str(), now],
            )?;
            let attachment_id = transaction.last_insert_rowid();
            let mut insert = transaction.prepare(
                "INSERT INTO attachment_extents (attachment_id, position, device, start_sector, nr_sectors)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (position, extent) in extents.iter().enumerate() {
                insert.execute(params![attachment_id, position as i64, extent.device().raw(), extent.start_sector(), extent.nr_sectors()])?;
            }
            Ok(Attachment {
                uname,
                virtual_disk,
                domain,
                vdevice,
                mode,
                extents,
            })
        })
    }

    /// Forget the VBD `vdevice` of `domain` (after `detach`); returns what was recorded.
    pub fn remove_attachment(&mut self, domain: u32, vdevice: DeviceNumber) -> Result<Attachment> {
        self.immediate(|transaction| {
            let attachment = Self::attachments_where(transaction, None)?
                .into_iter()
                .find(|attachment| attachment.domain == domain && attachment.vdevice == vdevice)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "domain {domain} {}: no recorded attachment",
                        vdevice_name(vdevice)
                    ))
                })?;
            transaction.execute(
                "DELETE FROM attachments WHERE domain = ?1 AND vdevice = ?2",
                params![domain, vdevice.raw()],
            )?;
            Ok(attachment)
        })
    }

    /// The recorded attachments of virtual disk `id`.
    pub fn attachments_of(&self, id: VdId) -> Result<Vec<Attachment>> {
        Self::attachments_where(&self.connection, Some(id))
    }

    /// Every recorded attachment.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        Self::attachments_where(&self.connection, None)
    }

    fn attachments_where(connection: &Connection, id: Option<VdId>) -> Result<Vec<Attachment>> {
        let mut statement = connection.prepare_cached(
            "SELECT id, uname, virtual_disk_id, domain, vdevice, mode FROM attachments
             WHERE ?1 IS NULL OR virtual_disk_id = ?1 ORDER BY domain, vdevice",
        )?;
        let rows = statement
            .query_map(params![id.map(VdId::get)], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, u32>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut extents_of = connection.prepare_cached(
            "SELECT device, start_sector, nr_sectors FROM attachment_extents
             WHERE attachment_id = ?1 ORDER BY position",
        )?;
        let mut attachments = Vec::new();
        for (row_id, uname, virtual_disk, domain, vdevice, mode) in rows {
            let extents = extents_of
                .query_map(params![row_id], |row| extent_from_row(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            attachments.push(Attachment {
                uname,
                virtual_disk: virtual_disk.map(VdId::from_database),
                domain,
                vdevice: DeviceNumber::from_raw(vdevice),
                mode: if mode == "rw" {
                    AccessMode::ReadWrite
                } else {
                    AccessMode::ReadOnly
                },
                extents,
            });
        }
        Ok(attachments)
    }

    /// Check the database against SQLite's own integrity check, its foreign keys and the
    /// pool's invariants at `now`. Returns every problem found; empty means consistent.
    pub fn consistency_problems(&self, now: i64) -> Result<Vec<String>> {
        let mut problems: Vec<String> = self
            .connection
            .prepare("PRAGMA integrity_check")?
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter(|line| line != "ok")
            .collect();
        let foreign_key_violations: i64 = self.connection.query_row(
            "SELECT count(*) FROM pragma_foreign_key_check",
            [],
            |row| row.get(0),
        )?;
        if foreign_key_violations > 0 {
            problems.push(format!("{foreign_key_violations} foreign key violations"));
        }
        let queries: [(&str, &str); 4] = [
            (
                "extent held by more than one live virtual disk",
                "SELECT count(*) FROM (SELECT m.extent_id FROM virtual_disk_extents m
                   JOIN virtual_disks v ON v.id = m.virtual_disk_id
                   WHERE v.expires_at IS NULL OR v.expires_at > ?1
                   GROUP BY m.extent_id HAVING count(*) > 1)",
            ),
            (
                "virtual disk whose size is not the sum of its extents",
                "SELECT count(*) FROM virtual_disks v WHERE v.size_sectors !=
                   (SELECT coalesce(sum(e.nr_sectors), 0) FROM virtual_disk_extents m
                    JOIN extents e ON e.id = m.extent_id WHERE m.virtual_disk_id = v.id) AND ?1 = ?1",
            ),
            (
                "virtual disk whose layout positions have gaps",
                "SELECT count(*) FROM virtual_disks v WHERE (SELECT coalesce(max(position) + 1, 0)
                   FROM virtual_disk_extents m WHERE m.virtual_disk_id = v.id) !=
                   (SELECT count(*) FROM virtual_disk_extents m WHERE m.virtual_disk_id = v.id) AND ?1 = ?1",
            ),
            (
                "extent outside its partition or overlapping another",
                "SELECT (SELECT count(*) FROM extents e JOIN pool_partitions p ON p.id = e.partition_id
                         WHERE e.device != p.device OR e.start_sector < p.start_sector
                            OR e.start_sector + e.nr_sectors > p.start_sector + p.nr_sectors)
                      + (SELECT count(*) FROM extents a JOIN extents b ON a.device = b.device AND a.id < b.id
                         AND a.start_sector < b.start_sector + b.nr_sectors
                         AND b.start_sector < a.start_sector + a.nr_sectors) + 0 * ?1",
            ),
        ];
        for (problem, query) in queries {
            let count: i64 = self
                .connection
                .query_row(query, params![now], |row| row.get(0))?;
            if count > 0 {
                problems.push(format!("{count} {problem}"));
            }
        }
        Ok(problems)
    }
}

fn require_live(disk: &VirtualDisk) -> Result<()> {
    let id = disk.id;
    match disk.state {
        VdState::Live => Ok(()),
        VdState::Expired => Err(Error::Refused(format!(
            "{id}: has expired (its extents may be reissued; undelete checks whether it can come back)"
        ))),
        VdState::Creating => Err(Error::Refused(format!("{id}: is still being created"))),
        VdState::Abandoned => Err(Error::Refused(format!("{id}: its create never finished"))),
    }
}

/// `xvda` for 202:0, or `202:5` for a number without a classic name.
pub fn vdevice_name(vdevice: DeviceNumber) -> String {
    vdevice
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|| vdevice.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_of(extents: u64) -> (tempfile::TempDir, Database) {
        let directory = tempfile::tempdir().unwrap();
        let mut database = Database::open(
            &directory.path().join("v.sqlite"),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let region = Region {
            name: "hda1".into(),
            disk_device: DeviceNumber::new(3, 0).unwrap(),
            start_sector: 2048,
            nr_sectors: extents * 2048,
        };
        database.format(&region, 2048, 0).unwrap();
        (directory, database)
    }

    fn create(database: &mut Database, sectors: u64, expiry: Expiry, now: i64) -> VirtualDisk {
        let pending = database.begin_create(sectors, false, now).unwrap();
        database.finish_create(pending.id, expiry, now).unwrap()
    }

    #[test]
    fn expiry_returns_extents_to_the_pool_at_the_agreed_second() {
        let (_directory, mut database) = pool_of(2);
        let disk = create(&mut database, 4096, Expiry::After(10), 100);
        assert_eq!(database.pool(109).unwrap()[0].free_extents, 0);
        assert_eq!(
            database.virtual_disk(disk.id, 110).unwrap().state,
            VdState::Expired
        );
        assert_eq!(database.pool(110).unwrap()[0].free_extents, 2);
    }

    #[test]
    fn a_lapsed_create_lease_frees_its_extents_and_cannot_finish() {
        let (_directory, mut database) = pool_of(1);
        let pending = database.begin_create(2048, false, 0).unwrap();
        assert_eq!(
            pending.to_zero.len(),
            1,
            "freshly formatted extents are dirty"
        );
        let lapse = CREATE_LEASE_SECONDS;
        assert_eq!(database.pool(lapse).unwrap()[0].free_extents, 1);
        assert_eq!(
            database
                .finish_create(pending.id, Expiry::Never, lapse)
                .unwrap_err()
                .to_string(),
            "vd:1: lost its claim on its extents while being created"
        );
    }

    #[test]
    fn wiped_extents_are_not_zeroed_again_but_reused_ones_are() {
        let (_directory, mut database) = pool_of(1);
        let disk = create(&mut database, 2048, Expiry::Never, 0);
        database.delete(disk.id, false, true, 1).unwrap();
        assert_eq!(
            database.begin_create(2048, false, 2).unwrap().to_zero,
            vec![]
        );
    }
}
