//! The VD database: the free pool, virtual disks, claims and recorded attachments in
//! SQLite. Every public operation that writes is one `BEGIN IMMEDIATE` transaction with
//! bound parameters, so it is all-or-nothing and serialised against every other process;
//! its time is read once the lock is held, so a wait for the lock never ages a lease.

mod attachments;
mod audit;
mod disks;
mod pool;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;

use crate::error::{Error, Result};
use crate::schema::{self, APPLICATION_ID, LATEST_VERSION};

pub use attachments::{AccessMode, Attachment, AttachmentTarget};
pub use disks::{Claim, Owner, PendingCreate, VdState, VirtualDisk};
pub use pool::{moved as pool_moved, PoolPartition};

/// How long a process waits for another's lock before it gives up: long enough for eight
/// processes to queue behind one another, short enough that a wedged one is noticed.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A disk being created, and a claim (a wipe or a grow), holds its extents for this long;
/// the process renews the lease while it zeros. When the process dies, the lease runs out
/// and the extents (still marked dirty) return to the pool.
pub const LEASE_SECONDS: i64 = 20;

/// How a command opens the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Only to read: nothing is written, no journal file is made, and a user who may only
    /// read the file can use it.
    ReadOnly,
    /// To change it; the database must exist already.
    Existing,
    /// To change it, creating the file and its parent directory when missing (`format`,
    /// `attach`).
    CreateIfMissing,
}

/// Where a database takes the time from: Unix seconds.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// An open vdisk database.
pub struct Database {
    connection: Connection,
    path: PathBuf,
    clock: Clock,
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

/// One line saying what SQLite found wrong with the file at `path`. SQLite's messages for
/// bad statements carry the whole statement; only the message itself is kept.
fn describe(path: &Path, error: rusqlite::Error) -> Error {
    let bad = |reason: String| Error::BadDatabase {
        path: path.to_path_buf(),
        reason: reason.replace('\n', " "),
    };
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Locked {
            path: path.to_path_buf(),
            seconds: BUSY_TIMEOUT.as_secs(),
        },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            bad("corrupt (not a healthy SQLite file)".into())
        }
        _ => match error {
            rusqlite::Error::SqlInputError { msg, .. } => bad(msg),
            rusqlite::Error::SqliteFailure(_, Some(message)) => bad(message),
            other => bad(other.to_string()),
        },
    }
}

