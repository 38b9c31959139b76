//! Virtual disks: creating one under a lease, its expiry, deleting and undeleting it,
//! growing and shrinking it, and the claims that hold extents while they are zeroed.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shared_abi::wire::Extent;

use super::attachments::{attachments_where, Attachment};
use super::pool::free_extents;
use super::virtual_disk::{read_live, read_virtual_disk, require_live};
pub use super::virtual_disk::{VdState, VirtualDisk};
use super::{device_number, extent_from_row, Database, LEASE_SECONDS};
use crate::allocate::{choose_extents, choose_extents_after, merge_adjacent, FreeExtent};
use crate::duration::Expiry;
use crate::error::{Error, Result};
use crate::size::format_sectors;
use crate::uname::VdId;
use crate::validator::{validate, User};
use shared_abi::SharingLevel;

/// A create that has claimed its extents but not yet zeroed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCreate {
    pub id: VdId,
    pub extents: Vec<Extent>,
    /// The extents to zero before the disk may be used: the dirty ones, or all of them.
    pub to_zero: Vec<Extent>,
}

/// Extents held for disk `id` while they are zeroed outside a transaction: those a wipe
/// zeros before they return to the pool, or those a grow zeros before they join the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: i64,
    pub id: VdId,
    pub extents: Vec<Extent>,
    /// The claimed extents that need zeroing.
    pub to_zero: Vec<Extent>,
}

/// A disk that holds extents now, as a user of them: live, being created, or holding a
/// claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub id: VdId,
    pub state: VdState,
    pub extents: Vec<Extent>,
}

/// Every disk that holds extents at `now`, but `excluding`.
pub(super) fn owners(
    connection: &Connection,
    now: i64,
    excluding: Option<VdId>,
) -> Result<Vec<Owner>> {
    let mut statement = connection.prepare(
        "SELECT m.virtual_disk_id, e.device, e.start_sector, e.nr_sectors FROM virtual_disk_extents m
           JOIN virtual_disks v ON v.id = m.virtual_disk_id JOIN extents e ON e.id = m.extent_id
           WHERE v.expires_at IS NULL OR v.expires_at > ?1
         UNION ALL
         SELECT claims.virtual_disk_id, e.device, e.start_sector, e.nr_sectors FROM claim_extents c
           JOIN claims ON claims.id = c.claim_id JOIN extents e ON e.id = c.extent_id
           WHERE claims.expires_at > ?1
         ORDER BY 1, 2, 3",
    )?;
    let mut extents: BTreeMap<i64, Vec<Extent>> = BTreeMap::new();
    for row in statement.query_map(params![now], |row| {
        Ok((row.get::<_, i64>(0)?, extent_from_row(row, 1)?))
    })? {
        let (id, extent) = row?;
        extents.entry(id).or_default().push(extent);
    }
    extents
        .into_iter()
        .map(|(id, extents)| (VdId::from_database(id), extents))
        .filter(|(id, _)| Some(*id) != excluding)
        .map(|(id, extents)| {
            Ok(Owner {
                id,
                state: read_virtual_disk(connection, id, now)?.state,
                extents: merge_adjacent(&extents),
            })
        })
        .collect()
}

/// Refuse when any of `users` overlaps `extents`, as a writer at level 0 would.
fn refuse_users(
    extents: &[Extent],
    users: &[User],
    what: impl FnOnce(String) -> String,
) -> Result<()> {
    let conflicts = validate(
        &merge_adjacent(extents),
        true,
        users,
        SharingLevel::ReadersOnly,
    );
    match conflicts.first() {
        Some(conflict) => Err(Error::Refused(what(conflict.explain(users)))),
        None => Ok(()),
    }
}

