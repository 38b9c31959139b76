//! `vdisk restore`: make again, through the validator, the VBDs that a restart of the
//! hypervisor took away, from the attachments recorded under an earlier start.

use clap::Args;
use host_tools::database::{vdevice_name, AccessMode, Attachment, Database, OpenMode};
use host_tools::error::{Error, Result};
use host_tools::hypervisor::Hypervisor;
use host_tools::reconcile::Reconciliation;
use host_tools::validator::{validate, User};
use serde::Serialize;
use shared_abi::DOM0;

use super::output::{emit, emit_json, extents_json, extents_summary, ExtentJson};
use super::pool::mount_users;
use super::vbd::{hypervisor, label_of, NewVbd};
use super::Context;

/// Make again the VBDs of every attachment recorded under an earlier start of the
/// hypervisor (`vdisk vbds` lists them as restorable), with the label, mode and extents
/// they had.
///
/// They are taken in the order they were attached. Each is checked as `attach` checks, at
/// the sharing level it was attached at: against every VBD the hypervisor has (those
/// restored before it included), every disk that holds extents but its own, and dom0's
/// mounts. One whose virtual disk was deleted meanwhile, or whose place another VBD took,
/// is not restored. One line per attachment says `restored` or `refused` and why; a
/// refused one stays recorded (`vdisk detach VDEV DOMAIN` forgets it). Exit status 0 when
/// every one was restored, 1 when any was refused (the others are restored all the same).
/// --dry-run checks them all in the same way and says `would restore`, changing nothing.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  vdisk --hv unix:/tmp/vm/dom0.sock restore\n  vdisk --hv unix:/tmp/vm/dom0.sock restore --dry-run --json"
)]
pub struct Restore {
    /// Check every restorable attachment and print what would be done, changing nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What became of one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Restored,
    WouldRestore,
    Refused,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Restored => "restored",
            Outcome::WouldRestore => "would restore",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Serialize)]
struct RestoreJson {
    outcome: Outcome,
    domain: u32,
    vdevice: String,
    uname: String,
    mode: AccessMode,
    safety: u32,
    extents: Vec<ExtentJson>,
    /// Why it was refused; `null` otherwise.
    reason: Option<String>,
}

/// Why `record` cannot be restored now, if it cannot: its disk is not live, its place is
/// taken, or its extents collide with `users` at its level.
fn refusal(
    database: &Database,
    reconciliation: &Reconciliation,
    record: &Attachment,
    users: &[User],
) -> Option<String> {
    if let Some(id) = record.virtual_disk {
        if let Err(error) = database.live_virtual_disk(id) {
            return Some(error.to_string());
        }
    }
    let place = |domain: u32, vdevice| (domain, vdevice) == (record.domain, record.vdevice);
    if reconciliation
        .vbds
        .iter()
        .any(|reconciled| place(reconciled.vbd.domain, reconciled.vbd.vdevice))
    {
        return Some(format!(
            "domain {} {}: taken by another VBD since the restart",
            record.domain,
            vdevice_name(record.vdevice)
        ));
    }
    let mut checked = users.to_vec();
    match database.owners(record.virtual_disk) {
        Ok(owners) => checked.extend(owners.into_iter().map(User::owner)),
        Err(error) => return Some(error.to_string()),
    }
    let conflicts = validate(
        &record.extents,
        record.mode.is_writable(),
        &checked,
        record.level,
    );
    if conflicts.is_empty() {
        return None;
    }
    let explanations: Vec<String> = conflicts
        .iter()
        .map(|conflict| conflict.explain(&checked))
        .collect();
    Some(format!("unsafe: {}", explanations.join("; ")))
}

/// Make the VBD of `record` and stamp the record with the hypervisor's current start.
fn make(database: &mut Database, hypervisor: &mut Hypervisor, record: &Attachment) -> Result<()> {
    let vbd = NewVbd {
        domain: record.domain,
        vdevice: record.vdevice,
        mode: record.mode,
        level: record.level,
        label: label_of(&record.uname),
    };
    vbd.create(hypervisor, &record.extents)?;
    database.settle_attachments(&[], std::slice::from_ref(record), hypervisor.start_id())
}

impl Restore {
    pub fn run(self, context: &Context) -> Result<()> {
        // The hypervisor first: without one, nothing is opened.
        let mut hypervisor = hypervisor(context)?;
        if hypervisor.domain() != DOM0 {
            return Err(Error::Refused(format!(
                "restore: {} is domain {}'s port; only dom0's may make VBDs",
                hypervisor.endpoint(),
                hypervisor.domain()
            )));
        }
        let (mut database, reconciliation) = if self.dry_run {
            let database = context.database(OpenMode::ReadOnly)?;
            let reconciliation = context.observe(Some(&database), Some(&mut hypervisor), None)?;
            (database, reconciliation)
        } else {
            let database = context.database(OpenMode::Existing)?;
            let reconciliation = context.reconcile(Some(&database), Some(&mut hypervisor), None)?;
            (database, reconciliation)
        };
        let mut restorable = reconciliation.restorable.clone();
        // The order they were attached in (rows are numbered in it), so each is checked
        // against the ones that were there before it, as its attach was.
        restorable.sort_by_key(|record| record.record);
        let mut users = reconciliation.current_users();
        users.extend(mount_users(context)?);
        let mut reports = Vec::new();
        for record in &restorable {
            let (outcome, reason) = match refusal(&database, &reconciliation, record, &users) {
                Some(reason) => (Outcome::Refused, Some(reason)),
                None if self.dry_run => (Outcome::WouldRestore, None),
                None => match make(&mut database, &mut hypervisor, record) {
                    Ok(()) => (Outcome::Restored, None),
                    Err(error) => (Outcome::Refused, Some(error.to_string())),
                },
            };
            if outcome != Outcome::Refused {
                users.push(record.user());
            }
            if !context.json {
                emit(&line(record, &outcome, reason.as_deref()))?;
            }
            reports.push(RestoreJson {
                outcome,
                domain: record.domain,
                vdevice: vdevice_name(record.vdevice),
                uname: record.uname.clone(),
                mode: record.mode,
                safety: record.level.number(),
                extents: extents_json(&record.extents),
                reason,
            });
        }
        if context.json {
            emit_json(&reports)?;
        } else if reports.is_empty() {
            emit("nothing to restore\n")?;
        }
        let refused = reports
            .iter()
            .filter(|report| report.outcome == Outcome::Refused)
            .count();
        match (refused, self.dry_run) {
            (0, _) => Ok(()),
            (_, false) => Err(Error::Refused(format!(
                "restore: {refused} of {} attachments refused",
                reports.len()
            ))),
            (_, true) => Err(Error::Refused(format!(
                "restore --dry-run: {refused} of {} attachments would be refused",
                reports.len()
            ))),
        }
    }
}

/// `restored vd:1 as xvda of domain 1 rw at safety 0: 3M in 2 extents`, or the reason it
/// was refused.
fn line(record: &Attachment, outcome: &Outcome, reason: Option<&str>) -> String {
    let detail = match reason {
        Some(reason) => reason.to_owned(),
        None => extents_summary(&record.extents),
    };
    format!(
        "{} {} as {} of domain {} {} at safety {}: {detail}\n",
        outcome.as_str(),
        record.uname,
        vdevice_name(record.vdevice),
        record.domain,
        record.mode.as_str(),
        record.level.number()
    )
}
