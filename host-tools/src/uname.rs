//! The names a VBD can be made from: `vd:ID` (a virtual disk) and `phy:NAME` (a disk or
//! partition), and the virtual disk ids themselves.

use std::fmt;

use devices::is_device_name;

use crate::error::{Error, Result};

/// The id of a virtual disk: a positive integer, never text spliced into SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VdId(i64);

impl VdId {
    /// The id as the database stores it.
    pub fn get(self) -> i64 {
        self.0
    }

    /// An id read back from the database, which only ever holds positive ones.
    pub(crate) fn from_database(id: i64) -> VdId {
        VdId(id)
    }

    /// Parse `7` or `vd:7`. Anything else, `7 OR 1=1` included, is a usage error.
    pub fn parse(text: &str) -> Result<VdId> {
        let digits = text.strip_prefix("vd:").unwrap_or(text);
        match digits.parse::<i64>() {
            Ok(id) if id > 0 && digits.bytes().all(|byte| byte.is_ascii_digit()) => Ok(VdId(id)),
            _ => Err(Error::Usage(format!(
                "virtual disk id {text:?}: not a positive integer"
            ))),
        }
    }
}

impl fmt::Display for VdId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "vd:{}", self.0)
    }
}

/// What a VBD is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uname {
    /// `vd:ID`: a virtual disk from the pool.
    VirtualDisk(VdId),
    /// `phy:NAME`: a whole disk or a partition, by its Linux name.
    Physical(String),
}

impl Uname {
    /// Parse `vd:ID` or `phy:NAME`.
    pub fn parse(text: &str) -> Result<Uname> {
        if text.starts_with("vd:") {
            return Ok(Uname::VirtualDisk(VdId::parse(text)?));
        }
        match text.strip_prefix("phy:") {
            Some(name) if is_device_name(name) => Ok(Uname::Physical(name.to_string())),
            Some(_) => Err(Error::Usage(format!(
                "{text:?}: not a device name (letters and digits, like hda2 or nvme0n1p3)"
            ))),
            None => Err(Error::Usage(format!(
                "{text:?}: expected vd:ID or phy:NAME"
            ))),
        }
    }
}

impl fmt::Display for Uname {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uname::VirtualDisk(id) => write!(formatter, "{id}"),
            Uname::Physical(name) => write!(formatter, "phy:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_or_without_prefix() {
        assert_eq!(VdId::parse("7").unwrap(), VdId(7));
        assert_eq!(VdId::parse("vd:12").unwrap(), VdId(12));
        assert_eq!(VdId(3).to_string(), "vd:3");
    }

    #[test]
    fn injection_and_junk_ids_are_refused() {
        for text in [
            "1 OR 1=1",
            "0",
            "-1",
            "+1",
            "1.0",
            "",
            "vd:",
            "99999999999999999999",
            "0x1",
        ] {
            assert_eq!(
                VdId::parse(text).unwrap_err().to_string(),
                format!("virtual disk id {text:?}: not a positive integer")
            );
        }
        assert_eq!(
            Uname::parse("vd:1 OR 1=1").unwrap_err().to_string(),
            "virtual disk id \"vd:1 OR 1=1\": not a positive integer"
        );
    }

    #[test]
    fn unames_parse() {
        assert_eq!(Uname::parse("vd:4").unwrap(), Uname::VirtualDisk(VdId(4)));
        assert_eq!(
            Uname::parse("phy:nvme0n1p3").unwrap(),
            Uname::Physical("nvme0n1p3".into())
        );
        assert_eq!(
            Uname::parse("phy:../sda").unwrap_err().to_string(),
            "\"phy:../sda\": not a device name (letters and digits, like hda2 or nvme0n1p3)"
        );
        assert_eq!(
            Uname::parse("file:/x").unwrap_err().to_string(),
            "\"file:/x\": expected vd:ID or phy:NAME"
        );
    }
}
