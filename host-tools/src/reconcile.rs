//! One reconciliation of the VBDs the hypervisor reports with the attachments the database
//! recorded, which `attach`, `delete`, `check`, `undelete`, `resize`, `vbds` and `restore`
//! all use rather than each deciding on its own what counts as mapped, restorable or dead.

use crate::database::Attachment;
use crate::hypervisor::VbdDetails;
use crate::uname::VdId;
use crate::validator::User;

/// A record whose VBD is missing is taken for one whose `attach` is still making it for
/// this long after it was recorded, before it counts as gone.
pub const PENDING_SECONDS: i64 = 60;

/// A VBD the hypervisor reports, with the record that made it, if the database has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconciledVbd {
    pub vbd: VbdDetails,
    pub record: Option<Attachment>,
}

/// What the hypervisor was seen to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypervisorView {
    /// Every VBD it reports in `scope`, in its order.
    pub vbds: Vec<VbdDetails>,
    /// The domain asked about, or `None` for every domain.
    pub scope: Option<u32>,
    /// Its current start, from the Ready handshake.
    pub start_id: u64,
}

/// What the hypervisor and the database say together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciliation {
    /// Every VBD the hypervisor reports in the scope asked, in its order; empty when the
    /// hypervisor was not asked.
    pub vbds: Vec<ReconciledVbd>,
    /// Records that still stand without a VBD to show for them: every record when the
    /// hypervisor was not asked, records outside the scope asked, and records whose
    /// `attach` is still making the VBD.
    pub unmatched: Vec<Attachment>,
    /// Records made under an earlier start of the hypervisor (or under one a version-2
    /// database did not note) whose VBD the restart took away: they are kept, still
    /// reserve their extents, and `vdisk restore` makes their VBDs again.
    pub restorable: Vec<Attachment>,
    /// Records whose VBD is gone under the current start (its domain died, or it was
    /// deleted behind vdisk's back), and records whose `attach` never said it made the VBD:
    /// they reserve nothing any more and are removed when seen.
    pub dead: Vec<Attachment>,
    /// Records of an earlier start whose VBD exists again, the same domain, device and
    /// extents (restored, or made again by hand): matched, and to be stamped with the
    /// current start.
    pub found_again: Vec<Attachment>,
    /// Records of other hosts of a shared pool: their VBDs are in other hypervisors, so
    /// they are never matched, restored or found dead here, but they map their extents all
    /// the same.
    pub elsewhere: Vec<Attachment>,
    /// Records of other hosts whose lease has expired: their backends serve no I/O, so they
    /// map nothing any more; listed as `fenced`.
    pub fenced: Vec<Attachment>,
}

/// Where a record stands against what the hypervisor reports.
enum Standing {
    Matched,
    FoundAgain,
    Unmatched,
    Restorable,
    Dead,
}

fn standing(record: &Attachment, view: &HypervisorView, now: i64) -> Standing {
    let slot = |vbd: &&VbdDetails| (vbd.domain, vbd.vdevice) == (record.domain, record.vdevice);
    let vbd = view.vbds.iter().find(slot);
    let current = record.start_id == Some(view.start_id);
    let in_scope = view.scope.is_none_or(|domain| domain == record.domain);
    let pending = !record.confirmed && now - record.attached_at < PENDING_SECONDS;
    match vbd {
        // A record of this start names its VBD by domain and device: a VBD grown since by
        // the hypervisor alone is still the one it made.
        Some(_) if current => Standing::Matched,
        // One of an earlier start names a VBD of its own only if it maps the same extents;
        // another VBD in its place is not the one it made.
        Some(vbd) if vbd.extents == record.extents => Standing::FoundAgain,
        _ if !in_scope || pending => Standing::Unmatched,
        // An attach that never confirmed its record never said the VBD was made.
        _ if current || !record.confirmed => Standing::Dead,
        _ => Standing::Restorable,
    }
}

