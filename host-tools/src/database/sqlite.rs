//! The pool in an SQLite file on this host: `BEGIN IMMEDIATE` transactions serialise every
//! process that opens the file, and a rollback journal keeps each all-or-nothing.

use std::cell::RefCell;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use super::{check_schema, HostState, OpenMode, SchemaState, Store};
use crate::error::{Error, Result};
use crate::schema::{self, LATEST_VERSION};

/// How long a process waits for another's lock before it gives up: long enough for eight
/// processes to queue behind one another, short enough that a wedged one is noticed.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// A pool in an SQLite file.
pub struct SqliteFile {
    // A RefCell only so that reads, which take `&self`, can use the cached statements.
    connection: RefCell<Connection>,
    path: PathBuf,
}

/// One line saying what SQLite found wrong with the file at `path`. SQLite's messages for
/// bad statements carry the whole statement; only the message itself is kept.
pub(super) fn describe(path: &Path, error: rusqlite::Error) -> Error {
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

/// Errors of SQLite named with the pool's path.
pub(super) fn named(path: &Path, error: Error) -> Error {
    match error {
        Error::Sqlite(error) => describe(path, error),
        other => other,
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

impl SqliteFile {
    /// Open the database at `path`, refusing (and leaving untouched) a file that is not a
    /// vdisk database, is corrupt, was written by a newer vdisk, or whose tables do not
    /// match its schema version.
    pub fn open(path: &Path, mode: OpenMode) -> Result<SqliteFile> {
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
        let version = match check_schema(&connection, &bad).map_err(|error| named(path, error))? {
            SchemaState::Fresh if mode != OpenMode::CreateIfMissing => {
                return Err(bad(
                    "empty, not a vdisk database (vdisk format initialises one)".into(),
                ));
            }
            SchemaState::Fresh => 0,
            SchemaState::Version(version) => version,
        };
        if version < LATEST_VERSION && mode == OpenMode::ReadOnly {
            // Reading needs the latest tables; migrating is the one write a reader makes,
            // through a connection of its own, and only where it may write.
            SqliteFile::open(path, OpenMode::Existing).map_err(|error| match error {
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
                schema::migrate(&mut connection).map_err(|error| named(path, error))?;
            }
        }
        connection
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(describe)?;
        Ok(SqliteFile {
            connection: RefCell::new(connection),
            path: path.to_path_buf(),
        })
    }
}

impl Store for SqliteFile {
    fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn shared(&self) -> bool {
        false
    }

    fn hosts(&self) -> Result<Option<Vec<HostState>>> {
        Ok(None)
    }

    fn read(&self, read: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()> {
        read(&self.connection.borrow()).map_err(|error| named(&self.path, error))
    }

    fn write(&mut self, operation: &mut dyn FnMut(&Transaction<'_>) -> Result<()>) -> Result<()> {
        let result = (|| {
            let mut connection = self.connection.borrow_mut();
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            operation(&transaction)?;
            transaction.commit()?;
            Ok(())
        })();
        result.map_err(|error| named(&self.path, error))
    }
}
