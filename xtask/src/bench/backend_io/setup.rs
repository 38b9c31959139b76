//! The disks and servers of the `backend_io` section: vbd-backend's VBDs of the guest
//! section (one extent, and 1024 scattered over two images), qemu-storage-daemon on an image
//! of its own in each of its `aio` modes, and an image for fio on the host; every image the
//! same size, written with data, and before every job dropped from the page cache and read
//! back, so that each target's files are in the same state when its job starts.
//!
//! The state matters: ext4 prepares every page-cache folio a buffered write touches in full,
//! so a 4 KiB write into a 1 MiB folio costs many times one into a 4 KiB folio, and the mix of
//! folio sizes a file's cache holds depends on how it was written and read before. The same
//! fio job (4 KiB random `psync` writes) on images written alike, after a run of the jobs,
//! made 66k to 128k writes a second on one and 292k to 375k on another (BENCHMARKS.md, issue
//! 15). Dropped and read back sequentially, every file gets the same mix from readahead.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};
use vbd_machine::process::{output, Daemon};
use vbd_machine::{write_devices, Backend};

use super::super::guest_io::{
    hda, scattered_extents, single_extent, start_backend, write_image, xvda, DISK_BYTES,
};
use super::plan::Target;

/// What every target serves.
pub const IMAGE_BYTES: u64 = DISK_BYTES;
/// VBDs the backend holds throughout, and while its idle CPU is measured: `vbd_1`,
/// `vbd_1024` and the rest
/// of [`IDLE_VBDS_PER_DOMAIN`] a domain on hdc, 1 MiB each.
pub const IDLE_VBDS: u32 = 64;
/// Queues of the second backend, whose scaling with the client's queues is measured.
pub const QUEUES: u16 = 2;
const IDLE_VBDS_PER_DOMAIN: u32 = 16;
const IDLE_VBD_BYTES: u64 = 1 << 20;

/// qemu-storage-daemon's way of doing I/O on its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aio {
    IoUring,
    Threads,
}

impl Aio {
    /// QEMU's word for it (`aio=WORD`).
    fn as_str(self) -> &'static str {
        match self {
            Aio::IoUring => "io_uring",
            Aio::Threads => "threads",
        }
    }
}

/// qemu-storage-daemon's arguments: `image` through the host page cache
/// (`cache.direct=off`) with `aio`, exported as vhost-user-blk on `socket` with one queue.
pub fn storage_daemon_arguments(image: &Path, aio: Aio, socket: &Path) -> Vec<String> {
    vec![
        "--blockdev".to_owned(),
        format!(
            "driver=file,node-name=f0,filename={},aio={},cache.direct=off",
            image.display(),
            aio.as_str()
        ),
        "--blockdev".to_owned(),
        "driver=raw,node-name=d0,file=f0".to_owned(),
        "--export".to_owned(),
        format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues=1",
            socket.display()
        ),
    ]
}

/// A running qemu-storage-daemon and its socket.
struct StorageDaemon {
    daemon: Daemon,
    socket: PathBuf,
}

impl StorageDaemon {
    fn start(dir: &Path, image: &Path, aio: Aio) -> Result<StorageDaemon, String> {
        let dir = dir.join(format!("qsd-{}", aio.as_str()));
        fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let socket = dir.join("vhost-user.sock");
        let daemon = Daemon::spawn_serving(
            Path::new("qemu-storage-daemon"),
            &storage_daemon_arguments(image, aio, &socket),
            &dir.join("qsd.log"),
            "install qemu-system-common",
            &[&socket],
        )?;
        Ok(StorageDaemon { daemon, socket })
    }
}

fn hdc() -> DeviceNumber {
    DeviceNumber::from_name("hdc").expect("hdc is a device name")
}

