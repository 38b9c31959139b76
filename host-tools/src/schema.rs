//! The database schema, its version (`PRAGMA user_version`) and the migrations between
//! versions. Constraints live here, in the schema, so that no code path can break them.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::Result;

/// The tables and indexes of schema `version`, by `(type, name)`, as a fresh database
/// migrated to it has them: what a file claiming that version must hold.
pub fn objects_of_version(version: i64) -> rusqlite::Result<Vec<(String, String)>> {
    let connection = Connection::open_in_memory()?;
    for migration in MIGRATIONS.iter().take(version.max(0) as usize) {
        connection.execute_batch(migration)?;
    }
    objects(&connection)
}

/// The tables and indexes of a database, by `(type, name)`, leaving out SQLite's own.
pub fn objects(connection: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    connection
        .prepare(
            "SELECT type, name FROM sqlite_schema
             WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY type DESC, name",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

/// `PRAGMA application_id` of a vdisk database ("VDSK"): tells our file from any other
/// SQLite file, so that a foreign database is refused instead of being "migrated".
pub const APPLICATION_ID: i32 = 0x5644_534B;

/// Each migration takes the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    //
    // `extents` is the free pool. A virtual disk owns an extent through
    // `virtual_disk_extents`; it is live while `expires_at` is NULL or in the future, and an
    // extent is free when no live disk owns it and no recorded attachment overlaps it. Rows
    // of expired disks stay, so that `undelete` can tell whether an extent was reissued.
    // `dirty` marks an extent that may hold someone's data; allocation zeros it first.
    "
    CREATE TABLE pool_partitions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 32),
        device INTEGER NOT NULL CHECK (device BETWEEN 0 AND 4294967295),
        start_sector INTEGER NOT NULL CHECK (start_sector >= 0),
        nr_sectors INTEGER NOT NULL CHECK (nr_sectors > 0),
        extent_sectors INTEGER NOT NULL CHECK (extent_sectors > 0 AND extent_sectors <= nr_sectors),
        formatted_at INTEGER NOT NULL,
        UNIQUE (device, start_sector)
    ) STRICT;

    CREATE TABLE extents (
        id INTEGER PRIMARY KEY,
        partition_id INTEGER NOT NULL REFERENCES pool_partitions (id),
        device INTEGER NOT NULL CHECK (device BETWEEN 0 AND 4294967295),
        start_sector INTEGER NOT NULL CHECK (start_sector >= 0),
        nr_sectors INTEGER NOT NULL CHECK (nr_sectors > 0),
        dirty INTEGER NOT NULL DEFAULT 1 CHECK (dirty IN (0, 1)),
        UNIQUE (device, start_sector)
    ) STRICT;

    CREATE TABLE virtual_disks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready')),
        size_sectors INTEGER NOT NULL CHECK (size_sectors > 0),
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    ) STRICT;

    CREATE TABLE virtual_disk_extents (
        virtual_disk_id INTEGER NOT NULL REFERENCES virtual_disks (id),
        position INTEGER NOT NULL CHECK (position >= 0),
        extent_id INTEGER NOT NULL REFERENCES extents (id),
        PRIMARY KEY (virtual_disk_id, position),
        UNIQUE (virtual_disk_id, extent_id)
    ) STRICT;

    CREATE INDEX virtual_disk_extents_by_extent ON virtual_disk_extents (extent_id);

    CREATE TABLE attachments (
        id INTEGER PRIMARY KEY,
        uname TEXT NOT NULL,
        virtual_disk_id INTEGER REFERENCES virtual_disks (id),
        domain INTEGER NOT NULL CHECK (domain BETWEEN 0 AND 4294967295),
        vdevice INTEGER NOT NULL CHECK (vdevice BETWEEN 0 AND 4294967295),
        mode TEXT NOT NULL CHECK (mode IN ('r', 'rw')),
        attached_at INTEGER NOT NULL,
        UNIQUE (domain, vdevice)
    ) STRICT;

    CREATE TABLE attachment_extents (
        attachment_id INTEGER NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
        position INTEGER NOT NULL CHECK (position >= 0),
        device INTEGER NOT NULL CHECK (device BETWEEN 0 AND 4294967295),
        start_sector INTEGER NOT NULL CHECK (start_sector >= 0),
        nr_sectors INTEGER NOT NULL CHECK (nr_sectors > 0),
        PRIMARY KEY (attachment_id, position)
    ) STRICT;

    CREATE INDEX attachment_extents_by_device ON attachment_extents (device, start_sector);
    ",
    // Version 2.
    //
    // `pool_disks` records which disk each device number of the pool is: a file by its
    // file system and inode, a block device by its number. Two names for one disk, or one
    // number for another disk, would let two virtual disks share bytes.
    //
    // `claims` hold extents for an operation that writes to them outside a transaction: a
    // wipe (of a deleted disk, or of what a shrink released) and a grow (its new extents,
    // zeroed before they join the disk). Like a create's, a claim is a lease its process
    // renews; when the process dies it lapses and the extents, still dirty, are free again.
    //
    // An attachment is recorded before its VBD is made and confirmed after, so that a
    // reconciliation running meanwhile does not take the record for a dead one.
    "
    CREATE TABLE pool_disks (
        device INTEGER PRIMARY KEY CHECK (device BETWEEN 0 AND 4294967295),
        identity TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL
    ) STRICT;

    CREATE TABLE claims (
        id INTEGER PRIMARY KEY,
        virtual_disk_id INTEGER NOT NULL REFERENCES virtual_disks (id),
        kind TEXT NOT NULL CHECK (kind IN ('wipe', 'grow')),
        expires_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE claim_extents (
        claim_id INTEGER NOT NULL REFERENCES claims (id) ON DELETE CASCADE,
        position INTEGER NOT NULL CHECK (position >= 0),
        extent_id INTEGER NOT NULL REFERENCES extents (id),
        PRIMARY KEY (claim_id, position)
    ) STRICT;

    CREATE INDEX claim_extents_by_extent ON claim_extents (extent_id);

    ALTER TABLE attachments ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 1 CHECK (confirmed IN (0, 1));
    ",
    // Version 3.
    //
    // An attachment remembers the start of the hypervisor under which its VBD was made (the
    // start id of the Ready handshake, its 64 bits stored as SQLite's signed integer) and
    // the sharing level it was attached at, so that `vdisk restore` can make it again after
    // a restart, checked as it was checked then.
    //
    // A version-2 database is migrated, in the one transaction of `migrate`, rather than
    // refused: nothing in it is lost or guessed unsafely. Its records get no start id
    // (NULL), which the reconciliation takes for an earlier start: a record whose VBD is
    // there is matched and stamped with the current start, and one whose VBD is gone is
    // kept as restorable, never removed as dead on a guess. They get level 0, the strictest
    // and `attach --safety`'s default, so a restore of one can be refused where the attach
    // was not (say so and attach again), but never allows sharing that was not allowed.
    "
    ALTER TABLE attachments ADD COLUMN start_id INTEGER;
    ALTER TABLE attachments ADD COLUMN sharing_level INTEGER NOT NULL DEFAULT 0 CHECK (sharing_level BETWEEN 0 AND 2);
    ",
    // Version 4.
    //
    // A pool may be shared by many hosts (on etcd), so an attachment records the host whose
    // hypervisor holds its VBD, and a slot (domain, device) is one host's: domain 1's xvda
    // on two hosts are two VBDs. Records of older versions get the empty host, which every
    // host takes for its own: only a pool of one host could have made them. SQLite cannot
    // change a UNIQUE constraint in place, so the table is made anew and copied (foreign
    // keys are off while migrating, so the drop cascades to nothing).
    "
    CREATE TABLE attachments_v4 (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL DEFAULT '' CHECK (length(host) <= 64),
        uname TEXT NOT NULL,
        virtual_disk_id INTEGER REFERENCES virtual_disks (id),
        domain INTEGER NOT NULL CHECK (domain BETWEEN 0 AND 4294967295),
        vdevice INTEGER NOT NULL CHECK (vdevice BETWEEN 0 AND 4294967295),
        mode TEXT NOT NULL CHECK (mode IN ('r', 'rw')),
        attached_at INTEGER NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 1 CHECK (confirmed IN (0, 1)),
        start_id INTEGER,
        sharing_level INTEGER NOT NULL DEFAULT 0 CHECK (sharing_level BETWEEN 0 AND 2),
        UNIQUE (host, domain, vdevice)
    ) STRICT;
    INSERT INTO attachments_v4
        (id, host, uname, virtual_disk_id, domain, vdevice, mode, attached_at, confirmed, start_id, sharing_level)
        SELECT id, '', uname, virtual_disk_id, domain, vdevice, mode, attached_at, confirmed, start_id, sharing_level
        FROM attachments;
    DROP TABLE attachments;
    ALTER TABLE attachments_v4 RENAME TO attachments;
    ",
];