/// Insert a claim of `kind` on `extent_ids` for disk `id`, under a fresh lease; claims
/// that lapsed are forgotten first.
fn insert_claim(
    transaction: &Transaction<'_>,
    id: VdId,
    kind: &str,
    extent_ids: &[i64],
    now: i64,
) -> Result<i64> {
    transaction.execute("DELETE FROM claims WHERE expires_at <= ?1", params![now])?;
    transaction.execute(
        "INSERT INTO claims (virtual_disk_id, kind, expires_at) VALUES (?1, ?2, ?3)",
        params![id.get(), kind, now + LEASE_SECONDS],
    )?;
    let claim_id = transaction.last_insert_rowid();
    insert_positions(
        transaction,
        "claim_extents (claim_id, position, extent_id)",
        claim_id,
        0,
        extent_ids,
    )?;
    Ok(claim_id)
}

/// Insert `(owner, first_position + index, extent_ids[index])` rows into `table`: one
/// set-based statement, not one per extent (a 64 GiB disk of 4 MiB extents is 16 384 of
/// them). The ids go in as one bound JSON array, whose indices are the positions.
fn insert_positions(
    transaction: &Transaction<'_>,
    table: &str,
    owner: i64,
    first_position: i64,
    extent_ids: &[i64],
) -> Result<()> {
    let ids: Vec<String> = extent_ids.iter().map(i64::to_string).collect();
    let inserted = transaction.execute(
        &format!("INSERT INTO {table} SELECT ?1, ?2 + key, value FROM json_each(?3)"),
        params![owner, first_position, format!("[{}]", ids.join(","))],
    )?;
    if inserted != extent_ids.len() {
        // Rolled back: a disk shorter than its size must never be recorded.
        return Err(Error::Refused(format!(
            "recorded {inserted} of {} extents",
            extent_ids.len()
        )));
    }
    Ok(())
}

/// Mark `extent_ids` dirty: their new owner may write from now on, so should it die the
/// next one must zero again.
fn mark_dirty(transaction: &Transaction<'_>, extent_ids: &[i64]) -> Result<()> {
    let ids: Vec<String> = extent_ids.iter().map(i64::to_string).collect();
    transaction.execute(
        "UPDATE extents SET dirty = 1 WHERE id IN (SELECT value FROM json_each(?1))",
        params![format!("[{}]", ids.join(","))],
    )?;
    Ok(())
}

fn no_space(size_sectors: u64, free: &[FreeExtent], what: &str) -> Error {
    let free_sectors: u64 = free
        .iter()
        .map(|candidate| candidate.extent.nr_sectors())
        .sum();
    Error::Refused(format!(
        "{what} {}: no space (the pool has {} free)",
        format_sectors(size_sectors),
        format_sectors(free_sectors)
    ))
}

fn dirty_ones(chosen: &[FreeExtent], zero_all: bool) -> Vec<Extent> {
    chosen
        .iter()
        .filter(|candidate| zero_all || candidate.dirty)
        .map(|candidate| candidate.extent)
        .collect()
}

