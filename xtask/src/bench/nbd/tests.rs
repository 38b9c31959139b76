//! The `nbd` object, the goals' verdicts and fio's command line, on a made-up run.

use super::*;
use vbd_machine::process::display;

/// A run where vbd-backend is 1.5x qsd on every figure, the floor 2x qsd where it runs, and
/// vbd-backend's sparse copies cost 0.1x (to null) and 0.4x (from a file) of the full ones.
fn nbd() -> Nbd {
    let mut medians = BTreeMap::new();
    let backend = [
        (Workload::RandomReadDepth1, 15_000.0),
        (Workload::RandomReadDepth32, 60_000.0),
        (Workload::RandomWriteDepth1, 12_000.0),
        (Workload::RandomWriteDepth32, 45_000.0),
        (Workload::CopyFullToNull, 200.0),
        (Workload::CopySparseToNull, 20.0),
        (Workload::CopyFullFromFile, 400.0),
        (Workload::CopySparseFromFile, 160.0),
    ];
    for (workload, figure) in backend {
        medians.insert((Server::Backend, workload), figure);
        let qsd = match workload.unit() {
            Unit::Iops => figure / 1.5,
            Unit::Milliseconds => figure * 1.5,
        };
        medians.insert((Server::Qsd, workload), qsd);
        if workload.only_writes() {
            let floor = match workload.unit() {
                Unit::Iops => qsd * 2.0,
                Unit::Milliseconds => qsd / 2.0,
            };
            medians.insert((Server::Floor, workload), floor);
        }
    }
    Nbd {
        medians,
        sparse_allocated_bytes: BTreeMap::from([
            (Server::Backend, 4 << 20),
            (Server::Qsd, 512 << 20),
        ]),
        rounds: 5,
        fio_runtime: Duration::from_secs(2),
    }
}

#[test]
fn the_summary_object_has_every_figure_per_server_and_the_ratios() {
    let json = nbd().json();
    assert_eq!(json["vbd"]["randread_qd32_iops"], 60_000.0);
    assert_eq!(json["qsd"]["randread_qd32_iops"], 40_000.0);
    assert_eq!(json["qsd"]["copy_full_to_null_ms"], 300.0);
    assert_eq!(json["vbd_over_qsd"]["copy_sparse_from_file_ms"], 1.5);
    assert_eq!(json["vbd_over_qsd"]["randwrite_qd1_iops"], 1.5);
    assert_eq!(json["vbd_sparse_over_full"]["to_null"], 0.1);
    assert_eq!(json["vbd_sparse_over_full"]["from_file"], 0.4);
    assert_eq!(json["qsd_sparse_over_full"]["to_null"], 0.1);
    assert_eq!(json["run"]["rounds"], 5);
    assert_eq!(json["run"]["disk_mib"], 512);
    assert_eq!(json["run"]["sparse_data_mib"], 4);
    assert_eq!(json["run"]["sparse_allocated_mib_after"]["vbd"], 4.0);
    assert_eq!(json["run"]["sparse_allocated_mib_after"]["qsd"], 512.0);
    for server in ["vbd", "qsd", "vbd_over_qsd"] {
        assert_eq!(json[server].as_object().unwrap().len(), 8, "{server}");
    }
    // The floor only where it runs: the four workloads that only write.
    assert_eq!(json["floor"]["copy_sparse_from_file_ms"], 120.0);
    assert_eq!(json["floor_over_qsd"]["randwrite_qd32_iops"], 2.0);
    for floor in ["floor", "floor_over_qsd"] {
        assert_eq!(json[floor].as_object().unwrap().len(), 4, "{floor}");
        assert!(json[floor].get("copy_full_to_null_ms").is_none());
    }
    assert!(json.get("floor_sparse_over_full").is_none());
}

#[test]
fn every_figure_has_a_speedup_goal_and_the_sparse_copies_a_cost_goal() {
    let verdicts: Vec<(String, bool)> = nbd()
        .goals()
        .into_iter()
        .map(|goal| (goal.text, goal.met))
        .collect();
    assert_eq!(verdicts.len(), 10);
    assert_eq!(
        verdicts[0],
        (
            "nbd: vbd-backend >= 1.2x qemu-storage-daemon on randread_qd1_iops: 1.50x".to_owned(),
            true
        )
    );
    assert_eq!(
        verdicts[7],
        (
            "nbd: vbd-backend >= 1.2x qemu-storage-daemon on copy_sparse_from_file_ms: 1.50x \
             (a server that does nothing: 2.00x)"
                .to_owned(),
            true
        )
    );
    assert!(verdicts[..8].iter().all(|(_, met)| *met));
    assert_eq!(
        verdicts[8..],
        [
            (
                "nbd: a sparse copy to null <= 0.3x a full one: 0.10x".to_owned(),
                true
            ),
            (
                "nbd: a sparse copy from a file <= 0.3x a full one: 0.40x".to_owned(),
                false
            )
        ]
    );
}

#[test]
fn a_figure_not_measured_misses_its_goal() {
    let mut run = nbd();
    run.medians
        .remove(&(Server::Qsd, Workload::RandomWriteDepth32));
    let goal = &run.goals()[3];
    assert_eq!(
        (goal.text.as_str(), goal.met),
        (
            "nbd: vbd-backend >= 1.2x qemu-storage-daemon on randwrite_qd32_iops: NaNx \
             (a server that does nothing: NaNx)",
            false
        )
    );
    assert_eq!(
        run.json()["vbd_over_qsd"]["randwrite_qd32_iops"],
        Value::Null
    );
}

#[test]
fn fio_runs_the_nbd_engine_on_the_export_for_the_given_time() {
    let command = fio_command(
        "r0_vbd_randwrite_qd32_iops",
        "nbd+unix:///xvda?socket=/run/x.nbd",
        true,
        32,
        Duration::from_secs(2),
    );
    assert_eq!(
        display(&command),
        "fio --name=r0_vbd_randwrite_qd32_iops --ioengine=nbd \
         '--uri=nbd+unix:///xvda?socket=/run/x.nbd' --rw=randwrite --bs=4k --iodepth=32 \
         --time_based --runtime=2000ms --eta=never --output-format=json"
    );
}
