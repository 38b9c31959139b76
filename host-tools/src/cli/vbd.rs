//! The subcommands that change or list VBDs in the hypervisor: attach, detach, vbds.

use clap::Args;
use devices::parse_device_number;
use host_tools::allocate::merge_adjacent;
use host_tools::database::{
    vdevice_name, AccessMode, Attachment, AttachmentTarget, Database, OpenMode,
};
use host_tools::error::{Error, Result};
use host_tools::hypervisor::Hypervisor;
use host_tools::reconcile::ReconciledVbd;
use host_tools::size::format_sectors;
use host_tools::uname::Uname;
use host_tools::validator::validate;
use serde::Serialize;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

use super::output::{emit, emit_json, extents_json, extents_summary, table, ExtentJson};
use super::pool::{extents_of, mode_argument, safety_argument, uname_argument, users_of};
use super::Context;

/// A virtual device: a name like `xvda` or `hdb`, or `major:minor`.
pub(super) fn vdevice_argument(text: &str) -> std::result::Result<DeviceNumber, String> {
    parse_device_number(text)
        .ok_or_else(|| format!("{text:?}: not a device name like xvda or hdb, nor major:minor"))
}

fn domain_argument(text: &str) -> std::result::Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|&domain| domain != u32::MAX)
        .ok_or_else(|| format!("{text:?}: a domain is a number from 0 to 4294967294"))
}

/// Connect to the hypervisor named by `--hv`.
pub(super) fn hypervisor(context: &Context) -> Result<Hypervisor> {
    let endpoint = context.hv.as_deref().ok_or_else(|| {
        Error::Usage(
            "this command talks to the hypervisor: give --hv unix:PATH (or VDISK_HV)".to_owned(),
        )
    })?;
    Ok(Hypervisor::connect(endpoint)?)
}

fn mode_of(mode: AccessMode) -> Mode {
    if mode.is_writable() {
        Mode::READ | Mode::WRITE
    } else {
        Mode::READ
    }
}

/// Make a VBD of DOMAIN from a VD or a physical device, after checking it is safe.
///
/// The new extents are checked against every VBD the hypervisor reports (probe of all
/// domains, then info on each) and every filesystem dom0 has mounted, at the given safety
/// level: 0 allows sharing only when everyone reads, 1 also one writer beside readers, 2
/// anything. A refusal names each conflict. The hypervisor checks its own sharing level
/// again when the extents are set, atomically, so a racing attach cannot slip through.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk --hv unix:/tmp/vm/dom0.sock attach vd:3 xvda 1 rw\n  vdisk --hv unix:/tmp/vm/dom0.sock attach phy:hda3 xvdb 2 r --safety 1"
)]
pub struct Attach {
    /// vd:ID or phy:NAME.
    #[arg(value_parser = uname_argument)]
    uname: Uname,
    /// The virtual device the domain sees: xvda, xvdb, hdb, or major:minor.
    #[arg(value_parser = vdevice_argument)]
    vdevice: DeviceNumber,
    /// The domain to attach it to.
    #[arg(value_parser = domain_argument)]
    domain: u32,
    /// r (read-only) or rw.
    #[arg(value_parser = mode_argument, default_value = "r")]
    mode: AccessMode,
    /// The sharing level: 0, 1 or 2.
    #[arg(long, value_parser = safety_argument, default_value = "0")]
    safety: SharingLevel,
}

