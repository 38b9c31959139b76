//! Recorded attachments: the VBDs dom0's tools made, with the extents each maps, so that
//! the extents stay out of the pool and `delete` refuses the disk until they are gone.

use rusqlite::{params, Connection, OptionalExtension};
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SharingLevel};

use super::virtual_disk::read_live;
use super::{extent_from_row, vdevice_name, Database, UNNAMED_HOST};
use crate::allocate::merge_adjacent;
use crate::error::{Error, Result};
use crate::uname::VdId;
use crate::validator::User;

/// How a VBD uses what it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AccessMode {
    #[serde(rename = "r")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

impl AccessMode {
    /// `r` or `rw`, as typed on the command line and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadOnly => "r",
            AccessMode::ReadWrite => "rw",
        }
    }

    /// Parse `r` or `rw`.
    pub fn parse(text: &str) -> Result<AccessMode> {
        match text {
            "r" => Ok(AccessMode::ReadOnly),
            "rw" => Ok(AccessMode::ReadWrite),
            _ => Err(Error::Usage(format!("mode {text:?}: expected r or rw"))),
        }
    }

    pub fn is_writable(self) -> bool {
        self == AccessMode::ReadWrite
    }
}

/// What an attachment maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentTarget {
    /// A virtual disk; the database supplies its extents.
    VirtualDisk(VdId),
    /// A disk or partition by name, with the extents it resolved to.
    Physical { name: String, extents: Vec<Extent> },
}

/// A VBD that dom0's tools created and recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The record's row, which names it when it is removed.
    pub record: i64,
    /// The host whose hypervisor holds the VBD; empty for a record made before hosts were
    /// recorded, which is the one host's of its pool.
    pub host: String,
    /// `vd:ID` or `phy:NAME`.
    pub uname: String,
    pub virtual_disk: Option<VdId>,
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: AccessMode,
    /// Unix seconds.
    pub attached_at: i64,
    /// Its VBD was made; until then the record only reserves the extents.
    pub confirmed: bool,
    /// The sharing level it was attached at, which a restore checks it at again.
    pub level: SharingLevel,
    /// The start of the hypervisor (its Ready handshake's id) under which the VBD was made;
    /// `None` for a record from schema version 2, which did not keep it.
    pub start_id: Option<u64>,
    pub extents: Vec<Extent>,
}

impl Attachment {
    /// Whether the VBD is `host`'s: made there, or made before hosts were recorded.
    pub fn is_on(&self, host: &str) -> bool {
        self.host == host || self.host == UNNAMED_HOST
    }

    /// The VBD this records, as a user of its extents.
    pub fn user(&self) -> User {
        User::vbd(
            self.domain,
            self.vdevice,
            self.mode.is_writable(),
            self.extents.clone(),
        )
    }
}

/// A start id as SQLite stores it: its 64 bits as a signed integer, since SQLite has no
/// unsigned one. Only ever compared for equality, so the sign means nothing.
fn stored_start_id(start_id: u64) -> i64 {
    i64::from_ne_bytes(start_id.to_ne_bytes())
}

fn start_id_from_row(stored: Option<i64>) -> Option<u64> {
    stored.map(|stored| u64::from_ne_bytes(stored.to_ne_bytes()))
}

fn level_from_row(number: u32) -> rusqlite::Result<SharingLevel> {
    SharingLevel::try_from(number).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Integer,
            Box::new(error),
        )
    })
}

