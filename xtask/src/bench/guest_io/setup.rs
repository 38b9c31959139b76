//! The disks behind the guest: images filled with data, vbd-backend's VBDs (one extent, and
//! 1024 scattered over two disks), qemu-storage-daemon's export and QEMU's own drive, each
//! the same size, and the servers that serve them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};
use vbd_machine::guest::{Aio, Cache, GuestDisk, StorageDaemon};
use vbd_machine::{write_devices, Backend};

use super::plan::Target;

/// What the guest sees on every disk.
pub const DISK_BYTES: u64 = 128 << 20;
/// The scattered VBD: 1024 extents of 128 KiB, half on each disk.
const SCATTERED_EXTENTS: u64 = 1024;
const SCATTERED_EXTENT_BYTES: u64 = DISK_BYTES / SCATTERED_EXTENTS;
/// On each disk the scattered extents fill 64 MiB end to end, as much of the files as the
/// one-extent VBD takes of hda: spread over twice that, their 4 KiB writes ran at 0.74 to
/// 0.89x the one-extent VBD's, for the page-cache folios the kernel walks, not for anything
/// of the backend's (BENCHMARKS.md, issue 15). Consecutive extents of the VBD alternate between the disks,
/// so none continues the one before it and they cannot merge.
const SLOT_BYTES: u64 = SCATTERED_EXTENT_BYTES;
/// hda: the one-extent VBD, then its half of the scattered one; hdb: the other half.
const HDA_BYTES: u64 = 2 * DISK_BYTES;
const HDB_BYTES: u64 = DISK_BYTES;
/// Odd, so slot `index * STRIDE % slots` visits every slot once, in a scattered order.
const STRIDE: u64 = 293;

pub fn hda() -> DeviceNumber {
    DeviceNumber::from_name("hda").expect("hda is a device name")
}

fn hdb() -> DeviceNumber {
    DeviceNumber::from_name("hdb").expect("hdb is a device name")
}

pub fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").expect("xvda is a device name")
}

fn sectors(bytes: u64) -> u64 {
    bytes / SECTOR_SIZE
}

/// The one-extent VBD: the first [`DISK_BYTES`] of hda.
pub fn single_extent() -> Vec<Extent> {
    vec![Extent::new(hda(), 0, sectors(DISK_BYTES)).expect("a valid extent")]
}

/// The scattered VBD: its extents alternate between hda (after the single extent) and hdb,
/// and on each disk visit the slots in a stride order, never two neighbours in a row.
pub fn scattered_extents() -> Vec<Extent> {
    let per_disk = SCATTERED_EXTENTS / 2;
    (0..SCATTERED_EXTENTS)
        .map(|index| {
            let (device, base) = if index % 2 == 0 {
                (hda(), DISK_BYTES)
            } else {
                (hdb(), 0)
            };
            let slot = (index / 2) * STRIDE % per_disk;
            Extent::new(
                device,
                sectors(base + slot * SLOT_BYTES),
                sectors(SCATTERED_EXTENT_BYTES),
            )
            .expect("a valid extent")
        })
        .collect()
}

/// Write `bytes` of data (not a sparse file: reading a hole costs the host less than
/// reading data) and flush it, so no write-back of the set-up runs during the jobs.
pub fn write_image(path: &Path, bytes: u64) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut file = File::create(path).map_err(failed)?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|index| (index.wrapping_mul(131) ^ (index >> 12)) as u8 | 1)
        .collect();
    for _ in 0..bytes / chunk.len() as u64 {
        file.write_all(&chunk).map_err(failed)?;
    }
    file.sync_all().map_err(failed)
}

/// The images, the devices file, and every server, started.
pub struct Servers {
    /// vbd-backend `--queues 1`: [`Target::Vbd1`] and [`Target::Vbd1024`].
    pub backend: Backend,
    /// vbd-backend `--queues 2`: [`Target::Vbd1TwoQueues`].
    pub two_queues: Backend,
    pub qsd: StorageDaemon,
    /// The guest's disks, in [`Target::ALL`] order.
    pub disks: Vec<GuestDisk>,
    /// vbd-backend's devices file, hda and hdb.
    pub devices: PathBuf,
}

/// QEMU's own virtio-blk in QEMU's default modes: the host page cache (as qemu-storage-daemon
/// and vbd-backend use it) and a thread pool doing `preadv`/`pwritev`.
pub const BUILTIN_CACHE: Cache = Cache::Writeback;
pub const BUILTIN_AIO: Aio = Aio::Threads;

