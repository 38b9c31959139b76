//! `vdisk`: the command-line face of the host-tools library. Exit status 0 when done, 1
//! when refused or failed, 2 for a usage error; errors are one line on standard error.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
