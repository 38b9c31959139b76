//! The one error type of the host tools, and the exit status each kind of failure maps to.

use std::path::PathBuf;

/// A failure of a host-tools operation. Every message is one line that names the input and
/// what is wrong with it, since scripts read it from standard error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed argument: the command line itself is wrong (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but refused: unsafe, no space, wrong state.
    #[error("{0}")]
    Refused(String),
    /// The database file is not a healthy vdisk database; it was left untouched.
    #[error("database {path}: {reason}")]
    BadDatabase { path: PathBuf, reason: String },
    /// Another process held the database's lock for as long as we wait.
    #[error("database {path}: locked by another process; gave up after {seconds} s")]
    Locked { path: PathBuf, seconds: u64 },
    /// SQLite failed in a way that is not the caller's fault.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The pool's store cannot be reached or has no quorum; nothing was changed (exit
    /// status 3).
    #[error("pool {pool}: unavailable: {reason}")]
    Unavailable { pool: String, reason: String },
    /// Reading or writing a file or device failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<devices::Error> for Error {
    fn from(error: devices::Error) -> Error {
        match error {
            devices::Error::NotFound(message) => Error::NotFound(message),
            devices::Error::Refused(message) => Error::Refused(message),
            devices::Error::Io { path, source } => Error::Io { path, source },
        }
    }
}

impl From<pool_cluster::Error> for Error {
    fn from(error: pool_cluster::Error) -> Error {
        match error {
            pool_cluster::Error::Usage(message) => Error::Usage(message),
            pool_cluster::Error::Refused(message) => Error::Refused(message),
            pool_cluster::Error::Unavailable { pool, reason } => {
                Error::Unavailable { pool, reason }
            }
        }
    }
}

/// The result of every host-tools operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The documented exit status: 2 for usage errors, 3 for a pool that cannot be reached,
    /// 1 for every other refusal or failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Unavailable { .. } => 3,
            Error::NotFound(_)
            | Error::Refused(_)
            | Error::BadDatabase { .. }
            | Error::Locked { .. }
            | Error::Sqlite(_)
            | Error::Io { .. } => 1,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