/// Refuse a file that is there but is not an SQLite database, reading only its header.
/// `Ok(false)` when the file does not exist.
fn check_header(path: &Path) -> Result<bool> {
    match fs::File::open(path) {
        Ok(mut file) => {
            let mut header = [0u8; 16];
            let length = file
                .read(&mut header)
                .map_err(|error| Error::io(path, error))?;
            // An empty file is what SQLite itself leaves before its first write.
            if length > 0 && (length < 16 || &header != SQLITE_MAGIC) {
                return Err(Error::BadDatabase {
                    path: path.to_path_buf(),
                    reason: "not an SQLite database".into(),
                });
            }
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(Error::io(path, error)),
    }
}

/// Why the tables of a database do not match what its version says, if they do not.
fn schema_mismatch(connection: &Connection, version: i64) -> rusqlite::Result<Option<String>> {
    let found = schema::objects(connection)?;
    let expected = schema::objects_of_version(version)?;
    let extra = found.iter().find(|object| !expected.contains(object));
    let missing = expected.iter().find(|object| !found.contains(object));
    Ok(match (extra, missing) {
        (Some((kind, name)), _) => Some(format!(
            "schema version {version} does not match its tables (it has {kind} {name}, which version {version} has not)"
        )),
        (None, Some((kind, name))) => Some(format!(
            "schema version {version} does not match its tables (it lacks {kind} {name}, which version {version} has)"
        )),
        (None, None) => None,
    })
}

impl Database {
    /// Open the database at `path`, refusing (and leaving untouched) a file that is not a
    /// vdisk database, is corrupt, was written by a newer vdisk, or whose tables do not
    /// match its schema version.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Database> {
        let bad = |reason: String| Error::BadDatabase {
            path: path.to_path_buf(),
            reason,
        };
        if !check_header(path)? {
            if mode != OpenMode::CreateIfMissing {
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
        let flags = match mode {
            OpenMode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
            OpenMode::Existing => OpenFlags::SQLITE_OPEN_READ_WRITE,
            OpenMode::CreateIfMissing => {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            }
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let describe = |error| describe(path, error);
        let mut connection = Connection::open_with_flags(path, flags).map_err(describe)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(describe)?;
        let read_header = |connection: &Connection| -> rusqlite::Result<(i32, i64, i64)> {
            Ok((
                connection.query_row("PRAGMA application_id", [], |row| row.get(0))?,
                connection.query_row("PRAGMA user_version", [], |row| row.get(0))?,
                connection.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?,
            ))
        };
        let (application_id, version, objects) = read_header(&connection).map_err(describe)?;
        let fresh = application_id == 0 && version == 0 && objects == 0;
        if fresh && mode != OpenMode::CreateIfMissing {
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
        if let Some(reason) = schema_mismatch(&connection, version).map_err(describe)? {
            return Err(bad(reason));
        }
        if version < LATEST_VERSION && mode == OpenMode::ReadOnly {
            // Reading needs the latest tables; migrating is the one write a reader makes,
            // through a connection of its own, and only where it may write.
            Database::open(path, OpenMode::Existing).map_err(|error| match error {
                Error::BadDatabase { reason, .. } if reason.contains("readonly") => bad(format!(
                    "schema version {version} must be brought up to {LATEST_VERSION}, which needs write access"
                )),
                other => other,
            })?;
        }
        if mode != OpenMode::ReadOnly {
            // Only now that the file is known to be ours may anything be written to it. A
            // rollback journal, not WAL: a WAL reader needs `-wal` and `-shm` files beside
            // the database, which a reader who may not write cannot make, and which a
            // reader who may write leaves owned by itself, locking out the owner.
            connection
                .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
                .map_err(describe)?;
            connection
                .execute_batch("PRAGMA synchronous = FULL;")
                .map_err(describe)?;
            if version < LATEST_VERSION {
                schema::migrate(&mut connection).map_err(|error| match error {
                    Error::Sqlite(error) => describe(error),
                    other => other,
                })?;
            }
        }
        connection
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(describe)?;
        Ok(Database {
            connection,
            path: path.to_path_buf(),
            clock: Box::new(crate::timestamp::now),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the time from `clock` instead of the system's (tests move it to see leases
    /// and expiries lapse).
    pub fn set_clock(&mut self, clock: impl Fn() -> i64 + Send + 'static) {
        self.clock = Box::new(clock);
    }

    /// The time as this database's clock tells it.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Errors of SQLite named with this database's path.
    fn named(&self, error: Error) -> Error {
        match error {
            Error::Sqlite(error) => describe(&self.path, error),
            other => other,
        }
    }

    /// Run `read` against the database at the current time.
    fn read<T>(&self, read: impl FnOnce(&Connection, i64) -> Result<T>) -> Result<T> {
        read(&self.connection, self.now()).map_err(|error| self.named(error))
    }

    /// Run `operation` as one immediate transaction at the time read once its lock is
    /// held: committed when it succeeds, rolled back when it fails.
    fn immediate<T>(
        &mut self,
        operation: impl FnOnce(&Transaction<'_>, i64) -> Result<T>,
    ) -> Result<T> {
        let result = (|| {
            let transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = (self.clock)();
            let result = operation(&transaction, now)?;
            transaction.commit()?;
            Ok(result)
        })();
        result.map_err(|error| self.named(error))
    }
}

/// `xvda` for 202:0, or `202:5` for a number without a classic name.
pub fn vdevice_name(vdevice: DeviceNumber) -> String {
    vdevice
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|| vdevice.to_string())
}
