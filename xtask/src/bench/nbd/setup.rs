//! The disks of the `nbd` section and their servers: for each server a full and a sparse
//! image, written alike, served whole by vbd-backend (a dom0 VBD of one extent: an NBD
//! export) and by qemu-storage-daemon; and a full and a sparse file to copy into them. Each
//! server has images of its own because copying the sparse file in leaves the sparse disk
//! as the server's zeroing makes it (qemu-storage-daemon's default `discard=ignore`
//! allocates what it zeroes), and the other server must not measure that. The floor,
//! nbdkit's `null` plugin, keeps nothing.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};
use vbd_machine::guest::StorageDaemon;
use vbd_machine::process::Daemon;
use vbd_machine::{write_devices, Backend};

use super::super::guest_io::write_image;
use super::plan::{Disk, Server};

/// Each virtual disk's size.
pub const DISK_BYTES: u64 = 512 << 20;
/// The sparse disk's data: pieces of [`PIECE_BYTES`], one at the start of every
/// [`PIECE_STRIDE`], 4 MiB in all (as the sparse VD held).
pub const PIECE_BYTES: u64 = 64 << 10;
const PIECE_STRIDE: u64 = 8 << 20;
pub const SPARSE_DATA_BYTES: u64 = DISK_BYTES / PIECE_STRIDE * PIECE_BYTES;

fn device(name: &str) -> DeviceNumber {
    DeviceNumber::from_name(name).expect("a device name")
}

/// Where each piece of the sparse disk's data starts.
fn piece_offsets() -> impl Iterator<Item = u64> {
    (0..DISK_BYTES / PIECE_STRIDE).map(|index| index * PIECE_STRIDE)
}

/// A file of [`DISK_BYTES`] whose only data are the pieces; the rest is holes.
fn write_sparse(path: &Path) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("{}: {error}", path.display());
    let file = File::create(path).map_err(failed)?;
    file.set_len(DISK_BYTES).map_err(failed)?;
    // Never a zero byte: nbdcopy would find a zero block and write it as a hole.
    let piece: Vec<u8> = (0..PIECE_BYTES)
        .map(|index| (index.wrapping_mul(151) >> 3) as u8 | 1)
        .collect();
    for offset in piece_offsets() {
        file.write_all_at(&piece, offset).map_err(failed)?;
    }
    file.sync_all().map_err(failed)
}

/// Bytes of `path` the filesystem holds: its data, not its holes.
pub fn allocated_bytes(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|metadata| metadata.blocks() * 512)
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// The images and files, and both servers, started.
pub struct Servers {
    pub backend: Backend,
    pub qsd_full: StorageDaemon,
    pub qsd_sparse: StorageDaemon,
    /// nbdkit's `null` plugin of [`DISK_BYTES`], on `floor_socket`.
    floor: Daemon,
    floor_socket: PathBuf,
    /// Each server's sparse image.
    pub backend_sparse_image: PathBuf,
    pub qsd_sparse_image: PathBuf,
    /// The files copied into the disks: the same bytes as the images.
    pub full_file: PathBuf,
    pub sparse_file: PathBuf,
}

