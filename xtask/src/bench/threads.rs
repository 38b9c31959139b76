//! The threads figure: `hv-vbd/benches/threads.rs` (not a criterion bench) translating on one
//! thread and on two while a third replaces 1024 extents every millisecond; it writes
//! `<target>/bench/threads.json`, read back here.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;
use vbd_machine::process::run as run_command;

use super::read_fresh;

/// What the threads bench measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threads {
    /// Translations per second, one reader and two (medians over the rounds).
    pub one: f64,
    pub two: f64,
    pub speedup: f64,
    /// Changes the writer made over every round, and how long it waited for them.
    pub writer_changes: u64,
    pub writer_wait_us_median: f64,
    pub writer_wait_us_max: f64,
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
    Ok(Threads {
        one: number("/translate_threads/1")?,
        two: number("/translate_threads/2")?,
        speedup: number("/translate_threads/speedup")?,
        writer_changes: document["writer_changes"]
            .as_u64()
            .ok_or("no count at /writer_changes")?,
        writer_wait_us_median: number("/writer_wait_us_median")?,
        writer_wait_us_max: number("/writer_wait_us_max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_output_is_read_field_by_field() {
        let printed = r#"{"translate_threads": {"1": 30934720, "2": 58647745, "speedup": 1.896}, "rounds": 7, "seconds_per_run": 1.5, "writer_changes": 1258, "writer_wait_us_median": 105.4, "writer_wait_us_max": 1615.7}"#;
        assert_eq!(
            parse(printed),
            Ok(Threads {
                one: 30_934_720.0,
                two: 58_647_745.0,
                speedup: 1.896,
                writer_changes: 1258,
                writer_wait_us_median: 105.4,
                writer_wait_us_max: 1615.7,
            })
        );
        assert_eq!(
            parse(&printed.replace("\"speedup\"", "\"ratio\"")),
            Err("no number at /translate_threads/speedup".to_owned())
        );
    }
}
