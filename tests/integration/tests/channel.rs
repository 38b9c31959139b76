//! The hypercall channel under abuse: garbage, truncated frames, abrupt disconnects and
//! guests that try dom0's operations. The hypervisor must keep serving.

use host_tools::hypervisor::HypervisorError;
use shared_abi::{frame, DeviceNumber, Error, Mode};
use vbd_integration::TestMachine;

fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

#[test]
fn garbage_truncation_and_disconnects_leave_the_hypervisor_serving() {
    let test = TestMachine::boot("garbage");
    {
        let mut dom0 = test.client(0);
        assert_eq!(dom0.version().unwrap(), shared_abi::ABI_VERSION);
        dom0.channel()
            .send_raw(b"\x00\xffgarbage VB VBD1 not a frame at all")
            .unwrap();
        assert_eq!(dom0.version().unwrap(), shared_abi::ABI_VERSION);
        // A frame with a corrupted payload is rejected by name, then service continues.
        let mut bad = vec![0u8; frame::HEADER_LEN + 4];
        frame::encode(frame::FrameKind::BlockRead, 99, &[b"abcd"], &mut bad).unwrap();
        *bad.last_mut().unwrap() ^= 0xff;
        dom0.channel().send_raw(&bad).unwrap();
        assert_eq!(dom0.version().unwrap(), shared_abi::ABI_VERSION);
        // Half a frame, then the host goes away.
        let mut whole = vec![0u8; frame::HEADER_LEN + 100];
        frame::encode(frame::FrameKind::BlockWrite, 5, &[&[7u8; 100]], &mut whole).unwrap();
        dom0.channel().send_raw(&whole[..60]).unwrap();
    }
    // A new connection is served as soon as the half frame is abandoned.
    let mut dom0 = test.client(0);
    assert_eq!(dom0.version().unwrap(), shared_abi::ABI_VERSION);
    dom0.create(1, xvda(), Mode::READ, shared_abi::Label::EMPTY)
        .unwrap();
    // A port serves one connection at a time: let go of it before the shutdown.
    drop(dom0);
    let summary = test.finish();
    assert!(summary.contains("rejected="), "{summary}");
}

#[test]
fn a_guest_cannot_change_vbds_and_sees_only_its_own() {
    let test = TestMachine::boot("guest-permissions");
    let mut dom0 = test.client(0);
    dom0.create(1, xvda(), Mode::READ, shared_abi::Label::EMPTY)
        .unwrap();
    dom0.create(
        2,
        xvda(),
        Mode::READ | Mode::WRITE,
        shared_abi::Label::EMPTY,
    )
    .unwrap();
    let mut guest = test.client(1);
    let refused = |result: Result<(), HypervisorError>| match result {
        Err(HypervisorError::Refused { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(guest.create(
            1,
            DeviceNumber::from_name("xvdb").unwrap(),
            Mode::READ,
            shared_abi::Label::EMPTY
        )),
        Error::PermissionDenied
    );
    assert_eq!(refused(guest.delete(2, xvda())), Error::PermissionDenied);
    assert_eq!(refused(guest.delete(1, xvda())), Error::PermissionDenied);
    assert_eq!(refused(guest.shrink(1, xvda())), Error::PermissionDenied);
    assert_eq!(
        refused(guest.destroy_domain(2).map(drop)),
        Error::PermissionDenied
    );
    assert_eq!(
        refused(guest.probe(None).map(drop)),
        Error::PermissionDenied
    );
    assert_eq!(
        refused(guest.probe(Some(2)).map(drop)),
        Error::PermissionDenied
    );
    let (own, _) = guest.probe(Some(1)).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(
        (own[0].domain, own[0].vdevice, own[0].mode),
        (1, xvda(), Mode::READ)
    );
    let (all, _) = dom0.probe(None).unwrap();
    assert_eq!(all.len(), 2);
    drop(dom0);
    test.finish();
}
