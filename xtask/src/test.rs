//! `cargo xtask test`: everything CI checks, in the order that fails fastest, closing with
//! one line that totals the tests of every cargo test run (`N passed, N failed`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use vbd_machine::process::{display, run as run_command};
use vbd_machine::workspace_root;

use crate::provision;

/// Tests counted from cargo's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Add the counts of one `test result: ok. 28 passed; 0 failed; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let count = |word: &str| {
            rest.split(';')
                .filter_map(|part| {
                    part.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(word)
                })
                .find_map(|number| number.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
    }
}

/// Run a `cargo test` command, echoing its output and counting its tests.
fn run_tests(command: &mut Command, tally: &mut Tally) -> Result<(), String> {
    eprintln!("$ {}", display(command));
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{}: {error}", display(command)))?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|error| error.to_string())?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().map_err(|error| error.to_string())?;
    if status.success() {
        Ok(())
    } else {
        println!("{} passed, {} failed", tally.passed, tally.failed.max(1));
        Err(format!("`{}` failed: {status}", display(command)))
    }
}

pub fn run() -> Result<(), String> {
    provision::ensure_all()?;
    let root = workspace_root();
    let hypervisor = root.join("tests/hypervisor");
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&root);
        command
    };
    let hypervisor_cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&hypervisor);
        command
    };
    eprintln!("xtask: formatting");
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(hypervisor_cargo().args(["fmt", "--check"]))?;
    eprintln!("xtask: clippy, warnings denied");
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(hypervisor_cargo().args([
        "clippy",
        "--release",
        "--target",
        "x86_64-unknown-none",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: host tests");
    let mut tally = Tally::default();
    run_tests(
        cargo().args(["test", "--workspace", "--exclude", "vbd-integration"]),
        &mut tally,
    )?;
    eprintln!("xtask: the model check of hv-vbd's fencing and seqlock (loom, in target/loom)");
    run_tests(
        cargo()
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", root.join("target/loom"))
            .args(["test", "--package", "hv-vbd", "--lib", "--release"]),
        &mut tally,
    )?;
    eprintln!("xtask: hv-vbd and shared-abi build for x86_64-unknown-none (no_std, no alloc)");
    run_command(cargo().args([
        "build",
        "--package",
        "hv-vbd",
        "--package",
        "shared-abi",
        "--target",
        "x86_64-unknown-none",
    ]))?;
    eprintln!("xtask: QEMU integration suite");
    run_tests(
        cargo().args([
            "test",
            "--package",
            "vbd-integration",
            "--",
            "--test-threads=2",
        ]),
        &mut tally,
    )?;
    eprintln!("xtask: every check passed");
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_totalled() {
        let mut tally = Tally::default();
        tally.add_line("test result: ok. 28 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        tally.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        tally.add_line("running 3 tests");
        tally.add_line("test passed_and_failed ... ok");
        assert_eq!(
            tally,
            Tally {
                passed: 31,
                failed: 2
            }
        );
    }
}
