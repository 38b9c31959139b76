//! The QEMU figure of `cargo xtask bench`: a guest writing then reading through a VBD of one
//! extent and through one of 1024 extents, in one boot, by the `qemu-io` program of the
//! integration suite (which holds the hypervisor client, so xtask stays light).

use std::process::Command;

use vbd_machine::process::output;
use vbd_machine::workspace_root;

use serde_json::Value;

/// MiB each VBD is written then read: the 16, or 2 for `--quick`, since every byte
/// crosses an emulated UART at a few hundred KiB/s.
const FULL_MIB: u32 = 16;
const QUICK_MIB: u32 = 2;

/// Throughput in MiB/s of writing then reading the whole VBD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QemuIo {
    pub single_extent: f64,
    pub many_extents: f64,
}

impl QemuIo {
    /// How the many-extent VBD compares with the single one (goal: at least 0.95).
    pub fn ratio(&self) -> f64 {
        self.many_extents / self.single_extent
    }
}

/// Boot a machine and measure.
pub fn measure(quick: bool) -> Result<QemuIo, String> {
    let mib = if quick { QUICK_MIB } else { FULL_MIB };
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "vbd-integration",
            "--bin",
            "qemu-io",
            "--",
        ])
        .args(["--mib", &mib.to_string()]);
    let result = output(&mut command)?;
    parse(&String::from_utf8_lossy(&result.stdout))
}

/// `qemu-io`'s one line of JSON.
fn parse(printed: &str) -> Result<QemuIo, String> {
    let document: Value = serde_json::from_str(printed.trim())
        .map_err(|error| format!("qemu-io printed no JSON ({error}): {printed}"))?;
    let field = |key: &str| {
        document[key]
            .as_f64()
            .ok_or_else(|| format!("qemu-io printed no {key}: {printed}"))
    };
    Ok(QemuIo {
        single_extent: field("single_extent")?,
        many_extents: field("many_extents")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_read_from_qemu_io_output() {
        let printed =
            "{\"single_extent\": 0.176, \"many_extents\": 0.191, \"extents\": 1024, \"mib\": 2}\n";
        assert_eq!(
            parse(printed),
            Ok(QemuIo {
                single_extent: 0.176,
                many_extents: 0.191
            })
        );
        assert_eq!(
            parse("{\"single_extent\": 0.2}"),
            Err("qemu-io printed no many_extents: {\"single_extent\": 0.2}".to_owned())
        );
    }
}
