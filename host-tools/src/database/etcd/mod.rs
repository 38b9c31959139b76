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

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use rusqlite::{Connection, Transaction};

use super::sqlite::named;
use super::{check_schema, OpenMode, SchemaState, Store};
use crate::error::{Error, Result};
use crate::schema::{self, LATEST_VERSION};

/// Every key of the pool starts with this.
pub const PREFIX: &str = "/vdisk/pool/";

/// The key every write of the pool puts: its revision is the pool's.
const HEAD: &str = "/vdisk/pool/head";

/// One request waits this long for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests that find no quorum are tried again until this long has passed, which rides
/// out a leader election (one to two seconds with etcd's defaults) and still fails a
/// command well within 15 s.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(5);

/// A write that keeps losing to other hosts' writes gives up after this long.
const CONFLICTS_FOR: Duration = Duration::from_secs(60);

/// The pool as last read, with the revision of its head key then (0: never written).
struct Copy {
    revision: i64,
    connection: Connection,
    /// The stored values it was loaded from, to put only what a write changed.
    stored: BTreeMap<String, String>,
    fresh: bool,
}

/// A pool kept in an etcd cluster.
pub struct EtcdStore {
    endpoints: Vec<String>,
    runtime: tokio::runtime::Runtime,
    client: Client,
    copy: RefCell<Option<Copy>>,
}

impl EtcdStore {
    /// Connect to the cluster at `endpoints` and read the pool; refused when it was never
    /// formatted unless `mode` may create it.
    pub fn open(endpoints: &[String], mode: OpenMode) -> Result<EtcdStore> {
        let url = format!("etcd://{}", endpoints.join(","));
        let unavailable = |reason: String| Error::Unavailable {
            pool: url.clone(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| unavailable(format!("cannot start its client: {error}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let urls: Vec<String> = endpoints
            .iter()
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&urls, Some(options))).await
            })
            .map_err(|_| {
                unavailable(format!(
                    "no member answered within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|error| unavailable(describe(&error)))?;
        let store = EtcdStore {
            endpoints: endpoints.to_vec(),
            runtime,
            client,
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

    fn unavailable(&self, reason: String) -> Error {
        Error::Unavailable {
            pool: self.url(),
            reason,
        }
    }

    /// One request, given at most [`REQUEST_TIMEOUT`].
    fn request<T>(
        &self,
        request: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> std::result::Result<T, Failure> {
        self.runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, request).await })
            .map_err(|_| Failure::NoAnswer)?
            .map_err(Failure::Client)
    }

    /// A linearizable read, tried again while members are down or the cluster has no
    /// quorum (an election) until [`UNAVAILABLE_AFTER`].
    fn get(&self, key: &str, options: Option<GetOptions>) -> Result<etcd_client::GetResponse> {
        let deadline = Instant::now() + UNAVAILABLE_AFTER;
        loop {
            let mut client = self.client.clone();
            match self.request(client.get(key, options.clone())) {
                Ok(response) => return Ok(response),
                Err(failure) if Instant::now() >= deadline => {
                    return Err(self.unavailable(failure.to_string()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The transaction `txn`, tried again only while it certainly did not reach the
    /// cluster (a member down, no leader), until [`UNAVAILABLE_AFTER`]: one that may have
    /// been applied is never applied twice.
    fn commit(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let deadline = Instant::now() + UNAVAILABLE_AFTER;
        loop {
            let mut client = self.client.clone();
            match self.request(client.txn(txn.clone())) {
                Ok(response) => return Ok(response),
                Err(failure) if failure.not_delivered() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(failure) if failure.not_delivered() => {
                    return Err(self.unavailable(failure.to_string()))
                }
                Err(failure) => {
                    return Err(self.unavailable(format!(
                    "{failure} (the change may or may not have been made: vdisk list shows which)"
                )))
                }
            }
        }
    }

    /// The pool as it is now: the copy already held when the head key has not moved since,
    /// otherwise every key read again at one revision.
    fn current(&self) -> Result<RefMut<'_, Option<Copy>>> {
        let head = self.get(HEAD, None)?;
        let revision = head.kvs().first().map_or(0, |head| head.mod_revision());
        let mut copy = self.copy.borrow_mut();
        if copy.as_ref().is_some_and(|copy| copy.revision == revision) {
            return Ok(copy);
        }
        let all = self.get(PREFIX, Some(GetOptions::new().with_prefix()))?;
        let mut stored = BTreeMap::new();
        let mut revision = 0;
        for entry in all.kvs() {
            let key = entry
                .key_str()
                .map_err(|error| self.unavailable(describe(&error)))?;
            if key == HEAD {
                revision = entry.mod_revision();
                continue;
            }
            let value = entry
                .value_str()
                .map_err(|error| self.unavailable(describe(&error)))?;
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
        *copy = Some(Copy {
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
            return Err(self.unavailable("no copy of the pool".into()));
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
            operations.push(TxnOp::put(HEAD, "vdisk pool", None));
            let unchanged = if copy.revision == 0 {
                Compare::version(HEAD, CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(HEAD, CompareOp::Equal, copy.revision)
            };
            let response = self.commit(Txn::new().when([unchanged]).and_then(operations))?;
            Ok(Some((response, values)))
        })();
        match outcome {
            Ok(None) => Ok(true),
            Ok(Some((response, values))) if response.succeeded() => {
                transaction.commit()?;
                copy.revision = response.header().map_or(0, |header| header.revision());
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

/// A little random wait before trying a write again, so racing hosts do not meet again.
fn back_off(attempt: u32) {
    let jitter = RandomState::new().build_hasher().finish() % 20;
    std::thread::sleep(Duration::from_millis(
        u64::from(attempt.min(10)) * 5 + jitter,
    ));
}

/// Why a request failed.
enum Failure {
    /// No answer within [`REQUEST_TIMEOUT`]: it may have been applied.
    NoAnswer,
    Client(etcd_client::Error),
}

impl Failure {
    /// The request certainly was not applied: no connection was made, or the member
    /// refused it for want of a leader before proposing it.
    fn not_delivered(&self) -> bool {
        match self {
            Failure::NoAnswer => false,
            Failure::Client(etcd_client::Error::TransportError(_)) => true,
            Failure::Client(etcd_client::Error::GRpcStatus(status)) => {
                let message = status.message();
                status.code() == tonic::Code::Unavailable
                    && (message.contains("connect") || message == "etcdserver: no leader")
            }
            Failure::Client(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoAnswer => write!(
                formatter,
                "no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            Failure::Client(error) => formatter.write_str(&describe(error)),
        }
    }
}

/// One line for an etcd client error: gRPC's own message where there is one.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    }
    .replace('\n', " ")
}

impl Store for EtcdStore {
    fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    fn shared(&self) -> bool {
        true
    }

    fn read(&self, read: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()> {
        let url = self.url();
        let copy = self.current()?;
        match copy.as_ref() {
            Some(copy) => read(&copy.connection).map_err(|error| named(Path::new(&url), error)),
            None => Err(self.unavailable("no copy of the pool".into())),
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
        Err(self.unavailable(format!(
            "other hosts' writes kept coming first for {} s",
            CONFLICTS_FOR.as_secs()
        )))
    }
}
