//! The pool on etcd, for many hosts that share SAN disks. The tables are the same SQLite
//! tables as on one host, kept in etcd (see [`snapshot`]) and run in memory: a read loads
//! the pool as of a linearizable read (never older than a write any host has finished); a
//! write runs its operation in a transaction on that copy and then puts the tables it
//! changed in one etcd transaction that compares the pool's head key with the revision it
//! read. Another host's write in between fails the comparison, and the operation runs again
//! on the newer pool, so two hosts never both hand out one extent, and none is lost.
//!
//! Every write is serialised through the head key: simple and safe, at the price of
//! conflicts under many writers, and of a pool no larger than one etcd request (1.5 MiB by
//! default: a little over 40 000 extents).

mod snapshot;

use std::cell::{RefCell, RefMut};
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use rusqlite::{Connection, Transaction};

use pool_cluster::connection::{describe, Cluster, Outcome};
use pool_cluster::hosts;

use super::sqlite::named;
use super::{check_schema, OpenMode, SchemaState, Store};
use crate::error::{Error, Result};
use crate::schema::{self, LATEST_VERSION};

/// Every key of the pool starts with this.
pub const PREFIX: &str = "/vdisk/pool/";

/// The key every write of the pool puts: its revision is the pool's.
const HEAD: &str = "/vdisk/pool/head";

/// A write that keeps losing to other hosts' writes gives up after this long.
const CONFLICTS_FOR: Duration = Duration::from_secs(60);

/// The pool as last read, with the revision of its head key then (0: never written).
struct PoolCopy {
    revision: i64,
    connection: Connection,
    /// The stored values it was loaded from, to put only what a write changed.
    stored: BTreeMap<String, String>,
    fresh: bool,
}

/// A pool kept in an etcd cluster.
pub struct EtcdStore {
    cluster: Cluster,
    copy: RefCell<Option<PoolCopy>>,
}

impl EtcdStore {
    /// Connect to the cluster at `endpoints` and read the pool; refused when it was never
    /// formatted unless `mode` may create it.
    pub fn open(endpoints: &[String], mode: OpenMode) -> Result<EtcdStore> {
        let url = format!("etcd://{}", endpoints.join(","));
        let store = EtcdStore {
            cluster: Cluster::connect(endpoints)?,
            copy: RefCell::new(None),
        };
        if store.current()?.as_ref().is_some_and(|copy| copy.fresh)
            && mode != OpenMode::CreateIfMissing
        {
            return Err(Error::NotFound(format!(
                "pool {url}: has no pool yet (vdisk format creates it)"
            )));
        }
        Ok(store)
    }