impl Reconciliation {
    /// Match `records` with what the hypervisor holds, or `None` when it was not asked.
    /// `now` is the time, to tell a record an `attach` is still completing from a dead one.
    pub fn new(records: Vec<Attachment>, view: Option<HypervisorView>, now: i64) -> Reconciliation {
        let mut reconciliation = Reconciliation {
            vbds: Vec::new(),
            unmatched: Vec::new(),
            restorable: Vec::new(),
            dead: Vec::new(),
            found_again: Vec::new(),
            elsewhere: Vec::new(),
            fenced: Vec::new(),
        };
        let Some(view) = view else {
            reconciliation.unmatched = records;
            return reconciliation;
        };
        let mut matched: Vec<Attachment> = Vec::new();
        for record in records {
            match standing(&record, &view, now) {
                Standing::Matched => matched.push(record),
                Standing::FoundAgain => {
                    reconciliation.found_again.push(record.clone());
                    matched.push(record);
                }
                Standing::Unmatched => reconciliation.unmatched.push(record),
                Standing::Restorable => reconciliation.restorable.push(record),
                Standing::Dead => reconciliation.dead.push(record),
            }
        }
        reconciliation.vbds = view
            .vbds
            .into_iter()
            .map(|vbd| {
                let record = matched
                    .iter()
                    .find(|record| (record.domain, record.vdevice) == (vbd.domain, vbd.vdevice))
                    .cloned();
                ReconciledVbd { vbd, record }
            })
            .collect();
        reconciliation
    }

    /// The same, with the records of other hosts: those of `elsewhere` are users of their
    /// extents whatever this host's hypervisor holds; those of `fenced` hosts are not.
    pub fn with_other_hosts(
        mut self,
        elsewhere: Vec<Attachment>,
        fenced: Vec<Attachment>,
    ) -> Reconciliation {
        self.elsewhere = elsewhere;
        self.fenced = fenced;
        self
    }

    /// Everything that maps extents, as validator users: every VBD the hypervisor reports
    /// as it reports it, and every record that still stands without one, restorable ones
    /// included, since a restore will map their extents again.
    pub fn users(&self) -> Vec<User> {
        self.users_where(true, |_| true)
    }

    /// What maps extents now, leaving out the restorable records: what a restore checks
    /// each of them against, one after another.
    pub fn current_users(&self) -> Vec<User> {
        self.users_where(false, |_| true)
    }

    /// The users that map something other than virtual disk `id`: what `undelete` must not
    /// collide with.
    pub fn users_other_than(&self, id: VdId) -> Vec<User> {
        self.users_where(true, |record| {
            record.is_none_or(|record| record.virtual_disk != Some(id))
        })
    }

    fn users_where(
        &self,
        with_restorable: bool,
        keep: impl Fn(Option<&Attachment>) -> bool,
    ) -> Vec<User> {
        let restorable = if with_restorable {
            &self.restorable[..]
        } else {
            &[]
        };
        self.vbds
            .iter()
            .filter(|reconciled| keep(reconciled.record.as_ref()))
            .map(|reconciled| {
                let vbd = &reconciled.vbd;
                User::vbd(
                    vbd.domain,
                    vbd.vdevice,
                    vbd.mode.is_writable(),
                    vbd.extents.clone(),
                )
            })
            .chain(
                self.unmatched
                    .iter()
                    .chain(restorable)
                    .chain(&self.elsewhere)
                    .filter(|record| keep(Some(record)))
                    .map(Attachment::user),
            )
            .collect()
    }

