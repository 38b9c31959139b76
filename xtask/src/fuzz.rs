//! `cargo xtask fuzz TARGET --seconds N`: a long run of one cargo-fuzz target of `fuzz/`,
//! after writing its seed corpus (the unit tests of `fuzz/common`). cargo-fuzz is
//! installed first if missing. The target is built without a sanitizer (`--sanitizer
//! none`): AddressSanitizer needs a nightly rustc, which these machines do not have, while
//! cargo-fuzz's coverage flags are all stable; what is sought are panics, hangs and broken
//! properties, and cargo-fuzz keeps debug assertions and overflow checks on. A crash, a
//! panic or an input that runs longer than `HANG_SECONDS` fails the run and leaves the
//! input in `fuzz/artifacts/TARGET/`.

use std::process::Command;

use vbd_machine::process::run as run_command;
use vbd_machine::workspace_root;

use crate::provision;

/// The targets of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 3] = ["virtio_request", "nbd_option", "nbd_request"];
/// One input that takes longer than this is a hang.
const HANG_SECONDS: u32 = 10;

pub struct Options {
    target: String,
    seconds: u32,
}

impl Options {
    pub fn parse(arguments: &[String]) -> Result<Options, String> {
        let (target, rest) = arguments
            .split_first()
            .ok_or_else(|| format!("fuzz needs a target: one of {}", TARGETS.join(", ")))?;
        if !TARGETS.contains(&target.as_str()) {
            return Err(format!(
                "`{target}` is not a fuzz target: one of {}",
                TARGETS.join(", ")
            ));
        }
        let seconds = match rest {
            [] => 60,
            [flag, value] if flag == "--seconds" => value
                .parse()
                .ok()
                .filter(|&seconds| seconds > 0)
                .ok_or(format!(
                    "--seconds {value}: not a whole number of seconds above 0"
                ))?,
            _ => return Err("fuzz takes a target and then only --seconds N".to_string()),
        };
        Ok(Options {
            target: target.clone(),
            seconds,
        })
    }
}

pub fn run(options: Options) -> Result<(), String> {
    let fuzz = workspace_root().join("fuzz");
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&fuzz);
        command
    };
    provision::ensure_cargo_subcommand("fuzz", "cargo-fuzz")?;
    eprintln!("xtask: the seed corpus, written by fuzz/common's tests");
    run_command(cargo().args(["test", "--package", "vbd-fuzz-common"]))?;
    eprintln!(
        "xtask: fuzzing {} for {} s; a crash is kept in fuzz/artifacts/{}/",
        options.target, options.seconds, options.target
    );
    run_command(cargo().args([
        "fuzz",
        "run",
        "--sanitizer",
        "none",
        &options.target,
        "--",
        &format!("-max_total_time={}", options.seconds),
        &format!("-timeout={HANG_SECONDS}"),
        "-print_final_stats=1",
    ]))
    .map_err(|error| format!("fuzz target {} failed: {error}", options.target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<(String, u32), String> {
        let arguments: Vec<String> = arguments.iter().map(|text| text.to_string()).collect();
        Options::parse(&arguments).map(|options| (options.target, options.seconds))
    }

    #[test]
    fn a_target_and_its_seconds_parse() {
        assert_eq!(
            parse(&["nbd_option", "--seconds", "5"]),
            Ok(("nbd_option".to_string(), 5))
        );
        assert_eq!(
            parse(&["virtio_request"]),
            Ok(("virtio_request".to_string(), 60))
        );
    }

    #[test]
    fn one_negative_test_per_usage_error() {
        assert_eq!(
            parse(&[]),
            Err("fuzz needs a target: one of virtio_request, nbd_option, nbd_request".to_string())
        );
        assert_eq!(
            parse(&["queue"]),
            Err(
                "`queue` is not a fuzz target: one of virtio_request, nbd_option, nbd_request"
                    .to_string()
            )
        );
        assert_eq!(
            parse(&["nbd_option", "--seconds", "0"]),
            Err("--seconds 0: not a whole number of seconds above 0".to_string())
        );
        assert_eq!(
            parse(&["nbd_option", "--minutes", "1"]),
            Err("fuzz takes a target and then only --seconds N".to_string())
        );
    }
}