    /// The pool as it is now: the copy already held when the head key has not moved since,
    /// otherwise every key read again at one revision.
    fn current(&self) -> Result<RefMut<'_, Option<PoolCopy>>> {
        let head = self.cluster.get(HEAD, None)?;
        let revision = head.kvs().first().map_or(0, |head| head.mod_revision());
        let mut copy = self.copy.borrow_mut();
        if copy.as_ref().is_some_and(|copy| copy.revision == revision) {
            return Ok(copy);
        }
        let all = self
            .cluster
            .get(PREFIX, Some(GetOptions::new().with_prefix()))?;
        let mut stored = BTreeMap::new();
        let mut revision = 0;
        for entry in all.kvs() {
            let key = entry
                .key_str()
                .map_err(|error| self.cluster.unavailable(describe(&error)))?;
            if key == HEAD {
                revision = entry.mod_revision();
                continue;
            }
            let value = entry
                .value_str()
                .map_err(|error| self.cluster.unavailable(describe(&error)))?;
            stored.insert(key[PREFIX.len()..].to_string(), value.to_string());
        }
        let url = self.url();
        let bad = |reason: String| Error::BadDatabase {
            path: url.clone().into(),
            reason,
        };
        let mut connection =
            snapshot::load(&stored).map_err(|error| named(Path::new(&url), error))?;
        let fresh =
            match check_schema(&connection, &bad).map_err(|error| named(Path::new(&url), error))? {
                SchemaState::Fresh => true,
                SchemaState::Version(version) => {
                    if version < LATEST_VERSION {
                        // Read in the latest tables; the next write stores them so.
                        schema::migrate(&mut connection)
                            .map_err(|error| named(Path::new(&url), error))?;
                    }
                    false
                }
            };
        *copy = Some(PoolCopy {
            revision,
            connection,
            stored,
            fresh,
        });
        Ok(copy)
    }

    /// Put what `operation` changed in the pool, if no other writer came first: `Ok(true)`
    /// when committed, `Ok(false)` when another writer came first (nothing was done).
    fn try_write(&self, operation: &mut dyn FnMut(&Transaction<'_>) -> Result<()>) -> Result<bool> {
        let url = self.url();
        let mut guard = self.current()?;
        let Some(copy) = guard.as_mut() else {
            return Err(self
                .cluster
                .unavailable("no copy of the pool".into())
                .into());
        };
        if copy.fresh {
            schema::migrate(&mut copy.connection).map_err(|error| named(Path::new(&url), error))?;
        }
        let transaction = copy.connection.transaction()?;
        let outcome = (|| {
            operation(&transaction)?;
            let values = snapshot::dump(&transaction)?;
            let mut operations: Vec<TxnOp> = values
                .iter()
                .filter(|(key, value)| copy.stored.get(*key) != Some(value))
                .map(|(key, value)| TxnOp::put(format!("{PREFIX}{key}"), value.as_str(), None))
                .collect();
            operations.extend(
                copy.stored
                    .keys()
                    .filter(|key| !values.contains_key(*key))
                    .map(|key| TxnOp::delete(format!("{PREFIX}{key}"), None)),
            );
            if operations.is_empty() {
                return Ok(None);
            }
            // Which write put the head, should its answer be lost.
            let mark = format!(
                "vdisk pool {:016x}",
                RandomState::new().build_hasher().finish()
            );
            operations.push(TxnOp::put(HEAD, mark.as_str(), None));
            let unchanged = if copy.revision == 0 {
                Compare::version(HEAD, CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(HEAD, CompareOp::Equal, copy.revision)
            };
            let committed = match self
                .cluster
                .commit(Txn::new().when([unchanged]).and_then(operations))?
            {
                Outcome::Answered(response) => response
                    .succeeded()
                    .then(|| response.header().map_or(0, |header| header.revision())),
                Outcome::Unknown(why) => self.settle(copy.revision, &mark, &why)?,
            };
            Ok(Some((committed, values)))
        })();
        match outcome {
            Ok(None) => Ok(true),
            Ok(Some((Some(revision), values))) => {
                transaction.commit()?;
                copy.revision = revision;
                copy.stored = values;
                copy.fresh = false;
                Ok(true)
            }
            result => {
                // Refused, failed, or beaten by another writer: the copy is not the pool any
                // more (a migration, a rolled-back transaction), so it is read again.
                drop(transaction);
                *guard = None;
                result.map(|_| false)
            }
        }
    }
}

impl EtcdStore {
    /// Whether a write whose answer was lost (`why`) was applied, from the head key: the
    /// revision it was applied at when the head holds its `mark`, `None` when the head is
    /// still at the revision it compared with `read` (so it was not, and may run again),
    /// and an error when another write has moved the head since (it cannot be told).
    fn settle(&self, read: i64, mark: &str, why: &str) -> Result<Option<i64>> {
        let head = self.cluster.get(HEAD, None)?;
        match head.kvs().first() {
            Some(head) if head.value() == mark.as_bytes() => Ok(Some(head.mod_revision())),
            Some(head) if head.mod_revision() == read => Ok(None),
            None if read == 0 => Ok(None),
            _ => Err(self
                .cluster
                .unavailable(format!(
                    "{why} (the change may or may not have been made: vdisk list shows which)"
                ))
                .into()),
        }
    }
}

/// A little random wait before trying a write again, so racing hosts do not meet again.
fn back_off(attempt: u32) {
    let jitter = RandomState::new().build_hasher().finish() % 20;
    std::thread::sleep(Duration::from_millis(
        u64::from(attempt.min(10)) * 5 + jitter,
    ));
}

impl Store for EtcdStore {
    fn url(&self) -> String {
        self.cluster.url()
    }

    fn shared(&self) -> bool {
        true
    }

    fn hosts(&self) -> Result<Option<Vec<super::HostState>>> {
        Ok(Some(hosts::hosts(&self.cluster)?))
    }

    fn read(&self, read: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()> {
        let url = self.url();
        let copy = self.current()?;
        match copy.as_ref() {
            Some(copy) => read(&copy.connection).map_err(|error| named(Path::new(&url), error)),
            None => Err(self
                .cluster
                .unavailable("no copy of the pool".into())
                .into()),
        }
    }

    fn write(&mut self, operation: &mut dyn FnMut(&Transaction<'_>) -> Result<()>) -> Result<()> {
        let url = self.url();
        let started = Instant::now();
        for attempt in 0.. {
            if self
                .try_write(operation)
                .map_err(|error| named(Path::new(&url), error))?
            {
                return Ok(());
            }
            if started.elapsed() >= CONFLICTS_FOR {
                break;
            }
            back_off(attempt);
        }
        Err(self
            .cluster
            .unavailable(format!(
                "other hosts' writes kept coming first for {} s",
                CONFLICTS_FOR.as_secs()
            ))
            .into())
    }
}
