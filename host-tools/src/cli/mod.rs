//! The `vdisk` command line: global options, one variant per subcommand, each with its own
//! `run`, and the mapping of errors to one line and an exit status.

mod disks;
mod hosts;
mod io;
mod output;
mod pool;
mod restore;
mod shell;
mod vbd;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use devices::{DeviceSource, DevicesFile, Region, Sysfs};
use host_tools::database::{Database, OpenMode, PoolUrl};
use host_tools::error::Error;
use host_tools::hypervisor::Hypervisor;
use host_tools::reconcile::{HypervisorView, Reconciliation};
use host_tools::zero::Zeroing;
use host_tools::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// Manage the pool of physical extents and the virtual disks (VDs) allocated from it.
///
/// Exit status: 0 done (also when whoever reads the output stops reading it, as `vdisk
/// list | head -1` does); 1 refused or failed (no space, not found, unsafe, corrupt or
/// locked database), with one line on standard error naming the input and the reason; 2
/// usage; 3 the pool cannot be reached (an etcd cluster without quorum), nothing changed.
#[derive(Parser)]
#[command(name = "vdisk", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct GlobalOptions {
    /// The pool: `sqlite:PATH` (a file on this host, the default) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` (one pool for many hosts). Wins over --db.
    #[arg(long, global = true, env = "VDISK_POOL", value_parser = pool_argument)]
    pool: Option<PoolUrl>,
    /// The same as `--pool sqlite:PATH`; its directory is created by the first `format`.
    #[arg(long, global = true, env = "VDISK_DB")]
    db: Option<PathBuf>,
    /// The host this vdisk and its hypervisor run on, which attachments record (default:
    /// the machine's host name).
    #[arg(long, global = true, env = "VDISK_HOST")]
    host: Option<String>,
    /// A TOML file of `[[disk]] name, device, path` naming the physical disks (images can
    /// stand in for disks). Without it, names resolve through /sys/class/block.
    #[arg(long, global = true, env = "VDISK_DEVICES")]
    devices: Option<PathBuf>,
    /// The hypervisor's endpoint, `unix:PATH`.
    #[arg(long, global = true, env = "VDISK_HV")]
    hv: Option<String>,
    /// Print machine-readable JSON instead of the human form.
    #[arg(long, global = true)]
    json: bool,
    /// Zero by writing zeros even where the disk could zero in place. A test hook, hidden:
    /// the crash test needs a zeroing create slow enough to kill.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "VDISK_ZERO_WITH_WRITES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    zero_with_writes: bool,
}

#[derive(Subcommand)]
enum Command {
    Format(pool::Format),
    Create(disks::Create),
    Refresh(disks::Refresh),
    Delete(disks::Delete),
    Undelete(disks::Undelete),
    List(disks::List),
    Show(disks::Show),
    Resize(disks::Resize),
    Pool(pool::Pool),
    Lookup(pool::Lookup),
    Check(pool::Check),
    Attach(vbd::Attach),
    Detach(vbd::Detach),
    Vbds(vbd::Vbds),
    Restore(restore::Restore),
    Hosts(hosts::Hosts),
    Write(io::Write),
    Read(io::Read),
    Completions(shell::Completions),
    Man(shell::Man),
}

impl Command {
    fn run(self, context: &Context) -> Result<()> {
        match self {
            Command::Format(command) => command.run(context),
            Command::Create(command) => command.run(context),
            Command::Refresh(command) => command.run(context),
            Command::Delete(command) => command.run(context),
            Command::Undelete(command) => command.run(context),
            Command::List(command) => command.run(context),
            Command::Show(command) => command.run(context),
            Command::Resize(command) => command.run(context),
            Command::Pool(command) => command.run(context),
            Command::Lookup(command) => command.run(context),
            Command::Check(command) => command.run(context),
            Command::Attach(command) => command.run(context),
            Command::Detach(command) => command.run(context),
            Command::Vbds(command) => command.run(context),
            Command::Restore(command) => command.run(context),
            Command::Hosts(command) => command.run(context),
            Command::Write(command) => command.run(context),
            Command::Read(command) => command.run(context),
            Command::Completions(command) => command.run(context),
            Command::Man(command) => command.run(context),
        }
    }
}

fn pool_argument(text: &str) -> std::result::Result<PoolUrl, String> {
    PoolUrl::parse(text).map_err(|error| error.to_string())
}

/// The pool when neither --pool nor --db names one.
const DEFAULT_POOL: &str = "/var/lib/vdisk/vdisk.sqlite";

/// What every subcommand may need, opened only when it asks.
pub struct Context {
    pool: PoolUrl,
    host: String,
    devices: Option<PathBuf>,
    hv: Option<String>,
    json: bool,
    zeroing: Zeroing,
}

impl Context {
    fn database(&self, mode: OpenMode) -> Result<Database> {
        let mut database = Database::open_pool(&self.pool, mode)?;
        database.set_host(&self.host);
        Ok(database)
    }

