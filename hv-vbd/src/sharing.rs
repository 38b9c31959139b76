//! The system-wide sharing level: which overlaps between different VBDs are allowed.

use shared_abi::Error;

/// How physical sectors may be shared between VBDs, enforced by the hypervisor when extents
/// are set, under the table's write lock, so two racing dom0 tools cannot both succeed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharingLevel {
    /// Level 0: a sector may be shared only when every VBD mapping it is read-only.
    ReadersOnly = 0,
    /// Level 1: also one writable VBD beside any number of read-only ones.
    SingleWriter = 1,
    /// Level 2: anything, for clustered filesystems that arbitrate themselves.
    Unrestricted = 2,
}

impl SharingLevel {
    /// Whether two VBDs that overlap may coexist, given whether each is writable.
    pub const fn allows(self, first_writable: bool, second_writable: bool) -> bool {
        match self {
            SharingLevel::ReadersOnly => !first_writable && !second_writable,
            SharingLevel::SingleWriter => !(first_writable && second_writable),
            SharingLevel::Unrestricted => true,
        }
    }
}

impl TryFrom<u32> for SharingLevel {
    type Error = Error;

    fn try_from(raw: u32) -> Result<Self, Error> {
        match raw {
            0 => Ok(SharingLevel::ReadersOnly),
            1 => Ok(SharingLevel::SingleWriter),
            2 => Ok(SharingLevel::Unrestricted),
            _ => Err(Error::InvalidArgument),
        }
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
        assert_eq!(SharingLevel::try_from(1), Ok(SingleWriter));
        assert_eq!(SharingLevel::try_from(3), Err(Error::InvalidArgument));
    }
}