    /// The VBDs the hypervisor reports that were made from virtual disk `id`.
    pub fn vbds_of(&self, id: VdId) -> Vec<&ReconciledVbd> {
        self.vbds
            .iter()
            .filter(|reconciled| {
                reconciled
                    .record
                    .as_ref()
                    .is_some_and(|record| record.virtual_disk == Some(id))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use shared_abi::wire::Extent;
    use shared_abi::{DeviceNumber, Mode, SharingLevel};

    use super::*;
    use crate::database::AccessMode;

    /// The hypervisor's current start in these tests; records of start 7 are older.
    const NOW_START: u64 = 8;
    const EARLIER: Option<u64> = Some(7);
    const CURRENT: Option<u64> = Some(NOW_START);

    fn xvd(name: &str) -> DeviceNumber {
        DeviceNumber::from_name(name).unwrap()
    }

    fn extent(start_sector: u64) -> Extent {
        Extent::new(DeviceNumber::new(3, 0).unwrap(), start_sector, 8).unwrap()
    }

    fn record(domain: u32, vdevice: &str, confirmed: bool, attached_at: i64) -> Attachment {
        Attachment {
            record: i64::from(domain) * 100 + i64::from(xvd(vdevice).minor()),
            host: "here".into(),
            uname: "vd:1".into(),
            virtual_disk: Some(VdId::parse("1").unwrap()),
            domain,
            vdevice: xvd(vdevice),
            mode: AccessMode::ReadOnly,
            attached_at,
            confirmed,
            level: SharingLevel::ReadersOnly,
            start_id: CURRENT,
            extents: vec![extent(0)],
        }
    }

    /// A confirmed record made long ago under `start_id`, mapping `extents`.
    fn made_under(domain: u32, start_id: Option<u64>, extents: Vec<Extent>) -> Attachment {
        Attachment {
            start_id,
            extents,
            ..record(domain, "xvda", true, 0)
        }
    }

    fn vbd(domain: u32, vdevice: &str) -> VbdDetails {
        VbdDetails {
            domain,
            vdevice: xvd(vdevice),
            mode: Mode::READ | Mode::WRITE,
            size_sectors: 8,
            label: shared_abi::Label::EMPTY,
            extents: vec![extent(100)],
        }
    }

    fn view(vbds: Vec<VbdDetails>, scope: Option<u32>) -> Option<HypervisorView> {
        Some(HypervisorView {
            vbds,
            scope,
            start_id: NOW_START,
        })
    }

    #[test]
    fn records_of_this_start_match_their_vbds_and_gone_ones_are_dead() {
        let matched = record(1, "xvda", true, 0);
        let gone = record(2, "xvda", true, 0);
        let young = record(3, "xvda", false, 950);
        let stale = record(3, "xvdb", false, 900);
        let reconciliation = Reconciliation::new(
            vec![matched.clone(), gone.clone(), young.clone(), stale.clone()],
            view(vec![vbd(1, "xvda"), vbd(4, "xvda")], None),
            1000,
        );
        assert_eq!(
            reconciliation.vbds,
            vec![
                ReconciledVbd {
                    vbd: vbd(1, "xvda"),
                    record: Some(matched)
                },
                ReconciledVbd {
                    vbd: vbd(4, "xvda"),
                    record: None
                },
            ]
        );
        assert_eq!(reconciliation.unmatched, vec![young.clone()]);
        assert_eq!(reconciliation.dead, vec![gone, stale]);
        assert_eq!(reconciliation.restorable, vec![]);
        assert_eq!(reconciliation.found_again, vec![]);
        // Users: what the hypervisor reports (its extents, not the record's), and the
        // record whose attach is under way.
        let users = reconciliation.users();
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].extents, vec![extent(100)]);
        assert_eq!(users[2], young.user());
        assert_eq!(reconciliation.vbds_of(VdId::parse("1").unwrap()).len(), 1);
        assert_eq!(
            reconciliation
                .users_other_than(VdId::parse("1").unwrap())
                .len(),
            1
        );
    }

    #[test]
    fn gone_records_of_an_earlier_or_unknown_start_are_restorable_and_kept_as_users() {
        let earlier = made_under(1, EARLIER, vec![extent(0)]);
        let unknown = made_under(2, None, vec![extent(50)]);
        let reconciliation = Reconciliation::new(
            vec![earlier.clone(), unknown.clone()],
            view(vec![], None),
            1000,
        );
        assert_eq!(reconciliation.restorable, vec![earlier.clone(), unknown]);
        assert_eq!(reconciliation.dead, vec![]);
        assert_eq!(reconciliation.unmatched, vec![]);
        // They still reserve their extents for everything but the restore itself.
        assert_eq!(reconciliation.users().len(), 2);
        assert_eq!(reconciliation.users()[0], earlier.user());
        assert_eq!(reconciliation.current_users(), vec![]);
        assert_eq!(
            reconciliation.users_other_than(VdId::parse("1").unwrap()),
            vec![]
        );
    }

    #[test]
    fn a_record_of_an_earlier_start_whose_vbd_is_back_is_matched_and_found_again() {
        let back = made_under(1, EARLIER, vec![extent(100)]);
        let unknown_back = made_under(2, None, vec![extent(100)]);
        let reconciliation = Reconciliation::new(
            vec![back.clone(), unknown_back.clone()],
            view(vec![vbd(1, "xvda"), vbd(2, "xvda")], None),
            1000,
        );
        assert_eq!(
            reconciliation.found_again,
            vec![back.clone(), unknown_back.clone()]
        );
        assert_eq!(reconciliation.vbds[0].record, Some(back));
        assert_eq!(reconciliation.vbds[1].record, Some(unknown_back));
        assert_eq!(reconciliation.restorable, vec![]);
    }

    #[test]
    fn another_vbd_in_the_place_of_an_earlier_starts_record_is_not_its_own() {
        // Domain 1's xvda exists again, over other extents: made by someone else.
        let record = made_under(1, EARLIER, vec![extent(0)]);
        let reconciliation =
            Reconciliation::new(vec![record.clone()], view(vec![vbd(1, "xvda")], None), 1000);
        assert_eq!(reconciliation.vbds[0].record, None);
        assert_eq!(reconciliation.restorable, vec![record]);
        assert_eq!(reconciliation.found_again, vec![]);
        // Of this start, the same place is the record's VBD, whatever it maps now.
        let current = made_under(1, CURRENT, vec![extent(0)]);
        let reconciliation = Reconciliation::new(
            vec![current.clone()],
            view(vec![vbd(1, "xvda")], None),
            1000,
        );
        assert_eq!(reconciliation.vbds[0].record, Some(current));
        assert_eq!(reconciliation.found_again, vec![]);
    }

    #[test]
    fn an_unconfirmed_record_of_an_earlier_start_is_pending_while_young_then_dead() {
        let young = Attachment {
            start_id: EARLIER,
            ..record(1, "xvda", false, 950)
        };
        let stale = Attachment {
            start_id: EARLIER,
            ..record(1, "xvdb", false, 900)
        };
        let reconciliation =
            Reconciliation::new(vec![young.clone(), stale.clone()], view(vec![], None), 1000);
        assert_eq!(reconciliation.unmatched, vec![young]);
        assert_eq!(reconciliation.dead, vec![stale]);
        assert_eq!(reconciliation.restorable, vec![]);
    }

    #[test]
    fn without_the_hypervisor_or_outside_the_scope_records_stand() {
        let records = vec![
            record(1, "xvda", true, 0),
            record(2, "xvda", true, 0),
            Attachment {
                vdevice: xvd("xvdb"),
                ..made_under(2, EARLIER, vec![extent(0)])
            },
        ];
        let alone = Reconciliation::new(records.clone(), None, 1000);
        assert_eq!(alone.unmatched, records);
        assert_eq!(alone.dead, vec![]);
        assert_eq!(alone.restorable, vec![]);
        let scoped = Reconciliation::new(records.clone(), view(vec![], Some(1)), 1000);
        assert_eq!(scoped.dead, vec![records[0].clone()]);
        assert_eq!(scoped.unmatched, records[1..].to_vec());
        assert_eq!(scoped.restorable, vec![]);
    }

    #[test]
    fn another_hosts_records_are_users_and_nothing_else() {
        let there = Attachment {
            host: "there".into(),
            mode: AccessMode::ReadWrite,
            ..record(1, "xvda", true, 0)
        };
        let reconciliation = Reconciliation::new(vec![], view(vec![], None), 1000)
            .with_other_hosts(vec![there.clone()], vec![]);
        assert_eq!(reconciliation.dead, vec![]);
        assert_eq!(reconciliation.restorable, vec![]);
        assert_eq!(reconciliation.users(), vec![there.user()]);
        assert_eq!(reconciliation.current_users(), vec![there.user()]);
        assert_eq!(
            reconciliation.users_other_than(VdId::parse("1").unwrap()),
            vec![]
        );
        let fenced = Reconciliation::new(vec![], view(vec![], None), 1000)
            .with_other_hosts(vec![], vec![there.clone()]);
        assert_eq!(fenced.users(), vec![], "a fenced host maps nothing");
        assert_eq!(fenced.fenced, vec![there]);
    }
}
