//! Resident memory of a host process, from `/proc/PID/status`: what a block server
//! (vbd-backend, qemu-storage-daemon) keeps in RAM while it serves.

use std::fs;

/// `VmRSS` of process `pid` in bytes: its resident pages, anonymous, file-backed and shared
/// memory it has touched (a VMM's guest memory counts only where the server touched it).
pub fn process_resident_bytes(pid: u32) -> Result<u64, String> {
    process_status_bytes(pid, "VmRSS")
}

/// `RssShmem` of process `pid` in bytes: the shared-memory part of its resident set, which
/// for a vhost-user server is the VMM's guest memory (a memfd) where it has touched it.
pub fn process_shared_resident_bytes(pid: u32) -> Result<u64, String> {
    process_status_bytes(pid, "RssShmem")
}

fn process_status_bytes(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    status_bytes(&status, field).map_err(|error| format!("{path}: {error}"))
}

/// The `FIELD:   1234 kB` line of a status file, in bytes.
fn status_bytes(status: &str, field: &str) -> Result<u64, String> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {field} line"))?;
    let kibibytes = line
        .trim()
        .strip_suffix(" kB")
        .and_then(|number| number.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{field} is `{}`, not a number of kB", line.trim()))?;
    Ok(kibibytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_in_bytes() {
        let status =
            "Name:\tvbd-backend\nVmHWM:\t   9000 kB\nVmRSS:\t    6144 kB\nRssAnon:\t 2048 kB\n";
        assert_eq!(status_bytes(status, "VmRSS"), Ok(6 << 20));
        assert_eq!(status_bytes(status, "RssAnon"), Ok(2 << 20));
        assert_eq!(
            status_bytes("VmRSS:\t lots\n", "VmRSS"),
            Err("VmRSS is `lots`, not a number of kB".to_owned())
        );
        assert_eq!(
            status_bytes("Name:\tx\n", "VmRSS"),
            Err("no VmRSS line".to_owned())
        );
        // A field is matched whole, not as the prefix of a longer one.
        assert_eq!(
            status_bytes("RssShmemX:\t 1 kB\n", "RssShmem"),
            Err("no RssShmem line".to_owned())
        );
    }

    #[test]
    fn this_process_is_resident() {
        let resident = process_resident_bytes(std::process::id()).unwrap();
        assert!(resident > 1 << 20, "{resident} bytes");
        let shared = process_shared_resident_bytes(std::process::id()).unwrap();
        assert!(shared <= resident, "{shared} of {resident} bytes");
    }
}
