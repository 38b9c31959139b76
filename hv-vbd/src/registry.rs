//! The physical disks the hypervisor found at boot; every extent is checked against them.

use heapless::Vec;
use shared_abi::{wire::Extent, DeviceNumber, Error};

/// One physical disk: its device number and size in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    pub device: DeviceNumber,
    pub sectors: u64,
}

/// Up to `DISKS` physical disks.
pub(crate) struct DiskRegistry<const DISKS: usize> {
    disks: Vec<Disk, DISKS>,
}

impl<const DISKS: usize> DiskRegistry<DISKS> {
    pub(crate) const fn new() -> Self {
        DiskRegistry { disks: Vec::new() }
    }

    /// Add a disk: `EINVAL` for an empty one or one whose size in bytes does not fit a
    /// `u64` (so no byte offset on it can overflow), `EEXIST` for a second disk with the
    /// same number, `ENOSPC` when the registry is full.
    pub(crate) fn register(&mut self, disk: Disk) -> Result<(), Error> {
        if disk.sectors == 0 || disk.sectors.checked_mul(shared_abi::SECTOR_SIZE).is_none() {
            return Err(Error::InvalidArgument);
        }
        if self.find(disk.device).is_some() {
            return Err(Error::AlreadyExists);
        }
        self.disks.push(disk).map_err(|_| Error::NoSpace)
    }

    fn find(&self, device: DeviceNumber) -> Option<&Disk> {
        self.disks.iter().find(|disk| disk.device == device)
    }

    /// `ENODEV` for an extent on an unknown disk, `ERANGE` for one that runs past its end.
    pub(crate) fn check(&self, extent: &Extent) -> Result<(), Error> {
        let disk = self.find(extent.device()).ok_or(Error::NoDevice)?;
        if extent.end_sector() > disk.sectors {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hda() -> DeviceNumber {
        DeviceNumber::from_name("hda").unwrap()
    }

    #[test]
    fn registration_errors() {
        let mut registry = DiskRegistry::<1>::new();
        assert_eq!(
            registry.register(Disk {
                device: hda(),
                sectors: 0
            }),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            registry.register(Disk {
                device: hda(),
                sectors: u64::MAX / 512 + 1
            }),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            registry.register(Disk {
                device: hda(),
                sectors: 100
            }),
            Ok(())
        );
        assert_eq!(
            registry.register(Disk {
                device: hda(),
                sectors: 100
            }),
            Err(Error::AlreadyExists)
        );
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        assert_eq!(
            registry.register(Disk {
                device: hdb,
                sectors: 100
            }),
            Err(Error::NoSpace)
        );
    }

    #[test]
    fn extents_must_lie_inside_a_known_disk() {
        let mut registry = DiskRegistry::<2>::new();
        registry
            .register(Disk {
                device: hda(),
                sectors: 100,
            })
            .unwrap();
        assert_eq!(registry.check(&Extent::new(hda(), 90, 10).unwrap()), Ok(()));
        assert_eq!(
            registry.check(&Extent::new(hda(), 90, 11).unwrap()),
            Err(Error::OutOfRange)
        );
        let hdc = DeviceNumber::from_name("hdc").unwrap();
        assert_eq!(
            registry.check(&Extent::new(hdc, 0, 1).unwrap()),
            Err(Error::NoDevice)
        );
    }
}
