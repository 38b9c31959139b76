//! One reconciliation of the VBDs the hypervisor reports with the attachments the database
//! recorded, which `attach`, `delete`, `check`, `undelete`, `resize` and `vbds` all use
//! rather than each deciding on its own what counts as mapped.

use shared_abi::DeviceNumber;

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
    /// Records whose VBD is gone (its domain died, or it was deleted behind vdisk's back):
    /// they reserve nothing any more and are removed when seen.
    ///
    /// Issue 10 divides these: a record made under an earlier start of the hypervisor (the
    /// Ready handshake will carry a start id) is *restorable* by `vdisk restore`, and only
    /// one made under the current start whose VBD is gone is dead. Until the handshake
    /// says which start this is, every gone record is dead.
    pub dead: Vec<Attachment>,
}

impl Reconciliation {
    /// Match `records` with `vbds`, the hypervisor's VBDs of `scope` (one domain, or every
    /// domain for `None`), or `None` when the hypervisor was not asked. `now` is the time,
    /// to tell a record an `attach` is still completing from a dead one.
    pub fn new(
        records: Vec<Attachment>,
        vbds: Option<(Vec<VbdDetails>, Option<u32>)>,
        now: i64,
    ) -> Reconciliation {
        let Some((vbds, scope)) = vbds else {
            return Reconciliation {
                vbds: Vec::new(),
                unmatched: records,
                dead: Vec::new(),
            };
        };
        let key = |domain: u32, vdevice: DeviceNumber| (domain, vdevice);
        let mut unmatched = Vec::new();
        let mut dead = Vec::new();
        let mut matched: Vec<Attachment> = Vec::new();
        for record in records {
            let present = vbds
                .iter()
                .any(|vbd| key(vbd.domain, vbd.vdevice) == key(record.domain, record.vdevice));
            let in_scope = scope.is_none_or(|domain| domain == record.domain);
            let pending = !record.confirmed && now - record.attached_at < PENDING_SECONDS;
            match (present, in_scope, pending) {
                (true, _, _) => matched.push(record),
                (false, false, _) | (false, true, true) => unmatched.push(record),
                (false, true, false) => dead.push(record),
            }
        }
        let vbds = vbds
            .into_iter()
            .map(|vbd| {
                let record = matched
                    .iter()
                    .find(|record| {
                        key(record.domain, record.vdevice) == key(vbd.domain, vbd.vdevice)
                    })
                    .cloned();
                ReconciledVbd { vbd, record }
            })
            .collect();
        Reconciliation {
            vbds,
            unmatched,
            dead,
        }
    }

    /// Everything that maps extents, as validator users: every VBD the hypervisor reports
    /// as it reports it, and every record that still stands without one.
    pub fn users(&self) -> Vec<User> {
        self.users_where(|_| true)
    }

    /// The users that map something other than virtual disk `id`: what `undelete` must not
    /// collide with.
    pub fn users_other_than(&self, id: VdId) -> Vec<User> {
        self.users_where(|record| record.is_none_or(|record| record.virtual_disk != Some(id)))
    }

    fn users_where(&self, keep: impl Fn(Option<&Attachment>) -> bool) -> Vec<User> {
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
    use shared_abi::Mode;

    use super::*;
    use crate::database::AccessMode;

    fn xvd(name: &str) -> DeviceNumber {
        DeviceNumber::from_name(name).unwrap()
    }

    fn extent(start_sector: u64) -> Extent {
        Extent::new(DeviceNumber::new(3, 0).unwrap(), start_sector, 8).unwrap()
    }

    fn record(domain: u32, vdevice: &str, confirmed: bool, attached_at: i64) -> Attachment {
        Attachment {
            record: i64::from(domain) * 100 + i64::from(xvd(vdevice).minor()),
            uname: "vd:1".into(),
            virtual_disk: Some(VdId::parse("1").unwrap()),
            domain,
            vdevice: xvd(vdevice),
            mode: AccessMode::ReadOnly,
            attached_at,
            confirmed,
            extents: vec![extent(0)],
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

    #[test]
    fn records_match_their_vbds_and_gone_ones_are_dead() {
        let matched = record(1, "xvda", true, 0);
        let gone = record(2, "xvda", true, 0);
        let young = record(3, "xvda", false, 950);
        let stale = record(3, "xvdb", false, 900);
        let reconciliation = Reconciliation::new(
            vec![matched.clone(), gone.clone(), young.clone(), stale.clone()],
            Some((vec![vbd(1, "xvda"), vbd(4, "xvda")], None)),
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
    fn without_the_hypervisor_or_outside_the_scope_records_stand() {
        let records = vec![record(1, "xvda", true, 0), record(2, "xvda", true, 0)];
        let alone = Reconciliation::new(records.clone(), None, 1000);
        assert_eq!(alone.unmatched, records);
        assert_eq!(alone.dead, vec![]);
        let scoped = Reconciliation::new(records.clone(), Some((vec![], Some(1))), 1000);
        assert_eq!(scoped.dead, vec![records[0].clone()]);
        assert_eq!(scoped.unmatched, vec![records[1].clone()]);
    }
}