impl Attach {
    pub fn run(self, context: &Context) -> Result<()> {
        // The hypervisor first: without one, nothing (not even a new database) is made.
        let mut hypervisor = hypervisor(context)?;
        // Attaching records what it maps, so it may start the database, as format does.
        let mut database = context.database(OpenMode::CreateIfMissing)?;
        let extents = extents_of(context, Some(&database), &self.uname)?;
        let users = users_of(context, &database, Some(&mut hypervisor), &self.uname)?;
        let what = format!(
            "attach {} as {} of domain {} {}",
            self.uname,
            vdevice_name(self.vdevice),
            self.domain,
            self.mode.as_str()
        );
        let conflicts = validate(&extents, self.mode.is_writable(), &users, self.safety);
        if !conflicts.is_empty() {
            let explanations: Vec<String> = conflicts
                .iter()
                .map(|conflict| conflict.explain(&users))
                .collect();
            return Err(Error::Refused(format!(
                "{what}: unsafe at safety {}: {}",
                self.safety.number(),
                explanations.join("; ")
            )));
        }
        let target = match &self.uname {
            Uname::VirtualDisk(id) => AttachmentTarget::VirtualDisk(*id),
            Uname::Physical(name) => AttachmentTarget::Physical {
                name: name.clone(),
                extents: extents.clone(),
            },
        };
        // Record first: the record keeps the extents out of the pool, and a refusal here
        // (an existing record) leaves the hypervisor untouched. It is confirmed once the
        // VBD exists, so a reconciliation meanwhile does not take it for a dead one.
        let record = database.record_attachment(
            &target,
            self.domain,
            self.vdevice,
            self.mode,
            self.safety,
            hypervisor.start_id(),
        )?;
        let vbd = NewVbd {
            domain: self.domain,
            vdevice: self.vdevice,
            mode: self.mode,
            level: self.safety,
            label: label_of(&self.uname.to_string()),
        };
        if let Err(error) = vbd.create(&mut hypervisor, &extents) {
            let _ = database.remove_attachment(self.domain, self.vdevice);
            return Err(Error::Refused(format!("{what}: {error}")));
        }
        database.confirm_attachment(&record)?;
        if context.json {
            return emit_json(&AttachJson {
                domain: self.domain,
                vdevice: vdevice_name(self.vdevice),
                uname: self.uname.to_string(),
                mode: self.mode,
                extents: extents_json(&extents),
            });
        }
        emit(&format!("{what}: {}\n", extents_summary(&extents)))
    }
}

#[derive(Serialize)]
struct AttachJson {
    domain: u32,
    vdevice: String,
    uname: String,
    mode: AccessMode,
    extents: Vec<ExtentJson>,
}

/// Grow the VBD `reconciled` (made from a disk that just grew) by the disk's new extents,
/// through the hypervisor, and record what it maps now.
pub(super) fn grow_vbd(
    database: &mut Database,
    hypervisor: &mut Hypervisor,
    reconciled: &ReconciledVbd,
    added: &[Extent],
) -> Result<()> {
    let vbd = &reconciled.vbd;
    let failed = |error: Error| {
        Error::Refused(format!(
            "{} of domain {}: did not grow with its disk: {error}",
            vdevice_name(vbd.vdevice),
            vbd.domain
        ))
    };
    for extent in merge_adjacent(added) {
        // Freshly allocated extents share nothing: the strictest level says so.
        hypervisor
            .grow(vbd.domain, vbd.vdevice, extent, SharingLevel::ReadersOnly)
            .map_err(|error| failed(error.into()))?;
    }
    let now = hypervisor
        .info(vbd.domain, vbd.vdevice)
        .map_err(|error| failed(error.into()))?;
    if let Some(record) = &reconciled.record {
        database.update_attachment_extents(record, &now.extents)?;
    }
    Ok(())
}

/// The VBD `attach` (or `restore`) makes: where, how, at which sharing level, and under
/// which label.
pub(super) struct NewVbd {
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: AccessMode,
    pub level: SharingLevel,
    pub label: Label,
}

impl NewVbd {
    /// Create the VBD and set its extents; if setting them fails, delete it again so
    /// nothing half-made is left in the hypervisor.
    pub fn create(&self, hypervisor: &mut Hypervisor, extents: &[Extent]) -> Result<()> {
        hypervisor.create(self.domain, self.vdevice, mode_of(self.mode), self.label)?;
        if let Err(error) = hypervisor.set_extents(self.domain, self.vdevice, extents, self.level) {
            let _ = hypervisor.delete(self.domain, self.vdevice);
            return Err(error.into());
        }
        Ok(())
    }
}

/// The label the hypervisor keeps for a VBD made from `uname`: the uname itself, which
/// fits every `vd:ID` and classic partition name; a device name over 20 bytes gets none.
pub(super) fn label_of(uname: &str) -> Label {
    Label::new(uname).unwrap_or(Label::EMPTY)
}