/// The recorded attachments, of virtual disk `id` or of everything.
pub(super) fn attachments_where(
    connection: &Connection,
    id: Option<VdId>,
) -> Result<Vec<Attachment>> {
    let mut statement = connection.prepare_cached(
        "SELECT id, uname, virtual_disk_id, domain, vdevice, mode, attached_at, confirmed,
                sharing_level, start_id, host FROM attachments
         WHERE ?1 IS NULL OR virtual_disk_id = ?1 ORDER BY domain, vdevice, host",
    )?;
    let mut attachments = statement
        .query_map(params![id.map(VdId::get)], |row| {
            Ok(Attachment {
                record: row.get(0)?,
                uname: row.get(1)?,
                virtual_disk: row.get::<_, Option<i64>>(2)?.map(VdId::from_database),
                domain: row.get(3)?,
                vdevice: DeviceNumber::from_raw(row.get(4)?),
                mode: AccessMode::parse(&row.get::<_, String>(5)?).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        5,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })?,
                attached_at: row.get(6)?,
                confirmed: row.get(7)?,
                level: level_from_row(row.get(8)?)?,
                start_id: start_id_from_row(row.get(9)?),
                host: row.get(10)?,
                extents: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut extents_of = connection.prepare_cached(
        "SELECT device, start_sector, nr_sectors FROM attachment_extents
         WHERE attachment_id = ?1 ORDER BY position",
    )?;
    for attachment in &mut attachments {
        attachment.extents = extents_of
            .query_map(params![attachment.record], |row| extent_from_row(row, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    Ok(attachments)
}

fn insert_extents(connection: &Connection, record: i64, extents: &[Extent]) -> Result<()> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO attachment_extents (attachment_id, position, device, start_sector, nr_sectors)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, extent) in extents.iter().enumerate() {
        insert.execute(params![
            record,
            position as i64,
            extent.device().raw(),
            extent.start_sector(),
            extent.nr_sectors()
        ])?;
    }
    Ok(())
}

impl Database {
    /// Record a VBD about to be made over `target` at sharing `level` under the hypervisor's
    /// start `start_id`, so that the extents stay out of the pool and `delete` refuses the
    /// disk until [`Database::remove_attachment`]. A virtual disk must be live; its extents
    /// are taken from the database. The record is unconfirmed until
    /// [`Database::confirm_attachment`] says the VBD exists.
    pub fn record_attachment(
        &mut self,
        target: &AttachmentTarget,
        domain: u32,
        vdevice: DeviceNumber,
        mode: AccessMode,
        level: SharingLevel,
        start_id: u64,
    ) -> Result<Attachment> {
        let host = self.host().to_string();
        self.immediate(|transaction, now| {
            let (uname, virtual_disk, extents) = match target {
                AttachmentTarget::VirtualDisk(id) => {
                    let disk = read_live(transaction, *id, now)?;
                    (id.to_string(), Some(*id), merge_adjacent(&disk.extents))
                }
                AttachmentTarget::Physical { name, extents } => (format!("phy:{name}"), None, extents.clone()),
            };
            let existing: Option<String> = transaction
                .query_row(
                    "SELECT uname FROM attachments WHERE domain = ?1 AND vdevice = ?2 AND host IN (?3, ?4)",
                    params![domain, vdevice.raw(), host, UNNAMED_HOST],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(existing) = existing {
                return Err(Error::Refused(format!(
                    "domain {domain} {}: already records {existing}",
                    vdevice_name(vdevice)
                )));
            }
            transaction.execute(
                "INSERT INTO attachments
                   (uname, virtual_disk_id, domain, vdevice, mode, attached_at, confirmed, sharing_level, start_id, host)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9)",
                params![
                    uname,
                    virtual_disk.map(VdId::get),
                    domain,
                    vdevice.raw(),
                    mode.as_str(),
                    now,
                    level.number(),
                    stored_start_id(start_id),
                    host
                ],
            )?;
            let record = transaction.last_insert_rowid();
            insert_extents(transaction, record, &extents)?;
            Ok(Attachment {
                record,
                host: host.clone(),
                uname,
                virtual_disk,
                domain,
                vdevice,
                mode,
                attached_at: now,
                confirmed: false,
                level,
                start_id: Some(start_id),
                extents,
            })
        })
    }

    /// Note that the VBD of a record was made.
    pub fn confirm_attachment(&mut self, attachment: &Attachment) -> Result<()> {
        self.immediate(|transaction, _| {
            transaction.execute(
                "UPDATE attachments SET confirmed = 1 WHERE id = ?1",
                params![attachment.record],
            )?;
            Ok(())
        })
    }

    /// Replace what a record says its VBD maps (after the VBD grew).
    pub fn update_attachment_extents(
        &mut self,
        attachment: &Attachment,
        extents: &[Extent],
    ) -> Result<()> {
        self.immediate(|transaction, _| {
            transaction.execute(
                "DELETE FROM attachment_extents WHERE attachment_id = ?1",
                params![attachment.record],
            )?;
            insert_extents(transaction, attachment.record, extents)
        })
    }

    /// Forget the VBD `vdevice` of `domain` (after `detach`); returns what was recorded.
    pub fn remove_attachment(&mut self, domain: u32, vdevice: DeviceNumber) -> Result<Attachment> {
        let host = self.host().to_string();
        self.immediate(|transaction, _| {
            let attachment = attachments_where(transaction, None)?
                .into_iter()
                .find(|attachment| {
                    attachment.is_on(&host)
                        && attachment.domain == domain
                        && attachment.vdevice == vdevice
                })
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "domain {domain} {}: no recorded attachment",
                        vdevice_name(vdevice)
                    ))
                })?;
            transaction.execute(
                "DELETE FROM attachments WHERE id = ?1",
                params![attachment.record],
            )?;
            Ok(attachment)
        })
    }

    /// Bring the records in line with what the hypervisor shows, in one transaction: forget
    /// `dead` ones (whose VBDs are gone), and stamp `found` ones (whose VBDs exist under its
    /// start `start_id`, found again or restored) with that start. Each by its row, so that
    /// a record made since they were seen is left alone.
    pub fn settle_attachments(
        &mut self,
        dead: &[Attachment],
        found: &[Attachment],
        start_id: u64,
    ) -> Result<()> {
        self.immediate(|transaction, _| {
            for attachment in dead {
                transaction.execute(
                    "DELETE FROM attachments WHERE id = ?1",
                    params![attachment.record],
                )?;
            }
            for attachment in found {
                transaction.execute(
                    "UPDATE attachments SET start_id = ?1 WHERE id = ?2",
                    params![stored_start_id(start_id), attachment.record],
                )?;
            }
            Ok(())
        })
    }

    /// The recorded attachments of virtual disk `id`.
    pub fn attachments_of(&self, id: VdId) -> Result<Vec<Attachment>> {
        self.read(|connection, _| attachments_where(connection, Some(id)))
    }

    /// Every recorded attachment.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        self.read(|connection, _| attachments_where(connection, None))
    }
}
