//! Access-mode and probe-information bits, decoded so that unknown bits are an error.

use bitflags::bitflags;

use crate::Error;

bitflags! {
    /// How a domain may use a VBD. Xen 1.2's `VBD_MODE_R` and `VBD_MODE_W`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Mode: u32 {
        const READ = 0x1;
        const WRITE = 0x2;
    }
}

bitflags! {
    /// The `info` word of a probe entry. Xen 1.2's `VDISK_FLAG_RO` and `VDISK_FLAG_VIRT`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ProbeInfo: u32 {
        const READ_ONLY = 0x40;
        const VIRTUAL = 0x80;
    }
}

impl Mode {
    /// Decode a wire mode: unknown bits and the empty mode are `EINVAL`. A write-only VBD is
    /// refused too, since every block layer above us reads back what it wrote.
    pub fn from_wire(raw: u32) -> Result<Mode, Error> {
        let mode = Mode::from_bits(raw).ok_or(Error::InvalidArgument)?;
        if mode.contains(Mode::READ) {
            Ok(mode)
        } else {
            Err(Error::InvalidArgument)
        }
    }

    /// Whether this mode allows writing.
    pub const fn is_writable(self) -> bool {
        self.contains(Mode::WRITE)
    }
}

impl ProbeInfo {
    /// Decode a wire info word; unknown bits are `EINVAL`.
    pub fn from_wire(raw: u32) -> Result<ProbeInfo, Error> {
        ProbeInfo::from_bits(raw).ok_or(Error::InvalidArgument)
    }

    /// The info word the hypervisor reports for a VBD of this mode.
    pub fn for_mode(mode: Mode) -> ProbeInfo {
        if mode.is_writable() {
            ProbeInfo::VIRTUAL
        } else {
            ProbeInfo::VIRTUAL | ProbeInfo::READ_ONLY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decode() {
        assert_eq!(Mode::from_wire(1), Ok(Mode::READ));
        assert_eq!(Mode::from_wire(3), Ok(Mode::READ | Mode::WRITE));
    }

    #[test]
    fn unknown_mode_bits_are_einval() {
        assert_eq!(Mode::from_wire(0x4 | 0x1), Err(Error::InvalidArgument));
        assert_eq!(Mode::from_wire(0x8000_0001), Err(Error::InvalidArgument));
    }

    #[test]
    fn empty_and_write_only_modes_are_einval() {
        assert_eq!(Mode::from_wire(0), Err(Error::InvalidArgument));
        assert_eq!(Mode::from_wire(2), Err(Error::InvalidArgument));
    }

    #[test]
    fn probe_info_keeps_xen_values() {
        assert_eq!(ProbeInfo::for_mode(Mode::READ).bits(), 0xC0);
        assert_eq!(ProbeInfo::for_mode(Mode::READ | Mode::WRITE).bits(), 0x80);
        assert_eq!(ProbeInfo::from_wire(0x100), Err(Error::InvalidArgument));
        assert_eq!(
            ProbeInfo::from_wire(0xC0),
            Ok(ProbeInfo::READ_ONLY | ProbeInfo::VIRTUAL)
        );
    }
}