/// Attach VBDs until `backend` holds [`IDLE_VBDS`]: domains 2 onwards, xvda to xvdp, each
/// 1 MiB of hdc. No client connects to them; they are there for the idle figure.
fn attach_idle_vbds(backend: &mut Backend) -> Result<(), String> {
    for index in 0..IDLE_VBDS - 2 {
        let domain = 2 + index / IDLE_VBDS_PER_DOMAIN;
        let letter = char::from(b'a' + (index % IDLE_VBDS_PER_DOMAIN) as u8);
        let vdevice = DeviceNumber::from_name(&format!("xvd{letter}"))
            .ok_or_else(|| format!("xvd{letter} is no device name"))?;
        let sectors = IDLE_VBD_BYTES / SECTOR_SIZE;
        let extent = Extent::new(hdc(), u64::from(index) * sectors, sectors)
            .map_err(|error| format!("backend_io: idle extent {index}: {error}"))?;
        backend.attach(domain, vdevice, &format!("idle_{index}"), &[extent])?;
    }
    Ok(())
}

/// Drop `path` from the page cache (its dirty pages written back first: `dd`'s `nocache`
/// does not drop those), then read it through.
fn reload(path: &Path) -> Result<(), String> {
    super::super::write_back_dirty_pages()?;
    let mut drop = Command::new("dd");
    drop.arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"]);
    output(&mut drop)?;
    read_through(path)
}

/// Read `path` through, so its pages are in the page cache before the jobs.
fn read_through(path: &Path) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut file = File::open(path).map_err(failed)?;
    let mut chunk = vec![0u8; 1 << 20];
    while file.read(&mut chunk).map_err(failed)? > 0 {}
    Ok(())
}

/// The images and every server, started.
pub struct Servers {
    backend: Backend,
    vbd_1: PathBuf,
    /// vbd-backend with [`QUEUES`] queues a VBD, serving `vbd_1`'s VBD as well.
    queues_backend: Backend,
    vbd_1_queues: PathBuf,
    vbd_1024: PathBuf,
    qsd_uring: StorageDaemon,
    qsd_threads: StorageDaemon,
    /// The image fio reads and writes on the host.
    pub host_image: PathBuf,
    /// Every image file, and the targets whose bytes each holds.
    images: Vec<(PathBuf, Vec<Target>)>,
}

impl Servers {
    pub fn start(dir: &Path, backend_binary: &Path) -> Result<Servers, String> {
        let image = |name: &str| dir.join(format!("{name}.img"));
        // hda holds the one-extent VBD, then its half of the scattered one; hdb the other
        // half (the guest section's layout).
        let sizes = [
            ("hda", 2 * IMAGE_BYTES),
            ("hdb", IMAGE_BYTES),
            ("qsd-uring", IMAGE_BYTES),
            ("qsd-threads", IMAGE_BYTES),
            ("host", IMAGE_BYTES),
            ("hdc", u64::from(IDLE_VBDS) * IDLE_VBD_BYTES),
        ];
        eprintln!(
            "backend_io: writing the images in {} ({} MiB of data)",
            dir.display(),
            sizes.iter().map(|(_, bytes)| bytes).sum::<u64>() >> 20
        );
        for (name, bytes) in sizes {
            write_image(&image(name), bytes)?;
            read_through(&image(name))?;
        }
        let devices = dir.join("devices.toml");
        let hdb = DeviceNumber::from_name("hdb").expect("hdb is a device name");
        let (hda_image, hdb_image, hdc_image) = (image("hda"), image("hdb"), image("hdc"));
        write_devices(
            &devices,
            [
                ("hda", hda(), hda_image.as_path()),
                ("hdb", hdb, hdb_image.as_path()),
                ("hdc", hdc(), hdc_image.as_path()),
            ],
        )?;
        let xvdb = DeviceNumber::from_name("xvdb").expect("xvdb is a device name");
        let mut backend = start_backend(backend_binary, &devices, &dir.join("backend"), 1)?;
        let vbd_1 = backend.attach(1, xvda(), Target::Vbd1.key(), &single_extent())?;
        // vbd_1's VBD again, on a backend of its own with more queues: only read from.
        let mut queues_backend = start_backend(
            backend_binary,
            &devices,
            &dir.join("backend-queues"),
            QUEUES,
        )?;
        let vbd_1_queues = queues_backend.attach(1, xvda(), "vbd_1_queues", &single_extent())?;
        let vbd_1024 = backend.attach(1, xvdb, Target::Vbd1024.key(), &scattered_extents())?;
        // Attached now, not after the jobs: the backend closes a control connection idle
        // for a minute, and the jobs take longer than that.
        attach_idle_vbds(&mut backend)?;
        Ok(Servers {
            backend,
            vbd_1,
            queues_backend,
            vbd_1_queues,
            vbd_1024,
            qsd_uring: StorageDaemon::start(dir, &image("qsd-uring"), Aio::IoUring)?,
            qsd_threads: StorageDaemon::start(dir, &image("qsd-threads"), Aio::Threads)?,
            host_image: image("host"),
            images: vec![
                (hda_image, vec![Target::Vbd1, Target::Vbd1024]),
                (hdb_image, vec![Target::Vbd1024]),
                (image("qsd-uring"), vec![Target::QsdUring]),
                (image("qsd-threads"), vec![Target::QsdThreads]),
                (image("host"), vec![Target::HostFio]),
            ],
        })
    }