    /// The database when the pool exists: commands that work on the hypervisor alone use
    /// what it records when there is one, and still refuse a damaged one.
    fn existing_database(&self, mode: OpenMode) -> Result<Option<Database>> {
        match self.database(mode) {
            Err(Error::NotFound(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    fn device_source(&self) -> Result<Box<dyn DeviceSource>> {
        match &self.devices {
            Some(file) => Ok(Box::new(DevicesFile::load(file)?)),
            None => Ok(Box::new(Sysfs::default())),
        }
    }

    /// Resolve `phy:NAME`, telling on standard error what was found damaged on the way.
    fn resolve(&self, devices: &dyn DeviceSource, name: &str) -> Result<Region> {
        let region = devices.resolve(name)?;
        for warning in &region.warnings {
            warn(warning);
        }
        Ok(region)
    }

    /// The one reconciliation of the hypervisor's VBDs (of `scope`: a domain, or all) with
    /// the database's records, when there is a hypervisor to ask, changing nothing.
    fn observe(
        &self,
        database: Option<&Database>,
        hypervisor: Option<&mut Hypervisor>,
        scope: Option<u32>,
    ) -> Result<Reconciliation> {
        let (records, elsewhere): (Vec<_>, Vec<_>) = match database {
            Some(database) => database
                .attachments()?
                .into_iter()
                .partition(|record| record.is_on(&self.host)),
            None => Default::default(),
        };
        // A fenced host's backend serves no I/O: what its records map is in no one's use.
        let fenced_hosts = match database {
            Some(database) => database.fenced_hosts()?,
            None => Vec::new(),
        };
        let (fenced, elsewhere): (Vec<_>, Vec<_>) = elsewhere
            .into_iter()
            .partition(|record| fenced_hosts.contains(&record.host));
        let view = match hypervisor {
            Some(hypervisor) => Some(HypervisorView {
                vbds: hypervisor.all_vbds(scope)?,
                scope,
                start_id: hypervisor.start_id(),
            }),
            None => None,
        };
        let now = database.map_or_else(host_tools::timestamp::now, Database::now);
        Ok(Reconciliation::new(records, view, now).with_other_hosts(elsewhere, fenced))
    }

    /// [`Context::observe`], then the records brought in line with what it saw: records
    /// whose VBD is gone are removed and those of an earlier start whose VBD is back are
    /// stamped with the current one, through a connection of their own since readers open
    /// read-only.
    fn reconcile(
        &self,
        database: Option<&Database>,
        hypervisor: Option<&mut Hypervisor>,
        scope: Option<u32>,
    ) -> Result<Reconciliation> {
        let start_id = hypervisor.as_ref().map(|hypervisor| hypervisor.start_id());
        let reconciliation = self.observe(database, hypervisor, scope)?;
        let unsettled = !reconciliation.dead.is_empty() || !reconciliation.found_again.is_empty();
        if let (Some(start_id), true) = (start_id, unsettled) {
            self.database(OpenMode::Existing)?.settle_attachments(
                &reconciliation.dead,
                &reconciliation.found_again,
                start_id,
            )?;
        }
        Ok(reconciliation)
    }

    /// The hypervisor, when `--hv` names one.
    fn optional_hypervisor(&self) -> Result<Option<Hypervisor>> {
        match self.hv {
            Some(_) => vbd::hypervisor(self).map(Some),
            None => Ok(None),
        }
    }

    /// A progress bar on standard error, hidden when that is not a terminal so scripts and
    /// logs see only results.
    fn progress_bar(&self, message: &'static str) -> ProgressBar {
        if !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(0).with_message(message);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }
}

/// Parse the command line, run the subcommand and return the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return 0;
            }
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = error.print();
                return 2;
            }
            // clap's message is several lines; scripts get one: what comes before the usage,
            // which names the argument and the problem.
            let rendered = error.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            warn(message.strip_prefix("error: ").unwrap_or(&message));
            return 2;
        }
    };
    let host = match cli.global.host {
        Some(host) => host,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    let pool = cli
        .global
        .pool
        .unwrap_or_else(|| PoolUrl::Sqlite(cli.global.db.unwrap_or_else(|| DEFAULT_POOL.into())));
    let context = Context {
        pool,
        host,
        devices: cli.global.devices,
        hv: cli.global.hv,
        json: cli.global.json,
        zeroing: if cli.global.zero_with_writes {
            Zeroing::Writes
        } else {
            Zeroing::Offload
        },
    };
    match cli.command.run(&context) {
        Ok(()) => 0,
        // Whoever read the output stopped reading: what was asked is done, nothing to say.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(error) => {
            warn(&error.to_string().replace('\n', " "));
            error.exit_code()
        }
    }
}

/// One line on standard error. A standard error that cannot be written is no reason to
/// panic: there is no one left to tell.
fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "vdisk: {message}");
}
