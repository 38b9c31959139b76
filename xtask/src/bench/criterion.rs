//! The criterion benches of `hv-vbd` and `host-tools`, run with cargo, and the medians
//! criterion writes to `<target>/criterion/**/new/estimates.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;
use vbd_machine::process::run as run_command;

use super::read_fresh;

/// Criterion's settings for `--quick`: fewer and shorter samples, so that the whole quick
/// run, guest included, stays under five minutes once built.
const QUICK_CRITERION: [&str; 6] = [
    "--warm-up-time",
    "0.5",
    "--measurement-time",
    "1",
    "--sample-size",
    "10",
];

/// Run the criterion suites.
pub fn run_suites(root: &Path, quick: bool) -> Result<(), String> {
    let suites: [&[&str]; 2] = [
        &["hv-vbd", "--bench", "translate", "--bench", "set_extents"],
        &["host-tools", "--bench", "validate"],
    ];
    for suite in suites {
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(root)
            .args(["bench", "--package"])
            .args(suite)
            .arg("--");
        if quick {
            command.args(QUICK_CRITERION);
        }
        run_command(&mut command)?;
    }
    Ok(())
}

/// The medians of one run's criterion benchmarks.
pub struct Medians {
    criterion: PathBuf,
    started: SystemTime,
}

impl Medians {
    /// The estimates under `target`'s criterion directory written since `started`.
    pub fn new(target: &Path, started: SystemTime) -> Medians {
        Medians {
            criterion: target.join("criterion"),
            started,
        }
    }

    /// The median of `benchmark` (`group/function/parameter`) in nanoseconds, refusing a file
    /// older than this run: a benchmark that was renamed or skipped must not report a stale
    /// figure.
    pub fn nanoseconds(&self, benchmark: &str) -> Result<f64, String> {
        let path = self.criterion.join(benchmark).join("new/estimates.json");
        parse_median(&read_fresh(&path, self.started)?)
            .ok_or_else(|| format!("{}: no median point estimate", path.display()))
    }
}

/// `median.point_estimate` from criterion's `estimates.json`.
pub fn parse_median(estimates: &str) -> Option<f64> {
    let document: Value = serde_json::from_str(estimates).ok()?;
    document["median"]["point_estimate"].as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape criterion 0.5 writes, abridged.
    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":17.9,"upper_bound":18.8},"point_estimate":18.3,"standard_error":0.2},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":18.2,"upper_bound":18.6},"point_estimate":18.414,"standard_error":0.1},"median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.1,"upper_bound":0.4},"point_estimate":0.25,"standard_error":0.07},"slope":null,"std_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.2,"upper_bound":0.9},"point_estimate":0.5,"standard_error":0.1}}"#;

    #[test]
    fn the_median_point_estimate_is_read_not_the_mean() {
        assert_eq!(parse_median(ESTIMATES), Some(18.414));
    }

    #[test]
    fn a_file_without_a_median_is_refused() {
        assert_eq!(parse_median(r#"{"mean":{"point_estimate":3.0}}"#), None);
        assert_eq!(parse_median(r#"{"median":{"point_estimate":"x"}}"#), None);
        assert_eq!(parse_median(""), None);
    }

    #[test]
    fn a_stale_or_missing_estimate_is_refused() {
        use std::fs;
        let target = std::env::temp_dir().join(format!("xtask-medians-{}", std::process::id()));
        let directory = target.join("criterion/group/function/1/new");
        fs::create_dir_all(&directory).unwrap();
        fs::write(directory.join("estimates.json"), ESTIMATES).unwrap();
        let fresh = Medians::new(&target, SystemTime::UNIX_EPOCH);
        assert_eq!(fresh.nanoseconds("group/function/1"), Ok(18.414));
        assert!(fresh.nanoseconds("group/other/1").is_err());
        let later = Medians::new(
            &target,
            SystemTime::now() + std::time::Duration::from_secs(60),
        );
        assert!(later
            .nanoseconds("group/function/1")
            .unwrap_err()
            .ends_with("not written by this run"));
        fs::remove_dir_all(&target).unwrap();
    }
}
