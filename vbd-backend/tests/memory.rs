//! What a VMM can do to the backend's resources through the life of its connections:
//! connections that come and go leave no descriptor behind.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{hda, label, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

/// Open a vhost-user connection to `socket` and take ownership, retrying while the backend
/// still counts a VMM that has just left.
fn connect(socket: &Path) -> (Frontend, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let frontend = Frontend::connect(socket, 1).unwrap();
        match frontend.set_owner().and_then(|()| frontend.get_features()) {
            Ok(features) => return (frontend, features),
            Err(error) => assert!(Instant::now() < deadline, "refused: {error}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `xvda` of `domain`, writable, over 128 sectors of hda from `start`.
fn guest_vbd(backend: &Backend, domain: u32, start: u64) {
    let mut hypervisor = backend.hypervisor();
    let sectors = 128;
    hypervisor
        .create(domain, xvda(), Mode::READ | Mode::WRITE, label("vd:1"))
        .unwrap();
    hypervisor
        .set_extents(
            domain,
            xvda(),
            &[Extent::new(hda(), start, sectors).unwrap()],
            SharingLevel::ReadersOnly,
        )
        .unwrap();
}

/// The backend's process, from the credentials of a connection to its control socket.
fn backend_process(backend: &Backend) -> u32 {
    let stream = UnixStream::connect(backend.control()).unwrap();
    let peer = rustix::net::sockopt::socket_peercred(&stream).unwrap();
    peer.pid.as_raw_nonzero().get() as u32
}

fn open_descriptors(process: u32) -> usize {
    std::fs::read_dir(format!("/proc/{process}/fd"))
        .unwrap()
        .count()
}

#[test]
fn connections_that_come_and_go_leave_no_descriptor_behind() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, 1, 0);
    let socket = backend.socket(1, "xvda");
    let process = backend_process(&backend);
    // A first connection makes what the process keeps for good (thread stacks, handlers).
    drop(connect(&socket));
    let settled = |limit: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = open_descriptors(process);
            if count <= limit || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Teardown of that connection may still be under way: wait until the count holds.
    let mut before = open_descriptors(process);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = open_descriptors(process);
        if now == before {
            break;
        }
        before = now;
    }
    let started = Instant::now();
    let mut cycles = 0;
    while cycles < 10_000 && started.elapsed() < Duration::from_secs(20) {
        drop(connect(&socket));
        cycles += 1;
    }
    assert!(cycles >= 1_000, "only {cycles} connections in 20 s");
    assert_eq!(
        settled(before),
        before,
        "open descriptors after {cycles} connections"
    );
}
