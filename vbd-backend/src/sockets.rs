//! The backend's socket files and who may use them. `DIR`, its `domD/` directories and
//! every socket carry dom0's authority, so they are owner-only (0700 directories, 0600
//! sockets) unless an operator widens them to one group (0750, 0660), whatever the umask:
//! each socket is bound in a private 0700 directory, given its mode and group there, and
//! only then renamed to its place, so it is never reachable with another mode. A leaf:
//! everything that makes a socket depends on it, it depends on nothing of the backend.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The private directory, inside `DIR`: sockets before they take their place, and the
/// bridges between a VMM's connection and the daemon that serves it.
const PRIVATE: &str = ".private";

/// Who may reach the sockets besides the backend's own user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The group the directories and sockets are widened to, if any.
    pub group: Option<u32>,
}

impl Access {
    fn directory_mode(self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    fn socket_mode(self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Give `path` `mode` and the group, explicitly: the umask has no say.
    fn apply(self, path: &Path, mode: u32) -> io::Result<()> {
        if let Some(group) = self.group {
            std::os::unix::fs::chown(path, None, Some(group))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }
}

/// The number of group `name` (a name, through the system's group database, or a number).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(number) = name.parse() {
        return Ok(number);
    }
    // getent asks the system's name services, as `chgrp` would; no unsafe libc call here.
    let output = Command::new("getent")
        .args(["group", name])
        .output()
        .map_err(|error| format!("cannot look up group {name:?}: getent: {error}"))?;
    String::from_utf8_lossy(&output.stdout)
        .split(':')
        .nth(2)
        .and_then(|number| number.trim().parse().ok())
        .filter(|_| output.status.success())
        .ok_or_else(|| format!("{name:?} is not a group on this host"))
}

/// Which peers a socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Whoever the socket's mode lets connect: a VMM may run as another user.
    Anyone,
    /// Root and the backend's own user only: the socket carries dom0's authority.
    Owner,
}

impl Peers {
    /// Why `stream`'s peer may not be served, if it may not.
    pub fn refusal(self, stream: &UnixStream) -> Option<String> {
        if self == Peers::Anyone {
            return None;
        }
        let peer = match rustix::net::sockopt::socket_peercred(stream) {
            Ok(peer) => peer,
            Err(error) => {
                return Some(format!(
                    "refused a peer whose credentials are unknown: {error}"
                ))
            }
        };
        let uid = peer.uid.as_raw();
        let own = rustix::process::geteuid().as_raw();
        (uid != 0 && uid != own).then(|| {
            format!(
                "refused process {} of uid {uid}: only root and uid {own} may connect",
                peer.pid.as_raw_nonzero()
            )
        })
    }
}

/// `DIR`: where the sockets are made, with the modes `Access` asks for.
pub struct SocketDirectory {
    root: PathBuf,
    private: PathBuf,
    access: Access,
    /// Private names are unique within the process.
    names: AtomicU64,
    /// Whether this process is taking over from another that serves the same sockets.
    taking_over: AtomicBool,
}

impl SocketDirectory {
    /// Create `root` (or take it over) with the access asked for, make sure no other
    /// backend serves it, and remove what a killed one left. With `takeover`, another
    /// backend must serve it, and what it has is left as it is: its sockets are replaced
    /// one by one ([`crate::takeover`]).
    pub fn claim(root: &Path, access: Access, takeover: bool) -> Result<SocketDirectory, String> {
        let cannot = |what: &str, path: &Path, error: io::Error| {
            format!("{}: cannot {what}: {error}", path.display())
        };
        if let Some(parent) = root
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(parent).map_err(|error| cannot("create", parent, error))?;
        }
        let directories = SocketDirectory {
            root: root.to_path_buf(),
            private: root.join(PRIVATE),
            access,
            names: AtomicU64::new(0),
            taking_over: AtomicBool::new(takeover),
        };
        let mode = access.directory_mode();
        make_directory(root, mode).map_err(|error| cannot("create", root, error))?;
        if takeover {
            return Ok(directories);
        }
        // Another backend's directory is left as it is.
        claim_socket_path(&root.join("control.sock"))?;
        access
            .apply(root, mode)
            .map_err(|error| cannot("set the mode of", root, error))?;
        remove_stale_sockets(root)?;
        // What is left in the private directory is a killed backend's: no one serves it.
        match fs::remove_dir_all(&directories.private) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(cannot("remove", &directories.private, error))
            }
            _ => {}
        }
        make_directory(&directories.private, 0o700)
            .and_then(|()| {
                fs::set_permissions(&directories.private, fs::Permissions::from_mode(0o700))
            })
            .map_err(|error| cannot("create", &directories.private, error))?;
        Ok(directories)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the live sockets are another backend's, which this one is taking over.
    pub fn taking_over(&self) -> bool {
        self.taking_over.load(Ordering::Acquire)
    }

    /// The sockets are all this process's now.
    pub fn taken_over(&self) {
        self.taking_over.store(false, Ordering::Release);
    }

    /// Create (or take over) `path` as a directory of sockets.
    fn directory(&self, path: &Path) -> io::Result<()> {
        let mode = self.access.directory_mode();
        make_directory(path, mode)?;
        self.access.apply(path, mode)
    }

    /// `DIR/domD/`, created with the access asked for if missing.
    pub fn domain(&self, domain: u32) -> Result<PathBuf, String> {
        let path = self.root.join(format!("dom{domain}"));
        self.directory(&path)
            .map_err(|error| format!("{}: cannot create: {error}", path.display()))?;
        Ok(path)
    }

    /// A fresh path in the private directory, for a socket nobody else may reach. Nothing
    /// a caller chose is in the name, so it cannot leave the directory.
    pub fn private_path(&self, kind: &str) -> PathBuf {
        self.private.join(format!(
            "{}.{}.{kind}",
            std::process::id(),
            self.names.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Listen on `path`, a socket that has its mode and group before anyone can reach it.
    pub fn listen(&self, path: &Path) -> Result<UnixListener, String> {
        let staging = self.private_path("socket");
        let listened = UnixListener::bind(&staging).and_then(|listener| {
            self.access.apply(&staging, self.access.socket_mode())?;
            fs::rename(&staging, path)?;
            Ok(listener)
        });
        listened.map_err(|error| {
            let _ = fs::remove_file(&staging);
            format!("{}: cannot listen: {error}", path.display())
        })
    }

    /// The backend stops: the private directory goes (control.sock and the domain
    /// directories are their owners' to remove).
    pub fn remove_private(&self) {
        let _ = fs::remove_dir_all(&self.private);
    }
}

/// `mkdir path` with `mode` (the umask may take bits away; the caller sets the mode
/// after); an existing directory is taken as it is.
fn make_directory(path: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

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

/// Remove the sockets of `domN/` directories left by a killed backend: at start the table
/// is empty, so no VBD socket may exist.
fn remove_stale_sockets(dir: &Path) -> Result<(), String> {
    let entries =
        fs::read_dir(dir).map_err(|error| format!("{}: cannot read: {error}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_domain = name
            .to_str()
            .and_then(|name| name.strip_prefix("dom"))
            .is_some_and(|digits| {
                !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
            });
        if !is_domain || !entry.path().is_dir() {
            continue;
        }
        for socket in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            if socket.file_type().is_ok_and(|kind| kind.is_socket()) {
                claim_socket_path(&socket.path())?;
            }
        }
    }
    Ok(())
}
