//! One pool for many hosts, on a real etcd cluster the tests start: racing hosts never
//! share or lose an extent, sharing is enforced across hosts, and a cluster that loses its
//! quorum fails every command cleanly (exit status 3, nothing changed) until it is back.

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::hypervisor::Hypervisor;
use common::Machine;
use shared_abi::SharingLevel;

/// Start `vdisk` as host `host` without waiting for it.
fn spawn_on(machine: &Machine, host: &str, arguments: &[&str]) -> Child {
    machine
        .command(arguments)
        .env("VDISK_HOST", host)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run `vdisk` as host `host` and require success; returns standard output.
fn ok_on(machine: &Machine, host: &str, arguments: &[&str]) -> String {
    let output = spawn_on(machine, host, arguments)
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vdisk {arguments:?} on {host}: {stderr}"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Run `vdisk` as host `host` and require failure with `code` and `message`.
fn fails_on(machine: &Machine, host: &str, arguments: &[&str], code: i32, message: &str) {
    let output = spawn_on(machine, host, arguments)
        .wait_with_output()
        .unwrap();
    assert_eq!(
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned()
        ),
        (Some(code), format!("vdisk: {message}\n")),
        "vdisk {arguments:?} on {host}"
    );
}

/// The pool's invariants, as the SQLite pool's audit checks them, and its books: every
/// sector of the pool is free or held by exactly one disk (live, being created, or under a
/// claim of a grow or wipe under way), so none is shared or lost.
fn check_pool(machine: &Machine, round: usize) {
    let database = machine.database();
    assert_eq!(
        database.consistency_problems().unwrap(),
        Vec::<String>::new(),
        "round {round}"
    );
    let mut held: Vec<(u32, u64, u64)> = database
        .owners(None)
        .unwrap()
        .iter()
        .flat_map(|owner| &owner.extents)
        .map(|extent| {
            (
                extent.device().raw(),
                extent.start_sector(),
                extent.nr_sectors(),
            )
        })
        .collect();
    held.sort();
    for pair in held.windows(2) {
        assert!(
            pair[0].0 != pair[1].0 || pair[0].1 + pair[0].2 <= pair[1].1,
            "round {round}: two disks hold the same sectors: {pair:?}"
        );
    }
    let pool = machine.json(&["pool"]);
    let held_sectors: u64 = held.iter().map(|extent| extent.2).sum();
    assert_eq!(
        held_sectors + pool["free_sectors"].as_u64().unwrap(),
        pool["total_sectors"].as_u64().unwrap(),
        "round {round}: sectors lost"
    );
}

fn live_ids(machine: &Machine) -> Vec<String> {
    machine
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|disk| disk["id"].to_string())
        .collect()
}

#[test]
fn twenty_processes_on_two_hosts_never_share_or_lose_an_extent() {
    let machine = Machine::on_cluster(3, 64, &[16, 16, 16]);
    let started = Instant::now();
    for round in 0..6 {
        let ids = if round == 0 {
            Vec::new()
        } else {
            live_ids(&machine)
        };
        let children: Vec<(Vec<String>, Child)> = (0..20)
            .map(|process| {
                let host = if process % 2 == 0 { "a" } else { "b" };
                let pick = |offset: usize| ids.get((process + offset) % ids.len().max(1)).cloned();
                let arguments: Vec<String> = match (round, (process + round) % 5) {
                    // Every process formats one of three partitions: each goes in once.
                    (0, _) => vec![
                        "format".into(),
                        format!("phy:hda{}", process % 3 + 1),
                        "--extent-size".into(),
                        "1M".into(),
                    ],
                    (_, 0 | 1) => vec!["create".into(), format!("{}M", process % 3 + 1)],
                    (_, 2) => match pick(0) {
                        Some(id) => vec!["resize".into(), id, format!("{}M", 2 + process % 4)],
                        None => vec!["list".into()],
                    },
                    (_, 3) => match pick(1) {
                        Some(id) => vec!["delete".into(), id],
                        None => vec!["list".into()],
                    },
                    _ => match pick(2) {
                        Some(id) => vec!["delete".into(), id, "--wipe".into()],
                        None => vec!["create".into(), "1M".into(), "--zero".into()],
                    },
                };
                let borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
                let child = spawn_on(&machine, host, &borrowed);
                (arguments, child)
            })
            .collect();
        let mut succeeded = 0;
        for (arguments, child) in children {
            let output: Output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            // Done, or refused with one line (no space, already in the pool, not live);
            // never unavailable, never a crash.
            assert!(
                matches!(output.status.code(), Some(0 | 1)) && stderr.lines().count() <= 1,
                "round {round}: vdisk {arguments:?}: {:?} {stderr}",
                output.status
            );
            succeeded += usize::from(output.status.success());
        }
        if round == 0 {
            assert_eq!(succeeded, 3, "each partition formatted once");
        }
        check_pool(&machine, round);
    }
    // Everything deleted, every extent is free again: a grow whose disk was deleted under
    // it gave its claim back at once.
    for id in live_ids(&machine) {
        ok_on(&machine, "a", &["delete", &id]);
    }
    let pool = machine.json(&["pool"]);
    assert_eq!(pool["free_sectors"], pool["total_sectors"]);
    eprintln!(
        "six rounds of 20 racing processes in {:?}",
        started.elapsed()
    );
}

