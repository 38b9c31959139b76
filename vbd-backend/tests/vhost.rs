//! Guest VBDs' vhost-user-blk sockets against a vhost-user front end (the vhost crate's, as
//! a VMM would drive it): features and config space follow the VBD, a second VMM is
//! refused, a grow reaches the VMM as a config-change message, and a deleted VBD's socket
//! goes away. The data path through a virtqueue is `virtqueue.rs`'s.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{hda, hdb, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;

fn guest_vbd(backend: &Backend, mode: Mode, sectors: u64) {
    let extent = Extent::new(hda(), 4096, sectors).unwrap();
    common::attach_xvda(backend, 1, mode, "vd:1", &[extent]);
}

/// Connect and negotiate as QEMU does; returns the front end and the offered features.
fn negotiate(backend: &Backend, queues: u64) -> (Frontend, u64) {
    let mut frontend = Frontend::connect(backend.socket(1, "xvda"), queues).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    frontend.set_features(features).unwrap();
    let protocol = frontend.get_protocol_features().unwrap();
    let wanted = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ;
    assert!(protocol.contains(wanted), "{protocol:?}");
    frontend.set_protocol_features(wanted).unwrap();
    assert_eq!(frontend.get_queue_num().unwrap(), queues);
    (frontend, features)
}

fn config(frontend: &mut Frontend) -> Vec<u8> {
    let (_, payload) = frontend
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    payload.to_vec()
}

fn capacity(config: &[u8]) -> u64 {
    u64::from_le_bytes(config[..8].try_into().unwrap())
}

#[test]
fn features_and_config_space_follow_the_vbd() {
    let backend = Backend::start(&["--queues", "3"]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE, 2048);
    let (mut frontend, features) = negotiate(&backend, 3);
    for feature in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        PROTOCOL_FEATURES,
    ] {
        assert_eq!(
            features & feature,
            feature,
            "{features:#x} lacks {feature:#x}"
        );
    }
    assert_eq!(features & VIRTIO_BLK_F_RO, 0);
    let space = config(&mut frontend);
    assert_eq!(capacity(&space), 2048);
    assert_eq!(
        u32::from_le_bytes(space[20..24].try_into().unwrap()),
        512,
        "blk_size"
    );
    assert_eq!(u16::from_le_bytes([space[34], space[35]]), 3, "num_queues");
}

#[test]
fn a_read_only_vbd_advertises_read_only_and_no_discard() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, Mode::READ, 1024);
    let (_frontend, features) = negotiate(&backend, 1);
    assert_eq!(features & VIRTIO_BLK_F_RO, VIRTIO_BLK_F_RO);
    assert_eq!(
        features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}

#[test]
fn one_vmm_at_a_time_is_told_of_growth_and_loses_the_socket_on_delete() {
    let backend = Backend::start(&[]);
    guest_vbd(&backend, Mode::READ | Mode::WRITE, 2048);
    let (mut frontend, _) = negotiate(&backend, 1);

    let mut second = UnixStream::connect(backend.socket(1, "xvda")).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut nothing = Vec::new();
    assert_eq!(
        second.read_to_end(&mut nothing).unwrap(),
        0,
        "a second VMM is refused"
    );

    let (mut notices, channel) = UnixStream::pair().unwrap();
    frontend.set_backend_request_fd(&channel).unwrap();
    // A round trip: the channel has reached the backend before the grow.
    assert_eq!(capacity(&config(&mut frontend)), 2048);
    backend
        .hypervisor()
        .grow(
            1,
            xvda(),
            Extent::new(hdb(), 0, 1024).unwrap(),
            SharingLevel::ReadersOnly,
        )
        .unwrap();
    notices
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut message = [0u8; 12];
    notices.read_exact(&mut message).unwrap();
    assert_eq!(
        u32::from_le_bytes(message[..4].try_into().unwrap()),
        2,
        "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG"
    );
    assert_eq!(
        u32::from_le_bytes(message[8..12].try_into().unwrap()),
        0,
        "no payload"
    );
    assert_eq!(capacity(&config(&mut frontend)), 3072);

    backend.hypervisor().delete(1, xvda()).unwrap();
    assert!(!backend.socket(1, "xvda").exists());
    // The open connection stays (its requests fail); the VBD reads as empty.
    assert_eq!(capacity(&config(&mut frontend)), 0);
}
