//! `cargo xtask test`: everything CI checks, in the order that fails fastest, closing with
//! one line that totals the tests of every test run (`N passed, N failed`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use vbd_machine::process::{display, run as run_command};
use vbd_machine::workspace_root;

use crate::provision;

/// Tests counted from cargo test's `test result:` lines and cargo-nextest's `Summary` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Add the counts of one `test result: ok. 28 passed; 0 failed; ...` line or one
    /// `Summary [ 75.8s] 473 tests run: 471 passed (1 slow), 1 failed, 1 timed out, ...` line.
    /// cargo test's line starts the line: the same words indented are a failed test's
    /// output, which nextest shows, and were counted in its summary already.
    fn add_line(&mut self, line: &str) {
        let line = line.trim_end();
        let (parts, separator) = if let Some(rest) = line.strip_prefix("test result: ") {
            let rest = rest
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            (rest, ';')
        } else if let Some((_, rest)) = line
            .trim_start()
            .strip_prefix("Summary [")
            .and_then(|rest| rest.split_once(" run: "))
        {
            (rest, ',')
        } else {
            return;
        };
        let count = |word: &str| -> u64 {
            parts
                .split(separator)
                .filter_map(|part| {
                    let (number, rest) = part.trim().split_once(' ')?;
                    rest.starts_with(word).then(|| number.parse::<u64>().ok())?
                })
                .sum()
        };
        self.passed += count("passed");
        self.failed += count("failed") + count("timed out");
    }
}

/// Run a test command (cargo test, cargo nextest), echoing its output and counting its
/// tests: cargo test reports them on stdout, nextest on stderr.
fn run_tests(command: &mut Command, tally: &mut Tally) -> Result<(), String> {
    eprintln!("$ {}", display(command));
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{}: {error}", display(command)))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (from_stdout, from_stderr) = std::thread::scope(|scope| {
        let on_stderr = scope.spawn(|| echo_and_count(stderr, |line| eprintln!("{line}")));
        let on_stdout = echo_and_count(stdout, |line| println!("{line}"));
        (
            on_stdout,
            on_stderr.join().expect("the stderr reader does not panic"),
        )
    });
    for counted in [from_stdout, from_stderr] {
        let counted = counted?;
        tally.passed += counted.passed;
        tally.failed += counted.failed;
    }
    let status = child.wait().map_err(|error| error.to_string())?;
    if status.success() {
        Ok(())
    } else {
        println!("{} passed, {} failed", tally.passed, tally.failed.max(1));
        Err(format!("`{}` failed: {status}", display(command)))
    }
}

/// Echo each line of `stream` with `echo` and count the tests it reports.
fn echo_and_count(stream: impl Read, echo: impl Fn(&str)) -> Result<Tally, String> {
    let mut tally = Tally::default();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|error| error.to_string())?;
        echo(&line);
        tally.add_line(&line);
    }
    Ok(tally)
}

pub fn run() -> Result<(), String> {
    provision::ensure_all()?;
    provision::ensure_cargo_subcommand("nextest", "cargo-nextest")?;
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
    let mut tally = Tally::default();
    eprintln!("xtask: the model check of hv-vbd's fencing and seqlock (loom, in target/loom)");
    run_tests(
        cargo()
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", root.join("target/loom"))
            .args(["test", "--package", "hv-vbd", "--lib"]),
        &mut tally,
    )?;
    eprintln!("xtask: every host test and the QEMU integration suite (cargo-nextest, .config/nextest.toml)");
    run_tests(cargo().args(["nextest", "run", "--workspace"]), &mut tally)?;
    eprintln!("xtask: the documentation's examples");
    run_tests(cargo().args(["test", "--workspace", "--doc"]), &mut tally)?;
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
        tally.add_line("     Summary [  75.865s] 473 tests run: 470 passed (1 slow), 2 failed, 1 timed out, 0 skipped");
        tally.add_line("        FAIL [   0.442s] (378/473) vbd-backend polling::tests::it_stops");
        tally.add_line("    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        tally.add_line("     Summary [   1.000s] 1 test run: 1 passed, 0 skipped");
        assert_eq!(
            tally,
            Tally {
                passed: 502,
                failed: 5
            }
        );
    }
}
