//! Initramfs archives: newc cpio written in-process (every entry root-owned, with the mode
//! asked for, timestamps zero, so equal inputs give equal archives), compressed by `gzip -1`
//! or not, and optionally followed by prebuilt archives (layers) the kernel unpacks after it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::artefacts::{Fio, GuestArtefacts};
use super::script;
use crate::process::display;

#[derive(Clone, Debug)]
enum Entry {
    Directory,
    File { contents: Contents, mode: u32 },
    Symlink(String),
}

#[derive(Clone, Debug)]
enum Contents {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// The files of an initramfs, by path inside the guest (no leading `/`). Parent directories
/// are added as needed.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    /// Sorted by path, so every directory precedes what it holds.
    entries: BTreeMap<String, Entry>,
    /// Whole archives (gzip'd or not) appended after this one, e.g. [`fio_layer`]'s.
    layers: Vec<PathBuf>,
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    /// The initramfs of a guest whose `/init` runs `body` (see [`script::initramfs_init`]):
    /// busybox at `/bin/busybox` and the virtio modules at `/lib/modules/NAME.ko`.
    pub fn guest(artefacts: &GuestArtefacts, body: &str) -> Initramfs {
        let mut initramfs = Initramfs::new();
        initramfs.copy("bin/busybox", &artefacts.busybox, 0o755);
        for (name, path) in &artefacts.modules {
            initramfs.copy(&format!("lib/modules/{name}.ko"), path, 0o644);
        }
        initramfs.file("init", script::initramfs_init(body), 0o755);
        initramfs
    }

    /// An initramfs that loads the virtio modules, mounts the device named by `root=` on the
    /// kernel command line (ext4) and hands over to its `/init` (or `init=`), for a root
    /// filesystem like [`super::RootFilesystem`]'s.
    pub fn root_loader(artefacts: &GuestArtefacts) -> Initramfs {
        let mut initramfs = Initramfs::guest(artefacts, "");
        initramfs.file("init", script::root_loader_init(), 0o755);
        initramfs
    }

    /// Add a file with these contents.
    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.insert(
            path,
            Entry::File {
                contents: Contents::Bytes(contents.into()),
                mode,
            },
        )
    }

    /// Add a copy of a host file, read when the archive is written.
    pub fn copy(&mut self, path: &str, from: &Path, mode: u32) -> &mut Self {
        self.insert(
            path,
            Entry::File {
                contents: Contents::Host(from.to_path_buf()),
                mode,
            },
        )
    }

    /// Add a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, Entry::Symlink(target.to_owned()))
    }

    /// Append a whole prebuilt archive after this one.
    pub fn layer(&mut self, archive: &Path) -> &mut Self {
        self.layers.push(archive.to_path_buf());
        self
    }

    fn insert(&mut self, path: &str, entry: Entry) -> &mut Self {
        let path = path.trim_start_matches('/');
        assert!(
            !path.is_empty() && path.split('/').all(|part| !matches!(part, "" | "." | "..")),
            "initramfs path `{path}`: name a file below the root"
        );
        let mut parent = Path::new(path).parent();
        while let Some(directory) = parent.filter(|directory| !directory.as_os_str().is_empty()) {
            self.entries
                .entry(directory.to_string_lossy().into_owned())
                .or_insert(Entry::Directory);
            parent = directory.parent();
        }
        self.entries.insert(path.to_owned(), entry);
        self
    }

    /// Write the archive to `destination` through `gzip -1`, then the layers after it.
    pub fn write(&self, destination: &Path) -> Result<(), String> {
        let failed = |error: io::Error| format!("{}: {error}", destination.display());
        let file = File::create(destination).map_err(failed)?;
        let mut gzip = Command::new("gzip");
        gzip.args(["-1", "-n"]);
        eprintln!("$ {} > {}", display(&gzip), destination.display());
        let mut child = gzip
            .stdin(Stdio::piped())
            .stdout(file.try_clone().map_err(failed)?)
            .spawn()
            .map_err(|error| format!("gzip: {error}"))?;
        let written = self.write_cpio(child.stdin.take().expect("piped"));
        let status = child.wait().map_err(|error| format!("gzip: {error}"))?;
        written?;
        if !status.success() {
            return Err(format!(
                "gzip failed writing {}: {status}",
                destination.display()
            ));
        }
        self.append_layers(file).map_err(failed)
    }

    /// Write the archive to `destination` uncompressed, then the layers after it.
    pub fn write_uncompressed(&self, destination: &Path) -> Result<(), String> {
        let failed = |error: io::Error| format!("{}: {error}", destination.display());
        let file = File::create(destination).map_err(failed)?;
        self.write_cpio(&file)?;
        self.append_layers(file).map_err(failed)
    }

    fn append_layers(&self, mut file: File) -> io::Result<()> {
        for layer in &self.layers {
            // The kernel looks for an uncompressed archive only at a 4-byte aligned offset,
            // and skips zeros between archives.
            let length = file.metadata()?.len();
            file.write_all(&[0; 3][..(length.wrapping_neg() % 4) as usize])?;
            let mut source = File::open(layer).map_err(|error| {
                io::Error::new(error.kind(), format!("{}: {error}", layer.display()))
            })?;
            io::copy(&mut source, &mut file)?;
        }
        Ok(())
    }

    /// The uncompressed newc archive, trailer included.
    fn write_cpio(&self, output: impl Write) -> Result<(), String> {
        let mut output = io::BufWriter::new(output);
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let inode = u32::try_from(index + 1).map_err(|_| "too many initramfs entries")?;
            let header = cpio::NewcBuilder::new(path).ino(inode).uid(0).gid(0);
            let (mode, contents) = match entry {
                Entry::Directory => (0o040_755, Vec::new()),
                Entry::File { contents, mode } => (
                    0o100_000 | mode,
                    match contents {
                        Contents::Bytes(bytes) => bytes.clone(),
                        Contents::Host(from) => fs::read(from)
                            .map_err(|error| format!("{}: {error}", from.display()))?,
                    },
                ),
                Entry::Symlink(target) => (0o120_777, target.as_bytes().to_vec()),
            };
            let size = u32::try_from(contents.len())
                .map_err(|_| format!("initramfs file /{path} is over 4 GiB"))?;
            let mut writer = header.mode(mode).write(&mut output, size);
            writer
                .write_all(&contents)
                .and_then(|()| writer.finish().map(drop))
                .map_err(|error| format!("writing /{path} into the initramfs: {error}"))?;
        }
        cpio::newc::trailer(&mut output)
            .and_then(|output| output.flush())
            .map_err(|error| format!("writing the initramfs trailer: {error}"))
    }
}