/// Remove VBD VDEV from DOMAIN; its extents stay out of the pool until then.
#[derive(Args)]
#[command(after_help = "Example:\n  vdisk --hv unix:/tmp/vm/dom0.sock detach xvda 1")]
pub struct Detach {
    /// The virtual device: xvda, xvdb, hdb, or major:minor.
    #[arg(value_parser = vdevice_argument)]
    vdevice: DeviceNumber,
    /// The domain it belongs to.
    #[arg(value_parser = domain_argument)]
    domain: u32,
}

impl Detach {
    pub fn run(self, context: &Context) -> Result<()> {
        // Without a database there is no record to remove, only the VBD.
        let mut database = context.existing_database(OpenMode::Existing)?;
        let mut hypervisor = hypervisor(context)?;
        let what = format!(
            "detach {} of domain {}",
            vdevice_name(self.vdevice),
            self.domain
        );
        let in_hypervisor = hypervisor
            .delete(self.domain, self.vdevice)
            .map_err(Error::from);
        let recorded = database
            .as_mut()
            .map(|database| database.remove_attachment(self.domain, self.vdevice));
        match (in_hypervisor, recorded) {
            (Ok(()), _) => emit(&format!("{what}: done\n")),
            // The hypervisor lost it (a restart), but the record kept its extents reserved.
            (Err(Error::NotFound(_)), Some(Ok(attachment))) => emit(&format!(
                "{what}: the hypervisor had no such VBD; removed the record of {}\n",
                attachment.uname
            )),
            (Err(error), _) => Err(error),
        }
    }
}

/// List VBDs: each one's domain, name, mode, size, source, state and extents.
///
/// dom0's port may list any domain or all; a guest's port only its own (the default there).
/// SOURCE is what the database recorded the VBD was made from, or (unrecorded) for a VBD
/// made behind vdisk's back. STATE is `attached` for a VBD the hypervisor has,
/// `restorable` for an attachment recorded under an earlier start of the hypervisor whose
/// VBD the restart took away: `vdisk restore` makes it again (`vdisk detach` forgets it),
/// and, in a pool on etcd, `fenced` for another host's attachment whose lease has expired
/// (`vdisk hosts` names the host).
/// A record whose VBD is gone under the current start (its domain died) is removed.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk --hv unix:/tmp/vm/dom0.sock vbds all\n  vdisk --hv unix:/tmp/vm/dom1.sock vbds --json"
)]
pub struct Vbds {
    /// A domain number, or `all` (the default on dom0's port).
    domain: Option<String>,
}

/// Whether a listed VBD exists.
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum VbdState {
    /// The hypervisor has it.
    Attached,
    /// Recorded under an earlier start; `vdisk restore` makes it again.
    Restorable,
    /// Recorded by another host whose lease has expired: its backend serves no I/O.
    Fenced,
}

impl VbdState {
    fn as_str(self) -> &'static str {
        match self {
            VbdState::Attached => "attached",
            VbdState::Restorable => "restorable",
            VbdState::Fenced => "fenced",
        }
    }
}

/// One VBD as `vbds` lists it, whether the hypervisor has it or a record says it will.
struct Listed {
    domain: u32,
    vdevice: DeviceNumber,
    mode: AccessMode,
    size_sectors: u64,
    /// What the database says it was made from; `None` for a VBD it has no record of.
    source: Option<String>,
    /// The label the hypervisor keeps for the VBD (its serial to a guest); `None` for a
    /// restorable record, which has no VBD yet, or an unlabelled VBD.
    label: Option<String>,
    state: VbdState,
    extents: Vec<Extent>,
}

impl Listed {
    fn attached(reconciled: &ReconciledVbd) -> Listed {
        let vbd = &reconciled.vbd;
        Listed {
            domain: vbd.domain,
            vdevice: vbd.vdevice,
            mode: if vbd.mode.is_writable() {
                AccessMode::ReadWrite
            } else {
                AccessMode::ReadOnly
            },
            size_sectors: vbd.size_sectors,
            source: reconciled
                .record
                .as_ref()
                .map(|record| record.uname.clone()),
            label: (!vbd.label.is_empty()).then(|| vbd.label.to_string()),
            state: VbdState::Attached,
            extents: vbd.extents.clone(),
        }
    }

    fn restorable(record: &Attachment) -> Listed {
        Listed::recorded(record, VbdState::Restorable)
    }

    fn fenced(record: &Attachment) -> Listed {
        Listed::recorded(record, VbdState::Fenced)
    }

