//! control.sock against the real `vdisk`: every hypervisor command works unchanged, each
//! VBD's socket exists exactly while the VBD does, and the backend starts, refuses and stops
//! as documented.

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use common::{hda, hdb, label, pattern, wait_with_timeout, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::SharingLevel;

#[test]
fn vdisk_attaches_reads_writes_checks_and_detaches_through_control_sock() {
    let mut backend = Backend::start(&[]);
    backend.vdisk_ok(&["format", "phy:hda", "--extent-size", "1M"]);
    backend.vdisk_ok(&["format", "phy:hdb", "--extent-size", "1M"]);
    assert_eq!(backend.vdisk_ok(&["create", "3M"]).trim(), "1");
    let attached = backend.vdisk_ok(&["attach", "vd:1", "xvda", "0", "rw"]);
    assert!(
        attached.contains("attach vd:1 as xvda of domain 0 rw"),
        "{attached}"
    );
    let nbd = backend.socket(0, "xvda");
    assert!(nbd.exists(), "attach returns after the export exists");

    let data = pattern(3 << 20, 7);
    let file = backend.work.path().join("data.img");
    fs::write(&file, &data).unwrap();
    backend.vdisk_ok(&["write", "xvda", "--from", file.to_str().unwrap()]);
    let back = backend.work.path().join("back.img");
    backend.vdisk_ok(&["read", "xvda", "--to", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);

    let listing = backend.vdisk_ok(&["vbds", "all", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let vbds = value.as_array().expect("a list of VBDs");
    assert_eq!(vbds.len(), 1, "{listing}");
    assert_eq!(vbds[0]["domain"], 0, "{listing}");
    assert_eq!(vbds[0]["size_sectors"], 6144, "{listing}");
    // The validator sees the backend's VBDs: a second writer is unsafe.
    let check = backend.vdisk(&["check", "vd:1", "rw"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");

    // The VD is mapped: delete is refused while the backend reports it.
    assert!(!backend.vdisk(&["delete", "1"]).status.success());
    backend.vdisk_ok(&["detach", "xvda", "0"]);
    assert!(!nbd.exists(), "detach returns after the export is gone");
    backend.vdisk_ok(&["check", "vd:1", "rw"]);
    backend.vdisk_ok(&["attach", "vd:1", "xvda", "1", "r"]);
    assert!(backend.socket(1, "xvda").exists());
    backend.vdisk_ok(&["detach", "xvda", "1"]);
    assert!(!backend.socket(1, "xvda").exists());
    backend.vdisk_ok(&["delete", "1"]);

    let status = backend.stop();
    assert!(status.success(), "{status}: {}", backend.log());
}

#[test]
fn stopping_removes_every_socket_and_exits_zero() {
    let mut backend = Backend::start(&[]);
    let mut hypervisor = backend.hypervisor();
    let rw = shared_abi::Mode::READ | shared_abi::Mode::WRITE;
    for domain in [0, 2] {
        hypervisor
            .create(domain, xvda(), rw, label("vd:1"))
            .unwrap();
        let extent = Extent::new(if domain == 0 { hda() } else { hdb() }, 0, 2048).unwrap();
        hypervisor
            .set_extents(domain, xvda(), &[extent], SharingLevel::ReadersOnly)
            .unwrap();
    }
    assert!(backend.socket(0, "xvda").exists());
    assert!(backend.socket(2, "xvda").exists());
    // A client holding the NBD socket open does not keep the backend from stopping.
    let _client = UnixStream::connect(backend.socket(0, "xvda")).unwrap();
    drop(hypervisor);
    let status = backend.stop();
    assert!(status.success(), "{status}: {}", backend.log());
    assert!(!backend.control().exists());
    assert!(!backend.socket(0, "xvda").exists());
    assert!(!backend.socket(2, "xvda").exists());
    assert!(!backend.dir.join(".private").exists());
    assert!(
        backend.log().contains("vbd-backend: stopped"),
        "{}",
        backend.log()
    );
}

#[test]
fn dom0s_shutdown_frame_stops_the_backend_like_sigterm() {
    let mut backend = Backend::start(&[]);
    let mut hypervisor = backend.hypervisor();
    hypervisor
        .create(0, xvda(), shared_abi::Mode::READ, label(""))
        .unwrap();
    let mut frame = vec![0u8; shared_abi::frame::HEADER_LEN];
    shared_abi::frame::encode(shared_abi::frame::FrameKind::Shutdown, 9, &[], &mut frame).unwrap();
    hypervisor.channel().send_raw(&frame).unwrap();
    let status = backend.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", backend.log());
    assert!(!backend.control().exists() && !backend.socket(0, "xvda").exists());
    assert!(
        backend.log().contains("stopping (ShutdownFrame)"),
        "{}",
        backend.log()
    );
}

#[test]
fn a_destroyed_domain_loses_its_sockets() {
    let backend = Backend::start(&[]);
    let mut hypervisor = backend.hypervisor();
    hypervisor
        .create(3, xvda(), shared_abi::Mode::READ, label(""))
        .unwrap();
    let xvdb = shared_abi::DeviceNumber::from_name("xvdb").unwrap();
    hypervisor
        .create(3, xvdb, shared_abi::Mode::READ, label(""))
        .unwrap();
    assert!(backend.socket(3, "xvda").exists() && backend.socket(3, "xvdb").exists());
    assert_eq!(hypervisor.destroy_domain(3).unwrap(), 2);
    assert!(!backend.socket(3, "xvda").exists());
    assert!(!backend.socket(3, "xvdb").exists());
}

#[test]
fn stale_sockets_are_replaced_but_a_live_backend_is_refused() {
    let mut backend = Backend::start(&[]);
    backend.stop();
    // What a killed backend leaves: socket files nobody listens on.
    fs::create_dir_all(backend.dir.join("dom1")).unwrap();
    drop(UnixListener::bind(backend.control()).unwrap());
    drop(UnixListener::bind(backend.socket(1, "xvda")).unwrap());
    let mut restarted = backend.spawn(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Serving means the socket answers and the start is logged: the second spawn below
    // truncates the log, which must not lose the first one's line to it.
    while UnixStream::connect(backend.control()).is_err() || !backend.log().contains("serving") {
        assert!(restarted.try_wait().unwrap().is_none(), "{}", backend.log());
        assert!(std::time::Instant::now() < deadline, "{}", backend.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !backend.socket(1, "xvda").exists(),
        "the stale VBD socket is gone"
    );

    let mut second = backend.spawn(&[]);
    let status = wait_with_timeout(&mut second, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let log = backend.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("another backend is serving it"), "{log}");
    let _ = restarted.kill();
    let _ = restarted.wait();
}

fn start_fails(devices: &str, dir: &std::path::Path, work: &std::path::Path) -> String {
    let file = work.join("devices.toml");
    fs::write(&file, devices).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .arg("--devices")
        .arg(&file)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_bad_devices_file_a_missing_disk_or_an_unusable_dir_is_one_line_and_exit_1() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("run");
    let bad = start_fails(
        "[[disk]]\nname = \"hda\"\ndevice = \"3\"\npath = \"x\"\n",
        &dir,
        work.path(),
    );
    assert!(bad.contains("is not major:minor"), "{bad}");
    let missing = start_fails(
        "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"absent.img\"\n",
        &dir,
        work.path(),
    );
    assert!(
        missing.contains("disk hda") && missing.contains("absent.img"),
        "{missing}"
    );
    File::create(work.path().join("hda.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let file_as_dir = work.path().join("plain-file");
    fs::write(&file_as_dir, "not a directory").unwrap();
    let unusable = start_fails(
        "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n",
        &file_as_dir,
        work.path(),
    );
    assert!(unusable.contains("plain-file"), "{unusable}");
    assert!(!dir.exists(), "a refused start leaves nothing behind");
}

/// The errno of a refused hypercall.
fn refusal(result: Result<(), host_tools::hypervisor::HypervisorError>) -> shared_abi::Error {
    match result {
        Err(host_tools::hypervisor::HypervisorError::Refused { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn each_request_carries_its_sharing_level_and_the_ceiling_bounds_them() {
    let backend = Backend::start(&["--sharing", "1"]);
    let mut hypervisor = backend.hypervisor();
    assert_eq!(
        hypervisor.limits().unwrap().sharing_ceiling,
        SharingLevel::SingleWriter
    );
    let extent = [Extent::new(hda(), 0, 100).unwrap()];
    let rw = shared_abi::Mode::READ | shared_abi::Mode::WRITE;
    hypervisor.create(0, xvda(), rw, label("vd:1")).unwrap();
    hypervisor
        .set_extents(0, xvda(), &extent, SharingLevel::ReadersOnly)
        .unwrap();
    hypervisor
        .create(1, xvda(), shared_abi::Mode::READ, label("vd:1"))
        .unwrap();
    // A reader beside dom0's writer: refused at level 0, accepted at level 1.
    assert_eq!(
        refusal(hypervisor.set_extents(1, xvda(), &extent, SharingLevel::ReadersOnly)),
        shared_abi::Error::Busy
    );
    hypervisor
        .set_extents(1, xvda(), &extent, SharingLevel::SingleWriter)
        .unwrap();
    // A second writer would need level 2, above this backend's ceiling.
    hypervisor.create(2, xvda(), rw, label("vd:1")).unwrap();
    assert_eq!(
        refusal(hypervisor.set_extents(2, xvda(), &extent, SharingLevel::Unrestricted)),
        shared_abi::Error::PermissionDenied
    );
    assert_eq!(hypervisor.info(2, xvda()).unwrap().extents, []);
}

#[test]
fn vdisk_attach_safety_is_what_the_default_backend_enforces() {
    let backend = Backend::start(&[]);
    backend.vdisk_ok(&["format", "phy:hda", "--extent-size", "1M"]);
    assert_eq!(backend.vdisk_ok(&["create", "2M"]).trim(), "1");
    backend.vdisk_ok(&["attach", "vd:1", "xvda", "0", "rw"]);
    let refused = backend.vdisk(&["attach", "vd:1", "xvda", "1", "r"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    backend.vdisk_ok(&["attach", "vd:1", "xvda", "1", "r", "--safety", "1"]);
    assert!(backend.socket(1, "xvda").exists());
    let labels: Vec<String> = backend
        .hypervisor()
        .all_vbds(None)
        .unwrap()
        .iter()
        .map(|vbd| vbd.label.to_string())
        .collect();
    assert_eq!(labels, ["vd:1", "vd:1"], "attach labels every VBD");
}

#[test]
fn every_ready_reports_this_starts_identifier_and_a_restart_has_another() {
    let mut backend = Backend::start(&[]);
    let first = backend.hypervisor().start_id();
    assert_eq!(backend.hypervisor().start_id(), first);
    assert!(
        backend.log().contains(&format!("start {first:#018x}")),
        "{}",
        backend.log()
    );
    assert!(backend.stop().success());
    backend.restart(&[]);
    let second = backend.hypervisor().start_id();
    assert_ne!(second, first);
}

#[test]
fn idle_clients_of_control_sock_never_lock_vdisk_out() {
    let backend = Backend::start(&[]);
    // More than the 16 connections the backend once served at most.
    let idle: Vec<UnixStream> = (0..17)
        .map(|_| UnixStream::connect(backend.control()).unwrap())
        .collect();
    backend.vdisk_ok(&["vbds", "all"]);
    drop(idle);
}

#[test]
fn an_idle_control_client_is_closed_after_the_idle_timeout() {
    let backend = Backend::start(&["--control-idle-timeout", "1"]);
    let mut idle = UnixStream::connect(backend.control()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut nothing = Vec::new();
    assert_eq!(idle.read_to_end(&mut nothing).unwrap(), 0);
    assert!(
        backend
            .log()
            .contains("control.sock: closed a connection idle for 1 s"),
        "{}",
        backend.log()
    );
    // A client that keeps talking is served as long as it does.
    let mut hypervisor = backend.hypervisor();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        hypervisor.limits().unwrap();
    }
}
