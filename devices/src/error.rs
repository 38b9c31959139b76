//! Why a disk or partition could not be found or used.

use std::path::PathBuf;

/// A failure to find or open a physical disk. Every message is one line naming the input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named disk or partition does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists but cannot serve as a disk: not an image or block device, a damaged
    /// partition table, a malformed devices file.
    #[error("{0}")]
    Refused(String),
    /// Reading a file or device failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The result of every lookup.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
