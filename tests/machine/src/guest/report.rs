//! The host half of the result protocol ([`super::script`] is the guest's): a run passes only
//! when the console holds no `FAIL`, one `DONE results=N` after exactly N `RESULT` lines with
//! distinct keys, and then the kernel's `reboot: Power down`, which only `poweroff` prints
//! (a panic or an init that exits reboots instead, and `-no-reboot` makes QEMU exit with the
//! same status 0, so the status alone proves nothing).

use std::time::Duration;

use super::script::PREFIX;
use crate::process::tail;

/// What the kernel prints last on a power-off (`kernel/reboot.c`, at emergency level, so
/// `quiet` does not hide it).
const POWER_DOWN: &str = "reboot: Power down";

/// What a guest reported, once its run passed.
#[derive(Clone, Debug)]
pub struct GuestReport {
    /// `RESULT` keys and values, in the order printed.
    pub results: Vec<(String, String)>,
    /// The whole console.
    pub console: String,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

impl GuestReport {
    /// The value of `key`; an error names the key and the keys there are.
    pub fn get(&self, key: &str) -> Result<&str, String> {
        self.results
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| {
                let keys: Vec<&str> = self.results.iter().map(|(name, _)| name.as_str()).collect();
                format!(
                    "the guest reported no {key} (it reported {})",
                    keys.join(", ")
                )
            })
    }
}

/// Check a finished guest's console against the protocol and return its results.
pub fn results(console: &str) -> Result<Vec<(String, String)>, String> {
    let mut results: Vec<(String, String)> = Vec::new();
    let mut done = false;
    let mut powered_down = false;
    for line in console.lines().map(|line| line.trim_end_matches('\r')) {
        if done && line.contains(POWER_DOWN) {
            powered_down = true;
        }
        let Some(message) = line
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            continue;
        };
        if done {
            return Err(format!("`{line}` follows the guest's DONE line"));
        }
        if let Some(failure) = message.strip_prefix("FAIL ") {
            return Err(format!("the guest failed: {failure}"));
        } else if let Some(pair) = message.strip_prefix("RESULT ") {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{line}` is not KEY=VALUE"))?;
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid_key {
                return Err(format!(
                    "`{line}`: a key is letters, digits, `_`, `.` or `-`"
                ));
            }
            if results.iter().any(|(name, _)| name == key) {
                return Err(format!("the guest reported {key} twice"));
            }
            results.push((key.to_owned(), value.to_owned()));
        } else if message.starts_with("WAIT ") {
            // A pause for the host (`wait_for_host`); it reports nothing.
        } else if let Some(count) = message.strip_prefix("DONE results=") {
            if count.parse::<usize>().ok() != Some(results.len()) {
                return Err(format!(
                    "the guest says it reported {count} results, the console has {}",
                    results.len()
                ));
            }
            done = true;
        } else {
            return Err(format!("`{line}`: unknown {PREFIX} line"));
        }
    }
    if !done {
        return Err(format!(
            "the guest never printed `{PREFIX} DONE`; console ends:\n{}",
            tail(console, 30)
        ));
    }
    if !powered_down {
        return Err(format!(
            "the guest did not power off after DONE (no `{POWER_DOWN}`); console ends:\n{}",
            tail(console, 30)
        ));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[    1.0] Linux version 6.1\r\n\
        VBD-GUEST RESULT sha256=ab12\r\n\
        VBD-GUEST WAIT overwritten\r\n\
        [    1.5] random kernel line\r\n\
        VBD-GUEST RESULT pattern.read=VBD pattern 1\r\n\
        VBD-GUEST DONE results=2\r\n\
        [    2.0] reboot: Power down\r\n";

    fn replaced(from: &str, to: &str) -> String {
        GOOD.replace(from, to)
    }

    #[test]
    fn a_clean_run_gives_its_results_in_order() {
        assert_eq!(
            results(GOOD).unwrap(),
            [
                ("sha256".to_owned(), "ab12".to_owned()),
                ("pattern.read".to_owned(), "VBD pattern 1".to_owned())
            ]
        );
    }

    #[test]
    fn every_breach_of_the_protocol_fails_the_run() {
        let fail = replaced(
            "VBD-GUEST DONE results=2",
            "VBD-GUEST FAIL insmod virtio_blk",
        );
        assert_eq!(
            results(&fail),
            Err("the guest failed: insmod virtio_blk".to_owned())
        );
        let short = replaced("results=2", "results=3");
        assert_eq!(
            results(&short),
            Err("the guest says it reported 3 results, the console has 2".to_owned())
        );
        let twice = replaced("pattern.read=", "sha256=");
        assert_eq!(
            results(&twice),
            Err("the guest reported sha256 twice".to_owned())
        );
        let no_done = replaced("VBD-GUEST DONE results=2\r\n", "");
        assert!(results(&no_done)
            .unwrap_err()
            .starts_with("the guest never printed `VBD-GUEST DONE`"));
        let panic = replaced("reboot: Power down", "reboot: Restarting system");
        assert!(results(&panic)
            .unwrap_err()
            .starts_with("the guest did not power off after DONE"));
        let late = format!("{GOOD}VBD-GUEST RESULT late=1\n");
        assert_eq!(
            results(&late),
            Err("`VBD-GUEST RESULT late=1` follows the guest's DONE line".to_owned())
        );
        let bad_key = replaced("sha256=ab12", "sha 256=ab12");
        assert!(results(&bad_key).unwrap_err().contains("a key is letters"));
        let no_pair = replaced("sha256=ab12", "sha256");
        assert_eq!(
            results(&no_pair),
            Err("`VBD-GUEST RESULT sha256` is not KEY=VALUE".to_owned())
        );
        let unknown = replaced("VBD-GUEST RESULT sha256=ab12", "VBD-GUEST HELLO");
        assert_eq!(
            results(&unknown),
            Err("`VBD-GUEST HELLO`: unknown VBD-GUEST line".to_owned())
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let report = GuestReport {
            results: results(GOOD).unwrap(),
            console: GOOD.to_owned(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(report.get("sha256"), Ok("ab12"));
        assert_eq!(
            report.get("md5"),
            Err("the guest reported no md5 (it reported sha256, pattern.read)".to_owned())
        );
    }
}
