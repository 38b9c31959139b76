//! The devices file that `vdisk --devices` and `vbd-backend --devices` read: one
//! `[[disk]]` table (name, device number, image path) per disk.

use std::fs;
use std::path::Path;

use shared_abi::DeviceNumber;

/// `[[disk]]` tables for `(name, device, image)`, each image's path relative to `base` when
/// the image is below it (a devices file's relative paths are relative to the file).
pub(crate) fn devices_toml<'a>(
    disks: impl IntoIterator<Item = (&'a str, DeviceNumber, &'a Path)>,
    base: Option<&Path>,
) -> String {
    disks
        .into_iter()
        .map(|(name, device, image)| {
            let image = base
                .and_then(|base| image.strip_prefix(base).ok())
                .unwrap_or(image);
            format!(
                "\n[[disk]]\nname = {}\ndevice = \"{device}\"\npath = {}\n",
                toml_string(name),
                toml_string(&image.display().to_string())
            )
        })
        .collect()
}

/// Write a devices file naming `(name, device, image)` for each disk to `path`.
pub fn write_devices<'a>(
    path: &Path,
    disks: impl IntoIterator<Item = (&'a str, DeviceNumber, &'a Path)>,
) -> Result<(), String> {
    let toml = format!(
        "# Written by vbd-machine: the disk images of one run.\n{}",
        devices_toml(disks, path.parent())
    );
    fs::write(path, toml).map_err(|error| format!("{}: {error}", path.display()))
}

/// `text` as a TOML basic string, quoted and escaped.
pub(crate) fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disk_is_one_table_with_quoted_strings() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        assert_eq!(
            devices_toml(
                [
                    ("hda", hda, Path::new("/images/a.img")),
                    ("hdb", hdb, Path::new("/odd \"dir\"\\b.img")),
                ],
                None
            ),
            "\n[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"/images/a.img\"\n\
             \n[[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"/odd \\\"dir\\\"\\\\b.img\"\n"
        );
    }

    #[test]
    fn images_below_the_file_are_named_relative_to_it() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        let disks = [
            ("hda", hda, Path::new("target/demo/hda.img")),
            ("hdb", hdb, Path::new("/elsewhere/hdb.img")),
        ];
        let tables = devices_toml(disks, Some(Path::new("target/demo")));
        let paths: Vec<&str> = tables
            .lines()
            .filter(|line| line.starts_with("path = "))
            .collect();
        assert_eq!(
            paths,
            ["path = \"hda.img\"", "path = \"/elsewhere/hdb.img\""]
        );
    }
}
