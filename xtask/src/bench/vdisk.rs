//! The `vdisk` figures: wall-clock `vdisk format` of a 65 536-extent pool and `vdisk create
//! 64G` (16 384 extents) with the release binary on a 256 GiB sparse image, each run on a
//! fresh database and image, as a user runs them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use shared_abi::DeviceNumber;
use vbd_machine::process::output;
use vbd_machine::{build_vdisk, write_devices};

use super::median_of;

/// The pool: a 256 GiB sparse image split into 4 MiB extents.
const IMAGE_BYTES: u64 = 256 << 30;
const POOL_EXTENTS: u64 = 65536;
const CREATE_SIZE: &str = "64G";

/// Median wall-clock milliseconds of `vdisk format` (65 536 extents of 4 MiB from a 256 GiB
/// sparse image) and of `vdisk create 64G` (16 384 of them), as a user runs them: each run on
/// a fresh database and a fresh image, so every extent is dirty and `create` zeros 64 GiB.
/// That is only affordable because `vdisk` zeros a regular file by punching holes; a probe
/// checks that it does so here before anything large is zeroed.
pub fn measure(target: &Path, runs: usize) -> Result<(f64, f64), String> {
    let vdisk = build_vdisk(true)?;
    let scratch = target.join("bench/vdisk");
    fs::create_dir_all(&scratch)
        .map_err(|error| format!("creating {}: {error}", scratch.display()))?;
    let pool = Pool::new(&vdisk, &scratch, "hda", IMAGE_BYTES)?;
    let probe = Pool::new(&vdisk, &scratch, "probe", PROBE_BYTES)?;
    let measured = probe
        .check_zeroing_keeps_sparse()
        .and_then(|()| pool.time(runs));
    let removed = pool.remove().and(probe.remove());
    let (format_ms, create_ms) = measured?;
    removed?;
    Ok((format_ms, create_ms))
}

/// The probe's image: room for a few extents, so a `vdisk` that wrote its zeros would write
/// this much and no more.
const PROBE_BYTES: u64 = 64 << 20;

/// What an image may gain in blocks and still count as sparse: room for a file system's
/// own bookkeeping, far below the 64 MiB the probe would gain by being written.
const SPARSE_SLACK_BYTES: u64 = 1 << 20;

/// An image standing in for a disk, with its devices file and database.
struct Pool<'a> {
    vdisk: &'a Path,
    image: PathBuf,
    devices: PathBuf,
    database: PathBuf,
    bytes: u64,
}

impl<'a> Pool<'a> {
    fn new(vdisk: &'a Path, scratch: &Path, name: &str, bytes: u64) -> Result<Pool<'a>, String> {
        let image = scratch.join(format!("{name}.img"));
        let devices = scratch.join(format!("{name}.toml"));
        let hda = DeviceNumber::from_name("hda").expect("hda is a device name");
        write_devices(&devices, [("hda", hda, image.as_path())])?;
        Ok(Pool {
            vdisk,
            image,
            database: scratch.join(format!("{name}.sqlite")),
            devices,
            bytes,
        })
    }

    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(self.vdisk);
        command
            .arg("--db")
            .arg(&self.database)
            .arg("--devices")
            .arg(&self.devices)
            .args(arguments)
            // The write path is a test hook; a user never has it set, nor may the bench.
            .env_remove("VDISK_ZERO_WITH_WRITES");
        command
    }

    /// A new database and a new sparse image: `set_len` on a new file allocates no blocks.
    fn make_fresh(&self) -> Result<(), String> {
        remove_database(&self.database)?;
        let file = fs::File::create(&self.image)
            .map_err(|error| format!("creating {}: {error}", self.image.display()))?;
        file.set_len(self.bytes)
            .map_err(|error| format!("sizing {}: {error}", self.image.display()))
    }

    /// Bytes of the file system the image occupies.
    fn allocated_bytes(&self) -> Result<u64, String> {
        fs::metadata(&self.image)
            .map(|metadata| metadata.blocks() * 512)
            .map_err(|error| format!("{}: {error}", self.image.display()))
    }

    /// Format the probe's image and create a disk over all of it, as the bench will, and
    /// require the image to stay sparse. Where the file system cannot punch holes `vdisk`
    /// falls back to writing zeros, and the bench would write 64 GiB per run.
    fn check_zeroing_keeps_sparse(&self) -> Result<(), String> {
        self.make_fresh()?;
        output(&mut self.command(&["format", "phy:hda", "--extent-size", "4M"]))?;
        output(&mut self.command(&["create", &format!("{}M", self.bytes >> 20)]))?;
        let allocated = self.allocated_bytes()?;
        if allocated > SPARSE_SLACK_BYTES {
            return Err(format!(
                "{}: zeroing a {} MiB disk allocated {allocated} bytes of the image: this file \
                 system does not punch holes, so vdisk writes its zeros, and `vdisk create {CREATE_SIZE}` \
                 would write {CREATE_SIZE} on each run; set CARGO_TARGET_DIR to a file system \
                 that punches holes (ext4, XFS, Btrfs, tmpfs)",
                self.image.display(),
                self.bytes >> 20
            ));
        }
        Ok(())
    }

    /// Median milliseconds of `format` and of `create`, each run on a fresh pool.
    fn time(&self, runs: usize) -> Result<(f64, f64), String> {
        let (mut format_ms, mut create_ms) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            self.make_fresh()?;
            format_ms.push(timed(&mut self.command(&[
                "format",
                "phy:hda",
                "--extent-size",
                "4M",
            ]))?);
            let extents = self.count_extents()?;
            if extents != POOL_EXTENTS {
                return Err(format!(
                    "the pool should hold {POOL_EXTENTS} extents, vdisk pool says {extents}"
                ));
            }
            create_ms.push(timed(&mut self.command(&["create", CREATE_SIZE]))?);
            let allocated = self.allocated_bytes()?;
            if allocated > SPARSE_SLACK_BYTES {
                return Err(format!(
                    "{}: vdisk create {CREATE_SIZE} allocated {allocated} bytes of the image",
                    self.image.display()
                ));
            }
        }
        Ok((median_of(&mut format_ms), median_of(&mut create_ms)))
    }

    /// `total_extents` of the one partition `vdisk pool --json` reports.
    fn count_extents(&self) -> Result<u64, String> {
        let pool = output(&mut self.command(&["pool", "--json"]))?;
        let document: serde_json::Value = serde_json::from_slice(&pool.stdout)
            .map_err(|error| format!("vdisk pool --json: {error}"))?;
        document["partitions"][0]["total_extents"]
            .as_u64()
            .ok_or_else(|| {
                format!("vdisk pool --json: no partitions[0].total_extents in {document}")
            })
    }

    fn remove(&self) -> Result<(), String> {
        remove_database(&self.database)?;
        for path in [&self.image, &self.devices] {
            match fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("removing {}: {error}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn remove_database(database: &Path) -> Result<(), String> {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {error}", Path::new(&path).display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Milliseconds a command took, start to exit; it must succeed.
fn timed(command: &mut Command) -> Result<f64, String> {
    let start = Instant::now();
    output(command)?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}