/// A hypervisor for host `name`, over the machine's disk image as the shared LUN.
fn host_hypervisor(machine: &Machine, name: &str, start_id: u64) -> Hypervisor {
    let directory = machine.directory.path().join(name);
    std::fs::create_dir_all(&directory).unwrap();
    Hypervisor::start(
        &directory,
        &machine.image(),
        start_id,
        SharingLevel::Unrestricted,
    )
}

#[test]
fn sharing_is_enforced_across_hosts_and_each_restores_only_its_own() {
    let machine = Machine::on_cluster(1, 32, &[16]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    machine.ok(&["create", "2"]);
    let a = host_hypervisor(&machine, "a", 1);
    let b = host_hypervisor(&machine, "b", 7);
    let on_a = ["--host", "a", "--hv", &a.endpoint(0)];
    let on_b = ["--host", "b", "--hv", &b.endpoint(0)];
    let with = |host: &[&str; 4], rest: &[&str]| -> Vec<String> {
        host.iter()
            .chain(rest)
            .map(|text| text.to_string())
            .collect()
    };
    let run_ok = |arguments: Vec<String>| {
        let borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
        machine.ok(&borrowed)
    };
    let run_fails = |arguments: Vec<String>, message: &str| {
        let borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
        machine.fails(&borrowed, 1, message);
    };
    run_ok(with(&on_a, &["attach", "vd:1", "xvda", "1", "rw"]));
    let writer = "3:0 sectors 2048+4096 overlaps domain 1 xvda (rw) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096)";
    // Host b, whose hypervisor knows nothing of host a's VBD, is refused a second writer
    // at levels 0 and 1 and a reader at 0; a reader at 1 is let in.
    for (mode, level) in [("rw", "0"), ("rw", "1"), ("r", "0")] {
        run_fails(
            with(
                &on_b,
                &["attach", "vd:1", "xvdb", "2", mode, "--safety", level],
            ),
            &format!("attach vd:1 as xvdb of domain 2 {mode}: unsafe at safety {level}: {writer}"),
        );
    }
    run_ok(with(
        &on_b,
        &["attach", "vd:1", "xvdb", "2", "r", "--safety", "1"],
    ));
    // The same domain and device on two hosts are two VBDs.
    run_ok(with(&on_b, &["attach", "vd:2", "xvda", "1", "rw"]));
    // Neither host takes the other's records for its own dead VBDs.
    let listed = |host: &[&str; 4]| -> Vec<(String, String)> {
        let arguments = with(host, &["vbds", "all"]);
        let borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
        machine
            .json(&borrowed)
            .as_array()
            .unwrap()
            .iter()
            .map(|vbd| {
                (
                    vbd["vdevice"].as_str().unwrap().into(),
                    vbd["source"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(listed(&on_a), vec![("xvda".into(), "vd:1".into())]);
    assert_eq!(
        listed(&on_b),
        vec![
            ("xvdb".into(), "vd:1".into()),
            ("xvda".into(), "vd:2".into())
        ]
    );
    // Host a restarts: its VBD is restorable there alone, and checked against host b's
    // reader as a restore on one host would be.
    drop(a);
    let a = host_hypervisor(&machine, "a", 2);
    let on_a = ["--host", "a", "--hv", &a.endpoint(0)];
    let arguments = with(&on_a, &["restore"]);
    let borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let refused = machine.run(&borrowed);
    assert_eq!(
        (refused.code, refused.stdout.as_str(), refused.stderr.as_str()),
        (
            1,
            "refused vd:1 as xvda of domain 1 rw at safety 0: unsafe: 3:0 sectors 2048+4096 overlaps domain 2 xvdb (r) at 3:0 sectors 2048+4096 (shared: sectors 2048+4096)\n",
            "vdisk: restore: 1 of 1 attachments refused\n"
        )
    );
    run_ok(with(&on_b, &["detach", "xvdb", "2"]));
    assert_eq!(
        run_ok(with(&on_a, &["restore"])),
        "restored vd:1 as xvda of domain 1 rw at safety 0: 2M in 1 extent\n"
    );
    assert_eq!(listed(&on_b), vec![("xvda".into(), "vd:2".into())]);
    // Deleting a disk another host maps is refused, as on one host.
    fails_on(
        &machine,
        "a",
        &["delete", "2"],
        1,
        "vd:2: still mapped: 3:0 sectors 6144+4096 overlaps domain 1 xvda (rw) at 3:0 sectors 6144+4096 (shared: sectors 6144+4096); detach it first or use --force",
    );
}

#[test]
fn one_member_down_works_two_down_fail_cleanly_and_the_pool_is_whole_after() {
    let mut machine = Machine::on_cluster(3, 32, &[16, 8]);
    machine.ok(&["format", "phy:hda1", "--extent-size", "1M"]);
    machine.ok(&["create", "2"]);
    let cluster = machine.etcd.as_mut().unwrap();
    cluster.kill_member(0);
    assert_eq!(machine.ok(&["create", "3"]), "2\n");
    assert_eq!(live_ids(&machine), vec!["1", "2"]);
    let before = machine.snapshot();
    machine.etcd.as_mut().unwrap().kill_member(1);
    let url = machine.pool_url();
    for arguments in [
        &["create", "1"][..],
        &["delete", "1"],
        &["format", "phy:hda2"],
        &["list"],
    ] {
        let started = Instant::now();
        let run = machine.run(arguments);
        let took = started.elapsed();
        assert_eq!(run.code, 3, "vdisk {arguments:?}: {}", run.stderr);
        assert!(
            run.stderr
                .starts_with(&format!("vdisk: pool {url}: unavailable: "))
                && run.stderr.lines().count() == 1,
            "vdisk {arguments:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
        assert!(
            took < Duration::from_secs(15),
            "vdisk {arguments:?} took {took:?}"
        );
    }
    let cluster = machine.etcd.as_mut().unwrap();
    cluster.start_member(0).unwrap();
    cluster.start_member(1).unwrap();
    cluster.wait_for(0).unwrap();
    cluster.wait_for(1).unwrap();
    assert_eq!(machine.snapshot(), before, "nothing was half done");
    check_pool(&machine, 0);
    assert_eq!(machine.ok(&["create", "1"]), "3\n");
}

#[test]
fn a_local_disk_stays_out_of_a_shared_pool() {
    let machine = Machine::on_cluster(1, 32, &[16]);
    let devices = machine.devices_file();
    let text = std::fs::read_to_string(&devices)
        .unwrap()
        .replace("shared = true\n", "");
    machine.write_devices(&text);
    machine.fails(
        &["format", "phy:hda1", "--extent-size", "1M"],
        1,
        &format!(
            "phy:hda1: not a shared disk (shared = true in the devices file), and pool {} is shared by many hosts",
            machine.pool_url()
        ),
    );
    machine.fails(
        &["pool"],
        1,
        &format!(
            "pool {}: has no pool yet (vdisk format creates it)",
            machine.pool_url()
        ),
    );
}