/// fio and its libraries as an archive of their own, built once into `target/guest/` and
/// reused: append it to a guest's initramfs with [`Initramfs::layer`], so only guests that
/// run fio carry it. Uncompressed (86 MB), because inflating it costs a TCG guest more than
/// reading it: a guest that powers off at once took 2.7 s without the layer, 3.1 s with it
/// uncompressed and 3.9-4.6 s with it gzip'd (measured here).
pub fn fio_layer() -> Result<PathBuf, String> {
    // Two guests of one test binary may ask at once: one builds, the other waits for it.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fio = Fio::ensure()?;
    let layer = super::artefacts::guest_directory().join("fio.cpio");
    if layer.is_file() {
        eprintln!("guest: the fio layer is built: {}", layer.display());
        return Ok(layer);
    }
    eprintln!("guest: building the fio layer {}", layer.display());
    let mut archive = Initramfs::new();
    archive.copy("usr/bin/fio", &fio.binary, 0o755);
    for (guest_path, host_file) in &fio.libraries {
        archive.copy(guest_path, host_file, 0o755);
    }
    // Written aside and renamed, so a half-written layer is never taken for a built one;
    // aside under this process's name, as test binaries run by nextest build at once.
    let partial = layer.with_extension(format!("partial.{}", std::process::id()));
    archive.write_uncompressed(&partial)?;
    fs::rename(&partial, &layer).map_err(|error| format!("{}: {error}", layer.display()))?;
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split a newc archive into (name, mode, contents), checking the layout on the way.
    fn parse(mut archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(archive).unwrap();
            if reader.entry().is_trailer() {
                return entries;
            }
            let (name, mode) = (reader.entry().name().to_owned(), reader.entry().mode());
            let mut contents = Vec::new();
            io::copy(&mut reader, &mut contents).unwrap();
            archive = reader.finish().unwrap();
            entries.push((name, mode, contents));
        }
    }

    #[test]
    fn archives_hold_parents_first_and_exact_modes() {
        let mut initramfs = Initramfs::new();
        initramfs
            .file("/usr/bin/tool", b"#!/bin/sh\n".to_vec(), 0o755)
            .symlink("bin/sh", "busybox")
            .file("etc/data", vec![7u8; 5], 0o600);
        let mut archive = Vec::new();
        initramfs.write_cpio(&mut archive).unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert_eq!(
            parse(&archive),
            [
                ("bin".to_owned(), 0o040_755, vec![]),
                ("bin/sh".to_owned(), 0o120_777, b"busybox".to_vec()),
                ("etc".to_owned(), 0o040_755, vec![]),
                ("etc/data".to_owned(), 0o100_600, vec![7; 5]),
                ("usr".to_owned(), 0o040_755, vec![]),
                ("usr/bin".to_owned(), 0o040_755, vec![]),
                (
                    "usr/bin/tool".to_owned(),
                    0o100_755,
                    b"#!/bin/sh\n".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn a_missing_host_file_is_named() {
        let mut initramfs = Initramfs::new();
        initramfs.copy("bin/busybox", Path::new("/nonexistent/busybox"), 0o755);
        let error = initramfs.write_cpio(io::sink()).unwrap_err();
        assert!(error.starts_with("/nonexistent/busybox: "), "{error}");
    }
}
