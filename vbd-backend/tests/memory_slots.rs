//! A VMM that adds its guest memory one region at a time (`CONFIGURE_MEM_SLOTS`) is held to
//! the regions one connection may hold: each takes a slot of the process-wide registry of
//! guest mappings that every VBD's connection shares, and vhost-user lets a VMM add 509.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{hda, Backend};
use shared_abi::wire::Extent;
use shared_abi::Mode;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

/// The regions one connection may hold, as the backend's log names the limit.
const REGIONS: u64 = 32;
const PAGE: u64 = 4096;

#[test]
fn a_vmm_adding_more_regions_than_a_connection_may_hold_loses_its_connection_only() {
    let backend = Backend::start(&[]);
    let extent = Extent::new(hda(), 0, 2048).unwrap();
    common::attach_xvda(&backend, 1, Mode::READ | Mode::WRITE, "vd:1", &[extent]);

    let mut frontend = Frontend::connect(backend.socket(1, "xvda"), 1).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    frontend.set_features(features).unwrap();
    let offered = frontend.get_protocol_features().unwrap();
    let wanted =
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures::REPLY_ACK;
    assert!(offered.contains(wanted), "{offered:?}");
    frontend.set_protocol_features(wanted).unwrap();

    // Every region is the same page of one memfd, at its own guest address.
    let memory =
        File::from(rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap());
    memory.set_len(PAGE).unwrap();
    let region = |index: u64| VhostUserMemoryRegionInfo {
        guest_phys_addr: index * PAGE,
        memory_size: PAGE,
        userspace_addr: 0x7000_0000_0000 + index * PAGE,
        mmap_offset: 0,
        mmap_handle: memory.as_raw_fd(),
    };
    // The adds are not acknowledged one by one: a round trip after them is answered only if
    // the backend took them all.
    for index in 0..REGIONS {
        frontend
            .add_mem_region(&region(index))
            .unwrap_or_else(|error| panic!("region {index}: {error}"));
    }
    assert_eq!(
        frontend.get_features().ok(),
        Some(features),
        "{REGIONS} regions are held"
    );
    frontend.add_mem_region(&region(REGIONS)).unwrap();
    // Whether the request fails to be sent or to be answered depends on when the backend
    // hung up; either way no answer comes.
    assert_eq!(
        frontend.get_features().ok(),
        None,
        "the connection has ended"
    );
    assert!(
        backend.log().contains(&format!(
            "vbd-backend: dom1/xvda.sock: its guest memory cannot be served safely \
             ({} guest memory regions, more than a connection may hold ({REGIONS})): \
             the connection ends",
            REGIONS + 1
        )),
        "{}",
        backend.log()
    );

    // The backend goes on: the socket takes the next VMM.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let next = Frontend::connect(backend.socket(1, "xvda"), 1).unwrap();
        match next.set_owner().and_then(|()| next.get_features()) {
            Ok(offered) => {
                assert_eq!(offered, features);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "refused: {error}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