impl Servers {
    pub fn start(dir: &Path, backend_binary: &Path) -> Result<Servers, String> {
        let image = |name: &str| dir.join(format!("{name}.img"));
        eprintln!(
            "guest_io: writing the images in {} ({} MiB of data)",
            dir.display(),
            (HDA_BYTES + HDB_BYTES + 2 * DISK_BYTES) >> 20
        );
        for (name, bytes) in [
            ("hda", HDA_BYTES),
            ("hdb", HDB_BYTES),
            ("qsd", DISK_BYTES),
            ("builtin", DISK_BYTES),
        ] {
            write_image(&image(name), bytes)?;
        }
        let devices = dir.join("devices.toml");
        let (hda_image, hdb_image) = (image("hda"), image("hdb"));
        write_devices(
            &devices,
            [
                ("hda", hda(), hda_image.as_path()),
                ("hdb", hdb(), hdb_image.as_path()),
            ],
        )?;
        let xvdb = DeviceNumber::from_name("xvdb").expect("xvdb is a device name");
        let mut backend = start_backend(backend_binary, &devices, &dir.join("backend"), 1)?;
        let single = backend.attach(1, xvda(), Target::Vbd1.key(), &single_extent())?;
        let scattered = backend.attach(1, xvdb, Target::Vbd1024.key(), &scattered_extents())?;
        let mut two_queues =
            start_backend(backend_binary, &devices, &dir.join("backend-queues-2"), 2)?;
        let single_two_queues =
            two_queues.attach(1, xvda(), Target::Vbd1TwoQueues.key(), &single_extent())?;
        let qsd = StorageDaemon::start(dir, &image("qsd"), 1)?;
        let vhost_user = |socket: &PathBuf, queues| GuestDisk::VhostUser {
            socket: socket.clone(),
            queues,
            reconnect: false,
        };
        let disks = vec![
            vhost_user(&single, 1),
            vhost_user(&scattered, 1),
            vhost_user(&qsd.vhost_user_socket, 1),
            GuestDisk::Drive {
                image: image("builtin"),
                cache: BUILTIN_CACHE,
                aio: BUILTIN_AIO,
                read_only: false,
                queues: 1,
            },
            vhost_user(&single_two_queues, 2),
        ];
        Ok(Servers {
            backend,
            two_queues,
            qsd,
            disks,
            devices,
        })
    }

    /// The process whose CPU time a job on `target` costs, if it is not QEMU itself.
    pub fn server(&self, target: Target) -> Option<u32> {
        match target {
            Target::Vbd1 | Target::Vbd1024 => Some(self.backend.pid()),
            Target::Vbd1TwoQueues => Some(self.two_queues.pid()),
            Target::Qsd => Some(self.qsd.pid()),
            Target::QemuBuiltin => None,
        }
    }

    /// Stop every server, each required to exit cleanly.
    pub fn stop(self) -> Result<(), String> {
        let results = [
            self.backend.stop().map(drop),
            self.two_queues.stop().map(drop),
            self.qsd.stop(),
        ];
        results.into_iter().collect()
    }
}

/// Start vbd-backend on `devices` with `queues` virtqueues per vhost-user-blk device; its
/// sockets go in `dir`, its output in `dir` + `.log`.
pub fn start_backend(
    binary: &Path,
    devices: &Path,
    dir: &Path,
    queues: u16,
) -> Result<Backend, String> {
    Backend::start(
        binary,
        devices,
        dir,
        &["--queues", &queues.to_string()],
        &dir.with_extension("log"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scattered_vbd_is_as_large_as_the_others_and_packs_its_half_of_each_disk() {
        let extents = scattered_extents();
        assert_eq!(extents.len(), 1024);
        let total: u64 = extents.iter().map(Extent::nr_sectors).sum();
        assert_eq!(total * SECTOR_SIZE, DISK_BYTES);
        assert_eq!(
            single_extent().iter().map(Extent::nr_sectors).sum::<u64>() * SECTOR_SIZE,
            DISK_BYTES
        );
        let mut places: Vec<(DeviceNumber, u64, u64)> = extents
            .iter()
            .map(|extent| (extent.device(), extent.start_sector(), extent.nr_sectors()))
            .collect();
        places.sort();
        for pair in places.windows(2) {
            let ((device, start, length), (next_device, next_start, _)) = (pair[0], pair[1]);
            assert!(
                device != next_device || start + length == next_start,
                "{pair:?}"
            );
        }
        let on_hda: Vec<_> = places.iter().filter(|place| place.0 == hda()).collect();
        assert_eq!(on_hda.len(), 512);
        assert_eq!(on_hda[0].1, sectors(DISK_BYTES), "after the single extent");
        let on_hdb = places.iter().find(|place| place.0 == hdb());
        assert_eq!(on_hdb.map(|place| place.1), Some(0), "hdb from its start");
        assert!(places.iter().all(|place| {
            let end = (place.1 + place.2) * SECTOR_SIZE;
            end <= if place.0 == hda() {
                HDA_BYTES
            } else {
                HDB_BYTES
            }
        }));
        // Consecutive extents of the list are never neighbours on a disk.
        for pair in extents.windows(2) {
            assert_ne!(pair[0].device(), pair[1].device());
        }
    }
}
