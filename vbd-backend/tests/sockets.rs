//! The backend's socket files as an attacker on the host meets them: who may connect to
//! what, with which modes on disk whatever the umask, and labels that look like paths.

mod common;

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
