//! A real Linux guest (Debian's cloud kernel under TCG) running fio's verified random writes
//! through vbd-backend while the backend is killed and restarted under it: QEMU reconnects
//! (`reconnect=1`), the restarted backend finds the requests that were in flight in the
//! inflight region QEMU kept, replays them and serves on, and fio ends clean. Also the
//! longest pause a request saw, which BENCHMARKS.md reports.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use vbd_integration::{guest_artefacts, test_dir, TestBackend};
use vbd_machine::guest::{fio_layer, FioReport, Guest, GuestConfig, GuestDisk, Initramfs};
use vbd_machine::DiskSpec;

/// An unpartitioned disk image of `mib` MiB.
fn disk(name: &str, mib: u64) -> DiskSpec {
    DiskSpec {
        name: name.to_owned(),
        size_bytes: mib << 20,
        partitions: String::new(),
    }
}

/// fio's verified random writes on /dev/vda at QD16, then its exit status, its JSON report
/// and the I/O errors in the kernel's log.
const FIO_BODY: &str = r#"wait_for_block /dev/vda
result fio.started yes
fio --name=restart --filename=/dev/vda --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --fsync=4 --verify=crc32c --do_verify=1 --verify_fatal=1 --eta=never --output-format=json --output=/tmp/fio.json
result fio.status "$?"
result fio.report "$(tr -d '\n' < /tmp/fio.json)"
result kernel.errors "$(dmesg | grep -ciE 'i/o error|blk_update_request|critical medium')"
"#;

/// A backend on two disks serving a VD that spans both as domain 1's xvda, and a guest
/// running [`FIO_BODY`] on it, once fio has started.
fn fio_guest_on_two_disks(dir: &Path) -> (TestBackend, Guest) {
    let test = TestBackend::start(dir, &[disk("hda", 24), disk("hdb", 24)], &[]);
    test.vdisk_ok(&["format", "phy:hda", "--extent-size", "1M"]);
    test.vdisk_ok(&["format", "phy:hdb", "--extent-size", "1M"]);
    let id = test.vdisk_ok(&["create", "40M"]).trim().to_owned();
    test.vdisk_ok(&["attach", &format!("vd:{id}"), "xvda", "1", "rw"]);
    let shown = test.vdisk_ok(&["show", &id]);
    assert!(
        shown.contains("3:0") && shown.contains("3:64"),
        "the VD is not on both disks: {shown}"
    );
    let socket = test.backend().vhost_user_socket(1, "xvda");
    let guest_dir = dir.join("guest");
    fs::create_dir_all(&guest_dir).unwrap();
    let artefacts = guest_artefacts();
    let mut initramfs = Initramfs::guest(artefacts, FIO_BODY);
    initramfs.layer(&fio_layer().unwrap());
    let initrd = guest_dir.join("initramfs.cpio.gz");
    initramfs.write(&initrd).unwrap();
    let mut config = GuestConfig::new(&guest_dir, artefacts, &initrd);
    config.timeout = Duration::from_secs(150);
    config.control = true;
    config.disks = vec![GuestDisk::VhostUser {
        socket,
        queues: 1,
        reconnect: true,
    }];
    let mut guest = Guest::start(&config).unwrap();
    guest.wait_for_result("fio.started").unwrap();
    (test, guest)
}

/// Require fio to have ended clean (exit 0, verified, no error) and the guest's kernel to
/// have logged no I/O error; returns the longest write's latency, the longest pause.
fn require_clean_fio(guest: Guest) -> Duration {
    let report = guest.finish().unwrap_or_else(|error| panic!("{error}"));
    let get = |key: &str| report.get(key).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(get("fio.status"), "0", "fio: {}", get("fio.report"));
    let json = get("fio.report");
    let parsed = FioReport::parse(json).unwrap_or_else(|error| panic!("{error}: {json}"));
    assert!(
        parsed.write.total_ios > 0 && parsed.read.total_ios > 0,
        "{json}"
    );
    assert_eq!(
        get("kernel.errors"),
        "0",
        "the guest's kernel logged I/O errors"
    );
    let document: serde_json::Value =
        serde_json::from_str(&json[json.find('{').unwrap()..]).unwrap();
    let longest = document["jobs"][0]["write"]["clat_ns"]["max"]
        .as_f64()
        .expect("fio reports its longest write");
    Duration::from_nanos(longest as u64)
}

/// What the backends' logs say they replayed: how many requests were in flight at each
/// kill or handover depends on where the backend was, so it is reported, not required.
fn replays(logs: &str) -> String {
    let counts: Vec<&str> = logs
        .lines()
        .filter_map(|line| line.split(" replayed ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    format!("requests replayed after each: {counts:?}")
}

/// Whether fio has reported its end.
fn fio_ended(guest: &Guest) -> bool {
    guest.console().contains("RESULT fio.status=")
}

#[test]
fn fio_verified_writes_survive_two_kills_of_the_backend_and_restores() {
    let dir = test_dir("backend-restart-kill");
    let (mut test, guest) = fio_guest_on_two_disks(&dir);
    let mut pauses = Vec::new();
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!fio_ended(&guest), "fio ended before kill {round}");
        test.kill();
        let killed = Instant::now();
        test.restart();
        let restored = test.vdisk_ok(&["restore"]);
        assert!(restored.contains("restored"), "{restored}");
        pauses.push(killed.elapsed());
    }
    let longest = require_clean_fio(guest);
    let logs: String = (2..=3)
        .map(|start| fs::read_to_string(dir.join(format!("backend-{start}.log"))).unwrap())
        .collect();
    assert!(
        logs.contains("resumes from its inflight record"),
        "no ring resumed from its record: {logs}"
    );
    assert!(!logs.contains("fail until"), "{logs}");
    eprintln!(
        "kill + restart + restore took {pauses:?}; the longest write fio saw took {longest:?}; {}",
        replays(&logs)
    );
    test.stop();
}

#[test]
fn fio_verified_writes_survive_two_upgrades_in_place() {
    let dir = test_dir("backend-restart-upgrade");
    let (mut test, guest) = fio_guest_on_two_disks(&dir);
    let mut handovers = Vec::new();
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!fio_ended(&guest), "fio ended before upgrade {round}");
        let started = Instant::now();
        test.upgrade();
        handovers.push(started.elapsed());
        // The VBDs never went away: vdisk sees them attached, not to be restored.
        let listed = test.vdisk_ok(&["vbds", "all"]);
        assert!(
            listed.contains("attached") && !listed.contains("restorable"),
            "{listed}"
        );
    }
    let longest = require_clean_fio(guest);
    for start in 1..=2 {
        let log = fs::read_to_string(dir.join(format!("backend-{start}.log"))).unwrap();
        assert!(log.contains("handed 1 VBDs over"), "{log}");
    }
    let logs: String = (2..=3)
        .map(|start| fs::read_to_string(dir.join(format!("backend-{start}.log"))).unwrap())
        .collect();
    assert!(logs.contains("took over 1 VBDs"), "{logs}");
    assert!(
        logs.contains("resumes from its inflight record"),
        "no ring resumed from its record: {logs}"
    );
    assert!(!logs.contains("fail until"), "{logs}");
    eprintln!(
        "each upgrade took {handovers:?} until the old backend exited; the longest write fio saw took {longest:?}; {}",
        replays(&logs)
    );
    test.stop();
}
