//! What the client sends is sized to the answer: a hypercall's memory image travels whole
//! to the hypervisor, and over a serial line (the test hypervisor's ports run at about
//! 0.3 MiB/s) a frame-sized image for a VBD of one extent costs seconds. The hypervisor is
//! hv-vbd's table and frame server in the test process ([`common::hypervisor`]), which
//! counts the bytes its ports receive.

mod common;

use common::Machine;
use host_tools::hypervisor::Hypervisor as Client;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

fn xvd(name: &str) -> DeviceNumber {
    DeviceNumber::from_name(name).unwrap()
}

/// `count` extents of one sector each, a sector apart, from `first` on hda.
fn scattered(first: u64, count: u64) -> Vec<Extent> {
    let hda = DeviceNumber::new(3, 0).unwrap();
    (0..count)
        .map(|index| Extent::new(hda, first + 2 * index, 1).unwrap())
        .collect()
}

fn make(client: &mut Client, vdevice: &str, extents: &[Extent]) {
    client
        .create(1, xvd(vdevice), Mode::READ, Label::EMPTY)
        .unwrap();
    client
        .set_extents(1, xvd(vdevice), extents, SharingLevel::ReadersOnly)
        .unwrap();
}

/// The bytes the hypervisor received while `call` ran.
fn cost(hypervisor: &common::hypervisor::Hypervisor, call: impl FnOnce()) -> u64 {
    let before = hypervisor.bytes_received();
    call();
    hypervisor.bytes_received() - before
}

#[test]
fn info_sends_what_the_vbd_needs_not_a_whole_frame() {
    let machine = Machine::new(32, &[8]);
    let hypervisor = machine.hypervisor(1);
    let mut client = Client::connect(&hypervisor.endpoint(0)).unwrap();
    let one = scattered(2048, 1);
    let many = scattered(4096, 1000);
    make(&mut client, "xvda", &one);
    make(&mut client, "xvdb", &many);

    let small = cost(&hypervisor, || {
        let details = client.info(1, xvd("xvda")).unwrap();
        assert_eq!(details.extents, one);
    });
    assert!(small < 16 << 10, "info on one extent sent {small} bytes");

    // A list longer than the first piece is read in full, and what is sent stays within
    // a small multiple of what comes back (24 bytes an extent).
    let large = cost(&hypervisor, || {
        let details = client.info(1, xvd("xvdb")).unwrap();
        assert_eq!(details.extents, many);
    });
    let listed = (many.len() * std::mem::size_of::<shared_abi::wire::WireExtent>()) as u64;
    assert!(
        large < 2 * listed + (16 << 10),
        "info on {} extents sent {large} bytes",
        many.len()
    );

    // `vdisk vbds` reads every VBD the same way (on the port once this client is gone:
    // a port serves one connection at a time).
    drop(client);
    let listing = cost(&hypervisor, || {
        machine.ok(&["--hv", &hypervisor.endpoint(0), "vbds", "all"]);
    });
    assert!(
        listing < 2 * listed + (64 << 10),
        "vbds all sent {listing} bytes"
    );
}
