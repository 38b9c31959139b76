//! `cargo xtask qemu`: a machine to try `vdisk` against by hand.

use std::path::PathBuf;

use vbd_machine::{build_hypervisor, workspace_root, DiskSpec, Machine, MachineConfig};

use crate::provision;

pub struct Options {
    dir: PathBuf,
    disks: Vec<DiskSpec>,
    sharing: u8,
}

impl Options {
    pub fn parse(arguments: &[String]) -> Result<Options, String> {
        let mut dir = workspace_root().join("target/qemu");
        let mut disks = Vec::new();
        let mut sharing = 2;
        let mut arguments = arguments.iter();
        while let Some(argument) = arguments.next() {
            let mut value = || {
                arguments
                    .next()
                    .ok_or_else(|| format!("{argument} needs a value"))
            };
            match argument.as_str() {
                "--dir" => dir = PathBuf::from(value()?),
                "--disk" => {
                    let disk = DiskSpec::parse(value()?)?;
                    if disks.iter().any(|other: &DiskSpec| other.name == disk.name) {
                        return Err(format!("disk {} given twice", disk.name));
                    }
                    disks.push(disk);
                }
                "--sharing" => {
                    let text = value()?;
                    sharing = match text.as_str() {
                        "0" => 0,
                        "1" => 1,
                        "2" => 2,
                        _ => return Err(format!("--sharing {text}: expected 0, 1 or 2")),
                    };
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        Ok(Options {
            dir,
            disks,
            sharing,
        })
    }
}

pub fn run(options: Options) -> Result<(), String> {
    provision::ensure_all()?;
    let mut config = MachineConfig::new(&options.dir, build_hypervisor()?);
    config.sharing = options.sharing;
    if !options.disks.is_empty() {
        config.disks = options.disks;
    }
    // Interactive use: a long wall-clock limit, but still a limit.
    config.timeout = std::time::Duration::from_secs(24 * 3600);
    let mut machine = Machine::start(&config)?;
    let toml = machine.machine_toml();
    println!("machine ready: {}", toml.display());
    println!(
        "console:       {}",
        machine.dir().join("console.log").display()
    );
    println!("dom0 port:     {}", machine.endpoint(0));
    println!(
        "try:           vdisk --devices {} --hv {} --db {} vbds all",
        toml.display(),
        machine.endpoint(0),
        machine.dir().join("vdisk.sqlite").display()
    );
    println!("QEMU runs until you press Ctrl-C (or for 24 hours).");
    let status = machine.wait()?;
    println!("QEMU exited: {status}");
    Ok(())
}
