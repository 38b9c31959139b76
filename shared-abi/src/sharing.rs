//! The sharing level: which overlaps between the extents of different VBDs are allowed.
//!
//! One type for the whole system: the hypervisor enforces it, the tools check it before
//! they ask, and every request that maps extents carries the level its caller accepts.

use core::fmt;
use core::str::FromStr;

use crate::Error;

/// How physical sectors may be shared between VBDs. Ordered from strictest to most
/// permissive, so a ceiling is a maximum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharingLevel {
    /// Level 0: a sector may be shared only when every VBD mapping it is read-only.
    ReadersOnly = 0,
    /// Level 1: also one writable VBD beside any number of read-only ones.
    SingleWriter = 1,
    /// Level 2: anything, for clustered filesystems that arbitrate among themselves.
    Unrestricted = 2,
}

impl SharingLevel {
    /// Every level, strictest first.
    pub const ALL: [SharingLevel; 3] = [
        SharingLevel::ReadersOnly,
        SharingLevel::SingleWriter,
        SharingLevel::Unrestricted,
    ];

    /// Whether two VBDs that share a sector may coexist, given whether each is writable.
    pub const fn allows(self, first_writable: bool, second_writable: bool) -> bool {
        match self {
            SharingLevel::ReadersOnly => !first_writable && !second_writable,
            SharingLevel::SingleWriter => !(first_writable && second_writable),
            SharingLevel::Unrestricted => true,
        }
    }

    /// The level's number, as on the wire and on command lines.
    pub const fn number(self) -> u32 {
        self as u32
    }
}

impl TryFrom<u32> for SharingLevel {
    type Error = Error;

    /// `EINVAL` for anything but 0, 1 and 2.
    fn try_from(raw: u32) -> Result<Self, Error> {
        match raw {
            0 => Ok(SharingLevel::ReadersOnly),
            1 => Ok(SharingLevel::SingleWriter),
            2 => Ok(SharingLevel::Unrestricted),
            _ => Err(Error::InvalidArgument),
        }
    }
}

impl FromStr for SharingLevel {
    type Err = Error;

    /// Exactly `0`, `1` or `2`.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "0" => Ok(SharingLevel::ReadersOnly),
            "1" => Ok(SharingLevel::SingleWriter),
            "2" => Ok(SharingLevel::Unrestricted),
            _ => Err(Error::InvalidArgument),
        }
    }
}

impl fmt::Display for SharingLevel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_seed() {
        use SharingLevel::*;
        assert!(ReadersOnly.allows(false, false));
        assert!(!ReadersOnly.allows(true, false));
        assert!(!ReadersOnly.allows(false, true));
        assert!(SingleWriter.allows(true, false));
        assert!(SingleWriter.allows(false, true));
        assert!(!SingleWriter.allows(true, true));
        assert!(Unrestricted.allows(true, true));
    }

    #[test]
    fn levels_decode_and_refuse_unknown_numbers() {
        for level in SharingLevel::ALL {
            assert_eq!(SharingLevel::try_from(level.number()), Ok(level));
            assert_eq!(level.to_string().parse::<SharingLevel>(), Ok(level));
        }
        assert_eq!(SharingLevel::try_from(3), Err(Error::InvalidArgument));
        for text in ["", "3", "00", "+1", "1 ", "one"] {
            assert_eq!(
                text.parse::<SharingLevel>(),
                Err(Error::InvalidArgument),
                "{text:?}"
            );
        }
    }
}
