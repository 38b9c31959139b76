//! Where a pool's tables live: a file on this host, or etcd for a pool many hosts share.

use rusqlite::{Connection, Transaction};

use pool_cluster::HostState;

use crate::error::Result;

/// A place that keeps a pool's tables and runs the pool's operations on them. The
/// operations are SQL over one set of tables, whatever the store, so every command works
/// the same, with the same output, on each.
pub trait Store: Send {
    /// The pool's URL, naming it in every message.
    fn url(&self) -> String;

    /// Whether many hosts share the pool, so that it may hold only shared disks.
    fn shared(&self) -> bool;

    /// The hosts that registered with the pool, or `None` for a pool of one host, which
    /// has no registrations.
    fn hosts(&self) -> Result<Option<Vec<HostState>>>;

    /// Run `read` on the pool as it is now: never an older state than a write that has
    /// already returned, on this host or any other.
    fn read(&self, read: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()>;

    /// Run `operation` as one transaction: all of it or none, serialised against every
    /// other writer of the pool. A store that finds another writer came first runs it
    /// again on the newer pool, so it must do nothing outside the transaction.
    fn write(&mut self, operation: &mut dyn FnMut(&Transaction<'_>) -> Result<()>) -> Result<()>;
}
