//! The threads figure: `hv-vbd/benches/threads.rs` (not a criterion bench) translating on one
//! thread and on two while a third replaces 1024 extents every millisecond, spinning on each
//! change's fence; beside it the same with the writer yielding as it waits, and with no
//! writer. It writes `<target>/bench/threads.json`, read back here.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;
use vbd_machine::process::run as run_command;

use super::read_fresh;

/// Translations per second on one reader and on two (medians over the rounds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub one: f64,
    pub two: f64,
    pub speedup: f64,
}

/// What the threads bench measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threads {
    /// Beside a writer spinning on each fence: the issue's figure (`translate_threads`).
    pub spinning: Rates,
    /// Beside a writer yielding its CPU while it waits, as vbd-backend waits.
    pub yielding: Rates,
    /// With no writer.
    pub no_writer: Rates,
    /// Changes the spinning writer made over every round, and how long it waited for them.
    pub writer_changes: u64,
    pub writer_wait_us_median: f64,
    pub writer_wait_us_max: f64,
    pub yielding_writer_wait_us_max: f64,
}

/// Run the bench and read what it wrote, refusing a file older than this run.
pub fn measure(root: &Path, target: &Path, quick: bool) -> Result<Threads, String> {
    let started = SystemTime::now();
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(root)
        .args(["bench", "--package", "hv-vbd", "--bench", "threads", "--"]);
    if quick {
        command.arg("--quick");
    }
    run_command(&mut command)?;
    let path = target.join("bench/threads.json");
    parse(&read_fresh(&path, started)?).map_err(|error| format!("{}: {error}", path.display()))
}

fn parse(text: &str) -> Result<Threads, String> {
    let document: Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let number = |pointer: &str| {
        document
            .pointer(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no number at {pointer}"))
    };
    let rates = |key: &str| -> Result<Rates, String> {
        Ok(Rates {
            one: number(&format!("/{key}/1"))?,
            two: number(&format!("/{key}/2"))?,
            speedup: number(&format!("/{key}/speedup"))?,
        })
    };
    Ok(Threads {
        spinning: rates("translate_threads")?,
        yielding: rates("translate_threads_writer_yields")?,
        no_writer: rates("translate_threads_no_writer")?,
        writer_changes: document["writer_changes"]
            .as_u64()
            .ok_or("no count at /writer_changes")?,
        writer_wait_us_median: number("/writer_wait_us_median")?,
        writer_wait_us_max: number("/writer_wait_us_max")?,
        yielding_writer_wait_us_max: number("/yielding_writer_wait_us_max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_output_is_read_field_by_field() {
        let printed = r#"{"translate_threads": {"1": 30934720, "2": 38647745, "speedup": 1.249}, "translate_threads_writer_yields": {"1": 32187543, "2": 50153363, "speedup": 1.558}, "translate_threads_no_writer": {"1": 35873370, "2": 62954737, "speedup": 1.755}, "rounds": 3, "seconds_per_run": 0.5, "writer_changes": 2310, "writer_wait_us_median": 142.1, "writer_wait_us_max": 12128.9, "yielding_writer_wait_us_max": 9035.4}"#;
        let threads = parse(printed).unwrap();
        assert_eq!(
            threads.spinning,
            Rates {
                one: 30_934_720.0,
                two: 38_647_745.0,
                speedup: 1.249
            }
        );
        assert_eq!(threads.yielding.speedup, 1.558);
        assert_eq!(threads.no_writer.two, 62_954_737.0);
        assert_eq!(
            (
                threads.writer_changes,
                threads.writer_wait_us_median,
                threads.writer_wait_us_max,
                threads.yielding_writer_wait_us_max
            ),
            (2310, 142.1, 12128.9, 9035.4)
        );
        assert_eq!(
            parse(&printed.replace("\"speedup\": 1.249", "\"ratio\": 1.249")),
            Err("no number at /translate_threads/speedup".to_owned())
        );
    }
}
