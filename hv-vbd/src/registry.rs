//! The physical disks the hypervisor found at boot; every extent is checked against them,
//! and stored with its disk's index here rather than its device number.

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use heapless::Vec;
use shared_abi::{wire::Extent, DeviceNumber, Error};

use crate::arena::MAX_DISKS;

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
        assert!(DISKS <= MAX_DISKS, "a table has at most 512 disks");
        DiskRegistry { disks: Vec::new() }
    }

    /// Add a disk: `EINVAL` for an empty one or one whose size in bytes does not fit a
    /// `u64` (so no byte offset on it can overflow), `EEXIST` for a second disk with the
    /// same number, `ENOSPC` when the registry is full. `devices` is translation's copy of
    /// each index's device number, written before any extent can name the new index.
    pub(crate) fn register(&mut self, disk: Disk, devices: &[AtomicU32]) -> Result<(), Error> {
        if disk.sectors == 0 || disk.sectors.checked_mul(shared_abi::SECTOR_SIZE).is_none() {
            return Err(Error::InvalidArgument);
        }
        if self.find(disk.device).is_some() {
            return Err(Error::AlreadyExists);
        }
        let slot = devices.get(self.disks.len()).ok_or(Error::NoSpace)?;
        self.disks.push(disk).map_err(|_| Error::NoSpace)?;
        slot.store(disk.device.raw(), Relaxed);
        Ok(())
    }

    /// How many disks are registered.
    pub(crate) fn count(&self) -> usize {
        self.disks.len()
    }

    fn find(&self, device: DeviceNumber) -> Option<(u16, &Disk)> {
        self.disks
            .iter()
            .enumerate()
            .find(|(_, disk)| disk.device == device)
            .map(|(index, disk)| (index as u16, disk))
    }

    /// The index of the extent's disk, or `ENODEV` for an unknown disk and `ERANGE` for an
    /// extent that runs past its end.
    pub(crate) fn check(&self, extent: &Extent) -> Result<u16, Error> {
        let (index, disk) = self.find(extent.device()).ok_or(Error::NoDevice)?;
        if extent.end_sector() > disk.sectors {
            return Err(Error::OutOfRange);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hda() -> DeviceNumber {
        DeviceNumber::from_name("hda").unwrap()
    }

    fn devices() -> [AtomicU32; 2] {
        [AtomicU32::new(0), AtomicU32::new(0)]
    }

    #[test]
    fn registration_errors() {
        let devices = devices();
        let mut registry = DiskRegistry::<1>::new();
        assert_eq!(
            registry.register(
                Disk {
                    device: hda(),
                    sectors: 0
                },
                &devices,
            ),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            registry.register(
                Disk {
                    device: hda(),
                    sectors: u64::MAX / 512 + 1
                },
                &devices,
            ),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            registry.register(
                Disk {
                    device: hda(),
                    sectors: 100
                },
                &devices,
            ),
            Ok(())
        );
        assert_eq!(
            registry.register(
                Disk {
                    device: hda(),
                    sectors: 100
                },
                &devices,
            ),
            Err(Error::AlreadyExists)
        );
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        assert_eq!(
            registry.register(
                Disk {
                    device: hdb,
                    sectors: 100
                },
                &devices,
            ),
            Err(Error::NoSpace)
        );
    }

    #[test]
    fn extents_must_lie_inside_a_known_disk() {
        let devices = devices();
        let mut registry = DiskRegistry::<2>::new();
        registry
            .register(
                Disk {
                    device: hda(),
                    sectors: 100,
                },
                &devices,
            )
            .unwrap();
        assert_eq!(registry.check(&Extent::new(hda(), 90, 10).unwrap()), Ok(0));
        assert_eq!(devices[0].load(Relaxed), hda().raw());
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
