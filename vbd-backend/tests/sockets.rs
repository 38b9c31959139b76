//! The backend's socket files as an attacker on the host meets them: who may connect to
//! what, with which modes on disk whatever the umask, and labels that look like paths.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{hda, label, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

/// Domain `domain`'s xvda, labelled `text`, on 1 MiB of hda.
fn guest_vbd(backend: &Backend, domain: u32, text: &str) {
    let mut hypervisor = backend.hypervisor();
    hypervisor
        .create(domain, xvda(), Mode::READ | Mode::WRITE, label(text))
        .unwrap();
    hypervisor
        .set_extents(
            domain,
            xvda(),
            &[Extent::new(hda(), 2048 * u64::from(domain), 2048).unwrap()],
            SharingLevel::ReadersOnly,
        )
        .unwrap();
}

#[test]
fn a_vbd_whose_label_looks_like_a_path_is_served() {
    let backend = Backend::start(&[]);
    for (domain, text) in [(1, "a/b"), (2, "../../x"), (3, "/../../../escaped")] {
        guest_vbd(&backend, domain, text);
        let frontend = Frontend::connect(backend.socket(domain, "xvda"), 1).unwrap();
        frontend.set_owner().unwrap();
        assert!(
            frontend.get_features().is_ok(),
            "label {text:?}: {}",
            backend.log()
        );
    }
}

/// The permission bits and group of `path`.
fn mode_and_group(path: &Path) -> (u32, u32) {
    let metadata = fs::symlink_metadata(path).unwrap();
    (metadata.mode() & 0o7777, metadata.gid())
}

/// `DIR`, the domain directories and every socket, with dom0's xvda and domain 1's.
fn every_socket_file(backend: &Backend) -> Vec<(PathBuf, bool)> {
    vec![
        (backend.dir.clone(), true),
        (backend.dir.join("dom0"), true),
        (backend.dir.join("dom1"), true),
        (backend.control(), false),
        (backend.socket(0, "xvda"), false),
        (backend.socket(1, "xvda"), false),
    ]
}

#[test]
fn every_directory_and_socket_is_owner_only_whatever_the_umask() {
    let backend = Backend::start_with(None, Some(0), &[]);
    guest_vbd(&backend, 0, "vd:1");
    guest_vbd(&backend, 1, "vd:2");
    for (path, directory) in every_socket_file(&backend) {
        let wanted = if directory { 0o700 } else { 0o600 };
        assert_eq!(
            mode_and_group(&path),
            (wanted, 0),
            "{}: mode {wanted:o}, group root",
            path.display()
        );
    }
}

#[test]
fn socket_group_widens_every_directory_and_socket_to_that_group() {
    for group in ["nogroup", "65534"] {
        let backend = Backend::start_with(None, Some(0o077), &["--socket-group", group]);
        guest_vbd(&backend, 0, "vd:1");
        guest_vbd(&backend, 1, "vd:2");
        for (path, directory) in every_socket_file(&backend) {
            let wanted = if directory { 0o750 } else { 0o660 };
            assert_eq!(
                mode_and_group(&path),
                (wanted, NOBODY),
                "--socket-group {group}: {}",
                path.display()
            );
        }
    }
}

#[test]
fn an_unknown_socket_group_is_a_usage_error_naming_it() {
    let backend = Backend::start(&[]);
    let output = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .args(["--devices", backend.devices.to_str().unwrap()])
        .args(["--dir", backend.work.path().join("other").to_str().unwrap()])
        .args(["--socket-group", "no-such-group-here"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("no-such-group-here"), "{stderr}");
}

/// The uid and gid of `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;

/// Connect to `socket` as uid and gid `NOBODY` and say what came first: `closed` when the
/// backend closed the connection at once, `silent` when it kept it open and said nothing
/// for 5 s, else the first bytes it sent.
fn first_words_to_nobody(socket: &Path) -> String {
    let script = "import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
try:
    data = s.recv(8)
    print(data.decode('latin-1') if data else 'closed')
except socket.timeout:
    print('silent')";
    let output = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn control_sock_and_dom0s_exports_refuse_a_peer_of_another_uid() {
    let backend = Backend::start(&["--socket-group", "nogroup"]);
    // The test's own directory lets anyone through to DIR, whose group is then the gate.
    fs::set_permissions(backend.work.path(), fs::Permissions::from_mode(0o711)).unwrap();
    guest_vbd(&backend, 0, "vd:1");
    guest_vbd(&backend, 1, "vd:2");
    assert_eq!(first_words_to_nobody(&backend.control()), "closed");
    assert_eq!(first_words_to_nobody(&backend.socket(0, "xvda")), "closed");
    // The group is for VMMs: nobody reaches a guest's vhost-user socket, which waits for
    // the VMM to speak first.
    assert_eq!(first_words_to_nobody(&backend.socket(1, "xvda")), "silent");
    let log = backend.log();
    for socket in ["control.sock", "dom0/xvda.nbd"] {
        assert!(
            log.lines().any(|line| line.contains(socket)
                && line.contains("refused")
                && line.contains(&format!("uid {NOBODY}"))),
            "{log}"
        );
    }
    // Root still gets the greeting.
    let mut greeting = [0u8; 8];
    let mut export = UnixStream::connect(backend.socket(0, "xvda")).unwrap();
    export.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"NBDMAGIC");
}