    /// A record with no VBD here to show for it.
    fn recorded(record: &Attachment, state: VbdState) -> Listed {
        Listed {
            domain: record.domain,
            vdevice: record.vdevice,
            mode: record.mode,
            size_sectors: record.extents.iter().map(Extent::nr_sectors).sum(),
            source: Some(record.uname.clone()),
            label: None,
            state,
            extents: record.extents.clone(),
        }
    }
}

#[derive(Serialize)]
struct VbdJson {
    domain: u32,
    vdevice: String,
    device: String,
    mode: AccessMode,
    size_sectors: u64,
    /// What the database says it was made from; `null` for a VBD it has no record of.
    source: Option<String>,
    /// What the hypervisor says it is named; `null` when it has no label.
    label: Option<String>,
    state: VbdState,
    extents: Vec<ExtentJson>,
}

/// The most extents the human table lists in one cell; `--json` lists them all.
const EXTENTS_SHOWN: usize = 8;

/// The EXTENTS cell: `3:0 18432+4096, 3:64 18432+2048`, and past [`EXTENTS_SHOWN`] a count
/// of the rest, so a VBD of 65 536 extents is one readable line (and the table does not
/// spend minutes laying out a megabyte-wide cell).
fn extents_cell(extents: &[Extent]) -> String {
    let shown: Vec<String> = extents
        .iter()
        .take(EXTENTS_SHOWN)
        .map(|extent| {
            format!(
                "{} {}+{}",
                extent.device(),
                extent.start_sector(),
                extent.nr_sectors()
            )
        })
        .collect();
    match extents.len().checked_sub(EXTENTS_SHOWN) {
        Some(rest) if rest > 0 => format!(
            "{}, ... and {rest} more (--json lists all)",
            shown.join(", ")
        ),
        _ => shown.join(", "),
    }
}

/// The SOURCE column for a VBD the database has no record of (followed by its label,
/// when it has one).
const UNRECORDED: &str = "(unrecorded)";

impl Vbds {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut hypervisor = hypervisor(context)?;
        let domain = match self.domain.as_deref() {
            None if hypervisor.domain() == shared_abi::DOM0 => None,
            None => Some(hypervisor.domain()),
            Some("all") => None,
            Some(text) => Some(domain_argument(text).map_err(Error::Usage)?),
        };
        // The database, when there is one, says what each VBD was made from.
        let database = context.existing_database(OpenMode::ReadOnly)?;
        let reconciliation = context.reconcile(database.as_ref(), Some(&mut hypervisor), domain)?;
        let listed: Vec<Listed> = reconciliation
            .vbds
            .iter()
            .map(Listed::attached)
            .chain(reconciliation.restorable.iter().map(Listed::restorable))
            .chain(
                reconciliation
                    .fenced
                    .iter()
                    .filter(|record| domain.is_none_or(|domain| domain == record.domain))
                    .map(Listed::fenced),
            )
            .collect();
        if context.json {
            let array: Vec<VbdJson> = listed
                .into_iter()
                .map(|listed| VbdJson {
                    domain: listed.domain,
                    vdevice: vdevice_name(listed.vdevice),
                    device: listed.vdevice.to_string(),
                    mode: listed.mode,
                    size_sectors: listed.size_sectors,
                    source: listed.source,
                    label: listed.label,
                    state: listed.state,
                    extents: extents_json(&listed.extents),
                })
                .collect();
            return emit_json(&array);
        }
        let rows = listed
            .into_iter()
            .map(|listed| {
                let extents = extents_cell(&listed.extents);
                vec![
                    listed.domain.to_string(),
                    vdevice_name(listed.vdevice),
                    listed.mode.as_str().to_owned(),
                    format_sectors(listed.size_sectors),
                    // An unrecorded VBD is still named by what the hypervisor was told.
                    match (listed.source, listed.label) {
                        (Some(source), _) => source,
                        (None, Some(label)) => format!("{UNRECORDED} {label}"),
                        (None, None) => UNRECORDED.to_owned(),
                    },
                    listed.state.as_str().to_owned(),
                    extents,
                ]
            })
            .collect();
        emit(&table(
            &[
                "DOMAIN", "VDEV", "MODE", "SIZE", "SOURCE", "STATE", "EXTENTS",
            ],
            &[3],
            rows,
        ))
    }
}
