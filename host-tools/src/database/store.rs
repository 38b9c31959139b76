//! Where a pool's tables live, and the URL that names it: `sqlite:PATH` for a file on this
//! host, `etcd://HOST:PORT[,HOST:PORT...]` for a pool many hosts share.

use std::path::PathBuf;

use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};

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

/// A host as the pool knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    pub host: String,
    /// The start id of its backend's latest registration.
    pub start: u64,
    /// Its lease is alive: its backend serves I/O.
    pub alive: bool,
}

/// A pool's address, as `--pool` and `VDISK_POOL` give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolUrl {
    /// An SQLite file on this host.
    Sqlite(PathBuf),
    /// An etcd cluster, by its members' client endpoints (`host:port`).
    Etcd(Vec<String>),
}

impl PoolUrl {
    /// Parse `sqlite:PATH` or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(text: &str) -> Result<PoolUrl> {
        let bad = |why: &str| Error::Usage(format!("pool {text:?}: {why}"));
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(bad("sqlite: needs a path"));
            }
            return Ok(PoolUrl::Sqlite(PathBuf::from(path)));
        }
        let Some(members) = text.strip_prefix("etcd://") else {
            return Err(bad(
                "expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]",
            ));
        };
        let endpoints: Vec<String> = members.split(',').map(str::to_string).collect();
        for endpoint in &endpoints {
            let valid = endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(bad(&format!("member {endpoint:?}: expected HOST:PORT")));
            }
        }
        Ok(PoolUrl::Etcd(endpoints))
    }
}

impl std::fmt::Display for PoolUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolUrl::Sqlite(path) => write!(formatter, "sqlite:{}", path.display()),
            PoolUrl::Etcd(endpoints) => write!(formatter, "etcd://{}", endpoints.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        for text in [
            "sqlite:/var/lib/vdisk/vdisk.sqlite",
            "etcd://127.0.0.1:2379,[::1]:2380",
        ] {
            assert_eq!(PoolUrl::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for (text, message) in [
            ("sqlite:", "pool \"sqlite:\": sqlite: needs a path"),
            (
                "mysql://x",
                "pool \"mysql://x\": expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]",
            ),
            (
                "etcd://a:1,b",
                "pool \"etcd://a:1,b\": member \"b\": expected HOST:PORT",
            ),
            (
                "etcd://a:99999",
                "pool \"etcd://a:99999\": member \"a:99999\": expected HOST:PORT",
            ),
        ] {
            let error = PoolUrl::parse(text).unwrap_err();
            assert_eq!(
                (error.exit_code(), error.to_string()),
                (2, message.to_string())
            );
        }
    }
}
