//! Device numbers (Linux `major:minor`) and the classic names that map to them.

use core::fmt;
use core::str::FromStr;

use crate::Error;

/// A Linux device number in the kernel's internal `MKDEV` layout: 12 bits of major above
/// 20 bits of minor. Used for physical disks (`hda` is 3:0) and for virtual devices (`xvda`
/// is 202:0) alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceNumber(u32);

const MINOR_BITS: u32 = 20;
const MINOR_MASK: u32 = (1 << MINOR_BITS) - 1;
const MAJOR_MAX: u32 = (1 << (32 - MINOR_BITS)) - 1;

/// A family of whole-disk names: `prefix` + a letter, each letter `minors_per_disk` apart.
struct Family {
    prefix: &'static str,
    /// `(major, first minor)` of each disk letter in order: IDE spreads its disks over
    /// several majors, two disks per major.
    majors: &'static [u32],
    disks_per_major: u32,
    minors_per_disk: u32,
}

const FAMILIES: [Family; 3] = [
    Family {
        prefix: "hd",
        majors: &[3, 22, 33, 34, 56, 57, 88, 89, 90, 91],
        disks_per_major: 2,
        minors_per_disk: 64,
    },
    Family {
        prefix: "sd",
        majors: &[8],
        disks_per_major: 16,
        minors_per_disk: 16,
    },
    Family {
        prefix: "xvd",
        majors: &[202],
        disks_per_major: 16,
        minors_per_disk: 16,
    },
];

impl DeviceNumber {
    /// `major:minor`, or `None` when either does not fit the layout.
    pub const fn new(major: u32, minor: u32) -> Option<DeviceNumber> {
        if major > MAJOR_MAX || minor > MINOR_MASK {
            None
        } else {
            Some(DeviceNumber((major << MINOR_BITS) | minor))
        }
    }

    /// The raw wire value.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// From the raw wire value; every `u32` is a well-formed device number.
    pub const fn from_raw(raw: u32) -> DeviceNumber {
        DeviceNumber(raw)
    }

    pub const fn major(self) -> u32 {
        self.0 >> MINOR_BITS
    }

    pub const fn minor(self) -> u32 {
        self.0 & MINOR_MASK
    }

    /// Parse a classic name: `hda` (3:0), `hdb` (3:64), `hdc` (22:0), `sda` (8:0),
    /// `xvda` (202:0), optionally with a partition number (`hda3` is 3:3).
    pub fn from_name(name: &str) -> Option<DeviceNumber> {
        FAMILIES.iter().find_map(|family| family.parse(name))
    }

    /// The classic name of this number when it has one, for display.
    pub fn name(self) -> Option<DeviceName> {
        FAMILIES.iter().find_map(|family| family.name_of(self))
    }
}

impl Family {
    fn parse(&self, name: &str) -> Option<DeviceNumber> {
        let rest = name.strip_prefix(self.prefix)?;
        let letter = *rest.as_bytes().first()?;
        if !letter.is_ascii_lowercase() {
            return None;
        }
        let disk = u32::from(letter - b'a');
        let partition = match &rest[1..] {
            "" => 0,
            digits if digits.starts_with('0') => return None,
            digits => digits.parse::<u32>().ok()?,
        };
        if partition >= self.minors_per_disk {
            return None;
        }
        let major = *self.majors.get((disk / self.disks_per_major) as usize)?;
        let minor = (disk % self.disks_per_major) * self.minors_per_disk + partition;
        DeviceNumber::new(major, minor)
    }

    fn name_of(&self, device: DeviceNumber) -> Option<DeviceName> {
        let major_index = self
            .majors
            .iter()
            .position(|&major| major == device.major())? as u32;
        let disk_in_major = device.minor() / self.minors_per_disk;
        if disk_in_major >= self.disks_per_major {
            return None;
        }
        let disk = major_index * self.disks_per_major + disk_in_major;
        let letter = b'a' + u8::try_from(disk).ok().filter(|&disk| disk < 26)?;
        Some(DeviceName {
            prefix: self.prefix,
            letter: letter as char,
            partition: device.minor() % self.minors_per_disk,
        })
    }
}

/// A classic device name, displayed as `hda`, `hda3`, `xvdb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceName {
    prefix: &'static str,
    letter: char,
    partition: u32,
}

impl fmt::Display for DeviceName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}{}", self.prefix, self.letter)?;
        if self.partition != 0 {
            write!(formatter, "{}", self.partition)?;
        }
        Ok(())
    }
}

impl fmt::Display for DeviceNumber {
    /// Always `major:minor`, the form stored by the tools and accepted by [`FromStr`].
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.major(), self.minor())
    }
}

impl FromStr for DeviceNumber {
    type Err = Error;

    /// Accepts `major:minor` or a classic name.
    fn from_str(text: &str) -> Result<DeviceNumber, Error> {
        if let Some((major, minor)) = text.split_once(':') {
            let major = major.parse::<u32>().map_err(|_| Error::InvalidArgument)?;
            let minor = minor.parse::<u32>().map_err(|_| Error::InvalidArgument)?;
            return DeviceNumber::new(major, minor).ok_or(Error::InvalidArgument);
        }
        DeviceNumber::from_name(text).ok_or(Error::InvalidArgument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(name: &str) -> (u32, u32) {
        let device = DeviceNumber::from_name(name).unwrap();
        (device.major(), device.minor())
    }

    #[test]
    fn classic_names_map_to_linux_numbers() {
        assert_eq!(number("hda"), (3, 0));
        assert_eq!(number("hdb"), (3, 64));
        assert_eq!(number("hdc"), (22, 0));
        assert_eq!(number("hdd"), (22, 64));
        assert_eq!(number("hde"), (33, 0));
        assert_eq!(number("sda"), (8, 0));
        assert_eq!(number("sdb"), (8, 16));
        assert_eq!(number("xvda"), (202, 0));
        assert_eq!(number("xvdb"), (202, 16));
        assert_eq!(number("hda3"), (3, 3));
        assert_eq!(number("sda15"), (8, 15));
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "hda", "hdb", "hdc", "hdd", "hda3", "hdd63", "sda", "sdp15", "xvda", "xvdb2",
        ] {
            let device = DeviceNumber::from_name(name).unwrap();
            assert_eq!(device.name().unwrap().to_string(), name);
            assert_eq!(device.to_string().parse::<DeviceNumber>(), Ok(device));
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "", "hd", "hdA", "sda16", "hda64", "sda01", "sdq", "xvd", "nvme0n1", "hda-1",
        ] {
            assert_eq!(DeviceNumber::from_name(name), None, "{name}");
        }
        assert_eq!("3".parse::<DeviceNumber>(), Err(Error::InvalidArgument));
        assert_eq!("3:x".parse::<DeviceNumber>(), Err(Error::InvalidArgument));
        assert_eq!(
            "4096:0".parse::<DeviceNumber>(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            "1:1048576".parse::<DeviceNumber>(),
            Err(Error::InvalidArgument)
        );
    }

    #[test]
    fn numbers_without_a_classic_name() {
        assert_eq!(DeviceNumber::new(259, 0).unwrap().name(), None);
        assert_eq!(DeviceNumber::new(7, 0).unwrap().to_string(), "7:0");
    }
}