/// The ids of the extents of disk `id` from layout position `first` on.
fn extent_ids_of(connection: &Connection, id: VdId, first: i64) -> Result<Vec<i64>> {
    let mut statement = connection.prepare_cached(
        "SELECT extent_id FROM virtual_disk_extents WHERE virtual_disk_id = ?1 AND position >= ?2 ORDER BY position",
    )?;
    let ids = statement
        .query_map(params![id.get(), first], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// Refuse to delete or shrink a disk that a recorded attachment, or one of `users`, still
/// maps.
fn refuse_mapped(
    connection: &Connection,
    disk: &VirtualDisk,
    users: &[User],
    action: &str,
) -> Result<()> {
    let id = disk.id;
    let mut all: Vec<User> = attachments_where(connection, Some(id))?
        .iter()
        .map(Attachment::user)
        .collect();
    all.extend_from_slice(users);
    refuse_users(&disk.extents, &all, |conflict| {
        format!("{id}: still mapped: {conflict}; detach it first{action}")
    })
}

impl Database {
    /// Claim extents for a new disk of at least `size_sectors`. The disk is recorded as
    /// being created, holding its extents under a lease that starts once the lock is held;
    /// [`Database::finish_create`] makes it usable once the caller has zeroed `to_zero`.
    /// Selecting and claiming happen in one immediate transaction, so concurrent creates
    /// never share an extent (seed defect 6).
    pub fn begin_create(&mut self, size_sectors: u64, zero_all: bool) -> Result<PendingCreate> {
        self.immediate(|transaction, now| {
            let free = free_extents(transaction, now)?;
            let chosen = choose_extents(&free, size_sectors)
                .ok_or_else(|| no_space(size_sectors, &free, "create"))?;
            let allocated: u64 = chosen.iter().map(|candidate| candidate.extent.nr_sectors()).sum();
            transaction.execute(
                "INSERT INTO virtual_disks (state, size_sectors, created_at, expires_at) VALUES ('creating', ?1, ?2, ?3)",
                params![allocated, now, now + LEASE_SECONDS],
            )?;
            let id = transaction.last_insert_rowid();
            let extent_ids: Vec<i64> = chosen.iter().map(|candidate| candidate.id).collect();
            insert_positions(transaction, "virtual_disk_extents (virtual_disk_id, position, extent_id)", id, 0, &extent_ids)?;
            mark_dirty(transaction, &extent_ids)?;
            Ok(PendingCreate {
                id: VdId::from_database(id),
                extents: chosen.iter().map(|candidate| candidate.extent).collect(),
                to_zero: dirty_ones(&chosen, zero_all),
            })
        })
    }

    /// Extend the lease of a disk being created.
    pub fn renew_lease(&mut self, id: VdId) -> Result<()> {
        self.immediate(|transaction, now| {
            let changed = transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2
                 WHERE id = ?1 AND state = 'creating' AND expires_at > ?3",
                params![id.get(), now + LEASE_SECONDS, now],
            )?;
            if changed == 0 {
                return Err(lost_claim(id));
            }
            Ok(())
        })
    }

    /// Make a created disk usable, expiring as `expiry` says from now.
    pub fn finish_create(&mut self, id: VdId, expiry: Expiry) -> Result<VirtualDisk> {
        self.immediate(|transaction, now| {
            let changed = transaction.execute(
                "UPDATE virtual_disks SET state = 'ready', expires_at = ?2
                 WHERE id = ?1 AND state = 'creating' AND expires_at > ?3",
                params![id.get(), expiry.expires_at(now), now],
            )?;
            if changed == 0 {
                return Err(lost_claim(id));
            }
            read_virtual_disk(transaction, id, now)
        })
    }

    /// Give up a create whose zeroing failed: it is forgotten, and its extents, still
    /// dirty, return to the pool. A disk that never became usable held no one's data.
    pub fn abandon_create(&mut self, id: VdId) -> Result<()> {
        self.immediate(|transaction, _| {
            let creating: bool = transaction.query_row(
                "SELECT count(*) FROM virtual_disks WHERE id = ?1 AND state = 'creating'",
                params![id.get()],
                |row| row.get(0),
            )?;
            if creating {
                transaction.execute(
                    "DELETE FROM virtual_disk_extents WHERE virtual_disk_id = ?1",
                    params![id.get()],
                )?;
                transaction
                    .execute("DELETE FROM virtual_disks WHERE id = ?1", params![id.get()])?;
            }
            Ok(())
        })
    }

    /// One virtual disk, whatever its state.
    pub fn virtual_disk(&self, id: VdId) -> Result<VirtualDisk> {
        self.read(|connection, now| read_virtual_disk(connection, id, now))
    }

    /// A live virtual disk, or an error naming why it cannot be used.
    pub fn live_virtual_disk(&self, id: VdId) -> Result<VirtualDisk> {
        self.read(|connection, now| read_live(connection, id, now))
    }

    /// The virtual disks in id order: the live ones, or with `all` every one, whatever its
    /// state.
    pub fn virtual_disks(&self, all: bool) -> Result<Vec<VirtualDisk>> {
        self.read(|connection, now| {
            let ids: Vec<i64> = connection
                .prepare("SELECT id FROM virtual_disks ORDER BY id")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut disks = Vec::new();
            for id in ids {
                let disk = read_virtual_disk(connection, VdId::from_database(id), now)?;
                if all || disk.state == VdState::Live {
                    disks.push(disk);
                }
            }
            Ok(disks)
        })
    }

    /// Every disk that holds extents now (live, being created, or with a claim), but
    /// `excluding`: users of those extents, as much as any VBD.
    pub fn owners(&self, excluding: Option<VdId>) -> Result<Vec<Owner>> {
        self.read(|connection, now| owners(connection, now, excluding))
    }

    /// Change the expiry of a live disk. An expired disk is refused: its extents may belong
    /// to another disk by now (seed defect 3); `undelete` is the checked way back.
    pub fn refresh(&mut self, id: VdId, expiry: Expiry) -> Result<VirtualDisk> {
        self.immediate(|transaction, now| {
            read_live(transaction, id, now)?;
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), expiry.expires_at(now)],
            )?;
            read_virtual_disk(transaction, id, now)
        })
    }

    /// Expire a live disk now. Unless `force`, refused while a recorded attachment or one
    /// of `users` (VBDs the hypervisor reports) maps it. With `wipe`, its extents are not
    /// yet free: the returned claim holds them until [`Database::finish_wipe`].
    pub fn delete(
        &mut self,
        id: VdId,
        force: bool,
        wipe: bool,
        users: &[User],
    ) -> Result<(VirtualDisk, Option<Claim>)> {
        self.immediate(|transaction, now| {
            check_deletable(transaction, id, force, users, now)?;
            let claim = if wipe {
                let extent_ids = extent_ids_of(transaction, id, 0)?;
                let claim_id = insert_claim(transaction, id, "wipe", &extent_ids, now)?;
                let extents = read_virtual_disk(transaction, id, now)?.extents;
                Some(Claim {
                    claim_id,
                    id,
                    to_zero: extents.clone(),
                    extents,
                })
            } else {
                None
            };
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), now],
            )?;
            Ok((read_virtual_disk(transaction, id, now)?, claim))
        })
    }

    /// Extend the lease of a claim.
    pub fn renew_claim(&mut self, claim: &Claim) -> Result<()> {
        self.immediate(|transaction, now| {
            let changed = transaction.execute(
                "UPDATE claims SET expires_at = ?2 WHERE id = ?1 AND expires_at > ?3",
                params![claim.claim_id, now + LEASE_SECONDS, now],
            )?;
            if changed == 0 {
                return Err(lost_claim(claim.id));
            }
            Ok(())
        })
    }

    /// End a wipe whose extents were all zeroed: they are marked clean, but only those
    /// nothing could have written since. That holds while the claim held (no disk could own
    /// them) and for extents no recorded attachment maps (a forced delete leaves its VBD,
    /// which may still write). A lapsed claim marks nothing: in the meantime the disk may
    /// have come back and been written.
    pub fn finish_wipe(&mut self, claim: &Claim) -> Result<VirtualDisk> {
        self.immediate(|transaction, now| {
            take_claim(transaction, claim, now)?;
            transaction.execute(
                "UPDATE extents SET dirty = 0
                 WHERE id IN (SELECT extent_id FROM claim_extents WHERE claim_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM attachment_extents a
                                   WHERE a.device = extents.device
                                     AND a.start_sector < extents.start_sector + extents.nr_sectors
                                     AND extents.start_sector < a.start_sector + a.nr_sectors)",
                params![claim.claim_id],
            )?;
            transaction.execute("DELETE FROM claims WHERE id = ?1", params![claim.claim_id])?;
            read_virtual_disk(transaction, claim.id, now)
        })
    }

    /// Give up a claim whose zeroing failed: its extents, still dirty, are free again.
    pub fn abandon_claim(&mut self, claim: &Claim) -> Result<()> {
        self.immediate(|transaction, _| {
            transaction.execute("DELETE FROM claims WHERE id = ?1", params![claim.claim_id])?;
            Ok(())
        })
    }

    /// Claim extents to grow live disk `id` to at least `size_sectors`, preferring those
    /// that follow its last extent on disk, so the data in place never moves and the
    /// layout stays in few runs. [`Database::finish_grow`] appends them once zeroed.
    pub fn begin_grow(&mut self, id: VdId, size_sectors: u64) -> Result<Claim> {
        self.immediate(|transaction, now| {
            let disk = read_live(transaction, id, now)?;
            let more = size_sectors.saturating_sub(disk.size_sectors);
            let free = free_extents(transaction, now)?;
            let chosen =
                choose_extents_after(&free, disk.extents.last(), more).ok_or_else(|| {
                    no_space(
                        more,
                        &free,
                        &format!("resize {id} to {}: grow by", format_sectors(size_sectors)),
                    )
                })?;
            let extent_ids: Vec<i64> = chosen.iter().map(|candidate| candidate.id).collect();
            let claim_id = insert_claim(transaction, id, "grow", &extent_ids, now)?;
            mark_dirty(transaction, &extent_ids)?;
            Ok(Claim {
                claim_id,
                id,
                extents: chosen.iter().map(|candidate| candidate.extent).collect(),
                to_zero: dirty_ones(&chosen, false),
            })
        })
    }

    /// Append a grow's zeroed extents to its disk, after every extent it had.
    pub fn finish_grow(&mut self, claim: &Claim) -> Result<VirtualDisk> {
        self.immediate(|transaction, now| {
            take_claim(transaction, claim, now)?;
            let disk = read_live(transaction, claim.id, now)?;
            let extent_ids: Vec<i64> = transaction
                .prepare(
                    "SELECT extent_id FROM claim_extents WHERE claim_id = ?1 ORDER BY position",
                )?
                .query_map(params![claim.claim_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            transaction.execute("DELETE FROM claims WHERE id = ?1", params![claim.claim_id])?;
            let first_position = disk.extents.len() as i64;
            insert_positions(
                transaction,
                "virtual_disk_extents (virtual_disk_id, position, extent_id)",
                claim.id.get(),
                first_position,
                &extent_ids,
            )?;
            let added: u64 = claim.extents.iter().map(|extent| extent.nr_sectors()).sum();
            transaction.execute(
                "UPDATE virtual_disks SET size_sectors = size_sectors + ?2 WHERE id = ?1",
                params![claim.id.get(), added],
            )?;
            read_virtual_disk(transaction, claim.id, now)
        })
    }

    /// Shrink live disk `id` to the fewest of its first extents that hold `size_sectors`.
    /// Refused while a recorded attachment or one of `users` maps it. What it releases is
    /// held by a wipe claim until [`Database::finish_wipe`]; `None` when nothing is
    /// released.
    pub fn shrink(
        &mut self,
        id: VdId,
        size_sectors: u64,
        users: &[User],
    ) -> Result<(VirtualDisk, Option<Claim>)> {
        self.immediate(|transaction, now| {
            let disk = read_live(transaction, id, now)?;
            refuse_mapped(transaction, &disk, users, " before shrinking it")?;
            let mut kept_sectors = 0u64;
            let kept = disk
                .extents
                .iter()
                .take_while(|extent| {
                    let keep = kept_sectors < size_sectors;
                    kept_sectors += if keep { extent.nr_sectors() } else { 0 };
                    keep
                })
                .count();
            if kept == disk.extents.len() {
                return Ok((disk, None));
            }
            let released_ids = extent_ids_of(transaction, id, kept as i64)?;
            transaction.execute(
                "DELETE FROM virtual_disk_extents WHERE virtual_disk_id = ?1 AND position >= ?2",
                params![id.get(), kept as i64],
            )?;
            transaction.execute(
                "UPDATE virtual_disks SET size_sectors = ?2 WHERE id = ?1",
                params![id.get(), kept_sectors],
            )?;
            let claim_id = insert_claim(transaction, id, "wipe", &released_ids, now)?;
            let released = disk.extents[kept..].to_vec();
            let claim = Claim {
                claim_id,
                id,
                to_zero: released.clone(),
                extents: released,
            };
            Ok((read_virtual_disk(transaction, id, now)?, Some(claim)))
        })
    }

    /// Bring back an expired disk, expiring as `expiry` says, when none of its extents was
    /// given to a later disk (a reissued extent may hold someone else's data now), none is
    /// held by another disk or claim, and no recorded attachment of something else, nor one
    /// of `users`, maps one.
    pub fn undelete(&mut self, id: VdId, expiry: Expiry, users: &[User]) -> Result<VirtualDisk> {
        self.immediate(|transaction, now| {
            let disk = read_virtual_disk(transaction, id, now)?;
            if disk.state == VdState::Live {
                return Err(Error::Refused(format!(
                    "{id}: is live, nothing to undelete"
                )));
            }
            if disk.state != VdState::Expired {
                require_live(&disk)
                    .map_err(|error| Error::Refused(format!("{error}, so it cannot come back")))?;
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
            let mut others: Vec<User> = attachments_where(transaction, None)?
                .iter()
                .filter(|attachment| attachment.virtual_disk != Some(id))
                .map(Attachment::user)
                .collect();
            others.extend(
                owners(transaction, now, Some(id))?
                    .into_iter()
                    .map(User::owner),
            );
            others.extend_from_slice(users);
            refuse_users(&disk.extents, &others, |conflict| {
                format!("{id}: cannot come back: {conflict}; detach it first")
            })?;
            transaction.execute(
                "UPDATE virtual_disks SET expires_at = ?2 WHERE id = ?1",
                params![id.get(), expiry.expires_at(now)],
            )?;
            mark_dirty(transaction, &extent_ids_of(transaction, id, 0)?)?;
            read_virtual_disk(transaction, id, now)
        })
    }
}

fn check_deletable(
    connection: &Connection,
    id: VdId,
    force: bool,
    users: &[User],
    now: i64,
) -> Result<VirtualDisk> {
    let disk = read_live(connection, id, now)?;
    if !force {
        refuse_mapped(connection, &disk, users, " or use --force")?;
    }
    Ok(disk)
}

fn lost_claim(id: VdId) -> Error {
    Error::Refused(format!(
        "{id}: lost its claim on its extents while they were zeroed"
    ))
}

/// Check that `claim` still holds, or fail naming the disk.
fn take_claim(transaction: &Transaction<'_>, claim: &Claim, now: i64) -> Result<()> {
    let held: bool = transaction.query_row(
        "SELECT count(*) FROM claims WHERE id = ?1 AND expires_at > ?2",
        params![claim.claim_id, now],
        |row| row.get(0),
    )?;
    if held {
        Ok(())
    } else {
        Err(lost_claim(claim.id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use shared_abi::DeviceNumber;

    use super::*;
    use crate::database::OpenMode;
    use devices::{DiskIdentity, Region};

    /// A pool of `extents` extents of 1 MiB on hda1, and the clock the database reads.
    fn pool_of(extents: u64) -> (tempfile::TempDir, Database, Arc<AtomicI64>) {
        let directory = tempfile::tempdir().unwrap();
        let mut database = Database::open(
            &directory.path().join("v.sqlite"),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let clock = Arc::new(AtomicI64::new(0));
        let reader = Arc::clone(&clock);
        database.set_clock(move || reader.load(Ordering::SeqCst));
        let region = Region {
            name: "hda1".into(),
            disk_device: DeviceNumber::new(3, 0).unwrap(),
            start_sector: 2048,
            nr_sectors: extents * 2048,
            disk: DiskIdentity {
                path: "hda.img".into(),
                identity: "file 1:1".into(),
            },
            partition_table: None,
            warnings: Vec::new(),
            shared: false,
        };
        database.format(&region, 2048).unwrap();
        (directory, database, clock)
    }

    fn create(database: &mut Database, sectors: u64, expiry: Expiry) -> VirtualDisk {
        let pending = database.begin_create(sectors, false).unwrap();
        database.finish_create(pending.id, expiry).unwrap()
    }

    fn dirty(database: &Database) -> i64 {
        database
            .read(|connection, _| {
                Ok(connection.query_row(
                    "SELECT count(*) FROM extents WHERE dirty = 1",
                    [],
                    |row| row.get(0),
                )?)
            })
            .unwrap()
    }

    #[test]
    fn expiry_returns_extents_to_the_pool_at_the_agreed_second() {
        let (_directory, mut database, clock) = pool_of(2);
        clock.store(100, Ordering::SeqCst);
        let disk = create(&mut database, 4096, Expiry::After(10));
        clock.store(109, Ordering::SeqCst);
        assert_eq!(database.pool().unwrap()[0].free_extents, 0);
        clock.store(110, Ordering::SeqCst);
        assert_eq!(
            database.virtual_disk(disk.id).unwrap().state,
            VdState::Expired
        );
        assert_eq!(database.pool().unwrap()[0].free_extents, 2);
    }

    #[test]
    fn a_lapsed_create_lease_frees_its_extents_and_cannot_finish() {
        let (_directory, mut database, clock) = pool_of(1);
        let pending = database.begin_create(2048, false).unwrap();
        assert_eq!(
            pending.to_zero.len(),
            1,
            "freshly formatted extents are dirty"
        );
        clock.store(LEASE_SECONDS, Ordering::SeqCst);
        assert_eq!(database.pool().unwrap()[0].free_extents, 1);
        assert_eq!(
            database
                .finish_create(pending.id, Expiry::Never)
                .unwrap_err()
                .to_string(),
            "vd:1: lost its claim on its extents while they were zeroed"
        );
        assert_eq!(
            database.virtual_disk(pending.id).unwrap().state,
            VdState::Abandoned
        );
    }

    #[test]
    fn wiped_extents_are_not_zeroed_again_but_reused_ones_are() {
        let (_directory, mut database, _clock) = pool_of(1);
        let disk = create(&mut database, 2048, Expiry::Never);
        let (_, claim) = database.delete(disk.id, false, true, &[]).unwrap();
        database.finish_wipe(&claim.unwrap()).unwrap();
        assert_eq!(database.begin_create(2048, false).unwrap().to_zero, vec![]);
    }

    #[test]
    fn a_wipe_whose_claim_lapsed_marks_nothing_clean() {
        let (_directory, mut database, clock) = pool_of(2);
        let disk = create(&mut database, 4096, Expiry::Never);
        let (_, claim) = database.delete(disk.id, false, true, &[]).unwrap();
        let claim = claim.unwrap();
        assert_eq!(
            database.virtual_disk(disk.id).unwrap().state,
            VdState::Wiping
        );
        // The wiping process stalls past its lease; meanwhile the disk comes back and its
        // tenant may write again.
        clock.store(LEASE_SECONDS, Ordering::SeqCst);
        assert_eq!(
            database
                .undelete(disk.id, Expiry::Never, &[])
                .unwrap()
                .state,
            VdState::Live
        );
        assert_eq!(
            database.finish_wipe(&claim).unwrap_err().to_string(),
            "vd:1: lost its claim on its extents while they were zeroed"
        );
        assert_eq!(dirty(&database), 2);
        assert_eq!(
            database.renew_claim(&claim).unwrap_err().to_string(),
            "vd:1: lost its claim on its extents while they were zeroed"
        );
    }

    #[test]
    fn a_grow_holds_its_new_extents_and_a_lapsed_one_cannot_finish() {
        let (_directory, mut database, clock) = pool_of(3);
        let disk = create(&mut database, 2048, Expiry::Never);
        let claim = database.begin_grow(disk.id, 4096).unwrap();
        assert_eq!(database.pool().unwrap()[0].free_extents, 1);
        assert_eq!(
            database.begin_create(4096, false).unwrap_err().to_string(),
            "create 2M: no space (the pool has 1M free)"
        );
        clock.store(LEASE_SECONDS, Ordering::SeqCst);
        assert_eq!(
            database.finish_grow(&claim).unwrap_err().to_string(),
            "vd:1: lost its claim on its extents while they were zeroed"
        );
        assert_eq!(database.virtual_disk(disk.id).unwrap().size_sectors, 2048);
    }
}
