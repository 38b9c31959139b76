//! CPU time a host process has spent, user and system, all its threads together, from
//! `/proc/PID/stat`: what a block server (qemu-storage-daemon, vbd-backend) costs per request.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::output;

/// `utime + stime` of process `pid` so far. The kernel counts in clock ticks (`getconf
/// CLK_TCK`, 100 a second on Debian), so measure over seconds, not milliseconds.
pub fn process_cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    cpu_time_from_stat(&stat, ticks_per_second()?).map_err(|error| format!("{path}: {error}"))
}

/// Clock ticks per second, asked of `getconf` once per process.
fn ticks_per_second() -> Result<u64, String> {
    static TICKS: OnceLock<Result<u64, String>> = OnceLock::new();
    TICKS
        .get_or_init(|| {
            let printed = output(Command::new("getconf").arg("CLK_TCK"))?;
            let text = String::from_utf8_lossy(&printed.stdout);
            text.trim()
                .parse::<u64>()
                .ok()
                .filter(|&ticks| ticks > 0)
                .ok_or_else(|| format!("getconf CLK_TCK printed `{}`", text.trim()))
        })
        .clone()
}

/// Fields 14 and 15 (`utime`, `stime`) of a stat line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`.
fn cpu_time_from_stat(stat: &str, ticks_per_second: u64) -> Result<Duration, String> {
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or("no command name")?;
    // After the name, field 3 (state) comes first, so field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or_else(|| format!("field {} is not a tick count", index + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_nanos(
        total.saturating_mul(1_000_000_000) / ticks_per_second,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_added() {
        let stat = "4242 (qemu-storage-d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 125 0 0 20 0 3 0 100 1000 10 18446744073709551615";
        assert_eq!(
            cpu_time_from_stat(stat, 100),
            Ok(Duration::from_millis(3750))
        );
        let odd_name = stat.replace("(qemu-storage-d)", "(a) b (c)");
        assert_eq!(
            cpu_time_from_stat(&odd_name, 100),
            Ok(Duration::from_millis(3750))
        );
        assert_eq!(
            cpu_time_from_stat("4242 (short) S 1 2", 100),
            Err("field 14 is not a tick count".to_owned())
        );
    }

    #[test]
    fn busy_work_shows_in_this_process_cpu_time() {
        let before = process_cpu_time(std::process::id()).unwrap();
        let started = std::time::Instant::now();
        let mut state = 1u64;
        while process_cpu_time(std::process::id()).unwrap() < before + Duration::from_millis(50) {
            for _ in 0..100_000 {
                state = std::hint::black_box(state.wrapping_mul(6364136223846793005) + 1);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "10 s of spinning did not add 50 ms of CPU time"
            );
        }
    }
}