    /// Write back, drop from the page cache and read back every image `target`'s bytes are
    /// in, so that its job starts on files in the same state as any other target's.
    pub fn reload(&self, target: Target) -> Result<(), String> {
        self.images
            .iter()
            .filter(|(_, targets)| targets.contains(&target))
            .try_for_each(|(image, _)| reload(image))
    }

    /// vbd-backend's process.
    pub fn backend_pid(&self) -> u32 {
        self.backend.pid()
    }

    /// The vhost-user-blk socket of `target`; none for the host's own fio.
    pub fn socket(&self, target: Target) -> Option<&Path> {
        match target {
            Target::Vbd1 => Some(&self.vbd_1),
            Target::Vbd1024 => Some(&self.vbd_1024),
            Target::QsdUring => Some(&self.qsd_uring.socket),
            Target::QsdThreads => Some(&self.qsd_threads.socket),
            Target::HostFio => None,
        }
    }

    /// The process serving `target`; none for the host's own fio.
    pub fn server(&self, target: Target) -> Option<u32> {
        match target {
            Target::Vbd1 | Target::Vbd1024 => Some(self.backend.pid()),
            Target::QsdUring => Some(self.qsd_uring.daemon.pid()),
            Target::QsdThreads => Some(self.qsd_threads.daemon.pid()),
            Target::HostFio => None,
        }
    }

    /// The socket of `vbd_1`'s VBD on the backend with [`QUEUES`] queues, and its process.
    pub fn queues_target(&self) -> (&Path, u32) {
        (&self.vbd_1_queues, self.queues_backend.pid())
    }

    /// Stop every server, each required to exit cleanly.
    pub fn stop(self) -> Result<(), String> {
        let limit = Duration::from_secs(10);
        let results = [
            self.backend.stop().map(drop),
            self.queues_backend.stop().map(drop),
            self.qsd_uring.daemon.stop(limit).map(drop),
            self.qsd_threads.daemon.stop(limit).map(drop),
        ];
        results.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_storage_daemon_uses_the_page_cache_and_the_asked_aio() {
        let arguments = storage_daemon_arguments(
            Path::new("/b/qsd.img"),
            Aio::IoUring,
            Path::new("/b/q.sock"),
        );
        assert_eq!(
            arguments[1],
            "driver=file,node-name=f0,filename=/b/qsd.img,aio=io_uring,cache.direct=off"
        );
        assert!(arguments[5].contains("addr.path=/b/q.sock,writable=on,num-queues=1"));
        let threads = storage_daemon_arguments(Path::new("i"), Aio::Threads, Path::new("s"));
        assert_eq!(
            threads[1],
            "driver=file,node-name=f0,filename=i,aio=threads,cache.direct=off"
        );
    }
}
