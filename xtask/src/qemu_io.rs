//! The QEMU figure of `cargo xtask bench`: a guest writing then reading through a VBD of one
//! extent and through one of 1024 extents, in one boot, by the `qemu-io` program of the
//! integration suite (which holds the hypervisor client, so xtask stays light).

use std::process::Command;

use vbd_machine::process::output;
use vbd_machine::workspace_root;

use crate::bench::number_after;

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
    let text = String::from_utf8_lossy(&result.stdout);
    let field = |key: &str| {
        number_after(&text, key).ok_or_else(|| format!("qemu-io printed no {key}: {text}"))
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
        assert_eq!(number_after(printed, "single_extent"), Some(0.176));
        assert_eq!(number_after(printed, "many_extents"), Some(0.191));
        assert_eq!(number_after(printed, "missing"), None);
        assert_eq!(number_after("{\"single_extent\": }", "single_extent"), None);
    }
}
