//! What the shell and `man` need, generated from the same clap definitions that parse the
//! command line: completions and the manual page.

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use host_tools::error::{Error, Result};

use super::output::emit;
use super::{Cli, Context};

/// Print the completion script of SHELL (bash, zsh, fish, elvish or powershell).
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk completions bash > /etc/bash_completion.d/vdisk")]
pub struct Completions {
    /// The shell.
    shell: Shell,
}

impl Completions {
    pub fn run(self, _context: &Context) -> Result<()> {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "vdisk", &mut script);
        emit(&String::from_utf8_lossy(&script))
    }
}

/// Print the manual page, vdisk(1), in roff.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk man > vdisk.1 && man ./vdisk.1")]
pub struct Man {}

impl Man {
    pub fn run(self, _context: &Context) -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .map_err(|error| Error::io("the manual page", error))?;
        emit(&String::from_utf8_lossy(&page))
    }
}
