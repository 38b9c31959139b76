//! `vdisk` with one database and devices file, as the walkthroughs run it (each command
//! printed with what it printed, a failure an error) and as the tests do (quietly).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::process::transcribe;

/// The `vdisk` binary and the files it works on.
#[derive(Clone, Debug)]
pub struct Vdisk {
    pub binary: PathBuf,
    pub database: PathBuf,
    pub devices: PathBuf,
}

impl Vdisk {
    /// `vdisk ARGUMENTS` with `VDISK_DB` and `VDISK_DEVICES` set and no `VDISK_HV` from the
    /// caller's environment.
    pub fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(arguments)
            .env("VDISK_DB", &self.database)
            .env("VDISK_DEVICES", &self.devices)
            .env_remove("VDISK_HV");
        command
    }

    /// Run quietly and return the outcome, success or not; an error only if it cannot start.
    pub fn output(&self, arguments: &[&str]) -> Result<Output, String> {
        self.command(arguments)
            .output()
            .map_err(|error| format!("{}: {error}", self.binary.display()))
    }

    /// Print `$ vdisk ARGUMENTS`, run it and print its standard output; a non-zero exit is
    /// an error carrying its standard error. Returns the standard output.
    pub fn run(&self, arguments: &[&str]) -> Result<String, String> {
        transcribe(
            &format!("vdisk {}", arguments.join(" ")),
            &mut self.command(arguments),
        )
    }
}