impl Servers {
    pub fn start(dir: &Path, backend_binary: &Path) -> Result<Servers, String> {
        let path = |name: &str| dir.join(name);
        let (backend_full_image, backend_sparse_image) =
            (path("vbd-full.img"), path("vbd-sparse.img"));
        let (qsd_full_image, qsd_sparse_image) = (path("qsd-full.img"), path("qsd-sparse.img"));
        let (full_file, sparse_file) = (path("full.raw"), path("sparse.raw"));
        eprintln!(
            "nbd: writing the disks and the files to copy in {} ({} MiB of data)",
            dir.display(),
            (3 * DISK_BYTES + 3 * SPARSE_DATA_BYTES) >> 20
        );
        for full in [&backend_full_image, &qsd_full_image, &full_file] {
            write_image(full, DISK_BYTES)?;
        }
        for sparse in [&backend_sparse_image, &qsd_sparse_image, &sparse_file] {
            write_sparse(sparse)?;
        }
        let devices = path("devices.toml");
        write_devices(
            &devices,
            [
                ("hda", device("hda"), backend_full_image.as_path()),
                ("hdb", device("hdb"), backend_sparse_image.as_path()),
            ],
        )?;
        let backend_dir = path("backend");
        let mut backend = Backend::start(
            backend_binary,
            &devices,
            &backend_dir,
            &[],
            &backend_dir.with_extension("log"),
        )?;
        for (vdevice, disk) in [("xvda", "hda"), ("xvdb", "hdb")] {
            let extent = Extent::new(device(disk), 0, DISK_BYTES / SECTOR_SIZE)
                .map_err(|error| format!("nbd: the extent of {disk}: {error}"))?;
            backend.attach(0, device(vdevice), vdevice, &[extent])?;
        }
        let qsd = |name: &str, image: &Path| {
            let qsd_dir = path(name);
            std::fs::create_dir_all(&qsd_dir)
                .map_err(|error| format!("{}: {error}", qsd_dir.display()))?;
            StorageDaemon::start(&qsd_dir, image, 1)
        };
        let (floor, floor_socket) = start_floor(dir)?;
        Ok(Servers {
            backend,
            qsd_full: qsd("qsd-full", &qsd_full_image)?,
            qsd_sparse: qsd("qsd-sparse", &qsd_sparse_image)?,
            floor,
            floor_socket,

            backend_sparse_image,
            qsd_sparse_image,
            full_file,
            sparse_file,
        })
    }

    /// The NBD URI of `disk` on `server`.
    pub fn uri(&self, server: Server, disk: Disk) -> String {
        match server {
            Server::Backend => self.backend.nbd_url(match disk {
                Disk::Full => "xvda",
                Disk::Sparse => "xvdb",
            }),
            Server::Qsd => {
                let qsd = match disk {
                    Disk::Full => &self.qsd_full,
                    Disk::Sparse => &self.qsd_sparse,
                };
                format!("nbd+unix:///d0?socket={}", qsd.nbd_socket.display())
            }
            Server::Floor => format!("nbd+unix:///?socket={}", self.floor_socket.display()),
        }
    }

    /// The sparse image of each server that has one.
    pub fn sparse_images(&self) -> [(Server, &Path); 2] {
        [
            (Server::Backend, &self.backend_sparse_image),
            (Server::Qsd, &self.qsd_sparse_image),
        ]
    }

    /// The file copied into `disk`.
    pub fn file(&self, disk: Disk) -> &Path {
        match disk {
            Disk::Full => &self.full_file,
            Disk::Sparse => &self.sparse_file,
        }
    }

    /// Stop every server, each required to exit cleanly.
    pub fn stop(self) -> Result<(), String> {
        let results = [
            self.backend.stop().map(drop),
            self.qsd_full.stop(),
            self.qsd_sparse.stop(),
            self.floor.stop(Duration::from_secs(10)).map(drop),
        ];
        results.into_iter().collect()
    }
}

/// nbdkit's `null` plugin of [`DISK_BYTES`] on a socket in `dir`, once it listens.
fn start_floor(dir: &Path) -> Result<(Daemon, PathBuf), String> {
    let socket = dir.join("floor.sock");
    let arguments = [
        "--foreground".to_owned(),
        "--unix".to_owned(),
        socket.display().to_string(),
        "null".to_owned(),
        format!("size={DISK_BYTES}"),
    ];
    let floor = Daemon::spawn_serving(
        Path::new("nbdkit"),
        &arguments,
        &dir.join("floor.log"),
        "install nbdkit",
        &[&socket],
    )?;
    Ok((floor, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sparse_disk_holds_four_mebibytes_spread_over_all_of_it() {
        assert_eq!(SPARSE_DATA_BYTES, 4 << 20);
        let offsets: Vec<u64> = piece_offsets().collect();
        assert_eq!(offsets.len() as u64 * PIECE_BYTES, SPARSE_DATA_BYTES);
        assert_eq!(offsets.first(), Some(&0));
        assert_eq!(offsets.last(), Some(&(DISK_BYTES - PIECE_STRIDE)));
    }
}
