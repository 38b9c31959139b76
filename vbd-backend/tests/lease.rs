//! A backend registered with a pool on a real etcd cluster: it holds its host's lease and
//! fences itself. A backend paused (SIGSTOP) for longer than its lease serves not one more
//! I/O when it resumes, and `vdisk hosts` shows its lease expired. A backend that takes
//! over another's VBDs serves them only under the registration they were granted under,
//! unbroken.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{attach_dom0_xvda, run, wait_with_timeout, xvda_url, Backend};
use rustix::process::{kill_process, Pid, Signal};
use shared_abi::Mode;
use vbd_machine::etcd::Cluster;

/// `qemu-io` on dom0's xvda: its combined output.
fn qemu_io(backend: &Backend, command: &str) -> String {
    let url = xvda_url(backend);
    let output = run("qemu-io", &["-f", "raw", "-c", command, &url]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `vdisk ARGUMENTS` on the pool.
fn vdisk_run(pool: &str, devices: &Path, arguments: &[&str]) -> Output {
    Command::new(common::vdisk_binary())
        .args(["--pool", pool])
        .arg("--devices")
        .arg(devices)
        .args(arguments)
        .output()
        .unwrap()
}

/// `vdisk ARGUMENTS` on the pool, which must succeed; its standard output.
fn vdisk(pool: &str, devices: &Path, arguments: &[&str]) -> String {
    let output = vdisk_run(pool, devices, arguments);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A devices file for `vdisk` naming the backend's image `name` a shared LUN.
fn shared_lun(backend: &Backend, name: &str, device: &str) -> PathBuf {
    let devices = backend.work.path().join("shared.toml");
    std::fs::write(
        &devices,
        format!(
            "[[disk]]\nname = \"{name}\"\ndevice = \"{device}\"\npath = \"{}\"\nshared = true\n",
            backend.image(name).display()
        ),
    )
    .unwrap();
    devices
}

#[test]
fn a_backend_paused_past_its_lease_serves_no_io_when_it_resumes() {
    let directory = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(directory.path(), 1).unwrap();
    let pool = cluster.url();
    let backend = Backend::start(&["--pool", &pool, "--host", "h1", "--lease-ttl", "2"]);
    assert!(
        backend.log().contains(&format!(
            "vbd-backend: host h1 registered with {pool} at revision "
        )),
        "{}",
        backend.log()
    );
    assert!(
        backend.log().contains(" (lease of 2 s)"),
        "{}",
        backend.log()
    );
    let start = backend
        .log()
        .split("start ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap()
        .to_string();
    // A pool of one shared LUN, hdb, beside the host's own hda.
    let devices = shared_lun(&backend, "hdb", "3:64");
    vdisk(
        &pool,
        &devices,
        &["format", "phy:hdb", "--extent-size", "1M"],
    );
    let hosts = || -> serde_json::Value {
        serde_json::from_str(&vdisk(&pool, &devices, &["hosts", "--json"])).unwrap()
    };
    let listed = hosts();
    assert_eq!(
        listed,
        serde_json::json!([{"host": "h1", "start": start, "lease": "alive", "attachments": 0}])
    );
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &[(0, 2048, 128)]);
    // Renewals keep it serving well past its TTL.
    std::thread::sleep(Duration::from_secs(3));
    assert!(qemu_io(&backend, "write -P 0xab 0 64k").contains("wrote 65536/65536 bytes"));
    assert_eq!(
        backend.read_image("hda", 2048 * 512, 64 << 10),
        vec![0xab; 64 << 10]
    );

    let pid = Pid::from_raw(backend.pid() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    kill_process(pid, Signal::CONT).unwrap();
    // The first request after the pause is refused, before the renewing thread has
    // learnt anything: the deadline passed while the process was stopped.
    let written = qemu_io(&backend, "write -P 0xcd 0 64k");
    assert!(written.contains("Input/output error"), "{written}");
    assert_eq!(
        backend.read_image("hda", 2048 * 512, 64 << 10),
        vec![0xab; 64 << 10]
    );
    let read = qemu_io(&backend, "read 0 4k");
    assert!(read.contains("Input/output error"), "{read}");
    // The lease is gone for good: the backend says so, and so does the pool.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        backend.log().contains("vbd-backend: the lease of host h1 expired: fenced, every I/O fails until the backend is restarted"),
        "{}",
        backend.log()
    );
    assert_eq!(hosts()[0]["lease"], "expired");
    let written = qemu_io(&backend, "write -P 0xcd 0 64k");
    assert!(written.contains("Input/output error"), "{written}");
    assert_eq!(
        backend.read_image("hda", 2048 * 512, 64 << 10),
        vec![0xab; 64 << 10]
    );
}

#[test]
fn a_backend_refuses_a_pool_that_is_not_on_etcd() {
    let output = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
        .args([
            "--devices",
            "/nonexistent",
            "--dir",
            "/nonexistent",
            "--pool",
            "sqlite:/x",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains(
        "\"sqlite:/x\": a backend registers its host only with a pool on etcd (etcd://HOST:PORT)"
    ));
}

#[test]
fn a_host_killed_loses_its_lease_and_another_may_then_take_its_disks() {
    let directory = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(directory.path(), 1).unwrap();
    let pool = cluster.url();
    let mut first = Backend::start(&["--pool", &pool, "--host", "h1", "--lease-ttl", "2"]);
    // The second host sees the first one's hda as its own hda: the shared LUN.
    let second = Backend::start_with(
        Some(&first.image("hda")),
        None,
        &["--pool", &pool, "--host", "h2", "--lease-ttl", "2"],
    );
    let devices = shared_lun(&first, "hda", "3:0");
    vdisk(
        &pool,
        &devices,
        &["format", "phy:hda", "--extent-size", "1M"],
    );
    vdisk(&pool, &devices, &["create", "4"]);
    let on = |host: &str, backend: &Backend, rest: &[&str]| -> Output {
        let endpoint = backend.endpoint();
        let mut arguments = vec!["--host", host, "--hv", &endpoint];
        arguments.extend_from_slice(rest);
        vdisk_run(&pool, &devices, &arguments)
    };
    let attach = ["attach", "vd:1", "xvda", "1", "rw"];
    assert!(on("h1", &first, &attach).status.success());
    let refused = on("h2", &second, &attach);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "vdisk: attach vd:1 as xvda of domain 1 rw: unsafe at safety 0: 3:0 sectors 0+8192 overlaps domain 1 xvda (rw) at 3:0 sectors 0+8192 (shared: sectors 0+8192)\n"
    );
    let pid = Pid::from_raw(first.pid() as i32).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    first.wait(Duration::from_secs(10));
    // Refused while the lease may still be alive (the last renewal was at most 2/3 s ago,
    // so it has more than a second to run); let in once etcd has expired it.
    assert_eq!(on("h2", &second, &attach).status.code(), Some(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts: serde_json::Value =
            serde_json::from_str(&vdisk(&pool, &devices, &["hosts", "--json"])).unwrap();
        if hosts[0]["lease"] == "expired" {
            assert_eq!(hosts[0]["host"], "h1");
            assert_eq!(hosts[0]["attachments"], 1);
            assert_eq!(hosts[1]["lease"], "alive");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Host b sees host a's attachment fenced, and no longer counts it as a user.
    let listed = on("h2", &second, &["vbds", "all", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        (
            &listed[0]["domain"],
            &listed[0]["vdevice"],
            &listed[0]["source"],
            &listed[0]["state"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!("xvda"),
            &serde_json::json!("vd:1"),
            &serde_json::json!("fenced")
        )
    );
    let taken = on("h2", &second, &attach);
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
}

/// A backend started with `--takeover` on `backend`'s directory, logging to `log`; killed
/// when dropped.
struct Successor {
    child: Child,
    log: PathBuf,
}

impl Successor {
    fn spawn(backend: &Backend, log: &str, extra: &[&str]) -> Successor {
        let log = backend.work.path().join(log);
        let child = Command::new(env!("CARGO_BIN_EXE_vbd-backend"))
            .arg("--devices")
            .arg(&backend.devices)
            .arg("--dir")
            .arg(&backend.dir)
            .arg("--takeover")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Successor { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log says `text`.
    fn wait_for(&self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            assert!(std::time::Instant::now() < deadline, "{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_takeover_serves_the_vbds_only_while_the_registration_they_were_granted_under_lasts() {
    let directory = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(directory.path(), 1).unwrap();
    let pool = cluster.url();
    let lease = ["--pool", &pool, "--host", "h1", "--lease-ttl", "2"];
    let mut backend = Backend::start(&lease);
    let revision = |log: &str| -> i64 {
        log.split(" at revision ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no registration in {log}"))
    };
    let first_registration = revision(&backend.log());
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &[(0, 2048, 128)]);
    assert!(qemu_io(&backend, "write -P 0xab 0 64k").contains("wrote 65536/65536 bytes"));

    // A successor outside the pool would serve them unfenced: refused.
    let mut unregistered = Successor::spawn(&backend, "unregistered.log", &[]);
    let status = wait_with_timeout(&mut unregistered.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", unregistered.log());
    assert!(
        unregistered
            .log()
            .contains("is registered with a pool: take it over with --pool and --host"),
        "{}",
        unregistered.log()
    );
    assert!(qemu_io(&backend, "write -P 0xab 0 64k").contains("wrote 65536/65536 bytes"));

    // While the lease lives, a takeover continues the registration and serves on.
    let successor = Successor::spawn(&backend, "successor.log", &lease);
    assert!(backend.wait(Duration::from_secs(30)).success());
    successor.wait_for("took over 1 VBDs");
    assert!(revision(&successor.log()) > first_registration);
    assert!(qemu_io(&backend, "write -P 0xcd 0 64k").contains("wrote 65536/65536 bytes"));
    assert_eq!(
        backend.read_image("hda", 2048 * 512, 64 << 10),
        vec![0xcd; 64 << 10]
    );

    // Paused past its lease, the successor is fenced: its registration has lapsed, and
    // another host could now be granted the VD. A third backend may not take its VBDs over
    // and serve them again under a registration of its own.
    let pid = Pid::from_raw(successor.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    kill_process(pid, Signal::CONT).unwrap();
    successor.wait_for("expired: fenced");
    let mut third = Successor::spawn(&backend, "third.log", &lease);
    let status = wait_with_timeout(&mut third.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", third.log());
    assert!(
        third.log().contains(&format!(
            "cannot register host h1: host h1: the registration made at revision {} has lapsed",
            revision(&successor.log())
        )),
        "{}",
        third.log()
    );
    assert!(
        third
            .log()
            .contains("start without --takeover, then vdisk restore checks them again"),
        "{}",
        third.log()
    );
    // The fenced backend serves on, writing nothing.
    successor.wait_for("the new backend went away before it took over");
    let written = qemu_io(&backend, "write -P 0xef 0 64k");
    assert!(written.contains("Input/output error"), "{written}");
    assert_eq!(
        backend.read_image("hda", 2048 * 512, 64 << 10),
        vec![0xcd; 64 << 10]
    );
}
