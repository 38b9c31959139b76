//! The VD database: the free pool, virtual disks, claims and recorded attachments, as
//! SQLite tables kept by a [`Store`]: a file on this host, or etcd for a pool many hosts
//! share. Every operation is written once, against those tables; every one that writes is
//! one transaction of its store with bound parameters, so it is all-or-nothing and
//! serialised against every other writer, and its time is read once it holds the pool, so
//! a wait never ages a lease.

mod attachments;
mod audit;
mod disks;
#[cfg(feature = "etcd")]
pub mod etcd;
mod pool;
mod sqlite;
mod store;
mod virtual_disk;

use std::path::Path;

use rusqlite::{Connection, Transaction};
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;

use crate::error::{Error, Result};
use crate::schema::{self, APPLICATION_ID, LATEST_VERSION};

pub use attachments::{AccessMode, Attachment, AttachmentTarget};
pub use disks::{Claim, Owner, PendingCreate, VdState, VirtualDisk};
pub use pool::{moved as pool_moved, PoolPartition};
pub use pool_cluster::{HostState, PoolUrl};
pub use sqlite::SqliteFile;
pub use store::Store;

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

/// An open vdisk database: the pool's operations over whichever store holds it.
pub struct Database {
    store: Box<dyn Store>,
    clock: Clock,
    host: String,
}

/// The host an attachment made before hosts were recorded belongs to: whichever host reads
/// it, since only a pool of one host (an SQLite file) can hold such records.
pub const UNNAMED_HOST: &str = "";

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

/// What a pool's tables say of themselves, once checked to be a vdisk pool's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SchemaState {
    /// Nothing at all: a pool never formatted.
    Fresh,
    /// A vdisk pool at this schema version, at most [`LATEST_VERSION`].
    Version(i64),
}

/// Refuse tables that are not a vdisk pool's, were written by a newer vdisk, or do not
/// match their schema version; `bad` words the refusal for the store. Changes nothing.
pub(crate) fn check_schema(
    connection: &Connection,
    bad: &dyn Fn(String) -> Error,
) -> Result<SchemaState> {
    let application_id: i32 =
        connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let objects: i64 =
        connection.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    if application_id == 0 && version == 0 && objects == 0 {
        return Ok(SchemaState::Fresh);
    }
    if application_id != APPLICATION_ID {
        return Err(bad(
            "not a vdisk database (another program's SQLite file)".into()
        ));
    }
    if version > LATEST_VERSION {
        return Err(bad(format!(
            "schema version {version} is newer than this vdisk understands ({LATEST_VERSION})"
        )));
    }
    if let Some(reason) = schema_mismatch(connection, version)? {
        return Err(bad(reason));
    }
    Ok(SchemaState::Version(version))
}

/// A store said it ran an operation and did not: a bug of the store, said as one.
fn unran(url: &str) -> Error {
    Error::Refused(format!("pool {url}: the store did not run the operation"))
}

impl Database {
    /// Open the SQLite database at `path`, refusing (and leaving untouched) a file that is
    /// not a vdisk database, is corrupt, was written by a newer vdisk, or whose tables do
    /// not match its schema version.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Database> {
        Ok(Database::with_store(Box::new(SqliteFile::open(
            path, mode,
        )?)))
    }

    /// Open the pool `url` names, in whichever store it is.
    pub fn open_pool(url: &PoolUrl, mode: OpenMode) -> Result<Database> {
        let store: Box<dyn Store> = match url {
            PoolUrl::Sqlite(path) => Box::new(SqliteFile::open(path, mode)?),
            #[cfg(feature = "etcd")]
            PoolUrl::Etcd(endpoints) => Box::new(etcd::EtcdStore::open(endpoints, mode)?),
            #[cfg(not(feature = "etcd"))]
            PoolUrl::Etcd(_) => {
                return Err(Error::Refused(format!(
                    "pool {url}: this build has no pools on etcd (the host-tools feature etcd)"
                )))
            }
        };
        Ok(Database::with_store(store))
    }

    /// The operations over `store`, on the system's clock, as the host this process runs
    /// on (see [`Database::set_host`]).
    pub fn with_store(store: Box<dyn Store>) -> Database {
        Database {
            store,
            clock: Box::new(crate::timestamp::now),
            host: UNNAMED_HOST.into(),
        }
    }

    /// The pool's URL, as messages name it.
    pub fn url(&self) -> String {
        self.store.url()
    }

    /// Record attachments as made on `host`, and take records of other hosts for VBDs this
    /// host's hypervisor does not hold.
    pub fn set_host(&mut self, host: &str) {
        self.host = host.into();
    }

    /// The hosts registered with the pool, or `None` for a pool of one host.
    pub fn hosts(&self) -> Result<Option<Vec<HostState>>> {
        self.store.hosts()
    }

    /// The hosts whose registration has lapsed: their backends serve no I/O, so what their
    /// attachments map is no one's in use any more.
    pub fn fenced_hosts(&self) -> Result<Vec<String>> {
        Ok(self
            .hosts()?
            .unwrap_or_default()
            .into_iter()
            .filter(|host| !host.alive)
            .map(|host| host.host)
            .collect())
    }

    /// The host this database records attachments for.
    pub fn host(&self) -> &str {
        &self.host
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

    /// Run `read` against the pool as it is now.
    fn read<T>(&self, mut read: impl FnMut(&Connection, i64) -> Result<T>) -> Result<T> {
        let now = self.now();
        let mut result = None;
        self.store.read(&mut |connection| {
            result = Some(read(connection, now)?);
            Ok(())
        })?;
        result.ok_or_else(|| unran(&self.store.url()))
    }

    /// Run `operation` as one transaction of the store at the time read once it holds the
    /// pool: committed when it succeeds, rolled back when it fails. A store may run it
    /// again on a newer pool when another writer came first.
    fn immediate<T>(
        &mut self,
        mut operation: impl FnMut(&Transaction<'_>, i64) -> Result<T>,
    ) -> Result<T> {
        let clock = &self.clock;
        let mut result = None;
        self.store.write(&mut |transaction| {
            result = Some(operation(transaction, clock())?);
            Ok(())
        })?;
        result.ok_or_else(|| unran(&self.store.url()))
    }
}

/// `xvda` for 202:0, or `202:5` for a number without a classic name.
pub fn vdevice_name(vdevice: DeviceNumber) -> String {
    vdevice
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|| vdevice.to_string())
}
