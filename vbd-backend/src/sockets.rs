//! The backend's socket files: how a path is claimed for a new socket. A leaf: everything
//! that makes a socket depends on it, it depends on nothing of the backend.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Make `path` free for a new socket: a socket nobody listens on (left by a backend that was
/// killed) is removed; a live one means another backend serves this directory.
pub fn claim_socket_path(path: &Path) -> Result<(), String> {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(format!("{}: exists and is not a socket", path.display()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(format!("{}: another backend is serving it", path.display()));
    }
    fs::remove_file(path).map_err(|error| {
        format!(
            "{}: cannot remove the stale socket: {error}",
            path.display()
        )
    })
}
