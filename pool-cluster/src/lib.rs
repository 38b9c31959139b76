//! What vdisk and vbd-backend both know of a pool: the URL that names it (`sqlite:PATH`
//! for a file on one host, `etcd://HOST:PORT[,HOST:PORT...]` for a pool many hosts share)
//! and, on etcd, the connection to the cluster and the hosts registered with it, whose key
//! layout is written here once.
#![forbid(unsafe_code)]

#[cfg(feature = "etcd")]
pub mod connection;
#[cfg(feature = "etcd")]
pub mod hosts;

use std::path::PathBuf;

/// Why a pool could not be named or reached.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A malformed pool URL.
    #[error("{0}")]
    Usage(String),
    /// The request is well formed but refused: a registration that lapsed.
    #[error("{0}")]
    Refused(String),
    /// The cluster cannot be reached or has no quorum; nothing was changed.
    #[error("pool {pool}: unavailable: {reason}")]
    Unavailable { pool: String, reason: String },
}

/// The result of every pool request.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
            assert_eq!(
                PoolUrl::parse(text).unwrap_err(),
                Error::Usage(message.to_string())
            );
        }
    }
}