/// The schema version this build writes.
pub const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the schema up to [`LATEST_VERSION`] in one immediate transaction. The version is
/// read again inside the transaction, so two processes initialising one file at once apply
/// each migration once.
pub fn migrate(connection: &mut Connection) -> Result<()> {
    // A migration that makes a table anew drops the old one, which with foreign keys on
    // would cascade to the rows that refer to it. The pragma is a no-op in a transaction.
    let enforced: bool = connection.query_row("PRAGMA foreign_keys", [], |row| row.get(0))?;
    connection.execute_batch("PRAGMA foreign_keys = OFF;")?;
    let result = migrate_without_foreign_keys(connection);
    if enforced {
        connection.execute_batch("PRAGMA foreign_keys = ON;")?;
    }
    result
}

fn migrate_without_foreign_keys(connection: &mut Connection) -> Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        transaction.execute_batch(migration)?;
        // PRAGMA arguments cannot be bound; these are our own integer constants.
        transaction.execute_batch(&format!(
            "PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};",
            index + 1
        ))?;
    }
    // The copies of tables made anew must leave every reference whole.
    let violations: i64 =
        transaction.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })?;
    if violations > 0 {
        return Err(crate::error::Error::Refused(format!(
            "migrating the schema to version {LATEST_VERSION} would leave {violations} broken references"
        )));
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_harmless() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        migrate(&mut connection).unwrap();
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, LATEST_VERSION);
    }

    #[test]
    fn constraints_refuse_nonsense_rows() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        let refused = connection.execute(
            "INSERT INTO virtual_disks (state, size_sectors, created_at) VALUES ('ready', 0, 0)",
            [],
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "CHECK constraint failed: size_sectors > 0"
        );
        let refused = connection.execute(
            "INSERT INTO virtual_disks (state, size_sectors, created_at) VALUES ('zombie', 1, 0)",
            [],
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "CHECK constraint failed: state IN ('creating', 'ready')"
        );
    }
}
