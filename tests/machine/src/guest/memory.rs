//! Resident memory of a host process, from `/proc/PID/status`: what a block server
//! (vbd-backend, qemu-storage-daemon) keeps in RAM while it serves.

use std::fs;

/// `VmRSS` of process `pid` in bytes: its resident pages, anonymous, file-backed and shared
/// memory it has touched (a VMM's guest memory counts only where the server touched it).
pub fn process_resident_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    resident_from_status(&status).map_err(|error| format!("{path}: {error}"))
}

/// The `VmRSS:   1234 kB` line of a status file.
fn resident_from_status(status: &str) -> Result<u64, String> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS line")?;
    let kibibytes = line
        .trim()
        .strip_suffix(" kB")
        .and_then(|number| number.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("VmRSS is `{}`, not a number of kB", line.trim()))?;
    Ok(kibibytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_in_bytes() {
        let status =
            "Name:\tvbd-backend\nVmHWM:\t   9000 kB\nVmRSS:\t    6144 kB\nRssAnon:\t 2048 kB\n";
        assert_eq!(resident_from_status(status), Ok(6 << 20));
        assert_eq!(
            resident_from_status("VmRSS:\t lots\n"),
            Err("VmRSS is `lots`, not a number of kB".to_owned())
        );
        assert_eq!(
            resident_from_status("Name:\tx\n"),
            Err("no VmRSS line".to_owned())
        );
    }

    #[test]
    fn this_process_is_resident() {
        let resident = process_resident_bytes(std::process::id()).unwrap();
        assert!(resident > 1 << 20, "{resident} bytes");
    }
}
